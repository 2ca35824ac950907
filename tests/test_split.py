"""Batch 1 with the hidden units split across threads (kernels/rnn_split.c): the same bits as
one thread, for every cell and option, and the cases that must fall back to the plain kernels."""
import numpy as np
import pytest

import fastrnn
from fastrnn.backends import MIN_SPLIT_HIDDEN, get_backend
from conftest import KERNEL_ATOL, KERNEL_RTOL, require
from helpers import random_recurrent, random_state

require("fastrnn.kernels._cykernels")  # the C kernels (checked_kernels.sh also runs without them)

CASES = [
    ("rnn", {}), ("rnn", {"clip": 0.7, "activations": ("relu",)}), ("rnn", {"reverse": True}),
    ("lstm", {}), ("lstm", {"peephole": True, "clip": 0.9}), ("lstm", {"input_forget": True, "reverse": True}),
    ("lstm", {"peephole": True, "input_forget": True}),
    ("gru", {}), ("gru", {"linear_before_reset": False}), ("gru", {"linear_before_reset": False, "reverse": True}),
]


def states_equal(a, b):
    for x, y in zip(a, b):
        for u, v in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("hidden", [MIN_SPLIT_HIDDEN, 176])
def test_split_equals_one_thread_bitwise(cell, options, hidden, rng):
    assert "split_sequence" in dir(get_backend("cython").kernels)
    layer = random_recurrent(rng, cell, input_size=24, hidden_size=hidden, scale=0.15, **options)
    model = fastrnn.Model([layer])
    x = rng.standard_normal((1, 40, 24)).astype(np.float32)
    state = [random_state(rng, layer, 1)]
    for lengths in (None, np.array([23]), np.array([0])):
        want, st1 = model.predict(x, lengths=lengths, initial_state=state, threads=1, return_state=True,
                                  backend="cython")
        for threads in (2, 3, 8):
            got, st = model.predict(x, lengths=lengths, initial_state=state, threads=threads, return_state=True,
                                    backend="cython")
            np.testing.assert_array_equal(got, want, err_msg=f"threads={threads} lengths={lengths}")
            states_equal(st, st1)


def test_split_token_model_and_numpy_reference(rng):
    """Embedding folded into the first layer, two stacked layers, a Dense: split at batch 1,
    close to the reference and identical to one thread."""
    emb = fastrnn.layers.Embedding(rng.standard_normal((50, 16)).astype(np.float32))
    l1 = random_recurrent(rng, "lstm", input_size=16, hidden_size=128, scale=0.2)
    l2 = random_recurrent(rng, "gru", input_size=128, hidden_size=144, scale=0.2)
    dense = fastrnn.layers.Dense(rng.standard_normal((50, 144)).astype(np.float32) * 0.1)
    model = fastrnn.Model([emb, l1, l2, dense])
    ids = rng.integers(0, 50, (1, 60))
    one = model.predict(ids, threads=1)
    np.testing.assert_array_equal(model.predict(ids, threads=2), one)
    np.testing.assert_allclose(model.predict(ids, backend="numpy"), one, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("why", ["bidirectional", "proj", "small", "odd", "batch"])
def test_fallbacks_still_equal(why, rng):
    kw = dict(cell="lstm", input_size=8, hidden_size=128)
    if why == "bidirectional":
        kw["bidirectional"] = True
    elif why == "proj":
        kw["proj_size"] = 40
    elif why == "small":
        kw["hidden_size"] = 64
    elif why == "odd":
        kw["hidden_size"] = 130
    layer = random_recurrent(rng, scale=0.2, **kw)
    backend = get_backend("cython")
    B = 3 if why == "batch" else 1
    assert backend._split_parts(layer, B, 10, 2) == 1
    model = fastrnn.Model([layer])
    x = rng.standard_normal((B, 10, 8)).astype(np.float32)
    state = [random_state(rng, layer, B)]
    got = model.predict(x, initial_state=state, threads=2, backend="cython")
    # the fallback is the plain (not split) kernel: it must still be right, not only self-consistent
    want = model.predict(x, initial_state=state, backend="numpy")
    np.testing.assert_allclose(got, want, atol=KERNEL_ATOL, rtol=KERNEL_RTOL)
    np.testing.assert_array_equal(got, model.predict(x, initial_state=state, threads=1, backend="cython"))
