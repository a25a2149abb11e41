"""Every benchmark in one run, side by side with FluidSynth: `make bench` (= python -m bench
--markdown bench/RESULTS.md).

    python -m bench [--quick] [--parts render latency mixer startup] [--checkpoint PATH]
                    [--notes 200] [--soak-s 60] [--markdown OUT.md]

Parts (each also runs alone: ``python -m bench.render``, ``bench.latency``, ``bench.mixer``,
``bench.startup``):

1. render: notes/s per model size, batch and path (dtype) on the CPU, this machine's GEMM FLOP/s
   measured in the same run and the ratio (`bench.render`); prewarm of one preset through
   `engine.NoteRenderer`, with keys pressed meanwhile.
2. latency: note-on -> first sound through one jackd dummy server at 48 kHz, periods 256 and 64:
   sing-synth cached and not cached, FluidSynth (`bench.latency`).
3. mixer: callback time against voices, a 60 s soak with 128 voices while the renderer prewarms,
   CPU use of both synths with 128 notes held (`bench.mixer`).
4. start-up to first sound of both synths; sing-synth's memory against ``--cache-mb``
   (`bench.startup`).

``--quick``: small sizes and short runs (a minute or two; the numbers are indicative only).
Prints the tables and, with ``--markdown``, writes them with the date, the machine, the load
and the commands.  Without the shipped model, a random-weights model of its config stands in
(timing does not depend on the weights); the tables say which was used.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time

from . import common

PARTS = ("render", "latency", "mixer", "startup")
PERIOD_US = 256 / 48000 * 1e6


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, short runs")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="SING checkpoint for the live benches (default: the shipped model, else "
                        "a random-weights model of its config)")
    p.add_argument("--notes", type=int, default=None, help="notes per latency row (default 200; quick 20)")
    p.add_argument("--soak-s", type=float, default=None, help="soak seconds (default 60; quick 10)")
    p.add_argument("--soak-runs", type=int, default=None,
                   help="soaks of each synth, alternating (default 3; quick 1)")
    p.add_argument("--markdown", default=None, metavar="OUT.md", help="also write the report here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the render part (default: torch's, one per core); give "
                        "the idle cores when something else keeps some busy: OpenMP threads that "
                        "share a core with another job wait on each other and time nothing useful")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.notes is not None and args.notes < 1:
        p.error("--notes must be >= 1")
    if args.soak_runs is not None and args.soak_runs < 1:
        p.error("--soak-runs must be >= 1")
    if args.soak_s is not None and args.soak_s <= 0:
        p.error("--soak-s must be > 0")
    return args


def settings(args) -> dict:
    quick = args.quick
    return {
        "sizes": ["small"] if quick else ["full", "base", "small"],
        "batches": [1, 8] if quick else [1, 8, 32],
        "min_time": 0.2 if quick else 1.0,
        "periods": [256] if quick else [256, 64],
        "notes": args.notes or (20 if quick else 200),
        "voices": [1, 16, 128] if quick else [1, 8, 16, 32, 64, 128, 256],
        "blocks": 300 if quick else 2000,
        "soak_s": args.soak_s or (10.0 if quick else 60.0),
        "soak_runs": args.soak_runs or (1 if quick else 3),
        "cpu_s": 3.0 if quick else 10.0,
        "runs": 1 if quick else 3,
        "caches": [16] if quick else [64, 256, 1024],
        "min_notes": 40 if quick else 150,
        "threads": args.threads,
    }


log = common.log


# ------------------------------------------------------------------------------------ parts
def run_render(s, checkpoint) -> dict:
    import torch

    from . import render
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    device = torch.device("cpu")
    dtypes = {"reference": torch.float32, "fast": render.best_dtype(device)}
    gemm_n = 2048
    gemm = render.measure_gemm(list(dtypes.values()), device, n=gemm_n, min_time=min(0.5, s["min_time"]))
    log("render: " + render.gemm_line(gemm, gemm_n, device))
    rows = render.run_benchmark(s["sizes"], s["batches"], render.default_paths(device), s["min_time"], device=device,
                                gemm=gemm, progress=lambda r: log(f"  {r.size} b{r.batch} {r.label}: "
                                                                  f"{r.ms_per_note:.2f} ms/note"))
    prewarm = []
    with tempfile.TemporaryDirectory(prefix="singbench-store-") as store:
        # one thread: writing the note store, then a new renderer reading it (a later session)
        for threads, folder in [(1, store), (1, store)] + [(n, None) for n in {torch.get_num_threads()} - {1}]:
            log(f"  prewarm of one preset, {threads} render thread(s), note store {'on' if folder else 'off'}")
            prewarm.append(render.prewarm_benchmark(checkpoint, threads=threads, store=folder))
    text = "\n".join([
        f"- {render.gemm_line(gemm, gemm_n, device)}",
        f"- {render.flops_line(s['sizes'])}",
        f"- random weights (seed 0), n_instruments 1006 (speed does not depend on them); median of "
        f"timed calls after one warm-up, min time {s['min_time']:g} s per row; torch's threads "
        f"({torch.get_num_threads()})",
        "",
        render.markdown_table(rows),
        "",
        "Prewarm of one preset through `engine.NoteRenderer` (the live path: every velocity layer "
        "of the preset's range, resampled to 48 kHz), a key of another instrument pressed every "
        "0.25 s meanwhile; its delay is request -> note ready.  Note store 'written': an empty "
        "store, every note rendered and written; 'read': a new renderer on that store, as the "
        "next session of the instrument (each note read from disk and resampled, no model):",
        "",
        "\n".join("\n".join(render.prewarm_markdown(r).splitlines()[(0 if i == 0 else 2):])
                  for i, r in enumerate(prewarm)),
    ])
    return {"rows": rows, "prewarm": prewarm, "text": text}


def run_latency(s, checkpoint) -> dict:
    from . import latency
    results = latency.run(s["periods"], s["notes"], checkpoint)
    text = "\n".join([
        "Note-on -> first sample above -80 dBFS, on JACK's frame clock (0 = the first frame of the "
        "period the note-on entered the graph in).  sing-synth runs with `--audio-api jack` (MIDI "
        "handled in its audio callback) unless marked PortAudio + rtmidi (the default API).  "
        "The prewarm-running row's notes (velocity 25, every preset) are played twice; the second "
        "time, from the cache, gives each note's own attack, which is taken off its first onset "
        "(a pad's attack takes up to ~115 ms to reach -80 dBFS; its note gives the onsets with it).  "
        "'In the note store': a new sing-synth on the note store the first one wrote plays the "
        "same keys, not in its memory, each read from disk and resampled.  'Right after a program "
        "change': each preset's middle key just after its program change, when that key is in "
        "the preset's first prewarm batch; played again at once for its attack, taken off the same "
        "way.  Every other row runs with the note store off.",
        "",
        latency.markdown(results),
    ])
    return {"results": results, "text": text}


def run_mixer(s, checkpoint) -> dict:
    from . import mixer
    sweep = mixer.sweep(s["voices"], blocks=s["blocks"])
    soak = mixer.soak_runs(checkpoint, s["soak_s"], s["soak_runs"])   # a JACK server each
    cpu = common.isolated(mixer.cpu_use, checkpoint, seconds=s["cpu_s"])
    text = "\n".join([
        f"Callback time, `Mixer.callback` called directly ({s['blocks']} blocks of 256 frames at "
        "48 kHz, every voice sounding; 'mixed': a quarter of the voices pitch-bent, a quarter "
        "releasing), as a share of the 5.33 ms period; called back to back (its CPU cost), then "
        "one a period with the thread asleep between, as a stream calls it (the caches, and this "
        "VM's vCPU, go cold between calls).  Kernel 'compiled': the block the instrument mixes "
        "(`_mixc.Kernel`, the whole voice table in one C call); 'numpy': the whole-table numpy "
        "passes it replaced (the fallback where no C compiler was at install), as the reference:",
        "",
        mixer.sweep_markdown(sweep),
        "",
        "Soak through jackd (period 256), sing-synth `--audio-api jack`, organ, 128 voices re-struck "
        "every 3 s, a program change every 4 s on channel 6 keeping the renderer prewarming; "
        "FluidSynth through the same schedule (its organ), a sample player for comparison, alone "
        f"and{mixer.LOADED} -- sing-synth's renderer prewarming the same program changes in a "
        "process of its own with no audio (`bench.load`), so that FluidSynth runs on the machine "
        "state sing-synth's soak has; the three alternate, each run its own server.  "
        "Which client was late in each xrun, and in "
        "what state, from jackd's log: 'Triggered' means the client's thread had not yet started "
        "the cycle at the deadline (not scheduled in time), 'Running' that it was still running.  "
        "jackd runs with -v, which logs how long the graph had when it found a cycle unfinished: "
        "a whole period when the client overran; less when the dummy driver's timer woke the "
        "server late (this VM's timers, up to 5 ms) and it began the next cycle early to catch up "
        "its schedule, so whichever client was still running is logged late.  Those cycles (less "
        "than 90% of the period) are counted apart, and so are cycles in which the synth had not "
        "started because its MIDI source, before it in the graph, was late too: the target is "
        "judged on the synth's own.  "
        "Steal: time the hypervisor gave this VM's CPUs to others during the soak; run-queue wait: "
        "time the synth's real-time threads were ready but not running (/proc schedstat).  "
        "sing-synth applies MIDI and mixer events each only in the first 15% of a period "
        "(`jack_io.MIDI_BUDGET`, `Mixer.event_budget`): a re-struck 128-note chord is 256 "
        "messages, spread over a few periods:",
        "",
        mixer.soak_markdown(soak),
        "",
        f"CPU use, 128 notes held for {s['cpu_s']:g} s (organ, program 16, on both), utime + stime "
        "of the process over that interval:",
        "",
        mixer.cpu_markdown(cpu),
    ])
    return {"sweep": sweep, "soak": soak, "cpu": cpu, "text": text}


def run_startup(s, checkpoint) -> dict:
    from . import startup
    start = common.isolated(startup.startup, checkpoint, s["runs"])    # a JACK server each
    memory = common.isolated(startup.memory, checkpoint, s["caches"], min_notes=s["min_notes"])
    text = "\n".join([
        "Command start (Popen) -> first sound, a note-on sent as soon as the MIDI port appears "
        "(the note, middle C at velocity 100, is the one sing-synth renders at start-up before "
        "its JACK client runs, so this is its time to ready; the note store is off):",
        "",
        startup.startup_markdown(start),
        "",
        "sing-synth's resident memory against `--cache-mb` (`--no-prewarm`; program changes through "
        "the presets until 1.5x the cache, and at least "
        f"{s['min_notes']} notes, was rendered):",
        "",
        startup.memory_markdown(memory),
    ])
    return {"startup": start, "memory": memory, "text": text}


# ------------------------------------------------------------------------------------ targets
def _verdict(ok) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def _soak_target(soaks, every) -> tuple:
    """The soak's row: judged on sing-synth's own late cycles; those in cycles the JACK server
    itself began late (the VM's timers) or behind the late MIDI sender are counted apart
    (`mixer.late_causes`)."""
    from . import mixer
    late = sum(r["synth_late"] for r in soaks)
    own = sum(mixer.own_late(r) for r in soaks)
    triggered = sum(r.get("late_states", {}).get("Triggered", 0) for r in soaks)
    text = f"sing-synth late in {len(soaks)} run(s): {mixer.late_summary(every, 'sing-synth')}"
    if late:
        text += f", {triggered} of the {late} not yet started (Triggered)"
    short = [r for r in soaks if r.get("synth_late_short")]
    if short:
        had = min(r["short_had_ms"] for r in short)
        text += (f"; {sum(r['synth_late_short'] for r in short)} of the {late} in cycles the server "
                 f"itself began late (the graph had {had:.2f} ms or more of "
                 f"{short[0]['period'] / 48.0:.2f})")
    behind = sum(r.get("synth_late_behind", 0) for r in soaks)
    if behind:
        text += f"; {behind} not started behind the late MIDI sender"
    if late > own:
        text += f"; late of its own: {mixer.late_summary(every, 'sing-synth', mixer.own_late)}"
    text += f"; the bench's MIDI sender {sum(r['others_late'] for r in soaks)}"
    dsp = [r["dsp_max"] for r in soaks if r.get("dsp_max") is not None]
    if dsp:
        text += (f"; sing-synth's callback returned by {max(dsp):g}% of the period at the latest "
                 f"(its status lines)")
    for synth, how in (("FluidSynth", "on the same schedule"),
                       ("FluidSynth" + mixer.LOADED, "with sing-synth's renderer load beside it")):
        fluid = mixer.late_summary(every, synth)
        if fluid:
            text += (f"; FluidSynth late {fluid} {how}, of its own "
                     f"{mixer.late_summary(every, synth, mixer.own_late)}")
    return (f"mixer: 0 xruns in a {soaks[0]['seconds']:g} s soak, 128 voices, prewarm running",
            text, _verdict(own == 0))


def _mixer_target(sweep) -> list:
    """Judged on the kernel the instrument runs (the first measured: the compiled block when it
    was built) and on every way it was called (a stream calls it once a period); the other
    kernels' rows are quoted for comparison."""
    at128 = [r for r in sweep if r["voices"] == 128]
    if not at128:
        return []
    ours = at128[0].get("kernel")
    judged = [r for r in at128 if r.get("kernel") == ours]
    others = [r for r in at128 if r.get("kernel") != ours]

    def quote(rs):
        return ", ".join(f"{'rate 1' if r['mode'] == 'rate1' else r['mode']} {r['p99_pct']:.1f}%"
                         f"{' (one a period)' if r.get('paced') else ''}" for r in rs)

    text = (f"{ours} kernel: " if ours else "") + quote(judged)
    if others:
        text += f"; {others[0].get('kernel')} kernel (reference): {quote(others)}"
    text += "".join(f"; reference, a {r['mode'][4:]} KiB copy: {r['p99_pct']:.1f}% "
                    f"{'one a period' if r.get('paced') else 'back to back'}"
                    for r in sweep if r["mode"].startswith("copy"))
    worst = max(r["p99_pct"] for r in judged)
    return [("mixer: 128 voices, p99 <= 10% of a 256-frame period", text, _verdict(worst <= 10.0))]


def targets(results) -> list:
    """(target, measured, verdict) rows from whatever parts ran."""
    rows = []
    mix = results.get("mixer")
    if mix:
        rows.extend(_mixer_target(mix["sweep"]))
        soaks = [r for r in mix["soak"] if r["synth"] == "sing-synth"]
        rows.append(_soak_target(soaks, mix["soak"]))
    lat = results.get("latency")
    if lat:
        by = {(r.synth, r.case, r.period): r for r in lat["results"]}
        for period in sorted({r.period for r in lat["results"]}, reverse=True):
            sing = by.get(("sing-synth", "cached", period))
            fluid = by.get(("FluidSynth", "(sample playback)", period))
            if sing:
                ok = sing.ms(99) <= period / 48.0
                text = f"p50 {sing.ms(50):.2f} ms, p99 {sing.ms(99):.2f} ms"
                if fluid:
                    ok = ok and sing.ms(50) <= fluid.ms(50) and sing.ms(99) <= max(fluid.ms(99), period / 48.0)
                    text += f" (FluidSynth p50 {fluid.ms(50):.2f}, p99 {fluid.ms(99):.2f} ms)"
                rows.append((f"cached note-on -> sound <= 1 period ({period / 48.0:.2f} ms) beyond the "
                             f"MIDI transport, no worse than FluidSynth (period {period})", text,
                             _verdict(ok)))
        for r in lat["results"]:
            if r.synth == "sing-synth" and r.case.startswith("not cached") and r.period == 256:
                rows.append((f"not-cached note-on -> sound <= 30 ms ({r.case})",
                             f"p50 {r.ms(50):.1f} ms, p99 {r.ms(99):.1f} ms",
                             "met (p50 and p99)" if r.ms(99) <= 30 else
                             ("met at p50, **missed** at p99" if r.ms(50) <= 30 else "**missed**")))
    ren = results.get("render")
    if ren:
        fast = [r for r in ren["rows"] if r.size == "small" and r.path == "fast" and r.batch >= 8]
        if fast:
            best = max(fast, key=lambda r: r.ratio)
            rows.append(("render: `small` at batch >= 8 reaches >= 50% of the GEMM FLOP/s",
                         ", ".join(f"batch {r.batch} {r.ratio:.0%}" for r in fast),
                         _verdict(best.ratio >= 0.5)))
    st = results.get("startup")
    if st:
        for r in st["startup"]:
            if r["synth"] == "sing-synth":
                rows.append(("start-up to first sound <= 2 s",
                             f"{r['sound_s']:.2f} s (median of {len(r['runs'])})",
                             _verdict(r["sound_s"] <= 2.0)))
        mem = [r for r in st["memory"] if r["ok"] is not None]
        if mem:
            rows.append(("RSS never above the cache cap plus the model and runtime",
                         ", ".join(f"{r['cache_mb']:g} MB cap: peak {r['peak_mb']:.0f} <= "
                                   f"{r['limit_mb']:.0f} MB" if r["ok"] else
                                   f"{r['cache_mb']:g} MB cap: peak {r['peak_mb']:.0f} > "
                                   f"{r['limit_mb']:.0f} MB" for r in mem),
                         _verdict(all(r["ok"] for r in mem))))
    return rows


# ------------------------------------------------------------------------------------ report
def header_lines(args, label, load_before, load_after, started) -> list:
    import torch

    from .render import cpu_name
    argv = " ".join(shlex.quote(a) for a in args._argv)
    training = f"at the start {args._training_before}, at the end {training_state()}"
    return [
        f"- date: {started} (took {(time.time() - args._t0) / 60:.1f} min)",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}",
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after}; "
        f"a training job (`sing_synth train`) running: {training}",
        f"- checkpoint of the live benches: {label}",
        f"- command: `python -m bench {argv}` (`make bench` runs `python -m bench --markdown "
        f"bench/RESULTS.md`)",
        "- sing-synth as started by the benches: `python run_synth.py "
        + " ".join(str(a) for a in common.sing_command("CKPT", "PERIOD", "NAME"))
        + " [--no-prewarm] [--preset organ] [--cache-mb C]`"
        + " (CKPT: the checkpoint above; `--audio-api portaudio` for the PortAudio + rtmidi rows)",
        "- FluidSynth: `" + " ".join(common.fluidsynth_command("NAME")) + "` (shell on stdin; "
        "JACK ports connected by the bench)",
        "- JACK: `jackd -n NAME -d dummy -r 48000 -p PERIOD` (private server per period; "
        "real-time scheduling when allowed; `jackd -v` for the soak)",
    ]


def training_state() -> str:
    """'yes' if a `sing_synth train` process runs, 'paused' if every one is stopped (SIGSTOP, as
    a bench run on a shared machine does), else 'no'."""
    states = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"sing_synth train" in cmd:
            states.append(state)
    if not states:
        return "no"
    return "paused" if all(st in (b"T", b"t") for st in states) else "yes"


def report(args, results, label, load_before, load_after, started) -> str:
    titles = {"render": "1. Render", "latency": "2. Latency (JACK, 48 kHz)",
              "mixer": "3. Mixer", "startup": "4. Start-up and memory"}
    parts = [f"# sing-synth benchmarks{' (quick)' if args.quick else ''}", ""]
    parts += header_lines(args, label, load_before, load_after, started)
    parts += ["", "## Targets", "", common.table(("target", "measured", ""), targets(results),
                                                 ["l", "l", "l"])]
    for part in PARTS:
        if part in results:
            parts += ["", f"## {titles[part]}", "", results[part]["text"]]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args._argv = sys.argv[1:] if argv is None else list(argv)
    args._t0 = time.time()
    args._training_before = training_state()
    s = settings(args)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = common.load_average()
    runners = {"render": run_render, "latency": run_latency, "mixer": run_mixer,
               "startup": run_startup}
    results = {}
    try:
        checkpoint, label = common.bench_checkpoint(args.checkpoint)
        log(f"checkpoint: {label}")
        for part in PARTS:
            if part in args.parts:
                log(f"== {part}")
                results[part] = runners[part](s, checkpoint)
    except common.BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    text = report(args, results, label, load_before, common.load_average(), started)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
