"""What the benchmark parts share: the checkpoint they run, a private JACK server, process CPU
time and memory, percentiles and number formatting."""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "sing-small-fluidr3.pt"
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RANDOM_CHECKPOINT = Path(tempfile.gettempdir()) / "sing-bench-random-small.pt"


class BenchError(RuntimeError):
    """A benchmark cannot run here (missing tool or file): one line for the user."""


def log(text: str) -> None:
    """Progress lines: stderr, so that stdout holds only the tables."""
    print(text, file=sys.stderr, flush=True)


def isolated(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh interpreter (multiprocessing's 'spawn'), its result
    (or exception) returned here.  Every JACK server of a bench runs its clients in a process of
    its own: libjack keeps process-wide state about the servers a process has used, and a
    process that opens clients on a second server after the first one stopped can crash in
    jack_client_open."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args, kwargs)


# ---------------------------------------------------------------------------------- checkpoint
def preset_instruments() -> list:
    """Instrument names the shipped presets use (the shipped model's instruments), sorted."""
    from sing_synth.presets import load_presets
    names = set()
    for preset in load_presets().values():
        names.update(preset.instrument)
    return sorted(names)


def random_checkpoint(path=RANDOM_CHECKPOINT, size="small", seed=0) -> Path:
    """A random-weights checkpoint of the shipped model's config (``size``, one instrument per
    preset instrument, same names), written once to ``path``.  Timing does not depend on the
    weights, so it stands in for the shipped model until that is trained."""
    import torch

    from sing_synth.checkpoint import load_checkpoint, save_checkpoint
    from sing_synth.config import named_config
    from sing_synth.model import SING
    names = preset_instruments()
    path = Path(path)
    if path.is_file():
        try:
            ckpt = load_checkpoint(path)
            if sorted(ckpt.instruments.values()) == names \
                    and ckpt.model.config == named_config(size, n_instruments=len(names)):
                return path
        except Exception:
            pass
    torch.manual_seed(seed)
    model = SING(named_config(size, n_instruments=len(names)))
    save_checkpoint(path, model, instruments=dict(enumerate(names)),
                    metadata={"note": f"random weights, {size} size, for benchmarks"}, half=True)
    return path


def bench_checkpoint(path=None) -> tuple:
    """(checkpoint path, label for the tables): ``path`` if given, else the shipped model if it
    is there, else a random-weights model of its config."""
    if path:
        path = Path(path)
        if not path.is_file():
            raise BenchError(f"checkpoint not found: {path}")
        return path, f"`{path.name}`"
    if SHIPPED.is_file():
        return SHIPPED, f"shipped model `{SHIPPED.relative_to(REPO)}`"
    return random_checkpoint(), ("random-weights `small` model with the shipped model's config "
                                 "(the shipped model is not built yet; timing does not depend on weights)")


# ---------------------------------------------------------------------------------- JACK
def need_tools(*names) -> None:
    for name in names:
        if shutil.which(name) is None:
            raise BenchError(f"{name} not found (Debian: jackd2, fluidsynth)")


def print_or_error(make_text) -> int:
    """A bench script's exit: prints ``make_text()`` and returns 0, or one error line and 2."""
    try:
        text = make_text()
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


@contextlib.contextmanager
def c_output_to(path):
    """File descriptors 1 and 2, where C libraries write (libjack's verbose lines go to stdout),
    go to ``path`` while the block runs; Python's ``sys.stdout`` and ``sys.stderr`` (the tables,
    `log`) still write where they did."""
    old = sys.stdout, sys.stderr
    for stream in old:
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    sys.stdout, sys.stderr = (os.fdopen(os.dup(fd), "w", buffering=1) for fd in saved)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(out, fd)
    os.close(out)
    try:
        yield
    finally:
        _flush_c_streams()
        for stream in (sys.stdout, sys.stderr):
            stream.close()
        sys.stdout, sys.stderr = old
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _flush_c_streams() -> None:
    """C's stdio buffers (fflush(NULL)), so that nothing written in a block lands after it."""
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def jack_server(period: int, rate: int = 48000, log_dir=None, verbose=False):
    """A private jackd (dummy driver) named in JACK_DEFAULT_SERVER for this process and its
    children while the block runs.  ``verbose``: jackd -v; libjack then logs verbosely in every
    client too, and this process's clients' lines go to the server's log path + '.clients'."""
    from .jack_rig import JackServer, named_server
    need_tools("jackd")
    server = JackServer(rate=rate, period=period, log_dir=log_dir or tempfile.gettempdir(),
                        prefix="singbench", verbose=verbose)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        raise BenchError(f"jackd did not start: {' '.join(str(exc).split())[:300]}") from None
    # the capture and sender clients' JACK threads wait for the GIL while the main thread
    # analyses audio: make it hand the GIL over within 0.2 ms, not Python's 5 ms
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        clients_log = server.log_path.with_name(server.log_path.name + ".clients")
        with named_server(server), c_output_to(clients_log) if verbose else contextlib.nullcontext():
            yield server
    finally:
        sys.setswitchinterval(switch)
        server.stop()


def sing_command(checkpoint, period, name, *extra, audio_api="jack", rate=48000, store="off") -> list:
    """run_synth.py's arguments for a benchmark run on the JACK server.  ``store``: the note
    store's folder; off by default, so that a note not cached is rendered, whatever earlier
    runs left on disk (the rows that read the store name one of their own)."""
    args = ["--virtual", name, "--midi-api", "jack", "--audio-api", audio_api,
            "--blocksize", period, "--samplerate", rate, "--status-interval", 0.25,
            "--note-store", store]
    if checkpoint is None:
        args.append("--test-tone")
    else:
        args += ["--checkpoint", str(checkpoint)]
    return args + list(extra)


def fluidsynth_command(name="fluidsynth", rate=48000, polyphony=512) -> list:
    """FluidSynth on the JACK server, nothing auto-connected, its shell on stdin."""
    need_tools("fluidsynth")
    if not SF2.is_file():
        raise BenchError(f"{SF2} not found (Debian: fluid-soundfont-gm)")
    return ["fluidsynth", "-a", "jack", "-m", "jack", "-r", str(rate),
            "-o", "audio.jack.autoconnect=0", "-o", "midi.autoconnect=0",
            "-o", f"audio.jack.id={name}", "-o", f"midi.jack.id={name}",
            "-o", f"synth.polyphony={polyphony}", str(SF2)]


# ---------------------------------------------------------------------------------- processes
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def memory_mb(pid: int) -> dict:
    """Resident set now (VmRSS) and its peak (VmHWM), MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out.get("VmRSS", math.nan), "peak_mb": out.get("VmHWM", math.nan)}


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ---------------------------------------------------------------------------------- numbers
def percentile(values, q) -> float:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else math.nan


def fmt(value, digits=3) -> str:
    """``digits`` significant figures, no exponent; '-' for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    places = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{places}f}"


def table(header, rows, align=None) -> str:
    """A markdown table; ``align``: one of 'l'/'r' per column (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
