"""onnxruntime-quantized ONNX files (quantize_dynamic): DynamicQuantizeLSTM, the MatMulInteger
pattern, quantized Gather, and the quantized operators of the interpreter (ops.py).

Models are exported from torch in the test and quantized with onnxruntime's own quantize_dynamic;
fastrnn's outputs are compared with onnxruntime's on the same int8 file, one sequence per call
(onnxruntime quantizes activations per tensor, fastrnn per row), and with the float model's.
"""
import numpy as np
import pytest

import fastrnn
import fastrnn.onnx
from conftest import require
from helpers import EXPORTERS, assert_runs_on_the_plan, export_onnx, onnx_input_shape
from fastrnn.formats import native
from fastrnn.formats.onnx.ops import OPS
from fastrnn.layers import Dense, Recurrent
from fastrnn.quantize import int8_product, quantize_int8, quantize_rows

torch = require("torch")
onnx = require("onnx")
ort = require("onnxruntime")
quantization = require("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

VOCAB, EMB, HID, CLASSES = 40, 16, 24, 5
# Tolerances are relative to the output's scale (the largest |y| of the float model on the test's
# inputs; about 0.16-0.27 for these models), from what int8 arithmetic may change: a rounded
# weight or activation is off by up to half a quantization step, 1/254 of its row's (or tensor's)
# largest value, 1/126 with reduce_range's 7-bit weights. fastrnn and onnxruntime compute the
# same int8 weights but round activations differently (fastrnn: int8 per row, symmetric;
# onnxruntime: uint8 per tensor, with a zero point) at every quantized product on the way to the
# output (the input and recurrent products of 1-2 recurrent layers at every step, then the head),
# and the float model has no rounding at all: a few such steps of the output's scale each way.
# REL_TOL = 3% is about 4 steps of 1/126. Measured (the test prints them): fastrnn vs onnxruntime
# up to 1.5% of the scale, fastrnn vs the float model up to 2.0% (gru-bi-2 with reduce_range), about
# what onnxruntime's own int8 output differs from the float model by.
REL_TOL = 0.03
# onnxruntime's u8 x s8 products on x64 CPUs without VNNI (AVX2's vpmaddubsw) add pairs of
# products in int16, which saturates (onnxruntime documents it, and recommends reduce_range=True
# or its session option session.x64quantprecision=1 there). fastrnn's integer sums are exact, so
# it is compared with onnxruntime in that precision mode; the default mode's difference is printed
# (measured on an AVX2 CPU: up to 0.066, while both stay within 0.003 of each other in precision
# mode and fastrnn within 0.004 of the float model).


def ort_session(path, precise=True):
    options = ort.SessionOptions()
    if precise:
        options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options)


def int8_vs_onnxruntime_bound(x_row, q, scale):
    """How far fastrnn's and onnxruntime's int8 products of one input row with weights q (N, K) int8
    and per-output scales (N,) may be apart: each is within its activation rounding of the
    dequantized product: fastrnn's half step max|x| / 127 / 2 (int8 per row), onnxruntime's uint8
    step s_o = range / 255 (half a step, plus up to half a step where the rounded zero point moves
    the clipped range); times sum_k |q_nk| * scale_n. Plus float32 rounding."""
    xs = np.abs(x_row).max() / 127
    s_o = (max(x_row.max(), 0) - min(x_row.min(), 0)) / 255
    return scale * np.abs(q.astype(np.float64)).sum(axis=1) * (xs / 2 + s_o) + 1e-5


class Classifier(torch.nn.Module):
    def __init__(self, cell, bidirectional, layers, tokens=True):
        super().__init__()
        self.tokens = tokens
        self.emb = torch.nn.Embedding(VOCAB, EMB) if tokens else None
        self.rnn = getattr(torch.nn, cell)(EMB, HID, num_layers=layers, bidirectional=bidirectional,
                                           batch_first=True)
        self.fc = torch.nn.Linear(HID * (2 if bidirectional else 1), CLASSES)

    def forward(self, x):
        y, _ = self.rnn(self.emb(x) if self.tokens else x)
        return self.fc(y[:, -1])


MODELS = {
    "lstm-bi-2": ("LSTM", True, 2, True),
    "lstm-features": ("LSTM", False, 1, False),
    "gru-bi-2": ("GRU", True, 2, True),
}
CONFIGS = {  # (weight_type, per_channel, reduce_range); onnxruntime's default is QInt8, False, False
    "s8": ("QInt8", False, False),
    "s8-channel": ("QInt8", True, False),
    "u8": ("QUInt8", False, False),
    "u8-channel": ("QUInt8", True, False),
    "s8-reduce": ("QInt8", False, True),
}


def export(tmp_path, key, seed=0, dynamo=False):
    cell, bi, layers, tokens = MODELS[key]
    torch.manual_seed(seed)
    m = Classifier(cell, bi, layers, tokens).eval()
    x = torch.randint(0, VOCAB, (2, 6)) if tokens else torch.randn(2, 6, EMB)
    path = tmp_path / f"{key}.onnx"
    export_onnx(m, (x,), path, ["x"], ["y"], {"x": {0: "batch", 1: "time"}}, dynamo)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(key, dynamo) once per module (the dynamo exporter takes seconds)."""
    files = {}

    def get(key, dynamo=False):
        if (key, dynamo) not in files:
            folder = tmp_path_factory.mktemp(f"{key}-{'dynamo' if dynamo else 'torchscript'}")
            files[key, dynamo] = export(folder, key, dynamo=dynamo)
        return files[key, dynamo]
    return get


def quantized(tmp_path, path, config):
    weight_type, per_channel, reduce_range = CONFIGS[config]
    out = tmp_path / f"{path.stem}.{config}.onnx"
    quantization.quantize_dynamic(str(path), str(out), weight_type=getattr(quantization.QuantType, weight_type),
                                  per_channel=per_channel, reduce_range=reduce_range)
    return out


def inputs(key, rng, n=12, path=None):
    """n single sequences of random lengths (the length ``path`` fixes, if it does)."""
    tokens = MODELS[key][3]
    for _ in range(n):
        T = int(rng.integers(1, 12))
        T = T if path is None else onnx_input_shape(path, "x", (1, T))[1]
        yield rng.integers(0, VOCAB, (1, T)).astype(np.int64) if tokens else \
            rng.standard_normal((1, T, EMB)).astype(np.float32)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("key", list(MODELS))
def test_quantized_file_matches_onnxruntime(tmp_path, exported, key, config, dynamo, rng):
    path = exported(key, dynamo)
    qpath = quantized(tmp_path, path, config)
    model = fastrnn.load(str(qpath))
    assert model.metadata["quantized"] == "int8"
    assert model.metadata["onnx_int8"]["exact"] or model.metadata["onnx_int8"]["requantized"]
    sq, sd, sf = ort_session(qpath), ort_session(qpath, precise=False), ort.InferenceSession(str(path))
    if dynamo:
        assert_runs_on_the_plan(fastrnn.onnx.InferenceSession(str(qpath)))
    vs_ort, vs_default, vs_float, scale = [], [], [], 0.0
    for x in inputs(key, rng, path=path):  # one sequence per call
        y, y_float = model.predict(x), sf.run(None, {"x": x})[0]
        vs_ort.append(np.abs(y - sq.run(None, {"x": x})[0]).max())
        vs_default.append(np.abs(y - sd.run(None, {"x": x})[0]).max())
        vs_float.append(np.abs(y - y_float).max())
        scale = max(scale, np.abs(y_float).max())
    print(f"{key} {config}: output scale {scale:.3f}; vs onnxruntime int8 max {max(vs_ort) / scale:.2%} of it, "
          f"median {np.median(vs_ort) / scale:.2%} (default mode max {max(vs_default) / scale:.2%}); "
          f"vs float max {max(vs_float) / scale:.2%}")
    assert scale > 0.1  # the outputs are not all near zero (a relative tolerance would then be tiny)
    assert max(vs_ort) < REL_TOL * scale, vs_ort
    assert max(vs_float) < REL_TOL * scale, vs_float
    # the same file through fastrnn.onnx.InferenceSession (the same Model)
    x = next(inputs(key, rng, 1, path))
    np.testing.assert_array_equal(fastrnn.onnx.InferenceSession(str(qpath)).run(None, {"x": x})[0],
                                  model.predict(x))


def _initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _gate_rows(q, H):
    """ONNX LSTM gate blocks i|o|f|c -> fastrnn's i|f|g|o (rows)."""
    i, o, f, c = np.split(q, 4)
    return np.concatenate([i, f, c, o])


@pytest.mark.parametrize("config", ["s8", "s8-channel", "s8-reduce"])
def test_weights_keep_onnxruntimes_integers(tmp_path, config):
    """The int8 engine multiplies by exactly the integers and scales onnxruntime stored (a per-
    tensor scale: most rows have max |q| < 127, where the int8 rule alone would pick others)."""
    qpath = quantized(tmp_path, export(tmp_path, "lstm-bi-2"), config)
    inits = _initializers(qpath)
    model = fastrnn.load(str(qpath))
    lstms = [n for n in onnx.load(str(qpath)).graph.node if n.op_type == "DynamicQuantizeLSTM"]
    rnns = [layer for layer in model.layers if isinstance(layer, Recurrent)]
    assert len(lstms) == len(rnns) == 2
    differs = 0
    for node, layer in zip(lstms, rnns):
        for k, field, sc in ((1, "w_ih", 8), (2, "w_hh", 10)):
            q_ort = inits[node.input[k]]  # (D, K, 4H), zero point 0
            s_ort = inits[node.input[sc]].reshape(2, -1)  # (D, 1) per tensor or (D, 4H) per column
            assert not inits[node.input[sc + 1]].any()
            for d, w in enumerate(layer.directions):
                a = getattr(w, field)
                q, scale = quantize_int8(a, w.int8_of(field))  # what the int8 engines pack
                np.testing.assert_array_equal(q, _gate_rows(q_ort[d].T, HID))
                np.testing.assert_array_equal(scale, _gate_rows(np.broadcast_to(s_ort[d], (4 * HID,)), HID))
                rq, rs = native.quantize_int8(a)  # the rule alone
                differs += int(np.any(rq != q))
    if config != "s8-channel":  # (per column, every row reaches 127: the rule finds the same)
        assert differs  # the rule alone would have changed integers
    dense = [layer for layer in model.layers if isinstance(layer, Dense)][0]
    q, scale = quantize_int8(dense.weight, dense.int8)
    np.testing.assert_array_equal(q, inits["fc.weight_Transposed_quantized"].T)
    np.testing.assert_array_equal(scale, np.broadcast_to(inits["fc.weight_Transposed_scale"], (CLASSES,)))


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_runs_on_the_int8_engine_with_those_integers(tmp_path, backend, dynamo, rng):
    """A quantized Linear: predict equals, bit for bit, fastrnn's int8 product (per-row activation
    quantization, quantize.py's spec) of onnxruntime's integers, and not the float product."""
    require("fastrnn.kernels._cyint8")
    torch.manual_seed(1)
    lin = torch.nn.Linear(EMB, 8).eval()
    path = tmp_path / "linear.onnx"
    export_onnx(lin, (torch.randn(2, EMB),), path, ["x"], ["y"], {"x": {0: "batch"}}, dynamo)
    qpath = tmp_path / "linear.int8.onnx"
    quantization.quantize_dynamic(str(path), str(qpath), weight_type=quantization.QuantType.QInt8,
                                  reduce_range=True)  # q in [-64, 64]: the int8 rule alone would differ
    inits = _initializers(qpath)
    q_ort = inits[[k for k in inits if k.endswith("_quantized")][0]].T
    s_ort = np.full(8, inits[[k for k in inits if k.endswith("_scale")][0]], np.float32)
    bias = inits[[k for k in inits if k.endswith("bias")][0]]
    model = fastrnn.load(str(qpath))
    x = rng.standard_normal((5, EMB)).astype(np.float32)
    y = model.predict(x, backend=backend)
    xq, xs = quantize_rows(x)
    want = int8_product(xq, xs, q_ort, s_ort, np.broadcast_to(bias, (5, 8)).astype(np.float32))
    np.testing.assert_array_equal(y, want)
    float_y = x @ (q_ort * s_ort[:, None]).T + bias
    assert np.abs(y - float_y).max() > 1e-6  # not the dequantized float product
    err = np.abs(y[:1] - ort_session(qpath).run(None, {"x": x[:1]})[0])[0]  # one row per call
    bound = int8_vs_onnxruntime_bound(x[0], q_ort, s_ort)
    assert np.all(err <= bound), (err, bound)


def test_batch_rows_are_independent(tmp_path, rng):
    """fastrnn quantizes activations per row: a batch gives each row's single-sequence result."""
    qpath = quantized(tmp_path, export(tmp_path, "lstm-bi-2"), "s8")
    model = fastrnn.load(str(qpath))
    x = rng.integers(0, VOCAB, (4, 7)).astype(np.int64)
    y = model.predict(x)
    for b in range(4):
        np.testing.assert_array_equal(model.predict(x[b:b + 1])[0], y[b])


def test_native_round_trip_keeps_the_integers(tmp_path, rng):
    qpath = quantized(tmp_path, export(tmp_path, "lstm-bi-2"), "s8")
    model = fastrnn.load(str(qpath))
    out = tmp_path / "model.safetensors"
    fastrnn.save(model, out)
    from fastrnn.formats import safetensors
    tensors, _ = safetensors.read(str(out))
    inits = _initializers(qpath)
    node = [n for n in onnx.load(str(qpath)).graph.node if n.op_type == "DynamicQuantizeLSTM"][0]
    i = [k for k, layer in enumerate(model.layers) if isinstance(layer, Recurrent)][0]
    stored = tensors[f"layers.{i}.d0.w_ih"]
    assert stored.dtype == np.int8
    np.testing.assert_array_equal(stored, _gate_rows(inits[node.input[1]][0].T, HID))
    x = rng.integers(0, VOCAB, (3, 9)).astype(np.int64)
    y = model.predict(x)
    del model  # the loaded file alone must carry them
    loaded = fastrnn.load(str(out))
    assert loaded.metadata["quantized"] == "int8"
    w = loaded.layers[i].directions[0]
    np.testing.assert_array_equal(quantize_int8(w.w_ih, w.int8_of("w_ih"))[0], stored)
    # the uint8 embedding table (zero point 111: integers beyond int8) is stored by the int8 rule,
    # each value within half a step; the lookups are quantized per row as before
    assert np.abs(loaded.predict(x) - y).max() < 2e-3


def test_native_round_trip_is_exact_without_embedding(tmp_path, rng):
    qpath = quantized(tmp_path, export(tmp_path, "lstm-features"), "s8")
    model = fastrnn.load(str(qpath))
    x = rng.standard_normal((3, 8, EMB)).astype(np.float32)
    y = model.predict(x)
    fastrnn.save(model, tmp_path / "m.safetensors")
    del model
    np.testing.assert_array_equal(fastrnn.load(str(tmp_path / "m.safetensors")).predict(x), y)


def test_requantized_model_keeps_the_integers(tmp_path, rng):
    """model.quantize("int8") of an int8 model changes nothing."""
    qpath = quantized(tmp_path, export(tmp_path, "lstm-features"), "s8")
    model = fastrnn.load(str(qpath))
    x = rng.standard_normal((2, 5, EMB)).astype(np.float32)
    again = model.quantize("int8")
    y = model.predict(x)
    del model
    np.testing.assert_array_equal(again.predict(x), y)


# -- the interpreter's quantized operators against onnxruntime, one node per model ----------------
def _one_node(op, inputs, outputs, attrs=None, domain="", opset=21, inits=()):
    node = helper.make_node(op, [i[0] for i in inputs], [o[0] for o in outputs], domain=domain, **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in inputs
                                            if n not in dict(inits)],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              initializer=[numpy_helper.from_array(v, n) for n, v in inits])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=10).SerializeToString()


def _both(model, feeds):
    ours = fastrnn.onnx.InferenceSession(model)
    assert ours.model is None  # the interpreter (these graphs have no Model equivalent)
    return ours.run(None, feeds), ort_session(model).run(None, feeds)


F, U8, I8, I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32


def _edge_floats(rng, shape, scale=0.1):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[:6] = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 1e9], np.float32)[:x.size] * scale  # ties, saturation
    return x


@pytest.mark.parametrize("zero_type", [U8, I8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_linear(rng, zero_type, per_axis):
    x = _edge_floats(rng, (3, 4))
    dt = np.uint8 if zero_type == U8 else np.int8
    scale = np.array([0.1, 0.2, 0.05, 0.1], np.float32) if per_axis else np.array(0.1, np.float32)
    zero = (np.array([3, 0, 7, 1]) if per_axis else np.array(2)).astype(dt)
    model = _one_node("QuantizeLinear", [("x", F), ("s", F), ("z", zero_type)], [("y", zero_type)], {"axis": 1},
                      inits=[("s", scale), ("z", zero)])
    ours, theirs = _both(model, {"x": x})
    assert ours[0].dtype == theirs[0].dtype
    np.testing.assert_array_equal(ours[0], theirs[0])


@pytest.mark.parametrize("zero_type", [U8, I8])
def test_quantize_linear_rounds_ties_to_even(zero_type):
    x = np.array([[0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.25, -64.25, 200.0]], np.float32)  # x / 0.5: ties
    dt = np.uint8 if zero_type == U8 else np.int8
    model = _one_node("QuantizeLinear", [("x", F), ("s", F), ("z", zero_type)], [("y", zero_type)],
                      inits=[("s", np.array(0.5, np.float32)), ("z", np.array(0 if dt == np.int8 else 3, dt))])
    ours, theirs = _both(model, {"x": x})
    np.testing.assert_array_equal(ours[0], theirs[0])
    if dt == np.int8:
        np.testing.assert_array_equal(ours[0][0, :6], [0, 2, 2, 0, -2, -2])


@pytest.mark.parametrize("x_type", [U8, I8, I32])
@pytest.mark.parametrize("per_axis", [False, True])
def test_dequantize_linear(rng, x_type, per_axis):
    dt = {U8: np.uint8, I8: np.int8, I32: np.int32}[x_type]
    info = np.iinfo(dt) if dt != np.int32 else np.iinfo(np.int16)
    x = rng.integers(info.min, info.max, (4, 3), endpoint=True).astype(dt)
    scale = np.array([0.5, 0.25, 0.125], np.float32) if per_axis else np.array(0.3, np.float32)
    zero = (np.array([1, 0, 5]) if per_axis else np.array(3)).astype(dt)
    if dt == np.int32:
        zero = np.zeros_like(zero)  # int32 inputs take no zero point other than 0
    model = _one_node("DequantizeLinear", [("x", x_type), ("s", F), ("z", x_type)], [("y", F)], {"axis": 1},
                      inits=[("s", scale), ("z", zero)])
    ours, theirs = _both(model, {"x": x})
    np.testing.assert_array_equal(ours[0], theirs[0])


@pytest.mark.parametrize("case", ["random", "positive", "negative", "zeros", "tiny", "denormal", "empty"])
def test_dynamic_quantize_linear(rng, case):
    x = {"random": rng.standard_normal((5, 7)) * 2, "positive": rng.uniform(0.1, 3, (5, 7)),
         "negative": -rng.uniform(0.1, 3, (5, 7)), "zeros": np.zeros((5, 7)),
         "tiny": rng.standard_normal((5, 7)) * 1e-30, "denormal": np.array([[1e-42, 0.0, -3e-43]]),
         "empty": np.zeros((0, 7))}[case].astype(np.float32)
    model = _one_node("DynamicQuantizeLinear", [("x", F)], [("y", U8), ("s", F), ("z", U8)])
    ours, theirs = _both(model, {"x": x})
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("a_type,b_type", [(U8, I8), (U8, U8), (I8, I8)])
def test_matmul_integer(rng, a_type, b_type):
    dts = {U8: np.uint8, I8: np.int8}
    a = rng.integers(0, 100, (2, 3, 6)).astype(dts[a_type])
    b = rng.integers(0, 100, (6, 4)).astype(dts[b_type])
    za = np.array(7).astype(dts[a_type])
    zb = np.array([1, 2, 3, 4]).astype(dts[b_type])
    model = _one_node("MatMulInteger", [("a", a_type), ("b", b_type), ("za", a_type), ("zb", b_type)],
                      [("y", I32)], opset=13, inits=[("za", za), ("zb", zb)])
    ours, theirs = _both(model, {"a": a, "b": b})
    assert ours[0].dtype == np.int32
    np.testing.assert_array_equal(ours[0], theirs[0])


def test_matmul_integer_to_float(rng):
    a = rng.integers(0, 255, (3, 8)).astype(np.uint8)
    b = rng.integers(-60, 60, (8, 5)).astype(np.int8)
    inits = [("sa", np.array(0.02, np.float32)), ("sb", rng.uniform(0.01, 0.02, 5).astype(np.float32)),
             ("za", np.array(120, np.uint8)), ("zb", np.zeros(5, np.int8)),
             ("bias", rng.standard_normal(5).astype(np.float32))]
    model = _one_node("MatMulIntegerToFloat", [("a", U8), ("b", I8), ("sa", F), ("sb", F), ("za", U8), ("zb", I8),
                                               ("bias", F)], [("y", F)], domain="com.microsoft", opset=13, inits=inits)
    ours, theirs = _both(model, {"a": a, "b": b})
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)


def test_dynamic_quantize_matmul(rng):
    a = rng.standard_normal((3, 8)).astype(np.float32)
    # |b| < 64: onnxruntime's AVX2 kernel for this operator saturates int16 pair sums even in its
    # precision mode (with |b| up to 127 it is off by ~2 on some outputs; fastrnn's sums are exact)
    b = rng.integers(-63, 63, (8, 5)).astype(np.int8)
    inits = [("sb", rng.uniform(0.01, 0.02, 5).astype(np.float32)), ("zb", np.zeros(5, np.int8)),
             ("bias", rng.standard_normal(5).astype(np.float32))]
    model = _one_node("DynamicQuantizeMatMul", [("a", F), ("b", I8), ("sb", F), ("zb", I8), ("bias", F)], [("y", F)],
                      domain="com.microsoft", opset=13, inits=inits)
    ours, theirs = _both(model, {"a": a, "b": b})
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)


def test_dynamic_quantize_lstm_in_the_interpreter(tmp_path, rng):
    """A quantized LSTM inside a graph with no Model equivalent (ArgMax over its output) runs on
    the interpreter: DynamicQuantizeLSTM with its dequantized weights."""
    path = export(tmp_path, "lstm-features")
    qpath = quantized(tmp_path, path, "s8-channel")
    m = onnx.load(str(qpath))
    out = m.graph.output[0].name
    m.graph.node.append(helper.make_node("ArgMax", [out], ["label"], axis=1, keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, None))
    data = m.SerializeToString()
    ours = fastrnn.onnx.InferenceSession(data)
    assert ours.model is None
    x = rng.standard_normal((1, 6, EMB)).astype(np.float32)
    y, label = ours.run(None, {"x": x})
    want, _ = ort_session(data).run(None, {"x": x})
    scale = np.abs(ort.InferenceSession(str(path)).run(None, {"x": x})[0]).max()  # the float model's
    assert scale > 0.1 and np.abs(y - want).max() < REL_TOL * scale  # float activations here (REL_TOL above)
    assert label[0] == np.argmax(y[0])


@pytest.mark.parametrize("op", ["MatMulIntegerToFloat", "DynamicQuantizeMatMul"])
def test_rule_matmul_integer_to_float_and_dynamic_quantize_matmul(tmp_path, rng, op):
    """com.microsoft MatMulIntegerToFloat (of DynamicQuantizeLinear(x)) and DynamicQuantizeMatMul
    on a float graph input: a Dense of the int8 engine with B's integers, bit for bit fastrnn's int8
    product of them, and onnxruntime's result within the two activation roundings (one row per call)."""
    K, N = 8, 5
    b = rng.integers(-63, 63, (K, N)).astype(np.int8)  # |b| < 64: see test_dynamic_quantize_matmul
    sb = rng.uniform(0.01, 0.02, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    inits = [("b", b), ("sb", sb), ("zb", np.zeros(N, np.int8)), ("bias", bias)]
    if op == "MatMulIntegerToFloat":
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node(op, ["xq", "b", "xs", "sb", "xz", "zb", "bias"], ["y"], domain="com.microsoft",
                                  name="head")]
    else:
        nodes = [helper.make_node(op, ["x", "b", "sb", "zb", "bias"], ["y"], domain="com.microsoft", name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["batch", K])],
                              [helper.make_tensor_value_info("y", F, None)],
                              initializer=[numpy_helper.from_array(v, n) for n, v in inits])
    proto = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 13),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "head.onnx"
    path.write_bytes(proto.SerializeToString())
    model = fastrnn.load(str(path))
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]
    assert model.metadata["quantized"] == "int8" and model.metadata["onnx_int8"]["exact"] == ["head"]
    x = rng.standard_normal((4, K)).astype(np.float32)
    y = model.predict(x)
    xq, xs = quantize_rows(x)
    np.testing.assert_array_equal(y, int8_product(xq, xs, np.ascontiguousarray(b.T), sb,
                                                  np.broadcast_to(bias, (4, N)).astype(np.float32)))
    sess = ort_session(str(path))
    for row in range(4):
        err = np.abs(y[row] - sess.run(None, {"x": x[row:row + 1]})[0][0])
        assert np.all(err <= int8_vs_onnxruntime_bound(x[row], b.T, sb)), row


# -- what is refused, and how ----------------------------------------------------------------------
def test_unknown_microsoft_operator_names_the_node():
    model = _one_node("QAttention", [("x", F)], [("y", F)], domain="com.microsoft", opset=13)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="QAttention"):
        fastrnn.onnx.InferenceSession(model)


def test_blocked_quantization_names_the_node(rng):
    model = _one_node("QuantizeLinear", [("x", F), ("s", F)], [("y", U8)], {"block_size": 2, "axis": 1},
                      inits=[("s", np.full((3, 2), 0.1, np.float32))])
    with pytest.raises(ValueError, match="QuantizeLinear.*block_size"):
        fastrnn.onnx.InferenceSession(model).run(None, {"x": rng.standard_normal((3, 4)).astype(np.float32)})


def test_quantized_ops_refuse_huge_outputs():
    node = type("N", (), {"attrs": {}, "where": lambda self: "node big (MatMulInteger)"})()
    a = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (1 << 15, 2), (0, 0))
    b = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (2, 1 << 15), (0, 0))
    with pytest.raises(ValueError, match="big.*limit"):
        OPS["MatMulInteger"](node, [a, b])


# -- the exact int8 forms, carried on the layers (fastrnn.layers.Int8Weights) ---------------------
def test_exact_int8_forms_check_the_matrix_and_slice_by_rows(rng):
    from fastrnn.layers import Int8Weights
    from fastrnn.quantize import exact_int8

    q = rng.integers(-60, 61, (6, 9)).astype(np.int8)  # max |q| < 127: the rule alone differs
    scale = rng.uniform(0.001, 0.01, 6).astype(np.float32)
    a = (scale[:, None] * q.astype(np.float32)).astype(np.float32)
    rule_q, _ = native.quantize_int8(a)
    assert np.any(rule_q != q)
    form = exact_int8(a, q, scale)
    for rows in (slice(None), slice(2, 5), slice(None, None, -1)):  # all, a block (GRU r|z), reordered
        got_q, got_s = quantize_int8(a[rows], form[rows])
        np.testing.assert_array_equal(got_q, q[rows])
        np.testing.assert_array_equal(got_s, scale[rows])
    rule_s = native.quantize_int8(a)[1]
    ruled = (rule_s[:, None] * rule_q.astype(np.float32)).astype(np.float32)
    assert exact_int8(ruled, rule_q, rule_s) is None  # the rule's own integers: nothing to keep
    with pytest.raises(ValueError, match="not scale"):
        exact_int8(np.ones((2, 3), np.float32), np.ones((2, 3), np.int8), np.full(2, 0.5, np.float32))
    with pytest.raises(ValueError, match="Int8Weights of the matrix"):
        quantize_int8(a[:3], form)
    with pytest.raises(ValueError, match="int8 form of shape"):
        Dense(a[:3], int8=Int8Weights(q, scale))


def test_pickled_and_copied_models_keep_onnxruntimes_integers(tmp_path, rng):
    """The integers travel with the layers: a pickled (protocol 5, in this process and another)
    or copied onnxruntime-quantized model gives bit for bit the unpickled model's results, which are
    onnxruntime's within REL_TOL of the output scale (one sequence per call); model.quantize("int8")
    keeps them too."""
    import copy
    import pickle
    import subprocess
    import sys

    path = export(tmp_path, "lstm-bi-2")
    qpath = quantized(tmp_path, path, "s8")
    model = fastrnn.load(str(qpath))
    forms = [w.int8 for layer in model.layers if isinstance(layer, Recurrent) for w in layer.directions]
    assert all(f and set(f) == {"w_ih", "w_hh"} for f in forms)
    assert [layer for layer in model.layers if isinstance(layer, Dense)][0].int8 is not None
    x = rng.integers(0, VOCAB, (3, 9)).astype(np.int64)
    want = model.predict(x)
    sess, float_sess = ort_session(qpath), ort.InferenceSession(str(path))
    scale = max(np.abs(float_sess.run(None, {"x": x[b:b + 1]})[0]).max() for b in range(3))
    assert scale > 0.1
    for b in range(3):
        assert np.abs(want[b] - sess.run(None, {"x": x[b:b + 1]})[0][0]).max() < REL_TOL * scale
    blob = pickle.dumps(model, protocol=5)
    for other in (pickle.loads(blob), copy.deepcopy(model), copy.copy(model)):
        np.testing.assert_array_equal(other.predict(x), want)
        np.testing.assert_array_equal(other.predict(x, backend="numpy"), model.predict(x, backend="numpy"))
    # model.quantize("int8") keeps the forms (it requantizes only the uint8 embedding table, by the
    # rule: see test_native_round_trip_keeps_the_integers), and so does its pickle
    again = model.quantize("int8")
    assert [w.int8 for layer in again.layers if isinstance(layer, Recurrent) for w in layer.directions] == forms
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(again)).predict(x), again.predict(x))
    model.predict(x)  # packed weights cached on the layers: still picklable, the caches left out
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(x), want)
    # a fresh process has none of this process's state: the integers come with the pickle
    (tmp_path / "m.pkl").write_bytes(blob)
    np.save(tmp_path / "x.npy", x)
    code = ("import pickle, sys, numpy as np; m = pickle.load(open(sys.argv[1], 'rb')); "
            "np.save(sys.argv[2], m.predict(np.load(sys.argv[3])))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pkl"), str(tmp_path / "y.npy"),
                    str(tmp_path / "x.npy")], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
    # and float16 / bfloat16 copies drop them (their values are no longer scale * q)
    assert all(w.int8 is None for layer in model.quantize("float16").layers if isinstance(layer, Recurrent)
               for w in layer.directions)


def test_matmul_integer_outside_the_pattern_runs_on_the_interpreter(tmp_path, rng):
    """The dynamic scale of the quantized head is also a graph output: no Model equivalent, so the
    interpreter runs DynamicQuantizeLinear, MatMulInteger, Cast and the Muls with ONNX semantics."""
    qpath = quantized(tmp_path, export(tmp_path, "gru-bi-2"), "s8")
    m = onnx.load(str(qpath))
    dql = [n for n in m.graph.node if n.op_type == "DynamicQuantizeLinear"][0]
    m.graph.output.append(helper.make_tensor_value_info(dql.output[1], TensorProto.FLOAT, None))
    data = m.SerializeToString()
    ours = fastrnn.onnx.InferenceSession(data)
    assert ours.model is None and "Quantized" in ours.fallback_reason
    x = rng.integers(0, VOCAB, (1, 7)).astype(np.int64)
    (y, scale), (want, want_scale) = ours.run(None, {"x": x}), ort_session(data).run(None, {"x": x})
    assert np.abs(y - want).max() < 1e-4  # the GRUs in float on both sides; the head bit for bit but for them
    assert abs(float(scale) - float(want_scale)) < 1e-6


def test_cli_convert_says_an_int8_source_is_stored_as_int8(tmp_path, capsys):
    """`fastrnn convert model.int8.onnx out.safetensors` keeps the int8 weights and says so."""
    from fastrnn.cli import main
    from fastrnn.formats import safetensors

    qpath = quantized(tmp_path, export(tmp_path, "lstm-bi-2"), "s8")
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(qpath), str(out)]) == 0
    assert "weight matrices stored as int8" in capsys.readouterr().out
    tensors, _ = safetensors.read(str(out))
    assert any(t.dtype == np.int8 for t in tensors.values())
    assert fastrnn.load(str(out)).metadata["quantized"] == "int8"
