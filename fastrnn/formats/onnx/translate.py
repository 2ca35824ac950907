"""ONNX graph -> fastrnn graph: every ONNX node becomes fastrnn layers (or nothing), batch-major.

The ONNX file computes on tensors in its own layouts (time-major RNN inputs, Y as (T, D, B, H),
states as (D, B, H)); a fastrnn Model computes on batch-major tensors (B, ...). The Translator
walks the ONNX nodes in order and keeps, for every ONNX value, what it is on the fastrnn side
(values.py: ``Const``, ``ShapeVec``, ``Zeros``, ``SeqLens``, ``Tensor``, ...). A ``Tensor`` is a
fastrnn tensor seen through a *view*: its last axis may be split in two (Y's (D, H) directions and
units), and its axes are permuted and may carry inserted size-1 axes. ``view.axes[i]`` is the
fastrnn view axis that ONNX axis i shows (None: a size-1 axis). Transpose, Squeeze, Unsqueeze and
the Reshape that merges (D, H) back only change the view: they add no node, so the glue
torch.onnx.export writes around RNN nodes costs nothing.

This module is the core: the node loop (``Translator.run``), constant folding (a node whose inputs
are all constants is computed at import time with the NumPy ops of ops.py), the dispatch table
``RULES`` (ONNX op type -> the rules that translate it) and what every rule shares (adding a node,
symbolic sizes, views and indexing them). The pattern rules live by family, each registering its
rules with ``@RULES.rule("OpType")`` (search for ``rule("MatMul")``), each beside the name of the
test that covers it:

- rules_recurrent.py: RNN / LSTM / GRU -> Recurrent, with their layout glue and initial states;
- rules_math.py: MatMul / Gemm -> Dense, activations and element-wise functions, Add / Sub / Mul /
  Div / Pow / Max / Min -> Merge or Arithmetic, ReduceMean / ReduceMax over time -> GlobalPooling1D;
- rules_shape.py: shape glue (Shape, Gather, Concat, Reshape, Flatten, Squeeze / Unsqueeze,
  Transpose, Slice, Expand, Cast, ConstantOfShape, Identity, Dropout); Gather on a weight ->
  Embedding;
- rules_quantized.py: onnxruntime's quantized operators (quantize_dynamic): DynamicQuantizeLSTM,
  the MatMulInteger pattern, MatMulIntegerToFloat, DynamicQuantizeMatMul, DequantizeLinear. The
  Model is then an int8 model whose matrices keep onnxruntime's integers.

A rule may return None ("not my pattern"): the next rule registered for that operator is tried
(rules_quantized.py reads onnxruntime's Mul and Cast steps before the general Mul and Cast).
What cannot be expressed raises Untranslatable with the reason; the session then runs the graph
with its interpreter (see session.py for exactly which graphs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...graph import Graph, GraphBuilder, Input, Node
from ...layers import Concatenate, Permute, Reshape, Select, Slice
from . import rules_math, rules_quantized, rules_recurrent, rules_shape
from .unrolled import reroll
from .ops import OPS
from .recurrent import RECURRENT_OPS
from .values import BATCH, Const, Dim, SeqLens, Tensor, Untranslatable, WrongBatchAxis, _py

# Names that lived in this module before its rules moved into their families: still importable here.
from .rules_quantized import _per_output, int8_rows  # noqa: E402,F401
from .rules_shape import _fmt, _groups, _shapevec  # noqa: E402,F401
from .values import (BIG, IntProduct, Quantized, ScaleProduct, ShapeVec, Zeros, _axes_arg, _ints,  # noqa: E402,F401
                     f32)


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


# quantized first: its Mul and Cast rules read onnxruntime's pattern before the general ones
RULES = rule_table(rules_quantized.RULES, rules_recurrent.RULES, rules_shape.RULES, rules_math.RULES)


class Translator(GraphBuilder):
    """One translation of an ONNX graph (read by graph.py) with a guess of its inputs' batch axes:
    ``run()`` -> the graph outputs as Tensor views; the fastrnn nodes are in ``nodes``. The rules
    receive it as ``tr`` and add nodes through ``tr.add``."""

    def __init__(self, g, batch_axes):
        self.g = g
        self.batch_axes = batch_axes
        super().__init__()
        self.values = {}
        self.shapes = {}
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
        return self.unique(base or "node")

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
        raise Untranslatable(f"{node.where()}: operator {op} on run-time tensors has no fastrnn layer")

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

def _target(sizes, what):
    unknown = [i for i, s in enumerate(sizes) if s is None or isinstance(s, Dim)]
    if len(unknown) > 1:
        raise Untranslatable(f"cannot {what}: two sizes are only known at run time")
    return tuple(-1 if (s is None or isinstance(s, Dim)) else int(s) for s in sizes)


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
    """The first batch-axis assignment that translates -> (Graph, Boundary). Unrolled RNNs (PyTorch's
    dynamo exporter writes nn.RNN step by step) are rolled back into RNN nodes first (unrolled.py)."""
    g = reroll(g)
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
