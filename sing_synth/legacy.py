"""Loader of the published `sing.th`: a whole pickled SING module, read without running its code.

The original checkpoint was `torch.save` of the module object itself (torch 0.4, 2018), so the file
names Python classes (`sing.sequence.models.SING`, ...) that a plain `torch.load` would import and
rebuild, and a pickle may name any callable at all. Here the pickle is read by a restricted
unpickler: the SING classes and the few torch.nn module classes a SING holds become inert
stand-ins that only keep their state; tensors are rebuilt by torch's own storage helpers (wrapped,
arguments checked); every other global is refused with a `CheckpointError` naming it. Nothing is
imported on the file's behalf. The tensors are then collected under their module paths, the sizes
of the model are read off their shapes, and our `SING` is built and loaded strictly.

Both torch container formats go through `torch.load(pickle_module=...)`: the zip format (torch >= 1.6)
and the older stream of pickles (magic number, protocol, system info, module, storage keys), whose
header pickles are read by the same restricted unpickler.
"""
import pickle
import types
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .config import SingConfig
from .errors import CheckpointError
from .model import SING

# MIDI velocity of each row of the original velocity table: {25:0, 50:1, 75:2, 100:4, 127:5}, row 3 unused
LEGACY_VELOCITY_ROWS = (25, 50, 75, 0, 100, 127)
DEFAULT_STRIDE = 256
ROOT_CLASS = "sing.sequence.models.SING"
MAX_DEPTH = 16

# --------------------------------------------------------------------------------------------------
# Stand-ins: plain objects that keep the pickled state and do nothing else.


class StandIn:
    """Inert replacement for a pickled module class: unpickling only fills its `__dict__`.

    No `__setstate__`, `__reduce__` or `__getattr__`: the unpickler's BUILD step updates `__dict__`
    and runs nothing. `dump_patches` is read by torch's legacy loader when the saved class source
    differs from the current one; False keeps it from writing a patch file.
    """
    dump_patches = False
    checkpoint_class = "?"

    def __repr__(self):
        return f"<stand-in for {self.checkpoint_class}>"


STANDIN_CLASSES = (
    "sing.sequence.models.SING",
    "sing.sequence.models.SequenceGenerator",
    "sing.ae.models.ConvolutionalDecoder",
    "sing.ae.utils.WindowedConvTranpose1d",   # (sic): the original's spelling
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.rnn.LSTM",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.conv.Conv1d",
    "torch.nn.modules.conv.ConvTranspose1d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
)


def _make_standin(full_name: str) -> type:
    name = full_name.rsplit(".", 1)[1]
    return type(f"StandIn_{name}", (StandIn,), {"checkpoint_class": full_name, "__module__": __name__})


STANDINS = {full_name: _make_standin(full_name) for full_name in STANDIN_CLASSES}


def _is_standin_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, StandIn) and obj is not StandIn


# --------------------------------------------------------------------------------------------------
# Reconstruction helpers the pickle may call: each checks its arguments and builds only data.


class _RefusedValue(Exception):
    """A reconstruction helper got arguments no SING checkpoint has; reported with the file name."""


def _refuse_value(what: str):
    raise _RefusedValue(f"unexpected {what}: not part of a SING checkpoint")


def _check_storage(storage):
    if not isinstance(storage, torch.storage.TypedStorage):
        _refuse_value(f"tensor storage of type {type(storage).__name__}")


def _check_no_hooks(backward_hooks):
    if backward_hooks is not None and (not isinstance(backward_hooks, Mapping) or len(backward_hooks)):
        _refuse_value("tensor with backward hooks")


def _int_tuple(values, what):
    values = tuple(values)
    if not all(type(v) is int for v in values):
        _refuse_value(f"tensor {what}")
    return values


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_storage(storage)
    if type(storage_offset) is not int:
        _refuse_value("tensor offset")
    return torch._utils._rebuild_tensor(storage, storage_offset, _int_tuple(size, "size"),
                                        _int_tuple(stride, "stride"))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _check_no_hooks(backward_hooks)
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if metadata:
        if not isinstance(metadata, dict) or not all(isinstance(v, bool) for v in metadata.values()):
            _refuse_value("tensor metadata")
        torch._utils.set_tensor_metadata(tensor, metadata)
    return tensor


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    _check_no_hooks(backward_hooks)
    if not isinstance(data, torch.Tensor):
        _refuse_value(f"parameter data of type {type(data).__name__}")
    return data


def _parameter(data=None, requires_grad=True):
    """`torch.nn.parameter.Parameter(data, requires_grad)`, as older torch pickled parameters."""
    return _rebuild_parameter(data, requires_grad)


def _reconstructor(cls, base, state):
    """`copyreg._reconstructor` (pickle protocols 0 and 1), for stand-ins only."""
    if not _is_standin_class(cls) or base is not object or state is not None:
        _refuse_value("copyreg._reconstructor call")
    return object.__new__(cls)


def _thnn_backend(*args):
    """torch 0.4 pickled `module._backend` as a call of this function; the backend is not needed."""
    return None


HELPERS = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.nn.backends.thnn._get_thnn_function_backend": _thnn_backend,
    "collections.OrderedDict": OrderedDict,
    "copyreg._reconstructor": _reconstructor,
    "builtins.set": set,
    "builtins.object": object,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
}

# names of Python 2 pickles (a 2018 checkpoint may have been written by Python 2)
PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _printable(text, limit=120) -> str:
    text = str(text)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def resolve_global(module, name, source: str):
    """What the restricted unpickler returns for the global `module.name`; refuses anything else."""
    if type(module) is not str or type(name) is not str:
        raise CheckpointError(f"{source}: refusing to load a global with a non-text name: "
                              f"not part of a SING checkpoint")
    module = PY2_MODULES.get(module, module)
    full_name = f"{module}.{name}"
    if full_name in STANDINS:
        return STANDINS[full_name]
    if full_name in HELPERS:
        return HELPERS[full_name]
    if module in ("torch", "torch.cuda") and name.endswith("Storage") and name.isidentifier():
        try:   # a storage type is only a dtype tag (torch's own loader maps these the same way)
            return torch.serialization.StorageType(name)
        except (KeyError, AttributeError):
            pass
    raise CheckpointError(f"{source}: refusing to load global {_printable(full_name)}: "
                          f"not part of a SING checkpoint")


class RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler with two changes: globals resolve only through `resolve_global`, and the
    BUILD opcode (set an object's state) applies only to stand-ins, and only as `__dict__` entries.

    The pure-Python unpickler is used because its opcode table can be changed: with the C one, BUILD on
    an allowed global (a helper function, a stand-in class) would `setattr` on it for the whole
    process. The pickle of a SING module is small (tensor data lies outside it), so speed is no issue.
    """
    source = "checkpoint"
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        return resolve_global(module, name, self.source)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, StandIn):
            raise CheckpointError(f"{self.source}: refusing to set the state of a "
                                  f"{_printable(type(inst).__name__)}: not part of a SING checkpoint")
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        if slotstate or not isinstance(state, (dict, type(None))):
            raise CheckpointError(f"{self.source}: unexpected state for {inst.checkpoint_class}: "
                                  f"not part of a SING checkpoint")
        for key, value in (state or {}).items():
            if type(key) is not str:
                raise CheckpointError(f"{self.source}: non-text attribute name in {inst.checkpoint_class}")
            inst.__dict__[key] = value

    dispatch[pickle.BUILD[0]] = load_build


def restricted_pickle_module(source: str) -> types.ModuleType:
    """A module-like object for `torch.load(pickle_module=...)`: `Unpickler` (which torch subclasses
    for its storage handling) and `load` (which torch calls for the legacy format's header pickles)."""
    unpickler = type("RestrictedUnpickler", (RestrictedUnpickler,), {"source": source})

    def load(file, **kwargs):
        return unpickler(file, **kwargs).load()

    module = types.ModuleType("sing_synth_restricted_pickle")
    module.Unpickler = unpickler
    module.load = load
    module.__version__ = "1"
    return module


# --------------------------------------------------------------------------------------------------
# Reading the file


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _printable(text.splitlines()[0] if text else type(exc).__name__, 200)


def _check_not_torchscript(path: Path, source: str) -> None:
    """torch.load hands a TorchScript archive to torch.jit.load: refuse it before torch.load sees it."""
    import zipfile

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a readable checkpoint archive ({_first_line(exc)})") from None
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(f"{source}: a TorchScript archive, not a SING checkpoint")


def read_legacy_pickle(path, source=None):
    """Unpickles a torch.save file with the restricted unpickler; returns the top-level object
    (stand-ins, tensors, plain containers)."""
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file")
    _check_not_torchscript(path, source)
    try:
        with warnings.catch_warnings():
            # the legacy format compares each saved module class's source with the stand-in's
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            return torch.load(path, map_location="cpu", pickle_module=restricted_pickle_module(source),
                              weights_only=False)
    except CheckpointError:
        raise
    except _RefusedValue as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except Exception as exc:   # a corrupt or foreign file: torch and pickle raise many types
        raise CheckpointError(f"{source}: cannot read legacy checkpoint ({_first_line(exc)})") from None


def collect_tensors(root, source: str) -> dict:
    """Flat state dict (`a.b.weight` -> tensor) from the stand-ins' `_parameters`, `_buffers`, `_modules`."""
    state = {}

    def visit(module, prefix, ancestors):
        where = prefix.rstrip(".") or "the top-level module"
        if not isinstance(module, StandIn):
            raise CheckpointError(f"{source}: {where} is a {_printable(type(module).__name__)}, "
                                  f"not a module of a SING checkpoint")
        if id(module) in ancestors or len(ancestors) > MAX_DEPTH:
            raise CheckpointError(f"{source}: module structure loops or nests too deep at {where}")
        attrs = vars(module)
        for kind in ("_parameters", "_buffers", "_modules"):
            entries = attrs.get(kind, {})
            if not isinstance(entries, Mapping):
                raise CheckpointError(f"{source}: {kind} of {where} is not a mapping")
            for name, value in entries.items():
                if type(name) is not str or not name or "." in name:
                    raise CheckpointError(f"{source}: bad entry name {_printable(name)!r} in {where}")
                if value is None:
                    continue
                if kind == "_modules":
                    visit(value, f"{prefix}{name}.", ancestors | {id(module)})
                    continue
                if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
                    raise CheckpointError(f"{source}: {prefix}{name} is not a dense tensor")
                tensor = value.detach()
                state[prefix + name] = tensor.float() if tensor.is_floating_point() else tensor

    visit(root, "", frozenset())
    return state


def _module_at(root, path: str):
    """The stand-in at a dotted module path, or None."""
    module = root
    for part in path.split("."):
        modules = vars(module).get("_modules") if isinstance(module, StandIn) else None
        if not isinstance(modules, Mapping) or part not in modules:
            return None
        module = modules[part]
    return module


def _single_int(value, what, source):
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if type(value) is not int:
        raise CheckpointError(f"{source}: {what} is {_printable(value)!r}, expected one integer")
    return value


def infer_config(state: dict, root, source: str) -> SingConfig:
    """The SingConfig whose model has exactly these tensor shapes."""

    def shape(name, ndim):
        if name not in state:
            raise CheckpointError(f"{source}: missing tensor {name}: not a SING checkpoint")
        tensor = state[name]
        if tensor.dim() != ndim:
            raise CheckpointError(f"{source}: {name} has shape {list(tensor.shape)}, "
                                  f"expected {ndim} dimensions")
        return tuple(tensor.shape)

    n_instruments, instrument_dim = shape("sequence_generator.tables.0.weight", 2)
    n_pitches, pitch_dim = shape("sequence_generator.tables.1.weight", 2)
    n_velocities, velocity_dim = shape("sequence_generator.tables.2.weight", 2)
    if n_velocities != len(LEGACY_VELOCITY_ROWS):
        raise CheckpointError(f"{source}: the velocity table has {n_velocities} rows; "
                              f"the original SING checkpoint has {len(LEGACY_VELOCITY_ROWS)}")
    steps, time_dim = shape("sequence_generator.time_table.weight", 2)
    lstm_hidden = shape("sequence_generator.lstm.weight_hh_l0", 2)[1]
    lstm_layers = 0
    while f"sequence_generator.lstm.weight_ih_l{lstm_layers}" in state:
        lstm_layers += 1
    embedding_dim = shape("sequence_generator.decoder.weight", 2)[0]
    channels, _, kernel = shape("decoder.layers.0.weight", 3)
    frame = shape("decoder.layers.6.conv_tr.weight", 3)[2]

    conv_tr = _module_at(root, "decoder.layers.6.conv_tr")
    windowed = _module_at(root, "decoder.layers.6")
    stride = DEFAULT_STRIDE
    for module in (conv_tr, windowed):
        if isinstance(module, StandIn) and "stride" in vars(module):
            stride = _single_int(vars(module)["stride"], "the transposed convolution's stride", source)
            break
    if isinstance(conv_tr, StandIn) and "padding" in vars(conv_tr):
        padding = _single_int(vars(conv_tr)["padding"], "the transposed convolution's padding", source)
        if padding != frame - stride:
            raise CheckpointError(f"{source}: transposed convolution padding {padding} with frame {frame} "
                                  f"and stride {stride}; SING uses frame - stride = {frame - stride}")
    config = SingConfig(
        n_instruments=n_instruments, n_pitches=n_pitches, velocity_rows=LEGACY_VELOCITY_ROWS,
        instrument_dim=instrument_dim, pitch_dim=pitch_dim, velocity_dim=velocity_dim, time_dim=time_dim,
        lstm_hidden=lstm_hidden, lstm_layers=lstm_layers, embedding_dim=embedding_dim,
        channels=channels, kernel=kernel, steps=steps, frame=frame, stride=stride)
    if min(n_instruments, n_pitches, lstm_layers, stride, steps - kernel + 1) <= 0 or config.length <= 0:
        raise CheckpointError(f"{source}: tensor shapes give no valid SING model "
                              f"(steps {steps}, kernel {kernel}, frame {frame}, stride {stride})")
    return config


def build_model(state: dict, config: SingConfig, source: str) -> SING:
    model = SING(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
        raise CheckpointError(f"{source}: not a SING checkpoint ({'; '.join(parts)})")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(f"{source}: {name} has shape {list(state[name].shape)}, "
                                  f"expected {list(tensor.shape)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: inconsistent checkpoint ({_first_line(exc)})") from None
    return model


def load_legacy(path) -> Checkpoint:
    """Loads the published `sing.th` (a whole pickled SING module) without executing code from it."""
    path = Path(path)
    source = str(path)
    root = read_legacy_pickle(path, source)
    if type(root) is not STANDINS[ROOT_CLASS]:
        what = root.checkpoint_class if isinstance(root, StandIn) else type(root).__name__
        raise CheckpointError(f"{source}: not a SING checkpoint (the file holds a {_printable(what)}, "
                              f"expected a pickled {ROOT_CLASS})")
    state = collect_tensors(root, source)
    config = infer_config(state, root, source)
    model = build_model(state, config, source)
    return Checkpoint(model.eval(), instruments={}, metadata={"source": "sing.th (legacy)"})
