"""The live instrument in a GPU's regime, on a CPU: the model's steps are replaced by waits.

    python -m bench.gpu_emulation [--render-ms 3] [--urgent-render-ms 2] [--batch 32] -- ARGS

ARGS are run_synth.py's (the instrument starts as ``python run_synth.py ARGS`` would).  Every
part of the instrument runs as it does on a GPU machine except the model: MIDI, the controller,
the mixer's callback, the renderer's two threads, taking keys over from prewarm batches,
resampling to the stream rate, handing notes over, the cache.  The renderer gets the GPU's
prewarm batch (32 notes) and, instead of the model, waits ``--render-ms`` per prewarm batch and
``--urgent-render-ms`` per urgent batch (its head yielded first, as the CUDA graphs' path does),
then returns quiet noise.  A wait releases the GIL as a CUDA synchronisation does.  On an H100 a
graphed `small` batch takes ~2 ms at batch 1 and ~3 ms at batch 32 (bench/RESULTS-GPU.md, section 1).

What it leaves out: the GPU's own variance, the copies between host and device (tens of µs for
a batch of notes), and the host's other cores (a GPU machine has more; the work that competes
for the GIL is the same).  `bench.latency --gpu-emulation` runs its rows on it.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from sing_synth.engine.renderer import GPU_PREWARM_BATCH


def waiting_stages(seconds: float, urgent_seconds: float, length: int, stride: int):
    """`FastRenderer.stages`' protocol without a model: a prewarm batch (no head asked for)
    waits ``seconds`` in one step; an urgent batch waits ``urgent_seconds`` and yields its head
    first; both return quiet noise (``[B, length]``)."""
    import torch
    waves = torch.randn(1, length, generator=torch.Generator().manual_seed(0)).mul_(0.1)

    def stages(instrument, pitch, velocity, head_frames=0, **_):
        whole = waves.expand(len(pitch), length)
        time.sleep(urgent_seconds if head_frames else seconds)
        if head_frames:
            yield whole[:, :head_frames * stride]
        return whole
    return stages


def emulate(render_ms: float, urgent_ms: float, batch: int = GPU_PREWARM_BATCH) -> None:
    """Every `NoteRenderer` made from now on in this process renders by `waiting_stages`, in
    prewarm batches of ``batch`` notes, without CUDA graphs."""
    from sing_synth.engine.renderer import NoteRenderer
    make = NoteRenderer.__init__

    def __init__(self, *args, **kwargs):
        make(self, *args, **{**kwargs, "prewarm_batch_size": batch, "graphs": False})
        self.fast.stages = waiting_stages(render_ms / 1e3, urgent_ms / 1e3,
                                          self.config.length, self.config.stride)
    NoteRenderer.__init__ = __init__


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu_emulation",
                                description=__doc__.splitlines()[0])
    p.add_argument("--render-ms", type=float, default=3.0,
                   help="wait per prewarm batch, ms (default 3: a graphed 32-note batch on an H100)")
    p.add_argument("--urgent-render-ms", type=float, default=2.0,
                   help="wait per urgent batch, ms (default 2: a graphed batch of 1 on an H100)")
    p.add_argument("--batch", type=int, default=GPU_PREWARM_BATCH,
                   help=f"notes per prewarm batch (default {GPU_PREWARM_BATCH}, the GPU's)")
    p.add_argument("synth_args", nargs=argparse.REMAINDER,
                   help="-- then run_synth.py's arguments")
    args = p.parse_args(argv)
    if args.render_ms < 0 or args.urgent_render_ms < 0 or args.batch < 1:
        p.error("--render-ms and --urgent-render-ms must not be negative, --batch must be >= 1")
    if args.synth_args[:1] == ["--"]:
        args.synth_args = args.synth_args[1:]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    emulate(args.render_ms, args.urgent_render_ms, args.batch)
    from sing_synth.play import main as play
    return play(args.synth_args)


if __name__ == "__main__":
    sys.exit(main())
