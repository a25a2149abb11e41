"""Level calibration: the gain that brings each instrument's notes to its training notes' level.

SING's notes come out quieter than the notes it learnt from, and by how much depends on the
instrument: the shipped model's held-out notes were 1.7 (strings) to 12.3 dB (vibraphone) too
quiet, median per instrument.  The presets' gains assume the model plays at its training notes'
level, so switching presets jumped by up to 10 dB.

`calibrate` renders the notes a checkpoint trained on, measures each note's level error (dB,
target minus SING) over 0.1..0.6 s after the key (`WINDOW_S`, the window the presets' gains are
set on), and fits each instrument's errors with a line in MIDI pitch.  The fit goes into the
checkpoint's metadata (`METADATA_KEY`); `Levels` reads it back, and the renderers multiply each
note by ``Levels.gains``.  A blend of instruments (a morph) takes the blend-weighted mean of its
instruments' corrections in dB.  A checkpoint without the key plays uncorrected.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import CheckpointError, UserError

METADATA_KEY = "levels"
WINDOW_S = (0.1, 0.6)
REFERENCE_PITCH = 60       # the lines' offsets are the correction at middle C
CLIP_DB = 12.0             # errors further than this from the instrument's median count as this far
MAX_DB = 24.0              # a correction is kept within +-MAX_DB
MIN_SPAN = 12              # semitones of an instrument's pitches before a slope is fitted
MIN_NOTES = 8


def window_db(waves, sample_rate: int, window=WINDOW_S) -> np.ndarray:
    """RMS level (dB re full scale) of each note over ``window`` seconds after its start.

    Shape: waves `[B, T]` -> `[B]`."""
    waves = np.asarray(waves, dtype=np.float64)
    lo, hi = (int(round(s * sample_rate)) for s in window)
    part = waves[:, lo:hi]
    return 10 * np.log10(np.mean(part ** 2, axis=1) + 1e-12)


def fit_line(pitches, errors_db) -> tuple[float, float]:
    """(correction at `REFERENCE_PITCH` in dB, dB per semitone) fitted to one instrument's notes:
    least squares on the errors clipped to within `CLIP_DB` of their median (a silent or broken
    note does not drag the line), flat when the pitches span less than `MIN_SPAN` semitones."""
    pitches = np.asarray(pitches, dtype=np.float64)
    errors = np.asarray(errors_db, dtype=np.float64)
    median = float(np.median(errors))
    errors = np.clip(errors, median - CLIP_DB, median + CLIP_DB)
    if len(errors) < MIN_NOTES or np.ptp(pitches) < MIN_SPAN:
        return float(np.mean(errors)), 0.0
    slope, offset = np.polyfit(pitches - REFERENCE_PITCH, errors, 1)
    return float(offset), float(slope)


class Levels:
    """Level corrections of a checkpoint's instruments, each a line in MIDI pitch held flat
    outside the pitches it was measured on.  Instruments without one get 0 dB.

    Shape:
        weights: `[B, n_instruments]` blend weights (rows summing to 1); pitch: `[B]`
        output of `db` and `gains`: `[B]` float32
    """

    def __init__(self, n_instruments: int, lines: dict):
        """``lines``: {instrument id: (dB at REFERENCE_PITCH, dB per semitone, lowest pitch,
        highest pitch)}."""
        self.n_instruments = int(n_instruments)
        self.offset = torch.zeros(self.n_instruments)
        self.slope = torch.zeros(self.n_instruments)
        self.low = torch.full((self.n_instruments,), float(REFERENCE_PITCH))
        self.high = torch.full((self.n_instruments,), float(REFERENCE_PITCH))
        for idx, (offset, slope, low, high) in lines.items():
            self.offset[idx], self.slope[idx] = offset, slope
            self.low[idx], self.high[idx] = low, high

    @classmethod
    def from_metadata(cls, metadata: dict, n_instruments: int, source="checkpoint") -> Levels | None:
        """The corrections stored in a checkpoint's metadata, None when it has none; a malformed
        entry raises `CheckpointError`."""
        entry = (metadata or {}).get(METADATA_KEY)
        if entry is None:
            return None
        try:
            lines = {}
            for idx, line in entry["instruments"].items():
                idx = int(idx)
                offset, slope = float(line["db"]), float(line["db_per_semitone"])
                low, high = (float(p) for p in line["pitches"])
                if not 0 <= idx < n_instruments:
                    raise ValueError(f"instrument {idx} is not among the model's 0..{n_instruments - 1}")
                if not all(math.isfinite(v) for v in (offset, slope, low, high)) or low > high:
                    raise ValueError(f"instrument {idx}: not finite, or pitches not in order")
                lines[idx] = (offset, slope, low, high)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{source}: bad level calibration in its metadata ({exc})") from None
        return cls(n_instruments, lines)

    def db(self, weights, pitch) -> torch.Tensor:
        weights = torch.as_tensor(weights, dtype=torch.float32).cpu()
        pitch = torch.as_tensor(pitch, dtype=torch.float32).cpu()[:, None]
        per_instrument = self.offset + self.slope * (torch.clamp(pitch, self.low, self.high) - REFERENCE_PITCH)
        return torch.clamp((weights * per_instrument).sum(1), -MAX_DB, MAX_DB)

    def db_of_ids(self, ids, pitch) -> np.ndarray:
        """`db` of single instruments given by id `[B]`."""
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        return self.db(torch.nn.functional.one_hot(ids, self.n_instruments).float(), pitch).numpy()

    def gains(self, weights, pitch) -> torch.Tensor:
        return 10.0 ** (self.db(weights, pitch) / 20.0)


def checkpoint_levels(ckpt) -> Levels | None:
    return Levels.from_metadata(ckpt.metadata, ckpt.model.config.n_instruments)


def measure(ckpt, data, split: str, seed: int = 0, batch_size: int = 16, device="cpu",
            progress: bool = False) -> dict:
    """Renders ``split``'s notes (fp32, the fast path) and returns {"instrument", "pitch",
    "sing_db", "target_db"} arrays, one entry per note, levels over `WINDOW_S`."""
    from .data import load_split
    from .evaluate import check_notes
    from .render import rendered_batches
    config = ckpt.model.config
    try:
        dataset = load_split(data, split, seed=seed, velocity_rows=config.velocity_rows,
                             sample_rate=config.sample_rate, length=config.length)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if len(dataset) == 0:
        raise UserError(f"{data}: the {split} split is empty")
    check_notes(ckpt, data, dataset.notes)
    out = {"instrument": [], "pitch": [], "sing_db": [], "target_db": []}
    for target, sing, instrument, pitch, _ in rendered_batches(
            ckpt.model, dataset, batch_size, device, progress=f"levels {split}" if progress else ""):
        out["instrument"].append(instrument.numpy())
        out["pitch"].append(pitch.numpy())
        out["sing_db"].append(window_db(sing.numpy(), config.sample_rate))
        out["target_db"].append(window_db(target.numpy(), config.sample_rate))
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_levels(measured: dict) -> dict:
    """The metadata entry (`METADATA_KEY`) for `measure`'s notes: a line per instrument."""
    errors = measured["target_db"] - measured["sing_db"]
    lines = {}
    for idx in np.unique(measured["instrument"]):
        mine = measured["instrument"] == idx
        pitches = measured["pitch"][mine]
        offset, slope = fit_line(pitches, errors[mine])
        lines[int(idx)] = {"db": round(offset, 3), "db_per_semitone": round(slope, 4),
                           "pitches": [int(pitches.min()), int(pitches.max())],
                           "notes": int(mine.sum())}
    return {"window_s": list(WINDOW_S), "reference_pitch": REFERENCE_PITCH, "instruments": lines}


def residuals_db(measured: dict, levels: Levels) -> np.ndarray:
    """Each note's level error left after the correction (target - SING - correction, dB)."""
    correction = levels.db_of_ids(measured["instrument"], measured["pitch"])
    return measured["target_db"] - measured["sing_db"] - correction


def spread_db(instrument, errors) -> float:
    """Largest minus smallest of the instruments' median errors: how far apart presets play."""
    medians = [np.median(errors[instrument == idx]) for idx in np.unique(instrument)]
    return float(np.max(medians) - np.min(medians))


def calibrate(checkpoint, data, out=None, split=None, seed: int = 0, batch_size: int = 16,
              device="cpu", progress: bool = False) -> dict:
    """Measures and stores a checkpoint's level calibration; writes ``out`` (default: in place)
    with the same weights and precision.  ``split``: default the split(s) the checkpoint trained
    on (its ``train_split``), so the test split stays held out.  Returns a summary."""
    from .checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(checkpoint)
    split = split or str(ckpt.metadata.get("train_split", "train"))
    if "test" in split.split("+"):
        raise UserError("calibrate on the notes the model trained on, not the test split "
                        "(eval measures the correction on it)")
    measured = measure(ckpt, data, split, seed=seed, batch_size=batch_size, device=device,
                       progress=progress)
    entry = fit_levels(measured)
    entry.update(data=str(data), split=split, seed=seed)
    levels = Levels.from_metadata({METADATA_KEY: entry}, ckpt.model.config.n_instruments)
    before = measured["target_db"] - measured["sing_db"]
    after = residuals_db(measured, levels)
    metadata = dict(ckpt.metadata)
    metadata[METADATA_KEY] = entry
    save_checkpoint(out or checkpoint, ckpt.model.cpu(), ckpt.instruments, metadata,
                    half=ckpt.half)
    return {"notes": len(before), "instruments": len(entry["instruments"]), "split": split,
            "median_error_db": float(np.median(before)),
            "mean_abs_error_db": float(np.mean(np.abs(before))),
            "mean_abs_error_after_db": float(np.mean(np.abs(after))),
            "spread_db": spread_db(measured["instrument"], before),
            "spread_after_db": spread_db(measured["instrument"], after)}
