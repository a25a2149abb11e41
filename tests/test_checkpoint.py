from dataclasses import replace

import pytest
import torch

from sing_synth.checkpoint import FORMAT_VERSION, load_checkpoint, model_payload, save_checkpoint
from sing_synth.config import SingConfig
from sing_synth.errors import CheckpointError
from sing_synth.model import SING

CONFIG = SingConfig(n_instruments=6, lstm_hidden=16, lstm_layers=2, channels=32)


@pytest.mark.parametrize("config", [CONFIG, replace(CONFIG, phase_harmonics=2)])
def test_round_trip_is_exact(tmp_path, config):
    torch.manual_seed(0)
    model = SING(config)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {0: "flute", 5: "organ"}, {"seed": 3})
    ckpt = load_checkpoint(path)
    assert ckpt.model.config == config
    assert ckpt.instruments == {0: "flute", 5: "organ"}
    assert ckpt.metadata == {"seed": 3}
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name
    # the file holds only plain data: loadable with weights_only=True
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION


def test_half_storage_is_smaller_and_close(tmp_path):
    torch.manual_seed(0)
    model = SING(CONFIG)
    save_checkpoint(tmp_path / "full.pt", model)
    save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    loaded = load_checkpoint(tmp_path / "half.pt").model
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=1e-3, rtol=1e-3)


def test_refuses_other_versions_and_garbage(tmp_path):
    payload = model_payload(SING(CONFIG))
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt: not a readable"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a sing-synth checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_inconsistent_state_is_one_clear_error(tmp_path):
    payload = model_payload(SING(CONFIG))
    payload["config"]["channels"] = 64
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_checkpoint(tmp_path / "bad.pt")
