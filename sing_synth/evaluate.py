"""Held-out evaluation of SING against a sampler's baseline, with a markdown report.

The paper's generalisation test renders pitches an instrument was never trained on (the test split
holds whole (instrument, pitch) groups). A sampler would play such a note by taking the nearest
sampled pitch of the same instrument and velocity and resampling it; SING should sound closer to the
real note than that (lower log-spectral L1). Besides that distance, the report gives the pitch error
of each rendering in cents (a YIN f0 estimate) and its loudness against velocity.
"""
from __future__ import annotations

import bisect
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .data import (NSynthDataset, Note, velocity_index, filter_notes, join_splits, read_examples,
                   split_notes, wav_path)
from .errors import DatasetError, UserError
from .levels import checkpoint_levels, spread_db, window_db
from .loss import SpectralLoss, between_harmonics
from .midi import midi_frequency
from .render import rendered_batches

CENTS_OK = 50.0  # a rendering within this many cents of its MIDI pitch counts as in tune
BASS_HZ = 100.0  # notes whose f0 lies below this are "bass notes" for the fundamental's measure
PARTIAL_OK = 25.0  # a fundamental within this many cents of the real note's counts as in place


# ---------------------------------------------------------------------------------------------
# Pitch

def cents_error(frequency, pitch) -> float:
    """Cents from the MIDI pitch's equal-tempered frequency to `frequency` (nan stays nan)."""
    return float(1200 * np.log2(frequency / midi_frequency(pitch)))


def _yin(x: np.ndarray, tau_min: int, tau_max: int, hop: int, threshold: float):
    """YIN on frames of `x`: period in samples (parabolic interpolation), aperiodicity (the
    cumulative-mean-normalised difference at that period) and energy of each frame."""
    w = tau_max                                   # integration window: one longest period
    n_frames = (len(x) - w - tau_max) // hop + 1
    if n_frames < 1 or tau_min >= tau_max - 1:
        return np.empty(0), np.empty(0), np.empty(0)
    frames = x[np.arange(n_frames)[:, None] * hop + np.arange(w + tau_max)]
    nfft = 1 << int(math.ceil(math.log2(w + 2 * tau_max)))
    # d(tau) = sum_{j<w} (x_j - x_{j+tau})^2 = e(0) + e(tau) - 2 r(tau), r by FFT correlation
    r = np.fft.irfft(np.conj(np.fft.rfft(frames[:, :w], nfft)) * np.fft.rfft(frames, nfft), nfft)
    taus = np.arange(tau_max + 1)
    c = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    energy = c[:, w]
    d = np.maximum(energy[:, None] + (c[:, taus + w] - c[:, taus]) - 2 * r[:, :tau_max + 1], 0)
    d[:, 0] = 0
    dn = np.ones_like(d)
    dn[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(np.cumsum(d[:, 1:], axis=1), 1e-300)
    # first dip below the threshold, then down to its bottom; else the global minimum
    search = dn[:, tau_min:tau_max]
    below = search < threshold
    rising = np.concatenate([search[:, 1:] >= search[:, :-1], np.ones((n_frames, 1), bool)], axis=1)
    cols = np.arange(search.shape[1])
    first = np.where(below.any(1), below.argmax(1), search.shape[1])
    bottom = (rising & (cols >= first[:, None])).argmax(1)
    t = np.where(below.any(1), bottom, search.argmin(1)) + tau_min
    rows = np.arange(n_frames)
    aperiodicity = dn[rows, t]
    y0, y1, y2 = d[rows, np.maximum(t - 1, 0)], d[rows, t], d[rows, np.minimum(t + 1, tau_max)]
    curvature = y0 - 2 * y1 + y2
    shift = np.where(curvature > 0, 0.5 * (y0 - y2) / np.where(curvature > 0, curvature, 1), 0)
    return t + np.clip(shift, -1, 1), aperiodicity, energy


def estimate_f0(wave, sample_rate: int, fmin: float = 25.0, fmax: float = 4200.0,
                threshold: float = 0.15, voiced: float = 0.35, oversample: int = 4) -> float:
    """Fundamental frequency (Hz) of a note, or nan if it is silent or not periodic.

    YIN (de Cheveigné & Kawahara 2002: cumulative-mean-normalised difference, absolute threshold,
    parabolic interpolation) on 0.1-s-spaced frames of the held part of the note (from 1/40 to 3/4
    of it: 0.1 s to 3 s of a 4-s NSynth note), median over the frames that are loud (within 40 dB of
    the loudest) and periodic (aperiodicity below `voiced`). The held part is first resampled
    `oversample` times faster: at 16 kHz a 2 kHz period is 7.6 samples, too few for the parabola
    (errors of ~15 cents, and octave errors when the harmonics are strong); x4 keeps the error
    below a cent.
    """
    held = held_part(wave)
    if len(held) == 0 or not np.all(np.isfinite(held)):
        return float("nan")
    rate = sample_rate * oversample
    if oversample > 1:
        held = soxr.resample(held, sample_rate, rate, quality="VHQ")
    tau_min = max(2, int(rate / fmax))
    tau_max = min(int(math.ceil(rate / fmin)) + 1, len(held) // 2)
    periods, aperiodicity, energy = _yin(held, tau_min, tau_max, max(1, rate // 10), threshold)
    if len(energy) == 0 or energy.max() <= 1e-10 * tau_max:
        return float("nan")
    keep = (energy >= 1e-4 * energy.max()) & (aperiodicity < voiced)
    if not keep.any():
        return float("nan")
    return float(rate / np.median(periods[keep]))


def held_part(wave) -> np.ndarray:
    """The held part of a note that the pitch measures read: from 1/40 to 3/4 of it."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    return wave[len(wave) // 40: 3 * len(wave) // 4]


def offharmonic_db(wave, pitch, sample_rate: int, n_fft: int = 4096, fmax: float = 7500.0) -> float:
    """Power between the harmonics of the MIDI pitch against the power on them, in dB, over the
    held part (as `estimate_f0`); nan for silence.

    What it measures is what makes YIN read a note an octave (or a fifth and an octave) low:
    subharmonics (f0/2, f0/3 ...), SING's frame-rate buzz (multiples of 62.5 Hz) and noise.  A bin
    is on a harmonic k * f0 within the Hann window's main lobe (2 bins) or 30 cents, whichever is
    wider (stretched piano partials: `loss.between_harmonics`, which `train --between-weight`
    weighs); the band is 0.4 f0 .. `fmax`.  Hann leakage puts a floor of
    about -35 dB under a clean harmonic tone.
    """
    held = held_part(wave)
    if len(held) < n_fft or not np.all(np.isfinite(held)):
        return float("nan")
    frames = torch.stft(torch.from_numpy(held), n_fft, hop_length=n_fft // 4,
                        window=torch.hann_window(n_fft, dtype=torch.float64), center=False,
                        return_complex=True)
    power = frames.abs().pow(2).sum(-1).numpy()
    bin_hz = sample_rate / n_fft
    freqs = torch.arange(len(power), dtype=torch.float64) * bin_hz
    f0 = midi_frequency(pitch)
    band = ((freqs >= 0.4 * f0) & (freqs <= min(fmax, sample_rate / 2))).numpy()
    between = between_harmonics(freqs, torch.tensor(f0, dtype=torch.float64), bin_hz).numpy()
    on_power, off_power = power[band & ~between].sum(), power[band & between].sum()
    if on_power <= 1e-12 * max(len(held), 1):
        return float("nan")
    return float(10 * np.log10((off_power + 1e-30) / on_power))


def fundamental_cents(wave, pitch, sample_rate: int, span_cents: float = 300.0) -> float:
    """Where the strongest partial within `span_cents` of the MIDI pitch's f0 lies, in cents from
    that f0, over the held part (as `estimate_f0`; one Hann-windowed FFT, the peak refined by a
    parabola through the log magnitudes of its bin and the two beside it); nan for silence.

    YIN reads a note's period, which its upper harmonics carry, so it can read a bass note in tune
    whose fundamental is not: SING's decoder overlap-adds frames at 62.5 Hz, and a bass
    fundamental near that rate can come out on it (MIDI 36: 62.7 Hz for 65.4 Hz, 72 cents flat,
    with ~7 Hz sidebands).  Compare with the real note's reading (`fundamental_cents` of the target):
    a soundfont's sample may be tuned a few cents off.
    """
    held = held_part(wave)
    if len(held) < 64 or not np.all(np.isfinite(held)):
        return float("nan")
    magnitude = np.abs(np.fft.rfft(held * np.hanning(len(held))))
    bin_hz = sample_rate / len(held)
    f0 = float(midi_frequency(pitch))
    low, high = f0 * 2 ** (-span_cents / 1200), f0 * 2 ** (span_cents / 1200)
    bins = np.arange(max(1, math.ceil(low / bin_hz)), min(len(magnitude) - 1, math.floor(high / bin_hz) + 1))
    if len(bins) == 0 or magnitude[bins].max() <= 1e-9 * len(held):
        return float("nan")
    k = int(bins[np.argmax(magnitude[bins])])
    a, b, c = np.log(magnitude[k - 1:k + 2] + 1e-30)
    offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return float(1200 * np.log2((k + offset) * bin_hz / f0))


# ---------------------------------------------------------------------------------------------
# The sampler baseline

def baseline_index(notes) -> dict:
    """(instrument, velocity) -> that instrument's notes at that velocity, sorted by pitch."""
    index = defaultdict(list)
    for note in notes:
        index[note.instrument, note.velocity].append(note)
    return {key: sorted(group, key=lambda n: n.pitch) for key, group in index.items()}


def read_wave(path, sample_rate=None) -> tuple[np.ndarray, int]:
    """Mono float32 wave and its rate; DatasetError for an unreadable or multichannel file."""
    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read audio: {exc}") from None
    if wave.shape[1] != 1:
        raise DatasetError(f"{path}: {wave.shape[1]} channels, expected mono")
    if sample_rate is not None and rate != sample_rate:
        raise DatasetError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    return wave[:, 0], rate


def shift_pitch(wave, semitones: float, sample_rate: int = 16000, length=None) -> np.ndarray:
    """What a sampler does: play `wave` 2^(semitones/12) times faster (resampled with soxr, so the
    pitch and every partial move by `semitones` and the note gets shorter or longer), then
    trim or zero-pad to `length` (default: the input's)."""
    wave = np.asarray(wave, dtype=np.float32)
    length = len(wave) if length is None else length
    if semitones:
        wave = soxr.resample(wave, sample_rate * 2.0 ** (semitones / 12), sample_rate, quality="VHQ")
    out = np.zeros(length, dtype=np.float32)
    out[:min(length, len(wave))] = wave[:length]
    return out


def baseline_source(train_notes_index: dict, note: Note, exclude_own_pitch: bool = True):
    """The train note a sampler would play for `note`: same instrument and velocity, nearest pitch
    (the higher one on a tie: played slower, the sample fills the note rather than ending early).
    None if there is none."""
    group = train_notes_index.get((note.instrument, note.velocity), [])
    if exclude_own_pitch:
        group = [n for n in group if n.pitch != note.pitch]
    if not group:
        return None
    pitches = [n.pitch for n in group]
    i = bisect.bisect_left(pitches, note.pitch)
    near = [group[j] for j in (i - 1, i) if 0 <= j < len(group)]
    return min(near, key=lambda n: (abs(n.pitch - note.pitch), -n.pitch))


def baseline_note(train_notes_index: dict, note: Note, root, *, length=None, sample_rate=None,
                  exclude_own_pitch: bool = True):
    """The sampler's rendering of `note`: the nearest pitch of the same instrument and velocity in
    `train_notes_index` (from `baseline_index(train notes)`), read from `root` and resampled so that
    its pitch moves to `note.pitch` (up k semitones: the source is treated as sampled at
    sr * 2^(k/12) and resampled to sr), trimmed or zero-padded to `length` (default: the source's).

    `exclude_own_pitch` skips a train note of `note`'s own pitch (so a train note gets a neighbour's
    sample, as a held-out one always does). Returns float32 `[length]`, or None if that instrument
    has no other train note at that velocity.
    """
    source = baseline_source(train_notes_index, note, exclude_own_pitch)
    if source is None:
        return None
    wave, rate = read_wave(wav_path(root, source.note_str), sample_rate)
    return shift_pitch(wave, note.pitch - source.pitch, rate, length)


# ---------------------------------------------------------------------------------------------
# Evaluation

def rms_db(wave) -> float:
    wave = np.asarray(wave, dtype=np.float64)
    return float(10 * np.log10(np.mean(wave ** 2) + 1e-12))


def _finite(values):
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)


def _mean(values):
    values = _finite(values)
    return float(values.mean()) if len(values) else float("nan")


def _median(values):
    values = _finite(values)
    return float(np.median(values)) if len(values) else float("nan")


def _pitch_summary(cents: list) -> dict:
    """In-tune share (nan = no pitch found = out of tune), median |error|, octave-folded share."""
    values = np.asarray([np.nan if c is None else c for c in cents], dtype=np.float64)
    if len(values) == 0:
        return dict.fromkeys(("within_50_cents_pct", "median_abs_cents",
                              "within_50_cents_any_octave_pct", "pitch_found_pct"), float("nan"))
    found, n = np.isfinite(values), len(values)
    folded = np.abs((values[found] + 600) % 1200 - 600)
    return {
        "within_50_cents_pct": 100.0 * float(np.sum(np.abs(values[found]) <= CENTS_OK)) / n,
        "median_abs_cents": float(np.median(np.abs(values[found]))) if found.any() else float("nan"),
        "within_50_cents_any_octave_pct": 100.0 * float(np.sum(folded <= CENTS_OK)) / n,
        "pitch_found_pct": 100.0 * float(found.sum()) / n,
    }


def _rises(levels: list) -> bool | None:
    levels = [v for v in levels if v is not None and np.isfinite(v)]
    return None if len(levels) < 2 else bool(all(b > a for a, b in zip(levels, levels[1:])))


def trained_splits(ckpt: Checkpoint, split: str) -> list:
    """The splits a checkpoint trained on (its metadata); refuses to score a final model
    (`train --train-split train+valid`) on valid, which it has heard."""
    trained_on = str(ckpt.metadata.get("train_split", "train")).split("+")
    if split == "valid" and "valid" in trained_on:
        raise UserError("this checkpoint trained on the valid split too (--train-split train+valid): "
                        "evaluate it on --split test")
    return trained_on


def check_notes(ckpt: Checkpoint, data, notes) -> None:
    """Raises UserError unless every note is one this checkpoint can play as the data names it:
    its instrument (id and name), pitch and velocity."""
    config = ckpt.model.config
    for note in notes:
        if not 0 <= note.instrument < config.n_instruments:
            raise UserError(f"{data}: instrument {note.instrument} ({note.instrument_str}) is not in "
                            f"this checkpoint (ids 0..{config.n_instruments - 1})")
        known = ckpt.instruments.get(note.instrument) if ckpt.instruments else note.instrument_str
        if known is None:
            raise UserError(f"{data}: instrument {note.instrument} ({note.instrument_str}) is not in "
                            f"this checkpoint (trained on other instruments? filter with --families "
                            f"or --sources)")
        if known != note.instrument_str:
            raise UserError(f"{data}: instrument {note.instrument} is {note.instrument_str!r} here but "
                            f"{known!r} in the checkpoint (another dataset?)")
        if not 0 <= note.pitch < config.n_pitches:
            raise UserError(f"{data}: note {note.note_str} has pitch {note.pitch}, outside the "
                            f"checkpoint's 0..{config.n_pitches - 1}")
    rows = velocity_index(config.velocity_rows)
    bad = next((n for n in notes if n.velocity not in rows), None)
    if bad is not None:
        raise UserError(f"{data}: note {bad.note_str} has velocity {bad.velocity}, not one of the "
                        f"checkpoint's {tuple(v for v in config.velocity_rows if v)}")


def _select_notes(ckpt: Checkpoint, data, split, seed, families, sources, pitch_range):
    """(evaluated notes, the notes it trained on): the split as in training, checked against the
    checkpoint.  A final model (`train --train-split train+valid`) is not scored on valid, and its
    sampler baseline draws from the same notes it trained on."""
    if split not in ("train", "valid", "test", "all"):
        raise UserError(f"split must be train, valid, test or all, got {split!r}")
    trained_on = trained_splits(ckpt, split)
    notes = filter_notes(read_examples(data), families or None, sources or None, pitch_range or None)
    splits = split_notes(notes, seed=seed)
    chosen = notes if split == "all" else splits[split]
    if not chosen:
        raise UserError(f"{data}: the {split} split is empty")
    check_notes(ckpt, data, chosen)
    return chosen, join_splits(notes, splits, trained_on)


def _example_indices(notes, has_baseline, n_examples) -> list:
    """Up to n_examples notes to draw: notes with a baseline first, one per (instrument, pitch)
    group (its velocity nearest 100) spread evenly over the sorted split, then second picks..."""
    if n_examples <= 0:
        return []
    pool = [i for i in range(len(notes)) if has_baseline[i]] or list(range(len(notes)))
    groups = defaultdict(list)
    for i in pool:
        groups[notes[i].instrument_str, notes[i].pitch].append(i)
    rounds = defaultdict(list)   # round r: the r-th pick of every group
    for members in groups.values():
        for r, i in enumerate(sorted(members, key=lambda i: (abs(notes[i].velocity - 100), i))):
            rounds[r].append(i)
    chosen = []
    for r in sorted(rounds):
        want, here = n_examples - len(chosen), sorted(rounds[r])
        step = len(here) / want
        chosen += here if len(here) <= want else [here[int(k * step + step / 2)] for k in range(want)]
        if len(chosen) >= n_examples:
            break
    return sorted(chosen)


def evaluate(ckpt, data, split: str = "test", seed: int = 0, report=None, n_examples: int = 6,
             batch_size: int = 16, device="cpu", families=None, sources=None, pitch_range=None,
             loss: str = "l1", progress: bool = False) -> dict:
    """Evaluates SING on a split of an NSynth folder against the sampler baseline.

    `ckpt`: a `Checkpoint` or a path to one. `split`, `seed` (and the filters) select notes as
    training did. SING renders in fp32 (the fast GEMM path, same numbers as the model).
    Per note: spectral L1 (`SpectralLoss("l1")`, the paper's) of SING and of the baseline against
    the real note; f0 error in cents of SING, the baseline and the real note against the MIDI pitch;
    RMS level in dB; and the mean training loss `loss` ("l1", "mse" or "waveform") of SING over
    all notes (what `sing-synth eval` prints). Returns {"summary": {...}, "per_velocity": [...],
    "notes": [one dict per note], "checkpoint", "data", "split", ...}; with `report`, writes `report/report.md`, `report/metrics.json` and spectrogram PNGs
    (target / SING / baseline) of `n_examples` notes.
    """
    ckpt_path = None
    if not isinstance(ckpt, Checkpoint):
        ckpt_path, ckpt = str(ckpt), load_checkpoint(ckpt)
    config = ckpt.model.config
    notes, train_notes = _select_notes(ckpt, data, split, seed, families, sources, pitch_range)
    if report is not None:   # fail before the long part, not after it
        _make_folder(report)
    index = baseline_index(train_notes)
    sources_of = [baseline_source(index, n) for n in notes]
    examples = set(_example_indices(notes, [s is not None for s in sources_of], n_examples))

    dataset = NSynthDataset(data, notes, velocity_rows=config.velocity_rows,
                            sample_rate=config.sample_rate, length=config.length)
    criterion = SpectralLoss("l1")
    try:
        training_loss = SpectralLoss(loss)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    loss_total = 0.0

    rows, waves = [], {}
    begin = 0
    levels = checkpoint_levels(ckpt)
    for target, sing, instrument, pitch, _ in rendered_batches(
            ckpt.model, dataset, batch_size, device, progress=f"eval {split}" if progress else ""):
        level_sing = window_db(sing.numpy(), config.sample_rate)
        level_target = window_db(target.numpy(), config.sample_rate)
        correction = np.zeros(len(target)) if levels is None else levels.db_of_ids(instrument, pitch)
        chunk = notes[begin:begin + len(target)]
        loss_total += training_loss(sing, target).item() * len(target)
        baselines = [None if sources_of[begin + k] is None else
                     baseline_note(index, note, data, length=config.length,
                                   sample_rate=config.sample_rate)
                     for k, note in enumerate(chunk)]
        for k, note in enumerate(chunk):
            i = begin + k
            t, s, b = target[k:k + 1], sing[k:k + 1], baselines[k]
            row = {
                "note": note.note_str, "instrument": note.instrument_str, "pitch": note.pitch,
                "velocity": note.velocity,
                "baseline_source": None if sources_of[i] is None else sources_of[i].note_str,
                "l1_sing": criterion(s, t).item(),
                "l1_baseline": None if b is None else criterion(torch.from_numpy(b)[None], t).item(),
                "cents_sing": cents_error(estimate_f0(s[0].numpy(), config.sample_rate), note.pitch),
                "cents_baseline": None if b is None else
                cents_error(estimate_f0(b, config.sample_rate), note.pitch),
                "cents_target": cents_error(estimate_f0(t[0].numpy(), config.sample_rate), note.pitch),
                "db_sing": rms_db(s[0].numpy()), "db_target": rms_db(t[0].numpy()),
                "db_baseline": None if b is None else rms_db(b),
                "level_sing": float(level_sing[k]), "level_target": float(level_target[k]),
                "level_correction": float(correction[k]),
                "offharm_sing": offharmonic_db(s[0].numpy(), note.pitch, config.sample_rate),
                "offharm_target": offharmonic_db(t[0].numpy(), note.pitch, config.sample_rate),
                "offharm_baseline": None if b is None else
                offharmonic_db(b, note.pitch, config.sample_rate),
                "fund_sing": fundamental_cents(s[0].numpy(), note.pitch, config.sample_rate),
                "fund_target": fundamental_cents(t[0].numpy(), note.pitch, config.sample_rate),
                "fund_baseline": None if b is None else
                fundamental_cents(b, note.pitch, config.sample_rate),
            }
            rows.append(row)
            if i in examples:
                waves[note.note_str] = (t[0].numpy(), s[0].numpy(), b)
        begin += len(target)

    result = _summarise(rows)
    result["summary"].update(loss=loss, loss_value=loss_total / len(rows))
    result.update(checkpoint=ckpt_path, data=str(data), split=split, seed=seed,
                  filters={"families": list(families or []), "sources": list(sources or []),
                           "pitch_range": list(pitch_range or [])},
                  examples=[])
    if report is not None:
        write_report(result, waves, report, config.sample_rate)
    return result


def _summarise(rows: list) -> dict:
    with_baseline = [r for r in rows if r["l1_baseline"] is not None]
    l1_sing_common = _mean([r["l1_sing"] for r in with_baseline])
    l1_baseline = _mean([r["l1_baseline"] for r in with_baseline])
    ratio = l1_sing_common / l1_baseline if with_baseline and l1_baseline > 0 else float("nan")
    summary = {
        "notes": len(rows),
        "notes_with_baseline": len(with_baseline),
        "instruments": len({r["instrument"] for r in rows}),
        "pitches": len({(r["instrument"], r["pitch"]) for r in rows}),
        "l1_sing": _mean([r["l1_sing"] for r in rows]),
        "l1_sing_with_baseline": l1_sing_common,
        "l1_baseline": l1_baseline,
        "l1_ratio": ratio,
        "sing_below_baseline": None if not np.isfinite(ratio) else bool(ratio < 1),
        "sing_wins_pct": (100.0 * sum(r["l1_sing"] < r["l1_baseline"] for r in with_baseline)
                          / len(with_baseline)) if with_baseline else float("nan"),
    }
    for who in ("sing", "baseline", "target"):
        pool = with_baseline if who == "baseline" else rows
        pitch = _pitch_summary([r[f"cents_{who}"] for r in pool])
        summary.update({f"{key}_{who}": value for key, value in pitch.items()})
        summary[f"offharm_db_{who}"] = _median([r[f"offharm_{who}"] for r in pool])
    summary.update(_bass_summary(rows, with_baseline))
    summary.update(_level_summary(rows, calibrated=any(r["level_correction"] for r in rows)))
    per_velocity = []
    for velocity in sorted({r["velocity"] for r in rows}):
        group = [r for r in rows if r["velocity"] == velocity]
        per_velocity.append({"velocity": velocity, "notes": len(group),
                             "db_sing": _mean([r["db_sing"] for r in group]),
                             "db_target": _mean([r["db_target"] for r in group]),
                             "db_baseline": _mean([r["db_baseline"] for r in group])})
    summary["loudness_rises_sing"] = _rises([v["db_sing"] for v in per_velocity])
    summary["loudness_rises_target"] = _rises([v["db_target"] for v in per_velocity])
    db_s = _finite([v["db_sing"] for v in per_velocity])
    db_t = _finite([v["db_target"] for v in per_velocity])
    summary["db_error_per_velocity"] = (float(np.mean(np.abs(db_s - db_t)))
                                        if len(db_s) == len(db_t) == len(per_velocity) and db_s.size
                                        else float("nan"))
    return {"summary": summary, "per_velocity": per_velocity, "per_instrument": _per_instrument(rows),
            "notes": rows}


def _level_summary(rows: list, calibrated: bool) -> dict:
    """Level over `levels.WINDOW_S` (what the presets' gains assume): SING's error against the real
    note (target - SING, dB), raw and with the checkpoint's level correction; and how far apart the
    instruments' median errors lie (a preset switch jumps by up to that)."""
    instrument = np.asarray([r["instrument"] for r in rows])
    raw = np.asarray([r["level_target"] - r["level_sing"] for r in rows])
    left = raw - np.asarray([r["level_correction"] for r in rows])
    return {"level_calibrated": calibrated,
            "level_error_median_db": float(np.median(raw)),
            "level_error_mean_abs_db": float(np.mean(np.abs(raw))),
            "level_spread_db": spread_db(instrument, raw),
            "level_error_median_db_calibrated": float(np.median(left)) if calibrated else None,
            "level_error_mean_abs_db_calibrated": float(np.mean(np.abs(left))) if calibrated else None,
            "level_spread_db_calibrated": spread_db(instrument, left) if calibrated else None}


def level_line(s: dict) -> str:
    """One line on the level errors of `_level_summary`."""
    f = _formatter("n/a")
    line = (f"level 0.1-0.6 s, real note minus SING: median {f(s['level_error_median_db'], '+.1f')} dB, "
            f"mean |error| {f(s['level_error_mean_abs_db'], '.1f')} dB, instruments' medians "
            f"{f(s['level_spread_db'], '.1f')} dB apart")
    if not s["level_calibrated"]:
        return line + "; the checkpoint has no level calibration (`sing-synth calibrate`)"
    return (line + f"; with the checkpoint's level calibration: median "
            f"{f(s['level_error_median_db_calibrated'], '+.1f')} dB, mean |error| "
            f"{f(s['level_error_mean_abs_db_calibrated'], '.1f')} dB, "
            f"{f(s['level_spread_db_calibrated'], '.1f')} dB apart")


def _bass_summary(rows: list, with_baseline: list) -> dict:
    """Bass notes (f0 < BASS_HZ): how far the fundamental partial of SING and of the baseline lies
    from the real note's (`fundamental_cents`): median |cents| and the share within PARTIAL_OK (a
    fundamental not found counts as out of place)."""
    def bass(pool):
        return [r for r in pool if midi_frequency(r["pitch"]) < BASS_HZ]
    out = {"bass_notes": len(bass(rows))}
    for who, pool in (("sing", bass(rows)), ("baseline", bass(with_baseline))):
        errors = [abs(r[f"fund_{who}"] - r["fund_target"]) for r in pool
                  if r.get(f"fund_{who}") is not None and r.get("fund_target") is not None]
        errors = np.asarray(errors, dtype=np.float64)
        out[f"bass_fund_median_cents_{who}"] = _median(errors)
        out[f"bass_fund_within_pct_{who}"] = (100.0 * float(np.sum(errors <= PARTIAL_OK)) / len(pool)
                                              if pool else float("nan"))
    return out


def _per_instrument(rows: list) -> list:
    """Per instrument: notes, SING in tune (%), median off-harmonic dB of SING and of the real note,
    mean spectral L1 of SING and of the baseline."""
    out = []
    for name in sorted({r["instrument"] for r in rows}):
        group = [r for r in rows if r["instrument"] == name]
        pitch = _pitch_summary([r["cents_sing"] for r in group])
        out.append({
            "instrument": name, "notes": len(group),
            "within_50_cents_pct_sing": pitch["within_50_cents_pct"],
            "offharm_db_sing": _median([r["offharm_sing"] for r in group]),
            "offharm_db_target": _median([r["offharm_target"] for r in group]),
            "l1_sing": _mean([r["l1_sing"] for r in group]),
            "l1_baseline": _mean([r["l1_baseline"] for r in group]),
        })
    return out


# ---------------------------------------------------------------------------------------------
# Report

def verdict(summary: dict) -> str:
    """One line: is SING below the sampler baseline on these notes, and by how much."""
    ratio = summary["l1_ratio"]
    if not np.isfinite(ratio):
        return "SING vs baseline: no note of this split has a baseline (no train note of the same " \
               "instrument and velocity), so the comparison cannot be made."
    s, b = summary["l1_sing_with_baseline"], summary["l1_baseline"]
    if ratio < 1:
        return (f"SING is below the baseline: mean spectral L1 {s:.4f} vs {b:.4f}, "
                f"{100 * (1 - ratio):.1f}% lower (ratio {ratio:.3f}); target met.")
    return (f"SING is NOT below the baseline: mean spectral L1 {s:.4f} vs {b:.4f}, "
            f"{100 * (ratio - 1):.1f}% higher (ratio {ratio:.3f}); SING's L1 must fall by "
            f"{s - b:.4f} ({100 * (1 - 1 / ratio):.1f}%) to reach the baseline.")


def _formatter(missing: str):
    """format(value, spec), `missing` for None/nan, and no "-0.0"."""
    def f(value, spec=".4f"):
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return missing
        text = format(value, spec)
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return f


def summary_lines(result: dict) -> list:
    """The summary numbers, one per line (what `sing-synth eval --report` prints)."""
    s = result["summary"]
    f = _formatter("n/a")

    velocities = ", ".join(f"{v['velocity']}: {f(v['db_sing'], '.1f')}/{f(v['db_target'], '.1f')}"
                           for v in result["per_velocity"])
    return [
        f"notes: {s['notes']} ({s['notes_with_baseline']} with a baseline), "
        f"{s['instruments']} instruments, {s['pitches']} (instrument, pitch) groups",
        f"spectral L1 SING: {f(s['l1_sing'])} (on notes with a baseline: {f(s['l1_sing_with_baseline'])})",
        f"spectral L1 baseline: {f(s['l1_baseline'])}",
        f"L1 ratio SING/baseline: {f(s['l1_ratio'], '.3f')}; SING closer on {f(s['sing_wins_pct'], '.1f')}% of notes",
        f"pitch within {CENTS_OK:.0f} cents: SING {f(s['within_50_cents_pct_sing'], '.1f')}%, "
        f"baseline {f(s['within_50_cents_pct_baseline'], '.1f')}%, target {f(s['within_50_cents_pct_target'], '.1f')}%",
        f"median |cents|: SING {f(s['median_abs_cents_sing'], '.1f')}, "
        f"baseline {f(s['median_abs_cents_baseline'], '.1f')}, target {f(s['median_abs_cents_target'], '.1f')}",
        f"power between the harmonics, median dB against on them: SING {f(s['offharm_db_sing'], '.1f')}, "
        f"baseline {f(s['offharm_db_baseline'], '.1f')}, target {f(s['offharm_db_target'], '.1f')}",
        f"bass fundamentals (f0 < {BASS_HZ:.0f} Hz, {s['bass_notes']} notes) within {PARTIAL_OK:.0f} cents "
        f"of the real note's: SING {f(s['bass_fund_within_pct_sing'], '.1f')}%, baseline "
        f"{f(s['bass_fund_within_pct_baseline'], '.1f')}%; median |cents| SING "
        f"{f(s['bass_fund_median_cents_sing'], '.1f')}, baseline {f(s['bass_fund_median_cents_baseline'], '.1f')}",
        f"RMS dB per velocity (SING/target): {velocities}; rises with velocity: "
        f"SING {s['loudness_rises_sing']}, target {s['loudness_rises_target']}",
        level_line(s),
        verdict(s),
    ]


def _jsonable(value):
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _jsonable(value.item())
    return value


def _file_name(note_str: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", note_str) + ".png"


def power_db(wave, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Power spectrogram in dB, 10 log10(|STFT|^2) (the loss's STFT): `[n_fft // 2 + 1, frames]`."""
    wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))[None]
    spec = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), center=False,
                      return_complex=True)[0]
    return (10 * torch.log10(spec.abs() ** 2 + 1e-10)).numpy()


def plot_spectrograms(path, title: str, waves: tuple, sample_rate: int) -> None:
    """Target / SING / baseline power spectrograms (dB) side by side, on one colour scale: the
    loudest bin of the three at the top, 90 dB below it at the bottom."""
    from matplotlib.figure import Figure   # no pyplot: no global state, no GUI backend

    labels = ("target", "SING", "baseline")
    specs = [None if w is None else power_db(w) for w in waves]
    vmax = max(float(s.max()) for s in specs if s is not None)
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    image = None
    for ax, label, spec, wave in zip(axes, labels, specs, waves):
        if spec is None:
            ax.text(0.5, 0.5, "no baseline\n(no train note of this\ninstrument and velocity)",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label)
            continue
        seconds = len(wave) / sample_rate
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=vmax - 90, vmax=vmax,
                          extent=(0, seconds, 0, sample_rate / 2000))
        ax.set_title(label)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="power (dB)")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)


def _make_folder(path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the report folder ({exc.strerror or exc})") from None
    return path


def write_report(result: dict, waves: dict, out, sample_rate: int = 16000) -> Path:
    """Writes `out/report.md`, `out/metrics.json` and `out/<note>.png`; fills result["examples"]."""
    out = _make_folder(out)
    by_note = {r["note"]: r for r in result["notes"]}
    plotted, plot_note = [], ""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plot_note = "Spectrograms skipped: matplotlib is not installed (`pip install 'sing-synth[eval]'`)."
    else:
        for note_str, three in waves.items():
            name = _file_name(note_str)
            r = by_note[note_str]
            plot_spectrograms(out / name, f"{note_str}: L1 SING {r['l1_sing']:.3f}"
                              + ("" if r["l1_baseline"] is None else f", baseline {r['l1_baseline']:.3f}"),
                              three, sample_rate)
            plotted.append({"note": note_str, "png": name})
    result["examples"] = plotted
    s = result["summary"]
    f = _formatter("–")

    lines = [
        "# SING evaluation", "",
        f"- checkpoint: `{result['checkpoint'] or '(in memory)'}`",
        f"- data: `{result['data']}`",
        f"- split: {result['split']} (seed {result['seed']}); notes {s['notes']}, with a baseline "
        f"{s['notes_with_baseline']}; instruments {s['instruments']}; (instrument, pitch) groups {s['pitches']}",
    ]
    filters = {k: v for k, v in result.get("filters", {}).items() if v}
    if filters:
        lines.append(f"- filters: {filters}")
    lines += [
        "", f"**{verdict(s)}**", "",
        "Baseline: what a sampler plays, the nearest train pitch of the same instrument and velocity "
        "resampled (soxr) to the target pitch. Spectral L1: mean |log(1+|X|²) − log(1+|Y|²)| "
        "(STFT 1024/256), the paper's loss; SING and baseline are compared on the notes that have a baseline.",
        "", "## Spectral distance to the real note", "",
        "| | SING | baseline |", "|---|---|---|",
        f"| mean spectral L1 (notes with a baseline) | {f(s['l1_sing_with_baseline'])} | {f(s['l1_baseline'])} |",
        f"| mean spectral L1 (all notes) | {f(s['l1_sing'])} | – |",
        f"| ratio SING / baseline | {f(s['l1_ratio'], '.3f')} | 1 |",
        f"| notes where it is the closer one | {f(s['sing_wins_pct'], '.1f')}% | "
        f"{f(100 - s['sing_wins_pct'], '.1f')}% |",
        "", "## Pitch (YIN f0 against the MIDI pitch)", "",
        "| | SING | baseline | target (real note) |", "|---|---|---|---|",
    ]
    for key, label, spec in (("within_50_cents_pct", f"within {CENTS_OK:.0f} cents (%)", ".1f"),
                             ("within_50_cents_any_octave_pct", "within 50 cents, any octave (%)", ".1f"),
                             ("median_abs_cents", "median abs error (cents)", ".1f"),
                             ("pitch_found_pct", "f0 found (%)", ".1f")):
        lines.append(f"| {label} | {f(s[key + '_sing'], spec)} | {f(s[key + '_baseline'], spec)} | "
                     f"{f(s[key + '_target'], spec)} |")
    lines += [
        "", "## Between the harmonics", "",
        "Power between the harmonics of the MIDI pitch against the power on them (median over the "
        "notes, dB; `evaluate.offharmonic_db`): subharmonics, SING's 62.5 Hz frame-rate buzz and "
        "noise, what makes a rendering read an octave low.", "",
        "| | SING | baseline | target (real note) |", "|---|---|---|---|",
        f"| median dB | {f(s['offharm_db_sing'], '.1f')} | {f(s['offharm_db_baseline'], '.1f')} | "
        f"{f(s['offharm_db_target'], '.1f')} |",
        "", f"## Bass fundamentals (notes below {BASS_HZ:.0f} Hz)", "",
        "YIN reads a note's period, which its upper harmonics carry: it can read a bass note in "
        "tune whose fundamental is not. This is where the partial nearest f0 lies against the "
        "real note's (`evaluate.fundamental_cents`): SING's decoder overlap-adds frames at 62.5 Hz, "
        "and a bass fundamental near that rate can come out on it.", "",
        f"| {s['bass_notes']} bass notes | SING | baseline |", "|---|---|---|",
        f"| fundamental within {PARTIAL_OK:.0f} cents of the real note's (%) | "
        f"{f(s['bass_fund_within_pct_sing'], '.1f')} | {f(s['bass_fund_within_pct_baseline'], '.1f')} |",
        f"| median abs distance (cents) | {f(s['bass_fund_median_cents_sing'], '.1f')} | "
        f"{f(s['bass_fund_median_cents_baseline'], '.1f')} |",
        "", "## Per instrument", "",
        "| instrument | notes | SING within 50 cents (%) | between harmonics, SING (dB) | "
        "target (dB) | spectral L1 SING | baseline |", "|---|---|---|---|---|---|---|",
    ]
    for r in result.get("per_instrument", []):
        lines.append(f"| {r['instrument']} | {r['notes']} | {f(r['within_50_cents_pct_sing'], '.1f')} | "
                     f"{f(r['offharm_db_sing'], '.1f')} | {f(r['offharm_db_target'], '.1f')} | "
                     f"{f(r['l1_sing'])} | {f(r['l1_baseline'])} |")
    lines += [
        "", "## Loudness against velocity (mean RMS, dB re full scale)", "",
        "| velocity | notes | SING | target | baseline |", "|---|---|---|---|---|",
    ]
    for v in result["per_velocity"]:
        lines.append(f"| {v['velocity']} | {v['notes']} | {f(v['db_sing'], '.1f')} | "
                     f"{f(v['db_target'], '.1f')} | {f(v['db_baseline'], '.1f')} |")
    lines += ["", f"Rises with velocity: SING {s['loudness_rises_sing']}, target "
              f"{s['loudness_rises_target']}; mean |SING − target| over velocities "
              f"{f(s['db_error_per_velocity'], '.1f')} dB (SING's raw output).", "",
              f"The presets' gains assume SING plays at its training notes' level; {level_line(s)}.",
              "", "## Examples", ""]
    if plot_note:
        lines.append(plot_note)
    for example in plotted:
        r = by_note[example["note"]]
        lines += [f"### {r['note']}", "",
                  f"L1 SING {f(r['l1_sing'])}, baseline {f(r['l1_baseline'])} (from "
                  f"{r['baseline_source'] or 'none'}); cents SING {f(r['cents_sing'], '.1f')}, "
                  f"baseline {f(r['cents_baseline'], '.1f')}, target {f(r['cents_target'], '.1f')}; "
                  f"RMS dB SING {f(r['db_sing'], '.1f')}, target {f(r['db_target'], '.1f')}", "",
                  f"![{r['note']}: target / SING / baseline]({example['png']})", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out / "metrics.json", "w", encoding="utf-8") as fh:
        json.dump(_jsonable(result), fh, indent=1, allow_nan=False)
    return out / "report.md"
