"""The rendering benchmark: analytic FLOP counts and a short run of the table."""
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from bench.render import Row, default_paths, main, markdown_table, model_flops, run_benchmark, time_calls, variants  # noqa: E402
from sing_synth.config import SIZES, named_config  # noqa: E402


def test_model_flops_full_size_matches_sing_md():
    flops = model_flops(SIZES["full"])
    assert flops["total"] == flops["lstm"] + flops["decoder"]
    assert flops["total"] == pytest.approx(34e9, rel=0.05)
    assert flops["decoder"] == pytest.approx(22.5e9, rel=0.05)
    assert flops["lstm"] == pytest.approx(11.2e9, rel=0.05)


def test_model_flops_scale_with_size():
    full, base, small = (model_flops(SIZES[name])["total"] for name in ("full", "base", "small"))
    assert full > base > small > 0
    # halving the decoder channels quarters the 1x1 convs, which dominate
    assert model_flops(named_config("full", channels=2048))["decoder"] < 0.35 * model_flops(SIZES["full"])["decoder"]


def test_time_calls_one_call_when_slow_and_three_when_fast():
    calls = []
    _, n = time_calls(lambda: calls.append(1), "cpu", min_time=0.0)
    assert n == 1 and len(calls) == 2  # warm-up + one timed call
    calls.clear()
    _, n = time_calls(lambda: calls.append(1), "cpu", min_time=1e-4)
    assert n >= 3 and len(calls) == n + 1


def test_run_benchmark_rows(one_thread):
    gemm = {torch.float32: 1e11, torch.bfloat16: 1e11, torch.float16: 1e11}  # skip the GEMM measurement
    rows = run_benchmark(["small"], [1, 2], ["reference", "fast"], min_time=0, gemm=gemm)
    assert [(r.size, r.batch, r.path) for r in rows] == [
        ("small", 1, "reference"), ("small", 1, "fast"), ("small", 2, "reference"), ("small", 2, "fast")]
    for row in rows:
        assert isinstance(row, Row)
        assert row.ms_per_note > 0 and row.notes_per_s > 0 and row.gflops > 0 and row.ratio > 0
        assert row.notes_per_s == pytest.approx(1e3 / row.ms_per_note)
        assert row.gflops == pytest.approx(model_flops(named_config("small"))["total"] * row.notes_per_s / 1e9)
    assert rows[0].label == "fp32 reference"
    assert rows[1].label.startswith("fast (") and rows[1].dtype in rows[1].label
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)


def test_graphed_path_runs_and_a_failed_row_is_reported(one_thread, monkeypatch):
    gemm = {torch.float32: 1e11}
    rows = run_benchmark(["small"], [2], ["fast", "graphed"], min_time=0, gemm=gemm, dtypes=[torch.float32])
    assert [r.label for r in rows] == ["fast (fp32)", "graphed (fp32)"] and not any(r.error for r in rows)

    def fail(*args):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    monkeypatch.setattr("bench.render._time_row", fail)
    failed = run_benchmark(["small"], [1], ["fast"], min_time=0, gemm=gemm, dtypes=[torch.float32])
    assert failed[0].error == "RuntimeError: CUDA out of memory."
    line = markdown_table(failed).splitlines()[-1]
    assert "failed, RuntimeError: CUDA out of memory." in line and line.endswith("| - | - | - | - |")


def test_paths_and_dtypes_to_time():
    assert default_paths("cpu") == ("reference", "fast")
    assert variants(["reference", "graphed"], (torch.bfloat16, torch.float16)) == [
        ("reference", torch.float32), ("graphed", torch.bfloat16), ("graphed", torch.float16)]
    with pytest.raises(ValueError):
        variants(["compiled"], (torch.float32,))


def test_in_flight_bench_presses_keys_of_batches_in_flight(tmp_path, one_thread):
    from bench.render import inflight_benchmark, parse_args
    from bench.common import random_checkpoint
    from bench.render import inflight_markdown
    r = inflight_benchmark(random_checkpoint(tmp_path / "r.pt"), keys=6, batch=8, render_ms=20,
                           device="cpu", threads=1, urgent_ms=5)
    assert r["notes"] == 6 and r["batch"] == 8 and 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    phases = r["phases"]
    assert sum(p["notes"] for p in phases.values()) == 6 and r["urgent_ms"] == 5
    # a key taken over while its batch renders waits for an urgent render (5 ms) at least
    assert phases["rendering"]["notes"] == 0 or phases["rendering"]["p50_ms"] >= 5
    table = inflight_markdown(r)
    assert "| any | 6 |" in table and "| rendering |" in table and "| handing over |" in table
    for bad in (["--in-flight", "-1"], ["--in-flight", "4", "--render-ms", "-2"],
                ["--in-flight", "4", "--urgent-render-ms", "2"],
                ["--in-flight", "4", "--render-ms", "2", "--urgent-render-ms", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_command_line_prints_table_and_writes_markdown(tmp_path, capsys, one_thread):
    out = tmp_path / "bench.md"
    assert main(["--sizes", "small", "--batches", "1", "--min-time", "0", "--gemm-size", "1024", "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"GEMM 1024x1024 .*fp32 [\d,]+ GFLOP/s", printed)
    table = [line for line in printed.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["size", "batch", "path", "ms/note", "notes/s", "model GFLOP/s", "model/GEMM FLOP/s"]
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[:2] for row in body] == [["small", "1"], ["small", "1"]]
    assert body[0][2] == "fp32 reference" and re.fullmatch(r"fast \((bf16|fp32|fp16)\)", body[1][2])
    for row in body:
        assert all(float(cell.replace(",", "")) > 0 for cell in row[3:])
    written = out.read_text()
    assert "machine:" in written and "--sizes small" in written and table[0] in written


# ---------------------------------------------------------------------------------------------
# the live benches (bench.latency, bench.mixer, bench.startup, python -m bench): their pieces on
# tiny inputs, and one short JACK run with the test tone; nothing here depends on timings

import shutil  # noqa: E402
import subprocess  # noqa: E402

from bench import common, latency, mixer  # noqa: E402
from bench import __main__ as bench_main  # noqa: E402


def test_latency_note_lists_are_distinct_keys():
    keys = latency.piano_keys(200)
    assert len(set(keys)) == 200
    assert all(24 <= pitch <= 96 and ch == 0 for ch, pitch, _ in keys)
    notes = latency.busy_notes(200)
    assert len({(n[2], n[3]) for n in notes}) > 1 and all(n[3] == 25 for n in notes)
    programs = [n[0] for n in notes if n[0] is not None]
    assert 0 not in programs and len(programs) == 200 // 8
    played = set()
    program = None
    for prog, ch, pitch, vel in notes:                 # (preset, pitch) never repeats
        program = prog if prog is not None else program
        assert (program, pitch) not in played
        played.add((program, pitch))


def test_busy_row_takes_each_notes_attack_off():
    # a fast note 2 periods late; a pad whose attack takes 3,000 frames, 2 periods late; a note
    # found cached (its onset the same both times); one silent the first time; one silent after
    frames = [512, 3512, 3000, None, 700]
    attacks = [0, 3000, 3000, 10, None]
    late, first = latency.attack_removed(frames, attacks, 256)
    assert late == [512, 512, None, None] and first == [512, 3512, None, 700]


def test_random_checkpoint_has_the_presets_instruments(tmp_path):
    from sing_synth.checkpoint import load_checkpoint
    from sing_synth.config import named_config
    path = common.random_checkpoint(tmp_path / "r.pt")
    ckpt = load_checkpoint(path)
    names = common.preset_instruments()
    assert sorted(ckpt.instruments.values()) == names
    assert ckpt.model.config == named_config("small", n_instruments=len(names))
    assert common.random_checkpoint(tmp_path / "r.pt") == path       # reused, not rewritten


def test_mixer_sweep_rows_and_late_clients():
    t0 = time.perf_counter()
    rows = mixer.sweep([1, 4], modes=("rate1", "mixed"), blocks=20, kernels=("compiled", "numpy"),
                       log=lambda s: None)
    took = time.perf_counter() - t0
    each = [(k, n, m) for k in ("compiled", "numpy") for m in ("rate1", "mixed") for n in (1, 4)]
    assert [(r.get("kernel"), r["voices"], r["mode"], r["paced"]) for r in rows] == \
        [(*e, False) for e in each] + [(None, None, "copy128", False)] + \
        [(*e, True) for e in each] + [(None, None, "copy128", True)]
    assert all(r["p99_pct"] > 0 for r in rows)
    assert took >= 9 * 20 * 256 / 48000          # the paced rows take a period a call
    table = mixer.sweep_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "| compiled | 4 | mixed | back to back | 256 |" in table[5]
    assert "| numpy | 4 | mixed | back to back | 256 |" in table[9]
    assert "| - | - | reference: a 128 KiB np.copyto | one a period |" in table[-1]
    log = ("JackEngine::XRun: client = bench-soak was not finished, state = Running\n"
           "Jack: Process: graph not finished!\n"
           "Jack: Process: waiting to switch delta = 1290\n"
           "JackEngine::XRun: client = e2e-midi was not finished, state = Triggered\n"
           "JackEngine::XRun: client = bench-soak was not finished, state = Triggered\n"
           "JackAudioDriver::ProcessGraphAsyncMaster: Process error\n"
           "Jack: Process: graph not finished!\n"
           "JackEngine::XRun: client = bench-soak was not finished, state = Running\n")
    assert mixer.late_clients(log) == {"bench-soak": 3, "e2e-midi": 1}
    assert mixer.late_states(log, "bench-soak") == {"Running": 2, "Triggered": 1}
    assert mixer.late_states(log, "bench-soak-fluid") == {}
    assert mixer.late_cycles(log) == [("bench-soak", "Running", None, None),
                                      ("e2e-midi", "Triggered", 1290, 0),
                                      ("bench-soak", "Triggered", 1290, 0),
                                      ("bench-soak", "Running", None, 1)]
    assert mixer.in_short_cycle(1290, 5333.3) and not mixer.in_short_cycle(5290, 5333.3)
    assert not mixer.in_short_cycle(None, 5333.3)          # unknown: counted as the synth's own
    assert mixer.late_causes(log, "bench-soak", 5333.3) == {"own": 2, "short": 1, "behind": 0,
                                                            "short_had_ms": 1.29}
    behind = ("Jack: Process: graph not finished!\n"
              "Jack: Process: waiting to switch delta = 5347\n"
              "JackEngine::XRun: client = e2e-midi was not finished, state = Triggered\n"
              "JackEngine::XRun: client = bench-soak was not finished, state = Triggered\n"
              "Jack: Process: graph not finished!\n"
              "Jack: Process: waiting to switch delta = 5239\n"
              "JackEngine::XRun: client = bench-soak was not finished, state = Triggered\n")
    assert mixer.late_causes(behind, "bench-soak", 5333.3) == {"own": 1, "short": 0, "behind": 1,
                                                               "short_had_ms": None}
    # without -v nothing says which lines share a cycle: all the synth's own
    plain = "\n".join(line for line in behind.splitlines() if "XRun" in line)
    assert mixer.late_causes(plain, "bench-soak", 5333.3)["own"] == 2
    assert mixer.cpu_steal() >= 0
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert mixer.rt_schedstat(child.pid) == (0, 0, 0)            # no real-time thread
        try:
            os.sched_setscheduler(child.pid, os.SCHED_FIFO, os.sched_param(1))
        except OSError:
            pass                                                     # no real-time here
        else:
            assert mixer.rt_schedstat(child.pid)[2] == 1
    finally:
        child.kill()
        child.wait()
    assert mixer.rt_schedstat(child.pid) == (0, 0, 0)                # gone: zeros
    assert len(mixer.chord(128)) == 128 and len(set(mixer.chord(128))) == 128


def test_targets_table_from_results():
    lat = [latency.Latencies("sing-synth", "cached", 256, [6] * 10),
           latency.Latencies("FluidSynth", "(sample playback)", 256, [20] * 10),
           latency.Latencies("sing-synth", "not cached, idle renderer", 256, [1000] * 9 + [2000])]
    results = {"latency": {"results": lat},
               "mixer": {"sweep": [{"voices": 128, "mode": "mixed", "p99_pct": 7.0},
                                   {"voices": 128, "mode": "rate1", "p99_pct": 9.5, "paced": True}],
                         "soak": [{"synth": "sing-synth", "seconds": 60, "xruns": 1, "synth_late": 0, "others_late": 1},
                                  {"synth": "FluidSynth", "seconds": 60, "xruns": None, "synth_late": 2, "others_late": 0},
                                  {"synth": "sing-synth", "seconds": 60, "xruns": 0, "synth_late": 0, "others_late": 0},
                                  {"synth": "FluidSynth", "seconds": 60, "xruns": None, "synth_late": 3, "others_late": 0}]}}
    rows = {target.split(" (")[0]: verdict for target, _, verdict in bench_main.targets(results)}
    assert rows["mixer: 128 voices, p99 <= 10% of a 256-frame period"] == "met"
    measured = {target: text for target, text, _ in bench_main.targets(results)}
    assert measured["mixer: 128 voices, p99 <= 10% of a 256-frame period"] == \
        "mixed 7.0%, rate 1 9.5% (one a period)"
    results["mixer"]["sweep"].append({"voices": None, "mode": "copy128", "p99_pct": 1.5, "paced": True})
    measured = {target: text for target, text, _ in bench_main.targets(results)}
    assert measured["mixer: 128 voices, p99 <= 10% of a 256-frame period"].endswith(
        "; reference, a 128 KiB copy: 1.5% one a period")
    results["mixer"]["sweep"][1]["p99_pct"] = 12.0       # judged on the paced row too
    paced = {t: v for t, _, v in bench_main.targets(results)}
    assert "missed" in paced["mixer: 128 voices, p99 <= 10% of a 256-frame period"]
    results["mixer"]["sweep"][1]["p99_pct"] = 9.5
    # the kernel the instrument runs (the first row's) is judged; another kernel's rows are quoted
    kernels = {"mixer": {"sweep": [
        {"voices": 128, "mode": "mixed", "p99_pct": 3.0, "kernel": "compiled"},
        {"voices": 128, "mode": "mixed", "p99_pct": 5.5, "kernel": "compiled", "paced": True},
        {"voices": 128, "mode": "mixed", "p99_pct": 15.0, "kernel": "numpy", "paced": True}],
        "soak": results["mixer"]["soak"]}}
    judged = {t: (text, v) for t, text, v in bench_main.targets(kernels)}
    assert judged["mixer: 128 voices, p99 <= 10% of a 256-frame period"] == (
        "compiled kernel: mixed 3.0%, mixed 5.5% (one a period); numpy kernel (reference): "
        "mixed 15.0% (one a period)", "met")
    kernels["mixer"]["sweep"][1]["p99_pct"] = 10.5
    judged = {t: v for t, _, v in bench_main.targets(kernels)}
    assert "missed" in judged["mixer: 128 voices, p99 <= 10% of a 256-frame period"]
    assert rows["mixer: 0 xruns in a 60 s soak, 128 voices, prewarm running"] == "met"
    measured = {target: text for target, text, _ in bench_main.targets(results)}
    soak_text = measured["mixer: 0 xruns in a 60 s soak, 128 voices, prewarm running"]
    assert "late in 2 run(s): 0, 0 (median 0, worst 0)" in soak_text
    assert "FluidSynth late 2, 3 (median 2.5, worst 3) on the same schedule" in soak_text
    assert "renderer load" not in soak_text
    # FluidSynth with sing-synth's renderer load beside it: summarised apart, not in the verdict
    results["mixer"]["soak"].append({"synth": "FluidSynth" + mixer.LOADED, "seconds": 60, "xruns": None,
                                     "synth_late": 4, "synth_late_own": 1, "others_late": 0})
    loaded = {t.split(" (")[0]: (m, v) for t, m, v in bench_main.targets(results)}[
        "mixer: 0 xruns in a 60 s soak, 128 voices, prewarm running"]
    assert loaded[1] == "met" and "FluidSynth late 2, 3 (median 2.5, worst 3) on the same schedule" in loaded[0]
    assert "FluidSynth late 4 with sing-synth's renderer load beside it, of its own 1" in loaded[0]
    results["mixer"]["soak"][2].update(synth_late=5, late_states={"Triggered": 4, "Running": 1})
    missed = {t.split(" (")[0]: (text, v) for t, text, v in bench_main.targets(results)}
    text, verdict = missed["mixer: 0 xruns in a 60 s soak, 128 voices, prewarm running"]
    assert "missed" in verdict and "0, 5 (median 2.5, worst 5), 4 of the 5 not yet started" in text
    table = mixer.soak_markdown([dict(results["mixer"]["soak"][2], voices=128, voices_min=128, voices_max=128,
                                      period=256, presets_queued=15, run=2)])
    assert "4 Triggered" in table.splitlines()[-1] and "| 2 |" in table.splitlines()[-1]
    # 4 of the 5 in cycles the server began late: judged on the one of its own
    results["mixer"]["soak"][2].update(synth_late_own=1, synth_late_short=3, synth_late_behind=1,
                                       short_had_ms=0.62, period=256)
    text, verdict = {t.split(" (")[0]: (m, v) for t, m, v in bench_main.targets(results)}[
        "mixer: 0 xruns in a 60 s soak, 128 voices, prewarm running"]
    assert "missed" in verdict and "3 of the 5 in cycles the server itself began late" in text
    assert "(the graph had 0.62 ms or more of 5.33); 1 not started behind the late MIDI sender" in text
    assert "late of its own: 0, 1 (median 0.5, worst 1)" in text and "callback returned" not in text
    results["mixer"]["soak"][0]["dsp_max"], results["mixer"]["soak"][2]["dsp_max"] = 38, 61
    text = {t.split(" (")[0]: m for t, m, v in bench_main.targets(results)}[
        "mixer: 0 xruns in a 60 s soak, 128 voices, prewarm running"]
    assert "; sing-synth's callback returned by 61% of the period at the latest (its status lines)" in text
    results["mixer"]["soak"][2].update(synth_late_own=0, synth_late_short=4)
    assert bench_main.targets(results)[1][2] == "met"
    row = dict(results["mixer"]["soak"][2], voices=128, voices_min=128, voices_max=128, presets_queued=15)
    assert "| 5 | 4 (0.620) | 1 | 1 Running, 4 Triggered |" in mixer.soak_markdown([row])
    assert "| - (C++ callback) | - |" in mixer.soak_markdown([dict(row, sender_finish_pct=None, dsp_max=None)])
    row.update(dsp_max=41, dsp_median=12.5)
    assert "| 41.0 (12.5) |" in mixer.soak_markdown([row])
    assert rows["cached note-on -> sound <= 1 period"] == "met"
    assert "missed" in rows["not-cached note-on -> sound <= 30 ms"]
    assert "| synth |" in latency.markdown(lat)


LATE_PROBE = r"""
import os, signal, time
import jack
from bench import common, mixer
with common.jack_server(256, verbose=True) as server:
    client = jack.Client("slow-probe")
    busy = [0.0]
    @client.set_process_callback
    def process(frames):
        t = time.perf_counter()
        while time.perf_counter() - t < busy[0]:
            pass
    client.activate()
    time.sleep(0.3)
    busy[0] = 0.008                      # overruns whole periods
    time.sleep(0.05)
    busy[0] = 0.002                      # fits a period, not a cycle cut short
    time.sleep(0.3)
    for _ in range(30):                  # the server stopped: it wakes late, then catches up
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(0.006)
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    client.deactivate()
    client.close()
    log = server.log_path.read_text(errors="replace")
print(repr([(s, had) for name, s, had, _ in mixer.late_cycles(log) if name == "slow-probe"]))
"""


@pytest.mark.skipif(shutil.which("jackd") is None, reason="needs jackd")
def test_late_cycles_tell_overruns_from_cycles_the_server_began_late():
    """A real jackd -v: a client that overruns is late in cycles that had a whole period; one that
    fits its period is late only in cycles the server cut short after it was stopped (as a VM's
    late timer does).  In a child process: libjack keeps per-process state about servers."""
    import ast
    r = subprocess.run([sys.executable, "-c", LATE_PROBE], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    cycles = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    period_us = 1e6 * 256 / 48000
    # jackd logs the graph's time before the late clients it finds; under load it also finds
    # some without that line (no time: `late_causes` counts those as the client's own)
    known = [(state, had) for state, had in cycles if had is not None]
    assert known and len(known) >= len(cycles) / 2, cycles
    assert not mixer.in_short_cycle(known[0][1], period_us)         # the overrun: a full period
    assert any(mixer.in_short_cycle(had, period_us) for _, had in known[1:])


def test_bench_command_line_rejects_bad_input(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main.parse_args(["--notes", "0"])
    assert exc.value.code == 2
    assert "--notes" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("jackd") is None or shutil.which("fluidsynth") is None
                    or not common.SF2.is_file(), reason="needs jackd, fluidsynth and FluidR3_GM")
def test_latency_bench_runs_on_jack_with_the_test_tone():
    """The latency rig end to end, three notes each: sing-synth (test tone, no model) with its
    JACK backend, and FluidSynth; every note is found, cached notes within a period.  In a
    child process: libjack keeps per-process state about the servers it has seen, and the
    end-to-end tests start their own server in this one."""
    import subprocess
    r = subprocess.run([sys.executable, "-m", "bench.latency", "--test-tone", "--notes", "3",
                        "--periods", "256", "--synths", "sing", "fluidsynth"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines()
            if line.startswith("| sing-synth") or line.startswith("| FluidSynth")]
    assert [row[:3] for row in rows] == [["sing-synth", "not cached, idle renderer", "256"],
                                         ["sing-synth", "cached", "256"],
                                         ["FluidSynth", "(sample playback)", "256"]]
    for row in rows:
        assert row[3] == "3" and row[8] == "0", row          # 3 notes measured, none silent
    assert float(rows[1][6]) < 256 / 48                      # cached: within the note-on's period


@pytest.mark.skipif(shutil.which("jackd") is None, reason="needs jackd")
def test_gpu_emulated_latency_rows_render_by_waits(tmp_path):
    """`bench.latency --gpu-emulation`: sing-synth starts through `bench.gpu_emulation`, whose
    renderer waits instead of running the model: a not-cached note sounds after the urgent
    wait (60 ms, longer than the random model's render here) and within a few periods of it."""
    ckpt = common.random_checkpoint(tmp_path / "random.pt")
    r = subprocess.run([sys.executable, "-m", "bench.latency", "--gpu-emulation", "5", "60",
                        "--checkpoint", str(ckpt), "--notes", "3", "--periods", "256",
                        "--synths", "sing"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines()
            if line.startswith("| sing-synth")]
    assert [row[:2] for row in rows] == [["sing-synth (GPU emulated)", "not cached, idle renderer"],
                                         ["sing-synth (GPU emulated)", "cached"]]
    assert rows[0][3] == "3" and 60 <= float(rows[0][4]) <= float(rows[0][6]) < 60 + 4 * 256 / 48
    assert float(rows[1][6]) < 256 / 48
    bad = subprocess.run([sys.executable, "-m", "bench.latency", "--test-tone", "--gpu-emulation",
                          "3", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--gpu-emulation" in bad.stderr


def test_gpu_emulation_command_line():
    from bench import gpu_emulation
    args = gpu_emulation.parse_args(["--render-ms", "4", "--", "--virtual", "x"])
    assert (args.render_ms, args.urgent_render_ms, args.batch) == (4.0, 2.0, 32)
    assert args.synth_args == ["--virtual", "x"]
    for bad in (["--render-ms", "-1"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            gpu_emulation.parse_args(bad)


def test_capture_zeroes_the_cycles_it_missed():
    """A missed cycle reads as silence, not as what the ring held a lap ago; across the wrap."""
    from bench.jack_rig import Capture
    cap = Capture.__new__(Capture)          # the ring alone, no JACK client
    cap.size, cap.missed = 1000, []
    cap.buf = np.ones((cap.size, 2), np.float32)
    cap._zero(2950, 3080)                   # 950..999 and 0..79 of the ring
    zero = np.flatnonzero(cap.buf[:, 0] == 0)
    assert set(zero) == set(range(950, 1000)) | set(range(0, 80))
    assert (cap.buf[80:950] == 1).all()
    assert cap.missed_in(3000, 4000) == 80 and cap.missed_in(0, 2950) == 0
    cap._zero(10_000, 12_500)               # a gap longer than the ring clears all of it
    assert (cap.buf == 0).all() and cap.missed_in(0, 1 << 40) == 130 + 2500


def test_c_output_to_sends_c_writes_to_the_file_and_keeps_python_lines(tmp_path):
    """`common.c_output_to`: what C code writes to fds 1 and 2 (libjack's verbose lines), even
    through stdio's buffer, lands in the file; Python's prints and `common.log` lines still reach
    the process's stdout and stderr, and the fds are put back after."""
    code = ("import ctypes, os\n"
            "from bench import common\n"
            f"with common.c_output_to({str(tmp_path / 'c.log')!r}):\n"
            "    os.write(1, b'C out\\n')\n"
            "    os.write(2, b'C err\\n')\n"
            "    ctypes.CDLL(None).printf(b'buffered\\n')\n"
            "    print('table')\n"
            "    common.log('progress')\n"
            "os.write(1, b'after\\n')\n"
            "os.write(2, b'after\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "table\nafter\n" and r.stderr == "progress\nafter\n"
    assert sorted((tmp_path / "c.log").read_text().splitlines()) == ["C err", "C out", "buffered"]


def test_renderer_load_renders_on_the_soaks_schedule_and_reports_a_bad_checkpoint(tmp_path, capsys):
    from bench import common, load, mixer
    ckpt = common.random_checkpoint(tmp_path / "r.pt")
    ready = []
    done = load.run(ckpt, seconds=1.5, program_every=0.5, ready=lambda: ready.append(1))
    assert ready == [1]
    assert 2 <= done["programs"] <= 4 and done["rendered"] > 0   # at 0, 0.5, 1.0 s (the loop's 0.1 s steps)
    again = load.run(ckpt, seconds=0.6, program_every=0.5)
    assert again["rendered"] > 0 and again["stored"] == 0      # renders, as the soaked synth: no store
    assert len(load.soak_programs()) >= 3 and mixer.ORGAN not in load.soak_programs()
    assert load.main(["--checkpoint", str(tmp_path / "missing.pt"), "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench.load: error: checkpoint not found")
    with pytest.raises(common.BenchError, match="renderer load exited: bench.load: error: checkpoint not found"):
        with mixer.renderer_load(tmp_path / "missing.pt", 5.0):
            pass
    with mixer.renderer_load(ckpt, 30.0) as proc:               # up and warmed up, then stopped
        assert proc.poll() is None
    assert proc.poll() is not None


def test_soak_schedule_strikes_at_once_then_every_3_s_with_program_changes_every_4_s(monkeypatch):
    from bench import mixer
    sent = []

    class Sender:
        note_on = staticmethod(lambda p, v=100, ch=0: ("on", ch, p))
        note_off = staticmethod(lambda p, ch=0: ("off", ch, p))
        program = staticmethod(lambda prog, ch=0: ("program", ch, prog))

        def send(self, *messages):
            sent.extend((round(clock[0], 1), m) for m in messages)

    clock = [0.0]
    monkeypatch.setattr(mixer.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(mixer.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(mixer, "last_value", lambda proc, key: 128)
    seen, programs = mixer._hold(None, Sender(), [(0, 60), (1, 64)], [7, 9], 6.5)
    ons = sorted({t for t, m in sent if m[0] == "on"})
    assert len(ons) == 3 and ons[0] == 0.0              # at once, then every 3 s (0.1 s steps)
    assert all(2.95 < b - a < 3.15 for a, b in zip(ons, ons[1:]))
    assert len([m for _, m in sent if m[0] == "on"]) == 6 and sent[0][1] == ("program", mixer.PROGRAM_CHANNEL, 7)
    assert [(t, m) for t, m in sent if m[0] == "program"] == [(0.0, ("program", mixer.PROGRAM_CHANNEL, 7)),
                                                              (4.0, ("program", mixer.PROGRAM_CHANNEL, 9))]
    assert programs == 2 and 64 <= len(seen) <= 66 and set(seen) == {128}    # a sample each 0.1 s


def test_close_client_gives_up_on_a_close_that_blocks(capsys):
    """A JACK client's close that never returns (seen once in a soak) is left behind after the
    timeout instead of stopping the bench; one that returns is closed and deactivated first."""
    import threading as _threading
    from bench import jack_rig

    class Client:
        name = "stuck"

        def __init__(self, block):
            self.calls, self.block = [], block

        def deactivate(self):
            self.calls.append("deactivate")

        def close(self):
            self.calls.append("close")
            if self.block:
                self.block.wait()

    release = _threading.Event()
    stuck = Client(release)
    t0 = time.perf_counter()
    assert jack_rig.close_client(stuck, timeout=0.2) is False
    assert 0.2 <= time.perf_counter() - t0 < 2.0
    assert "closing JACK client 'stuck' took over 0.2 s" in capsys.readouterr().err
    release.set()
    fine = Client(None)
    assert jack_rig.close_client(fine) is True and fine.calls == ["deactivate", "close"]
    assert jack_rig.close_client(fine, deactivate=False) and fine.calls[2:] == ["close"]

