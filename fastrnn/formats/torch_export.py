"""PyTorch modules of any shape: capture ``forward`` with ``torch.export`` and map its ATen
operators onto fastrnn layers (``fastrnn.from_torch(module, example_inputs=(...))``).

How a captured program becomes a fastrnn graph:

- **Inputs** are the forward's tensor arguments, in order and by name. ``torch.export`` runs with
  every axis marked ``Dim.AUTO``: the axis that stays symbolic and is the batch axis of the
  recurrent / convolution operators (else axis 0 of the first input) is *the batch*. A model
  whose forward works on one unbatched example (ids of shape (T,), PyTorch's "unbatched input")
  has no symbolic batch axis: the Model then takes that example's shape exactly, without a batch
  axis. fastrnn's graph is batch-major inside; the Model's ``metadata["batch_axes"]`` records,
  per input and output, where the user's batch axis is (an int, or None for "no batch axis")
  and ``Model.predict`` moves it (or adds/drops a batch of one) at the boundary. So a module that
  computes ``LogSoftmax(dim=1)`` on (T, V) keeps computing it over V, and ``predict`` takes and
  returns exactly the arrays the forward takes and returns.
- **Layouts**: each PyTorch tensor is held as a fastrnn tensor plus ``order``, the PyTorch axis
  at each fastrnn axis (fastrnn axis 0 is always the batch). ``permute`` / ``transpose`` only
  change ``order``; a Permute layer is inserted where an operator needs its axes elsewhere
  (Dense on the features, Recurrent on (B, T, F), Conv1D channels-last), so ``x.permute(0, 2, 1)``
  around ``nn.Conv1d`` costs nothing.
- **Time axis**: torch.export fixes the sequence length of recurrent operators to the example's;
  fastrnn's layers do not need it, so the Model takes any length (float inputs keep their last
  axis, the features, fixed). A forward that reshapes using that length (e.g. flattens the whole
  sequence) still only runs at the example's length.
- **Operators** understood: embedding; lstm / gru / rnn_tanh / rnn_relu (flat weights, any
  num_layers, bidirectional, batch_first, initial states from inputs; ``h_n`` read as stacked
  per-layer states); linear, matmul / mm / addmm with a constant weight; element-wise
  activations (tanh, relu, sigmoid, gelu exact / tanh, leaky_relu, elu, silu, softplus, selu,
  hardsigmoid, softsign); softmax / log_softmax on any non-batch axis; select, slice; cat;
  add / sub / mul / div by tensors, constants and numbers; neg; permute, transpose, t; view,
  reshape, flatten, squeeze, unsqueeze; mean / amax / max over time; conv1d; layer_norm;
  batch_norm (eval); dropout (identity); getitem of tuple outputs; constant sub-expressions
  (evaluated once here with torch); dtype casts that keep ids ids and numbers numbers
  (``torch.LongTensor(ids)``, ``ids.long()``, ``x.float()``; ids turned into numbers are refused).
  Anything else raises UnsupportedLayerError naming the ATen operator and the line of the user's
  source that produced it.
- **Loops over time**: torch.export unrolls ``for t in range(x.size(1))`` (and ``x.unbind(1)``);
  ``x[:, t]`` becomes a Step; an unrolled loop of nn.RNNCell / nn.LSTMCell / nn.GRUCell
  (aten.rnn_tanh_cell, rnn_relu_cell, lstm_cell, gru_cell) over every step from step 0, from zeros
  (torch.zeros inside forward) or given states, becomes one Recurrent node; operators applied alike
  to every step (a Linear head, an activation) are mapped once on the whole sequence;
  ``torch.stack(outputs, dim)`` / ``torch.cat`` of unsqueezed outputs gives the sequence back, and
  the last step's value is read from the layer's final state. Steps that depend on each other
  without a cell (a recurrence written with nn.Linear) are refused, pointing to fastrnn.Recurrent.
  Give examples with a batch of 2 or more: torch.export fixes a batch of one.
"""
from __future__ import annotations

import operator
import re
import warnings

import numpy as np

from ..errors import ModelFormatError, UnsupportedLayerError
from ..graph import Graph, GraphBuilder, Input, Node
from ..layers import (Activation, BatchNormalization, Concatenate, Conv1D, Dense, DirectionWeights, Embedding,
                      GlobalPooling1D, Identity, LayerNormalization, Merge, Permute, Recurrent, Reshape, Select,
                      Slice)
from ..layers.constant import Constant
from ..layers.activation import FRAMEWORK_ACTIVATIONS

f32 = np.float32
BIG = 2 ** 62

# ---------------------------------------------------------------------------------------------
# values of the captured program while it is mapped
# ---------------------------------------------------------------------------------------------


class T:
    """A PyTorch tensor held as a fastrnn tensor ``ref``; ``order[j]`` is the PyTorch axis at
    fastrnn axis j (order[0] None: the fastrnn batch axis has no PyTorch axis, an unbatched
    tensor); ``shape`` is the PyTorch shape (ints; symbolic sizes as strings)."""

    __slots__ = ("ref", "order", "shape")

    def __init__(self, ref, order, shape):
        self.ref, self.order, self.shape = ref, tuple(order), tuple(shape)

    @property
    def ndim(self):
        return len(self.shape)


class States:
    """``h_n`` / ``c_n`` of a recurrent operator, (L*D, B, H) in PyTorch: one fastrnn tensor
    (B, H) per layer and direction, stacked only if something needs the whole tensor."""

    __slots__ = ("refs", "shape", "batch_axis")

    def __init__(self, refs, shape, batch_axis):
        self.refs, self.shape, self.batch_axis = list(refs), tuple(shape), batch_axis


class Zeros:
    """A zero tensor whose size depends on the batch (PyTorch's default initial state)."""

    def __init__(self, shape):
        self.shape = tuple(shape)


class Sym:
    """A symbolic size (``x.size(0)``): only ever used as an argument of shape operators, whose
    result shape is read from the captured metadata instead."""


TIME = "time"  # in a T's order: the fastrnn axis of a loop's time steps (it has no PyTorch axis)


class Lazy:
    """A value computed on first use, once (the final-state form of a loop's last step)."""

    __slots__ = ("fn", "value")

    def __init__(self, fn):
        self.fn, self.value = fn, None

    def __call__(self):
        if self.value is None:
            self.value = self.fn()
        return self.value


class Step:
    """Step ``t`` (of ``length``) of a sequence, as a loop over time sees it: the PyTorch tensor of
    one step, held as the whole sequence ``seq`` (a T whose order holds TIME; its ``shape`` is
    the per-step PyTorch shape). ``index`` is the index the forward used (-1 for the last step).
    ``final``: a Lazy giving the value through the recurrent layer's final state (the last step
    of a cell loop), else None. ``loop``: the cell loop whose output this step is. ``expanded``:
    the step was unsqueezed at that PyTorch axis (to be concatenated along it)."""

    __slots__ = ("seq", "t", "index", "length", "final", "loop", "expanded")

    def __init__(self, seq, t, length, index=None, final=None, loop=None, expanded=None):
        self.seq, self.t, self.length = seq, t, length
        self.index = t if index is None else index
        self.final, self.loop, self.expanded = final, loop, expanded

    @property
    def shape(self):
        return self.seq.shape

    @property
    def ndim(self):
        return len(self.seq.shape)


class CellC:
    """The cell state c of an LSTM cell loop at step ``t`` (only the next step reads it, or the
    final c when it is the last step)."""

    __slots__ = ("loop", "t", "final")

    def __init__(self, loop, t, final=None):
        self.loop, self.t, self.final = loop, t, final


class CellLoop:
    """An unrolled loop of one nn.RNNCell / nn.LSTMCell / nn.GRUCell over the steps of ``x_seq``,
    mapped to one Recurrent node (``node``)."""

    __slots__ = ("key", "x_seq", "y_seq", "node", "cell", "t", "last_h", "last_c", "kind")

    def __init__(self, key, x_seq, y_seq, node, cell, kind):
        self.key, self.x_seq, self.y_seq, self.node, self.cell, self.kind = key, x_seq, y_seq, node, cell, kind
        self.t, self.last_h, self.last_c = -1, None, None


CELL_OPS = {"lstm_cell": ("lstm", "tanh", "LSTMCell"), "gru_cell": ("gru", "tanh", "GRUCell"),
            "rnn_tanh_cell": ("rnn", "tanh", "RNNCell"), "rnn_relu_cell": ("rnn", "relu", "RNNCell")}
HAND_WRITTEN_ADVICE = (
    "fastrnn maps loops over time of nn.RNNCell / nn.LSTMCell / nn.GRUCell (and nn.RNN / nn.LSTM / nn.GRU modules); "
    "a recurrence written with nn.Linear (or other layers) cannot be proven to be one of fastrnn's cells, so "
    "build that layer with fastrnn.Recurrent from the matrices (docs/lecture-notes.md, 'Hand-written weights')")


def _is_graph_value(v):
    return isinstance(v, (T, States, Zeros, Step, CellC))


def _sizes(node):
    val = node.meta.get("val")
    shape = getattr(val, "shape", None)
    if shape is None:
        return None
    return tuple(int(s) if _concrete(s) else _size_str(s) for s in shape)


def _size_str(s):
    """A symbolic size as text; a size torch.export specialized (a loop over range(x.size(1)) fixes
    it) prints as its number, which is read back as an int."""
    text = str(s)
    return int(text) if text.isdigit() else text


def _concrete(s):
    return isinstance(s, int)


def _source_line(node):
    """'file:line: code' of the user's innermost frame that produced ``node`` (from
    node.meta['stack_trace']; frames inside torch itself are skipped)."""
    lines = (node.meta.get("stack_trace") or "").splitlines()
    frames = []
    for i, line in enumerate(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+), in (\S+)', line)
        if m:
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            code = "" if nxt.startswith("File ") else nxt
            frames.append((m.group(1), m.group(2), code))
    if not frames:
        return "an unknown line (no stack trace recorded)"
    user = [f for f in frames if "/torch/" not in f[0].replace("\\", "/")]
    path, line, code = (user or frames)[-1]
    return f"{path}:{line}" + (f" `{code}`" if code else "")


def _op_name(target):
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return str(target)  # e.g. aten.cumsum.default
    return getattr(target, "__name__", str(target))


def _short_name(target):
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(target, "__name__", str(target))


# ---------------------------------------------------------------------------------------------
# the mapper
# ---------------------------------------------------------------------------------------------

# aten's parameter-free element-wise operators, mapped by the table every importer shares (elu,
# softplus, hardsigmoid, leaky_relu take parameters: their op_ methods map them)
ELEMENTWISE = {k: FRAMEWORK_ACTIVATIONS[k] for k in ("tanh", "relu", "sigmoid", "silu", "selu", "softsign", "exp")}
IDENTITY_OPS = {"clone", "contiguous", "detach", "alias", "lift_fresh_copy", "dropout", "feature_dropout",
                "alpha_dropout", "feature_alpha_dropout", "_to_copy", "to", "type_as"}
RNN_OPS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}
RESHAPE_OPS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze"}


class Mapper(GraphBuilder):
    def __init__(self, ep, module_name, input_names):
        super().__init__(input_names)
        self.ep = ep
        self.module_name = module_name
        self.layer_cache = {}
        self.permute_cache = {}
        self.unbatched = False
        self.input_names = set(input_names)
        self.step_seqs = {}   # (ref, order) -> the seq T of the Steps selected from that tensor
        self.step_cache = {}  # per-step operator + its arguments -> the sequence it maps to
        self.loops = []

    # -- graph building --------------------------------------------------------------------
    def unique(self, base):
        """An FX node name made a fastrnn node name: characters other than [0-9A-Za-z_.] become "_"."""
        return super().unique(re.sub(r"[^0-9A-Za-z_.]", "_", base) or "node")

    fresh = unique

    def materialize(self, v, order, fx):
        """v's fastrnn tensor laid out as ``order`` (a Permute node when it is not already)."""
        order = tuple(order)
        if v.order == order:
            return v.ref
        if v.order[0] != order[0]:
            self.fail(fx, "moves the batch axis to another position, which fastrnn's batch-major graph cannot do")
        key = (v.ref, order)
        ref = self.permute_cache.get(key)
        if ref is None:
            dims = tuple(v.order.index(a) for a in order[1:])
            ref = self.add(f"{v.ref[0]}_permute", Permute(dims, name=f"{v.ref[0]}_permute"), [v.ref])
            self.permute_cache[key] = ref
        return ref

    def canonical(self, v):
        """The layout with the batch first and the other axes in PyTorch's order."""
        b = v.order[0]
        return (b,) + tuple(a for a in range(v.ndim) if a != b)

    def fail(self, fx, why):
        raise UnsupportedLayerError(
            f"torch.export of {self.module_name}: {_op_name(fx.target) if fx.op == 'call_function' else fx.name} "
            f"at {_source_line(fx)} {why}")

    def unsupported(self, fx):
        raise UnsupportedLayerError(
            f"torch.export of {self.module_name}: the operator {_op_name(fx.target)} (at {_source_line(fx)}) has "
            "no fastrnn equivalent; see fastrnn.formats.torch_export for the operators understood")

    def tensor(self, v, fx, what="input"):
        if isinstance(v, States):
            return self.stack_states(v, fx)
        if isinstance(v, Step):
            return self.step_value(v, fx)
        if isinstance(v, CellC):
            if v.final is None:
                self.fail(fx, f"reads the cell state c of step {v.t} of an nn.LSTMCell loop; fastrnn maps the cell "
                              "state only as the next step's state or the final one")
            return v.final()
        if isinstance(v, Zeros):
            self.fail(fx, "computes with a zero tensor made inside forward (torch.zeros) other than as the initial "
                          "state of a recurrent module or cell. " + HAND_WRITTEN_ADVICE)
        if not isinstance(v, T):
            self.fail(fx, f"reads a {what} that is not a tensor computed from the model's inputs ({type(v).__name__})")
        return v

    def const(self, v, fx):
        import torch

        if isinstance(v, torch.Tensor):
            arr = v.detach().cpu().float().numpy()
            if not np.all(np.isfinite(arr)):
                raise ModelFormatError(f"{self.module_name}: a constant of {fx.name} contains NaN or infinity")
            return arr
        self.fail(fx, "needs a constant tensor (a parameter or buffer) here")

    def axis_of(self, v, dim, fx):
        dim = int(dim) % v.ndim
        if v.order[0] == dim:
            self.fail(fx, f"works along the batch axis (dim {dim}), which fastrnn cannot do")
        return dim, v.order.index(dim)

    def stack_states(self, s, fx):
        """States (L*D, B, H) -> one tensor (B, L*D, H) (order: PyTorch axis 1 first)."""
        H = s.shape[-1]
        parts = [self.add(f"{r[0]}_state", Reshape((1, H), name=f"{r[0]}_state"), [r]) for r in s.refs]
        if len(parts) == 1:
            ref = parts[0]
        else:
            ref = self.add(f"{fx.name}_stack", Concatenate(axis=1, name=f"{fx.name}_stack"), parts)
        b = s.batch_axis
        order = (b,) + tuple(a for a in range(3) if a != b) if b is not None else (None, 0, 1)
        return T(ref, order, s.shape)

    # -- one operator ------------------------------------------------------------------------
    def map_node(self, fx, args, kwargs):
        target = fx.target
        if target is operator.getitem:
            seq, i = args
            if isinstance(seq, (list, tuple)):
                return seq[i]
            self.unsupported(fx)
        name = _short_name(target)
        shape = _sizes(fx)
        if name == "sym_size":
            return Sym()
        flat = _flatten(args) + _flatten(list(kwargs.values()))
        if name in ("zeros", "new_zeros", "zeros_like") and any(isinstance(a, (Sym, T, States, Zeros)) for a in flat):
            return Zeros(shape)  # zeros sized by the batch: PyTorch's default initial state
        if not any(_is_graph_value(a) for a in flat):
            if any(isinstance(a, Sym) for a in flat):
                return Sym()  # arithmetic on sizes, read back from the metadata where it is used
            return self.fold(fx, args, kwargs)
        if name in CELL_OPS:
            return self.op_cell(fx, name, args)
        if any(isinstance(a, (Step, CellC)) for a in flat):
            return self.map_steps(fx, name, args, kwargs, shape, flat)
        return self.dispatch(fx, name, args, kwargs, shape)

    def dispatch(self, fx, name, args, kwargs, shape):
        method = getattr(self, f"op_{name}", None)
        if method is not None:
            return method(fx, args, kwargs, shape)
        if name in IDENTITY_OPS:
            x = args[0]
            dtype = kwargs.get("dtype", args[1] if name == "to" and len(args) > 1 else None)
            if name in ("_to_copy", "to") and dtype is not None:
                self.check_cast(fx, dtype)
            return self.tensor(x, fx) if isinstance(x, States) else x
        if name in ELEMENTWISE:
            return self.activation(fx, args[0], ELEMENTWISE[name])
        if name in RESHAPE_OPS:
            return self.reshape(fx, args, shape, name)
        self.unsupported(fx)

    def check_cast(self, fx, dtype):
        """A dtype conversion inside forward (``x.long()``, ``torch.LongTensor(x)``, ``x.float()``):
        nothing to do when it keeps the kind of values (token ids stay ids: int64, int32, ...;
        features stay float32 for fastrnn); refused when it turns ids into numbers or back."""
        import torch

        if not isinstance(dtype, torch.dtype):
            return  # a device or a tensor's dtype given as ``to(other)``: no change of kind recorded here
        val = fx.args[0].meta.get("val") if isinstance(fx.args[0], torch.fx.Node) else None
        source = getattr(val, "dtype", None)
        if source is None or dtype == torch.bool or source == torch.bool or dtype.is_complex:
            self.fail(fx, f"converts {source} to {dtype}; fastrnn computes with token ids and float32 values only")
        if source.is_floating_point != dtype.is_floating_point:
            what = "token ids into numbers" if dtype.is_floating_point else "numbers into integers"
            self.fail(fx, f"converts {what} ({source} to {dtype}); fastrnn reads token ids only through an "
                          "embedding and computes everything else in float32")

    def fold(self, fx, args, kwargs):
        """An operator on constants only: evaluate it once with torch."""
        try:
            return fx.target(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - report which operator could not be evaluated
            self.fail(fx, f"on constants could not be evaluated ({type(exc).__name__}: {exc})")

    def activation(self, fx, x, function, alpha=None, beta=None, axis=-1):
        x = self.tensor(x, fx)
        layer = Activation(function, axis=axis, alpha=alpha, beta=beta, name=fx.name)
        return T(self.add(fx.name, layer, [x.ref]), x.order, x.shape)

    # element-wise functions with parameters
    def op_gelu(self, fx, args, kwargs, shape):
        approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return self.activation(fx, args[0], "gelu_tanh" if approximate == "tanh" else "gelu")

    def op_leaky_relu(self, fx, args, kwargs, shape):
        return self.activation(fx, args[0], "leaky_relu", alpha=float(args[1]) if len(args) > 1 else 0.01, beta=0.0)

    def op_elu(self, fx, args, kwargs, shape):
        alpha = float(args[1]) if len(args) > 1 else 1.0
        if any(float(a) != 1.0 for a in args[2:4]):
            self.fail(fx, "has scale / input_scale other than 1")
        return self.activation(fx, args[0], "elu", alpha=alpha, beta=0.0)

    def op_softplus(self, fx, args, kwargs, shape):
        if len(args) > 1 and float(args[1]) != 1.0:
            self.fail(fx, "has beta other than 1")
        if len(args) > 2 and float(args[2]) < 20:
            # above the threshold PyTorch returns x: the same float32 value as softplus from 20 on
            self.fail(fx, f"has threshold {args[2]} < 20, where PyTorch's linear branch differs from softplus")
        return self.activation(fx, args[0], "softplus")

    def op_hardsigmoid(self, fx, args, kwargs, shape):
        return self.activation(fx, args[0], "hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)

    def op_neg(self, fx, args, kwargs, shape):
        return self.activation(fx, args[0], "affine", alpha=-1.0, beta=0.0)

    def _softmax(self, fx, args, function):
        x = self.tensor(args[0], fx)
        dim, axis = self.axis_of(x, args[1], fx)
        nf = len(x.order)
        return self.activation(fx, x, function, axis=-1 if axis == nf - 1 else axis)

    def op_softmax(self, fx, args, kwargs, shape):
        return self._softmax(fx, args, "softmax")

    def op__softmax(self, fx, args, kwargs, shape):
        return self._softmax(fx, args, "softmax")

    def op_log_softmax(self, fx, args, kwargs, shape):
        return self._softmax(fx, args, "log_softmax")

    def op__log_softmax(self, fx, args, kwargs, shape):
        return self._softmax(fx, args, "log_softmax")

    # arithmetic
    def _binary(self, fx, a, b, op, shape):
        if isinstance(a, States):
            a = self.tensor(a, fx)
        if isinstance(b, States):
            b = self.tensor(b, fx)
        if isinstance(a, T) and isinstance(b, T):
            if a.ndim != b.ndim:
                self.fail(fx, f"broadcasts tensors of {a.ndim} and {b.ndim} axes; fastrnn merges tensors of one rank")
            if a.order[0] != b.order[0] and not (a.order[0] is None or b.order[0] is None):
                self.fail(fx, "combines tensors whose batch axes differ")
            rb = self.materialize(b, a.order, fx) if a.order[0] == b.order[0] else None
            if rb is None:
                self.fail(fx, "combines a batched and an unbatched tensor")
            return T(self.add(fx.name, Merge(op, name=fx.name), [a.ref, rb]), a.order, shape or a.shape)
        # one side a tensor, the other a constant tensor
        x, c, x_first = (a, b, True) if isinstance(a, T) else (b, a, False)
        c = self.const(c, fx)
        if op == "divide":
            if not x_first:
                self.fail(fx, "divides by a computed tensor")
            c, op = 1.0 / c, "multiply"
        if c.ndim > x.ndim:
            self.fail(fx, "broadcasts a constant of more axes than the tensor")
        full = c.reshape((1,) * (x.ndim - c.ndim) + c.shape)
        axes = [a for a in x.order if a is not None and a != TIME]
        arr = np.transpose(full, axes)
        for j, a in enumerate(x.order):  # the batch axis of an unbatched tensor, a loop's time axis
            if a is None or a == TIME:
                arr = np.expand_dims(arr, j)
        if arr.shape[0] != 1:
            self.fail(fx, "combines with a constant that varies along the batch axis")
        const = self.add(f"{fx.name}_constant", Constant(arr[0], name=f"{fx.name}_constant"), [])
        if op == "subtract" and not x_first:
            neg = self.activation(fx, x, "affine", alpha=-1.0, beta=0.0)
            return T(self.add(fx.name, Merge("add", name=fx.name), [neg.ref, const]), x.order, shape or x.shape)
        inputs = [x.ref, const] if x_first else [const, x.ref]
        return T(self.add(fx.name, Merge(op, name=fx.name), inputs), x.order, shape or x.shape)

    def _scalar_or_binary(self, fx, args, kwargs, shape, op):
        a, b = args[0], args[1]
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if alpha != 1:
            if isinstance(b, (int, float)):
                b = b * alpha
            else:
                self.fail(fx, "uses alpha other than 1 with a tensor")
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            b = float(b)
            if op == "add":
                return self.activation(fx, a, "affine", alpha=1.0, beta=b)
            if op == "subtract":
                return self.activation(fx, a, "affine", alpha=1.0, beta=-b)
            if op == "multiply":
                return self.activation(fx, a, "affine", alpha=b, beta=0.0)
            if op == "divide":
                return self.activation(fx, a, "affine", alpha=1.0 / b, beta=0.0)
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            a = float(a)
            if op == "add":
                return self.activation(fx, b, "affine", alpha=1.0, beta=a)
            if op == "subtract":
                return self.activation(fx, b, "affine", alpha=-1.0, beta=a)
            if op == "multiply":
                return self.activation(fx, b, "affine", alpha=a, beta=0.0)
            self.fail(fx, "divides a number by a tensor")
        if op == "divide" and isinstance(b, (T, States)):
            self.fail(fx, "divides by a computed tensor")
        return self._binary(fx, a, b, op, shape)

    def op_add(self, fx, args, kwargs, shape):
        return self._scalar_or_binary(fx, args, kwargs, shape, "add")

    def op_sub(self, fx, args, kwargs, shape):
        return self._scalar_or_binary(fx, args, kwargs, shape, "subtract")

    def op_rsub(self, fx, args, kwargs, shape):
        return self._scalar_or_binary(fx, [args[1], args[0]] + list(args[2:]), kwargs, shape, "subtract")

    def op_mul(self, fx, args, kwargs, shape):
        return self._scalar_or_binary(fx, args, kwargs, shape, "multiply")

    def op_div(self, fx, args, kwargs, shape):
        if kwargs.get("rounding_mode"):
            self.fail(fx, "uses a rounding mode")
        return self._scalar_or_binary(fx, args, kwargs, shape, "divide")

    def op_maximum(self, fx, args, kwargs, shape):
        return self._binary(fx, args[0], args[1], "maximum", shape)

    def op_minimum(self, fx, args, kwargs, shape):
        return self._binary(fx, args[0], args[1], "minimum", shape)

    # layers with weights
    def dense(self, fx, x, weight, bias, key):
        x = self.tensor(x, fx)
        last = x.ndim - 1
        if x.order[0] == last:
            self.fail(fx, "multiplies along the batch axis")
        want = (x.order[0],) + tuple(a for a in x.order[1:] if a != last) + (last,)
        ref = self.materialize(x, want, fx)
        layer = self.layer_cache.get(key)
        if layer is None:
            layer = Dense(weight, bias, name=fx.name)
            self.layer_cache[key] = layer
        shape = x.shape[:-1] + (weight.shape[0],)
        return T(self.add(fx.name, layer, [ref]), want, shape)

    def op_linear(self, fx, args, kwargs, shape):
        w = self.const(args[1], fx)
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        b = None if b is None else self.const(b, fx)
        return self.dense(fx, args[0], w, b, ("linear", fx.args[1], fx.args[2] if len(fx.args) > 2 else None))

    def op_matmul(self, fx, args, kwargs, shape):
        if not isinstance(args[0], (T, States)) or _is_graph_value(args[1]):
            self.fail(fx, "multiplies by a computed tensor; fastrnn needs a constant weight on the right")
        w = self.const(args[1], fx)
        if w.ndim != 2:
            self.fail(fx, f"multiplies by a constant of {w.ndim} axes (a matrix is needed)")
        return self.dense(fx, args[0], w.T, None, ("matmul", fx.args[1]))

    op_mm = op_matmul

    def op_addmm(self, fx, args, kwargs, shape):
        if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
            self.fail(fx, "uses alpha / beta other than 1")
        if _is_graph_value(args[0]) or _is_graph_value(args[2]):
            self.fail(fx, "needs a constant bias and weight")
        w = self.const(args[2], fx)
        b = self.const(args[0], fx).reshape(-1)
        return self.dense(fx, args[1], w.T, b, ("addmm", fx.args[2], fx.args[0]))

    def op_embedding(self, fx, args, kwargs, shape):
        weight, ids = self.const(args[0], fx), args[1]
        if not isinstance(ids, T) or ids.ref[0] not in self.input_names or ids.ref[1] != 0:
            self.fail(fx, "looks up ids that are not a model input; fastrnn's Embedding reads token ids straight "
                          "from an input of the model")
        key = ("embedding", fx.args[0])
        layer = self.layer_cache.get(key)
        if layer is None:
            layer = self.layer_cache[key] = Embedding(weight, name=fx.name)
        return T(self.add(fx.name, layer, [ids.ref]), ids.order + (ids.ndim,), shape)

    def op_conv1d(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        w = self.const(args[1], fx)
        b = args[2] if len(args) > 2 else None
        b = None if b is None else self.const(b, fx)
        stride = _one(args[3] if len(args) > 3 else 1)
        padding = args[4] if len(args) > 4 else 0
        dilation = _one(args[5] if len(args) > 5 else 1)
        groups = args[6] if len(args) > 6 else 1
        if groups != 1:
            self.fail(fx, f"is a grouped convolution (groups={groups})")
        k = w.shape[2]
        if isinstance(padding, str):
            if padding == "valid":
                pad = [0, 0]
            else:
                total = dilation * (k - 1)
                pad = [total // 2, total - total // 2]
        else:
            p = _one(padding)
            pad = [p, p]
        if x.ndim == 3:
            if x.order[0] != 0:
                self.fail(fx, "reads an input whose batch is not axis 0")
            want = (0, 2, 1)
        elif x.ndim == 2 and x.order[0] is None:
            want = (None, 1, 0)
        else:
            self.fail(fx, f"reads an input of {x.ndim} axes")
        ref = self.materialize(x, want, fx)
        layer = Conv1D(w, b, strides=stride, padding=pad, dilation_rate=dilation, name=fx.name)
        return T(self.add(fx.name, layer, [ref]), want, shape)

    def op_layer_norm(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        normalized = list(args[1])
        if len(normalized) != 1:
            self.fail(fx, f"normalizes over {len(normalized)} axes (fastrnn: the last axis only)")
        w = args[2] if len(args) > 2 else None
        b = args[3] if len(args) > 3 else None
        eps = float(args[4]) if len(args) > 4 else 1e-5
        last = x.ndim - 1
        if x.order[0] == last:
            self.fail(fx, "normalizes along the batch axis")
        want = (x.order[0],) + tuple(a for a in x.order[1:] if a != last) + (last,)
        ref = self.materialize(x, want, fx)
        layer = LayerNormalization(normalized[0], None if w is None else self.const(w, fx),
                                   None if b is None else self.const(b, fx), eps, fx.name)
        return T(self.add(fx.name, layer, [ref]), want, shape)

    def _batch_norm(self, fx, x, w, b, mean, var, eps, shape):
        x = self.tensor(x, fx)
        if x.order[0] == 1 or x.ndim < 2:
            self.fail(fx, "normalizes along the batch axis")
        want = (x.order[0],) + tuple(a for a in x.order[1:] if a != 1) + (1,)
        ref = self.materialize(x, want, fx)
        layer = BatchNormalization(self.const(mean, fx), self.const(var, fx), None if w is None else self.const(w, fx),
                                   None if b is None else self.const(b, fx), float(eps), fx.name)
        return T(self.add(fx.name, layer, [ref]), want, shape)

    def op_batch_norm(self, fx, args, kwargs, shape):
        x, w, b, mean, var, training = args[:6]
        if training:
            self.fail(fx, "runs in training mode (call module.eval() first)")
        return self._batch_norm(fx, x, w, b, mean, var, args[7], shape)

    def op__native_batch_norm_legit_no_training(self, fx, args, kwargs, shape):
        x, w, b, mean, var, _momentum, eps = args[:7]
        out = self._batch_norm(fx, x, w, b, mean, var, eps, _sizes(fx.args[0]))
        return [out, None, None]

    # indexing and layout
    def op_select(self, fx, args, kwargs, shape):
        x, dim, index = args[0], int(args[1]), int(args[2])
        if isinstance(x, States):
            dim %= 3
            if dim == 0:
                k = index % len(x.refs)
                b = x.batch_axis
                order = (0, 1) if b is not None else (None, 0)
                return T(x.refs[k], order, shape)
            x = self.tensor(x, fx)
        x = self.tensor(x, fx)
        dim %= x.ndim
        if x.order[0] == dim:
            if self.unbatched and x.shape[dim] == 1:  # the batch of one an unbatched forward made
                return T(x.ref, (None,) + _drop(x.order[1:], dim), shape)
            self.fail(fx, "selects from the batch axis")
        axis = x.order.index(dim)
        size = x.shape[dim]
        if axis == 1 and len(x.order) == 3 and isinstance(size, int) and -size <= index < size:
            return self.time_step(x, dim, index % size, index)  # x[:, t]: a step, mapped when it is used
        ref = self.add(fx.name, Select(axis=axis, index=index, name=fx.name), [x.ref])
        return T(ref, (x.order[0] if x.order[0] is None or x.order[0] < dim else x.order[0] - 1,)
                 + _drop(x.order[1:], dim), shape)

    def op_stack(self, fx, args, kwargs, shape):
        self.fail(fx, "stacks separately computed tensors, as a loop over time steps gathers its outputs, but "
                      "fastrnn found no loop whose steps it could map (with a batch of one, torch.export fixes the "
                      "batch: give example inputs with a batch of 2 or more). " + HAND_WRITTEN_ADVICE)

    def op_unbind(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.ndim
        size = x.shape[dim]
        if x.order[0] == dim or not isinstance(size, int) or x.order.index(dim) != 1 or len(x.order) != 3:
            self.fail(fx, "unbinds an axis other than the time axis of a (batch, time, features) sequence")
        return [self.time_step(x, dim, t, t) for t in range(size)]

    # -- loops over time -----------------------------------------------------------------------
    # torch.export unrolls a Python loop over the steps of a sequence. x[:, t] (select / unbind on
    # the time axis) gives a Step; operators applied alike to every step are mapped once, on the
    # whole sequence (cached by operator and arguments); an unrolled loop of one recurrent cell
    # becomes one Recurrent node; torch.stack / torch.cat of every step in order gives the sequence
    # back. A value that mixes different steps (a recurrence not made of a cell) is refused.
    def time_step(self, x, dim, t, index):
        key = (x.ref, x.order, dim)
        seq = self.step_seqs.get(key)
        if seq is None:
            order = tuple(TIME if a == dim else (a if not isinstance(a, int) else a - (a > dim)) for a in x.order)
            seq = self.step_seqs[key] = T(x.ref, order, tuple(sz for i, sz in enumerate(x.shape) if i != dim))
        return Step(seq, t, x.shape[dim], index=index)

    def step_value(self, v, fx):
        """A Step used as a plain tensor: the loop's final state for its last step, else the step
        selected from the sequence (only right at the example's length for other steps)."""
        if v.final is not None:
            return v.final()
        if v.expanded is not None:
            self.fail(fx, "uses an unsqueezed step of a loop other than to concatenate the steps")
        seq = v.seq
        axis = seq.order.index(TIME)
        name = self.fresh(f"{seq.ref[0]}_step{v.t}")
        ref = self.add(name, Select(axis=axis, index=v.index, name=name), [seq.ref])
        return T(ref, tuple(a for a in seq.order if a != TIME), seq.shape)

    def loop_fail(self, fx, what):
        raise UnsupportedLayerError(
            f"torch.export of {self.module_name}: {_op_name(fx.target)} at {_source_line(fx)} {what}: the forward runs "
            f"a loop over time whose steps depend on each other without a recurrent cell. {HAND_WRITTEN_ADVICE}")

    def map_steps(self, fx, name, args, kwargs, shape, flat):
        """An operator reading steps of a loop (see time_step)."""
        steps = [a for a in flat if isinstance(a, Step)]
        if name == "stack":
            return self.stack_steps(fx, args[0], int(args[1] if len(args) > 1 else kwargs.get("dim", 0)), shape)
        if name in ("cat", "concat") and all(isinstance(a, Step) and a.expanded is not None for a in args[0]):
            dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % len(shape)
            if any(a.expanded != dim for a in args[0]):
                self.fail(fx, "concatenates unsqueezed steps along another axis than the one added")
            return self.stack_steps(fx, args[0], dim, shape, expanded=True)
        if name == "unsqueeze" and isinstance(args[0], Step) and args[0].expanded is None:
            v = args[0]
            dim = int(args[1]) % (v.ndim + 1)
            return Step(v.seq, v.t, v.length, v.index, v.final, v.loop, expanded=dim)
        if any(isinstance(a, CellC) for a in flat):
            self.loop_fail(fx, "reads the cell state of an nn.LSTMCell step")
        if any(isinstance(a, Zeros) for a in flat):
            self.loop_fail(fx, "combines a step with a zero tensor made inside forward")
        others = [a for a in flat if isinstance(a, (T, States))]
        if others or len({(a.t, a.length) for a in steps}) > 1:
            detail = (f"combines step {steps[0].t} of the loop with a value computed outside it" if others else
                      f"combines steps {sorted({a.t for a in steps})} of the loop")
            self.loop_fail(fx, detail)
        if name not in STEP_OPS or any(a.expanded is not None for a in steps):
            sub = _replace(args, lambda v: self.tensor(v, fx) if isinstance(v, Step) else v)
            return self.dispatch(fx, name, sub, _replace(kwargs, lambda v: self.tensor(v, fx)
                                                         if isinstance(v, Step) else v), shape)
        key = (fx.target, _key(args), _key(kwargs))
        seq = self.step_cache.get(key)
        if seq is None:
            seq = self.dispatch(fx, name, _replace(args, lambda v: v.seq if isinstance(v, Step) else v),
                                _replace(kwargs, lambda v: v.seq if isinstance(v, Step) else v), shape)
            if not isinstance(seq, T):
                self.fail(fx, "on a step of a loop gives more than one tensor")
            self.step_cache[key] = seq
        first = steps[0]
        final = None
        if all(a.final is not None for a in steps):
            final = Lazy(lambda: self.dispatch(fx, name, _replace(args, lambda v: v.final() if isinstance(v, Step)
                                                                  else v),
                                               _replace(kwargs, lambda v: v.final() if isinstance(v, Step) else v),
                                               shape))
        return Step(seq, first.t, first.length, first.index, final)

    def stack_steps(self, fx, parts, dim, shape, expanded=False):
        """torch.stack(steps, dim) (or torch.cat of unsqueezed steps): every step of one sequence,
        in order -> that sequence with its time axis at ``dim``."""
        if not parts or not all(isinstance(p, Step) for p in parts):
            self.fail(fx, "stacks loop steps with other tensors")
        seq, n = parts[0].seq, parts[0].length
        if any(p.seq is not seq for p in parts) or [p.t for p in parts] != list(range(n)):
            self.fail(fx, f"stacks steps {[p.t for p in parts]} of a loop over {n} steps; fastrnn maps a loop that "
                          "keeps every step, in order")
        ndim = len(shape)
        dim %= ndim
        order = tuple(dim if a == TIME else (a if not isinstance(a, int) else a + (a >= dim)) for a in seq.order)
        return T(seq.ref, order, shape)

    def op_cell(self, fx, name, args):
        """One step of nn.LSTMCell / nn.GRUCell / nn.RNNCell (aten.lstm_cell, gru_cell, rnn_*_cell)."""
        cell, nonlinearity, cls = CELL_OPS[name]
        x, hx = args[0], args[1]
        h, c = (hx[0], hx[1]) if cell == "lstm" else (hx, None)
        if not isinstance(x, Step) or x.expanded is not None:
            self.fail(fx, f"applies an nn.{cls} to a value that is not one step of a sequence (x[:, t] in a loop "
                          "over time); fastrnn maps a cell that runs over the steps of a sequence")
        key = tuple(getattr(a, "name", a) for a in fx.args[2:])
        loop = h.loop if isinstance(h, Step) else None
        if loop is not None and loop.key == key and h is loop.last_h and (c is None or c is loop.last_c):
            if x.seq is not loop.x_seq or x.t != loop.t + 1:
                self.fail(fx, f"continues the nn.{cls} loop of step {loop.t} on step {x.t} of "
                              f"{'another sequence' if x.seq is not loop.x_seq else 'the sequence'}; fastrnn maps "
                              "a loop over every step in order")
        else:
            if x.t != 0:
                self.fail(fx, f"starts an nn.{cls} loop at step {x.t} or from a state that is not the previous "
                              "step's; fastrnn maps a loop over every step of a sequence, in order, from step 0")
            loop = self.start_loop(fx, cell, nonlinearity, cls, key, x, h, c, args)
        loop.t = x.t
        last = x.t == x.length - 1
        node = loop.node
        y = loop.y_seq
        h_final = Lazy(lambda: T((node, 1), tuple(a for a in y.order if a != TIME), y.shape)) if last else None
        loop.last_h = Step(y, x.t, x.length, final=h_final, loop=loop)
        if cell != "lstm":
            return loop.last_h
        c_final = Lazy(lambda: T((node, 2), tuple(a for a in y.order if a != TIME), y.shape[:-1]
                                 + (loop.cell.hidden_size,))) if last else None
        loop.last_c = CellC(loop, x.t, c_final)
        return [loop.last_h, loop.last_c]

    def start_loop(self, fx, cell, nonlinearity, cls, key, x, h, c, args):
        w_ih, w_hh = self.const(args[2], fx), self.const(args[3], fx)
        b_ih = None if len(args) < 5 or args[4] is None else self.const(args[4], fx)
        b_hh = None if len(args) < 6 or args[5] is None else self.const(args[5], fx)
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        hidden = w_ih.shape[0] // G
        states = [s for s in (h, c) if s is not None]
        zero = [s is None or isinstance(s, Zeros) or _is_zero_constant(s) for s in states]
        if any(zero) and not all(zero):
            self.fail(fx, f"starts the nn.{cls} loop from h given and c zero (or the reverse); give both or neither")
        layer = Recurrent(cell=cell, hidden_size=hidden,
                          directions=[DirectionWeights(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)],
                          activations=(nonlinearity,) if cell == "rnn" else (), return_sequences=True,
                          return_state=True, name=fx.name)
        seq = x.seq
        b = seq.order[0]
        want = (b, TIME) + tuple(a for a in seq.order[1:] if a != TIME)
        inputs = [self.materialize(seq, want, fx)]
        if not all(zero):
            for s in states:
                s = self.tensor(s, fx)
                if s.ndim + (1 if s.order[0] is None else 0) != 2 or s.order[0] != b:
                    self.fail(fx, f"starts the nn.{cls} loop from a state of shape {s.shape}; expected (batch, hidden)")
                inputs.append(s.ref)
        node = self.add(fx.name, layer, inputs)[0]
        h_shape = seq.shape[:-1] + (hidden,)
        y = T((node, 0), want, h_shape)
        loop = CellLoop(key, seq, y, node, layer, cls)
        self.loops.append(loop)
        return loop

    def op_slice(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        dim = int(args[1]) % x.ndim if len(args) > 1 else 0
        start = args[2] if len(args) > 2 else None
        end = args[3] if len(args) > 3 else None
        step = int(args[4]) if len(args) > 4 else 1
        start = None if start is None or start == 0 and step > 0 else int(start)
        end = None if end is None or abs(int(end)) >= BIG else int(end)
        if start is None and end is None and step == 1:
            return x
        if x.order[0] == dim:
            self.fail(fx, "slices the batch axis")
        axis = x.order.index(dim)
        ref = self.add(fx.name, Slice(axis=axis, start=start, stop=end, step=step, name=fx.name), [x.ref])
        return T(ref, x.order, shape)

    def op_cat(self, fx, args, kwargs, shape):
        parts = [self.tensor(v, fx) for v in args[0]]
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % parts[0].ndim
        first = parts[0]
        if first.order[0] == dim:
            self.fail(fx, "concatenates along the batch axis")
        refs = [self.materialize(p, first.order, fx) for p in parts]
        axis = first.order.index(dim)
        return T(self.add(fx.name, Concatenate(axis=axis, name=fx.name), refs), first.order, shape)

    op_concat = op_cat

    def op_permute(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        dims = [int(d) % x.ndim for d in args[1]]
        return T(x.ref, tuple(a if not isinstance(a, int) else dims.index(a) for a in x.order), shape)

    def op_transpose(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        d0, d1 = int(args[1]) % x.ndim, int(args[2]) % x.ndim
        swap = {d0: d1, d1: d0}
        return T(x.ref, tuple(a if not isinstance(a, int) else swap.get(a, a) for a in x.order), shape)

    def op_t(self, fx, args, kwargs, shape):
        x = self.tensor(args[0], fx)
        if x.ndim < 2:
            return x
        return self.op_transpose(fx, [x, 0, 1], {}, shape)

    def reshape(self, fx, args, shape, name):
        x = self.tensor(args[0], fx)
        if shape is None:
            self.unsupported(fx)
        if name in ("unsqueeze", "squeeze") and self.unbatched:
            # an unbatched forward's batch of one (PyTorch's RNNs add and remove it): fastrnn's own
            # batch axis plays that part
            if name == "unsqueeze" and x.order[0] is None:
                d = int(args[1]) % (x.ndim + 1)
                return T(x.ref, (d,) + tuple(a + (a >= d) for a in x.order[1:]), shape)
            if name == "squeeze" and x.order[0] is not None:
                dims = args[1] if len(args) > 1 else [i for i, s in enumerate(x.shape) if s == 1]
                dims = [int(d) % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
                dims = [d for d in dims if x.shape[d] == 1]
                if x.order[0] in dims and len(dims) == 1:
                    d = x.order[0]
                    return T(x.ref, (None,) + tuple(a - (a > d) for a in x.order[1:]), shape)
        b_in = x.order[0]
        if b_in is None:
            b_out = None
            target = tuple(shape)
        else:
            sym = x.shape[b_in]
            hits = [i for i, s in enumerate(shape) if s == sym]
            if len(hits) != 1 or hits[0] != b_in or tuple(x.shape[:b_in]) != tuple(shape[:b_in]):
                self.fail(fx, f"reshapes {x.shape} to {shape} across the batch axis")
            b_out = b_in
            target = tuple(s for i, s in enumerate(shape) if i != b_out)
        free = [i for i, s in enumerate(target) if not isinstance(s, int)]
        if len(free) > 1:
            self.fail(fx, f"reshapes to {shape}, with more than one size known only at run time")
        target = tuple(-1 if not isinstance(s, int) else s for s in target)
        ref = self.materialize(x, self.canonical(x), fx)
        out = self.add(fx.name, Reshape(target, name=fx.name), [ref])
        order = (b_out,) + tuple(a for a in range(len(shape)) if a != b_out) if b_out is not None \
            else (None,) + tuple(range(len(shape)))
        return T(out, order, shape)

    # reductions over time
    def _pool(self, fx, x, dims, keepdim, op, shape):
        x = self.tensor(x, fx)
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        if len(dims) != 1:
            self.fail(fx, f"reduces over {len(dims)} axes (fastrnn pools over the time axis only)")
        dim = int(dims[0]) % x.ndim
        nf = len(x.order)
        if x.order[0] == dim or nf != 3:
            self.fail(fx, f"reduces a tensor of shape {x.shape} over axis {dim}; fastrnn pools (batch, time, "
                          "features) over time")
        rest = [a for a in x.order[1:] if a != dim]
        want = (x.order[0], dim) + tuple(rest)
        ref = self.materialize(x, want, fx)
        layer = GlobalPooling1D(op, keepdims=bool(keepdim), name=fx.name)
        out = self.add(fx.name, layer, [ref])
        if keepdim:
            return T(out, want, shape)
        order = (None if x.order[0] is None else x.order[0] - (x.order[0] > dim),) + tuple(a - (a > dim) for a in rest)
        return T(out, order, shape)

    def op_mean(self, fx, args, kwargs, shape):
        if len(args) < 2:
            self.fail(fx, "averages over every axis")
        return self._pool(fx, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("keepdim", False),
                          "average", shape)

    def op_amax(self, fx, args, kwargs, shape):
        return self._pool(fx, args[0], args[1] if len(args) > 1 else [], args[2] if len(args) > 2 else False,
                          "max", shape)

    def op_max(self, fx, args, kwargs, shape):
        if len(args) < 2 or not isinstance(args[1], int):
            if len(args) >= 2 and isinstance(args[1], (T, States)):
                return self._binary(fx, args[0], args[1], "maximum", shape)
            self.fail(fx, "takes the maximum over every axis")
        val = fx.meta.get("val")
        shape = tuple(val[0].shape) if isinstance(val, (list, tuple)) else None
        values = self._pool(fx, args[0], [args[1]], args[2] if len(args) > 2 else False, "max", shape)
        return [values, None]

    # recurrent operators
    def _rnn(self, fx, args, cell, nonlinearity):
        import torch  # noqa: F401

        x = self.tensor(args[0], fx)
        hx = args[1]
        params, has_biases, num_layers, _dropout, train, bidirectional, batch_first = args[2:9]
        if train:
            self.fail(fx, "runs in training mode (call module.eval() first)")
        D = 2 if bidirectional else 1
        per = len(params) // (num_layers * D)
        expected = 2 + (2 if has_biases else 0)
        if per not in (expected, expected + 1) or per * num_layers * D != len(params):
            self.fail(fx, f"has {len(params)} weight tensors for {num_layers} layer(s) x {D} direction(s)")
        proj = per == expected + 1
        if proj and cell != "lstm":
            self.fail(fx, "has a projection on a cell other than LSTM")
        if x.ndim != 3:
            self.fail(fx, f"reads an input of {x.ndim} axes")
        bt = 0 if batch_first else 1
        if x.order[0] != bt:
            self.fail(fx, "reads a sequence whose batch axis is not the recurrent operator's")
        want = (bt, 1 - bt, 2)
        ref = self.materialize(x, want, fx)
        h0, c0 = (hx[0], hx[1]) if cell == "lstm" else (hx[0] if isinstance(hx, (list, tuple)) else hx, None)
        h0, c0 = (Zeros(()) if _is_zero_constant(s) else s for s in (h0, c0))
        given = [s for s in (h0, c0) if s is not None and not isinstance(s, Zeros)]
        if given and len(given) != (2 if cell == "lstm" else 1):
            self.fail(fx, "starts from h0 given and c0 zero (or the reverse); give both or neither")
        users = {u.args[1] for u in fx.users if u.target is operator.getitem and len(u.users)}
        return_state = bool(users - {0})
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        h_refs, c_refs = [], []
        key = ("rnn", tuple(fx.args[2]))
        cached = self.layer_cache.get(key)
        layers = []
        for k in range(num_layers):
            dirs = []
            for d in range(D):
                ws = [self.const(p, fx) for p in params[(k * D + d) * per:(k * D + d + 1) * per]]
                w_ih, w_hh = ws[0], ws[1]
                b_ih, b_hh = (ws[2], ws[3]) if has_biases else (None, None)
                w_hr = ws[-1] if proj else None
                dirs.append(DirectionWeights(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr))
            hidden = dirs[0].w_ih.shape[0] // G
            name = fx.name if num_layers == 1 else f"{fx.name}_l{k}"
            if cached is not None and cached[k].return_state == return_state:
                layer = cached[k]
            else:
                layer = Recurrent(cell=cell, hidden_size=hidden, directions=dirs,
                                  proj_size=0 if w_hr is None else w_hr.shape[0],
                                  activations=(nonlinearity,) if cell == "rnn" else (), return_sequences=True,
                                  return_state=return_state, name=name)
            layers.append(layer)
            inputs = [ref]
            if given:
                for d in range(D):
                    inputs.append(self.state_input(fx, h0, k * D + d))
                    if cell == "lstm":
                        inputs.append(self.state_input(fx, c0, k * D + d))
            ref = self.add(name, layer, inputs)
            step = 2 if cell == "lstm" else 1
            for d in range(D):
                h_refs.append((ref[0], 1 + d * step))
                if cell == "lstm":
                    c_refs.append((ref[0], 2 + d * step))
        self.layer_cache.setdefault(key, layers)
        out_shape = _sizes(fx)
        val = fx.meta.get("val")
        shapes = [tuple(int(s) if _concrete(s) else str(s) for s in t.shape) for t in val]
        out = T(ref, want, shapes[0] if out_shape is None else shapes[0])
        result = [out, States(h_refs, shapes[1], 1)]
        if cell == "lstm":
            result.append(States(c_refs, shapes[2], 1))
        return result

    def state_input(self, fx, s, index):
        """The (B, H) initial state of layer*direction ``index`` from a (L*D, B, H) tensor."""
        if isinstance(s, States):
            return s.refs[index]
        s = self.tensor(s, fx)
        if s.ndim != 3 or s.order[0] != 1:
            self.fail(fx, f"starts from a state of shape {s.shape}; expected (layers*directions, batch, hidden)")
        ref = self.materialize(s, (1, 0, 2), fx)
        return self.add(f"{fx.name}_h0_{index}", Select(axis=1, index=index, name=f"{fx.name}_h0_{index}"), [ref])

    def op_lstm(self, fx, args, kwargs, shape):
        return self._rnn(fx, args, "lstm", "tanh")

    def op_gru(self, fx, args, kwargs, shape):
        return self._rnn(fx, args, "gru", "tanh")

    def op_rnn_tanh(self, fx, args, kwargs, shape):
        return self._rnn(fx, args, "rnn", "tanh")

    def op_rnn_relu(self, fx, args, kwargs, shape):
        return self._rnn(fx, args, "rnn", "relu")


STEP_OPS = (set(ELEMENTWISE) | IDENTITY_OPS | {
    "linear", "matmul", "mm", "addmm", "add", "sub", "rsub", "mul", "div", "neg", "maximum", "minimum", "softmax",
    "_softmax", "log_softmax", "_log_softmax", "gelu", "leaky_relu", "elu", "softplus", "hardsigmoid", "cat", "concat",
    "layer_norm"})


def _replace(value, fn):
    """``value`` (args / kwargs, nested lists and tuples) with fn applied to every leaf."""
    if isinstance(value, dict):
        return {k: _replace(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_replace(v, fn) for v in value)
    return fn(value)


def _key(value):
    """A hashable description of an operator's arguments: the same for every step of a loop
    (a Step counts by its sequence, a tensor constant by identity)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, Step):
        return ("step", id(value.seq), value.expanded)
    if isinstance(value, (T, States, Zeros, CellC, Sym)):
        return ("value", id(value))
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return ("object", id(value))


def _is_zero_constant(v):
    import torch

    return isinstance(v, torch.Tensor) and not bool(v.any())


def _one(v):
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise UnsupportedLayerError(f"a 1-D convolution parameter has {len(v)} entries: {v}")
        v = v[0]
    return int(v)


def _drop(order, dim):
    return tuple(a if not isinstance(a, int) else a - (a > dim) for a in order if a != dim)


def _flatten(args):
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten(a))
        else:
            out.append(a)
    return out


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------

RNN_TARGETS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def from_exported_module(module, example_inputs, name=None, vocabulary=None):
    """Capture ``module.forward`` on ``example_inputs`` with torch.export and build a Model."""
    import torch
    from torch.export import Dim

    from ..model import Model

    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    kind = type(module).__name__
    module = module.eval()
    dynamic = tuple({i: Dim.AUTO for i in range(a.ndim)} if isinstance(a, torch.Tensor) and a.ndim else None
                    for a in example_inputs)
    try:
        with warnings.catch_warnings():  # nn.LSTM's _flat_weights notice: about training, not this use
            warnings.simplefilter("ignore", UserWarning)
            ep = torch.export.export(module, example_inputs, dynamic_shapes=dynamic)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; say what failed
        raise UnsupportedLayerError(f"torch.export could not capture {kind}.forward on the example inputs: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    from torch.export.graph_signature import InputKind

    consts = {}
    user_inputs = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(spec.arg.name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = ep.state_dict.get(spec.target) if spec.target in ep.state_dict else ep.constants.get(spec.target)
            consts[spec.arg.name] = value
        else:
            raise UnsupportedLayerError(f"torch.export of {kind}: input {spec.arg.name} of kind {spec.kind} "
                                        "is not understood")
    graph = ep.graph
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    # the batch: the symbolic batch axis of the first recurrent (else convolution) operator's input
    batch_symbol, anchored = None, False
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        op = _short_name(n.target)
        if op in RNN_TARGETS or op == "conv1d" or op in CELL_OPS:
            shp = _sizes(n.args[0])
            if op == "conv1d":
                s = shp[0] if len(shp) == 3 else 1
            elif op in CELL_OPS:  # one step (B, I) of a loop (an unbatched cell reads (I,))
                s = shp[0] if len(shp) == 2 else 1
            else:
                s = shp[0 if n.args[8] else 1]
            if not isinstance(s, int):
                batch_symbol = s
            anchored = True  # a batch of 1 here: an unbatched forward (PyTorch adds that batch itself)
            break
    if batch_symbol is None and not anchored:
        for nm in user_inputs:
            shp = _sizes(placeholders[nm])
            if shp and not isinstance(shp[0], int):
                batch_symbol = shp[0]
                break
    mapper = Mapper(ep, kind, user_inputs)
    mapper.unbatched = batch_symbol is None
    inputs, input_axes, env = [], [], {}
    for nm in user_inputs:
        node = placeholders[nm]
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedLayerError(f"{kind}.forward input {nm!r} is not a tensor")
        shp = _sizes(node)
        hits = [i for i, s in enumerate(shp) if s == batch_symbol] if batch_symbol is not None else []
        if batch_symbol is not None and not hits:
            raise UnsupportedLayerError(
                f"{kind}.forward input {nm!r} (shape {tuple(val.shape)}) has no batch axis while the other inputs do; "
                "fastrnn runs every input of a model with the same batch")
        b = hits[0] if hits else None
        dtype = "int64" if not val.dtype.is_floating_point else "float32"
        if val.dtype.is_complex or val.dtype == torch.bool:
            raise UnsupportedLayerError(f"{kind}.forward input {nm!r} has dtype {val.dtype}")
        rest = [s for i, s in enumerate(shp) if i != b]
        # the time axis stays free: only a float input's last axis (its features) is fixed
        free = [None if (dtype == "int64" or i < len(rest) - 1) else s for i, s in enumerate(rest)]
        free = [None if not isinstance(s, int) else s for s in free]
        inputs.append(Input(nm, tuple(free), dtype))
        input_axes.append(b)
        order = (b,) + tuple(i for i in range(len(shp)) if i != b) if b is not None else (None,) + tuple(range(len(shp)))
        env[nm] = T((nm, 0), order, shp)
    for nm, value in consts.items():
        env[nm] = value

    def lookup(a):
        if isinstance(a, torch.fx.Node):
            if a.name not in env:
                raise UnsupportedLayerError(f"torch.export of {kind}: {a.name} is used before it is computed")
            return env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(lookup(x) for x in a)
        if isinstance(a, dict):
            return {k: lookup(v) for k, v in a.items()}
        return a

    outputs = None
    for n in graph.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            outputs = n.args[0]
            break
        if n.op != "call_function":
            raise UnsupportedLayerError(f"torch.export of {kind}: graph node {n.name} ({n.op}) is not understood")
        if not n.users:
            continue  # assertions and unused values
        env[n.name] = mapper.map_node(n, lookup(n.args), lookup(n.kwargs))
    out_refs, out_axes, out_names = [], [], []
    for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs]):
        v = lookup(o)
        if isinstance(v, States):
            v = mapper.stack_states(v, o)
        if isinstance(v, (Step, CellC)):
            v = mapper.tensor(v, o)
        if not isinstance(v, T):
            raise UnsupportedLayerError(f"torch.export of {kind}: output {getattr(o, 'name', o)!r} is not a tensor "
                                        "computed from the inputs")
        ref = mapper.materialize(v, mapper.canonical(v), o)
        out_refs.append(ref)
        out_axes.append(v.order[0])
    nodes = mapper.nodes
    if not nodes:
        nodes = [Node("identity", Identity(name="identity"), [out_refs[0]])]
        out_refs[0] = ("identity", 0)
    try:
        g = Graph(inputs, nodes, out_refs)
    except ValueError as exc:
        raise UnsupportedLayerError(f"torch.export of {kind}: the mapped graph is not valid: {exc}") from None
    metadata = {"source": "torch.export", "torch_module": kind,
                "batch_axes": {"inputs": input_axes, "outputs": out_axes}}
    return Model(graph=g, vocabulary=vocabulary, name=name or kind.lower(), metadata=metadata)
