"""An explicit architecture for a PyTorch state_dict: what the weights file cannot say.

A state_dict holds parameters only: an ``nn.Tanh`` between the GRU and the Linear, a final
``nn.LogSoftmax`` or whether the Linear reads every step or the last state leave no trace in it.
``fastrnn convert weights --cell gru`` guesses the plain chain [Embedding] -> RNN modules ->
[Linear] and prints the architecture it inferred in this format; edit it and pass it back with
``--architecture spec.json`` (or ``from_architecture`` in Python) to describe the real network:

    {"format": "fastrnn-torch-architecture",
     "layers": [
       {"module": "Embedding", "prefix": "emb."},
       {"module": "GRU", "prefix": "rnn.", "return_sequences": true},
       {"module": "Tanh"},
       {"module": "Linear", "prefix": "fc."},
       {"module": "LogSoftmax", "dim": -1}]}

- ``module``: Embedding, RNN (with ``"nonlinearity": "tanh" | "relu"``), LSTM, GRU, Linear, or a
  parameter-free module: Tanh, ReLU, Sigmoid, GELU (``"approximate": "none" | "tanh"``),
  Softmax / LogSoftmax (``"dim"``, default -1: the class axis), Identity, Dropout.
- ``prefix``: the state_dict key prefix of the module's parameters (``"rnn."`` for
  ``rnn.weight_ih_l0``); layer count, sizes, directions and projection come from the tensors.
- ``"return_sequences": false`` on the last recurrent module: the layers after it read the final
  state (a classifier's ``fc(h_n[-1])``; both directions' final states concatenated).
Batch-first: inputs are (batch, time) ids or (batch, time, features), as fastrnn's always are.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from ..errors import ModelFormatError, UnsupportedLayerError
from ..layers import Activation, Dense, DirectionWeights, Embedding, Identity, Recurrent
from . import jsontext

FORMAT = "fastrnn-torch-architecture"
RECURRENT_MODULES = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
ACTIVATION_MODULES = {"Tanh": "tanh", "ReLU": "relu", "Sigmoid": "sigmoid", "Identity": "identity",
                      "Dropout": "identity"}
_KEY = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)"
                  r"(?P<rev>_reverse)?$")
CELL_NAMES = {"lstm": ("LSTM", "tanh"), "gru": ("GRU", "tanh"), "rnn": ("RNN", "tanh"), "rnn_tanh": ("RNN", "tanh"),
              "rnn_relu": ("RNN", "relu")}


def infer_architecture(params, cell, return_sequences=True, activation="linear", source=None) -> dict:
    """The architecture ``--cell`` assumes: [Embedding] -> RNN modules -> [Linear] (+ activation),
    modules in the order their keys first appear."""
    if cell not in CELL_NAMES:
        raise ValueError(f"cell must be lstm, gru, rnn_tanh or rnn_relu; got {cell!r}")
    module, nonlinearity = CELL_NAMES[cell]
    groups = {}  # prefix -> kind, in order of first appearance (dicts keep insertion order)
    for key in params:
        m = _KEY.match(key)
        prefix, kind = (m.group("prefix"), "rnn") if m else (key.rsplit(".", 1)[0] + "." if "." in key else "", "other")
        groups.setdefault(prefix, kind)
    groups = list(groups.items())
    keys_of = _keys_by_prefix(params)
    rnn = [g for g in groups if g[1] == "rnn"]
    if not rnn:
        raise ModelFormatError("state_dict has no weight_ih_l0 key: no RNN/LSTM/GRU module in it", source)
    layers = []
    for gi, (prefix, kind) in enumerate(groups):
        if kind == "rnn":
            entry = {"module": module, "prefix": prefix}
            if module == "RNN":
                entry["nonlinearity"] = nonlinearity
            if prefix == rnn[-1][0] and not return_sequences:
                entry["return_sequences"] = False
            layers.append(entry)
        elif gi == 0 and set(keys_of.get(prefix, ())) == {prefix + "weight"}:
            layers.append({"module": "Embedding", "prefix": prefix})
        elif gi == len(groups) - 1 and prefix + "weight" in params:
            layers.append({"module": "Linear", "prefix": prefix})
            if activation not in (None, "linear"):
                names = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "sigmoid": "Sigmoid", "tanh": "Tanh",
                         "relu": "ReLU"}
                if activation not in names:
                    raise ValueError(f"activation must be one of {sorted(names)} or linear, got {activation!r}")
                layers.append({"module": names[activation]})
        else:
            keys = sorted(keys_of.get(prefix, ()))
            raise UnsupportedLayerError(
                f"state_dict entries {keys} are not an Embedding (first), RNN weights or a Linear (last); describe "
                "the network with --architecture spec.json (see fastrnn.formats.torch_spec)", source)
    return {"format": FORMAT, "layers": layers}


def _keys_by_prefix(params):
    """prefix (everything up to the last '.', kept) -> its keys: one pass over the state_dict."""
    out = {}
    for k in params:
        out.setdefault(k.rsplit(".", 1)[0] + "." if "." in k else "", []).append(k)
    return out


def _recurrent_keys(params):
    """prefix -> the recurrent parameter keys (weight_ih_l0 ...) under it: one pass."""
    out = {}
    for k in params:
        m = _KEY.match(k)
        if m:
            out.setdefault(m.group("prefix"), []).append(k)
    return out


def read_architecture(source) -> dict:
    """A spec from a path, a JSON string or a dict, checked for its shape."""
    where = "<architecture>"
    if isinstance(source, dict):
        spec = source
    else:
        text = source
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(os.fspath(source)):
            where = os.fspath(source)
            if os.path.getsize(where) > 16 * 1024 * 1024:
                raise ModelFormatError("architecture file is larger than 16 MB", where)
            with open(where, encoding="utf-8-sig") as f:
                text = f.read()
        try:
            spec = jsontext.loads(text, "the architecture JSON", where)
        except ModelFormatError:
            raise
        except (ValueError, TypeError) as exc:
            raise ModelFormatError(f"architecture is not valid JSON (or not a file): {exc}", where) from None
    jsontext.check_depth(spec, "the architecture", where)
    if not isinstance(spec, dict) or spec.get("format", FORMAT) != FORMAT or not isinstance(spec.get("layers"), list) \
            or not spec["layers"] or not all(isinstance(e, dict) for e in spec["layers"]):
        raise ModelFormatError(f'an architecture is {{"format": "{FORMAT}", "layers": [{{"module": ...}}, ...]}}',
                               where)
    for i, e in enumerate(spec["layers"]):
        if not isinstance(e.get("module"), str):
            raise ModelFormatError(f"architecture layer {i}: 'module' must be the name of a torch module as a string "
                                   f"(\"LSTM\", \"Linear\", \"Tanh\", ...), got {e.get('module')!r:.60}", where)
    return spec


def recurrent_layers_from_params(params, cell, num_layers, bidirectional, nonlinearity="tanh",
                                 prefix="", name="rnn", last_returns_sequences=True, source=None):
    """Build one fastrnn Recurrent layer per PyTorch layer from PyTorch-named parameters."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    layers = []
    for k in range(num_layers):
        dirs = []
        for suffix in ([""] + (["_reverse"] if bidirectional else [])):
            def get(key, ndim, required=True):
                full = f"{prefix}{key}_l{k}{suffix}"
                if full not in params:
                    if required:
                        raise ModelFormatError(f"missing parameter {full!r}", source)
                    return None
                arr = params[full]
                if arr.ndim != ndim:
                    raise ModelFormatError(f"parameter {full!r} has shape {arr.shape}, expected {ndim} dimensions",
                                           source)
                return arr

            dirs.append(DirectionWeights(w_ih=get("weight_ih", 2), w_hh=get("weight_hh", 2),
                                         b_ih=get("bias_ih", 1, False), b_hh=get("bias_hh", 1, False),
                                         w_hr=get("weight_hr", 2, False)))
        rows = dirs[0].w_ih.shape[0]
        if rows == 0 or rows % G:
            raise ModelFormatError(f"parameter {prefix}weight_ih_l{k} has {rows} rows; a {cell.upper()} needs a "
                                   f"positive multiple of {G} (gates x hidden_size)", source)
        hidden = rows // G
        proj = 0 if dirs[0].w_hr is None else dirs[0].w_hr.shape[0]
        expected = {"weight_ih": (G * hidden, dirs[0].w_ih.shape[1]), "weight_hh": (G * hidden, proj or hidden),
                    "bias_ih": (G * hidden,), "bias_hh": (G * hidden,), "weight_hr": (proj, hidden)}
        for suffix, w in zip(["", "_reverse"], dirs):
            for key, arr in zip(expected, (w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr)):
                if arr is not None and arr.shape != expected[key]:
                    raise ModelFormatError(f"parameter {prefix}{key}_l{k}{suffix} has shape {arr.shape}, expected "
                                           f"{expected[key]} (hidden_size {hidden} from weight_ih_l{k})", source)
        acts = (nonlinearity,) if cell == "rnn" else ()
        try:
            layers.append(Recurrent(cell=cell, hidden_size=hidden, directions=dirs, proj_size=proj, activations=acts,
                                    return_sequences=last_returns_sequences or k < num_layers - 1,
                                    name=f"{name}_l{k}" if num_layers > 1 else name))
        except ValueError as exc:
            raise ModelFormatError(f"{prefix}*_l{k}: {exc}", source) from None
    return layers


def from_architecture(params, spec, vocabulary=None, name="model", source=None):
    """Build the Model that ``spec`` describes from the state_dict ``params`` ({key: array})."""
    from ..model import Model
    from ..vocab import as_vocabulary

    spec = read_architecture(spec)
    used = set()

    def take(prefix, key, where, required=True):
        full = prefix + key
        if full not in params:
            if required:
                raise ModelFormatError(f"{where}: the state_dict has no {full!r}", source)
            return None
        used.add(full)
        return params[full]

    layers = []
    rec_keys = _recurrent_keys(params)
    entries = spec["layers"]
    rec_positions = [i for i, e in enumerate(entries) if e.get("module") in RECURRENT_MODULES]
    for i, e in enumerate(entries):
        module = e.get("module")
        prefix = e.get("prefix", "")
        where = f"architecture layer {i} ({module})"
        if not isinstance(prefix, str):
            raise ModelFormatError(f"{where}: 'prefix' must be a string", source)
        label = prefix.rstrip(".") or f"{str(module).lower()}_{i}"
        try:
            if module == "Embedding":
                layers.append(Embedding(take(prefix, "weight", where), name=label))
            elif module == "Linear":
                layers.append(Dense(take(prefix, "weight", where), take(prefix, "bias", where, False), name=label))
            elif module in RECURRENT_MODULES:
                cell = RECURRENT_MODULES[module]
                keys = rec_keys.get(prefix, [])
                if not keys:
                    raise ModelFormatError(f"{where}: no {prefix}weight_ih_l0 in the state_dict", source)
                used.update(keys)
                nums = {int(_KEY.match(k).group("layer")) for k in keys}
                bidir = any(k.endswith("_reverse") for k in keys)
                nonlinearity = e.get("nonlinearity", "tanh")
                if nonlinearity not in ("tanh", "relu"):
                    raise ModelFormatError(f"{where}: nonlinearity must be tanh or relu", source)
                last_seq = e.get("return_sequences", True)
                if not isinstance(last_seq, bool) or (not last_seq and i != rec_positions[-1]):
                    raise ModelFormatError(f"{where}: return_sequences false is for the last recurrent module only",
                                           source)
                layers += recurrent_layers_from_params(params, cell, max(nums) + 1, bidir, nonlinearity, prefix, label,
                                                       last_returns_sequences=last_seq, source=source)
            elif module in ACTIVATION_MODULES:
                f = ACTIVATION_MODULES[module]
                layers.append(Identity(name=label) if f == "identity" else Activation(f, name=label))
            elif module == "GELU":
                approx = e.get("approximate", "none")
                if approx not in ("none", "tanh"):
                    raise ModelFormatError(f"{where}: approximate must be 'none' or 'tanh'", source)
                layers.append(Activation("gelu" if approx == "none" else "gelu_tanh", name=label))
            elif module in ("Softmax", "LogSoftmax"):
                dim = e.get("dim", -1)
                if dim != -1:
                    raise ModelFormatError(f"{where}: only dim=-1 (the class axis of the batch-first output) is "
                                           "supported in an architecture file", source)
                layers.append(Activation("softmax" if module == "Softmax" else "log_softmax", name=label))
            else:
                raise UnsupportedLayerError(
                    f"{where}: unknown module {module!r}; known: Embedding, RNN, LSTM, GRU, Linear, "
                    f"{', '.join(sorted(ACTIVATION_MODULES))}, GELU, Softmax, LogSoftmax", source)
        except ValueError as exc:
            if isinstance(exc, ModelFormatError):
                raise
            raise ModelFormatError(f"{where}: {exc}", source) from None
    unused = sorted(set(params) - used)
    if unused:
        raise ModelFormatError(f"the architecture does not use the state_dict entries {unused[:8]}"
                               f"{' ...' if len(unused) > 8 else ''}: add the modules they belong to", source)
    try:
        return Model(layers, vocabulary=as_vocabulary(vocabulary), name=name,
                     metadata={"source": "torch-state-dict", "architecture": spec})
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(str(exc), source) from None


def check_finite_params(params, source=None) -> dict:
    """{key: float32 array}, every value finite."""
    out = {}
    for k, v in params.items():
        try:
            out[k] = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"entry {k!r} is not a numeric tensor: {exc}", source) from None
        if not np.all(np.isfinite(out[k])):
            raise ModelFormatError(f"tensor {k!r} contains NaN or infinite values", source)
    return out
