"""ONNX graphs -> fastrnn Models (issue 12): fastrnn.load("x.onnx") for any graph of supported
operators, and fastrnn.onnx.InferenceSession running that same Model.

- Graph models exported by torch.onnx.export, with both exporters (dynamo=False and the default
  dynamo one): two inputs joined by Concatenate, Tanh / LogSoftmax between layers (time-major),
  the last step of a sequence, a bidirectional classifier. Each: fastrnn.load against
  onnxruntime, saved natively and reloaded, classified; the session gives exactly the Model's
  numbers in ONNX layouts.
- Every pattern rule of fastrnn/formats/onnx/rules_*.py on a small graph, against onnxruntime,
  with the layers it must (or must not) produce.
- Random-weight RNN / LSTM / GRU nodes for every cell, direction and peephole setting against
  onnxruntime, run through the Model (the proof of the gate orders, issue 18).
Tolerance: FRAMEWORK_ATOL (1e-4).
"""

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
import fastrnn.onnx as fonnx
from conftest import FRAMEWORK_ATOL, assert_close, require
from helpers import EXPORTERS, assert_runs_on_the_plan, export_onnx, onnx_input_shape

onnx = require("onnx")  # a skip outside CI, a failure in CI
ort = require("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from test_onnx import make_node_model, ort_run  # noqa: E402


def export(module, args, path, input_names, output_names, dynamic, dynamo=False):
    export_onnx(module, args, path, input_names, output_names, dynamic, dynamo)
    if dynamo:
        assert_runs_on_the_plan(fonnx.InferenceSession(path))


def ort_file(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def kinds(model):
    """Layer types of the optimized execution plan, in order."""
    return [type(n.layer).__name__ for n in model.plan().graph.nodes]


def check_roundtrip(model, x, tmp_path):
    fastrnn.save(model, tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    a, b = again.predict(x), model.predict(x)
    for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        np.testing.assert_array_equal(u, v)
    return again


# -- graph models exported by PyTorch ---------------------------------------------------------------

class TwoInputs(nn.Module):
    """Token ids through an LSTM, features through a GRU, their final states concatenated."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.gru = nn.GRU(4, 10, batch_first=True)
        self.fc = nn.Linear(22, 3)

    def forward(self, ids, feats):
        _, (ha, _) = self.lstm(self.emb(ids))
        _, hb = self.gru(feats)
        return torch.softmax(self.fc(torch.cat([ha[-1], hb[-1]], dim=1)), dim=1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_two_inputs_concatenate(tmp_path, dynamo):
    torch.manual_seed(0)
    net = TwoInputs().eval()
    export(net, (torch.randint(0, 50, (2, 5)), torch.randn(2, 7, 4)), tmp_path / "two.onnx", ["ids", "feats"],
           ["probs"], {"ids": {0: "b", 1: "t"}, "feats": {0: "b", 1: "u"}}, dynamo)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, onnx_input_shape(tmp_path / "two.onnx", "ids", (4, 9)))
    feats = rng.standard_normal(onnx_input_shape(tmp_path / "two.onnx", "feats", (4, 6, 4))).astype(np.float32)
    want = ort_file(tmp_path / "two.onnx", {"ids": ids, "feats": feats})[0]
    with torch.no_grad():
        assert_close(want, net(torch.from_numpy(ids), torch.from_numpy(feats)).numpy(), FRAMEWORK_ATOL)
    model = fastrnn.load(tmp_path / "two.onnx")
    assert model.input_names == ["ids", "feats"]
    assert sorted(kinds(model)) == sorted(["Embedding", "Recurrent", "Recurrent", "Concatenate", "Dense"])
    assert_close(model.predict({"ids": ids, "feats": feats}), want, FRAMEWORK_ATOL)
    assert_close(model.predict([ids, feats]), want, FRAMEWORK_ATOL)
    again = check_roundtrip(model, [ids, feats], tmp_path)
    assert again.input_names == ["ids", "feats"]
    sess = fonnx.InferenceSession(tmp_path / "two.onnx")
    np.testing.assert_array_equal(sess.run(None, {"ids": ids, "feats": feats})[0], model.predict([ids, feats]))


class TimeMajorTagger(nn.Module):
    """Time-major ids (T, B) -> GRU -> Linear -> Tanh -> Linear -> LogSoftmax: a tag per step."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 10)
        self.gru = nn.GRU(10, 16)
        self.hidden = nn.Linear(16, 16)
        self.act = nn.Tanh()
        self.out = nn.Linear(16, 40)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, ids):
        y, _ = self.gru(self.emb(ids))
        return self.log_softmax(self.out(self.act(self.hidden(y))))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_tanh_and_log_softmax_between_layers_time_major(tmp_path, dynamo):
    torch.manual_seed(2)
    net = TimeMajorTagger().eval()
    export(net, (torch.randint(0, 40, (6, 2)),), tmp_path / "tag.onnx", ["ids"], ["logp"],
           {"ids": {0: "t", 1: "b"}}, dynamo)
    # (T, B) as the graph takes it
    ids_tb = np.random.default_rng(3).integers(0, 40, onnx_input_shape(tmp_path / "tag.onnx", "ids", (11, 3)))
    want = ort_file(tmp_path / "tag.onnx", {"ids": ids_tb})[0]  # (T, B, 40)
    with torch.no_grad():
        assert_close(want, net(torch.from_numpy(ids_tb)).numpy(), FRAMEWORK_ATOL)
    model = fastrnn.load(tmp_path / "tag.onnx")
    # the Tanh and the LogSoftmax fold into the Dense layers; the glue around the time-major GRU
    # adds no node
    assert kinds(model) == ["Embedding", "Recurrent", "Dense", "Dense"]
    assert [n.layer.activation for n in model.plan().graph.nodes[2:]] == ["tanh", "log_softmax"]
    ids = np.ascontiguousarray(ids_tb.T)  # the Model is batch-major
    assert_close(model.predict(ids), want.transpose(1, 0, 2), FRAMEWORK_ATOL)
    check_roundtrip(model, ids, tmp_path)
    sess = fonnx.InferenceSession(tmp_path / "tag.onnx")
    np.testing.assert_array_equal(sess.run(None, {"ids": ids_tb})[0], model.predict(ids).transpose(1, 0, 2))


class LastStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_last_step(tmp_path, dynamo):
    torch.manual_seed(4)
    net = LastStep().eval()
    export(net, (torch.randn(2, 5, 6),), tmp_path / "last.onnx", ["x"], ["logits"], {"x": {0: "b", 1: "t"}}, dynamo)
    shape = onnx_input_shape(tmp_path / "last.onnx", "x", (3, 8, 6))
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    want = ort_file(tmp_path / "last.onnx", {"x": x})[0]
    with torch.no_grad():
        assert_close(want, net(torch.from_numpy(x)).numpy(), FRAMEWORK_ATOL)
    model = fastrnn.load(tmp_path / "last.onnx")
    assert kinds(model) == ["Recurrent", "Recurrent", "Select", "Dense"]
    assert_close(model.predict(x), want, FRAMEWORK_ATOL)
    check_roundtrip(model, x, tmp_path)
    results = list(model.classify(list(x)))
    assert [r.label_id if hasattr(r, "label_id") else r.label for r in results] is not None
    assert_close(np.array([r.probabilities for r in results]),
                 np.exp(want) / np.exp(want).sum(1, keepdims=True), FRAMEWORK_ATOL)
    np.testing.assert_array_equal(fonnx.InferenceSession(tmp_path / "last.onnx").run(None, {"x": x})[0],
                                  model.predict(x))


class BiClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(60, 16)
        self.lstm = nn.LSTM(16, 20, batch_first=True, bidirectional=True)
        self.head = nn.Linear(40, 3)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        return torch.softmax(self.head(torch.cat([h[-2], h[-1]], dim=1)), dim=1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_bidirectional_classifier(tmp_path, dynamo):
    torch.manual_seed(6)
    net = BiClassifier().eval()
    export(net, (torch.randint(0, 60, (2, 5)),), tmp_path / "bi.onnx", ["ids"], ["probs"],
           {"ids": {0: "b", 1: "t"}}, dynamo)
    ids = np.random.default_rng(7).integers(0, 60, onnx_input_shape(tmp_path / "bi.onnx", "ids", (5, 12)))
    want = ort_file(tmp_path / "bi.onnx", {"ids": ids})[0]
    model = fastrnn.load(tmp_path / "bi.onnx")
    # h[-2], h[-1] then Concat is the final-state output itself; the softmax folds into the Dense;
    # the embedding folds into the LSTM: the plan of the native model
    assert kinds(model) == ["Embedding", "Recurrent", "Dense"]
    assert model.plan().foldable == {model.plan().graph.nodes[0].name}
    assert model.recurrent_layers[0].return_sequences is False
    assert_close(model.predict(ids), want, FRAMEWORK_ATOL)
    again = check_roundtrip(model, ids, tmp_path)
    probs = np.array([r.probabilities for r in again.classify(list(ids))])
    assert_close(probs, want, FRAMEWORK_ATOL)
    sess = fonnx.InferenceSession(tmp_path / "bi.onnx")
    assert sess.model is not None and sess.fallback_reason is None
    np.testing.assert_array_equal(sess.run(None, {"ids": ids})[0], model.predict(ids))


class EncoderDecoder(nn.Module):
    """The encoder's final (h, c) of both layers start the decoder (a seq2seq model)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.enc = nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.dec = nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(16, 20)

    def forward(self, src, tgt):
        _, (h, c) = self.enc(self.emb(src))
        y, _ = self.dec(self.drop(self.emb(tgt)), (h, c))
        return torch.log_softmax(self.out(torch.relu(y)), -1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_encoder_decoder_states_pass_between_layers(tmp_path, dynamo):
    """h / c concatenated over layers by the exporter, then sliced per layer for the decoder:
    each decoder layer reads the encoder layer's state output directly (no Slice, no Reshape)."""
    torch.manual_seed(8)
    net = EncoderDecoder().eval()
    export(net, (torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 4))), tmp_path / "s2s.onnx",
           ["src", "tgt"], ["logp"], {"src": {0: "b", 1: "s"}, "tgt": {0: "b", 1: "t"}}, dynamo)
    rng = np.random.default_rng(9)
    feed = {k: rng.integers(0, 20, onnx_input_shape(tmp_path / "s2s.onnx", k, (3, t))) for k, t in (("src", 7), ("tgt", 5))}
    want = ort_file(tmp_path / "s2s.onnx", feed)[0]
    model = fastrnn.load(tmp_path / "s2s.onnx")
    assert sorted(kinds(model)) == sorted(["Embedding"] * 2 + ["Recurrent"] * 4 + ["Activation", "Dense"])
    assert_close(model.predict(feed), want, FRAMEWORK_ATOL)
    check_roundtrip(model, [feed["src"], feed["tgt"]], tmp_path)


class TimeMajorPooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, bidirectional=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y.mean(0) * 0.5 - y.max(0).values)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_time_major_mean_and_max_over_time(tmp_path, dynamo):
    torch.manual_seed(10)
    net = TimeMajorPooling().eval()
    export(net, (torch.randn(5, 2, 4),), tmp_path / "pool.onnx", ["x"], ["out"],
           {"x": {1: "b"} if dynamo else {0: "t", 1: "b"}}, dynamo)
    shape = onnx_input_shape(tmp_path / "pool.onnx", "x", (7, 3, 4))
    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    want = ort_file(tmp_path / "pool.onnx", {"x": x})[0]
    model = fastrnn.load(tmp_path / "pool.onnx")
    assert sorted(kinds(model)) == ["Arithmetic", "Dense", "GlobalPooling1D", "GlobalPooling1D", "Merge",
                                    "Recurrent"]
    assert_close(model.predict(x.transpose(1, 0, 2)), want, FRAMEWORK_ATOL)
    assert_close(fonnx.InferenceSession(tmp_path / "pool.onnx").run(None, {"x": x})[0], want, FRAMEWORK_ATOL)


# -- pattern rules, one graph each --------------------------------------------------------------------

def make(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def fin(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def fout(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def against_ort(model_proto, feed, tmp_path):
    """Session and fastrnn.load against onnxruntime; the native copy equals the Model."""
    path = tmp_path / "p.onnx"
    path.write_bytes(model_proto.SerializeToString())
    want = ort_run(model_proto, feed)
    sess = fonnx.InferenceSession(path)
    assert sess.model is not None, sess.fallback_reason
    got = sess.run(None, feed)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert_close(g, w, FRAMEWORK_ATOL)
    model = fastrnn.load(path)
    xs = [np.moveaxis(feed[name], b, 0) for name, b, _ in sess._boundary.inputs]
    out = model.predict(xs[0] if len(xs) == 1 else xs)
    again = fastrnn.load(fastrnn.save(model, tmp_path / "p.safetensors") or tmp_path / "p.safetensors")
    out2 = again.predict(xs[0] if len(xs) == 1 else xs)
    for a, b in zip(out if isinstance(out, list) else [out], out2 if isinstance(out2, list) else [out2]):
        np.testing.assert_array_equal(a, b)
    return model


RNG = np.random.default_rng(11)


def w(*shape):
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def test_rule_gather_on_weight_is_a_folded_embedding(tmp_path):
    E, Wt, R = w(30, 6), w(1, 32, 6), w(1, 32, 8)
    m = make([helper.make_node("Gather", ["E", "ids"], ["e"]),
              helper.make_node("Transpose", ["e"], ["et"], perm=[1, 0, 2]),
              helper.make_node("LSTM", ["et", "W", "R"], ["y", "h"], hidden_size=8)],
             [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])], [fout("h")],
             [("E", E), ("W", Wt), ("R", R)])
    model = against_ort(m, {"ids": RNG.integers(0, 30, (3, 5))}, tmp_path)
    assert kinds(model) == ["Embedding", "Recurrent"]
    assert len(model.plan().foldable) == 1


def test_rule_rnn_layout_glue_is_absorbed(tmp_path):
    """Transpose -> GRU (time-major, zero initial state from ConstantOfShape) -> Squeeze ->
    Transpose: one Recurrent node, no Permute / Reshape."""
    Wt, R, B = w(1, 15, 4), w(1, 15, 5), w(1, 30)
    m = make([helper.make_node("Shape", ["x"], ["s"]),
              helper.make_node("Gather", ["s", "zero"], ["bsz"], axis=0),
              helper.make_node("Unsqueeze", ["bsz", "ax0"], ["bsz1"]),
              helper.make_node("Concat", ["one", "bsz1", "five"], ["hshape"], axis=0),
              helper.make_node("ConstantOfShape", ["hshape"], ["h0"]),
              helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
              helper.make_node("GRU", ["xt", "W", "R", "B", "", "h0"], ["y", ""], hidden_size=5, linear_before_reset=1),
              helper.make_node("Squeeze", ["y", "ax1"], ["ys"]),
              helper.make_node("Transpose", ["ys"], ["out"], perm=[1, 0, 2])],
             [fin("x", ["b", "t", 4])], [fout("out")],
             [("W", Wt), ("R", R), ("B", B), ("zero", np.array(0, np.int64)), ("ax0", np.array([0], np.int64)),
              ("ax1", np.array([1], np.int64)), ("one", np.array([1], np.int64)), ("five", np.array([5], np.int64))])
    model = against_ort(m, {"x": RNG.standard_normal((3, 6, 4)).astype(np.float32)}, tmp_path)
    assert kinds(model) == ["Recurrent"]
    assert len(model.nodes[0].inputs) == 1  # the zero initial state is the default: no input


def test_rule_direction_pieces_concatenated_are_the_final_state(tmp_path):
    """Gather(Y_h, 0) and Gather(Y_h, 1) concatenated in order: the layer's final-state output."""
    Wt, R = w(2, 3, 4), w(2, 3, 3)
    m = make([helper.make_node("RNN", ["x", "W", "R"], ["", "h"], hidden_size=3, direction="bidirectional"),
              helper.make_node("Gather", ["h", "i0"], ["h0"], axis=0),
              helper.make_node("Gather", ["h", "i1"], ["h1"], axis=0),
              helper.make_node("Concat", ["h0", "h1"], ["hh"], axis=1),
              helper.make_node("Concat", ["h1", "h0"], ["swapped"], axis=1)],
             [fin("x", ["t", "b", 4])], [fout("hh"), fout("swapped")],
             [("W", Wt), ("R", R), ("i0", np.array(0, np.int64)), ("i1", np.array(-1, np.int64))])
    model = against_ort(m, {"x": RNG.standard_normal((5, 2, 4)).astype(np.float32)}, tmp_path)
    # in order: no node at all; swapped: two slices and a Concatenate
    assert model.graph.outputs[0] == (model.nodes[0].name, 0)
    assert sorted(kinds(model)) == ["Concatenate", "Recurrent", "Slice", "Slice"]


def test_rule_initial_states_and_sequence_lens(tmp_path):
    """initial_h / initial_c graph inputs (D, B, H) become per-direction inputs; a sequence_lens
    input becomes predict's lengths=."""
    m, feed = make_node_model("LSTM", direction="bidirectional", seq_lens=[5, 2, 6, 1], initial=True, seed=4)
    model = against_ort(m, feed, tmp_path)
    assert model.input_names == ["X", "h0", "c0"]
    want = ort_run(m, feed)
    x = feed["X"].transpose(1, 0, 2)
    h0, c0 = (np.ascontiguousarray(feed[k].transpose(1, 0, 2)) for k in ("h0", "c0"))
    y, h, c = model.predict([x, h0, c0], lengths={"X": feed["seq"]})
    assert_close(y, want[0].transpose(2, 0, 1, 3).reshape(4, 6, -1), FRAMEWORK_ATOL)
    assert_close(h.reshape(4, 2, -1).transpose(1, 0, 2), want[1], FRAMEWORK_ATOL)


def test_rule_matmul_add_is_one_dense_and_gemm_folds_alpha_beta(tmp_path):
    W1, b1, W2, b2 = w(4, 6), w(6), w(3, 6), w(3)
    m = make([helper.make_node("MatMul", ["x", "W1"], ["mm"]),
              helper.make_node("Add", ["mm", "b1"], ["d1"]),
              helper.make_node("Relu", ["d1"], ["r"]),
              helper.make_node("ReduceMean", ["r"], ["pooled"], axes=[1], keepdims=0),
              helper.make_node("Gemm", ["pooled", "W2", "b2"], ["g"], transB=1, alpha=0.5, beta=2.0),
              helper.make_node("Sigmoid", ["g"], ["out"])],
             [fin("x", ["b", "t", 4])], [fout("out")], [("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2)])
    model = against_ort(m, {"x": RNG.standard_normal((3, 7, 4)).astype(np.float32)}, tmp_path)
    assert kinds(model) == ["Dense", "GlobalPooling1D", "Dense"]  # the activations fold into the Dense


def test_rule_activations_on_any_axis(tmp_path):
    m = make([helper.make_node("Tanh", ["x"], ["a"]),
              helper.make_node("Softmax", ["a"], ["s1"], axis=1),
              helper.make_node("LogSoftmax", ["x"], ["s2"], axis=-1),
              helper.make_node("LeakyRelu", ["x"], ["lr"], alpha=0.2),
              helper.make_node("Exp", ["s2"], ["ex"])],
             [fin("x", ["b", 5, 3])], [fout("s1"), fout("lr"), fout("ex")])
    model = against_ort(m, {"x": RNG.standard_normal((2, 5, 3)).astype(np.float32)}, tmp_path)
    assert sorted(kinds(model)) == ["Activation"] * 4 + ["Math"]


def test_rule_merges_and_constant_arithmetic(tmp_path):
    c = w(3)
    m = make([helper.make_node("Add", ["x", "y"], ["add"]),
              helper.make_node("Sub", ["add", "y"], ["sub"]),
              helper.make_node("Mul", ["sub", "x"], ["mul"]),
              helper.make_node("Max", ["mul", "x", "y"], ["mx"]),
              helper.make_node("Mul", ["mx", "c"], ["scaled"]),
              helper.make_node("Sub", ["two", "scaled"], ["rsub"]),
              helper.make_node("Div", ["rsub", "two"], ["out"])],
             [fin("x", ["b", 4, 3]), fin("y", ["b", 4, 3])], [fout("out")],
             [("c", c), ("two", np.array(2.0, np.float32))])
    rng = np.random.default_rng(2)
    model = against_ort(m, {"x": rng.standard_normal((2, 4, 3)).astype(np.float32),
                            "y": rng.standard_normal((2, 4, 3)).astype(np.float32)}, tmp_path)
    assert sorted(kinds(model)) == ["Arithmetic"] * 3 + ["Merge"] * 4


def test_rule_concat_and_time_major_constant(tmp_path):
    """Concat of two RNN outputs on features, then a constant (T, 1, F) added to a time-major
    tensor: the constant is laid out batch-major."""
    W1, R1, W2, R2 = w(1, 4, 3), w(1, 4, 4), w(1, 2, 3), w(1, 2, 2)
    m = make([helper.make_node("RNN", ["x", "W1", "R1"], ["y1"], hidden_size=4),
              helper.make_node("RNN", ["x", "W2", "R2"], ["y2"], hidden_size=2),
              helper.make_node("Concat", ["y1", "y2"], ["cat"], axis=3),
              helper.make_node("Squeeze", ["cat", "ax1"], ["sq"]),
              helper.make_node("Add", ["sq", "bias"], ["out"])],
             [fin("x", [5, "b", 3])], [fout("out")],
             [("W1", W1), ("R1", R1), ("W2", W2), ("R2", R2), ("ax1", np.array([1], np.int64)),
              ("bias", w(5, 1, 6))])
    model = against_ort(m, {"x": RNG.standard_normal((5, 2, 3)).astype(np.float32)}, tmp_path)
    assert sorted(kinds(model)) == ["Arithmetic", "Concatenate", "Recurrent", "Recurrent"]


def test_rule_reshape_flatten_and_slice(tmp_path):
    m = make([helper.make_node("Slice", ["x", "s", "e", "a"], ["sl"]),
              helper.make_node("Flatten", ["sl"], ["fl"], axis=1),
              helper.make_node("Reshape", ["fl", "shape"], ["out"])],
             [fin("x", ["b", 6, 4])], [fout("out")],
             [("s", np.array([1], np.int64)), ("e", np.array([5], np.int64)), ("a", np.array([1], np.int64)),
              ("shape", np.array([0, 2, 8], np.int64))])
    model = against_ort(m, {"x": RNG.standard_normal((3, 6, 4)).astype(np.float32)}, tmp_path)
    assert kinds(model) == ["Slice", "Reshape", "Reshape"]


def test_rule_shape_arithmetic(tmp_path):
    """The dynamo exporter's glue: Y (T, D, B, H) -> Transpose -> Shape -> Slice each size ->
    Mul(D, H) -> Concat (T, B, D*H) -> Reshape folds at import (no node besides the RNN); a
    run-time size times 1, divided by 1, plus 0 is itself."""
    one, zero = np.array([1], np.int64), np.array([0], np.int64)
    bounds = {f"i{k}": np.array([k], np.int64) for k in range(5)}
    m = make([helper.make_node("RNN", ["x", "W", "R"], ["y"], hidden_size=4, direction="bidirectional"),
              helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
              helper.make_node("Shape", ["yt"], ["s"]),
              *[helper.make_node("Slice", ["s", f"i{k}", f"i{k + 1}"], [f"s{k}"]) for k in range(4)],
              helper.make_node("Mul", ["s2", "s3"], ["dh"]),
              helper.make_node("Mul", ["s0", "one"], ["t"]),
              helper.make_node("Div", ["s1", "one"], ["b1"]),
              helper.make_node("Add", ["b1", "zero"], ["b"]),
              helper.make_node("Concat", ["t", "b", "dh"], ["shape"], axis=0),
              helper.make_node("Reshape", ["yt", "shape"], ["out"])],
             [fin("x", ["t", "b", 3])], [fout("out")],
             [("W", w(2, 4, 3)), ("R", w(2, 4, 4)), ("one", one), ("zero", zero), *bounds.items()])
    model = against_ort(m, {"x": RNG.standard_normal((5, 2, 3)).astype(np.float32)}, tmp_path)
    assert kinds(model) == ["Recurrent"]


def unrolled_rnn(T, time, reverse=False, activation="Tanh", read_state=None):
    """nn.RNN as the dynamo exporter writes it: one group of nodes per step of a (T, B, 3) input,
    hidden size 4, h0 a graph input (1, B, 4). Outputs: the states (T, B, 4) and the last (B, 4)."""
    I, H = 3, 4
    nodes = [helper.make_node("MatMul", ["x", "Wi"], ["xw"]), helper.make_node("Add", ["xw", "bi"], ["p"])]
    inits = [("Wi", w(I, H)), ("bi", w(H)), ("Wh", w(H, H)), ("bh", w(H)), ("ax0", np.array([0], np.int64))]
    source = "p"
    if reverse:
        inits += [("m1", np.array([-1], np.int64)), ("end", np.array([-2 ** 63], np.int64))]
        nodes.append(helper.make_node("Slice", ["p", "m1", "end", "ax0", "m1"], ["flip"]))
        source = "flip"
    prev, states = "h0", []
    for t in range(T):
        inits += [(f"t{t}", np.array([t], np.int64)), (f"u{t}", np.array([t + 1], np.int64))]
        nodes += [helper.make_node("Slice", [source, f"t{t}", f"u{t}", "ax0"], [f"sl{t}"]),
                  helper.make_node("Squeeze", [f"sl{t}", "ax0"], [f"x{t}"]),
                  helper.make_node("MatMul", [prev, "Wh"], [f"hw{t}"]),
                  helper.make_node("Add", [f"hw{t}", "bh"], [f"lin{t}"]),
                  helper.make_node("Add", [f"lin{t}", f"x{t}"], [f"a{t}"]),
                  helper.make_node(activation, [f"a{t}"], [f"state{t}"])]
        prev = f"state{t}"
        states.append(prev)
    nodes += [helper.make_node("Concat", states[::-1] if reverse else states, ["ys"], axis=0),
              helper.make_node("Squeeze", [prev, "ax0"], ["hn"])]
    outputs = [fout("ys"), fout("hn")] + ([fout(read_state)] if read_state else [])
    return make(nodes, [fin("x", [time, "b", I]), fin("h0", [1, "b", H])], outputs, inits)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", ["Tanh", "Relu"])
def test_rule_unrolled_rnn_is_one_recurrent_layer(tmp_path, reverse, activation):
    """An RNN unrolled step by step (PyTorch's dynamo exporter writes nn.RNN so) over a fixed
    number of steps becomes one RNN node again (unrolled.py): one Recurrent layer."""
    m = unrolled_rnn(5, 5, reverse, activation)
    feed = {"x": RNG.standard_normal((5, 2, 3)).astype(np.float32),
            "h0": RNG.standard_normal((1, 2, 4)).astype(np.float32)}
    model = against_ort(m, feed, tmp_path)
    assert kinds(model) == ["Select", "Recurrent"]  # the Select takes h0's one direction
    assert model.recurrent_layers[0].activations[0].name == activation.lower()


def test_rule_unrolled_rnn_over_a_run_time_length_or_read_inside_stays_unrolled(tmp_path):
    """Unrolled over 4 steps but the input's length is only known at run time: the file is only
    right for 4 steps, the interpreter runs it as written (and says why). A chain whose
    intermediate state is also read elsewhere is not rolled up."""
    from fastrnn.formats.onnx import graph as graph_mod
    from fastrnn.formats.onnx.unrolled import reroll

    m = unrolled_rnn(4, "t")
    sess = fonnx.InferenceSession(m.SerializeToString())
    assert sess.model is None and "unrolled this RNN over 4 steps" in sess.fallback_reason
    feed = {"x": RNG.standard_normal((4, 3, 3)).astype(np.float32),
            "h0": RNG.standard_normal((1, 3, 4)).astype(np.float32)}
    for got, want in zip(sess.run(None, feed), ort_run(m, feed)):
        assert_close(got, want, FRAMEWORK_ATOL)
    rolled = reroll(graph_mod.parse(m.SerializeToString()))
    assert [n.op_type for n in rolled.nodes if n.op_type in ("RNN", "Tanh")] == ["RNN"]
    read_inside = graph_mod.parse(unrolled_rnn(4, 4, read_state="state1").SerializeToString())
    assert reroll(read_inside) is read_inside


def test_rule_elementwise_functions(tmp_path):
    """The element-wise functions the graphs above do not use, one node each (Log, Sqrt and
    Reciprocal on a positive input), Pow by a constant and Min of two tensors."""
    signed = [("Elu", {"alpha": 0.7}), ("Softplus", {}), ("Softsign", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
              ("Neg", {}), ("Abs", {})]
    positive = [("Log", {}), ("Sqrt", {}), ("Reciprocal", {})]
    nodes = [helper.make_node(op, ["x"], [op.lower()], **attrs) for op, attrs in signed]
    nodes += [helper.make_node(op, ["p"], [op.lower()], **attrs) for op, attrs in positive]
    nodes += [helper.make_node("Pow", ["x", "two"], ["pow"]), helper.make_node("Min", ["x", "y"], ["min"])]
    outputs = [fout(op.lower()) for op, _ in signed + positive] + [fout("pow"), fout("min")]
    m = make(nodes, [fin("x", ["b", 5, 3]), fin("p", ["b", 5, 3]), fin("y", ["b", 5, 3])], outputs,
             [("two", np.array(2.0, np.float32))])
    rng = np.random.default_rng(5)
    feed = {"x": rng.standard_normal((2, 5, 3)).astype(np.float32),
            "p": rng.uniform(0.2, 3.0, (2, 5, 3)).astype(np.float32),
            "y": rng.standard_normal((2, 5, 3)).astype(np.float32)}
    model = against_ort(m, feed, tmp_path)
    assert sorted(kinds(model)) == ["Activation"] * 4 + ["Arithmetic"] + ["Math"] * 5 + ["Merge"]


def test_rule_glue_that_adds_no_layer(tmp_path):
    """Identity, Dropout (inference: its input), Cast to float of a float tensor and Expand to the
    tensor's own shape add no node."""
    m = make([helper.make_node("Identity", ["x"], ["i"]),
              helper.make_node("Dropout", ["i"], ["d"]),
              helper.make_node("Cast", ["d"], ["c"], to=TensorProto.FLOAT),
              helper.make_node("Shape", ["c"], ["s"]),
              helper.make_node("Expand", ["c", "s"], ["e"]),
              helper.make_node("Tanh", ["e"], ["out"])],
             [fin("x", ["b", 4, 3])], [fout("out")])
    model = against_ort(m, {"x": RNG.standard_normal((2, 4, 3)).astype(np.float32)}, tmp_path)
    assert kinds(model) == ["Activation"]


def test_rule_size_of_a_tensor_runs_on_the_interpreter(tmp_path):
    """Size of a run-time tensor (it depends on the batch) has no layer: the session interprets
    the graph, says why, and matches onnxruntime."""
    m = make([helper.make_node("Size", ["x"], ["n"]),
              helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["x", "nf"], ["out"])],
             [fin("x", ["b", 3])], [fout("out")])
    sess = fonnx.InferenceSession(m.SerializeToString())
    assert sess.model is None and "Size" in sess.fallback_reason
    feed = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    assert_close(sess.run(None, feed)[0], ort_run(m, feed)[0], FRAMEWORK_ATOL)


def test_weights_fed_at_run_time_run_on_a_model_built_for_them():
    """The ONNX conformance cases feed W, R (B, P) as graph inputs: fastrnn.load cannot make one
    Model of them, the session builds the Model for the weights of the run (and keeps it)."""
    from test_onnx import CASES

    case = CASES["test_lstm_with_peepholes"]
    sess = fonnx.InferenceSession(case.model.SerializeToString())
    assert sess.model is None and "computed at run time" in sess.fallback_reason
    (inputs, outputs), = case.data_sets
    feed = {i.name: a for i, a in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feed)
    key, model, _ = sess._specialised
    assert model is not None and [type(n.layer).__name__ for n in model.nodes if n.layer.kind != "select"] \
        == ["Recurrent"]  # (Select picks the one direction of the fed initial states)
    for g, w_ in zip(got, outputs):
        assert_close(g, w_, FRAMEWORK_ATOL)
    sess.run(None, feed)
    assert sess._specialised[1] is model  # same weights: the same Model


def test_fallback_for_a_graph_without_a_batch(tmp_path):
    """A graph whose inputs share no batch axis (a (3, 4) matrix and a (4,) vector) has no Model:
    the session interprets it node by node and says why."""
    m = make([helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Tanh", ["s"], ["out"])],
             [fin("a", [3, 4]), fin("b", [4])], [fout("out")])
    sess = fonnx.InferenceSession(m.SerializeToString())
    assert sess.model is None and sess.fallback_reason
    feed = {"a": RNG.standard_normal((3, 4)).astype(np.float32), "b": RNG.standard_normal(4).astype(np.float32)}
    assert_close(sess.run(None, feed)[0], ort_run(m, feed)[0], FRAMEWORK_ATOL)
    (tmp_path / "v.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(fastrnn.ModelFormatError, match="InferenceSession"):
        fastrnn.load(tmp_path / "v.onnx")


# -- every cell, direction and peephole against onnxruntime, through the Model ------------------------

CELL_CASES = [(cell, direction, peephole) for cell in ("RNN", "GRU", "LSTM")
              for direction in ("forward", "reverse", "bidirectional")
              for peephole in ((False, True) if cell == "LSTM" else (False,))]


@pytest.mark.parametrize("cell,direction,peephole", CELL_CASES)
def test_every_cell_direction_and_peephole_against_onnxruntime(cell, direction, peephole, tmp_path):
    kw = dict(cell=cell, direction=direction, peephole=peephole, seq_lens=[6, 4, 1, 5], initial=True,
              lbr=1 if direction != "reverse" else 0, seed=hash((cell, direction, peephole)) % 1000)
    m, feed = make_node_model(**kw)
    want = ort_run(m, feed)
    sess = fonnx.InferenceSession(m.SerializeToString())
    assert sess.model is not None, sess.fallback_reason
    got = sess.run(None, feed)
    assert len(got) == len(want)
    for g, w_ in zip(got, want):
        assert_close(g, w_, FRAMEWORK_ATOL, what=f"{cell} {direction} peephole={peephole}")


def test_the_names_of_translate_stay_reachable():
    """translate.py's rules moved into rules_*.py and its value kinds into values.py (issue 27):
    every name it defined is still fastrnn.formats.onnx.translate.<name>, the same object, and every
    operator has its rules in the table, the quantized Mul / Cast patterns before the general ones."""
    from fastrnn.formats.onnx import rules_math, rules_quantized, rules_recurrent, rules_shape, translate, values

    moved = {values: ["Untranslatable", "WrongBatchAxis", "Dim", "BATCH", "Const", "ShapeVec", "Zeros", "SeqLens",
                      "Quantized", "IntProduct", "ScaleProduct", "Tensor", "BIG", "f32", "_py", "_ints", "_axes_arg"],
             rules_shape: ["_shapevec", "_fmt", "_groups"], rules_quantized: ["_per_output", "int8_rows"]}
    for module, names in moved.items():
        for name in names:
            assert getattr(translate, name) is getattr(module, name), name
    for name in ("Boundary", "Translator", "translate", "translate_graph", "batch_axis_guesses", "to_model_inputs",
                 "to_onnx_output", "_target"):
        assert callable(getattr(translate, name)), name
    # shape vectors' arithmetic (the dynamo exporter's glue) before the element-wise rules
    assert translate.RULES["Mul"] == [rules_quantized.dequantizing_mul, rules_shape.shape_arithmetic,
                                      rules_math.arithmetic]
    for op in ("Add", "Sub", "Div"):
        assert translate.RULES[op] == [rules_shape.shape_arithmetic, rules_math.arithmetic]
    assert translate.RULES["Cast"] == [rules_quantized.cast_of_integer_products, rules_shape.cast]
    assert translate.RULES["LSTM"] == [rules_recurrent.recurrent]
    assert all(len(rules) == 1 for op, rules in translate.RULES.items()
               if op not in ("Mul", "Cast", "Add", "Sub", "Div"))
