"""End to end, the note store across sessions: a sing-synth renders a key (not cached) and writes
it to its note store; a new sing-synth on the same store plays that key from disk -- not
rendered, yet the same note, within a few periods of its note-on.  run_synth.py with the shipped
model on the private JACK server of the other end-to-end tests."""
from __future__ import annotations

import time

import jack_harness as H
from jack_harness import capture, jack_server, midi_sender  # noqa: F401  (fixtures)
from test_e2e_sing import NOTES, RATE, PERIOD, expected, likeness, play  # noqa: F401

STORED_LIMIT_FRAMES = 6 * PERIOD     # a read and a resample: a few ms, one period at the least


def _synth(store, sender, cap, name):
    args = ["--virtual", name, "--midi-api", "jack", "--preset", "organ", "--no-prewarm",
            "--blocksize", PERIOD, "--samplerate", RATE, "--status-interval", 0.2,
            "--note-store", store]
    return H.Synth(args, sender, cap)


def test_a_key_rendered_in_one_session_plays_from_the_note_store_in_the_next(
        tmp_path, capture, midi_sender, expected):  # noqa: F811
    program, channel, pitch, velocity = NOTES[0]
    note = expected[program, pitch, velocity]
    store = tmp_path / "notes"
    with _synth(store, midi_sender, capture, "e2e-store-1") as first:
        time.sleep(0.3)
        midi_sender.send(midi_sender.program(program, channel))
        rendered, x1 = play(midi_sender, capture, pitch, channel, velocity)
        time.sleep(0.6)
    assert first.proc.returncode == 0, first.stderr_text()
    assert len(list(store.glob("*/*/*.npy"))) >= 2          # the warm-up note and this one
    with _synth(store, midi_sender, capture, "e2e-store-2") as later:
        time.sleep(0.3)
        midi_sender.send(midi_sender.program(program, channel))
        stored, x2 = play(midi_sender, capture, pitch, channel, velocity)
        time.sleep(0.6)
        lines = [line for line in later.stderr if "from_store=" in line]
    assert later.proc.returncode == 0, later.stderr_text()
    r1, r2 = likeness(x1, note), likeness(x2, note)
    print(f"\nnote {pitch}: rendered {rendered / RATE * 1e3:.1f} ms, from the note store "
          f"{stored / RATE * 1e3:.1f} ms; correlation with the rendered note {r1:.3f} / {r2:.3f}")
    assert r1 > 0.9 and r2 > 0.9, (r1, r2)
    assert stored <= STORED_LIMIT_FRAMES, f"a stored note took {stored} frames"
    # notes read, not rendered: this one, and the program's prewarm (what the first one wrote)
    assert lines and int(lines[-1].split("from_store=")[1].split()[0]) >= 1, lines[-1:]
