"""The Model as a graph (fastrnn.graph): several inputs and outputs, shared layers, masks along
the edges, passes, summary, native save/load of graphs, custom layers, and what generate and
classify accept. Every numerical check compares with an independent NumPy computation written
here from the layers' reference functions (which are themselves tested against the frameworks).
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.graph import Graph, Input, Node, chain, fuse_dense_activation, optimize, remove_identities
from fastrnn.layers import (Activation, Concatenate, CustomLayer, Dense, Embedding, GlobalPooling1D, Identity, Merge,
                            Recurrent, RepeatVector, Select)
from conftest import KERNEL_ATOL, KERNEL_RTOL, assert_close
from helpers import random_recurrent

F32 = np.float32


def rand(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(F32)


def two_input_model(rng):
    """ids -> Embedding(mask_zero) -> LSTM ; features -> GRU ; Concatenate -> Dense softmax."""
    emb = Embedding(rand(rng, 12, 4), mask_zero=True, name="emb")
    lstm = random_recurrent(rng, "lstm", input_size=4, hidden_size=5, return_sequences=False, name="lstm")
    gru = random_recurrent(rng, "gru", input_size=3, hidden_size=6, return_sequences=False, name="gru")
    cat = Concatenate(name="cat")
    dense = Dense(rand(rng, 3, 11), rand(rng, 3), "softmax", name="out")
    graph = Graph(
        [Input("ids", (None,), "int64"), Input("feats", (None, 3), "float32")],
        [Node("emb", emb, ["ids"]), Node("lstm", lstm, ["emb"]), Node("gru", gru, ["feats"]),
         Node("cat", cat, ["lstm", "gru"]), Node("out", dense, ["cat"])],
        ["out"])
    return fastrnn.Model(graph=graph, metadata={"labels": ["a", "b", "c"]}, name="two_inputs")


def two_input_expected(model, ids, feats, feat_lengths=None):
    L = {n.name: n.layer for n in model.nodes}
    id_lengths = (ids != 0).sum(axis=1)
    a, _ = reference.recurrent(L["lstm"], reference.embedding(L["emb"], ids), id_lengths)
    b, _ = reference.recurrent(L["gru"], feats, feat_lengths)
    return reference.dense(L["out"], np.concatenate([a, b], axis=1))


def test_two_input_graph_matches_numpy_with_list_and_dict_inputs(rng, backend):
    model = two_input_model(rng)
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
    feats = rand(rng, 3, 6, 3)
    want = two_input_expected(model, ids, feats)
    assert_close(model.predict([ids, feats], backend=backend), want, what="list")
    assert_close(model.predict({"feats": feats, "ids": ids}, backend=backend), want, what="dict")
    lengths = np.array([6, 2, 4])
    assert_close(model.predict([ids, feats], lengths={"feats": lengths}, backend=backend),
                 two_input_expected(model, ids, feats, lengths), what="per-input lengths")


def test_multi_input_errors_name_the_inputs(rng):
    model = two_input_model(rng)
    ids, feats = np.ones((2, 4), np.int64), rand(rng, 2, 4, 3)
    with pytest.raises(ValueError, match="2 inputs.*ids.*feats"):
        model.predict(ids)
    with pytest.raises(ValueError, match="missing input.*feats"):
        model.predict({"ids": ids})
    with pytest.raises(ValueError, match="unknown input.*nope"):
        model.predict({"ids": ids, "feats": feats, "nope": feats})
    with pytest.raises(ValueError, match="same batch size"):
        model.predict([ids, feats[:1]])
    with pytest.raises(IndexError, match="out of range"):
        model.predict([ids * 40, feats])


def test_multi_output_and_shared_layer(rng, backend):
    """One Dense used at two places (a shared layer), two outputs; parameters counted once."""
    rec = random_recurrent(rng, "gru", input_size=3, hidden_size=4, name="gru")
    head = Dense(rand(rng, 2, 4), rand(rng, 2), name="head")
    last = Select(axis=1, index=-1, name="last")
    graph = Graph([Input("x", (None, 3))],
                  [Node("gru", rec, ["x"]), Node("per_step", head, ["gru"]), Node("last", last, ["gru"]),
                   Node("final", head, ["last"])],
                  ["per_step", "final"])
    model = fastrnn.Model(graph=graph)
    x = rand(rng, 2, 5, 3)
    y, _ = reference.recurrent(rec, x)
    a, b = model.predict(x, backend=backend)
    assert_close(a, reference.dense(head, y))
    assert_close(b, reference.dense(head, y[:, -1]))
    as_dict = model.predict({"x": x}, backend=backend)
    assert set(as_dict) == {"per_step", "final"}
    assert model.count_params() == rec.count_params() + head.count_params()
    assert len(model.layers) == 3  # gru, head (once), last
    text = model.summary(print_fn=None)
    assert "Connected to" in text and "final (Dense)" in text and f"Total params: {model.count_params():,}" in text


def test_masks_flow_through_merges_and_pooling(rng, backend):
    """ids_a -> Embedding(mask_zero) -> GRU ; ids_b -> Embedding(mask_zero) -> LSTM (sequences),
    padded differently; Add(GRU, LSTM) (OR of the masks: the longer of the two in each row) ->
    GlobalAveragePooling1D (mask-aware) vs an explicit masked mean over that many steps."""
    emb_a = Embedding(rand(rng, 9, 3), mask_zero=True, name="emb_a")
    emb_b = Embedding(rand(rng, 9, 3), mask_zero=True, name="emb_b")
    g1 = random_recurrent(rng, "gru", input_size=3, hidden_size=4, name="g1")
    g2 = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, name="g2")
    pool = GlobalPooling1D("average", name="pool")
    graph = Graph([Input("ids_a", (None,), "int64"), Input("ids_b", (None,), "int64")],
                  [Node("emb_a", emb_a, ["ids_a"]), Node("emb_b", emb_b, ["ids_b"]), Node("g1", g1, ["emb_a"]),
                   Node("g2", g2, ["emb_b"]), Node("sum", Merge("add", name="sum"), ["g1", "g2"]),
                   Node("pool", pool, ["sum"])],
                  ["pool"])
    model = fastrnn.Model(graph=graph)
    ids_a = np.array([[1, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0], [7, 8, 1, 2, 3, 4]])
    ids_b = np.array([[3, 1, 0, 0, 0, 0], [2, 2, 5, 6, 7, 0], [4, 4, 4, 4, 0, 0]])
    la, lb = (ids_a != 0).sum(axis=1), (ids_b != 0).sum(axis=1)
    longer = np.maximum(la, lb)
    assert np.all(longer != np.minimum(la, lb))  # every row tells OR from AND
    s = (reference.recurrent(g1, reference.embedding(emb_a, ids_a), la)[0]
         + reference.recurrent(g2, reference.embedding(emb_b, ids_b), lb)[0])
    want = np.stack([s[b, :longer[b]].mean(axis=0) for b in range(3)])
    assert_close(model.predict([ids_a, ids_b], backend=backend), want)


def test_mask_stops_at_layers_without_time(rng):
    emb = Embedding(rand(rng, 5, 2), mask_zero=True, name="emb")
    rec = random_recurrent(rng, "rnn", input_size=2, hidden_size=3, return_sequences=False, name="rnn")
    rep = RepeatVector(4, name="rep")
    pool = GlobalPooling1D("average", name="pool")
    model = fastrnn.Model([emb, rec, rep, pool])
    ids = np.array([[1, 2, 0, 0, 0]])
    h = reference.recurrent(rec, reference.embedding(emb, ids), np.array([2]))[0]
    # the repeated vector carries no mask: the average is over all 4 copies, i.e. h itself
    assert_close(model.predict(ids), h)


def test_passes_keep_results_and_fuse(rng):
    emb = Embedding(rand(rng, 7, 3), name="emb")
    rec = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, name="lstm")
    dense = Dense(rand(rng, 7, 4), rand(rng, 7), name="logits")
    model = fastrnn.Model([emb, rec, Identity(name="dropout"), dense, Activation("log_softmax", name="logp")])
    plan = model.plan().graph
    assert [n.name for n in plan.nodes] == ["emb", "lstm", "logp"]
    assert plan.nodes[-1].layer.activation == "log_softmax"
    ids = rng.integers(0, 7, (2, 5))
    y = reference.dense(dense, reference.recurrent(rec, reference.embedding(emb, ids))[0])
    assert_close(model.predict(ids), reference.log_softmax(y))
    # a Dense whose output is read twice is not fused
    g = Graph([Input("x", (None, 4))], [Node("d", dense, ["x"]), Node("a", Activation("tanh"), ["d"])], ["a", "d"])
    assert fuse_dense_activation(g) is g
    assert remove_identities(chain([dense])).nodes[0].layer is dense


def test_generation_runs_through_the_passes(rng):
    """Embedding -> LSTM -> Dropout -> Dense -> LogSoftmax generates exactly as the plain chain
    (log_softmax shifts every logit by one constant: the same distribution)."""
    emb = Embedding(rand(rng, 6, 3), name="emb")
    rec = random_recurrent(rng, "gru", input_size=3, hidden_size=4, name="gru")
    dense = Dense(rand(rng, 6, 4, scale=2.0), rand(rng, 6), name="logits")
    plain = fastrnn.Model([emb, rec, dense])
    wrapped = fastrnn.Model([emb, rec, Identity(name="drop"), dense, Activation("log_softmax", name="lsm")])
    for kw in ({"temperature": 0}, {"temperature": 0.9, "seed": 3}, {"top_k": 2, "seed": 5}):
        assert wrapped.generate([1, 2], max_new_tokens=12, **kw) == plain.generate([1, 2], max_new_tokens=12, **kw)


def test_generate_refuses_graphs_that_look_at_the_future(rng):
    emb = Embedding(rand(rng, 6, 3), name="emb")
    bi = random_recurrent(rng, "gru", input_size=3, hidden_size=4, bidirectional=True, name="bi")
    with pytest.raises(ValueError, match="forward in time only"):
        fastrnn.Model([emb, bi, Dense(rand(rng, 6, 8), name="d")]).generate([1], max_new_tokens=2)
    model = two_input_model(rng)
    with pytest.raises(ValueError, match="graph with inputs"):
        model.generate([1], max_new_tokens=2)


def test_classify_a_graph_classifier(rng):
    """A one-input graph (two branches over the same sequence, concatenated) classifies; the
    probabilities equal the NumPy computation row by row."""
    emb = Embedding(rand(rng, 6, 3), name="emb")
    a = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, return_sequences=False, name="a")
    b = random_recurrent(rng, "gru", input_size=3, hidden_size=2, return_sequences=False, name="b")
    dense = Dense(rand(rng, 3, 6, scale=2.0), rand(rng, 3), name="logits")
    graph = Graph([Input("ids", (None,), "int64")],
                  [Node("emb", emb, ["ids"]), Node("a", a, ["emb"]), Node("b", b, ["emb"]),
                   Node("cat", Concatenate(), ["a", "b"]), Node("logits", dense, ["cat"])], ["logits"])
    model = fastrnn.Model(graph=graph, vocabulary=fastrnn.Vocabulary(list("abcdef")))
    texts = ["abc", "fedcba", "b"]
    got = np.stack([r.probabilities for r in model.classify(texts, batch_size=2)])
    want = []
    for t in texts:
        x = reference.embedding(emb, np.array([[ord(c) - ord("a") for c in t]]))
        z = reference.dense(dense, np.concatenate([reference.recurrent(a, x)[0], reference.recurrent(b, x)[0]], 1))
        want.append(reference.softmax(z)[0])
    assert_close(got, np.stack(want), KERNEL_ATOL, KERNEL_RTOL)


def test_graph_roundtrips_through_the_native_file(rng, tmp_path):
    model = two_input_model(rng)
    fastrnn.save(model, tmp_path / "g.safetensors")
    back = fastrnn.load(tmp_path / "g.safetensors")
    ids = np.array([[1, 2, 0], [3, 4, 5]])
    feats = rand(rng, 2, 3, 3)
    np.testing.assert_array_equal(back.predict([ids, feats]), model.predict([ids, feats]))
    assert back.input_names == ["ids", "feats"] and back.output_names == ["out"]
    assert back.summary(print_fn=None) == model.summary(print_fn=None)
    assert back.metadata["labels"] == ["a", "b", "c"]


def test_shared_layer_is_stored_once(rng, tmp_path):
    from fastrnn.formats import safetensors

    dense = Dense(rand(rng, 3, 3), name="shared")
    graph = Graph([Input("x", (3,))], [Node("d1", dense, ["x"]), Node("d2", dense, ["d1"])], ["d2"])
    fastrnn.save(fastrnn.Model(graph=graph), tmp_path / "s.safetensors")
    tensors, _ = safetensors.read(tmp_path / "s.safetensors")
    assert sorted(tensors) == ["layers.0.weight"]
    back = fastrnn.load(tmp_path / "s.safetensors")
    assert back.nodes[0].layer is back.nodes[1].layer
    x = rand(rng, 2, 3)
    assert_close(back.predict(x), reference.dense(dense, reference.dense(dense, x)))


def weighted_average_factory(config, weights):
    """A user's custom layer: softmax(x @ w) weighted average over time, mask-aware."""
    (w,) = weights

    def fn(x, mask=None):
        scores = x @ w  # (B, T)
        if mask is not None:
            scores = np.where(mask, scores, -1e9)
        a = np.exp(scores - scores.max(axis=1, keepdims=True))
        a = a / a.sum(axis=1, keepdims=True)
        return (a[:, :, None] * x).sum(axis=1) * config["gain"]

    return fn


def test_custom_layer_runs_saves_and_needs_its_factory(rng, tmp_path):
    emb = Embedding(rand(rng, 8, 3), mask_zero=True, name="emb")
    rec = random_recurrent(rng, "gru", input_size=3, hidden_size=4, name="gru")
    w = rand(rng, 4)
    custom = CustomLayer("WeightedAverage", {"gain": 2.0}, [w], weighted_average_factory({"gain": 2.0}, [w]),
                         name="attn")
    model = fastrnn.Model([emb, rec, custom, Dense(rand(rng, 2, 4), name="out")])
    assert model.output_shape == (2,)
    ids = np.array([[1, 2, 3, 0], [4, 5, 6, 7]])
    lengths = (ids != 0).sum(axis=1)
    y = reference.recurrent(rec, reference.embedding(emb, ids), lengths)[0]
    mask = np.arange(4)[None] < lengths[:, None]
    want = reference.dense(model.layers[-1], weighted_average_factory({"gain": 2.0}, [w])(y, mask))
    assert_close(model.predict(ids), want)
    fastrnn.save(model, tmp_path / "c.safetensors")
    with pytest.raises(fastrnn.ModelFormatError, match="WeightedAverage.*custom_layers"):
        fastrnn.load(tmp_path / "c.safetensors")
    back = fastrnn.load(tmp_path / "c.safetensors", custom_layers={"WeightedAverage": weighted_average_factory})
    np.testing.assert_array_equal(back.predict(ids), model.predict(ids))


def test_custom_activation_by_name(rng, tmp_path):
    def factory(name):
        return lambda x: x * np.tanh(x)

    act = Activation("my_act", name="act", custom=True, fn=factory("my_act"))
    dense = Dense(rand(rng, 3, 2), name="d")
    model = fastrnn.Model([dense, act], input_shape=(2,))
    x = rand(rng, 4, 2)
    z = reference.dense(dense, x)
    assert_close(model.predict(x), z * np.tanh(z))
    fastrnn.save(model, tmp_path / "a.safetensors")
    with pytest.raises(fastrnn.ModelFormatError, match="my_act"):
        fastrnn.load(tmp_path / "a.safetensors")
    assert_close(fastrnn.load(tmp_path / "a.safetensors", custom_layers={"my_act": factory}).predict(x),
                 z * np.tanh(z))


@pytest.mark.parametrize("build,words", [
    (lambda r: Graph([Input("x", (None, 3))], [Node("a", Dense(rand(r, 2, 3)), ["b"]),
                                               Node("b", Dense(rand(r, 3, 2)), ["a"])], ["a"]), "cycle"),
    (lambda r: Graph([Input("x", (None, 3))], [Node("x", Dense(rand(r, 2, 3)), ["x"])], ["x"]), "twice"),
    (lambda r: Graph([Input("x", (None, 3))], [Node("a", Dense(rand(r, 2, 4)), ["x"])], ["a"]),
     "expects 4 features, gets 3"),
    (lambda r: Graph([Input("x", (None, 3))], [Node("a", Dense(rand(r, 2, 3)), ["y"])], ["a"]), "'y'"),
    (lambda r: Graph([Input("x", (None, 3))], [Node("a", Dense(rand(r, 2, 3)), ["x"])], [("a", 1)]), "a\\[1\\]"),
    (lambda r: Graph([Input("x", (None, 3))], [Node("a", Concatenate(axis=0), ["x", "x"])], ["a"]), "batch"),
    (lambda r: Graph([Input("x", (None, 3))], [Node("e", Embedding(rand(r, 4, 2)), ["x"])], ["e"]), "int64"),
])
def test_bad_graphs_are_refused_with_the_node_named(rng, build, words):
    with pytest.raises(ValueError, match=words):
        build(rng)


def test_large_chain_builds_in_linear_time(rng):
    """20,000 nodes (reverse-ordered input to the sort): checked and planned quickly. Measured in
    this process's CPU seconds, which other processes on a busy machine do not add to."""
    import time

    dense = Dense(np.eye(2, dtype=F32), name="d")
    nodes = [Node(f"n{i}", dense, [f"n{i - 1}" if i else "x"]) for i in range(20000)]
    t = time.process_time()
    graph = Graph([Input("x", (2,))], list(reversed(nodes)), ["n19999"])
    model = fastrnn.Model(graph=graph)
    model.plan()
    assert time.process_time() - t < 30  # generous: quadratic behaviour would take minutes
    assert graph.nodes[0].name == "n0" and model.is_chain()


def test_recurrent_return_state_and_initial_state_inputs(rng, backend):
    """Encoder-decoder: the encoder's final (h, c) feed the decoder as node inputs (Keras's
    initial_state=[h, c]); equals running the decoder with that state."""
    enc = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, return_sequences=False, return_state=True,
                           name="enc")
    dec = random_recurrent(rng, "lstm", input_size=2, hidden_size=4, name="dec")
    graph = Graph([Input("src", (None, 3)), Input("tgt", (None, 2))],
                  [Node("enc", enc, ["src"]), Node("dec", dec, ["tgt", ("enc", 1), ("enc", 2)])], ["dec"])
    model = fastrnn.Model(graph=graph)
    src, tgt = rand(rng, 2, 5, 3), rand(rng, 2, 4, 2)
    _, (h, c) = reference.recurrent(enc, src)
    want, _ = reference.recurrent(dec, tgt, None, (h, c))
    assert_close(model.predict([src, tgt], backend=backend), want)
    assert model.graph.shapes[("enc", 1)] == (4,) and model.graph.num_outputs["enc"] == 3


def manual_generate(model_step, prompt, n, sampling, seed):
    """Independent generation loop: feed the prompt, then sample with fastrnn's reference sampler
    (SplitMix64 per row), feeding each token back; model_step(token, state) -> (logits, state)."""
    from fastrnn.generate import sample_token

    state, logits = None, None
    seen = np.zeros(64, bool)
    for t in prompt:
        seen[t] = True
        logits, state = model_step(t, state)
    out, rng = [], seed
    for _ in range(n):
        tok, rng = sample_token(logits, sampling, seen[:len(logits)], rng)
        out.append(tok)
        seen[tok] = True
        logits, state = model_step(tok, state)
    return out


@pytest.mark.parametrize("engine_backend", ["numpy", "cython"])
def test_causal_graph_generates_step_by_step(rng, engine_backend):
    """Embedding -> GRU -> Tanh -> LayerNorm -> Dense (a PyTorch-style head): not the compiled
    chain, still causal; the tokens equal an independent loop over the reference layers."""
    from fastrnn.generate import Sampling
    from fastrnn.layers import LayerNormalization

    if engine_backend not in fastrnn.available_backends():
        pytest.skip(f"{engine_backend} not built")
    emb = Embedding(rand(rng, 7, 3), name="emb")
    gru = random_recurrent(rng, "gru", input_size=3, hidden_size=5, name="gru")
    norm = LayerNormalization(5, rand(rng, 5) + 1, rand(rng, 5), 1e-5, name="norm")
    dense = Dense(rand(rng, 7, 5, scale=1.5), rand(rng, 7), name="logits")
    model = fastrnn.Model([emb, gru, Activation("tanh", name="tanh"), norm, dense])

    def step(token, state):
        x = reference.embedding(emb, np.array([[token]]))
        y, state = reference.recurrent(gru, x, None, state)
        return reference.dense(dense, norm.call([np.tanh(y)]))[0, 0], state

    for kw, seed in (({"temperature": 0}, 0), ({"temperature": 0.8}, 11), ({"temperature": 1.0, "top_k": 3, "top_p": 0.9}, 5)):
        want = manual_generate(step, [1, 2, 3], 15, Sampling(**kw), seed)
        got = model.generate([1, 2, 3], max_new_tokens=15, seed=seed, backend=engine_backend, **kw)
        assert got == want, kw
    # a batch and a stream give each row what it gives alone
    batch = model.generate([[1, 2, 3], [4]], max_new_tokens=10, seed=[5, 6], backend=engine_backend)
    assert batch[0] == model.generate([1, 2, 3], max_new_tokens=10, seed=5, backend=engine_backend)
    assert batch[1] == model.generate([4], max_new_tokens=10, seed=6, backend=engine_backend)
    streamed = [t for piece in model.generate([4], max_new_tokens=10, seed=6, stream=True,
                                              backend=engine_backend) for t in piece]
    assert streamed == batch[1]
    s = model.session(seed=1, backend=engine_backend)
    s.feed([1, 2, 3])
    np.testing.assert_allclose(s.logits(), step(3, reference.recurrent(
        gru, reference.embedding(emb, np.array([[1, 2]])))[1])[0], rtol=1e-4, atol=2e-5)


def test_concatenate_of_embedding_and_lstm_generates(rng):
    """Keras char models often read Concatenate([embedding, lstm]) -> Dense: a causal graph."""
    emb = Embedding(rand(rng, 6, 3), name="emb")
    lstm = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, name="lstm")
    dense = Dense(rand(rng, 6, 7, scale=1.5), rand(rng, 6), "softmax", name="out")
    graph = Graph([Input("ids", (None,), "int64")],
                  [Node("emb", emb, ["ids"]), Node("lstm", lstm, ["emb"]), Node("cat", Concatenate(), ["emb", "lstm"]),
                   Node("out", dense, ["cat"])], ["out"])
    model = fastrnn.Model(graph=graph)
    ids = [1, 2, 3, 4]
    got = model.generate(ids, max_new_tokens=8, temperature=0)
    seq = list(ids)
    for _ in range(8):  # greedy by re-running the whole prefix: the argmax of the last step
        seq.append(int(np.argmax(model.predict(np.array([seq]), backend="numpy")[0, -1])))
    assert got == seq[len(ids):]
