"""The note renderer: SING resident on one device, rendering whole notes in background threads.

A note is keyed by ``(instrument_key, pitch, velocity_row)``: ``instrument_key`` is a normalised
blend (see `instrument_key`), ``pitch`` the MIDI note and ``velocity_row`` the row of the model's
velocity table (`SingConfig.velocity_row`).  Rendering happens in a worker thread (and an urgent
lane, below), in batches, never on the caller's thread; urgent requests (a key pressed now) go ahead of prewarming.  Each
note is resampled once, model rate -> stream rate (soxr, float32 mono), and kept in an LRU cache
bounded by ``cache_mb``.

Latency of a note not cached yet (a key pressed now): an urgent lane -- a second thread that
renders urgent requests only -- takes it at once, while the worker goes on with its prewarm step
on another core (where there is one); the worker also renders urgent keys between two steps of
a prewarm batch (prewarm batches are small, 2 notes, and render in steps), so without the lane a
key waits for one step, never for a whole batch.  An urgent note is rendered head first -- the
LSTM's first steps and the decoder's first 32 frames give its first ~0.4 s exactly (the LSTM is
causal, frames overlap only their neighbours), which is handed out at once while the rest of
the array is written behind it, long before playback gets there.  On the small model that is
~1/8 of a note's render time before it sounds (bench/RESULTS.md).  While such a key waits for its
head, the worker's resampling of a prewarm batch pauses (`NoteRenderer._give_way`, at most
``GIVE_WAY_S`` a key): resampling holds the GIL, which the lane needs in many short turns.

Notes nobody waits for any more (released or silenced before they were rendered) are withdrawn
from the urgent queue (`WorkerQueue.cancel`), and a preset no channel plays any more from the
prewarm queue (`WorkerQueue.drop_prewarm`): a burst of them never delays the next key.

Eviction and playing voices: the cache only drops its own reference.  A voice that is playing an
evicted note holds the array itself, so the note plays on to its end and is freed when the last
reference goes (the mixer hands finished notes back to the control thread for that, see
`mixer.Mixer.collect`); there is no pin/unpin.  Memory is therefore bounded by ``cache_mb`` plus
the notes currently sounding (at most the mixer's polyphony, ~0.77 MB each at 48 kHz).
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import statistics
import sys
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np
import soxr
import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..device import resolve_device
from ..fast import FastRenderer, GraphedRenderer, best_dtype
from ..levels import checkpoint_levels
from .store import NoteStore

URGENT, PREWARM = 0, 1
PREWARM_BATCH = 2     # default notes per prewarm batch on a CPU ...
GPU_PREWARM_BATCH = 32  # ... and on a GPU, where a batch of 32 costs little more than one note
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32)   # batch sizes of the CUDA graphs (`graphs`)
INPUT_CACHE = 1024    # instrument keys (blends) whose model inputs are kept (`_blend_inputs`)
PREWARM_HOLD = 32     # prewarm keys queued per hold of the renderer's lock (`prewarm`)
RESAMPLE_CHUNK = 4096   # model-rate samples resampled per soxr call (~0.1 ms holding the GIL)
LSTM_CHUNKS = 4       # a batch's LSTM runs in this many steps ...
DECODER_CHUNK = 32    # ... and its decoder in steps of this many frames (of 257)
HEAD_FRAMES = 32      # an urgent note's head: its first 32 frames (~0.4 s), delivered first
GIVE_WAY_S = 0.02     # the longest a prewarm batch's resampling pauses for a key pressed meanwhile
FADE_IN_S = 0.001    # against a click at the very first sample
FADE_OUT_S = 0.010   # a note that is cut at 4 s by the model's length ends on zero


def instrument_key(blend) -> tuple:
    """A hashable, normalised instrument blend: ``((name_or_id, weight), ...)``, sorted, weights
    > 0 summing to 1 (rounded to 6 decimals, so equal blends give equal keys).

    ``blend``: an id (int), a name (str), a mapping {name_or_id: weight}, pairs, an existing key,
    or anything with an ``instrument`` attribute (a `presets.Preset`)."""
    if hasattr(blend, "instrument"):
        blend = blend.instrument
    if isinstance(blend, (int, np.integer)) and not isinstance(blend, bool):
        return ((int(blend), 1.0),)
    if isinstance(blend, str):
        return ((blend, 1.0),)
    items = blend.items() if hasattr(blend, "items") else blend
    weights: dict = {}
    for name, weight in items:
        if isinstance(name, (np.integer,)):
            name = int(name)
        if isinstance(name, bool) or not isinstance(name, (int, str)):
            raise ValueError(f"instrument {name!r}: give a name or an id")
        weight = float(weight)
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"instrument {name!r}: weight {weight!r} must be >= 0")
        if weight > 0:
            weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if not weights or not np.isfinite(total) or total <= 0:
        raise ValueError(f"instrument blend {blend!r} has no positive weight")
    pairs = [(name, round(w / total, 6)) for name, w in weights.items()]
    return tuple(sorted(pairs, key=lambda p: (isinstance(p[0], str), p[0])))


def default_threads() -> int:
    """Torch threads for the render worker: torch's default, less one core left to the audio
    callback and the MIDI thread (on 2 cores: 1.  Two OpenMP threads on a 2-core machine that
    also mixes audio wait on each other whenever the audio thread takes a core: measured 10-40x
    slower per note on this project's CI machine under load)."""
    cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - 1))


RENDER_NICE = 10      # niceness of prewarm rendering above the process's (Linux: per thread)


class ThreadNice:
    """The calling thread's niceness (Linux, where it is per thread), changed with `set`: prewarm
    batches render at ``base + RENDER_NICE``, so when the cores are busy the audio and MIDI
    threads (and other programs' JACK clients) run first, while every idle cycle still goes to
    prewarming; urgent batches (a key pressed now) go back to ``base``.  Going back needs the
    right to raise priority (root, or RLIMIT_NICE as audio groups grant it); without it the
    thread stays where it is.  A no-op where threads have no niceness of their own."""

    def __init__(self):
        self.tid = threading.get_native_id() if hasattr(threading, "get_native_id") else None
        self.base = self.current = self._get()

    def _get(self):
        if self.tid is None or not hasattr(os, "getpriority") or not sys.platform.startswith("linux"):
            return None
        try:
            return os.getpriority(os.PRIO_PROCESS, self.tid)
        except OSError:
            return None

    def set(self, nice: int):
        """Sets the niceness (clamped to -20..19); returns the previous one for a later `set`."""
        previous = self.current
        if self.current is None or nice is None:
            return previous
        nice = max(-20, min(19, int(nice)))
        if nice != self.current:
            try:
                os.setpriority(os.PRIO_PROCESS, self.tid, nice)
                self.current = nice
            except OSError:
                pass
        return previous


def prewarm_order(pitch_range) -> list:
    """The pitches of ``pitch_range`` (lo, hi inclusive) nearest middle C (60) first: the order
    to prewarm them in (60, 59, 61, 58, 62, ...)."""
    lo, hi = int(pitch_range[0]), int(pitch_range[1])
    return sorted(range(lo, hi + 1), key=lambda p: (abs(p - 60), p))


class WorkerQueue:
    """What the note renderers (`NoteRenderer`, `tone.ToneRenderer`) share around their one
    worker thread: the request and prewarm queue (urgent ahead of prewarm), the ready callbacks,
    waiting for the worker to go idle, closing.  A subclass sets up ``_cond``, ``_heap``,
    ``_queued``, ``_seq``, ``_in_flight``, ``_busy``, ``_requested_at``, ``_cache``, ``_counts``,
    ``_prewarm_pending/_done/_total``, ``_last_error``, ``_closed`` and ``_thread``, and gives
    ``check_key``; its worker takes keys off ``_heap``."""

    store = None    # a `store.NoteStore` (NoteRenderer.open_store)

    def warm_up(self, key, timeout: float = 10.0) -> bool:
        """Renders ``key`` as a key pressed now, with the note store out of the way for it: the
        point is the render path's first calls (torch's kernels, the resampler, the callbacks),
        which a note read from the store would skip, leaving them to the first note played.
        False on timeout."""
        store, self.store = self.store, None
        try:
            self.request(key, urgent=True)
            return self.wait_idle(timeout)
        finally:
            self.store = store

    def add_ready_callback(self, callback) -> None:
        """``callback(key, array)``, called on the worker thread for each note rendered."""
        with self._cond:
            self._callbacks.append(callback)

    def get(self, key):
        """The cached note (marking it recently used), or None; queues nothing.  In `NoteRenderer`
        a note whose head is ready and whose rest is rendering (``head_frames``) counts as cached."""
        with self._cond:
            return self._lookup(key)

    def request(self, key, urgent=True):
        """The cached note for ``key`` at once, or None after queueing it (urgent: ahead of every
        prewarm request).  Raises ValueError for a bad key (before queueing anything)."""
        with self._cond:
            note = self._lookup(key)
            if note is not None:
                self._counts["hits"] += 1
                return note
        self.check_key(key)
        with self._cond:
            if self._closed:
                return None
            note = self._lookup(key)     # rendered meanwhile
            if note is not None:
                self._counts["hits"] += 1
                return note
            self._counts["misses"] += 1
            if urgent:
                self._requested_at.setdefault(key, time.perf_counter())
            if key in self._in_flight and not (urgent and self._take_over(key)):
                return None
            prio = URGENT if urgent else PREWARM
            if self._queued.get(key, PREWARM + 1) > prio:   # not queued, or promoted to urgent
                self._queued[key] = prio
                heapq.heappush(self._heap, (prio, next(self._seq), key))
                self._cond.notify_all()     # the worker, or the urgent lane
            return None

    def _take_over(self, key) -> bool:
        """Whether a key pressed while its note is in flight is queued as urgent all the same
        (lock held; `NoteRenderer._take_over`); here never: it waits for its batch."""
        return False

    def prewarm(self, keys) -> int:
        """Queues ``keys`` behind every urgent request, in the order given (callers order them
        middle octaves first: `prewarm_order`).  Bad keys are skipped (counted in status's
        errors).  Returns the number of notes queued.  The keys are checked first, then queued
        ``PREWARM_HOLD`` at a time under the lock: a preset's 365 keys held it ~1 ms at once, and
        a program change's prewarm comes just when its first key is pressed, whose render (the
        urgent lane) and note-on (the audio thread's `try_lock`) need the lock."""
        good, errors = [], []
        for key in keys:
            try:
                good.append(self.check_key(key))
            except ValueError as exc:
                errors.append(f"prewarm: {exc}")
        if errors:
            with self._cond:
                self._counts["errors"] += len(errors)
                self._last_error = errors[-1]
        queued = 0
        for start in range(0, len(good), PREWARM_HOLD):
            with self._cond:
                queued += self._queue_prewarm(good[start:start + PREWARM_HOLD])
        return queued

    def _queue_prewarm(self, keys) -> int:
        """`prewarm`'s queueing of checked keys (lock held); returns how many were queued."""
        queued = 0
        for key in keys:
            if self._closed or key in self._prewarm_pending:
                continue
            self._prewarm_total += 1
            if key in self._cache:
                self._prewarm_done += 1
                continue
            self._prewarm_pending.add(key)
            if key in self._in_flight or key in self._queued:
                continue
            self._queued[key] = PREWARM
            heapq.heappush(self._heap, (PREWARM, next(self._seq), key))
            queued += 1
        if queued:
            self._cond.notify_all()
        return queued

    def cancel(self, keys) -> int:
        """Withdraws the urgent requests of ``keys``: nobody waits for those notes any more (the
        keys that asked were released, or silenced, before their notes were rendered).  A key
        also queued for prewarming goes back behind the urgent requests; one already rendering
        finishes.  Returns the number withdrawn.  Without this, a burst of notes nobody holds any
        more (a DAW's panic, a flood of note-ons then all-notes-off) would delay every key pressed
        after it by the whole burst's render time."""
        withdrawn = 0
        with self._cond:
            for key in keys:
                self._requested_at.pop(key, None)
                if self._queued.get(key) != URGENT:
                    continue
                if key in self._prewarm_pending:
                    self._queued[key] = PREWARM
                    heapq.heappush(self._heap, (PREWARM, next(self._seq), key))
                else:
                    del self._queued[key]     # its heap entry is skipped as stale
                withdrawn += 1
        return withdrawn

    def drop_prewarm(self, keys) -> int:
        """Withdraws ``keys`` from prewarming (a preset no channel plays any more); urgent
        requests stay.  Returns the number withdrawn."""
        withdrawn = 0
        with self._cond:
            for key in keys:
                if key not in self._prewarm_pending:
                    continue
                self._prewarm_pending.discard(key)
                self._prewarm_total -= 1
                if self._queued.get(key) == PREWARM:
                    del self._queued[key]
                withdrawn += 1
        return withdrawn

    def _lookup(self, key):
        """The cached note for ``key`` (marked recently used), or None (lock held)."""
        note = self._cache.get(key)
        if note is not None:
            self._cache.move_to_end(key)
        return note

    def close(self, timeout=5.0) -> None:
        """Stops the worker (after the batch it is rendering) and drops the queue."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._queued.clear()
            self._cond.notify_all()
        for thread in [self._thread, *getattr(self, "_lanes", ())]:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


    def try_lock(self) -> bool:
        """Takes the renderer's lock if it is free at once (re-entrant: `request` may be called
        while holding it); False, without waiting, if another thread holds it.  For a caller on
        the audio thread (`engine.Controller.try_handle`), which must never wait on a lock that
        the worker -- which renders at a lower priority -- may hold."""
        return self._cond.acquire(blocking=False)

    def unlock(self) -> None:
        self._cond.release()

    def wait_idle(self, timeout=None) -> bool:
        """Blocks until nothing is queued or rendering; False on timeout (tests, benchmarks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queued or self._in_flight or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _call(self, callbacks, ready) -> None:
        """Calls every callback with each (key, note); their errors are counted, never raised."""
        for key, note in ready:
            for callback in callbacks:
                try:
                    callback(key, note)
                except Exception as exc:
                    with self._cond:
                        self._counts["errors"] += 1
                        self._last_error = f"on_ready: {type(exc).__name__}: {exc}"


class NoteRenderer(WorkerQueue):
    """SING resident on one device; renders notes in one background thread into an LRU cache.

    Args:
        checkpoint: a path (loaded with `checkpoint.load_checkpoint`) or a `Checkpoint`.
        device: forced device ('cpu', 'cuda', ...); default the best present (`device.resolve_device`).
        stream_rate: the audio stream's rate; every note is resampled to it once.
        cache_mb: bound of the cache in MiB (numpy nbytes of the stored notes).
        batch_size: notes per forward pass (8 is the sweet spot on CPU, MACHINE-NOTES.md).
        on_ready: ``f(key, array)`` called on the worker thread for every note rendered
            (see also `add_ready_callback`).
        dtype: compute dtype of the fast path; default `fast.best_dtype(device)`.
        prewarm_batch_size: notes per prewarm batch (default ``min(2, batch_size)`` on a CPU:
            batch 2 renders within ~10% of batch 8's notes/s, and a small batch keeps each
            rendering step short; 32 on a GPU).
        threads: torch (OpenMP) threads of the worker; default `default_threads`, which leaves
            one core to the audio and MIDI threads; 0 keeps torch's setting.
        lstm_chunks, decoder_chunk: the steps a batch renders in (`FastRenderer.stages`).
        head_frames: urgent notes are rendered head first: the LSTM and the decoder for their
            first ``head_frames`` frames, the note handed to the ready callbacks (and to
            `request`) with that head written, then the rest written behind it while it plays
            (0: whole notes only).  A key pressed now sounds after ~1/8 of a note's render time.
        urgent_lane: a second thread that renders urgent requests only, at once, while the
            worker renders a prewarm step on another core (default: where there are >= 2 cores
            or the device is not the CPU).  Without it a key pressed during prewarming waits for
            the step under way: a decoder step is weight-bandwidth bound, 6-15 ms for the small
            model at batch 2 on one core here, which put the not-cached p99 above 30 ms.
        levels: multiply each note by its instrument's level correction when the checkpoint has
            one (`levels.Levels`: the level of the notes it trained on, which the presets' gains
            assume); False renders the model's raw level.
        graphs: render from CUDA graphs (`fast.GraphedRenderer`, one set per thread) instead
            of in steps (default: on CUDA): a prewarm batch whole; an urgent one head first, from
            a graph of its head's frames, then one of the rest.  On an H100 a whole small note
            takes ~2 ms from a graph, where the eager head alone took ~6 ms of kernel launches.
        store: a `store.NoteStore` (see `open_store`): each note is looked up there before it
            is rendered, and every note rendered is written there, for this and later sessions.

    Batches: an urgent batch holds urgent requests only (so a key pressed now never waits for
    prewarm notes rendered with it); a prewarm batch holds prewarm requests.  A prewarm batch
    renders in steps (the LSTM in ``lstm_chunks`` runs of time steps, the decoder in runs of
    ``decoder_chunk`` frames); urgent requests that arrive meanwhile are rendered between two
    steps, so a key pressed during prewarming waits for one step (~3 ms for the small model at
    batch 2 on one CPU thread), not for the batch.

    Thread safety: every public method may be called from any thread except the audio thread
    (they take a lock shared with the worker; the worker never holds it while rendering or
    calling callbacks).
    """

    def __init__(self, checkpoint, device=None, stream_rate=48000, cache_mb=512, batch_size=8,
                 on_ready=None, dtype=None, prewarm_batch_size=None, threads=None,
                 lstm_chunks=LSTM_CHUNKS, decoder_chunk=DECODER_CHUNK, head_frames=HEAD_FRAMES,
                 urgent_lane=None, graphs=None, levels=True, store=None):
        if isinstance(checkpoint, (str, Path)):
            checkpoint = load_checkpoint(checkpoint)
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError("checkpoint: give a path or a sing_synth.checkpoint.Checkpoint")
        self.device = resolve_device(device)
        self.dtype = dtype or best_dtype(self.device)
        self.config = checkpoint.model.config
        self.model_rate = int(self.config.sample_rate)
        self.stream_rate = int(stream_rate)
        self.batch_size = max(1, int(batch_size))
        if not prewarm_batch_size:
            prewarm_batch_size = min(PREWARM_BATCH, self.batch_size) if self.device.type == "cpu" else GPU_PREWARM_BATCH
        self.prewarm_batch_size = max(1, int(prewarm_batch_size))
        self.threads = default_threads() if threads is None else max(0, int(threads))
        self.lstm_chunks = max(1, int(lstm_chunks))
        self.decoder_chunk = max(1, int(decoder_chunk))
        self.head_frames = max(0, int(head_frames))
        self.cache_limit = int(float(cache_mb) * 2 ** 20)
        self.instruments = {int(k): str(v) for k, v in checkpoint.instruments.items()}
        self._ids = {name: idx for idx, name in self.instruments.items()}
        self._blend_cache: dict = {}       # instrument key -> `_blend_inputs`
        self.levels = checkpoint_levels(checkpoint) if levels else None
        # FastRenderer copies the weights onto the device; the checkpoint's model stays put
        self.fast = FastRenderer(checkpoint.model.eval(), dtype=self.dtype, device=self.device)
        self.graphs = self.device.type == "cuda" if graphs is None else bool(graphs)
        self._graphed = {}                 # thread id -> its GraphedRenderer (static buffers)
        self._head_graphs = True           # urgent notes from head and rest graphs (`_graph_stages`)
        self.note_length = int(round(self.config.length * self.stream_rate / self.model_rate))
        self.store = store

        self._callbacks = [on_ready] if on_ready is not None else []
        self._cond = threading.Condition()
        self._heap: list = []              # (priority, seq, key); stale entries skipped lazily
        self._queued: dict = {}            # key -> priority of its live heap entry
        self._seq = itertools.count()
        self._in_flight: set = set()
        self._busy = 0                     # batches being read, rendered or written
        self._stepping: set = set()        # keys of prewarm batches still rendering
        self._let_go: set = set()          # ... of those, keys taken over as urgent (`_take_over`)
        self._requested_at: dict = {}      # key -> perf_counter of its first urgent request
        self._cache: OrderedDict = OrderedDict()
        self._filling: dict = {}           # key -> note whose head is out and rest rendering
        self._cache_bytes = 0
        self._cache_pages = 0
        self._prewarm_pending: set = set()
        self._prewarm_done = 0
        self._prewarm_total = 0
        self._urgent_delays = deque(maxlen=4096)   # seconds, request -> ready
        self._counts = dict(hits=0, misses=0, rendered=0, stored=0, evictions=0, errors=0, batches=0)
        self._last_error = None
        self._last_batch_s = None
        self._last_batch_n = 0
        self._closed = False
        self._nice = None                  # the worker's ThreadNice, made on its thread
        self._giving_way = threading.local()   # .keys: the prewarm batch this thread prepares
        ramp_in = np.linspace(0, 1, max(2, int(FADE_IN_S * self.stream_rate)), dtype=np.float32)
        ramp_out = np.linspace(0, 1, max(2, int(FADE_OUT_S * self.stream_rate)), dtype=np.float32)
        self._fade_in = np.sin(0.5 * np.pi * ramp_in) ** 2      # raised-cosine ramps
        self._fade_out = np.cos(0.5 * np.pi * ramp_out) ** 2
        self._fade_in[0] = self._fade_out[-1] = 0.0
        self._thread = threading.Thread(target=self._worker, name="sing-note-renderer", daemon=True)
        if urgent_lane is None:
            urgent_lane = self.device.type != "cpu" or (os.cpu_count() or 1) >= 2
        self._lanes = [threading.Thread(target=self._worker, args=(True,), name="sing-urgent-renderer",
                                        daemon=True)] if urgent_lane else []
        for thread in [self._thread, *self._lanes]:
            thread.start()

    def open_store(self, root, checkpoint_id: str, limit_mb: float = 2048) -> NoteStore:
        """Opens the note store of this model under ``root`` (`store.NoteStore`; ``checkpoint_id``:
        `store.file_id` of the checkpoint file) and uses it from now on.  Its variant is what
        else changes a note here: the compute dtype, and whether levels are applied.  Raises
        OSError when the folder cannot be made."""
        variant = f"{str(self.dtype).replace('torch.', '')}-{'levels' if self.levels is not None else 'raw'}"
        self.store = NoteStore(root, checkpoint_id, variant, self.config.length, limit_mb)
        return self.store

    # ------------------------------------------------------------------ keys
    def make_key(self, instrument, pitch: int, velocity: int) -> tuple:
        """The cache key of (instrument blend, MIDI pitch, MIDI velocity 1..127)."""
        return (instrument_key(instrument), int(pitch), self.config.velocity_row(int(velocity)))

    def check_key(self, key) -> tuple:
        """Raises ValueError unless ``key`` is a valid (instrument_key, pitch, velocity_row)."""
        try:
            inst, pitch, row = key
            hash(key)
        except (TypeError, ValueError):
            raise ValueError(f"bad note key {key!r}: expected (instrument_key, pitch, velocity_row)") from None
        self._instrument_ids(inst)
        if isinstance(pitch, bool) or not isinstance(pitch, (int, np.integer)) \
                or not 0 <= pitch < self.config.n_pitches:
            raise ValueError(f"pitch {pitch!r} is out of range 0..{self.config.n_pitches - 1}")
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) \
                or not 0 <= row < self.config.n_velocities:
            raise ValueError(f"velocity row {row!r} is out of range 0..{self.config.n_velocities - 1}")
        return key

    def _instrument_ids(self, inst) -> list:
        pairs = []
        try:
            for name, weight in inst:
                if isinstance(name, str):
                    idx = self._ids.get(name)
                    if idx is None and name.strip().isdigit():
                        idx = int(name)
                else:
                    idx = int(name)
                if idx is None or not 0 <= idx < self.config.n_instruments:
                    raise ValueError(f"unknown instrument {name!r}")
                pairs.append((idx, float(weight)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad instrument key {inst!r}: {exc}") from None
        if not pairs or sum(w for _, w in pairs) <= 0:
            raise ValueError(f"instrument key {inst!r} has no positive weight")
        return pairs

    def _vector(self, inst) -> torch.Tensor:
        weights = torch.zeros(self.config.n_instruments)
        for idx, w in self._instrument_ids(inst):
            weights[idx] += w
        return weights / weights.sum()

    # ------------------------------------------------------------------ requests
    def _take_over(self, key) -> bool:
        """A key pressed while its note is in a prewarm batch still rendering (lock held): the
        batch lets it go (`_let_go`) and the key is queued as urgent, rendered at once, head first.
        Otherwise it would wait for the whole batch: ~110 ms for the first key after a program
        change on this CPU (the batch renders in steps at a lower priority).  False when the note
        is past rendering (being prepared: it is handed over next, `_deliver_each`) or in an
        urgent batch."""
        if key not in self._stepping:
            return False
        self._stepping.discard(key)
        self._in_flight.discard(key)
        self._let_go.add(key)
        return True

    def _lookup(self, key):
        """The cached or filling note for ``key``, or None (lock held)."""
        note = self._cache.get(key)
        if note is not None:
            self._cache.move_to_end(key)
            return note
        return self._filling.get(key)

    @property
    def urgent_delays_ms(self) -> list:
        """Delays request -> ready of the recent urgent requests, in ms."""
        with self._cond:
            return [1000.0 * d for d in self._urgent_delays]

    def status(self) -> dict:
        with self._cond:
            delays = [1000.0 * d for d in self._urgent_delays]
            per_note = (1000.0 * self._last_batch_s / self._last_batch_n
                        if self._last_batch_s is not None and self._last_batch_n else None)
            return {
                "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""),
                "threads": self.threads,
                "cached_notes": len(self._cache),
                "cache_mb": self._cache_bytes / 2 ** 20,
                "cache_limit_mb": self.cache_limit / 2 ** 20,
                "queue": len(self._queued),
                "rendering": len(self._in_flight),
                "filling": len(self._filling),
                "prewarm_done": self._prewarm_done,
                "prewarm_total": self._prewarm_total,
                "last_urgent_ms": delays[-1] if delays else None,
                # not np.median: its first call imports numpy.ma (~100 ms holding the GIL)
                "urgent_p50_ms": statistics.median(delays) if delays else None,
                "render_ms_per_note": per_note,
                "last_error": self._last_error,
                "alive": self._thread.is_alive() and all(t.is_alive() for t in self._lanes),
                "urgent_lane": bool(self._lanes),
                **self._counts,
                **({} if self.store is None else {"store": self.store.status()}),
            }

    # ------------------------------------------------------------------ worker
    def _peek(self):
        """(priority, key) of the next live heap entry, or None (lock held); drops stale entries
        (promoted, taken, or dropped) on the way."""
        heap = self._heap
        while heap:
            prio, _, key = heap[0]
            if self._queued.get(key) == prio and key not in self._in_flight:
                return prio, key
            heapq.heappop(heap)
            if key in self._in_flight and self._queued.get(key) == prio:
                del self._queued[key]
        self._queued.clear()     # nothing live left: never spin on an inconsistent count
        return None

    def _next_batch(self, urgent_only=False) -> tuple:
        """Pops the next batch (lock held): urgent keys only, or prewarm keys only; marks them in
        flight.  Returns (keys, priority); ``urgent_only``: nothing unless urgent keys wait."""
        batch, kind = [], None
        while True:
            top = self._peek()
            if top is None or (kind is not None and top[0] != kind):
                break
            prio, key = top
            if urgent_only and prio != URGENT:
                break
            limit = self.batch_size if prio == URGENT else self.prewarm_batch_size
            if len(batch) >= limit:
                break
            heapq.heappop(self._heap)
            del self._queued[key]
            batch.append(key)
            kind = prio
        self._in_flight.update(batch)
        return batch, kind

    def _worker(self, urgent_only=False) -> None:
        """The render loop.  The worker takes every batch, urgent ones first, prewarm ones at a
        lower CPU priority (`_run`); the urgent lane (``urgent_only``) takes urgent batches only,
        beside the worker's prewarm steps, at the base priority."""
        if self.threads:
            torch.set_num_threads(self.threads)    # OpenMP's team size is per thread: ours only
        if not urgent_only:
            self._nice = ThreadNice()
        with self._stream(urgent_only):
            self._loop(urgent_only)

    def _stream(self, urgent_only: bool):
        """On CUDA each thread queues its kernels on its own stream, the urgent lane's at high
        priority: on one stream a pressed key's kernels would wait behind the prewarm step's."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        low, high = torch.cuda.Stream.priority_range()
        return torch.cuda.stream(torch.cuda.Stream(self.device, priority=high if urgent_only else low))

    def _loop(self, urgent_only: bool) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._urgent_top() if urgent_only else self._queued):
                    self._cond.wait()
                if self._closed:
                    return
                batch, kind = self._next_batch(urgent_only)
            if batch and urgent_only:
                self._run_steps(batch, preempt=False)
            elif batch:
                self._run(batch, preempt=kind != URGENT)

    def _run(self, batch, preempt: bool) -> None:
        """Renders ``batch`` step by step (`FastRenderer.stages`) and delivers it.  With
        ``preempt`` (a prewarm batch), urgent requests queued meanwhile are rendered and delivered
        between two steps: a key pressed now waits for one step (a few ms), not a whole batch.
        Without it (an urgent batch), the notes' heads are rendered first and delivered at once
        (`_start_notes`); the rest of each note is written behind them (`_finish_note`)."""
        nice = self._nice
        if nice is None or nice.base is None:
            return self._run_steps(batch, preempt)
        previous = nice.set(nice.base + RENDER_NICE if preempt else nice.base)
        try:
            self._run_steps(batch, preempt)
        finally:
            nice.set(previous)

    def _run_steps(self, batch, preempt: bool) -> None:
        """``batch``'s notes from the note store, the rest rendered (`_render_steps`) and
        written there; the renderer is not idle (`wait_idle`) before the writes are done."""
        with self._cond:
            self._busy += 1
        outer = getattr(self._giving_way, "keys", None)
        # a prewarm batch gives way to the urgent lane (`_give_way`); an urgent one served
        # between its steps (`_serve_urgent`) gives way to nobody
        self._giving_way.keys = frozenset(batch) if preempt and self._lanes else None
        try:
            batch = self._from_store(batch)
            if batch:
                self._render_steps(batch, preempt)
        finally:
            self._giving_way.keys = outer
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def _render_steps(self, batch, preempt: bool) -> None:
        notes = error = waves = None
        filling = None
        spent = 0.0
        if preempt:
            with self._cond:
                self._stepping.update(batch)
        try:
            head_frames = 0 if preempt else self.head_frames
            inputs = self._inputs(batch)
            gains = self._gains(batch)
            if self.graphs:
                steps = self._graph_stages(inputs, head_frames)
            else:
                # an urgent batch gives way to nobody: after its head, the rest in one LSTM run
                # and one decoder pass (each step costs ~1 ms of overhead at batch 1)
                steps = self.fast.stages(*inputs,
                                         lstm_chunks=self.lstm_chunks if preempt else 1,
                                         decoder_chunk=self.decoder_chunk if preempt else 1 << 20,
                                         head_frames=head_frames)
            while True:
                t0 = time.perf_counter()
                try:
                    with torch.inference_mode():
                        head = next(steps)
                except StopIteration as done:
                    waves = done.value
                    spent += time.perf_counter() - t0
                    break
                if head is not None:
                    filling = self._start_notes(batch, head.float().cpu().numpy() * gains)
                spent += time.perf_counter() - t0
                if self._closed and filling is None:
                    steps.close()
                    waves = None
                    break
                if preempt and self._urgent_waiting():
                    self._serve_urgent()
            if waves is not None:
                t0 = time.perf_counter()
                waves = waves.float().cpu().numpy() * gains
                spent += time.perf_counter() - t0
            if preempt:
                batch, waves = self._kept(batch, waves)
            if waves is not None:
                if filling is None:
                    self._deliver_each(batch, waves, spent)
                    return self._save(batch, waves)
                t0 = time.perf_counter()
                notes = [self._finish_note(f, w) for f, w in zip(filling, waves)]
                spent += time.perf_counter() - t0
        except Exception as exc:   # a failed batch is reported, never kills the worker
            error = exc
            for f in filling or ():
                self._cut_note(f)
            if preempt:
                batch, _ = self._kept(batch, None)
        self._deliver(batch, notes, error, started=filling is not None, timing=(spent, len(batch)))
        if notes is not None:
            self._save(batch, waves)

    def _kept(self, batch, waves) -> tuple:
        """A prewarm batch done rendering: its keys and waves less those taken over as urgent
        (`_take_over`: rendered and delivered by the urgent path, never twice)."""
        with self._cond:
            self._stepping.difference_update(batch)
            keep = [i for i, key in enumerate(batch) if key not in self._let_go]
            self._let_go.difference_update(batch)
        if len(keep) == len(batch):
            return batch, waves
        return [batch[i] for i in keep], None if waves is None else waves[keep]

    def _from_store(self, batch) -> list:
        """Delivers the notes of ``batch`` that the note store has (a read and a resample, ~2 ms
        a note, no model), a note that a pressed key waits for first and head first (~1 ms from
        request to ready here, `_hand_over`); returns the keys left to render."""
        if self.store is None:
            return batch
        with self._cond:
            batch = sorted(batch, key=lambda k: k not in self._requested_at)
        left = []
        for key in batch:
            wave = None if self._closed else self.store.load(key)
            if wave is None:
                left.append(key)
                continue
            try:
                self._hand_over(key, wave, source="stored")
            except Exception as exc:   # reported, never kills the worker
                self._deliver([key], None, exc)
        return left

    def _save(self, batch, waves) -> None:
        """Writes the rendered notes (model rate, levels applied) to the note store, after they
        were delivered: a key waits for no disk."""
        if self.store is None or self._closed:
            return
        for key, wave in zip(batch, waves):
            self.store.save(key, wave)

    def _deliver_each(self, batch, waves, spent: float) -> None:
        """Prepares a batch of whole notes and hands each over as soon as it is ready, a note that
        a pressed key waits for first (`_hand_over`).  Preparing holds the GIL (~1.7 ms a note,
        `_append`): on an H100, where a prewarm batch is 32 notes, a key found in flight waited
        55-75 ms for the whole batch; now it waits for the note being prepared and its own head."""
        left = list(range(len(batch)))
        while left:
            with self._cond:
                i = next((j for j in left if batch[j] in self._requested_at), left[0])
            left.remove(i)
            t0 = time.perf_counter()
            try:
                self._hand_over(batch[i], waves[i])
            except Exception as exc:   # reported, never kills the worker
                return self._deliver([batch[j] for j in (i, *left)], None, exc)
            spent += time.perf_counter() - t0
        self._batch_done(spent, len(batch))

    def _hand_over(self, key, wave, source="rendered") -> None:
        """Delivers one whole note (model rate, levels applied) read from the note store or
        rendered in a prewarm batch.  A note that a pressed key waits for goes head first, as an
        urgent render does (`_start_notes`): the voices have it once its first ``head_frames``
        frames are resampled (~0.2 ms here), not the whole note (~1.7 ms: more than a period of
        64 frames at 48 kHz).  Raises what preparing raises, the note's head cut off with a fade
        if it was out already."""
        head = self.head_frames * self.config.stride
        with self._cond:
            waiting = key in self._requested_at
        if not (waiting and 0 < head < len(wave)):
            return self._deliver([key], [self._prepare(wave)], None, source=source)
        fill = self._start_notes([key], wave[None, :head])[0]
        try:
            note = self._finish_note(fill, wave)
        except Exception:
            self._cut_note(fill)
            raise
        self._deliver([key], [note], None, started=True, source=source)

    def _graph_stages(self, inputs, head_frames: int):
        """`FastRenderer.stages`' protocol from this thread's CUDA graphs (`graphs`): a prewarm
        batch in one replay; with ``head_frames`` (a key pressed now) the head's graph first,
        whose head is yielded, then the rest's (`GraphedRenderer.head`): on an H100 the whole
        `small` note took 1.9 ms at batch 1, ~1.6 ms of it after the head's frames.  A head
        graph that cannot be captured is reported and whole notes are rendered from then on."""
        graphed = self._graphed.get(threading.get_ident())
        if graphed is None:
            graphed = self._graphed[threading.get_ident()] = GraphedRenderer(self.fast, GRAPH_BUCKETS)
        if head_frames and self._head_graphs:
            try:
                head = graphed.head(*inputs, head_frames)
            except RuntimeError as exc:
                self._head_graphs = False
                with self._cond:
                    self._counts["errors"] += 1
                    self._last_error = f"head graph: {' '.join(str(exc).split())[:200]}; whole notes from now on"
            else:
                yield head
                return graphed.rest()
        waves = graphed(*inputs)
        if head_frames:
            yield waves[:, :head_frames * self.config.stride]
        return waves

    def _start_notes(self, batch, heads) -> list:
        """Heads of an urgent batch (model rate): each note's array, stream-rate, its head written
        and the rest zeros, handed to the ready callbacks now; returns the fill state of each,
        [note, resampler, samples written, model samples consumed].

        The voices play the array while the worker writes the rest behind the head: the head
        is ``head_frames`` frames (~0.4 s at the stream rate with the default 32), the rest takes
        ~20 ms to render, so playback never reaches a sample before it is written.  The array
        is made read-only, and cached, once complete."""
        filling = []
        for wave in heads:
            resampler = self._resampler() if self.stream_rate != self.model_rate else None
            note = np.zeros(self.note_length, np.float32)
            written = self._append(note, 0, wave, resampler, last=False)
            n_in = min(len(self._fade_in), written)
            note[:n_in] *= self._fade_in[:n_in]
            filling.append([note, resampler, written, len(wave)])
        ready = []
        with self._cond:
            now = time.perf_counter()
            callbacks = list(self._callbacks)
            for key, f in zip(batch, filling):
                self._filling[key] = f[0]
                asked = self._requested_at.pop(key, None)
                if asked is not None:
                    self._urgent_delays.append(now - asked)
                ready.append((key, f[0]))
            self._cond.notify_all()      # a prewarm batch giving way to these keys goes on
        self._call(callbacks, ready)
        return filling

    def _give_way(self) -> None:
        """Called between two pieces of resampling: in a prewarm batch (`_run_steps`), pauses
        while a key pressed less than ``GIVE_WAY_S`` ago, and not in this batch, waits for the
        urgent lane to hand its head over.  Resampling holds the GIL, in pieces of ~0.1 ms:
        the lane, which needs the GIL in many short turns to start a render and to resample
        and hand over the head, waited up to a switch interval for each turn, ~1-2 ms a key in
        all on a GPU's busy renderer (GPU emulated, `bench.gpu_emulation`)."""
        keys = getattr(self._giving_way, "keys", None)
        if not keys or not self._requested_at:       # unlocked peek; checked again below
            return
        with self._cond:
            while not self._closed:
                now = time.perf_counter()
                left = max((GIVE_WAY_S - (now - t) for k, t in self._requested_at.items()
                            if k not in keys), default=0.0)
                if left <= 0:
                    return
                self._cond.wait(left)

    def _append(self, note, written: int, wave, resampler, last: bool) -> int:
        wave = np.nan_to_num(np.asarray(wave, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if resampler is None:
            n = max(0, min(len(wave), len(note) - written))
            note[written:written + n] = wave[:n]
            return written + n
        # soxr holds the GIL while it works (~1.7 ms for a whole note here): in short pieces the
        # audio callback, which needs the GIL every period, never waits long for it
        for start in range(0, max(len(wave), 1), RESAMPLE_CHUNK):
            self._give_way()
            piece = wave[start:start + RESAMPLE_CHUNK]
            out = resampler.resample_chunk(piece, last=last and start + RESAMPLE_CHUNK >= len(wave))
            n = max(0, min(len(out), len(note) - written))
            note[written:written + n] = out[:n]
            written += n
        return written

    def _resampler(self):
        """soxr's stream, model rate -> stream rate: the same samples as ``soxr.resample``."""
        return soxr.ResampleStream(self.model_rate, self.stream_rate, 1, dtype="float32", quality="HQ")

    def _finish_note(self, fill, wave) -> np.ndarray:
        note, resampler, written, consumed = fill
        self._append(note, written, wave[consumed:], resampler, last=True)
        n_out = min(len(self._fade_out), len(note))
        note[len(note) - n_out:] *= self._fade_out[len(self._fade_out) - n_out:]
        note.flags.writeable = False
        return note

    def _cut_note(self, fill) -> None:
        """A note whose rest failed: it ends with a fade after its head."""
        note, _, written, _ = fill
        n_out = min(len(self._fade_out), written)
        if n_out:
            note[written - n_out:written] *= self._fade_out[len(self._fade_out) - n_out:]

    def _urgent_waiting(self) -> bool:
        with self._cond:
            return self._urgent_top()

    def _urgent_top(self) -> bool:
        """Whether an urgent key waits (lock held)."""
        top = self._peek()
        return top is not None and top[0] == URGENT

    def _serve_urgent(self) -> None:
        """Renders and delivers every urgent batch queued now (and while doing so)."""
        while True:
            with self._cond:
                if self._closed:
                    return
                batch, _ = self._next_batch(urgent_only=True)
            if not batch:
                return
            self._run(batch, preempt=False)

    def _deliver(self, batch, notes, error, started=False, timing=None, source="rendered") -> None:
        """Stores the rendered notes, calls the ready callbacks (unless ``started``: they had the
        notes at their head, `_start_notes`), and takes ``batch`` out of flight (notes None:
        nothing rendered -- an error, or closing).  ``timing``: (seconds, notes) of the whole
        batch, given with its last delivery.  ``source``: the count they add to, "rendered" or
        "stored" (read from the note store)."""
        ready = []
        with self._cond:
            callbacks = list(self._callbacks)
            for key in batch:
                self._filling.pop(key, None)
            if notes is not None:
                now = time.perf_counter()
                for key, note in zip(batch, notes):
                    self._store(key, note)
                    asked = self._requested_at.pop(key, None)
                    if asked is not None and not started:
                        self._urgent_delays.append(now - asked)
                    if key in self._prewarm_pending:
                        self._prewarm_pending.discard(key)
                        self._prewarm_done += 1
                    if not started:
                        ready.append((key, note))
                self._counts[source] += len(batch)
                if timing is not None:
                    self._batch_done(*timing)
            else:
                if error is not None:
                    self._counts["errors"] += 1
                    self._last_error = (f"render: {type(error).__name__}: "
                                        f"{str(error).splitlines()[0] if str(error) else ''}")
                for key in batch:
                    self._requested_at.pop(key, None)
                    if key in self._prewarm_pending:
                        self._prewarm_pending.discard(key)
                        self._prewarm_total -= 1
        self._call(callbacks, ready)
        with self._cond:       # idle only once the callbacks are done (`wait_idle`)
            self._in_flight.difference_update(batch)
            self._cond.notify_all()

    def _batch_done(self, seconds: float, notes: int) -> None:
        """Counts a rendered batch and its time (status's ``render_ms_per_note``)."""
        with self._cond:
            self._counts["batches"] += 1
            self._last_batch_s, self._last_batch_n = seconds, notes

    def _inputs(self, batch) -> tuple:
        """The model's inputs for ``batch``: blend weights, pitches, velocity rows."""
        instrument = torch.stack([self._blend_inputs(key[0])[0] for key in batch]).to(self.device)
        pitch = torch.tensor([int(key[1]) for key in batch], device=self.device)
        velocity = torch.tensor([int(key[2]) for key in batch], device=self.device)
        return instrument, pitch, velocity

    def _gains(self, batch):
        """Each note's level correction, `[B, 1]` (1.0 without a calibration)."""
        if self.levels is None:
            return np.float32(1.0)
        return np.array([[self._blend_inputs(key[0])[1][int(key[1])]] for key in batch], np.float32)

    def _blend_inputs(self, inst) -> tuple:
        """(blend weights ``[n_instruments]``, level gain of every pitch ``[n_pitches]``) of an
        instrument key, kept (``INPUT_CACHE`` blends): made for each key they cost ~15 small
        torch calls, each giving the GIL up, ~0.5 ms between a key press and its render in the
        live process."""
        inputs = self._blend_cache.get(inst)
        if inputs is None:
            weights = self._vector(inst)
            pitches = torch.arange(self.config.n_pitches)
            gains = (np.ones(len(pitches), np.float32) if self.levels is None else
                     self.levels.gains(weights.expand(len(pitches), -1), pitches).numpy().astype(np.float32))
            if len(self._blend_cache) >= INPUT_CACHE:
                self._blend_cache.clear()
            inputs = self._blend_cache[inst] = (weights, gains)
        return inputs

    def _render(self, batch) -> list:
        """Renders a batch in one go on the model's device; returns float32 arrays at the stream rate."""
        inputs = self._inputs(batch)
        with torch.inference_mode():
            waves = self.fast(*inputs).float().cpu().numpy() * self._gains(batch)
        return [self._prepare(wave) for wave in waves]

    def _prepare(self, wave: np.ndarray) -> np.ndarray:
        if self.stream_rate != self.model_rate:       # in pieces, as `_append` explains
            note = np.zeros(self.note_length, np.float32)
            self._append(note, 0, wave, self._resampler(), last=True)
            wave = note
        else:
            wave = np.nan_to_num(np.asarray(wave, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        n_in, n_out = min(len(self._fade_in), len(wave)), min(len(self._fade_out), len(wave))
        wave[:n_in] *= self._fade_in[:n_in]
        wave[len(wave) - n_out:] *= self._fade_out[len(self._fade_out) - n_out:]
        wave.flags.writeable = False     # shared by the cache and every voice playing it
        return wave

    def _store(self, key, note) -> None:
        """LRU insert (lock held); a note larger than the whole cache is delivered, not kept.
        The bound counts each note's memory as the system sees it (`footprint`); ``cache_mb``
        in `status` reports the notes' bytes."""
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
            self._cache_pages -= footprint(old)
        self._cache[key] = note
        self._cache_bytes += note.nbytes
        self._cache_pages += footprint(note)
        while self._cache_pages > self.cache_limit and self._cache:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.nbytes
            self._cache_pages -= footprint(evicted)
            self._counts["evictions"] += 1


PAGE = 4096


def footprint(note) -> int:
    """Resident bytes of a note: whole pages, plus one for the allocator's header (notes are
    mmap'd chunks, see `play._return_freed_notes`) -- 0.8% above ``nbytes`` at 48 kHz."""
    return (note.nbytes // PAGE + 2) * PAGE
