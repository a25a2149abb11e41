"""SING's three training phases, resumable after a kill at any moment, on one or many processes.

1. autoencoder: encoder + decoder on waveforms, spectral loss;
2. sequence generator: the LSTM predicts the frozen encoder's embeddings (MSE), back-propagation
   truncated to `bptt` steps;
3. end to end: LSTM + decoder on the spectral loss of the rendered waveform.

A training state is written atomically after every epoch; `resume=True` starts after the last one.
Under `torchrun` each process takes a shard (DistributedSampler) and gradients are averaged (DDP).
"""
import csv
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from .checkpoint import atomic_save, checkpoint_from_payload, model_payload, load_checkpoint
from .config import named_config
from .data import filter_notes, instrument_names, load_split, read_examples
from .decoder import ConvEncoder
from .device import resolve_device
from .errors import UserError
from .loss import SpectralLoss
from .model import SING, Autoencoder
from .sequence import widen_phase_inputs

PHASES = ("autoencoder", "sequence", "end_to_end")
STATE_FILE = "train_state.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.csv"
METRICS_FIELDS = ["phase", "epoch", "train_loss", "valid_loss", "seconds", "notes"]


@dataclass
class TrainSettings:
    data: str                       # NSynth-format folder
    out: str                        # run folder: state, model.pt, metrics.csv
    size: str = "small"             # named size, see config.SIZES
    lstm_hidden: int = 0            # 0: the size's own
    lstm_layers: int = 0
    channels: int = 0
    steps: int = 0                  # 0: the size's own (265 frames, 4-s notes); fewer for short notes
    phase_harmonics: int = 0        # pitch harmonics whose phase feeds the LSTM (SingConfig); 0: none
    epochs: tuple = (50, 50, 20)    # per phase
    batch_size: tuple = (64, 64, 64)
    lr: float = 3e-4
    loss: str = "l1"                # l1 | mse | waveform
    resolutions: tuple = (1024,)    # STFT sizes of the spectral loss (the paper: 1024 alone)
    loss_eps: float = 1.0           # log(eps + |X|^2): the paper's 1; lower it for quiet data
                                    # (0.01 = the loss of notes 20 dB louder)
    loss_norm_db: float | None = None   # weigh every note at this RMS (SpectralLoss.norm_db)
    between_weight: float = 1.0     # training loss weight of the bins between the harmonics
                                    # (SpectralLoss.between_weight); validation stays unweighted
    between_low_hz: float | None = None  # where that band starts under high notes (default 0.4 f0)
    low_weight: float = 1.0         # training loss weight of the bins below low_hz (SpectralLoss)
    low_hz: float = 150.0
    comb_weight: float = 0.0        # training loss: weight of the frame-rate comb term (SpectralLoss)
    train_split: str = "train"      # "train+valid": a final model on every note but the test
                                    # split's (validation is then on notes it trained on)
    bptt: int = 32
    crop: int = 0                   # decoded frames per training example in phases 1 and 3 (a random
                                    # stretch of each batch's notes; ~3x faster at 64); 0: whole notes
    amp: bool = True                # bf16 autocast (CPU and CUDA)
    seed: int = 0                   # model init, shuffling and the split
    families: tuple = ()
    sources: tuple = ()
    pitch_range: tuple = ()
    in_memory: bool = True
    workers: int = 0
    device: str = ""                # "" picks the best: cuda, mps, cpu
    init_from: str = ""             # a checkpoint whose weights start the run (same config and
                                    # instruments): training goes on across machines/sessions
    oversample: tuple = ()          # ((instrument name part, weight), ...): notes of matching
                                    # instruments are drawn `weight` times as often (with replacement)
    oversample_pitches: tuple = ()  # (((lo, hi), weight), ...): the same for MIDI pitches lo..hi;
                                    # a note takes the largest weight it matches
    epoch_notes: int = 0            # notes drawn per epoch when oversampling (0: the train set's size)
    time_limit: float = 0.0         # minutes: no epoch starts that the last one's time says would
                                    # end past it (the state is saved; --resume goes on); 0: none
    progress: bool = True
    metadata: dict = field(default_factory=dict)


class SequenceChunk(nn.Module):
    """Phase 2 step as a module, so DDP sees the forward: symbols -> `steps` embeddings from `start`.

    Shape: instrument, pitch, velocity `[B]` -> `[B, steps, D]` and the LSTM state
    """

    def __init__(self, sequence_generator):
        super().__init__()
        self.sequence_generator = sequence_generator

    def forward(self, instrument, pitch, velocity, start: int, steps: int, state=None):
        seq = self.sequence_generator
        return seq.run(seq.symbols(instrument, pitch, velocity), pitch, start, steps, state)


class CroppedAutoencoder(nn.Module):
    """Phase 1 on a stretch of the notes: the encoder sees only the samples the crop needs.

    Shape: `[B, length]` -> `[B, samples of decoder.crop_bounds]`
    """

    def __init__(self, encoder: ConvEncoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, wave, start: int, frames: int):
        count = frames + self.decoder.config.kernel - 1
        return self.decoder.forward_crop(self.encoder.forward_frames(wave, start, count))


class CroppedSing(nn.Module):
    """Phase 3 on a stretch of the notes: the LSTM runs up to the crop's end (it looks only back),
    the decoder only over the crop.

    Shape: instrument, pitch, velocity `[B]` -> `[B, samples of decoder.crop_bounds]`
    """

    def __init__(self, model: SING):
        super().__init__()
        self.model = model

    def forward(self, instrument, pitch, velocity, start: int, frames: int):
        seq = self.model.sequence_generator
        end = start + frames + self.model.config.kernel - 1
        embeddings, _ = seq.run(seq.symbols(instrument, pitch, velocity), pitch, 0, end)
        return self.model.decoder.forward_crop(embeddings[:, start:].transpose(1, 2))


def crop_start(rng: random.Random, starts: range, width: int) -> int:
    """A crop start such that every sample of the note, the attack and the tail included, is
    trained about equally often (plain uniform starts would train the first hop `width` times less
    than the middle): the note is tiled by crops `width` starts apart (a crop's length in hops),
    the first `k` tiles laid from its start and the rest from its end, with `k` random so that the
    overlap the two make falls anywhere; then one tile is drawn."""
    count = len(starts)
    tiles = -(-(count - 1 + width) // width)
    if tiles < 2:
        return starts[0]
    k, tile = rng.randint(1, tiles - 1), rng.randrange(tiles)
    return starts[tile * width] if tile < k else starts[count - 1 - (tiles - 1 - tile) * width]


class Trainer:
    def __init__(self, settings: TrainSettings):
        self.settings = s = settings
        self.out = Path(s.out)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank, self.world = 0, 1
        self.device = resolve_device(s.device)
        if self.distributed:
            self._init_distributed()
        torch.manual_seed(s.seed)
        self._load_data()
        self.model = SING(self.config).to(self.device)
        self.encoder = ConvEncoder(self.config).to(self.device)
        self.loss = SpectralLoss(s.loss, n_fft=s.resolutions, eps=s.loss_eps, norm_db=s.loss_norm_db,
                                 between_weight=s.between_weight, between_low_hz=s.between_low_hz,
                                 low_weight=s.low_weight, low_hz=s.low_hz, comb_weight=s.comb_weight, sample_rate=self.config.sample_rate).to(self.device)
        self.phase, self.epoch = 0, 0     # next phase and the epochs it has finished
        self.optimizer = None
        self.crop_rng = random.Random(s.seed)
        self.stopped_early = False        # run() stopped at the time limit
        self._check_crop()
        if not s.between_weight > 0:
            raise UserError(f"--between-weight must be > 0, got {s.between_weight}")
        if s.between_low_hz is not None and not s.between_low_hz > 0:
            raise UserError(f"--between-low-hz must be > 0, got {s.between_low_hz}")
        if not s.comb_weight >= 0:
            raise UserError(f"--comb-weight must be >= 0, got {s.comb_weight}")
        if not (s.low_weight > 0 and s.low_hz > 0):
            raise UserError(f"--low-weight and --low-hz must be > 0, got {s.low_weight} and {s.low_hz}")
        self._check_oversample()

    # --- set-up -------------------------------------------------------------------------------
    def _init_distributed(self):
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)

    def _load_data(self):
        s = self.settings
        notes = read_examples(s.data)
        notes = filter_notes(notes, s.families or None, s.sources or None, s.pitch_range or None)
        if not notes:
            raise UserError(f"{s.data}: no notes left after the filters")
        self.instruments = instrument_names(notes)
        overrides = {"n_instruments": max(self.instruments) + 1}
        for name in ("lstm_hidden", "lstm_layers", "channels", "steps", "phase_harmonics"):
            if getattr(s, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(s, name)}")
            if getattr(s, name):
                overrides[name] = getattr(s, name)
        self.config = named_config(s.size, **overrides)
        common = dict(seed=s.seed, families=s.families or None, sources=s.sources or None,
                      pitch_range=s.pitch_range or None, velocity_rows=self.config.velocity_rows,
                      sample_rate=self.config.sample_rate, length=self.config.length,
                      in_memory=s.in_memory)
        self.train_set = load_split(s.data, s.train_split, **common)
        self.valid_set = load_split(s.data, "valid", **common)
        if len(self.train_set) == 0:
            raise UserError(f"{s.data}: the train split is empty")

    def _check_crop(self):
        frames = self.settings.crop
        if not frames:
            return
        first, end = self.model.decoder.crop_bounds(0, frames)
        if frames < 0 or end - first < max(self.settings.resolutions) or not self.model.decoder.crop_starts(frames):
            raise UserError(f"--crop {frames}: a crop must make at least {max(self.settings.resolutions)} "
                            f"samples (the largest STFT) and fit in a note")

    def note_weights(self, dataset) -> list:
        """Each note's sampling weight under ``oversample`` and ``oversample_pitches``: the largest
        weight among the name parts its instrument contains and the pitch ranges it lies in, else 1."""
        s = self.settings
        weights = []
        for note in dataset.notes:
            matched = [w for part, w in s.oversample if part in note.instrument_str]
            matched += [w for (lo, hi), w in s.oversample_pitches if lo <= note.pitch <= hi]
            weights.append(max(matched, default=1.0))
        return weights

    @property
    def oversampling(self) -> bool:
        return bool(self.settings.oversample or self.settings.oversample_pitches)

    def _check_oversample(self):
        s = self.settings
        if not self.oversampling:
            return
        if self.distributed:
            raise UserError("--oversample, --oversample-pitches: not with several processes (torchrun); train on one")
        names = {n.instrument_str for n in self.train_set.notes}
        pitches = {n.pitch for n in self.train_set.notes}
        checks = [(f"--oversample {part}={w:g}", w, any(part in name for name in names),
                   "no instrument of the train split has that name part") for part, w in s.oversample]
        checks += [(f"--oversample-pitches {lo}-{hi}={w:g}", w, any(lo <= p <= hi for p in pitches),
                    "no note of the train split has those pitches") for (lo, hi), w in s.oversample_pitches]
        for label, weight, found, missing in checks:
            if weight <= 0 or not found:
                raise UserError(f"{label}: " + ("the weight must be positive" if weight <= 0 else missing))

    def loader(self, dataset, batch_size, epoch_key, shuffle):
        if shuffle and self.oversampling:
            generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + epoch_key)
            sampler = WeightedRandomSampler(self.note_weights(dataset),
                                            self.settings.epoch_notes or len(dataset),
                                            replacement=True, generator=generator)
        else:
            sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank,
                                         shuffle=shuffle, seed=self.settings.seed, drop_last=False)
            sampler.set_epoch(epoch_key)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.settings.workers, drop_last=False)

    def phase_module(self, phase: int) -> nn.Module:
        cropped = self.settings.crop > 0
        if phase == 0:
            return (CroppedAutoencoder if cropped else Autoencoder)(self.encoder, self.model.decoder)
        if phase == 1:
            return SequenceChunk(self.model.sequence_generator)
        return CroppedSing(self.model) if cropped else self.model

    def autocast(self):
        if not self.settings.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # --- state --------------------------------------------------------------------------------
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def save_state(self):
        payload = model_payload(self.model, self.instruments, self.run_metadata())
        payload["training"] = {
            "phase": self.phase, "epoch": self.epoch,
            "encoder": self.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.settings).items()},
        }
        atomic_save(payload, self.state_path())
        atomic_save(model_payload(self.model, self.instruments, self.run_metadata()), self.out / MODEL_FILE)

    def load_state(self):
        payload = torch.load(self.state_path(), map_location="cpu", weights_only=True)
        ckpt = checkpoint_from_payload(payload, str(self.state_path()))
        if ckpt.model.config != self.config:
            raise UserError(f"{self.state_path()}: the saved model's config differs from this run's")
        self.model.load_state_dict(ckpt.model.state_dict())
        training = payload["training"]
        self.encoder.load_state_dict(training["encoder"])
        self.phase, self.epoch = training["phase"], training["epoch"]
        self.optimizer = self.make_optimizer(self.phase) if self.phase < len(PHASES) else None
        if self.optimizer and training["optimizer"]:
            self.optimizer.load_state_dict(training["optimizer"])
            for group in self.optimizer.param_groups:     # a resumed run may anneal: --lr rules
                group["lr"] = self.settings.lr

    def init_weights(self, path) -> None:
        """Starts from a checkpoint's weights (an fp16 shipped model is widened to fp32).  The
        encoder is not in a SING checkpoint: skip phase 1 (``--epochs 0,...``) or retrain it."""
        ckpt = load_checkpoint(path)
        theirs = ckpt.model.config.phase_harmonics
        if replace(ckpt.model.config, phase_harmonics=self.config.phase_harmonics) != self.config \
                or theirs > self.config.phase_harmonics:
            raise UserError(f"{path}: its config differs from this run's (size, steps, instruments, "
                            f"phase harmonics {theirs})")
        names = {int(k): str(v) for k, v in ckpt.instruments.items()}
        if names != {int(k): str(v) for k, v in self.instruments.items()}:
            raise UserError(f"{path}: its instruments differ from the data's")
        state = widen_phase_inputs(ckpt.model.state_dict(), self.config.phase_harmonics)
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})

    def run_metadata(self) -> dict:
        meta = dict(self.settings.metadata)
        meta.update(trained_on=str(self.settings.data), seed=self.settings.seed,
                    phase=self.phase, epoch=self.epoch, loss=self.settings.loss,
                    train_split=self.settings.train_split)
        return meta

    def make_optimizer(self, phase: int):
        return torch.optim.Adam(self.phase_module(phase).parameters(), lr=self.settings.lr)

    # --- metrics ------------------------------------------------------------------------------
    def trim_metrics(self):
        """Keeps only rows of epochs the saved state holds: a kill between the row and the state
        would otherwise leave a row for an epoch that is trained again."""
        path = self.out / METRICS_FILE
        rows = list(csv.DictReader(path.open())) if path.exists() else []
        done = [r for r in rows if (PHASES.index(r["phase"]), int(r["epoch"])) <= (self.phase, self.epoch)]
        self._write_rows(done, "w")

    def _write_rows(self, rows, mode):
        path = self.out / METRICS_FILE
        new = mode == "w" or not path.exists()
        with path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, METRICS_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    # --- training -----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Path:
        s = self.settings
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.state_path().exists():
            self.load_state()
        elif self.state_path().exists():
            raise UserError(f"{self.out}: a run is already there; pass --resume to continue it")
        elif s.init_from:
            self.init_weights(s.init_from)
        if self.rank == 0:
            self.trim_metrics()
        board = self._tensorboard()
        try:
            return self._run_phases(board)
        finally:
            if board:
                board.close()        # its writer thread flushes the last events

    def _run_phases(self, board) -> Path:
        s = self.settings
        deadline = time.monotonic() + 60 * s.time_limit if s.time_limit > 0 else None
        last_epoch_s = 0.0
        while self.phase < len(PHASES):
            if self.optimizer is None:
                self.optimizer = self.make_optimizer(self.phase)
            while self.epoch < s.epochs[self.phase]:
                if self._out_of_time(deadline, last_epoch_s):
                    self.stopped_early = True
                    return self._finish()
                began = time.monotonic()
                row = self.train_epoch()
                last_epoch_s = time.monotonic() - began
                self.epoch += 1
                if self.rank == 0:
                    self._write_rows([row], "a")
                    if board:
                        board.add_scalars(PHASES[self.phase], {"train": row["train_loss"],
                                                               "valid": row["valid_loss"]}, self.epoch)
                    self.save_state()
            # the state keeps (phase, its last epoch): resumed with more epochs, a finished run
            # goes on training its last phase (a later session, a longer schedule)
            self.phase, self.epoch, self.optimizer = self.phase + 1, 0, None
        return self._finish()

    def _finish(self) -> Path:
        if self.rank == 0 and not (self.out / MODEL_FILE).exists():     # a run of no epochs
            atomic_save(model_payload(self.model, self.instruments, self.run_metadata()),
                        self.out / MODEL_FILE)
        if self.distributed:
            dist.barrier()
        return self.out / MODEL_FILE

    def _out_of_time(self, deadline, last_epoch_s: float) -> bool:
        """Whether the next epoch, as long as the last one, would end past ``deadline``; every
        rank stops if one would (their clocks differ a little)."""
        if deadline is None:
            return False
        late = time.monotonic() + last_epoch_s > deadline
        return self._sum(1.0 if late else 0.0) > 0

    def _tensorboard(self):
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:     # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def train_epoch(self) -> dict:
        s = self.settings
        phase = self.phase
        module = self.phase_module(phase).train()
        if self.distributed:
            module = nn.parallel.DistributedDataParallel(module)
        self.encoder.requires_grad_(phase == 0)
        self.crop_rng = random.Random(f"{s.seed}/{phase}/{self.epoch}")
        batches = self.loader(self.train_set, s.batch_size[phase], phase * 100_000 + self.epoch, True)
        begin = time.time()
        total, count = 0.0, 0
        for wave, instrument, pitch, velocity in self._progress(batches):
            batch = [t.to(self.device) for t in (wave, instrument, pitch, velocity)]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.step(module, phase, *batch)
            self.optimizer.step()
            total += loss * len(wave)
            count += len(wave)
        train_loss = self._mean(total, count)
        return {"phase": PHASES[phase], "epoch": self.epoch + 1, "train_loss": train_loss,
                "valid_loss": self.validate(phase), "seconds": round(time.time() - begin, 2),
                "notes": int(self._sum(count))}

    def _progress(self, batches):
        if self.rank != 0 or not self.settings.progress:
            return batches
        from tqdm import tqdm
        name = f"{PHASES[self.phase]} {self.epoch + 1}/{self.settings.epochs[self.phase]}"
        return tqdm(batches, desc=name, unit="batch", leave=False, mininterval=1.0)

    def step(self, module, phase, wave, instrument, pitch, velocity) -> float:
        """One optimisation step's forward and backward; returns the batch loss."""
        if phase == 1:
            return self.sequence_step(module, wave, instrument, pitch, velocity)
        inputs = (wave,) if phase == 0 else (instrument, pitch, velocity)
        frames = self.settings.crop
        if frames:
            decoder = self.model.decoder
            first, end = decoder.crop_bounds(0, frames)
            start = crop_start(self.crop_rng, decoder.crop_starts(frames), (end - first) // decoder.config.stride)
            first, end = decoder.crop_bounds(start, frames)
            inputs, wave = inputs + (start, frames), wave[:, first:end]
        with self.autocast():
            output = module(*inputs)
        loss = self.loss(output.float(), wave, pitch)
        loss.backward()
        return loss.item()

    def sequence_step(self, module, wave, instrument, pitch, velocity) -> float:
        """Truncated back-propagation: the LSTM state crosses chunk borders, gradients do not."""
        target = self.encoder_targets(wave)
        steps, chunk = self.config.steps, self.settings.bptt
        state, total = None, 0.0
        for start in range(0, steps, chunk):
            size = min(chunk, steps - start)
            last = start + size >= steps
            sync = nullcontext() if (last or not self.distributed) else module.no_sync()
            with sync:
                with self.autocast():
                    output, state = module(instrument, pitch, velocity, start, size, state)
                loss = F.mse_loss(output.float(), target[:, start:start + size])
                (loss * size / steps).backward()
            state = tuple(h.detach() for h in state)
            total += loss.item() * size / steps
        return total

    @torch.no_grad()
    def encoder_targets(self, wave):
        with self.autocast():
            return self.encoder(wave).float().transpose(1, 2)

    @torch.no_grad()
    def validate(self, phase) -> float:
        if len(self.valid_set) == 0:
            return math.nan
        total, count = 0.0, 0
        for wave, instrument, pitch, velocity in self.loader(self.valid_set, self.settings.batch_size[phase], 0, False):
            wave, instrument, pitch, velocity = (t.to(self.device) for t in (wave, instrument, pitch, velocity))
            with self.autocast():
                if phase == 0:
                    loss = self.loss(Autoencoder(self.encoder, self.model.decoder)(wave).float(), wave)
                elif phase == 1:
                    output = self.model.sequence_generator(instrument, pitch, velocity).float()
                    loss = F.mse_loss(output, self.encoder_targets(wave))
                else:
                    loss = self.loss(self.model(instrument, pitch, velocity).float(), wave)
            total += loss.item() * len(wave)
            count += len(wave)
        return self._mean(total, count)

    def _sum(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item()

    def _mean(self, total: float, count: int) -> float:
        return round(self._sum(total) / max(self._sum(count), 1), 6)


def train(settings: TrainSettings, resume: bool = False) -> Path:
    """Runs (or resumes) the three phases; returns the path of the trained model checkpoint."""
    trainer = Trainer(settings)
    try:
        path = trainer.run(resume)
        if trainer.stopped_early and trainer.rank == 0:
            print(f"time limit: stopped before {PHASES[trainer.phase]} epoch {trainer.epoch + 1}; "
                  f"--resume goes on from there")
        return path
    finally:
        if trainer.distributed:
            dist.destroy_process_group()
