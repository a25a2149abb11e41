"""Level calibration: line fits, corrections of blends, `sing-synth calibrate`, and the renderers."""
import math

import numpy as np
import pytest
import torch

from conftest import SAMPLE_RATE
from sing_synth.checkpoint import load_checkpoint, save_checkpoint
from sing_synth.cli import main
from sing_synth.config import SingConfig
from sing_synth.errors import CheckpointError, UserError
from sing_synth.levels import (MAX_DB, METADATA_KEY, REFERENCE_PITCH, Levels, calibrate, fit_line,
                               window_db)
from sing_synth.model import SING
from sing_synth.render import render_notes

CONFIG = SingConfig(n_instruments=3, lstm_hidden=16, lstm_layers=1, channels=32)
NAMES = {i: f"synth_test_{i:03d}" for i in range(3)}   # make_dataset's instruments
SIX_DB = 20 * math.log10(2)


pytestmark = pytest.mark.usefixtures("one_thread")    # conftest.py


def tiny_model(scale=1.0):
    """A random tiny SING; ``scale`` multiplies its output (the last layer is linear)."""
    torch.manual_seed(0)
    model = SING(CONFIG)
    last = model.decoder.layers[-1].conv_tr
    with torch.no_grad():
        last.weight *= scale
        last.bias *= scale
    return model


def one_hot(ids, n=3):
    return torch.nn.functional.one_hot(torch.as_tensor(ids), n).float()


# --- measuring and fitting -----------------------------------------------------------------------

def test_window_db_reads_the_window_only():
    rate = 1000
    waves = np.zeros((2, 4 * rate))
    waves[0, 100:600] = 0.5                     # 0.1..0.6 s: RMS 0.5
    waves[1, :100] = waves[1, 600:] = 1.0       # loud outside the window only
    db = window_db(waves, rate)
    assert db[0] == pytest.approx(20 * math.log10(0.5), abs=1e-6)
    assert db[1] < -100


def test_fit_line_recovers_offset_and_slope_despite_outliers():
    rng = np.random.default_rng(0)
    pitches = np.repeat(np.arange(36, 85, 3), 5)
    errors = 7.0 + 0.1 * (pitches - REFERENCE_PITCH) + rng.normal(0, 0.5, len(pitches))
    errors[[3, 40]] = [80.0, -60.0]             # a silent note, a blown-up one
    offset, slope = fit_line(pitches, errors)
    assert offset == pytest.approx(7.0, abs=0.3) and slope == pytest.approx(0.1, abs=0.02)


def test_fit_line_is_flat_over_a_narrow_range():
    offset, slope = fit_line([60, 62, 64, 66, 60, 62, 64, 66], [1, 2, 3, 4, 1, 2, 3, 4])
    assert slope == 0.0 and offset == pytest.approx(2.5)


# --- Levels --------------------------------------------------------------------------------------

def levels():
    # instrument 0: +6 dB at middle C rising 0.5 dB a semitone over 48..72; 1: -3 dB flat; 2: none
    return Levels(3, {0: (6.0, 0.5, 48, 72), 1: (-3.0, 0.0, 30, 90)})


def test_levels_of_single_instruments_follow_their_lines_held_flat_outside():
    db = levels().db(one_hot([0, 0, 0, 0, 1, 2]), [60, 64, 40, 100, 60, 60]).numpy()
    np.testing.assert_allclose(db, [6.0, 8.0, 0.0, 12.0, -3.0, 0.0], atol=1e-6)


def test_a_blend_takes_the_weighted_mean_in_db():
    weights = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.0, 0.5]])
    db = levels().db(weights, [60, 60]).numpy()
    np.testing.assert_allclose(db, [0.25 * 6 - 0.75 * 3, 3.0], atol=1e-6)
    gains = levels().gains(weights, [60, 60]).numpy()
    np.testing.assert_allclose(gains, 10 ** (db / 20), rtol=1e-6)


def test_corrections_are_bounded():
    big = Levels(1, {0: (100.0, 0.0, 0, 127)})
    assert big.db(one_hot([0], 1), [60]).item() == MAX_DB


def test_from_metadata():
    assert Levels.from_metadata({}, 3) is None
    entry = {"instruments": {1: {"db": 2.0, "db_per_semitone": 0.1, "pitches": [40, 80]}}}
    lv = Levels.from_metadata({METADATA_KEY: entry}, 3)
    assert lv.db(one_hot([1]), [70]).item() == pytest.approx(3.0)
    for bad, why in [({"instruments": {5: entry["instruments"][1]}}, "not among"),
                     ({"instruments": {1: {"db": "x", "db_per_semitone": 0, "pitches": [1, 2]}}}, "x"),
                     ({"instruments": {1: {"db": float("nan"), "db_per_semitone": 0,
                                           "pitches": [1, 2]}}}, "not finite"),
                     ({"lines": {}}, "instruments")]:
        with pytest.raises(CheckpointError, match="bad level calibration") as info:
            Levels.from_metadata({METADATA_KEY: bad}, 3, "m.pt")
        assert why in str(info.value) and "\n" not in str(info.value)


def test_a_checkpoint_with_a_bad_calibration_does_not_load(tmp_path, capsys):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), NAMES, {METADATA_KEY: {"instruments": {0: {"db": 1}}}})
    with pytest.raises(CheckpointError, match="bad level calibration"):
        load_checkpoint(path)
    out = tmp_path / "wav"
    assert main(["generate", "--checkpoint", str(path), "--instrument", "0", "--pitch", "60",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad level calibration" in err


# --- calibrate -----------------------------------------------------------------------------------

def test_calibrate_measures_the_output_level(tiny_dataset, tmp_path):
    """Twice the output is 6.02 dB less correction, and the corrections level the train notes."""
    paths, left = [], []
    for scale in (1.0, 2.0):
        path = tmp_path / f"m{scale}.pt"
        save_checkpoint(path, tiny_model(scale), NAMES, {"train_split": "train"}, half=True)
        summary = calibrate(path, tiny_dataset)
        assert summary["split"] == "train" and summary["instruments"] == 3
        # what is left is the velocity layers' spread (this random model barely follows velocity)
        assert summary["mean_abs_error_after_db"] < summary["mean_abs_error_db"]
        assert summary["spread_after_db"] < 0.5 < summary["spread_db"]
        left.append(summary["mean_abs_error_after_db"])
        paths.append(path)
    assert left[0] == pytest.approx(left[1], abs=0.01)
    one, two = (load_checkpoint(p) for p in paths)
    assert one.half and two.half                     # the file's precision is kept
    a, b = (c.metadata[METADATA_KEY]["instruments"] for c in (one, two))
    for idx in range(3):
        assert a[idx]["db"] - b[idx]["db"] == pytest.approx(SIX_DB, abs=0.01)
        assert a[idx]["db_per_semitone"] == pytest.approx(b[idx]["db_per_semitone"], abs=1e-3)
        assert a[idx]["pitches"] == b[idx]["pitches"] and 48 <= a[idx]["pitches"][0] < 60
    assert one.metadata["train_split"] == "train"   # the rest of the metadata is kept
    raw = tiny_model()
    for name, tensor in one.model.state_dict().items():    # and the weights (fp16 round trip)
        expected = raw.state_dict()[name]
        if tensor.is_floating_point():
            expected = expected.half().float()
        assert torch.equal(tensor, expected), name


def test_calibrate_command(tiny_dataset, tmp_path, capsys):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), NAMES)
    out = tmp_path / "levelled.pt"
    assert main(["calibrate", "--checkpoint", str(path), "--data", str(tiny_dataset),
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "levels of 3 instruments" in line and "train notes" in line
    assert METADATA_KEY in load_checkpoint(out).metadata
    assert METADATA_KEY not in load_checkpoint(path).metadata


@pytest.mark.parametrize("argv, message", [
    (["--split", "test"], "invalid choice"),
    (["--data", "/nonexistent"], "/nonexistent"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_calibrate_errors_are_one_line(tiny_dataset, tmp_path, capsys, argv, message):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), NAMES)
    code = main(["calibrate", "--checkpoint", str(path), "--data", str(tiny_dataset)] + argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


def test_calibrate_refuses_the_test_split(tiny_dataset, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), NAMES, {"train_split": "train+test"})
    with pytest.raises(UserError, match="not the test split"):
        calibrate(path, tiny_dataset)


def test_calibrate_refuses_another_dataset(tiny_dataset, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), {0: "piano", 1: "harp", 2: "flute"})
    with pytest.raises(UserError, match="in the checkpoint"):
        calibrate(path, tiny_dataset)


# --- rendering -----------------------------------------------------------------------------------

def calibrated_checkpoint(tmp_path):
    """Instrument 0 is 6.02 dB too quiet (x2), instrument 1 right, at every pitch."""
    entry = {"instruments": {0: {"db": SIX_DB, "db_per_semitone": 0.0, "pitches": [0, 127]},
                             1: {"db": 0.0, "db_per_semitone": 0.0, "pitches": [0, 127]}}}
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), NAMES, {METADATA_KEY: entry})
    return path


def test_render_notes_applies_the_calibration(tmp_path):
    ckpt = load_checkpoint(calibrated_checkpoint(tmp_path))
    notes = [("0", 60, 100), ("1", 60, 100), ("0:0.5,1:0.5", 60, 100)]
    raw = render_notes(ckpt, notes, levels=False)
    done = render_notes(ckpt, notes)
    np.testing.assert_allclose(done[0], np.clip(2 * raw[0], -1, 1), atol=1e-5)
    np.testing.assert_allclose(done[1], raw[1], atol=1e-6)
    np.testing.assert_allclose(done[2], raw[2] * 2 ** 0.5, atol=1e-5)
    assert np.abs(raw[0]).max() > 1e-3


@pytest.mark.parametrize("urgent", [True, False])
def test_the_note_renderer_applies_the_calibration(tmp_path, urgent):
    """Urgent notes (head first, the rest behind it) and prewarmed ones (whole) alike."""
    from sing_synth.engine import NoteRenderer
    path = calibrated_checkpoint(tmp_path)
    notes = {}
    for levels in (True, False):
        with NoteRenderer(path, device="cpu", stream_rate=SAMPLE_RATE, dtype=torch.float32,
                          threads=1, levels=levels, urgent_lane=False) as renderer:
            keys = [renderer.make_key(name, 60, 100) for name in ("synth_test_000", "synth_test_001")]
            if urgent:
                for key in keys:
                    renderer.request(key, urgent=True)
            else:
                renderer.prewarm(keys)
            assert renderer.wait_idle(30)
            notes[levels] = [renderer.get(key) for key in keys]
    (loud, same), (raw0, raw1) = notes[True], notes[False]
    np.testing.assert_allclose(loud, 2 * raw0, atol=1e-5)
    np.testing.assert_allclose(same, raw1, atol=1e-6)
    assert np.abs(raw0).max() > 1e-3


def test_the_note_renderer_keeps_each_blends_inputs_and_gains(tmp_path, monkeypatch):
    """The gains a batch gets are the calibration's for its inputs, blends and pitches outside
    the calibrated range included; made once per blend (all its pitches), then kept."""
    from sing_synth.engine import NoteRenderer, renderer as renderer_module
    with NoteRenderer(calibrated_checkpoint(tmp_path), device="cpu", stream_rate=SAMPLE_RATE,
                      dtype=torch.float32, threads=1, urgent_lane=False) as renderer:
        blend = {"synth_test_000": 1, "synth_test_001": 3}
        batch = [renderer.make_key(inst, pitch, 100) for inst, pitch in
                 [("synth_test_000", 60), ("synth_test_001", 20), (blend, 100), (blend, 61)]]
        instrument, pitch, _ = renderer._inputs(batch)
        expected = renderer.levels.gains(instrument, pitch).numpy()[:, None]
        np.testing.assert_array_equal(renderer._gains(batch), expected)
        assert len(renderer._blend_cache) == 3
        calls = []
        monkeypatch.setattr(renderer.levels, "gains", lambda *a: calls.append(a))
        np.testing.assert_array_equal(renderer._gains(batch[::-1]), expected[::-1])
        assert renderer._inputs(batch)[0].equal(instrument) and calls == []
        monkeypatch.undo()
        monkeypatch.setattr(renderer_module, "INPUT_CACHE", 3)    # full: emptied, then one more
        renderer._gains([renderer.make_key({"synth_test_000": 1, "synth_test_001": 1}, 60, 100)])
        assert len(renderer._blend_cache) == 1


def test_eval_reports_the_levels_raw_and_calibrated(tiny_dataset, tmp_path):
    from sing_synth.evaluate import evaluate, level_line
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model(), NAMES)
    before = evaluate(path, tiny_dataset, "test")["summary"]
    assert before["level_calibrated"] is False and before["level_spread_db_calibrated"] is None
    assert "no level calibration" in level_line(before)
    calibrate(path, tiny_dataset)
    after = evaluate(path, tiny_dataset, "test")["summary"]
    assert after["level_calibrated"] is True
    assert after["level_error_mean_abs_db"] == pytest.approx(before["level_error_mean_abs_db"], abs=1e-3)
    # measured on the train notes, the correction holds on the held-out ones
    assert abs(after["level_error_median_db_calibrated"]) < 0.3 * abs(after["level_error_median_db"])
    assert "with the checkpoint's level calibration" in level_line(after)
