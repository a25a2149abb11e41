"""sing_synth.midi against a fake rtmidi backend (mido's style of fake ports): API choice and
fallback, port lookup, the callback, and reconnection of a port that disappears."""
import threading
import time

import pytest

from sing_synth import midi
from sing_synth.errors import UserError


class FakeError(OSError):
    pass


class FakeMidiIn:
    def __init__(self, backend, api, name):
        self.backend, self.api, self.name = backend, api, name
        self.callback = None
        self.open_index = None
        self.virtual = None
        self.ignored = None
        self.closed = 0
        self.deleted = False

    def get_ports(self):
        return list(self.backend.ports)

    def set_callback(self, callback, data=None):
        self.callback = callback

    def cancel_callback(self):
        self.callback = None

    def ignore_types(self, sysex=True, timing=True, active_sense=True):
        self.ignored = dict(sysex=sysex, timing=timing, active_sense=active_sense)

    def open_port(self, index=0, name=None):
        if not 0 <= index < len(self.backend.ports):
            raise FakeError("invalid port")
        self.open_index = index
        self.backend.opened.append(self.backend.ports[index])

    def open_virtual_port(self, name=None):
        self.virtual = name

    def close_port(self):
        self.closed += 1
        self.open_index = None

    def delete(self):
        self.deleted = True

    def send(self, data):
        """What rtmidi's thread does: call the callback with (message, delta)."""
        self.callback((list(data), 0.0), None)


class FakeBackend:
    API_LINUX_ALSA, API_UNIX_JACK, API_MACOSX_CORE, API_WINDOWS_MM = 2, 3, 1, 4

    def __init__(self, ports=(), failing=()):
        self.ports = list(ports)
        self.failing = set(failing)       # API constants whose MidiIn() raises
        self.opened = []
        self.instances = []

    def get_compiled_api(self):
        return [self.API_LINUX_ALSA, self.API_UNIX_JACK, self.API_MACOSX_CORE, self.API_WINDOWS_MM]

    def MidiIn(self, api, name=""):
        if api in self.failing:
            raise FakeError({2: "error creating ALSA sequencer client object.",
                             3: "JACK server not running?"}.get(api, "unavailable"))
        m = FakeMidiIn(self, api, name)
        self.instances.append(m)
        return m


def test_candidate_apis_per_platform():
    assert midi.candidate_apis("auto", "linux") == ["alsa", "jack"]
    assert midi.candidate_apis("auto", "darwin") == ["coremidi"]
    assert midi.candidate_apis("auto", "win32") == ["windows"]
    assert midi.candidate_apis("jack", "darwin") == ["jack"]
    with pytest.raises(UserError):
        midi.candidate_apis("bogus")


def test_auto_falls_back_to_jack_when_alsa_fails():
    backend = FakeBackend(failing={FakeBackend.API_LINUX_ALSA})
    name, m = midi.open_api("auto", backend=backend, platform="linux", quiet=False)
    assert name == "jack" and m.api == FakeBackend.API_UNIX_JACK


def test_no_api_available_is_one_line_naming_each():
    backend = FakeBackend(failing={FakeBackend.API_LINUX_ALSA, FakeBackend.API_UNIX_JACK})
    with pytest.raises(UserError) as exc:
        midi.open_api("auto", backend=backend, platform="linux", quiet=False)
    text = str(exc.value)
    assert "\n" not in text and "ALSA" in text and "JACK server not running?" in text


def test_virtual_port_and_callback_pass_raw_bytes():
    got = []
    backend = FakeBackend()
    port = midi.MidiInput(got.append, api="alsa", virtual="SING Test", backend=backend).open()
    m = backend.instances[0]
    assert port.port_name == "SING Test" and m.virtual == "SING Test" and port.api == "alsa"
    assert m.ignored == dict(sysex=False, timing=True, active_sense=True)
    m.send([0x90, 60, 100])
    m.send([0xF0, 1, 2, 0xF7])
    assert got == [bytes([0x90, 60, 100]), bytes([0xF0, 1, 2, 0xF7])]
    port.close()
    assert m.deleted


def test_handler_errors_never_reach_rtmidi():
    def handler(data):
        raise RuntimeError("boom")
    backend = FakeBackend()
    port = midi.MidiInput(handler, api="alsa", backend=backend).open()
    backend.instances[0].send([0x90, 60, 100])
    assert port.errors == 1 and port.messages == 1
    port.close()


def test_sysex_through_the_controller_is_counted_not_fatal():
    import numpy as np

    from sing_synth.config import SingConfig
    from sing_synth.engine import Controller, Mixer
    from sing_synth.presets import Preset

    class Instant:
        config = SingConfig()

        def add_ready_callback(self, callback):
            pass

        def request(self, key, urgent=True):
            return np.zeros(480, np.float32)

    mixer = Mixer(48000, blocksize_max=256)
    ctrl = Controller(mixer, Instant(), [Preset("test", 0, {"sine": 1.0})], "test")
    ctrl.handle(bytes([0xF0, 0x7E, 0x7F, 0x09, 0x01, 0xF7]))
    ctrl.handle(bytes([0x90, 60]))           # truncated
    ctrl.handle(bytes([0x90, 60, 100]))
    assert ctrl.counts["malformed"] == 1 and ctrl.counts["started"] == 1


def test_port_by_name_or_substring():
    backend = FakeBackend(["Midi Through:0", "Keystation 49:0", "Launchkey Mini:0"])
    port = midi.MidiInput(lambda d: None, api="alsa", port="keystation", backend=backend).open()
    assert port.port_name == "Keystation 49:0" and backend.opened == ["Keystation 49:0"]
    port.close()
    assert midi.find_port(["a:0", "ab:0"], "a:0") == 0      # an exact name wins
    assert midi.find_port(["Key A", "Key B"], "key") is None  # ambiguous


@pytest.mark.parametrize("query, what", [("nope", "not found"), ("0", "matches several")])
def test_unknown_or_ambiguous_port_lists_the_ports(query, what):
    backend = FakeBackend(["Midi Through:0", "Keystation 49:0"])
    with pytest.raises(UserError) as exc:
        midi.MidiInput(lambda d: None, api="alsa", port=query, backend=backend).open()
    text = str(exc.value)
    assert what in text and "'Keystation 49:0'" in text and "\n" not in text
    assert backend.instances[0].deleted        # nothing left open


def test_port_that_disappears_is_reopened_when_it_returns():
    got, logs = [], []
    backend = FakeBackend(["Midi Through:0", "Keystation 49:0"])
    port = midi.MidiInput(got.append, api="alsa", port="Keystation", backend=backend,
                          poll=3600, log=logs.append).open()
    m = backend.instances[0]
    port.check()
    assert port.connected and m.closed == 0
    backend.ports.remove("Keystation 49:0")      # unplugged
    port.check()
    assert not port.connected and m.closed == 1 and "disappeared" in logs[-1]
    port.check()                                 # still away: nothing happens
    assert not port.connected and port.reconnects == 0
    backend.ports.append("Keystation 49:0")      # plugged in again, at another index
    backend.ports.insert(0, "Other:0")
    port.check()
    assert port.connected and port.reconnects == 1 and m.open_index == 2
    assert "reconnected" in logs[-1]
    m.send([0x90, 64, 90])
    assert got == [bytes([0x90, 64, 90])]
    port.close()


def test_watcher_thread_reconnects_on_its_own():
    backend = FakeBackend(["Keystation 49:0"])
    port = midi.MidiInput(lambda d: None, api="alsa", port="Keystation", backend=backend,
                          poll=0.02, log=lambda t: None).open()
    try:
        backend.ports.clear()
        deadline = time.monotonic() + 2
        while port.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not port.connected
        backend.ports.append("Keystation 49:1")        # back, with a new ALSA address
        while not port.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert port.connected and port.port_name == "Keystation 49:1"
    finally:
        port.close()
    assert not any(t.name == "midi-port-watcher" and t.is_alive() for t in threading.enumerate())
