"""Batch-1 int8 with the hidden units split across threads (kernels/int8_split.c, driven by
CompiledBackend._run_split): the same bits as one thread at every int8 instruction set, for
every cell and option, close to the int8 NumPy spec, the split really running, the cases that
stay on one thread, and a split stopped early being finished on one thread."""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close, require
from fastrnn import pool
from fastrnn.backends import get_backend
from fastrnn.layers import Dense, Embedding
from fastrnn.quantize import MIN_SPLIT_HIDDEN_INT8, int8_backend
from helpers import random_recurrent, random_state
from test_int8 import INT8_SPEC_ATOL

k = require("fastrnn.kernels._cyint8")  # a skip outside CI, a failure in CI

BEST = k.select_simd(None)
LEVELS = k.SIMD_LEVELS[: k.SIMD_LEVELS.index(BEST) + 1]  # batch 1 uses the gemv paths (amx: VNNI's)

CASES = [
    ("rnn", {}), ("rnn", {"clip": 0.7, "activations": ("relu",)}), ("rnn", {"go_backwards": True}),
    ("lstm", {}), ("lstm", {"peephole": True, "clip": 0.9}), ("lstm", {"input_forget": True, "reverse": True}),
    ("lstm", {"peephole": True, "go_backwards": True}),
    ("gru", {}), ("gru", {"linear_before_reset": False}), ("gru", {"linear_before_reset": False, "reverse": True}),
    ("gru", {"go_backwards": True}),
]
IDS = [f"{c}-" + "-".join(f"{a}={v}" for a, v in o.items()) for c, o in CASES]


def engine():
    return int8_backend(get_backend("cython"))


def flat(state):
    out = []
    for s in state:
        out.extend(s if isinstance(s, tuple) else (s,))
    return out


def run(q, x, lengths, state, threads):
    y, st = q.predict(x, lengths=lengths, initial_state=state, threads=threads, return_state=True, backend="cython")
    return [y] + flat(st)


@pytest.fixture(autouse=True)
def fresh_verdict():
    """Each test starts with the pool willing to split (an earlier back-off would hide it)."""
    pool.reset_contention()
    yield
    k.select_simd(None)


@pytest.mark.parametrize("cell,options", CASES, ids=IDS)
def test_split_equals_one_thread_bitwise_at_every_level(cell, options, rng, monkeypatch):
    """H = 272: 17 panels, 8 + 9 at two parts, 5 + 6 + 6 at three."""
    kernels = engine().kernels
    real, parts = kernels.split_sequence, set()

    def counting(ctx, part, *args):
        parts.add(part)
        return real(ctx, part, *args)
    monkeypatch.setattr(kernels, "split_sequence", counting)
    layer = random_recurrent(rng, cell, input_size=24, hidden_size=272, scale=0.15, **options)
    model = fastrnn.Model([layer])
    q = model.quantize("int8")
    assert engine()._split_parts(layer, 1, 30, 2) == 2
    x = rng.standard_normal((1, 30, 24)).astype(np.float32)
    state = [random_state(rng, layer, 1)]
    first = None
    for level in LEVELS:
        assert k.select_simd(level) in (level, "avx2")  # avxvnni falls back where absent
        for lengths in (None, np.array([19]), np.array([1]), np.array([0])):
            want = run(q, x, lengths, state, 1)
            for threads in (2, 3):
                got = run(q, x, lengths, state, threads)
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b, err_msg=f"{level} threads={threads} lengths={lengths}")
            if lengths is None:  # every level gives the same bits (int8_core.h)
                if first is None:
                    first = want
                for a, b in zip(want, first):
                    np.testing.assert_array_equal(a, b, err_msg=f"{level} against {LEVELS[0]}")
    assert parts == {0, 1, 2}, "the split kernel did not run with two and three parts"
    # and the split result is the int8 spec's (the NumPy reference of fastrnn/quantize.py)
    lengths = np.array([23])
    got = run(q, x, lengths, state, 2)
    ref = q.predict(x, lengths=lengths, initial_state=state, return_state=True, backend="numpy")
    for a, b in zip(got, [ref[0]] + flat(ref[1])):
        assert_close(a, b, atol=INT8_SPEC_ATOL, rtol=1e-3, what=f"{cell} {options}")
    assert np.abs(got[0] - model.predict(x, lengths=lengths, initial_state=state)).max() > 1e-5  # really int8


def test_split_actually_runs(rng, monkeypatch):
    """A batch-1 int8 call at threads=2 runs as one gang of two parts of the int8 split kernel
    (whether the machine lets the parts finish together is the barrier's business: on a loaded
    machine they may stop early, but both ran), and the result is still one thread's."""
    layer = random_recurrent(rng, "lstm", input_size=16, hidden_size=MIN_SPLIT_HIDDEN_INT8, scale=0.15)
    q = fastrnn.Model([layer]).quantize("int8")
    x = rng.standard_normal((1, 25, 16)).astype(np.float32)
    want = q.predict(x, threads=1, backend="cython")
    kernels = engine().kernels
    real = kernels.split_sequence
    parts = []

    def counting(ctx, part, *args):
        parts.append(part)
        return real(ctx, part, *args)
    monkeypatch.setattr(kernels, "split_sequence", counting)
    gangs = pool.split_verdict().gangs
    got = q.predict(x, threads=2, backend="cython")
    np.testing.assert_array_equal(got, want)
    assert sorted(parts) == [0, 1], "the int8 split kernel did not run as two parts"
    assert pool.split_verdict().gangs == gangs + 1, "the call did not run as one split gang"


@pytest.mark.parametrize("kind", ["int8", "bfloat16"])
def test_split_token_model_stacked_layers(kind, rng):
    """Embedding folded into the first layer (its table gathered for the split), two stacked
    layers, a Dense: identical to one thread, close to the int8 spec. The bfloat16 engine splits too
    (the same kernel, its per-output sum is one fixed chain)."""
    emb = Embedding(rng.standard_normal((50, 16)).astype(np.float32))
    l1 = random_recurrent(rng, "lstm", input_size=16, hidden_size=256, scale=0.15)
    l2 = random_recurrent(rng, "gru", input_size=256, hidden_size=288, scale=0.1, linear_before_reset=False)
    dense = Dense(rng.standard_normal((50, 288)).astype(np.float32) * 0.1)
    q = fastrnn.Model([emb, l1, l2, dense]).quantize(kind)
    ids = rng.integers(0, 50, (1, 40))
    one = q.predict(ids, threads=1, backend="cython")
    np.testing.assert_array_equal(q.predict(ids, threads=2, backend="cython"), one)
    if kind == "int8":  # (bfloat16 rounds each h to 8 bits: a last-bit tanh difference can move it a
        # whole bfloat16 step; test_int8.py checks that engine against its spec on small models)
        assert_close(q.predict(ids, backend="numpy"), one, atol=INT8_SPEC_ATOL, rtol=1e-3, what=kind)


@pytest.mark.parametrize("why", ["bidirectional", "proj", "small", "odd", "batch"])
def test_cases_that_stay_on_one_thread(why, rng):
    kw = dict(cell="lstm", input_size=8, hidden_size=MIN_SPLIT_HIDDEN_INT8)
    if why == "bidirectional":
        kw["bidirectional"] = True
    elif why == "proj":
        kw["proj_size"] = 40
    elif why == "small":
        kw["hidden_size"] = MIN_SPLIT_HIDDEN_INT8 - 16
    elif why == "odd":
        kw["hidden_size"] = MIN_SPLIT_HIDDEN_INT8 + 2
    layer = random_recurrent(rng, scale=0.15, **kw)
    B = 3 if why == "batch" else 1
    assert engine()._split_parts(layer, B, 10, 2) == 1
    assert engine()._split_parts(layer, 1, 10, 1) == 1
    q = fastrnn.Model([layer]).quantize("int8")
    x = rng.standard_normal((B, 10, 8)).astype(np.float32)
    state = [random_state(rng, layer, B)]
    got = q.predict(x, initial_state=state, threads=2, backend="cython")
    np.testing.assert_array_equal(got, q.predict(x, initial_state=state, threads=1, backend="cython"))
    assert_close(got, q.predict(x, initial_state=state, backend="numpy"), atol=INT8_SPEC_ATOL, rtol=1e-3)


@pytest.mark.parametrize("cell,options", [("lstm", {"peephole": True}), ("gru", {"linear_before_reset": False}),
                                          ("lstm", {"reverse": True}), ("gru", {"go_backwards": True}),
                                          ("rnn", {"reverse": True})])
def test_a_split_stopped_early_is_finished_on_one_thread(cell, options, rng, monkeypatch):
    """When the barrier stops a split (waiting dominated), the kernel returns the steps it did and
    the driver runs the rest of the chunk with the one-thread int8 kernel from the h (and c) the
    parts left: the same bits. Simulated by parts that run the real split kernel over the first
    STOP steps of the scan only (forward: steps 0..STOP-1; reverse: the last STOP) and report
    STOP: exactly what the kernel leaves when its barrier stops it after STOP steps."""
    STOP = 7
    layer = random_recurrent(rng, cell, input_size=12, hidden_size=256, scale=0.15, **options)
    q = fastrnn.Model([layer]).quantize("int8")
    x = rng.standard_normal((1, 20, 12)).astype(np.float32)
    state = [random_state(rng, layer, 1)]
    lengths = np.array([17])
    want = run(q, x, lengths, state, 1)
    kernels = engine().kernels
    real = kernels.split_sequence
    calls = []

    def stopping(ctx, part, kind, xproj, w_a, w_n, b_hn, peephole, lengths, reverse, h, c, y, y_offset, cell):
        n = int(lengths[0])
        calls.append(n)
        a, b = (n - STOP, n) if reverse else (0, STOP)
        done = real(ctx, part, kind, np.ascontiguousarray(xproj[:, a:b]), w_a, w_n, b_hn, peephole,
                    np.array([STOP], np.int64), reverse, h, c, y[:, a:b], y_offset, cell)
        y[:, n:] = 0.0  # the kernel's padded steps (here past the scan's STOP steps)
        assert done == STOP
        return done
    monkeypatch.setattr(kernels, "split_sequence", stopping)
    got = run(q, x, lengths, state, 2)
    assert calls == [17, 17], "the split did not run"
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
