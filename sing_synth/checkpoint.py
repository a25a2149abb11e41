"""One-file checkpoints: format version, config, instrument names, metadata, weights.

Loading never executes code: `torch.load(weights_only=True)`, or, for the published `sing.th`
(a whole pickled module), the restricted unpickler in `legacy.py`.
"""
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import SingConfig
from .errors import CheckpointError
from .levels import Levels
from .model import SING

FORMAT = "sing-synth"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model: SING
    instruments: dict = field(default_factory=dict)   # instrument id -> name
    metadata: dict = field(default_factory=dict)
    half: bool = False              # stored in fp16 (a rewrite keeps the file's precision)


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_payload(model: SING, instruments=None, metadata=None, half: bool = False) -> dict:
    """The dictionary a checkpoint file holds (also embedded in training states)."""
    dtype = torch.float16 if half else torch.float32
    state = {name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).clone()
             for name, t in model.state_dict().items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "instruments": {int(k): str(v) for k, v in (instruments or {}).items()},
        "metadata": dict(metadata or {}),
        "state": state,
    }


def save_checkpoint(path, model: SING, instruments=None, metadata=None, half: bool = False) -> None:
    atomic_save(model_payload(model, instruments, metadata, half), path)


def checkpoint_from_payload(payload, source="checkpoint") -> Checkpoint:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a sing-synth checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is not supported "
                              f"(this sing-synth reads version {FORMAT_VERSION})")
    try:
        config = SingConfig.from_dict(payload["config"])
        model = SING(config)
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()}
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: inconsistent checkpoint ({str(exc).splitlines()[0]})") from None
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{source}: inconsistent checkpoint (metadata is not a dictionary)")
    Levels.from_metadata(metadata, config.n_instruments, source)    # a bad calibration fails here
    half = any(v.dtype == torch.float16 for v in payload["state"].values())
    return Checkpoint(model.eval(), dict(payload.get("instruments", {})), metadata, half)


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """Loads a sing-synth checkpoint, or the original `sing.th`, without executing code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        magic = f.read(4)
    # torch.save writes a zip (torch >= 1.6) or pickles whose first object is a magic number: a
    # PROTO opcode (protocol >= 2) or, in protocols 0 and 1, a long/int opcode
    if magic != b"PK\x03\x04" and magic[:1] not in (b"\x80", b"L", b"I", b"J", b"K", b"M", b"\x8a"):
        raise CheckpointError(f"{path}: not a readable checkpoint file (neither a zip nor a pickle)")
    try:
        with warnings.catch_warnings():   # torch warns about odd pickles; the error below says it once
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        from .legacy import load_legacy   # a whole pickled module, as the published sing.th
        return load_legacy(path)
    except Exception as exc:   # torch.load raises many types on a corrupt file; all mean the same here
        raise CheckpointError(f"{path}: not a readable checkpoint file ({str(exc).splitlines()[0]})") from None
    return checkpoint_from_payload(payload, str(path))
