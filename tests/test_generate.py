"""Text generation (fastrnn/generate.py): the logit processing and sampler against the NumPy
reference, sampling statistics, determinism across streaming / batching / engines, stop
strings, sessions, agreement with Model.predict, Unicode vocabularies and the CLI.

Most tests use small random models built directly from fastrnn.layers; the CLI tests use the
bundled model. Every generation engine available here is tested (cython, numba, numpy).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import generate as g
from fastrnn.layers import Dense, Embedding
from helpers import random_recurrent

ENGINES = g.available_engines()
COMPILED = [e for e in ENGINES if e != "numpy"]
CHARS = "abcdefghijkl"


def char_model(seed=0, cell="lstm", V=12, E=6, H=8, layers=2, vocab=True, embedding=True, dense_activation="linear",
               scale=0.6, dense_scale=1.5, **options):
    """[Embedding] -> `layers` recurrent layers -> Dense(V), random weights."""
    rng = np.random.default_rng(seed)
    out = []
    size = V
    if embedding:
        out.append(Embedding(rng.standard_normal((V, E)).astype(np.float32), name="embedding"))
        size = E
    for k in range(layers):
        layer = random_recurrent(rng, cell, input_size=size, hidden_size=H, scale=scale, name=f"rnn{k}", **options)
        out.append(layer)
        size = layer.output_size
    out.append(Dense((rng.standard_normal((V, size)) * dense_scale).astype(np.float32),
                     rng.standard_normal(V).astype(np.float32) * 0.5, activation=dense_activation, name="fc"))
    voc = fastrnn.Vocabulary(list(CHARS[:V])) if vocab else None
    return fastrnn.Model(out, vocabulary=voc)


def predict_ids(model, ids, **kw):
    """Model.predict on token ids (one-hot features for a model without an Embedding)."""
    ids = np.asarray(ids)
    if not model.takes_tokens:
        ids = np.eye(model.input_size, dtype=np.float32)[ids]
    return model.predict(ids, **kw)


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture(params=COMPILED)
def compiled(request):
    return request.param


# ---------------------------------------------------------------------------------------------
# The reference logit processing, by hand
# ---------------------------------------------------------------------------------------------
def test_reference_repetition_penalty_is_ctrl_style():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.0], np.float32)
    seen = np.array([1, 1, 0, 0, 1], np.uint8)
    y = g.process_logits(logits, g.Sampling(temperature=0, repetition_penalty=2.0), seen)
    np.testing.assert_array_equal(y, [1.0, -4.0, 1.0, -1.0, 0.0])


def test_reference_temperature_top_k_keeps_ties():
    logits = np.array([3.0, 1.0, 2.0, 2.0, 0.0], np.float32)
    y = g.process_logits(logits, g.Sampling(temperature=2.0, top_k=2))
    # 2nd largest is 2.0, and both 2.0 are kept
    np.testing.assert_array_equal(np.isfinite(y), [True, False, True, True, False])
    np.testing.assert_allclose(y[[0, 2, 3]], [0.0, -0.5, -0.5])


def test_reference_top_p_keeps_the_crossing_token():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(p).astype(np.float32)
    keep = lambda top_p: np.isfinite(g.process_logits(logits, g.Sampling(top_p=top_p)))  # noqa: E731
    np.testing.assert_array_equal(keep(0.5), [True, False, False, False])   # 0.5 reaches 0.5
    np.testing.assert_array_equal(keep(0.6), [True, True, False, False])    # 0.3 crosses 0.6: kept
    np.testing.assert_array_equal(keep(0.81), [True, True, True, False])
    np.testing.assert_array_equal(keep(1e-9), [True, False, False, False])  # at least one survives
    np.testing.assert_array_equal(keep(1.0), [True, True, True, True])
    # ties with the crossing token are kept
    tied = np.log(np.array([0.4, 0.3, 0.3])).astype(np.float32)
    np.testing.assert_array_equal(np.isfinite(g.process_logits(tied, g.Sampling(top_p=0.5))), [True, True, True])


def test_reference_greedy_and_rng():
    logits = np.array([0.0, 3.0, 3.0, 1.0], np.float32)
    assert g.sample_token(logits, g.Sampling(temperature=0), None, 7) == (1, 7)  # first max, no draw
    state, u = g.splitmix64(0)
    assert state == 0x9E3779B97F4A7C15 and 0 <= u < 1
    # the published first output of SplitMix64 seeded with 0
    z = 0xE220A8397B1DCDAF
    assert u == (z >> 11) * 2.0 ** -53


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_rng_equals_reference(name):
    module = g.get_engine(name).module
    state, want = 12345, []
    for _ in range(50):
        state, u = g.splitmix64(state)
        want.append(u)
    np.testing.assert_array_equal(module.uniforms(12345, 50), want)


# ---------------------------------------------------------------------------------------------
# Compiled processing and sampling equal the reference exactly
# ---------------------------------------------------------------------------------------------
SAMPLINGS = [
    (1.0, 0, 1.0, 1.0), (0.7, 5, 1.0, 1.0), (1.3, 0, 0.9, 1.0), (0.8, 3, 0.5, 1.3), (1.0, 1, 1.0, 1.0),
    (2.0, 0, 0.2, 0.7), (1e-3, 0, 0.95, 1.0), (0.0, 0, 1.0, 1.5), (0.5, 50, 0.99, 2.0), (1.0, 0, 1e-6, 1.0),
]


def random_logits(rng, B, V, ties=False):
    logits = (rng.standard_normal((B, V)) * 3).astype(np.float32)
    if ties:  # many exact ties, the hard case for top-k / top-p
        logits = np.round(logits).astype(np.float32)
    seen = (rng.random((B, V)) < 0.3).astype(np.uint8)
    return logits, seen


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("V,ties", [(12, False), (96, True), (2000, False)])
def test_processing_masks_equal_reference(engine, sampling, V, ties):
    rng = np.random.default_rng(V)
    logits, seen = random_logits(rng, 6, V, ties)
    got = g.get_engine(engine).process_logits(logits, seen, sampling)
    s = g.Sampling(*sampling)
    for b in range(6):
        want = g.process_logits(logits[b], s, seen[b])
        np.testing.assert_array_equal(np.isneginf(got[b]), np.isneginf(want), err_msg=f"mask, row {b}")
        np.testing.assert_array_equal(got[b], want, err_msg=f"values, row {b}")


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_compiled_sampler_draws_the_reference_tokens(compiled, sampling):
    rng = np.random.default_rng(3)
    logits, seen = random_logits(rng, 4, 96, ties=True)
    states = np.array([1, 2, 3, 2 ** 63 + 5], np.uint64)
    got = g.get_engine(compiled).sample_logits(logits, seen, sampling, states.copy(), 40)
    want = g.get_engine("numpy").sample_logits(logits, seen, sampling, states.copy(), 40)
    np.testing.assert_array_equal(got, want)


# Statistical bound: over N draws every token's count is within 5 standard deviations of
# N * p (binomial; a false alarm has probability < 1e-5 per token), and tokens masked by
# top-k / top-p are never drawn.
@pytest.mark.parametrize("sampling", [(1.0, 0, 1.0, 1.0), (0.6, 4, 1.0, 1.0), (1.5, 0, 0.8, 1.0),
                                      (1.0, 6, 0.9, 1.4)])
def test_empirical_frequencies_match_processed_softmax(engine, sampling):
    rng = np.random.default_rng(11)
    V = 10
    logits = (rng.standard_normal((1, V)) * 1.5).astype(np.float32)
    seen = np.zeros((1, V), np.uint8)
    seen[0, :3] = 1
    N = 200_000 if engine != "numpy" else 20_000
    tokens = g.get_engine(engine).sample_logits(logits, seen, sampling, np.array([99], np.uint64), N)[0]
    counts = np.bincount(tokens, minlength=V)
    p = g.probabilities(logits[0], g.Sampling(*sampling), seen[0])
    assert np.all(counts[p == 0] == 0)
    sigma = np.sqrt(N * p * (1 - p))
    assert np.all(np.abs(counts - N * p) <= 5 * sigma + 1), (counts, N * p)


# ---------------------------------------------------------------------------------------------
# Generation: determinism
# ---------------------------------------------------------------------------------------------
MODELS = {
    "lstm": dict(cell="lstm"),
    "lstm_proj_peephole": dict(cell="lstm", proj_size=5, peephole=True, clip=3.0),
    "gru": dict(cell="gru"),
    "gru_reset_before": dict(cell="gru", linear_before_reset=False, layers=1),
    "rnn_relu_onehot": dict(cell="rnn", activations=("relu",), embedding=False, scale=0.3),
    "lstm_softmax_dense": dict(cell="lstm", dense_activation="softmax", layers=1),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_same_seed_same_tokens_on_every_engine(kind):
    model = char_model(**MODELS[kind])
    kw = dict(max_new_tokens=40, temperature=0.9, top_k=8, top_p=0.95, repetition_penalty=1.2, seed=5)
    results = {e: model.generate("abc", backend=e, **kw) for e in ENGINES}
    assert len(set(results.values())) == 1, results
    assert len(results[ENGINES[0]]) == 40
    assert model.generate("abc", backend=ENGINES[0], **dict(kw, seed=6)) != results[ENGINES[0]]


def test_streamed_equals_not_streamed(engine):
    model = char_model(seed=1)
    kw = dict(max_new_tokens=30, temperature=1.0, seed=3, backend=engine)
    whole = model.generate("ab", **kw)
    pieces = list(model.generate("ab", stream=True, **kw))
    assert "".join(pieces) == whole and len(pieces) == 30
    batch = ["ab", "k", "abcdefg"]
    whole = model.generate(batch, **kw)
    rows = ["", "", ""]
    for step in model.generate(batch, stream=True, **kw):
        assert isinstance(step, list) and len(step) == 3
        rows = [r + p for r, p in zip(rows, step)]
    assert rows == whole


def test_batch_rows_equal_single_runs(engine):
    model = char_model(seed=2, cell="gru")
    prompts = ["a", "abcdefghij", "lk", "lkj", "a"]
    kw = dict(max_new_tokens=25, temperature=1.1, top_k=6, seed=17, backend=engine)
    batch = model.generate(prompts, **kw)
    assert batch == [model.generate(p, **kw) for p in prompts]
    assert batch[0] == batch[4]  # the stream depends on the seed, not the row
    seeds = [1, 2, 3, 4, 5]
    per_row = model.generate(prompts, **dict(kw, seed=seeds))
    assert per_row == [model.generate(p, **dict(kw, seed=s)) for p, s in zip(prompts, seeds)]


def test_ids_in_ids_out():
    model = char_model(vocab=False)
    out = model.generate([1, 2, 3], max_new_tokens=7, seed=0)
    assert isinstance(out, list) and len(out) == 7 and all(isinstance(t, int) and 0 <= t < 12 for t in out)
    batch = model.generate([[1, 2, 3], [4]], max_new_tokens=7, seed=0)
    assert batch[0] == out and len(batch[1]) == 7
    arr = model.generate(np.array([1, 2, 3]), max_new_tokens=7, seed=0)
    assert isinstance(arr, np.ndarray) and arr.tolist() == out
    assert list(model.generate([1, 2, 3], max_new_tokens=7, seed=0, stream=True)) != []
    assert sum(model.generate([1, 2, 3], max_new_tokens=7, seed=0, stream=True), []) == out


def test_batch_split_across_threads_gives_the_same_rows(engine):
    model = char_model(seed=14, cell="gru", H=16)
    prompts = ["abc"[: 1 + i % 3] + CHARS[i % 12] for i in range(19)]
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=7, seed=list(range(19)), stop="kk", backend=engine)
    one = model.generate(prompts, threads=1, **kw)
    for threads in (2, 3, 8):
        assert model.generate(prompts, threads=threads, **kw) == one
    rows = [""] * 19
    for step in model.generate(prompts, threads=3, stream=True, **kw):
        rows = [r + p for r, p in zip(rows, step)]
    assert rows == one


def test_thread_count_does_not_change_tokens(tmp_path):
    code = ("import fastrnn, sys; sys.path.insert(0, %r); from test_generate import char_model; "
            "m = char_model(seed=4, H=64); print(m.generate(['abc', 'de'] * 8, max_new_tokens=40, seed=2))"
            % os.path.dirname(__file__))
    outs = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout)
    assert len(outs) == 1


# ---------------------------------------------------------------------------------------------
# Weight storage: float16 and int8
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_compact_weights_keep_batch_and_stream_determinism(engine, weights):
    model = char_model(seed=12, cell="lstm", proj_size=5, H=20)
    prompts = ["a", "abcdefghij", "lk", "lkj", "bb", "c"]  # 6 rows: above the small-batch path
    kw = dict(max_new_tokens=25, temperature=1.0, seed=9, backend=engine, weights=weights)
    batch = model.generate(prompts, **kw)
    assert batch == [model.generate(p, **kw) for p in prompts]
    assert "".join(model.generate(prompts[1], stream=True, **kw)) == batch[1]


@pytest.mark.parametrize("kind", ["lstm", "gru_reset_before", "rnn_relu_onehot"])
@pytest.mark.parametrize("weights,atol", [("float16", 1e-5), ("int8", 2e-3)])
def test_compact_weights_engines_agree_and_stay_close_to_float32(kind, weights, atol):
    # float16: every engine computes with the same rounded values. int8: C and Numba also quantize
    # each matmul input to int16, the NumPy reference uses the dequantized weights (atol 2e-3).
    model = char_model(seed=13, **MODELS[kind])
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    logits = {}
    for e in ENGINES:
        s = model.session(backend=e, weights=weights)
        s.feed(prompt)
        logits[e] = s.logits()
    for e in ENGINES:
        np.testing.assert_allclose(logits[e], logits[ENGINES[0]], atol=atol, rtol=0)
    exact = model.session(weights="float32")
    exact.feed(prompt)
    scale = np.abs(exact.logits()).max()
    assert np.abs(logits[ENGINES[0]] - exact.logits()).max() < (0.01 if weights == "float16" else 0.05) * scale


# ---------------------------------------------------------------------------------------------
# Stop strings
# ---------------------------------------------------------------------------------------------
def test_stop_string_ends_generation_and_is_not_kept(engine):
    model = char_model(seed=3, V=4, scale=0.2)  # 4 symbols: stops occur quickly
    kw = dict(max_new_tokens=60, temperature=1.0, backend=engine)
    hits = 0
    for seed in range(8):
        full = model.generate("ab", seed=seed, **kw)
        for stop in ("cd", ["dd", "ca"], "b"):
            stopped = model.generate("ab", seed=seed, stop=stop, **kw)
            stops = [stop] if isinstance(stop, str) else stop
            ends = [full.find(s) + len(s) for s in stops if s in full]
            if ends:
                hits += 1
                end = min(ends)
                longest = max(len(s) for s in stops if full[:end].endswith(s))
                assert stopped == full[:end - longest]
            else:
                assert stopped == full
            assert "".join(model.generate("ab", seed=seed, stop=stop, stream=True, **kw)) == stopped
    assert hits > 10


def test_stop_matching_is_within_generated_text_and_token_ids():
    model = char_model(seed=3, V=4, scale=0.2, vocab=False)
    full = model.generate([0, 1], max_new_tokens=50, seed=1)
    first = full[0]
    assert model.generate([0, 1], max_new_tokens=50, seed=1, stop=first) == []
    assert model.generate([0, 1], max_new_tokens=50, seed=1, stop=[[9, 9]]) == full  # never produced
    two = full[3:5]
    i = next(i for i in range(len(full) - 1) if full[i:i + 2] == two)
    assert model.generate([0, 1], max_new_tokens=50, seed=1, stop=[two]) == full[:i]
    # a stop containing a symbol outside the vocabulary can never occur
    mv = char_model(seed=3, V=4, scale=0.2)
    assert mv.generate("ab", max_new_tokens=20, seed=1, stop="z") == mv.generate("ab", max_new_tokens=20, seed=1)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------
def test_session_matches_generate_and_restores(engine):
    model = char_model(seed=5)
    kw = dict(temperature=0.9, top_p=0.9, repetition_penalty=1.1)
    want = model.generate("abc", max_new_tokens=30, seed=8, backend=engine, **kw)
    s = model.session(seed=8, backend=engine, **kw)
    s.feed("ab").feed("c")
    first = s.generate(10)
    snap = s.save_state()
    rest = s.generate(20)
    assert first + rest == want
    s.restore_state(snap)
    assert s.generate(20) == rest
    # sample() one token at a time is the same stream
    t = model.session(seed=8, backend=engine, **kw)
    t.feed([0, 1, 2])
    assert t.decode([t.sample() for _ in range(30)]) == want
    # sessions are independent: what one does never changes another
    u, v = model.session(seed=1, backend=engine), model.session(seed=1, backend=engine)
    u.feed("a")
    v.feed("a")
    a1 = u.generate(5)
    v.feed("bcd")
    v.generate(7)
    a2 = u.generate(5)
    w = model.session(seed=1, backend=engine).feed("a")
    assert (w.generate(5), w.generate(5)) == (a1, a2)


def test_session_distribution_and_logits_equal_predict():
    model = char_model(seed=6)
    s = model.session(seed=0)
    with pytest.raises(ValueError, match="feed"):
        s.logits()
    s.feed("abca")
    ids = np.array([[0, 1, 2, 0]])
    want = model.predict(ids)[0, -1]
    np.testing.assert_allclose(s.logits(), want, atol=1e-5, rtol=1e-5)
    p = s.probabilities(temperature=0.7, top_k=5)
    np.testing.assert_allclose(p, g.probabilities(s.logits(), g.Sampling(0.7, 5), s._rows.seen[0]), atol=1e-12)
    assert abs(p.sum() - 1) < 1e-12 and np.count_nonzero(p) == 5
    tok = s.sample(temperature=0)
    assert tok == int(np.argmax(want))
    states = s.states()  # includes the sampled token
    _, st = model.predict(np.array([[0, 1, 2, 0, tok]]), return_state=True)
    for mine, theirs in zip(states, st):
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Agreement with Model.predict
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(MODELS))
def test_greedy_generation_equals_step_by_step_predict(engine, kind):
    opts = dict(MODELS[kind])
    model = char_model(seed=7, **opts)
    prompt = [3, 1, 4, 1, 5]
    out = model.generate(prompt if not model.vocabulary else "dbebf", max_new_tokens=20, temperature=0,
                         backend=engine)
    tokens = out if not model.vocabulary else model.vocabulary.encode(out)
    seq = np.array([prompt + tokens[:-1]])
    predicted = predict_ids(model, seq)[0, len(prompt) - 1:]
    assert np.argmax(predicted, axis=-1).tolist() == tokens
    # sampled tokens too: the state after each fed token gives the logits predict gives
    sampled = model.generate(prompt if not model.vocabulary else "dbebf", max_new_tokens=15, temperature=1.0,
                             seed=4, backend=engine)
    sampled = sampled if not model.vocabulary else model.vocabulary.encode(sampled)
    s = model.session(backend=engine)
    s.feed(prompt + sampled[:-1])
    want = predict_ids(model, [prompt + sampled[:-1]])[0, -1]
    got = s.logits()
    if opts.get("dense_activation") == "softmax":
        got = np.exp(got - got.max())
        got /= got.sum()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_initial_state_primes_the_layers(engine):
    model = char_model(seed=9, cell="lstm", layers=2)
    rng = np.random.default_rng(0)
    states = [tuple((rng.standard_normal(s) * 0.5).astype(np.float32) for s in layer.state_shapes(2))
              for layer in model.recurrent_layers]
    out = model.generate(["ab", "ab"], max_new_tokens=10, temperature=0, initial_state=states, backend=engine)
    for b in range(2):
        st = [tuple(x[:, b:b + 1] for x in layer_state) for layer_state in states]
        ids = [0, 1] + model.vocabulary.encode(out[b])[:-1]
        pred = model.predict(np.array([ids]), initial_state=st)[0, 1:]
        assert model.vocabulary.decode(np.argmax(pred, -1)) == out[b]
    assert out != model.generate(["ab", "ab"], max_new_tokens=10, temperature=0, backend=engine)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(seed=[1, 2]), "seed"),
    (dict(stop=""), "stop"),
    (dict(backend="gpu"), "backend"),
    (dict(threads=0), "threads"),
    (dict(weights="int4"), "weights"),
])
def test_bad_arguments_raise_value_error(kw, match):
    model = char_model()
    with pytest.raises(ValueError, match=match):
        model.generate("ab", **kw)
    if not set(kw) & {"max_new_tokens", "seed", "stop", "backend", "threads"}:
        with pytest.raises(ValueError, match=match):
            model.session(**kw)


def test_bad_prompts_raise_value_error():
    model = char_model()
    for prompt, match in [("", "empty"), ([], "empty"), (["ab", ""], "empty"), ("abz", "vocabulary"),
                          ([1, 99], "outside"), ([1, -1], "outside"), ([[1], "a"], "mixes"),
                          ([1.5, 2.0], "mixes")]:
        with pytest.raises(ValueError, match=match):
            model.generate(prompt, max_new_tokens=3)
    with pytest.raises(ValueError, match="no vocabulary"):
        char_model(vocab=False).generate("ab")
    # the stream is validated when it is created, not when it is first read
    with pytest.raises(ValueError):
        model.generate("", stream=True)


def test_models_that_cannot_generate_raise_value_error():
    rng = np.random.default_rng(0)
    base = char_model()
    emb, rec, dense = base.layers[0], base.layers[1], base.layers[-1]
    bi = random_recurrent(rng, "lstm", input_size=6, hidden_size=8, bidirectional=True)
    last_only = random_recurrent(rng, "gru", input_size=6, hidden_size=8, return_sequences=False)
    cases = [
        fastrnn.Model([emb, rec]),  # no Dense
        fastrnn.Model([emb, bi, Dense(np.zeros((12, 16), np.float32))]),
        fastrnn.Model([emb, last_only, Dense(np.zeros((12, 8), np.float32))]),
        fastrnn.Model([emb, rec, Dense(np.zeros((12, 8), np.float32), activation="sigmoid")]),
        fastrnn.Model([emb, rec, Dense(np.zeros((20, 8), np.float32))]),  # 20 outputs > 12 rows
        fastrnn.Model([random_recurrent(rng, "lstm", input_size=5, hidden_size=8), dense]),  # not one-hot
    ]
    for model in cases:
        with pytest.raises(ValueError, match="generation needs"):
            model.generate([1, 2], max_new_tokens=2)


# ---------------------------------------------------------------------------------------------
# Unicode: a Hangul vocabulary of 2000 syllables
# ---------------------------------------------------------------------------------------------
HANGUL = [chr(0xAC00 + i) for i in range(2000)]


def hangul_model(seed=0):
    rng = np.random.default_rng(seed)
    V, E, H = len(HANGUL), 16, 32
    layers = [Embedding(rng.standard_normal((V, E)).astype(np.float32)),
              random_recurrent(rng, "gru", input_size=E, hidden_size=H, scale=0.4),
              Dense(rng.standard_normal((V, H)).astype(np.float32), np.zeros(V, np.float32))]
    return fastrnn.Model(layers, vocabulary=fastrnn.Vocabulary(HANGUL))


def test_hangul_vocabulary_generates_and_round_trips(engine, tmp_path):
    model = hangul_model()
    prompt = "가나다각"
    out = model.generate(prompt, max_new_tokens=40, top_k=50, seed=3, backend=engine)
    assert len(out) == 40 and all(ch in model.vocabulary.index for ch in out)
    assert model.vocabulary.decode(model.vocabulary.encode(out)) == out
    assert "".join(model.generate(prompt, max_new_tokens=40, top_k=50, seed=3, stream=True, backend=engine)) == out
    fastrnn.save(model, tmp_path / "hangul.safetensors")
    again = fastrnn.load(tmp_path / "hangul.safetensors")
    assert again.generate(prompt, max_new_tokens=40, top_k=50, seed=3, backend=engine) == out


# ---------------------------------------------------------------------------------------------
# The bundled model and the CLI
# ---------------------------------------------------------------------------------------------
def run_cli(*args, cwd=None, stdin=None):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", "generate", *map(str, args)], capture_output=True,
                          cwd=cwd, input=stdin, timeout=120, env=env, encoding="utf-8")


def test_bundled_model_is_small_and_generates():
    assert os.path.getsize(g.BUNDLED_MODEL) <= 5 * 1024 * 1024
    model = g.bundled_model()
    text = model.generate("def ", max_new_tokens=50, seed=1, temperature=0.8)
    assert len(text) == 50
    assert model.generate("import ", max_new_tokens=30, temperature=0, stop="\n").count("\n") == 0


def test_cli_bundled_model(tmp_path):
    res = run_cli("--prompt", "def ", "-n", "200", "--seed", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    want = g.bundled_model().generate("def ", max_new_tokens=200, temperature=0.8, seed=1)
    assert res.stdout == "def " + want + "\n"
    streamed = run_cli("--prompt", "def ", "-n", "200", "--seed", "1", "--stream", cwd=tmp_path)
    assert streamed.stdout == res.stdout


def test_cli_batch_writes_json_lines_in_order(tmp_path):
    prompts = ["def ", "class Foo", "import os", "가나"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    res = run_cli("--batch", "prompts.txt", "-n", "30", "--seed", "4", "--temperature", "0.5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [x["prompt"] for x in lines] == prompts
    model = g.bundled_model()
    for x in lines:
        assert x["text"] == model.generate(x["prompt"], max_new_tokens=30, temperature=0.5, seed=4)


def test_cli_hangul_prompt_with_hangul_model(tmp_path):
    fastrnn.save(hangul_model(), tmp_path / "h.safetensors")
    res = run_cli("--model", "h.safetensors", "--prompt", "가나다", "-n", "20", "--seed", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("가나다") and len(res.stdout.rstrip("\n")) == 23
    assert all(ch in HANGUL for ch in res.stdout.rstrip("\n"))
    bad = run_cli("--prompt", "x", "--temperature", "-1", cwd=tmp_path)
    assert bad.returncode == 2 and "temperature" in bad.stderr and "Traceback" not in bad.stderr
