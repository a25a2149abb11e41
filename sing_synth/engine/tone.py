"""A built-in test tone with `NoteRenderer`'s interface: a routing check that needs no model.

`ToneRenderer` renders each note as a 4-s harmonic tone (additive synthesis) at the stream
rate, in its own worker thread, into an LRU cache -- the same contract as
`renderer.NoteRenderer` (``make_key``, ``request``, ``prewarm``, ``get``,
``add_ready_callback``, ``wait_idle``, ``status``, ``close``, ``config``), so the controller,
the mixer and the MIDI/audio plumbing run exactly as with SING.

Timbre follows the General MIDI program of the preset that names the note's instrument, so a
program change is audible: ``3 + program // 8`` harmonics (3..18) with amplitudes
``h ** -rolloff``, ``rolloff`` from 2.0 (dull, program % 8 == 0) down to 0.8 (bright, 7), and a
decaying envelope for the struck families (pianos, chromatic percussion, guitars, basses:
programs 0-15 and 24-39), a held one otherwise.  The fundamental is always the strongest
partial.  Loudness follows the velocity layer (``0.3 * layer_velocity / 127``), as SING's
layers carry their trained loudness.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
import zlib
from collections import OrderedDict

import numpy as np

from ..config import SingConfig
from ..midi import midi_frequency
from .renderer import PREWARM, RENDER_NICE, ThreadNice, WorkerQueue, instrument_key

NOTE_SECONDS = 4.0


def tone_program(preset_programs: dict, inst_key) -> int:
    """The GM program whose timbre an instrument key gets: the program of the preset playing
    that instrument blend, else a stable hash of the key (0..127)."""
    program = preset_programs.get(inst_key)
    if program is not None:
        return int(program)
    return zlib.crc32(repr(inst_key).encode()) % 128


def tone(pitch: int, layer_velocity: int, program: int, rate: int,
         seconds: float = NOTE_SECONDS) -> np.ndarray:
    """One test-tone note, float32 mono, read-only."""
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    f0 = float(midi_frequency(int(pitch)))
    harmonics = 3 + int(program) // 8
    rolloff = 2.0 - 1.2 * (int(program) % 8) / 7.0
    wave = np.zeros(n, np.float64)
    norm = 0.0
    for h in range(1, harmonics + 1):
        if h * f0 >= 0.45 * rate:
            break
        amp = h ** -rolloff
        wave += amp * np.sin(2.0 * np.pi * h * f0 * t)
        norm += amp
    wave /= max(norm, 1e-9)
    struck = int(program) < 16 or 24 <= int(program) < 40
    env = np.minimum(t / 0.005, 1.0)
    env *= np.exp(-t / 1.2) if struck else 0.85 + 0.15 * np.exp(-t / 0.3)
    fade = max(2, int(0.010 * rate))
    env[-fade:] *= np.cos(0.5 * np.pi * np.linspace(0.0, 1.0, fade)) ** 2
    note = (0.3 * layer_velocity / 127.0 * env * wave).astype(np.float32)
    note.flags.writeable = False
    return note


class ToneRenderer(WorkerQueue):
    """`NoteRenderer`'s interface over `tone`: one worker thread, urgent requests first, an
    LRU cache bounded by ``cache_mb``.

    Args:
        presets: {name: Preset} or presets; their programs give each instrument's timbre.
        stream_rate: rate of the notes.
        cache_mb: cache bound in MiB.
        on_ready: ``f(key, array)`` called on the worker thread for every note rendered.
    """

    def __init__(self, presets=(), stream_rate=48000, cache_mb=512, on_ready=None):
        items = presets.values() if hasattr(presets, "values") else presets
        self.preset_programs = {instrument_key(p.instrument): int(p.program) for p in items}
        self.config = SingConfig(n_instruments=max(1, len(self.preset_programs)))
        self.device = "cpu (test tone)"
        self.dtype = "float32"
        self.stream_rate = int(stream_rate)
        self.note_length = int(round(NOTE_SECONDS * self.stream_rate))
        self.cache_limit = int(float(cache_mb) * 2 ** 20)
        self._callbacks = [on_ready] if on_ready is not None else []
        self._cond = threading.Condition()
        self._heap: list = []
        self._queued: dict = {}
        self._seq = itertools.count()
        self._in_flight: set = set()
        self._busy = 0                     # (WorkerQueue.wait_idle: NoteRenderer writes after delivering)
        self._requested_at: dict = {}
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = 0
        self._last_urgent = None
        self._counts = dict(hits=0, misses=0, rendered=0, evictions=0, errors=0, batches=0)
        self._prewarm_done = self._prewarm_total = 0
        self._prewarm_pending: set = set()
        self._last_error = None
        self._closed = False
        self._thread = threading.Thread(target=self._worker, name="tone-renderer", daemon=True)
        self._thread.start()

    def make_key(self, instrument, pitch: int, velocity: int) -> tuple:
        return (instrument_key(instrument), int(pitch), self.config.velocity_row(int(velocity)))

    def check_key(self, key) -> tuple:
        try:
            inst, pitch, row = key
            instrument_key(inst)
            hash(key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad note key {key!r}: {exc}") from None
        if isinstance(pitch, bool) or not isinstance(pitch, (int, np.integer)) or not 0 <= pitch < 128:
            raise ValueError(f"pitch {pitch!r} is out of range 0..127")
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) \
                or not 0 <= row < self.config.n_velocities:
            raise ValueError(f"velocity row {row!r} is out of range")
        return key

    def status(self) -> dict:
        with self._cond:
            return {
                "device": self.device, "dtype": self.dtype,
                "cached_notes": len(self._cache), "cache_mb": self._cache_bytes / 2 ** 20,
                "cache_limit_mb": self.cache_limit / 2 ** 20, "queue": len(self._queued),
                "rendering": len(self._in_flight), "prewarm_done": self._prewarm_done,
                "prewarm_total": self._prewarm_total, "last_urgent_ms": self._last_urgent,
                "render_ms_per_note": None, "last_error": self._last_error,
                "alive": self._thread.is_alive(), **self._counts,
            }

    def _worker(self) -> None:
        nice = ThreadNice()     # prewarm tones at a lower CPU priority, as NoteRenderer's
        while True:
            with self._cond:
                while not self._closed and not self._queued:
                    self._cond.wait()
                if self._closed:
                    return
                key = None
                while self._heap:
                    prio, _, cand = heapq.heappop(self._heap)
                    if self._queued.get(cand) == prio:
                        key = cand
                        del self._queued[cand]
                        break
                if key is None:
                    self._queued.clear()
                    continue
                self._in_flight.add(key)
                callbacks = list(self._callbacks)
            if nice.base is not None:
                nice.set(nice.base + RENDER_NICE if prio == PREWARM else nice.base)
            note = None
            try:
                inst, pitch, row = key
                note = tone(pitch, self.config.velocity_rows[row],
                            tone_program(self.preset_programs, inst), self.stream_rate)
                with self._cond:
                    self._store(key, note)
                    asked = self._requested_at.pop(key, None)
                    if asked is not None:
                        self._last_urgent = 1000.0 * (time.perf_counter() - asked)
                    self._counts["rendered"] += 1
                    self._counts["batches"] += 1
                    if key in self._prewarm_pending:
                        self._prewarm_pending.discard(key)
                        self._prewarm_done += 1
            except Exception as exc:
                with self._cond:
                    self._counts["errors"] += 1
                    self._last_error = f"render: {type(exc).__name__}: {exc}"
                    self._requested_at.pop(key, None)
            if note is not None:
                self._call(callbacks, [(key, note)])
            with self._cond:
                self._in_flight.discard(key)
                self._cond.notify_all()

    def _store(self, key, note) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        self._cache[key] = note
        self._cache_bytes += note.nbytes
        while self._cache_bytes > self.cache_limit and self._cache:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.nbytes
            self._counts["evictions"] += 1
