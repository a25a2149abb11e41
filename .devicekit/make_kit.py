#!/usr/bin/env python3
"""Build (here) and unpack (on the device machine) the device kit.

    make_kit.py sf2 [--sf2 FluidR3_GM.sf2] [--programs 0,1,...]   trimmed soundfont -> FLAC + skeleton
    make_kit.py rebuild OUT.sf2                                     -> OUT.sf2, sha256 checked
    make_kit.py libs                                                fluidlibs.tar.xz, jacklibs.tar.xz
    make_kit.py wheels                                              wheels/ (cp312 manylinux x86_64)
    make_kit.py digest DATA [--write FILE | --check FILE]           a dataset's fingerprint
    make_kit.py all                                                 sf2, libs, wheels, and the digest of
                                                                    data/fluidr3-shipped (the kit, here)

The trimmed soundfont has exactly the layout, chunk sizes and sample offsets of the original; only
the sample data (smpl, and sm24 if present) that no preset of bank 0 among ``--programs`` can reach
is zeroed, so FluidSynth renders those presets bit for bit as from the original.  Reachable: preset
zones -> instrument (generator 41) -> instrument zones -> sample (generator 53), plus every sample
linked from those (shdr sampleLink, followed transitively).  A reachable sample keeps its points
[start - GUARD_BEFORE, end + GUARD_AFTER) (the SoundFont spec's 46 zero points after each sample
and interpolation neighbours).  ``rebuild`` needs numpy and soundfile (the kit's wheel).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent
SF2_DEFAULT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
GUARD_BEFORE = 8
GUARD_AFTER = 64
GEN_INSTRUMENT, GEN_SAMPLE = 41, 53


# ------------------------------------------------------------------------------- SF2 parsing
def riff_chunks(buf: bytes, start: int, end: int):
    """(id, data_offset, size) of the chunks in buf[start:end]."""
    pos = start
    while pos + 8 <= end:
        cid, size = buf[pos:pos + 4], struct.unpack_from("<I", buf, pos + 4)[0]
        yield cid, pos + 8, size
        pos += 8 + size + (size & 1)


def sf2_layout(buf: bytes) -> dict:
    """{'smpl': (offset, size), 'sm24': (offset, size) or None, 'pdta': {name: (offset, size)}}"""
    if buf[:4] != b"RIFF" or buf[8:12] != b"sfbk":
        raise SystemExit("not a SoundFont 2 file")
    out = {"sm24": None, "pdta": {}}
    for cid, off, size in riff_chunks(buf, 12, len(buf)):
        if cid != b"LIST":
            continue
        kind = buf[off:off + 4]
        for sid, soff, ssize in riff_chunks(buf, off + 4, off + size):
            name = sid.decode("latin-1")
            if kind == b"sdta" and name in ("smpl", "sm24"):
                out[name] = (soff, ssize)
            elif kind == b"pdta":
                out["pdta"][name] = (soff, ssize)
    return out


def records(buf: bytes, chunk, fmt: str) -> list:
    off, size = chunk
    rec = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, buf, off + i * rec) for i in range(size // rec)]


def reachable_samples(buf: bytes, layout: dict, programs, bank: int = 0):
    """(sorted sample ids reachable from the presets, shdr records, preset names found)"""
    p = layout["pdta"]
    phdr = records(buf, p["phdr"], "<20sHHHIII")   # name, preset, bank, bagNdx, ...
    pbag = records(buf, p["pbag"], "<HH")
    pgen = records(buf, p["pgen"], "<HH")          # oper, amount (unsigned)
    inst = records(buf, p["inst"], "<20sH")
    ibag = records(buf, p["ibag"], "<HH")
    igen = records(buf, p["igen"], "<HH")
    shdr = records(buf, p["shdr"], "<20sIIIIIBbHH")  # name, start, end, sloop, eloop, rate, key, corr, link, type
    wanted = set(programs)
    instruments, found = set(), {}
    for i in range(len(phdr) - 1):                  # the last record is the EOP terminal
        name, preset, pbank, bag0 = phdr[i][:4]
        if pbank != bank or preset not in wanted:
            continue
        found[preset] = name.split(b"\0")[0].decode("latin-1")
        for b in range(bag0, phdr[i + 1][3]):
            for g in range(pbag[b][0], pbag[b + 1][0]):
                if pgen[g][0] == GEN_INSTRUMENT:
                    instruments.add(pgen[g][1])
    samples = set()
    for k in instruments:
        for b in range(inst[k][1], inst[k + 1][1]):
            for g in range(ibag[b][0], ibag[b + 1][0]):
                if igen[g][0] == GEN_SAMPLE:
                    samples.add(igen[g][1])
    todo = list(samples)
    while todo:                                     # linked stereo samples, transitively
        s = todo.pop()
        link, stype = shdr[s][8], shdr[s][9]
        if stype & 0x7FFF in (2, 4, 8) and link < len(shdr) - 1 and link not in samples:
            samples.add(link)
            todo.append(link)
    return sorted(samples), shdr, found


def trimmed(src: Path, programs) -> tuple[bytearray, dict, list]:
    """(trimmed file, info, kept runs of smpl points [(first point, count)])"""
    buf = bytearray(src.read_bytes())
    layout = sf2_layout(buf)
    samples, shdr, found = reachable_samples(buf, layout, programs)
    missing = sorted(set(programs) - set(found))
    if missing:
        raise SystemExit(f"programs without a bank-0 preset in {src}: {missing}")
    smpl_off, smpl_size = layout["smpl"]
    n_points = smpl_size // 2
    keep = bytearray(n_points)                      # 1 = keep this sample point
    for s in samples:
        start, end = shdr[s][1], shdr[s][2]
        a, b = max(0, start - GUARD_BEFORE), min(n_points, end + GUARD_AFTER)
        keep[a:b] = b"\1" * (b - a)
    runs, i = [], 0                                 # maximal runs of kept points
    while i < n_points:
        j = keep.find(b"\1", i)
        if j < 0:
            break
        k = keep.find(b"\0", j)
        k = n_points if k < 0 else k
        runs.append((j, k - j))
        i = k
    # zero everything else, in smpl (2 bytes/point) and sm24 (1 byte/point)
    zero_from = 0
    for first, count in runs + [(n_points, 0)]:
        buf[smpl_off + 2 * zero_from: smpl_off + 2 * first] = bytes(2 * (first - zero_from))
        if layout["sm24"]:
            o24, n24 = layout["sm24"]
            lo, hi = min(zero_from, n24), min(first, n24)
            buf[o24 + lo: o24 + hi] = bytes(hi - lo)
        zero_from = first + count
    info = {"presets": found, "samples": len(samples), "of_samples": len(shdr) - 1,
            "points_kept": sum(c for _, c in runs), "points": n_points, "sm24": layout["sm24"] is not None,
            "smpl_offset": smpl_off, "smpl_size": smpl_size}
    return buf, info, runs


# ------------------------------------------------------------------------------- commands
# The kit holds the trimmed file as: FLAC_NAME, the kept runs of smpl points one after another as
# a mono 16-bit FLAC stream (its nominal rate means nothing); SKEL_NAME, the whole file with its
# smpl data all zero, xz-compressed (the zeros cost nothing); INDEX_NAME, the runs and the sha256.
FLAC_NAME = "FluidR3_GM.trim.flac"
SKEL_NAME = "FluidR3_GM.trim.skel.xz"
INDEX_NAME = "FluidR3_GM.trim.json"
FLAC_OPTS = ["--lax", "-8", "-l", "32", "-b", "8192", "-r", "8", "-e"]   # -l 32, -b 8192: non-subset


def encode_flac(points, dest: Path) -> str:
    """Mono int16 points -> FLAC; the flac tool if installed (4% smaller), else soundfile."""
    flac = shutil.which("flac")
    if flac:
        raw = dest.with_suffix(".raw")
        points.astype("<i2").tofile(raw)
        subprocess.run([flac, "-f", "-s", "--force-raw-format", "--endian=little", "--sign=signed",
                        "--channels=1", "--bps=16", "--sample-rate=44100", *FLAC_OPTS, str(raw),
                        "-o", str(dest)], check=True)
        raw.unlink()
        return "flac " + " ".join(FLAC_OPTS)
    import soundfile
    soundfile.write(dest, points, 44100, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return "soundfile FLAC level 8"


def cmd_sf2(args) -> None:
    import numpy as np
    programs = [int(x) for x in args.programs.split(",")] if args.programs else shipped_programs()
    t0 = time.time()
    data, info, runs = trimmed(Path(args.sf2), programs)
    print(f"{len(info['presets'])} presets, {info['samples']}/{info['of_samples']} samples reachable, "
          f"{info['points_kept']:,}/{info['points']:,} sample points kept "
          f"({info['points_kept'] * 2 / 1e6:.1f} MB of {info['points'] * 2 / 1e6:.1f} MB) in "
          f"{len(runs)} runs, sm24: {info['sm24']}  [{time.time() - t0:.1f} s]")
    sha = hashlib.sha256(data).hexdigest()
    if args.write_sf2:
        Path(args.write_sf2).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_sf2).write_bytes(data)
    t0 = time.time()
    off = info["smpl_offset"]
    smpl = np.frombuffer(data, dtype="<i2", count=info["smpl_size"] // 2, offset=off)
    kept = np.concatenate([smpl[a:a + n] for a, n in runs])
    how = encode_flac(kept, KIT / FLAC_NAME)
    t1 = time.time()
    skel = bytearray(data)
    skel[off:off + info["smpl_size"]] = bytes(info["smpl_size"])
    (KIT / SKEL_NAME).write_bytes(lzma.compress(bytes(skel), preset=9 | lzma.PRESET_EXTREME))
    index = {"file": "FluidR3_GM.sf2", "size": len(data), "sha256": sha, "smpl_offset": off,
             "smpl_size": info["smpl_size"], "points": info["points_kept"], "runs": runs,
             "programs": programs, "source": os.path.basename(args.sf2)}
    (KIT / INDEX_NAME).write_text(json.dumps(index, separators=(",", ":")) + "\n")
    for name in (FLAC_NAME, SKEL_NAME, INDEX_NAME):
        print(f"  {name}: {(KIT / name).stat().st_size:,} bytes")
    print(f"FLAC by {how} [{t1 - t0:.1f} s], skeleton xz [{time.time() - t1:.1f} s]; "
          f"sf2 {len(data):,} bytes, sha256 {sha}")


def cmd_rebuild(args) -> None:
    import numpy as np
    import soundfile
    t0 = time.time()
    out = Path(args.out)
    index = json.loads((KIT / INDEX_NAME).read_text())
    data = bytearray(lzma.decompress((KIT / SKEL_NAME).read_bytes()))
    points, _ = soundfile.read(KIT / FLAC_NAME, dtype="int16", always_2d=False)
    if len(data) != index["size"] or len(points) != index["points"]:
        raise SystemExit(f"kit damaged: {len(data)} bytes / {len(points)} points, "
                         f"want {index['size']} / {index['points']}")
    smpl = np.frombuffer(data, dtype="<i2", count=index["smpl_size"] // 2, offset=index["smpl_offset"])
    pos = 0
    for first, count in index["runs"]:
        smpl[first:first + count] = points[pos:pos + count]
        pos += count
    sha = hashlib.sha256(data).hexdigest()
    if sha != index["sha256"]:
        raise SystemExit(f"sha256 mismatch: got {sha}, want {index['sha256']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    print(f"{out}: {len(data):,} bytes, sha256 {sha[:16]}... ok [{time.time() - t0:.1f} s]")


def shipped_programs() -> list:
    sys.path.insert(0, str(KIT.parent))
    from sing_synth.presets import SHIPPED_PROGRAMS
    return list(SHIPPED_PROGRAMS)


# --- shared libraries
# glibc's own libraries are the device machine's; so are the compiler runtime libraries (torch
# needs them there, and a newer libstdc++ must never be shadowed by Debian 12's older one)
GLIBC = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux", "libresolv.so",
         "linux-vdso", "libstdc++.so", "libgcc_s.so")
# jackd2's drivers: jack_dummy is what the benchmarks use; the rest are small and harmless
JACK_DIR = Path("/usr/lib/x86_64-linux-gnu/jack")


def ldd(path: Path) -> dict:
    """{soname: resolved path} of everything path needs (transitively, as ldd reports)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
    deps = {}
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            name, target = parts[0], parts[2]
            if target == "not":
                raise SystemExit(f"{path}: {name} not found")
            deps[name] = target
    return deps


def soname(path: Path) -> str:
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.split()[:1] == ["SONAME"]:
            return line.split()[1]
    return Path(path).name


def pack(tar_name: str, libs: dict, bins: dict, extra_dirs: dict) -> None:
    """libs: {soname: path} -> lib/<soname>; bins -> bin/<name>; extra_dirs: {arcdir: [paths]}"""
    stage = Path(f"/tmp/kit-stage-{tar_name}")
    shutil.rmtree(stage, ignore_errors=True)
    for sub, items in (("lib", libs), ("bin", bins)):
        (stage / sub).mkdir(parents=True)
        for name, path in sorted(items.items()):
            shutil.copy2(os.path.realpath(path), stage / sub / name)
    for arcdir, paths in extra_dirs.items():
        (stage / arcdir).mkdir(parents=True)
        for path in paths:
            shutil.copy2(os.path.realpath(path), stage / arcdir / Path(path).name)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for p in sorted(stage.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(stage)), recursive=False)
    # x86 BCJ filter before LZMA2: ~8% smaller for machine code; any xz / tar -xJ / Python reads it
    (KIT / tar_name).write_bytes(lzma.compress(raw.getvalue(), format=lzma.FORMAT_XZ, filters=[
        {"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]))
    size = (KIT / tar_name).stat().st_size
    print(f"{tar_name}: {size:,} bytes; {len(libs)} libs, bins {sorted(bins)}, "
          f"{sum(len(v) for v in extra_dirs.values())} plugins")
    shutil.rmtree(stage)


def closure(*roots: Path) -> dict:
    libs = {}
    for root in roots:
        if root.name.startswith("lib"):
            libs[soname(root)] = str(root)
        libs.update(ldd(root))
    return {k: v for k, v in libs.items() if not k.startswith(GLIBC)}


def cmd_libs(args) -> None:
    lib = Path("/usr/lib/x86_64-linux-gnu")
    fluid = closure(lib / "libfluidsynth.so.3", Path("/usr/bin/fluidsynth"))
    pack("fluidlibs.tar.xz", fluid, {"fluidsynth": "/usr/bin/fluidsynth"}, {})
    plugins = sorted(JACK_DIR.glob("*.so"))
    jack = closure(Path("/usr/bin/jackd"), Path("/usr/bin/jack_lsp"), lib / "libjack.so.0",
                   lib / "libjackserver.so.0", lib / "libportaudio.so.2", *plugins)
    # jacklibs holds only what fluidlibs lacks (libjack.so.0, libdb, libsystemd, ... are there,
    # since libfluidsynth links libjack): setup.sh always unpacks both into one folder
    jack_only = {k: v for k, v in jack.items() if k not in fluid}
    pack("jacklibs.tar.xz", jack_only, {"jackd": "/usr/bin/jackd", "jack_lsp": "/usr/bin/jack_lsp"},
         {"lib/jack": plugins})


WHEELS = {  # name: version, as in /work/main/.venv (pip freeze); soundfile: the manylinux wheel,
    # whose bundled libsndfile is the one that wrote data/fluidr3-shipped's wavs
    "soundfile": None, "soxr": None, "mido": None, "pyfluidsynth": None, "python-rtmidi": None,
    "sounddevice": None, "JACK-Client": None, "cffi": None, "pycparser": None,
}


FALLBACK_WHEELS = ("packaging", "typing_extensions")   # mido's and soundfile's; pytest's, torch's


def cmd_wheels(args) -> None:
    venv_py = KIT.parent / ".venv" / "bin" / "python"
    freeze = subprocess.run([str(venv_py), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout
    pins = {l.split("==")[0].lower(): l.split("==")[1] for l in freeze.splitlines() if "==" in l}
    dest = KIT / "wheels"
    dest.mkdir(exist_ok=True)
    plats = []
    for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
              "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
              "manylinux1_x86_64"):
        plats += ["--platform", p]
    for name in WHEELS:
        spec = f"{name}=={pins[name.lower()]}"
        subprocess.run([str(venv_py), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *plats,
                        "-d", str(dest), spec], check=True)
        print("wheel", spec)
    for name in FALLBACK_WHEELS:   # pure Python; setup.sh installs them only where missing
        spec = f"{name}=={pins[name.lower()]}"
        subprocess.run([str(venv_py), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "py", "--platform", "any",
                        "-d", str(dest / "fallback"), spec], check=True)
        print("fallback wheel", spec)


DIGEST_NAME = "fluidr3-shipped.digest.json"


def dataset_digest(root: Path) -> dict:
    """sha256s of a dataset made by `sing_synth dataset soundfont`: examples.json (canonical),
    dropped.json (canonical, its soundfont paths left out), every wav (bytes), overall and per
    instrument."""
    def canon(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()

    def strip_paths(obj):
        if isinstance(obj, dict):
            return {k: strip_paths(v) for k, v in obj.items() if k != "sf2"}
        if isinstance(obj, list):
            return [strip_paths(v) for v in obj]
        return obj

    examples = json.loads((root / "examples.json").read_text())
    dropped = json.loads((root / "dropped.json").read_text())
    wavs = sorted((root / "audio").glob("*.wav"))
    total, by_inst = hashlib.sha256(), {}
    for w in wavs:
        line = f"{w.stem} {hashlib.sha256(w.read_bytes()).hexdigest()}\n".encode()
        total.update(line)
        by_inst.setdefault(w.stem.rsplit("-", 2)[0], hashlib.sha256()).update(line)
    return {"examples": len(examples), "wavs": len(wavs), "examples_sha256": canon(examples),
            "examples_keys_sha256": canon(sorted(examples)), "dropped": len(dropped.get("notes", [])),
            "dropped_sha256": canon(strip_paths(dropped)), "audio_sha256": total.hexdigest(),
            "by_instrument": {k: v.hexdigest() for k, v in sorted(by_inst.items())}}


def cmd_digest(args) -> None:
    t0 = time.time()
    got = dataset_digest(Path(args.data))
    if args.write:
        Path(args.write).write_text(json.dumps(got, indent=1) + "\n")
        print(f"{args.write}: {got['wavs']} wavs, {got['examples']} examples, {got['dropped']} dropped")
    if args.check:
        want = json.loads(Path(args.check).read_text())
        bad = [k for k in want if k != "by_instrument" and want[k] != got.get(k)]
        insts = sorted(set(want["by_instrument"]) | set(got["by_instrument"]))
        bad_inst = [i for i in insts if want["by_instrument"].get(i) != got["by_instrument"].get(i)]
        for k in bad:
            print(f"  differs: {k}: got {got.get(k)}, want {want[k]}")
        for i in bad_inst:
            print(f"  differs: audio of {i}")
        if bad or bad_inst:
            raise SystemExit(f"{args.data}: NOT identical to the reference dataset "
                             f"({len(bad)} fields, {len(bad_inst)}/{len(insts)} instruments differ)")
        print(f"{args.data}: identical to the reference dataset: {got['wavs']} wavs byte for byte, "
              f"examples.json and dropped.json the same [{time.time() - t0:.1f} s]")
    if not args.write and not args.check:
        print(json.dumps(got, indent=1))


def cmd_all(args) -> None:
    for name, ns in (("sf2", argparse.Namespace(sf2=SF2_DEFAULT, programs=None, write_sf2=None)),
                     ("libs", args), ("wheels", args),
                     ("digest", argparse.Namespace(data=str(KIT.parent / "data" / "fluidr3-shipped"),
                                                   write=str(KIT / DIGEST_NAME), check=None))):
        t0 = time.time()
        print(f"== {name}")
        globals()[f"cmd_{name}"](ns)
        print(f"== {name}: {time.time() - t0:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sf2")
    a.add_argument("--sf2", default=SF2_DEFAULT)
    a.add_argument("--programs", help="comma-separated bank-0 programs (default SHIPPED_PROGRAMS)")
    a.add_argument("--write-sf2", help="also write the uncompressed trimmed file here")
    a.set_defaults(func=cmd_sf2)
    a = sub.add_parser("rebuild")
    a.add_argument("out")
    a.set_defaults(func=cmd_rebuild)
    sub.add_parser("libs").set_defaults(func=cmd_libs)
    sub.add_parser("wheels").set_defaults(func=cmd_wheels)
    sub.add_parser("all").set_defaults(func=cmd_all)
    a = sub.add_parser("digest")
    a.add_argument("data")
    a.add_argument("--write", help="write the digest here")
    a.add_argument("--check", help="compare with this digest; exit 1 where they differ")
    a.set_defaults(func=cmd_digest)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
