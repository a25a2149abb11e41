"""The command line: generate and eval on a checkpoint, one-line errors with exit status 2."""
import subprocess
import sys

import numpy as np
import soundfile
import torch

from conftest import cents, dominant_frequency
from sing_synth.checkpoint import save_checkpoint
from sing_synth.cli import main
from sing_synth.config import SingConfig
from sing_synth.model import SING

CONFIG = SingConfig(n_instruments=3, lstm_hidden=16, lstm_layers=1, channels=32)


def tiny_checkpoint(path):
    torch.manual_seed(0)
    save_checkpoint(path, SING(CONFIG), {0: "flute", 1: "organ", 2: "violin"})
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sing_synth", *map(str, args)], capture_output=True, text=True)


def test_generate_writes_every_combination(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "wav"
    code = main(["generate", "--checkpoint", str(ckpt), "--instrument", "flute", "2", "flute:0.5,organ:0.5",
                 "--pitch", "60", "72", "--velocity", "30", "127", "-o", str(out)])
    assert code == 0
    files = sorted(p.name for p in out.glob("*.wav"))
    assert len(files) == 12 and "flute-060-030.wav" in files and "flute_0.5+organ_0.5-072-127.wav" in files
    wave, rate = soundfile.read(out / "2-072-127.wav")
    assert rate == 16000 and wave.shape == (64000,)


def test_generate_matches_model(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    main(["generate", "--checkpoint", str(ckpt), "--instrument", "1", "--pitch", "64", "--velocity", "100",
          "-o", str(tmp_path), "--reference"])
    torch.manual_seed(0)
    model = SING(CONFIG).eval()
    with torch.no_grad():
        expected = model(torch.tensor([1]), torch.tensor([64]), torch.tensor([CONFIG.velocity_row(100)]))[0]
    wave, _ = soundfile.read(tmp_path / "1-064-100.wav")
    assert np.abs(wave - expected.clamp(-1, 1).numpy()).max() < 2 / 32768


def test_eval_prints_the_loss(tiny_dataset, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tiny_dataset), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "spectral loss" in out and "135 notes" in out


def one_line_error(result, *words):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk")
    one_line_error(run_cli("generate", "--checkpoint", tmp_path / "junk.pt", "--instrument", "0", "--pitch", "60",
                           "-o", tmp_path), "junk.pt")
    one_line_error(run_cli("generate", "--checkpoint", ckpt, "--instrument", "cello", "--pitch", "60",
                           "-o", tmp_path), "cello")
    one_line_error(run_cli("generate", "--checkpoint", ckpt, "--instrument", "0", "--pitch", "200",
                           "-o", tmp_path), "pitch 200")
    one_line_error(run_cli("generate", "--checkpoint", ckpt, "--instrument", "0", "--pitch", "60",
                           "--velocity", "0", "-o", tmp_path), "velocity 0")
    one_line_error(run_cli("eval", "--checkpoint", ckpt, "--data", tmp_path / "nowhere"), "examples.json")
    one_line_error(run_cli("train", "--data", tmp_path, "--out", tmp_path / "r", "--epochs", "1,2"), "--epochs")
    one_line_error(run_cli("bogus"), "bogus")


def test_convert_to_half(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert main(["convert", str(ckpt), str(tmp_path / "half.pt"), "--half"]) == 0
    from sing_synth.checkpoint import load_checkpoint
    half = load_checkpoint(tmp_path / "half.pt")
    assert half.instruments == {0: "flute", 1: "organ", 2: "violin"}
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * ckpt.stat().st_size


def test_missing_device_is_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    result = run_cli("generate", "--checkpoint", ckpt, "--instrument", "0", "--pitch", "60",
                     "--device", "cuda:7", "-o", tmp_path)
    one_line_error(result, "cuda:7")
    one_line_error(run_cli("generate", "--checkpoint", ckpt, "--instrument", "0", "--pitch", "60",
                           "--device", "abacus", "-o", tmp_path), "abacus")
