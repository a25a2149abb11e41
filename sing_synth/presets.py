"""Instrument presets: what a MIDI program plays on the SING model.

A preset is one YAML file, ``presets/<name>.yaml``, read with ``yaml.safe_load`` only (a preset
never runs code: a ``!!python/...`` tag is refused like any other error)::

    name: piano                # lower-case words joined by dashes; must equal the file stem
    description: Acoustic grand piano   # optional, default ""
    program: 0                 # General MIDI program 0..127 (a program change selects it)
    instrument: fluidr3_gm_000_yamaha_grand_piano
                               # a model instrument name, or a blend {name: weight, ...}
                               # (weights > 0, normalised to sum 1: SING morphs between them)
    gain: 1.0                  # optional, default 1.0; linear, 0 < gain <= 4
    release: 0.25              # optional, default 0.25; seconds of fade after note-off,
                               # 0.005..4
    velocity_curve: 1.0        # optional, default 1.0; 0.1..4, see below
    pitch_range: [21, 108]     # optional, default [0, 127]; MIDI notes played (inclusive),
                               # other notes are ignored
    bend_range: 2              # optional, default 2; pitch-bend range in semitones, 0..24
    pitched: true              # optional, default true; false for unpitched sounds

``name``, ``program`` and ``instrument`` are required; every other field has the default shown.
Unknown fields are errors, and so are duplicate keys.

Velocity: the model renders the nearest of its velocity layers (its timbre and trained loudness
follow it), and the player multiplies that note by ``Preset.velocity_gain(velocity, layer)``::

    amplitude factor = gain * (velocity / layer_velocity) ** velocity_curve

so loudness moves smoothly between layers instead of jumping at their borders (the layer itself
already carries the trained loudness: an absolute (velocity / 127) law would count it twice).
1.0 is linear within a layer, < 1 flattens it, > 1 widens it.  Velocity 0 gives 0.

Every validation failure raises ``sing_synth.errors.UserError`` with one line naming the file
and, where there is one, the field, e.g.
``presets/piano.yaml: field 'gain': must be a number in (0, 4], got 'loud'``; YAML syntax
errors name the file and the line.

The shipped presets (``presets/`` at the repository root, see ``default_presets_dir``) play the
instruments of the shipped model, trained on the FluidR3_GM programs in ``SHIPPED_PROGRAMS``
(bank 0) rendered by ``sing_synth.soundfont``; their instrument names are the ones that module
gives, ``fluidr3_gm_<program:03d>_<preset name slug>``.  Their gains even out loudness: each
is 10 ** ((-24 dB - L) / 20), rounded to 0.05 and kept within 0.5..2, where L is the median RMS
level (dBFS) of FluidR3 renders of the program over the preset's pitch range, velocity 100,
0.1..0.6 s after the key press (the model reproduces its training notes' loudness).  Pitch
ranges are each instrument's usual range cut to MIDI 24..96, the training set's pitches.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from sing_synth import gm
from sing_synth.errors import UserError

# FluidR3_GM (bank 0) programs of the shipped model's training set: the training recipe renders
# these with ``sing-synth dataset soundfont --programs ...``; one shipped preset plays each.
SHIPPED_PROGRAMS = (
    0,   # piano           Yamaha Grand Piano
    1,   # bright-piano    Bright Yamaha Grand
    4,   # electric-piano  Rhodes EP
    6,   # harpsichord
    11,  # vibraphone
    12,  # marimba
    16,  # organ           DrawbarOrgan
    19,  # church-organ
    21,  # accordion
    24,  # nylon-guitar
    25,  # steel-guitar
    27,  # clean-guitar
    33,  # bass            Fingered Bass
    40,  # violin
    42,  # cello
    46,  # harp
    48,  # strings
    52,  # choir           Ahh Choir
    56,  # trumpet
    60,  # french-horn
    61,  # brass           Brass Section
    65,  # sax             Alto Sax
    68,  # oboe
    71,  # clarinet
    73,  # flute
    81,  # synth-lead      Saw Wave
    89,  # synth-pad       Warm Pad
)

# The preset that plays a program with no preset of its own in its GM group.
DEFAULT_PRESET = "piano"

PRESET_SUFFIX = ".yaml"

_NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FIELDS = ("name", "description", "program", "instrument", "gain", "release",
           "velocity_curve", "pitch_range", "bend_range", "pitched")
_REQUIRED = ("name", "program", "instrument")


@dataclass(frozen=True)
class Preset:
    """One validated preset.  ``instrument`` is {model instrument name: weight}, weights > 0
    summing to 1 (one entry for a plain instrument, several for a morph).  ``source`` is the
    file it was read from (for messages; not compared)."""
    name: str
    program: int
    instrument: dict = field(hash=False)
    description: str = ""
    gain: float = 1.0
    release: float = 0.25
    velocity_curve: float = 1.0
    pitch_range: tuple = (0, 127)
    bend_range: float = 2.0
    pitched: bool = True
    source: str | None = field(default=None, compare=False)

    @property
    def is_blend(self) -> bool:
        return len(self.instrument) > 1

    def plays(self, pitch: int) -> bool:
        """True if the preset plays this MIDI note (inside ``pitch_range``)."""
        return self.pitch_range[0] <= pitch <= self.pitch_range[1]

    def velocity_gain(self, velocity: int, layer_velocity: int = 127) -> float:
        """Amplitude factor for a note rendered at ``layer_velocity``:
        ``gain * (velocity / layer_velocity) ** velocity_curve``."""
        v = min(max(velocity, 0), 127) / float(layer_velocity)
        return self.gain * v ** self.velocity_curve if v > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Loading and validation

def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Validation of one file's mapping; every error names the file and the field."""

    def __init__(self, where: str, data: dict):
        self.where, self.data = where, data

    def fail(self, key: str, message: str):
        raise UserError(f"{self.where}: field '{key}': {message}")

    def number(self, key, lo, hi, default, lo_open=False):
        value = self.data.get(key, default)
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) \
                or not ((lo < value) if lo_open else (lo <= value)) or not value <= hi:
            self.fail(key, f"must be a number in {interval}, got {_show(value)}")
        return float(value)

    def integer(self, key, lo, hi, value=None):
        value = self.data.get(key) if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(key, f"must be an integer in {lo}..{hi}, got {_show(value)}")
        return value


def _read_yaml(path: Path, where: str):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{where}: cannot read preset: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
        _check_duplicate_keys(text, where)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(e.problem or e.context or "invalid YAML").split())
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise UserError(f"{where}: {at}YAML error: {what}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where}: YAML error: {' '.join(str(e).split())}") from None
    return data


def _check_duplicate_keys(text: str, where: str) -> None:
    """safe_load keeps the last of two equal keys silently; a preset file must not have any."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: nothing is constructed
    if not isinstance(root, yaml.MappingNode):
        return
    seen = set()
    for key, _value in root.value:
        if isinstance(key, yaml.ScalarNode):
            if key.value in seen:
                raise UserError(f"{where}: line {key.start_mark.line + 1}: field "
                                f"'{key.value}' given twice")
            seen.add(key.value)


def _instrument(f: _Fields) -> dict:
    value = f.data["instrument"]
    if isinstance(value, str):
        if not value.strip():
            f.fail("instrument", "must not be empty")
        return {value.strip(): 1.0}
    if not isinstance(value, dict):
        f.fail("instrument", f"must be an instrument name or a mapping {{name: weight, ...}}, "
                             f"got {_show(value)}")
    if not value:
        f.fail("instrument", "the blend names no instrument")
    weights = {}
    for name, weight in value.items():
        if not isinstance(name, str) or not name.strip():
            f.fail("instrument", f"blend keys must be instrument names, got {_show(name)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight <= 0:
            f.fail("instrument", f"weight of {name!r} must be a number > 0, got "
                                 f"{_show(weight)}")
        if name.strip() in weights:
            f.fail("instrument", f"{name.strip()!r} appears twice in the blend")
        weights[name.strip()] = float(weight)
    total = sum(weights.values())
    if not math.isfinite(total):
        f.fail("instrument", "weights are too large")
    return {name: w / total for name, w in weights.items()}


def load_preset(path) -> Preset:
    """Read and validate one preset file.  Any problem -> UserError, one line naming the file
    (and the field)."""
    path = Path(path)
    where = str(path)
    if path.suffix != PRESET_SUFFIX:
        raise UserError(f"{where}: a preset file must end in {PRESET_SUFFIX}")
    if not path.is_file():
        raise UserError(f"{where}: preset file not found")
    data = _read_yaml(path, where)
    if data is None:
        raise UserError(f"{where}: empty file: expected the preset's fields "
                        f"({', '.join(_REQUIRED)}, ...)")
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of fields (name: ..., program: ...), "
                        f"got a {type(data).__name__}")
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{where}: field {_show(key)}: unknown field{hint}; fields are "
                            f"{', '.join(_FIELDS)}")
    for key in _REQUIRED:
        if key not in data:
            raise UserError(f"{where}: field '{key}': missing (required)")
    f = _Fields(where, data)

    name = data["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        f.fail("name", f"must be lower-case words (a-z, 0-9) joined by dashes, got "
                       f"{_show(name)}")
    if name != path.stem:
        f.fail("name", f"must match the file name: {name!r} is in {path.name} "
                       f"(rename the file to {name}{PRESET_SUFFIX} or the preset to "
                       f"{path.stem!r})")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        f.fail("description", f"must be text, got {_show(description)}")
    description = " ".join(description.split())
    program = f.integer("program", 0, 127)
    instrument = _instrument(f)
    gain = f.number("gain", 0, 4, 1.0, lo_open=True)
    release = f.number("release", 0.005, 4, 0.25)
    velocity_curve = f.number("velocity_curve", 0.1, 4, 1.0)
    bend_range = f.number("bend_range", 0, 24, 2.0)

    pitch_range = data.get("pitch_range", [0, 127])
    if not isinstance(pitch_range, list) or len(pitch_range) != 2 or any(
            isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 127
            for p in pitch_range):
        f.fail("pitch_range", f"must be [low, high], MIDI notes in 0..127, got "
                              f"{_show(pitch_range)}")
    if pitch_range[0] > pitch_range[1]:
        f.fail("pitch_range", f"low note {pitch_range[0]} is above high note {pitch_range[1]}")
    pitched = data.get("pitched", True)
    if not isinstance(pitched, bool):
        f.fail("pitched", f"must be true or false, got {_show(pitched)}")

    return Preset(name=name, program=program, instrument=instrument, description=description,
                  gain=gain, release=release, velocity_curve=velocity_curve,
                  pitch_range=(pitch_range[0], pitch_range[1]), bend_range=bend_range,
                  pitched=pitched, source=where)


def load_presets(folder=None) -> dict[str, Preset]:
    """Every ``*.yaml`` preset of ``folder`` (default ``default_presets_dir()``), as
    {name: Preset} sorted by name.  A bad file, two presets with the same name or the same
    program, or a folder without presets -> UserError."""
    folder = Path(folder) if folder is not None else default_presets_dir()
    if not folder.is_dir():
        raise UserError(f"preset folder not found: {folder}")
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix == PRESET_SUFFIX)
    except OSError as e:
        raise UserError(f"cannot list preset folder {folder}: {e.strerror or e}") from None
    if not paths:
        raise UserError(f"no presets (*{PRESET_SUFFIX} files) in {folder}")
    by_name: dict[str, Preset] = {}
    by_program: dict[int, Preset] = {}
    for path in paths:
        preset = load_preset(path)
        if preset.name in by_name:
            raise UserError(f"{path}: field 'name': {preset.name!r} is also the name of "
                            f"{by_name[preset.name].source}")
        if preset.program in by_program:
            raise UserError(f"{path}: field 'program': program {preset.program} is also "
                            f"played by {by_program[preset.program].source}")
        by_name[preset.name] = by_program[preset.program] = preset
    return dict(sorted(by_name.items()))


def default_presets_dir() -> Path:
    """The shipped presets: ``presets/`` at the repository root, the parent folder of the
    ``sing_synth`` package (``Path(sing_synth.__file__).parent.parent / "presets"``), which is
    where they are in a checkout and in an editable install.  A wheel does not carry that
    folder; if the package ever ships them as package data in ``sing_synth/preset_files/``,
    that folder is used when the repository's is absent.  The repository's path is returned
    when neither exists (``load_presets`` then names it in its error)."""
    package = Path(__file__).resolve().parent
    repo = package.parent / "presets"
    packaged = package / "preset_files"
    if not repo.is_dir() and packaged.is_dir():
        return packaged
    return repo


# ---------------------------------------------------------------------------------------------
# Lookup

def find_preset(presets: Mapping[str, Preset], name: str) -> Preset:
    """The preset called ``name`` (case-insensitive), else the only one whose name starts with
    it.  No match or several -> UserError listing the choices."""
    if not presets:
        raise UserError("no presets loaded")
    key = str(name).strip().lower()
    if key in presets:
        return presets[key]
    matches = [n for n in presets if n.startswith(key)] if key else []
    if len(matches) == 1:
        return presets[matches[0]]
    if matches:
        raise UserError(f"preset {name!r} is ambiguous: it could be {', '.join(matches)}")
    raise UserError(f"unknown preset {name!r}; choices: {', '.join(presets)}")


def preset_for_program(presets: Mapping[str, Preset], program: int,
                       default: str = DEFAULT_PRESET) -> Preset:
    """The preset a MIDI program change selects:

    1. the preset whose ``program`` is ``program``;
    2. else, among the presets in the same General MIDI group of 8 (``program // 8``: Piano,
       Organ, Guitar, ...), the one with the nearest program (the lower one on a tie);
    3. else the preset named ``default`` (``piano``), or, if there is none, the preset with the
       lowest program.
    """
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
        raise UserError(f"MIDI program must be an integer in 0..127, got {program!r}")
    if not presets:
        raise UserError("no presets loaded")
    group = gm.gm_group(program)
    same_group = [p for p in presets.values() if gm.gm_group(p.program) == group]
    if same_group:
        return min(same_group, key=lambda p: (abs(p.program - program), p.program))
    if default in presets:
        return presets[default]
    return min(presets.values(), key=lambda p: p.program)


def check_instruments(presets: Mapping[str, Preset] | Iterable[Preset],
                      instrument_names: Iterable[str]) -> None:
    """Raise UserError (one line, naming the first bad preset file) if a preset names an
    instrument that is not in ``instrument_names`` (the checkpoint's instruments)."""
    known = set(instrument_names)
    items = list(presets.values()) if isinstance(presets, Mapping) else list(presets)
    bad = [(p, [n for n in p.instrument if n not in known]) for p in items]
    bad = [(p, missing) for p, missing in bad if missing]
    if not bad:
        return
    preset, missing = bad[0]
    close = difflib.get_close_matches(missing[0], sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    others = f"; {len(bad) - 1} more preset(s) name instruments it lacks" if len(bad) > 1 \
        else ""
    where = preset.source or f"preset {preset.name!r}"
    raise UserError(f"{where}: field 'instrument': the model has no instrument "
                    f"{', '.join(map(repr, missing))}{hint}{others}")
