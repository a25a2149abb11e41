"""Offline rendering and evaluation on top of a loaded checkpoint."""
import numpy as np
import torch

from .checkpoint import Checkpoint
from .data import load_split
from .device import resolve_device
from .errors import UserError
from .fast import FastRenderer
from .levels import checkpoint_levels
from .loss import SpectralLoss
from .model import SING


def instrument_vector(spec: str, ckpt: Checkpoint) -> torch.Tensor:
    """Blend weights `[n_instruments]` for an id, a name, or 'a:0.7,b:0.3' (morphing between instruments)."""
    config = ckpt.model.config
    by_name = {name: idx for idx, name in ckpt.instruments.items()}
    weights = torch.zeros(config.n_instruments)
    for part in spec.split(","):
        name, _, weight = part.partition(":")
        idx = by_name.get(name)
        if idx is None:
            if not name.strip().isdigit():
                raise UserError(f"unknown instrument {name!r} (give an id or one of the checkpoint's names)")
            idx = int(name)
        if not 0 <= idx < config.n_instruments:
            raise UserError(f"instrument {idx} is out of range 0..{config.n_instruments - 1}")
        try:
            weights[idx] += float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"bad blend weight {weight!r} in {spec!r}") from None
    if weights.sum() <= 0:
        raise UserError(f"instrument blend {spec!r} has no positive weight")
    return weights / weights.sum()


def render_notes(ckpt: Checkpoint, notes, batch_size=32, device="cpu", fast=True, levels=True) -> list:
    """Renders (instrument spec, MIDI pitch, MIDI velocity) triples; returns float32 arrays `[length]`,
    each times its level correction when the checkpoint has one and ``levels`` (`levels.Levels`)."""
    config = ckpt.model.config
    for _, pitch, velocity in notes:
        if not 0 <= pitch < config.n_pitches:
            raise UserError(f"pitch {pitch} is out of range 0..{config.n_pitches - 1}")
        if not 1 <= velocity <= 127:
            raise UserError(f"velocity {velocity} is out of range 1..127")
    device = resolve_device(device)
    model = ckpt.model.to(device)
    renderer = FastRenderer(model, device=device) if fast else model.eval()
    correction = checkpoint_levels(ckpt) if levels else None
    waves = []
    for begin in range(0, len(notes), batch_size):
        chunk = notes[begin:begin + batch_size]
        instrument = torch.stack([instrument_vector(spec, ckpt) for spec, _, _ in chunk]).to(device)
        pitch = torch.tensor([p for _, p, _ in chunk], device=device)
        velocity = torch.tensor([config.velocity_row(v) for _, _, v in chunk], device=device)
        with torch.no_grad():
            chunk_waves = renderer(instrument, pitch, velocity).float().cpu()
        if correction is not None:
            chunk_waves *= correction.gains(instrument, pitch)[:, None]
        waves.extend(chunk_waves.numpy())
    return [np.clip(w, -1.0, 1.0).astype(np.float32) for w in waves]


def rendered_batches(model: SING, dataset, batch_size=16, device="cpu", progress: str = ""):
    """Yields (target, sing, instrument, pitch, velocity) for each batch of an `NSynthDataset`,
    SING rendered in fp32 on the fast path (the model's numbers) and back on the CPU.
    ``progress``: a tqdm bar with that label."""
    device = resolve_device(device)
    renderer = FastRenderer(model.to(device), dtype=torch.float32, device=device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc=progress, unit="batch")
    for target, instrument, pitch, velocity in loader:
        with torch.no_grad():
            sing = renderer(instrument.to(device), pitch.to(device), velocity.to(device)).float().cpu()
        yield target, sing, instrument, pitch, velocity


@torch.no_grad()
def evaluate_loss(model: SING, data, split="test", seed=0, loss="l1", batch_size=16, device="cpu"):
    """Mean spectral loss of the fp32 model on a split; returns (loss, number of notes)."""
    config = model.config
    dataset = load_split(data, split, seed=seed, velocity_rows=config.velocity_rows,
                         sample_rate=config.sample_rate, length=config.length)
    device = resolve_device(device)
    criterion = SpectralLoss(loss).to(device)
    model = model.to(device).eval()
    total, count = 0.0, 0
    for wave, instrument, pitch, velocity in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        if int(instrument.max()) >= config.n_instruments:
            raise UserError(f"{data}: instrument {int(instrument.max())} is not in this checkpoint")
        output = model(instrument.to(device), pitch.to(device), velocity.to(device))
        total += criterion(output, wave.to(device)).item() * len(wave)
        count += len(wave)
    return total / max(count, 1), count
