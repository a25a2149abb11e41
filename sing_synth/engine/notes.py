"""Memory for the rendered notes: each note in an anonymous map of its own, recycled.

A note is 0.77 MB (4 s at 48 kHz, float32).  From malloc, notes and the renderer's temporaries
share the heap, where freed notes fragment it and the resident size creeps above the cache's
cap; glibc's mmap threshold held low against that (every chunk of 256 KB or more in a map of its
own) made torch's render temporaries map and unmap fresh pages at every step instead: ~150,000
page faults a second while prewarming.  Here notes never come from malloc: each is an anonymous
``mmap`` (its memory back to the system when it is dropped), and the map of a note nobody holds
any more -- not the cache, not a voice, not a view of it -- goes to a short free list, from which
the next note takes it with its pages still resident.  With the cache full, a new note takes the
map of the note it evicted.
"""
from __future__ import annotations

import mmap
import weakref

import numpy as np

KEEP = 4          # free maps kept for the next notes; more are unmapped


class NoteMemory:
    """Zeroed float32 note arrays of ``length`` samples, each backed by its own map.

    `zeros` may be called from any thread.  A map returns to the free list when its array is
    garbage (a `weakref.finalize`, run by whichever thread drops the last reference: never the
    audio thread, which hands its notes back to the control thread, see `engine.mixer`); the
    list is a plain Python list (append and pop are atomic): no lock anywhere.
    """

    def __init__(self, length: int, keep: int = KEEP):
        self.length = int(length)
        self.nbytes = max(1, self.length) * 4
        self.keep = max(0, int(keep))
        self._free: list = []
        self.maps_made = 0          # fresh maps (first touch faults their pages in)
        self.maps_reused = 0

    def zeros(self) -> np.ndarray:
        try:
            buf = self._free.pop()
        except IndexError:
            buf = None
        if buf is None:
            buf = mmap.mmap(-1, self.nbytes)          # anonymous: zero pages
            self.maps_made += 1
            note = np.frombuffer(buf, np.float32, self.length)
        else:
            self.maps_reused += 1
            note = np.frombuffer(buf, np.float32, self.length)
            note.fill(0.0)
        weakref.finalize(note, self._give_back, buf)
        return note

    def _give_back(self, buf) -> None:
        # the dying array still holds its view of ``buf``: a map not kept is unmapped when that
        # view goes, right after this
        if len(self._free) < self.keep:
            self._free.append(buf)

    def free_maps(self) -> int:
        return len(self._free)
