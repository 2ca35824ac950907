"""fastrnn.onnx against the ONNX spec's own conformance cases, onnxruntime and PyTorch's exporter.

- The 18 backend conformance cases for RNN/LSTM/GRU that the installed onnx package generates.
  Most use near-constant weights (every gate block alike), so they check shapes, layouts and
  attributes but NOT the gate order: with the LSTM and GRU orders set to identity 17 of 18 still
  pass, and a wrong peephole order passes the peephole case.
- The gate orders are proven by random-weight nodes against onnxruntime: every cell, every
  direction, both GRU reset placements, peepholes in every direction (test_gate_order_*).
- Cases they miss, built with onnx.helper and compared with onnxruntime: linear_before_reset=1,
  real sequence_lens, peepholes, initial states, clip, input_forget, activations with alpha and
  beta, omitted optional outputs, and layout=1 (onnxruntime refuses it: compared with the same
  node in layout 0).
- torch.onnx.export of nn.RNN/LSTM/GRU and of two Embedding models, with both exporters (the
  TorchScript one, dynamo=False, and the default dynamo one, whose shape arithmetic and unrolled
  nn.RNN must fold too: its files run on the Model, not the interpreter), compared with
  onnxruntime and torch; load_model gives a Model that matches and survives fastrnn.save/load.
Tolerance: FRAMEWORK_ATOL (1e-4).
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
import fastrnn.onnx as fonnx
from conftest import FRAMEWORK_ATOL, assert_close, require
from helpers import EXPORTERS, assert_runs_on_the_plan, export_onnx, onnx_input_shape

onnx = require("onnx")
ort = require("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNN_CASE_PREFIXES = ("test_lstm", "test_gru", "test_rnn", "test_simple_rnn")


def _conformance_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return {c.name: c for c in cases if c.name.startswith(RNN_CASE_PREFIXES)}


CASES = _conformance_cases()


def test_all_eighteen_conformance_cases_are_collected():
    assert len(CASES) == 18
    assert {"test_gru_batchwise", "test_lstm_batchwise", "test_simple_rnn_batchwise"} <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance_case(name):
    case = CASES[name]
    sess = fonnx.InferenceSession(case.model.SerializeToString())
    for inputs, outputs in case.data_sets:
        feed = {i.name: a for i, a in zip(sess.get_inputs(), inputs)}
        got = sess.run(None, feed)
        assert len(got) == len(outputs)
        for g, w in zip(got, outputs):
            assert_close(g, w, FRAMEWORK_ATOL, what=name)


# -- cases the conformance suite misses, against onnxruntime -----------------------------------

def make_node_model(cell, T=6, B=4, I=5, H=7, direction="forward", layout=0, lbr=0, seq_lens=None,
                    initial=False, peephole=False, clip=None, input_forget=0, activations=None, alphas=None,
                    betas=None, outputs=("Y", "Y_h", "Y_c"), seed=0):
    """One RNN/LSTM/GRU node with random weights -> (ModelProto, feed)."""
    rng = np.random.default_rng(seed)
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[cell]
    D = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("W", rng.standard_normal((D, G * H, I)).astype(np.float32) * 0.5),
        ("R", rng.standard_normal((D, G * H, H)).astype(np.float32) * 0.5),
        ("B", rng.standard_normal((D, 2 * G * H)).astype(np.float32) * 0.5)]]
    x_shape = [B, T, I] if layout else [T, B, I]
    feed = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    node_inputs = ["X", "W", "R", "B", "", "", "", ""]
    if seq_lens is not None:
        feed["seq"] = np.array(seq_lens, np.int32)
        graph_inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, [B]))
        node_inputs[4] = "seq"
    if initial:
        st = [B, D, H] if layout else [D, B, H]
        for k, name in ((5, "h0"), (6, "c0")):
            if name == "c0" and cell != "LSTM":
                continue
            feed[name] = rng.standard_normal(st).astype(np.float32)
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, st))
            node_inputs[k] = name
    if peephole:
        p = rng.standard_normal((D, 3 * H)).astype(np.float32)
        inits.append(numpy_helper.from_array(p, "P"))
        node_inputs[7] = "P"
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()
    attrs = dict(hidden_size=H, direction=direction)
    if layout:
        attrs["layout"] = 1
    if cell == "GRU":
        attrs["linear_before_reset"] = lbr
    if clip is not None:
        attrs["clip"] = clip
    if input_forget:
        attrs["input_forget"] = 1
    if activations:
        attrs["activations"] = activations
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    outs = [o if (o != "Y_c" or cell == "LSTM") else "" for o in outputs]
    while outs and outs[-1] == "":
        outs.pop()
    node = helper.make_node(cell, node_inputs, outs, name="rnn", **attrs)
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs if o]
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 10
    return model, feed


def ort_run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


EXTRA = {
    "gru_linear_before_reset": dict(cell="GRU", lbr=1),
    "gru_lbr_bidirectional_seq_lens": dict(cell="GRU", lbr=1, direction="bidirectional", seq_lens=[6, 1, 3, 0]),
    "gru_reset_before_seq_lens_initial": dict(cell="GRU", lbr=0, seq_lens=[2, 6, 5, 4], initial=True),
    "lstm_seq_lens_bidirectional_initial": dict(cell="LSTM", direction="bidirectional", seq_lens=[3, 6, 1, 5],
                                                initial=True),
    "lstm_peepholes_bidirectional": dict(cell="LSTM", peephole=True, direction="bidirectional"),
    "lstm_peepholes_seq_lens": dict(cell="LSTM", peephole=True, seq_lens=[6, 2, 4, 3], initial=True),
    "lstm_clip_input_forget": dict(cell="LSTM", clip=0.7, input_forget=1),
    "lstm_reverse_no_Y": dict(cell="LSTM", direction="reverse", outputs=("", "Y_h", "Y_c"), seq_lens=[5, 6, 2, 1]),
    "lstm_activations_alpha_beta": dict(cell="LSTM", activations=["HardSigmoid", "ScaledTanh", "LeakyRelu"],
                                        alphas=[0.3, 0.9, 0.05], betas=[0.4, 1.2]),
    "gru_affine_elu": dict(cell="GRU", activations=["Sigmoid", "Elu"], alphas=[0.8], lbr=1),
    "rnn_relu_bidirectional_seq_lens": dict(cell="RNN", activations=["Relu", "Relu"], direction="bidirectional",
                                            seq_lens=[1, 6, 4, 2]),
    "rnn_thresholded_softsign": dict(cell="RNN", activations=["ThresholdedRelu"], alphas=[0.2]),
    "rnn_clip_initial_only_Y_h": dict(cell="RNN", clip=0.5, initial=True, outputs=("", "Y_h")),
    "rnn_softplus_affine_bidirectional": dict(cell="RNN", activations=["Softplus", "Affine"], alphas=[0.5],
                                              betas=[0.1], direction="bidirectional"),
}


# Random weights (scale 0.5, non-zero biases and states): each gate block is different, so a
# gate or peephole order mistake changes the outputs by far more than FRAMEWORK_ATOL.
GATE_ORDER_CASES = {
    f"{cell}_{direction}" + (f"_lbr{lbr}" if cell == "GRU" else ""): dict(
        cell=cell, direction=direction, lbr=lbr, seq_lens=[6, 2, 5, 4], initial=True, seed=11)
    for cell in ("RNN", "LSTM", "GRU") for direction in ("forward", "reverse", "bidirectional")
    for lbr in ((0, 1) if cell == "GRU" else (0,))
}
GATE_ORDER_CASES.update({
    f"LSTM_{direction}_peepholes": dict(cell="LSTM", direction=direction, peephole=True, seq_lens=[6, 2, 5, 4],
                                        initial=True, seed=12)
    for direction in ("forward", "reverse", "bidirectional")
})


@pytest.mark.parametrize("name", sorted(GATE_ORDER_CASES))
def test_gate_order_against_onnxruntime(name):
    model, feed = make_node_model(**GATE_ORDER_CASES[name])
    want = ort_run(model, feed)
    got = fonnx.InferenceSession(model.SerializeToString()).run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g, w, FRAMEWORK_ATOL, what=name)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_node_against_onnxruntime(name):
    model, feed = make_node_model(**EXTRA[name])
    want = ort_run(model, feed)
    got = fonnx.InferenceSession(model.SerializeToString()).run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g, w, FRAMEWORK_ATOL, what=name)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_1_equals_layout_0(cell, direction):
    """onnxruntime refuses layout=1; fastrnn runs it: same numbers as layout 0, batch-major."""
    kw = dict(cell=cell, direction=direction, seq_lens=[6, 3, 1, 5], initial=True, lbr=1, seed=3)
    m0, f0 = make_node_model(layout=0, **kw)
    m1, f1 = make_node_model(layout=1, **kw)
    f1 = dict(f1)
    f1["X"] = np.ascontiguousarray(f0["X"].transpose(1, 0, 2))
    for k in ("h0", "c0"):
        if k in f0:
            f1[k] = np.ascontiguousarray(f0[k].transpose(1, 0, 2))
    want = ort_run(m0, f0)
    got = fonnx.InferenceSession(m1.SerializeToString()).run(None, f1)
    assert_close(got[0], want[0].transpose(2, 0, 1, 3), FRAMEWORK_ATOL)  # Y [B, T, D, H]
    for g, w in zip(got[1:], want[1:]):
        assert_close(g, w.transpose(1, 0, 2), FRAMEWORK_ATOL)  # Y_h, Y_c [B, D, H]


# -- models exported by PyTorch -------------------------------------------------------------------

def export(module, args, path, input_names, output_names, dynamic=None, dynamo=False):
    export_onnx(module, args, path, input_names, output_names, dynamic, dynamo)


class Wrap(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        y, h = self.rnn(x)
        return (y, *h) if isinstance(h, tuple) else (y, h)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_exported_rnn_modules(kind, batch_first, dynamo, tmp_path):
    """The dynamo exporter writes nn.RNN unrolled over the example's steps (rolled back into one
    RNN node per direction, unrolled.py) and fixes the sizes torch.export specialises (the time
    axis; time-major, the batch too): the file then declares them and the run uses them."""
    torch.manual_seed(0)
    rnn = getattr(nn, kind)(5, 8, num_layers=2, bidirectional=True, batch_first=batch_first).eval()
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    outs = ["y", "h", "c"] if kind == "LSTM" else ["y", "h"]
    axes = {0: "b", 1: "t"} if batch_first else {1: "b"} if dynamo else {0: "t", 1: "b"}
    export(Wrap(rnn).eval(), (x,), tmp_path / "m.onnx", ["x"], outs, dynamic={"x": axes}, dynamo=dynamo)
    shape = onnx_input_shape(tmp_path / "m.onnx", "x", (2, 9, 5) if batch_first else (9, 2, 5))
    x2 = torch.randn(*shape).numpy()  # other sizes than exported, where the file allows them
    sess = fonnx.InferenceSession(tmp_path / "m.onnx")
    if dynamo:
        assert_runs_on_the_plan(sess)
    assert [o.name for o in sess.get_outputs()] == outs and sess.get_inputs()[0].name == "x"
    got = sess.run(None, {"x": x2})
    want = ort_run(onnx.load(str(tmp_path / "m.onnx")), {"x": x2})
    with torch.no_grad():
        ref = [t.numpy() for t in Wrap(rnn)(torch.from_numpy(x2))]
    for g, w, r in zip(got, want, ref):
        assert_close(g, w, FRAMEWORK_ATOL)
        assert_close(g, r, FRAMEWORK_ATOL)


class CharModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(30, 12)
        self.lstm = nn.LSTM(12, 24, num_layers=2, batch_first=True)
        self.fc = nn.Linear(24, 30)

    def forward(self, ids):
        return self.fc(self.lstm(self.embedding(ids))[0])


class BiGRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(40, 10)
        self.gru = nn.GRU(10, 16, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, ids):
        _, h = self.gru(self.embedding(ids))
        return torch.softmax(self.fc(torch.cat([h[-2], h[-1]], 1)), 1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_torch_char_model_session_load_model_and_native(tmp_path, dynamo):
    torch.manual_seed(1)
    net = CharModel().eval()
    ids = torch.randint(0, 30, (2, 11))
    export(net, (ids,), tmp_path / "char.onnx", ["ids"], ["logits"], dynamic={"ids": {0: "b", 1: "t"}},
           dynamo=dynamo)
    probe = np.random.default_rng(2).integers(0, 30, onnx_input_shape(tmp_path / "char.onnx", "ids", (3, 17)))
    assert_runs_on_the_plan(fonnx.InferenceSession(tmp_path / "char.onnx"))
    with torch.no_grad():
        want = net(torch.from_numpy(probe)).numpy()
    got = fonnx.InferenceSession(tmp_path / "char.onnx").run(["logits"], {"ids": probe})[0]
    assert_close(got, ort_run(onnx.load(str(tmp_path / "char.onnx")), {"ids": probe})[0], FRAMEWORK_ATOL)
    assert_close(got, want, FRAMEWORK_ATOL)

    model = fastrnn.load(tmp_path / "char.onnx")  # a plain chain -> a Model
    assert [type(layer).__name__ for layer in model.layers] == ["Embedding", "Recurrent", "Recurrent", "Dense"]
    assert_close(model.predict(probe), want, FRAMEWORK_ATOL)
    fastrnn.save(model, tmp_path / "char.safetensors")
    again = fastrnn.load(tmp_path / "char.safetensors")
    np.testing.assert_array_equal(again.predict(probe), model.predict(probe))
    assert len(again.generate([1, 2, 3], max_new_tokens=5, seed=1)) == 5  # usable for generation


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_torch_bigru_classifier(tmp_path, dynamo):
    torch.manual_seed(3)
    net = BiGRUClassifier().eval()
    export(net, (torch.randint(0, 40, (2, 9)),), tmp_path / "cls.onnx", ["ids"], ["probs"],
           dynamic={"ids": {0: "b", 1: "t"}}, dynamo=dynamo)
    probe = np.random.default_rng(4).integers(0, 40, onnx_input_shape(tmp_path / "cls.onnx", "ids", (5, 13)))
    assert_runs_on_the_plan(fonnx.InferenceSession(tmp_path / "cls.onnx"))
    with torch.no_grad():
        want = net(torch.from_numpy(probe)).numpy()
    got = fonnx.InferenceSession(tmp_path / "cls.onnx").run(None, {"ids": probe})[0]
    assert_close(got, ort_run(onnx.load(str(tmp_path / "cls.onnx")), {"ids": probe})[0], FRAMEWORK_ATOL)
    assert_close(got, want, FRAMEWORK_ATOL)
    model = fastrnn.load(tmp_path / "cls.onnx")
    probs = np.array([r.probabilities for r in model.classify(list(probe))])
    assert_close(probs, want, FRAMEWORK_ATOL)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_cli_convert_onnx(tmp_path, dynamo):
    torch.manual_seed(5)
    net = CharModel().eval()
    export(net, (torch.randint(0, 30, (2, 4)),), tmp_path / "c.onnx", ["ids"], ["logits"],
           dynamic={"ids": {0: "b", 1: "t"}}, dynamo=dynamo)
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "convert", str(tmp_path / "c.onnx"),
                          str(tmp_path / "c.safetensors")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    probe = np.random.default_rng(6).integers(0, 30, onnx_input_shape(tmp_path / "c.onnx", "ids", (2, 8)))
    with torch.no_grad():
        assert_close(fastrnn.load(tmp_path / "c.safetensors").predict(probe), net(torch.from_numpy(probe)).numpy(),
                     FRAMEWORK_ATOL)


# -- errors -----------------------------------------------------------------------------------------

def test_unsupported_op_names_node_and_op():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    g = helper.make_graph([helper.make_node("Conv", ["x", "x"], ["y"], name="my_conv")], "g", [x], [y])
    m = helper.make_model(g)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="my_conv.*Conv"):
        fonnx.InferenceSession(m.SerializeToString())


def test_bad_files_and_feeds(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x12\x34 definitely not protobuf" * 10)
    with pytest.raises(fastrnn.ModelFormatError, match="junk.onnx"):
        fonnx.InferenceSession(tmp_path / "junk.onnx")
    with pytest.raises(fastrnn.ModelFormatError, match="junk.onnx"):
        fastrnn.load(tmp_path / "junk.onnx")
    model, feed = make_node_model("GRU")
    sess = fonnx.InferenceSession(model.SerializeToString())
    with pytest.raises(ValueError, match="'X' is missing"):
        sess.run(None, {})
    with pytest.raises(ValueError, match="dtype float64"):
        sess.run(None, {"X": feed["X"].astype(np.float64)})
    with pytest.raises(ValueError, match="not an output"):
        sess.run(["nope"], feed)
    # a graph with no Model equivalent (weights fed at run time): load refuses, says why and
    # points to the session, which still runs it
    (tmp_path / "node.onnx").write_bytes(CASES["test_gru_defaults"].model.SerializeToString())
    with pytest.raises(fastrnn.ModelFormatError, match="computed at run time.*InferenceSession"):
        fastrnn.load(tmp_path / "node.onnx")


def test_glue_ops_against_onnxruntime():
    """A graph of glue operators (broadcasting Max, negative-step Slice, Split, Unsqueeze,
    Where, Gemm, LogSoftmax, Expand, Range, ReduceMean) equals onnxruntime."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4,)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    consts = [numpy_helper.from_array(v, n) for n, v in [
        ("w", w), ("starts", np.array([3], np.int64)), ("ends", np.array([-10], np.int64)),
        ("axes", np.array([1], np.int64)), ("steps", np.array([-2], np.int64)), ("ax0", np.array([0], np.int64)),
        ("shape", np.array([2, 3, 4], np.int64)), ("r0", np.array(0, np.int64)), ("r1", np.array(6, np.int64)),
        ("r2", np.array(2, np.int64)), ("split", np.array([1, 2], np.int64))]]
    nodes = [
        helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Slice", ["mx", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("Split", ["a", "split"], ["s1", "s2"], axis=0),
        helper.make_node("Unsqueeze", ["s1", "ax0"], ["us"]),
        helper.make_node("Greater", ["a", "b"], ["gt"]),
        helper.make_node("Where", ["gt", "a", "mx"], ["wh"]),
        helper.make_node("Gemm", ["wh", "w"], ["gm"], transB=1, alpha=0.5),
        helper.make_node("LogSoftmax", ["gm"], ["ls"], axis=1),
        helper.make_node("Expand", ["a", "shape"], ["ex"]),
        helper.make_node("ReduceMean", ["ex"], ["rm"], axes=[0, 2], keepdims=0),
        helper.make_node("Range", ["r0", "r1", "r2"], ["rg"]),
    ]
    outs = ["sl", "s2", "us", "ls", "rm", "rg"]
    graph = helper.make_graph(nodes, "glue", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4]),
                                              helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(o, TensorProto.INT64 if o == "rg" else TensorProto.FLOAT,
                                                             None) for o in outs],
                              initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    feed = {"a": a, "b": b}
    want = ort_run(model, feed)
    got = fonnx.InferenceSession(model.SerializeToString()).run(None, feed)
    for name, g, w_ in zip(outs, got, want):
        assert g.shape == w_.shape, name
        np.testing.assert_allclose(g, w_, atol=1e-5, rtol=1e-5, err_msg=name)
