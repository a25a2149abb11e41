"""The sequence generator: symbols -> one frame embedding per time step."""
import math

import torch
from torch import nn

from .config import SingConfig


# The phase inputs are cos/sin times this.  Their LSTM weights start at zero (a model widened from
# one without them renders as before); Adam moves a weight by about the learning rate per step
# whatever its input, so a larger input lets those weights reach a useful size in fewer steps.
PHASE_GAIN = 8.0


def pitch_phases(config: SingConfig) -> torch.Tensor:
    """cos and sin of the phase of harmonics 1..K of every MIDI pitch (equal temperament, A4 =
    440 Hz) at the start of every frame (frame n starts at sample n * stride), K = `phase_harmonics`.

    Shape: `[n_pitches, steps, 2 K]` float32
    """
    pitches = torch.arange(config.n_pitches, dtype=torch.float64)
    cycles_per_frame = 440.0 * 2.0 ** ((pitches - 69) / 12) * config.stride / config.sample_rate
    frames = torch.arange(config.steps, dtype=torch.float64)
    harmonics = torch.arange(1, config.phase_harmonics + 1, dtype=torch.float64)
    # whole turns dropped before the angle, in float64, so late frames of high notes stay exact
    turns = torch.frac(cycles_per_frame[:, None, None] * frames[None, :, None] * harmonics)
    angle = 2 * math.pi * turns
    # cos 1, sin 1, cos 2, sin 2 ...: more harmonics append columns (`widen_phase_inputs`)
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1).flatten(-2).float()


def widen_phase_inputs(state: dict, harmonics: int) -> dict:
    """A SING state dict with fewer phase harmonics made to fit a model with `harmonics`: the
    LSTM's first layer gets zero weights for the new inputs, so it renders exactly as before and
    training starts from there.  Returns a new dict."""
    name = "sequence_generator.lstm.weight_ih_l0"
    weight = state[name]
    missing = 2 * harmonics - (weight.shape[1] - _base_inputs(state))
    if missing < 0:
        raise ValueError(f"the state has more than {harmonics} phase harmonics")
    return {**state, name: torch.cat([weight, weight.new_zeros(weight.shape[0], missing)], dim=1)}


def _base_inputs(state: dict) -> int:
    """LSTM inputs other than the phases: the widths of the four tables."""
    tables = [f"sequence_generator.tables.{i}.weight" for i in range(3)] + ["sequence_generator.time_table.weight"]
    return sum(state[name].shape[1] for name in tables)


class SequenceGenerator(nn.Module):
    """Lookup tables, a stacked LSTM and a Linear to the frame embedding.

    The LSTM is not autoregressive: every step sees the same instrument, pitch and velocity
    embeddings, and only the time embedding changes (and, with `phase_harmonics` > 0, the phase
    of the pitch's harmonics at each frame, `pitch_phases`: a table computed, not learned).
    Parameter names follow the original checkpoint (`tables.{0,1,2}`, `time_table`, `lstm`,
    `decoder`) so it loads directly.

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
        base_dim = config.instrument_dim + config.pitch_dim + config.velocity_dim + config.time_dim
        self.lstm = nn.LSTM(base_dim + 2 * config.phase_harmonics, config.lstm_hidden, config.lstm_layers,
                            batch_first=True)
        if config.phase_harmonics:
            self.register_buffer("phases", PHASE_GAIN * pitch_phases(config), persistent=False)
            with torch.no_grad():
                self.lstm.weight_ih_l0[:, base_dim:] = 0
        self.decoder = nn.Linear(config.lstm_hidden, config.embedding_dim)

    def symbols(self, instrument, pitch, velocity) -> torch.Tensor:
        """The per-note part of the LSTM input. Shape: `[B, instrument_dim + pitch_dim + velocity_dim]`."""
        inst_table, pitch_table, vel_table = self.tables
        if instrument.is_floating_point():
            inst = instrument.to(inst_table.weight.dtype) @ inst_table.weight
        else:
            inst = inst_table(instrument)
        return torch.cat([inst, pitch_table(pitch), vel_table(velocity)], dim=-1)

    def run(self, symbols, pitch, start: int, steps: int, state=None):
        """Runs `steps` steps from time `start` for the notes of `symbols` (`self.symbols`) and
        `pitch` `[B]`; returns the embeddings `[B, steps, D]` and the LSTM state, so training can
        cut back-propagation between chunks."""
        times = torch.arange(start, start + steps, device=symbols.device)
        time_emb = self.time_table(times).unsqueeze(0).expand(symbols.shape[0], -1, -1)
        per_step = symbols.unsqueeze(1).expand(-1, steps, -1)
        parts = [per_step, time_emb.to(per_step.dtype)]
        if self.config.phase_harmonics:
            parts.append(self.phases[pitch, start:start + steps].to(per_step.dtype))
        hidden, state = self.lstm(torch.cat(parts, dim=-1), state)
        return self.decoder(hidden), state

    def forward(self, instrument, pitch, velocity) -> torch.Tensor:
        symbols = self.symbols(instrument, pitch, velocity)
        embeddings, _ = self.run(symbols, pitch, 0, self.config.steps)
        return embeddings
