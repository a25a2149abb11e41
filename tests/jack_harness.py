"""End-to-end test harness: the JACK rig of `bench.jack_rig` (a private JACK server with the dummy
driver, a capture client, a MIDI sender, the synth as a subprocess), its pytest fixtures, and a few
analysis helpers.

Everything runs on JACK's frame clock: `MidiSender` records the frame time of the period in
which each event was written (the event sits at offset 0 of that period), and `Capture` stores
audio by frame time, so "note-on -> first sound" is a difference of two frame counts, exact to
the sample and independent of how busy the machine is.

The module is also a tiny stand-in synth (``python tests/jack_harness.py standin ...``): an
rtmidi JACK virtual port plus a sounddevice JACK output stream playing harmonic tones.  It speaks
the same protocol as ``run_synth.py`` (a ``ready:`` line, ``voices=N xruns=N`` status lines) and
is used by the harness self-test, so that a harness bug and a synth bug can be told apart.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:      # `bench` lives beside the package (and the stand-in runs as a script)
    sys.path.insert(0, str(ROOT))

from bench.jack_rig import (PERIOD, RATE, READY_TIMEOUT, REPO, RUN_SYNTH, Capture,  # noqa: E402,F401
                            JackServer, MidiSender, Synth, SynthError, _TOKEN, jack_client,
                            last_above, named_server, onset, run_synth_once, synth_available)


def _fail_or_skip(message):
    import pytest
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# One server, one capture and one sender for the whole session, whichever test modules import
# the fixtures: each module that imports them gets its own fixture definitions, and a second
# server's clients in this process, while the first one's still run, crash libjack
# (jack_client_open).  The first definition to run creates them; the others share them.
_SHARED: dict = {}


def _shared(name, make, close):
    if name in _SHARED:
        yield _SHARED[name]
        return
    obj = _SHARED[name] = make()
    try:
        yield obj
    finally:
        del _SHARED[name]
        close(obj)


try:
    import pytest

    @pytest.fixture(scope="session")
    def jack_server(tmp_path_factory):
        """A private jackd (dummy driver, 48 kHz, 256 frames); JACK_DEFAULT_SERVER names it for
        this process and its children.  No jackd: skip, or fail when CI=true."""
        if "server" in _SHARED:
            yield _SHARED["server"]
            return
        if shutil.which("jackd") is None:
            _fail_or_skip("jackd not installed (Debian package jackd2)")
        try:
            import jack  # noqa: F401
        except (ImportError, OSError) as e:
            _fail_or_skip(f"JACK-Client not usable: {e}")
        server = JackServer(log_dir=tmp_path_factory.mktemp("jack"))
        try:
            server.start()
        except (OSError, RuntimeError) as e:
            _fail_or_skip(f"jackd did not start: {e}")
        _SHARED["server"] = server
        try:
            with named_server(server):
                yield server
        finally:
            del _SHARED["server"]
            server.stop()

    @pytest.fixture(scope="session")
    def capture(jack_server):
        yield from _shared("capture", Capture, lambda cap: cap.close())

    @pytest.fixture(scope="session")
    def midi_sender(jack_server):
        yield from _shared("sender", MidiSender, lambda sender: sender.close())
except ImportError:     # pragma: no cover - the stand-in runs without pytest
    pass


# ---------------------------------------------------------------------------------------------
# Analysis

def midi_hz(pitch):
    return 440.0 * 2.0 ** ((pitch - 69) / 12.0)


def cents(f, ref):
    return 1200.0 * np.log2(f / ref)


def _spectrum(x, oversample=8):
    x = np.asarray(x, np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    x = x - x.mean()
    n = len(x) * oversample
    return np.abs(np.fft.rfft(x * np.hanning(len(x)), n=n)), n


def f0_fft(x, rate=RATE, fmin=30.0, fmax=4000.0):
    """Frequency of the strongest spectral peak in [fmin, fmax] (Hann window, zero-padded FFT,
    parabolic interpolation on the log magnitude)."""
    mag, n = _spectrum(x)
    lo, hi = int(fmin * n / rate), min(int(fmax * n / rate) + 1, len(mag) - 1)
    k = lo + int(np.argmax(mag[lo:hi]))
    return _interp(mag, k) * rate / n


def _interp(mag, k):
    if 0 < k < len(mag) - 1:
        a, b, c = np.log(mag[k - 1:k + 2] + 1e-20)
        d = a - 2 * b + c
        if d < 0:
            return k + 0.5 * (a - c) / d
    return float(k)


def peak_near(x, f, rate=RATE, width_cents=50.0, spectrum=None):
    """(frequency, level in dB relative to the spectrum's strongest peak) of the strongest bin
    within ``width_cents`` of ``f``."""
    mag, n = spectrum if spectrum is not None else _spectrum(x)
    lo = int(f * 2 ** (-width_cents / 1200) * n / rate)
    hi = int(np.ceil(f * 2 ** (width_cents / 1200) * n / rate)) + 1
    k = lo + int(np.argmax(mag[lo:hi]))
    return _interp(mag, k) * rate / n, 20 * np.log10(mag[k] / (mag.max() + 1e-30) + 1e-30)


def harmonic_levels(x, f0, rate=RATE, n=8):
    """Levels (dB, relative to the strongest) of harmonics 1..n of f0."""
    spec = _spectrum(x)
    levels = []
    for h in range(1, n + 1):
        if h * f0 >= rate / 2 * 0.95:
            break
        levels.append(20 * np.log10(_peak_amp(spec, h * f0, rate) + 1e-12))
    levels = np.array(levels)
    return levels - levels.max()


def _peak_amp(spec, f, rate):
    mag, n = spec                  # the strongest bin within +-1 bin of the unpadded FFT
    k = int(round(f * n / rate))
    return mag[max(k - 8, 0):k + 9].max()


def spectral_centroid_ratio(x, f0, rate=RATE):
    """Spectral centroid divided by f0 (1.0: a pure sine; larger: brighter)."""
    mag, n = _spectrum(x)
    freqs = np.arange(len(mag)) * rate / n
    keep = freqs > 0.5 * f0
    return float((freqs[keep] * mag[keep] ** 2).sum() / ((mag[keep] ** 2).sum() + 1e-30)) / f0


def rms(x):
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0


def rms_envelope(x, hop=PERIOD):
    """RMS of consecutive ``hop``-frame blocks (mono mix of the channels)."""
    x = np.asarray(x, np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    n = len(x) // hop
    return np.sqrt((x[:n * hop].reshape(n, hop) ** 2).mean(axis=1))


def db(x):
    return 20 * np.log10(max(float(x), 1e-12))


# ---------------------------------------------------------------------------------------------
# Stand-in synth (harness self-test): rtmidi JACK virtual port + sounddevice JACK output

def standin_main(argv):
    import argparse
    p = argparse.ArgumentParser("standin")
    p.add_argument("--virtual", default="standin")
    p.add_argument("--blocksize", type=int, default=PERIOD)
    p.add_argument("--samplerate", type=int, default=RATE)
    p.add_argument("--status-interval", type=float, default=0.2)
    p.add_argument("--release", type=float, default=0.05)
    a = p.parse_args(argv)

    import rtmidi
    import sounddevice as sd

    lock = threading.Lock()
    voices = {}          # pitch -> [phase, gain, releasing]
    state = {"bend": 0.0, "xruns": 0}
    step = 1.0 / (a.release * a.samplerate)

    def on_midi(event, _data=None):
        msg = event[0]
        if not msg:
            return
        kind = msg[0] & 0xF0
        with lock:
            if kind == 0x90 and len(msg) >= 3 and msg[2] > 0 and msg[1] < 128:
                voices[msg[1]] = [0.0, 1.0, False]
            elif (kind == 0x80 or kind == 0x90) and len(msg) >= 3 and msg[1] in voices:
                voices[msg[1]][2] = True
            elif kind == 0xE0 and len(msg) >= 3:
                state["bend"] = ((msg[1] | msg[2] << 7) - 8192) / 8192 * 2
            elif kind == 0xB0 and len(msg) >= 3 and msg[1] in (120, 123):
                voices.clear()

    hostapi = next(i for i, h in enumerate(sd.query_hostapis()) if "JACK" in h["name"])
    device = sd.query_hostapis(hostapi)["default_output_device"]

    def callback(out, frames, time_info, status):
        if status.output_underflow:
            state["xruns"] += 1
        out.fill(0)
        with lock:
            for pitch in list(voices):
                phase, gain, rel = voices[pitch]
                f = midi_hz(pitch) * 2 ** (state["bend"] / 12)
                ph = phase + 2 * np.pi * f / a.samplerate * np.arange(frames)
                g = gain - step * np.arange(frames) if rel else np.full(frames, gain)
                g = np.clip(g, 0, 1)
                out[:, 0] += 0.1 * g * (np.sin(ph) + 0.5 * np.sin(2 * ph))
                voices[pitch][0] = (ph[-1] + 2 * np.pi * f / a.samplerate) % (2 * np.pi)
                voices[pitch][1] = g[-1]
                if rel and g[-1] <= 0:
                    del voices[pitch]
        out[:, 1] = out[:, 0]

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    midi = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=a.virtual)
    midi.ignore_types(sysex=False, timing=True, active_sense=True)
    midi.set_callback(on_midi)
    midi.open_virtual_port("midi_in")
    stream = sd.OutputStream(device=device, samplerate=a.samplerate, blocksize=a.blocksize,
                             channels=2, dtype="float32", callback=callback)
    stream.start()
    print(f"ready: standin on JACK, virtual port {a.virtual}", flush=True)
    while not stop.wait(a.status_interval):
        with lock:
            n = len(voices)
        print(f"standin: voices={n} xruns={state['xruns']}", file=sys.stderr, flush=True)
    # Once in a clean CI run the stand-in outlived the harness's 10 s after SIGINT (where it hung was
    # not caught: the loop's KeyboardInterrupt, or closing its JACK clients).  SIGINT now only sets
    # `stop`, and the stand-in does not wait on the JACK clients' close or PortAudio's atexit.
    closer = threading.Thread(target=lambda: (stream.close(), midi.close_port()), daemon=True)
    closer.start()
    closer.join(3.0)
    if closer.is_alive():
        print("standin: closing the JACK clients took over 3 s; exiting without them", file=sys.stderr, flush=True)
    os._exit(0)


STANDIN_COMMAND = [sys.executable, "-u", str(Path(__file__).resolve()), "standin"]

if __name__ == "__main__":
    if sys.argv[1:2] == ["standin"]:
        standin_main(sys.argv[2:])
