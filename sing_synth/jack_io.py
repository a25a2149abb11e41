"""``--audio-api jack``: one JACK client for MIDI in and audio out, the MIDI handled in the audio
callback.

With PortAudio (sounddevice) for the audio and rtmidi for the MIDI, a note-on reaches the mixer
through rtmidi's thread, after the audio callback of that JACK cycle has run: it sounds one
period later at best (5.3 ms at 256 frames / 48 kHz).  FluidSynth (``-a jack -m jack``) reads its
MIDI port at the start of its own process callback and sounds in the same cycle.  So does this:
the process callback reads the cycle's MIDI events, hands them to the controller (which posts
mixer events), then runs `Mixer.callback` for the cycle, so a cached note sounds from the first
frame of the period its note-on arrived in.

Real-time care:
- messages are handled only in the first ``midi_budget`` of the period, and ``max_events`` at
  most (one per cycle at least; the rest wait for the next cycle, in order).  The controller's
  work is 20-40 us a message on a loaded 2-core machine (a cache lookup under the renderer's
  lock, which no thread holds for long; a deque append), so the 256 messages of a re-struck
  128-note chord would otherwise fill a 5.3 ms period, and a MIDI flood cannot make it overrun;
- the controller does not drop note references here (``Controller.collect_on_handle`` off): the
  main loop calls `Mixer.collect` instead, so no note array is freed on the audio thread.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from .errors import UserError, import_or_error
from .midi import find_port
from .timing import CallbackTimes

MAX_EVENTS = 64          # MIDI messages handled per cycle; more wait for the next cycle
MIDI_BUDGET = 0.15       # share of the period (from its start) spent handling MIDI messages
                         # (three 60-s soaks: callbacks overran 2 periods at 0.25, 1 at 0.15)


def _import_jack():
    return import_or_error("jack", "--audio-api jack needs the JACK-Client package and libjack ({reason})")


class JackIO:
    """The instrument as a JACK client: ``midi_in``, ``out_1`` and ``out_2``.

    Args:
        name: the JACK client name.
        port: connect this JACK MIDI output (name or unique substring) to ``midi_in``; it is
            reconnected by `check` when it comes back after disappearing.
        connect_outputs: connect the outputs to the physical playback ports.
        max_events, midi_budget: MIDI messages handled per cycle at most, and only until this
            share of the period has passed since the cycle began (one at least); the rest wait.

    The client opens at once (``rate`` and ``blocksize`` are the server's); `start` gives it
    the MIDI handler and the mixer and activates it.

    ``times`` (`timing.CallbackTimes`): for each cycle, how far into it the process
    callback returned (seconds from the cycle's start: the wait for its thread to run and for
    the GIL, the MIDI and the mix), what a deadline of one period is measured against.
    """

    def __init__(self, name="SING Synth", port=None, connect_outputs=True, max_events=MAX_EVENTS,
                 midi_budget=MIDI_BUDGET):
        jack = _import_jack()
        try:
            self.client = jack.Client(name, no_start_server=True)
        except jack.JackError as exc:
            raise UserError(f"cannot open a JACK client (is a JACK server running?): "
                            f"{' '.join(str(exc).split())}") from None
        self.handle = self.mixer = None
        self.port_query = port
        self.max_events = int(max_events)
        self.midi_budget = float(midi_budget)
        self.rate = int(self.client.samplerate)
        self.blocksize = int(self.client.blocksize)
        self.pending: deque = deque()      # MIDI messages read but not handled yet (a flood)
        self.dropped = 0
        self.shutdown = None
        self.midi_in = self.client.midi_inports.register("midi_in")
        self.outs = [self.client.outports.register(f"out_{i + 1}") for i in range(2)]
        self._buffer(self.blocksize)
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.set_blocksize_callback(self._buffer)
        self.client.set_shutdown_callback(self._shutdown)
        self.connect_outputs = connect_outputs
        self.source = None
        self.times = CallbackTimes()

    @property
    def port_name(self) -> str:
        return self.midi_in.name

    def _buffer(self, blocksize) -> None:
        # not real-time: JACK calls it before the first cycle of a new period size
        self.out = np.zeros((max(int(blocksize), 1), 2), np.float32)

    def _xrun(self, delay_usecs) -> None:
        if self.mixer is not None:
            self.mixer.xruns += 1

    def _shutdown(self, status, reason) -> None:
        self.shutdown = reason or "JACK server shut down"

    def _process(self, frames) -> None:
        # the deadline counts from the cycle's start: a callback that began late (it waited for
        # the GIL) leaves more of the messages for the next cycle
        start = time.perf_counter() - self.client.frames_since_cycle_start / self.rate
        deadline = start + self.midi_budget * frames / self.rate
        pending = self.pending
        for _, data in self.midi_in.incoming_midi_events():
            if len(pending) < 65536:
                pending.append(bytes(data))
            else:
                self.dropped += 1
        handle = self.handle
        for k in range(min(len(pending), self.max_events)):
            if k and time.perf_counter() > deadline:
                break
            try:
                if handle(pending[0]) is False:
                    break              # a lock is taken: this message and the rest next cycle
            except Exception:          # (the controller counts its own errors) never stop JACK
                self.dropped += 1
            pending.popleft()
        out = self.out[:frames]
        self.mixer.callback(out, frames, None, None)
        self.outs[0].get_array()[:] = out[:, 0]
        self.outs[1].get_array()[:] = out[:, 1]
        self.times.add(time.perf_counter() - start)

    def start(self, handle, mixer) -> "JackIO":
        """``handle``: ``f(message bytes)``, called in the process callback for each MIDI message
        (`play.Instrument.try_handle`); returning False leaves the message (and those after it)
        for the next cycle; ``mixer``: the `engine.Mixer` (its `callback` fills the
        outputs; xruns are counted in it)."""
        self.handle, self.mixer = handle, mixer
        self.client.activate()
        if self.connect_outputs:
            playback = self.client.get_ports(is_physical=True, is_input=True, is_audio=True)
            for out, dest in zip(self.outs, playback):
                self.client.connect(out, dest)
        if self.port_query is not None:
            if not self.check():
                names = ", ".join(repr(p) for p in self._sources()) or "none"
                raise UserError(f"JACK MIDI port {self.port_query!r} not found; MIDI outputs: {names}")
        return self

    def _sources(self) -> list:
        ports = self.client.get_ports(is_midi=True, is_output=True)
        own = self.client.name + ":"
        return [p.name for p in ports if not p.name.startswith(own)]

    def check(self) -> bool:
        """(Re)connects ``port`` to ``midi_in`` if it exists and is not connected; True when it
        is connected.  Called now and then from the main loop."""
        if self.port_query is None:
            return True
        sources = self._sources()
        index = find_port(sources, self.port_query)
        if index is None:
            self.source = None
            return False
        name = sources[index]
        if not any(p.name == name for p in self.client.get_all_connections(self.midi_in)):
            self.client.connect(name, self.midi_in)
        self.source = name
        return True

    def close(self) -> None:
        try:
            self.client.deactivate()
            self.client.close()
        except Exception:
            pass
