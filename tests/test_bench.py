"""The rendering benchmark: analytic FLOP counts and a short run of the table."""
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from bench.render import Row, main, markdown_table, model_flops, run_benchmark, time_calls  # noqa: E402
from sing_synth.config import SIZES, named_config  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine, two OpenMP threads waiting on each other can make
    the short runs below 10-100x slower than when the machine is quiet."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
