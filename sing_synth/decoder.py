"""The convolutional decoder (frame embeddings -> waveform) and the encoder of the autoencoder phase."""
import torch
from torch import nn
from torch.nn import functional as F

from .config import SingConfig


def squared_hann(length: int) -> torch.Tensor:
    """Periodic Hann window squared: frames overlap-added at stride length / 4 sum to a constant."""
    return torch.hann_window(length) ** 2


class WindowedConvTranspose1d(nn.Module):
    """ConvTranspose1d whose kernel is multiplied by a squared Hann window: a smooth overlap-add
    of one learnt frame per input step. Parameters `conv_tr.*` and buffer `window` as in the original.

    Shape: `[B, C, L]` -> `[B, out_channels, (L - 1) * stride + frame - 2 * padding]`
    """

    def __init__(self, in_channels: int, out_channels: int, frame: int, stride: int, padding: int):
        super().__init__()
        self.conv_tr = nn.ConvTranspose1d(in_channels, out_channels, frame, stride, padding=padding)
        self.register_buffer("window", squared_hann(frame))

    def forward(self, x):
        conv = self.conv_tr
        weight = conv.weight * self.window
        return F.conv_transpose1d(x, weight, conv.bias, conv.stride, conv.padding)


class WindowedConv1d(nn.Module):
    """Conv1d over frames of the waveform with a squared-Hann-windowed kernel (the encoder's analysis).

    Shape: `[B, in_channels, N]` -> `[B, out_channels, (N - frame) // stride + 1]`
    """

    def __init__(self, in_channels: int, out_channels: int, frame: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, frame, stride)
        self.register_buffer("window", squared_hann(frame))

    def forward(self, x):
        conv = self.conv
        return F.conv1d(x, conv.weight * self.window, conv.bias, conv.stride)


class ConvDecoder(nn.Module):
    """Frame embeddings -> waveform: conv(kernel) + ReLU, 2 x [1x1 conv + ReLU], windowed transposed conv,
    trimmed to `config.length` samples. Layer indices (`layers.0/2/4/6`) match the original checkpoint.

    Shape: `[B, embedding_dim, steps]` -> `[B, length]`
    """

    def __init__(self, config: SingConfig):
        super().__init__()
        self.config = config
        channels = config.channels
        self.layers = nn.Sequential(
            nn.Conv1d(config.embedding_dim, channels, config.kernel), nn.ReLU(),
            nn.Conv1d(channels, channels, 1), nn.ReLU(),
            nn.Conv1d(channels, channels, 1), nn.ReLU(),
            WindowedConvTranspose1d(channels, 1, config.frame, config.stride,
                                    padding=config.frame - config.stride),
        )

    def forward(self, embeddings):
        wave = self.layers(embeddings).squeeze(1)
        trim = self.config.frame // 2
        return wave[:, trim:trim + self.config.length]

    def _crop_offset(self) -> tuple:
        c = self.config
        # decoded frame j covers samples [j * stride, j * stride + frame) of the untrimmed output,
        # whose sample `offset` is the note's sample 0; a sample is whole once `overlap` more
        # frames have started
        return c.frame - c.stride + c.frame // 2, c.frame // c.stride - 1

    def crop_bounds(self, start: int, frames: int) -> tuple:
        """The note samples `[first, end)` that `forward_crop` makes from embeddings
        `[start, start + frames + kernel - 1)`."""
        offset, overlap = self._crop_offset()
        stride = self.config.stride
        return (start + overlap) * stride - offset, (start + frames) * stride - offset

    def crop_starts(self, frames: int) -> range:
        """The embedding indices a crop of `frames` decoded frames may start at (inside the note)."""
        offset, overlap = self._crop_offset()
        stride = self.config.stride
        return range(-(-offset // stride) - overlap, (self.config.length + offset) // stride - frames + 1)

    def forward_crop(self, embeddings):
        """Only the samples that every overlapping frame of this slice of embeddings reaches, exactly
        as `forward` makes them: training on random crops costs a fraction of a whole note.

        Shape: `[B, embedding_dim, frames + kernel - 1]` -> `[B, (frames - frame / stride + 1) * stride]`
        """
        c = self.config
        hidden = self.layers[:-1](embeddings)
        last = self.layers[-1]
        weight = last.conv_tr.weight * last.window
        wave = F.conv_transpose1d(hidden, weight, last.conv_tr.bias, c.stride).squeeze(1)
        return wave[:, c.frame - c.stride:hidden.shape[-1] * c.stride]


class ConvEncoder(nn.Module):
    """Waveform -> frame embeddings (autoencoder phase only): windowed conv(frame, stride) + ReLU,
    2 x [1x1 conv + ReLU], 1x1 conv to the embedding. The note is zero-padded so it gives `steps` frames.

    Shape: `[B, length]` -> `[B, embedding_dim, steps]`
    """

    def __init__(self, config: SingConfig):
        super().__init__()
        self.config = config
        channels = config.channels
        self.layers = nn.Sequential(
            WindowedConv1d(1, channels, config.frame, config.stride), nn.ReLU(),
            nn.Conv1d(channels, channels, 1), nn.ReLU(),
            nn.Conv1d(channels, channels, 1), nn.ReLU(),
            nn.Conv1d(channels, config.embedding_dim, 1),
        )

    def forward(self, wave):
        pad = self.config.encoder_padding
        return self.layers(F.pad(wave.unsqueeze(1), (pad, pad)))

    def forward_frames(self, wave, start: int, count: int):
        """Embeddings `[start, start + count)` only, from the samples they see.

        Shape: `[B, length]` -> `[B, embedding_dim, count]`
        """
        c = self.config
        padded = F.pad(wave.unsqueeze(1), (c.encoder_padding, c.encoder_padding))
        return self.layers(padded[..., start * c.stride:(start + count - 1) * c.stride + c.frame])
