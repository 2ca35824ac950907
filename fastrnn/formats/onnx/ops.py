"""The glue operators of exported RNN models, in NumPy (ONNX semantics, opset 7-22).

Each op is ``f(node, inputs) -> list of outputs``: ``inputs`` are arrays, None for an omitted
optional input. The recurrent ops themselves run on fastrnn's kernels (recurrent.py). An op that
is not here raises UnsupportedLayerError naming the node (see session.py).
"""
from __future__ import annotations

import functools

import numpy as np

from .graph import ONNX_DTYPES

OPS = {}


def op(*names):
    def register(f):
        for n in names:
            OPS[n] = f
        return f
    return register


def _axes(node, inputs, index=1):
    """Axes from the attribute (older opsets) or from input ``index`` (opset 13+)."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return None


def _int_list(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


@op("Identity", "Dropout")
def _identity(node, x):
    out = [x[0]]
    if node.op_type == "Dropout" and len(node.outputs) > 1:
        out.append(np.ones(np.shape(x[0]), dtype=bool))
    return out


@op("Constant")
def _constant(node, x):
    a = node.attrs
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if key.startswith("value_float"):
                v = np.array(v, dtype=np.float32)
            elif key.startswith("value_int"):
                v = np.array(v, dtype=np.int64)
            return [np.asarray(v)]
    raise ValueError(f"{node.where()}: Constant without a supported value attribute")


MAX_ELEMENTS = 1 << 28  # 1 GB of float32: no glue tensor of a real model comes near it


def check_size(node, shape):
    """Refuse (naming the node) an output of more than MAX_ELEMENTS before it is allocated."""
    shape = [int(s) for s in shape]
    if any(s < 0 for s in shape):
        raise ValueError(f"{node.where()}: negative size in the output shape {shape}")
    total = 1
    for s in shape:
        total *= s
    if total > MAX_ELEMENTS:
        raise ValueError(f"{node.where()}: the output would hold {total:,} elements (shape {shape}), beyond "
                         f"fastrnn's limit of {MAX_ELEMENTS:,} for a glue tensor; refused")
    return shape


@op("ConstantOfShape")
def _constant_of_shape(node, x):
    shape = check_size(node, _int_list(x[0]))
    value = node.attrs.get("value", np.zeros(1, np.float32))
    return [np.full(shape, np.asarray(value).reshape(-1)[0], dtype=np.asarray(value).dtype)]


@op("Shape")
def _shape(node, x):
    s = np.array(np.shape(x[0]), dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return [s[start:end]]


@op("Size")
def _size(node, x):
    return [np.array(np.size(x[0]), dtype=np.int64)]


@op("Cast")
def _cast(node, x):
    to = node.attrs["to"]
    if to not in ONNX_DTYPES:
        raise ValueError(f"{node.where()}: Cast to unsupported type {to}")
    return [np.asarray(x[0]).astype(ONNX_DTYPES[to])]


@op("Gather")
def _gather(node, x):
    data, idx = np.asarray(x[0]), np.asarray(x[1]).astype(np.int64)
    axis = node.attrs.get("axis", 0)
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx.min() if idx.min() < -n else idx.max()
        raise IndexError(f"{node.where()}: index {bad} is out of range for axis {axis} of size {n}")
    return [np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)]


@op("Transpose")
def _transpose(node, x):
    perm = node.attrs.get("perm")
    return [np.transpose(x[0], perm)]


@op("Reshape")
def _reshape(node, x):
    data, shape = np.asarray(x[0]), _int_list(x[1])
    if not node.attrs.get("allowzero", 0):
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [data.reshape(shape)]


@op("Flatten")
def _flatten(node, x):
    data = np.asarray(x[0])
    axis = node.attrs.get("axis", 1)
    axis = axis + data.ndim if axis < 0 else axis
    return [data.reshape(int(np.prod(data.shape[:axis], dtype=np.int64)), -1)]


@op("Squeeze")
def _squeeze(node, x):
    axes = _axes(node, x)
    return [np.squeeze(x[0], axis=tuple(axes)) if axes else np.squeeze(x[0])]


@op("Unsqueeze")
def _unsqueeze(node, x):
    axes = _axes(node, x)
    out = np.asarray(x[0])
    ndim = out.ndim + len(axes)
    for a in sorted(a + ndim if a < 0 else a for a in axes):
        out = np.expand_dims(out, a)
    return [out]


@op("Concat")
def _concat(node, x):
    return [np.concatenate([np.asarray(v) for v in x if v is not None], axis=node.attrs["axis"])]


@op("Split")
def _split(node, x):
    data = np.asarray(x[0])
    axis = node.attrs.get("axis", 0)
    split = node.attrs.get("split")
    if split is None and len(x) > 1 and x[1] is not None:
        split = _int_list(x[1])
    n_out = len(node.outputs)
    if not isinstance(axis, int) or not -data.ndim <= axis < data.ndim:
        raise ValueError(f"{node.where()}: axis {axis!r} is out of range for a tensor of {data.ndim} axes")
    if split is None:
        num = node.attrs.get("num_outputs", n_out)
        if not isinstance(num, int) or num < 1 or num != n_out:
            raise ValueError(f"{node.where()}: num_outputs must be a positive integer equal to the node's "
                             f"{n_out} outputs, got {num!r}")
        size = -(-data.shape[axis] // num)
        split = [max(0, min(size, data.shape[axis] - i * size)) for i in range(num)]
    if len(split) != n_out or any(v < 0 for v in split) or sum(split) != data.shape[axis]:
        raise ValueError(f"{node.where()}: split sizes {split} must be {n_out} sizes >= 0 adding up to "
                         f"{data.shape[axis]} (axis {axis})")
    return list(np.split(data, np.cumsum(split)[:-1], axis=axis))


@op("Slice")
def _slice(node, x):
    data = np.asarray(x[0])
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = _int_list(x[1]), _int_list(x[2])
        axes = _int_list(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = _int_list(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ValueError(f"{node.where()}: Slice step 0")
        n = data.shape[a]
        s = s + n if s < 0 else s
        e = e + n if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), n), min(max(e, 0), n)
        else:
            s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
        index[a] = slice(s, None if e < 0 else e, st)
    return [data[tuple(index)]]


@op("Expand")
def _expand(node, x):
    data = np.asarray(x[0])
    target = _int_list(x[1])
    if any(v < 0 for v in target):
        raise ValueError(f"{node.where()}: negative size in the Expand shape {target}")
    try:
        shape = np.broadcast_shapes(data.shape, tuple(target))
    except ValueError:
        raise ValueError(f"{node.where()}: shape {data.shape} cannot be expanded to {target}") from None
    check_size(node, shape)
    return [np.broadcast_to(data, shape).copy()]


@op("Tile")
def _tile(node, x):
    data, reps = np.asarray(x[0]), _int_list(x[1])
    if len(reps) != data.ndim or any(r < 0 for r in reps):
        raise ValueError(f"{node.where()}: repeats {reps} must be {data.ndim} counts >= 0")
    check_size(node, [d * r for d, r in zip(data.shape, reps)])
    return [np.tile(data, reps)]


@op("Range")
def _range(node, x):
    start, limit, delta = (np.asarray(v).reshape(()) for v in x[:3])
    if not np.all(np.isfinite([start, limit, delta]).astype(bool)) or delta == 0:
        raise ValueError(f"{node.where()}: Range needs finite start, limit and a non-zero delta")
    count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    check_size(node, [count])
    return [np.arange(start, limit, delta, dtype=np.result_type(start))]


def _binary(f):
    def run(node, x):
        a, b = np.asarray(x[0]), np.asarray(x[1])
        try:
            check_size(node, np.broadcast_shapes(a.shape, b.shape))
        except ValueError as exc:
            if "refused" in str(exc):
                raise
            raise ValueError(f"{node.where()}: shapes {a.shape} and {b.shape} do not broadcast") from None
        return [f(a, b).astype(np.result_type(a, b), copy=False)]
    return run


OPS["Add"] = _binary(np.add)
OPS["Sub"] = _binary(np.subtract)
OPS["Mul"] = _binary(np.multiply)
OPS["Pow"] = _binary(np.power)
OPS["Max"] = lambda node, x: [functools.reduce(np.maximum, [np.asarray(v) for v in x])]  # broadcasting
OPS["Min"] = lambda node, x: [functools.reduce(np.minimum, [np.asarray(v) for v in x])]


@op("Div")
def _div(node, x):
    a, b = np.asarray(x[0]), np.asarray(x[1])
    if np.issubdtype(a.dtype, np.integer):
        return [np.trunc(a / b).astype(a.dtype)]
    return [(a / b).astype(np.result_type(a, b), copy=False)]


@op("Equal")
def _equal(node, x):
    return [np.equal(x[0], x[1])]


@op("Less")
def _less(node, x):
    return [np.less(x[0], x[1])]


@op("Greater")
def _greater(node, x):
    return [np.greater(x[0], x[1])]


@op("Not")
def _not(node, x):
    return [np.logical_not(x[0])]


@op("Where")
def _where(node, x):
    return [np.where(x[0], x[1], x[2])]


@op("MatMul")
def _matmul(node, x):
    return [np.matmul(x[0], x[1]).astype(np.float32, copy=False)]


@op("Gemm")
def _gemm(node, x):
    a, b = np.asarray(x[0]), np.asarray(x[1])
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = node.attrs.get("alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        y = y + node.attrs.get("beta", 1.0) * np.asarray(x[2])
    return [y.astype(np.float32, copy=False)]


def _softmax_like(log):
    def run(node, x):
        data = np.asarray(x[0], dtype=np.float32)
        default = -1 if _opset_13(node) else 1
        axis = node.attrs.get("axis", default)
        if not _opset_13(node):  # opset < 13: flatten to 2-D at axis
            shape = data.shape
            axis = axis + data.ndim if axis < 0 else axis
            flat = data.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
            return [run_axis(flat, 1, log).reshape(shape)]
        return [run_axis(data, axis, log)]
    return run


def run_axis(data, axis, log):
    z = data - data.max(axis=axis, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=axis, keepdims=True)
    return (z - np.log(s) if log else e / s).astype(np.float32)


def _opset_13(node):
    return node.attrs.get("_opset", 13) >= 13


OPS["Softmax"] = _softmax_like(False)
OPS["LogSoftmax"] = _softmax_like(True)


def _unary(f):
    return lambda node, x: [f(np.asarray(x[0])).astype(np.asarray(x[0]).dtype, copy=False)]


OPS["Sigmoid"] = _unary(lambda a: 1.0 / (1.0 + np.exp(-a)))
OPS["Tanh"] = _unary(np.tanh)
OPS["Relu"] = _unary(lambda a: np.maximum(a, 0))
OPS["Neg"] = _unary(np.negative)
OPS["Exp"] = _unary(np.exp)
OPS["Log"] = _unary(np.log)
OPS["Sqrt"] = _unary(np.sqrt)
OPS["Abs"] = _unary(np.abs)


@op("ReduceMean", "ReduceMax", "ReduceSum")
def _reduce(node, x):
    f = {"ReduceMean": np.mean, "ReduceMax": np.max, "ReduceSum": np.sum}[node.op_type]
    axes = _axes(node, x)
    keep = bool(node.attrs.get("keepdims", 1))
    if axes is None and node.attrs.get("noop_with_empty_axes", 0):
        return [np.asarray(x[0])]
    data = np.asarray(x[0])
    return [f(data, axis=None if axes is None else tuple(axes), keepdims=keep).astype(data.dtype, copy=False)]


@op("ArgMax")
def _argmax(node, x):
    axis, keep = node.attrs.get("axis", 0), node.attrs.get("keepdims", 1)
    out = np.argmax(x[0], axis=axis)
    return [np.expand_dims(out, axis).astype(np.int64) if keep else out.astype(np.int64)]


# -- quantized operators (ONNX QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear /
# MatMulInteger, and onnxruntime's com.microsoft MatMulIntegerToFloat / DynamicQuantizeMatMul):
# exact ONNX semantics, integer products in int64 (exact), round half to even, saturation.
QUANT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}

# The quantization parameters of each quantized operator, by input position: its scales, and the
# (quantized tensor, zero point) pairs that must share one integer type (onnxruntime's type
# constraints: its loader refuses a file where they differ).
QUANTIZED_INPUTS = {
    "DynamicQuantizeLSTM": {"scales": {8: "W_scale", 10: "R_scale"},
                            "pairs": [((1, "W"), (9, "W_zero_point")), ((2, "R"), (11, "R_zero_point")),
                                      ((1, "W"), (2, "R"))]},
    "MatMulIntegerToFloat": {"scales": {2: "a_scale", 3: "b_scale"},
                             "pairs": [((0, "A"), (4, "a_zero_point")), ((1, "B"), (5, "b_zero_point"))]},
    "DynamicQuantizeMatMul": {"scales": {2: "b_scale"}, "pairs": [((1, "B"), (3, "b_zero_point"))]},
    "MatMulInteger": {"scales": {}, "pairs": [((0, "A"), (2, "a_zero_point")), ((1, "B"), (3, "b_zero_point"))]},
    "DequantizeLinear": {"scales": {1: "x_scale"}, "pairs": [((0, "x"), (2, "x_zero_point"))]},
    "QuantizeLinear": {"scales": {1: "y_scale"}, "pairs": []},
}


def check_quantization_parameters(nodes, constants):
    """Refuse (ValueError naming the node and the input) a quantized operator whose constant scale
    is not finite and positive (onnxruntime's quantize_dynamic writes positive finite scales; a NaN
    one turns every output into garbage) or whose zero point's type differs from its tensor's
    (int8 weights with a uint8 zero point: onnxruntime refuses the file). ``constants``: the
    initializers and Constant outputs by name."""
    # onnxruntime's MatMulInteger pattern: Mul(DynamicQuantizeLinear's scale of x, B's scale)
    dynamic_scales = {n.outputs[1] for n in nodes if n.op_type == "DynamicQuantizeLinear" and len(n.outputs) > 1}
    for node in nodes:
        spec = QUANTIZED_INPUTS.get(node.op_type)
        if node.op_type == "Mul" and len(node.inputs) == 2 and set(node.inputs) & dynamic_scales:
            spec = {"scales": {k: "the weight scale" for k, n in enumerate(node.inputs) if n not in dynamic_scales},
                    "pairs": []}
        if spec is None:
            continue

        def const(i):
            name = node.inputs[i] if i < len(node.inputs) else ""
            return constants.get(name) if name else None

        for i, what in spec["scales"].items():
            scale = const(i)
            if scale is None:
                continue
            scale = np.asarray(scale)
            if scale.dtype.kind != "f":
                raise ValueError(f"{node.where()}: {what} has type {scale.dtype}, expected float32")
            if scale.size and not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                bad = scale.reshape(-1)[~(np.isfinite(scale.reshape(-1)) & (scale.reshape(-1) > 0))][0]
                raise ValueError(f"{node.where()}: {what} holds {bad} (every scale must be a finite number > 0, as "
                                 "onnxruntime's quantizer writes them): the file is damaged or was edited; quantize "
                                 "the float model again")
        for (i, a_what), (j, b_what) in spec["pairs"]:
            a, b = const(i), const(j)
            if a is not None and b is not None and np.asarray(a).dtype != np.asarray(b).dtype:
                raise ValueError(f"{node.where()}: {b_what} is {np.asarray(b).dtype} but {a_what} is "
                                 f"{np.asarray(a).dtype}; they must have the same integer type (onnxruntime refuses "
                                 "this file too): quantize the float model again")


def _quant_dtype(node, a, what):
    a = np.asarray(a)
    if a.dtype not in QUANT_RANGES:
        raise ValueError(f"{node.where()}: {what} has type {a.dtype}; fastrnn reads int8 and uint8 quantized "
                         "tensors only")
    return a


def _per_axis(node, p, x, axis, what):
    """A scale / zero point: scalar (per tensor) or 1-D along ``axis`` of x -> broadcastable to x."""
    p = np.asarray(p)
    if node.attrs.get("block_size", 0):
        raise ValueError(f"{node.where()}: blocked quantization (block_size) is not supported")
    if p.ndim == 0 or p.size == 1 and p.ndim <= 1:
        return p.reshape(())
    if p.ndim != 1:
        raise ValueError(f"{node.where()}: {what} of shape {p.shape} (expected a scalar or 1-D per-axis values)")
    x = np.asarray(x)
    ax = axis % x.ndim if x.ndim and -x.ndim <= axis < x.ndim else None
    if ax is None or x.shape[ax] != p.size:
        raise ValueError(f"{node.where()}: {what} has {p.size} values, axis {axis} of the input {x.shape} does "
                         "not fit")
    shape = [1] * x.ndim
    shape[ax] = p.size
    return p.reshape(shape)


def quantize_values(x, scale, zero, dtype):
    """saturate(round_half_even(x / scale) + zero) as ``dtype`` (int8 / uint8): QuantizeLinear."""
    lo, hi = QUANT_RANGES[np.dtype(dtype)]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32)).astype(np.float64)
    q = np.nan_to_num(q, nan=0.0, posinf=hi, neginf=lo) + np.asarray(zero, np.float64)
    return np.clip(q, lo, hi).astype(dtype)


@op("QuantizeLinear")
def _quantize_linear(node, x):
    data = np.asarray(x[0], np.float32)
    axis = node.attrs.get("axis", 1)
    zero = x[2] if len(x) > 2 and x[2] is not None else None
    dtype = np.uint8 if zero is None else _quant_dtype(node, zero, "the zero point").dtype
    out_t = node.attrs.get("output_dtype", 0)
    if out_t:
        if ONNX_DTYPES.get(out_t) not in (np.int8, np.uint8) or (zero is not None and ONNX_DTYPES[out_t] != dtype):
            raise ValueError(f"{node.where()}: output_dtype {out_t} is not supported (int8 / uint8 only)")
        dtype = ONNX_DTYPES[out_t]
    if not node.attrs.get("saturate", 1):
        raise ValueError(f"{node.where()}: saturate=0 is for float8 outputs, not supported")
    scale = _per_axis(node, np.asarray(x[1], np.float32), data, axis, "y_scale")
    zero = 0 if zero is None else _per_axis(node, zero, data, axis, "y_zero_point")
    check_size(node, data.shape)
    return [quantize_values(data, scale, zero, dtype)]


@op("DequantizeLinear")
def _dequantize_linear(node, x):
    data = np.asarray(x[0])
    if data.dtype not in QUANT_RANGES and data.dtype != np.int32:
        raise ValueError(f"{node.where()}: x has type {data.dtype}; fastrnn reads int8, uint8 and int32 only")
    axis = node.attrs.get("axis", 1)
    scale = _per_axis(node, np.asarray(x[1], np.float32), data, axis, "x_scale")
    zero = x[2] if len(x) > 2 and x[2] is not None else 0
    if len(x) > 2 and x[2] is not None and np.asarray(x[2]).dtype != data.dtype:
        raise ValueError(f"{node.where()}: x_zero_point is {np.asarray(x[2]).dtype} but x is {data.dtype}; they must "
                         "have the same integer type")
    zero = _per_axis(node, zero, data, axis, "x_zero_point")
    check_size(node, data.shape)
    return [((data.astype(np.int64) - np.asarray(zero, np.int64)).astype(np.float32) * scale).astype(np.float32)]


def dynamic_quantize(x):
    """DynamicQuantizeLinear: (y uint8, y_scale float32 scalar, y_zero_point uint8 scalar)."""
    x = np.asarray(x, np.float32)
    lo = min(0.0, float(x.min())) if x.size else 0.0
    hi = max(0.0, float(x.max())) if x.size else 0.0
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    if scale == 0:  # all zeros: scale 1, as onnxruntime gives
        return np.zeros(x.shape, np.uint8), np.float32(1), np.uint8(0)
    zero = np.uint8(np.clip(np.rint(np.float32(0) - np.float32(lo) / scale), 0, 255))
    return quantize_values(x, scale, zero, np.uint8), scale, zero


@op("DynamicQuantizeLinear")
def _dynamic_quantize_linear(node, x):
    data = np.asarray(x[0])
    if data.dtype != np.float32:
        raise ValueError(f"{node.where()}: x has type {data.dtype}, expected float32")
    check_size(node, data.shape)
    y, scale, zero = dynamic_quantize(data)
    return [y, np.asarray(scale, np.float32), np.asarray(zero, np.uint8)]


def integer_matmul(node, a, b, a_zero, b_zero):
    """(a - a_zero) @ (b - b_zero), exact (int64 sums, returned as int32 as MatMulInteger does).
    a_zero: scalar or one per row of a (M,); b_zero: scalar or one per column of b (N,)."""
    a = _quant_dtype(node, a, "A")
    b = _quant_dtype(node, b, "B")
    if a.ndim < 1 or b.ndim < 1:
        raise ValueError(f"{node.where()}: MatMul of a scalar")
    a2 = a.astype(np.int64)
    b2 = b.astype(np.int64)
    for v, z, what in ((a, a_zero, "a_zero_point"), (b, b_zero, "b_zero_point")):
        if z is not None and np.asarray(z).dtype != v.dtype:
            raise ValueError(f"{node.where()}: {what} is {np.asarray(z).dtype} but its tensor is {v.dtype}; they must "
                             "have the same integer type")
    if a_zero is not None:
        za = np.asarray(_quant_dtype(node, a_zero, "a_zero_point"), np.int64)
        if za.size > 1:
            if a.ndim < 2 or za.reshape(-1).size != a.shape[-2]:
                raise ValueError(f"{node.where()}: a_zero_point of shape {za.shape} does not fit A {a.shape}")
            za = za.reshape(-1, 1)
        a2 = a2 - za.reshape(za.shape if za.size > 1 else ())
    if b_zero is not None:
        zb = np.asarray(_quant_dtype(node, b_zero, "b_zero_point"), np.int64)
        if zb.size > 1:
            if b.ndim < 2 or zb.reshape(-1).size != b.shape[-1]:
                raise ValueError(f"{node.where()}: b_zero_point of shape {zb.shape} does not fit B {b.shape}")
            zb = zb.reshape(-1)
        b2 = b2 - zb.reshape(zb.shape if zb.size > 1 else ())
    sa = a.shape if a.ndim > 1 else (1,) + a.shape
    sb = b.shape if b.ndim > 1 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        raise ValueError(f"{node.where()}: A {a.shape} and B {b.shape} do not multiply")
    check_size(node, tuple(np.broadcast_shapes(sa[:-2], sb[:-2])) + (sa[-2], sb[-1]))
    return np.matmul(a2, b2)


@op("MatMulInteger")
def _matmul_integer(node, x):
    opt = [x[i] if len(x) > i else None for i in (2, 3)]
    return [integer_matmul(node, x[0], x[1], *opt).astype(np.int32)]


@op("MatMulIntegerToFloat")
def _matmul_integer_to_float(node, x):
    """com.microsoft: (A - a_zp) @ (B - b_zp) * a_scale * b_scale + bias."""
    opt = [x[i] if len(x) > i else None for i in range(7)]
    acc = integer_matmul(node, x[0], x[1], opt[4], opt[5]).astype(np.float32)
    scale = np.asarray(opt[2], np.float32) * np.asarray(opt[3], np.float32)
    y = acc * scale.astype(np.float32)
    if opt[6] is not None:
        y = y + np.asarray(opt[6], np.float32)
    return [y.astype(np.float32)]


@op("DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(node, x):
    """com.microsoft: A quantized as DynamicQuantizeLinear does, times B (int8 / uint8) with its
    scale and zero point, + bias."""
    opt = [x[i] if len(x) > i else None for i in range(5)]
    a = np.asarray(x[0], np.float32)
    check_size(node, a.shape)
    aq, a_scale, a_zero = dynamic_quantize(a)
    acc = integer_matmul(node, aq, x[1], a_zero, opt[3]).astype(np.float32)
    y = acc * (np.float32(a_scale) * np.asarray(opt[2], np.float32)).astype(np.float32)
    if opt[4] is not None:
        y = y + np.asarray(opt[4], np.float32)
    return [y.astype(np.float32)]
