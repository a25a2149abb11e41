"""Cost of the audio callback, and optionally the renderer's urgent latency.

    python -m sing_synth.engine.bench                      # 16, 64, 128 voices, 256-frame blocks
    python -m sing_synth.engine.bench --voices 128 --blocks 4000 --frames 128
    python -m sing_synth.engine.bench --renderer small     # + urgent delay, random small model

The callback is called directly (no sound card), block after block, with every voice sounding:
'rate 1' (slice copies), 'bend' (every voice at varispeed, interpolated) and 'mixed' (a quarter
bent, a quarter in their release).  Wall time is what a real-time deadline sees (it includes
preemption by other processes on a loaded machine); CPU time is the callback's own thread time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from .mixer import Mixer, NoteOff, NoteOn, PitchBend


def _note(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    note = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    note.flags.writeable = False
    return note


def bench_mixer(voices: int, mode: str, frames=256, rate=48000, blocks=2000, warmup=100,
                paced=False, kernel="auto") -> dict:
    """``paced``: one callback a period, the thread asleep between them, as a stream's thread
    calls it; its caches (and this VM's vCPU) go cold meanwhile, which costs the numpy path
    about twice its back-to-back time here.  Back to back, it is the callback's CPU cost alone.
    ``kernel``: the `Mixer`'s ('compiled', 'numpy' or 'auto')."""
    note = _note((blocks + warmup) * frames / rate * 1.02 + 1, rate)
    mixer = Mixer(rate, blocksize_max=max(4096, frames), polyphony=max(128, voices), kernel=kernel)
    for v in range(voices):
        # channels 0-3 bent in 'bend' mode, channel 0 only in 'mixed'; channel 1 released in 'mixed'
        mixer.post(NoteOn(v % 4, v % 128, note, gain=0.05, release=30.0))
    if mode == "bend":
        for c in range(4):
            mixer.post(PitchBend(c, 1.0 + 0.01 * (c + 1)))
    elif mode == "mixed":
        mixer.post(PitchBend(0, 1.02))
    out = np.zeros((frames, 2), np.float32)
    for b in range(warmup):
        if b == warmup // 2 and mode == "mixed":
            for v in range(1, voices, 4):
                mixer.post(NoteOff(1, v % 128))
        mixer.callback(out, frames, None, None)
    mixer.reset_timing()
    _, cpu = _time_calls(lambda: mixer.callback(out, frames, None, None), frames / rate, blocks, 0,
                         paced)
    assert mixer.sounding_voices == voices and mixer.errors == 0, mixer.stats()
    wall = mixer.times.since(0) * 1e6         # the callback's own clock
    return {"voices": voices, "mode": mode, "kernel": mixer.kernel,
            **_row(wall, cpu, frames, rate, paced)}


def bench_copy(kib=128, frames=256, rate=48000, blocks=2000, warmup=100, paced=False) -> dict:
    """A reference for `bench_mixer`: one ``np.copyto`` of ``kib`` KiB (about what the mixer
    reads from 128 voices' notes a block), timed the same two ways.  Here, with the thread asleep
    between calls, even this finds its data cold: several times its back-to-back time."""
    src = np.ones(kib * 256, np.float32)
    dst = np.empty_like(src)
    wall, cpu = _time_calls(lambda: np.copyto(dst, src), frames / rate, blocks, warmup, paced)
    return {"voices": None, "mode": f"copy{kib}", **_row(wall, cpu, frames, rate, paced)}


def _time_calls(call, period: float, blocks: int, warmup: int, paced: bool) -> tuple:
    """Wall and thread CPU time of ``blocks`` calls (microseconds) after ``warmup`` untimed ones;
    ``paced``: one call a period, asleep between them."""
    wall, cpu = np.empty(blocks), np.empty(blocks)
    deadline = time.perf_counter()
    for b in range(-warmup, blocks):
        t0, c0 = time.perf_counter(), time.thread_time()
        call()
        if b >= 0:
            wall[b], cpu[b] = time.perf_counter() - t0, time.thread_time() - c0
        if paced:
            deadline += period
            time.sleep(max(0.0, deadline - time.perf_counter()))
    return wall * 1e6, cpu * 1e6


def _row(wall, cpu, frames: int, rate: int, paced: bool) -> dict:
    budget = frames / rate * 1e6
    p99 = float(np.percentile(wall, 99))
    return {"frames": frames, "paced": bool(paced),
            "wall_p50_us": float(np.percentile(wall, 50)), "wall_p99_us": p99,
            "wall_max_us": float(wall.max()), "cpu_p50_us": float(np.percentile(cpu, 50)),
            "cpu_p99_us": float(np.percentile(cpu, 99)), "budget_us": budget,
            "load_p99": p99 / budget}


def bench_renderer(size: str, notes: int = 16, stream_rate=48000) -> dict:
    """Urgent delays with a random-weights model of ``size`` while a prewarm queue is busy."""
    import torch

    from ..checkpoint import Checkpoint
    from ..config import named_config
    from ..model import SING
    from .renderer import NoteRenderer, instrument_key, prewarm_order

    torch.manual_seed(0)
    model = SING(named_config(size, n_instruments=8)).eval()
    with NoteRenderer(Checkpoint(model, {}), stream_rate=stream_rate) as renderer:
        inst = instrument_key(0)
        renderer.request((inst, 60, 0))            # first batch: warm-up
        renderer.wait_idle()
        renderer.prewarm([(inst, p, 3) for p in prewarm_order((24, 96))])
        for k in range(notes):
            time.sleep(0.25)
            renderer.request((instrument_key(1 + k % 7), 40 + k, 2))
        renderer.wait_idle()
        delays = renderer.urgent_delays_ms[1:]
        status = renderer.status()
    return {"size": size, "device": status["device"], "dtype": status["dtype"],
            "urgent_p50_ms": float(np.percentile(delays, 50)),
            "urgent_max_ms": float(np.max(delays)),
            "render_ms_per_note": status["render_ms_per_note"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--modes", nargs="+", default=["rate1", "bend", "mixed"])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--renderer", choices=["small", "base", "full"])
    parser.add_argument("--paced", action="store_true",
                        help="one callback a period, asleep between them (as a stream calls it)")
    parser.add_argument("--kernel", choices=["auto", "compiled", "numpy"], default="auto",
                        help="the mixer's block: compiled (C) or numpy")
    args = parser.parse_args(argv)
    print(f"callback ({args.kernel} kernel), {args.frames}-frame blocks at {args.rate} Hz "
          f"(budget {args.frames / args.rate * 1e6:.0f} us), {args.blocks} blocks")
    print(f"{'voices':>6} {'mode':>6} | {'wall p50':>9} {'wall p99':>9} {'wall max':>9} | "
          f"{'cpu p50':>8} {'cpu p99':>8} | p99/budget")
    for mode in args.modes:
        for voices in args.voices:
            r = bench_mixer(voices, mode, args.frames, args.rate, args.blocks, paced=args.paced,
                            kernel=args.kernel)
            print(f"{voices:>6} {mode:>6} | {r['wall_p50_us']:7.0f}us {r['wall_p99_us']:7.0f}us "
                  f"{r['wall_max_us']:7.0f}us | {r['cpu_p50_us']:6.0f}us {r['cpu_p99_us']:6.0f}us | "
                  f"{r['load_p99']:.1%}")
    if args.renderer:
        r = bench_renderer(args.renderer, stream_rate=args.rate)
        print(f"renderer {r['size']} on {r['device']} ({r['dtype']}): urgent delay p50 "
              f"{r['urgent_p50_ms']:.0f} ms, max {r['urgent_max_ms']:.0f} ms "
              f"(prewarm queue busy); {r['render_ms_per_note']:.1f} ms/note in the last batch")


if __name__ == "__main__":
    main()
