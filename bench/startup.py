"""Start-up (command start -> first sound) of sing-synth and FluidSynth; sing-synth's memory
against ``--cache-mb``.

    python -m bench.startup [--runs 3] [--cache-mb 64 256 1024] [--checkpoint PATH]

Start-up: the wall time from Popen to the first captured sample above -80 dBFS, a note-on sent
as soon as the synth's JACK MIDI port appears (and again every 20 ms until there is sound: a
port can exist before its client processes).  JACK frame times are mapped to wall time through
the capture client's clock.  The note (piano, middle C, velocity 100) is the one sing-synth renders
at start-up, before its JACK client runs (`play.Instrument.warm_up`): it sounds once the synth is ready.

Memory: sing-synth with ``--cache-mb C`` and no prewarm, its RSS after 4 notes (less their cache
bytes), then after a flood of distinct notes that renders about 1.5 C of notes
through the cache (program changes through the presets, each queueing its preset's prewarm) --
the peak RSS (VmHWM) must stay under C + baseline (nothing sounds at the end: no note is held
by a voice).  The baseline: the peak RSS of the same run with a 1 MiB cache.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from . import common
from . import jack_rig as R

RATE = 48000
FLOOR = 1e-4
NOTE_MB = 192000 * 4 / 2 ** 20      # one 4-s note at 48 kHz, float32


# ------------------------------------------------------------------------------------ start-up
def _new_ports(client, before, pid_name):
    audio = [p.name for p in client.get_ports(is_audio=True, is_output=True)
             if p.name not in before and p.name.startswith(pid_name)]
    midi = [p.name for p in client.get_ports(is_midi=True, is_input=True)
            if p.name not in before and p.name.startswith(pid_name)]
    return sorted(audio), midi


def first_sound(command, client_name, sender, cap, timeout=60.0, stdin=None) -> dict:
    """Starts ``command``; seconds from Popen to its MIDI port, and to its first sound."""
    client = cap.client
    before = {p.name for p in client.get_ports()}
    t0 = time.monotonic()
    proc = subprocess.Popen(command, cwd=R.REPO, stdin=stdin or subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        port_s = sound_s = None
        connected = False
        deadline = t0 + timeout
        next_send = 0.0
        start_frame = None
        while time.monotonic() < deadline and proc.poll() is None:
            if not connected:
                audio, midi = _new_ports(client, before, client_name)
                if midi and port_s is None:
                    port_s = time.monotonic() - t0
                if midi and audio:
                    try:
                        cap.connect(audio)
                        sender.connect(midi[0])
                    except Exception:        # JACK refuses until the client is active
                        time.sleep(0.002)
                        continue
                    connected = True
                    start_frame = cap.now()
            if connected:
                now = time.monotonic()
                if now >= next_send:
                    sender.send(sender.note_on(60, 100), wait=False)
                    next_send = now + 0.02
                x = cap.since(start_frame)
                hit = R.onset(x, FLOOR)
                if hit is not None:
                    frame = start_frame + hit
                    # wall time of that frame: now minus the frames captured since it
                    sound_s = time.monotonic() - (cap.now() - frame) / cap.rate - t0
                    break
            time.sleep(0.002)
        return {"port_s": port_s, "sound_s": sound_s}
    finally:
        _stop(proc)


def _stop(proc) -> None:
    if proc.stdin:
        try:
            proc.stdin.close()
        except OSError:
            pass
    for sig in (2, 15, 9):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue


def startup(checkpoint, runs=3, period=256, log=common.log) -> list:
    rows = []
    with common.jack_server(period):
        sender, cap = R.MidiSender(), R.Capture(seconds=120)
        try:
            sing = [sys.executable, "-u", str(R.RUN_SYNTH)] + [
                str(a) for a in common.sing_command(checkpoint, period, "bench-start")]
            fluid = common.fluidsynth_command("bench-fluid-start")
            for name, command, client, stdin in (
                    ("sing-synth", sing, "bench-start:", None),
                    ("FluidSynth", fluid, "bench-fluid-start", subprocess.PIPE)):
                times = []
                for _ in range(runs):
                    times.append(first_sound(command, client, sender, cap, stdin=stdin))
                    time.sleep(0.5)
                rows.append({"synth": name, "runs": times,
                             "sound_s": common.percentile([t["sound_s"] for t in times], 50),
                             "port_s": common.percentile([t["port_s"] for t in times], 50),
                             "command": " ".join(command)})
                log(f"  start-up {name}: first sound after {rows[-1]['sound_s']:.2f} s (median of {runs})")
        finally:
            sender.close()
            cap.close()
    return rows


def startup_markdown(rows) -> str:
    header = ("synth", "runs", "MIDI port after (s)", "first sound after (s), median",
              "first sound, each run (s)")
    body = [(r["synth"], len(r["runs"]), common.fmt(r["port_s"]), common.fmt(r["sound_s"]),
             ", ".join(common.fmt(t["sound_s"]) for t in r["runs"])) for r in rows]
    return common.table(header, body, ["l", "r", "r", "r", "l"])


# ------------------------------------------------------------------------------------ memory
def flood_programs(sender, synth, cache_mb, min_notes=150, timeout=900.0) -> dict:
    """Program changes through the presets (each queues its notes' prewarm) until 1.5x the
    cache (and at least ``min_notes``) has been rendered; returns the notes rendered."""
    from sing_synth.presets import load_presets
    programs = [p.program for p in load_presets().values()]
    want = max(int(1.5 * cache_mb / NOTE_MB) + 1, min_notes)
    deadline = time.monotonic() + timeout
    k = 0
    peak = 0.0
    while time.monotonic() < deadline:
        done = _prewarm(synth)
        if done is not None and done[0] >= want:
            break
        if done is None or done[1] - done[0] < 200:      # keep the prewarm queue filled
            sender.send(sender.program(programs[k % len(programs)], k % 8))
            k += 1
        peak = max(peak, common.memory_mb(synth.proc.pid)["rss_mb"])
        time.sleep(0.25)
    return {"rendered": (_prewarm(synth) or (0, 0))[0], "programs": k}


def _prewarm(synth):
    lines = [line for line in synth.status_lines() if "prewarm=" in line]
    if not lines:
        return None
    done, total = lines[-1].split("prewarm=")[1].split()[0].split("/")
    return int(done), int(total)


def baseline(synth, sender, notes=4) -> float:
    """RSS of the model and the runtime, render working memory included: after ``notes``
    renders, less the cache's bytes."""
    for pitch in range(60, 60 + notes):
        sender.send(sender.note_on(pitch, 100), sender.note_off(pitch))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (synth.status_values("notes") or [0])[-1] < notes:
        time.sleep(0.1)
    time.sleep(0.5)
    cache = synth.status_lines()[-1].split("cache=")[1].split("/")[0]
    return common.memory_mb(synth.proc.pid)["rss_mb"] - float(cache)


def memory_run(checkpoint, cache_mb, sender, cap, period, min_notes=150, log=common.log) -> dict:
    args = common.sing_command(checkpoint, period, f"bench-mem-{cache_mb:g}", "--no-prewarm",
                               "--cache-mb", cache_mb)
    with R.Synth(args, sender, cap) as synth:
        ready = baseline(synth, sender)
        flood = flood_programs(sender, synth, cache_mb, min_notes)
        time.sleep(0.5)
        mem = common.memory_mb(synth.proc.pid)
        cache = synth.status_lines()[-1].split("cache=")[1].split()[0]
    log(f"  memory --cache-mb {cache_mb:g}: after {flood['rendered']} notes RSS {mem['rss_mb']:.0f} MB, "
        f"peak {mem['peak_mb']:.0f} MB")
    return {"cache_mb": cache_mb, "ready_mb": ready, "rss_mb": mem["rss_mb"],
            "peak_mb": mem["peak_mb"], "rendered": flood["rendered"], "cache": cache}


def memory(checkpoint, caches=(64, 256, 1024), period=256, min_notes=150, log=common.log) -> list:
    """One run per cap, after a 1 MiB run: its peak RSS is the model and the runtime (render
    working memory, queues, allocator) with next to no cache -- the baseline of the others."""
    rows = []
    with common.jack_server(period):
        sender, cap = R.MidiSender(), R.Capture(seconds=10)
        try:
            base = memory_run(checkpoint, 1, sender, cap, period, min_notes, log)
            for cache_mb in caches:
                row = memory_run(checkpoint, cache_mb, sender, cap, period, min_notes, log)
                row["limit_mb"] = base["peak_mb"] + cache_mb
                row["ok"] = row["peak_mb"] <= row["limit_mb"]
                rows.append(row)
        finally:
            sender.close()
            cap.close()
    base["limit_mb"], base["ok"] = None, None
    return [base] + rows


def memory_markdown(rows) -> str:
    header = ("--cache-mb", "notes rendered", "cache at the end", "RSS after 4 notes less cache, MB",
              "RSS at the end, MB", "peak RSS, MB", "cap + model + runtime, MB", "peak within")
    body = [(common.fmt(r["cache_mb"]), r["rendered"], r["cache"], common.fmt(r["ready_mb"]),
             common.fmt(r["rss_mb"]), common.fmt(r["peak_mb"]),
             "(baseline)" if r["limit_mb"] is None else common.fmt(r["limit_mb"]),
             "-" if r["ok"] is None else ("yes" if r["ok"] else "**no**"))
            for r in rows]
    return common.table(header, body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cache-mb", type=float, nargs="+", default=[64, 256, 1024])
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args(argv)
    if args.runs < 1 or min(args.cache_mb) <= 0:
        p.error("--runs >= 1 and --cache-mb > 0")

    def text():
        ckpt, label = common.bench_checkpoint(args.checkpoint)
        s = common.isolated(startup, ckpt, args.runs)
        m = common.isolated(memory, ckpt, args.cache_mb)
        return f"checkpoint: {label}\n\n{startup_markdown(s)}\n\n{memory_markdown(m)}"
    return common.print_or_error(text)

if __name__ == "__main__":
    sys.exit(main())
