"""The shipped model (models/sing-small-fluidr3.pt, see models/MODEL_CARD.md): it loads safely,
is small, knows every preset's instruments, and gets louder with velocity.  Its pitch accuracy is
measured by `sing-synth eval --report` (models/eval/report.md), not asserted here: 64 of the 81
preset notes at MIDI 48/60/72 are in tune, not all (MODEL_CARD.md).

Rendered the way the instrument renders (`engine.NoteRenderer`, the fast path in the model's
16 kHz rate); the loudness a player hears is the rendered velocity layer times the preset's
velocity gain (`engine.Controller`).
"""
from pathlib import Path

import numpy as np
import pytest

from sing_synth.checkpoint import load_checkpoint
from sing_synth.engine import NoteRenderer
from sing_synth.evaluate import rms_db
from sing_synth.play import DEFAULT_CHECKPOINT
from sing_synth.presets import check_instruments, load_presets

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / DEFAULT_CHECKPOINT
PITCHES = (48, 60, 72)
VELOCITIES = (32, 64, 96, 127)
MAX_MB = 25.0


@pytest.fixture(scope="module")
def checkpoint():
    assert SHIPPED.is_file(), f"{SHIPPED} is missing: it ships in the repository (make shipped-model)"
    return load_checkpoint(SHIPPED)


@pytest.fixture(scope="module")
def presets():
    return [p for p in load_presets().values() if p.pitched]


@pytest.fixture(scope="module")
def rendered(checkpoint, presets):
    """{(preset name, pitch, velocity): (wave at 16 kHz, gain the controller applies)}."""
    renderer = NoteRenderer(checkpoint, device="cpu", stream_rate=checkpoint.model.config.sample_rate,
                            cache_mb=1024, batch_size=16)
    keys = {}
    with renderer:
        for p in presets:
            for pitch in PITCHES:
                for velocity in VELOCITIES:
                    keys[p.name, pitch, velocity] = renderer.make_key(p, pitch, velocity)
        renderer.prewarm(list(set(keys.values())))
        assert renderer.wait_idle(600)
        rows = checkpoint.model.config.velocity_rows
        out = {}
        for (name, pitch, velocity), key in keys.items():
            preset = next(p for p in presets if p.name == name)
            note = renderer.get(key)
            assert note is not None, f"{name} {pitch} {velocity} was not rendered"
            out[name, pitch, velocity] = (note, preset.velocity_gain(velocity, rows[key[2]]))
    return out


def test_shipped_file_is_small_fp16_and_safe(checkpoint):
    assert SHIPPED.stat().st_size <= MAX_MB * 2 ** 20
    import torch
    payload = torch.load(SHIPPED, map_location="cpu", weights_only=True)   # no code runs
    dtypes = {t.dtype for t in payload["state"].values() if t.is_floating_point()}
    assert dtypes == {torch.float16}, dtypes


def test_every_preset_instrument_is_in_the_model(checkpoint):
    check_instruments(load_presets(), checkpoint.instruments.values())


def test_loudness_rises_with_velocity(rendered, presets):
    bad = []
    for p in presets:
        for pitch in PITCHES:
            levels = [rms_db(rendered[p.name, pitch, v][0] * rendered[p.name, pitch, v][1])
                      for v in VELOCITIES]
            if not all(b > a for a, b in zip(levels, levels[1:])):
                bad.append(f"{p.name} {pitch}: {np.round(levels, 1).tolist()} dB")
    assert not bad, "loudness does not rise with velocity " + str(VELOCITIES) + ": " + "; ".join(bad)


def test_model_layers_alone_get_louder(rendered, presets):
    """Without the controller's gain: the model's own softest layer is quieter than its loudest
    for most presets (the trained velocity response, not only the engine's gain)."""
    rising = 0
    for p in presets:
        soft = np.mean([rms_db(rendered[p.name, pitch, 32][0]) for pitch in PITCHES])
        loud = np.mean([rms_db(rendered[p.name, pitch, 127][0]) for pitch in PITCHES])
        rising += loud > soft + 1.0
    assert rising >= 0.75 * len(presets), f"only {rising}/{len(presets)} presets louder at 127 than at 32"

