"""MIDI input for the live instrument, through python-rtmidi, with backends chosen by name.

APIs (``--midi-api``): ``alsa`` (Linux ALSA sequencer), ``jack`` (JACK MIDI), ``coremidi``
(macOS), ``windows`` (WinMM), or ``auto``: the platform's own -- on Linux ALSA, falling back to
JACK when the ALSA sequencer cannot be opened and a JACK server runs; CoreMIDI on macOS; WinMM on
Windows.

`MidiInput` opens a virtual input port (other programs connect to it: a DAW, a keyboard router)
or an existing output port of another program found by name or substring, and passes every
message as raw bytes to a handler (``controller.handle``), on rtmidi's thread.  System
exclusive messages are passed on (the controller counts them as unknown: never fatal); MIDI
clock and active sensing are dropped by rtmidi itself.

A port that disappears (a USB keyboard unplugged, a DAW closed) does not stop the instrument:
a watcher thread polls the port list every ``poll`` seconds, closes the dead connection and
reopens the port by the same name when it is back.

``backend``: the module-like object that provides ``MidiIn(api, name=...)`` and the
``API_*`` constants -- `rtmidi` by default; tests pass a fake (mido's style of fake ports).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np

from .errors import UserError

API_NAMES = ("alsa", "jack", "coremidi", "windows")
_API_ATTRS = {"alsa": "API_LINUX_ALSA", "jack": "API_UNIX_JACK",
              "coremidi": "API_MACOSX_CORE", "windows": "API_WINDOWS_MM"}
_API_LABELS = {"alsa": "ALSA", "jack": "JACK", "coremidi": "CoreMIDI", "windows": "WinMM"}
DEFAULT_CLIENT = "SING Synth"
DEFAULT_VIRTUAL = "SING Synth"


def midi_frequency(pitch):
    """Equal-tempered frequency in Hz (A4 = MIDI 69 = 440 Hz) of a MIDI pitch or an array of them."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69) / 12)


def default_backend():
    try:
        import rtmidi
    except ImportError as exc:   # pragma: no cover - python-rtmidi is a dependency
        raise UserError(f"python-rtmidi is not installed ({exc})") from None
    return rtmidi


def candidate_apis(api: str = "auto", platform: str | None = None) -> list:
    """The API names to try, in order, for ``api``."""
    if api != "auto":
        if api not in API_NAMES:
            raise UserError(f"unknown MIDI API {api!r}; choose auto, {', '.join(API_NAMES)}")
        return [api]
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return ["alsa", "jack"]
    if platform == "darwin":
        return ["coremidi"]
    if platform.startswith(("win", "cygwin")):
        return ["windows"]
    return ["alsa", "jack"]


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (alsa-lib and libjack print there while probing)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hint(api: str, message: str) -> str:
    if api == "jack" and "server" not in message.lower():
        return message + " (JACK server not running?)"
    return message


def open_api(api: str = "auto", client_name: str = DEFAULT_CLIENT, backend=None,
             platform: str | None = None, quiet: bool = True):
    """``(api_name, MidiIn)`` for the first API of `candidate_apis` that opens; UserError (one
    line naming every API tried and why it failed) if none does."""
    backend = backend or default_backend()
    failures = []
    for name in candidate_apis(api, platform):
        const = getattr(backend, _API_ATTRS[name], None)
        if const is None:
            failures.append(f"{_API_LABELS[name]}: not supported by this python-rtmidi")
            continue
        compiled = getattr(backend, "get_compiled_api", None)
        if compiled is not None:
            try:
                if const not in compiled():
                    failures.append(f"{_API_LABELS[name]}: not compiled into this python-rtmidi")
                    continue
            except Exception:
                pass
        try:
            with (_quiet_stderr() if quiet else contextlib.nullcontext()):
                midi_in = backend.MidiIn(const, name=client_name)
        except Exception as exc:
            failures.append(f"{_API_LABELS[name]}: {_hint(name, _first_line(exc))}")
            continue
        return name, midi_in
    raise UserError(f"cannot open MIDI API {api!r}: " + "; ".join(failures))


def list_ports(api: str = "auto", backend=None, platform: str | None = None) -> tuple:
    """``(api_name, [port names])``: the input sources of the first API that opens."""
    name, midi_in = open_api(api, DEFAULT_CLIENT + " (list)", backend, platform)
    try:
        return name, list(midi_in.get_ports())
    finally:
        _delete(midi_in)


def find_port(ports, query: str):
    """Index of the port named ``query``: an exact name first, then the only port containing
    it (case-insensitive); None if none or several."""
    ports = list(ports)
    if query in ports:
        return ports.index(query)
    q = query.strip().lower()
    hits = [i for i, p in enumerate(ports) if q and q in p.lower()]
    return hits[0] if len(hits) == 1 else None


def _delete(midi_in) -> None:
    for method in ("cancel_callback", "close_port", "delete"):
        fn = getattr(midi_in, method, None)
        if fn is not None:
            try:
                fn()
            except Exception:
                pass


class MidiInput:
    """One MIDI input port feeding ``handler(bytes)``.

    Args:
        handler: called with each message's raw bytes on the MIDI thread (never raises into
            rtmidi: errors are counted in ``errors``).
        api: 'auto' or one of `API_NAMES`.
        port: name or substring of an existing port to connect to.
        virtual: name of a virtual port to create (used when ``port`` is None).
        client_name: our MIDI client's name.
        backend: `rtmidi` (default) or a fake.
        poll: seconds between the watcher's checks of the port list.
        log: ``f(text)`` for connect/disconnect notices (default: stderr).
    """

    def __init__(self, handler, api="auto", port=None, virtual=None, client_name=DEFAULT_CLIENT,
                 backend=None, poll=0.5, log=None, platform=None):
        if port is None and virtual is None:
            virtual = DEFAULT_VIRTUAL
        self.handler = handler
        self.requested_api = api
        self.query = port
        self.virtual = virtual if port is None else None
        self.client_name = client_name
        self.backend = backend
        self.poll = float(poll)
        self.platform = platform
        self.log = log or (lambda text: print(f"sing-synth: {text}", file=sys.stderr, flush=True))
        self.api = None
        self.port_name = None
        self.connected = False
        self.messages = 0
        self.errors = 0
        self.reconnects = 0
        self._midi_in = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = None

    # ------------------------------------------------------------------ open / close
    def open(self) -> "MidiInput":
        self.api, self._midi_in = open_api(self.requested_api, self.client_name, self.backend,
                                           self.platform)
        m = self._midi_in
        try:
            m.ignore_types(sysex=False, timing=True, active_sense=True)
        except Exception:
            pass
        m.set_callback(self._callback)
        try:
            if self.virtual is not None:
                if self.api == "windows":
                    raise UserError("WinMM has no virtual MIDI ports: create one with loopMIDI and "
                                    "pass --port NAME")
                try:
                    m.open_virtual_port(self.virtual)
                except Exception as exc:
                    raise UserError(f"cannot create virtual MIDI port {self.virtual!r} "
                                    f"({_API_LABELS[self.api]}): {_first_line(exc)}") from None
                self.port_name = self.virtual
                self.connected = True
            else:
                ports = list(m.get_ports())
                index = find_port(ports, self.query)
                if index is None:
                    what = "matches several ports" if any(
                        self.query.lower() in p.lower() for p in ports) else "not found"
                    raise UserError(f"MIDI port {self.query!r} {what} ({_API_LABELS[self.api]}); "
                                    f"available: {', '.join(map(repr, ports)) or 'none'}")
                self._open_index(index, ports[index])
                self._watcher = threading.Thread(target=self._watch, name="midi-port-watcher",
                                                 daemon=True)
                self._watcher.start()
        except BaseException:
            self.close()
            raise
        return self

    def _open_index(self, index: int, name: str) -> None:
        try:
            self._midi_in.open_port(index, self.client_name + " in")
        except Exception as exc:
            raise UserError(f"cannot open MIDI port {name!r} ({_API_LABELS[self.api]}): "
                            f"{_first_line(exc)}") from None
        self.port_name = name
        self.connected = True

    def close(self) -> None:
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(2.0)
        with self._lock:
            m, self._midi_in = self._midi_in, None
            self.connected = False
        if m is not None:
            _delete(m)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ the MIDI thread
    def _callback(self, event, data=None) -> None:
        try:
            message = event[0]
            self.messages += 1
            self.handler(bytes(message))
        except Exception:
            self.errors += 1

    # ------------------------------------------------------------------ reconnection
    def check(self) -> None:
        """One watcher step: notices a vanished port and reopens a returned one."""
        with self._lock:
            m = self._midi_in
            if m is None:
                return
            try:
                ports = list(m.get_ports())
            except Exception:
                return
            if self.connected:
                if self.port_name not in ports:
                    try:
                        m.close_port()
                    except Exception:
                        pass
                    self.connected = False
                    self.log(f"MIDI port {self.port_name!r} disappeared; the instrument plays on "
                             f"and reconnects when it is back")
                return
            index = ports.index(self.port_name) if self.port_name in ports \
                else find_port(ports, self.query)
            if index is None:
                return
            try:
                self._open_index(index, ports[index])
            except UserError:
                return
            self.reconnects += 1
            self.log(f"MIDI port {self.port_name!r} reconnected")

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            self.check()
