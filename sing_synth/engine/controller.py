"""The control half: MIDI messages in (on the MIDI thread), mixer events out.

`Controller.handle` takes mido messages (or raw bytes), keeps the state of the 16 channels
(preset, volume, expression, pan, sustain, pitch bend and its RPN 0 range) and posts events to
the mixer's queue.  It never touches the mixer's voice table and never blocks on the audio
thread.  A note that is not rendered yet is requested from the renderer as urgent and started
by `on_ready` (the renderer's worker thread) when it arrives -- unless its key was released
meanwhile (with the sustain pedal down, a released key still starts, held by the pedal; a pedal
lifted before the note arrives drops it).

Velocity: the model renders 5 velocity layers (`SingConfig.velocity_rows`); a note plays the
nearest layer, times ``preset.gain * (velocity / layer_velocity) ** preset.velocity_curve``.  The
layer already carries the trained loudness of its velocity, so this gain only bridges between
layers: at a layer's own velocity it is the preset's gain, and loudness follows
``velocity ** velocity_curve`` smoothly when the model's layers are ``curve``-law apart
(``Preset.velocity_gain``).

Unpitched presets (``pitched: false``) ignore pitch bend.
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Mapping

from ..config import SingConfig
from .mixer import (N_CHANNELS, AllNotesOff, AllSoundOff, ChannelGain, ChannelPan, NoteOff,
                    NoteOn, PitchBend, Sustain)
from .renderer import instrument_key, prewarm_order

try:
    import mido
except ImportError:     # pragma: no cover - mido is a dependency
    mido = None

RPN_NULL = (127, 127)


# system messages that carry nothing for the instrument: dropped without counting as unknown
_SYSTEM = {"clock", "start", "stop", "continue", "active_sensing", "songpos", "song_select",
           "tune_request", "quarter_frame"}


class _Channel:
    __slots__ = ("preset", "volume", "expression", "pan", "sustain", "bend", "bend_range",
                 "rpn", "nrpn", "data_msb", "data_lsb")

    def __init__(self, preset):
        self.preset = preset
        self.rpn = RPN_NULL
        self.nrpn = False
        self.volume = 100
        self.pan = 64
        self.bend_range = float(getattr(preset, "bend_range", 2.0))
        self.data_msb = self.data_lsb = 0
        self.reset()

    def reset(self):
        """Reset All Controllers (RP-015): expression, sustain, bend, RPN; not volume or pan."""
        self.expression = 127
        self.sustain = False
        self.bend = 0
        self.rpn = RPN_NULL
        self.nrpn = False


class _Pending:
    __slots__ = ("token", "channel", "pitch", "key", "gain", "release", "released", "dropped")

    def __init__(self, token, channel, pitch, key, gain, release):
        self.token, self.channel, self.pitch, self.key = token, channel, pitch, key
        self.gain, self.release = gain, release
        self.released = False    # key up while the pedal was down: start it, the pedal holds it
        self.dropped = False


class Controller:
    """The control half.

    Args:
        mixer: a `mixer.Mixer` (only its `post` and `collect` are used).
        renderer: a `renderer.NoteRenderer` or anything with ``request(key, urgent)``,
            ``prewarm(keys)``, ``add_ready_callback(f)`` (or an ``on_ready`` attribute) and
            ``config`` (a `SingConfig`, for the velocity layers).
        presets: {name: Preset} or an iterable of presets.
        default_preset: the preset every channel starts with (a name or a Preset).
        stream_rate: the stream's sample rate (kept for status; releases travel in seconds).
        program_preset: ``f(program) -> Preset | None`` for program changes; default
            `presets.preset_for_program` over ``presets`` (None or an error keeps the preset).
    """

    def __init__(self, mixer, renderer, presets, default_preset, stream_rate=48000,
                 program_preset=None):
        self.mixer = mixer
        self.renderer = renderer
        if isinstance(presets, Mapping):
            self.presets = dict(presets)
        else:
            self.presets = {p.name: p for p in presets}
        if isinstance(default_preset, str):
            default_preset = self.presets[default_preset]
        self.default_preset = default_preset
        self.stream_rate = int(stream_rate)
        self.config = getattr(renderer, "config", None) or SingConfig()
        if program_preset is None:
            from ..presets import preset_for_program

            def program_preset(program):
                return preset_for_program(self.presets, program, default=self.default_preset.name)
        self.program_preset = program_preset
        self.channels = [_Channel(default_preset) for _ in range(N_CHANNELS)]
        self.counts = dict(messages=0, malformed=0, unknown=0, ignored=0, notes_on=0,
                           started=0, started_late=0, dropped=0, out_of_range=0, request_errors=0,
                           program_errors=0)
        self.last_error = None
        # drop the mixer's finished notes in `handle`; off when `handle` runs on the audio
        # thread (jack_io), where the main loop collects them instead
        self.collect_on_handle = True
        self.prewarm_programs = True     # program change prewarms the new preset (live); offline
                                         # rendering knows every note beforehand and turns it off
        self._lock = threading.RLock()
        self._prewarm_queue = queue.SimpleQueue()      # prewarm jobs (callables), off the MIDI thread
        self._prewarm_thread = None
        self._tokens = itertools.count()
        self._pending: dict = {}        # render key -> [_Pending] in arrival order
        self._by_note: dict = {}        # (channel, pitch) -> [_Pending]
        if hasattr(renderer, "add_ready_callback"):
            renderer.add_ready_callback(self.on_ready)
        else:
            renderer.on_ready = self.on_ready
        for c in range(N_CHANNELS):       # the mixer's channels start where ours are
            self._post_gain(c)
            self._post_pan(c)
            self._post_bend(c)

    # ------------------------------------------------------------------ entry points
    def try_handle(self, msg) -> bool:
        """`handle`, for the audio thread: only if the controller's and the renderer's locks are
        free at once; False (nothing done) if another thread holds one, and the caller keeps the
        message for its next cycle.  Those locks are held by the MIDI-less threads for
        microseconds, but by the renderer's worker at a lower CPU priority, which the scheduler
        may preempt while it holds one: waiting there would be an xrun."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            renderer = self.renderer
            if not renderer.try_lock():
                return False
            try:
                self.handle(msg)
            finally:
                renderer.unlock()
            return True
        finally:
            self._lock.release()

    def handle(self, msg) -> None:
        """One MIDI message (mido.Message, raw bytes, or anything with mido's attributes).
        Never raises: malformed messages are counted (``malformed``), valid ones the instrument
        does not use are counted (``unknown``; system real-time ones in ``ignored``)."""
        try:
            self.counts["messages"] += 1
            if self.collect_on_handle:
                self.mixer.collect()
            if isinstance(msg, (bytes, bytearray, list, tuple)):
                msg = mido.Message.from_bytes(list(msg))
            kind = msg.type
            if kind == "note_on":
                c, note, velocity = self._c(msg.channel), _u7(msg.note), _u7(msg.velocity)
                if velocity == 0:
                    self.note_off(c, note)
                else:
                    self.note_on(c, note, velocity)
            elif kind == "note_off":
                c, note = self._c(msg.channel), _u7(msg.note)
                _u7(getattr(msg, "velocity", 0))
                self.note_off(c, note)
            elif kind == "control_change":
                self.control_change(self._c(msg.channel), _u7(msg.control), _u7(msg.value))
            elif kind == "program_change":
                self.program_change(self._c(msg.channel), _u7(msg.program))
            elif kind == "pitchwheel":
                c, value = self._c(msg.channel), int(msg.pitch)
                if not -8192 <= value <= 8191:
                    raise ValueError(f"pitch bend {value}")
                self.channels[c].bend = value
                self._post_bend(c)
            elif kind == "reset":
                for c in range(N_CHANNELS):
                    self.control_change(c, 120, 0)
                    self.control_change(c, 121, 0)
            elif kind in _SYSTEM:
                self.counts["ignored"] += 1
            elif isinstance(kind, str):
                self.counts["unknown"] += 1
            else:
                raise TypeError(f"message type {kind!r}")
        except Exception as exc:
            self.counts["malformed"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def note_on(self, c: int, pitch: int, velocity: int) -> None:
        ch = self.channels[c]
        preset = ch.preset
        lo, hi = preset.pitch_range
        if not lo <= pitch <= hi:
            self.counts["out_of_range"] += 1
            return
        self.counts["notes_on"] += 1
        row = self.config.velocity_row(velocity)
        gain = self.velocity_gain(preset, velocity, self.config.velocity_rows[row])
        key = (instrument_key(preset.instrument), pitch, row)
        with self._lock:
            try:
                note = self.renderer.request(key, urgent=True)
            except Exception as exc:
                self.counts["request_errors"] += 1
                self.last_error = f"request {key}: {exc}"
                return
            if note is not None:
                self.mixer.post(NoteOn(c, pitch, note, gain, preset.release, 1.0, key))
                self.counts["started"] += 1
                return
            pend = _Pending(next(self._tokens), c, pitch, key, gain, preset.release)
            self._pending.setdefault(key, []).append(pend)
            self._by_note.setdefault((c, pitch), []).append(pend)

    def note_off(self, c: int, pitch: int) -> None:
        with self._lock:
            waiting = self._by_note.get((c, pitch))
            if waiting:
                if self.channels[c].sustain:
                    for pend in waiting:
                        pend.released = True
                else:
                    self._drop(waiting)
            self.mixer.post(NoteOff(c, pitch))

    def on_ready(self, key, note) -> None:
        """The renderer's callback (worker thread): starts the notes that wait for ``key``."""
        try:
            self.mixer.collect()
            with self._lock:
                waiting = self._pending.pop(key, None)
                if not waiting:
                    return
                for pend in waiting:
                    if pend.dropped:
                        continue
                    _remove(self._by_note, (pend.channel, pend.pitch), pend)
                    self.mixer.post(NoteOn(pend.channel, pend.pitch, note, pend.gain, pend.release,
                                           1.0, key))
                    if pend.released:      # key already up; the pedal (still down) holds it
                        self.mixer.post(NoteOff(pend.channel, pend.pitch))
                    self.counts["started"] += 1
                    self.counts["started_late"] += 1
        except Exception as exc:   # never let the renderer's thread see our errors
            self.last_error = f"on_ready: {type(exc).__name__}: {exc}"

    def control_change(self, c: int, control: int, value: int) -> None:
        ch = self.channels[c]
        if control == 7:
            ch.volume = value
            self._post_gain(c)
        elif control == 11:
            ch.expression = value
            self._post_gain(c)
        elif control == 10:
            ch.pan = value
            self._post_pan(c)
        elif control == 64:
            on = value >= 64
            if on != ch.sustain:
                ch.sustain = on
                with self._lock:
                    if not on:       # keys released under the pedal and still not rendered
                        for waiting in list(self._by_note.values()):
                            self._drop([p for p in waiting if p.channel == c and p.released])
                    self.mixer.post(Sustain(c, on))
        elif control == 120:       # all sound off
            self._drop_channel(c)
            self.mixer.post(AllSoundOff(c))
        elif control == 121:       # reset all controllers
            ch.reset()
            self._post_gain(c)
            self._post_bend(c)
            with self._lock:
                for waiting in list(self._by_note.values()):
                    self._drop([p for p in waiting if p.channel == c and p.released])
                self.mixer.post(Sustain(c, False))
        elif control in (123, 124, 125, 126, 127):   # all notes off (and the mode messages)
            with self._lock:
                if ch.sustain:
                    for waiting in self._by_note.values():
                        for pend in waiting:
                            if pend.channel == c:
                                pend.released = True
                else:
                    self._drop_channel(c, locked=True)
                self.mixer.post(AllNotesOff(c))
        elif control == 101:
            ch.rpn, ch.nrpn = (value, ch.rpn[1]), False
        elif control == 100:
            ch.rpn, ch.nrpn = (ch.rpn[0], value), False
        elif control in (99, 98):   # NRPN selected: data entry goes nowhere here
            ch.nrpn = True
        elif control in (6, 38):    # data entry MSB / LSB
            if control == 6:
                ch.data_msb, ch.data_lsb = value, 0
            else:
                ch.data_lsb = value
            if not ch.nrpn and ch.rpn == (0, 0):     # RPN 0: pitch-bend range
                ch.bend_range = min(24.0, ch.data_msb + min(ch.data_lsb, 99) / 100.0)
                self._post_bend(c)
        elif control in (0, 32):    # bank select: one bank here
            pass
        else:
            self.counts["unknown"] += 1

    def program_change(self, c: int, program: int) -> None:
        try:
            preset = self.program_preset(program)
        except Exception as exc:
            preset = None
            self.last_error = f"program {program}: {exc}"
        if preset is None:
            self.counts["program_errors"] += 1
            return
        ch = self.channels[c]
        previous = ch.preset
        changed = preset is not previous
        ch.preset = preset
        ch.bend_range = float(preset.bend_range)
        self._post_bend(c)
        if changed and self.prewarm_programs:   # a new current preset: render its notes before they are played
            self.prewarm_later(preset)
            self._later(self._forget, previous)

    def prewarm_later(self, preset) -> None:
        """Queues `prewarm` of ``preset`` for a helper thread and returns at once.  Program changes
        arrive on the MIDI thread, which with JACK MIDI is a real-time process callback: queueing
        a preset's ~200-400 keys there took a period or more, the MIDI client missed its deadline
        and JACK dropped the events of that cycle (a note-on right after a program change was lost)."""
        self._later(self._prewarm_if_playing, preset)

    def _later(self, job, *args) -> None:
        """Runs ``job(*args)`` on the prewarm helper thread, after the jobs queued before it."""
        with self._lock:
            if self._prewarm_thread is None:
                self._prewarm_thread = threading.Thread(target=self._prewarm_worker, daemon=True,
                                                        name="sing-prewarm-queue")
                self._prewarm_thread.start()
        self._prewarm_queue.put((job, args))

    def _prewarm_worker(self) -> None:
        while True:
            item = self._prewarm_queue.get()
            if item is None:
                return
            job, args = item
            try:
                job(*args)
            except Exception as exc:
                what = getattr(args[0], "name", "") if args else ""      # the preset, if any
                self.last_error = f"prewarm {what or job.__name__}: {exc}"

    def _prewarm_if_playing(self, preset) -> None:
        if self._playing(preset):     # a burst of program changes: only the last one counts
            self.prewarm(preset)

    def _playing(self, preset) -> bool:
        return any(ch.preset is preset for ch in self.channels)

    def _forget(self, preset) -> None:
        """Withdraws the prewarm of a preset that no channel plays any more, so that rendering
        it neither delays the current presets' notes nor evicts them from the cache."""
        drop = getattr(self.renderer, "drop_prewarm", None)
        if drop is not None and not self._playing(preset):
            drop(self._prewarm_keys(preset))

    def wait_prewarm_queued(self, timeout=10.0) -> bool:
        """Blocks until every program change's prewarm is queued in the renderer (tests)."""
        if self._prewarm_thread is None:
            return True
        done = threading.Event()
        self._later(done.set)
        return done.wait(timeout)

    def close(self) -> None:
        """Stops the prewarm helper thread."""
        if self._prewarm_thread is not None:
            self._prewarm_queue.put(None)
            self._prewarm_thread.join(5)

    # ------------------------------------------------------------------ helpers
    def velocity_gain(self, preset, velocity: int, layer_velocity: int) -> float:
        return float(preset.velocity_gain(velocity, layer_velocity))

    def prewarm(self, preset=None, velocities=None) -> int:
        """Queues a preset's notes for prewarming (default: channel 0's preset): layer by layer,
        the layer nearest velocity 100 first, each middle octaves first.  Returns the count."""
        preset = preset or self.channels[0].preset
        rows = sorted({self.config.velocity_row(v) for v in (velocities or
                       [v for v in self.config.velocity_rows if v > 0])},
                      key=lambda r: abs(self.config.velocity_rows[r] - 100))
        return self.renderer.prewarm(self._prewarm_keys(preset, rows))

    def _prewarm_keys(self, preset, rows=None) -> list:
        if rows is None:
            rows = range(len(self.config.velocity_rows))
        inst = instrument_key(preset.instrument)
        return [(inst, pitch, row) for row in rows for pitch in prewarm_order(preset.pitch_range)]

    def status(self) -> dict:
        with self._lock:
            waiting = sum(1 for lst in self._by_note.values() for p in lst if not p.dropped)
        return {**self.counts, "waiting": waiting, "last_error": self.last_error}

    @staticmethod
    def _c(channel) -> int:
        if isinstance(channel, bool) or not 0 <= int(channel) < N_CHANNELS or int(channel) != channel:
            raise ValueError(f"channel {channel!r}")
        return int(channel)

    def _drop(self, pendings) -> None:
        """Drops pending notes (lock held), and withdraws the render requests of the keys no
        note waits for any more (`renderer.WorkerQueue.cancel`)."""
        orphans = []
        for pend in list(pendings):
            if pend.dropped:
                continue
            pend.dropped = True
            self.counts["dropped"] += 1
            _remove(self._by_note, (pend.channel, pend.pitch), pend)
            _remove(self._pending, pend.key, pend)
            if pend.key not in self._pending:
                orphans.append(pend.key)
        cancel = getattr(self.renderer, "cancel", None)
        if orphans and cancel is not None:
            cancel(orphans)

    def _drop_channel(self, c: int, locked=False) -> None:
        if not locked:
            with self._lock:
                return self._drop_channel(c, locked=True)
        for (channel, _), waiting in list(self._by_note.items()):
            if channel == c:
                self._drop(waiting)

    def _post_gain(self, c: int) -> None:
        ch = self.channels[c]
        self.mixer.post(ChannelGain(c, (ch.volume / 127.0) ** 2 * (ch.expression / 127.0) ** 2))

    def _post_pan(self, c: int) -> None:
        pan = max(-1.0, min(1.0, (self.channels[c].pan - 64) / 63.0))
        self.mixer.post(ChannelPan(c, pan))

    def _post_bend(self, c: int) -> None:
        ch = self.channels[c]
        if not getattr(ch.preset, "pitched", True):
            factor = 1.0
        else:
            factor = 2.0 ** (ch.bend / 8192.0 * ch.bend_range / 12.0)
        self.mixer.post(PitchBend(c, factor))


def _u7(value) -> int:
    if isinstance(value, bool) or int(value) != value or not 0 <= int(value) <= 127:
        raise ValueError(f"data byte {value!r}")
    return int(value)


def _remove(index: dict, key, item) -> None:
    lst = index.get(key)
    if lst is None:
        return
    for j, other in enumerate(lst):
        if other is item:
            del lst[j]
            break
    if not lst:
        del index[key]
