import pytest
import torch

from sing_synth.config import SingConfig, named_config
from sing_synth.fast import FastRenderer, best_dtype, cpu_supports_bf16
from sing_synth.model import SING


def relative_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_matches_reference(dtype):
    torch.manual_seed(0)
    model = SING(named_config("small", n_instruments=20)).eval()
    instrument, pitch, velocity = torch.tensor([0, 7, 19]), torch.tensor([21, 60, 108]), torch.tensor([0, 2, 4])
    with torch.no_grad():
        reference = model(instrument, pitch, velocity)
    fast = FastRenderer(model, dtype=dtype)(instrument, pitch, velocity)
    assert fast.shape == (3, 64000) and fast.dtype == torch.float32
    assert relative_l2(fast, reference) <= (1e-5 if dtype == torch.float32 else 1e-2)


def test_fast_path_handles_blends():
    torch.manual_seed(1)
    model = SING(SingConfig(n_instruments=4, lstm_hidden=16, lstm_layers=1, channels=64)).eval()
    blend = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    with torch.no_grad():
        reference = model(blend, torch.tensor([64]), torch.tensor([3]))
    fast = FastRenderer(model, dtype=torch.float32)(blend, torch.tensor([64]), torch.tensor([3]))
    assert relative_l2(fast, reference) <= 1e-5


def test_best_dtype_on_cpu():
    assert best_dtype("cpu") == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)


@pytest.mark.parametrize("lstm_chunks, decoder_chunk", [(1, 1000), (3, 50), (265, 1)])
def test_stages_give_forwards_result_in_steps(lstm_chunks, decoder_chunk):
    torch.manual_seed(2)
    model = SING(SingConfig(n_instruments=3, lstm_hidden=16, lstm_layers=2, channels=32)).eval()
    fast = FastRenderer(model, dtype=torch.float32)
    symbols = torch.tensor([0, 2]), torch.tensor([60, 40]), torch.tensor([3, 1])
    steps = fast.stages(*symbols, lstm_chunks=lstm_chunks, decoder_chunk=decoder_chunk)
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            wave = done.value
            break
        count += 1
    frames = model.config.steps - model.config.kernel + 1
    assert count == min(lstm_chunks, model.config.steps) + -(-frames // decoder_chunk)
    assert relative_l2(wave, fast(*symbols)) <= 1e-6
