"""int8 compute (fastrnn/quantize.py, kernels/int8_core.h): the NumPy spec, every instruction
set against it, models against the spec and against float32, files, classify, generate."""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close, require
from fastrnn import backends
from fastrnn.layers import Dense, Embedding
from fastrnn.quantize import int8_product, quantize_int8, quantize_rows, round_bfloat16
from helpers import random_recurrent, random_state

k = require("fastrnn.kernels._cyint8")  # a skip outside CI, a failure in CI

BEST = k.select_simd(None)
LEVELS = k.SIMD_LEVELS[: k.SIMD_LEVELS.index(BEST) + 1]
# int8 C against the int8 NumPy spec, whole sequences: the element-wise steps (SIMD tanh/exp vs
# NumPy's) differ in the last bits, and such a difference can move an activation across a
# rounding boundary of its quantization: one step of one input, about |W| * top / 127 per gate.
INT8_SPEC_ATOL = 2e-4


@pytest.fixture
def at_level():
    def run(fn):
        out = {}
        try:
            for level in LEVELS:
                assert k.select_simd(level) in (level, "avx2")  # avxvnni falls back where absent
                out[level] = fn()
        finally:
            k.select_simd(None)
        return out
    return run


def rows_with_edges(rng, M, K):
    x = (rng.standard_normal((M, K)) * rng.uniform(0.01, 10, (M, 1))).astype(np.float32)
    if M > 2:
        x[0] = 0.0  # all-zero row: scale 1, xq 0
        x[1, :] = 3.0  # every value at the maximum: xq = 127 everywhere
    return x


# -- the spec and the kernels ------------------------------------------------------------------
@pytest.mark.parametrize("M,K", [(1, 1), (3, 5), (7, 64), (40, 130), (5, 1000)])
def test_quantize_rows_equal_spec_at_every_level(M, K, at_level, rng):
    x = rows_with_edges(rng, M, K)
    xq, xs = quantize_rows(x)
    assert xq.dtype == np.int8 and np.abs(xq.astype(int)).max() <= 127
    assert np.all(np.abs(x - xq * xs[:, None]) <= xs[:, None] / 2 * (1 + 1e-6))  # round to nearest
    for level, (cq, cs) in at_level(lambda: k.quantize_rows(x)).items():
        np.testing.assert_array_equal(cs, xs, err_msg=level)
        np.testing.assert_array_equal(cq[:, :K], xq, err_msg=level)
        assert not cq[:, K:].any(), level  # zero padding to a multiple of 4


@pytest.mark.parametrize("N,K", [(512, 128), (37, 45), (16, 1), (5, 3), (70, 192), (2048, 64)])
@pytest.mark.parametrize("m", [1, 2, 5, 7, 16, 33, 67])
def test_matmul_equal_spec_at_every_level(N, K, m, at_level, rng):
    """Every instruction set (plain C, AVX2 vpmaddubsw, AVX-VNNI, AVX-512 VNNI, AMX) computes
    the same integers and the same float operations as the spec: the same bits."""
    check_matmul_levels(N, K, m, at_level, rng)


@pytest.mark.parametrize("N,K,m", [(100, 512, 130), (37, 5500, 7), (64, 8192, 2), (48, 256, 280)])
def test_matmul_row_blocks_and_long_rows_equal_spec(N, K, m, at_level, rng):
    """AVX-512 VNNI flips the activations to unsigned bytes once per block of rows that fits its
    32 KB buffer (64 rows of K = 512: 130 rows are three blocks); rows longer than the buffer
    holds for 6 rows (K4 > 5461) are flipped at each broadcast instead. AMX works in chunks of
    256 rows, pairs of 16-row blocks and pairs of panels, each block's epilogue run after the next
    block's products (280 rows: a second chunk of one 16-row block, 8 rows left to VNNI; 3
    panels: a pair and a single). Same bits either way."""
    check_matmul_levels(N, K, m, at_level, rng)


def check_matmul_levels(N, K, m, at_level, rng):
    W = (rng.standard_normal((N, K)) * 0.3).astype(np.float32)
    q, scale = quantize_int8(W)
    w = k.pack_int8(q, scale)
    x = rows_with_edges(rng, m, K)
    out0 = rng.standard_normal((m, N)).astype(np.float32)
    expected = int8_product(*quantize_rows(x), q, scale, out0)

    def run():
        out = out0.copy()
        k.matmul_int8(x, w, out)
        return out

    def run_bias():  # out = bias + product, out only written
        out = np.full((m, N), np.nan, np.float32)
        k.matmul_int8(x, w, out, out0[0])
        return out

    expected_bias = int8_product(*quantize_rows(x), q, scale, np.broadcast_to(out0[0], (m, N)))
    for level, out in at_level(run).items():
        np.testing.assert_array_equal(out, expected, err_msg=level)
    for level, out in at_level(run_bias).items():
        np.testing.assert_array_equal(out, expected_bias, err_msg=level)


def test_no_int16_saturation_on_extreme_values(at_level):
    """vpmaddubsw adds two u8*s8 products in int16: with |xq| = |q| = 127 everywhere a naive
    u8 offset would saturate; the sign trick keeps every pair sum within 2 * 127^2."""
    K, N = 256, 32
    W = np.where(np.arange(N)[:, None] % 2, 1.0, -1.0) * np.ones((N, K), np.float32)
    x = np.stack([np.ones(K), -np.ones(K), np.where(np.arange(K) % 2, 1.0, -1.0)]).astype(np.float32)
    q, scale = quantize_int8(W.astype(np.float32))
    w = k.pack_int8(q, scale)
    expected = x @ W.T  # exact: every value is +-127 * (1/127) steps, sums of +-1
    for level, out in at_level(lambda: (lambda o: (k.matmul_int8(x, w, o), o)[1])(
            np.zeros((3, N), np.float32))).items():
        assert_close(out, expected, atol=1e-3, rtol=1e-5, what=level)


def test_error_of_one_product_within_the_quantization_bound(rng):
    """|x W^T - int8(x, W)| <= sum_k (|x_k| s_W / 2 + |W_k| s_x / 2 + s_x s_W / 4): each factor
    is off by at most half its quantization step."""
    N, K, M = 64, 200, 10
    W = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    q, s_w = quantize_int8(W)
    xq, s_x = quantize_rows(x)
    got = int8_product(xq, s_x, q, s_w, np.zeros((M, N), np.float32))
    exact = x.astype(np.float64) @ W.T.astype(np.float64)
    bound = (np.abs(x).sum(1)[:, None] * s_w[None, :] / 2 + np.abs(W).sum(1)[None, :] * s_x[:, None] / 2
             + K * s_x[:, None] * s_w[None, :] / 4)
    assert np.all(np.abs(got - exact) <= bound * 1.001 + 1e-5)
    assert np.abs(got - exact).max() > 0  # the test can fail: the product is not exact


def test_requantizing_stored_weights_gives_them_back(rng):
    """The engine derives (q, scale) from the float32 values scale * q a quantized model holds
    (and an int8 file loads as): the rule must be idempotent, bit for bit."""
    a = (rng.standard_normal((3000, 33)) * 10.0 ** rng.uniform(-6, 3, (3000, 1))).astype(np.float32)
    q, s = quantize_int8(a)
    q2, s2 = quantize_int8(s[:, None] * q.astype(np.float32))
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(s2, s)


# -- models ------------------------------------------------------------------------------------
CASES = [
    dict(cell="lstm", bidirectional=True),
    dict(cell="lstm", proj_size=5),
    dict(cell="lstm", peephole=True),
    dict(cell="gru", linear_before_reset=True),
    dict(cell="gru", linear_before_reset=False, bidirectional=True),
    dict(cell="rnn"),
]


def seq_model(rng, case, hidden=24, features=9):
    rec = random_recurrent(rng, input_size=features, hidden_size=hidden, **case)
    return fastrnn.Model([rec, Dense((rng.standard_normal((3, rec.output_size)) * 0.3).astype(np.float32),
                                     np.zeros(3, np.float32), "tanh")])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_compiled_int8_model_matches_the_spec(case, rng):
    model = seq_model(rng, case)
    q = model.quantize("int8")
    x = rng.standard_normal((5, 17, 9)).astype(np.float32)
    lengths = np.array([17, 3, 0, 16, 1])
    rec = model.layers[0]
    state = [random_state(rng, rec, 5)]
    y, st = q.predict(x, lengths, initial_state=state, return_state=True, backend="cython")
    y_ref, st_ref = q.predict(x, lengths, initial_state=state, return_state=True, backend="numpy")
    assert_close(y, y_ref, atol=INT8_SPEC_ATOL, rtol=1e-3, what="outputs")
    parts, parts_ref = (st[0], st_ref[0]) if rec.cell == "lstm" else ((st[0],), (st_ref[0],))
    for a, b in zip(parts, parts_ref):
        assert_close(a, b, atol=INT8_SPEC_ATOL, rtol=1e-3, what="state")
    # and it really is int8: not the float32 result of the rounded weights
    y_float = model.predict(x, lengths, initial_state=state)
    assert np.abs(y - y_float).max() > 1e-5


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_int8_levels_give_the_same_model_outputs(case, at_level, rng):
    q = seq_model(rng, case, hidden=40).quantize("int8")
    x = rng.standard_normal((19, 11, 9)).astype(np.float32)  # 19 rows: AMX blocks of 16 + rest
    outs = at_level(lambda: q.predict(x, backend="cython", threads=1))
    for level, y in outs.items():
        np.testing.assert_array_equal(y, outs[LEVELS[0]], err_msg=level)


def test_int8_close_to_float32_within_the_quantization_step(rng):
    """A sequence model and a classifier: the int8 outputs stay within a tolerance made of
    the quantization steps (two half-steps per product, through tanh/sigmoid which do not
    amplify, over the steps of the recurrence: a stated multiple)."""
    model = seq_model(rng, dict(cell="lstm"), hidden=64, features=16)
    x = rng.standard_normal((4, 30, 16)).astype(np.float32)
    y32, y8 = model.predict(x), model.quantize("int8").predict(x)
    rec = model.layers[0]
    w = rec.directions[0]
    # one product's bound (test above) at the largest row of W_hh and |h| <= 1, K = H inputs
    step = np.abs(w.w_hh).max() / 127 * rec.hidden_size / 2 + np.abs(w.w_hh).sum(1).max() / 127 / 2
    err = np.abs(y8 - y32).max()
    assert 0 < err <= 4 * step, (err, step)


def test_folded_embedding_is_bitwise_the_unfolded_product(rng, monkeypatch):
    emb = Embedding((rng.standard_normal((50, 12)) * 0.5).astype(np.float32))
    rec = random_recurrent(rng, "gru", input_size=12, hidden_size=32, bidirectional=True, return_sequences=False)
    q = fastrnn.Model([emb, rec, Dense(rng.standard_normal((2, 64)).astype(np.float32), None, "softmax")]).quantize(
        "int8")
    ids = rng.integers(0, 50, (6, 13))
    folded = q.predict(ids, backend="cython")
    monkeypatch.setattr(backends, "MAX_FOLDED_TABLE_BYTES", 0)
    q2 = fastrnn.Model(q.layers, metadata=q.metadata)  # fresh caches
    np.testing.assert_array_equal(q2.predict(ids, backend="cython"), folded)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_does_not_depend_on_its_batch(threads, rng):
    q = seq_model(rng, dict(cell="lstm", bidirectional=True), hidden=32).quantize("int8")
    x = rng.standard_normal((24, 8, 9)).astype(np.float32)
    lengths = rng.integers(1, 9, 24)
    y = q.predict(x, lengths, threads=threads, backend="cython")
    for b in (0, 17, 23):
        np.testing.assert_array_equal(q.predict(x[b:b + 1], lengths[b:b + 1], threads=1, backend="cython")[0], y[b])


# -- the model object, files, classify, generate -----------------------------------------------
def test_quantize_returns_a_new_model_and_rejects_unknown_kinds(rng):
    model = seq_model(rng, dict(cell="gru"))
    before = model.layers[0].directions[0].w_hh.copy()
    q = model.quantize("int8")
    assert q is not model and q.metadata["quantized"] == "int8" and "quantized" not in model.metadata
    np.testing.assert_array_equal(model.layers[0].directions[0].w_hh, before)
    qw, s = quantize_int8(before)
    np.testing.assert_array_equal(q.layers[0].directions[0].w_hh, s[:, None] * qw.astype(np.float32))
    with pytest.raises(ValueError, match="int8, float16, bfloat16"):
        model.quantize("int4")


def test_saved_int8_model_loads_as_int8_with_the_same_results(rng, tmp_path):
    q = seq_model(rng, dict(cell="lstm", proj_size=7)).quantize("int8")
    path = tmp_path / "q.safetensors"
    fastrnn.save(q, path)  # stored in the model's kind
    from fastrnn.formats import safetensors

    tensors, _ = safetensors.read(path)
    assert any(a.dtype == np.int8 for a in tensors.values())
    loaded = fastrnn.load(path)
    assert loaded.metadata["quantized"] == "int8"
    x = rng.standard_normal((3, 10, 9)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), q.predict(x))


def test_classify_and_generate_run_on_int8(rng):
    vocab = fastrnn.Vocabulary([chr(97 + i) for i in range(20)])
    emb = Embedding((rng.standard_normal((20, 8)) * 0.5).astype(np.float32))
    rec = random_recurrent(rng, "lstm", input_size=8, hidden_size=32, return_sequences=False)
    cls = fastrnn.Model([emb, rec, Dense(rng.standard_normal((3, 32)).astype(np.float32), None, "softmax")],
                        vocabulary=vocab, metadata={"labels": ["x", "y", "z"]})
    q = cls.quantize("int8")
    texts = ["abc", "hello", "a"]
    got = [r.probabilities for r in q.classify(texts)]
    for text, p in zip(texts, got):
        np.testing.assert_array_equal(p, q.predict([vocab.encode(text)])[0])
    assert any(np.abs(p - r.probabilities).max() > 0 for p, r in zip(got, cls.classify(texts)))

    rec2 = random_recurrent(rng, "lstm", input_size=8, hidden_size=32)
    gen = fastrnn.Model([emb, rec2, Dense(rng.standard_normal((20, 32)).astype(np.float32), None)], vocabulary=vocab)
    qg = gen.quantize("int8")  # generation runs its int8 loop on the rounded weights by default
    from fastrnn.generate import default_weights, generation_plan

    assert default_weights(qg, None) == "int8" and generation_plan(qg, "int8").layers[0].w_a.q is not None
    # generate() with its default weights against the reference: the same network in float32 on
    # the int8 model's rounded weights (what every engine computes with; the compiled ones also
    # round each matmul input to int16, about 1e-4 of the logits' range: TOL is 10x that), and
    # not the float model, whose logits differ by about 1e-2 of their range
    reference = fastrnn.Model(qg.layers, vocabulary=vocab)  # no "quantized" metadata: float32
    text = qg.generate("ab", max_new_tokens=20, temperature=0)
    ids = vocab.encode("ab" + text)
    ref_logits = reference.predict([ids], backend="numpy")[0]  # (T, V): the logits after each token
    float_logits = gen.predict([ids], backend="numpy")[0]
    session = qg.session().feed(ids[:2])
    TOL = 1e-3
    float_off = 0.0
    for k in range(1, len(ids) - 1):  # the logits after ids[:k + 1] chose ids[k + 1]
        if k > 1:
            session.feed([ids[k]])
        ref, span = ref_logits[k], np.ptp(ref_logits[k])
        assert np.abs(session.logits() - ref).max() <= TOL * span, k
        assert ref[ids[k + 1]] >= ref.max() - 2 * TOL * span, f"step {k}: not the greedy token of the reference"
        float_off = max(float_off, np.abs(float_logits[k] - ref).max() / span)
    assert float_off > 5 * TOL, "the reference must tell the int8 weights from the float ones"


def test_bfloat16_and_float16_kinds(rng):
    torch = require("torch")
    a = (rng.standard_normal((40, 30)) * 10.0 ** rng.uniform(-3, 3, (40, 1))).astype(np.float32)
    expected = torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(round_bfloat16(a), expected)
    model = seq_model(rng, dict(cell="gru"))
    x = rng.standard_normal((2, 6, 9)).astype(np.float32)
    for kind, tol in (("float16", 2e-3), ("bfloat16", 2e-2)):
        qm = model.quantize(kind)
        assert qm.metadata["quantized"] == kind
        w = qm.layers[0].directions[0].w_ih
        if kind == "float16":
            np.testing.assert_array_equal(w, model.layers[0].directions[0].w_ih.astype(np.float16).astype(np.float32))
        assert_close(qm.predict(x), model.predict(x), atol=tol, rtol=0, what=kind)


def test_weights_auto_measures_once_and_generates_with_its_choice(rng):
    from fastrnn.generate import default_weights

    vocab = fastrnn.Vocabulary([chr(97 + i) for i in range(20)])
    emb = Embedding((rng.standard_normal((20, 8)) * 0.5).astype(np.float32))
    rec = random_recurrent(rng, "lstm", input_size=8, hidden_size=32)
    gen = fastrnn.Model([emb, rec, Dense(rng.standard_normal((20, 32)).astype(np.float32), None)], vocabulary=vocab)
    kind = default_weights(gen, "auto")
    assert kind in ("float32", "float16") and gen.__dict__["_auto_weights"] == kind
    assert gen.generate("ab", max_new_tokens=15, seed=2, weights="auto") == gen.generate(
        "ab", max_new_tokens=15, seed=2, weights=kind)
    assert default_weights(gen.quantize("int8"), "auto") == "int8"  # a quantized model keeps its kind


def _per_tensor(rng, N, K, scale=0.01):
    """W = scale * q with one scale for the whole matrix (onnxruntime's per-tensor int8): most
    rows' largest |q| is below 127, so the per-row rule would pick other integers."""
    q = rng.integers(-100, 101, (N, K)).astype(np.int8)
    s = np.full(N, scale, np.float32)
    return (s[:, None] * q.astype(np.float32)).astype(np.float32), q, s


def test_exact_int8_forms_reach_every_int8_consumer(tmp_path, rng):
    """Layers carrying their exact int8 forms (Int8Weights, as an onnxruntime-quantized file gives
    them): both int8 engines, generation's int8 weights (GRU blocks sliced by rows), int8 files,
    model.quantize and pickles use those integers, not the rule's."""
    import pickle

    from fastrnn.generate import generation_plan
    from fastrnn.layers import DirectionWeights, Recurrent
    from fastrnn.quantize import exact_int8

    V, E, H = 20, 6, 5
    w_ih, q_ih, s_ih = _per_tensor(rng, 3 * H, E)
    w_hh, q_hh, s_hh = _per_tensor(rng, 3 * H, H)
    w_d, q_d, s_d = _per_tensor(rng, V, H)
    b = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (3 * H, 3 * H, V)]
    table = rng.standard_normal((V, E)).astype(np.float32)

    def build(exact):
        forms = {"w_ih": exact_int8(w_ih, q_ih, s_ih), "w_hh": exact_int8(w_hh, q_hh, s_hh)} if exact else None
        gru = Recurrent("gru", H, [DirectionWeights(w_ih, w_hh, b[0], b[1], int8=forms)], name="gru")
        dense = Dense(w_d, b[2], name="out", int8=exact_int8(w_d, q_d, s_d) if exact else None)
        return fastrnn.Model([Embedding(table), gru, dense], metadata={"quantized": "int8"})

    model, rule_only = build(True), build(False)
    x = rng.integers(0, V, (3, 7))
    y = model.predict(x, backend="cython")
    assert_close(y, model.predict(x, backend="numpy"), atol=INT8_SPEC_ATOL, rtol=1e-3)
    assert np.abs(y - rule_only.predict(x, backend="cython")).max() > 1e-4  # the integers matter
    plan = generation_plan(model, "int8")
    np.testing.assert_array_equal(plan.layers[0].w_a.q, q_hh[: 2 * H])  # r|z rows of the first layer's W_hh
    np.testing.assert_array_equal(plan.layers[0].w_hn.q, q_hh[2 * H:])
    np.testing.assert_array_equal(plan.dense_w.q, q_d)
    np.testing.assert_array_equal(plan.dense_w.scale, s_d)
    path = tmp_path / "exact.safetensors"
    fastrnn.save(model, path)
    from fastrnn.formats import safetensors
    tensors, _ = safetensors.read(str(path))
    np.testing.assert_array_equal(tensors["layers.1.d0.w_hh"], q_hh)
    np.testing.assert_array_equal(tensors["layers.2.weight"], q_d)
    loaded = fastrnn.load(path)
    np.testing.assert_array_equal(loaded.layers[1].directions[0].int8_of("w_ih").q, q_ih)
    for other in (loaded, model.quantize("int8"), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(other.predict(x, backend="cython"), y)


# -- bfloat16 products (vdpbf16ps) -------------------------------------------------------------
@pytest.mark.parametrize("N,K,m", [(37, 45, 11), (70, 128, 50), (16, 3, 1), (512, 64, 7)])
def test_bf16_matmul_equal_spec_at_every_level_and_form(N, K, m, at_level, rng):
    """vdpbf16ps (where the CPU has AVX512_BF16), its FMA form and plain C: the spec's bits."""
    from fastrnn.quantize import bf16_product

    W = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((m, K)).astype(np.float32)
    w = k.pack_bf16(W)
    out0 = rng.standard_normal((m, N)).astype(np.float32)
    expected = bf16_product(x, W, out0)

    def run():
        out = out0.copy()
        k.matmul_int8(x, w, out)
        return out

    try:
        for native in (True, False):
            k.set_bf16_native(native)
            for level, out in at_level(run).items():
                np.testing.assert_array_equal(out, expected, err_msg=f"{level} native={native}")
    finally:
        k.set_bf16_native(True)


@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_bf16_model_matches_the_spec_and_round_trips_a_file(case, rng, tmp_path):
    model = seq_model(rng, case)
    q = model.quantize("bfloat16")
    x = rng.standard_normal((4, 12, 9)).astype(np.float32)
    lengths = np.array([12, 5, 0, 11])
    y = q.predict(x, lengths, backend="cython")
    assert_close(y, q.predict(x, lengths, backend="numpy"), atol=1e-4, rtol=1e-3)
    assert 0 < np.abs(y - model.predict(x, lengths)).max() < 3e-2  # bfloat16 products, not float32
    path = tmp_path / "bf16.safetensors"
    fastrnn.save(q, path)
    loaded = fastrnn.load(path)
    assert loaded.metadata["quantized"] == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(x, lengths, backend="cython"), y)


def test_quantize_keeps_a_graph_with_a_shared_layer(rng):
    """A graph model: the shared Dense is rounded once and stays shared; int8 runs every node."""
    from fastrnn.graph import Graph, Input, Node
    from fastrnn.layers import Select

    rec = random_recurrent(rng, "gru", input_size=3, hidden_size=16, name="gru")
    head = Dense((rng.standard_normal((2, 16)) * 0.5).astype(np.float32), np.zeros(2, np.float32), name="head")
    graph = Graph([Input("x", (None, 3))],
                  [Node("gru", rec, ["x"]), Node("per_step", head, ["gru"]),
                   Node("last", Select(axis=1, index=-1, name="last"), ["gru"]), Node("final", head, ["last"])],
                  ["per_step", "final"])
    model = fastrnn.Model(graph=graph)
    q = model.quantize("int8")
    assert len(q.layers) == len(model.layers) == 3
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    (a, b), (a_ref, b_ref) = q.predict(x, backend="cython"), q.predict(x, backend="numpy")
    assert_close(a, a_ref, atol=INT8_SPEC_ATOL, rtol=1e-3)
    assert_close(b, b_ref, atol=INT8_SPEC_ATOL, rtol=1e-3)
    assert_close(b, a[:, -1], atol=INT8_SPEC_ATOL, rtol=1e-3)  # the same rows through the same shared head
