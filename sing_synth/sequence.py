"""The sequence generator: symbols -> one frame embedding per time step."""
import torch
from torch import nn

from .config import SingConfig


class SequenceGenerator(nn.Module):
    """Lookup tables, a stacked LSTM and a Linear to the frame embedding.

    The LSTM is not autoregressive: every step sees the same instrument, pitch and velocity
    embeddings, and only the time embedding changes. Parameter names follow the original
    checkpoint (`tables.{0,1,2}`, `time_table`, `lstm`, `decoder`) so it loads directly.

    Shape:
        instrument: `[B]` ids, or `[B, n_instruments]` blend weights (morphing between instruments)
        pitch, velocity: `[B]` (MIDI pitch, velocity-table row)
        output: `[B, T, embedding_dim]`
    """

    def __init__(self, config: SingConfig):
        super().__init__()
        self.config = config
        self.tables = nn.ModuleList([
            nn.Embedding(config.n_instruments, config.instrument_dim),
            nn.Embedding(config.n_pitches, config.pitch_dim),
            nn.Embedding(config.n_velocities, config.velocity_dim),
        ])
        self.time_table = nn.Embedding(config.steps, config.time_dim)
        input_dim = config.instrument_dim + config.pitch_dim + config.velocity_dim + config.time_dim
        self.lstm = nn.LSTM(input_dim, config.lstm_hidden, config.lstm_layers, batch_first=True)
        self.decoder = nn.Linear(config.lstm_hidden, config.embedding_dim)

    def symbols(self, instrument, pitch, velocity) -> torch.Tensor:
        """The per-note part of the LSTM input. Shape: `[B, instrument_dim + pitch_dim + velocity_dim]`."""
        inst_table, pitch_table, vel_table = self.tables
        if instrument.is_floating_point():
            inst = instrument.to(inst_table.weight.dtype) @ inst_table.weight
        else:
            inst = inst_table(instrument)
        return torch.cat([inst, pitch_table(pitch), vel_table(velocity)], dim=-1)

    def run(self, symbols, start: int, steps: int, state=None):
        """Runs `steps` steps from time `start`; returns the embeddings `[B, steps, D]` and the LSTM state,
        so training can cut back-propagation between chunks."""
        times = torch.arange(start, start + steps, device=symbols.device)
        time_emb = self.time_table(times).unsqueeze(0).expand(symbols.shape[0], -1, -1)
        per_step = symbols.unsqueeze(1).expand(-1, steps, -1)
        inputs = torch.cat([per_step, time_emb.to(per_step.dtype)], dim=-1)
        hidden, state = self.lstm(inputs, state)
        return self.decoder(hidden), state

    def forward(self, instrument, pitch, velocity) -> torch.Tensor:
        embeddings, _ = self.run(self.symbols(instrument, pitch, velocity), 0, self.config.steps)
        return embeddings
