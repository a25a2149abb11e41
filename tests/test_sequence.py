"""The sequence generator's phase inputs: the table's values, chunked runs, widening a trained model."""
import math
from dataclasses import replace

import pytest
import torch

from sing_synth.config import SingConfig
from sing_synth.model import SING
from sing_synth.sequence import pitch_phases, widen_phase_inputs

CONFIG = SingConfig(n_instruments=4, lstm_hidden=16, lstm_layers=2, channels=32)


def test_pitch_phases_are_each_harmonics_phase_at_each_frame():
    config = SingConfig(phase_harmonics=8)
    table = pitch_phases(config)
    assert table.shape == (128, 265, 16)
    for pitch in (21, 36, 69, 108):
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        for frame in (0, 1, 100, 264):
            for k in (1, 2, 8):
                seconds = frame * config.stride / config.sample_rate
                angle = 2 * math.pi * k * f0 * seconds
                got = table[pitch, frame, 2 * (k - 1):2 * k]
                assert got.tolist() == pytest.approx([math.cos(angle), math.sin(angle)], abs=1e-5)
    # A4 is 7.04 cycles per frame: the phase turns by 0.04 of a cycle from frame to frame
    assert math.atan2(table[69, 1, 1], table[69, 1, 0]) == pytest.approx(2 * math.pi * 0.04, abs=1e-6)


def test_chunked_runs_see_the_phases_of_their_own_frames():
    torch.manual_seed(0)
    seq = SING(replace(CONFIG, phase_harmonics=3)).sequence_generator.eval()
    assert torch.all(seq.lstm.weight_ih_l0[:, -6:] == 0)     # a new model's phase weights start at zero
    torch.nn.init.uniform_(seq.lstm.weight_ih_l0, -0.2, 0.2)
    instrument, pitch, velocity = torch.tensor([1, 3]), torch.tensor([36, 90]), torch.tensor([0, 4])
    symbols = seq.symbols(instrument, pitch, velocity)
    with torch.no_grad():
        whole, _ = seq.run(symbols, pitch, 0, 265)
        head, state = seq.run(symbols, pitch, 0, 100)
        tail, _ = seq.run(symbols, pitch, 100, 165, state)
        other, _ = seq.run(symbols, torch.tensor([37, 90]), 0, 265)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole)
    assert not torch.allclose(other[0], whole[0])    # same symbols, another pitch's phases
    torch.testing.assert_close(other[1], whole[1])


def test_widening_keeps_the_notes_and_the_new_inputs_learn():
    torch.manual_seed(1)
    plain = SING(CONFIG).eval()
    wide = SING(replace(CONFIG, phase_harmonics=4))
    wide.load_state_dict(widen_phase_inputs(plain.state_dict(), 4))
    symbols = torch.tensor([0, 2]), torch.tensor([36, 72]), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(wide.eval()(*symbols), plain(*symbols))
    wide.train()(*symbols).pow(2).mean().backward()
    new_columns = wide.sequence_generator.lstm.weight_ih_l0.grad[:, -8:]
    assert new_columns.abs().max() > 0
    with pytest.raises(ValueError, match="more than 2"):
        widen_phase_inputs(wide.state_dict(), 2)
