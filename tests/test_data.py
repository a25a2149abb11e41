"""Tests of the NSynth reader/writer and the (instrument, pitch) split."""
import json
from collections import Counter

import numpy as np
import pytest
import soundfile
import torch

from sing_synth.data import (VELOCITIES, Note, NSynthDataset, filter_notes, instrument_names,
                             load_split, read_examples, split_notes, write_examples, write_note)
from sing_synth.errors import DatasetError

LENGTH = 4000  # short notes keep the folder small; the dataset is told the same length
RATE = 16000
INSTRUMENTS = [(0, "bass_synthetic_000", "bass", "synthetic"),
               (3, "keyboard_acoustic_003", "keyboard", "acoustic"),
               (7, "organ_electronic_007", "organ", "electronic")]
PITCHES = (40, 60, 72)


def make_note(instrument, instrument_str, family, source, pitch, velocity):
    return Note(f"{instrument_str}-{pitch:03d}-{velocity:03d}", instrument, instrument_str,
                pitch, velocity, family, source)


def sine(note, length=LENGTH):
    """A quiet sine whose frequency and amplitude encode the note, so items are distinguishable."""
    t = np.arange(length) / RATE
    freq = 440.0 * 2 ** ((note.pitch - 69) / 12)
    return 0.9 * note.velocity / 127 * np.sin(2 * np.pi * freq * t + note.instrument)


@pytest.fixture
def folder(tmp_path):
    """A small valid NSynth folder: 3 instruments x 3 pitches x 5 velocities = 45 notes."""
    notes = [make_note(*inst, p, v) for inst in INSTRUMENTS for p in PITCHES for v in VELOCITIES]
    for n in notes:
        write_note(tmp_path, n, sine(n))
    write_examples(tmp_path, notes)
    return tmp_path, sorted(notes, key=lambda n: n.note_str)


def big_note_list(n_instruments=200, pitches=range(21, 109)):
    """Notes without audio, for split statistics: n_instruments x len(pitches) groups x 5."""
    return [make_note(i, f"guitar_acoustic_{i:03d}", "guitar", "acoustic", p, v)
            for i in range(n_instruments) for p in pitches for v in VELOCITIES]


# --- round trip -------------------------------------------------------------------------------

def test_examples_json_has_all_nsynth_fields(folder):
    root, notes = folder
    data = json.loads((root / "examples.json").read_text())
    entry = data["keyboard_acoustic_003-060-100"]
    assert set(entry) == {"note", "note_str", "instrument", "instrument_str", "pitch", "velocity",
                          "sample_rate", "qualities", "qualities_str", "instrument_family",
                          "instrument_family_str", "instrument_source", "instrument_source_str"}
    assert entry["instrument_family"] == 4 and entry["instrument_source"] == 0
    assert entry["qualities"] == [0] * 10 and entry["sample_rate"] == RATE
    info = soundfile.info(str(root / "audio" / "keyboard_acoustic_003-060-100.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (RATE, 1, LENGTH,
                                                                           "PCM_16")


def test_round_trip(folder):
    root, notes = folder
    assert read_examples(root) == notes
    assert instrument_names(notes) == {i: s for i, s, _, _ in INSTRUMENTS}
    ds = NSynthDataset(root, notes, length=LENGTH)
    assert len(ds) == len(notes)
    for i in (0, 17, len(notes) - 1):
        wave, inst, pitch, vel = ds[i]
        note = notes[i]
        assert wave.dtype == torch.float32 and wave.shape == (LENGTH,)
        assert inst.dtype == pitch.dtype == vel.dtype == torch.long and inst.dim() == 0
        assert (inst.item(), pitch.item()) == (note.instrument, note.pitch)
        assert VELOCITIES[vel.item()] == note.velocity
        np.testing.assert_allclose(wave.numpy(), sine(note), atol=2 / 32768)


def test_legacy_velocity_rows(folder):
    root, notes = folder
    rows = (25, 50, 75, 0, 100, 127)
    ds = NSynthDataset(root, notes, velocity_rows=rows, length=LENGTH)
    for i, note in enumerate(notes):
        assert rows[ds[i][3].item()] == note.velocity
    with pytest.raises(DatasetError, match="velocity"):
        NSynthDataset(root, notes, velocity_rows=(25, 50, 75, 100), length=LENGTH)


def test_in_memory_equals_streamed(folder):
    root, notes = folder
    streamed = NSynthDataset(root, notes, length=LENGTH)
    loaded = NSynthDataset(root, notes, length=LENGTH, in_memory=True)
    assert loaded._audio.dtype == np.int16
    for i in range(len(notes)):
        for a, b in zip(streamed[i], loaded[i]):
            assert torch.equal(a, b)


def test_load_split(folder):
    root, notes = folder
    parts = {s: load_split(root, s, seed=3, length=LENGTH) for s in ("train", "valid", "test")}
    assert sum(len(d) for d in parts.values()) == len(notes)
    assert load_split(root, "all", length=LENGTH).notes == notes
    organ = load_split(root, "all", families=["organ"], pitch_range=(50, 80), length=LENGTH)
    assert [n.note_str for n in organ.notes] == [
        f"organ_electronic_007-{p:03d}-{v:03d}" for p in (60, 72) for v in VELOCITIES]
    with pytest.raises(ValueError):
        load_split(root, "training", length=LENGTH)
    both = load_split(root, "train+valid", seed=3, length=LENGTH).notes
    assert both == [n for n in notes if n in parts["train"].notes + parts["valid"].notes]
    assert len(both) == len(parts["train"]) + len(parts["valid"]) and not set(both) & set(parts["test"].notes)
    with pytest.raises(ValueError):
        load_split(root, "train+tests", length=LENGTH)


# --- filters ----------------------------------------------------------------------------------

def test_filters(folder):
    _, notes = folder
    assert filter_notes(notes) == notes
    assert {n.family for n in filter_notes(notes, families=["bass", "organ"])} == {"bass", "organ"}
    assert {n.source for n in filter_notes(notes, sources=["acoustic"])} == {"acoustic"}
    assert {n.pitch for n in filter_notes(notes, pitch_range=(60, 72))} == {60, 72}
    assert {n.pitch for n in filter_notes(notes, pitch_range=(41, 59))} == set()
    assert {n.velocity for n in filter_notes(notes, velocities=[25, 127])} == {25, 127}
    both = filter_notes(notes, families=["keyboard"], velocities=[50], pitch_range=(40, 40))
    assert [n.note_str for n in both] == ["keyboard_acoustic_003-040-050"]


# --- split ------------------------------------------------------------------------------------

def _groups(split):
    return {name: {(n.instrument_str, n.pitch) for n in part} for name, part in split.items()}


def test_split_groups_stay_whole():
    notes = big_note_list(40)
    split = split_notes(notes, seed=1)
    assert sorted(sum(split.values(), []), key=str) == sorted(notes, key=str)
    groups = _groups(split)
    assert not groups["train"] & groups["valid"]
    assert not groups["train"] & groups["test"]
    assert not groups["valid"] & groups["test"]
    for part in split.values():  # every velocity of a group lands with it
        counts = Counter((n.instrument_str, n.pitch) for n in part)
        assert set(counts.values()) <= {len(VELOCITIES)}


def test_split_deterministic_and_seeded():
    notes = big_note_list(40)
    assert split_notes(notes, seed=5) == split_notes(notes, seed=5)
    assert _groups(split_notes(notes, seed=5)) != _groups(split_notes(notes, seed=6))


def test_split_independent_of_other_groups():
    notes = big_note_list(40)
    full = _groups(split_notes(notes, seed=2))
    subset = notes[::-1][: len(notes) // 3]  # reordered, and most other groups removed
    for name, groups in _groups(split_notes(subset, seed=2)).items():
        assert groups <= full[name]


def test_split_proportions():
    notes = big_note_list(200)  # 17,600 groups: std of a fraction ~0.0023
    split = split_notes(notes, seed=0, valid=0.1, test=0.1)
    frac = {k: len(v) / len(notes) for k, v in split.items()}
    assert abs(frac["valid"] - 0.1) < 0.015 and abs(frac["test"] - 0.1) < 0.015
    other = split_notes(notes, seed=0, valid=0.3, test=0.0)
    assert not other["test"] and abs(len(other["valid"]) / len(notes) - 0.3) < 0.02
    with pytest.raises(ValueError):
        split_notes(notes, valid=0.7, test=0.5)


# --- malformed folders ------------------------------------------------------------------------

def _edit_json(root, edit):
    path = root / "examples.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_examples_json(tmp_path):
    with pytest.raises(DatasetError, match="examples.json"):
        read_examples(tmp_path)


def test_bad_json(folder):
    root, _ = folder
    (root / "examples.json").write_text('{"a": ')
    with pytest.raises(DatasetError, match="examples.json"):
        read_examples(root)
    (root / "examples.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="examples.json"):
        read_examples(root)


def test_missing_field(folder):
    root, _ = folder
    key = "bass_synthetic_000-060-075"
    _edit_json(root, lambda d: d[key].pop("pitch"))
    with pytest.raises(DatasetError, match=rf"examples\.json.*{key}.*pitch"):
        read_examples(root)


def test_wrong_type(folder):
    root, _ = folder
    key = "bass_synthetic_000-060-075"
    _edit_json(root, lambda d: d[key].update(velocity="75"))
    with pytest.raises(DatasetError, match=rf"examples\.json.*{key}.*velocity"):
        read_examples(root)


def test_missing_wav(folder):
    root, _ = folder
    (root / "audio" / "organ_electronic_007-072-050.wav").unlink()
    with pytest.raises(DatasetError, match="organ_electronic_007-072-050.wav"):
        read_examples(root)


@pytest.mark.parametrize("rate, channels, length", [(22050, 1, LENGTH), (RATE, 2, LENGTH),
                                                    (RATE, 1, LENGTH - 1)])
def test_bad_wav(folder, rate, channels, length):
    root, notes = folder
    bad = notes[7]
    name = f"{bad.note_str}.wav"
    soundfile.write(str(root / "audio" / name), np.zeros((length, channels)), rate,
                    subtype="PCM_16")
    ds = NSynthDataset(root, notes, length=LENGTH)
    ds[6]  # other notes still read fine when streaming
    with pytest.raises(DatasetError, match=name):
        ds[7]
    with pytest.raises(DatasetError, match=name):  # in_memory checks all at construction
        NSynthDataset(root, notes, length=LENGTH, in_memory=True)


def test_corrupt_wav(folder):
    root, notes = folder
    name = f"{notes[0].note_str}.wav"
    (root / "audio" / name).write_bytes(b"not a wav")
    with pytest.raises(DatasetError, match=name):
        NSynthDataset(root, notes, length=LENGTH)[0]


def test_write_note_clips(tmp_path):
    note = make_note(*INSTRUMENTS[0], 60, 127)
    path = write_note(tmp_path, note, np.full(100, 2.0))
    assert soundfile.read(str(path), dtype="int16")[0].min() == 32767  # clipped, not wrapped
    with pytest.raises(ValueError):
        write_note(tmp_path, note, np.zeros((2, 100)))
