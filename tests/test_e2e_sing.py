"""End to end with the shipped SING model (not the test tone): run_synth.py on a private JACK
server (dummy driver, 48 kHz, 256-frame periods), MIDI in through JACK, audio captured by a JACK
client.

A note the cache does not hold yet is rendered at once and sounds when it is ready; played again
it comes from the cache, one period after the note-on.  Both are in tune.  The printed latencies
are the numbers issue 4 asks for (note-on -> first audio, cached and not cached).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import jack_harness as H
from jack_harness import capture, jack_server, midi_sender  # noqa: F401  (fixtures)
from sing_synth.evaluate import cents_error, estimate_f0
from sing_synth.play import DEFAULT_CHECKPOINT

RATE, PERIOD = H.RATE, H.PERIOD
SHIPPED = H.REPO / DEFAULT_CHECKPOINT
FLOOR = 1e-4                    # first |sample| above this is the note's onset (-80 dBFS)
NOT_CACHED_LIMIT_MS = 1000.0    # a sanity bound on a loaded 2-core machine; bench/ has the target


@pytest.fixture(scope="module")
def sing(jack_server, capture, midi_sender):  # noqa: F811
    assert SHIPPED.is_file(), f"{SHIPPED} is missing"
    # strings prewarm in the background; the test plays other presets, not cached yet
    args = ["--virtual", "e2e-sing", "--midi-api", "jack", "--preset", "strings",
            "--blocksize", PERIOD, "--samplerate", RATE, "--status-interval", 0.2]
    with H.Synth(args, midi_sender, capture) as s:
        print(f"\nSING synth ready in {s.ready_s:.1f} s: {s.ready_line!r}")
        time.sleep(0.3)
        yield s
    assert s.proc.returncode == 0, s.stderr_text()


def play(sender, cap, pitch, channel, seconds=1.5, velocity=100):
    f = sender.send(sender.note_on(pitch, velocity, channel))
    cap.wait_until(f + int(seconds * RATE))
    x = cap.mono(f, f + int(seconds * RATE))
    sender.send(sender.note_off(pitch, channel))
    onset = H.onset(x, FLOOR)
    assert onset is not None, f"note {pitch}: no sound in {seconds} s (peak {np.abs(x).max():.3g})"
    return onset, x[onset:]


def pitch_cents(x, pitch):
    held = x[int(0.1 * RATE):int(0.9 * RATE)]
    return cents_error(estimate_f0(held, RATE, oversample=1), pitch)


@pytest.mark.parametrize("program,channel,pitch", [(0, 1, 60), (73, 2, 72), (32, 3, 45)])
def test_not_cached_then_cached_note(sing, capture, midi_sender, program, channel, pitch):  # noqa: F811
    sender, cap = midi_sender, capture
    sender.send(sender.program(program, channel))       # queues its prewarm behind the note
    first, x1 = play(sender, cap, pitch, channel)
    time.sleep(0.6)                                      # the release (<= 0.4 s) ends
    again, x2 = play(sender, cap, pitch, channel)
    c1, c2 = pitch_cents(x1, pitch), pitch_cents(x2, pitch)
    print(f"program {program} note {pitch}: not cached {first / RATE * 1e3:.1f} ms "
          f"({c1:+.0f} cents), cached {again / RATE * 1e3:.1f} ms ({c2:+.0f} cents)")
    assert abs(c1) <= 50 and abs(c2) <= 50, (c1, c2)
    assert first / RATE * 1e3 <= NOT_CACHED_LIMIT_MS
    assert again <= 3 * PERIOD, f"cached note took {again} frames"
    assert sing.alive(), sing.stderr_text()
    assert sing.status_values("latency"), sing.stderr_text()
