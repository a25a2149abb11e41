"""The bundled demo: a short General MIDI piece for `sing-synth play --render-midi` and the
fallback of `make run` on a machine with no audio output.

``demo.mid`` is made by `make_demo` (``python -m sing_synth.demo [PATH]`` rewrites it): 120 bpm,
about 10 s.  Bars 1-2: a C major scale alone on channel 1 (piano, program 0), one note at a time,
so each note's pitch can be checked in the rendered audio.  Bars 3-5: channel 2 switches to
strings (program 48) for held chords, channel 3 to fingered bass (program 33), and the piano
plays a melody above them.  `NOTES` lists every note as (channel, pitch, start s, end s).
"""
from __future__ import annotations

import sys
from pathlib import Path

DEMO_PATH = Path(__file__).resolve().parent / "demo.mid"
TICKS = 480            # per beat
TEMPO = 500000         # microseconds per beat: 120 bpm, a beat is 0.5 s
PROGRAMS = {0: 0, 1: 48, 2: 33}     # channel (0-based) -> GM program

_SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def _notes():
    notes = []   # (channel, pitch, start beat, length beats, velocity)
    for i, pitch in enumerate(_SCALE):
        notes.append((0, pitch, i, 0.9, 96))
    start = 9
    for chord, bass, melody in (((48, 52, 55), 36, (76, 74, 72, 74)),
                                ((53, 57, 60), 41, (77, 76, 74, 72))):
        for pitch in chord:
            notes.append((1, pitch, start, 3.8, 80))
        notes.append((2, bass, start, 1.8, 100))
        notes.append((2, bass, start + 2, 1.8, 90))
        for j, pitch in enumerate(melody):
            notes.append((0, pitch, start + j, 0.9, 100))
        start += 4
    return notes


def note_list() -> list:
    """Every note of the demo as (channel 0-15, pitch, start seconds, end seconds)."""
    beat = TEMPO / 1e6
    return [(c, p, s * beat, (s + n) * beat) for c, p, s, n, _ in _notes()]


NOTES = note_list()


def make_demo(path=DEMO_PATH) -> Path:
    """Writes the demo as a type-1 MIDI file (one conductor track, one track of events)."""
    import mido
    events = []   # (tick, order, message)
    for channel, program in PROGRAMS.items():
        events.append((0, 0, mido.Message("program_change", channel=channel, program=program)))
        events.append((0, 1, mido.Message("control_change", channel=channel, control=7, value=100)))
    for channel, pitch, start, length, velocity in _notes():
        on, off = int(round(start * TICKS)), int(round((start + length) * TICKS))
        events.append((on, 3, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)))
        events.append((off, 2, mido.Message("note_off", channel=channel, note=pitch, velocity=64)))
    events.sort(key=lambda e: (e[0], e[1]))
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=TEMPO, time=0),
                           mido.MetaMessage("track_name", name="sing-synth demo", time=0),
                           mido.MetaMessage("end_of_track", time=0)])
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=TICKS))
    midi.tracks.extend([meta, track])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(path))
    return path


if __name__ == "__main__":
    print(make_demo(sys.argv[1] if len(sys.argv) > 1 else DEMO_PATH))
