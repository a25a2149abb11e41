"""The JACK rig shared by the end-to-end tests and the benchmarks: a private JACK server (dummy
driver), a capture client, a MIDI sender, a synth as a subprocess, and onset helpers.

Everything runs on JACK's frame clock: `MidiSender` records the frame time of the period in
which each event was written (the event sits at offset 0 of that period), and `Capture` stores
audio by frame time, so "note-on -> first sound" is a difference of two frame counts, exact to
the sample and independent of how busy the machine is.

`tests/jack_harness.py` re-exports all of it (with the pytest fixtures and the spectral helpers);
`bench/latency.py`, `bench/mixer.py` and `bench/startup.py` drive sing-synth and FluidSynth with it.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUN_SYNTH = REPO / "run_synth.py"
RATE = 48000
PERIOD = 256
READY_TIMEOUT = 60.0


# ---------------------------------------------------------------------------------------------
# JACK server

class JackServer:
    """A jackd process with the dummy driver under a private server name."""

    def __init__(self, rate=RATE, period=PERIOD, log_dir=None, prefix="singtest", verbose=False):
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.rate, self.period = rate, period
        self.verbose = verbose             # jackd -v: its log says how long each late cycle had
        self.proc = None
        self.realtime = None
        self.log_path = Path(log_dir or "/tmp") / f"{self.name}.log"

    def start(self, timeout=15.0):
        jackd = shutil.which("jackd")
        if jackd is None:
            raise FileNotFoundError("jackd not found")
        last = ""
        for realtime in (True, False):
            cmd = [jackd, "-n", self.name] + ([] if realtime else ["--no-realtime"]) + \
                  (["-v"] if self.verbose else []) + \
                  ["-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready(timeout):
                self.realtime = realtime
                return self
            last = self.log_tail()
            self.stop()
        raise RuntimeError(f"jackd did not start (tried real-time and --no-realtime):\n{last}")

    def _wait_ready(self, timeout):
        import jack
        jack.set_error_function(lambda msg: None)     # "cannot connect" while it starts
        jack.set_info_function(lambda msg: None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                client = jack.Client("probe", no_start_server=True, servername=self.name)
            except jack.JackError:
                time.sleep(0.1)
                continue
            client.close()
            jack.set_error_function()
            jack.set_info_function()
            return True
        return False

    def log_tail(self, n=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


@contextlib.contextmanager
def named_server(server):
    """JACK_DEFAULT_SERVER names ``server`` (and JACK_NO_START_SERVER is set) for this process and
    its children while the block runs; the variables are put back after it."""
    names = ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(dict(zip(names, (server.name, "1"))))
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def jack_client(name):
    import jack
    return jack.Client(name, no_start_server=True, servername=os.environ.get("JACK_DEFAULT_SERVER"))


# ---------------------------------------------------------------------------------------------
# Capture

class Capture:
    """A JACK client with ``channels`` audio inputs recording into a ring buffer indexed by JACK
    frame time (``buf[frame % size]``).  ``since(frame)`` returns the audio from ``frame`` to
    the last captured frame."""

    def __init__(self, name="e2e-capture", channels=2, seconds=90.0):
        self.client = jack_client(name)
        self.rate = self.client.samplerate
        self.period = self.client.blocksize
        self.size = int(seconds * self.rate)
        self.buf = np.zeros((self.size, channels), np.float32)
        self.ports = [self.client.inports.register(f"in_{i}") for i in range(channels)]
        self.start_frame = None     # first frame captured
        self.end_frame = None       # one past the last frame captured
        self.missed = []            # [start, end) frames of the cycles this client missed: zeros in ``buf``
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames):
        t = self.client.last_frame_time
        if self.end_frame is not None and t > self.end_frame:
            self._zero(self.end_frame, t)
        start = t % self.size
        for c, port in enumerate(self.ports):
            a = port.get_array()
            n1 = min(frames, self.size - start)
            self.buf[start:start + n1, c] = a[:n1]
            if n1 < frames:
                self.buf[:frames - n1, c] = a[n1:]
        if self.start_frame is None:
            self.start_frame = t
        self.end_frame = t + frames

    def _zero(self, begin, end):
        """Missed cycles read as silence: the ring there still holds audio from ``seconds`` ago,
        which an onset search would take for a note."""
        self.missed.append((begin, end))
        begin = max(begin, end - self.size)
        a, b = begin % self.size, end % self.size
        if a < b:
            self.buf[a:b] = 0.0
        else:
            self.buf[a:] = 0.0
            self.buf[:b] = 0.0

    @property
    def gaps(self) -> int:
        """How many times frame time jumped ahead between two cycles (missed cycles)."""
        return len(self.missed)

    def missed_in(self, begin, end) -> int:
        """Frames of [begin, end) that this client missed."""
        return sum(max(0, min(b, end) - max(a, begin)) for a, b in self.missed)

    def now(self) -> int:
        """The current JACK frame time (estimated between periods)."""
        return self.client.frame_time

    def connect(self, outputs):
        """Connect output ports (names); one port feeds every input, two or more go in order."""
        outputs = list(outputs)
        for i, port in enumerate(self.ports):
            src = outputs[min(i, len(outputs) - 1)]
            if not any(p.name == port.name for p in self.client.get_all_connections(src)):
                self.client.connect(src, port)

    def wait_until(self, frame, timeout=30.0):
        deadline = time.monotonic() + timeout
        while self.end_frame is None or self.end_frame < frame:
            if time.monotonic() > deadline:
                raise TimeoutError(f"capture did not reach frame {frame} (at {self.end_frame})")
            time.sleep(0.002)

    def wait_seconds(self, seconds):
        """Wait until ``seconds`` of audio after the current frame time are captured; returns
        the frame time it waited from."""
        start = self.now()
        self.wait_until(start + int(seconds * self.rate))
        return start

    def since(self, frame, until=None, channel=None):
        """Audio of frames [frame, until) (until: default the last captured frame), as float64,
        (n, channels) or (n,) for one ``channel``; clipped to what the ring still holds."""
        end = self.end_frame if until is None else min(until, self.end_frame)
        frame = max(frame, self.start_frame, end - self.size + self.period)
        n = max(end - frame, 0)
        idx = (frame + np.arange(n)) % self.size
        out = self.buf[idx].astype(np.float64)
        return out if channel is None else out[:, channel]

    def mono(self, frame, until=None):
        return self.since(frame, until).mean(axis=1)

    def close(self):
        close_client(self.client)


# ---------------------------------------------------------------------------------------------
# MIDI sender

class MidiSender:
    """A JACK MIDI output.  ``send(bytes)`` queues an event; the process callback writes queued
    events at offset 0 of the next period (at most ``per_period`` per period, fewer when the
    port's buffer is full) and records the period's frame time for each: ``frames[i]`` is
    where event ``i`` (in sending order) entered the JACK graph."""

    def __init__(self, name="e2e-midi", per_period=128):
        self.client = jack_client(name)
        self.port = self.client.midi_outports.register("out")
        self.per_period = per_period
        self.queue = collections.deque()
        self.frames: list[int] = []
        self.count = 0              # events queued so far
        self.dropped = 0            # events larger than the port can ever hold
        self.finish_max = 0         # latest frame of a cycle at which the callback returned
        self.finish_late = 0        # cycles it returned past half the period: the clients after
                                    # it (the synth) had less than half a period left
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames):
        import jack
        self.port.clear_buffer()
        t = self.client.last_frame_time
        q = self.queue
        n = 0
        while q and n < self.per_period:
            data = q[0]
            try:
                self.port.write_midi_event(0, data)
            except jack.JackError:
                if n == 0:          # does not fit even in an empty buffer: drop it
                    q.popleft()
                    self.dropped += 1
                    self.frames.append(-1)
                    continue
                break
            q.popleft()
            self.frames.append(t)
            n += 1
        done = self.client.frames_since_cycle_start
        self.finish_max = max(self.finish_max, done)
        self.finish_late += done > frames // 2

    def connect(self, midi_input):
        if not any(p.name == midi_input for p in self.client.get_all_connections(self.port)):
            self.client.connect(self.port, midi_input)

    def send(self, *messages, wait=True, timeout=10.0):
        """Queue raw messages (bytes/lists); return the frame time of the last one when
        ``wait``, else its index in ``frames``."""
        for m in messages:
            self.queue.append(bytes(m))
            self.count += 1
        index = self.count - 1
        if not wait:
            return index
        return self.wait(index, timeout)

    def wait(self, index=None, timeout=30.0):
        index = self.count - 1 if index is None else index
        deadline = time.monotonic() + timeout
        while len(self.frames) <= index:
            if time.monotonic() > deadline:
                raise TimeoutError(f"MIDI event {index} not written in {timeout} s")
            time.sleep(0.001)
        return self.frames[index]

    # message builders
    @staticmethod
    def note_on(pitch, velocity=100, channel=0):
        return bytes([0x90 | channel, pitch, velocity])

    @staticmethod
    def note_off(pitch, channel=0):
        return bytes([0x80 | channel, pitch, 0])

    @staticmethod
    def cc(control, value, channel=0):
        return bytes([0xB0 | channel, control, value])

    @staticmethod
    def program(program, channel=0):
        return bytes([0xC0 | channel, program])

    @staticmethod
    def bend(value, channel=0):
        """value: -8192..8191."""
        v = int(value) + 8192
        return bytes([0xE0 | channel, v & 0x7F, v >> 7])

    def close(self):
        close_client(self.client)


def close_client(client, deactivate=True, timeout=5.0) -> bool:
    """Deactivates and closes a JACK client, waiting ``timeout`` s at most: jack_client_close
    once blocked a soak for 8 minutes (the bench of 2026-12-04, an RtMidiSender's client).  A
    client left behind is freed when its server stops, as the bench's servers do after it."""
    name = client.name

    def close():
        if deactivate:
            client.deactivate()
        client.close()

    closer = threading.Thread(target=close, daemon=True, name="jack-close")
    closer.start()
    closer.join(timeout)
    if closer.is_alive():
        print(f"bench: closing JACK client {name!r} took over {timeout:g} s; going on without it",
              file=sys.stderr, flush=True)
    return not closer.is_alive()


class RtMidiSender:
    """A JACK MIDI output through python-rtmidi's JACK API.  RtMidi's process callback is C++:
    it never waits for this process's GIL, as `MidiSender`'s Python callback can (up to the
    interpreter's 5 ms switch interval while another thread runs), which delays every client
    after it in the graph.  A MIDI source of a real set-up (a DAW, a2jmidid) is such a C client.
    ``send`` queues at once; no frame times are kept (`MidiSender` does, for latencies)."""

    note_on, note_off, cc = (staticmethod(f) for f in (MidiSender.note_on, MidiSender.note_off, MidiSender.cc))
    program, bend = staticmethod(MidiSender.program), staticmethod(MidiSender.bend)

    def __init__(self, name="e2e-rtmidi"):
        import rtmidi
        self.client = jack_client(name + "-ports")     # never activated: ports and connections
        before = set(p.name for p in self.client.get_ports(is_midi=True, is_output=True))
        self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
        self.out.open_virtual_port("out")
        deadline = time.monotonic() + 5.0
        while True:
            new = [p.name for p in self.client.get_ports(is_midi=True, is_output=True) if p.name not in before]
            if new or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not new:
            raise RuntimeError("rtmidi's JACK MIDI output port did not appear")
        self.port = new[0]
        self.count = 0

    connect = MidiSender.connect          # ``self.port`` is the port's name here

    def send(self, *messages, wait=True, timeout=10.0):
        for m in messages:
            self.out.send_message(list(bytes(m)))
            self.count += 1
        return None

    def close(self):
        self.out.close_port()
        del self.out
        close_client(self.client, deactivate=False)


# ---------------------------------------------------------------------------------------------
# The synth process

class SynthError(RuntimeError):
    pass


_TOKEN = re.compile(r"\b([a-z_]+)=(-?\d+(?:\.\d+)?)")


def status_tokens(line: str) -> list:
    """``[(key, number)]`` of a status line's ``key=N`` tokens (int, or float with a point)."""
    return [(k, float(v) if "." in v else int(v)) for k, v in _TOKEN.findall(line)]


class Synth:
    """Start the synth (``run_synth.py`` or ``command``), wait for its ``ready:`` line, find its
    JACK ports (those that appear after it starts) and connect the sender and the capture.
    stdout and stderr lines are collected by threads.

    ``ready_line=False``: a program that prints no ``ready:`` line (FluidSynth) is ready when its
    ports appear; ``ports=False``: a program with no JACK ports (`bench.load`) is ready at its
    ``ready:`` line.  ``stdin=subprocess.PIPE`` keeps a shell's input open (FluidSynth's shell exits
    at end of input).  ``t_start`` (monotonic) is taken just before Popen."""

    def __init__(self, args, sender=None, capture=None, command=None,
                 ready_timeout=READY_TIMEOUT, port_timeout=15.0, ready_line=True,
                 stdin=subprocess.DEVNULL, ports=True):
        self.args = [str(a) for a in args]
        self.command = command or [sys.executable, "-u", str(RUN_SYNTH)]
        self.sender, self.capture = sender, capture
        self.ready_timeout, self.port_timeout = ready_timeout, port_timeout
        self.wait_ready_line = ready_line or not ports
        self.ports = ports
        self.stdin = stdin
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.ready_line = None
        self.audio_outputs: list[str] = []
        self.midi_inputs: list[str] = []
        self.proc = None
        self._ready = threading.Event()

    def _ports(self, client):
        audio = {p.name for p in client.get_ports(is_audio=True, is_output=True)}
        midi = {p.name for p in client.get_ports(is_midi=True, is_input=True)}
        return audio, midi

    def _read(self, stream, lines, watch_ready):
        for line in iter(stream.readline, ""):
            line = line.rstrip("\n")
            lines.append(line)
            if watch_ready and line.startswith("ready:") and not self._ready.is_set():
                self.ready_line = line
                self._ready.set()
        stream.close()

    def __enter__(self):
        if not self.ports:
            client = None
        elif self.capture or self.sender:
            client = (self.capture or self.sender).client
        else:
            client = jack_client("e2e-ports")
        own = client if (self.capture or self.sender) else None
        try:
            before_audio, before_midi = self._ports(client) if client is not None else (set(), set())
            self.t_start = time.monotonic()
            self.proc = subprocess.Popen(
                self.command + self.args, cwd=REPO, stdin=self.stdin,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
            self._threads = [
                threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True),
                                 daemon=True),
                threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False),
                                 daemon=True)]
            for t in self._threads:
                t.start()
            deadline = time.monotonic() + self.ready_timeout
            while self.wait_ready_line and not self._ready.wait(0.05):
                if self.proc.poll() is not None:
                    time.sleep(0.2)
                    raise SynthError(f"synth exited with status {self.proc.returncode} before "
                                     f"'ready:'; stderr:\n{self.stderr_text()}")
                if time.monotonic() > deadline:
                    raise SynthError(f"no 'ready:' line in {self.ready_timeout} s; stderr:\n"
                                     f"{self.stderr_text()}")
            self.ready_s = time.monotonic() - self.t_start
            if not self.ports:
                return self
            deadline = time.monotonic() + (self.port_timeout if self.wait_ready_line
                                           else self.ready_timeout)
            while True:
                audio, midi = self._ports(client)
                self.audio_outputs = sorted(audio - before_audio)
                self.midi_inputs = sorted(midi - before_midi)
                if len(self.audio_outputs) >= 2 and self.midi_inputs:
                    break
                if time.monotonic() > deadline:
                    if self.audio_outputs and self.midi_inputs:
                        break
                    raise SynthError(f"synth ports not found after 'ready:' (new audio outputs "
                                     f"{self.audio_outputs}, new MIDI inputs {self.midi_inputs})")
                if self.proc.poll() is not None:
                    raise SynthError(f"synth exited with status {self.proc.returncode}; "
                                     f"stderr:\n{self.stderr_text()}")
                time.sleep(0.01 if not self.wait_ready_line else 0.05)
            self.ports_s = time.monotonic() - self.t_start
            if self.capture is not None:
                self.capture.connect(self.audio_outputs)
            if self.sender is not None:
                self.sender.connect(self.midi_inputs[0])
        except BaseException:
            self.stop()
            raise
        finally:
            if own is None and client is not None and not (self.capture or self.sender):
                client.close()
        return self

    def __exit__(self, *exc):
        self.stop()

    def pid(self):
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.stdin is not None:        # a shell on a pipe: end of input asks it to quit
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        for t in getattr(self, "_threads", []):
            t.join(2.0)
        return self.proc.returncode

    def stderr_text(self, n=40):
        return "\n".join(self.stderr[-n:])

    def status_lines(self):
        return [line for line in list(self.stderr) if "voices=" in line]

    def status_values(self, key):
        """Every value of token ``key=N`` in the stderr status lines so far."""
        return [v for line in self.status_lines() for k, v in status_tokens(line) if k == key]


def run_synth_once(args, timeout=60.0, command=None):
    """Run the synth to completion (for exit-status tests): CompletedProcess with text."""
    command = command or [sys.executable, "-u", str(RUN_SYNTH)]
    return subprocess.run(command + [str(a) for a in args], cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def synth_available():
    """(True, "") when run_synth.py exists and answers --help, else (False, why)."""
    if not RUN_SYNTH.is_file():
        return False, f"{RUN_SYNTH} does not exist"
    r = run_synth_once(["--help"], timeout=60)
    if r.returncode != 0:
        return False, f"run_synth.py --help exited {r.returncode}: {r.stderr.strip()[-500:]}"
    return True, ""


def onset(x, threshold=1e-3):
    """Index of the first sample whose magnitude (any channel) exceeds ``threshold``, or None."""
    x = np.abs(np.asarray(x, np.float64))
    if x.ndim > 1:
        x = x.max(axis=1)
    hits = np.flatnonzero(x > threshold)
    return int(hits[0]) if hits.size else None


def last_above(x, threshold):
    """Index one past the last sample whose magnitude exceeds ``threshold`` (0 if none)."""
    x = np.abs(np.asarray(x, np.float64))
    if x.ndim > 1:
        x = x.max(axis=1)
    hits = np.flatnonzero(x > threshold)
    return int(hits[-1]) + 1 if hits.size else 0

