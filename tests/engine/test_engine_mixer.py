"""The real-time half, driven by calling `Mixer.callback` directly with numpy buffers."""
import tracemalloc

import numpy as np
import pytest

from engine_fakes import BLOCK, RATE, cents, frequency, make_mixer, run, sine_note
from sing_synth.engine.mixer import (ACTIVE, FADING, FREE, RELEASED, AllNotesOff, AllSoundOff, Mixer,
                                     ChannelGain, ChannelPan, NoteOff, NoteOn, PitchBend, Sustain)


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request):
    """Every behaviour holds for both ways of mixing; `make test` builds the compiled one, and
    a mixer asked for it without the build raises, so a missing build fails here."""
    return request.param


def test_plays_a_note_at_its_pitch_and_unity_gain(kernel):
    mixer = make_mixer(kernel=kernel)
    note = sine_note(69)
    mixer.post(NoteOn(0, 69, note, gain=1.0, release=0.05))
    out = run(mixer, seconds=1.0)
    assert abs(cents(frequency(out[4800:, 0]), 440.0)) < 10
    # one quiet voice, centre pan, unity gains: the note itself, untouched by the limiter
    np.testing.assert_allclose(out[:, 0], note[:len(out)], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], note[:len(out)], atol=1e-6)
    assert mixer.active_voices == 1 and mixer.limiter_gain == 1.0


@pytest.mark.parametrize("curve", ["exp", "linear"])
def test_note_off_fades_within_release_without_click(curve, kernel):
    mixer = make_mixer(release_curve=curve, kernel=kernel)
    release = 0.05
    mixer.post(NoteOn(0, 81, sine_note(81), gain=1.0, release=release))
    before = run(mixer, blocks=20)
    mixer.post(NoteOff(0, 81))
    after = run(mixer, seconds=release + 0.02)
    steady_step = np.abs(np.diff(before[2000:, 0])).max()        # 2 pi f A / rate
    joined = np.concatenate([before[:, 0], after[:, 0]])
    assert np.abs(np.diff(joined)).max() <= 1.1 * steady_step + 1e-3
    end = int(release * RATE) + BLOCK
    assert np.all(after[end:] == 0)
    assert np.abs(after[:BLOCK, 0]).max() > 0.3                   # still sounding right after
    assert mixer.active_voices == 0 and mixer.v_state.max() == FREE
    assert mixer.collect() == 1                                    # the note came back to us


def test_sustain_holds_until_pedal_up(kernel):
    mixer = make_mixer(kernel=kernel)
    mixer.post(Sustain(0, True))
    mixer.post(NoteOn(0, 60, sine_note(60), release=0.05))
    mixer.post(NoteOff(0, 60))
    held = run(mixer, seconds=0.5)
    assert np.abs(held[-4800:, 0]).max() > 0.4
    assert mixer.v_state[0] == ACTIVE and mixer.v_sustained[0]
    mixer.post(Sustain(0, False))
    after = run(mixer, seconds=0.1)
    assert np.all(after[int(0.05 * RATE) + BLOCK:] == 0)


def test_varispeed_bend_moves_pitch_by_200_cents(kernel):
    mixer = make_mixer(kernel=kernel)
    mixer.post(NoteOn(3, 69, sine_note(69)))
    mixer.post(PitchBend(3, 2 ** (200 / 1200)))
    out = run(mixer, seconds=1.0)
    assert abs(cents(frequency(out[4800:, 0]), 440.0) - 200) < 10
    mixer.post(PitchBend(3, 1.0))     # back: the fractional position is interpolated on
    out = run(mixer, seconds=0.5)
    assert abs(cents(frequency(out[2400:, 0]), 440.0)) < 10


def test_varispeed_is_linear_interpolation_up_to_each_notes_end(kernel):
    rng = np.random.default_rng(7)
    rates = (0.61, 1.37, 2.9)       # base rates: every voice at varispeed from its first block
    notes = [(0.05 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 7001, 20000)]
    mixer = make_mixer(kernel=kernel)
    for ch, (note, rate) in enumerate(zip(notes, rates)):
        mixer.post(NoteOn(ch, 60, note, gain=1.0, release=0.05, rate=rate))
    out = run(mixer, blocks=80)
    want = np.zeros(len(out))
    for note, rate in zip(notes, rates):
        pos = rate * np.arange(len(out))
        inside = pos <= len(note) - 1            # after its last sample a voice is silent
        want[inside] += np.interp(pos[inside], np.arange(len(note)), note)
    np.testing.assert_allclose(out[:, 0], want, atol=2e-6)
    assert mixer.sounding_voices == 0 and mixer.collect() == 3


def test_all_sound_off_and_all_notes_off_silence(kernel):
    mixer = make_mixer(kernel=kernel)
    for ch, pitch in ((0, 60), (0, 64), (1, 67)):
        mixer.post(NoteOn(ch, pitch, sine_note(pitch), release=0.3))
    run(mixer, blocks=4)
    mixer.post(AllSoundOff(0))
    out = run(mixer, blocks=4)
    assert mixer.active_voices == 1 and mixer.v_channel[mixer.v_state == ACTIVE][0] == 1
    mixer.post(AllNotesOff())
    out = run(mixer, seconds=0.35)
    assert np.all(out[-BLOCK:] == 0) and mixer.sounding_voices == 0


def test_channel_gain_and_pan_ramp_without_steps(kernel):
    mixer = make_mixer(kernel=kernel)
    mixer.post(NoteOn(0, 45, sine_note(45), gain=1.0))
    run(mixer, blocks=2)
    mixer.post(ChannelGain(0, 0.25))
    mixer.post(ChannelPan(0, -1.0))
    out = run(mixer, blocks=8)
    assert np.abs(out[-BLOCK:, 1]).max() < 1e-6                    # hard left
    assert np.abs(out[-BLOCK:, 0]).max() == pytest.approx(0.5 * 0.25 * np.sqrt(2), rel=0.02)
    assert np.abs(np.diff(out[:, 1])).max() < 0.01                 # ramped over the block


def test_128_loud_voices_never_exceed_full_scale(kernel):
    mixer = Mixer(RATE, blocksize_max=1024, polyphony=128, master_gain=1.0, kernel=kernel)
    rng = np.random.default_rng(0)
    for v in range(128):
        pitch = int(rng.integers(36, 96))
        mixer.post(NoteOn(v % 16, pitch, sine_note(pitch, amplitude=1.0), gain=4.0))
    out = run(mixer, seconds=0.5)
    assert mixer.active_voices == 128
    assert np.abs(out).max() <= 1.0
    assert np.isfinite(out).all() and np.abs(out).max() > 0.5
    assert mixer.limiter_gain < 0.05


def test_voice_stealing_takes_released_first_then_oldest(kernel):
    mixer = make_mixer(polyphony=4, steal_fade=0.02, kernel=kernel)
    for pitch in (60, 61, 62, 63):
        mixer.post(NoteOn(0, pitch, sine_note(pitch, seconds=1.0), release=1.0))
    mixer.post(NoteOff(0, 62))
    run(mixer, blocks=1)
    slot = {int(mixer.v_pitch[i]): i for i in range(mixer.n_slots) if mixer.v_state[i] != FREE}
    assert mixer.v_state[slot[62]] == RELEASED
    mixer.post(NoteOn(0, 64, sine_note(64, seconds=1.0)))
    run(mixer, blocks=1)
    assert mixer.v_state[slot[62]] == FADING and mixer.steals == 1     # released one first
    mixer.post(NoteOn(0, 65, sine_note(65, seconds=1.0)))
    run(mixer, blocks=1)
    assert mixer.v_state[slot[60]] == FADING and mixer.steals == 2     # then the oldest
    playing = sorted(int(mixer.v_pitch[i]) for i in range(mixer.n_slots)
                     if mixer.v_state[i] in (ACTIVE, RELEASED))
    assert playing == [61, 63, 64, 65] and mixer.active_voices == 4
    run(mixer, blocks=6)                                               # stolen voices faded out
    assert np.count_nonzero(mixer.v_state == FADING) == 0


def test_callback_survives_garbage_state_and_fills_outdata(kernel):
    mixer = make_mixer(kernel=kernel)
    for pitch in range(60, 68):
        mixer.post(NoteOn(0, pitch, sine_note(pitch)))
    run(mixer, blocks=1)
    mixer.v_note[0] = None                      # a voice without a note
    mixer.v_pos[1] = np.nan
    mixer.v_rate[2] = -3.0
    mixer.v_state[3] = 9                        # no such state
    mixer.v_note[4] = "not an array"
    mixer.v_gain[5] = np.inf
    bad = np.full(1000, np.nan, np.float32)
    mixer.post(NoteOn(1, 70, bad))              # a note full of NaN
    mixer.post("not an event")
    mixer.post(NoteOn(99, 60, sine_note(60)))   # no such channel
    mixer.post(NoteOn(0, 60, [1, 2, 3]))        # not a float32 array
    mixer.post(NoteOn(0, 61, sine_note(61)[::2]))   # not contiguous
    out = np.full((BLOCK, 2), 7.0, np.float32)
    for _ in range(3):
        mixer.callback(out, BLOCK, None, None)
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert mixer.voice_errors >= 5 and mixer.bad_events == 4
    # wrong shapes and dtypes: the block is zeroed, nothing raises
    ints = np.full((BLOCK, 2), 7, np.int16)
    mixer.callback(ints, BLOCK, None, None)
    assert np.all(ints == 0) and mixer.errors >= 1
    for frames in (0, 1, 5000):                 # 5000 > blocksize_max: mixed in passes
        out = np.full((frames, 2), 7.0, np.float32)
        mixer.callback(out, frames, None, "output underflow")
        assert np.all(np.abs(out) <= 1.0)
    assert mixer.xruns == 3
    stats = mixer.stats()
    assert stats["last_error"] and stats["callbacks"] >= 7


def test_event_burst_spreads_over_callbacks_within_the_budget(kernel):
    """Past ``event_budget`` of the block the rest of a burst waits: with no budget one event
    is applied per callback, in order, none lost; with room for all, the chord starts at once."""
    note = sine_note(60)
    mixer = make_mixer(event_budget=0.0, kernel=kernel)
    for p in range(16):
        mixer.post(NoteOn(0, 40 + p, note, gain=0.01))
    for k in range(1, 17):
        run(mixer, blocks=1)
        assert mixer.active_voices == k and len(mixer.events) == 16 - k
    assert sorted(int(p) for p in mixer.v_pitch[mixer.v_state == ACTIVE]) == list(range(40, 56))
    mixer = make_mixer(event_budget=100.0, kernel=kernel)
    for p in range(16):
        mixer.post(NoteOn(0, 40 + p, note, gain=0.01))
    run(mixer, blocks=1)
    assert mixer.active_voices == 16


def test_no_allocation_in_steady_state(kernel):
    mixer = Mixer(RATE, blocksize_max=1024, polyphony=128, kernel=kernel)
    for v in range(48):
        mixer.post(NoteOn(v % 4, 40 + v, sine_note(40 + v, seconds=3.0), release=2.0))
    mixer.post(PitchBend(1, 1.03))              # channel 1 at varispeed
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(20):
        mixer.callback(out, BLOCK, None, None)
    for v in range(0, 48, 4):                   # some voices in their (2 s) release
        mixer.post(NoteOff(2, 40 + v + 2))
    for _ in range(20):
        mixer.callback(out, BLOCK, None, None)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(200):
            mixer.callback(out, BLOCK, None, None)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2048, f"net growth {after - before} bytes"
    assert peak - before < 16384, f"transient peak {peak - before} bytes (a buffer allocated?)"
    assert mixer.sounding_voices == 48 and mixer.errors == 0 and mixer.voice_errors == 0
    assert mixer.times.count == 240 and mixer.timing()["n"] == 240


def test_calm_blocks_mix_exactly_as_the_full_path():
    """Blocks that reuse the last block's rows (`Mixer._calm_block`) against a mixer that takes
    the full path every block: the same events at the same blocks, bit-identical output and
    voice tables -- note-ons at four rates, bends, releases, sustain, gains, pans, steals, notes
    reaching their end, all-sound-off, and block sizes that change."""
    rng = np.random.default_rng(7)
    notes = [sine_note(40 + i, seconds=s) for i, s in enumerate((0.3, 0.5, 1.0, 2.0, 3.0))]
    fast, full = make_mixer(polyphony=24, kernel="numpy"), make_mixer(polyphony=24, kernel="numpy")
    full.fast_path = False
    calm = sounding = 0
    original = Mixer._calm_block

    def counting(self, n):
        nonlocal calm
        used = original(self, n)
        calm += used and self is fast
        return used

    Mixer._calm_block = counting
    try:
        for b in range(600):
            outs = _one_block((fast, full), _random_events(rng, notes), BLOCK if b % 97 else 3 * BLOCK // 2)
            sounding += fast.sounding_voices > 0
            np.testing.assert_array_equal(outs[0], outs[1], err_msg=f"block {b}")
            for name in ("v_state", "v_pos", "v_rel_left", "v_cur_l", "v_cur_r"):
                np.testing.assert_array_equal(getattr(fast, name), getattr(full, name), err_msg=name)
    finally:
        Mixer._calm_block = original
    assert fast.errors == full.errors == 0 and fast.voice_errors == full.voice_errors == 0
    assert sounding > 500 and calm > 300, (sounding, calm)    # most blocks took the calm path


def _one_block(mixers, events, frames: int) -> list:
    """Posts the same events to each mixer, then mixes one block of ``frames`` with each."""
    outs = []
    for mixer in mixers:
        for ev in events:
            mixer.post(ev)
        outs.append(np.empty((frames, 2), np.float32))
        mixer.callback(outs[-1], frames, None, None)
    return outs


def _random_events(rng, notes, share=0.08) -> list:
    """A block's events, in ``share`` of the blocks: note-ons at four rates, note-offs, bends,
    sustain, gains, pans, all-sound-off."""
    if rng.random() >= share:
        return []
    c, p = int(rng.integers(0, 4)), int(rng.integers(48, 56))    # few keys: note-offs find them
    kind = rng.integers(0, 9)
    if kind < 3:
        return [NoteOn(c, p, notes[int(rng.integers(0, len(notes)))], gain=float(rng.random()),
                       release=float(rng.choice([0.05, 0.5, 2.0])),
                       rate=float(rng.choice([1.0, 1.0, 0.5, 1.5, 2 ** (1 / 12)])))]
    if kind <= 4:
        return [NoteOff(c, p)]
    if kind == 5:
        return [PitchBend(c, float(rng.choice([1.0, 1.03, 0.97])))]
    if kind == 6:
        return [Sustain(c, bool(rng.random() < 0.5))]
    if kind == 7:
        return [ChannelGain(c, float(rng.random())) if rng.random() < 0.5
                else ChannelPan(c, float(rng.uniform(-1, 1)))]
    return [AllSoundOff(c)] if rng.random() < 0.2 else []


@pytest.mark.parametrize("curve", ["exp", "linear"])
def test_compiled_block_mixes_as_the_numpy_path(curve):
    """`_mixc.Kernel` against the numpy path over 600 random blocks (the calm test's events,
    block sizes that change, notes reaching their end, steals): the output within float32
    rounding (the sums run in another order), and the voice tables exactly."""
    rng = np.random.default_rng(11)
    notes = [sine_note(40 + i, seconds=s) for i, s in enumerate((0.3, 0.5, 1.0, 2.0, 3.0))]
    compiled, numpy_ = (make_mixer(polyphony=12, release_curve=curve, kernel=k)
                        for k in ("compiled", "numpy"))
    assert compiled.kernel == "compiled" and numpy_.kernel == "numpy"
    sounding = releasing = 0
    for b in range(600):
        outs = _one_block((compiled, numpy_), _random_events(rng, notes, share=0.1),
                          BLOCK if b % 97 else 3 * BLOCK // 2)
        np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=2e-6, err_msg=f"block {b}")
        for name in ("v_state", "v_pos", "v_rel_left", "v_cur_l", "v_cur_r"):
            np.testing.assert_array_equal(getattr(compiled, name), getattr(numpy_, name), err_msg=name)
        assert (compiled.sounding_voices, compiled.active_voices) == \
            (numpy_.sounding_voices, numpy_.active_voices), f"block {b}"
        assert compiled.limiter_gain == pytest.approx(numpy_.limiter_gain, rel=1e-6, abs=0)
        sounding += compiled.sounding_voices > 0
        releasing += bool(np.any(compiled.v_state >= RELEASED))
    assert compiled.errors == numpy_.errors == 0
    assert compiled.voice_errors == numpy_.voice_errors == 0   # a note ending with a block too
    assert compiled.steals == numpy_.steals > 0
    assert compiled.limited_blocks == numpy_.limited_blocks > 10
    assert sounding > 500 and releasing > 80, (sounding, releasing)


def test_compiled_kernel_follows_a_slots_new_note(kernel):
    """A slot reused by a later note plays the new note's samples (the kernel's cached pointer
    is taken again: the slot's note-on count changed), and a note swapped under a playing voice
    is taken again too."""
    mixer = make_mixer(kernel=kernel)
    first, second = sine_note(60, seconds=0.2), sine_note(72, seconds=1.0)
    mixer.post(NoteOn(0, 60, first, release=0.01))
    run(mixer, seconds=0.3)
    assert mixer.sounding_voices == 0 and mixer.collect() == 1
    del first
    mixer.post(NoteOn(0, 72, second, release=0.01))
    out = run(mixer, blocks=4)
    np.testing.assert_allclose(out[:, 0], second[:4 * BLOCK], atol=1e-6)
    swapped = (0.5 * second).astype(np.float32)
    mixer.v_note[int(np.flatnonzero(mixer.v_state == ACTIVE)[0])] = swapped
    out = run(mixer, blocks=2)
    np.testing.assert_allclose(out[:, 0], swapped[4 * BLOCK:6 * BLOCK], atol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")    # numpy's, on the NaN written in
def test_survives_random_tampering_with_the_voice_table(kernel):
    """2,000 blocks with a random field of a random slot overwritten before each (NaN, inf,
    negative, huge, out-of-range states and channels, notes swapped for shorter, strided,
    integer or non-array objects): the callback never raises, the output stays finite and within
    full scale, and a bad voice is killed alone.  (The compiled block reads notes through
    pointers: run under AddressSanitizer, this is its out-of-bounds check.)"""
    rng = np.random.default_rng(3)
    mixer = make_mixer(polyphony=16, kernel=kernel)
    notes = [sine_note(50 + i, seconds=0.5) for i in range(4)]
    values = [np.nan, np.inf, -np.inf, -1.0, 0.0, 0.5, 1.0, 1e9, -1e9, 3.7, 1e-9]
    swaps = [None, "x", np.zeros(10, np.float32), np.zeros(50000, np.float64),
             np.zeros(100000, np.float32)[::2], np.zeros(30000, np.int16), notes[0]]
    fields = ("v_pos", "v_len", "v_rate", "v_gain", "v_rel_len", "v_rel_left", "v_cur_l")
    out = np.empty((BLOCK, 2), np.float32)
    for b in range(2000):
        if rng.random() < 0.3:
            mixer.post(NoteOn(int(rng.integers(0, 16)), int(rng.integers(30, 90)),
                              notes[int(rng.integers(0, 4))], rate=float(rng.choice([1.0, 0.7, 1.9]))))
        if rng.random() < 0.05:
            mixer.post(NoteOff(int(rng.integers(0, 16)), int(rng.integers(30, 90))))
        i, what = int(rng.integers(0, mixer.n_slots)), int(rng.integers(0, 10))
        if what < 7:
            getattr(mixer, fields[what])[i] = float(rng.choice(values))
        elif what == 7:
            mixer.v_state[i] = int(rng.integers(-3, 6))
        elif what == 8:
            mixer.v_channel[i] = int(rng.integers(-40, 40))
        else:
            mixer.v_note[i] = swaps[int(rng.integers(0, len(swaps)))]
        out.fill(7.0)
        mixer.callback(out, BLOCK, None, None)
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0, f"block {b}"
        mixer.collect()
    assert mixer.voice_errors > 100 and mixer.callbacks == 2000
