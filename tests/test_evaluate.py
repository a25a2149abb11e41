"""Held-out evaluation: f0 estimate, sampler baseline, report; `sing-synth eval --report`."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import LENGTH, SAMPLE_RATE, cents, dominant_frequency, harmonic_note, make_dataset
from sing_synth.checkpoint import save_checkpoint
from sing_synth.cli import main
from sing_synth.config import SingConfig
from sing_synth.data import Note, read_examples, split_notes, write_examples, write_note
from sing_synth.errors import UserError
from sing_synth.evaluate import (_bass_summary, baseline_index, baseline_note, baseline_source, estimate_f0,
                                 evaluate, fundamental_cents, offharmonic_db, shift_pitch, summary_lines)
from sing_synth.model import SING
from sing_synth.render import evaluate_loss

CONFIG = SingConfig(n_instruments=3, lstm_hidden=16, lstm_layers=1, channels=32)
NAMES = {i: f"synth_test_{i:03d}" for i in range(3)}   # make_dataset's instruments


pytestmark = pytest.mark.usefixtures("one_thread")    # conftest.py


def tiny_checkpoint(path, config=CONFIG, names=NAMES):
    torch.manual_seed(0)
    save_checkpoint(path, SING(config), names)
    return path


def partials(pitch, harmonics, amplitudes, length=LENGTH):
    """Sum of sines at harmonics of the pitch, with an attack and NSynth's release."""
    t = np.arange(length) / SAMPLE_RATE
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    wave = sum(a * np.sin(2 * np.pi * h * f0 * t + h) for h, a in zip(harmonics, amplitudes)
               if h * f0 < SAMPLE_RATE / 2)
    envelope = np.minimum(t / 0.01, 1) * np.where(t < 3, 1.0, np.exp(-(t - 3) * 8))
    return 0.3 * envelope * wave / np.abs(wave).max()


# --- f0 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pitch", [30, 36, 42, 48, 54, 60, 66, 72, 78, 84, 90, 96])
def test_f0_of_harmonic_notes(pitch):
    for velocity, rolloff in ((127, 1.0), (25, 1.0), (100, 3.0)):   # bright to nearly pure
        f0 = estimate_f0(harmonic_note(pitch, velocity, rolloff), SAMPLE_RATE)
        assert abs(cents(f0, pitch)) < 5, (pitch, velocity, rolloff, f0)


@pytest.mark.parametrize("pitch", [33, 45, 57, 69, 81, 90])
def test_f0_with_a_missing_or_weak_fundamental(pitch):
    harmonics = range(2, 9)
    missing = partials(pitch, harmonics, [1 / h for h in harmonics])
    assert abs(cents(estimate_f0(missing, SAMPLE_RATE), pitch)) < 5
    weak = partials(pitch, range(1, 9), [0.03] + [1 / h for h in harmonics])
    assert abs(cents(estimate_f0(weak, SAMPLE_RATE), pitch)) < 5


def test_f0_of_silence_and_noise_is_nan():
    assert math.isnan(estimate_f0(np.zeros(LENGTH), SAMPLE_RATE))
    assert math.isnan(estimate_f0(np.random.default_rng(0).standard_normal(LENGTH), SAMPLE_RATE))


# --- between the harmonics ---------------------------------------------------------------------

@pytest.mark.parametrize("pitch", [36, 48, 60, 72, 84])
def test_offharmonic_power_of_clean_and_subharmonic_notes(pitch):
    """A harmonic note reads near the Hann floor; a subharmonic series (f0/2, 3f0/2, ...) at
    -20 dB reads about -20 dB; the same note a semitone off reads far above both (at MIDI 36 a
    semitone is one bin at the fundamental, so not above 0 dB there)."""
    harmonics = list(range(1, 9))
    amplitudes = [1 / h for h in harmonics]
    clean = offharmonic_db(partials(pitch, harmonics, amplitudes), pitch, SAMPLE_RATE)
    assert clean < -30, clean
    halves = [h - 0.5 for h in harmonics]
    both = partials(pitch, harmonics + halves, amplitudes + [0.1 * a for a in amplitudes])
    assert -23 < offharmonic_db(both, pitch, SAMPLE_RATE) < -17
    assert offharmonic_db(partials(pitch + 1, harmonics, amplitudes), pitch, SAMPLE_RATE) > -5
    assert math.isnan(offharmonic_db(np.zeros(LENGTH), pitch, SAMPLE_RATE))


# --- bass fundamentals -------------------------------------------------------------------------

@pytest.mark.parametrize("pitch", [28, 36, 43, 60])
def test_fundamental_partial_of_in_tune_and_detuned_notes(pitch):
    """In tune: within 1 cent; the fundamental alone 30 cents flat: -30 +- 2 (the harmonics
    unmoved); silence: nan."""
    harmonics = list(range(1, 9))
    amplitudes = [1 / h for h in harmonics]
    assert abs(fundamental_cents(partials(pitch, harmonics, amplitudes), pitch, SAMPLE_RATE)) < 1
    flat = partials(pitch, [2 ** (-30 / 1200)] + harmonics[1:], amplitudes)
    assert fundamental_cents(flat, pitch, SAMPLE_RATE) == pytest.approx(-30, abs=2)
    assert math.isnan(fundamental_cents(np.zeros(LENGTH), pitch, SAMPLE_RATE))


def test_a_fundamental_on_the_frame_rate_reads_off_where_yin_reads_in_tune():
    """MIDI 36 with its fundamental at 62.5 Hz, SING's frame rate, instead of 65.4 Hz: YIN
    (which the upper harmonics lead) reads the note within 50 cents, the fundamental reads 79
    cents flat; the bass summary counts it out of place and the real note in place."""
    harmonics = list(range(1, 9))
    f0 = 440.0 * 2 ** ((36 - 69) / 12)
    locked = partials(36, [62.5 / f0] + harmonics[1:], [1 / h for h in harmonics])
    assert abs(cents(estimate_f0(locked, SAMPLE_RATE), 36)) < 50
    assert fundamental_cents(locked, 36, SAMPLE_RATE) == pytest.approx(1200 * np.log2(62.5 / f0), abs=2)
    rows = [{"pitch": 36, "fund_sing": fundamental_cents(locked, 36, SAMPLE_RATE), "fund_target": 0.0,
             "fund_baseline": 3.0},
            {"pitch": 60, "fund_sing": -200.0, "fund_target": 0.0, "fund_baseline": 0.0}]   # not bass
    out = _bass_summary(rows, rows)
    assert out["bass_notes"] == 1
    assert out["bass_fund_within_pct_sing"] == 0 and out["bass_fund_median_cents_sing"] > 70
    assert out["bass_fund_within_pct_baseline"] == 100 and out["bass_fund_median_cents_baseline"] == 3


# --- baseline ------------------------------------------------------------------------------------

def write_notes(root, specs):
    notes = []
    for inst, pitch, velocity in specs:
        name = f"synth_test_{inst:03d}"
        note = Note(f"{name}-{pitch:03d}-{velocity:03d}", inst, name, pitch, velocity, "keyboard", "synthetic")
        write_note(root, note, harmonic_note(pitch, velocity, 1.0))
        notes.append(note)
    write_examples(root, notes)
    return notes


def target(pitch, velocity=100, inst=0):
    name = f"synth_test_{inst:03d}"
    return Note(f"{name}-{pitch:03d}-{velocity:03d}", inst, name, pitch, velocity, "keyboard", "synthetic")


def test_baseline_moves_the_pitch_and_keeps_the_length(tmp_path):
    notes = write_notes(tmp_path, [(0, 60, 100), (0, 70, 100), (0, 48, 50)])
    index = baseline_index(notes)
    up = baseline_note(index, target(62), tmp_path)                 # nearest: 60, raised 2 semitones
    assert up.shape == (LENGTH,) and up.dtype == np.float32
    assert abs(cents(dominant_frequency(up), 62)) < 5
    assert np.abs(up[-SAMPLE_RATE // 4:]).max() == 0                # played faster: ends early, zero-padded
    down = baseline_note(index, target(68), tmp_path)               # nearest: 70, lowered 2 semitones
    assert down.shape == (LENGTH,) and abs(cents(dominant_frequency(down), 68)) < 5
    # a tie (65: 60 and 70 are 5 away) takes the higher sample, so the note is stretched, not cut
    assert baseline_source(index, target(65)).pitch == 70
    assert abs(cents(dominant_frequency(baseline_note(index, target(65), tmp_path)), 65)) < 5
    assert baseline_note(index, target(62, velocity=127), tmp_path) is None   # no train note at 127
    assert baseline_note(index, target(62, inst=1), tmp_path) is None
    # a train note gets a neighbour, not itself
    own = baseline_note(index, target(60), tmp_path)
    assert abs(cents(dominant_frequency(own), 60)) < 5
    assert baseline_note(index, target(48, velocity=50), tmp_path) is None


def test_shift_pitch_trims_and_pads():
    wave = harmonic_note(60, 100, 1.0).astype(np.float32)
    assert np.array_equal(shift_pitch(wave, 0), wave)
    assert shift_pitch(wave, 12, length=1000).shape == (1000,)
    lower = shift_pitch(wave, -3)
    assert lower.shape == wave.shape and abs(cents(dominant_frequency(lower), 57)) < 5


# --- evaluate and the CLI ------------------------------------------------------------------------

def test_evaluate_writes_the_report(tiny_dataset, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "report"
    result = evaluate(ckpt, tiny_dataset, "test", report=out, n_examples=3, batch_size=8)
    s = result["summary"]
    test_notes = split_notes(read_examples(tiny_dataset))["test"]
    assert s["notes"] == len(test_notes) > 0 and s["notes_with_baseline"] == s["notes"]
    # a random model is far from the real notes; the sampler, a few semitones away, is close
    assert s["l1_baseline"] < 0.3 * s["l1_sing"]
    assert s["l1_ratio"] > 3 and s["sing_below_baseline"] is False
    assert s["within_50_cents_pct_baseline"] == 100 and s["within_50_cents_pct_target"] == 100
    assert s["loudness_rises_target"] is True
    # the report's SING L1 is the `eval` loss of the model on the same notes
    model = SING(CONFIG)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state"])
    loss, count = evaluate_loss(model, tiny_dataset, "test", batch_size=8)
    assert count == s["notes"] and s["loss_value"] == pytest.approx(loss, rel=1e-4)
    assert s["l1_sing"] == pytest.approx(loss, rel=1e-4)

    report = (out / "report.md").read_text()
    assert str(tiny_dataset) in report and str(ckpt) in report and "split: test" in report
    assert "SING is NOT below the baseline" in report
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert all(f"]({p.name})" in report for p in pngs)
    metrics = json.loads((out / "metrics.json").read_text())   # strict JSON: no NaN
    assert metrics["summary"]["notes"] == s["notes"] and len(metrics["notes"]) == s["notes"]
    assert {"l1_sing", "l1_baseline", "cents_sing", "cents_baseline", "db_sing", "fund_sing",
            "fund_target"} <= set(metrics["notes"][0])
    assert "## Bass fundamentals" in report and "bass_notes" in metrics["summary"]
    assert [v["velocity"] for v in metrics["per_velocity"]] == [25, 50, 75, 100, 127]


def test_eval_report_command(tiny_dataset, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "r"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tiny_dataset), "--report", str(out),
                 "--examples", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "l1 spectral loss" in lines[0]
    assert any(line.startswith("spectral L1 baseline:") for line in lines)
    assert any("SING is NOT below the baseline" in line for line in lines)
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    assert len(list(out.glob("*.png"))) == 1
    result = json.loads((out / "metrics.json").read_text())
    assert len(summary_lines(evaluate(ckpt, tiny_dataset, n_examples=0))) == len(lines) - 2
    assert result["checkpoint"] == str(ckpt)


def one_line_error(code, capsys, *words):
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_eval_report_errors(tiny_dataset, tmp_path, capsys):
    args = ["eval", "--data", str(tiny_dataset), "--report", str(tmp_path / "r")]
    # instrument 2 is past the table of a two-instrument checkpoint
    small = tiny_checkpoint(tmp_path / "small.pt", SingConfig(n_instruments=2, lstm_hidden=8, lstm_layers=1,
                                                              channels=8), {0: NAMES[0], 1: NAMES[1]})
    one_line_error(main(args + ["--checkpoint", str(small), "--split", "all"]), capsys, "instrument 2")
    # the same ids, other names: a checkpoint of another dataset
    other = tiny_checkpoint(tmp_path / "other.pt", names={0: "flute", 1: "organ", 2: "violin"})
    one_line_error(main(args + ["--checkpoint", str(other)]), capsys, "flute")
    # an empty split
    root = tmp_path / "one"
    one_group = make_dataset(root, n_instruments=1, pitches=[60], velocities=(100,))
    empty = next(name for name, notes in split_notes(one_group).items() if not notes)
    one_line_error(main(["eval", "--checkpoint", str(small), "--data", str(root), "--split", empty,
                         "--report", str(tmp_path / "r")]), capsys, f"the {empty} split is empty")
    with pytest.raises(UserError):
        evaluate(small, root, empty)


def test_final_model_is_scored_on_test_against_a_sampler_of_the_same_notes(tiny_dataset, tmp_path, capsys):
    """A checkpoint trained on train+valid: its baseline samples from train and valid (the notes
    it trained on); scoring it on valid is refused in one line."""
    torch.manual_seed(0)
    final = tmp_path / "final.pt"
    save_checkpoint(final, SING(CONFIG), NAMES, {"train_split": "train+valid"})
    seed = 3                           # a split where valid holds the nearest pitch of some test notes
    splits = split_notes(read_examples(tiny_dataset), seed=seed)
    sources = {r["baseline_source"] for r in evaluate(final, tiny_dataset, "test", seed, n_examples=0)["notes"]}
    plain = {r["baseline_source"] for r in evaluate(tiny_checkpoint(tmp_path / "m.pt"), tiny_dataset, "test",
                                                    seed, n_examples=0)["notes"]}
    assert plain <= {n.note_str for n in splits["train"]}
    assert sources <= {n.note_str for n in splits["train"] + splits["valid"]}
    assert sources & {n.note_str for n in splits["valid"]}      # some nearest pitches are valid's
    with pytest.raises(UserError):
        evaluate(final, tiny_dataset, "valid")
    one_line_error(main(["eval", "--checkpoint", str(final), "--data", str(tiny_dataset), "--split", "valid"]),
                   capsys, "--split test")


def test_eval_bad_data_is_one_line_exit_2(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    result = subprocess.run([sys.executable, "-m", "sing_synth", "eval", "--checkpoint", str(ckpt),
                             "--data", str(tmp_path / "nowhere"), "--report", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "examples.json" in result.stderr
