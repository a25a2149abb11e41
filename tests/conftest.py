"""Shared fixtures: tiny NSynth-format folders of synthetic harmonic instruments."""
import os
import tempfile

import numpy as np
import pytest
import torch

from sing_synth.data import VELOCITIES, Note, write_examples, write_note

SAMPLE_RATE = 16000
LENGTH = 64000


def harmonic_note(pitch: int, velocity: int, rolloff: float, length=LENGTH, sample_rate=SAMPLE_RATE):
    """A harmonic tone: held 3 s, released over the last second; louder and brighter with velocity."""
    t = np.arange(length) / sample_rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    wave = np.zeros(length)
    for h in range(1, 9):
        if h * f0 < sample_rate / 2:
            wave += h ** -(rolloff - velocity / 254) * np.sin(2 * np.pi * h * f0 * t)
    attack = np.minimum(t / 0.01, 1.0)
    held = 0.75 * length / sample_rate       # NSynth: key held 3 s of 4
    release = np.where(t < held, 1.0, np.exp(-(t - held) * 8))
    return 0.5 * (velocity / 127) ** 1.5 * attack * release * wave / np.abs(wave).max()


def make_dataset(root, n_instruments=3, pitches=range(48, 73, 3), velocities=VELOCITIES, length=LENGTH):
    """Writes an NSynth folder; instrument k has harmonics decaying as h^-(1 + k)."""
    notes = []
    for inst in range(n_instruments):
        name = f"synth_test_{inst:03d}"
        for pitch in pitches:
            for velocity in velocities:
                note = Note(f"{name}-{pitch:03d}-{velocity:03d}", inst, name, pitch, velocity,
                            "keyboard", "synthetic")
                write_note(root, note, harmonic_note(pitch, velocity, 1.0 + inst, length))
                notes.append(note)
    write_examples(root, notes)
    return notes


def dominant_frequency(wave, sample_rate=SAMPLE_RATE):
    """Frequency of the strongest bin of the held part (after the attack, before the release)."""
    wave = np.asarray(wave, dtype=np.float64)
    held = wave[len(wave) // 16: 3 * len(wave) // 4]
    spectrum = np.abs(np.fft.rfft(held * np.hanning(len(held)), n=8 * len(held)))
    return np.argmax(spectrum) * sample_rate / (8 * len(held))


def cents(frequency, pitch):
    return 1200 * np.log2(frequency / (440.0 * 2 ** ((pitch - 69) / 12)))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsynth")
    make_dataset(root)
    return root


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine, two OpenMP threads waiting on each other can make
    short runs of tiny models 10-100x slower than when the machine is quiet."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# synths started by module- and session-scoped fixtures (before any test's own folder is set):
# their note store in a folder of this run's, never ~/.cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sing-tests-cache-")


@pytest.fixture(autouse=True)
def own_note_store(tmp_path, monkeypatch):
    """Each test (and the synths it starts) keeps its note store in its own folder: none writes
    to ~/.cache, and a note a test renders is never one an earlier test left on disk."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
