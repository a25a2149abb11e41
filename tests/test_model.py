import pytest
import torch

from sing_synth.config import SIZES, SingConfig, named_config
from sing_synth.decoder import ConvEncoder
from sing_synth.model import SING, Autoencoder, count_parameters

TINY = SingConfig(n_instruments=5, lstm_hidden=16, lstm_layers=2, channels=32)


def expected_parameters(c: SingConfig) -> int:
    """SING's parameter count from the layer formulas (SING.md, "Architecture")."""
    tables = (c.n_instruments * c.instrument_dim + c.n_pitches * c.pitch_dim
              + c.n_velocities * c.velocity_dim + c.steps * c.time_dim)
    lstm_in = c.instrument_dim + c.pitch_dim + c.velocity_dim + c.time_dim + 2 * c.phase_harmonics
    h = c.lstm_hidden
    lstm = 4 * h * (lstm_in + h) + 8 * h + (c.lstm_layers - 1) * (4 * h * (2 * h) + 8 * h)
    linear = h * c.embedding_dim + c.embedding_dim
    decoder = (c.embedding_dim * c.channels * c.kernel + c.channels
               + 2 * (c.channels * c.channels + c.channels)
               + c.channels * c.frame + 1)
    return tables + lstm + linear + decoder


def test_reference_arithmetic():
    config = SIZES["full"]
    assert config.length == 64000
    assert config.encoder_padding == 2304
    assert (config.steps - 1) * config.stride + config.frame == 64000 + 2 * 2304


@pytest.mark.parametrize("size, harmonics", [("full", 0), ("base", 0), ("small", 0), ("small", 8)])
def test_parameter_count_matches_formula(size, harmonics):
    config = named_config(size, n_instruments=1006, phase_harmonics=harmonics)
    model = SING(config)
    assert count_parameters(model) == expected_parameters(config)
    if harmonics:    # the phase table is computed, not a parameter, and not saved
        assert "sequence_generator.phases" not in model.state_dict()
    if size == "full":   # SING.md: ~63.7 M parameters at full size
        assert abs(count_parameters(model) - 63.7e6) < 0.1e6


def test_output_is_exactly_64000_samples():
    torch.manual_seed(0)
    model = SING(TINY)
    wave = model(torch.tensor([0, 4]), torch.tensor([60, 127]), torch.tensor([0, 4]))
    assert wave.shape == (2, 64000)
    assert torch.isfinite(wave).all()


def test_encoder_gives_one_embedding_per_step():
    encoder = ConvEncoder(TINY)
    embeddings = encoder(torch.randn(3, TINY.length))
    assert embeddings.shape == (3, TINY.embedding_dim, TINY.steps)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = SING(TINY)
    wave = model(torch.tensor([1, 2]), torch.tensor([40, 80]), torch.tensor([1, 3]))
    wave.pow(2).mean().backward()
    encoder = ConvEncoder(TINY)
    Autoencoder(encoder, model.decoder)(torch.randn(2, TINY.length)).pow(2).mean().backward()
    touched = [encoder.named_parameters(prefix="encoder"), model.named_parameters()]
    for name, param in (item for group in touched for item in group):
        assert param.grad is not None, name
        if name.startswith("sequence_generator.tables"):   # only the looked-up rows
            assert param.grad.abs().sum() > 0, name
        else:
            assert param.grad.abs().max() > 0, name


def test_blend_weights_equal_lookup_for_one_hot():
    torch.manual_seed(0)
    model = SING(TINY).eval()
    one_hot = torch.nn.functional.one_hot(torch.tensor([3]), TINY.n_instruments).float()
    with torch.no_grad():
        a = model(torch.tensor([3]), torch.tensor([60]), torch.tensor([2]))
        b = model(one_hot, torch.tensor([60]), torch.tensor([2]))
    torch.testing.assert_close(a, b)


def test_velocity_rows_nearest_and_legacy_mapping():
    assert [SIZES["full"].velocity_row(v) for v in (1, 25, 40, 100, 127)] == [0, 0, 1, 3, 4]
    legacy = SingConfig(velocity_rows=(25, 50, 75, 0, 100, 127))
    assert [legacy.velocity_row(v) for v in (25, 50, 75, 100, 127)] == [0, 1, 2, 4, 5]


def test_config_round_trip_and_unknown_fields():
    config = named_config("base", n_instruments=7)
    assert SingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus"):
        SingConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown model size"):
        named_config("huge")


@pytest.mark.parametrize("frames", [4, 19, 64])
def test_crops_equal_the_whole_note(frames):
    """A crop of the decoder and of the encoder is bit-for-bit the stretch of the whole note it covers,
    at the first, a middle and the last allowed start; the starts reach both ends of the note."""
    torch.manual_seed(0)
    config = named_config("small", channels=64, n_instruments=3)
    model, encoder = SING(config).eval(), ConvEncoder(config)
    decoder = model.decoder
    embeddings = torch.randn(2, config.embedding_dim, config.steps)
    whole = decoder(embeddings)
    starts = decoder.crop_starts(frames)
    assert decoder.crop_bounds(starts[0], frames)[0] == 0
    assert decoder.crop_bounds(starts[-1], frames)[1] == config.length
    span = frames + config.kernel - 1
    for start in (starts[0], (starts[0] + starts[-1]) // 2, starts[-1]):
        first, end = decoder.crop_bounds(start, frames)
        assert end - first == (frames - 3) * config.stride
        crop = decoder.forward_crop(embeddings[..., start:start + span])
        torch.testing.assert_close(crop, whole[:, first:end], rtol=1e-5, atol=1e-6)
    wave = torch.randn(2, config.length)
    codes = encoder(wave)
    for start in (0, 100, config.steps - 20):
        torch.testing.assert_close(encoder.forward_frames(wave, start, 20), codes[..., start:start + 20])
