"""The control half: MIDI messages through `Controller.handle` into a real `Mixer`, with a fake
renderer of sine notes (instant, or delivered when the test says)."""
import threading
from types import SimpleNamespace

import mido
import numpy as np
import pytest

from engine_fakes import (BLOCK, RATE, FakeRenderer, cents, frequency, make_mixer, make_preset,
                          midi_hz, run)
from sing_synth.engine import Controller
from sing_synth.engine.mixer import ACTIVE


def setup(instant=True, presets=None, default=None, **mixer_kwargs):
    mixer = make_mixer(**mixer_kwargs)
    renderer = FakeRenderer(instant=instant)
    presets = presets or {"test": make_preset()}
    controller = Controller(mixer, renderer, presets, default or next(iter(presets.values())), RATE)
    return controller, mixer, renderer


def msg(kind, **fields):
    return mido.Message(kind, **fields)


def test_note_plays_at_its_pitch():
    controller, mixer, _ = setup()
    controller.handle(msg("note_on", channel=0, note=57, velocity=100))
    out = run(mixer, seconds=0.6)
    assert abs(cents(frequency(out[4800:, 0]), midi_hz(57))) < 10
    assert controller.counts["started"] == 1


def test_note_off_releases_within_preset_release_without_click():
    controller, mixer, _ = setup(presets={"p": make_preset(release=0.08)})
    controller.handle(msg("note_on", note=76, velocity=127))
    before = run(mixer, blocks=10)
    controller.handle(msg("note_off", note=76))
    after = run(mixer, seconds=0.12)
    joined = np.concatenate([before[:, 0], after[:, 0]])
    steady = np.abs(np.diff(before[1000:, 0])).max()
    assert np.abs(np.diff(joined)).max() <= 1.1 * steady + 1e-3
    assert np.all(after[int(0.08 * RATE) + BLOCK:] == 0)
    # velocity 0 is a note-off too
    controller.handle(msg("note_on", note=76, velocity=90))
    run(mixer, blocks=2)
    controller.handle(msg("note_on", note=76, velocity=0))
    assert np.all(run(mixer, seconds=0.12)[-BLOCK:] == 0)


def test_sustain_pedal_holds_until_released():
    controller, mixer, _ = setup()
    controller.handle(msg("control_change", control=64, value=127))
    controller.handle(msg("note_on", note=60, velocity=100))
    controller.handle(msg("note_off", note=60))
    held = run(mixer, seconds=0.5)
    assert np.abs(held[-2400:, 0]).max() > 0.1
    controller.handle(msg("control_change", control=64, value=0))
    after = run(mixer, seconds=0.1)
    assert np.all(after[-BLOCK:] == 0) and mixer.active_voices == 0


def test_pitch_bend_up_200_cents_with_default_and_rpn_range():
    controller, mixer, _ = setup()
    controller.handle(msg("note_on", channel=2, note=69, velocity=100))
    controller.handle(msg("pitchwheel", channel=2, pitch=8191))      # +2 semitones (preset)
    out = run(mixer, seconds=0.6)
    assert abs(cents(frequency(out[4800:, 0]), 440.0) - 200) < 10
    # RPN 0 = 12 semitones; a sixth of the way up is +200 cents again
    for control, value in ((101, 0), (100, 0), (6, 12), (38, 0), (101, 127), (100, 127)):
        controller.handle(msg("control_change", channel=2, control=control, value=value))
    controller.handle(msg("pitchwheel", channel=2, pitch=round(8192 / 6)))
    out = run(mixer, seconds=0.6)
    assert controller.channels[2].bend_range == 12
    assert abs(cents(frequency(out[4800:, 0]), 440.0) - 200) < 10
    # reset controllers: bend back to the centre
    controller.handle(msg("control_change", channel=2, control=121, value=0))
    out = run(mixer, seconds=0.6)
    assert abs(cents(frequency(out[4800:, 0]), 440.0)) < 10


def test_unpitched_preset_ignores_bend():
    controller, mixer, _ = setup(presets={"drum": make_preset(name="drum", pitched=False)})
    controller.handle(msg("note_on", note=69, velocity=100))
    controller.handle(msg("pitchwheel", pitch=8191))
    out = run(mixer, seconds=0.6)
    assert abs(cents(frequency(out[4800:, 0]), 440.0)) < 10


@pytest.mark.parametrize("control", [120, 123])
def test_all_sound_off_and_all_notes_off_silence(control):
    controller, mixer, _ = setup()
    for note in (60, 64, 67):
        controller.handle(msg("note_on", channel=1, note=note, velocity=100))
    controller.handle(msg("note_on", channel=3, note=72, velocity=100))
    run(mixer, blocks=4)
    controller.handle(msg("control_change", channel=1, control=control, value=0))
    out = run(mixer, seconds=0.1)
    assert mixer.active_voices == 1                   # channel 3 plays on
    assert abs(cents(frequency(out[-2048:, 0]), midi_hz(72))) < 10
    controller.handle(msg("control_change", channel=3, control=control, value=0))
    out = run(mixer, seconds=0.1)
    assert np.all(out[-BLOCK:] == 0) and mixer.sounding_voices == 0


def test_volume_expression_pan():
    controller, mixer, _ = setup()
    controller.handle(msg("control_change", control=7, value=127))
    controller.handle(msg("note_on", note=69, velocity=127))
    full = np.abs(run(mixer, seconds=0.1)[-2400:, 0]).max()
    controller.handle(msg("control_change", control=11, value=64))    # expression: -12 dB
    controller.handle(msg("control_change", control=10, value=127))   # hard right
    out = run(mixer, seconds=0.1)
    assert np.abs(out[-2400:, 0]).max() < 1e-3
    assert np.abs(out[-2400:, 1]).max() == pytest.approx(full * (64 / 127) ** 2 * np.sqrt(2), rel=0.02)


def test_velocity_layers_and_smooth_loudness():
    # the fake's layers are 0.5 * layer_velocity / 127 loud: with velocity_curve 1 the voice
    # gain bridges them and loudness is proportional to velocity, layer boundaries included
    controller, mixer, renderer = setup(polyphony=128)
    velocities = list(range(1, 128, 3))
    for v in velocities:
        controller.handle(msg("note_on", channel=v % 16, note=60 + v % 24, velocity=v))
    for _ in velocities:       # a callback applies events within its time budget, one at least
        run(mixer, blocks=1)
        if not mixer.events:
            break
    amps = {}
    for i in range(mixer.n_slots):
        if mixer.v_state[i] == ACTIVE:
            _, pitch, row = mixer.v_key[i]
            amps[i] = mixer.v_gain[i] * 0.5 * renderer.config.velocity_rows[row] / 127
    rows = {key[2] for key, _ in renderer.requests}
    assert rows == set(range(5))                       # all five layers used
    loudness = sorted(amps.values())
    np.testing.assert_allclose(loudness, [0.5 * v / 127 for v in velocities], rtol=1e-6)


def test_pitch_range_and_program_change():
    presets = {"low": make_preset(name="low", program=32, pitch_range=(28, 60), instrument="bass"),
               "high": make_preset(name="high", program=73, pitch_range=(60, 96), instrument="flute")}
    controller, mixer, renderer = setup(presets=presets, default=presets["low"])
    controller.handle(msg("note_on", note=72, velocity=100))           # above 'low'
    assert controller.counts["out_of_range"] == 1 and not renderer.requests
    controller.handle(msg("program_change", program=73))
    controller.handle(msg("note_on", note=72, velocity=100))
    assert renderer.requests[-1][0][0] == (("flute", 1.0),)
    controller.handle(msg("program_change", program=35))                # GM bass group -> 'low'
    assert controller.channels[0].preset.name == "low"


def test_program_change_prewarms_the_new_preset_once():
    presets = {"low": make_preset(name="low", program=32, pitch_range=(28, 60), instrument="bass"),
               "high": make_preset(name="high", program=73, pitch_range=(60, 96), instrument="flute")}
    controller, _, renderer = setup(presets=presets, default=presets["low"])
    # the MIDI thread (a real-time JACK callback) never does the prewarm's work itself
    gate, prewarm = threading.Event(), renderer.prewarm
    renderer.prewarm = lambda keys: gate.wait(10) and prewarm(keys)
    controller.handle(msg("program_change", program=73))
    controller.handle(msg("note_on", note=72, velocity=100))            # not held up by it
    assert renderer.prewarmed == [] and renderer.requests[-1][0][0] == (("flute", 1.0),)
    gate.set()
    assert controller.wait_prewarm_queued()
    flute = [k for k in renderer.prewarmed if k[0] == (("flute", 1.0),)]
    assert len(flute) == 5 * 37 and {k[1] for k in flute} == set(range(60, 97))
    assert flute[0][1] == 60                                          # middle octave first
    controller.handle(msg("program_change", program=73))               # the same preset again
    assert controller.wait_prewarm_queued()
    assert len(renderer.prewarmed) == len(flute)
    controller.close()


def test_late_note_starts_when_ready_unless_released():
    controller, mixer, renderer = setup(instant=False)
    controller.handle(msg("note_on", note=60, velocity=100))
    assert np.all(run(mixer, blocks=2) == 0)
    assert renderer.requests[-1][1] is True                            # asked as urgent
    renderer.deliver()
    out = run(mixer, seconds=0.2)
    assert np.abs(out[-2400:, 0]).max() > 0.1 and controller.counts["started_late"] == 1
    # pressed and released before it arrived: never starts
    controller.handle(msg("note_on", note=62, velocity=100))
    controller.handle(msg("note_off", note=62))
    renderer.deliver()
    run(mixer, blocks=2)
    assert mixer.active_voices == 1 and controller.counts["dropped"] == 1
    # released under the sustain pedal before it arrived: starts, held by the pedal
    controller.handle(msg("control_change", control=64, value=127))
    controller.handle(msg("note_on", note=64, velocity=100))
    controller.handle(msg("note_off", note=64))
    renderer.deliver()
    run(mixer, seconds=0.2)
    assert mixer.active_voices == 2
    controller.handle(msg("control_change", control=64, value=0))
    controller.handle(msg("note_off", note=60))
    run(mixer, seconds=0.2)
    assert mixer.active_voices == 0
    assert controller.status()["waiting"] == 0


def test_notes_nobody_waits_for_are_withdrawn_from_the_renderer():
    controller, mixer, renderer = setup(instant=False)
    for channel in (0, 1):
        controller.handle(msg("note_on", channel=channel, note=60, velocity=100))
    controller.handle(msg("note_on", channel=0, note=62, velocity=100))
    key60, key62 = renderer.waiting
    controller.handle(msg("note_off", channel=0, note=60))
    assert renderer.cancelled == []                  # channel 1 still waits for the same note
    controller.handle(msg("note_off", channel=0, note=62))
    assert renderer.cancelled == [key62]
    controller.handle(msg("control_change", channel=1, control=120, value=0))
    assert renderer.cancelled == [key62, key60] and renderer.waiting == []
    # under the pedal a released key still waits: nothing withdrawn until the pedal lifts
    controller.handle(msg("control_change", control=64, value=127))
    controller.handle(msg("note_on", note=64, velocity=100))
    controller.handle(msg("note_off", note=64))
    assert len(renderer.cancelled) == 2
    controller.handle(msg("control_change", control=64, value=0))
    assert len(renderer.cancelled) == 3 and controller.status()["waiting"] == 0


def test_a_burst_of_program_changes_prewarms_only_the_presets_still_played():
    presets = {"low": make_preset(name="low", program=32, pitch_range=(28, 60), instrument="bass"),
               "high": make_preset(name="high", program=73, pitch_range=(60, 96), instrument="flute")}
    controller, _, renderer = setup(presets=presets, default=presets["low"])
    entered, gate, prewarm = threading.Event(), threading.Event(), renderer.prewarm
    renderer.prewarm = lambda keys: entered.set() or gate.wait(10) and prewarm(keys)
    flute, bass = (("flute", 1.0),), (("bass", 1.0),)
    controller.handle(msg("program_change", program=73))
    assert entered.wait(10)                          # the helper is prewarming 'high' now
    controller.handle(msg("program_change", program=32))
    controller.handle(msg("program_change", program=73))
    controller.handle(msg("program_change", program=32))            # channel 0 ends on 'low'
    gate.set()
    assert controller.wait_prewarm_queued()
    # the first 'high' prewarm was already under way; every later one is skipped or withdrawn
    assert len([k for k in renderer.prewarmed if k[0] == flute]) == 5 * 37
    assert {k for k in renderer.dropped if k[0] == flute} == \
        {k for k in renderer.prewarmed if k[0] == flute}
    assert not any(k[0] == bass for k in renderer.dropped)
    assert len({k for k in renderer.prewarmed if k[0] == bass}) == 5 * 33
    # a preset another channel still plays keeps its prewarm
    dropped = len(renderer.dropped)
    controller.handle(msg("program_change", channel=1, program=73))
    controller.handle(msg("program_change", channel=2, program=73))
    controller.handle(msg("program_change", channel=1, program=32))
    assert controller.wait_prewarm_queued() and len(renderer.dropped) == dropped
    controller.close()


def test_malformed_and_unknown_messages_are_counted_never_raised():
    controller, mixer, _ = setup()
    garbage = [None, 42, "note_on", b"\x90\x40", b"", [0x90, 200, 100], object(),
               SimpleNamespace(type="note_on", channel=20, note=60, velocity=100),
               SimpleNamespace(type="note_on", channel=0, note=60.5, velocity=100),
               SimpleNamespace(type="control_change", channel=0, control=7),
               SimpleNamespace(type=None)]
    for m in garbage:
        controller.handle(m)
    assert controller.counts["malformed"] == len(garbage)
    controller.handle(msg("sysex", data=[1, 2, 3]))
    controller.handle(msg("aftertouch", value=3))
    controller.handle(msg("control_change", control=1, value=64))      # modulation: not used
    controller.handle(msg("clock"))
    assert controller.counts["unknown"] == 3 and controller.counts["ignored"] == 1
    controller.handle(bytes([0x90, 60, 100]))                          # raw bytes work
    run(mixer, blocks=1)
    assert mixer.active_voices == 1 and controller.counts["messages"] == len(garbage) + 5
    assert mixer.bad_events == 0


def test_prewarm_orders_middle_octaves_first():
    controller, _, renderer = setup(presets={"p": make_preset(pitch_range=(48, 72))})
    count = controller.prewarm(velocities=[100, 30])
    assert count == 2 * 25
    first = renderer.prewarmed[:25]
    assert [k[1] for k in first[:5]] == [60, 59, 61, 58, 62]
    assert {k[2] for k in first} == {3} and {k[2] for k in renderer.prewarmed[25:]} == {0}


def holding(lock_acquire, lock_release):
    """A thread that holds a lock until the returned event is set: (thread, release event)."""
    held, release = threading.Event(), threading.Event()

    def hold():
        lock_acquire()
        held.set()
        release.wait(10)
        lock_release()
    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    return thread, release


@pytest.mark.parametrize("whose", ["renderer", "controller"])
def test_audio_thread_handling_never_waits_for_a_lock(whose):
    """try_handle (MIDI handled in the JACK audio callback) does nothing and says False while
    another thread (the renderer's worker, its ready callback) holds the renderer's or the
    controller's lock, and handles the message once the lock is free."""
    controller, mixer, renderer = setup()
    if whose == "renderer":
        thread, release = holding(renderer.try_lock, renderer.unlock)
    else:
        thread, release = holding(controller._lock.acquire, controller._lock.release)
    note = bytes([0x90, 60, 100])
    assert controller.try_handle(note) is False
    assert controller.counts["messages"] == 0 and renderer.requests == []
    release.set()
    thread.join()
    assert controller.try_handle(note) is True
    assert controller.counts["started"] == 1 and mixer.events
