"""Bad inputs to Model.predict: a clear ValueError / IndexError naming the argument, or a correct
result. Never a crash, a wrong-but-plausible answer, or a modified input.

Decisions tested here:
- NaN / Inf features are not an error: they propagate as the math says (no extra pass over every
  input to look for them). A NaN at step t of row b makes row b's outputs NaN from step t on (for
  a forward layer); other rows are unaffected, and every backend gives what the NumPy reference
  gives (NaN where it gives NaN). Features in padded steps (t >= lengths[b]) are never read into
  the state, so NaN or Inf there changes nothing: padding may hold garbage.
- lengths may be any integer dtype, or a real dtype holding whole numbers (``[3.0, 2.0]`` means
  ``[3, 2]``); fractions, NaN, Inf, booleans, strings and None are refused.
- Token ids must have an integer dtype (floats are refused even when whole: a float array is far
  more likely to be features given to a token model). Every id is checked, padding included.
- An LSTM state is a pair (h, c) given as a tuple or list; a single stacked array is refused
  rather than split along its first axis.
- Empty batches (B = 0) and empty sequences (T = 0) return correctly shaped, empty or initial
  results.
"""
import numpy as np
import pytest

import fastrnn
from conftest import BACKENDS, assert_close
from helpers import random_recurrent, random_state

B, T, F = 3, 6, 5


def feature_model(seed=0, cell="lstm", bidirectional=True):
    rng = np.random.default_rng(seed)
    first = random_recurrent(rng, cell, input_size=F, hidden_size=4, bidirectional=bidirectional, name="first")
    second = random_recurrent(rng, "gru", input_size=first.output_size, hidden_size=3, name="second")
    return fastrnn.Model([first, second])


def token_model(seed=0):
    rng = np.random.default_rng(seed)
    emb = fastrnn.Embedding(rng.standard_normal((11, 4)).astype(np.float32), name="emb")
    gru = random_recurrent(rng, "gru", input_size=4, hidden_size=5, return_sequences=False, name="gru")
    head = fastrnn.Dense(rng.standard_normal((2, 5)).astype(np.float32), None, "softmax", name="head")
    return fastrnn.Model([emb, gru, head])


def features(seed=1, shape=(B, T, F)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ids(seed=2, shape=(B, T)):
    return np.random.default_rng(seed).integers(0, 11, shape)


def raises(exc, *words):
    """pytest.raises(exc) whose message contains every word (case-insensitive)."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = self.ctx.__exit__(*a)
            message = str(self.info.value).lower()
            for word in words:
                assert word.lower() in message, f"{word!r} not in: {self.info.value}"
            return handled
    return Check()


# -- x: dtype, rank, size ----------------------------------------------------------------------
@pytest.mark.parametrize("x,words", [
    (np.zeros((B, T), np.float32), ["x", "3-D", "(batch, time, features)"]),
    (np.zeros(F, np.float32), ["x", "3-D"]),
    (np.zeros((1, B, T, F), np.float32), ["x", "3-D"]),
    (np.zeros((B, T, F + 1), np.float32), ["x", "6 features", "expects 5"]),
    (np.zeros((B, T, F), np.complex64), ["x", "dtype"]),
    (np.zeros((B, T, F), bool), ["x", "dtype"]),
    (np.full((B, T, F), "1.0"), ["x", "dtype"]),
    (np.zeros((B, T, F), object), ["x", "dtype"]),
    ([[[0.0] * F] * T, [[0.0] * F] * (T - 1)], ["x"]),  # ragged
    (None, ["x"]),
], ids=["2-D", "1-D", "4-D", "features", "complex", "bool", "str", "object", "ragged", "None"])
def test_bad_features(x, words):
    with raises(ValueError, *words):
        feature_model().predict(x)


@pytest.mark.parametrize("x,words", [
    (np.array([1, 2, 3]), ["x", "2-D", "[ids]"]),
    (np.zeros((B, T, 1), np.int64), ["x", "2-D"]),
    (np.zeros((B, T), np.float32), ["x", "integer"]),
    (np.ones((B, T), np.float64), ["x", "integer"]),
    (np.ones((B, T), bool), ["x", "integer"]),
    (np.full((B, T), "1"), ["x", "integer"]),
    ([[1, 2], [3]], ["x"]),
], ids=["1-D", "3-D", "float32", "whole floats", "bool", "str", "ragged"])
def test_bad_token_ids(x, words):
    with raises(ValueError, *words):
        token_model().predict(x)


@pytest.mark.parametrize("dtype,bad", [(np.int64, -1), (np.int64, 11), (np.int64, 2**40), (np.int64, -(2**62)),
                                       (np.int32, -1), (np.int32, 11), (np.int16, -1), (np.int8, 11)])
def test_token_ids_out_of_range(dtype, bad):
    x = ids().astype(dtype)
    x[1, T - 1] = bad  # in the last step: every id is checked, not just the first
    with raises(IndexError, "x", f"token id {bad}", "0..10"):
        token_model().predict(x)


def test_token_ids_unsigned_beyond_int64():
    x = ids().astype(np.uint64)
    x[0, 0] = np.iinfo(np.uint64).max  # would wrap to -1 as int64
    with raises(IndexError, "x", str(np.iinfo(np.uint64).max)):
        token_model().predict(x)


def test_out_of_range_id_in_padding_is_still_refused():
    x = ids()
    x[0, T - 1] = 99
    with raises(IndexError, "99"):
        token_model().predict(x, lengths=[T - 2, T, T])


# -- lengths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths,words", [
    ([T + 1, 1, 1], ["lengths", f"0..{T}", str(T + 1)]),
    ([2, -1, 1], ["lengths", "-1"]),
    ([2, 2], ["lengths", f"({B},)", "one per batch row"]),
    ([2, 2, 2, 2], ["lengths", f"({B},)"]),
    ([[2, 2, 2]], ["lengths", f"({B},)"]),
    (3, ["lengths", f"({B},)"]),
    ([2.5, 1, 1], ["lengths", "whole"]),
    ([np.nan, 1, 1], ["lengths", "whole"]),
    ([np.inf, 1, 1], ["lengths", "whole"]),
    ([True, False, True], ["lengths", "dtype"]),
    (["2", "1", "1"], ["lengths", "dtype"]),
    ([2, None, 1], ["lengths", "dtype"]),
    (np.array([2**63 - 1, 1, 1], np.uint64) + np.uint64(5), ["lengths"]),
], ids=["too long", "negative", "too few", "too many", "2-D", "scalar", "fraction", "nan", "inf", "bool", "str",
        "None", "uint64"])
@pytest.mark.parametrize("make", [feature_model, token_model], ids=["features", "tokens"])
def test_bad_lengths(make, lengths, words):
    model = make()
    x = features() if make is feature_model else ids()
    with raises(ValueError, *words):
        model.predict(x, lengths=lengths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_float_lengths_are_integers(backend):
    model = feature_model()
    x = features()
    want = model.predict(x, lengths=np.array([6, 0, 3]), backend=backend)
    assert_close(model.predict(x, lengths=np.array([6.0, 0.0, 3.0]), backend=backend), want)
    assert_close(model.predict(x, lengths=np.array([6, 0, 3], np.uint8), backend=backend), want)


# -- empty batches and sequences ----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    y, states = feature_model().predict(np.zeros((0, T, F), np.float32), return_state=True, backend=backend)
    assert y.shape == (0, T, 3)
    assert states[0][0].shape == (2, 0, 4) and states[1].shape == (1, 0, 3)
    assert feature_model().predict(np.zeros((0, T, F)), lengths=np.zeros(0, np.int64), backend=backend).shape == \
        (0, T, 3)
    assert token_model().predict(np.zeros((0, T), np.int64), backend=backend).shape == (0, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequences_return_the_initial_state(backend):
    model = feature_model()
    rng = np.random.default_rng(3)
    init = [random_state(rng, layer, B) for layer in model.recurrent_layers]
    y, states = model.predict(np.zeros((B, 0, F), np.float32), initial_state=init, return_state=True,
                              backend=backend)
    assert y.shape == (B, 0, 3)
    assert np.array_equal(states[0][0], init[0][0]) and np.array_equal(states[0][1], init[0][1])
    assert np.array_equal(states[1], init[1])
    # the last-state model returns its (zero) initial state through the head
    probs = token_model().predict(np.zeros((B, 0), np.int64), backend=backend)
    assert probs.shape == (B, 2) and np.all(np.isfinite(probs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_lengths_rows(backend):
    model = feature_model(bidirectional=False)
    y, states = model.predict(features(), lengths=[0, 0, 0], return_state=True, backend=backend)
    assert not np.any(y) and not np.any(states[0][0]) and not np.any(states[1])


# -- NaN and Inf features: propagate, per row; ignored in padding --------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_feature_poisons_only_its_row_from_its_step(backend):
    model = feature_model(bidirectional=False)
    x = features()
    x[0, 2, 1] = np.nan
    y = model.predict(x, backend=backend)
    assert np.all(np.isnan(y[0, 2:])), "NaN swallowed: a later output of the poisoned row is a number"
    assert np.all(np.isfinite(y[0, :2])) and np.all(np.isfinite(y[1:]))
    assert_close(y[1:], model.predict(x[1:], backend=backend))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e30])
def test_non_finite_features_match_the_reference(backend, value):
    model = feature_model()
    x = features()
    x[1, 3, :] = value
    x[2, 0, 0] = value
    got = model.predict(x, backend=backend)
    want = model.predict(x, backend="numpy")
    assert np.array_equal(np.isnan(got), np.isnan(want)), "NaN in different places than the reference"
    assert_close(got, want)  # equal_nan
    assert np.all(np.isfinite(got[0]))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_in_padding_is_ignored(backend):
    model = feature_model()  # bidirectional: the backward direction starts at each row's last valid step
    x = features()
    lengths = np.array([4, 6, 0])
    clean = x.copy()
    for b, n in enumerate(lengths):
        clean[b, n:] = 0
    x[0, 4:] = np.nan
    x[2, :] = np.inf
    got, states = model.predict(x, lengths=lengths, return_state=True, backend=backend)
    want, want_states = model.predict(clean, lengths=lengths, return_state=True, backend=backend)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(states[1]))
    assert_close(got, want)
    assert_close(states[1], want_states[1])


# -- layouts: non-contiguous, read-only, other dtypes; inputs never modified ----------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_and_read_only_inputs_give_the_same_result(backend):
    model = feature_model()
    rng = np.random.default_rng(4)
    init = [random_state(rng, layer, B) for layer in model.recurrent_layers]
    x = features()
    lengths = np.array([6, 2, 5])
    want, want_states = model.predict(x, lengths=lengths, initial_state=init, return_state=True, backend=backend)

    big = np.zeros((2 * B, T, 3 * F), np.float64)
    big[::2, :, ::3] = x
    read_only = x.copy()
    read_only.flags.writeable = False
    ro_lengths = lengths.copy()
    ro_lengths.flags.writeable = False
    h0, c0 = init[0]
    c0_reversed = np.ascontiguousarray(c0[:, ::-1])
    ro_init = [(np.asfortranarray(h0), c0_reversed[:, ::-1]), init[1].copy()]  # Fortran / negative strides
    for a in (*ro_init[0], ro_init[1]):
        a.flags.writeable = False
    for variant in (big[::2, :, ::3], read_only, np.asfortranarray(x), x.astype(">f4"), x.astype(np.float16)):
        saved = np.array(variant, copy=True)
        got, states = model.predict(variant, lengths=ro_lengths, initial_state=ro_init, return_state=True,
                                    backend=backend)
        tol = dict(atol=2e-3, rtol=2e-3) if variant.dtype == np.float16 else {}
        assert_close(got, want, **tol)
        assert_close(states[1], want_states[1], **tol)
        assert np.array_equal(np.asarray(variant), saved), "predict modified its input"


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_layouts(backend):
    model = token_model()
    x = ids()
    want = model.predict(x, backend=backend)
    strided = np.zeros((B, 2 * T), np.int32)
    strided[:, ::2] = x
    read_only = x.astype(np.uint8)
    read_only.flags.writeable = False
    for variant in (strided[:, ::2], read_only, np.asfortranarray(x), x.tolist(), x.astype(">i8")):
        assert_close(model.predict(variant, backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_arrays_are_never_modified(backend):
    model = feature_model()
    rng = np.random.default_rng(5)
    init = [random_state(rng, layer, B) for layer in model.recurrent_layers]
    copies = [tuple(a.copy() for a in s) if isinstance(s, tuple) else s.copy() for s in init]
    x = features()
    x_copy = x.copy()
    model.predict(x, initial_state=init, backend=backend)
    assert np.array_equal(x, x_copy)
    assert all(np.array_equal(a, b) for a, b in zip(init[0], copies[0]))
    assert np.array_equal(init[1], copies[1])


# -- initial_state: counts and shapes ------------------------------------------------------------
def good_state(model, batch=B):
    rng = np.random.default_rng(6)
    return [random_state(rng, layer, batch) for layer in model.recurrent_layers]


@pytest.mark.parametrize("edit,words", [
    (lambda s: s[:1], ["initial_state", "one entry per recurrent layer (2)", "got 1"]),
    (lambda s: s + [None], ["initial_state", "(2)", "got 3"]),
    (lambda s: [s[0], s[1][:, :2]], ["initial_state[1]", "second", "(1, 3, 3)", "(1, 2, 3)"]),
    (lambda s: [s[0], s[1][:, :, :2]], ["initial_state[1]", "(1, 3, 3)"]),
    (lambda s: [(s[0][0][:1], s[0][1]), s[1]], ["initial_state[0]", "h", "(2, 3, 4)", "(1, 3, 4)"]),
    (lambda s: [(s[0][0], s[0][1][..., :3]), s[1]], ["initial_state[0]", "c", "(2, 3, 4)"]),
    (lambda s: [s[0][0], s[1]], ["initial_state[0]", "(h, c)"]),
    (lambda s: [np.stack(s[0]), s[1]], ["initial_state[0]", "(h, c)"]),
    (lambda s: [s[0] + (s[0][0],), s[1]], ["initial_state[0]", "(h, c)"]),
    (lambda s: [s[0], np.full((1, B, 3), "a")], ["initial_state[1]", "number"]),
    (lambda s: [s[0], "h"], ["initial_state[1]"]),
    (lambda s: 5, ["initial_state"]),
    (lambda s: {"first": s[0]}, ["initial_state", "list"]),
], ids=["too few", "too many", "batch", "size", "directions", "c size", "lstm single array", "lstm stacked",
        "lstm triple", "strings", "text", "int", "dict"])
def test_bad_initial_state(edit, words):
    model = feature_model()
    with raises(ValueError, *words):
        model.predict(features(), initial_state=edit(good_state(model)))


def test_initial_state_of_a_single_layer_model():
    """One recurrent layer: its state may be given bare (not wrapped in a list)."""
    rng = np.random.default_rng(7)
    gru = fastrnn.Model([random_recurrent(rng, "gru", input_size=F, hidden_size=3)])
    h = random_state(rng, gru.layers[0], B)
    assert_close(gru.predict(features(), initial_state=h), gru.predict(features(), initial_state=[h]))
    assert_close(gru.predict(features(), initial_state=h[0]), gru.predict(features(), initial_state=[h]))  # (B, H)
    lstm = fastrnn.Model([random_recurrent(rng, "lstm", input_size=F, hidden_size=3)])
    hc = random_state(rng, lstm.layers[0], B)
    assert_close(lstm.predict(features(), initial_state=hc), lstm.predict(features(), initial_state=[hc]))
    with raises(ValueError, "initial_state", "(h, c)"):
        lstm.predict(features(), initial_state=np.stack(hc))


def test_bad_backend_name():
    with raises(ValueError, "backend", "cuda"):
        feature_model().predict(features(), backend="cuda")
