"""NoteRenderer on a tiny random-weights checkpoint (CPU, one torch thread)."""
import sys
import threading
import time

import numpy as np
import pytest
import torch

from sing_synth.checkpoint import save_checkpoint
from sing_synth.config import SingConfig
from sing_synth.device import best_device, resolve_device
from sing_synth.engine import NoteRenderer, instrument_key, prewarm_order
from sing_synth.model import SING

NOTE_BYTES = 192000 * 4


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = SING(SingConfig(n_instruments=3, lstm_hidden=16, lstm_layers=1, channels=32))
    path = tmp_path_factory.mktemp("engine") / "tiny.pt"
    save_checkpoint(path, model, instruments={0: "flute", 1: "violin", 2: "organ"})
    return path


class Recorder:
    """The ready callbacks' keys, in order; ``tails``: whether each note's last samples were
    written when it was handed over (False: handed over head first, the rest still rendering)."""
    def __init__(self):
        self.keys, self.tails, self.lock = [], {}, threading.Lock()

    def __call__(self, key, note):
        with self.lock:
            self.keys.append(key)
            self.tails[key] = bool(note[-1000:-10].any())


def test_keys_and_prewarm_order():
    assert instrument_key("flute") == (("flute", 1.0),)
    assert instrument_key({"violin": 1, "flute": 3}) == (("flute", 0.75), ("violin", 0.25))
    assert instrument_key({"violin": 0.25, "flute": 0.75}) == instrument_key([("flute", 3), ("violin", 1)])
    assert instrument_key(2) == ((2, 1.0),)
    with pytest.raises(ValueError):
        instrument_key({"flute": 0})
    assert prewarm_order((57, 63)) == [60, 59, 61, 58, 62, 57, 63]
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert best_device().type == expected


def test_urgent_before_prewarm_and_resampled_length(tiny_checkpoint, one_thread):
    recorder = Recorder()
    with NoteRenderer(tiny_checkpoint, device="cpu", stream_rate=48000, cache_mb=64,
                      batch_size=4, on_ready=recorder, dtype=torch.float32,
                      urgent_lane=False) as renderer:
        flute = instrument_key("flute")
        prewarm = [(flute, p, 3) for p in prewarm_order((48, 72))]
        urgent = (instrument_key({"violin": 0.5, "organ": 0.5}), 64, 1)
        # queue everything while the worker waits on the lock, so the order is deterministic
        with renderer._cond:
            assert renderer.prewarm(prewarm) == len(prewarm)
            assert renderer.request(urgent) is None
            assert renderer.status()["queue"] == len(prewarm) + 1
        assert renderer.wait_idle(timeout=60)
        assert recorder.keys[0] == urgent
        assert recorder.keys[1:] == prewarm                      # prewarm order kept
        note = renderer.request(urgent)                          # now a cache hit
        assert note is not None and note.dtype == np.float32 and note.ndim == 1
        assert len(note) == 64000 * 48000 // 16000 == renderer.note_length
        assert not note.flags.writeable and np.isfinite(note).all()
        assert note[0] == 0 and note[-1] == 0                    # faded ends
        status = renderer.status()
        assert status["prewarm_done"] == status["prewarm_total"] == len(prewarm)
        assert status["cached_notes"] == len(prewarm) + 1 and status["queue"] == 0
        assert status["last_urgent_ms"] is not None and status["errors"] == 0
        assert status["device"] == "cpu" and status["hits"] == 1


def test_lru_cache_bound(tiny_checkpoint, one_thread):
    # 2 MiB holds two 48 kHz notes (768,000 bytes each), not three
    with NoteRenderer(tiny_checkpoint, device="cpu", cache_mb=2, batch_size=8,
                      dtype=torch.float32) as renderer:
        keys = [(instrument_key(0), p, 2) for p in (60, 61, 62)]
        held = renderer.request(keys[0])
        for key in keys:
            renderer.request(key)
        assert renderer.wait_idle(timeout=60)
        assert renderer.status()["cached_notes"] == 2
        assert renderer.get(keys[0]) is None                     # least recently used: gone
        held = renderer.get(keys[1])                             # touch 61: now most recent
        renderer.request((instrument_key(0), 63, 2))
        assert renderer.wait_idle(timeout=60)
        assert renderer.get(keys[1]) is held and renderer.get(keys[2]) is None
        # an evicted note that a voice still holds keeps its samples while later notes render
        samples = held.copy()
        for pitch in (64, 65, 66):
            renderer.request((instrument_key(0), pitch, 2))
            assert renderer.wait_idle(timeout=60)
        assert renderer.get(keys[1]) is None and np.array_equal(held, samples)
        status = renderer.status()
        assert status["cache_mb"] * 2 ** 20 == 2 * NOTE_BYTES <= 2 * 2 ** 20
        assert status["evictions"] == 5
        # an evicted note that a voice still holds stays valid (numpy refcount)
        assert held.shape == (192000,)


def test_bad_keys_and_worker_errors_never_kill(tiny_checkpoint, one_thread):
    with NoteRenderer(tiny_checkpoint, device="cpu", dtype=torch.float32) as renderer:
        with pytest.raises(ValueError):
            renderer.request((instrument_key("cello"), 60, 0))   # no such instrument
        with pytest.raises(ValueError):
            renderer.request((instrument_key(0), 60, 9))         # no such velocity row
        assert renderer.prewarm([("garbage",), (instrument_key(0), 200, 0)]) == 0

        def boom(key, note):
            raise RuntimeError("callback failed")
        renderer.add_ready_callback(boom)
        renderer.request((instrument_key(1), 60, 0))
        assert renderer.wait_idle(timeout=60)
        status = renderer.status()
        assert status["alive"] and status["errors"] == 3 and "callback failed" in status["last_error"]
        assert renderer.get((instrument_key(1), 60, 0)) is not None
    assert not renderer._thread.is_alive()


def test_controller_renderer_mixer_together(tiny_checkpoint, one_thread):
    import mido

    from sing_synth.engine import Controller, Mixer
    from sing_synth.presets import Preset

    preset = Preset(name="flute", program=73, instrument={"flute": 1.0}, pitch_range=(48, 84))
    mixer = Mixer(48000, blocksize_max=1024)
    with NoteRenderer(tiny_checkpoint, device="cpu", dtype=torch.float32) as renderer:
        controller = Controller(mixer, renderer, {"flute": preset}, "flute", 48000)
        out = np.zeros((256, 2), np.float32)
        with renderer._cond:                        # the worker cannot take the request yet
            controller.handle(mido.Message("note_on", note=60, velocity=100))
            mixer.callback(out, 256, None, None)
        assert not out.any()                        # not rendered yet: nothing plays
        assert renderer.wait_idle(timeout=60)
        mixer.callback(out, 256, None, None)
        assert mixer.active_voices == 1 and controller.counts["started_late"] == 1
        key = mixer.v_key[int(np.argmax(mixer.v_state))]
        assert key == ((("flute", 1.0),), 60, renderer.config.velocity_row(100))
        assert renderer.status()["last_urgent_ms"] > 0


def test_urgent_key_overtakes_a_prewarm_batch_between_its_steps(tiny_checkpoint, one_thread):
    """A key pressed while a prewarm batch renders is rendered and delivered between two of that
    batch's steps, before the batch itself."""
    recorder = Recorder()
    started, go = threading.Event(), threading.Event()
    with NoteRenderer(tiny_checkpoint, device="cpu", batch_size=4, prewarm_batch_size=2,
                      on_ready=recorder, dtype=torch.float32, lstm_chunks=4,
                      decoder_chunk=64, urgent_lane=False) as renderer:
        stages = renderer.fast.stages
        calls = []

        def paused_stages(*args, **kwargs):        # the prewarm batch stops at its first step
            calls.append(len(args[1]))
            first = len(calls) == 1
            result = yield from _pause_after_first(stages(*args, **kwargs), first, started, go)
            return result

        renderer.fast.stages = paused_stages
        flute = instrument_key("flute")
        prewarm = [(flute, p, 3) for p in (60, 59, 61, 58)]
        renderer.prewarm(prewarm)
        assert started.wait(30)
        urgent = (instrument_key("violin"), 64, 1)
        assert renderer.request(urgent) is None
        go.set()
        assert renderer.wait_idle(timeout=60)
    assert calls == [2, 1, 2]                        # prewarm batch, urgent batch, prewarm batch
    assert recorder.keys == [urgent] + prewarm       # the urgent note first, then prewarm order
    assert renderer.status()["rendered"] == 5 and renderer.status()["errors"] == 0


def test_urgent_lane_renders_a_key_while_a_prewarm_step_is_under_way(tiny_checkpoint, one_thread):
    """With the urgent lane, a key pressed while the worker is inside a prewarm step is rendered
    and delivered at once, by the lane, while that step is still running."""
    recorder = Recorder()
    started, go = threading.Event(), threading.Event()
    with NoteRenderer(tiny_checkpoint, device="cpu", batch_size=4, prewarm_batch_size=2,
                      on_ready=recorder, dtype=torch.float32, urgent_lane=True) as renderer:
        stages = renderer.fast.stages
        workers = []

        def paused_stages(*args, **kwargs):        # the first prewarm batch stops in its first step
            workers.append(threading.current_thread().name)
            first = len(workers) == 1
            result = yield from _pause_after_first(stages(*args, **kwargs), first, started, go)
            return result

        renderer.fast.stages = paused_stages
        prewarm = [(instrument_key("flute"), p, 3) for p in (60, 59)]
        renderer.prewarm(prewarm)
        assert started.wait(30)
        urgent = (instrument_key("violin"), 64, 1)
        assert renderer.request(urgent) is None
        assert renderer.wait_idle(timeout=0.5) is False        # the prewarm step still waits
        deadline = threading.Event()
        for _ in range(300):                                   # the lane delivers meanwhile
            if renderer.get(urgent) is not None:
                break
            deadline.wait(0.1)
        assert recorder.keys == [urgent] and renderer.status()["urgent_lane"]
        go.set()
        assert renderer.wait_idle(timeout=60)
        assert workers == ["sing-note-renderer", "sing-urgent-renderer"]
        assert recorder.keys == [urgent] + prewarm
    assert not any(t.is_alive() for t in renderer._lanes)       # close() stops the lane too


def test_a_key_found_in_a_prewarm_batch_gets_its_note_before_the_rest_of_the_batch(
        tiny_checkpoint, one_thread):
    """A key pressed while its note is in a prewarm batch being prepared (resampled, holding the
    GIL) is handed over next, not after the whole batch (55-75 ms for 32 notes on an H100), and
    head first: the voices have it before the rest of it is resampled."""
    recorder = Recorder()
    flute = instrument_key("flute")
    prewarm = [(flute, p, 3) for p in (60, 59, 61, 58, 62, 57)]
    with NoteRenderer(tiny_checkpoint, device="cpu", prewarm_batch_size=6, on_ready=recorder,
                      dtype=torch.float32, urgent_lane=True, head_frames=32) as renderer:
        prepare, prepared = renderer._prepare, []

        def pressing_prepare(wave):
            if not prepared:                      # the batch is in flight: press its last key
                assert renderer.request(prewarm[-1]) is None
            prepared.append(len(wave))
            return prepare(wave)

        renderer._prepare = pressing_prepare
        renderer.prewarm(prewarm)
        assert renderer.wait_idle(timeout=60)
        status = renderer.status()
        renderer._prepare = prepare
        whole = renderer._render([prewarm[-1]])[0]
        pressed = renderer.get(prewarm[-1])
    assert recorder.keys == [prewarm[0], prewarm[-1]] + prewarm[1:-1]
    assert len(prepared) == 5 and status["rendered"] == 6 and status["batches"] == 1
    assert status["prewarm_done"] == 6 and len(renderer.urgent_delays_ms) == 1
    assert status["filling"] == 0 and status["errors"] == 0
    assert not recorder.tails[prewarm[-1]] and all(recorder.tails[k] for k in prewarm[:-1])
    assert not pressed.flags.writeable and pressed[0] == pressed[-1] == 0
    np.testing.assert_allclose(pressed, whole, atol=1e-6)


@pytest.mark.parametrize("lane", [True, False])
def test_a_key_whose_note_is_in_a_rendering_prewarm_batch_is_rendered_at_once(
        tiny_checkpoint, one_thread, lane):
    """A key pressed while its note is in a prewarm batch still rendering (a program change's
    first batch holds the middle keys) is taken out of the batch and rendered as urgent: by the
    lane beside the paused step, or by the worker between two steps; delivered once, counted
    once, and the rest of the batch as before."""
    recorder = Recorder()
    started, go = threading.Event(), threading.Event()
    with NoteRenderer(tiny_checkpoint, device="cpu", prewarm_batch_size=3, on_ready=recorder,
                      dtype=torch.float32, urgent_lane=lane) as renderer:
        stages, calls = renderer.fast.stages, []

        def paused_stages(*args, **kwargs):        # the prewarm batch stops after its first step
            calls.append(1)
            result = yield from _pause_after_first(stages(*args, **kwargs), len(calls) == 1 and lane,
                                                   started, go)
            return result

        renderer.fast.stages = paused_stages
        flute = instrument_key("flute")
        prewarm = [(flute, p, 3) for p in (60, 59, 61)]
        steps_done, at_delivery = [], {}
        if not lane:         # the worker: the key is pressed between the batch's first two steps
            renderer.add_ready_callback(lambda key, note: at_delivery.setdefault(key, len(steps_done)))

            def pressing_stages(*args, **kwargs):
                steps = stages(*args, **kwargs)
                if len(args[0]) != len(prewarm):         # the urgent batch: not counted
                    return (yield from steps)
                while True:
                    try:
                        step = next(steps)
                    except StopIteration as done:
                        return done.value
                    if not steps_done:
                        assert renderer.request(prewarm[1]) is None
                    steps_done.append(1)
                    yield step
            renderer.fast.stages = pressing_stages
        renderer.prewarm(prewarm)
        if lane:
            assert started.wait(30)
            assert renderer.request(prewarm[1]) is None
            for _ in range(300):                   # delivered while the batch is paused
                if renderer.get(prewarm[1]) is not None:
                    break
                time.sleep(0.1)
            assert recorder.keys == [prewarm[1]]
            assert renderer.request(prewarm[1]) is not None       # a hit now
            go.set()
        assert renderer.wait_idle(timeout=60)
        status = renderer.status()
    assert sorted(recorder.keys) == sorted(prewarm) and recorder.keys[0] == prewarm[1]
    assert status["rendered"] == 3 and status["prewarm_done"] == status["prewarm_total"] == 3
    assert len(renderer.urgent_delays_ms) == 1 and status["errors"] == 0
    assert not renderer._stepping and not renderer._let_go and not renderer._in_flight
    if not lane:         # between the first two steps, not after the whole batch
        assert at_delivery[prewarm[1]] == 1 < at_delivery[prewarm[0]] == len(steps_done)


class ChunkCounter:
    """A renderer's resamplers, counting the pieces each thread resamples (`_append`)."""
    def __init__(self, renderer):
        self.make, self.counts, self.lock = renderer._resampler, {}, threading.Lock()
        renderer._resampler = self

    def __call__(self):
        resampler, counter = self.make(), self

        class Counted:
            def resample_chunk(self, piece, last=False):
                with counter.lock:
                    name = threading.current_thread().name
                    counter.counts[name] = counter.counts.get(name, 0) + 1
                return resampler.resample_chunk(piece, last=last)
        return Counted()

    def worker(self) -> int:
        with self.lock:
            return self.counts.get("sing-note-renderer", 0)


@pytest.mark.parametrize("give_way_s", [30.0, 0.3])
def test_a_prewarm_batch_pauses_its_resampling_while_a_key_pressed_meanwhile_renders(
        tiny_checkpoint, one_thread, monkeypatch, give_way_s):
    """A key pressed while the worker resamples a prewarm batch (holding the GIL in pieces):
    the worker stops between two pieces until the urgent lane has handed that key's head over,
    then goes on; it never stops longer than GIVE_WAY_S for a key (here the lane is held up on
    purpose: with a bound of 0.3 s the batch is done before the key's note)."""
    from sing_synth.engine import renderer as renderer_module
    monkeypatch.setattr(renderer_module, "GIVE_WAY_S", give_way_s)
    recorder = Recorder()
    flute = instrument_key("flute")
    prewarm, pressed = [(flute, p, 3) for p in (60, 59, 61, 58)], (flute, 70, 3)
    lane_started, go = threading.Event(), threading.Event()
    with NoteRenderer(tiny_checkpoint, device="cpu", prewarm_batch_size=4, on_ready=recorder,
                      dtype=torch.float32, urgent_lane=True, head_frames=32) as renderer:
        stages, prepare, chunks = renderer.fast.stages, renderer._prepare, ChunkCounter(renderer)

        def held_stages(*args, head_frames=0, **kwargs):     # the lane waits for `go`
            if head_frames:
                lane_started.set()
                assert go.wait(30)
            return (yield from stages(*args, head_frames=head_frames, **kwargs))

        def pressing_prepare(wave):          # the batch's first note: the key is pressed
            if not lane_started.is_set() and renderer.request(pressed) is not None:
                raise AssertionError("the pressed key was cached")
            return prepare(wave)

        renderer.fast.stages, renderer._prepare = held_stages, pressing_prepare
        renderer.prewarm(prewarm)
        assert lane_started.wait(30)
        if give_way_s > 1:
            before = chunks.worker()
            time.sleep(0.4)
            assert chunks.worker() == before <= 1          # paused at its first piece
            assert recorder.keys == []
        else:
            for _ in range(300):                         # the bound: the batch goes on
                if len(recorder.keys) == len(prewarm):
                    break
                time.sleep(0.05)
            assert recorder.keys == prewarm
        go.set()
        assert renderer.wait_idle(timeout=60)
        status = renderer.status()
    assert sorted(recorder.keys) == sorted(prewarm + [pressed])
    if give_way_s > 1:
        assert recorder.keys == [pressed] + prewarm       # the key's head, then the batch
    assert status["rendered"] == 5 and status["errors"] == 0 and status["filling"] == 0


def test_a_note_that_fails_to_prepare_fails_the_rest_of_its_batch_only(tiny_checkpoint, one_thread):
    recorder = Recorder()
    flute = instrument_key("flute")
    prewarm = [(flute, p, 3) for p in (60, 59, 61, 58)]
    with NoteRenderer(tiny_checkpoint, device="cpu", prewarm_batch_size=4, on_ready=recorder,
                      dtype=torch.float32, urgent_lane=False) as renderer:
        prepare, calls = renderer._prepare, []

        def failing_prepare(wave):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("resampler broke")
            return prepare(wave)

        renderer._prepare = failing_prepare
        renderer.prewarm(prewarm)
        assert renderer.wait_idle(timeout=60)
        status = renderer.status()
        assert recorder.keys == prewarm[:2] and status["errors"] == 1
        assert "resampler broke" in status["last_error"] and status["rendered"] == 2
        assert status["prewarm_done"] == status["prewarm_total"] == 2
        renderer._prepare = prepare                 # the worker plays on
        assert renderer.request(prewarm[3]) is None
        assert renderer.wait_idle(timeout=60) and renderer.get(prewarm[3]) is not None


def _pause_after_first(steps, pause, started, go):
    """Passes ``steps`` through; with ``pause``, blocks after its first step until ``go``."""
    first = next(steps)
    if pause:
        started.set()
        assert go.wait(30)
    yield first
    return (yield from steps)


def test_render_worker_threads_leave_a_core(tiny_checkpoint):
    import os

    from sing_synth.engine.renderer import default_threads
    assert 1 <= default_threads() <= max(1, (os.cpu_count() or 1) - 1)
    with NoteRenderer(tiny_checkpoint, device="cpu", dtype=torch.float32, threads=1) as renderer:
        assert renderer.status()["threads"] == 1
        assert renderer.prewarm_batch_size == 2


def test_prewarm_queues_a_long_list_a_few_keys_per_hold_of_the_lock(tiny_checkpoint, one_thread):
    """A preset's ~365 keys held the lock ~1 ms at once, just when its first key is pressed."""
    from sing_synth.engine.renderer import PREWARM_HOLD
    renderer = NoteRenderer(tiny_checkpoint, device="cpu", dtype=torch.float32, urgent_lane=False)
    held, queue = [], renderer._queue_prewarm

    def counting(keys):
        held.append((len(keys), renderer._cond._is_owned()))
        return queue(keys)

    renderer._queue_prewarm = counting
    keys = [(instrument_key(0), p, row) for row in range(2) for p in range(30, 80)]
    try:
        assert renderer.prewarm(keys + keys[:5]) == 100
        assert renderer.status()["prewarm_total"] == 100
    finally:
        renderer.close(timeout=30)
    assert held == [(PREWARM_HOLD, True)] * 3 + [(105 - 3 * PREWARM_HOLD, True)]


def test_close_while_a_prewarm_batch_renders_stops_at_the_next_step(tiny_checkpoint, one_thread):
    renderer = NoteRenderer(tiny_checkpoint, device="cpu", dtype=torch.float32)
    renderer.prewarm([(instrument_key(0), p, 2) for p in range(40, 80)])
    renderer.close(timeout=30)
    assert not renderer._thread.is_alive()
    assert renderer.status()["errors"] == 0


@pytest.mark.parametrize("graphs", [False, True])
def test_urgent_note_is_handed_out_head_first_then_completed(tiny_checkpoint, one_thread, graphs):
    """An urgent note reaches the callbacks (and `request`) once its head is rendered, its tail
    still zeros; when complete it is the same array, read-only, cached, and equal to a whole-note
    render.  With ``graphs`` (CUDA's path; eager buckets on a CPU) the whole note is rendered at
    once and its head handed over before the rest is resampled."""
    seen = {}

    def on_ready(key, note):
        seen["tail"] = note[-1000:].copy()
        seen["head"] = note[100:2000].copy()
        seen["writeable"] = note.flags.writeable
        seen["request"] = renderer.request(key)            # a note being filled counts as ready
        seen["filling"] = renderer.status()["filling"]
        seen["note"] = note

    with NoteRenderer(tiny_checkpoint, device="cpu", stream_rate=48000, on_ready=on_ready,
                      dtype=torch.float32, head_frames=32, graphs=graphs) as renderer:
        key = (instrument_key("flute"), 60, 3)
        assert renderer.request(key) is None
        assert renderer.wait_idle(timeout=60)
        note = renderer.get(key)
        whole = renderer._render([key])[0]
        status = renderer.status()
    assert note is seen["note"] and seen["request"] is note and seen["filling"] == 1
    assert seen["writeable"] and not note.flags.writeable and status["filling"] == 0
    assert not seen["tail"].any() and seen["head"].any()       # the head first, the rest later
    assert note[-1] == 0 and note[0] == 0                       # faded ends, as whole notes
    np.testing.assert_allclose(note, whole, atol=1e-6)
    assert status["rendered"] == 1 and status["errors"] == 0 and len(renderer.urgent_delays_ms) == 1


def test_a_head_graph_that_cannot_be_captured_leaves_whole_notes_from_graphs(
        tiny_checkpoint, one_thread, monkeypatch):
    from sing_synth.fast import GraphedRenderer
    tries = []

    def failing_head(self, *args):
        tries.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphedRenderer, "head", failing_head)
    recorder = Recorder()
    with NoteRenderer(tiny_checkpoint, device="cpu", on_ready=recorder, dtype=torch.float32,
                      head_frames=32, graphs=True, urgent_lane=False) as renderer:
        keys = [(instrument_key("flute"), p, 3) for p in (60, 61)]
        for key in keys:
            assert renderer.request(key) is None
            assert renderer.wait_idle(timeout=60)
        status = renderer.status()
        whole = renderer._render(keys)
    assert tries == [1] and recorder.keys == keys and status["rendered"] == 2
    assert status["errors"] == 1 and "head graph" in status["last_error"]
    for key, note in zip(keys, whole):
        np.testing.assert_allclose(renderer.get(key), note, atol=1e-6)


@pytest.mark.parametrize("graphs", [False, True])
def test_head_first_off_and_for_prewarm(tiny_checkpoint, one_thread, graphs):
    recorder = Recorder()
    with NoteRenderer(tiny_checkpoint, device="cpu", on_ready=recorder, dtype=torch.float32,
                      head_frames=0, graphs=graphs) as renderer:
        renderer.request((instrument_key(0), 60, 3))
        renderer.prewarm([(instrument_key(0), 61, 3), (instrument_key(0), 62, 3)])
        assert renderer.wait_idle(timeout=60)
        assert renderer.status()["rendered"] == 3
        whole = renderer._render([(instrument_key(0), 62, 3)])[0]
        np.testing.assert_allclose(renderer.get((instrument_key(0), 62, 3)), whole, atol=1e-6)
    assert len(recorder.keys) == 3                              # one callback per note


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_prewarm_renders_at_lower_priority_than_urgent_notes():
    """ThreadNice changes only the calling thread: prewarm batches run at base + RENDER_NICE, so
    the audio and MIDI threads win a busy core; going back to base needs the right to (root here)."""
    import os
    import threading
    from sing_synth.engine.renderer import RENDER_NICE, ThreadNice
    seen = {}

    def worker():
        nice = ThreadNice()
        tid = threading.get_native_id()
        previous = nice.set(nice.base + RENDER_NICE)
        seen["low"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["main"] = os.getpriority(os.PRIO_PROCESS, main_tid)
        nice.set(previous)
        seen["back"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["base"] = nice.base

    main_tid = threading.get_native_id()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["low"] == min(19, seen["base"] + RENDER_NICE)
    assert seen["main"] == os.getpriority(os.PRIO_PROCESS, main_tid) != seen["low"]
    if os.geteuid() == 0:
        assert seen["back"] == seen["base"]


def test_cancel_withdraws_urgent_requests_and_drop_prewarm_prewarms(tiny_checkpoint, one_thread):
    recorder = Recorder()
    with NoteRenderer(tiny_checkpoint, device="cpu", cache_mb=64, batch_size=4,
                      on_ready=recorder, dtype=torch.float32, urgent_lane=False) as renderer:
        flute, violin = instrument_key("flute"), instrument_key("violin")
        prewarm = [(flute, p, 3) for p in prewarm_order((48, 52))]      # 52, 51, 50, 49, 48
        urgent = [(violin, p, 1) for p in (60, 61, 62, 63)]
        with renderer._cond:                 # the worker waits: the queue is what we say
            renderer.prewarm(prewarm)
            for key in urgent + [(flute, 50, 3)]:
                assert renderer.request(key) is None
            # nobody waits for violin 60, 61 any more; flute 50 stays a prewarm note
            assert renderer.cancel(urgent[:2] + [(flute, 50, 3), (violin, 99, 1)]) == 3
            assert renderer.drop_prewarm([(flute, 52, 3), (violin, 62, 1)]) == 1
        assert renderer.wait_idle(timeout=60)
        assert recorder.keys[:2] == urgent[2:]
        assert recorder.keys[2:] == prewarm[1:]                          # in prewarm order
        status = renderer.status()
        assert status["prewarm_done"] == status["prewarm_total"] == 4
        assert status["rendered"] == 6 and status["queue"] == 0
        assert len(renderer.urgent_delays_ms) == 2       # withdrawn requests are not timed


def test_notes_rendered_once_are_read_back_from_the_note_store(tiny_checkpoint, one_thread, tmp_path):
    flute = instrument_key("flute")
    prewarm = [(flute, p, 3) for p in prewarm_order((55, 65))]
    urgent = (instrument_key({"violin": 0.5, "organ": 0.5}), 64, 1)
    kwargs = dict(device="cpu", stream_rate=48000, cache_mb=64, dtype=torch.float32)
    with NoteRenderer(tiny_checkpoint, **kwargs) as first:
        store = first.open_store(tmp_path, "tiny", limit_mb=64)
        assert first.request(urgent) is None
        first.prewarm(prewarm)
        assert first.wait_idle(timeout=60)
        rendered = {key: first.get(key) for key in prewarm + [urgent]}
        status = first.status()
        assert status["rendered"] == len(rendered) and status["stored"] == 0
        assert status["store"]["saved"] == len(rendered) and status["store"]["loaded"] == 0
        assert store.folder.name == "v1-float32-raw"             # the tiny model has no calibration
    recorder = Recorder()
    with NoteRenderer(tiny_checkpoint, on_ready=recorder, urgent_lane=False, **kwargs) as later:  # a later session
        later.open_store(tmp_path, "tiny", limit_mb=64)
        with later._cond:
            later.prewarm(prewarm)
            assert later.request(urgent) is None                # ahead of the prewarm, as ever
        assert later.wait_idle(timeout=60)
        assert recorder.keys[0] == urgent and sorted(recorder.keys[1:]) == sorted(prewarm)
        # the pressed key's note read back head first, the prewarm's whole
        assert not recorder.tails[urgent] and all(recorder.tails[k] for k in prewarm)
        status = later.status()
        assert status["rendered"] == 0 and status["stored"] == len(rendered)
        assert status["prewarm_done"] == len(prewarm) and status["last_urgent_ms"] is not None
        for key, note in rendered.items():
            again = later.get(key)
            assert not again.flags.writeable and len(again) == later.note_length
            if key == urgent:       # rendered head first: resampled in other pieces
                np.testing.assert_allclose(again, note, atol=1e-6)
            else:
                np.testing.assert_array_equal(again, note)
    with NoteRenderer(tiny_checkpoint, **kwargs) as other_model:   # another checkpoint id
        other_model.open_store(tmp_path, "another", limit_mb=64)
        other_model.request(urgent)
        assert other_model.wait_idle(timeout=60)
        assert other_model.status()["rendered"] == 1 and other_model.status()["stored"] == 0


def test_a_bad_stored_note_is_rendered_again(tiny_checkpoint, one_thread, tmp_path):
    key = (instrument_key("organ"), 60, 2)
    kwargs = dict(device="cpu", stream_rate=16000, dtype=torch.float32, urgent_lane=False)
    with NoteRenderer(tiny_checkpoint, **kwargs) as first:
        store = first.open_store(tmp_path, "tiny")
        first.request(key)
        assert first.wait_idle(timeout=60)
        note = first.get(key)
    store.path(key).write_bytes(b"\x93NUMPY garbage")
    with NoteRenderer(tiny_checkpoint, **kwargs) as later:
        later.open_store(tmp_path, "tiny")
        later.request(key)
        assert later.wait_idle(timeout=60)
        status = later.status()
        assert status["rendered"] == 1 and status["stored"] == 0 and status["errors"] == 0
        assert status["store"]["bad"] == 1 and status["store"]["saved"] == 1
        np.testing.assert_allclose(later.get(key), note, atol=1e-6)
    with NoteRenderer(tiny_checkpoint, **kwargs) as third:          # written again, whole
        third.open_store(tmp_path, "tiny")
        third.request(key)
        assert third.wait_idle(timeout=60)
        assert third.status()["stored"] == 1
