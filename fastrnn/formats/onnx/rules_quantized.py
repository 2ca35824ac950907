"""onnxruntime's quantized operators (quantize_dynamic) -> fastrnn layers computed by the int8 engine.

- DynamicQuantizeLSTM -> Recurrent (rules_recurrent.py's rule on the dequantized weights);
- DynamicQuantizeLinear(x) -> MatMulInteger(B) -> Cast -> Mul(x scale * B scale) [+ Add(b)],
  MatMulIntegerToFloat and DynamicQuantizeMatMul -> Dense;
- Gather of a quantized table (rules_shape.py's embedding) -> DequantizeLinear -> Embedding of the
  dequantized table.

The float32 weights are onnxruntime's dequantized values and the layers keep onnxruntime's
integers beside them (``Dense.int8``, ``DirectionWeights.int8``: fastrnn.layers.Int8Weights made
by fastrnn.quantize.exact_int8 from int8_rows): the Model is an int8 model (metadata "quantized")
computing with onnxruntime's integers, in memory, copied, pickled or saved as a native int8 file.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...layers import Dense, Embedding, Recurrent
from ...quantize import exact_int8
from .recurrent import _reorder
from .rules_recurrent import recurrent
from .values import (Const, IntProduct, Quantized, RuleFamily, ScaleProduct, Tensor, Untranslatable, WrongBatchAxis,
                     f32)

RULES = RuleFamily("quantized")


# tested by tests/test_onnx_quantized.py::test_runs_on_the_int8_engine_with_those_integers
@RULES.rule("Mul")
def dequantizing_mul(tr, node, ins):
    """Mul(the dynamic scale of x, B's scale), then Mul(Cast(MatMulInteger(...)), that product):
    the Dense of the MatMulInteger pattern. Any other Mul: None (rules_math.py's arithmetic)."""
    a, b = ins[0], ins[1]
    for u, v in ((a, b), (b, a)):
        if isinstance(u, Quantized) and u.part == "scale" and isinstance(v, Const):
            return [ScaleProduct(u.source, np.asarray(v.value, f32))]
        if (isinstance(u, IntProduct) and u.cast and isinstance(v, ScaleProduct)
                and u.source is v.source):
            return [int8_dense(tr, node, u.source, u.weight, u.zero, v.scale, None)]
    return None


# tested by tests/test_onnx_quantized.py::test_quantized_file_matches_onnxruntime
@RULES.rule("Cast")
def cast_of_integer_products(tr, node, ins):
    """Cast(MatMulInteger(...)) to float: a step of the MatMulInteger pattern. Any other Cast:
    None (rules_shape.py's cast)."""
    v = ins[0]
    to = node.attrs.get("to")
    if isinstance(v, IntProduct) and not v.cast and to == 1:
        return [IntProduct(v.source, v.weight, v.zero, True)]
    return None


# tested by tests/test_onnx_quantized.py::test_quantized_file_matches_onnxruntime
@RULES.rule("DynamicQuantizeLinear")
def dynamic_quantize_linear(tr, node, ins):
    x = ins[0]
    if not isinstance(x, Tensor) or x.dtype != "float32":
        raise Untranslatable(f"{node.where()}: DynamicQuantizeLinear of a {x.__class__.__name__}")
    return [Quantized(x, "q"), Quantized(x, "scale"), Quantized(x, "zero")]


# tested by tests/test_onnx_quantized.py::test_quantized_file_matches_onnxruntime
@RULES.rule("MatMulInteger")
def matmul_integer(tr, node, ins):
    a, b = ins[0], ins[1]
    za = ins[2] if len(ins) > 2 else None
    zb = ins[3] if len(ins) > 3 else None
    if (isinstance(a, Quantized) and a.part == "q" and isinstance(b, Const)
            and isinstance(za, Quantized) and za.part == "zero" and za.source is a.source
            and (zb is None or isinstance(zb, Const))):
        return [IntProduct(a.source, np.asarray(b.value), None if zb is None else np.asarray(zb.value))]
    raise Untranslatable(f"{node.where()}: MatMulInteger outside onnxruntime's dynamic-quantization pattern "
                         "(DynamicQuantizeLinear(x) times constant weights)")


# tested by tests/test_onnx_quantized.py::test_rule_matmul_integer_to_float_and_dynamic_quantize_matmul
@RULES.rule("MatMulIntegerToFloat")
def matmul_integer_to_float(tr, node, ins):
    ins = list(ins) + [None] * (7 - len(ins))
    a, b, sa, sb, za, zb, bias = ins[:7]
    src = a.source if isinstance(a, Quantized) else None
    if (src is not None and a.part == "q" and isinstance(b, Const) and isinstance(sa, Quantized)
            and sa.part == "scale" and sa.source is src and isinstance(sb, Const)
            and isinstance(za, Quantized) and za.part == "zero" and za.source is src
            and (zb is None or isinstance(zb, Const)) and (bias is None or isinstance(bias, Const))):
        return [int8_dense(tr, node, src, b.value, None if zb is None else zb.value, sb.value,
                           None if bias is None else bias.value)]
    raise Untranslatable(f"{node.where()}: MatMulIntegerToFloat outside onnxruntime's dynamic-quantization "
                         "pattern")


# tested by tests/test_onnx_quantized.py::test_rule_matmul_integer_to_float_and_dynamic_quantize_matmul
@RULES.rule("DynamicQuantizeMatMul")
def dynamic_quantize_matmul(tr, node, ins):
    ins = list(ins) + [None] * (5 - len(ins))
    a, b, sb, zb, bias = ins[:5]
    if (isinstance(a, Tensor) and isinstance(b, Const) and isinstance(sb, Const)
            and (zb is None or isinstance(zb, Const)) and (bias is None or isinstance(bias, Const))):
        return [int8_dense(tr, node, a, b.value, None if zb is None else zb.value, sb.value,
                           None if bias is None else bias.value)]
    raise Untranslatable(f"{node.where()}: DynamicQuantizeMatMul needs constant weights, scale and zero point")


# tested by tests/test_onnx_quantized.py::test_quantized_file_matches_onnxruntime
@RULES.rule("DequantizeLinear")
def dequantize_linear(tr, node, ins):
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    src = tr.int_embeddings.get(getattr(x, "ref", None)) if isinstance(x, Tensor) else None
    if (src is None or not isinstance(scale, Const) or np.asarray(scale.value).size != 1
            or not (zero is None or (isinstance(zero, Const) and np.asarray(zero.value).size == 1))):
        raise Untranslatable(f"{node.where()}: DequantizeLinear of a run-time tensor other than a quantized "
                             "embedding lookup (per-tensor scale)")
    s = np.asarray(scale.value, f32).reshape(())
    z = 0 if zero is None else int(np.asarray(zero.value).reshape(()))
    key = (x.ref, float(s), z)
    ref = tr.dequantized.get(key)
    if ref is None:
        ids_ref, q = src
        E = ((q.astype(np.int64) - z).astype(f32) * s).astype(f32)
        ref = tr.add(node.name, Embedding(E), [ids_ref])[0]
        tr.dequantized[key] = ref
        if tr.int8 is None:
            tr.int8 = {"exact": [], "requantized": []}
    return [Tensor(ref, tr.shapes[ref], x.split, list(x.axes), "float32", x.pieces)]


# tested by tests/test_onnx_quantized.py::test_quantized_file_matches_onnxruntime
@RULES.rule("DynamicQuantizeLSTM")
def dynamic_quantize_lstm(tr, node, ins):
    """onnxruntime's int8 LSTM: W [D, I, 4H] and R [D, H, 4H] (transposed against LSTM's)
    int8 / uint8 with scales and zero points per direction or per column (D, 4H)."""
    ins = list(ins) + [None] * (12 - len(ins))
    mats = {}
    for k, (w, sc, zp, what) in enumerate(((ins[1], ins[8], ins[9], "W"), (ins[2], ins[10], ins[11], "R"))):
        if not isinstance(w, Const) or not isinstance(sc, Const) or not (zp is None or isinstance(zp, Const)):
            raise Untranslatable(f"{node.where()}: {what}, its scale and zero point must be constants")
        q = np.asarray(w.value)
        if q.ndim != 3 or q.dtype not in (np.int8, np.uint8):
            raise Untranslatable(f"{node.where()}: {what} must be a 3-D int8/uint8 tensor, got {q.dtype} {q.shape}")
        D, G = q.shape[0], q.shape[2]
        scale = np.asarray(sc.value, f32)
        zero = np.zeros((), np.int64) if zp is None else np.asarray(zp.value).astype(np.int64)
        per = []
        for d in range(D):
            s_d = _per_output(node, scale if scale.ndim == 0 or scale.size == 1 else scale.reshape(D, -1)[d], G,
                              f"{what}_scale", f32)
            z_d = _per_output(node, zero if zero.ndim == 0 or zero.size == 1 else zero.reshape(D, -1)[d], G,
                              f"{what}_zero_point", np.int64)
            per.append(int8_rows(q[d].T, z_d, s_d))  # (4H, K) rows in ONNX gate order
        mats[what] = per
    wname, rname = node.name + "/W_dequantized", node.name + "/R_dequantized"
    W = np.stack([m[0] for m in mats["W"]])
    R = np.stack([m[0] for m in mats["R"]])
    fake = dataclasses.replace(node, op_type="LSTM", inputs=[node.inputs[0], wname, rname]
                               + list(node.inputs[3:8]) + [""] * max(0, 8 - len(node.inputs)))
    fake_ins = [ins[0], Const(W), Const(R)] + ins[3:8]
    before = len(tr.nodes)
    outs = recurrent(tr, fake, fake_ins)
    layers = [n.layer for n in tr.nodes[before:] if isinstance(n.layer, Recurrent)]
    H = int(node.attrs.get("hidden_size", R.shape[2]))
    fits = all(q is not None for _, q, _ in mats["W"] + mats["R"])
    if fits:  # each direction keeps onnxruntime's integers, in fastrnn's gate order
        d = 0
        for layer in layers:
            forms = {}
            for k, dw in enumerate(layer.directions):
                for field, (_, q, sc) in (("w_ih", mats["W"][d]), ("w_hh", mats["R"][d])):
                    forms[f"d{k}.{field}"] = exact_int8(getattr(dw, field), _reorder(q, "lstm", H),
                                                        _reorder(sc, "lstm", H))
                d += 1
            layer.set_int8_forms(forms)
    note_int8(tr, node.name, fits)
    return outs


def note_int8(tr, name, fits):
    """List the node in the Model's metadata "onnx_int8": under "exact" when its layers keep
    onnxruntime's integers (their ``int8`` forms), under "requantized" when the integers did not
    fit int8 symmetric (the int8 rule requantizes those matrices per row)."""
    if tr.int8 is None:
        tr.int8 = {"exact": [], "requantized": []}
    tr.int8["exact" if fits else "requantized"].append(name)


def int8_dense(tr, node, x, weight, zero, scale, bias):
    """y = x @ dequantized B (+ bias) as a Dense layer computed by the int8 engine with B's
    integers. B (K, N) int8 / uint8, zero and scale scalars or per column (N,)."""
    if not isinstance(x, Tensor) or x.dtype != "float32":
        raise Untranslatable(f"{node.where()}: a quantized MatMul of a {x.__class__.__name__}")
    B = np.asarray(weight)
    if B.ndim != 2 or B.dtype not in (np.int8, np.uint8):
        raise Untranslatable(f"{node.where()}: a quantized MatMul whose weight is not a 2-D int8/uint8 "
                             "constant")
    N = B.shape[1]
    scale = _per_output(node, scale, N, "scale", f32)
    zero = _per_output(node, 0 if zero is None else zero, N, "zero point", np.int64)
    W, q, sc = int8_rows(B.T, zero, scale)
    if not tr.last_axis_ok(x):
        x = tr.canonical(x, node.name)
        if not tr.last_axis_ok(x):
            raise WrongBatchAxis(f"{node.where()}: the batch is the last axis")
    b = None
    if bias is not None:
        b = np.asarray(bias, f32).reshape(-1)
        if b.size != N:
            raise Untranslatable(f"{node.where()}: bias of {b.size} values for {N} outputs")
    layer = Dense(W, b, int8=None if q is None else exact_int8(W, q, sc))
    ref = tr.add(node.name, layer, [x.ref])[0]
    note_int8(tr, node.name, q is not None)
    if b is None:
        tr.dense_no_bias[ref] = (layer, x.ref)
    return Tensor(ref, tr.shapes[ref], None, list(x.axes), "float32")


def _per_output(node, v, n, what, dtype):
    """A scale / zero point that is one value or one per output (n,) -> (n,) of ``dtype``."""
    v = np.asarray(v)
    if v.size == 1:
        return np.full(n, v.reshape(()), dtype)
    if v.size != n:
        raise Untranslatable(f"{node.where()}: {what} has {v.size} values for {n} outputs")
    return v.reshape(n).astype(dtype)


def int8_rows(wq, zero, scale):
    """Weights wq (N, K) integers with zero point and scale per row (N,) -> (W float32 (N, K) =
    (wq - zero) * scale as onnxruntime dequantizes them, q int8, scale): q = wq - zero when that
    fits [-127, 127] (fastrnn's symmetric per-row int8, exactly onnxruntime's integers), else
    (W, None, None): the matrix is then requantized per row by fastrnn's int8 rule."""
    d = np.asarray(wq).astype(np.int64) - np.asarray(zero, np.int64).reshape(-1, 1)
    scale = np.asarray(scale, f32).reshape(-1)
    W = (d.astype(f32) * scale[:, None]).astype(f32)
    if d.size and (d.min() < -127 or d.max() > 127 or not np.all(scale > 0) or not np.all(np.isfinite(scale))):
        return W, None, None
    return W, d.astype(np.int8), scale
