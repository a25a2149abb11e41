"""Rendered notes kept on disk across sessions: the note store.

SING renders a note in ~16 ms on a CPU (the small model); reading one back from disk takes well
under 1 ms.  `NoteRenderer` looks each note up here before rendering it, and writes every note it
renders, so a preset played yesterday prewarms in about a second instead of ~20 s, and a key
whose note is on disk but not in memory sounds after a read and a resample, not a render.

What is stored is the model's output at the model's rate (16 kHz, float32), after the level
correction, before resampling and fades: it does not depend on the stream's rate.  Notes live
under ``root/<checkpoint id>/<variant>/``: the checkpoint id is the SHA-256 of the checkpoint
file (`file_id`), so a retrained or recalibrated model never reads another's notes; the variant
says what else changes a note (the compute dtype, levels on or off).  A note's file name is a
hash of its key; the file is a plain ``.npy`` (read with ``allow_pickle=False``: never code), and
is checked on the way in (dtype, shape): a bad one is deleted and the note rendered again.

Writes go to a temporary file renamed into place, so another instrument sharing the folder never
reads half a note.  The store is bounded (``limit_mb``, all checkpoints together): past it, the
least recently used files go (a read refreshes a file's time), down to 90% of the bound.

Thread safety: `load` and `save` may be called from any thread (the render worker and the urgent
lane); they never run on the audio thread.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

SUFFIX = ".npy"
FORMAT = 1            # bump when what a stored note means changes
HASH_CHUNK = 1 << 20


def default_root() -> Path:
    """``$XDG_CACHE_HOME/sing-synth/notes`` (``~/.cache/...``; ``%LOCALAPPDATA%`` on Windows)."""
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
    return Path(base or Path.home() / ".cache") / "sing-synth" / "notes"


def file_id(path) -> str:
    """The SHA-256 of a file's bytes, hex (~25 ms for the shipped model's 25 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def key_name(key) -> str:
    """A note key's file name: a hash of its canonical JSON form."""
    inst, pitch, row = key
    text = json.dumps([[[n, float(w)] for n, w in inst], int(pitch), int(row)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32] + SUFFIX


class NoteStore:
    """Notes of one checkpoint and variant, in ``root``, bounded by ``limit_mb`` in all.

    Args:
        root: the store's folder (`default_root`), shared by every checkpoint.
        checkpoint_id: identifies the model (`file_id` of its file).
        variant: what else changes a rendered note, e.g. ``"bfloat16-levels"``.
        length: samples of a stored note (the model's note length); others are refused.
        limit_mb: bound of the whole folder in MiB.
    """

    def __init__(self, root, checkpoint_id: str, variant: str, length: int, limit_mb: float = 2048):
        self.root = Path(root)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(variant))
        self.folder = self.root / str(checkpoint_id)[:32] / f"v{FORMAT}-{safe}"
        self.length = int(length)
        self.limit = int(float(limit_mb) * 2 ** 20)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._bytes = sum(size for _, _, size in self._files())
        self.counts = dict(loaded=0, saved=0, missing=0, bad=0, evicted=0, errors=0)
        self.last_error = None

    # ------------------------------------------------------------------ notes
    def path(self, key) -> Path:
        return self.folder / key_name(key)

    def load(self, key):
        """The stored note of ``key`` (float32 ``[length]``, read-only), or None: not stored, or
        bad (then deleted)."""
        path = self.path(key)
        try:
            wave = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self._count("missing")
            return None
        except (OSError, ValueError, EOFError) as exc:
            self._drop(path, f"{path.name}: unreadable ({exc})")
            return None
        if wave.dtype != np.float32 or wave.shape != (self.length,):
            self._drop(path, f"{path.name}: {wave.dtype} {wave.shape}, expected float32 ({self.length},)")
            return None
        try:
            os.utime(path)          # recently used: the last to be evicted
        except OSError:
            pass
        self._count("loaded")
        wave.flags.writeable = False
        return wave

    def save(self, key, wave) -> bool:
        """Stores ``wave`` (float32 ``[length]``) for ``key``; False if it could not be written
        (disk full, read-only folder: counted, never raised)."""
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if wave.shape != (self.length,) or not np.isfinite(wave).all():
            self._count("errors", f"not stored: {wave.dtype} {wave.shape}, or not finite")
            return False
        path = self.path(key)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, wave, allow_pickle=False)
                old = path.stat().st_size if path.exists() else 0
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            size = path.stat().st_size
        except OSError as exc:
            self._count("errors", f"not stored: {exc}")
            return False
        with self._lock:
            self.counts["saved"] += 1
            self._bytes += size - old
            over = self._bytes > self.limit
        if over:
            self.evict()
        return True

    # ------------------------------------------------------------------ bound
    def _files(self):
        """(mtime, path, size) of every stored note under ``root``, every checkpoint's."""
        found = []
        for folder in self.root.glob("*/*"):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name.endswith(SUFFIX):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    found.append((st.st_mtime, entry.path, st.st_size))
        return found

    def evict(self) -> int:
        """Deletes the least recently used notes until the folder is within 90% of the bound
        (other instruments sharing it may have written too: it is measured again first)."""
        files = sorted(self._files())
        total = sum(size for _, _, size in files)
        target = int(0.9 * self.limit)
        removed = 0
        for _, path, size in files:
            if total <= target:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            removed += 1
        with self._lock:
            self._bytes = total
            self.counts["evicted"] += removed
        return removed

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def status(self) -> dict:
        with self._lock:
            return {**self.counts, "store_mb": self._bytes / 2 ** 20,
                    "store_limit_mb": self.limit / 2 ** 20, "store_error": self.last_error}

    def _count(self, what: str, error=None) -> None:
        with self._lock:
            self.counts[what] += 1
            if error is not None:
                self.last_error = error

    def _drop(self, path: Path, why: str) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            size = 0
        with self._lock:
            self._bytes -= size
        self._count("bad", why)
