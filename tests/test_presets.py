"""Instrument presets (sing_synth.presets): the shipped files, validation of bad files, lookup."""
import math
from pathlib import Path

import pytest

from sing_synth import gm
from sing_synth import presets as pr
from sing_synth.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

GOOD = """\
name: {name}
description: A test preset
program: {program}
instrument: {instrument}
gain: 1.0
release: 0.25
velocity_curve: 1.0
pitch_range: [21, 108]
bend_range: 2
pitched: true
"""


def write(folder, name, text=None, **fields):
    values = {"name": name, "program": 0, "instrument": "inst_a"}
    values.update(fields)
    path = Path(folder) / f"{name}.yaml"
    path.write_text(GOOD.format(**values) if text is None else text)
    return path


def with_field(key, value):
    """GOOD with one field's line replaced by ``key: value`` (value None: line removed)."""
    lines = [line for line in GOOD.format(name="test", program=0, instrument="inst_a")
             .splitlines() if not line.startswith(f"{key}:")]
    if value is not None:
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def user_error(path):
    with pytest.raises(UserError) as info:
        pr.load_preset(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------------------------------------
# The shipped presets

@pytest.fixture(scope="module")
def shipped():
    return pr.load_presets(pr.default_presets_dir())


def test_default_dir_is_the_repository_presets_folder():
    assert pr.default_presets_dir() == REPO / "presets"
    assert pr.load_presets() == pr.load_presets(REPO / "presets")


def test_shipped_presets_load_and_validate(shipped):
    files = sorted((REPO / "presets").glob("*.yaml"))
    assert len(shipped) >= 16 and len(shipped) == len(files)
    assert list(shipped) == sorted(shipped)
    for path in files:
        preset = pr.load_preset(path)
        assert shipped[preset.name] == preset and preset.name == path.stem
    programs = [p.program for p in shipped.values()]
    assert len(set(programs)) == len(programs)
    single = {p.program: p for p in shipped.values() if not p.is_blend}
    assert tuple(sorted(single)) == tuple(sorted(pr.SHIPPED_PROGRAMS))
    assert len(set(pr.SHIPPED_PROGRAMS)) == len(pr.SHIPPED_PROGRAMS)
    for p in shipped.values():
        assert math.isclose(sum(p.instrument.values()), 1.0)
        lo, hi = p.pitch_range
        assert 24 <= lo < hi <= 96, p.name          # the training set's pitches
        assert 0 < p.gain <= 4 and 0.005 <= p.release <= 4 and 0.1 <= p.velocity_curve <= 4
        assert p.pitched and p.description
        assert p.bend_range == (12 if p.name == "synth-lead" else 2)
    assert shipped["piano"].release == 0.4 and shipped["organ"].release == 0.05
    blends = [p for p in shipped.values() if p.is_blend]
    assert blends, "no morph preset"
    for p in blends:
        assert p.program not in pr.SHIPPED_PROGRAMS
        trained = {next(iter(s.instrument)) for s in single.values()}
        assert set(p.instrument) <= trained, p.name
    fv = shipped["flute-violin"].instrument
    assert fv == {next(iter(shipped["flute"].instrument)): 0.5,
                  next(iter(shipped["violin"].instrument)): 0.5}


def test_shipped_instruments_are_the_soundfont_dataset_names(shipped):
    """The names sing_synth.soundfont gives FluidR3_GM's programs, computed the same way."""
    pytest.importorskip("fluidsynth", reason="pyfluidsynth / libfluidsynth3 not installed")
    if not SF2.is_file():
        pytest.skip(f"{SF2} not installed (Debian fluid-soundfont-gm)")
    from sing_synth import soundfont as sf
    stem = sf._slug(SF2.resolve().stem) or "soundfont"
    names = {program: f"{stem}_{program:03d}_{sf._slug(name) or 'preset'}"
             for _bank, program, name in sf.list_presets(SF2)}
    assert names[0] == "fluidr3_gm_000_yamaha_grand_piano"
    for p in shipped.values():
        if not p.is_blend:
            assert p.instrument == {names[p.program]: 1.0}, p.name
    trained = [names[program] for program in pr.SHIPPED_PROGRAMS]
    pr.check_instruments(shipped, trained)          # the morph's parts are trained too
    with pytest.raises(UserError, match="flute"):
        pr.check_instruments(shipped, [n for n in trained if "flute" not in n])


def test_shipped_ranges_sound_in_fluidr3(shipped):
    """Each single-instrument preset's lowest and highest notes are in the dataset (FluidR3
    renders them above the dataset's -60 dBFS silence threshold even at velocity 25)."""
    pytest.importorskip("fluidsynth", reason="pyfluidsynth / libfluidsynth3 not installed")
    if not SF2.is_file():
        pytest.skip(f"{SF2} not installed (Debian fluid-soundfont-gm)")
    import numpy as np
    from sing_synth import soundfont as sf
    with sf.SynthState() as state:
        state.load(SF2)
        for p in shipped.values():
            if p.is_blend:
                continue
            for pitch in p.pitch_range:
                peak = float(np.abs(sf.render_note(state, 0, p.program, pitch, 25)).max())
                assert 20 * math.log10(max(peak, 1e-9)) > sf.DEFAULT_SILENCE_DB, (p.name, pitch)


def test_velocity_gain_and_plays():
    p = pr.Preset(name="x", program=0, instrument={"a": 1.0}, gain=2.0, velocity_curve=2.0,
                  pitch_range=(40, 50))
    assert p.velocity_gain(127) == 2.0
    assert math.isclose(p.velocity_gain(64), 2.0 * (64 / 127) ** 2)
    assert p.velocity_gain(0) == 0.0
    assert p.plays(40) and p.plays(50) and not p.plays(39) and not p.plays(51)
    hash(p)  # frozen and hashable although instrument is a dict


# ---------------------------------------------------------------------------------------------
# Validation: one line naming the file and the field

def test_good_file_and_normalised_blend(tmp_path):
    p = pr.load_preset(write(tmp_path, "test"))
    assert p == pr.Preset(name="test", program=0, instrument={"inst_a": 1.0},
                          description="A test preset", pitch_range=(21, 108))
    assert p.source == str(tmp_path / "test.yaml")
    path = write(tmp_path, "blend", with_field("instrument", "{inst_a: 3, inst_b: 1}")
                 .replace("name: test", "name: blend"))
    assert pr.load_preset(path).instrument == {"inst_a": 0.75, "inst_b": 0.25}


def test_defaults_for_optional_fields(tmp_path):
    path = write(tmp_path, "mini", "name: mini\nprogram: 5\ninstrument: x\n")
    p = pr.load_preset(path)
    assert (p.description, p.gain, p.release, p.velocity_curve, p.pitch_range, p.bend_range,
            p.pitched) == ("", 1.0, 0.25, 1.0, (0, 127), 2.0, True)


@pytest.mark.parametrize("key, value, expected", [
    ("gain", "loud", "field 'gain': must be a number in (0, 4], got 'loud'"),
    ("gain", "0", "field 'gain': must be a number in (0, 4], got 0"),
    ("gain", "4.5", "field 'gain': must be a number in (0, 4]"),
    ("gain", "true", "field 'gain': must be a number"),
    ("gain", ".nan", "field 'gain': must be a number"),
    ("release", "0.001", "field 'release': must be a number in [0.005, 4]"),
    ("release", "[1]", "field 'release': must be a number"),
    ("velocity_curve", "5", "field 'velocity_curve': must be a number in [0.1, 4]"),
    ("bend_range", "25", "field 'bend_range': must be a number in [0, 24]"),
    ("bend_range", "-1", "field 'bend_range'"),
    ("program", "128", "field 'program': must be an integer in 0..127, got 128"),
    ("program", "'0'", "field 'program': must be an integer in 0..127, got '0'"),
    ("program", "1.0", "field 'program': must be an integer"),
    ("program", "true", "field 'program': must be an integer"),
    ("pitch_range", "[21]", "field 'pitch_range': must be [low, high]"),
    ("pitch_range", "[21, 128]", "field 'pitch_range': must be [low, high]"),
    ("pitch_range", "60", "field 'pitch_range': must be [low, high]"),
    ("pitch_range", "[70, 60]", "field 'pitch_range': low note 70 is above high note 60"),
    ("pitched", "'yes please'", "field 'pitched': must be true or false"),
    ("description", "[1, 2]", "field 'description': must be text"),
    ("instrument", "''", "field 'instrument': must not be empty"),
    ("instrument", "42", "field 'instrument': must be an instrument name or a mapping"),
    ("instrument", "{}", "field 'instrument': the blend names no instrument"),
    ("instrument", "{a: 0}", "field 'instrument': weight of 'a' must be a number > 0"),
    ("instrument", "{a: -1, b: 2}", "field 'instrument': weight of 'a'"),
    ("instrument", "{a: x}", "field 'instrument': weight of 'a'"),
    ("instrument", "[a, b]", "field 'instrument': must be an instrument name or a mapping"),
    ("volume", "3", "field 'volume': unknown field"),
    ("gian", "3", "field 'gian': unknown field (did you mean 'gain'?)"),
    ("name", None, "field 'name': missing"),
    ("program", None, "field 'program': missing"),
    ("instrument", None, "field 'instrument': missing"),
    ("name", "other", "field 'name': must match the file name"),
    ("name", "Test", "field 'name': must be lower-case words"),
    ("name", "my_preset", "field 'name': must be lower-case words"),
])
def test_bad_field(tmp_path, key, value, expected):
    message = user_error(write(tmp_path, "test", with_field(key, value)))
    assert expected in message, message


def test_stem_mismatch_names_both(tmp_path):
    path = write(tmp_path, "piano", GOOD.format(name="organ", program=0, instrument="x"))
    message = user_error(path)
    assert "field 'name'" in message and "'organ'" in message and "piano.yaml" in message


@pytest.mark.parametrize("text, expected", [
    ("name: test\nprogram: [0\ninstrument: x\n", "line "),
    ("name: test\n  program: 0\n", "line 2"),
    ("name: test\nprogram: 0\n\tinstrument: x\n", "line 3"),
    ("name: test\nprogram: 0\ninstrument: 'x\n", "line "),
])
def test_yaml_syntax_error_is_one_line_with_line_number(tmp_path, text, expected):
    message = user_error(write(tmp_path, "test", text))
    assert "YAML error" in message and expected in message, message


def test_python_object_tag_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    text = (f"name: test\nprogram: 0\n"
            f"instrument: !!python/object/apply:os.system ['touch {marker}']\n")
    message = user_error(write(tmp_path, "test", text))
    assert "line 3" in message and "python/object/apply:os.system" in message, message
    assert not marker.exists()


@pytest.mark.parametrize("text, expected", [
    ("", "empty file"),
    ("# only a comment\n", "empty file"),
    ("- name: test\n", "expected a mapping of fields"),
    ("just text\n", "expected a mapping of fields"),
    ("name: test\nprogram: 0\nprogram: 1\ninstrument: x\n", "line 3: field 'program' given twice"),
])
def test_bad_file_shape(tmp_path, text, expected):
    message = user_error(write(tmp_path, "test", text))
    assert expected in message, message


def test_not_utf8_and_missing_file(tmp_path):
    path = tmp_path / "test.yaml"
    path.write_bytes(b"name: test\nprogram: 0\ninstrument: \xff\xfe\n")
    assert "not UTF-8" in user_error(path)
    assert "not found" in user_error(tmp_path / "absent.yaml")
    assert "must end in .yaml" in user_error(tmp_path / "test.yml")


def test_no_traceback_from_the_cli_shape(tmp_path):
    """UserError is what the CLI prints as one line; nothing else escapes for any bad file."""
    texts = ["{", "]", "name: [", "?", "!!binary x", "!!set {a}", "name: !!timestamp 2001-01-01",
             "&a [*a]", "*undefined", "name: test\nprogram: 0\ninstrument: {[1]: 1}\n",
             "name: test\nprogram: 0\ninstrument: {a: 1e400}\n", "1: 2\n", "[]\n"]
    for text in texts:
        path = write(tmp_path, "test", text)
        with pytest.raises(UserError) as info:
            pr.load_preset(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value), text


# ---------------------------------------------------------------------------------------------
# Folders

def test_load_presets_duplicates_and_errors(tmp_path):
    write(tmp_path, "beta", program=3)
    write(tmp_path, "alpha", program=1)
    (tmp_path / "notes.txt").write_text("ignored")
    presets = pr.load_presets(tmp_path)
    assert list(presets) == ["alpha", "beta"]
    write(tmp_path, "gamma", program=3)
    with pytest.raises(UserError) as info:
        pr.load_presets(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "gamma.yaml: field 'program': program 3" in message
    assert "beta.yaml" in message
    (tmp_path / "gamma.yaml").unlink()
    write(tmp_path, "delta", "name: delta\nprogram: 9\ninstrument: x\ngain: loud\n")
    with pytest.raises(UserError, match=r"delta\.yaml: field 'gain'"):
        pr.load_presets(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no presets"):
        pr.load_presets(empty)
    with pytest.raises(UserError, match="preset folder not found"):
        pr.load_presets(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# Lookup

def make(name, program, instrument="x"):
    return pr.Preset(name=name, program=program, instrument={instrument: 1.0})


def presets_of(*items):
    return {p.name: p for p in sorted(items, key=lambda p: p.name)}


def test_find_preset_exact_and_prefix(shipped):
    assert pr.find_preset(shipped, "piano").name == "piano"
    assert pr.find_preset(shipped, "Piano").name == "piano"
    assert pr.find_preset(shipped, "vib").name == "vibraphone"
    assert pr.find_preset(shipped, "church").name == "church-organ"
    ps = presets_of(make("flute", 73), make("flute-violin", 74))
    assert pr.find_preset(ps, "flute").name == "flute"       # exact beats prefix
    assert pr.find_preset(ps, "flute-").name == "flute-violin"
    with pytest.raises(UserError) as info:
        pr.find_preset(ps, "fl")
    assert "ambiguous" in str(info.value) and "flute, flute-violin" in str(info.value)
    with pytest.raises(UserError) as info:
        pr.find_preset(ps, "tuba")
    assert "unknown preset 'tuba'" in str(info.value) and "flute, flute-violin" in str(info.value)
    with pytest.raises(UserError):
        pr.find_preset(ps, "")
    with pytest.raises(UserError, match="no presets"):
        pr.find_preset({}, "piano")


def test_preset_for_program_fallbacks():
    ps = presets_of(make("piano", 0), make("harpsichord", 6), make("organ", 16),
                    make("church-organ", 19), make("violin", 40), make("flute", 73))
    assert pr.preset_for_program(ps, 0).name == "piano"            # exact
    assert pr.preset_for_program(ps, 19).name == "church-organ"
    assert pr.preset_for_program(ps, 2).name == "piano"            # nearest in the Piano group
    assert pr.preset_for_program(ps, 5).name == "harpsichord"
    assert pr.preset_for_program(ps, 3).name == "piano"            # tie 0 vs 6 -> lower
    assert pr.preset_for_program(ps, 17).name == "organ"
    assert pr.preset_for_program(ps, 18).name == "church-organ"
    assert pr.preset_for_program(ps, 23).name == "church-organ"
    assert pr.preset_for_program(ps, 47).name == "violin"          # Timpani: Strings group
    assert pr.preset_for_program(ps, 72).name == "flute"
    assert pr.preset_for_program(ps, 48).name == "piano"           # Ensemble: none -> default
    assert pr.preset_for_program(ps, 127).name == "piano"
    assert pr.preset_for_program(ps, 127, default="violin").name == "violin"
    no_piano = presets_of(make("violin", 40), make("organ", 16))
    assert pr.preset_for_program(no_piano, 0).name == "organ"      # lowest program
    for bad in (-1, 128, True, "0"):
        with pytest.raises(UserError):
            pr.preset_for_program(ps, bad)


def test_preset_for_program_covers_every_program(shipped):
    for program in range(128):
        preset = pr.preset_for_program(shipped, program)
        if any(p.program == program for p in shipped.values()):
            assert preset.program == program
        elif any(gm.gm_group(p.program) == gm.gm_group(program) for p in shipped.values()):
            assert gm.gm_group(preset.program) == gm.gm_group(program)
        else:
            assert preset.name == pr.DEFAULT_PRESET


def test_check_instruments(tmp_path):
    ps = presets_of(make("piano", 0, "inst_piano"), make("organ", 16, "inst_organ"))
    pr.check_instruments(ps, ["inst_piano", "inst_organ", "other"])
    with pytest.raises(UserError) as info:
        pr.check_instruments(ps, ["inst_piano", "inst_organs"])
    message = str(info.value)
    assert "\n" not in message and "field 'instrument'" in message and "'inst_organ'" in message
    assert "did you mean 'inst_organs'" in message
    path = write(tmp_path, "morph", "name: morph\nprogram: 1\ninstrument: {a: 1, b: 1}\n")
    morph = pr.load_preset(path)
    with pytest.raises(UserError, match=rf"^{path}: field 'instrument': .*'b'"):
        pr.check_instruments([morph], ["a"])
    with pytest.raises(UserError, match="1 more preset"):
        pr.check_instruments(ps, [])
