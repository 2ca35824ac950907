"""Every compiled backend against the NumPy reference, over every cell, variant, direction,
lengths and initial-state combination, plus memory layouts, threads and a long sequence."""
import dataclasses
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.backends import get_backend
from conftest import COMPILED_BACKENDS, LONG_SEQUENCE_ATOL, assert_close
from helpers import random_recurrent, random_state

CELL_VARIANTS = [
    ("rnn", {}),
    ("rnn", dict(activations=("relu",))),
    ("lstm", {}),
    ("lstm", dict(proj_size=3)),
    ("lstm", dict(peephole=True)),
    ("lstm", dict(input_forget=True, clip=0.7)),
    ("gru", {}),
    ("gru", dict(linear_before_reset=False)),
    ("gru", dict(clip=0.5)),
]


def run_both(backend, layer, x, lengths=None, state=None):
    want = reference.recurrent(layer, x, lengths, state)
    got = get_backend(backend).recurrent(layer, x, lengths, state)
    return got, want


def check(got, want, atol=None):
    kw = {} if atol is None else dict(atol=atol)
    assert_close(got[0], want[0], what="output", **kw)
    gs, ws = got[1], want[1]
    if isinstance(ws, tuple):
        assert_close(gs[0], ws[0], what="h", **kw)
        assert_close(gs[1], ws[1], what="c", **kw)
    else:
        assert_close(gs, ws, what="h", **kw)


@pytest.mark.parametrize("cell,opts", CELL_VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional", "go_backwards"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_backend_matches_reference(compiled_backend, cell, opts, direction, return_sequences, with_lengths,
                                   with_state):
    rng = np.random.default_rng(7)
    opts = dict(opts)
    layer = random_recurrent(rng, cell, input_size=4, hidden_size=9, bidirectional=direction == "bidirectional",
                             reverse=direction == "reverse", go_backwards=direction == "go_backwards",
                             return_sequences=return_sequences, **opts)
    B, T = 5, 6
    x = rng.standard_normal((B, T, 4)).astype(np.float32)
    lengths = np.array([6, 0, 3, 1, 5], np.int64) if with_lengths else None
    state = random_state(rng, layer, B) if with_state else None
    check(*run_both(compiled_backend, layer, x, lengths, state))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_merge_modes(compiled_backend, merge_mode, cell, return_sequences):
    rng = np.random.default_rng(3)
    layer = random_recurrent(rng, cell, bidirectional=True, merge_mode=merge_mode, return_sequences=return_sequences)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    check(*run_both(compiled_backend, layer, x, np.array([4, 2, 3])))


def test_masked_output_hold(compiled_backend):
    rng = np.random.default_rng(4)
    layer = random_recurrent(rng, "gru", masked_output="hold")
    x = rng.standard_normal((3, 5, 5)).astype(np.float32)
    lengths = np.array([5, 2, 0])
    got, want = run_both(compiled_backend, layer, x, lengths)
    check(got, want)
    assert np.array_equal(got[0][1, 2:], np.repeat(got[0][1, 1:2], 3, axis=0))  # held, not zero
    assert not np.any(got[0][2])


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", ("affine", 0.5, 0.1), ("hard_sigmoid", 0.2, 0.5),
                                 ("leaky_relu", 0.1, 0), ("thresholded_relu", 0.3, 0), ("scaled_tanh", 1.5, 0.7),
                                 ("elu", 0.9, 0), "softsign", "softplus", "exponential", "selu", "swish"],
                         ids=str)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_activation(compiled_backend, act, cell):
    rng = np.random.default_rng(5)
    n = {"rnn": 1, "lstm": 3, "gru": 2}[cell]
    for slot in range(n):
        acts = list(fastrnn.layers.DEFAULT_ACTIVATIONS[cell])
        acts[slot] = act
        layer = random_recurrent(rng, cell, activations=tuple(acts), scale=0.3)
        x = rng.standard_normal((2, 4, 5)).astype(np.float32)
        check(*run_both(compiled_backend, layer, x))


@pytest.mark.parametrize("hidden_size", [1, 3, 8, 31, 33, 64, 100])
@pytest.mark.parametrize("batch", [1, 2, 5, 17])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sizes_cross_simd_blocks(compiled_backend, hidden_size, batch, cell):
    rng = np.random.default_rng(hidden_size * 100 + batch)
    layer = random_recurrent(rng, cell, input_size=3, hidden_size=hidden_size, scale=0.3)
    x = rng.standard_normal((batch, 3, 3)).astype(np.float32)
    check(*run_both(compiled_backend, layer, x))


def test_non_contiguous_and_read_only_inputs(compiled_backend, rng):
    layer = random_recurrent(rng, "lstm", bidirectional=True)
    base = rng.standard_normal((6, 5, 10)).astype(np.float64)
    x = base[::2, :, ::2]  # non-contiguous float64 view
    model = fastrnn.Model([layer])
    ro = np.ascontiguousarray(x, np.float32)
    ro.flags.writeable = False
    want = model.predict(np.ascontiguousarray(x, np.float32), backend="numpy")
    assert_close(model.predict(x, backend=compiled_backend), want)
    assert_close(model.predict(ro, backend=compiled_backend), want)
    assert np.array_equal(x, base[::2, :, ::2])  # input untouched


def test_memory_mapped_weights(compiled_backend, tmp_path, rng):
    model = fastrnn.Model([random_recurrent(rng, "gru", bidirectional=True)])
    path = tmp_path / "m.safetensors"
    fastrnn.save(model, path)
    loaded = fastrnn.load(path, mmap=True)
    w = loaded.layers[0].directions[0].w_hh
    assert not w.flags.writeable
    assert isinstance(w.base, np.memmap) or isinstance(getattr(w.base, "base", None), np.memmap)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    assert_close(loaded.predict(x, backend=compiled_backend), model.predict(x, backend="numpy"))


def test_initial_state_not_modified(compiled_backend, rng):
    layer = random_recurrent(rng, "lstm")
    state = random_state(rng, layer, 2)
    copies = tuple(s.copy() for s in state)
    get_backend(compiled_backend).recurrent(layer, rng.standard_normal((2, 3, 5)).astype(np.float32), None, state)
    for s, c in zip(state, copies):
        assert np.array_equal(s, c)


def test_threads_give_identical_results(compiled_backend, rng):
    layer = random_recurrent(rng, "lstm", input_size=16, hidden_size=64, bidirectional=True)
    model = fastrnn.Model([layer])
    xs = [rng.standard_normal((4, 50, 16)).astype(np.float32) for _ in range(6)]
    serial = [model.predict(x, backend=compiled_backend) for x in xs]
    results = [None] * len(xs)

    def work(i):
        results[i] = model.predict(xs[i], backend=compiled_backend)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_long_sequence(compiled_backend, cell):
    rng = np.random.default_rng(11)
    layer = random_recurrent(rng, cell, input_size=8, hidden_size=32, scale=0.25)
    x = rng.standard_normal((2, 5000, 8)).astype(np.float32)
    check(*run_both(compiled_backend, layer, x), atol=LONG_SEQUENCE_ATOL)


def test_empty_batch_and_zero_steps(backend, rng):
    model = fastrnn.Model([random_recurrent(rng, "lstm", bidirectional=True)])
    y = model.predict(np.zeros((0, 4, 5), np.float32), backend=backend)
    assert y.shape == (0, 4, 14)
    y, st = model.predict(np.zeros((2, 0, 5), np.float32), return_state=True, backend=backend)
    assert y.shape == (2, 0, 14)
    assert not np.any(st[0][0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_thread_count_does_not_change_results(compiled_backend, cell, bidirectional):
    rng = np.random.default_rng(21)
    model = fastrnn.Model([random_recurrent(rng, cell, input_size=6, hidden_size=40, bidirectional=bidirectional)])
    x = rng.standard_normal((37, 20, 6)).astype(np.float32)
    lengths = rng.integers(0, 21, 37)
    one = model.predict(x, lengths=lengths, threads=1, backend=compiled_backend, return_state=True)
    for threads in (2, 3, 8):
        many = model.predict(x, lengths=lengths, threads=threads, backend=compiled_backend, return_state=True)
        assert np.array_equal(one[0], many[0]), threads
        for a, b in zip(np.atleast_1d(one[1][0]), np.atleast_1d(many[1][0])):
            assert np.array_equal(a, b)


def test_threads_argument_validated(rng):
    model = fastrnn.Model([random_recurrent(rng, "gru")])
    x = np.zeros((1, 2, 5), np.float32)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            model.predict(x, threads=bad)
    with pytest.raises(ValueError, match="threads"):
        fastrnn.set_num_threads(0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_folded_embedding_equals_unfolded(compiled_backend, cell, bidirectional, monkeypatch):
    """Token ids through an Embedding: the kernel reads the folded table W_ih E[v] + b in place
    (tokens=ids). It must give the same bits as embedding the ids and projecting every step,
    with variable lengths and every row's ids different, and match the NumPy reference."""
    from fastrnn import backends
    rng = np.random.default_rng(5)
    emb = fastrnn.Embedding(rng.standard_normal((50, 6)).astype(np.float32))
    layer = random_recurrent(rng, cell, input_size=6, hidden_size=24, bidirectional=bidirectional)
    model = fastrnn.Model([emb, layer])
    ids = rng.integers(0, 50, (9, 13))
    lengths = rng.integers(0, 14, 9)
    assert get_backend(compiled_backend).can_fold_embedding(emb, layer)
    folded = model.predict(ids, lengths=lengths, backend=compiled_backend, return_state=True)
    monkeypatch.setattr(backends, "MAX_FOLDED_TABLE_BYTES", 0)  # no table: x = E[ids], then x @ W_ih.T
    assert not get_backend(compiled_backend).can_fold_embedding(emb, layer)
    unfolded = model.predict(ids, lengths=lengths, backend=compiled_backend, return_state=True)
    assert np.array_equal(folded[0], unfolded[0])
    for a, b in zip(np.atleast_1d(folded[1][0]), np.atleast_1d(unfolded[1][0])):
        assert np.array_equal(a, b)
    want = model.predict(ids, lengths=lengths, backend="numpy")
    assert_close(folded[0], want, what="output")


@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("lstm", dict(peephole=True)), ("gru", {}),
                                       ("gru", dict(linear_before_reset=False))], ids=str)
@pytest.mark.parametrize("hidden_size", [7, 16, 40])
def test_fused_pointwise_equals_generic(compiled_backend, cell, opts, hidden_size):
    """The usual cell (sigmoid/tanh, no clip) runs its element-wise step in one fused SIMD pass
    (rnn_lstm_pointwise / rnn_gru_pointwise); any other cell one operation at a time. A clip of
    1e30 changes no value but takes the generic path: the bits must be the same."""
    rng = np.random.default_rng(8)
    layer = random_recurrent(rng, cell, input_size=5, hidden_size=hidden_size, **opts)
    clipped = dataclasses.replace(layer, clip=1e30)
    x = rng.standard_normal((6, 9, 5)).astype(np.float32) * 3
    lengths = rng.integers(0, 10, 6)
    state = random_state(rng, layer, 6)
    fused = get_backend(compiled_backend).recurrent(layer, x, lengths, state)
    generic = get_backend(compiled_backend).recurrent(clipped, x, lengths, state)
    assert np.array_equal(fused[0], generic[0])
    for a, b in zip(np.atleast_1d(fused[1]), np.atleast_1d(generic[1])):
        assert np.array_equal(a, b)
    check(fused, reference.recurrent(layer, x, lengths, state))
