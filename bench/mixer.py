"""The mixer: callback time against voices, a soak through JACK, CPU use of both synths.

    python -m bench.mixer [--voices 1 8 32 64 128 256] [--soak-s 60] [--cpu-s 10]

- sweep: `Mixer.callback` called directly (`sing_synth.engine.bench`), every voice sounding;
  p50/p99 wall time as a share of the 256-frame period at 48 kHz ('mixed': a quarter of the
  voices bent, a quarter releasing; 'rate 1': plain copies); block after block (the callback's
  CPU cost), then one block a period with the thread asleep between, as a stream calls it (its
  caches and the vCPU go cold between calls: about twice the time here); for each kernel built
  (the compiled block the instrument runs, then the numpy path as the reference).
- soak: sing-synth (``--audio-api jack``) on a jackd dummy server, 128 voices held (re-struck
  every 3 s: SING notes last 4 s) for ``--soak-s`` seconds while its renderer prewarms in the
  background (a program change every 4 s on another channel queues a preset's notes); xruns
  from its status line (JACK's xrun callback) and from the server's log.  FluidSynth on the same
  schedule, alone and with that renderer load beside it (`bench.load`, no audio).
- CPU: sing-synth and FluidSynth on the same server, ``--polyphony`` notes held (organ, program
  16: FluidR3's organ loops, so its voices last), utime + stime of the process from
  /proc/<pid>/stat over the held interval, as a share of one core.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

from sing_synth.engine.bench import bench_copy, bench_mixer
from sing_synth.engine.mixer import KERNELS

from . import common
from . import jack_rig as R
from .load import PROGRAM_CHANNEL, soak_programs

RATE = 48000
ORGAN = 16


# ------------------------------------------------------------------------------------ sweep
def sweep(voices=(1, 8, 16, 32, 64, 128, 256), modes=("rate1", "mixed"), frames=256, blocks=2000,
          paced=(False, True), kernels=KERNELS, log=common.log) -> list:
    """Callback time per kernel, voice count and mode, called back to back (its CPU cost) and,
    with ``paced``, one call a period with the thread asleep between (as a stream calls it)."""
    rows = []
    for how in paced:
        runs = [(k, n, mode) for k in kernels for mode in modes for n in voices] + [(None, None, "copy")]
        for kernel, n, mode in runs:
            if n is None:        # the reference: a plain copy, to show what cold caches cost
                r = bench_copy(COPY_KIB, frames=frames, rate=RATE, blocks=blocks, paced=how)
            else:
                r = bench_mixer(n, mode, frames=frames, rate=RATE, blocks=blocks, paced=how,
                                kernel=kernel)
            r["p50_pct"] = 100 * r["wall_p50_us"] / r["budget_us"]
            r["p99_pct"] = 100 * r["wall_p99_us"] / r["budget_us"]
            rows.append(r)
            log(f"  mixer {_mode(r)}{f', {kernel}, {n} voices' if n else ''}"
                f"{', one a period' if how else ''}: p99 {r['p99_pct']:.1f}% of the period")
    return rows


COPY_KIB = 128       # about what 128 voices read from their notes in a 256-frame block


def calls(row) -> str:
    return "one a period" if row.get("paced") else "back to back"


def _mode(row) -> str:
    if row["mode"].startswith("copy"):
        return f"reference: a {row['mode'][4:]} KiB np.copyto"
    return "rate 1" if row["mode"] == "rate1" else row["mode"]


def sweep_markdown(rows) -> str:
    header = ("kernel", "voices", "mode", "calls", "period", "p50 us", "p99 us", "max us",
              "p50 % of period", "p99 % of period", "CPU p99 us")
    body = [(r.get("kernel") or "-", "-" if r["voices"] is None else r["voices"], _mode(r), calls(r),
             r["frames"], common.fmt(r["wall_p50_us"]), common.fmt(r["wall_p99_us"]),
             common.fmt(r["wall_max_us"]), common.fmt(r["p50_pct"]), common.fmt(r["p99_pct"]),
             common.fmt(r["cpu_p99_us"]))
            for r in rows]
    return common.table(header, body, ["l", "r", "l", "l"] + ["r"] * 7)


# ------------------------------------------------------------------------------------ held notes
def chord(n: int) -> list:
    """(channel, pitch) of ``n`` notes: pitches 30..93 on channels 0, 1, 2, 3 (not 9: drums)."""
    return [(ch, 30 + i % 64) for i, ch in zip(range(n), [c for c in (0, 1, 2, 3) for _ in range(64)])]


def strike(sender, notes, velocity=100) -> None:
    sender.send(*[sender.note_off(p, ch) for ch, p in notes])
    sender.send(*[sender.note_on(p, velocity, ch) for ch, p in notes])


def program_all(sender, program, channels=(0, 1, 2, 3)) -> None:
    sender.send(*[sender.program(program, ch) for ch in channels])


def sound_all(synth, sender, notes, timeout=300.0) -> bool:
    """Strikes ``notes`` until the status line shows them all sounding (the first strike renders
    them; SING notes last 4 s, so they are struck again every 3 s meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        strike(sender, notes)
        for _ in range(12):
            time.sleep(0.25)
            if (last_value(synth, "voices") or 0) >= len(notes):
                return True
    return False


def last_value(synth, key):
    values = synth.status_values(key)
    return values[-1] if values else None


# ------------------------------------------------------------------------------------ soak
SENDERS = ("rtmidi", "python")
LOADED = " + renderer load"     # a soak row's synth with `bench.load` running beside it


def soak(checkpoint, seconds=60.0, voices=128, period=256, synth="sing", sender="rtmidi",
         load=False, log=common.log) -> dict:
    """``voices`` notes held through JACK for ``seconds``, re-struck every 3 s, a program change
    every 4 s on another channel: sing-synth's renderer prewarms meanwhile.  ``synth``
    'fluidsynth' runs FluidSynth through the same schedule (its organ, whose samples loop), for
    comparison.  (A C client with next to no work a cycle, jack_metro, was never late here even
    with both cores busy; FluidSynth, 128 voices of real work, is late with sing-synth's renderer
    load beside it.)  ``sender``: the MIDI source, 'rtmidi' (RtMidi's JACK
    client, a C++ callback, as a DAW's) or 'python' (`jack_rig.MidiSender`, a Python callback in
    this process: when it returns late in a cycle, the synth after it is blamed in state
    'Triggered'; its worst return frame is reported).  ``load``: sing-synth's renderer load
    (`bench.load`, no audio) runs beside the synth, as sing-synth's own prewarm runs beside its
    mixer: FluidSynth on the same machine state."""
    programs = soak_programs()
    notes = chord(voices)
    name = "bench-soak" if synth == "sing" else "bench-soak-fluid"
    with common.jack_server(period, verbose=True) as server:
        # no capture client here: the only other client is the MIDI sender
        kind, sender = sender, (R.RtMidiSender() if sender == "rtmidi" else R.MidiSender())
        try:
            with _soak_synth(synth, checkpoint, period, notes, name, sender) as proc, \
                    renderer_load(checkpoint if load else None, seconds + 15.0):
                log(f"  soak {synth}: {seconds:.0f} s with {voices} voices")
                xruns0 = last_value(proc, "xruns") if synth == "sing" else None
                log_size = server.log_path.stat().st_size
                sched0, steal0 = rt_schedstat(proc.proc.pid), cpu_steal()
                lines0 = len(proc.status_lines())
                voices_seen, queued = _hold(proc, sender, notes, programs, seconds)
                sched, steal = _delta(rt_schedstat(proc.proc.pid), sched0), cpu_steal() - steal0
                finish = getattr(sender, "finish_max", None), getattr(sender, "finish_late", None)
                time.sleep(0.6)                   # the last status line
                xruns = None if xruns0 is None else (last_value(proc, "xruns") or 0) - xruns0
                lines = proc.status_lines()
                dsp = [v for line in lines[lines0:] for k, v in R.status_tokens(line) if k == "dsp"]
                sender.send(*[sender.note_off(p, ch) for ch, p in notes])
        finally:
            sender.close()
        server_log = server.log_path.read_bytes()[log_size:].decode(errors="replace")
    late = late_clients(server_log)
    causes = late_causes(server_log, name, 1e6 * period / RATE)
    result = {"synth": "sing-synth" if synth == "sing" else ("FluidSynth" + LOADED if load else "FluidSynth"),
              "seconds": seconds, "voices": voices, "period": period, "xruns": xruns,
              "synth_late": late.get(name, 0),
              # late in cycles the server began late (the VM's timers) or behind the late
              # sender: not the synth's own
              "synth_late_own": causes["own"], "synth_late_short": causes["short"],
              "synth_late_behind": causes["behind"], "short_had_ms": causes["short_had_ms"],
              "others_late": sum(n for client, n in late.items() if client != name),
              "voices_min": min(voices_seen[5:] or voices_seen) if voices_seen else None,
              "voices_max": max(voices_seen) if voices_seen else None, "presets_queued": queued,
              "late_states": late_states(server_log, name), "steal_ms": steal, "sender": kind,
              "sender_finish_pct": None if finish[0] is None else 100.0 * finish[0] / period,
              "sender_late_finishes": finish[1],
              "rt_threads": sched[2], "rt_wait_ms": sched[0] / 1e6, "rt_slices": sched[1],
              # sing-synth's status lines: the latest its callback returned in a cycle, % of
              # the period, each line's worst (a thread woken after its whole cycle is not seen)
              "dsp_max": max(dsp) if dsp else None,
              "dsp_median": statistics.median(dsp) if dsp else None,
              "last_status": lines[-1] if lines else ""}
    log(f"  soak {synth}: late {result['synth_late']} cycles ({causes['short']} in cycles the "
        f"server began late, {causes['behind']} behind the late sender), xruns {xruns}")
    return result


@contextlib.contextmanager
def _soak_synth(synth, checkpoint, period, notes, name, sender):
    """The running synth, ``notes`` sounding."""
    voices = len(notes)
    if synth == "sing":
        args = common.sing_command(checkpoint, period, name, "--preset", "organ",
                                   "--polyphony", max(128, voices))
        with R.Synth(args, sender, None) as proc:
            if not sound_all(proc, sender, notes):
                raise common.BenchError(f"soak: {voices} voices never sounded together: "
                                        f"{proc.status_lines()[-1:]}")
            yield proc
    else:
        with R.Synth([], sender, None, command=common.fluidsynth_command(name),
                     ready_line=False, stdin=subprocess.PIPE) as proc:
            time.sleep(1.0)
            program_all(sender, ORGAN)
            strike(sender, notes)
            time.sleep(1.0)
            yield proc


@contextlib.contextmanager
def renderer_load(checkpoint, seconds: float, timeout=180.0):
    """`bench.load` in a process of its own for ``seconds`` (nothing when ``checkpoint`` is None),
    entered once it has warmed up."""
    if checkpoint is None:
        yield None
        return
    command = [sys.executable, "-u", "-m", "bench.load"]
    load = R.Synth(["--checkpoint", checkpoint, "--seconds", seconds], command=command,
                   ports=False, ready_timeout=timeout)
    try:
        load.__enter__()
    except R.SynthError as exc:
        exited = "before 'ready:'" in str(exc)       # else no 'ready:' in time
        why = (load.stderr or ["no output"])[-1] if exited else str(exc).split(";")[0]
        raise common.BenchError(f"renderer load {'exited: ' if exited else ''}{why}") from None
    try:
        yield load.proc
    finally:
        load.stop()


def _hold(proc, sender, notes, programs, seconds) -> tuple:
    """The soak's schedule; returns (voice counts seen in the status, program changes sent).
    The chord is struck again at once: the strike before it (`sound_all`, which waits until
    every note has rendered) may be seconds old, and SING notes end at 4 s -- the first soak of
    a series once saw 52 of the 128 voices left before its first re-strike."""
    t0 = time.monotonic()
    voices_seen, k, next_strike, next_program = [], 0, t0, t0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if now >= next_program:        # keeps the renderer prewarming
            sender.send(sender.program(programs[k % len(programs)], PROGRAM_CHANNEL))
            k, next_program = k + 1, now + 4.0
        if now >= next_strike:
            strike(sender, notes)
            next_strike = now + 3.0
        time.sleep(0.1)
        v = last_value(proc, "voices")
        if v is not None:
            voices_seen.append(v)
    return voices_seen, k


def late_cycles(log_text) -> list:
    """``[(client, state, had_us, cycle)]``, one per late client in jackd's log, in order
    ("JackEngine::XRun: client = NAME was not finished, state = Running").  ``state``:
    'Triggered', the client's thread had not started the cycle by the deadline (the OS, or the
    hypervisor, did not run it, or a client before it in the graph was late), 'Running', it was
    still running.  ``had_us``: how long the graph had had for the cycle when it was found
    unfinished ("waiting to switch delta", logged by ``jackd -v``; None without it): a whole
    period when the client overran, less when the server itself began the cycle late.  The dummy
    driver keeps an absolute schedule: woken L us late (the VM's timers), it starts the next cycle
    L us early to catch up, and whichever client is still running then is logged late.
    ``cycle``: the same number for the clients found late in one cycle (None without -v)."""
    cycles, had, cycle = [], None, None
    for line in log_text.splitlines():
        if "graph not finished" in line:
            had, cycle = None, 0 if cycle is None else cycle + 1
        elif "waiting to switch delta = " in line:
            had = int(line.rsplit("= ", 1)[1])
        elif "XRun: client = " in line and " was not finished" in line:
            name, rest = line.split("client = ", 1)[1].split(" was not finished", 1)
            state = rest.split("state = ", 1)[1].strip() if "state = " in rest else "?"
            cycles.append((name.strip(), state, had, cycle))
    return cycles


SHORT_CYCLE = 0.9        # a late cycle that had less than this share of a period: the server's


def in_short_cycle(had_us, period_us: float) -> bool:
    """True when a late cycle (`late_cycles`) had less than ``SHORT_CYCLE`` of its period."""
    return had_us is not None and had_us < SHORT_CYCLE * period_us


def late_causes(log_text, name, period_us: float) -> dict:
    """Client ``name``'s late cycles (`late_cycles`) by cause: 'short', in a cycle the server
    itself began late (`in_short_cycle`); 'behind', not started in a cycle in which another client
    (in the soak, its MIDI source, before it in the graph) was late too; 'own', the rest.
    'short_had_ms': the least time a 'short' cycle had (None without one)."""
    cycles = late_cycles(log_text)
    others = {c for client, _, _, c in cycles if client != name and c is not None}
    causes, least = {"own": 0, "short": 0, "behind": 0}, None
    for client, state, had, cycle in cycles:
        if client != name:
            continue
        if in_short_cycle(had, period_us):
            causes["short"] += 1
            least = had if least is None else min(least, had)
        elif state == "Triggered" and cycle in others:
            causes["behind"] += 1
        else:
            causes["own"] += 1
    causes["short_had_ms"] = None if least is None else least / 1000.0
    return causes


def late_states(log_text, name) -> dict:
    """{state: cycles} of client ``name``'s late cycles in jackd's log (`late_cycles`)."""
    states = {}
    for client, state, _, _ in late_cycles(log_text):
        if client == name:
            states[state] = states.get(state, 0) + 1
    return states


def cpu_steal() -> float:
    """Milliseconds the hypervisor ran other guests on this VM's CPUs (``steal`` in /proc/stat,
    all CPUs); 0 where there is no such counter."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rt_schedstat(pid) -> tuple:
    """(ns waited on a run queue, time slices, threads) summed over ``pid``'s real-time
    (SCHED_FIFO/RR) threads, from /proc/PID/task/TID/schedstat; zeros where unreadable."""
    wait = slices = threads = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                policy = int(f.read().rsplit(")", 1)[1].split()[38])
            if policy not in (1, 2):          # SCHED_FIFO, SCHED_RR
                continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                _, waited, count = (int(v) for v in f.read().split())
        except (OSError, ValueError, IndexError):
            continue
        wait, slices, threads = wait + waited, slices + count, threads + 1
    return wait, slices, threads


def _delta(after: tuple, before: tuple) -> tuple:
    return after[0] - before[0], after[1] - before[1], after[2]


def late_clients(log_text) -> dict:
    """{client: cycles it did not finish in time} from jackd's log (`late_cycles`): which client
    caused each xrun (JACK's xrun callback, which the synth counts, fires for every client's)."""
    late = {}
    for client, _, _, _ in late_cycles(log_text):
        late[client] = late.get(client, 0) + 1
    return late


# ------------------------------------------------------------------------------------ CPU use
def held_cpu(synth, sender, notes, seconds, restrike=None) -> float:
    """Share of one core the synth's process used while ``notes`` were held for ``seconds``."""
    strike(sender, notes)
    time.sleep(0.5)
    c0, t0 = common.cpu_seconds(synth.proc.pid), time.monotonic()
    next_strike = t0 + (restrike or seconds + 1)
    while time.monotonic() - t0 < seconds:
        time.sleep(0.05)
        if restrike and time.monotonic() >= next_strike:
            strike(sender, notes)
            next_strike += restrike
    c1, t1 = common.cpu_seconds(synth.proc.pid), time.monotonic()
    sender.send(*[sender.note_off(p, ch) for ch, p in notes])
    return (c1 - c0) / (t1 - t0)


def cpu_use(checkpoint, voices=128, seconds=10.0, period=256, log=common.log) -> list:
    notes = chord(voices)
    rows = []
    with common.jack_server(period):
        sender, cap = R.MidiSender(), R.Capture(seconds=10)
        try:
            args = common.sing_command(checkpoint, period, "bench-cpu", "--preset", "organ",
                                       "--polyphony", max(128, voices), "--no-prewarm")
            with R.Synth(args, sender, cap) as synth:
                if not sound_all(synth, sender, notes):   # renders them; the renderer then idles
                    raise common.BenchError(f"CPU: {voices} voices never sounded together")
                sender.send(*[sender.note_off(p, ch) for ch, p in notes])
                time.sleep(1.0)
                idle = held_cpu(synth, sender, [], 3.0)
                busy = held_cpu(synth, sender, notes, seconds, restrike=3.0)
                seen = max(synth.status_values("voices")[-10:] or [0])
            rows.append({"synth": "sing-synth", "voices": voices, "seen": seen,
                         "idle_pct": 100 * idle, "busy_pct": 100 * busy})
            with R.Synth([], sender, cap, command=common.fluidsynth_command("bench-fluid-cpu"),
                         ready_line=False, stdin=subprocess.PIPE) as synth:
                time.sleep(1.0)
                program_all(sender, ORGAN)
                idle = held_cpu(synth, sender, [], 3.0)
                busy = held_cpu(synth, sender, notes, seconds)
            rows.append({"synth": "FluidSynth", "voices": voices, "seen": None,
                         "idle_pct": 100 * idle, "busy_pct": 100 * busy})
        finally:
            sender.close()
            cap.close()
    for r in rows:
        log(f"  CPU {r['synth']}: {r['busy_pct']:.1f}% of a core with {voices} notes held")
    return rows


def cpu_markdown(rows, period=256) -> str:
    header = ("synth", "notes held", "CPU, idle (% of a core)", "CPU, notes held (% of a core)",
              "voices reported")
    body = [(r["synth"], r["voices"], common.fmt(r["idle_pct"]), common.fmt(r["busy_pct"]),
             r["seen"] if r["seen"] is not None else "-") for r in rows]
    return common.table(header, body, ["l"] + ["r"] * 4)


def soak_runs(checkpoint, seconds=60.0, runs=3, sender="rtmidi", load=True, log=common.log) -> list:
    """``runs`` soaks of each synth, alternating (sing-synth, FluidSynth, FluidSynth with
    sing-synth's renderer load beside it, sing-synth, ...) so that a bad spell of the machine
    falls on all; each in its own process and JACK server.  ``load`` False: no loaded FluidSynth."""
    rows = []
    cases = [("sing", False), ("fluidsynth", False)] + ([("fluidsynth", True)] if load else [])
    for run in range(1, runs + 1):
        for synth, loaded in cases:
            row = common.isolated(soak, checkpoint, seconds, synth=synth, sender=sender, load=loaded)
            row["run"] = run
            rows.append(row)
    return rows


def late_summary(rows, synth, count=None) -> str:
    """'0, 0, 5 (median 0, worst 5)' of ``count(row)`` (default: all its late cycles) over
    ``synth``'s runs; '' when it has none."""
    count = count or (lambda row: row["synth_late"])
    late = [count(r) for r in rows if r.get("synth") == synth]
    if not late:
        return ""
    text = ", ".join(str(n) for n in late)
    if len(late) > 1:
        text += f" (median {statistics.median(late):g}, worst {max(late)})"
    return text


def own_late(row) -> int:
    """The synth's late cycles of its own in a soak row (`late_causes`; all of them for a row
    measured without ``jackd -v``)."""
    return row.get("synth_late_own", row["synth_late"])


def _short(row) -> str:
    n = row.get("synth_late_short", 0)
    return f"{n} ({common.fmt(row['short_had_ms'])})" if n else "0"


def _states(states: dict) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) if states else "-"


def soak_markdown(rows) -> str:
    header = ("synth", "run", "MIDI sender", "seconds", "voices held", "voices seen", "xruns (JACK's count)",
              "cycles the synth was late (jackd log)",
              "of them in a cycle the server began late (least time the graph had, ms)",
              "of them not started behind the late MIDI sender",
              "their state", "cycles the MIDI sender was late",
              "sender's latest return, % of the period (cycles past 50%)",
              "synth's callback returned by, % of the period: latest (median status line)",
              "steal ms (hypervisor)", "RT threads' run-queue wait ms", "program changes meanwhile")
    body = [(r["synth"], r.get("run", 1), r.get("sender", "python"), common.fmt(r["seconds"]), r["voices"],
             "-" if r["voices_min"] is None else f"{r['voices_min']}..{r['voices_max']}",
             "-" if r["xruns"] is None else r["xruns"], r["synth_late"], _short(r), r.get("synth_late_behind", 0),
             _states(r.get("late_states", {})),
             r["others_late"], _finish(r), _dsp(r), common.fmt(r.get("steal_ms", 0.0)),
             f"{common.fmt(r.get('rt_wait_ms', 0.0))} ({r.get('rt_threads', 0)} threads)",
             r["presets_queued"]) for r in rows]
    return common.table(header, body, ["l", "r", "l"] + ["r"] * 7 + ["l"] + ["r"] * 6)


def _dsp(row) -> str:
    if row.get("dsp_max") is None:
        return "-"
    median = row.get("dsp_median")
    return f"{common.fmt(row['dsp_max'])}" + ("" if median is None else f" ({common.fmt(median)})")


def _finish(row) -> str:
    if row.get("sender_finish_pct") is None:
        return "- (C++ callback)"
    return f"{common.fmt(row['sender_finish_pct'])} ({row['sender_late_finishes']})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mixer", description=__doc__.splitlines()[0])
    p.add_argument("--voices", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128, 256])
    p.add_argument("--blocks", type=int, default=2000)
    p.add_argument("--soak-s", type=float, default=60.0)
    p.add_argument("--soak-runs", type=int, default=3)
    p.add_argument("--soak-sender", choices=SENDERS, default="rtmidi",
                   help="the soak's MIDI source: rtmidi (a C++ JACK client, default) or python "
                        "(the latency bench's sender, a Python JACK callback)")
    p.add_argument("--no-soak-load", action="store_true",
                   help="no FluidSynth soak with sing-synth's renderer load beside it (bench.load)")
    p.add_argument("--cpu-s", type=float, default=10.0)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args(argv)
    if min(args.voices) < 1 or args.blocks < 10 or args.soak_s <= 0 or args.cpu_s <= 0 or args.soak_runs < 1:
        p.error("--voices >= 1, --blocks >= 10, --soak-runs >= 1, --soak-s and --cpu-s > 0")

    def text():
        ckpt, label = common.bench_checkpoint(args.checkpoint)
        rows = sweep(args.voices, blocks=args.blocks)
        s = soak_runs(ckpt, args.soak_s, args.soak_runs, sender=args.soak_sender,
                      load=not args.no_soak_load)
        cpu = common.isolated(cpu_use, ckpt, seconds=args.cpu_s)
        return f"checkpoint: {label}\n\n{sweep_markdown(rows)}\n\n{soak_markdown(s)}\n\n{cpu_markdown(cpu)}"
    return common.print_or_error(text)

if __name__ == "__main__":
    sys.exit(main())
