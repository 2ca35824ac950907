"""PyTorch importer: live nn.RNN / nn.LSTM / nn.GRU modules, and state_dict files read
without torch and without unpickling arbitrary objects.

Understood module shapes (``from_torch``):
1. A bare ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU`` (any num_layers, bidirectional, batch_first,
   bias, proj_size, nonlinearity). ``predict`` returns the module's output sequence batch-major
   (B, T, D*H_out) and its final states equal ``h_n`` / ``c_n`` split per layer.
2. A module whose direct children are, in registration order: an optional ``nn.Embedding``,
   one or more RNN/LSTM/GRU modules, an optional ``nn.Linear``; ``nn.Dropout`` children are
   ignored (no-ops at inference). The Linear is applied to every step (``return_sequences=True``,
   the char-model shape) or to the final state of the last recurrent module
   (``return_sequences=False``, the classifier shape: ``torch.cat([h_n[-2], h_n[-1]], 1)`` for a
   bidirectional one). The module's own ``forward`` is not run or inspected: fastrnn assumes it
   is this plain chain.
Anything else raises ModelFormatError naming the child that is not understood.

PyTorch facts used here (../shared/CONVENTIONS.md): keys weight_ih_l{k}[_reverse], weight_hh,
bias_ih, bias_hh, weight_hr (proj); gate blocks LSTM i|f|g|o, GRU r|z|n — already fastrnn's
internal order, so no reordering is needed.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile

import numpy as np

from ..errors import ModelFormatError, UnsupportedLayerError
from ..layers import Dense, DirectionWeights, Embedding, Recurrent
from ..model import Model

CELLS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def _np(t):
    return t.detach().cpu().float().numpy().copy()


def _module_params(module) -> dict:
    return {k: _np(v) for k, v in module.state_dict().items()}


def recurrent_layers_from_params(params, cell, num_layers, bidirectional, nonlinearity="tanh",
                                 prefix="", name="rnn", last_returns_sequences=True):
    """Build one fastrnn Recurrent layer per PyTorch layer from PyTorch-named parameters."""
    layers = []
    for k in range(num_layers):
        dirs = []
        for suffix in ([""] + (["_reverse"] if bidirectional else [])):
            def get(key, required=True):
                full = f"{prefix}{key}_l{k}{suffix}"
                if full not in params:
                    if required:
                        raise ModelFormatError(f"missing parameter {full!r}")
                    return None
                return params[full]

            dirs.append(DirectionWeights(w_ih=get("weight_ih"), w_hh=get("weight_hh"),
                                         b_ih=get("bias_ih", False), b_hh=get("bias_hh", False),
                                         w_hr=get("weight_hr", False)))
        G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
        hidden = dirs[0].w_ih.shape[0] // G
        proj = 0 if dirs[0].w_hr is None else dirs[0].w_hr.shape[0]
        acts = (nonlinearity,) if cell == "rnn" else ()
        layers.append(Recurrent(cell=cell, hidden_size=hidden, directions=dirs, proj_size=proj, activations=acts,
                                return_sequences=last_returns_sequences or k < num_layers - 1,
                                name=f"{name}_l{k}" if num_layers > 1 else name))
    return layers


def _layers_from_rnn_module(module, name, last_returns_sequences=True):
    cell = CELLS[type(module).__name__]
    if cell == "rnn" and module.nonlinearity not in ("tanh", "relu"):
        raise UnsupportedLayerError(f"{name}: nonlinearity {module.nonlinearity!r}")
    return recurrent_layers_from_params(
        _module_params(module), cell, module.num_layers, module.bidirectional,
        nonlinearity=getattr(module, "nonlinearity", "tanh"), name=name,
        last_returns_sequences=last_returns_sequences)


def from_torch(obj, return_sequences=True, activation="linear", vocabulary=None, name=None) -> Model:
    """Build a fastrnn Model from a live PyTorch module (see the module docstring for the shapes).

    return_sequences : for a chain with an RNN module: the output per step (True) or from the
        final state of the last recurrent module (False, classifiers).
    activation : applied after the final nn.Linear ("linear", "softmax", "sigmoid", ...).
    """
    try:
        import torch.nn as nn
    except ImportError as exc:  # pragma: no cover - torch is an optional extra
        raise ImportError("fastrnn.from_torch needs PyTorch: pip install 'fastrnn[torch]'") from exc
    kind = type(obj).__name__
    if isinstance(obj, (nn.RNN, nn.LSTM, nn.GRU)) and kind in CELLS:
        layers = _layers_from_rnn_module(obj, name=kind.lower())
        return Model(layers, name=name or kind.lower(),
                     metadata={"source": "torch", "torch_module": kind, "batch_first": bool(obj.batch_first)})
    if not isinstance(obj, nn.Module):
        raise ModelFormatError(f"from_torch expects a torch.nn.Module, got {type(obj).__name__}")
    children = [(n, c) for n, c in obj.named_children() if not isinstance(c, nn.Dropout)]
    layers = []
    rnn_positions = [i for i, (_, c) in enumerate(children) if type(c).__name__ in CELLS and isinstance(c, nn.RNNBase)]
    if not rnn_positions:
        raise UnsupportedLayerError(
            f"{kind}: no nn.RNN/nn.LSTM/nn.GRU child found; fastrnn understands [Embedding] -> RNN modules -> [Linear]")
    for i, (cname, child) in enumerate(children):
        ckind = type(child).__name__
        if isinstance(child, nn.Embedding) and i == 0:
            if child.max_norm is not None:
                raise UnsupportedLayerError(f"{kind}.{cname}: nn.Embedding with max_norm changes weights at run time")
            layers.append(Embedding(_np(child.weight), name=cname))
        elif i in rnn_positions and i <= rnn_positions[-1] and all(p in rnn_positions for p in range(rnn_positions[0], i + 1)):
            last = i == rnn_positions[-1]
            layers += _layers_from_rnn_module(child, cname, last_returns_sequences=return_sequences or not last)
        elif isinstance(child, nn.Linear) and i == len(children) - 1 and i > rnn_positions[-1]:
            layers.append(Dense(_np(child.weight), None if child.bias is None else _np(child.bias), activation, cname))
        else:
            raise UnsupportedLayerError(
                f"{kind}.{cname} ({ckind}) at position {i} is not understood: fastrnn reads modules whose children "
                "are, in order, an optional nn.Embedding, one or more nn.RNN/nn.LSTM/nn.GRU and an optional "
                "nn.Linear (nn.Dropout is ignored)")
    return Model(layers, vocabulary=vocabulary, name=name or kind.lower(), metadata={"source": "torch", "torch_module": kind})


# -- state_dict files without torch and without arbitrary unpickling ------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
                 "float16": np.float16, "half": np.float16, "int64": np.int64, "long": np.int64,
                 "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
                 "bool": np.bool_}
MAX_PICKLE_BYTES = 64 * 1024 * 1024


class _Storage:
    def __init__(self, dtype, data):
        self.dtype, self.data = dtype, data


class _DType:
    def __init__(self, np_dtype):
        self.np_dtype = np_dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise ModelFormatError("tensor without storage")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise ModelFormatError("malformed tensor record")
    if any((not isinstance(s, int)) or s < 0 for s in size + stride) or offset < 0:
        raise ModelFormatError("negative tensor size/stride")
    n = storage.data.size
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= n:
        raise ModelFormatError(f"tensor of size {size} reads past its storage of {n} elements")
    item = storage.data.itemsize
    arr = np.lib.stride_tricks.as_strided(storage.data[offset:], shape=size,
                                          strides=tuple(st * item for st in stride), writeable=False)
    return np.array(arr)  # own, contiguous copy


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


def _ordered_dict(*args):
    from collections import OrderedDict
    return OrderedDict(*args)


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that only builds dicts and tensors; any other global is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, data, zf, prefix, source):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.source = zf, prefix, source
        self.storages = {}

    def find_class(self, module, name):
        fn = self.ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and name in _STORAGE_DTYPES:
            return _DType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(_TORCH_DTYPES[name])
        if module.startswith("torch.nn") or module.startswith("__main__") or "." in module and not module.startswith("torch"):
            raise ModelFormatError(
                f"the file holds a pickled object of class {module}.{name}, not a state_dict. fastrnn never "
                "unpickles whole modules (that would run code from the file). Save the weights with "
                "torch.save(model.state_dict(), path) and convert that file", self.source)
        raise ModelFormatError(f"the pickle references {module}.{name}, which a state_dict never needs; refused",
                               self.source)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ModelFormatError(f"unexpected persistent record {pid!r:.80}", self.source)
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, _DType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelFormatError("malformed storage record", self.source)
        if key in self.storages:
            return self.storages[key]
        entry = f"{self.prefix}data/{key}"
        try:
            info = self.zf.getinfo(entry)
        except KeyError:
            raise ModelFormatError(f"storage {entry!r} is missing from the archive", self.source) from None
        item = np.dtype(dtype.np_dtype).itemsize
        if info.file_size != numel * item:
            raise ModelFormatError(f"storage {key!r}: {info.file_size} bytes, the pickle claims {numel * item}",
                                   self.source)
        data = np.frombuffer(self.zf.read(entry), dtype=dtype.np_dtype)
        st = _Storage(dtype.np_dtype, data)
        self.storages[key] = st
        return st


def read_state_dict(path) -> dict:
    """Read a ``torch.save(state_dict)`` file into {name: ndarray} without torch and without
    running code from the file."""
    path = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise ModelFormatError(
                "legacy (non-zip) torch.save format; re-save with a current PyTorch: "
                "torch.save(model.state_dict(), path)", path) from None
        raise ModelFormatError(f"not a PyTorch state_dict file (zip archive expected): {exc}", path) from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ModelFormatError("archive has no single data.pkl: not a torch.save file", path)
        prefix = pkl[0][: -len("data.pkl")]
        if zf.getinfo(pkl[0]).file_size > MAX_PICKLE_BYTES:
            raise ModelFormatError("data.pkl is implausibly large for a state_dict", path)
        try:
            obj = _StateDictUnpickler(zf.read(pkl[0]), zf, prefix, path).load()
        except ModelFormatError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                zipfile.BadZipFile, RecursionError, MemoryError, OSError) as exc:
            raise ModelFormatError(f"corrupt state_dict pickle: {exc.__class__.__name__}: {exc}", path) from None
    if not isinstance(obj, dict):
        raise ModelFormatError(f"the file holds a {type(obj).__name__}, not a state_dict", path)
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise ModelFormatError(f"entry {k!r} is not a tensor", path)
        out[k] = v
    return out


_KEY = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$")


def from_state_dict(params, cell, return_sequences=True, activation="linear", vocabulary=None, name="model",
                    source=None) -> Model:
    """Build a Model from a PyTorch state_dict ({name: array}) of the chain
    [Embedding] -> RNN modules -> [Linear]. ``cell``: "lstm" | "gru" | "rnn_tanh" | "rnn_relu".
    Layer count, sizes, direction and projection come from the tensor names and shapes."""
    cell_kind, nonlinearity = {"lstm": ("lstm", "tanh"), "gru": ("gru", "tanh"), "rnn": ("rnn", "tanh"),
                               "rnn_tanh": ("rnn", "tanh"), "rnn_relu": ("rnn", "relu")}.get(cell, (None, None))
    if cell_kind is None:
        raise ValueError(f"cell must be lstm, gru, rnn_tanh or rnn_relu; got {cell!r}")
    params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    groups = []  # (prefix, kind) in order of first appearance
    for key in params:
        m = _KEY.match(key)
        prefix, kind = (m.group("prefix"), "rnn") if m else (key.rsplit(".", 1)[0] + "." if "." in key else "", "other")
        if not groups or groups[-1][0] != prefix:
            if any(g[0] == prefix for g in groups):
                continue
            groups.append((prefix, kind))
    rnn_groups = [g for g in groups if g[1] == "rnn"]
    if not rnn_groups:
        raise ModelFormatError("state_dict has no weight_ih_l0 key: no RNN/LSTM/GRU module in it", source)
    layers = []
    for gi, (prefix, kind) in enumerate(groups):
        label = prefix.rstrip(".") or "rnn"
        if kind == "rnn":
            nums = {int(_KEY.match(k).group("layer")) for k in params if _KEY.match(k) and _KEY.match(k).group("prefix") == prefix}
            bidir = any(k.startswith(prefix) and k.endswith("_reverse") for k in params)
            last = prefix == rnn_groups[-1][0]
            layers += recurrent_layers_from_params(params, cell_kind, max(nums) + 1, bidir, nonlinearity, prefix, label,
                                                   last_returns_sequences=return_sequences or not last)
        elif gi == 0 and set(k for k in params if k.startswith(prefix)) == {prefix + "weight"}:
            layers.append(Embedding(params[prefix + "weight"], name=label))
        elif gi == len(groups) - 1 and prefix + "weight" in params:
            layers.append(Dense(params[prefix + "weight"], params.get(prefix + "bias"), activation, label))
        else:
            keys = sorted(k for k in params if k.startswith(prefix))
            raise UnsupportedLayerError(
                f"state_dict entries {keys} are not an Embedding (first), RNN weights or a Linear (last)", source)
    return Model(layers, vocabulary=vocabulary, name=name, metadata={"source": "torch-state-dict"})
