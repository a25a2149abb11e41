"""End to end: run_synth.py on a private JACK server (dummy driver, 48 kHz, 256-frame periods),
MIDI in through a JACK MIDI port, audio captured by a JACK client; assertions on the audio.

The synth runs with ``--test-tone`` (a built-in harmonic tone whose timbre follows the preset's
GM program instead of SING): these tests check the instrument's plumbing -- MIDI parsing, voices,
envelopes, controllers, routing, latency -- not the model.

Times are JACK frame times: the sender records the period in which each event entered the
graph, the capture stores audio by frame, so latencies are exact sample counts.

Needs jackd (Debian jackd2) and libportaudio2: skipped without jackd, failed when CI=true.
"""
from __future__ import annotations

import random
import statistics
import time

import numpy as np
import pytest

import jack_harness as H
from jack_harness import capture, jack_server, midi_sender  # noqa: F401  (fixtures)

RATE, PERIOD = H.RATE, H.PERIOD
PIANO_RELEASE = 0.4          # presets/piano.yaml
ORGAN_PROGRAM = 16           # presets/organ.yaml
SILENT = 1e-4                # |sample| below this counts as silence (-80 dBFS)
LATENCY_LIMIT_MS = 100.0     # a sanity bound; the measured number is printed

SYNTH_ARGS = ["--midi-api", "jack", "--test-tone", "--preset", "piano",
              "--blocksize", PERIOD, "--samplerate", RATE, "--polyphony", 128,
              "--status-interval", 0.2]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def synth_ready(jack_server):  # noqa: F811
    ok, why = H.synth_available()
    if not ok:
        pytest.fail(f"run_synth.py is not usable: {why}")
    return True


@pytest.fixture(scope="module")
def synth(synth_ready, capture, midi_sender):  # noqa: F811
    """One synth (piano preset, test tone) shared by the module's tests; `fresh` resets it."""
    with H.Synth(["--virtual", "e2e-synth"] + SYNTH_ARGS, midi_sender, capture) as s:
        print(f"\nsynth ready in {s.ready_s:.1f} s: {s.ready_line!r}; audio {s.audio_outputs}, "
              f"MIDI {s.midi_inputs}")
        time.sleep(0.3)
        yield s
    print(f"synth exit status {s.proc.returncode}")


def reset(sender, cap, timeout=3.0):
    """All channels back to the start state (sound off, controllers reset, program 0, volume,
    pan, bend centred), then wait for silence."""
    # a lone EOX first: RtMidi's JACK input appends every event after an unterminated sysex to
    # that sysex until an event ends in 0xF7 (it delivers nothing meanwhile)
    msgs = [b"\xf7"]
    for ch in range(16):
        msgs += [sender.cc(120, 0, ch), sender.cc(121, 0, ch), sender.cc(64, 0, ch),
                 sender.cc(7, 100, ch), sender.cc(10, 64, ch), sender.cc(11, 127, ch),
                 sender.program(0, ch), sender.bend(0, ch)]
    sender.send(*msgs)
    deadline = time.monotonic() + timeout
    while True:
        start = cap.wait_seconds(0.05)
        if np.abs(cap.since(start)).max(initial=0) < SILENT:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no silence {timeout} s after a reset: peak "
                                 f"{np.abs(cap.since(start)).max():.3g}")


@pytest.fixture
def fresh(synth, capture, midi_sender):  # noqa: F811
    assert synth.alive(), f"synth died:\n{synth.stderr_text()}"
    reset(midi_sender, capture)
    yield synth, midi_sender, capture
    assert synth.alive(), f"synth died:\n{synth.stderr_text()}"


def play(sender, cap, pitch, seconds, velocity=100, channel=0):
    """Note on, wait ``seconds`` of audio; returns (note-on frame, audio since it)."""
    f = sender.send(sender.note_on(pitch, velocity, channel))
    cap.wait_until(f + int(seconds * RATE))
    return f, cap.mono(f, f + int(seconds * RATE))


def latency_frames(x, floor=SILENT):
    i = H.onset(x, floor)
    assert i is not None, f"no sound (peak {np.abs(x).max():.3g})"
    return i


def fundamental(x, rel_db=-30.0, fmin=25.0, fmax=5000.0):
    """Lowest spectral peak within ``rel_db`` of the strongest (Blackman window, 8x zero
    padding, parabolic interpolation): the f0 of a harmonic tone, not fooled by a strong
    second harmonic."""
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    n = 8 * len(x)
    mag = np.abs(np.fft.rfft(x * np.blackman(len(x)), n=n))
    lo, hi = int(fmin * n / RATE), int(fmax * n / RATE)
    m = mag[lo:hi]
    top = m.max()
    assert top > 0, "silent segment"
    peaks = np.flatnonzero((m[1:-1] > m[:-2]) & (m[1:-1] >= m[2:]) &
                           (m[1:-1] > top * 10 ** (rel_db / 20))) + 1
    k = lo + int(peaks[0])
    return H._interp(mag, k) * RATE / n


def held(x, onset_frame, start=0.08, length=0.4):
    """The held part of a note: ``length`` s from ``start`` s after its onset."""
    a = onset_frame + int(start * RATE)
    return x[a:a + int(length * RATE)]


def level_after(cap, frame, seconds=0.1):
    """Peak |sample| of ``seconds`` of audio from ``frame``."""
    cap.wait_until(frame + int(seconds * RATE))
    return float(np.abs(cap.mono(frame, frame + int(seconds * RATE))).max(initial=0))


def silent_by(cap, frame, timeout_s=3.0):
    """First period-aligned frame from which the audio stays below SILENT (measured until
    ``timeout_s`` past ``frame``); None if it never does."""
    end = frame + int(timeout_s * RATE)
    cap.wait_until(end)
    x = np.abs(cap.mono(frame, end))
    last = H.last_above(x, SILENT)
    return frame + last if last < len(x) else None


# ---------------------------------------------------------------------------------------------
# the harness on its own (a stand-in synth: tells harness bugs from synth bugs)

def test_harness_with_standin(jack_server, capture, midi_sender):  # noqa: F811
    with H.Synth(["--virtual", "e2e-standin"], midi_sender, capture,
                 command=H.STANDIN_COMMAND) as s:
        time.sleep(0.2)
        f, x = play(midi_sender, capture, 69, 0.5)
        lat = latency_frames(x)
        # the median of four 0.1 s pieces: the stand-in is a Python PortAudio client, and one
        # dropout of its own in the held part (once in a clean CI run) put sidebands within
        # -30 dB of the tone, read as a 427 Hz fundamental
        parts = np.split(held(x, lat), 4)
        f0 = float(np.median([fundamental(part) for part in parts]))
        midi_sender.send(midi_sender.note_off(69))
        assert abs(H.cents(f0, 440.0)) < 5, f0
        # JACK2 may run the stand-in's MIDI client before its audio client in the note-on's own
        # cycle: its sine (sin 0 = 0 first) then sounds from the second frame.  Nothing sounds
        # before the note-on, and it sounds within 4 periods.
        assert np.abs(capture.mono(f - PERIOD, f)).max() < SILENT
        assert 0 <= lat <= 4 * PERIOD, lat
        assert s.status_values("xruns"), s.stderr_text()
    assert s.proc.returncode == 0, s.stderr_text()
    print(f"stand-in latency {lat} frames ({lat / RATE * 1000:.2f} ms)")


# ---------------------------------------------------------------------------------------------
# --audio-api jack: one JACK client, MIDI handled in the audio callback

def test_jack_backend_sounds_in_the_period_of_the_note_on(jack_server, capture, midi_sender):  # noqa: F811
    args = ["--virtual", "e2e-jackio", "--midi-api", "jack", "--audio-api", "jack", "--test-tone",
            "--preset", "piano", "--status-interval", 0.2]
    with H.Synth(args, midi_sender, capture) as s:
        assert s.ready_line.startswith("ready: jack port 'e2e-jackio:midi_in'"), s.ready_line
        for pitch in (69, 60, 72):           # rendered (cached) first: the latency is the mixer's
            play(midi_sender, capture, pitch, 0.2)
            midi_sender.send(midi_sender.note_off(pitch), midi_sender.cc(120, 0))
        time.sleep(0.3)
        lats = []
        for pitch in (69, 60, 72):
            f, x = play(midi_sender, capture, pitch, 0.5)
            lats.append(latency_frames(x))
            f0 = fundamental(held(x, lats[-1]))
            midi_sender.send(midi_sender.note_off(pitch))
            assert abs(H.cents(f0, H.midi_hz(pitch))) < 50, (pitch, f0)
            assert silent_by(capture, f) is not None
        assert s.status_values("xruns"), s.stderr_text()
    assert s.proc.returncode == 0, s.stderr_text()
    print(f"--audio-api jack: note-on -> first sound {lats} frames")
    assert max(lats) < PERIOD, lats      # FluidSynth's way: in the period the note-on came in


def test_jack_backend_with_another_midi_api_exits_2(synth_ready):
    _assert_user_error(H.run_synth_once(["--virtual", "--test-tone", "--audio-api", "jack",
                                         "--midi-api", "alsa", "--duration", 1]),
                       "--audio-api jack --midi-api alsa")


# ---------------------------------------------------------------------------------------------
# notes

def test_note_pitch_and_latency(fresh):
    synth, sender, cap = fresh
    lats = []
    for pitch in (60, 69, 45, 72, 57):
        f, x = play(sender, cap, pitch, 0.6)
        lat = latency_frames(x)
        lats.append(lat)
        f0 = fundamental(held(x, lat))
        sender.send(sender.note_off(pitch))
        c = H.cents(f0, H.midi_hz(pitch))
        print(f"note {pitch}: f0 {f0:.2f} Hz ({c:+.1f} cents), note-on -> first sound "
              f"{lat} frames = {lat / RATE * 1000:.2f} ms")
        assert abs(c) < 50, f"note {pitch}: {f0:.2f} Hz is {c:+.1f} cents off"
        time.sleep(PIANO_RELEASE + 0.05)
    med = statistics.median(lats)
    print(f"LATENCY note-on -> first audio at {RATE} Hz / {PERIOD} frames (test tone, cached): "
          f"min {min(lats) / RATE * 1e3:.2f} ms, median {med / RATE * 1e3:.2f} ms, "
          f"max {max(lats) / RATE * 1e3:.2f} ms ({', '.join(map(str, lats))} frames)")
    assert max(lats) / RATE * 1000 < LATENCY_LIMIT_MS


def test_chord_three_pitches(fresh):
    synth, sender, cap = fresh
    chord = (60, 64, 67)
    f = sender.send(*[sender.note_on(p, 100) for p in chord])
    cap.wait_until(f + int(0.7 * RATE))
    x = cap.mono(f, f + int(0.7 * RATE))
    seg = held(x, latency_frames(x), length=0.5)
    spec = H._spectrum(seg)
    for p in chord:
        fp, level = H.peak_near(seg, H.midi_hz(p), spectrum=spec)
        c = H.cents(fp, H.midi_hz(p))
        print(f"chord note {p}: peak {fp:.2f} Hz ({c:+.1f} cents), {level:.1f} dB")
        assert abs(c) < 50 and level > -30, (p, fp, level)
    sender.send(*[sender.note_off(p) for p in chord])


def test_note_off_release(fresh):
    synth, sender, cap = fresh
    f_on, x = play(sender, cap, 60, 0.5)
    lat = latency_frames(x)
    f_off = sender.send(sender.note_off(60))
    held_peak = np.abs(x[-int(0.1 * RATE):]).max()
    assert held_peak > 10 * SILENT
    # the note still sounds right after the note-off takes effect ...
    assert level_after(cap, f_off + lat, 0.02) > 0.3 * held_peak
    # ... and is gone one release time (+ a period) later
    end = silent_by(cap, f_off)
    assert end is not None, "the note never fell silent"
    took = (end - f_off - lat) / RATE
    print(f"release: silent {took * 1000:.1f} ms after the note-off took effect (preset release "
          f"{PIANO_RELEASE * 1000:.0f} ms, latency {lat} frames)")
    assert took <= PIANO_RELEASE + PERIOD / RATE, took


def test_sustain_pedal_holds_until_pedal_up(fresh):
    synth, sender, cap = fresh
    sender.send(sender.cc(64, 127))
    f_on, x = play(sender, cap, 64, 0.3)
    lat = latency_frames(x)
    held_peak = np.abs(x[-int(0.1 * RATE):]).max()
    f_off = sender.send(sender.note_off(64))
    # past the release time: still sounding (allow the tone's own decay, -12 dB)
    probe = f_off + lat + int((PIANO_RELEASE + 0.15) * RATE)
    still = level_after(cap, probe, 0.1)
    print(f"pedal down: {H.db(still / held_peak):.1f} dB {PIANO_RELEASE + 0.15:.2f} s after "
          f"note-off")
    assert still > 0.25 * held_peak, (still, held_peak)
    f_up = sender.send(sender.cc(64, 0))
    end = silent_by(cap, f_up)
    assert end is not None, "pedal up: the note never fell silent"
    took = (end - f_up - lat) / RATE
    print(f"pedal up: silent after {took * 1000:.1f} ms")
    assert took <= PIANO_RELEASE + PERIOD / RATE, took


def test_pitch_bend_full_range_is_two_semitones(fresh):
    synth, sender, cap = fresh
    f_on, x = play(sender, cap, 57, 0.5)
    lat = latency_frames(x)
    f0 = fundamental(held(x, lat, length=0.35))
    f_bend = sender.send(sender.bend(8191))
    a = f_bend + lat + int(0.05 * RATE)
    cap.wait_until(a + int(0.35 * RATE))
    f1 = fundamental(cap.mono(a, a + int(0.35 * RATE)))
    sender.send(sender.note_off(57), sender.bend(0))
    shift = H.cents(f1, f0)
    print(f"pitch bend +8191: {f0:.2f} -> {f1:.2f} Hz, {shift:+.1f} cents")
    assert abs(shift - 200) < 50, shift


def test_program_change_switches_timbre(fresh):
    synth, sender, cap = fresh
    pitch = 57
    f0 = H.midi_hz(pitch)

    def timbre():
        f, x = play(sender, cap, pitch, 0.6)
        seg = held(x, latency_frames(x), length=0.4)
        sender.send(sender.note_off(pitch))
        time.sleep(PIANO_RELEASE + 0.1)
        return H.harmonic_levels(seg, f0, n=8), H.spectral_centroid_ratio(seg, f0)

    piano, c_piano = timbre()
    sender.send(sender.program(ORGAN_PROGRAM))
    organ, c_organ = timbre()
    diff = np.abs(piano - organ)
    print(f"harmonics 1-8 (dB) piano {np.round(piano, 1)}, organ {np.round(organ, 1)}; "
          f"centroid/f0 {c_piano:.2f} vs {c_organ:.2f}")
    assert diff.max() > 3.0 or abs(np.log(c_organ / c_piano)) > 0.1, \
        "program change 0 -> 16 did not change the harmonic content"


@pytest.mark.parametrize("control, limit_s", [(123, PIANO_RELEASE), (120, 0.005)],
                         ids=["cc123-all-notes-off", "cc120-all-sound-off"])
def test_all_notes_off_and_all_sound_off(fresh, control, limit_s):
    synth, sender, cap = fresh
    f = sender.send(*[sender.note_on(p, 100) for p in (48, 55, 60, 64)])
    cap.wait_until(f + int(0.4 * RATE))
    x = cap.mono(f, f + int(0.4 * RATE))
    lat = latency_frames(x)
    f_cc = sender.send(sender.cc(control, 0))
    end = silent_by(cap, f_cc)
    assert end is not None, f"CC{control}: never silent"
    took = (end - f_cc - lat) / RATE
    print(f"CC{control}: silent {took * 1000:.1f} ms after it took effect")
    assert took <= limit_s + PERIOD / RATE, took


def test_128_voices_no_clipping_and_status(fresh):
    synth, sender, cap = fresh
    notes = [(ch, p) for ch in (0, 1) for p in range(30, 94)]        # 128, inside piano's range
    n_status = len(synth.status_lines())
    f = sender.send(*[sender.note_on(p, 127, ch) for ch, p in notes])
    cap.wait_until(f + int(1.0 * RATE))
    x = cap.since(f, f + int(1.0 * RATE))
    time.sleep(0.5)                       # a couple of status lines with every voice on
    sender.send(*[sender.note_off(p, ch) for ch, p in notes])
    peak = np.abs(x).max()
    lines = synth.status_lines()[n_status:]
    voices = [v for line in lines for k, v in H._TOKEN.findall(line) if k == "voices"]
    xruns = [v for line in lines for k, v in H._TOKEN.findall(line) if k == "xruns"]
    print(f"128 voices: peak {peak:.3f}; status voices {voices[-6:]}, xruns {xruns[-3:]}; "
          f"last line {lines[-1] if lines else None!r}")
    assert peak > 10 * SILENT
    assert peak <= 1.0, f"clipped: peak {peak}"
    assert voices and max(map(float, voices)) >= 128, voices
    assert xruns, f"no xruns= token in the status lines: {lines[-3:]}"
    # how far into its cycle the process callback returned, the longest since the last line
    dsp = [v for line in lines for k, v in H._TOKEN.findall(line) if k == "dsp"]
    assert dsp and all(0 < float(v) < 1000 for v in dsp), lines[-3:]


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, one line

def _assert_user_error(r, what):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    print(f"{what}: exit {r.returncode}, stderr {lines}")
    assert r.returncode == 2, f"{what}: exit {r.returncode}\n{r.stderr}"
    assert len(lines) == 1, f"{what}: expected one stderr line:\n{r.stderr}"
    assert lines[0].startswith("sing-synth: error: "), lines[0]
    assert "Traceback" not in r.stderr


BASE = ["--midi-api", "jack", "--blocksize", PERIOD, "--samplerate", RATE, "--duration", 2]


def test_bad_preset_exits_2(synth_ready):
    _assert_user_error(H.run_synth_once(["--virtual", "--test-tone", "--preset",
                                         "no-such-preset"] + BASE), "unknown preset")


def test_bad_preset_file_exits_2(synth_ready, tmp_path):
    (tmp_path / "piano.yaml").write_text("name: piano\nprogram: [1\n")
    _assert_user_error(H.run_synth_once(["--virtual", "--test-tone", "--presets-dir", tmp_path,
                                         "--preset", "piano"] + BASE), "broken preset file")


def test_bad_checkpoint_exits_2(synth_ready, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4096)))
    _assert_user_error(H.run_synth_once(["--virtual", "--checkpoint", junk, "--preset",
                                         "piano"] + BASE), "junk checkpoint")


def test_missing_port_exits_2(synth_ready):
    _assert_user_error(H.run_synth_once(["--port", "no-such-midi-port-e2e", "--test-tone",
                                         "--preset", "piano"] + BASE), "missing --port")


# ---------------------------------------------------------------------------------------------
# garbage in: the instrument survives (last: it leaves odd state behind, `fresh` resets it)

def random_messages(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.35:             # random bytes, any values, 1-6 of them
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 6))))
        elif kind < 0.45:           # sysex: well-formed, unterminated, or junk inside
            body = bytes(rng.getrandbits(7 if rng.random() < 0.7 else 8)
                         for _ in range(rng.randint(0, 48)))
            out.append(b"\xf0" + body + (b"\xf7" if rng.random() < 0.7 else b""))
        elif kind < 0.85:           # channel messages with out-of-range data bytes
            status = rng.choice([0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0]) | rng.randrange(16)
            n_data = 1 if status & 0xF0 in (0xC0, 0xD0) else 2
            n_data += rng.choice([-1, 0, 0, 0, 1])
            out.append(bytes([status] + [rng.getrandbits(8) for _ in range(max(n_data, 0))]))
        else:                       # valid channel messages (notes, CCs incl. RPNs, bends)
            status = rng.choice([0x80, 0x90, 0xB0, 0xC0, 0xE0]) | rng.randrange(16)
            data = [rng.randrange(128), rng.randrange(128)]
            out.append(bytes([status] + data[:1 if status & 0xF0 == 0xC0 else 2]))
    return out


def test_random_midi_flood_survives(fresh):
    synth, sender, cap = fresh
    msgs = random_messages(10_000)
    t0 = time.monotonic()
    first = sender.send(msgs[0])
    last = sender.send(*msgs[1:], timeout=60)
    took = time.monotonic() - t0
    print(f"flood: {len(msgs)} messages over {(last - first) / RATE:.2f} s of JACK time "
          f"({took:.2f} s wall), {sender.dropped} too big for the port")
    time.sleep(1.0)
    assert synth.alive(), f"synth died after the flood:\n{synth.stderr_text()}"
    print(f"status after the flood: {synth.status_lines()[-1:]}")
    reset(sender, cap, timeout=10.0)      # starts with an EOX: the flood's last sysex may be open
    f, x = play(sender, cap, 69, 0.6)
    lat = latency_frames(x)
    f0 = fundamental(held(x, lat))
    sender.send(sender.note_off(69))
    c = H.cents(f0, 440.0)
    print(f"after the flood: note 69 at {f0:.2f} Hz ({c:+.1f} cents), latency {lat} frames")
    assert abs(c) < 50, f0
    assert synth.alive()
