"""Render NSynth-style datasets from SoundFonts with FluidSynth (through pyfluidsynth).

Each note is rendered like an NSynth note (SING.md, "NSynth format"): 16 kHz, mono (the stereo
output mixed down as (L + R) / 2), the key held for 3.0 s then released, 4.0 s in all
(64,000 samples); reverb and chorus off.  Velocities 25/50/75/100/127, MIDI pitches 21..108 by
default.  Silent or near-silent notes (a pitch outside a preset's key ranges, a very quiet
note) are dropped and listed with their reason in ``dropped.json``.

Layout written in ``out`` (NSynth jsonwav, read back by ``sing_synth.data.read_examples``)::

    out/examples.json            note_str -> metadata, (re)written at the end of every run
    out/audio/<note_str>.wav     16-bit PCM, mono, 16 kHz, 64,000 samples
    out/dropped.json             every dropped note and every requested preset that is missing

``instrument_str`` is ``<soundfont stem>_<program:03d>_<preset name>`` (lowercase, runs of
other characters folded to ``_``), e.g. ``fluidr3_gm_000_yamaha_grand_piano``; instrument ids
count from 0 over (soundfont in the given order, program).  Family and source come from the
General MIDI program (``sing_synth.gm``).

Runs are resumable: a note whose wav already exists and is valid is not rendered again, and
wavs are written to a temporary file and renamed into place, so a killed run never leaves a
truncated wav behind; rerunning the same command completes the set.  Work is spread over
processes (one task per program); each worker keeps one FluidSynth synthesizer.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import soundfile

from sing_synth import gm
from sing_synth.data import VELOCITIES, Note, wav_path, write_examples, write_note
from sing_synth.errors import UserError

SAMPLE_RATE = 16000
NOTE_LENGTH = 64000          # 4.0 s
HOLD_LENGTH = 48000          # key released after 3.0 s
DEFAULT_PITCH_RANGE = (21, 108)
DEFAULT_GAIN = 1.0           # FluidSynth master gain: loudest GM notes of FluidR3_GM,
                             # TimGM6mb and MuseScore_General_Lite peak at 0.75-0.90 at vel 127
DEFAULT_SILENCE_DB = -60.0
MELODIC_BANK = 0
_BLOCK = 64                  # FluidSynth's internal block size (FLUID_BUFSIZE)
_CHANNEL = 0
_FLUID_ERR, _FLUID_WARN, _FLUID_INFO, _FLUID_DBG = 1, 2, 3, 4


# ---------------------------------------------------------------------------------------------
# FluidSynth access (pyfluidsynth for the library and the Synth object; a few C calls that
# pyfluidsynth does not wrap are declared here with their own prototypes)

class _Fluid:
    """The pyfluidsynth module plus prototypes of the C functions used directly."""

    def __init__(self):
        try:
            import fluidsynth
        except (ImportError, OSError) as e:
            raise UserError(f"FluidSynth is not available ({e}); install libfluidsynth3 "
                            f"(Debian) and pyfluidsynth") from None
        self.module = fluidsynth
        lib = fluidsynth._fl
        vp, i = ctypes.c_void_p, ctypes.c_int

        def proto(name, restype, *argtypes):
            if not hasattr(lib, name):
                return None
            return ctypes.CFUNCTYPE(restype, *argtypes)((name, lib))

        self.program_select = proto("fluid_synth_program_select", i, vp, i, i, i, i)
        self.noteon = proto("fluid_synth_noteon", i, vp, i, i, i)
        self.noteoff = proto("fluid_synth_noteoff", i, vp, i, i)
        self.all_sounds_off = proto("fluid_synth_all_sounds_off", i, vp, i)
        self.write_float = proto("fluid_synth_write_float", i, vp, i, vp, i, i, vp, i, i)
        self.sfload = proto("fluid_synth_sfload", i, vp, ctypes.c_char_p, i)
        self.get_sfont_by_id = proto("fluid_synth_get_sfont_by_id", vp, vp, i)
        self.sfont_get_preset = proto("fluid_sfont_get_preset", vp, vp, i, i)
        self.iteration_start = proto("fluid_sfont_iteration_start", None, vp)
        self.iteration_next = proto("fluid_sfont_iteration_next", vp, vp)
        self.preset_get_name = proto("fluid_preset_get_name", ctypes.c_char_p, vp)
        self.preset_get_banknum = proto("fluid_preset_get_banknum", i, vp)
        self.preset_get_num = proto("fluid_preset_get_num", i, vp)
        for name in ("program_select", "noteon", "noteoff", "all_sounds_off", "write_float",
                     "sfload", "get_sfont_by_id", "sfont_get_preset", "preset_get_name"):
            if getattr(self, name) is None:
                raise UserError(f"the FluidSynth library lacks fluid_{name}: FluidSynth 2.x "
                                f"is needed")
        # FluidSynth logs to stderr; keep its errors (quoted in our messages), drop the rest.
        self.errors: deque[str] = deque(maxlen=8)
        log_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

        def log(level, message, _data):
            if level <= _FLUID_ERR and message:
                self.errors.append(message.decode("utf-8", "replace").strip())

        self._log = log_type(log)  # referenced for as long as the library may call it
        set_log = proto("fluid_set_log_function", vp, i, log_type, vp)
        if set_log is not None:
            for level in (_FLUID_ERR, _FLUID_WARN, _FLUID_INFO, _FLUID_DBG):
                set_log(level, self._log, None)


_FLUID: _Fluid | None = None


def _fluid() -> _Fluid:
    global _FLUID
    if _FLUID is None:
        _FLUID = _Fluid()
    return _FLUID


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class SynthState:
    """One FluidSynth synthesizer (reverb and chorus off, 16 kHz) and its loaded soundfonts.

    Create one per process and reuse it for every note: ``load(path)`` loads a soundfont once
    and makes it the current one for ``render_note``.  Close it (or use ``with``) when done.
    """

    def __init__(self, gain: float = DEFAULT_GAIN, sample_rate: int = SAMPLE_RATE,
                 lazy_samples: bool = False):
        # lazy_samples: FluidSynth's dynamic sample loading, samples read only when a preset
        # is selected: loading a soundfont just to list its presets then takes ~20 ms instead
        # of 0.2 s (FluidR3_GM) or 4.5 s (MuseScore_General_Lite.sf3, Vorbis-compressed).
        self.fluid = _fluid()
        self.gain = float(gain)
        self.sample_rate = int(sample_rate)
        self._synth = self.fluid.module.Synth(
            gain=self.gain, samplerate=float(self.sample_rate), channels=16,
            **{"synth.reverb.active": 0, "synth.chorus.active": 0,
               "synth.dynamic-sample-loading": int(bool(lazy_samples))})
        if not self._synth.synth:
            raise UserError(f"FluidSynth could not create a synthesizer "
                            f"(sample rate {sample_rate} Hz, gain {gain})")
        self.handle = self._synth.synth
        self.sfids: dict[str, int] = {}
        self.sf2_path: str | None = None  # current soundfont
        self.sfid: int | None = None
        self._left = np.zeros(NOTE_LENGTH, dtype=np.float32)
        self._right = np.zeros(NOTE_LENGTH, dtype=np.float32)

    def load(self, sf2_path) -> int:
        """Load a soundfont (once) and make it current. Bad path -> UserError naming it."""
        key = _check_sf2_path(sf2_path)
        if key not in self.sfids:
            self.fluid.errors.clear()
            sfid = self.fluid.sfload(self.handle, os.fsencode(key), 0)
            if sfid < 0:
                why = self.fluid.errors[-1] if self.fluid.errors else "not a SoundFont"
                raise UserError(f"cannot load soundfont {sf2_path}: {why}")
            self.sfids[key] = sfid
        self.sf2_path, self.sfid = key, self.sfids[key]
        return self.sfid

    def presets(self, bank: int | None = MELODIC_BANK) -> list[tuple[int, int, str]]:
        """(bank, program, name) of the current soundfont's presets, sorted; bank None = all."""
        f = self.fluid
        sfont = f.get_sfont_by_id(self.handle, self._current())
        if not sfont:
            raise UserError(f"{self.sf2_path}: FluidSynth lost the loaded soundfont")
        found = []
        if f.iteration_start and f.iteration_next and f.preset_get_banknum and f.preset_get_num:
            f.iteration_start(sfont)
            while True:
                preset = f.iteration_next(sfont)
                if not preset:
                    break
                found.append((f.preset_get_banknum(preset), f.preset_get_num(preset),
                              self._name(preset)))
        else:  # older API: probe the bank's 128 programs
            for b in ([bank] if bank is not None else [MELODIC_BANK]):
                for program in range(128):
                    preset = f.sfont_get_preset(sfont, b, program)
                    if preset:
                        found.append((b, program, self._name(preset)))
        return sorted(p for p in found if bank is None or p[0] == bank)

    def _name(self, preset) -> str:
        raw = self.fluid.preset_get_name(preset) or b""
        return raw.decode("latin-1").strip()

    def _current(self) -> int:
        if self.sfid is None:
            raise UserError("no soundfont loaded: call SynthState.load(path) first")
        return self.sfid

    def _write(self, left: np.ndarray, right: np.ndarray, start: int, count: int) -> None:
        itemsize = left.itemsize
        rc = self.fluid.write_float(self.handle, count, left.ctypes.data + start * itemsize, 0,
                                    1, right.ctypes.data + start * itemsize, 0, 1)
        if rc != 0:
            raise RuntimeError("fluid_synth_write_float failed")

    def close(self) -> None:
        if self._synth is not None:
            self._synth.delete()
            self._synth = None
            self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_sf2_path(sf2_path) -> str:
    try:
        path = Path(os.fspath(sf2_path))
    except TypeError:
        raise UserError(f"soundfont path must be a path, got {sf2_path!r}") from None
    if not path.is_file():
        raise UserError(f"soundfont not found: {sf2_path}")
    # Checked here, before FluidSynth sees it: on a file that is no soundfont, Debian's
    # libfluidsynth also tries its libinstpatch (DLS) loader, which prints GLib warnings.
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise UserError(f"cannot read soundfont {sf2_path}: {e.strerror or e}") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] not in (b"sfbk", b"DLS "):
        raise UserError(f"not a SoundFont file (no RIFF 'sfbk' header): {sf2_path}")
    return os.fspath(path.resolve())


def list_presets(sf2_path, bank: int | None = MELODIC_BANK) -> list[tuple[int, int, str]]:
    """(bank, program, name) of a soundfont's presets in ``bank`` (default the melodic bank 0;
    None = every bank), sorted.  Bad path or unreadable file -> UserError naming it."""
    with SynthState(lazy_samples=True) as state:
        state.load(sf2_path)
        return state.presets(bank)


def render_note(synth_state: SynthState, bank: int, program: int, pitch: int,
                velocity: int) -> np.ndarray:
    """Render one NSynth-style note from the state's current soundfont.

    The key is pressed at t = 0, released at 3.0 s; 4.0 s are rendered.  Returns float32
    [64000], mono ((L + R) / 2), unclipped.  The result does not depend on the notes rendered
    before it with the same synthesizer.
    """
    for what, value, lo, hi in (("bank", bank, 0, 16383), ("program", program, 0, 127),
                                ("pitch", pitch, 0, 127), ("velocity", velocity, 1, 127)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not lo <= value <= hi:
            raise UserError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    st = synth_state
    f, h = st.fluid, st.handle
    sfid = st._current()
    if f.program_select(h, _CHANNEL, sfid, int(bank), int(program)) != 0:
        raise UserError(f"{st.sf2_path}: no preset at bank {bank}, program {program}")
    left, right = st._left, st._right
    # FluidSynth reuses voice objects, and a voice killed mid-note leaves mixing state that
    # bleeds into the first 64-sample block of the next note using it (measured: up to 0.0026
    # of full scale, depending on what was rendered before).  Playing the same note for two
    # blocks and killing it first makes that state a function of this note alone, so a note
    # renders bit-identically whatever came before (reproducible, resumable datasets).
    f.noteon(h, _CHANNEL, int(pitch), int(velocity))
    st._write(left, right, 0, 2 * _BLOCK)
    f.all_sounds_off(h, -1)
    st._write(left, right, 0, _BLOCK)
    # The note itself
    f.noteon(h, _CHANNEL, int(pitch), int(velocity))
    st._write(left, right, 0, HOLD_LENGTH)
    f.noteoff(h, _CHANNEL, int(pitch))
    st._write(left, right, HOLD_LENGTH, NOTE_LENGTH - HOLD_LENGTH)
    mono = (left + right) * np.float32(0.5)
    # Silence every voice (long releases included) and let the synthesizer retire them.
    f.all_sounds_off(h, -1)
    st._write(left, right, 0, _BLOCK)
    return mono


# ---------------------------------------------------------------------------------------------
# Dataset rendering

@dataclass(frozen=True)
class _Chunk:
    """All notes of one preset: one task for a worker process."""
    sf2: str              # resolved path
    bank: int
    program: int
    preset_name: str
    instrument: int
    instrument_str: str
    family: str
    source: str
    pitches: tuple
    velocities: tuple


def _db(x: float) -> float | None:
    return round(20.0 * math.log10(x), 2) if x > 0 else None


def _valid_wav(path: Path) -> bool:
    """A complete note wav: 16 kHz, mono, 64,000 frames of 16-bit PCM."""
    if not path.is_file():
        return False
    try:
        info = soundfile.info(os.fspath(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        return False
    return (info.samplerate == SAMPLE_RATE and info.channels == 1
            and info.frames == NOTE_LENGTH and info.subtype == "PCM_16")


def _render_chunk(chunk: _Chunk, out: str, silence_db: float, state: SynthState | None) -> dict:
    """Render the missing notes of one preset. Returns per-note outcomes and timings."""
    out_path = Path(out)
    tmp_root = out_path / ".tmp" / str(os.getpid())
    outcomes = []
    render_s = write_s = 0.0
    for pitch in chunk.pitches:
        for velocity in chunk.velocities:
            note_str = f"{chunk.instrument_str}-{pitch:03d}-{velocity:03d}"
            final = wav_path(out_path, note_str)
            if _valid_wav(final):
                outcomes.append((note_str, pitch, velocity, "existing", None))
                continue
            if state is None:
                state = _worker_state()
            if state.sf2_path != chunk.sf2:
                state.load(chunk.sf2)
            t0 = time.perf_counter()
            wave = render_note(state, chunk.bank, chunk.program, pitch, velocity)
            peak = float(np.max(np.abs(wave)))
            rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
            t1 = time.perf_counter()
            render_s += t1 - t0
            info = {"peak_dbfs": _db(peak), "rms_dbfs": _db(rms)}
            if peak == 0.0:
                info["reason"] = "no sound: every sample is zero (pitch outside the preset's keys)"
            elif 20.0 * math.log10(peak) < silence_db:
                info["reason"] = (f"near-silent: peak {info['peak_dbfs']:.1f} dBFS below "
                                  f"{silence_db:g} dBFS")
            if "reason" in info:
                outcomes.append((note_str, pitch, velocity, "dropped", info))
                continue
            note = Note(note_str, chunk.instrument, chunk.instrument_str, pitch, velocity,
                        chunk.family, chunk.source)
            tmp = write_note(tmp_root, note, wave, sample_rate=SAMPLE_RATE)
            os.replace(tmp, final)  # atomic: a killed run leaves no truncated wav
            write_s += time.perf_counter() - t1
            info["clipped"] = peak > 1.0
            outcomes.append((note_str, pitch, velocity, "rendered", info))
    return {"chunk": chunk, "outcomes": outcomes, "render_s": render_s, "write_s": write_s}


# Worker-process globals: one synthesizer per worker, created on first use.
_WORKER: dict = {"state": None, "gain": DEFAULT_GAIN}


def _init_worker(gain: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _WORKER["state"] = None
    _WORKER["gain"] = gain


def _worker_state() -> SynthState:
    if _WORKER["state"] is None:
        _WORKER["state"] = SynthState(gain=_WORKER["gain"])
    return _WORKER["state"]


def _pool_context():
    """Worker processes that have never touched FluidSynth.

    Not "fork": workers forked from a process that had already used FluidSynth (here: to list
    the presets) hung (Debian's libfluidsynth 2.3.1, which also links GLib and libinstpatch,
    whose state need not survive fork).  A fork server that has only imported this module forks
    clean workers cheaply (the torch import that sing_synth.data brings is done once there).
    As with any non-fork start method, a script calling this must guard its entry point with
    ``if __name__ == "__main__":``.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sing_synth.soundfont"])
        return ctx
    return multiprocessing.get_context("spawn")


def _pool_task(args) -> dict:
    chunk, out, silence_db = args
    return _render_chunk(chunk, out, silence_db, None)


def _check_velocities(velocities) -> tuple:
    vs = tuple(velocities)
    if not vs:
        raise UserError("no velocities given")
    for v in vs:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 127:
            raise UserError(f"velocity must be an integer in 1..127, got {v!r}")
    return tuple(sorted(set(int(v) for v in vs)))


def _check_range(pitch_range, what="pitch range") -> tuple[int, int]:
    try:
        lo, hi = pitch_range
    except (TypeError, ValueError):
        raise UserError(f"{what} must be two MIDI pitches (low, high), got {pitch_range!r}") \
            from None
    for p in (lo, hi):
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p <= 127:
            raise UserError(f"{what} must hold MIDI pitches in 0..127, got {pitch_range!r}")
    if lo > hi:
        raise UserError(f"{what} is empty: low {lo} > high {hi}")
    return int(lo), int(hi)


def _pitch_range_for(pitch_range, program: int) -> tuple[int, int]:
    if isinstance(pitch_range, Mapping):
        return _check_range(pitch_range.get(program, DEFAULT_PITCH_RANGE),
                            f"pitch range of program {program}")
    return _check_range(pitch_range)


def _check_programs(programs) -> list[int] | None:
    if programs is None:
        return None
    out = set()
    for p in programs:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p <= 127:
            raise UserError(f"program must be an integer in 0..127, got {p!r}")
        out.add(int(p))
    if not out:
        raise UserError("no programs given")
    return sorted(out)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def render_soundfont_dataset(sf2_paths, out, programs: Iterable[int] | None = None,
                             pitch_range=DEFAULT_PITCH_RANGE, velocities=VELOCITIES,
                             jobs: int | None = None, silence_db: float = DEFAULT_SILENCE_DB,
                             progress: bool = True, gain: float = DEFAULT_GAIN) -> dict:
    """Render soundfonts' GM presets into an NSynth jsonwav folder ``out``; resumable.

    sf2_paths: one path or a list (``.sf2``, or ``.sf3`` where FluidSynth reads it).
    programs: GM programs to render (bank 0); None = every bank-0 preset outside the Synth
        Effects, Percussive and Sound Effects groups.  Requested programs missing from a
        soundfont are listed in ``dropped.json`` ("presets").
    pitch_range: (low, high) MIDI pitches, inclusive; or a mapping program -> (low, high)
        (programs not in it use 21..108).
    velocities: MIDI velocities (NSynth's 25, 50, 75, 100, 127 by default).
    jobs: worker processes (default: all cores); 1 renders in this process.
    silence_db: notes whose peak is below this many dBFS are dropped (and listed).
    gain: FluidSynth master gain (1.0 keeps GM soundfonts below full scale).

    Returns a summary: counts of notes planned / rendered / already present / dropped /
    clipped, instruments, missing presets, wall time and ms per rendered note.
    """
    t_start = time.perf_counter()
    if isinstance(sf2_paths, (str, bytes, os.PathLike)):
        sf2_paths = [sf2_paths]
    sf2_paths = list(sf2_paths)
    if not sf2_paths:
        raise UserError("no soundfont given")
    velocities = _check_velocities(velocities)
    programs = _check_programs(programs)
    if not isinstance(pitch_range, Mapping):
        _check_range(pitch_range)
    if jobs is None:
        jobs = os.cpu_count() or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"jobs must be a positive integer, got {jobs!r}")
    try:
        silence_db = float(silence_db)
        gain = float(gain)
    except (TypeError, ValueError):
        raise UserError(f"silence_db and gain must be numbers, got {silence_db!r}, {gain!r}") \
            from None
    if not 0.0 < gain <= 10.0:
        raise UserError(f"gain must be in (0, 10], got {gain}")

    # Soundfonts: paths, names, presets
    resolved, stems = [], []
    for p in sf2_paths:
        key = _check_sf2_path(p)
        stem = _slug(Path(key).stem) or "soundfont"
        if key in resolved:
            raise UserError(f"soundfont given twice: {p}")
        if stem in stems:
            other = sf2_paths[stems.index(stem)]
            raise UserError(f"soundfonts {other} and {p} have the same name {stem!r}; "
                            f"instrument names would clash: rename one")
        stems.append(stem)
        resolved.append(key)

    chunks: list[_Chunk] = []
    missing = []
    for key, given, stem in zip(resolved, sf2_paths, stems):
        presets = {prog: name for _bank, prog, name in list_presets(given)}
        wanted = programs if programs is not None else \
            [p for p in gm.default_programs() if p in presets]
        for program in wanted:
            if program not in presets:
                missing.append({"sf2": os.fspath(given), "bank": MELODIC_BANK,
                                "program": program, "gm_name": gm.gm_name(program),
                                "reason": "no preset at this bank and program"})
                continue
            lo, hi = _pitch_range_for(pitch_range, program)
            name = presets[program]
            chunks.append(_Chunk(
                sf2=key, bank=MELODIC_BANK, program=program, preset_name=name,
                instrument=len(chunks),
                instrument_str=f"{stem}_{program:03d}_{_slug(name) or 'preset'}",
                family=gm.gm_family(program), source=gm.gm_source(program),
                pitches=tuple(range(lo, hi + 1)), velocities=velocities))
    if not chunks:
        raise UserError("nothing to render: none of the requested programs exists in bank 0 "
                        "of the given soundfonts")
    names = [c.instrument_str for c in chunks]
    if len(set(names)) != len(names):
        raise UserError("two presets give the same instrument name; rename a soundfont")
    planned = sum(len(c.pitches) * len(c.velocities) for c in chunks)

    out_path = Path(out)
    try:
        (out_path / "audio").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e}") from None
    shutil.rmtree(out_path / ".tmp", ignore_errors=True)  # leftovers of a killed run

    # Render
    results = []
    jobs = min(jobs, len(chunks))
    from tqdm import tqdm
    bar = tqdm(total=planned, unit="note", desc="render", disable=not progress,
               dynamic_ncols=True)
    try:
        tasks = [(c, os.fspath(out_path), silence_db) for c in chunks]
        if jobs == 1:
            with SynthState(gain=gain) as state:
                for chunk in chunks:
                    res = _render_chunk(chunk, os.fspath(out_path), silence_db, state)
                    results.append(res)
                    bar.update(len(res["outcomes"]))
        else:
            with _pool_context().Pool(jobs, initializer=_init_worker, initargs=(gain,)) as pool:
                for res in pool.imap_unordered(_pool_task, tasks):
                    results.append(res)
                    bar.update(len(res["outcomes"]))
    finally:
        bar.close()
    shutil.rmtree(out_path / ".tmp", ignore_errors=True)

    # Metadata
    notes, dropped = [], []
    counts = {"rendered": 0, "existing": 0, "dropped": 0, "clipped": 0}
    for res in results:
        c = res["chunk"]
        for note_str, pitch, velocity, status, info in res["outcomes"]:
            counts[status] += 1
            if status == "dropped":
                dropped.append({"note_str": note_str, "sf2": c.sf2, "bank": c.bank,
                                "program": c.program, "preset": c.preset_name, "pitch": pitch,
                                "velocity": velocity, **info})
                continue
            if status == "rendered" and info["clipped"]:
                counts["clipped"] += 1
            notes.append(Note(note_str, c.instrument, c.instrument_str, pitch, velocity,
                              c.family, c.source))
    write_examples(out_path, notes, sample_rate=SAMPLE_RATE)
    dropped.sort(key=lambda d: d["note_str"])
    _write_json(out_path / "dropped.json", {
        "settings": {"silence_db": silence_db, "gain": gain, "sample_rate": SAMPLE_RATE,
                     "velocities": list(velocities)},
        "notes": dropped, "presets": missing})

    seconds = time.perf_counter() - t_start
    render_s = sum(r["render_s"] for r in results)
    write_s = sum(r["write_s"] for r in results)
    synthesized = counts["rendered"] + counts["dropped"]
    return {
        "out": os.fspath(out_path),
        "soundfonts": [os.fspath(p) for p in sf2_paths],
        "instruments": len(chunks),
        "planned": planned,
        "rendered": counts["rendered"],
        "existing": counts["existing"],
        "dropped": counts["dropped"],
        "clipped": counts["clipped"],
        "examples": len(notes),
        "missing_presets": len(missing),
        "jobs": jobs,
        "seconds": round(seconds, 3),
        # wall time per synthesized note (rendered or dropped), all overheads included
        "ms_per_note": round(1000 * seconds / synthesized, 3) if synthesized else None,
        # worker CPU time per synthesized note: synthesis alone, and wav writing per kept note
        "synth_ms_per_note": round(1000 * render_s / synthesized, 3) if synthesized else None,
        "write_ms_per_note": (round(1000 * write_s / counts["rendered"], 3)
                              if counts["rendered"] else None),
    }


# ---------------------------------------------------------------------------------------------
# Command line: sing-synth dataset soundfont ...

def parse_int_list(text: str, lo: int, hi: int, what: str) -> list[int]:
    """'0,1,24-31' -> [0, 1, 24, ..., 31]; each value in lo..hi. Bad text -> UserError."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise UserError(f"bad {what} list {text!r}: expected numbers and ranges like "
                            f"'0,1,24-31'")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if a > b or not (lo <= a <= hi and lo <= b <= hi):
            raise UserError(f"bad {what} {part!r} in {text!r}: values must be in {lo}..{hi}")
        values.extend(range(a, b + 1))
    return sorted(set(values))


def _arg_type(lo, hi, what):
    def convert(text):
        try:
            return parse_int_list(text, lo, hi, what)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = what  # argparse names the type in its messages
    return convert


def _soundfont_main(args) -> int:
    summary = render_soundfont_dataset(
        args.sf2, args.out, programs=args.programs,
        pitch_range=tuple(args.pitch_range), velocities=args.velocities, jobs=args.jobs,
        silence_db=args.silence_db, progress=not args.quiet, gain=args.gain)
    print(f"{summary['out']}: {summary['examples']} notes of {summary['instruments']} "
          f"instruments ({summary['rendered']} rendered, {summary['existing']} already there, "
          f"{summary['dropped']} dropped as silent, {summary['clipped']} clipped, "
          f"{summary['missing_presets']} missing presets) in {summary['seconds']:.1f} s")
    return 0


def add_dataset_command(subparsers):
    """Add ``dataset`` with its ``soundfont`` subcommand; returns the dataset subparsers so
    other dataset builders can be added next to it."""
    dataset = subparsers.add_parser("dataset", help="build training datasets",
                                    description="Build NSynth-style training datasets.")
    dsub = dataset.add_subparsers(dest="dataset_command", metavar="SOURCE")
    dsub.required = True
    p = dsub.add_parser(
        "soundfont", help="render NSynth-style notes from SoundFonts with FluidSynth",
        description="Render 4-s NSynth-style notes (16 kHz mono, key held 3 s, reverb and "
                    "chorus off) of the General MIDI presets of SoundFonts into an NSynth "
                    "jsonwav folder (examples.json + audio/). Silent notes are dropped and "
                    "listed in dropped.json. Rerunning the same command resumes.")
    p.add_argument("--sf2", action="append", required=True, metavar="PATH",
                   help="soundfont (.sf2 or .sf3); repeat for several")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset folder")
    p.add_argument("--programs", type=_arg_type(0, 127, "program"), default=None,
                   metavar="LIST", help="GM programs, e.g. 0,1,24-31 (default: all melodic "
                   "bank-0 presets except the Synth Effects, Percussive and Sound Effects "
                   "groups)")
    p.add_argument("--pitch-range", type=int, nargs=2, default=list(DEFAULT_PITCH_RANGE),
                   metavar=("LOW", "HIGH"), help="MIDI pitches, inclusive (default 21 108)")
    p.add_argument("--velocities", type=_arg_type(1, 127, "velocity"),
                   default=list(VELOCITIES), metavar="LIST",
                   help="MIDI velocities (default 25,50,75,100,127)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes (default: all cores)")
    p.add_argument("--silence-db", type=float, default=DEFAULT_SILENCE_DB, metavar="DB",
                   help="drop notes whose peak is below this level in dBFS (default -60)")
    p.add_argument("--gain", type=float, default=DEFAULT_GAIN,
                   help="FluidSynth master gain (default 1.0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_soundfont_main)
    return dsub
