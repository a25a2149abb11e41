"""Rendering speed of SING: ms per note, notes/s and achieved FLOP/s, against this machine's GEMM FLOP/s.

    python -m bench.render [--sizes full base small] [--batches 1 8 32] [--min-time 1]
                           [--paths reference fast graphed] [--dtypes bf16 fp16]
                           [--threads N] [--device cpu|cuda] [--markdown OUT.md]

For each named size (random weights, seed 0) and batch it times up to three paths: `reference` (the
`SING` module in fp32, eval, no_grad), `fast` (`FastRenderer` in `best_dtype`, bf16 on an
AVX-512-bf16 CPU or a GPU, or in each of ``--dtypes``) and, on CUDA, `graphed` (the same replayed
from a CUDA graph per batch size, `GraphedRenderer`). Model FLOPs per note are counted analytically
from the config (`model_flops`), and compared with the FLOP/s a plain square matmul reaches on the
same device in the same dtype, measured in the same run.  A row that fails (out of memory, a dtype
the device lacks) is printed with its error; the others go on.
"""
import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from .common import table
from .gpu_emulation import waiting_stages
from sing_synth.config import SIZES, SingConfig, named_config
from sing_synth.fast import FastRenderer, GraphedRenderer, best_dtype
from sing_synth.model import SING

PATHS = ("reference", "fast", "graphed")
DEFAULT_BATCHES = (1, 8, 32)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def parse_dtype(name: str) -> torch.dtype:
    for dtype, short in DTYPE_NAMES.items():
        if name == short:
            return dtype
    raise ValueError(f"unknown dtype {name!r}: choose from {', '.join(DTYPE_NAMES.values())}")


def default_paths(device) -> tuple:
    """Every path the device runs distinctly: `graphed` only on CUDA (elsewhere it is `fast`)."""
    return PATHS if torch.device(device).type == "cuda" else PATHS[:2]


def model_flops(config: SingConfig) -> dict:
    """Forward FLOPs of one note (a multiply-add counts 2), from the config alone.

    LSTM: per layer and step the four gates cost 2 * 4H * (in + H), over `steps` steps, plus the
    Linear(H -> embedding_dim) per step. Decoder, on L = steps - kernel + 1 frames: the kernel-K
    conv 2 * D * C * K * L, two 1x1 convs 2 * C * C * L each, and the projection of each frame to
    `frame` samples 2 * C * frame * L (the overlap-add's additions and the element-wise work are
    left out). Full size: LSTM ~11.2, decoder ~21.8, total ~33.1 GFLOP (SING.md's ~22.5 for the
    decoder counts all 265 steps instead of the 257 the kernel-9 conv leaves).
    """
    hidden, steps = config.lstm_hidden, config.steps
    input_dim = config.instrument_dim + config.pitch_dim + config.velocity_dim + config.time_dim
    lstm = 0
    for layer in range(config.lstm_layers):
        layer_in = input_dim if layer == 0 else hidden
        lstm += 2 * 4 * hidden * (layer_in + hidden) * steps
    lstm += 2 * hidden * config.embedding_dim * steps
    frames = steps - config.kernel + 1
    channels, dim = config.channels, config.embedding_dim
    decoder = (2 * dim * channels * config.kernel * frames
               + 2 * 2 * channels * channels * frames
               + 2 * channels * config.frame * frames)
    return {"lstm": lstm, "decoder": decoder, "total": lstm + decoder}


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, min_time: float, max_calls: int = 1000) -> tuple:
    """Median seconds of `fn()` after one warm-up call, and the number of timed calls.

    If the first timed call takes `min_time` or more, that call alone; otherwise calls repeat until
    they add up to `min_time` and there are at least 3 of them (at most `max_calls`). The warm-up is
    left out of the decision: it is often the slow one (first allocations, oneDNN primitive set-up).
    """
    device = torch.device(device)
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    times = []
    while True:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if times[0] >= min_time or len(times) >= max_calls:
            break
        if len(times) >= 3 and sum(times) >= min_time:
            break
    return statistics.median(times), len(times)


def measure_gemm(dtypes, device="cpu", n: int = None, min_time: float = 0.5) -> dict:
    """FLOP/s of an n x n @ n x n matmul for each dtype (2 n^3 FLOPs per product)."""
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    result = {}
    generator = torch.Generator().manual_seed(0)
    for dtype in dict.fromkeys(dtypes):
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        seconds, _ = time_calls(lambda: torch.matmul(a, b), device, min_time)
        result[dtype] = 2 * n ** 3 / seconds
        del a, b
    return result


@dataclass
class Row:
    size: str
    batch: int
    path: str            # "reference", "fast" or "graphed"
    dtype: str           # compute dtype of the path, e.g. "fp32", "bf16"
    ms_per_call: float
    calls: int           # timed calls the median is taken over
    ms_per_note: float
    notes_per_s: float
    gflops: float        # model GFLOP/s achieved
    gemm_gflops: float   # this machine's matmul GFLOP/s in the same dtype
    ratio: float         # gflops / gemm_gflops
    error: str = ""      # why the row failed (its numbers are then NaN)

    @property
    def label(self) -> str:
        if self.path == "reference":
            return f"{self.dtype} reference"
        return f"{self.path} ({self.dtype})"


def _symbols(batch: int, config: SingConfig, device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    instrument = torch.randint(0, config.n_instruments, (batch,), generator=generator)
    pitch = torch.randint(21, 109, (batch,), generator=generator)
    velocity = torch.randint(0, config.n_velocities, (batch,), generator=generator)
    return instrument.to(device), pitch.to(device), velocity.to(device)


def variants(paths, dtypes) -> list:
    """(path, compute dtype) pairs to time: the reference in fp32, the others in each of ``dtypes``."""
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {unknown}: choose from {', '.join(PATHS)}")
    return [(path, dtype) for path in PATHS if path in paths
            for dtype in ((torch.float32,) if path == "reference" else dtypes)]


def _renderer(model, path, dtype, device, batches, made: dict):
    """The module that renders on ``path``; fast and graphed share one `FastRenderer` per dtype."""
    if path == "reference":
        return model
    if ("fast", dtype) not in made:
        made["fast", dtype] = FastRenderer(model, dtype=dtype, device=device).eval()
    if path == "graphed" and (path, dtype) not in made:
        made[path, dtype] = GraphedRenderer(made["fast", dtype], buckets=batches)
    return made[path, dtype]


def _time_row(renderer, symbols, device, min_time) -> tuple:
    def call():
        with torch.no_grad():
            return renderer(*symbols)
    return time_calls(call, device, min_time)


def run_benchmark(sizes=tuple(SIZES), batches=DEFAULT_BATCHES, paths=PATHS[:2], min_time: float = 1.0,
                  device="cpu", gemm: dict = None, n_instruments: int = 1006, seed: int = 0,
                  progress=None, dtypes=None) -> list:
    """Times every (size, batch, path, dtype); returns a list of `Row`.

    dtypes: compute dtypes of the fast and graphed paths (default `best_dtype(device)`).
    gemm: {dtype: FLOP/s} of this machine's matmul; measured here (`measure_gemm`) when None.
    progress: optional callable given each row as it is measured.
    """
    device = torch.device(device)
    pairs = variants(paths, tuple(dtypes or (best_dtype(device),)))
    if gemm is None:
        gemm = measure_gemm([dtype for _, dtype in pairs], device)
    rows = []
    for size in sizes:
        config = named_config(size, n_instruments=n_instruments)
        flops = model_flops(config)["total"]
        torch.manual_seed(seed)
        model = SING(config).to(device).eval()
        made = {}
        for batch in batches:
            symbols = _symbols(batch, config, device, seed)
            for path, dtype in pairs:
                peak = gemm[dtype]
                try:
                    seconds, calls = _time_row(_renderer(model, path, dtype, device, batches, made),
                                               symbols, device, min_time)
                except (RuntimeError, torch.OutOfMemoryError) as exc:
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    row = Row(size, batch, path, dtype_name(dtype), math.nan, 0, math.nan, math.nan,
                              math.nan, peak / 1e9, math.nan, error=f"{type(exc).__name__}: {message}"[:120])
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                else:
                    achieved = flops * batch / seconds
                    row = Row(size=size, batch=batch, path=path, dtype=dtype_name(dtype),
                              ms_per_call=seconds * 1e3, calls=calls,
                              ms_per_note=seconds * 1e3 / batch, notes_per_s=batch / seconds,
                              gflops=achieved / 1e9, gemm_gflops=peak / 1e9, ratio=achieved / peak)
                rows.append(row)
                if progress is not None:
                    progress(row)
        del model, made
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def prewarm_benchmark(checkpoint, preset="piano", urgent_every=0.25, threads=None,
                      stream_rate=48000, device=None, store=None) -> dict:
    """Prewarm of one preset through `engine.NoteRenderer`, as the live instrument does it (every
    velocity layer, the preset's pitch range, middle octaves first, resampled to the stream rate),
    with a key pressed every ``urgent_every`` seconds meanwhile (other instruments, so never a
    prewarmed key): seconds for the whole preset, and the pressed keys' delays request -> ready.
    ``store``: a note store folder (`engine.store`): written when empty, read when an earlier run
    of the same preset filled it."""
    from sing_synth.checkpoint import load_checkpoint
    from sing_synth.engine import Controller, Mixer, NoteRenderer, instrument_key
    from sing_synth.engine.store import file_id
    from sing_synth.presets import load_presets
    ckpt = load_checkpoint(checkpoint)
    presets = load_presets()
    chosen = presets[preset]
    others = [p for p in presets.values() if p.name != preset and p.instrument != chosen.instrument]
    with NoteRenderer(ckpt, stream_rate=stream_rate, cache_mb=4096, threads=threads, device=device) as renderer:
        if store is not None:
            renderer.open_store(store, file_id(checkpoint), 8192)
        before = renderer.status()["store"]["loaded"] if store is not None else 0
        controller = Controller(Mixer(stream_rate), renderer, presets, preset, stream_rate)
        renderer.warm_up(renderer.make_key(others[0], 60, 100))   # oneDNN sets up its kernels
        renderer.request(renderer.make_key(others[0], 61, 100), urgent=False)
        renderer.prewarm([renderer.make_key(others[0], 62, 100), renderer.make_key(others[0], 63, 100)])
        renderer.wait_idle()
        skip = len(renderer.urgent_delays_ms)
        start = time.perf_counter()
        queued = controller.prewarm(chosen)
        k = 0
        while not renderer.wait_idle(timeout=urgent_every):
            other = others[k % len(others)]
            lo, hi = other.pitch_range
            renderer.request((instrument_key(other.instrument), lo + (k * 7) % (hi - lo + 1), 0))
            k += 1
        elapsed = time.perf_counter() - start
        status = renderer.status()
        delays = renderer.urgent_delays_ms[skip:]
    if store is None:
        how = "off"
    else:
        loaded = status["store"]["loaded"] - before
        how = f"read ({loaded} notes)" if loaded else f"written ({status['store']['saved']} notes)"
    return {"preset": preset, "notes": queued, "seconds": elapsed, "urgent": k, "store": how,
            "notes_per_s": (queued + k) / elapsed, "threads": status["threads"],
            "dtype": status["dtype"], "prewarm_batch": renderer.prewarm_batch_size,
            **_delay_stats(delays, "urgent_")}


def urgent_benchmark(checkpoint, notes=100, device=None, threads=None, stream_rate=48000) -> dict:
    """Keys rendered on demand by an idle `engine.NoteRenderer` (no prewarm), one at a time, as a
    key pressed on the keyboard is: request -> the note's head ready to play (the renderer's own
    clock; the audio transport comes on top).  Distinct piano keys, after three warm-up keys."""
    from sing_synth.checkpoint import load_checkpoint
    from sing_synth.engine import NoteRenderer
    from sing_synth.presets import load_presets
    piano = load_presets()["piano"]
    lo, hi = piano.pitch_range
    width = hi - lo + 1
    with NoteRenderer(load_checkpoint(checkpoint), stream_rate=stream_rate, cache_mb=4096,
                      threads=threads, device=device) as renderer:
        for pitch in (lo, lo + 1, lo + 2):             # warm-up: kernels, cuDNN plans, soxr
            renderer.request(renderer.make_key(piano, pitch, 64))
            renderer.wait_idle()
        skip = len(renderer.urgent_delays_ms)
        for i in range(notes):
            velocity = (100, 127, 75, 50, 25)[(i // width) % 5]
            renderer.request(renderer.make_key(piano, lo + (i * 29) % width, velocity))
            renderer.wait_idle()
        delays = renderer.urgent_delays_ms[skip:]
        status = renderer.status()
    return {"device": status["device"], "dtype": status["dtype"], "notes": len(delays),
            **_delay_stats(delays)}


def inflight_benchmark(checkpoint, keys=60, batch=32, render_ms=None, device=None,
                       threads=None, stream_rate=48000, urgent_ms=None) -> dict:
    """Keys pressed while their note is in flight in a prewarm batch of ``batch`` notes (the
    GPU's prewarm batch is 32): press -> note ready (its head, when handed over head first),
    measured by a ready callback.  Each press is told by where its note was: ``rendering`` (the
    batch still rendering: the key is taken over and rendered as urgent) or ``handing over``
    (the batch rendered, its notes being prepared one by one: the key's goes next).

    ``render_ms``: the model's steps are replaced by a wait of that many ms per prewarm batch,
    and ``urgent_ms`` (default: the same) per urgent batch, its head yielded first as the CUDA
    graphs' path does (`NoteRenderer._graph_stages`).  That puts a CPU in a GPU's regime (on an
    H100 a graphed `small` batch takes ~2 ms at batch 1 and ~3 ms at batch 32), so that what is
    measured is the rest of the way: taking over, resampling, handing over."""
    from sing_synth.checkpoint import load_checkpoint
    from sing_synth.engine import NoteRenderer, instrument_key
    pressed, ready = {}, {}

    def on_ready(key, _note):
        ready.setdefault(key, time.perf_counter())

    with NoteRenderer(load_checkpoint(checkpoint), stream_rate=stream_rate, cache_mb=4096,
                      threads=threads, device=device, prewarm_batch_size=batch, on_ready=on_ready,
                      graphs=False if render_ms is not None else None) as renderer:
        if render_ms is not None:
            urgent_ms = render_ms if urgent_ms is None else urgent_ms
            renderer.fast.stages = waiting_stages(render_ms / 1e3, urgent_ms / 1e3,
                                                  renderer.config.length, renderer.config.stride)
        names = list(renderer.instruments.values())
        notes = [(instrument_key(n), p, v) for n in names for p in range(36, 84) for v in (1, 3)]
        renderer.prewarm(notes[:max(2 * keys * batch, 4 * batch)])
        deadline = time.perf_counter() + 300
        while len(pressed) < keys and time.perf_counter() < deadline and not renderer.wait_idle(0.015):
            with renderer._cond:
                flying = [k for k in renderer._in_flight if k not in renderer._requested_at]
                key = flying[-1] if flying else None
                phase = "rendering" if key in renderer._stepping else "handing over"
                t = time.perf_counter()
                if key is not None and renderer.request(key) is None:    # still in flight: pressed
                    pressed[key] = (t, phase)
        renderer.wait_idle()
        status = renderer.status()
    delays = {k: 1e3 * (ready[k] - t) for k, (t, _) in pressed.items() if k in ready}
    phases = {phase: _delay_stats([d for k, d in delays.items() if pressed[k][1] == phase])
              | {"notes": sum(1 for k in delays if pressed[k][1] == phase)}
              for phase in ("rendering", "handing over")}
    return {"device": status["device"], "batch": batch, "render_ms": render_ms, "urgent_ms": urgent_ms,
            "notes": len(delays), "phases": phases, **_delay_stats(list(delays.values()))}


def _delay_stats(delays, prefix="") -> dict:
    """p50, p99 and max of ``delays`` (ms), keys ``{prefix}p50_ms`` ...; NaN when there are none."""
    return {f"{prefix}p50_ms": statistics.median(delays) if delays else math.nan,
            f"{prefix}p99_ms": _percentile(delays, 99), f"{prefix}max_ms": max(delays, default=math.nan)}


def _delays_table(caption: str, first: tuple, r: dict) -> str:
    """A one-row markdown table: the ``first`` (header, value) columns, then p50/p99/max ms."""
    header = [h for h, _ in first] + ["p50 ms", "p99 ms", "max ms"]
    values = [v for _, v in first] + [_fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["max_ms"])]
    return f"\n\n{caption}:\n\n" + table(header, [values])


def _percentile(values, q):
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q / 100 * len(ordered))) - 1)]


def prewarm_markdown(r: dict) -> str:
    header = ("preset", "notes", "seconds", "notes/s (with the pressed keys)", "render threads",
              "dtype", "prewarm batch", "note store", "keys pressed meanwhile", "their delay p50 ms",
              "p99 ms", "max ms")
    cells = (r["preset"], str(r["notes"]), _fmt(r["seconds"]), _fmt(r["notes_per_s"]),
             str(r["threads"]), r["dtype"], str(r["prewarm_batch"]), r.get("store", "off"),
             str(r["urgent"]), _fmt(r["urgent_p50_ms"]), _fmt(r["urgent_p99_ms"]), _fmt(r["urgent_max_ms"]))
    return "\n".join(["| " + " | ".join(header) + " |",
                      "|" + "|".join(["---"] + ["---:"] * 4 + ["---", "---:", "---", "---:", "---:", "---:", "---:"]) + "|",
                      "| " + " | ".join(cells) + " |"])


def _fmt(value: float) -> str:
    """Three significant figures, no exponent."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


TABLE_HEADER = ("size", "batch", "path", "ms/note", "notes/s", "model GFLOP/s", "model/GEMM FLOP/s")


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|"]
    for row in rows:
        if row.error:
            cells = (row.size, str(row.batch), f"{row.label}: failed, {row.error.replace('|', '/')}",
                     "-", "-", "-", "-")
        else:
            cells = (row.size, str(row.batch), row.label, _fmt(row.ms_per_note), _fmt(row.notes_per_s),
                     _fmt(row.gflops), f"{row.ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gemm_line(gemm: dict, n: int, device) -> str:
    parts = ", ".join(f"{dtype_name(dtype)} {flops / 1e9:,.0f} GFLOP/s" for dtype, flops in gemm.items())
    return f"GEMM {n}x{n} on {device} ({torch.get_num_threads()} threads): {parts}"


def flops_line(sizes) -> str:
    parts = []
    for size in sizes:
        f = model_flops(named_config(size))
        parts.append(f"{size} {f['total'] / 1e9:.1f} (LSTM {f['lstm'] / 1e9:.1f}, "
                     f"decoder {f['decoder'] / 1e9:.1f})")
    return "model GFLOP per note: " + "; ".join(parts)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(device) -> str:
    device = torch.device(device)
    text = (f"{platform.machine()}, {cpu_name()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def _live_tables(args, device) -> str:
    """The --urgent and --prewarm tables (the live renderer on ``device``), or ''."""
    if not (args.urgent or args.prewarm or args.in_flight):
        return ""
    from .common import SHIPPED
    checkpoint = args.checkpoint or SHIPPED
    text = ""
    if args.urgent:
        r = urgent_benchmark(checkpoint, args.urgent, device=device, threads=args.threads)
        text += _delays_table("Keys rendered on demand by an idle live renderer (request -> head "
                              "ready, before the audio transport)",
                              (("device", r["device"]), ("dtype", r["dtype"]), ("notes", r["notes"])), r)
    if args.prewarm:
        r = prewarm_benchmark(checkpoint, preset=args.prewarm, threads=args.threads, device=device)
        text += "\n\nPrewarm of one preset through the live renderer:\n\n" + prewarm_markdown(r)
    if args.in_flight:
        r = inflight_benchmark(checkpoint, args.in_flight, render_ms=args.render_ms, device=device,
                               threads=args.threads, urgent_ms=args.urgent_render_ms)
        text += "\n\n" + inflight_markdown(r)
    return text


def inflight_markdown(r: dict) -> str:
    """`inflight_benchmark`'s table: all keys, then by where each key's note was when pressed."""
    model = ("the model" if r["render_ms"] is None else
             f"a wait of {_fmt(r['render_ms'])} ms per prewarm batch and {_fmt(r['urgent_ms'])} ms "
             "per urgent batch, heads first")
    rows = [(name, row["notes"], _fmt(row["p50_ms"]), _fmt(row["p99_ms"]), _fmt(row["max_ms"]))
            for name, row in [("any", r), *r["phases"].items()]]
    return (f"Keys pressed while their note is in a prewarm batch of {r['batch']} on {r['device']} "
            f"(press -> note ready; rendering by {model}):\n\n"
            + table(("note when pressed", "notes", "p50 ms", "p99 ms", "max ms"), rows))


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES),
                        help="named model sizes (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES),
                        help="notes per call (default: 1 8 32)")
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help="reference (fp32 SING), fast (FastRenderer), graphed (fast from CUDA graphs); "
                             "default: all that differ on the device (graphed on CUDA only)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPE_NAMES.values()),
                        help="compute dtypes of fast and graphed (default: the device's best)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timed calls per row (at least 3 calls unless one call exceeds it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--gemm-size", type=int, default=None,
                        help="matrix size of the GEMM reference (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="model of --urgent and --prewarm (default: the shipped model)")
    parser.add_argument("--urgent", type=int, default=0, metavar="N",
                        help="also N keys rendered on demand by the live renderer on --device: "
                             "request -> head ready, p50/p99 (default 0: skip)")
    parser.add_argument("--prewarm", default=None, metavar="PRESET",
                        help="also the prewarm of this preset through the live renderer on --device")
    parser.add_argument("--in-flight", type=int, default=0, metavar="N",
                        help="also N keys pressed while their note is in a 32-note prewarm batch "
                             "(default 0: skip)")
    parser.add_argument("--render-ms", type=float, default=None, metavar="MS",
                        help="with --in-flight: replace the model's steps by a wait of MS per prewarm "
                             "batch (a GPU's regime on a CPU; default: the model renders)")
    parser.add_argument("--urgent-render-ms", type=float, default=None, metavar="MS",
                        help="with --render-ms: the wait per urgent batch (default: --render-ms)")
    parser.add_argument("--markdown", metavar="OUT", default=None,
                        help="also write the table, with date, machine and command, to this file")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batches):
        parser.error("--batches must be positive")
    if args.in_flight < 0 or any(ms is not None and ms < 0 for ms in (args.render_ms, args.urgent_render_ms)):
        parser.error("--in-flight, --render-ms and --urgent-render-ms must not be negative")
    if args.urgent_render_ms is not None and args.render_ms is None:
        parser.error("--urgent-render-ms goes with --render-ms")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available in this torch build")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gemm_n = args.gemm_size or (8192 if device.type == "cuda" else 2048)
    paths = args.paths or default_paths(device)
    dtypes = [parse_dtype(d) for d in args.dtypes] if args.dtypes else [best_dtype(device)]
    load_before = _load()
    gemm = measure_gemm([dtype for _, dtype in variants(paths, dtypes)], device, n=gemm_n,
                        min_time=min(0.5, args.min_time))
    header = [gemm_line(gemm, gemm_n, device), flops_line(args.sizes)]
    print("\n".join(header), flush=True)
    rows = run_benchmark(args.sizes, args.batches, paths, args.min_time, device=device, gemm=gemm, dtypes=dtypes,
                         progress=lambda r: print(f"  {r.size} b{r.batch} {r.label}: " + (
                             r.error or f"{r.ms_per_note:.2f} ms/note ({r.calls} calls)"),
                             file=sys.stderr, flush=True))
    table = markdown_table(rows) + _live_tables(args, device)
    load = f"load average (1 min, {os.cpu_count()} CPUs) before / after: {load_before} / {_load()}"
    print(load, file=sys.stderr)
    print()
    print(table, flush=True)
    if args.markdown:
        argv_text = sys.argv[1:] if argv is None else list(argv)
        command = "python -m bench.render " + " ".join(shlex.quote(a) for a in argv_text)
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        text = "\n".join([
            f"# SING rendering benchmark, {now}",
            "",
            f"- machine: {machine_line(device)}",
            f"- command: `{command.strip()}`",
            f"- {load}",
            f"- {header[0]}",
            f"- {header[1]}",
            f"- random weights (seed 0), n_instruments 1006; median of timed calls after one warm-up, "
            f"min time {args.min_time:g} s per row",
            "",
            table,
            "",
        ])
        with open(args.markdown, "w") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
