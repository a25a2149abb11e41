"""SING's sizes in one dataclass, and the named sizes the project ships."""
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class SingConfig:
    # rows of the instrument table: 1 + the largest instrument id in the data
    n_instruments: int = 1006
    # rows of the pitch table; the raw MIDI number is the index, so 128 covers every key
    n_pitches: int = 128
    # MIDI velocity of each velocity-table row; 0 marks a row no note uses (the original had one)
    velocity_rows: tuple = (25, 50, 75, 100, 127)
    # embedding sizes of the instrument, pitch, velocity and time tables
    instrument_dim: int = 16
    pitch_dim: int = 8
    velocity_dim: int = 2
    time_dim: int = 4
    # harmonics of each note's pitch whose phase at every frame (cos, sin) also feeds the LSTM; 0 is
    # SING as published.  The decoder's frames start 62.5 times a second, so a partial at f needs
    # embeddings that turn at f - 62.5 k Hz: for bass partials that is a slow oscillation the LSTM
    # does not make on its own (their fundamentals land on a comb around 62.5 Hz).
    phase_harmonics: int = 0
    # the sequence generator: a stacked LSTM, then Linear(hidden -> embedding_dim) per step
    lstm_hidden: int = 1024
    lstm_layers: int = 3
    # size of the frame embedding shared by the encoder, the LSTM and the decoder
    embedding_dim: int = 128
    # decoder (and encoder) channels
    channels: int = 4096
    # kernel of the decoder's first convolution, which turns `steps` embeddings into steps - kernel + 1
    kernel: int = 9
    # number of frame embeddings per note (time steps of the LSTM)
    steps: int = 265
    # length of one decoded frame and the hop between frames, in samples
    frame: int = 1024
    stride: int = 256
    # audio sample rate in Hz
    sample_rate: int = 16000

    @property
    def n_velocities(self) -> int:
        return len(self.velocity_rows)

    @property
    def length(self) -> int:
        """Samples per note: the transposed conv gives (steps - kernel + 2) * stride - frame samples
        (padding frame - stride), of which frame / 2 are trimmed at each end; 64,000 for the reference."""
        return (self.steps - self.kernel + 2) * self.stride - 2 * self.frame

    @property
    def encoder_padding(self) -> int:
        """Zeros added at each end of a note so that the encoder yields exactly `steps` embeddings."""
        total = (self.steps - 1) * self.stride + self.frame - self.length
        return total // 2

    def velocity_row(self, velocity: int) -> int:
        """The row whose MIDI velocity is nearest to `velocity` (1..127)."""
        used = [(abs(v - velocity), row) for row, v in enumerate(self.velocity_rows) if v > 0]
        return min(used)[1]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["velocity_rows"] = list(self.velocity_rows)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        data = dict(data)
        if "velocity_rows" in data:
            data["velocity_rows"] = tuple(int(v) for v in data["velocity_rows"])
        return cls(**data)


SIZES = {
    "full": SingConfig(),
    "base": SingConfig(lstm_hidden=512, channels=2048),
    "small": SingConfig(lstm_hidden=256, channels=1024),
}


def named_config(size: str, **overrides) -> SingConfig:
    """A named size ('full', 'base', 'small') with some fields replaced."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)
