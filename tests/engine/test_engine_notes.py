import gc

import numpy as np

from sing_synth.engine.notes import NoteMemory


def test_notes_are_zeroed_maps_recycled_once_nothing_holds_them():
    memory = NoteMemory(1000, keep=2)
    note = memory.zeros()
    assert note.dtype == np.float32 and note.shape == (1000,) and note.flags.writeable
    assert not note.any() and memory.maps_made == 1
    note[:] = 7.0
    view = note[10:20]                  # a voice's slice keeps the note (and its map) alive
    del note
    gc.collect()
    assert memory.free_maps() == 0 and view.sum() == 70.0
    del view
    assert memory.free_maps() == 1
    again = memory.zeros()              # the same map, its pages resident, zeroed again
    assert memory.maps_reused == 1 and memory.maps_made == 1 and not again.any()
    notes = [memory.zeros() for _ in range(5)]
    assert memory.maps_made == 6
    del notes, again
    assert memory.free_maps() == 2      # ``keep`` kept, the rest unmapped
    read_only = memory.zeros()
    read_only.flags.writeable = False
    assert memory.maps_reused == 2 and not read_only.any()
