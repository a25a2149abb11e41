"""Helpers for the engine tests: a fake renderer of sine notes, and signal measurements."""
import threading

import numpy as np

from sing_synth.config import SingConfig
from sing_synth.engine import Mixer
from sing_synth.presets import Preset

RATE = 48000
BLOCK = 256


def sine_note(pitch, amplitude=0.5, seconds=4.0, rate=RATE):
    """A steady sine at the pitch's frequency, with 5 ms fades at both ends; read-only float32."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    wave = amplitude * np.sin(2 * np.pi * 440.0 * 2 ** ((pitch - 69) / 12) * t)
    fade = int(0.005 * rate)
    wave[:fade] *= np.linspace(0, 1, fade)
    wave[-fade:] *= np.linspace(1, 0, fade)
    note = wave.astype(np.float32)
    note.flags.writeable = False
    return note


class FakeRenderer:
    """Stands in for `NoteRenderer`: sine notes whose amplitude follows the velocity layer
    (0.5 * layer_velocity / 127).  ``instant``: request() returns the note at once; otherwise it
    returns None and the note arrives (through the ready callbacks) when the test calls
    `deliver`."""

    def __init__(self, instant=True, seconds=4.0):
        self.config = SingConfig()
        self.instant = instant
        self.seconds = seconds
        self.cache = {}
        self.waiting = []
        self.requests = []
        self.prewarmed = []
        self.cancelled = []
        self.dropped = []
        self.callbacks = []
        self.lock = threading.RLock()

    def try_lock(self):
        return self.lock.acquire(blocking=False)

    def unlock(self):
        self.lock.release()

    def add_ready_callback(self, callback):
        self.callbacks.append(callback)

    def note(self, key):
        _, pitch, row = key
        return sine_note(pitch, 0.5 * self.config.velocity_rows[row] / 127, self.seconds)

    def request(self, key, urgent=True):
        self.requests.append((key, urgent))
        if key in self.cache:
            return self.cache[key]
        if self.instant:
            self.cache[key] = self.note(key)
            return self.cache[key]
        if key not in self.waiting:
            self.waiting.append(key)
        return None

    def prewarm(self, keys):
        keys = list(keys)
        self.prewarmed.extend(keys)
        return len(keys)

    def cancel(self, keys):
        keys = list(keys)
        self.cancelled.extend(keys)
        self.waiting = [k for k in self.waiting if k not in keys]
        return len(keys)

    def drop_prewarm(self, keys):
        keys = list(keys)
        self.dropped.extend(keys)
        return len(keys)

    def deliver(self):
        waiting, self.waiting = self.waiting, []
        for key in waiting:
            self.cache[key] = self.note(key)
            for callback in self.callbacks:
                callback(key, self.cache[key])


def make_preset(name="test", program=0, release=0.05, bend_range=2.0, pitch_range=(21, 108),
                gain=1.0, velocity_curve=1.0, pitched=True, instrument="sine"):
    return Preset(name=name, program=program, instrument={instrument: 1.0}, gain=gain,
                  release=release, velocity_curve=velocity_curve, pitch_range=pitch_range,
                  bend_range=bend_range, pitched=pitched)


def make_mixer(**kwargs):
    kwargs.setdefault("blocksize_max", 1024)
    kwargs.setdefault("master_gain", 1.0)
    return Mixer(RATE, **kwargs)


def run(mixer, seconds=None, blocks=None, block=BLOCK, channels=2):
    """Calls the callback block after block; returns the output, shape [frames, channels]."""
    if blocks is None:
        blocks = int(np.ceil(seconds * RATE / block))
    out = np.empty((blocks * block, channels), np.float32)
    for b in range(blocks):
        mixer.callback(out[b * block:(b + 1) * block], block, None, None)
    return out


def frequency(wave, rate=RATE):
    """Frequency of the strongest spectral peak (Hann window, 8x zero-padding, parabolic
    interpolation between bins)."""
    wave = np.asarray(wave, np.float64)
    n = 8 * len(wave)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=n))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-30)
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + shift) * rate / n


def cents(f, reference):
    return 1200 * np.log2(f / reference)


def midi_hz(pitch):
    return 440.0 * 2 ** ((pitch - 69) / 12)
