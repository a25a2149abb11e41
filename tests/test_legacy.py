"""Tests of the restricted loader of the published `sing.th` (a whole pickled SING module).

The fixture is pickled the way the original was: classes living in modules named `sing.sequence.models`,
`sing.ae.models` and `sing.ae.utils`, holding torch.nn modules, saved with `torch.save(module)`. The fake
`sing` modules exist only while saving, so loading proves nothing is imported on the file's behalf.
"""
import builtins
import contextlib
import os
import pickle
import sys
import types
import warnings
import zipfile
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sing_synth.checkpoint import load_checkpoint, save_checkpoint
from sing_synth.errors import CheckpointError
from sing_synth.legacy import load_legacy

N_INSTRUMENTS = 12
N_PITCHES = 128
HIDDEN = 32
LAYERS = 2
CHANNELS = 64
STEPS, KERNEL, FRAME, STRIDE = 265, 9, 1024, 256
LENGTH = 64000
FAKE_MODULES = ("sing", "sing.sequence", "sing.sequence.models", "sing.ae", "sing.ae.models",
                "sing.ae.utils", "sing.evil")


@contextlib.contextmanager
def fake_sing_modules():
    """Installs stand-in `sing.*` modules whose classes pickle under the original names; removes them after."""
    saved = {name: sys.modules.get(name) for name in FAKE_MODULES}
    mods = {name: types.ModuleType(name) for name in FAKE_MODULES}

    def place(cls, module, name):
        cls.__module__, cls.__qualname__, cls.__name__ = module, name, name
        setattr(mods[module], name, cls)
        return cls

    class WindowedConvTranpose1d(nn.Module):
        def __init__(self, channels, frame, stride):
            super().__init__()
            self.conv_tr = nn.ConvTranspose1d(channels, 1, frame, stride, padding=frame - stride)
            # not exactly the squared Hann window: proves the checkpoint's buffer is the one used
            self.register_buffer("window", torch.hann_window(frame) ** 2 * 0.75 + 0.01)

    class ConvolutionalDecoder(nn.Module):
        def __init__(self, channels, frame=FRAME, stride=STRIDE):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Conv1d(128, channels, KERNEL), nn.ReLU(),
                nn.Conv1d(channels, channels, 1), nn.ReLU(),
                nn.Conv1d(channels, channels, 1), nn.ReLU(),
                mods["sing.ae.utils"].WindowedConvTranpose1d(channels, frame, stride))

    class SequenceGenerator(nn.Module):
        def __init__(self, n_velocities=6):
            super().__init__()
            self.tables = nn.ModuleList([nn.Embedding(N_INSTRUMENTS, 16), nn.Embedding(N_PITCHES, 8),
                                         nn.Embedding(n_velocities, 2)])
            self.time_table = nn.Embedding(STEPS, 4)
            self.lstm = nn.LSTM(30, HIDDEN, LAYERS)
            self.decoder = nn.Linear(HIDDEN, 128)

    class SING(nn.Module):
        def __init__(self, sequence_generator, decoder):
            super().__init__()
            self.sequence_generator = sequence_generator
            self.decoder = decoder

    class Thing:
        pass

    place(WindowedConvTranpose1d, "sing.ae.utils", "WindowedConvTranpose1d")
    place(ConvolutionalDecoder, "sing.ae.models", "ConvolutionalDecoder")
    place(SequenceGenerator, "sing.sequence.models", "SequenceGenerator")
    place(SING, "sing.sequence.models", "SING")
    place(Thing, "sing.evil", "Thing")
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def one_thread():
    """Tiny per-step LSTM kernels: on a busy small machine, OpenMP's thread hand-offs cost far more
    than the arithmetic (seconds per forward with 2 threads, milliseconds with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def saved_source(cls):
    return [f"class {cls.__name__}:  # as saved in 2018\n", "    pass\n"], 1, cls.__module__.replace(".", "/") + ".py"


def save_old(obj, path, pickle_protocol=2):
    """torch's pre-1.6 format, as torch 0.4 wrote sing.th: each module class is pickled with its source
    (here a made-up one), which torch.load compares with the loading class's source."""
    with mock.patch.object(torch.serialization, "get_source_lines_and_file", saved_source):
        torch.save(obj, path, pickle_protocol=pickle_protocol, _use_new_zipfile_serialization=False)


def make_original(mods, n_velocities=6, frame=FRAME, stride=STRIDE, seed=0):
    torch.manual_seed(seed)
    models = mods["sing.sequence.models"]
    decoder = mods["sing.ae.models"].ConvolutionalDecoder(CHANNELS, frame, stride)
    with torch.no_grad():   # scale the decoder up so the output is not vanishingly small
        for p in decoder.parameters():
            p.mul_(3)
    return models.SING(models.SequenceGenerator(n_velocities), decoder).eval()


def original_state(original):
    return {k: v.detach().clone() for k, v in original.state_dict().items()}


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory):
    """(original state dict, hand-computed outputs, zip-format path, pre-1.6-format path, the same in
    pickle protocol 1). The pre-1.6 files also carry torch 0.4's `module._backend` on every module."""
    root = tmp_path_factory.mktemp("legacy")
    with fake_sing_modules() as mods:
        original = make_original(mods)
        zip_path, old_path, proto1_path = root / "sing.th", root / "sing_old.th", root / "sing_p1.th"
        torch.save(original, zip_path)
        for module in original.modules():
            module._backend = Thnn04Backend()
        save_old(original, old_path)
        save_old(original, proto1_path, pickle_protocol=1)   # modules via copyreg._reconstructor
        expected = reference_forward(original, SYMBOLS)
        state = original_state(original)
    assert "sing" not in sys.modules and "sing.sequence.models" not in sys.modules
    return state, expected, zip_path, old_path, proto1_path


class Thnn04Backend:
    """Pickles as torch 0.4 pickled `module._backend`: a call of thnn._get_thnn_function_backend()."""

    def __reduce__(self):
        import torch.nn.backends.thnn
        return torch.nn.backends.thnn._get_thnn_function_backend, ()


SYMBOLS = ([0, 5, 11], [60, 21, 108], [5, 0, 4])   # instrument, pitch, velocity row (127, 25, 100)


@torch.no_grad()
@one_thread()
def reference_forward(original, symbols):
    """SING's forward computed from the original module's tensors, independently of sing_synth."""
    instrument, pitch, velocity = (torch.tensor(s) for s in symbols)
    sg, layers = original.sequence_generator, original.decoder.layers
    tables = [t.weight for t in sg.tables]
    per_note = torch.cat([tables[0][instrument], tables[1][pitch], tables[2][velocity]], dim=1)
    batch = per_note.shape[0]
    time = sg.time_table.weight.unsqueeze(1).expand(-1, batch, -1)        # [T, B, 4]
    inputs = torch.cat([per_note.unsqueeze(0).expand(STEPS, -1, -1), time], dim=2)
    hidden, _ = sg.lstm(inputs)                                          # sequence-first, as built
    emb = F.linear(hidden, sg.decoder.weight, sg.decoder.bias).permute(1, 2, 0)   # [B, 128, T]
    x = F.relu(F.conv1d(emb, layers[0].weight, layers[0].bias))
    x = F.relu(F.conv1d(x, layers[2].weight, layers[2].bias))
    x = F.relu(F.conv1d(x, layers[4].weight, layers[4].bias))
    conv = layers[6].conv_tr
    (frame,), (stride,) = conv.kernel_size, conv.stride
    wave = F.conv_transpose1d(x, conv.weight * layers[6].window, conv.bias, stride, frame - stride)
    length = (STEPS - KERNEL + 2) * stride - 2 * frame
    return wave[:, 0, frame // 2:frame // 2 + length]


def check_loaded(ckpt, state, expected, frame=FRAME, stride=STRIDE, length=LENGTH):
    model = ckpt.model
    assert not model.training
    assert ckpt.instruments == {}
    assert ckpt.metadata == {"source": "sing.th (legacy)"}
    config = model.config
    assert (config.n_instruments, config.n_pitches, config.n_velocities) == (N_INSTRUMENTS, N_PITCHES, 6)
    assert (config.lstm_hidden, config.lstm_layers, config.channels) == (HIDDEN, LAYERS, CHANNELS)
    assert (config.steps, config.kernel, config.frame, config.stride) == (STEPS, KERNEL, frame, stride)
    assert config.length == length
    assert config.velocity_rows == (25, 50, 75, 0, 100, 127)
    assert [config.velocity_row(v) for v in (25, 50, 75, 100, 127)] == [0, 1, 2, 4, 5]
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    with torch.no_grad(), one_thread():
        out = model(*(torch.tensor(s) for s in SYMBOLS))
    assert out.shape == (3, length)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert "sing" not in sys.modules   # nothing was imported on the file's behalf


def test_load_legacy_zip_format(legacy_files):
    state, expected, zip_path, *_ = legacy_files
    check_loaded(load_legacy(zip_path), state, expected)


@pytest.mark.parametrize("which", [3, 4])
def test_load_legacy_pre_zip_format(legacy_files, which):
    state, expected, *_ = legacy_files
    with open(legacy_files[which], "rb") as f:
        assert f.read(2) != b"PK"   # really the old stream-of-pickles format
    check_loaded(load_legacy(legacy_files[which]), state, expected)


def test_saved_class_sources_neither_warn_nor_write_patches(legacy_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(legacy_files[3], "rb") as f:
        assert b"as saved in 2018" in f.read()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_legacy(legacy_files[3])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", [2, 3, 4])
def test_load_checkpoint_falls_back_to_legacy(legacy_files, which):
    state, expected, *_ = legacy_files
    check_loaded(load_checkpoint(legacy_files[which]), state, expected)


def test_loaded_model_round_trips_through_sing_synth_format(legacy_files, tmp_path):
    state, expected, zip_path, *_ = legacy_files
    ckpt = load_legacy(zip_path)
    save_checkpoint(tmp_path / "converted.pt", ckpt.model, metadata=ckpt.metadata)
    again = load_checkpoint(tmp_path / "converted.pt")
    assert again.model.config == ckpt.model.config
    check_loaded(again, state, expected)


def test_frame_and_stride_read_from_the_transposed_conv(tmp_path):
    path = tmp_path / "sing.th"
    with fake_sing_modules() as mods:
        original = make_original(mods, frame=512, stride=128)
        save_old(original, path)
        expected = reference_forward(original, SYMBOLS)
        state = original_state(original)
    check_loaded(load_legacy(path), state, expected, frame=512, stride=128, length=32000)


# ------------------------------------------------------------------------------------------------
# Refusals: nothing named by the file runs


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


def write(obj, path, fmt):
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "old":
        save_old(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("fmt", ["zip", "old", "plain"])
@pytest.mark.parametrize("payload, global_name", [(SystemCall, f"{os.system.__module__}.system"),
                                                   (EvalCall, "builtins.eval")])
def test_refuses_code_globals(tmp_path, fmt, payload, global_name):
    marker = tmp_path / "MARKER"
    path = tmp_path / "sing.th"
    write({"model": payload(marker)}, path, fmt)
    for load in (load_legacy, load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"refusing to load global {global_name}: "
                                                  r"not part of a SING checkpoint") as info:
            load(path)
        assert str(info.value).startswith(str(path))
        assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "old"])
def test_refuses_unknown_sing_class(tmp_path, fmt):
    path = tmp_path / "sing.th"
    with fake_sing_modules() as mods:
        write(mods["sing.evil"].Thing(), path, fmt)
    with pytest.raises(CheckpointError, match=r"refusing to load global sing\.evil\.Thing"):
        load_legacy(path)
    assert "sing.evil" not in sys.modules


def test_refuses_code_hidden_inside_a_sing_module(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "sing.th"
    with fake_sing_modules() as mods:
        original = make_original(mods)
        original.sequence_generator.extra = SystemCall(marker)
        torch.save(original, path)
    with pytest.raises(CheckpointError, match=r"refusing to load global \S+\.system"):
        load_legacy(path)
    assert not marker.exists()


@pytest.mark.parametrize("state", [b"}", b"N}\x86"])   # a dict, or (None, slot-state dict)
def test_refuses_to_set_state_of_a_helper(tmp_path, state):
    """BUILD on an allowed global (here a tensor helper) would setattr on it for the whole process."""
    path = tmp_path / "sing.th"
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_parameter\n" + state + b"b.")
    with pytest.raises(CheckpointError, match="refusing to set the state of a function"):
        load_legacy(path)


# ------------------------------------------------------------------------------------------------
# Files that are readable but not a SING


def test_not_a_pickle(tmp_path):
    path = tmp_path / "sing.th"
    path.write_bytes(b"this is not a checkpoint at all\x00\x01\x02" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_legacy(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_legacy(tmp_path / "absent.th")


def test_a_state_dict_is_not_a_whole_module(tmp_path, legacy_files):
    path = tmp_path / "state.th"
    torch.save(legacy_files[0], path)
    with pytest.raises(CheckpointError, match="not a SING checkpoint"):
        load_legacy(path)


def test_five_velocity_rows_refused(tmp_path):
    path = tmp_path / "sing.th"
    with fake_sing_modules() as mods:
        torch.save(make_original(mods, n_velocities=5), path)
    with pytest.raises(CheckpointError, match="velocity table has 5 rows"):
        load_legacy(path)


def test_missing_decoder_layer_refused(tmp_path):
    path = tmp_path / "sing.th"
    with fake_sing_modules() as mods:
        original = make_original(mods)
        del original.decoder.layers[6]
        torch.save(original, path)
    with pytest.raises(CheckpointError, match=r"missing tensor decoder\.layers\.6\.conv_tr\.weight"):
        load_legacy(path)


def test_wrong_shape_refused(tmp_path):
    path = tmp_path / "sing.th"
    with fake_sing_modules() as mods:
        original = make_original(mods)
        original.decoder.layers[2] = nn.Conv1d(CHANNELS, CHANNELS, 3)
        torch.save(original, path)
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.2\.weight has shape \[64, 64, 3\]"):
        load_legacy(path)


def test_torchscript_archive_refused(tmp_path):
    """torch.load would hand a TorchScript archive to torch.jit.load; the loader refuses it first."""
    path = tmp_path / "sing.th"
    with zipfile.ZipFile(path, "w") as archive:   # the layout torch.jit.save writes
        for name in ("data.pkl", "constants.pkl", "code/__torch__.py", "version"):
            archive.writestr(f"archive/{name}", b"")
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_legacy(path)
