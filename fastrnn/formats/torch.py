"""PyTorch importer: live nn.RNN / nn.LSTM / nn.GRU modules, and state_dict files read
without torch and without unpickling arbitrary objects.

Understood module shapes (``from_torch``):
1. A bare ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU`` (any num_layers, bidirectional, batch_first,
   bias, proj_size, nonlinearity). ``predict`` returns the module's output sequence batch-major
   (B, T, D*H_out) and its final states equal ``h_n`` / ``c_n`` split per layer.
2. A chain: a module whose children, in registration order (nested ``nn.Sequential`` inlined),
   are applied one after the other: an optional ``nn.Embedding`` first, then any of RNN/LSTM/GRU
   modules (their output sequence goes on), ``nn.Linear``, ``nn.Conv1d``, ``nn.LayerNorm``,
   ``nn.BatchNorm1d`` (eval form), activation modules (``nn.Tanh``, ``nn.ReLU``, ``nn.Sigmoid``,
   ``nn.GELU`` exact or tanh, ``nn.Softmax(dim)``, ``nn.LogSoftmax(dim)``, ``nn.SiLU``,
   ``nn.ELU``, ``nn.LeakyReLU``, ...), ``nn.Identity`` and ``nn.Dropout`` (identity at inference).
   With ``return_sequences=False`` the last recurrent module gives its final state instead (the
   classifier shape: ``torch.cat([h_n[-2], h_n[-1]], 1)`` for a bidirectional one). Tensors are
   batch-major (B, T, F); a ``dim`` is read in the module's own layout ((T, B, F) when its
   recurrent modules are not batch_first); nn.Conv1d and nn.BatchNorm1d act on each step's
   features, as in a forward that permutes to channels-first around them. A module's own
   ``forward`` must provably be this chain (never assumed): torch.fx traces it without data and
   it must call the children once each, in registration order, each on what the previous one
   returned (indexing, reshaping and torch.cat of those outputs allowed), with at most an
   activation function after the last child, which must be ``activation=``; then it runs once on
   a small random input and must give the chain's numbers. Otherwise (a loop over time, a sum of
   two Linear outputs, a functional activation between children, out[:, -1] of a bidirectional
   layer read as its final state, ...) UnsupportedLayerError says what to do: pass
   example_inputs, or build a hand-written recurrence with fastrnn.Recurrent. A module without
   a forward of its own (a container) and nn.Sequential are read from their children.
3. A bare ``nn.RNNCell``, ``nn.LSTMCell`` or ``nn.GRUCell``: the layer that applies the cell at
   every step of a sequence (predict (B, T, I) -> h at every step; one step = T of 1 with
   ``initial_state`` the cell's hx). Cells used inside a module's forward need example_inputs.
4. Any other module, with ``example_inputs=(...)``: its forward is captured with torch.export
   and mapped operator by operator (fastrnn.formats.torch_export), loops over cells included.
Anything else raises UnsupportedLayerError naming the child that is not understood.

PyTorch facts used here (../shared/CONVENTIONS.md): keys weight_ih_l{k}[_reverse], weight_hh,
bias_ih, bias_hh, weight_hr (proj); gate blocks LSTM i|f|g|o, GRU r|z|n — already fastrnn's
internal order, so no reordering is needed.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from ..errors import ModelFormatError, UnsupportedLayerError
from ..layers import Dense, Embedding
from ..model import Model
from ..vocab import as_vocabulary
from .safetensors import open_regular_file
from .torch_spec import check_finite_params, from_architecture, infer_architecture, recurrent_layers_from_params

CELLS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def _np(t, name="parameter"):
    arr = t.detach().cpu().float().numpy().copy()
    _check_finite(arr, name)
    return arr


def _check_finite(arr, name, source=None):
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"{name} contains NaN or infinite values", source)


def _module_params(module) -> dict:
    return {k: _np(v, k) for k, v in module.state_dict().items()}


def _layers_from_rnn_module(module, name, last_returns_sequences=True):
    cell = CELLS[type(module).__name__]
    if cell == "rnn" and module.nonlinearity not in ("tanh", "relu"):
        raise UnsupportedLayerError(f"{name}: nonlinearity {module.nonlinearity!r}")
    return recurrent_layers_from_params(
        _module_params(module), cell, module.num_layers, module.bidirectional,
        nonlinearity=getattr(module, "nonlinearity", "tanh"), name=name,
        last_returns_sequences=last_returns_sequences)


def from_torch(obj, return_sequences=True, activation="linear", vocabulary=None, name=None,
               example_inputs=None) -> Model:
    """Build a fastrnn Model from a live PyTorch module (see the module docstring for the shapes).

    return_sequences : for a chain with an RNN module: the output per step (True) or from the
        final state of the last recurrent module (False, classifiers).
    activation : applied after the chain's last layer ("linear", "softmax", "sigmoid", ...).
    vocabulary : text <-> ids for generate/classify: a fastrnn.Vocabulary, a list of tokens (id =
        position), a str of characters or a dict {token: id} (see fastrnn.vocab.as_vocabulary).
    example_inputs : a tuple of example arguments of ``forward``: the forward itself is captured
        with torch.export and mapped operator by operator (any module, not only chains; see
        fastrnn.formats.torch_export). The Model then takes the inputs the forward takes.
    """
    try:
        import torch.nn as nn
    except ImportError as exc:  # pragma: no cover - torch is an optional extra
        raise ImportError("fastrnn.from_torch needs PyTorch: pip install torch==2.13.0 (or, in a fastrnn checkout, "
                          "pip install \".[torch]\")") from exc
    vocabulary = as_vocabulary(vocabulary)
    if example_inputs is not None:
        if not isinstance(obj, nn.Module):
            raise ModelFormatError(f"from_torch expects a torch.nn.Module, got {type(obj).__name__}")
        if return_sequences is not True or activation != "linear":
            raise ValueError("return_sequences= and activation= describe chains read without running forward; "
                             "with example_inputs the forward itself says what the model returns")
        from .torch_export import from_exported_module

        return from_exported_module(obj, example_inputs, name=name, vocabulary=vocabulary)
    kind = type(obj).__name__
    if isinstance(obj, (nn.RNNCell, nn.LSTMCell, nn.GRUCell)):
        return _model_from_cell(obj, kind, name, vocabulary)
    if isinstance(obj, (nn.RNN, nn.LSTM, nn.GRU)) and kind in CELLS:
        layers = _layers_from_rnn_module(obj, name=kind.lower())
        return Model(layers, name=name or kind.lower(), vocabulary=vocabulary,
                     metadata={"source": "torch", "torch_module": kind, "batch_first": bool(obj.batch_first)})
    if not isinstance(obj, nn.Module):
        raise ModelFormatError(f"from_torch expects a torch.nn.Module, got {type(obj).__name__}")
    children = _chain_children(obj, nn)
    if not children:
        raise UnsupportedLayerError(f"{kind} has no child modules to read as a chain; pass example_inputs=(...) "
                                    "to capture its forward with torch.export")
    rnn_positions = [i for i, (_, c) in enumerate(children) if type(c).__name__ in CELLS and isinstance(c, nn.RNNBase)]
    time_major = {bool(children[i][1].batch_first) for i in rnn_positions} == {False}
    layers = []
    seq = True  # the tensor between children has a time axis (B, T, F) (or (T, B, F) time-major)
    for i, (cname, child) in enumerate(children):
        where = f"{kind}.{cname} ({type(child).__name__})"
        if isinstance(child, nn.Embedding):
            if i != 0:
                raise UnsupportedLayerError(f"{where} at position {i}: an nn.Embedding must come first in a chain")
            if child.max_norm is not None:
                raise UnsupportedLayerError(f"{kind}.{cname}: nn.Embedding with max_norm changes weights at run time")
            layers.append(Embedding(_np(child.weight, f"{cname}.weight"), name=cname))
        elif i in rnn_positions:
            last = i == rnn_positions[-1]
            layers += _layers_from_rnn_module(child, cname, last_returns_sequences=return_sequences or not last)
            seq = return_sequences or not last
        elif isinstance(child, nn.Linear):
            act = activation if i == len(children) - 1 else "linear"
            layers.append(Dense(_np(child.weight, f"{cname}.weight"),
                                None if child.bias is None else _np(child.bias, f"{cname}.bias"), act, cname))
        else:
            layer = _chain_layer(child, cname, where, nn, seq, time_major)
            if layer is None and isinstance(child, (nn.RNNCell, nn.LSTMCell, nn.GRUCell)):
                raise UnsupportedLayerError(
                    f"{where}: a cell is applied by the loop over time written in {kind}.forward, which fastrnn does "
                    "not read without running it: pass example_inputs=(an example input, ...) and the loop is "
                    "captured with torch.export (loops over nn.RNNCell / nn.LSTMCell / nn.GRUCell become recurrent "
                    "layers)")
            if layer is None:
                raise UnsupportedLayerError(
                    f"{where} at position {i} is not understood: fastrnn reads modules whose children form a chain "
                    "of nn.Embedding (first), nn.RNN/nn.LSTM/nn.GRU, nn.Linear, nn.Conv1d, nn.LayerNorm, "
                    "nn.BatchNorm1d, activation modules (Tanh, ReLU, Sigmoid, GELU, Softmax, LogSoftmax, ...), "
                    "nn.Identity and nn.Dropout; for any other module pass example_inputs=(...) to capture its "
                    "forward with torch.export")
            layers.append(layer)
    if activation != "linear" and not isinstance(children[-1][1], nn.Linear):
        layers.append(_activation_layer(activation, f"{kind}.activation"))
    # a bare container (no forward) or an nn.Sequential: the children in order are the definition
    has_forward = type(obj).forward not in (nn.Module.forward, nn.Sequential.forward)
    if has_forward:
        _check_forward_structure(obj, kind, children, activation, nn)
    try:
        model = Model(layers, vocabulary=vocabulary, name=name or kind.lower(),
                      metadata={"source": "torch", "torch_module": kind})
    except ValueError as exc:
        raise UnsupportedLayerError(f"{kind}: its children do not form a chain fastrnn can run: {exc}") from None
    if has_forward:
        _check_forward_numbers(obj, kind, children, model, return_sequences, time_major, nn)
    return model


# -- is forward the chain of the children? --------------------------------------------------------
# A module read without example_inputs is read from its children; fastrnn accepts that reading only
# when forward provably computes it: torch.fx traces forward symbolically (no data), and the trace
# must call the children once each, in registration order, each on what the previous one returned
# (through indexing, reshaping and torch.cat of its outputs only), with at most an activation after
# the last one (which must be the activation= asked for). Then forward runs once on a small random
# input and must give the model's numbers. Anything else is refused with what to do instead.
_NOT_CHAIN_ADVICE = (
    "Pass example_inputs=(an example input, ...) to capture forward with torch.export (loops over nn.RNNCell / "
    "nn.LSTMCell / nn.GRUCell are understood); for a recurrence written by hand with nn.Linear (the lecture notes' "
    "h = tanh(W_xh x + W_hh h)), build the layer with fastrnn.Recurrent from its matrices (docs/lecture-notes.md, "
    "'Hand-written weights')")
_GLUE_METHODS = {"contiguous", "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "float",
                 "to", "type", "size", "dim", "detach", "clone", "long", "int", "cpu", "__getitem__", "view_as"}
_ACTIVATION_FUNCTIONS = {"softmax": "softmax", "log_softmax": "log_softmax", "sigmoid": "sigmoid", "tanh": "tanh",
                         "relu": "relu"}


def _glue_functions():
    import operator

    import torch
    import torch.nn.functional as F

    glue = {operator.getitem, torch.cat, torch.concat, torch.flatten, torch.squeeze, torch.unsqueeze, torch.transpose,
            torch.permute, torch.reshape, getattr, F.dropout}
    zeros = {torch.zeros, torch.zeros_like}
    acts = {torch.softmax: "softmax", F.softmax: "softmax", torch.log_softmax: "log_softmax",
            F.log_softmax: "log_softmax", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
            F.tanh: "tanh", torch.relu: "relu", F.relu: "relu"}
    return glue, zeros, acts


def _check_forward_structure(module, kind, children, activation, nn):
    """Raise UnsupportedLayerError unless ``module.forward`` applies ``children`` as a chain."""
    import inspect

    import torch.fx

    def refuse(why):
        raise UnsupportedLayerError(f"{kind}: fastrnn reads a module without example_inputs as the chain of its "
                                    f"children only when its forward provably is that chain, and {why}. "
                                    + _NOT_CHAIN_ADVICE)

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    concrete = {p.name: None for p in params[1:] if p.default is None}  # optional arguments left out
    try:
        traced = torch.fx.symbolic_trace(module, concrete_args=concrete or None)
    except Exception as exc:  # noqa: BLE001 - what fx could not follow (a loop over a size, a branch on data)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        refuse(f"its forward cannot be traced without data ({type(exc).__name__}: {line[:200]}); a loop over "
               "time steps or a branch on the data is not a chain")
    glue, zeros, acts = _glue_functions()
    names = [c for c, _ in children]
    passive = {c for c, m in children if isinstance(m, (nn.Dropout, nn.AlphaDropout, nn.Identity))}
    origin = {}  # fx node -> the set of what it is computed from: "in:<arg>" or a child's name
    calls, final_acts = [], []
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    first_input = placeholders[0].name if placeholders else None

    def sources(args):
        out = set()
        for a in _flat_nodes(args, torch.fx.Node):
            out |= origin.get(a, set())
        return out

    last_module = None
    for n in traced.graph.nodes:
        if n.op == "placeholder":
            origin[n] = {f"in:{n.name}"}
        elif n.op == "get_attr":
            origin[n] = set()
        elif n.op == "call_module":
            if n.target not in names:
                refuse(f"its forward calls self.{n.target}, which is not one of the children read as the chain")
            if n.target in [c for c, _ in calls]:
                refuse(f"its forward calls self.{n.target} more than once")
            x_src = sources(n.args[:1])
            expected = {last_module} if last_module is not None else {f"in:{first_input}"}
            if n.target in passive and x_src == expected:
                origin[n] = x_src
                continue
            if x_src != expected:
                what = (f"the output of self.{last_module}" if last_module else f"its input {first_input!r}")
                got = ", ".join(sorted(s[3:] if s.startswith("in:") else f"self.{s}" for s in x_src)) or "constants"
                refuse(f"self.{n.target} is applied to a value computed from {got}, not to {what}")
            extra = sources(list(n.args[1:]) + list(n.kwargs.values()))
            if extra and (type(module.get_submodule(n.target)).__name__ not in CELLS
                          or any(not s.startswith("in:") or s == f"in:{first_input}" for s in extra)):
                refuse(f"self.{n.target} also reads {sorted(extra)} (fastrnn takes initial states of recurrent "
                       "modules only, given to predict as initial_state=)")
            if final_acts:
                refuse(f"its forward applies {final_acts[0]} between self.{last_module} and self.{n.target} (put it "
                       "in the chain as a module, e.g. nn.Tanh())")
            calls.append((n.target, n))
            last_module = n.target
            origin[n] = {n.target}
        elif n.op in ("call_function", "call_method"):
            src = sources((n.args, n.kwargs))
            modules = {s for s in src if not s.startswith("in:")}
            target = n.target
            fname = target if n.op == "call_method" else getattr(target, "__name__", str(target))
            is_glue = (target in glue) if n.op == "call_function" else (target in _GLUE_METHODS)
            if n.op == "call_function" and target in zeros or (n.op == "call_method" and target == "new_zeros"):
                origin[n] = set()  # zero states sized from the input
                continue
            act = acts.get(target) if n.op == "call_function" else _ACTIVATION_FUNCTIONS.get(target)
            if len(modules) > 1:
                refuse(f"its forward combines the outputs of {', '.join('self.' + m for m in sorted(modules))} "
                       f"with {fname} (a sum of layers, a loop or a residual is not a chain)")
            if not is_glue:
                if act is None or modules != {last_module} or last_module is None:
                    refuse(f"its forward computes {fname}(...) on "
                           f"{', '.join(sorted(src)) or 'constants'}, which is not one of the chain's children")
                final_acts.append(f"torch.{act}")
                origin[n] = src
                continue
            origin[n] = src
        elif n.op == "output":
            outs = n.args[0]
            first = outs[0] if isinstance(outs, (list, tuple)) else outs
            src = sources([first])
            if last_module is None or src != {last_module}:
                refuse("its forward does not return the output of its last child")
    called = [c for c, _ in calls]
    missing = [c for c in names if c not in called and c not in passive]
    if missing:
        refuse(f"its forward never calls {', '.join('self.' + c for c in missing)}")
    order = [c for c in names if c in called]
    if order != called:
        refuse(f"its forward calls the children in the order {called}, not in the order they are registered "
               f"({order}), which is the order fastrnn reads")
    applied = [a.split(".")[1] for a in final_acts]
    if len(applied) > 1:
        refuse(f"its forward applies {' and '.join(final_acts)} after the last child")
    if applied and applied[0] != activation:
        raise UnsupportedLayerError(
            f"{kind}.forward applies torch.{applied[0]} to the output of its last child: pass activation="
            f"{applied[0]!r} to from_torch (it is read from the children, which do not include it)")


def _flat_nodes(value, node_type):
    if isinstance(value, node_type):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out += _flat_nodes(v, node_type)
        return out
    return []


def _check_forward_numbers(module, kind, children, model, return_sequences, time_major, nn):
    """Run forward once on a small random input; refuse when it does not give the model's numbers."""
    import torch

    first = children[0][1]
    rng = np.random.default_rng(0)
    B, T = 2, 5
    if isinstance(first, nn.Embedding):
        x = rng.integers(0, first.num_embeddings, size=(B, T))
        tx = torch.as_tensor(x.T if time_major else x, dtype=torch.long)
    else:
        try:
            features = model.input_size
        except ValueError:
            return
        x = rng.standard_normal((B, T, features)).astype(np.float32)
        tx = torch.as_tensor(np.ascontiguousarray(x.transpose(1, 0, 2)) if time_major else x)
    modes = [(m, m.training) for m in module.modules()]  # restored one by one afterwards
    try:
        module.eval()
        with torch.no_grad():
            out = module(tx)
    except Exception:  # noqa: BLE001 - a forward that needs more arguments: the structure check stands
        return
    finally:
        for m, training in modes:
            m.training = training
    if isinstance(out, (list, tuple)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        return
    got = out.detach().cpu().float().numpy()
    want = model.predict(x)
    if time_major and got.ndim == 3:
        got = got.transpose(1, 0, 2)
    if got.shape != want.shape:
        raise UnsupportedLayerError(
            f"{kind}.forward returns shape {tuple(out.shape)} where the chain of its children gives "
            f"{want.shape} (return_sequences={return_sequences}). " + _NOT_CHAIN_ADVICE)
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not diff <= 1e-4 + 1e-4 * float(np.max(np.abs(got), initial=0.0)):
        raise UnsupportedLayerError(
            f"{kind}.forward computes other numbers than the chain of its children (largest difference {diff:.3g} "
            f"on a random input; return_sequences={return_sequences}). " + _NOT_CHAIN_ADVICE)


def _model_from_cell(cell, kind, name, vocabulary):
    """nn.RNNCell / nn.LSTMCell / nn.GRUCell: the layer that applies the cell at every step of a
    sequence (its weights, gate order and biases are those of nn.RNN / nn.LSTM / nn.GRU). predict
    takes (B, T, input_size) and returns h at every step; one step of the cell is predict on
    T = 1 with initial_state = the cell's hx."""
    from ..layers import DirectionWeights, Recurrent

    cell_type = {"RNNCell": "rnn", "LSTMCell": "lstm", "GRUCell": "gru"}[kind]
    act = getattr(cell, "nonlinearity", "tanh")
    if act not in ("tanh", "relu"):
        raise UnsupportedLayerError(f"{kind}: nonlinearity {act!r}")
    weights = DirectionWeights(
        w_ih=_np(cell.weight_ih, "weight_ih"), w_hh=_np(cell.weight_hh, "weight_hh"),
        b_ih=None if cell.bias_ih is None else _np(cell.bias_ih, "bias_ih"),
        b_hh=None if cell.bias_hh is None else _np(cell.bias_hh, "bias_hh"))
    layer = Recurrent(cell=cell_type, hidden_size=cell.hidden_size, directions=[weights],
                      activations=(act,) if cell_type == "rnn" else (), name=kind.lower())
    return Model([layer], name=name or kind.lower(), vocabulary=vocabulary,
                 metadata={"source": "torch", "torch_module": kind})


def _chain_children(module, nn):
    """The chain's modules in registration order, nested nn.Sequential inlined."""
    out = []
    for cname, child in module.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{cname}.{n}", c) for n, c in _chain_children(child, nn)]
        else:
            out.append((cname, child))
    return out


def _activation_layer(function, name, axis=-1):
    from ..layers import Activation

    try:
        return Activation(function, axis=axis, name=name)
    except ValueError as exc:
        raise UnsupportedLayerError(str(exc)) from None


def _chain_layer(child, cname, where, nn, seq, time_major):
    """One non-recurrent child of a chain -> a fastrnn layer (None: not understood).

    The chain's tensors are batch-major inside fastrnn: (B, T, F) sequences and (B, F) vectors.
    A softmax ``dim`` is read in the module's own layout: (T, B, F) when its recurrent modules are
    not batch_first. nn.Conv1d and nn.BatchNorm1d act on the features of each step, as they do in
    a forward that permutes (B, T, C) <-> (B, C, T) around them."""
    from ..layers import BatchNormalization, Conv1D, Identity, LayerNormalization

    simple = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.SiLU: "swish", nn.SELU: "selu",
              nn.Softsign: "softsign", nn.Identity: "identity"}
    for cls, function in simple.items():
        if type(child) is cls:
            return _activation_layer(function, cname)
    if isinstance(child, (nn.Dropout, nn.AlphaDropout)):
        return Identity(name=cname)
    if isinstance(child, nn.GELU):
        return _activation_layer("gelu_tanh" if child.approximate == "tanh" else "gelu", cname)
    if isinstance(child, nn.LeakyReLU):
        from ..layers import Activation

        return Activation("leaky_relu", alpha=float(child.negative_slope), beta=0.0, name=cname)
    if isinstance(child, nn.ELU):
        from ..layers import Activation

        return Activation("elu", alpha=float(child.alpha), beta=0.0, name=cname)
    if isinstance(child, (nn.Softmax, nn.LogSoftmax)):
        function = "softmax" if isinstance(child, nn.Softmax) else "log_softmax"
        if child.dim is None:
            raise UnsupportedLayerError(f"{where}: dim=None (PyTorch's implicit, deprecated choice); give dim=")
        ndim = 3 if seq else 2
        d = child.dim % ndim if -ndim <= child.dim < ndim else None
        if d is None:
            raise UnsupportedLayerError(f"{where}: dim {child.dim} is out of range for a tensor of {ndim} axes")
        axis = {0: 1, 1: 0, 2: 2}[d] if (seq and time_major) else d
        if axis == 0:
            raise UnsupportedLayerError(f"{where}: dim={child.dim} is the batch axis here; fastrnn normalizes each "
                                        "batch row on its own")
        return _activation_layer(function, cname, axis=-1 if axis == ndim - 1 else axis)
    if isinstance(child, nn.LayerNorm):
        if len(child.normalized_shape) != 1:
            raise UnsupportedLayerError(f"{where}: normalized_shape {tuple(child.normalized_shape)} (fastrnn "
                                        "normalizes the last axis only)")
        w = None if child.weight is None else _np(child.weight, f"{cname}.weight")
        b = None if getattr(child, "bias", None) is None else _np(child.bias, f"{cname}.bias")
        return LayerNormalization(child.normalized_shape[0], w, b, float(child.eps), cname)
    if isinstance(child, nn.BatchNorm1d):
        if not child.track_running_stats or child.running_mean is None:
            raise UnsupportedLayerError(f"{where}: without running statistics it normalizes with the batch's own")
        w = None if child.weight is None else _np(child.weight, f"{cname}.weight")
        b = None if child.bias is None else _np(child.bias, f"{cname}.bias")
        return BatchNormalization(_np(child.running_mean, f"{cname}.running_mean"),
                                  _np(child.running_var, f"{cname}.running_var"), w, b, float(child.eps), cname)
    if isinstance(child, nn.Conv1d):
        if child.groups != 1 or child.padding_mode != "zeros":
            raise UnsupportedLayerError(f"{where}: groups={child.groups}, padding_mode={child.padding_mode!r} "
                                        "(fastrnn: groups=1, zero padding)")
        k, d = child.kernel_size[0], child.dilation[0]
        if child.padding == "same":
            total = d * (k - 1)
            pad = [total // 2, total - total // 2]
        elif child.padding == "valid":
            pad = [0, 0]
        else:
            pad = [int(child.padding[0])] * 2
        return Conv1D(_np(child.weight, f"{cname}.weight"), None if child.bias is None else _np(child.bias, f"{cname}.bias"),
                      strides=child.stride[0], padding=pad, dilation_rate=d, name=cname)
    return None


# -- state_dict files without torch and without arbitrary unpickling ------------------------
# A torch.save file is a zip archive (entries stored uncompressed) holding ``<prefix>/data.pkl``
# (a pickle of the dict, whose tensors refer to storages by key) and one ``<prefix>/data/<key>``
# entry of raw little-endian bytes per storage. The pickle is read by a pure-Python unpickler
# that resolves only the handful of globals a state_dict needs (anything else is refused before
# it is called), so reading runs no code from the file. Every size that comes from the file is
# checked against the bytes really present before anything of that size is allocated.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
                 "float16": np.float16, "half": np.float16, "int64": np.int64, "long": np.int64,
                 "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
                 "bool": np.bool_}
MAX_PICKLE_BYTES = 16 * 1024 * 1024  # data.pkl of a state_dict: ~200 bytes per tensor
# A state_dict is an OrderedDict of tensors plus a _metadata dict of dicts: a few levels deep.
MAX_PICKLE_DEPTH = 32
# Work (container items built or walked) allowed per byte of data.pkl: a pickle can refer to one
# memoized object any number of times for a few bytes each (memo amplification); every object
# the unpickler builds from such references, and every reference the result holds, is charged.
PICKLE_WORK_PER_BYTE = 4
WHOLE_MODULE_ADVICE = (
    "fastrnn reads plain state_dicts only and never unpickles other objects (that would run code "
    "from the file). If this is a whole model saved with torch.save(model, path), save its weights "
    "instead: torch.save(model.state_dict(), path), and convert that file")


class _Storage(tuple):
    """(np_dtype, data): a storage read from the archive. A tuple, so a pickle cannot alter it."""

    __slots__ = ()


class _DType(tuple):
    """(np_dtype,): what the pickle's ``torch.FloatStorage`` / ``torch.float32`` names resolve to."""

    __slots__ = ()


class _StateDictUnpickler(pickle._Unpickler):
    """Unpickler that only builds dicts and tensors; any other global is refused.

    Pure Python (pickle._Unpickler) on purpose: the C unpickler allocates a counted opcode's
    claimed length before reading it, this one reads only the bytes that are there."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, zf, prefix, archive_size, source):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.source = zf, prefix, source
        self.archive_size = archive_size
        # Tensors are copied out of their storages; a state_dict's tensors never hold more than
        # the archive's bytes (tied weights are one pickled object), so budget twice that.
        self.bytes_left = 2 * archive_size
        self.storages = {}
        self.work_left = PICKLE_WORK_PER_BYTE * len(data) + 1024

    def charge(self, items):
        self.work_left -= items
        if self.work_left < 0:
            raise self.error("the pickle refers to its objects far more often than a state_dict does (memo "
                             "amplification); refused")

    def ordered_dict(self, *args):
        if args and hasattr(args[0], "__len__"):
            self.charge(len(args[0]))
        return OrderedDict(*args)

    def check_structure(self, obj):
        """Walk the loaded object (every reference, shared ones each time they are met): refuse
        nesting deeper than MAX_PICKLE_DEPTH (later code would recurse into it) and more
        references than the work budget (one tensor referenced millions of times)."""
        todo = [(obj, 1)]
        while todo:
            item, depth = todo.pop()
            if isinstance(item, (dict, list, tuple, set, frozenset)):
                if depth > MAX_PICKLE_DEPTH:
                    raise self.error(f"the pickle nests containers more than {MAX_PICKLE_DEPTH} deep, which a "
                                     "state_dict never does; refused")
                children = list(item.items()) if isinstance(item, dict) else list(item)
                if isinstance(item, OrderedDict):
                    children.append(tuple(vars(item).values()))
                self.charge(len(children) + 1)
                todo.extend((child, depth + 1) for child in children)

    def error(self, message):
        return ModelFormatError(message, self.source)

    def find_class(self, module, name):
        allowed = {
            ("collections", "OrderedDict"): self.ordered_dict,
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }
        fn = allowed.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and name in _STORAGE_DTYPES:
            return _DType((_STORAGE_DTYPES[name],))
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType((_TORCH_DTYPES[name],))
        raise self.error(f"the pickle references {module}.{name}, which a state_dict never contains; refused. "
                         + WHOLE_MODULE_ADVICE)

    def load_build(self):
        # BUILD sets an object's state. A state_dict uses it for one thing only: the _metadata
        # attribute of its OrderedDict. Refuse it on anything else.
        state = self.stack[-1]
        inst = self.stack[-2] if len(self.stack) > 1 else None
        if not (type(inst) is OrderedDict and type(state) is dict):
            raise self.error("the pickle sets the state of an object other than a dict; refused")
        self.stack.pop()
        self.charge(len(state))
        inst.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})

    dispatch[pickle.BUILD[0]] = load_build

    def load_out_of_band(self):
        # Protocol-5 buffers: BYTEARRAY8 would allocate (and zero) a size read from the file
        # before reading the bytes. torch.save never writes these opcodes.
        raise self.error("the pickle uses out-of-band buffer opcodes, which a state_dict never contains")

    for _op in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = load_out_of_band
    del _op

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise self.error(f"unexpected persistent record {pid!r:.80}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, _DType) or not isinstance(key, str) or not _is_count(numel):
            raise self.error("malformed storage record")
        if key in self.storages:
            return self.storages[key]
        entry = f"{self.prefix}data/{key}"
        try:
            info = self.zf.getinfo(entry)
        except KeyError:
            raise self.error(f"storage {entry!r} is missing from the archive") from None
        item = np.dtype(dtype[0]).itemsize
        if info.file_size != numel * item:
            raise self.error(f"storage {key!r}: {info.file_size} bytes, the pickle claims {numel * item}")
        data = np.frombuffer(_read_entry(self.zf, info, self.archive_size, self.source), dtype=dtype[0])
        storage = _Storage((dtype[0], data))
        self.storages[key] = storage
        return storage

    def rebuild_tensor(self, storage, offset, size, stride, *unused):
        """torch._utils._rebuild_tensor_v2: a tensor viewing ``storage`` -> an owned ndarray."""
        if not isinstance(storage, _Storage):
            raise self.error("tensor without storage")
        if not (_is_count(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride) and all(_is_count(v) for v in size + stride)):
            raise self.error(f"malformed tensor record (offset {offset!r:.40}, size {size!r:.60}, "
                             f"stride {stride!r:.60})")
        dtype, data = storage
        count = 1
        for s in size:
            count *= s
        if count == 0:
            if len(size) > 32 or any(s > 2**31 for s in size):
                raise self.error(f"malformed empty tensor of size {size!r:.60}")
            return np.zeros(size, dtype)
        if count > data.size:
            raise self.error(f"tensor of size {size} has more elements than its storage ({data.size})")
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= data.size:
            raise self.error(f"tensor of size {size} reads past its storage of {data.size} elements")
        self.bytes_left -= count * data.itemsize
        if self.bytes_left < 0:
            raise self.error("the tensors would hold more than twice the bytes of the file (overlapping views)")
        arr = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                              strides=tuple(st * data.itemsize for st in stride), writeable=False)
        return np.array(arr)  # own, contiguous copy


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


def _read_entry(zf, info, archive_size, source):
    """The bytes of one archive entry, refusing compressed entries and sizes past the file's end
    (so no allocation is sized by the archive's directory alone)."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise ModelFormatError(f"archive entry {info.filename!r} is compressed; torch.save writes uncompressed "
                               "archives (re-save the file with torch.save)", source)
    if info.compress_size != info.file_size or info.header_offset + info.compress_size > archive_size:
        raise ModelFormatError(f"archive entry {info.filename!r} claims {info.file_size} bytes, more than the "
                               f"file holds (truncated or corrupt archive)", source)
    return zf.read(info)


def read_state_dict(path) -> dict:
    """Read a ``torch.save(state_dict)`` file into {name: ndarray} without torch and without
    running code from the file. Raises ModelFormatError naming the file for anything else."""
    path = str(path)
    f, size = open_regular_file(path)
    with f:
        head = f.read(2)
        f.seek(0)
        if head[:1] == b"\x80":  # the legacy (non-zip) torch.save format: pickles, then raw storages
            try:
                return _read_legacy(f.read(), path)
            except ModelFormatError:
                raise
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                    RecursionError, OSError, struct.error, UnicodeDecodeError, NotImplementedError) as exc:
                raise ModelFormatError(f"corrupt legacy torch.save file: {exc.__class__.__name__}: {exc}",
                                       path) from None
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            what = "file is empty" if size == 0 else f"not a PyTorch state_dict file (zip archive expected): {exc}"
            raise ModelFormatError(what, path) from None
        with zf:
            try:
                return _read_archive(zf, size, path)
            except ModelFormatError:
                raise
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                    zipfile.BadZipFile, RecursionError, OSError, struct.error, UnicodeDecodeError,
                    NotImplementedError) as exc:
                raise ModelFormatError(f"corrupt state_dict file: {exc.__class__.__name__}: {exc}", path) from None


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


class _LegacyStorage(tuple):
    """(key, np_dtype, numel): a storage of a legacy file, whose bytes follow the pickles."""

    __slots__ = ()


class _LegacyTensor(tuple):
    """(storage, offset, size, stride): a tensor to build once the storages are read."""

    __slots__ = ()


class _LegacyUnpickler(_StateDictUnpickler):
    """The same restrictions; storages and tensors are placeholders until the storages are read."""

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise self.error(f"unexpected persistent record {pid!r:.80}")
        _, dtype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise self.error("storage views (legacy view_metadata) are not supported; re-save the file with a "
                             "current PyTorch: torch.save(model.state_dict(), path)")
        if not isinstance(dtype, _DType) or not isinstance(key, str) or not _is_count(numel):
            raise self.error("malformed storage record")
        storage = self.storages.setdefault(key, _LegacyStorage((key, dtype[0], numel)))
        if storage[1:] != (dtype[0], numel):
            raise self.error(f"storage {key!r} is described twice, differently")
        return storage

    def rebuild_tensor(self, storage, offset, size, stride, *unused):
        if not isinstance(storage, _LegacyStorage):
            raise self.error("tensor without storage")
        return _LegacyTensor((storage, offset, size, stride))


def _read_legacy(data, path):
    """The legacy torch.save format (``_use_new_zipfile_serialization=False``, PyTorch < 1.6):
    pickles of the magic number, the protocol version and sys_info, then the object's pickle
    (storages as persistent ids), then the sorted storage keys; then, per key, an int64 element
    count and the raw little-endian bytes. Read with the same restricted unpickler."""
    stream = io.BytesIO(data)

    def small_pickle():
        u = _StateDictUnpickler(b"", None, "", len(data), path)
        u._file_read, u._file_readline = stream.read, stream.readline  # one stream, pickle after pickle
        return u.load()

    magic = small_pickle()
    if magic != LEGACY_MAGIC:
        raise ModelFormatError("a pickle, but not a torch.save file (wrong magic number); refused", path)
    version = small_pickle()
    if version != LEGACY_PROTOCOL:
        raise ModelFormatError(f"legacy torch.save protocol {version!r:.20}; fastrnn reads {LEGACY_PROTOCOL}", path)
    sys_info = small_pickle()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise ModelFormatError("tensors are stored big-endian; fastrnn reads little-endian files only", path)
    u = _LegacyUnpickler(b"", None, "", len(data), path)
    u._file_read, u._file_readline = stream.read, stream.readline
    obj = u.load()
    keys = small_pickle()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(u.storages):
        raise ModelFormatError("the storage key list does not match the storages the pickle uses", path)
    arrays = {}
    for key in keys:
        _, dtype, numel = u.storages[key]
        head = stream.read(8)
        if len(head) != 8:
            raise ModelFormatError(f"storage {key!r} is missing (truncated file)", path)
        (count,) = struct.unpack("<q", head)
        item = np.dtype(dtype).itemsize
        if count != numel:
            raise ModelFormatError(f"storage {key!r}: {count} elements, the pickle claims {numel}", path)
        raw = stream.read(count * item)
        if len(raw) != count * item:
            raise ModelFormatError(f"storage {key!r} is truncated", path)
        arrays[key] = np.frombuffer(raw, dtype=dtype)
    if not isinstance(obj, dict):
        raise ModelFormatError(f"the file holds a {type(obj).__name__}, not a state_dict", path)
    out = {}
    zipped = _StateDictUnpickler(b"", None, "", len(data), path)  # for its checked tensor rebuild
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, _LegacyTensor):
            raise ModelFormatError(
                f"entry {k!r:.60} is not a tensor (a training checkpoint? save model.state_dict() on its own)", path)
        storage, offset, size, stride = v
        out[k] = zipped.rebuild_tensor(_Storage((storage[1], arrays[storage[0]])), offset, size, stride)
    return out


def _read_archive(zf, size, path):
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise ModelFormatError("archive has no single data.pkl: not a torch.save file", path)
    prefix = pkl[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in zf.namelist():
        order = _read_entry(zf, zf.getinfo(f"{prefix}byteorder"), size, path)
        if order != b"little":
            raise ModelFormatError(f"tensors are stored with byte order {order[:16]!r}; fastrnn reads little-endian "
                                   "files only", path)
    info = zf.getinfo(pkl[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise ModelFormatError("data.pkl is implausibly large for a state_dict", path)
    unpickler = _StateDictUnpickler(_read_entry(zf, info, size, path), zf, prefix, size, path)
    obj = unpickler.load()
    unpickler.check_structure(obj)
    if not isinstance(obj, dict):
        raise ModelFormatError(f"the file holds a {type(obj).__name__}, not a state_dict", path)
    out = {}
    total = 0
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise ModelFormatError(
                f"entry {k!r:.60} is not a tensor (a training checkpoint? save model.state_dict() on its own)", path)
        total += v.nbytes
        if total > 2 * size + 2**20:  # each reference to a shared tensor would be read and checked again
            raise ModelFormatError("the state_dict refers to its tensors far more often than the file could hold "
                                   "(memo amplification); refused", path)
        out[k] = v
    return out




def from_state_dict(params, cell, return_sequences=True, activation="linear", vocabulary=None, name="model",
                    source=None) -> Model:
    """Build a Model from a PyTorch state_dict ({name: array}) of the chain
    [Embedding] -> RNN modules -> [Linear]. ``cell``: "lstm" | "gru" | "rnn_tanh" | "rnn_relu".
    Layer count, sizes, direction and projection come from the tensor names and shapes. The
    architecture this assumes is fastrnn.formats.torch_spec.infer_architecture's (stored in the
    model's metadata); for anything else (a Tanh between layers, a LogSoftmax) describe the network
    with from_architecture. ``source`` (the file name) is named in every ModelFormatError."""
    if cell not in ("lstm", "gru", "rnn", "rnn_tanh", "rnn_relu"):
        raise ValueError(f"cell must be lstm, gru, rnn_tanh or rnn_relu; got {cell!r}")
    params = check_finite_params(params, source)
    spec = infer_architecture(params, "rnn_tanh" if cell == "rnn" else cell, return_sequences, activation, source)
    return from_architecture(params, spec, vocabulary=vocabulary, name=name, source=source)


def _layer(cls, source, *args, **kwargs):
    """Construct a layer; a shape that does not fit becomes a ModelFormatError naming the file."""
    try:
        return cls(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(str(exc), source) from None
