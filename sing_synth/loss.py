"""SING's training loss: distance between log power spectrograms (or plain waveform MSE, the ablation)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .midi import midi_frequency


def between_harmonics(freqs: torch.Tensor, f0: torch.Tensor, bin_hz: float,
                      low_hz: float | None = None) -> torch.Tensor:
    """Which frequencies lie between the harmonics k * f0 of a pitch, from 0.4 f0 up (or from
    `low_hz` where that is lower): not within the Hann window's main lobe (2 bins) or 30 cents
    (stretched partials) of one.  `freqs` `[F]`, `f0` `[B, 1]` (or scalar) -> bool `[B, F]` (or `[F]`)."""
    k = torch.round(freqs / f0).clamp_min(1)
    width = torch.clamp(k * f0 * (2 ** (30 / 1200) - 1), min=2 * bin_hz)
    low = 0.4 * f0 if low_hz is None else torch.clamp(0.4 * f0, max=low_hz)
    return (freqs >= low) & ((freqs - k * f0).abs() > width)


class SpectralLoss(nn.Module):
    """Mean |log(1 + |STFT(x)|^2) - log(1 + |STFT(y)|^2)| (L1, the paper's) or its square (MSE).

    STFT: n_fft 1024, hop 256, periodic Hann, no centring (the paper's). `n_fft` may list several
    sizes, averaged: 1024-point bins are 15.6 Hz wide, so a decoder repeating one frame (a 62.5 Hz
    comb) costs almost nothing next to a 131 Hz tone; a 4096-point term tells them apart.
    `kind="waveform"` compares samples instead.

    `norm_db` (off by default): each pair is first scaled by the gain that brings the target's
    RMS to `norm_db` dBFS (the same gain for both, so the output must still match the target's
    level).  With eps = 1 a quiet note lies mostly under the floor: on the shipped model's data the
    decaying instruments above MIDI 66 (piano, harp, marimba; -46 dB RMS and falling) cost a tenth
    of what a sustained note does, so their octave errors barely move the loss.  Normalised, every
    note is weighed as if played at the same level.  The gain is capped at `max_gain_db`.

    `between_weight` (1 by default): the bins between the harmonics of each note's MIDI pitch
    (`between_harmonics`; the pitch goes to `forward`) weigh this much more than the others, the
    mean taken over the weights.  On the shipped model they are most of the bins but 7-21% of the
    loss: errors on the harmonics (levels, envelopes) outweigh its subharmonics and buzz there,
    which are what reads as octave errors.  `between_low_hz` lets the band start lower than 0.4 f0
    under high notes: a decoder's 62.5 Hz frame-rate buzz and its 125 Hz tooth lie far below the
    fundamental of MIDI 72 and read as its pitch once the note has decayed.

    `low_weight` (1 by default): the bins below `low_hz` weigh this much more (times the between
    weight).  They are ~2% of a 16384-point spectrum, so the loss barely sees a bass note's
    fundamental come out at the decoder's 62.5 Hz frame rate (a line plus ~7 Hz sidebands that
    fill a 4096-point bin) instead of 65.4 Hz.  Needs the pitch like `between_weight`.
    `comb_weight` (0 by default): adds that much of a term on the frame-rate comb: the spectrum
    (`hop`-point FFT) of the mean of the `hop`-sample stretches of the note, log power against
    the target's.  Only a part of the wave that repeats every hop survives the mean: the decoder
    makes it by repeating a frame, and it comes out at multiples of 62.5 Hz.  A bass partial
    pulled onto that comb (65.4 Hz -> 62.5) shares an STFT bin with the real one even at 8192
    points, so the STFT terms hardly tell them apart; here the real one averages away (it turns
    by 0.047 of a cycle per hop) and the repeated one does not.  Training only, like the weights.
    Shape: `[B, N]`, `[B, N]` (, pitch `[B]`) -> scalar
    """

    def __init__(self, kind: str = "l1", n_fft=1024, hop: int = 256, eps: float = 1.0,
                 norm_db: float | None = None, max_gain_db: float = 40.0, between_weight: float = 1.0,
                 between_low_hz: float | None = None, low_weight: float = 1.0, low_hz: float = 150.0,
                 comb_weight: float = 0.0, sample_rate: int = 16000):
        super().__init__()
        if kind not in ("l1", "mse", "waveform"):
            raise ValueError(f"unknown loss {kind!r}: choose l1, mse or waveform")
        self.kind = kind
        self.sizes = (n_fft,) if isinstance(n_fft, int) else tuple(n_fft)
        self.hop = hop
        self.eps = eps
        self.norm_db = norm_db
        self.max_gain_db = max_gain_db
        self.between_weight = float(between_weight)
        self.between_low_hz = between_low_hz
        self.low_weight = float(low_weight)
        self.low_hz = float(low_hz)
        self.comb_weight = float(comb_weight)
        self.sample_rate = sample_rate

    def gain(self, target: torch.Tensor) -> torch.Tensor:
        """`[B, N]` -> `[B, 1]`: the gain that brings each target to `norm_db` dBFS RMS."""
        rms = target.detach().float().pow(2).mean(dim=-1, keepdim=True).sqrt()
        gain = 10 ** (self.norm_db / 20) / rms.clamp_min(1e-8)
        return gain.clamp(max=10 ** (self.max_gain_db / 20))

    def log_power(self, wave: torch.Tensor, n_fft: int = 1024) -> torch.Tensor:
        """`[B, N]` -> `[B, n_fft // 2 + 1, frames]`."""
        # the STFT in fp32 even under autocast: log(1 + |X|^2) of bf16 spectra is too coarse
        window = torch.hann_window(n_fft, device=wave.device)
        return self._log(torch.stft(wave.float(), n_fft, self.hop, window=window, center=False,
                                    return_complex=True))

    def comb_log_power(self, wave: torch.Tensor) -> torch.Tensor:
        """`[B, N]` -> `[B, hop // 2 + 1]`: log power of the part of the wave that repeats every hop."""
        hops = wave.shape[-1] // self.hop
        repeated = wave[:, :hops * self.hop].float().reshape(wave.shape[0], hops, self.hop).mean(dim=1)
        return self._log(torch.fft.rfft(repeated))

    def _log(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.log(self.eps + spec.real ** 2 + spec.imag ** 2)

    def _error(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs() if self.kind == "l1" else diff.pow(2)

    def bin_weights(self, pitch, n_fft: int, device) -> torch.Tensor:
        """`[B]` MIDI pitches -> `[B, n_fft // 2 + 1, 1]` weights of the bins."""
        bin_hz = self.sample_rate / n_fft
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * bin_hz
        f0 = torch.from_numpy(midi_frequency(pitch.cpu().numpy())).view(-1, 1)
        between = between_harmonics(freqs, f0, bin_hz, self.between_low_hz)
        low = 1 + (self.low_weight - 1) * (freqs < self.low_hz).float()
        return ((1 + (self.between_weight - 1) * between.float()) * low).unsqueeze(-1).to(device)

    def forward(self, output: torch.Tensor, target: torch.Tensor, pitch=None) -> torch.Tensor:
        if self.kind == "waveform":
            return F.mse_loss(output.float(), target.float())
        if self.norm_db is not None:
            gain = self.gain(target)
            output, target = output.float() * gain, target.float() * gain
        total = 0.0
        for n_fft in self.sizes:
            diff = self.log_power(output, n_fft) - self.log_power(target, n_fft)
            error = self._error(diff)
            if pitch is None or self.between_weight == self.low_weight == 1:
                total = total + error.mean()
            else:
                weight = self.bin_weights(pitch, n_fft, error.device)
                total = total + (error * weight).mean() / weight.mean()
        total = total / len(self.sizes)
        if pitch is not None and self.comb_weight:
            diff = self.comb_log_power(output) - self.comb_log_power(target)
            total = total + self.comb_weight * self._error(diff).mean()
        return total
