"""The real-time half: a preallocated voice table mixed in the sounddevice callback.

The control half (`controller.Controller`, on the MIDI thread) posts events with `Mixer.post`;
the audio callback drains them at the start of each block.  Events cross through a
`collections.deque` (append / popleft are atomic under the GIL): no locks anywhere.  Notes the
audio thread has finished with go back through a second deque, drained by `Mixer.collect` on
the control thread, so no note array is ever freed on the audio thread.

Mixing, compiled (the default where it was built): `_mixc.Kernel` is bound to the voice table's
arrays once and mixes a whole block in one C call -- per voice a slice copy or a linear
interpolation, its release envelope, its gains ramping across the block into the left and right
sums, its position and release moved on -- then applies the limiter's gain and soft knee.  In a
stream each callback finds its caches cold, and the numpy path's ~50 calls a block cost more
than the voices themselves: 128 voices, one callback a period, p99 ~5% of a 256-frame period
against ~13-25% (bench/RESULTS.md).  Python keeps the events, the frees and the limiter's state.

Mixing, numpy (the fallback, and the reference the tests compare the compiled block with): each
sounding voice writes its block of samples into one row of a preallocated matrix
``V[voice, frame]`` (a slice copy at rate 1, a linear interpolation at any other rate, i.e. pitch
bend as varispeed); release envelopes multiply the rows; then one matrix product
``coef[4, K] @ V[K, n]`` gives the left and right mixes with every voice's gain ramping linearly
from its previous value to its new one across the block (so volume, pan and expression changes
never click).  Voices at another rate than 1 (pitch bend) are interpolated together after the
others: their read positions for the block are one broadcast, then one gather per voice of the
samples at and after them (``[I | I + 1]``).
Everything else about the voices -- validity, gains, envelopes, positions, ends -- is computed
for the whole voice table at once (`_select`, `_gather`, `_advance`); the only per-voice Python
work left is the slice copy from each voice's own note (128 voices: ~0.16 ms per 256-frame block
on this project's CI CPU, against ~0.4 ms voice by voice).  ``python -m sing_synth.engine.bench``
and ``python -m bench.mixer`` measure the callback.

Limiter (the choice): master gain, then a block peak follower -- gain = min(1, threshold / peak)
reached over one block when the peak rises (attack, a linear ramp across the block, no step), and
released towards 1 with a ``limiter_release`` time constant -- then a soft knee above
``threshold`` (tanh, transparent below it, asymptotic to 1) that catches what the ramp lets
through in an attack block, and a final clip to [-1, 1] that only rounding can reach.  No
lookahead: no added latency.  128 voices at full velocity stay within |1| and are turned down
smoothly rather than distorted, except for the first block of a sudden attack.
"""
from __future__ import annotations

import math
import time as _time
from collections import deque
from typing import Any, NamedTuple, Optional

import numpy as np

from ..timing import CallbackTimes

try:                 # the compiled block (setup.py builds it; optional, see `Mixer`'s kernel)
    from . import _mixc
except ImportError:  # no C compiler at install: the numpy path
    _mixc = None

FREE, ACTIVE, RELEASED, FADING = 0, 1, 2, 3
KERNELS = ("compiled", "numpy") if _mixc is not None else ("numpy",)   # built; 'auto' takes the first
N_CHANNELS = 16
_EXP_DEPTH = math.log(1000.0)   # exponential release: -60 dB shape, reaches 0 at its end
_BAD_STATE = "voice state, position, rate or gain out of range"
_BAD_NOTE = "its note is not a contiguous float32 array of its length"


# ---------------------------------------------------------------------------------------- events
class NoteOn(NamedTuple):
    """Start a voice.  ``note``: float32 mono at the stream rate (read-only, shared); ``gain``:
    the voice's own gain (velocity x preset), channel volume/pan apply on top; ``release``:
    fade length after note-off, seconds; ``rate``: base playback rate (1 = as rendered)."""
    channel: int
    pitch: int
    note: Any
    gain: float = 1.0
    release: float = 0.25
    rate: float = 1.0
    key: Any = None


class NoteOff(NamedTuple):
    channel: int
    pitch: int


class Sustain(NamedTuple):
    channel: int
    on: bool


class ChannelGain(NamedTuple):
    """Channel gain (volume x expression), linear."""
    channel: int
    gain: float


class ChannelPan(NamedTuple):
    """Channel pan, -1 (left) .. 0 (centre, unity on both sides) .. 1 (right)."""
    channel: int
    pan: float


class PitchBend(NamedTuple):
    """Playback-rate factor of every voice of the channel (2 ** (semitones / 12))."""
    channel: int
    factor: float


class AllSoundOff(NamedTuple):
    """Silence now (a 5 ms fade), sustain or not; ``channel`` None: every channel."""
    channel: Optional[int] = None


class AllNotesOff(NamedTuple):
    """Note-off for every note (the sustain pedal still holds); ``channel`` None: every channel."""
    channel: Optional[int] = None


# ----------------------------------------------------------------------------------------- mixer
class Mixer:
    """Voices, channels and the master bus, mixed in `callback`.

    Args:
        stream_rate: sample rate of the stream (and of the notes).
        blocksize_max: largest block mixed in one pass (scratch size); longer callbacks are
            mixed in several passes.
        polyphony: voices that may sound at once (active or released); beyond it a voice is
            stolen -- a released one first, else the oldest -- and faded out over ``steal_fade``
            in one of ``fade_slots`` extra slots, so stealing does not click.
        channels: output channels (1: mono sum; 2: stereo; more: the rest silent).
        master_gain: linear gain before the limiter.
        release_curve: 'exp' (-60 dB-shaped exponential that ends exactly at 0) or 'linear'.
        max_events: events applied per callback at most.
        event_budget: share of the block's duration the callback may spend applying events
            (at least one is applied per callback); the rest wait for the next callback, so a
            burst (a 128-note chord struck at once, each note-on stealing a voice: ~20 us each)
            delays its last notes by a block or two instead of overrunning this one.
        kernel: how blocks are mixed: 'compiled' (`_mixc.Kernel`: the whole voice table in one
            C call; in a stream, whose caches go cold between callbacks, it is several times
            faster than numpy's ~50 calls a block), 'numpy' (the whole-table numpy passes), or
            'auto' (the default: compiled when it was built, as ``pip install`` does where a C
            compiler is present).  Both mix the same (tests compare them).
    """

    def __init__(self, stream_rate, blocksize_max=4096, polyphony=128, channels=2,
                 master_gain=0.5, release_curve="exp", fade_slots=16, steal_fade=0.005,
                 threshold=0.89, limiter_release=0.25, timing_history=8192, max_events=4096,
                 event_budget=0.15, kernel="auto"):
        if release_curve not in ("exp", "linear"):
            raise ValueError("release_curve: 'exp' or 'linear'")
        if kernel not in ("auto", "compiled", "numpy"):
            raise ValueError("kernel: 'auto', 'compiled' or 'numpy'")
        if kernel == "compiled" and _mixc is None:
            raise RuntimeError("the compiled mixer (sing_synth.engine._mixc) was not built: "
                               "reinstall with a C compiler, or use kernel='numpy'")
        self.stream_rate = int(stream_rate)
        self.blocksize_max = B = int(blocksize_max)
        self.polyphony = int(polyphony)
        self.channels = int(channels)
        self.master_gain = float(master_gain)
        self.release_curve = release_curve
        self.threshold = float(threshold)
        self.limiter_release = float(limiter_release)
        self.steal_fade = max(1.0, steal_fade * self.stream_rate)
        self.max_events = int(max_events)
        self.event_budget = float(event_budget)
        self.n_slots = S = self.polyphony + max(0, int(fade_slots))

        # the voice table: one slot per voice
        self.v_state = np.zeros(S, np.int8)
        self.v_pos = np.zeros(S, np.float64)        # read position, samples of the note
        self.v_len = np.ones(S, np.float64)         # length of the note, samples
        self.v_base = np.ones(S, np.float64)        # base rate of the voice
        self.v_rate = np.ones(S, np.float64)        # base x channel bend: the varispeed
        self.v_gain = np.zeros(S, np.float64)       # voice gain (velocity x preset)
        self.v_cur_l = np.zeros(S, np.float64)      # gains applied at the end of the last block
        self.v_cur_r = np.zeros(S, np.float64)
        self.v_channel = np.zeros(S, np.int16)
        self.v_pitch = np.full(S, -1, np.int16)
        self.v_serial = np.zeros(S, np.int64)       # age, for stealing: lower is older
        self.v_rel_len = np.ones(S, np.float64)     # release length, samples
        self.v_rel_left = np.ones(S, np.float64)    # release samples left
        self.v_sustained = np.zeros(S, np.bool_)    # key up while the pedal is down
        self.v_note = [None] * S                    # note array references
        self.v_key = [None] * S
        self.v_gen = np.zeros(S, np.int64)          # note-ons of the slot: the kernel's note cache
        self._serial = 0

        # channels
        self.ch_gain = np.ones(N_CHANNELS, np.float64)
        self.ch_pan_l = np.ones(N_CHANNELS, np.float64)
        self.ch_pan_r = np.ones(N_CHANNELS, np.float64)
        self.ch_bend = np.ones(N_CHANNELS, np.float64)
        self.ch_sustain = np.zeros(N_CHANNELS, np.bool_)

        # queues
        self.events: deque = deque()       # control -> audio
        self.reclaimed: deque = deque()    # audio -> control: references to drop off the audio thread

        # scratch, all allocated now
        # matrices [voice, frame] kept flat: each block views them as [S, n], C-contiguous,
        # so that numpy's products and ufuncs never copy them
        self._V = np.zeros(S * B, np.float32)
        self._E = np.zeros(S * B, np.float32)
        self._Vn = self._V.reshape(S, B)
        self._coef = np.zeros((4, S), np.float32)
        self._rel_left_k = np.zeros(S, np.float32)
        self._rel_len_k = np.ones(S, np.float32)
        # broadcasting a column against a row makes numpy's iterator allocate buffers; a rank-2
        # matrix product does not: E[k, i] = a[k] * 1 + b[k] * i = [a b] @ [1; i]
        self._ab32 = np.zeros((S, 2), np.float32)
        self._ab64 = np.zeros((S, 2), np.float64)
        self._one_i32 = np.zeros(2 * B, np.float32)
        self._one_i64 = np.zeros(2 * B, np.float64)
        self._one_i_n = 0
        self._M = np.zeros(4 * B, np.float32)
        self._ramp = np.zeros(B, np.float32)
        self._idx1 = np.arange(1, B + 1, dtype=np.float32)  # 1 .. B
        # varispeed voices: registered in the voice loop, interpolated together after it
        self._P = np.zeros(S * B, np.float64)
        self._FL = np.zeros(S * B, np.float64)
        self._J = np.zeros(2 * S * B, np.intp)      # [floors | floors + 1] of each voice
        self._AB = np.zeros(2 * S * B, np.float32)  # the samples there
        self._D = np.zeros(S * B, np.float32)       # their differences
        # per-row values of a block (row k mixes slot _ix[k]), see `_select` and `_gather`
        self._ix = np.zeros(S, np.intp)
        self._tl = np.zeros(S, np.float64)          # target gains of every slot this block
        self._tr = np.zeros(S, np.float64)
        self._nv = np.zeros(S, np.float64)          # samples each slot has left this block
        self._g64 = np.zeros(S, np.float64)
        self._g64b = np.zeros(S, np.float64)
        self._k_pos = np.zeros(S, np.float64)
        self._k_rate = np.zeros(S, np.float64)
        self._k_nv = np.zeros(S, np.float64)
        self._k_state = np.zeros(S, np.int8)
        self._k_ended = np.zeros(S, np.bool_)
        self._k_m = np.zeros(S, np.bool_)
        self._ipos = np.zeros(S, np.int64)
        self._inv = np.zeros(S, np.int64)
        self._releasing = False
        self._r0 = self._r1 = 0      # rows r0 .. r1: the releasing (and fading) voices
        self._k_len = np.zeros(S, np.float64)
        # the steady state (`_calm_block`): blocks since the voice table last changed
        self.fast_path = True        # False: every block takes the full path (tests compare)
        self._changed = True         # an event applied, a voice freed, a failed block
        self._calm = 0
        self._last_n = 0
        self._kd = self._kb = 0      # the last full block's rows: rate-1, then varispeed
        self._g32 = np.zeros(B, np.float32)
        self._k1 = np.zeros(2 * B, np.float32)     # the soft knee's scratch, [2, n]
        self._k2 = np.zeros(2 * B, np.float32)
        self._m1 = np.zeros(S, np.bool_)
        self._m2 = np.zeros(S, np.bool_)
        self._m3 = np.zeros(S, np.bool_)
        self._s64 = np.zeros(S, np.int64)
        self._f64 = np.zeros(S, np.float64)
        # the compiled block's outputs: slots to free (and why), then peak, sounding, active
        self._end_slot = np.zeros(S, np.int64)
        self._end_kind = np.zeros(S, np.int8)
        self._info = np.zeros(3, np.float64)
        self._kernel = None
        if kernel != "numpy" and _mixc is not None:
            self._kernel = _mixc.Kernel(S, B, self.v_note, (
                self.v_state, self.v_pos, self.v_len, self.v_rate, self.v_gain, self.v_cur_l,
                self.v_cur_r, self.v_channel, self.v_rel_len, self.v_rel_left, self.v_gen,
                self.ch_gain, self.ch_pan_l, self.ch_pan_r, self._M, self._ramp, self._end_slot,
                self._end_kind, self._info))
        self.kernel = "compiled" if self._kernel is not None else "numpy"

        # limiter and counters
        self.limiter_gain = 1.0
        self.active_voices = 0       # active + released, after the last block
        self.sounding_voices = 0     # the same plus fading (stolen / all-sound-off) voices
        self.xruns = 0
        self.callbacks = 0
        self.errors = 0              # callbacks that failed as a whole (output zeroed)
        self.voice_errors = 0        # voices killed for a bad state
        self.bad_events = 0
        self.steals = 0
        self.limited_blocks = 0
        self._last_error = None      # the exception itself: formatted off the audio thread
        self.times = CallbackTimes(timing_history)   # each callback's wall time

    # ------------------------------------------------------------------ control side
    def post(self, event) -> None:
        """Queue an event for the next callback (any thread; lock-free)."""
        self.events.append(event)

    def collect(self) -> int:
        """Drops (on the calling, non-audio thread) the references the audio thread handed
        back; returns how many.  Call it from the control half now and then."""
        count = 0
        pop = self.reclaimed.popleft
        while True:
            try:
                pop()
            except IndexError:
                return count
            count += 1

    def timing(self) -> dict:
        """Callback durations over the last ``timing_history`` callbacks, in microseconds."""
        return self.times.summary()

    def reset_timing(self) -> None:
        self.times.clear()

    def stats(self) -> dict:
        err = self._last_error
        return {
            "active_voices": self.active_voices, "sounding_voices": self.sounding_voices,
            "xruns": self.xruns, "callbacks": self.callbacks, "errors": self.errors,
            "voice_errors": self.voice_errors, "bad_events": self.bad_events,
            "steals": self.steals, "limited_blocks": self.limited_blocks, "kernel": self.kernel,
            "limiter_gain": self.limiter_gain, "pending_events": len(self.events),
            "last_error": None if err is None else f"{type(err).__name__}: {err}",
            **self.timing(),
        }

    # ------------------------------------------------------------------ the audio callback
    def callback(self, outdata, frames, time, status) -> None:
        """The sounddevice ``OutputStream`` callback.

        Contract (real-time safe):
        - never raises: any failure zeroes the block, is counted in ``errors`` and kept (the
          exception object, formatted later by `stats`); a voice in a bad state is killed alone
          (``voice_errors``);
        - never blocks: no locks; events arrive through a deque (atomic append/popleft);
        - never allocates buffers in the steady state: every array is preallocated, numpy
          writes with ``out=``; only small transient Python objects (views, scalars) are made;
        - never frees a note: finished voices are marked free and their note references pushed
          to ``reclaimed``, which the control thread drains (`collect`);
        - fills ``outdata[:]`` on every path, errors included;
        - counts a non-empty ``status`` (under/overflow) as an xrun.
        """
        t0 = _time.perf_counter()
        try:
            if status:
                self.xruns += 1
            self.callbacks += 1
            total = outdata.shape[0]
            self._drain(t0 + self.event_budget * total / self.stream_rate)
            offset = 0
            while offset < total:
                n = min(self.blocksize_max, total - offset)
                self._block(outdata, offset, n)
                offset += n
        except Exception as exc:
            self.errors += 1
            self._changed = True                           # the table may be half updated
            self._last_error = exc.with_traceback(None)   # no frames kept alive
            try:
                outdata.fill(0)
            except Exception:
                try:
                    outdata[:] = 0
                except Exception:
                    pass
        finally:
            self.times.add(_time.perf_counter() - t0)

    # ------------------------------------------------------------------ events (audio thread)
    def _drain(self, deadline: float) -> None:
        """Applies queued events until ``deadline`` (perf_counter seconds; one at least)."""
        events = self.events
        if not events:               # most blocks: no exception raised and caught to learn it
            return
        clock = _time.perf_counter
        for k in range(self.max_events):
            if k and clock() > deadline:
                return
            try:
                event = events.popleft()
            except IndexError:
                return
            self._changed = True
            try:
                self._apply(event)
            except Exception as exc:
                self.bad_events += 1
                self._last_error = exc.with_traceback(None)   # no frames kept alive
                self.reclaimed.append(event)     # it may hold the last reference to a note

    def _apply(self, ev) -> None:
        kind = type(ev)
        if kind is NoteOn:
            self._note_on(ev)
        elif kind is NoteOff:
            self._note_off(int(ev.channel), int(ev.pitch))
        elif kind is Sustain:
            c = self._channel(ev.channel)
            self.ch_sustain[c] = bool(ev.on)
            if not ev.on:
                m = self._voices_of(c, ACTIVE)
                np.logical_and(m, self.v_sustained, out=m)
                self._release_where(m)
        elif kind is ChannelGain:
            c, g = self._channel(ev.channel), float(ev.gain)
            if not 0.0 <= g <= 16.0:
                raise ValueError(f"channel gain {g}")
            self.ch_gain[c] = g
        elif kind is ChannelPan:
            c, pan = self._channel(ev.channel), float(ev.pan)
            if not -1.0 <= pan <= 1.0:
                raise ValueError(f"pan {pan}")
            angle = (pan + 1.0) * (math.pi / 4)     # constant power, unity at the centre
            self.ch_pan_l[c] = math.sqrt(2.0) * math.cos(angle)
            self.ch_pan_r[c] = math.sqrt(2.0) * math.sin(angle)
        elif kind is PitchBend:
            c, factor = self._channel(ev.channel), float(ev.factor)
            if not 0.01 < factor < 100.0:
                raise ValueError(f"bend factor {factor}")
            self.ch_bend[c] = factor
            m = self._m1
            np.equal(self.v_channel, c, out=m)
            np.multiply(self.v_base, factor, out=self._f64)
            np.copyto(self.v_rate, self._f64, where=m)
        elif kind is AllSoundOff:
            m = self._m1
            if ev.channel is None:
                np.not_equal(self.v_state, FREE, out=m)
            else:
                np.equal(self.v_channel, self._channel(ev.channel), out=m)
                np.not_equal(self.v_state, FREE, out=self._m2)
                np.logical_and(m, self._m2, out=m)
            self._fade_where(m, 0.005 * self.stream_rate)
        elif kind is AllNotesOff:
            chans = range(N_CHANNELS) if ev.channel is None else (self._channel(ev.channel),)
            for c in chans:
                m = self._voices_of(c, ACTIVE)
                if self.ch_sustain[c]:
                    np.copyto(self.v_sustained, True, where=m)   # held until the pedal is up
                else:
                    self._release_where(m)
        else:
            raise TypeError(f"unknown event {kind.__name__}")

    @staticmethod
    def _channel(c) -> int:
        c = int(c)
        if not 0 <= c < N_CHANNELS:
            raise ValueError(f"channel {c}")
        return c

    def _voices_of(self, c: int, state: int) -> np.ndarray:
        m, m2 = self._m1, self._m2
        np.equal(self.v_channel, c, out=m)
        np.equal(self.v_state, state, out=m2)
        np.logical_and(m, m2, out=m)
        return m

    def _release_where(self, m) -> None:
        """Starts the release of the voices in mask ``m`` (active voices only)."""
        np.copyto(self.v_state, RELEASED, where=m)
        np.copyto(self.v_rel_left, self.v_rel_len, where=m)
        np.copyto(self.v_sustained, False, where=m)

    def _fade_where(self, m, length: float) -> None:
        """Fast fade (not counted toward polyphony) of the voices in ``m``, continuing from
        their current envelope value so that nothing clicks."""
        while m.any():
            i = int(m.argmax())
            m[i] = False
            self._fade(i, length)

    def _fade(self, i: int, length: float) -> None:
        state = self.v_state[i]
        level = 1.0 if state == ACTIVE else min(1.0, max(0.0, self.v_rel_left[i] / self.v_rel_len[i]))
        if state == FADING and self.v_rel_left[i] <= level * length:
            return
        self.v_state[i] = FADING
        self.v_rel_len[i] = length
        self.v_rel_left[i] = level * length
        self.v_sustained[i] = False

    def _note_off(self, c: int, pitch: int) -> None:
        m = self._voices_of(self._channel(c), ACTIVE)
        np.equal(self.v_pitch, pitch, out=self._m2)
        np.logical_and(m, self._m2, out=m)
        if self.ch_sustain[c]:
            np.copyto(self.v_sustained, True, where=m)
        else:
            self._release_where(m)

    def _note_on(self, ev: NoteOn) -> None:
        c = self._channel(ev.channel)
        note = ev.note
        if not isinstance(note, np.ndarray) or note.ndim != 1 or note.shape[0] < 2 \
                or note.dtype != np.float32 or not note.flags.c_contiguous:
            raise TypeError("NoteOn.note must be a 1-D contiguous float32 array")
        gain, rate, release, pitch = float(ev.gain), float(ev.rate), float(ev.release), int(ev.pitch)
        if not (0.0 <= gain < 1e4 and 0.01 < rate < 100.0 and 0.0 <= release < 60.0
                and 0 <= pitch < 128):
            raise ValueError("NoteOn gain/rate/release/pitch out of range")
        i = self._free_slot()
        old = self.v_note[i]
        if old is not None:
            self.reclaimed.append(old)
        self._serial += 1
        self.v_state[i] = ACTIVE
        self.v_pos[i] = 0.0
        self.v_base[i] = rate
        self.v_rate[i] = rate * self.ch_bend[c]
        self.v_gain[i] = gain
        self.v_cur_l[i] = gain * self.ch_gain[c] * self.ch_pan_l[c]
        self.v_cur_r[i] = gain * self.ch_gain[c] * self.ch_pan_r[c]
        self.v_channel[i] = c
        self.v_pitch[i] = pitch
        self.v_serial[i] = self._serial
        self.v_rel_len[i] = max(1.0, release * self.stream_rate)
        self.v_rel_left[i] = self.v_rel_len[i]
        self.v_sustained[i] = False
        self.v_note[i] = note
        self.v_gen[i] += 1
        self.v_len[i] = note.shape[0]
        self.v_key[i] = ev.key

    def _oldest(self, mask) -> int:
        """Slot of the oldest voice in ``mask`` (which must not be empty)."""
        s = self._s64
        np.copyto(s, self.v_serial)
        np.logical_not(mask, out=mask)
        np.copyto(s, np.iinfo(np.int64).max, where=mask)
        return int(s.argmin())

    def _free_slot(self) -> int:
        """A free slot, stealing if the polyphony is reached (released voices first, then the
        oldest), the stolen voice fading out in a spare slot; without a spare slot, the oldest
        fading voice is cut."""
        m1, m2 = self._m1, self._m2
        st = self.v_state
        np.equal(st, ACTIVE, out=m1)
        np.equal(st, RELEASED, out=m2)
        counted = int(np.count_nonzero(m1)) + int(np.count_nonzero(m2))
        if counted >= self.polyphony:
            if m2.any():
                victim = self._oldest(m2)
            else:
                victim = self._oldest(m1)
            self._fade(victim, self.steal_fade)
            self.steals += 1
        np.equal(st, FREE, out=m1)
        if m1.any():
            return int(m1.argmax())
        np.equal(st, FADING, out=m1)
        if m1.any():
            i = self._oldest(m1)
        else:   # only with fade_slots=0: cut the oldest voice
            i = int(self.v_serial.argmin())
        self._free(i)
        return i

    def _free(self, i: int) -> None:
        """Marks a slot free; its note goes to `reclaimed`, never freed here."""
        self._changed = True
        self.v_state[i] = FREE
        self.v_sustained[i] = False
        note = self.v_note[i]
        if note is not None:
            self.reclaimed.append(note)
            self.v_note[i] = None
        self.v_key[i] = None

    # ------------------------------------------------------------------ mixing (audio thread)
    def _block(self, outdata, offset: int, n: int) -> None:
        ramp = self._ramp[:n]
        if n != self._one_i_n:       # [1; i] rows and the ramp for this block size (once per size)
            for flat in (self._one_i32, self._one_i64):
                rows = flat[:2 * n].reshape(2, n)
                rows[0] = 1.0
                rows[1] = np.arange(n)
            np.multiply(self._idx1[:n], np.float32(1.0 / n), out=ramp)   # (i + 1) / n: reaches 1
            self._one_i_n = n
        if self._kernel is not None:
            self._compiled_block(outdata, offset, n)
            return
        self._Vn = self._V[:self.n_slots * n].reshape(self.n_slots, n)
        calm = self._calm_block(n)
        if calm:
            kd, kb = self._kd, self._kb
        else:
            kd, kb = self._kd, self._kb = self._select(n)
            if kd + kb:
                self._gather(kd + kb, n)
        k = kd + kb
        if k:
            self._copy_direct(kd, n)
            if kb:
                self._varispeed(kd, kb, n)
            self._advance(k, n)
        else:
            self.active_voices = 0
        self.sounding_voices = k

        M = self._M[:4 * n].reshape(4, n)     # left, right, then their gain ramps
        LR = M[:2]
        if k == 0:
            LR.fill(0)
        else:
            V = self._Vn[:k]
            if self._releasing:              # their rows only: the others' envelope is 1
                r0, r1 = self._r0, self._r1
                E = self._E[:(r1 - r0) * n].reshape(r1 - r0, n)
                ab = self._ab32[:r1 - r0]    # (left - i) / length = left / length - i / length
                np.divide(self._rel_left_k[r0:r1], self._rel_len_k[r0:r1], out=ab[:, 0])
                np.divide(-1.0, self._rel_len_k[r0:r1], out=ab[:, 1])
                np.dot(ab, self._one_i32[:2 * n].reshape(2, n), out=E)
                np.maximum(E, 0.0, out=E)    # np.clip keeps a small object per new shape
                np.minimum(E, 1.0, out=E)
                if self.release_curve == "exp":
                    np.subtract(E, 1.0, out=E)
                    np.multiply(E, _EXP_DEPTH, out=E)
                    np.exp(E, out=E)
                    floor = math.exp(-_EXP_DEPTH)
                    np.subtract(E, floor, out=E)
                    np.multiply(E, 1.0 / (1.0 - floor), out=E)
                    np.maximum(E, 0.0, out=E)
                np.multiply(V[r0:r1], E, out=V[r0:r1])
            if calm:                  # the gains sit at their targets: no ramps
                np.dot(self._coef[:2, :k], V, out=LR)
            else:
                np.dot(self._coef[:, :k], V, out=M)
                np.multiply(M[2:], ramp, out=M[2:])
                np.add(LR, M[2:], out=LR)
        self._limit(LR, ramp, n, max(float(LR.max()), -float(LR.min())))
        self._write(outdata, offset, n, LR)

    def _compiled_block(self, outdata, offset: int, n: int) -> None:
        """The block in one call (`_mixc.Kernel.mix`): the same voices, gains, envelopes and
        positions as the numpy path below; what ends is freed here, on the Python side."""
        ended = self._kernel.mix(n, self.release_curve == "exp")
        if ended:        # kind 1: played to its end; 2, 3: bad, not mixed
            for i, kind in zip(self._end_slot[:ended].tolist(), self._end_kind[:ended].tolist()):
                if kind == 1:
                    self._free(i)
                else:
                    self._kill(i, _BAD_STATE if kind == 2 else _BAD_NOTE)
        info = self._info
        self.sounding_voices, self.active_voices = int(info[1]), int(info[2])
        LR = self._M[:2 * n].reshape(2, n)
        self._limit(LR, self._ramp[:n], n, float(info[0]))
        self._write(outdata, offset, n, LR)

    # The voices of a block are handled as whole-table numpy passes (`_select`, `_gather`,
    # `_advance`): only the sample copies (`_copy_direct`, `_varispeed`) loop over voices,
    # because every voice reads its own note array.  Rows of V: the rate-1 voices first
    # (``kd``, plain slice copies), then the varispeed ones (``kb``, interpolated).

    def _calm_block(self, n: int) -> bool:
        """True when this block can reuse the last one's rows (`_select`, `_gather`) and has
        only refreshed what moves by itself: samples left, and the releases' progress.

        The voice table changes only through events, frees and failed blocks (``_changed``);
        without one, the rows, their classes and gains stay what the last block found, and a
        block after an unchanged one has its gain ramps already at their targets.  So from the
        second unchanged block of a size on, the ~70 whole-table numpy calls of `_select` and
        `_gather` (validation, gains, gathers) are skipped: in a stream, where each call finds
        its caches cold, they were half the callback.  A voice whose note has no sample left
        goes back to the full path (which frees it)."""
        calm = not self._changed and n == self._last_n
        self._calm = self._calm + 1 if calm else 0
        self._changed, self._last_n = False, n
        k = self._kd + self._kb if self._calm >= 2 and self.fast_path else 0
        if not k:
            return False
        # samples left this block: as `_select` computes them, for the rows only
        f, nv = self._g64[:k], self._k_nv[:k]
        np.subtract(self._k_len[:k], 1.0, out=f)
        np.subtract(f, self._k_pos[:k], out=f)
        np.divide(f, self._k_rate[:k], out=f)
        np.floor(f, out=f)
        np.add(f, 1.0, out=f)
        np.minimum(f, n, out=nv)
        if nv.min() <= 0.0:
            return False
        if self._releasing:
            self._read_releases()
        return True

    def _select(self, n: int) -> tuple:
        """Fills ``_ix`` with the slots to mix this block, rate-1 voices first; kills voices in a
        bad state (``voice_errors``) and frees the ones with nothing left.  Returns (kd, kb)."""
        st = self.v_state
        live, m, ok = self._m1, self._m2, self._m3
        np.not_equal(st, FREE, out=live)
        if not live.any():
            return 0, 0
        # a valid voice: a known state, 0 <= position < length, 0.001 < rate < 100, finite gains
        # below 1e4 (NaN fails every comparison)
        np.greater_equal(st, ACTIVE, out=ok)
        np.less_equal(st, FADING, out=m)
        np.logical_and(ok, m, out=ok)
        pos, rate, f, tl, tr = self.v_pos, self.v_rate, self._f64, self._tl, self._tr
        for a, op, b in ((pos, np.greater_equal, 0.0), (pos, np.less, self.v_len),
                         (rate, np.greater, 0.001), (rate, np.less, 100.0)):
            op(a, b, out=m)
            np.logical_and(ok, m, out=ok)
        ch = self.v_channel
        self.ch_gain.take(ch, out=f, mode="clip")
        np.multiply(f, self.v_gain, out=f)
        self.ch_pan_l.take(ch, out=tl, mode="clip")
        np.multiply(tl, f, out=tl)
        self.ch_pan_r.take(ch, out=tr, mode="clip")
        np.multiply(tr, f, out=tr)
        for t in (tl, tr):
            np.abs(t, out=f)
            np.less(f, 1e4, out=m)
            np.logical_and(ok, m, out=ok)
        np.logical_not(ok, out=m)
        np.logical_and(m, live, out=m)
        if m.any():
            self._kill_where(m, _BAD_STATE)
            np.logical_and(live, ok, out=live)
        # samples left this block: nv = min(n, floor((length - 1 - pos) / rate) + 1)
        nv = self._nv
        np.subtract(self.v_len, 1.0, out=f)
        np.subtract(f, pos, out=f)
        np.divide(f, rate, out=f)
        np.floor(f, out=f)
        np.add(f, 1.0, out=f)
        np.minimum(f, n, out=nv)
        np.less_equal(nv, 0.0, out=m)
        np.logical_and(m, live, out=m)
        if m.any():                  # a bent voice past its last sample: it is over
            np.logical_not(m, out=ok)
            np.logical_and(live, ok, out=live)
            self._free_where(m)
        # rate 1 at an integer position: a plain copy
        np.equal(rate, 1.0, out=m)
        np.logical_and(m, live, out=m)
        np.floor(pos, out=f)
        np.equal(f, pos, out=ok)
        np.logical_and(m, ok, out=m)
        np.logical_not(m, out=ok)
        np.logical_and(ok, live, out=ok)            # the varispeed voices
        kd, kb = int(np.count_nonzero(m)), int(np.count_nonzero(ok))
        # rows: [rate 1 active | rate 1 releasing | varispeed releasing | varispeed active], so
        # that the releasing (and fading) rows, whose envelopes are computed, are r0 .. r1
        ix, act, bounds = self._ix, live, [0]
        for kind, cmp in ((m, np.equal), (m, np.not_equal), (ok, np.not_equal), (ok, np.equal)):
            cmp(st, ACTIVE, out=act)
            np.logical_and(act, kind, out=act)
            rows = np.flatnonzero(act)
            ix[bounds[-1]:bounds[-1] + len(rows)] = rows
            bounds.append(bounds[-1] + len(rows))
        self._r0, self._r1 = bounds[1], bounds[3]
        return kd, kb

    def _gather(self, k: int, n: int) -> None:
        """Per-row values of the ``k`` rows: gains (ramping from the last block's to this one's),
        release envelope parameters, read positions and sample counts."""
        ix = self._ix[:k]
        coef, g = self._coef, self._g64[:k]
        for row, cur, target in ((0, self.v_cur_l, self._tl), (1, self.v_cur_r, self._tr)):
            cur.take(ix, out=g)
            np.copyto(coef[row, :k], g, casting="same_kind")
            target.take(ix, out=self._g64b[:k])
            np.subtract(self._g64b[:k], g, out=g)
            np.copyto(coef[row + 2, :k], g, casting="same_kind")
            np.put(cur, ix, self._g64b[:k])          # the target is reached at the block's end
        self.v_pos.take(ix, out=self._k_pos[:k])
        self.v_len.take(ix, out=self._k_len[:k])
        self.v_rate.take(ix, out=self._k_rate[:k])
        self._nv.take(ix, out=self._k_nv[:k])
        self.v_state.take(ix, out=self._k_state[:k])
        # releases: rows r0 .. r1 only (`_select`); the others' envelope is 1
        self._releasing = self._r1 > self._r0
        if self._releasing:
            r0, r1 = self._r0, self._r1
            g = self._g64[:r1 - r0]
            self.v_rel_len.take(ix[r0:r1], out=g)
            np.copyto(self._rel_len_k[r0:r1], g, casting="same_kind")
            self._read_releases()

    def _read_releases(self) -> None:
        """The releasing rows' samples left in their release, for this block's envelopes."""
        r0, r1 = self._r0, self._r1
        g = self._g64b[:r1 - r0]
        self.v_rel_left.take(self._ix[r0:r1], out=g)
        np.copyto(self._rel_left_k[r0:r1], g, casting="same_kind")

    def _copy_direct(self, kd: int, n: int) -> None:
        """Rows 0 .. kd: slices of the notes (rate 1, integer positions)."""
        if not kd:
            return
        Vn, notes = self._Vn, self.v_note
        ipos, inv = self._ipos[:kd], self._inv[:kd]
        np.copyto(ipos, self._k_pos[:kd], casting="unsafe")
        np.copyto(inv, self._k_nv[:kd], casting="unsafe")
        for k, (i, p, nv) in enumerate(zip(self._ix[:kd].tolist(), ipos.tolist(), inv.tolist())):
            row = Vn[k]
            try:
                row[:nv] = notes[i][p:p + nv]
            except Exception as exc:           # not a float array any more: that voice only
                self._kill_row(k, i, exc)
                continue
            if nv < n:
                row[nv:] = 0.0

    def _advance(self, k: int, n: int) -> None:
        """After the copies: positions and releases move on one block; voices that reached
        their note's end or their release's end are freed (their rows are still mixed)."""
        ix = self._ix[:k]
        f = self._g64[:k]
        np.multiply(self._k_rate[:k], float(n), out=f)
        np.add(f, self._k_pos[:k], out=f)
        np.put(self.v_pos, ix, f)
        np.copyto(self._k_pos[:k], f)                # the next calm block's rows
        ended, m = self._k_ended[:k], self._k_m[:k]
        np.less(self._k_nv[:k], float(n), out=ended)     # the note's last samples
        # ... or its last sample at the block's end: past length - 1 nothing is left to play
        last, past = self._f64[:k], self._m3[:k]
        np.subtract(self._k_len[:k], 1.0, out=last)
        np.greater(f, last, out=past)
        np.logical_or(ended, past, out=ended)
        r0, r1 = self._r0, self._r1
        if r1 > r0:          # released and fading voices' releases move on n samples
            g, done = self._g64b[:r1 - r0], m[:r1 - r0]
            self.v_rel_left.take(ix[r0:r1], out=g)
            np.subtract(g, float(n), out=g)
            np.put(self.v_rel_left, ix[r0:r1], g)
            np.less_equal(g, 0.0, out=done)
            np.logical_or(ended[r0:r1], done, out=ended[r0:r1])
        np.not_equal(self._k_state[:k], FADING, out=m)
        self.active_voices = int(np.count_nonzero(m))
        if ended.any():
            for j in np.flatnonzero(ended).tolist():
                self._free(int(ix[j]))

    def _kill_row(self, k: int, i: int, exc) -> None:
        self.voice_errors += 1
        self._last_error = exc.with_traceback(None)   # no frames kept alive
        self._Vn[k] = 0.0
        self._free(i)

    def _kill_where(self, m, why: str) -> None:
        for i in np.flatnonzero(m).tolist():
            self._kill(i, why)

    def _kill(self, i: int, why: str) -> None:
        self.voice_errors += 1
        self._last_error = ValueError(f"voice {i}: {why}")
        self._free(i)

    def _free_where(self, m) -> None:
        for i in np.flatnonzero(m).tolist():
            self._free(i)

    def _varispeed(self, k0: int, kb: int, n: int) -> None:
        """Linear interpolation of the ``kb`` voices of rows k0 .. k0 + kb: read positions, floors
        and fractions for all of them at once, then one gather per voice of the samples at the
        floors and the ones after them together (``[I | I + 1]``, half the calls of a gather
        each: 128 bent voices ~0.6 us a voice less)."""
        P = self._P[:kb * n].reshape(kb, n)      # position + rate * i
        ab = self._ab64[:kb]
        np.copyto(ab[:, 0], self._k_pos[k0:k0 + kb])
        np.copyto(ab[:, 1], self._k_rate[k0:k0 + kb])
        np.dot(ab, self._one_i64[:2 * n].reshape(2, n), out=P)
        FL = self._FL[:kb * n].reshape(kb, n)
        np.floor(P, out=FL)
        np.subtract(P, FL, out=P)
        # both halves from FL: one half from the other would overlap them, and numpy would copy
        J = self._J[:2 * kb * n].reshape(kb, 2 * n)
        np.copyto(J[:, :n], FL, casting="unsafe")
        np.add(FL, 1.0, out=FL)
        np.copyto(J[:, n:], FL, casting="unsafe")
        F = self._E[:kb * n].reshape(kb, n)    # the envelope scratch is free until after this
        np.copyto(F, P, casting="same_kind")
        AB = self._AB[:2 * kb * n].reshape(kb, 2 * n)
        notes, slots = self.v_note, self._ix[k0:k0 + kb].tolist()
        # 'wrap': in range for every sample the voice plays (i < its count; I + 1 is the note's
        # length only where the fraction is 0); the samples past its count are zeroed below
        for j in range(kb):
            try:
                notes[slots[j]].take(J[j], out=AB[j], mode="wrap")
            except Exception as exc:           # not a float array any more: that voice only
                self._kill_row(k0 + j, slots[j], exc)
                AB[j] = 0.0
        # a ufunc buffers strided [kb, n] inputs (an allocation), a copy does not
        V, D = self._Vn[k0:k0 + kb], self._D[:kb * n].reshape(kb, n)
        np.copyto(V, AB[:, :n])
        np.copyto(D, AB[:, n:])
        np.subtract(D, V, out=D)
        np.multiply(D, F, out=D)
        np.add(V, D, out=V)
        inv = self._inv[:kb]
        np.copyto(inv, self._k_nv[k0:k0 + kb], casting="unsafe")
        if inv.min() < n:                      # a note's last samples: silence after them
            for j, nv in enumerate(inv.tolist()):
                if nv < n:
                    V[j, nv:] = 0.0

    def _limit(self, LR, ramp, n: int, peak: float) -> None:
        """Master gain and the limiter on the mix, ``LR`` [2, n] (left, right), in place;
        ``peak``: its largest magnitude (NaN if any sample is not finite)."""
        master = self.master_gain
        if not math.isfinite(peak) or not math.isfinite(master):
            # a voice produced inf/nan: silence this block and every voice, keep running
            self.errors += 1
            self._last_error = FloatingPointError("non-finite mix: all voices stopped")
            for i in range(self.n_slots):
                if self.v_state[i] != FREE:
                    self._free(i)
            LR.fill(0)
            self.limiter_gain = 1.0
            return
        level = peak * abs(master)
        target = 1.0 if level <= self.threshold else self.threshold / level
        g0 = self.limiter_gain
        if target < g0:
            g1 = target
        else:
            g1 = min(target, g0 + (1.0 - g0) * (1.0 - math.exp(-n / (self.limiter_release * self.stream_rate))))
        self.limiter_gain = g1
        if g1 < 1.0:
            self.limited_blocks += 1
        knee = level * max(g0, g1) > self.threshold
        if self._kernel is not None:
            self._kernel.finish(n, master * g0, master * (g1 - g0), self.threshold if knee else 0.0)
            return
        if g0 == g1:
            gain = np.float32(master * g1)
            np.multiply(LR, gain, out=LR)
        else:
            g = self._g32[:n]
            np.multiply(ramp, np.float32(master * (g1 - g0)), out=g)
            np.add(g, np.float32(master * g0), out=g)
            np.multiply(LR, g, out=LR)
        if knee:
            self._soft_knee(LR, n)

    def _soft_knee(self, x, n: int) -> None:
        """Transparent below the threshold t, then t + (1 - t) tanh((|x| - t) / (1 - t)) < 1."""
        t = self.threshold
        a, b = self._k1[:2 * n].reshape(2, n), self._k2[:2 * n].reshape(2, n)
        np.abs(x, out=a)
        np.subtract(a, t, out=b)
        np.maximum(b, 0.0, out=b)
        np.multiply(b, 1.0 / (1.0 - t), out=b)
        np.tanh(b, out=b)
        np.multiply(b, 1.0 - t, out=b)
        np.minimum(a, t, out=a)
        np.add(a, b, out=a)
        np.copysign(a, x, out=x)
        np.minimum(x, 1.0, out=x)
        np.maximum(x, -1.0, out=x)

    def _write(self, outdata, offset: int, n: int, LR) -> None:
        left, right = LR
        if outdata.ndim == 1:
            out = outdata[offset:offset + n]
            np.add(left, right, out=out)
            np.multiply(out, 0.5, out=out)
            return
        block = outdata[offset:offset + n]
        width = block.shape[1]
        if width == 1:
            col = block[:, 0]
            np.add(left, right, out=col)
            np.multiply(col, 0.5, out=col)
            return
        np.copyto(block[:, :2], LR.T)
        if width > 2:
            block[:, 2:] = 0
