"""NoteStore: rendered notes on disk, bounded, checked on the way in."""
import os
import time

import numpy as np
import pytest

from sing_synth.engine.renderer import instrument_key
from sing_synth.engine.store import NoteStore, default_root, file_id, key_name

LENGTH = 1000


def _key(pitch, inst="flute", row=2):
    return (instrument_key(inst), pitch, row)


def _wave(seed):
    return np.random.default_rng(seed).standard_normal(LENGTH).astype(np.float32)


def test_saved_notes_load_back_exactly_and_read_only(tmp_path):
    store = NoteStore(tmp_path, "ab" * 32, "bfloat16-levels", LENGTH)
    assert store.load(_key(60)) is None
    assert store.save(_key(60), _wave(0))
    assert store.save(_key(61, {"flute": 0.25, "violin": 0.75}), _wave(1))
    again = NoteStore(tmp_path, "ab" * 32, "bfloat16-levels", LENGTH)    # a later session
    np.testing.assert_array_equal(again.load(_key(60)), _wave(0))
    np.testing.assert_array_equal(again.load(_key(61, {"violin": 3, "flute": 1})), _wave(1))
    assert not again.load(_key(60)).flags.writeable
    assert again.load(_key(60, row=3)) is None and again.load(_key(60, "violin")) is None
    assert again.counts["loaded"] == 3 and again.counts["missing"] == 2
    assert again.bytes == store.bytes > 2 * LENGTH * 4


def test_other_models_and_variants_never_share_notes(tmp_path):
    NoteStore(tmp_path, "ab" * 32, "bfloat16-levels", LENGTH).save(_key(60), _wave(0))
    assert NoteStore(tmp_path, "cd" * 32, "bfloat16-levels", LENGTH).load(_key(60)) is None
    assert NoteStore(tmp_path, "ab" * 32, "float32-levels", LENGTH).load(_key(60)) is None
    assert NoteStore(tmp_path, "ab" * 32, "bfloat16-raw", LENGTH).load(_key(60)) is None


def test_bad_files_are_dropped_not_played(tmp_path):
    store = NoteStore(tmp_path, "ab" * 32, "v", LENGTH)
    for pitch, content in ((60, b"not a numpy file"), (61, None), (62, None), (63, None)):
        store.save(_key(pitch), _wave(pitch))
        path = store.path(_key(pitch))
        if pitch == 60:
            path.write_bytes(content)
        elif pitch == 61:
            path.write_bytes(path.read_bytes()[:500])                    # truncated
        elif pitch == 62:
            np.save(path, _wave(0).astype(np.float64))                   # wrong dtype
        else:
            np.save(path, np.array([{"code": 1}], dtype=object), allow_pickle=True)   # a pickle
    for pitch in (60, 61, 62, 63):
        assert store.load(_key(pitch)) is None
        assert not store.path(_key(pitch)).exists()
    assert store.counts["bad"] == 4 and store.last_error
    assert not store.save(_key(64), np.full(LENGTH, np.nan, np.float32))     # never stored
    assert not store.save(_key(64), _wave(0)[:10])
    assert store.counts["errors"] == 2 and not store.path(_key(64)).exists()


def test_the_least_recently_used_notes_go_past_the_bound(tmp_path):
    note_mb = (LENGTH * 4 + 128) / 2 ** 20
    store = NoteStore(tmp_path, "ab" * 32, "v", LENGTH, limit_mb=10.5 * note_mb)
    other = NoteStore(tmp_path, "cd" * 32, "v", LENGTH, limit_mb=10.5 * note_mb)
    other.save(_key(40), _wave(40))                   # another model's note counts too
    past = time.time() - 1000
    os.utime(other.path(_key(40)), (past, past))
    for pitch in range(50, 60):
        assert store.save(_key(pitch), _wave(pitch))
        t = past + 10 * (pitch - 49)
        os.utime(store.path(_key(pitch)), (t, t))
    assert store.load(_key(50)) is not None           # read now: the most recent
    assert store.counts["evicted"] == 0
    store.save(_key(60), _wave(60))                   # 12 notes > 10.5: down to 9.45
    assert store.counts["evicted"] == 3
    assert other.load(_key(40)) is None               # the oldest first, whoever wrote it
    assert store.load(_key(51)) is None and store.load(_key(52)) is None
    assert store.load(_key(50)) is not None and store.load(_key(60)) is not None
    assert store.bytes <= 0.9 * 10.5 * note_mb * 2 ** 20


def test_a_folder_that_cannot_be_written_is_counted_not_raised(tmp_path):
    store = NoteStore(tmp_path, "ab" * 32, "v", LENGTH)
    store.folder.rmdir()
    store.folder.write_bytes(b"")          # the folder is gone, a file in its place (even root fails)
    assert not store.save(_key(60), _wave(0))
    assert store.counts["errors"] == 1 and "not stored" in store.last_error
    assert store.load(_key(60)) is None
    with pytest.raises(OSError):
        NoteStore(tmp_path, "ab" * 32, "v", LENGTH)     # the player says so and runs without one


def test_names_and_ids(tmp_path, monkeypatch):
    assert key_name(_key(60)) == key_name((instrument_key({"flute": 2}), 60, 2))
    assert key_name(_key(60)) != key_name(_key(60, row=3))
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    first = file_id(path)
    path.write_bytes(b"x" * 2_999_999 + b"y")
    assert len(first) == 64 and file_id(path) != first
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c" / "sing-synth" / "notes"
