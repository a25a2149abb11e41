"""Timing of real-time callbacks, light enough for any module to import (no torch)."""
from __future__ import annotations

import numpy as np


class CallbackTimes:
    """The last ``size`` durations of a real-time callback, in seconds.

    The audio thread calls `add` (a store into a preallocated array, no lock); any other thread
    reads.  A read racing a write sees that one value old or new, nothing worse.
    """

    def __init__(self, size: int = 8192):
        self._t = np.zeros(max(1, int(size)), np.float64)
        self.count = 0               # values added since the start (or `clear`)

    def add(self, seconds: float) -> None:
        self._t[self.count % len(self._t)] = seconds
        self.count += 1

    def clear(self) -> None:
        self.count = 0

    def since(self, count: int) -> np.ndarray:
        """A copy of the values added after the ``count``-th (the last ``size`` at most)."""
        n = min(self.count - int(count), self.count, len(self._t))
        if n <= 0:
            return self._t[:0].copy()
        end = self.count % len(self._t)
        if n <= end:
            return self._t[end - n:end].copy()
        return np.concatenate([self._t[len(self._t) - (n - end):], self._t[:end]])

    def summary(self) -> dict:
        """p50, p99 and max of the values kept, in microseconds."""
        t = self.since(0) * 1e6
        if not len(t):
            return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None}
        return {"n": len(t), "p50_us": float(np.percentile(t, 50)),
                "p99_us": float(np.percentile(t, 99)), "max_us": float(t.max())}
