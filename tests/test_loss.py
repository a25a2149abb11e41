import numpy as np
import pytest
import torch

from sing_synth.loss import SpectralLoss


def numpy_log_power(wave, n_fft=1024, hop=256):
    """float64 reference: periodic Hann, frames without centring, log(1 + |X|^2)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft, axis=-1)[..., ::hop, :]
    spec = np.fft.rfft(frames * window, axis=-1)
    return np.log1p(np.abs(spec) ** 2)


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_spectral_loss_matches_numpy(kind):
    rng = np.random.default_rng(0)
    a = rng.normal(scale=0.3, size=(2, 16000))
    b = rng.normal(scale=0.3, size=(2, 16000))
    diff = numpy_log_power(a) - numpy_log_power(b)
    expected = np.abs(diff).mean() if kind == "l1" else (diff ** 2).mean()
    got = SpectralLoss(kind)(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert abs(got.item() - expected) <= 1e-5 * max(1.0, abs(expected))


def test_zero_on_identical_inputs():
    wave = torch.randn(3, 8000)
    for kind in ("l1", "mse", "waveform"):
        assert SpectralLoss(kind)(wave, wave.clone()).item() == 0.0


def test_frames_without_centring():
    # 8000 samples, n_fft 1024, hop 256, no padding: 1 + (8000 - 1024) // 256 = 28 frames
    assert SpectralLoss().log_power(torch.zeros(1, 8000)).shape == (1, 513, 28)


def test_waveform_option_is_mse():
    a, b = torch.randn(2, 4000), torch.randn(2, 4000)
    assert torch.isclose(SpectralLoss("waveform")(a, b), ((a - b) ** 2).mean())


def test_unknown_kind():
    with pytest.raises(ValueError):
        SpectralLoss("l3")


def test_norm_db_weighs_a_quiet_pair_as_a_loud_one():
    """With `norm_db` a pair 30 dB quieter costs what the loud pair costs (same gain for both);
    without it, most of the quiet pair's spectrum is under eps and costs far less."""
    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    target = 0.3 * torch.sin(2 * torch.pi * 523.25 * t)[None]
    output = target + 0.15 * torch.sin(2 * torch.pi * 261.63 * t)[None]     # a subharmonic
    quiet = 10 ** (-30 / 20)
    plain, norm = SpectralLoss("mse", (1024, 4096)), SpectralLoss("mse", (1024, 4096), norm_db=-20)
    assert plain(output * quiet, target * quiet) < 0.2 * plain(output, target)
    loud, soft = norm(output, target).item(), norm(output * quiet, target * quiet).item()
    assert abs(loud - soft) <= 1e-4 * loud
    assert norm(target, target.clone()).item() == 0.0
    # the output's level still counts: twice the target is not free
    assert norm(2 * target, target).item() > 0.05 * loud


def test_norm_db_gain_is_capped():
    loss = SpectralLoss("mse", norm_db=-20, max_gain_db=40)
    silent = torch.zeros(2, 8000)
    assert torch.allclose(loss.gain(silent), torch.full((2, 1), 100.0))
    assert torch.isfinite(loss(torch.randn(2, 8000) * 1e-3, silent))


def _tones(pitch, partials, seconds=1.0, rate=16000):
    """Sum of sines at `partials` (multiples of the pitch's f0, amplitude each) `[1, N]`."""
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    return sum(a * torch.sin(2 * np.pi * h * f0 * t + h) for h, a in partials.items()).float()[None]


def test_between_harmonics_marks_subharmonics_not_harmonics():
    from sing_synth.loss import between_harmonics
    f0, bin_hz = 261.63, 16000 / 4096
    freqs = torch.tensor([f0, 2 * f0, 3.01 * f0, f0 / 2, 1.5 * f0, 2.5 * f0, 0.2 * f0], dtype=torch.float64)
    assert between_harmonics(freqs, torch.tensor(f0, dtype=torch.float64), bin_hz).tolist() == \
        [False, False, False, True, True, True, False]     # 3.01 f0: 17 cents, on; 0.2 f0: below the band


def test_between_harmonics_low_hz_reaches_the_buzz_under_high_notes():
    """Under MIDI 72 (523 Hz) the 62.5 Hz frame-rate buzz and its 125 Hz tooth lie below 0.4 f0:
    only a `low_hz` under them marks them; it never moves the band of a note whose 0.4 f0 is lower."""
    from sing_synth.loss import between_harmonics
    bin_hz = 16000 / 8192
    buzz = torch.tensor([62.5, 125.0, 523.25], dtype=torch.float64)
    high = torch.tensor(523.25, dtype=torch.float64)
    assert between_harmonics(buzz, high, bin_hz).tolist() == [False, False, False]
    assert between_harmonics(buzz, high, bin_hz, low_hz=40.0).tolist() == [True, True, False]
    low = torch.tensor(65.41, dtype=torch.float64)                            # MIDI 36: 0.4 f0 = 26 Hz
    freqs = torch.arange(0, 400, dtype=torch.float64) * bin_hz
    assert torch.equal(between_harmonics(freqs, low, bin_hz, low_hz=40.0), between_harmonics(freqs, low, bin_hz))


def test_between_weight_weighs_subharmonics_not_harmonic_levels():
    """Two errors: a subharmonic series at -20 dB, and harmonics 3 dB too loud.  Weighted 4x,
    the first costs 1.41x the plain loss, the second 0.44x; weight 1 or no pitch is the plain loss."""
    pitch = torch.tensor([67])
    harmonics = {h: 0.3 / h for h in range(1, 6)}
    target = _tones(67, harmonics)
    sub = _tones(67, {**harmonics, **{h - 0.5: 0.03 / h for h in range(1, 6)}})
    level = _tones(67, {h: a * 10 ** (3 / 20) for h, a in harmonics.items()})
    plain = SpectralLoss("mse", n_fft=(1024, 4096))
    weighted = SpectralLoss("mse", n_fft=(1024, 4096), between_weight=4.0)
    for output in (sub, level):
        assert torch.allclose(weighted(output, target), plain(output, target))           # no pitch
        assert torch.allclose(SpectralLoss("mse", n_fft=(1024, 4096))(output, target, pitch),
                              plain(output, target))
    assert weighted(sub, target, pitch) > 1.3 * plain(sub, target)
    assert weighted(level, target, pitch) < 0.6 * plain(level, target)


def test_between_low_hz_weighs_a_buzz_under_a_high_note():
    """A 125 Hz tooth under MIDI 72 at -20 dB: the plain between-weight loss does not see it (below
    0.4 f0), `between_low_hz=40` weighs it 4x like any other between-harmonic error."""
    pitch = torch.tensor([72])
    harmonics = {h: 0.3 / h for h in range(1, 6)}
    target = _tones(72, harmonics)
    buzz = target + 0.03 * torch.sin(2 * np.pi * 125.0 * torch.arange(16000) / 16000).float()[None]
    plain = SpectralLoss("mse", n_fft=(1024, 8192))(buzz, target)
    weighted = SpectralLoss("mse", n_fft=(1024, 8192), between_weight=4.0)(buzz, target, pitch)
    low = SpectralLoss("mse", n_fft=(1024, 8192), between_weight=4.0, between_low_hz=40.0)(buzz, target, pitch)
    assert weighted < plain                     # the buzz's bins are not between: outweighed
    assert low > 1.2 * plain


def test_low_weight_weighs_a_bass_fundamental_at_the_frame_rate():
    """MIDI 36 with its fundamental at 62.5 Hz (the decoder's frame rate) instead of 65.4 Hz, and the
    same note with its 5th harmonic 30 cents flat: `low_weight=10` makes the first cost more than
    twice the plain loss and leaves the second's cost below the plain one (outweighed); no pitch or
    weight 1 is the plain loss."""
    pitch = torch.tensor([36])
    harmonics = {h: 0.3 / h for h in range(1, 8)}
    target = _tones(36, harmonics, seconds=2.0)
    t = torch.arange(32000, dtype=torch.float64) / 16000
    f0 = 440.0 * 2 ** ((36 - 69) / 12)
    locked = (target - _tones(36, {1: 0.3}, seconds=2.0)
              + 0.3 * torch.sin(2 * np.pi * 62.5 * t + 1).float()[None])
    upper = (target - _tones(36, {5: 0.06}, seconds=2.0)
             + 0.06 * torch.sin(2 * np.pi * 5 * f0 * 2 ** (-30 / 1200) * t + 5).float()[None])
    sizes = (1024, 4096, 16384)
    plain = SpectralLoss("mse", n_fft=sizes)
    low = SpectralLoss("mse", n_fft=sizes, low_weight=10.0)
    assert torch.allclose(low(locked, target), plain(locked, target))                   # no pitch
    assert torch.allclose(SpectralLoss("mse", n_fft=sizes, low_weight=1.0)(locked, target, pitch),
                          plain(locked, target))
    assert low(locked, target, pitch) > 2 * plain(locked, target)
    assert low(upper, target, pitch) < plain(upper, target)


def test_comb_weight_sees_a_bass_fundamental_repeated_at_the_frame_rate():
    """On a crop of 64 frames (15,616 samples), MIDI 36 with its fundamental at 62.5 Hz instead of
    65.4 Hz barely costs more than a flat 5th harmonic under STFTs up to 8192 points; the comb term
    (the spectrum of the part that repeats every hop) makes it cost 4x, and leaves the flat 5th
    harmonic, which does not repeat every hop, as it was.  Training only (no pitch: plain loss)."""
    pitch, n = torch.tensor([36]), 15616
    harmonics = {h: 0.3 / h for h in range(1, 8)}
    target = _tones(36, harmonics)[:, :n]
    t = torch.arange(n, dtype=torch.float64) / 16000
    f0 = 440.0 * 2 ** ((36 - 69) / 12)
    locked = target - _tones(36, {1: 0.3})[:, :n] + 0.3 * torch.sin(2 * np.pi * 62.5 * t + 1).float()[None]
    upper = (target - _tones(36, {5: 0.06})[:, :n]
             + 0.06 * torch.sin(2 * np.pi * 5 * f0 * 2 ** (-30 / 1200) * t + 5).float()[None])
    options = dict(n_fft=(1024, 4096, 8192), norm_db=-30)
    plain, comb = SpectralLoss("mse", **options), SpectralLoss("mse", comb_weight=1.0, **options)
    assert plain(locked, target, pitch) < 1.5 * plain(upper, target, pitch)
    assert comb(locked, target, pitch) > 4 * plain(locked, target, pitch)
    assert comb(upper, target, pitch) == pytest.approx(plain(upper, target, pitch).item(), rel=1e-3)
    assert comb(locked, target) == plain(locked, target)
    assert comb(target, target, pitch) == 0
