"""Shape glue: the ONNX operators that move, select or describe values without computing on them
(Shape, Gather, Concat, Reshape, Flatten, Squeeze / Unsqueeze, Transpose, Slice, Expand, Cast,
ConstantOfShape, Identity, Dropout).

Most add no layer: on a run-time tensor they only change its view (translate.py's Tensor), on a
shape vector or zeros they compute at import time, so the glue torch.onnx.export writes around RNN
nodes costs nothing. (Nodes whose inputs are all constants never reach these rules: translate.py
folds them with the NumPy ops of ops.py.)

- Gather(weight, ids) -> Embedding (the execution plan folds it into the next recurrent layer);
- Gather/Slice on the direction axis of Y_h followed by Concat of the pieces in order -> the
  whole tensor again (``h[-2], h[-1]`` of a bidirectional classifier costs nothing);
- Gather/Slice on other axes -> Select / Slice (``out[:, -1]``, the last step);
- Concat -> Concatenate;
- Reshape / Flatten: a view change when possible, else Reshape (after Permute if needed).
"""
from __future__ import annotations

import numpy as np

from ...layers import Concatenate, Embedding, Reshape
from .graph import ONNX_DTYPES
from .values import (BATCH, BIG, Const, Dim, RuleFamily, SeqLens, ShapeVec, Tensor, Untranslatable, WrongBatchAxis,
                     Zeros, _axes_arg, _ints, _py, f32)

RULES = RuleFamily("shape")


# tested by tests/test_onnx_graphs.py::test_rule_glue_that_adds_no_layer
@RULES.rule("Identity")
def identity(tr, node, ins):
    return [ins[0]]


# tested by tests/test_onnx_graphs.py::test_rule_glue_that_adds_no_layer
@RULES.rule("Dropout")
def dropout(tr, node, ins):
    if len(node.outputs) > 1 and node.outputs[1] and tr.uses.get(node.outputs[1]):
        raise Untranslatable(f"{node.where()}: the Dropout mask output is used")
    return [ins[0], None]


# tested by tests/test_onnx_graphs.py::test_rule_glue_that_adds_no_layer
@RULES.rule("Cast")
def cast(tr, node, ins):
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


# tested by tests/test_onnx_graphs.py::test_rule_rnn_layout_glue_is_absorbed
@RULES.rule("Shape")
def shape_of(tr, node, ins):
    v = ins[0]
    if isinstance(v, Tensor):
        dims = tr.onnx_dims(v)
    elif isinstance(v, Zeros):
        dims = list(v.shape)
    else:
        raise Untranslatable(f"{node.where()}: Shape of a {v.__class__.__name__}")
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return [_shapevec(dims[start:end])]


# tested by tests/test_onnx_graphs.py::test_rule_size_of_a_tensor_runs_on_the_interpreter
@RULES.rule("Size")
def size(tr, node, ins):
    raise Untranslatable(f"{node.where()}: Size of a run-time tensor")


# tested by tests/test_onnx_graphs.py::test_rule_rnn_layout_glue_is_absorbed
@RULES.rule("ConstantOfShape")
def constant_of_shape(tr, node, ins):
    v = ins[0]
    fill = node.attrs.get("value", np.zeros(1, f32))
    fill = np.asarray(fill).reshape(-1)
    if not isinstance(v, ShapeVec):
        raise Untranslatable(f"{node.where()}: ConstantOfShape of a {v.__class__.__name__}")
    return [Zeros(list(v.entries), float(fill[0]), fill.dtype)]


# tested by tests/test_onnx_graphs.py::test_rule_rnn_layout_glue_is_absorbed
@RULES.rule("Unsqueeze")
def unsqueeze(tr, node, ins):
    v = ins[0]
    axes = _axes_arg(node, ins)
    if axes is None:
        raise Untranslatable(f"{node.where()}: Unsqueeze without axes")
    if isinstance(v, ShapeVec):
        if v.scalar and axes in ([0], [-1]):
            return [ShapeVec(list(v.entries))]
        raise Untranslatable(f"{node.where()}: Unsqueeze of a shape vector")
    rank = (len(v.axes) if isinstance(v, Tensor) else len(v.shape)) + len(axes)
    axes = sorted(tr.onnx_axis(node, a, rank) for a in axes)
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


# tested by tests/test_onnx_graphs.py::test_rule_rnn_layout_glue_is_absorbed
@RULES.rule("Squeeze")
def squeeze(tr, node, ins):
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
    dims = tr.onnx_dims(v)
    if axes is None:
        axes = [i for i, d in enumerate(dims) if d == 1]
    axes = sorted({tr.onnx_axis(node, a, rank) for a in axes}, reverse=True)
    for a in axes:
        if dims[a] != 1:
            raise Untranslatable(f"{node.where()}: squeezing axis {a} of size {dims[a]}")
        v = tr.take(node, v, a, 0, keep=False)
    return [v]


# tested by tests/test_onnx_graphs.py::test_rule_rnn_layout_glue_is_absorbed
@RULES.rule("Transpose")
def transpose(tr, node, ins):
    v = ins[0]
    perm = node.attrs.get("perm")
    if isinstance(v, Tensor):
        perm = list(reversed(range(len(v.axes)))) if perm is None else perm
        return [Tensor(v.ref, v.shape, v.split, [v.axes[p] for p in perm], v.dtype, v.pieces)]
    if isinstance(v, Zeros):
        perm = list(reversed(range(len(v.shape)))) if perm is None else perm
        return [Zeros([v.shape[p] for p in perm], v.fill, v.dtype)]
    raise Untranslatable(f"{node.where()}: Transpose of a {v.__class__.__name__}")


# tested by tests/test_onnx_graphs.py::test_rule_glue_that_adds_no_layer
@RULES.rule("Expand")
def expand(tr, node, ins):
    v, shape = ins
    if isinstance(v, (Const, Zeros)) and isinstance(shape, ShapeVec):
        vals = np.asarray(v.value).reshape(-1) if isinstance(v, Const) else np.array([v.fill])
        if vals.size == 1 and np.all(vals == vals[0]):
            return [Zeros(list(shape.entries), float(vals[0]), np.asarray(vals).dtype)]
    if isinstance(v, Zeros) and isinstance(shape, Const):
        return [Zeros([int(e) for e in shape.value.reshape(-1)], v.fill, v.dtype)]
    if isinstance(v, Tensor) and isinstance(shape, (Const, ShapeVec)):
        entries = shape.entries if isinstance(shape, ShapeVec) else [int(s) for s in shape.value.reshape(-1)]
        dims = tr.onnx_dims(v)
        if len(entries) <= len(dims) and all(e == 1 or e == d for e, d in zip(entries[::-1], dims[::-1])):
            return [v]  # broadcasting to its own shape
    raise Untranslatable(f"{node.where()}: Expand of a {v.__class__.__name__}")


# tested by tests/test_onnx_graphs.py::test_rule_shape_arithmetic
@RULES.rule("Add", "Sub", "Mul", "Div")
def shape_arithmetic(tr, node, ins):
    """Arithmetic on shape vectors, at import time. PyTorch's dynamo exporter (torch.onnx.export's
    default) merges an RNN's (D, H) axes with Shape -> Slice -> Mul -> Concat -> Reshape; the
    TorchScript exporter writes the sizes as constants. Known sizes compute; a run-time size times 1
    (plus 0, ...) is itself; any other result is a new symbolic size that only matches itself.
    Not a shape vector: None (the element-wise rules of rules_math.py take the node)."""
    if not any(isinstance(v, ShapeVec) for v in ins):
        return None
    if len(ins) != 2 or not all(isinstance(v, (ShapeVec, Const)) for v in ins):
        raise Untranslatable(f"{node.where()}: {node.op_type} of a shape vector and a "
                             f"{next(v for v in ins if not isinstance(v, ShapeVec)).__class__.__name__}")
    sides = []
    for v in ins:
        if isinstance(v, Const):
            if not np.issubdtype(np.asarray(v.value).dtype, np.integer) or np.ndim(v.value) > 1:
                raise Untranslatable(f"{node.where()}: {node.op_type} of a shape vector and a non-integer constant")
            sides.append(([int(x) for x in np.asarray(v.value).reshape(-1)], np.ndim(v.value) == 0))
        else:
            sides.append((list(v.entries), v.scalar))
    (a, a_scalar), (b, b_scalar) = sides
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise Untranslatable(f"{node.where()}: {node.op_type} of shape vectors of lengths {len(a)} and {len(b)}")
    n = max(len(a), len(b))
    a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
    out = [_size_arithmetic(node.op_type, x, y) for x, y in zip(a, b)]
    return [_shapevec(out, scalar=a_scalar and b_scalar)]


def _size_arithmetic(op, x, y):
    """One entry of Add / Sub / Mul / Div on sizes (int or Dim); ONNX's integer Div truncates."""
    if isinstance(x, int) and isinstance(y, int):
        if op == "Div":
            if y == 0:
                raise Untranslatable("a shape divided by 0")
            q = abs(x) // abs(y)
            return q if (x >= 0) == (y >= 0) else -q
        return {"Add": x + y, "Sub": x - y, "Mul": x * y}[op]
    neutral = {"Add": (0, 0), "Sub": (None, 0), "Mul": (1, 1), "Div": (None, 1)}[op]
    if y == neutral[1]:
        return x
    if x == neutral[0]:
        return y
    if op in ("Add", "Mul"):  # commutative: one key for both orders
        x, y = sorted((x, y), key=repr)
    return Dim((op, x, y))


# tested by tests/test_onnx_graphs.py::test_rule_gather_on_weight_is_a_folded_embedding
#       and tests/test_onnx_graphs.py::test_rule_direction_pieces_concatenated_are_the_final_state
@RULES.rule("Gather")
def gather(tr, node, ins):
    data, idx = ins
    axis = node.attrs.get("axis", 0)
    if isinstance(data, ShapeVec) and isinstance(idx, Const):
        i = np.asarray(idx.value).astype(np.int64)
        picked = [data.entries[int(k)] for k in i.reshape(-1)]
        return [_shapevec(picked, scalar=i.ndim == 0)]
    if isinstance(data, Const) and isinstance(idx, Tensor):
        return [embedding(tr, node, data.value, idx, axis)]
    if isinstance(data, Tensor) and isinstance(idx, Const):
        i = np.asarray(idx.value).astype(np.int64)
        a = tr.onnx_axis(node, axis, len(data.axes))
        if i.ndim == 0:
            return [tr.take(node, data, a, int(i), keep=False)]
        if i.ndim == 1 and i.size >= 1 and ((np.all(np.diff(i) == 1) and np.all(i >= 0)) or list(i) == [-1]):
            return [tr.slice_axis(node, data, a, int(i[0]), int(i[-1]) + 1 if i[-1] != -1 else BIG, 1)]
    raise Untranslatable(f"{node.where()}: Gather of a {data.__class__.__name__} by a "
                         f"{idx.__class__.__name__}")


def embedding(tr, node, weight, ids, axis):
    """Gather on a weight matrix by token ids -> Embedding (folded into the next recurrent layer).
    A quantized table (int8 / uint8, onnxruntime's quantized Gather) gives an Embedding of its
    integers, which the DequantizeLinear after it turns into the float Embedding."""
    if axis != 0 or weight.ndim != 2 or ids.dtype != "int64":
        raise Untranslatable(f"{node.where()}: Gather on a constant that is not an embedding lookup")
    if ids.ref[0] not in {i.name for i in tr.model_inputs} or ids.split:
        raise Untranslatable(f"{node.where()}: an embedding lookup reads a graph input of token ids")
    dtype = "float32"
    if weight.dtype in (np.int8, np.uint8):
        dtype = str(weight.dtype)
    elif weight.dtype != np.float32:
        raise Untranslatable(f"{node.where()}: an embedding table of type {weight.dtype}")
    ref = tr.add(node.name, Embedding(np.asarray(weight, f32)), [ids.ref])[0]
    if dtype != "float32":
        tr.int_embeddings[ref] = (ids.ref, np.asarray(weight))
    return Tensor(ref, tr.shapes[ref], None, list(ids.axes) + [len(ids.shape) + 1], dtype)


# tested by tests/test_onnx_graphs.py::test_rule_reshape_flatten_and_slice
#       and tests/test_onnx_graphs.py::test_last_step
@RULES.rule("Slice")
def slice_by_constants(tr, node, ins):
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
        return [_shapevec(v.entries[slice(_py(starts[0]), _py(ends[0]), steps[0])])]
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
            v = tr.slice_axis(node, v, tr.onnx_axis(node, a, len(v.axes)), s, e, st)
        return [v]
    raise Untranslatable(f"{node.where()}: Slice of a {v.__class__.__name__}")


# tested by tests/test_onnx_graphs.py::test_rule_concat_and_time_major_constant
#       and tests/test_onnx_graphs.py::test_rule_direction_pieces_concatenated_are_the_final_state
@RULES.rule("Concat")
def concat(tr, node, ins):
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
    a = tr.onnx_axis(node, axis, rank)
    if len(vals) == 1:
        return vals
    first = vals[0]
    if not all(v.split is not None and v.split[1] == first.split[1] and v.axes == first.axes
               and len(v.shape) == len(first.shape) for v in vals) or first.axes[a] != len(first.shape):
        vals = [tr.norm(v) for v in vals]  # not along the outer part of a split: (1, H) is no split
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
            if ok and tr.shapes[src][-1] == pos and len(tr.shapes[src]) == last:
                split = None if first.split is None else (pos // first.split[1], first.split[1])
                return [Tensor(src, tr.shapes[src], split, list(first.axes), first.dtype)]
        ref = tr.joined(node.name, [v.ref for v in vals])
        split = None if first.split is None else (sum(v.split[0] for v in vals), first.split[1])
        return [Tensor(ref, tr.shapes[ref], split, list(first.axes), first.dtype)]
    if same_view and va is not None and va < last and all(v.split == first.split for v in vals):
        ref = tr.add(node.name, Concatenate(axis=va), [v.ref for v in vals], keep_leading=False)[0]
        return [Tensor(ref, tr.shapes[ref], first.split, list(first.axes), first.dtype)]
    cs = [tr.canonical(v, node.name) for v in vals]
    if any(c.axes != cs[0].axes for c in cs):
        raise Untranslatable(f"{node.where()}: Concat of tensors with different batch axes")
    ref = tr.add(node.name, Concatenate(axis=cs[0].axes[a]), [c.ref for c in cs])[0]
    return [Tensor(ref, tr.shapes[ref], None, list(cs[0].axes), cs[0].dtype)]


# tested by tests/test_onnx_graphs.py::test_rule_reshape_flatten_and_slice
@RULES.rule("Reshape")
def reshape_node(tr, node, ins):
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
        dims_in = tr.onnx_dims(v)
        entries = [dims_in[i] if (isinstance(e, int) and e == 0 and i < len(dims_in)) else e
                   for i, e in enumerate(entries)]
    return [reshape(tr, node, v, entries)]


# tested by tests/test_onnx_graphs.py::test_rule_reshape_flatten_and_slice
@RULES.rule("Flatten")
def flatten(tr, node, ins):
    v = ins[0]
    if not isinstance(v, Tensor):
        raise Untranslatable(f"{node.where()}: Flatten of a {v.__class__.__name__}")
    axis = node.attrs.get("axis", 1)
    dims = tr.onnx_dims(v)
    axis = axis % len(dims) if axis < 0 else axis
    if axis != 1:
        raise Untranslatable(f"{node.where()}: Flatten at axis {axis}")
    return [reshape(tr, node, v, [dims[0], -1])]


def reshape(tr, node, v: Tensor, entries):
    dims = tr.onnx_dims(v)
    if entries.count(-1) > 1:
        raise Untranslatable(f"{node.where()}: Reshape with several -1")
    if tr.static_batch is not None and BATCH in dims and BATCH not in entries:
        # a graph exported for one batch size writes that size where the batch goes (PyTorch's
        # dynamo exporter when it specialises the batch): the batch axis at the same position
        b = dims.index(BATCH)
        if b < len(entries) and entries[b] == tr.static_batch:
            entries = entries[:b] + [BATCH] + entries[b + 1:]
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
    c = tr.canonical(v, node.name)
    b = c.axes.index(0)
    out_b = next(go[0] for gi, go in groups if gi == [b])
    target = [e for j, e in enumerate(entries) if j != out_b]
    sizes = [e if isinstance(e, int) else None for e in target]
    unknown = [j for j, s in enumerate(sizes) if s is None or s == -1]
    if len(unknown) > 1:
        raise Untranslatable(f"{node.where()}: Reshape to {_fmt(entries)} leaves two sizes unknown")
    sizes = [-1 if s is None else s for s in sizes]
    ref = tr.add(node.name, Reshape(target_shape=tuple(sizes)), [c.ref], keep_leading=False)[0]
    others = iter(range(1, len(entries)))
    return Tensor(ref, tr.shapes[ref], None, [0 if j == out_b else next(others) for j in range(len(entries))],
                  v.dtype)


def _shapevec(entries, scalar=False):
    """A shape vector; a Const when every entry is known (later nodes then fold at import)."""
    if all(isinstance(e, int) for e in entries):
        return Const(np.array(entries[0] if scalar else entries, np.int64))
    return ShapeVec(list(entries), scalar=scalar)


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
