"""Soundfont rendering (sing_synth.soundfont) on a real soundfont: FluidR3_GM from Debian's
fluid-soundfont-gm (CI installs it, with libfluidsynth3)."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sing_synth import gm
from sing_synth.data import FAMILIES, SOURCES, read_examples
from sing_synth.errors import UserError

SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("fluidsynth", reason="pyfluidsynth / libfluidsynth3 not installed")
if not SF2.is_file():
    pytest.skip(f"{SF2} not installed (Debian fluid-soundfont-gm)", allow_module_level=True)

from sing_synth import soundfont as sf  # noqa: E402  (after the skips)

# Dataset rendered once for the module: piano 57..60 (all sound) and violin 101..103
# (FluidR3's violin has no sample above 101: 102 and 103 come out silent), two velocities.
PROGRAMS = [0, 40]
PITCHES = {0: (57, 60), 40: (101, 103)}
VELOCITIES = (50, 127)
SILENT = {f"fluidr3_gm_040_violin-{p:03d}-{v:03d}" for p in (102, 103) for v in VELOCITIES}


def dominant_hz(wave, sr=16000):
    """Frequency of the strongest spectral peak of the held part (0.25..2.75 s)."""
    seg = np.asarray(wave[4000:44000], dtype=np.float64) * np.hanning(40000)
    n = 1 << 19
    spec = np.abs(np.fft.rfft(seg, n))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n


def cents_off(hz, pitch):
    return 1200 * np.log2(hz / (440.0 * 2 ** ((pitch - 69) / 12)))


def mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in (Path(root) / "audio").glob("*.wav")}


@pytest.fixture(scope="module")
def synth():
    with sf.SynthState() as state:
        state.load(SF2)
        yield state


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sf_dataset")
    t0 = time.perf_counter()
    summary = sf.render_soundfont_dataset([SF2], out, programs=PROGRAMS, pitch_range=PITCHES,
                                          velocities=VELOCITIES, jobs=2, progress=False)
    wall = time.perf_counter() - t0
    print(f"\nfirst run: {summary} ({wall:.2f} s)")
    return out, summary


# ---------------------------------------------------------------------------------------------

def test_gm_tables():
    assert len(gm.GM_PROGRAM_NAMES) == 128 and len(gm.GM_GROUPS) == 16
    assert all(gm.gm_family(p) in FAMILIES for p in range(128))
    assert all(gm.gm_source(p) in SOURCES for p in range(128))
    assert set(gm.GROUP_FAMILY) == set(gm.GM_GROUPS)
    assert (gm.gm_family(0), gm.gm_source(0)) == ("keyboard", "acoustic")
    assert (gm.gm_family(40), gm.gm_group(40)) == ("string", "Strings")
    assert (gm.gm_family(33), gm.gm_source(33)) == ("bass", "electronic")
    assert (gm.gm_family(81), gm.gm_source(81)) == ("synth_lead", "synthetic")
    assert gm.gm_family(52) == "vocal" and gm.gm_family(73) == "flute"
    defaults = gm.default_programs()
    assert len(defaults) == 104 and 0 in defaults and 103 not in defaults and 119 not in defaults
    with pytest.raises(ValueError):
        gm.gm_family(128)


def test_list_presets():
    presets = sf.list_presets(SF2)
    assert len(presets) == 128
    assert presets[0] == (0, 0, "Yamaha Grand Piano")
    assert presets == sorted(presets) and {b for b, _, _ in presets} == {0}
    assert dict((p, n) for _, p, n in presets)[40] == "Violin"
    assert any(b == 128 for b, _, _ in sf.list_presets(SF2, bank=None))  # drum kits


def test_render_note(synth):
    for program, pitch in ((0, 60), (40, 69)):
        wave = sf.render_note(synth, 0, program, pitch, 100)
        assert wave.dtype == np.float32 and wave.shape == (64000,)
        assert 0.01 < np.abs(wave).max() < 1.0
        assert abs(cents_off(dominant_hz(wave), pitch)) < 50
        held = np.sqrt(np.mean(wave[16000:48000] ** 2))
        tail = np.sqrt(np.mean(wave[56000:] ** 2))
        assert tail < 0.5 * held  # the key is released at 3 s
    # louder with velocity
    soft = sf.render_note(synth, 0, 0, 60, 25)
    loud = sf.render_note(synth, 0, 0, 60, 127)
    assert np.abs(loud).max() > 2 * np.abs(soft).max()
    # far above the violin's samples: silence
    assert not np.any(sf.render_note(synth, 0, 40, 127, 127))


def test_render_note_does_not_depend_on_history(synth):
    first = sf.render_note(synth, 0, 0, 60, 100)
    for program, pitch, velocity in ((93, 60, 127), (48, 30, 127), (127, 100, 90)):
        sf.render_note(synth, 0, program, pitch, velocity)
        np.testing.assert_array_equal(sf.render_note(synth, 0, 0, 60, 100), first)


def test_dataset_layout(dataset):
    out, summary = dataset
    notes = read_examples(out)
    planned = sum(hi - lo + 1 for lo, hi in PITCHES.values()) * len(VELOCITIES)
    assert summary["planned"] == planned == 14
    assert summary["rendered"] == len(notes) == planned - len(SILENT)
    assert summary["dropped"] == len(SILENT) and summary["existing"] == 0
    by_inst = {n.instrument_str: (n.instrument, n.family, n.source) for n in notes}
    assert by_inst == {"fluidr3_gm_000_yamaha_grand_piano": (0, "keyboard", "acoustic"),
                       "fluidr3_gm_040_violin": (1, "string", "acoustic")}
    assert {n.velocity for n in notes} == set(VELOCITIES)
    for n in notes:
        info = soundfile.info(str(Path(out) / "audio" / f"{n.note_str}.wav"))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == \
            (16000, 1, 64000, "PCM_16")
        assert n.note_str == f"{n.instrument_str}-{n.pitch:03d}-{n.velocity:03d}"
    entry = json.loads((Path(out) / "examples.json").read_text())[
        "fluidr3_gm_000_yamaha_grand_piano-060-127"]
    assert entry["sample_rate"] == 16000 and entry["instrument_family_str"] == "keyboard"
    assert entry["instrument_source_str"] == "acoustic"


def test_dataset_pitch(dataset):
    out, _ = dataset
    for pitch in range(57, 61):
        wave, sr = soundfile.read(str(Path(out) / "audio" /
                                      f"fluidr3_gm_000_yamaha_grand_piano-{pitch:03d}-127.wav"))
        assert sr == 16000
        assert abs(cents_off(dominant_hz(wave), pitch)) < 50, pitch


def test_silence_dropped_and_recorded(dataset):
    out, _ = dataset
    dropped = json.loads((Path(out) / "dropped.json").read_text())
    assert {d["note_str"] for d in dropped["notes"]} == SILENT
    for d in dropped["notes"]:
        assert d["program"] == 40 and d["reason"].startswith("no sound")
        assert not (Path(out) / "audio" / f"{d['note_str']}.wav").exists()
    assert dropped["presets"] == [] and dropped["settings"]["silence_db"] == -60.0


def test_rerun_resumes_without_rerendering(dataset):
    out, first = dataset
    audio = Path(out) / "audio"
    before = mtimes(out)
    examples = (Path(out) / "examples.json").read_text()
    summary = sf.render_soundfont_dataset([SF2], out, programs=PROGRAMS, pitch_range=PITCHES,
                                          velocities=VELOCITIES, jobs=2, progress=False)
    assert summary["rendered"] == 0 and summary["existing"] == first["rendered"]
    assert summary["dropped"] == first["dropped"]
    assert mtimes(out) == before
    assert (Path(out) / "examples.json").read_text() == examples
    # What a killed run leaves: missing wavs, a truncated one (only if written in place) and
    # temporary files.  The rerun renders exactly the missing/broken notes, bit-identically.
    gone = ["fluidr3_gm_000_yamaha_grand_piano-058-050.wav", "fluidr3_gm_040_violin-101-127.wav"]
    broken = "fluidr3_gm_000_yamaha_grand_piano-060-127.wav"
    saved = {name: (audio / name).read_bytes() for name in gone + [broken]}
    for name in gone:
        (audio / name).unlink()
    (audio / broken).write_bytes(saved[broken][:5000])
    (Path(out) / ".tmp" / "12345").mkdir(parents=True)
    (Path(out) / ".tmp" / "12345" / "junk.wav").write_bytes(b"RIFF")
    summary = sf.render_soundfont_dataset([SF2], out, programs=PROGRAMS, pitch_range=PITCHES,
                                          velocities=VELOCITIES, jobs=2, progress=False)
    assert summary["rendered"] == 3 and summary["existing"] == first["rendered"] - 3
    after = mtimes(out)
    assert {k: v for k, v in after.items() if k not in saved} == \
        {k: v for k, v in before.items() if k not in saved}
    for name, data in saved.items():
        assert (audio / name).read_bytes() == data, name
    assert not (Path(out) / ".tmp").exists()
    assert len(read_examples(out)) == first["rendered"]


def test_killed_run_completes_on_rerun(tmp_path):
    """SIGKILL a real run (parent, fork server and workers) mid-way, then rerun."""
    out = tmp_path / "killed"
    args = dict(programs=[0, 1], pitch_range=(21, 108), velocities=(50, 100, 127))
    code = ("import sys; from sing_synth.soundfont import render_soundfont_dataset as r; "
            f"r([{str(SF2)!r}], {str(out)!r}, jobs=2, progress=False, **{args!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "audio").glob("*.wav"))) >= 40:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group this test started
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    partial = len(list((out / "audio").glob("*.wav")))
    assert 40 <= partial < 2 * 88 * 3 and not (out / "examples.json").exists()
    summary = sf.render_soundfont_dataset([SF2], out, jobs=2, progress=False, **args)
    assert summary["existing"] == partial  # wavs appear complete (renamed into place)
    assert summary["rendered"] + summary["existing"] + summary["dropped"] == 2 * 88 * 3
    notes = read_examples(out)
    assert len(notes) == summary["rendered"] + summary["existing"]
    for n in notes:
        assert soundfile.info(str(out / "audio" / f"{n.note_str}.wav")).frames == 64000
    assert not (out / ".tmp").exists()
    print(f"\nresumed run: {summary}")


def test_cli_command(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="sing-synth")
    sf.add_dataset_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["dataset", "soundfont", "--sf2", str(SF2), "--out", str(out),
                              "--programs", "0", "--pitch-range", "60", "60",
                              "--velocities", "50,127", "--jobs", "1", "--silence-db", "-20",
                              "--quiet"])
    assert args.programs == [0] and args.velocities == [50, 127]
    assert args.func(args) == 0
    notes = read_examples(out)
    assert [n.note_str for n in notes] == ["fluidr3_gm_000_yamaha_grand_piano-060-127"]
    (dropped,) = json.loads((out / "dropped.json").read_text())["notes"]
    assert dropped["velocity"] == 50 and dropped["reason"].startswith("near-silent")
    assert "1 notes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["dataset", "soundfont", "--sf2", str(SF2), "--out", str(out),
                           "--programs", "0,x"])
    assert sf.parse_int_list("0,1,24-27", 0, 127, "program") == [0, 1, 24, 25, 26, 27]


def test_bad_inputs_raise_user_error(tmp_path):
    missing = tmp_path / "no_such_font.sf2"
    with pytest.raises(UserError, match="no_such_font.sf2"):
        sf.render_soundfont_dataset([missing], tmp_path / "out", progress=False)
    not_sf2 = tmp_path / "notes.sf2"
    not_sf2.write_text("not a soundfont\n")
    with pytest.raises(UserError, match="notes.sf2"):
        sf.list_presets(not_sf2)
    with pytest.raises(UserError, match="notes.sf2"):
        sf.render_soundfont_dataset([SF2, not_sf2], tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="velocity"):
        sf.render_soundfont_dataset([SF2], tmp_path / "out", velocities=(0,), progress=False)
    with pytest.raises(UserError, match="empty"):
        sf.render_soundfont_dataset([SF2], tmp_path / "out", pitch_range=(90, 80),
                                    progress=False)
    with pytest.raises(UserError, match="program"):
        sf.parse_int_list("0,200", 0, 127, "program")
    assert not (tmp_path / "out").exists()
