"""Arithmetic and activations: ONNX MatMul / Gemm / Add / Sub / Mul / Div / Pow / Max / Min,
the element-wise functions (Tanh, Relu, Softmax, Exp, ...) and ReduceMean / ReduceMax over time ->
fastrnn Dense, Activation, Math, Merge, Arithmetic and GlobalPooling1D layers.

- MatMul(x, W) [+ Add(b)] and Gemm -> Dense (Add of a bias right after the MatMul folds into it);
- Softmax / LogSoftmax / Tanh / Relu / Sigmoid / ... -> Activation; Exp, Log, Neg, ... -> Math;
- Add / Sub / Mul / Max / Min between tensors -> Merge; with a constant -> Arithmetic;
- ReduceMean / ReduceMax over the time axis of (B, T, F) -> GlobalPooling1D.
"""
from __future__ import annotations

import numpy as np

from ...layers import Activation, Arithmetic, Dense, GlobalPooling1D, Math, Merge
from ...layers.activation import FRAMEWORK_ACTIVATIONS
from .values import Const, RuleFamily, Tensor, Untranslatable, WrongBatchAxis, _axes_arg, f32

RULES = RuleFamily("math")


# -- dense -------------------------------------------------------------------------------------------

# tested by tests/test_onnx_graphs.py::test_rule_matmul_add_is_one_dense_and_gemm_folds_alpha_beta
@RULES.rule("MatMul")
def matmul(tr, node, ins):
    """MatMul(x, W) with W constant (K, N) -> Dense without a bias (an Add after it adds one)."""
    x, w = ins
    if isinstance(x, Tensor) and isinstance(w, Const) and w.value.ndim == 2:
        if not tr.last_axis_ok(x):
            x = tr.canonical(x, node.name)
            if not tr.last_axis_ok(x):
                raise WrongBatchAxis(f"{node.where()}: the batch is the last axis")
        layer = Dense(np.ascontiguousarray(np.asarray(w.value, f32).T), None)
        ref = tr.add(node.name, layer, [x.ref])[0]
        tr.dense_no_bias[ref] = (layer, x.ref)
        return [Tensor(ref, tr.shapes[ref], None, list(x.axes), "float32")]
    raise Untranslatable(f"{node.where()}: MatMul of a {x.__class__.__name__} by a {w.__class__.__name__}")


# tested by tests/test_onnx_graphs.py::test_rule_matmul_add_is_one_dense_and_gemm_folds_alpha_beta
@RULES.rule("Gemm")
def gemm(tr, node, ins):
    """Gemm(a, B, C) with B, C constant -> Dense (alpha folded into W, beta into the bias)."""
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    at = node.attrs
    if not (isinstance(a, Tensor) and isinstance(b, Const) and (c is None or isinstance(c, Const))):
        raise Untranslatable(f"{node.where()}: Gemm needs a tensor times constant weights")
    if at.get("transA", 0):
        raise Untranslatable(f"{node.where()}: Gemm with transA")
    a = tr.plain(a, node.name)
    w = np.asarray(b.value, f32)
    w = w if at.get("transB", 0) else w.T  # (out, in)
    w = w * np.float32(at.get("alpha", 1.0))
    bias = None
    if c is not None:
        cv = np.asarray(c.value, f32) * np.float32(at.get("beta", 1.0))
        if cv.ndim == 2 and cv.shape[0] != 1:
            raise Untranslatable(f"{node.where()}: Gemm bias with a batch axis")
        bias = np.broadcast_to(cv.reshape(-1), (w.shape[0],)) if cv.size in (1, w.shape[0]) else None
        if bias is None:
            raise Untranslatable(f"{node.where()}: Gemm bias of shape {cv.shape}")
    ref = tr.add(node.name, Dense(w, None if bias is None else np.array(bias)), [a.ref])[0]
    return [Tensor(ref, tr.shapes[ref], None, [0, 1], "float32")]


# -- element-wise functions --------------------------------------------------------------------------

# ONNX operators -> the layers computing them from the node's attributes. The parameter-free
# functions go through the importers' one name table (FRAMEWORK_ACTIVATIONS, keyed by the
# lower-case name); the others carry their own attributes (LeakyRelu / Elu alpha, HardSigmoid
# alpha and beta) or are not activations (Exp, Neg, Log, ...).
ELEMENTWISE = {
    # tested by tests/test_onnx_graphs.py::test_rule_activations_on_any_axis
    "Tanh": lambda at: Activation(FRAMEWORK_ACTIVATIONS["tanh"]),
    "LeakyRelu": lambda at: Activation("leaky_relu", alpha=at.get("alpha", 0.01), beta=0.0),
    "Exp": lambda at: Math("exp"),
    # tested by tests/test_onnx_graphs.py::test_rule_matmul_add_is_one_dense_and_gemm_folds_alpha_beta
    "Relu": lambda at: Activation(FRAMEWORK_ACTIVATIONS["relu"]),
    "Sigmoid": lambda at: Activation(FRAMEWORK_ACTIVATIONS["sigmoid"]),
    # tested by tests/test_onnx_graphs.py::test_rule_elementwise_functions
    "Elu": lambda at: Activation("elu", alpha=at.get("alpha", 1.0), beta=0.0),
    "Softplus": lambda at: Activation(FRAMEWORK_ACTIVATIONS["softplus"]),
    "Softsign": lambda at: Activation(FRAMEWORK_ACTIVATIONS["softsign"]),
    "HardSigmoid": lambda at: Activation("hard_sigmoid", alpha=at.get("alpha", 0.2), beta=at.get("beta", 0.5)),
    "Neg": lambda at: Math("neg"),
    "Log": lambda at: Math("log"),
    "Sqrt": lambda at: Math("sqrt"),
    "Abs": lambda at: Math("abs"),
    "Reciprocal": lambda at: Math("reciprocal"),
}


@RULES.rule(*ELEMENTWISE)
def elementwise(tr, node, ins):
    """A function of each value -> the layer of ELEMENTWISE on the same view."""
    return unary(tr, node, ins, ELEMENTWISE[node.op_type](node.attrs))


def unary(tr, node, ins, layer):
    v = ins[0]
    if not isinstance(v, Tensor):
        raise Untranslatable(f"{node.where()}: {node.op_type} of a {v.__class__.__name__}")
    ref = tr.add(node.name, layer, [v.ref])[0]
    return [Tensor(ref, tr.shapes[ref], v.split, list(v.axes), v.dtype)]


# tested by tests/test_onnx_graphs.py::test_rule_activations_on_any_axis
@RULES.rule("Softmax", "LogSoftmax")
def softmax_rule(tr, node, ins):
    return softmax(tr, node, ins, "softmax" if node.op_type == "Softmax" else "log_softmax")


def softmax(tr, node, ins, function):
    v = ins[0]
    if not isinstance(v, Tensor):
        raise Untranslatable(f"{node.where()}: {node.op_type} of a {v.__class__.__name__}")
    rank = len(v.axes)
    opset = tr.g.opset
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
    axis = tr.onnx_axis(node, axis, rank)
    if opset < 13 and axis != rank - 1:
        # opset < 13 flattens to 2-D at axis: only the last axis is a plain softmax
        raise Untranslatable(f"{node.where()}: {node.op_type} (opset {opset}) over axes {axis}.. of rank {rank}")
    va = v.axes[axis]
    if va is None:
        raise Untranslatable(f"{node.where()}: {node.op_type} over a size-1 axis")
    if va == 0:
        raise WrongBatchAxis(f"{node.where()}: softmax over the batch")
    if v.is_split_axis(va):
        v = tr.canonical(v, node.name)
        va = v.axes[axis]
    ax = -1 if va == len(v.shape) else va
    ref = tr.add(node.name, Activation(function, axis=ax), [v.ref])[0]
    return [Tensor(ref, tr.shapes[ref], v.split, list(v.axes), v.dtype)]


# -- two operands ------------------------------------------------------------------------------------

# ONNX op -> (Merge op between two tensors or None, Arithmetic op with a constant)
ARITHMETIC = {"Add": ("add", "add"), "Sub": ("subtract", "subtract"), "Mul": ("multiply", "multiply"),
              "Div": (None, "divide"), "Pow": (None, "power")}


# tested by tests/test_onnx_graphs.py::test_rule_merges_and_constant_arithmetic (Pow by
# ::test_rule_elementwise_functions; a bias folding into MatMul's Dense by
# ::test_rule_matmul_add_is_one_dense_and_gemm_folds_alpha_beta)
@RULES.rule("Add", "Sub", "Mul", "Div", "Pow")
def arithmetic(tr, node, ins):
    """Between two tensors -> Merge (Add, Sub, Mul); with a constant -> Arithmetic. (onnxruntime's
    dequantizing Mul is read first, by rules_quantized.py.)"""
    merge_op, arith_op = ARITHMETIC[node.op_type]
    return binary(tr, node, ins, merge_op, arith_op)


# tested by tests/test_onnx_graphs.py::test_rule_merges_and_constant_arithmetic (Max),
# tests/test_onnx_graphs.py::test_rule_elementwise_functions (Min)
@RULES.rule("Max", "Min")
def extremum(tr, node, ins):
    return variadic(tr, node, ins, "maximum" if node.op_type == "Max" else "minimum")


def binary(tr, node, ins, merge_op, arith_op):
    a, b = ins[0], ins[1]
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if merge_op is None:
            raise Untranslatable(f"{node.where()}: {node.op_type} of two tensors")
        return [merge(tr, node, [a, b], merge_op)]
    if isinstance(a, Tensor) and isinstance(b, Const):
        return [with_constant(tr, node, a, b.value, arith_op, constant_first=False)]
    if isinstance(a, Const) and isinstance(b, Tensor):
        return [with_constant(tr, node, b, a.value, arith_op, constant_first=True)]
    raise Untranslatable(f"{node.where()}: {node.op_type} of a {a.__class__.__name__} and a "
                         f"{b.__class__.__name__}")


def merge(tr, node, vals, op):
    if len({len(v.axes) for v in vals}) != 1:
        raise Untranslatable(f"{node.where()}: {node.op_type} of tensors of different ranks")
    if all(v.axes == vals[0].axes and v.split == vals[0].split and len(v.shape) == len(vals[0].shape)
           for v in vals):
        ref = tr.add(node.name, Merge(op=op), [v.ref for v in vals])[0]
        return Tensor(ref, tr.shapes[ref], vals[0].split, list(vals[0].axes), "float32")
    cs = [tr.canonical(v, node.name) for v in vals]
    if any(c.axes != cs[0].axes for c in cs):
        raise Untranslatable(f"{node.where()}: {node.op_type} of tensors with different batch axes")
    ref = tr.add(node.name, Merge(op=op), [c.ref for c in cs])[0]
    return Tensor(ref, tr.shapes[ref], None, list(cs[0].axes), "float32")


def with_constant(tr, node, t: Tensor, c, op, constant_first):
    c = np.asarray(c)
    if t.dtype != "float32":
        raise Untranslatable(f"{node.where()}: arithmetic on token ids")
    # Add of a bias right after MatMul: one Dense with a bias
    if op == "add" and t.ref in tr.dense_no_bias and tr.last_axis_ok(t):
        layer, src = tr.dense_no_bias[t.ref]
        if c.size == layer.output_size and c.shape[-1] == c.size and c.ndim <= len(t.axes):
            ref = tr.add(node.name, Dense(layer.weight, c.reshape(-1).astype(f32), int8=layer.int8), [src])[0]
            return Tensor(ref, tr.shapes[ref], None, list(t.axes), "float32")
    rank = len(t.axes)
    if c.ndim > rank:
        raise Untranslatable(f"{node.where()}: constant of rank {c.ndim} on a tensor of rank {rank}")
    if c.size == 1:
        const = c.reshape(()).astype(f32)
        ref = tr.add(node.name, Arithmetic(op, const, constant_first), [t.ref])[0]
        return Tensor(ref, tr.shapes[ref], t.split, list(t.axes), "float32")
    t = tr.canonical(t, node.name)
    cp = c.reshape((1,) * (rank - c.ndim) + c.shape)
    order = [t.axes.index(j) for j in range(rank)]
    cf = np.transpose(cp, order)
    if cf.shape[0] != 1:
        raise WrongBatchAxis(f"{node.where()}: constant spans the batch axis")
    ref = tr.add(node.name, Arithmetic(op, cf[0].astype(f32), constant_first), [t.ref])[0]
    return Tensor(ref, tr.shapes[ref], None, list(t.axes), "float32")


def variadic(tr, node, ins, op):
    vals = [v for v in ins if v is not None]
    if len(vals) == 1:
        return vals
    if all(isinstance(v, Tensor) for v in vals):
        return [merge(tr, node, vals, op)]
    if len(vals) == 2:
        return binary(tr, node, vals, op, op)
    raise Untranslatable(f"{node.where()}: {node.op_type} of tensors and constants")


# -- reductions --------------------------------------------------------------------------------------

# tested by tests/test_onnx_graphs.py::test_time_major_mean_and_max_over_time
@RULES.rule("ReduceMean", "ReduceMax")
def reduce_over_time(tr, node, ins):
    return reduce(tr, node, ins, "average" if node.op_type == "ReduceMean" else "max")


def reduce(tr, node, ins, op):
    v = ins[0]
    axes = _axes_arg(node, ins)
    if not isinstance(v, Tensor) or axes is None or len(axes) != 1:
        raise Untranslatable(f"{node.where()}: {node.op_type} other than over one axis of a tensor")
    keep = bool(node.attrs.get("keepdims", 1))
    v = tr.canonical(v, node.name)
    a = tr.onnx_axis(node, axes[0], len(v.axes))
    if len(v.axes) != 3 or v.axes[a] != 1:
        raise Untranslatable(f"{node.where()}: {node.op_type} over an axis that is not time of (B, T, F)")
    ref = tr.add(node.name, GlobalPooling1D(op=op, keepdims=keep, mask_aware=False), [v.ref],
                 keep_leading=False)[0]
    axes = list(v.axes) if keep else [0 if b == 0 else 1 for i, b in enumerate(v.axes) if i != a]
    return [Tensor(ref, tr.shapes[ref], None, axes, "float32")]
