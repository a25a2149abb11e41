"""SING composed: the sequence generator feeding the convolutional decoder; and the autoencoder."""
import torch
from torch import nn

from .config import SingConfig
from .decoder import ConvDecoder, ConvEncoder
from .sequence import SequenceGenerator


class SING(nn.Module):
    """Symbols -> 4-second note in one pass (reference fp32 path; see `fast.FastRenderer` for inference).

    Shape:
        instrument: `[B]` ids or `[B, n_instruments]` blend weights; pitch, velocity: `[B]`
        output: `[B, length]`
    """

    def __init__(self, config: SingConfig):
        super().__init__()
        self.config = config
        self.sequence_generator = SequenceGenerator(config)
        self.decoder = ConvDecoder(config)

    def forward(self, instrument, pitch, velocity):
        embeddings = self.sequence_generator(instrument, pitch, velocity)
        return self.decoder(embeddings.transpose(1, 2))


class Autoencoder(nn.Module):
    """Encoder + the SING decoder, trained first so the decoder learns to make sound.

    Shape: `[B, length]` -> `[B, length]`
    """

    def __init__(self, encoder: ConvEncoder, decoder: ConvDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, wave):
        return self.decoder(self.encoder(wave))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def symbols_tensor(values, device=None) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long, device=device)
