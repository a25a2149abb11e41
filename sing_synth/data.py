"""NSynth (jsonwav layout) reader and writer, and the paper's (instrument, pitch) split.

A dataset folder holds ``examples.json`` (note_str -> metadata) and ``audio/<note_str>.wav``
(16-bit PCM, mono, 16 kHz, 64,000 samples).  See SING.md, sections "Split" and "NSynth format".
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile
import torch
import torch.utils.data

from sing_synth.errors import DatasetError

VELOCITIES = (25, 50, 75, 100, 127)  # NSynth's MIDI velocities
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet",
            "organ", "reed", "string", "synth_lead", "vocal")  # NSynth's instrument_family order
SOURCES = ("acoustic", "electronic", "synthetic")  # NSynth's instrument_source order
SPLITS = ("train", "valid", "test")

# examples.json field -> (Note attribute, expected type)
_FIELDS = {
    "note_str": ("note_str", str),
    "instrument": ("instrument", int),
    "instrument_str": ("instrument_str", str),
    "pitch": ("pitch", int),
    "velocity": ("velocity", int),
    "instrument_family_str": ("family", str),
    "instrument_source_str": ("source", str),
}


@dataclass(frozen=True)
class Note:
    """One NSynth note's symbols; ``velocity`` is the MIDI velocity (25..127)."""
    note_str: str
    instrument: int
    instrument_str: str
    pitch: int
    velocity: int
    family: str  # instrument_family_str
    source: str  # instrument_source_str


def wav_path(root, note_str: str) -> Path:
    """Path of a note's audio file inside a dataset folder."""
    return Path(root) / "audio" / f"{note_str}.wav"


# ---------------------------------------------------------------------------------------------
# Reading metadata

def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found (not an NSynth folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot parse JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping note_str to metadata")
    return data


def _parse_entry(path: Path, key: str, entry) -> Note:
    """Validate one examples.json entry and turn it into a Note."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: note {key!r} is not a JSON object")
    values = {}
    for field, (attr, kind) in _FIELDS.items():
        if field not in entry:
            raise DatasetError(f"{path}: note {key!r} lacks field {field!r}")
        value = entry[field]
        # bool is a subclass of int in Python, but true/false is never a valid id.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DatasetError(f"{path}: note {key!r} field {field!r} should be "
                               f"{kind.__name__}, got {type(value).__name__}")
        values[attr] = value
    if values["note_str"] != key:
        raise DatasetError(f"{path}: key {key!r} differs from its note_str "
                           f"{values['note_str']!r}")
    return Note(**values)


def read_examples(root) -> list[Note]:
    """Parse ``root/examples.json``; check each note's wav exists. Returns notes sorted by note_str."""
    root = Path(root)
    path = root / "examples.json"
    data = _load_json(path)
    notes = [_parse_entry(path, key, entry) for key, entry in data.items()]
    notes.sort(key=lambda n: n.note_str)
    for note in notes:
        wav = wav_path(root, note.note_str)
        if not wav.is_file():
            raise DatasetError(f"{wav}: missing audio file for note {note.note_str!r} "
                               f"listed in {path}")
    return notes


def instrument_names(notes: Iterable[Note]) -> dict[int, str]:
    """Instrument id -> instrument_str."""
    return {n.instrument: n.instrument_str for n in notes}


def filter_notes(notes: Iterable[Note], families=None, sources=None, pitch_range=None,
                 velocities=None) -> list[Note]:
    """Keep notes matching every given criterion (None = no constraint).

    families/sources: iterables of *_str names; pitch_range: (lo, hi) inclusive MIDI pitches;
    velocities: iterable of MIDI velocities.
    """
    families = None if families is None else set(families)
    sources = None if sources is None else set(sources)
    velocities = None if velocities is None else set(velocities)
    lo, hi = pitch_range if pitch_range is not None else (-np.inf, np.inf)
    return [n for n in notes
            if (families is None or n.family in families)
            and (sources is None or n.source in sources)
            and lo <= n.pitch <= hi
            and (velocities is None or n.velocity in velocities)]


# ---------------------------------------------------------------------------------------------
# Split

def _group_draw(seed: int, instrument_str: str, pitch: int) -> float:
    """Uniform draw in [0, 1) for one (instrument, pitch) group.

    Derived from a hash of the group alone (not a shared RNG stream) so a group's split does not
    depend on which other groups are present or their order; hashlib, because hash() is salted.
    """
    digest = hashlib.sha256(f"{seed}\0{instrument_str}\0{pitch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_notes(notes: Iterable[Note], seed: int = 0, valid: float = 0.1,
                test: float = 0.1) -> dict[str, list[Note]]:
    """The paper's split: each (instrument, pitch) group goes wholly to one split.

    A group goes to "valid" with probability ``valid``, "test" with ``test``, else "train".
    Returns {"train", "valid", "test"} -> notes, each in input order.
    """
    if valid < 0 or test < 0 or valid + test > 1:
        raise ValueError(f"split fractions must be >= 0 and sum to <= 1, got {valid}, {test}")
    out: dict[str, list[Note]] = {name: [] for name in SPLITS}
    for note in notes:
        u = _group_draw(seed, note.instrument_str, note.pitch)
        name = "valid" if u < valid else "test" if u < valid + test else "train"
        out[name].append(note)
    return out


def join_splits(notes: list[Note], groups: dict[str, list[Note]], parts) -> list[Note]:
    """The notes of the splits named in `parts` (`groups`: `split_notes` of `notes`), in the
    order of `notes`."""
    chosen = {id(note) for part in parts for note in groups[part]}
    return [note for note in notes if id(note) in chosen]


# ---------------------------------------------------------------------------------------------
# Audio dataset

def velocity_index(velocity_rows) -> dict[int, int]:
    """MIDI velocity -> embedding row; 0 marks an unused row."""
    return {v: i for i, v in enumerate(velocity_rows) if v != 0}


def _read_wav(path: Path, sample_rate: int, length: int, dtype: str) -> np.ndarray:
    """Read a mono wav, checking rate, channels and length. Returns [length] array of dtype."""
    try:
        with soundfile.SoundFile(str(path)) as f:
            if f.samplerate != sample_rate:
                raise DatasetError(f"{path}: sample rate {f.samplerate} Hz, "
                                   f"expected {sample_rate} Hz")
            if f.channels != 1:
                raise DatasetError(f"{path}: {f.channels} channels, expected mono")
            if f.frames != length:
                raise DatasetError(f"{path}: {f.frames} samples, expected {length}")
            return f.read(length, dtype=dtype)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
        raise DatasetError(f"{path}: cannot read audio: {e}") from None


class NSynthDataset(torch.utils.data.Dataset):
    """Notes of an NSynth folder as training items.

    Item i -> (wave float32 [length] in [-1, 1], instrument long [], pitch long [],
    velocity_row long []).  ``velocity_rows[r]`` is the MIDI velocity of embedding row r
    (0 = unused row, e.g. the reference's (25, 50, 75, 0, 100, 127)).
    Audio is streamed from disk unless ``in_memory``, which loads all of it once as int16
    (half the RAM of float32; NSynth's train set is ~37 GB as float32).
    """

    def __init__(self, root, notes: list[Note], velocity_rows=VELOCITIES,
                 sample_rate: int = 16000, length: int = 64000, in_memory: bool = False):
        self.root = Path(root)
        self.notes = list(notes)
        self.velocity_rows = tuple(velocity_rows)
        self.sample_rate = sample_rate
        self.length = length
        index = velocity_index(self.velocity_rows)
        for note in self.notes:
            if note.velocity not in index:
                raise DatasetError(
                    f"{self.root / 'examples.json'}: note {note.note_str!r} has velocity "
                    f"{note.velocity}, not among velocity rows {self.velocity_rows}")
        self._rows = [index[n.velocity] for n in self.notes]
        self._audio = None  # int16 [len(notes), length] when in_memory
        if in_memory:
            self._audio = np.empty((len(self.notes), length), dtype=np.int16)
            for i, note in enumerate(self.notes):
                self._audio[i] = self._read(note, "int16")

    def _read(self, note: Note, dtype: str) -> np.ndarray:
        return _read_wav(wav_path(self.root, note.note_str), self.sample_rate, self.length, dtype)

    def __len__(self) -> int:
        return len(self.notes)

    def __getitem__(self, i: int):
        note = self.notes[i]
        if self._audio is not None:
            # Same scale as soundfile's int16 -> float conversion, so both paths agree exactly.
            wave = self._audio[i].astype(np.float32) / 32768.0
        else:
            wave = self._read(note, "float32")
        return (torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                torch.tensor(note.instrument, dtype=torch.long),
                torch.tensor(note.pitch, dtype=torch.long),
                torch.tensor(self._rows[i], dtype=torch.long))


def load_split(root, split: str, seed: int = 0, families=None, sources=None, pitch_range=None,
               velocities=None, velocity_rows=VELOCITIES, sample_rate: int = 16000,
               length: int = 64000, in_memory: bool = False) -> NSynthDataset:
    """Read, filter, split (on the filtered notes) and wrap one split ("all" = no split), or
    several joined by "+" ("train+valid"), their notes in the input order."""
    parts = split.split("+")
    if split != "all" and not all(part in SPLITS for part in parts):
        raise ValueError(f"split must be one of {SPLITS + ('all',)} or several joined by '+', got {split!r}")
    notes = filter_notes(read_examples(root), families=families, sources=sources,
                         pitch_range=pitch_range, velocities=velocities)
    if split != "all":
        notes = join_splits(notes, split_notes(notes, seed=seed), parts)
    return NSynthDataset(root, notes, velocity_rows=velocity_rows, sample_rate=sample_rate,
                         length=length, in_memory=in_memory)


# ---------------------------------------------------------------------------------------------
# Writing

def write_note(root, note: Note, wave, sample_rate: int = 16000) -> Path:
    """Write ``wave`` (float [T], clipped to [-1, 1]) as 16-bit PCM ``root/audio/<note_str>.wav``."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"wave must be 1-D [T], got shape {wave.shape}")
    path = wav_path(root, note.note_str)
    path.parent.mkdir(parents=True, exist_ok=True)
    # libsndfile does not clip when converting float to PCM: out-of-range values would wrap.
    soundfile.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


def _entry(index: int, note: Note, sample_rate: int) -> dict:
    """One examples.json entry with all of NSynth's fields."""
    if note.family not in FAMILIES:
        raise DatasetError(f"note {note.note_str!r}: unknown family {note.family!r}, "
                           f"expected one of {FAMILIES}")
    if note.source not in SOURCES:
        raise DatasetError(f"note {note.note_str!r}: unknown source {note.source!r}, "
                           f"expected one of {SOURCES}")
    return {
        "note": index, "note_str": note.note_str,
        "instrument": note.instrument, "instrument_str": note.instrument_str,
        "pitch": note.pitch, "velocity": note.velocity, "sample_rate": sample_rate,
        "qualities": [0] * 10, "qualities_str": [],
        "instrument_family": FAMILIES.index(note.family), "instrument_family_str": note.family,
        "instrument_source": SOURCES.index(note.source), "instrument_source_str": note.source,
    }


def write_examples(root, notes: Iterable[Note], sample_rate: int = 16000) -> Path:
    """Write ``root/examples.json`` for ``notes`` (the wavs are written by write_note)."""
    notes = sorted(notes, key=lambda n: n.note_str)
    data = {n.note_str: _entry(i, n, sample_rate) for i, n in enumerate(notes)}
    path = Path(root) / "examples.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return path
