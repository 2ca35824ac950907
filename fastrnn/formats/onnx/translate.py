"""ONNX graph -> fastrnn graph: every ONNX node becomes fastrnn layers (or nothing), batch-major.

The ONNX file computes on tensors in its own layouts (time-major RNN inputs, Y as (T, D, B, H),
states as (D, B, H)); a fastrnn Model computes on batch-major tensors (B, ...). The translator
walks the ONNX nodes in order and keeps, for every ONNX value, what it is on the fastrnn side:

- ``Const``: known at import time (initializers, Constant nodes, anything computed from them:
  such nodes are folded with the NumPy glue ops of ops.py);
- ``ShapeVec``: a shape computed from the graph's tensors (Shape -> Gather -> Unsqueeze -> Concat),
  entries known integers or symbolic ``Dim`` sizes (the batch, a time axis);
- ``Zeros``: ConstantOfShape of such a shape (the zero initial states exporters build);
- ``SeqLens``: a graph input that feeds only RNN nodes' sequence_lens (it becomes ``lengths``);
- ``Tensor``: a fastrnn tensor seen through a *view*: its last axis may be split in two (Y's
  (D, H) directions and units), and its axes are permuted and may carry inserted size-1 axes.
  ``view.axes[i]`` is the fastrnn view axis that ONNX axis i shows (None: a size-1 axis).
  Transpose, Squeeze, Unsqueeze and the Reshape that merges (D, H) back only change the view:
  they add no node, so the glue torch.onnx.export writes around RNN nodes costs nothing.

Pattern rules (each a method named ``op_<OpType>`` or a helper it calls, each with its own test in
tests/test_onnx_graphs.py):

- Gather(weight, ids) -> Embedding (the execution plan folds it into the next recurrent layer);
- RNN/LSTM/GRU -> Recurrent: time-major layouts absorbed, zero initial states (ConstantOfShape)
  dropped, initial-state tensors passed per direction, Y_h/Y_c read as return_state outputs or,
  when only Y_h is used, as the layer's final-state output (return_sequences=False);
- Gather/Slice on the direction axis of Y_h followed by Concat of the pieces in order -> the
  whole tensor again (``h[-2], h[-1]`` of a bidirectional classifier costs nothing);
- Gather/Slice on other axes -> Select / Slice (``out[:, -1]``, the last step);
- MatMul(x, W) [+ Add(b)] and Gemm -> Dense (Add of a bias folds into the Dense);
- Softmax / LogSoftmax / Tanh / Relu / Sigmoid / ... -> Activation; Exp, Log, Neg, ... -> Math;
- Add / Sub / Mul / Max / Min between tensors -> Merge; with a constant -> Arithmetic;
- Concat -> Concatenate; ReduceMean / ReduceMax over time -> GlobalPooling1D;
- Reshape / Flatten: a view change when possible, else Reshape (after Permute if needed);
- onnxruntime's quantized operators (quantize_dynamic): DynamicQuantizeLSTM -> Recurrent;
  DynamicQuantizeLinear(x) -> MatMulInteger(B) -> Cast -> Mul(x scale * B scale) [+ Add(b)],
  MatMulIntegerToFloat and DynamicQuantizeMatMul -> Dense; Gather of a quantized table ->
  DequantizeLinear -> Embedding of the dequantized table. The Model is then an int8 model
  (metadata "quantized") whose matrices keep onnxruntime's integers (int8_rows below).

What cannot be expressed raises Untranslatable with the reason; the session then runs the graph
with its interpreter (see session.py for exactly which graphs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...graph import Graph, Input, Node
from ...layers import (Concatenate, Embedding,
                       Permute, Reshape, Select, Slice)
from .graph import ONNX_DTYPES
from .ops import OPS
from . import rules_math, rules_quantized, rules_recurrent
from .recurrent import RECURRENT_OPS
from .values import (BATCH, BIG, Const, Dim, IntProduct, Quantized, ScaleProduct, SeqLens, ShapeVec, Tensor,
                     Untranslatable, WrongBatchAxis, Zeros, _axes_arg, _ints, _py, f32)


@dataclass
class Boundary:
    """How ONNX feeds become Model inputs and Model outputs become ONNX outputs."""

    inputs: list  # (onnx name, batch axis, onnx elem dtype) per model input, in model input order
    lengths: dict  # model input name -> onnx input name holding its sequence_lens
    outputs: list  # (onnx name, model output index, split, axes)
    seq_inputs: list  # onnx input names that are sequence_lens
    int8: dict = None  # quantized operators read: {"exact": [names], "requantized": [names]}, or None


def rule_table(*families):
    """{ONNX op type: [rule, ...]} from the families' registrations, in the order given."""
    table = {}
    for family in families:
        for op, function in family.rules:
            table.setdefault(op, []).append(function)
    return table


RULES = rule_table(rules_quantized.RULES, rules_recurrent.RULES, rules_math.RULES)


class Translator:
    def __init__(self, g, batch_axes):
        self.g = g
        self.batch_axes = batch_axes
        self.values = {}
        self.nodes = []
        self.shapes = {}
        self.names = set()
        self.dim_alias = {}
        self.dense_no_bias = {}  # output ref -> (Dense layer, input ref)
        self.concat_parts = {}  # Concatenate output ref -> [(input ref, start, stop)] on the last axis
        self.model_inputs = []
        self.int8 = None  # {"exact": [...], "requantized": [...]} once a quantized operator is read
        self.int_embeddings = {}  # ref of an Embedding of integer weights -> (ids ref, weights)
        self.dequantized = {}  # (ref, scale, zero) -> the float Embedding's ref
        self.static_batch = None
        self.lengths = {}
        self.uses = {}
        for n in g.nodes:
            for i in n.inputs:
                if i:
                    self.uses.setdefault(i, []).append(n)

    # -- bookkeeping -------------------------------------------------------------------------
    def fresh(self, base):
        base = base or "node"
        name, k = base, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def add(self, base, layer, inputs, keep_leading=True):
        """Add a node; returns its output refs. ``keep_leading``: the output's axes before the last
        are the first input's (Dense, activations...): their symbolic sizes carry over."""
        name = self.fresh(base)
        layer.name = name
        shapes = [self.shapes[r] for r in inputs]
        try:
            out = layer.output_shape(shapes)
        except ValueError as exc:
            raise Untranslatable(f"{name}: {exc}") from None
        outs = out if isinstance(out, list) else [out]
        refs = []
        for k, s in enumerate(outs):
            ref = (name, k)
            self.shapes[ref] = tuple(s)
            refs.append(ref)
        if keep_leading and inputs:
            src = inputs[0]
            for ax in range(1, len(outs[0])):  # every axis but the last
                if ax <= len(self.shapes[src]) and outs[0][ax - 1] is None:
                    d = self.dim_of(src, ax)
                    if isinstance(d, Dim):
                        self.dim_alias[(refs[0], ax)] = d
        self.nodes.append(Node(name, layer, list(inputs)))
        return refs

    def joined(self, base, refs):
        """Concatenate on the last axis, remembering where each part lies (a later slice that is
        exactly one part reads that part instead)."""
        ref = self.add(base, Concatenate(axis=-1), refs)[0]
        pos, parts = 0, []
        for r in refs:
            parts.append((r, pos, pos + self.shapes[r][-1]))
            pos += self.shapes[r][-1]
        self.concat_parts[ref] = parts
        return ref

    def last_axis_part(self, ref, start, stop):
        """The tensor holding exactly [start, stop) of ``ref``'s last axis, or None."""
        for r, s, e in self.concat_parts.get(ref, ()):
            if (s, e) == (start, stop) and len(self.shapes[r]) == len(self.shapes[ref]):
                return r
        return None

    def dim_of(self, ref, axis):
        """The symbolic identity of a fastrnn axis (axis 0 = batch)."""
        if axis == 0:
            return BATCH
        size = self.shapes[ref][axis - 1]
        if size is not None:
            return int(size)
        return self.dim_alias.get((ref, axis), Dim((ref, axis)))

    def view_dims(self, t: Tensor):
        """Symbolic size of each view axis."""
        dims = [self.dim_of(t.ref, a) for a in range(len(t.shape) + 1)]
        if t.split:
            dims = dims[:-1] + list(t.split)
        return dims

    def onnx_dims(self, t: Tensor):
        vd = self.view_dims(t)
        return [1 if a is None else vd[a] for a in t.axes]

    # -- main --------------------------------------------------------------------------------
    def run(self):
        g = self.g
        for name, arr in g.initializers.items():
            self.values[name] = Const(np.asarray(arr))
        for info in g.inputs:
            self.values[info.name] = self.graph_input(info)
        for node in g.nodes:
            ins = [self.values.get(i) if i else None for i in node.inputs]
            for i, v in zip(node.inputs, ins):
                if i and v is None:
                    raise Untranslatable(f"{node.where()} reads {i!r}, which is not available")
            outs = self.translate_node(node, ins)
            for name, v in zip(node.outputs, outs):
                if name:
                    self.values[name] = v
        outputs = []
        for info in g.outputs:
            v = self.values.get(info.name)
            if not isinstance(v, Tensor):
                raise Untranslatable(f"graph output {info.name!r} does not depend on a batch of inputs "
                                     f"({type(v).__name__})")
            outputs.append((info.name, v))
        if not self.model_inputs:
            raise Untranslatable("no graph input carries a batch")
        return outputs

    def graph_input(self, info):
        users = self.uses.get(info.name, [])
        if users and all(n.op_type in RECURRENT_OPS and n.inputs.index(info.name) == 4
                         and info.name not in n.inputs[:4] + n.inputs[5:] for n in users):
            return SeqLens(info.name)
        elem = info.type
        if elem in ("tensor(int64)", "tensor(int32)"):
            dtype = "int64"
        elif elem == "tensor(float)":
            dtype = "float32"
        else:
            raise Untranslatable(f"graph input {info.name!r} has type {elem}; a Model takes float32 features "
                                 "or integer token ids")
        rank = len(info.shape)
        if rank == 0:
            raise Untranslatable(f"graph input {info.name!r} is a scalar: it has no batch axis")
        b = self.batch_axes.get(info.name, 0)
        if b >= rank:
            raise WrongBatchAxis(f"input {info.name!r}")
        dims = [d if isinstance(d, int) else None for d in info.shape]
        if dims[b] is not None:  # inputs declaring different batch sizes cannot share the batch axis
            if self.static_batch is not None and self.static_batch != dims[b]:
                raise WrongBatchAxis(f"input {info.name!r} declares a batch of {dims[b]}, another {self.static_batch}")
            self.static_batch = dims[b]
        shape = tuple(d for i, d in enumerate(dims) if i != b)
        self.model_inputs.append(Input(info.name, shape, dtype))
        self.names.add(info.name)
        ref = (info.name, 0)
        self.shapes[ref] = shape
        others = iter(range(1, rank))
        axes = [0 if i == b else next(others) for i in range(rank)]
        return Tensor(ref, shape, None, axes, dtype)

    def translate_node(self, node, ins):
        op = node.op_type
        present = [v for v in ins if v is not None]
        if op in OPS and all(isinstance(v, Const) for v in present) and op not in RECURRENT_OPS:
            try:
                outs = OPS[op](node, [None if v is None else v.value for v in ins])
            except Exception as exc:  # noqa: BLE001 - a folding failure is the graph's error
                raise Untranslatable(f"{node.where()}: cannot fold constants: {exc}") from None
            return [Const(np.asarray(o)) for o in outs]
        for rule in RULES.get(op, ()):
            outs = rule(self, node, ins)
            if outs is not None:
                return outs
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise Untranslatable(f"{node.where()}: operator {op} on run-time tensors has no fastrnn layer")
        return handler(node, ins)

    # -- views ---------------------------------------------------------------------------------
    def canonical(self, t: Tensor, base="view") -> Tensor:
        """The same ONNX tensor as a plain batch-major fastrnn tensor: the ONNX axes in order with
        the batch moved first (adds Reshape / Permute nodes when the view is not already that)."""
        if t.split is None and None not in t.axes and [a for a in t.axes if a != 0] == list(range(1, len(t.axes))):
            return t
        if 0 not in t.axes:
            raise Untranslatable("a tensor lost its batch axis")
        ref = t.ref
        if t.split:
            sizes = t.view_sizes[1:]
            ref = self.add(base + "/split", Reshape(target_shape=_target(sizes, "split the last axis")), [ref],
                           keep_leading=False)[0]
        order = [a for a in t.axes if a is not None and a != 0]
        if order != sorted(order):
            ref = self.add(base + "/permute", Permute(dims=tuple(order)), [ref], keep_leading=False)[0]
        if None in t.axes:
            shape = self.shapes[ref]
            it = iter(shape)
            sizes = [1 if a is None else next(it) for a in t.axes if a != 0]
            ref = self.add(base + "/unsqueeze", Reshape(target_shape=_target(sizes, "insert axes")), [ref],
                           keep_leading=False)[0]
        b = t.axes.index(0)
        others = iter(range(1, len(t.axes)))
        return Tensor(ref, self.shapes[ref], None, [0 if i == b else next(others) for i in range(len(t.axes))],
                      t.dtype)

    def plain(self, t: Tensor, base):
        """A tensor whose ONNX axes are the fastrnn axes in order (batch first)."""
        t = self.canonical(t, base)
        if t.axes[0] != 0:
            raise WrongBatchAxis(f"{base}: the batch would have to be axis 0")
        return t

    @staticmethod
    def norm(t: Tensor) -> Tensor:
        """A (1, H) split is no split: its outer axis becomes a size-1 axis of the view."""
        if t.split is None or t.split[0] != 1:
            return t
        last = len(t.shape)
        axes = [None if b == last else (last if b == last + 1 else b) for b in t.axes]
        return Tensor(t.ref, t.shape, None, axes, t.dtype, t.pieces)

    def last_axis_ok(self, t: Tensor):
        """The ONNX last axis is the fastrnn last axis (layers acting on features apply as is)."""
        return t.split is None and t.axes and t.axes[-1] == len(t.shape) and len(t.shape) >= 1

    def onnx_axis(self, node, axis, rank):
        if not -rank <= axis < rank:
            raise Untranslatable(f"{node.where()}: axis {axis} out of range for rank {rank}")
        return axis % rank

    # -- shape-only operators -------------------------------------------------------------------
    def op_Identity(self, node, ins):
        return [ins[0]]

    def op_Dropout(self, node, ins):
        if len(node.outputs) > 1 and node.outputs[1] and self.uses.get(node.outputs[1]):
            raise Untranslatable(f"{node.where()}: the Dropout mask output is used")
        return [ins[0], None]

    def op_Cast(self, node, ins):
        v = ins[0]
        to = node.attrs.get("to")
        if isinstance(v, ShapeVec) and to in (6, 7):
            return [v]
        if isinstance(v, Zeros):
            return [Zeros(v.shape, v.fill, ONNX_DTYPES.get(to, np.float32))]
        if isinstance(v, Tensor):
            if (v.dtype == "float32" and to == 1) or (v.dtype == "int64" and to in (6, 7)):
                return [v]
        if isinstance(v, SeqLens) and to in (6, 7):
            return [v]
        raise Untranslatable(f"{node.where()}: Cast of a {v.__class__.__name__} ({getattr(v, 'dtype', '')}) to "
                             f"type {to}")

    def op_Shape(self, node, ins):
        v = ins[0]
        if isinstance(v, Tensor):
            dims = self.onnx_dims(v)
        elif isinstance(v, Zeros):
            dims = list(v.shape)
        else:
            raise Untranslatable(f"{node.where()}: Shape of a {v.__class__.__name__}")
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return [_shapevec(dims[start:end])]

    def op_Size(self, node, ins):
        raise Untranslatable(f"{node.where()}: Size of a run-time tensor")

    def op_ConstantOfShape(self, node, ins):
        v = ins[0]
        fill = node.attrs.get("value", np.zeros(1, f32))
        fill = np.asarray(fill).reshape(-1)
        if not isinstance(v, ShapeVec):
            raise Untranslatable(f"{node.where()}: ConstantOfShape of a {v.__class__.__name__}")
        return [Zeros(list(v.entries), float(fill[0]), fill.dtype)]

    def op_Unsqueeze(self, node, ins):
        v = ins[0]
        axes = _axes_arg(node, ins)
        if axes is None:
            raise Untranslatable(f"{node.where()}: Unsqueeze without axes")
        if isinstance(v, ShapeVec):
            if v.scalar and axes in ([0], [-1]):
                return [ShapeVec(list(v.entries))]
            raise Untranslatable(f"{node.where()}: Unsqueeze of a shape vector")
        rank = (len(v.axes) if isinstance(v, Tensor) else len(v.shape)) + len(axes)
        axes = sorted(self.onnx_axis(node, a, rank) for a in axes)
        if isinstance(v, Zeros):
            shape = list(v.shape)
            for a in axes:
                shape.insert(a, 1)
            return [Zeros(shape, v.fill, v.dtype)]
        if isinstance(v, Tensor):
            new = list(v.axes)
            for a in axes:
                new.insert(a, None)
            return [Tensor(v.ref, v.shape, v.split, new, v.dtype, v.pieces)]
        raise Untranslatable(f"{node.where()}: Unsqueeze of a {v.__class__.__name__}")

    def op_Squeeze(self, node, ins):
        v = ins[0]
        axes = _axes_arg(node, ins)
        if isinstance(v, Zeros):
            shape = list(v.shape)
            drop = range(len(shape)) if axes is None else [a % len(shape) for a in axes]
            drop = [a for a in drop if shape[a] == 1] if axes is None else drop
            return [Zeros([s for i, s in enumerate(shape) if i not in drop], v.fill, v.dtype)]
        if not isinstance(v, Tensor):
            raise Untranslatable(f"{node.where()}: Squeeze of a {v.__class__.__name__}")
        rank = len(v.axes)
        dims = self.onnx_dims(v)
        if axes is None:
            axes = [i for i, d in enumerate(dims) if d == 1]
        axes = sorted({self.onnx_axis(node, a, rank) for a in axes}, reverse=True)
        for a in axes:
            if dims[a] != 1:
                raise Untranslatable(f"{node.where()}: squeezing axis {a} of size {dims[a]}")
            v = self.take(node, v, a, 0, keep=False)
        return [v]

    def op_Transpose(self, node, ins):
        v = ins[0]
        perm = node.attrs.get("perm")
        if isinstance(v, Tensor):
            perm = list(reversed(range(len(v.axes)))) if perm is None else perm
            return [Tensor(v.ref, v.shape, v.split, [v.axes[p] for p in perm], v.dtype, v.pieces)]
        if isinstance(v, Zeros):
            perm = list(reversed(range(len(v.shape)))) if perm is None else perm
            return [Zeros([v.shape[p] for p in perm], v.fill, v.dtype)]
        raise Untranslatable(f"{node.where()}: Transpose of a {v.__class__.__name__}")

    def op_Expand(self, node, ins):
        v, shape = ins
        if isinstance(v, (Const, Zeros)) and isinstance(shape, ShapeVec):
            vals = np.asarray(v.value).reshape(-1) if isinstance(v, Const) else np.array([v.fill])
            if vals.size == 1 and np.all(vals == vals[0]):
                return [Zeros(list(shape.entries), float(vals[0]), np.asarray(vals).dtype)]
        if isinstance(v, Zeros) and isinstance(shape, Const):
            return [Zeros([int(e) for e in shape.value.reshape(-1)], v.fill, v.dtype)]
        if isinstance(v, Tensor) and isinstance(shape, (Const, ShapeVec)):
            entries = shape.entries if isinstance(shape, ShapeVec) else [int(s) for s in shape.value.reshape(-1)]
            dims = self.onnx_dims(v)
            if len(entries) <= len(dims) and all(e == 1 or e == d for e, d in zip(entries[::-1], dims[::-1])):
                return [v]  # broadcasting to its own shape
        raise Untranslatable(f"{node.where()}: Expand of a {v.__class__.__name__}")

    def op_Gather(self, node, ins):
        data, idx = ins
        axis = node.attrs.get("axis", 0)
        if isinstance(data, ShapeVec) and isinstance(idx, Const):
            i = np.asarray(idx.value).astype(np.int64)
            picked = [data.entries[int(k)] for k in i.reshape(-1)]
            return [ShapeVec(picked, scalar=i.ndim == 0)]
        if isinstance(data, Const) and isinstance(idx, Tensor):
            return [self.embedding(node, data.value, idx, axis)]
        if isinstance(data, Tensor) and isinstance(idx, Const):
            i = np.asarray(idx.value).astype(np.int64)
            a = self.onnx_axis(node, axis, len(data.axes))
            if i.ndim == 0:
                return [self.take(node, data, a, int(i), keep=False)]
            if i.ndim == 1 and i.size >= 1 and ((np.all(np.diff(i) == 1) and np.all(i >= 0)) or list(i) == [-1]):
                return [self.slice_axis(node, data, a, int(i[0]), int(i[-1]) + 1 if i[-1] != -1 else BIG, 1)]
        raise Untranslatable(f"{node.where()}: Gather of a {data.__class__.__name__} by a "
                             f"{idx.__class__.__name__}")

    def embedding(self, node, weight, ids, axis):
        """Gather on a weight matrix by token ids -> Embedding (folded into the next recurrent layer).
        A quantized table (int8 / uint8, onnxruntime's quantized Gather) gives an Embedding of its
        integers, which the DequantizeLinear after it turns into the float Embedding."""
        if axis != 0 or weight.ndim != 2 or ids.dtype != "int64":
            raise Untranslatable(f"{node.where()}: Gather on a constant that is not an embedding lookup")
        if ids.ref[0] not in {i.name for i in self.model_inputs} or ids.split:
            raise Untranslatable(f"{node.where()}: an embedding lookup reads a graph input of token ids")
        dtype = "float32"
        if weight.dtype in (np.int8, np.uint8):
            dtype = str(weight.dtype)
        elif weight.dtype != np.float32:
            raise Untranslatable(f"{node.where()}: an embedding table of type {weight.dtype}")
        ref = self.add(node.name, Embedding(np.asarray(weight, f32)), [ids.ref])[0]
        if dtype != "float32":
            self.int_embeddings[ref] = (ids.ref, np.asarray(weight))
        return Tensor(ref, self.shapes[ref], None, list(ids.axes) + [len(ids.shape) + 1], dtype)

    def take(self, node, t: Tensor, a, index, keep):
        """One index of ONNX axis ``a`` (Gather with a scalar index; Squeeze when keep=False)."""
        t = self.norm(t)
        va = t.axes[a]
        if va is None:
            if index not in (0, -1):
                raise Untranslatable(f"{node.where()}: index {index} of a size-1 axis")
            return Tensor(t.ref, t.shape, t.split, t.axes if keep else t.axes[:a] + t.axes[a + 1:], t.dtype, t.pieces)
        if va == 0:
            raise WrongBatchAxis(f"{node.where()} indexes the batch axis")
        if t.is_split_axis(va):
            outer, inner = t.split
            if va == len(t.shape):  # the outer part: a slice of the last axis
                index = index + outer if index < 0 else index
                if not 0 <= index < outer:
                    raise Untranslatable(f"{node.where()}: index out of range")
                base = t.pieces[1] if t.pieces else 0
                src = t.pieces[0] if t.pieces else t.ref
                ref = self.last_axis_part(t.ref, index * inner, (index + 1) * inner) or self.add(
                    node.name, Slice(axis=len(t.shape), start=index * inner, stop=(index + 1) * inner), [t.ref])[0]
                pieces = (src, base + index * inner, base + (index + 1) * inner)
                if keep:
                    return Tensor(ref, self.shapes[ref], (1, inner), list(t.axes), t.dtype, pieces)
                axes = [b if b is None or b < va else b - 1 for i, b in enumerate(t.axes) if i != a]
                return Tensor(ref, self.shapes[ref], None, axes, t.dtype, pieces)
            t = self.canonical(t, node.name)
            va = t.axes[a]
        if keep:
            ref = self.add(node.name, Slice(axis=va, start=index, stop=index + 1 if index != -1 else None), [t.ref],
                           keep_leading=va == len(t.shape))[0]
            return Tensor(ref, self.shapes[ref], t.split, list(t.axes), t.dtype)
        ref = self.add(node.name, Select(axis=va, index=index), [t.ref], keep_leading=False)[0]
        axes = [b if b is None or b < va else b - 1 for i, b in enumerate(t.axes) if i != a]
        return Tensor(ref, self.shapes[ref], t.split, axes, t.dtype)

    def slice_axis(self, node, t: Tensor, a, start, stop, step):
        t = self.norm(t)
        va = t.axes[a]
        if va is None:
            n = len(range(*slice(_py(start), _py(stop), step).indices(1)))
            if n == 1:
                return t
            raise Untranslatable(f"{node.where()}: slice of a size-1 axis to {n} entries")
        if va == 0:
            raise WrongBatchAxis(f"{node.where()} slices the batch axis")
        if t.is_split_axis(va):
            outer, inner = t.split
            if va == len(t.shape) and step == 1:
                s, e, _ = slice(_py(start), _py(stop), 1).indices(outer)
                if e <= s:
                    raise Untranslatable(f"{node.where()}: empty slice")
                base = t.pieces[1] if t.pieces else 0
                src = t.pieces[0] if t.pieces else t.ref
                ref = self.last_axis_part(t.ref, s * inner, e * inner) or self.add(
                    node.name, Slice(axis=len(t.shape), start=s * inner, stop=e * inner), [t.ref])[0]
                return Tensor(ref, self.shapes[ref], (e - s, inner), list(t.axes), t.dtype,
                              (src, base + s * inner, base + e * inner))
            t = self.canonical(t, node.name)
            va = t.axes[a]
        if (start in (0, None) and _py(stop) is None and step == 1):
            return t
        ref = self.add(node.name, Slice(axis=va, start=_py(start), stop=_py(stop), step=step), [t.ref],
                       keep_leading=va == len(t.shape))[0]
        return Tensor(ref, self.shapes[ref], t.split, list(t.axes), t.dtype)

    def op_Slice(self, node, ins):
        v = ins[0]
        if "starts" in node.attrs:
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            axes, steps = node.attrs.get("axes"), None
        else:
            for k in range(1, len(ins)):
                if ins[k] is not None and not isinstance(ins[k], Const):
                    raise Untranslatable(f"{node.where()}: Slice with run-time bounds")
            starts, ends = _ints(ins[1]), _ints(ins[2])
            axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
            steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        if isinstance(v, ShapeVec):
            if len(starts) != 1:
                raise Untranslatable(f"{node.where()}: Slice of a shape")
            return [ShapeVec(v.entries[slice(_py(starts[0]), _py(ends[0]), steps[0])])]
        if isinstance(v, Zeros):
            shape = list(v.shape)
            for s, e, a, st in zip(starts, ends, axes, steps):
                n = shape[a]
                if isinstance(n, Dim):
                    if not (s == 0 and e >= BIG // 4 and st == 1):
                        raise Untranslatable(f"{node.where()}: Slice of a run-time size")
                    continue
                shape[a] = len(range(*slice(_py(s), _py(e), st).indices(n)))
            return [Zeros(shape, v.fill, v.dtype)]
        if isinstance(v, Tensor):
            for s, e, a, st in zip(starts, ends, axes, steps):
                if st == 0:
                    raise Untranslatable(f"{node.where()}: Slice step 0")
                v = self.slice_axis(node, v, self.onnx_axis(node, a, len(v.axes)), s, e, st)
            return [v]
        raise Untranslatable(f"{node.where()}: Slice of a {v.__class__.__name__}")

    def op_Concat(self, node, ins):
        axis = node.attrs["axis"]
        vals = [v for v in ins if v is not None]
        if all(isinstance(v, (Const, ShapeVec)) for v in vals):
            entries = []
            for v in vals:
                entries += list(v.entries) if isinstance(v, ShapeVec) else [int(x) for x in v.value.reshape(-1)]
            return [_shapevec(entries)]
        if not all(isinstance(v, Tensor) for v in vals):
            raise Untranslatable(f"{node.where()}: Concat of tensors with constants")
        rank = len(vals[0].axes)
        a = self.onnx_axis(node, axis, rank)
        if len(vals) == 1:
            return vals
        first = vals[0]
        if not all(v.split is not None and v.split[1] == first.split[1] and v.axes == first.axes
                   and len(v.shape) == len(first.shape) for v in vals) or first.axes[a] != len(first.shape):
            vals = [self.norm(v) for v in vals]  # not along the outer part of a split: (1, H) is no split
        first = vals[0]
        last = len(first.shape)
        same_view = all(v.axes == first.axes and len(v.shape) == last for v in vals)
        va = first.axes[a]
        if va == 0:
            raise WrongBatchAxis(f"{node.where()} concatenates along the batch axis")
        along_last = same_view and va == last and (
            first.split is None and all(v.split is None for v in vals)
            or all(v.split is not None and v.split[1] == first.split[1] for v in vals))
        if along_last:
            # pieces of one tensor's last axis, in order and complete: that tensor again
            if all(v.pieces for v in vals):
                src, pos = first.pieces[0], 0
                ok = True
                for v in vals:
                    ok = ok and v.pieces[0] == src and v.pieces[1] == pos
                    pos = v.pieces[2]
                if ok and self.shapes[src][-1] == pos and len(self.shapes[src]) == last:
                    split = None if first.split is None else (pos // first.split[1], first.split[1])
                    return [Tensor(src, self.shapes[src], split, list(first.axes), first.dtype)]
            ref = self.joined(node.name, [v.ref for v in vals])
            split = None if first.split is None else (sum(v.split[0] for v in vals), first.split[1])
            return [Tensor(ref, self.shapes[ref], split, list(first.axes), first.dtype)]
        if same_view and va is not None and va < last and all(v.split == first.split for v in vals):
            ref = self.add(node.name, Concatenate(axis=va), [v.ref for v in vals], keep_leading=False)[0]
            return [Tensor(ref, self.shapes[ref], first.split, list(first.axes), first.dtype)]
        cs = [self.canonical(v, node.name) for v in vals]
        if any(c.axes != cs[0].axes for c in cs):
            raise Untranslatable(f"{node.where()}: Concat of tensors with different batch axes")
        ref = self.add(node.name, Concatenate(axis=cs[0].axes[a]), [c.ref for c in cs])[0]
        return [Tensor(ref, self.shapes[ref], None, list(cs[0].axes), cs[0].dtype)]

    def op_Reshape(self, node, ins):
        v, target = ins
        if isinstance(target, Const):
            entries = [int(x) for x in target.value.reshape(-1)]
        elif isinstance(target, ShapeVec):
            entries = list(target.entries)
        else:
            raise Untranslatable(f"{node.where()}: Reshape to a run-time shape")
        if isinstance(v, Zeros):
            if all(isinstance(e, (int, Dim)) and e != -1 for e in entries):
                return [Zeros(entries, v.fill, v.dtype)]
            raise Untranslatable(f"{node.where()}: Reshape of zeros")
        if not isinstance(v, Tensor):
            raise Untranslatable(f"{node.where()}: Reshape of a {v.__class__.__name__}")
        if not node.attrs.get("allowzero", 0):
            dims_in = self.onnx_dims(v)
            entries = [dims_in[i] if (isinstance(e, int) and e == 0 and i < len(dims_in)) else e
                       for i, e in enumerate(entries)]
        return [self.reshape(node, v, entries)]

    def op_Flatten(self, node, ins):
        v = ins[0]
        if not isinstance(v, Tensor):
            raise Untranslatable(f"{node.where()}: Flatten of a {v.__class__.__name__}")
        axis = node.attrs.get("axis", 1)
        dims = self.onnx_dims(v)
        axis = axis % len(dims) if axis < 0 else axis
        if axis != 1:
            raise Untranslatable(f"{node.where()}: Flatten at axis {axis}")
        return [self.reshape(node, v, [dims[0], -1])]

    def reshape(self, node, v: Tensor, entries):
        dims = self.onnx_dims(v)
        if entries.count(-1) > 1:
            raise Untranslatable(f"{node.where()}: Reshape with several -1")
        # resolve a -1 when every other size is known
        if list(entries) == dims:
            return v
        groups = _groups(dims, entries)
        if groups is None:
            raise Untranslatable(f"{node.where()}: Reshape from {_fmt(dims)} to {_fmt(entries)}")
        # the batch must be a group of its own
        for gi, go in groups:
            if any(dims[i] is BATCH for i in gi) and not (len(gi) == 1 and len(go) == 1):
                raise WrongBatchAxis(f"{node.where()} reshapes the batch axis")
        if BATCH not in dims:
            raise Untranslatable(f"{node.where()}: no batch axis")
        # (..., D, H) -> (..., D*H) where (D, H) is the split of the last axis: a view change
        if v.split is not None:
            last = len(v.shape)
            for gi, go in groups:
                if len(go) == 1 and [v.axes[i] for i in gi] == [last, last + 1]:
                    new_axes = []
                    for gj, goj in groups:
                        if gj is gi:
                            new_axes.append(last)
                        else:
                            new_axes += [v.axes[i] for i in gj] if len(gj) == len(goj) else [None]
                    others_ok = all(len(a) == len(b) for a, b in groups if a is not gi)
                    if others_ok:
                        return Tensor(v.ref, v.shape, None, new_axes, v.dtype)
        # only size-1 axes come or go: a view change
        if all(len(gi) == len(go) or all(dims[i] == 1 for i in gi) and all(entries[j] == 1 for j in go)
               for gi, go in groups):
            new = []
            for gi, go in groups:
                if len(gi) == len(go):
                    new += [v.axes[i] for i in gi]
                else:
                    for i in gi:
                        if v.axes[i] is not None:
                            break
                    else:
                        new += [None] * len(go)
                        continue
                    new = None
                    break
            if new is not None:
                return Tensor(v.ref, v.shape, v.split, new, v.dtype, v.pieces)
        c = self.canonical(v, node.name)
        b = c.axes.index(0)
        out_b = next(go[0] for gi, go in groups if gi == [b])
        target = [e for j, e in enumerate(entries) if j != out_b]
        sizes = [e if isinstance(e, int) else None for e in target]
        unknown = [j for j, s in enumerate(sizes) if s is None or s == -1]
        if len(unknown) > 1:
            raise Untranslatable(f"{node.where()}: Reshape to {_fmt(entries)} leaves two sizes unknown")
        sizes = [-1 if s is None else s for s in sizes]
        ref = self.add(node.name, Reshape(target_shape=tuple(sizes)), [c.ref], keep_leading=False)[0]
        others = iter(range(1, len(entries)))
        return Tensor(ref, self.shapes[ref], None, [0 if j == out_b else next(others) for j in range(len(entries))],
                      v.dtype)

def _shapevec(entries):
    if all(isinstance(e, int) for e in entries):
        return Const(np.array(entries, np.int64))
    return ShapeVec(list(entries))


def _target(sizes, what):
    unknown = [i for i, s in enumerate(sizes) if s is None or isinstance(s, Dim)]
    if len(unknown) > 1:
        raise Untranslatable(f"cannot {what}: two sizes are only known at run time")
    return tuple(-1 if (s is None or isinstance(s, Dim)) else int(s) for s in sizes)


def _fmt(dims):
    return "(" + ", ".join("B" if d is BATCH else ("?" if isinstance(d, Dim) else str(d)) for d in dims) + ")"


def _groups(dims, entries):
    """Match input axes to output axes of a reshape: [(input axes, output axes)], each group with
    equal products; symbolic sizes must match one to one. None if it cannot be decided."""
    entries = list(entries)
    if -1 in entries:
        known = [e for e in entries if e != -1]
        if all(isinstance(d, int) for d in dims) and all(isinstance(e, int) for e in known):
            total = int(np.prod(dims, dtype=np.int64))
            rest = int(np.prod(known, dtype=np.int64))
            if rest == 0 or total % rest:
                return None
            entries[entries.index(-1)] = total // rest
        else:
            # -1 stands for what the other axes leave: match the symbolic ones first
            sym_in = [d for d in dims if isinstance(d, Dim)]
            sym_out = [e for e in entries if isinstance(e, Dim)]
            missing = [d for d in sym_in if d not in sym_out]
            ints_in = int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64))
            ints_out = int(np.prod([e for e in entries if isinstance(e, int) and e != -1], dtype=np.int64))
            if not missing:
                if ints_out == 0 or ints_in % ints_out:
                    return None
                entries[entries.index(-1)] = ints_in // ints_out
            elif len(missing) == 1 and ints_in == ints_out:
                entries[entries.index(-1)] = missing[0]
            else:
                return None
    groups, i, j = [], 0, 0
    while i < len(dims) or j < len(entries):
        if i < len(dims) and j < len(entries) and (dims[i] == entries[j]) and (
                isinstance(dims[i], Dim) or dims[i] != 1):
            groups.append(([i], [j]))
            i += 1
            j += 1
            continue
        gi, gj = [], []
        pi = pj = 1
        while True:
            if i < len(dims) and (not gi or pi < pj) and isinstance(dims[i], int):
                pi *= dims[i]
                gi.append(i)
                i += 1
            elif j < len(entries) and isinstance(entries[j], int) and (not gj or pj < pi):
                pj *= entries[j]
                gj.append(j)
                j += 1
            else:
                break
            if pi == pj and gi and gj:
                break
        # size-1 axes on either side join the current group
        while i < len(dims) and dims[i] == 1 and gi:
            gi.append(i)
            i += 1
        while j < len(entries) and entries[j] == 1 and gj:
            gj.append(j)
            j += 1
        if (not gi and not gj) or pi != pj:
            return None
        groups.append((gi, gj))
    return groups


def translate(g, batch_axes):
    """-> (Graph, Boundary). Raises Untranslatable / WrongBatchAxis."""
    tr = Translator(g, batch_axes)
    outputs = tr.run()
    out_refs = [v.ref for _, v in outputs]
    # keep only the nodes the outputs need (folded MatMul -> Dense+bias leaves the first unused)
    by_name = {n.name: n for n in tr.nodes}
    stack = [r[0] for r in out_refs]
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        stack.extend(r[0] for r in by_name[name].inputs)
    keep = [n for n in tr.nodes if n.name in seen]
    if not keep:
        raise Untranslatable("the graph has no layer (its outputs are its inputs rearranged)")
    try:
        graph = Graph(tr.model_inputs, keep, out_refs)
    except ValueError as exc:
        raise Untranslatable(str(exc)) from None
    seq = sorted({v.input_name for v in tr.values.values() if isinstance(v, SeqLens)})
    inputs = []
    for i in tr.model_inputs:
        info = next(x for x in g.inputs if x.name == i.name)
        inputs.append((i.name, tr.batch_axes.get(i.name, 0), info.type))
    boundary = Boundary(inputs, dict(tr.lengths), [(name, k, v.split, list(v.axes)) for k, (name, v) in
                                                   enumerate(outputs)], seq, tr.int8)
    return graph, boundary


def batch_axis_guesses(g, limit=64):
    """Batch-axis assignments to try for the graph inputs: axis 0 first, then 1, ..."""
    import itertools

    choices = []
    names = []
    for info in g.inputs:
        rank = len(info.shape)
        if rank <= 1:
            continue
        order = list(range(rank))
        names.append(info.name)
        choices.append(order)
    for k, combo in enumerate(itertools.product(*choices)):
        if k >= limit:
            return
        yield dict(zip(names, combo))


def translate_graph(g):
    """The first batch-axis assignment that translates -> (Graph, Boundary)."""
    last = None
    for guess in batch_axis_guesses(g):
        try:
            return translate(g, guess)
        except WrongBatchAxis as exc:
            last = exc
    raise Untranslatable(f"no assignment of batch axes to the graph inputs fits ({last})")


def to_model_inputs(boundary, feeds):
    """ONNX feeds (dict name -> array) -> (list of batch-major arrays, lengths per model input)."""
    xs, ls = [], []
    for name, b, _ in boundary.inputs:
        a = np.asarray(feeds[name])
        if b:
            a = np.moveaxis(a, b, 0)
        xs.append(a)
        seq = boundary.lengths.get(name)
        ls.append(None if seq is None else np.asarray(feeds[seq]).astype(np.int64))
    return xs, ls


def to_onnx_output(y, split, axes):
    """A batch-major Model output -> the ONNX layout (view split, axis order, size-1 axes)."""
    y = np.asarray(y)
    if split:
        y = y.reshape(y.shape[:-1] + tuple(split))
    order = [a for a in axes if a is not None]
    if order != list(range(y.ndim)):
        y = y.transpose(order)
    if None in axes:
        it = iter(y.shape)
        y = y.reshape([1 if a is None else next(it) for a in axes])
    return np.ascontiguousarray(y)


__all__ = ["Untranslatable", "translate_graph", "to_model_inputs", "to_onnx_output", "Boundary"]
