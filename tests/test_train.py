"""Training on a tiny synthetic NSynth folder: phases learn, a killed run resumes, torchrun shards."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import cents, dominant_frequency, make_dataset
from sing_synth.checkpoint import load_checkpoint
from sing_synth.config import SingConfig
from sing_synth.data import read_examples, split_notes
from sing_synth.evaluate import fundamental_cents
from sing_synth.train import PHASES, TrainSettings, train

# Small enough for 2 CPU cores: ~0.93-s notes (73 frames). MSE on log spectra, because L1 on such
# sparse (pure harmonic) targets settles on silence within a few hundred steps, where the gradient
# of log(1 + |X|^2) vanishes; a 4096-point STFT term, because at 1024 points a decoder that repeats
# one frame (a 62.5 Hz comb) is nearly as good as the true pitch (see loss.py).
STEPS = 73
LEARNING = dict(lstm_hidden=64, lstm_layers=2, channels=256, steps=STEPS, loss="mse", lr=2e-3,
                resolutions=(1024, 4096), amp=False, batch_size=(8, 8, 8), progress=False)
TINY = ["--lstm-hidden", "16", "--lstm-layers", "1", "--channels", "32", "--batch-size", "8",
        "--steps", str(STEPS), "--no-progress"]
FRAME_RATE = 16000 / 256   # repeating one frame per hop gives a comb of this spacing


def comb_cents(pitch):
    """Distance in cents from a pitch to the nearest tooth of the frame-rate comb."""
    frequency = 440.0 * 2 ** ((pitch - 69) / 12)
    return abs(cents(round(frequency / FRAME_RATE) * FRAME_RATE, pitch))


@pytest.fixture(scope="module")
def short_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    make_dataset(root, pitches=range(52, 77, 3), length=SingConfig(steps=STEPS).length)
    return root


def read_metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def held_out_pair(data, seed):
    """An (instrument, pitch) of the test split whose pitch the train split has for another instrument,
    and which a frame-rate comb cannot imitate within 50 cents (so only a real pitch passes)."""
    splits = split_notes(read_examples(data), seed=seed)
    train_pairs = {(n.instrument, n.pitch) for n in splits["train"]}
    for note in splits["test"]:
        seen = any(p == note.pitch and i != note.instrument for i, p in train_pairs)
        if seen and comb_cents(note.pitch) > 60:
            return note.instrument, note.pitch
    return None


@pytest.fixture(scope="module")
def trained(short_dataset, tmp_path_factory):
    seed = next(s for s in range(100) if held_out_pair(short_dataset, s))
    run = tmp_path_factory.mktemp("run")
    # a fixed thread count: the trajectory (and so this small model's pitch) depends on the
    # reduction order, and other tests' render workers change torch's thread setting
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path = train(TrainSettings(data=str(short_dataset), out=str(run), epochs=(40, 15, 60), seed=seed,
                                   **LEARNING))
    finally:
        torch.set_num_threads(threads)
    return run, path, held_out_pair(short_dataset, seed)


def test_each_phase_lowers_its_loss(trained):
    rows = read_metrics(trained[0])
    for phase in PHASES:
        losses = [float(r["train_loss"]) for r in rows if r["phase"] == phase]
        assert losses[-1] < 0.7 * losses[0], (phase, losses)


def test_held_out_pitch_is_in_tune(trained):
    _, path, (instrument, pitch) = trained
    model = load_checkpoint(path).model
    with torch.no_grad():
        wave = model(torch.tensor([instrument]), torch.tensor([pitch]), torch.tensor([3]))[0]
    error = cents(dominant_frequency(wave.numpy()), pitch)
    assert abs(error) < 50, f"instrument {instrument} pitch {pitch}: {error:.0f} cents"


def train_command(data, run, *extra):
    return [sys.executable, "-m", "sing_synth", "train", "--data", str(data), "--out", str(run), *TINY, *extra]


def test_killed_run_resumes_without_losing_an_epoch(short_dataset, tmp_path):
    run = tmp_path / "run"
    command = train_command(short_dataset, run, "--epochs", "4,3,3", "--no-amp")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").exists() and len(read_metrics(run)) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.15)   # somewhere inside the next epoch
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_metrics(run))
    assert 2 <= done_before < 10
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    epochs = [(r["phase"], int(r["epoch"])) for r in read_metrics(run)]
    expected = [(p, e) for p, n in zip(PHASES, (4, 3, 3)) for e in range(1, n + 1)]
    assert epochs == expected
    load_checkpoint(run / "model.pt")


def test_existing_run_needs_resume(short_dataset, tmp_path):
    run = tmp_path / "run"
    first = subprocess.run(train_command(short_dataset, run, "--epochs", "1,0,0"), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(train_command(short_dataset, run, "--epochs", "1,0,0"), capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--resume" in again.stderr


def test_finished_run_trains_on_with_more_epochs(short_dataset, tmp_path):
    run = tmp_path / "run"
    command = train_command(short_dataset, run, "--epochs", "1,1,1")
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    same = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert same.returncode == 0 and len(read_metrics(run)) == 3            # nothing left to do
    more = subprocess.run(train_command(short_dataset, run, "--epochs", "1,1,3", "--resume",
                                        "--lr", "1e-5"), capture_output=True, text=True)
    assert more.returncode == 0, more.stderr
    state = torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)
    assert {g["lr"] for g in state["training"]["optimizer"]["param_groups"]} == {1e-5}  # annealed
    assert [(r["phase"], int(r["epoch"])) for r in read_metrics(run)] == [
        (PHASES[0], 1), (PHASES[1], 1), (PHASES[2], 1), (PHASES[2], 2), (PHASES[2], 3)]


def test_time_limit_stops_before_an_epoch_that_would_not_fit_and_resumes(short_dataset, tmp_path, monkeypatch):
    """Each epoch takes 10 s of a fake clock: a 25-s limit trains two epochs (a third would end at
    30 s), saves them, and --resume goes on where it stopped."""
    import sing_synth.train as train_module
    clock = [0.0]
    monkeypatch.setattr(train_module.time, "monotonic", lambda: clock[0])
    real_epoch = train_module.Trainer.train_epoch

    def ten_seconds(self):
        clock[0] += 10.0
        return real_epoch(self)
    monkeypatch.setattr(train_module.Trainer, "train_epoch", ten_seconds)
    tiny = dict(lstm_hidden=16, lstm_layers=1, channels=32, steps=STEPS, batch_size=(8, 8, 8),
                progress=False, amp=False)
    run = tmp_path / "run"
    settings = TrainSettings(data=str(short_dataset), out=str(run), epochs=(2, 2, 2), time_limit=25 / 60, **tiny)
    assert train(settings).exists()
    assert [(r["phase"], int(r["epoch"])) for r in read_metrics(run)] == [(PHASES[0], 1), (PHASES[0], 2)]
    state = torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)["training"]
    assert (state["phase"], state["epoch"]) == (0, 2)
    clock[0] = 0.0
    train(settings, resume=True)
    assert [(r["phase"], int(r["epoch"])) for r in read_metrics(run)][2:] == [(PHASES[1], 1), (PHASES[1], 2)]


def test_oversample_draws_the_named_instrument_more_often(short_dataset, tmp_path):
    from sing_synth.train import Trainer
    tiny = dict(lstm_hidden=16, lstm_layers=1, channels=32, steps=STEPS, progress=False, amp=False)
    trainer = Trainer(TrainSettings(data=str(short_dataset), out=str(tmp_path / "r"), oversample=(("_002", 8.0),),
                                    epoch_notes=3000, **tiny))
    drawn = [int(i) for _, inst, _, _ in trainer.loader(trainer.train_set, 100, 7, True) for i in inst]
    assert len(drawn) == 3000
    share = drawn.count(2) / len(drawn)
    counts = [sum(n.instrument == k for n in trainer.train_set.notes) for k in range(3)]
    expected = 8 * counts[2] / (counts[0] + counts[1] + 8 * counts[2])
    assert abs(share - expected) < 0.05 and share > 0.6
    again = [int(i) for _, inst, _, _ in trainer.loader(trainer.train_set, 100, 7, True) for i in inst]
    assert again == drawn                                     # seeded by (seed, epoch): resumable
    plain = [int(i) for _, inst, _, _ in trainer.loader(trainer.valid_set, 100, 0, False) for i in inst]
    assert len(plain) == len(trainer.valid_set)               # validation is never resampled


def test_oversample_pitches_draws_those_pitches_more_often(short_dataset, tmp_path):
    """A note takes the largest weight it matches: its instrument's or its pitch range's."""
    from sing_synth.train import Trainer
    tiny = dict(lstm_hidden=16, lstm_layers=1, channels=32, steps=STEPS, progress=False, amp=False)
    trainer = Trainer(TrainSettings(data=str(short_dataset), out=str(tmp_path / "r"), oversample=(("_002", 8.0),),
                                    oversample_pitches=(((52, 58), 3.0),), epoch_notes=4000, **tiny))
    drawn = [(int(i), int(p)) for _, inst, pitch, _ in trainer.loader(trainer.train_set, 100, 3, True)
             for i, p in zip(inst, pitch)]
    notes = [(n.instrument, n.pitch) for n in trainer.train_set.notes]
    weight = {note: 8.0 if note[0] == 2 else 3.0 if 52 <= note[1] <= 58 else 1.0 for note in notes}
    total = sum(weight[n] for n in notes)
    for kind in (8.0, 3.0, 1.0):
        expected = sum(weight[n] for n in notes if weight[n] == kind) / total
        share = sum(weight[n] == kind for n in drawn) / len(drawn)
        assert abs(share - expected) < 0.04, (kind, share, expected)


def test_between_weight_changes_training_not_validation(short_dataset, tmp_path):
    """--between-weight weighs the training loss only: the same weights validate to the same
    number, a training step's loss differs; 0 is refused in one line."""
    from sing_synth.train import Trainer
    tiny = dict(lstm_hidden=16, lstm_layers=1, channels=32, steps=STEPS, progress=False, amp=False,
                loss="mse", resolutions=(1024, 4096))
    plain, weighted = (Trainer(TrainSettings(data=str(short_dataset), out=str(tmp_path / name),
                                             between_weight=w, **tiny))
                       for name, w in (("a", 1.0), ("b", 4.0)))
    assert plain.validate(2) == pytest.approx(weighted.validate(2), rel=1e-6)
    wave, instrument, pitch, velocity = next(iter(plain.loader(plain.train_set, 8, 0, False)))
    with torch.no_grad():
        output = plain.model(instrument, pitch, velocity)
    assert weighted.loss(output, wave, pitch).item() != pytest.approx(plain.loss(output, wave, pitch).item(), rel=1e-3)
    refused = subprocess.run(train_command(short_dataset, tmp_path / "c", "--between-weight", "0"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--between-weight" in refused.stderr
    refused = subprocess.run(train_command(short_dataset, tmp_path / "d", "--between-weight", "4",
                                           "--between-low-hz", "-5"), capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--between-low-hz" in refused.stderr
    refused = subprocess.run(train_command(short_dataset, tmp_path / "e", "--low-weight", "0"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--low-weight" in refused.stderr
    refused = subprocess.run(train_command(short_dataset, tmp_path / "f", "--comb-weight", "-1"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--comb-weight" in refused.stderr
    refused = subprocess.run(train_command(short_dataset, tmp_path / "g", "--phase-harmonics", "-2"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--phase-harmonics" in refused.stderr


def test_oversample_of_an_unknown_instrument_is_refused(short_dataset, tmp_path):
    command = train_command(short_dataset, tmp_path / "r", "--epochs", "0,0,1", "--oversample", "marimba=4")
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "marimba" in refused.stderr
    bad = subprocess.run(train_command(short_dataset, tmp_path / "s", "--oversample", "marimba"),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "NAME=WEIGHT" in bad.stderr
    for ranges, word in (("90-96=4", "no note"), ("52-58=0", "positive"), ("58-52=4", "LO-HI"), ("low=4", "LO-HI")):
        refused = subprocess.run(train_command(short_dataset, tmp_path / "p", "--epochs", "0,0,1",
                                               "--oversample-pitches", ranges), capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and word in refused.stderr, refused.stderr


def test_init_from_continues_a_finished_model(short_dataset, tmp_path):
    """A later session goes on training a shipped (fp16) model end to end: the run starts from its
    weights, and a checkpoint of another size is refused in one line."""
    first = subprocess.run(train_command(short_dataset, tmp_path / "a", "--epochs", "1,1,1"),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    half = tmp_path / "half.pt"
    subprocess.run([sys.executable, "-m", "sing_synth", "convert", str(tmp_path / "a" / "model.pt"),
                    str(half), "--half"], check=True, capture_output=True)
    again = subprocess.run(train_command(short_dataset, tmp_path / "b", "--epochs", "0,0,0",
                                         "--init-from", str(half)), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    start = load_checkpoint(half).model.state_dict()
    after = load_checkpoint(tmp_path / "b" / "model.pt").model.state_dict()
    assert all(torch.equal(start[k].float(), after[k]) for k in start)
    bigger = [a if a != "16" else "24" for a in train_command(short_dataset, tmp_path / "c", "--epochs",
                                                               "0,0,1", "--init-from", str(half))]
    refused = subprocess.run(bigger, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "config" in refused.stderr


def test_init_from_adds_phase_inputs_to_a_trained_model(short_dataset, tmp_path):
    """--phase-harmonics with --init-from a model without them: the run starts from exactly its
    notes (the new inputs at zero weight), trains them, and saves a model that rebuilds itself;
    going back to fewer harmonics is refused in one line."""
    first = subprocess.run(train_command(short_dataset, tmp_path / "a", "--epochs", "1,1,0"),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    plain = load_checkpoint(tmp_path / "a" / "model.pt").model
    command = train_command(short_dataset, tmp_path / "b", "--phase-harmonics", "3", "--init-from",
                            str(tmp_path / "a" / "model.pt"))
    start = subprocess.run(command + ["--epochs", "0,0,0"], capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    wide = load_checkpoint(tmp_path / "b" / "model.pt").model
    assert wide.config.phase_harmonics == 3
    symbols = torch.tensor([0, 1]), torch.tensor([55, 64]), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(wide(*symbols), plain(*symbols))
    trained = subprocess.run(command + ["--epochs", "0,0,1", "--resume"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    weight = load_checkpoint(tmp_path / "b" / "model.pt").model.sequence_generator.lstm.weight_ih_l0
    assert weight[:, -6:].abs().max() > 0
    back = subprocess.run(train_command(short_dataset, tmp_path / "c", "--epochs", "0,0,1", "--init-from",
                                        str(tmp_path / "b" / "model.pt")), capture_output=True, text=True)
    assert back.returncode == 2 and back.stderr.count("\n") == 1 and "phase harmonics 3" in back.stderr


BASS = range(31, 44)     # 49-98 Hz: fundamentals around the decoder's 62.5 Hz frame rate
BASS_STEPS = 85          # 1.06-s notes: room for an 8192-point STFT


@pytest.fixture(scope="module")
def bass_runs(tmp_path_factory):
    """End-to-end training of two small models from scratch on bass notes, with and without phase
    inputs; each one's fundamental (the strongest partial within 3 semitones of f0) per note."""
    root = tmp_path_factory.mktemp("bass")
    make_dataset(root, n_instruments=1, pitches=BASS, length=SingConfig(steps=BASS_STEPS).length)
    readings = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)     # a fixed reduction order, as in `trained`
    try:
        for harmonics in (0, 4):
            path = train(TrainSettings(
                data=str(root), out=str(root / f"run{harmonics}"), epochs=(0, 0, 60), seed=0,
                phase_harmonics=harmonics, lstm_hidden=64, lstm_layers=2, channels=128, steps=BASS_STEPS,
                loss="mse", lr=2e-3, resolutions=(1024, 4096, 8192), amp=False, batch_size=(8, 8, 8),
                loss_norm_db=-30, between_weight=4, low_weight=4, comb_weight=0.1,
                train_split="train+valid", progress=False))
            model = load_checkpoint(path).model
            with torch.no_grad():
                waves = model(torch.zeros(len(BASS), dtype=torch.long), torch.tensor(BASS),
                              torch.full((len(BASS),), 3))
            readings[harmonics] = [fundamental_cents(w.numpy(), p, 16000) for p, w in zip(BASS, waves)]
    finally:
        torch.set_num_threads(threads)
    return readings


def test_phase_inputs_put_bass_fundamentals_in_place(bass_runs):
    """The same training from scratch, the comb term on: without phase inputs the fundamentals of
    MIDI 31-43 come out on the 62.5 Hz comb or vanish (measured: 1 of 13 within 25 cents); with
    the phases of 4 harmonics 12 of 13 are within 3 cents (one at 48)."""
    with_phases, without = np.abs(bass_runs[4]), np.abs(bass_runs[0])
    assert np.sum(with_phases <= 10) >= 11, bass_runs[4]
    assert np.sum(without <= 25) <= 4, bass_runs[0]      # nan (no fundamental) counts as out


def test_torchrun_two_processes_on_gloo(short_dataset, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "sing_synth", "train", "--data", str(short_dataset), "--out", str(run), *TINY,
               "--epochs", "1,1,1", "--device", "cpu"]   # with bf16 autocast (the default)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    # the start too: a rank that aborts says why there, before torchrun's summary
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    rows = read_metrics(run)
    assert [r["phase"] for r in rows] == list(PHASES)
    total = len(split_notes(read_examples(short_dataset), seed=0)["train"])
    # both shards counted: DistributedSampler pads to an even split, so at least every train note
    assert all(total <= int(r["notes"]) <= total + 1 for r in rows)
    ckpt = load_checkpoint(run / "model.pt")
    assert ckpt.model.config.channels == 32


def test_crop_start_covers_the_note_evenly():
    """Every sample of a note is trained by random crops about equally often, the attack and the tail
    included (plain uniform starts would train the first hop 61 times less than the middle)."""
    import random
    from sing_synth.decoder import ConvDecoder
    from sing_synth.train import crop_start
    config = SingConfig(channels=8)
    decoder, rng, frames = ConvDecoder(config), random.Random(0), 64
    counts = torch.zeros(config.length // config.stride)
    for _ in range(20000):
        first, end = decoder.crop_bounds(crop_start(rng, decoder.crop_starts(frames), frames - 3), frames)
        counts[first // config.stride:end // config.stride] += 1
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.35 * counts.mean()


def test_cropped_training_learns_and_rebuilds_whole_notes(short_dataset, tmp_path):
    """--crop trains phases 1 and 3 on stretches of the notes: the whole-note validation loss still
    falls, and a crop too short for the largest STFT is refused in one line."""
    run = tmp_path / "run"
    settings = dict(LEARNING, epochs=(3, 1, 3), crop=24)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # the trajectory depends on the reduction order (as `trained`)
    try:
        train(TrainSettings(data=str(short_dataset), out=str(run), seed=0, **settings))
    finally:
        torch.set_num_threads(threads)
    rows = read_metrics(run)
    for phase in (PHASES[0], PHASES[2]):
        losses = [float(r["valid_loss"]) for r in rows if r["phase"] == phase]
        assert losses[-1] < losses[0], (phase, losses)
    refused = subprocess.run(train_command(short_dataset, tmp_path / "b", "--epochs", "1,1,1", "--crop", "4"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--crop 4" in refused.stderr


def test_train_split_train_valid_adds_the_valid_notes_never_the_test_notes(short_dataset, tmp_path):
    from sing_synth.train import Trainer
    tiny = dict(lstm_hidden=16, lstm_layers=1, channels=32, steps=STEPS, progress=False, amp=False)
    splits = split_notes(read_examples(short_dataset), seed=0)
    final = Trainer(TrainSettings(data=str(short_dataset), out=str(tmp_path / "f"), train_split="train+valid", **tiny))
    trained = {n.note_str for n in final.train_set.notes}
    assert trained == {n.note_str for n in splits["train"] + splits["valid"]}
    assert not trained & {n.note_str for n in splits["test"]}
    refused = subprocess.run(train_command(short_dataset, tmp_path / "t", "--train-split", "train+test"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--train-split" in refused.stderr
