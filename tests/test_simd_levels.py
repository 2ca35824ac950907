"""The instruction-set levels of the C kernels (kernels/rnn_core.h): each level equals the NumPy
reference (x @ W.T, fastrnn.reference) within KERNEL_ATOL; AVX-512 and AVX2 give the same bits.
Every test runs once per level of SIMD_LEVELS; a level this CPU lacks is skipped with a reason
naming it, so the -ra summary of a run says which levels were not tested, and
test_levels_run_here prints those that were."""
import os

import numpy as np
import pytest

import fastrnn
from conftest import KERNEL_ATOL, KERNEL_RTOL, require
from helpers import random_recurrent, random_state

# the C kernels only (.ci/checked_kernels.sh also runs the suite on a tree without them)
k = require("fastrnn.kernels._cykernels")

BEST = k._select_simd(None)
LEVELS = k.SIMD_LEVELS[: k.SIMD_LEVELS.index(BEST) + 1]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:  # pragma: no cover - not Linux
        return set()


def test_levels_run_here(capsys):
    """The levels tested on this machine, printed (pytest -s / -rA shows it), and checked against
    the CPU's own flags so that a detection bug cannot silently reduce the tests to plain C."""
    assert k.simd_level() == BEST
    flags = cpu_flags()
    if flags and not os.environ.get("FASTRNN_SIMD"):
        want = "avx512" if {"avx2", "fma", "avx512f"} <= flags else "avx2" if {"avx2", "fma"} <= flags else "plain"
        assert BEST == want, f"CPU flags say {want}, the kernels selected {BEST}"
    missing = [level for level in k.SIMD_LEVELS if level not in LEVELS]
    with capsys.disabled():
        print(f"\nSIMD levels tested: {', '.join(LEVELS)}; not available here: {', '.join(missing) or 'none'}")


@pytest.fixture(params=k.SIMD_LEVELS)
def level(request):
    """Select one instruction-set level for the test; restores the best level afterwards."""
    if request.param not in LEVELS:
        pytest.skip(f"this CPU lacks {request.param} (best level here: {BEST}): its kernels are not tested")
    assert k._select_simd(request.param) == request.param
    yield request.param
    k._select_simd(None)


@pytest.fixture
def at_level():
    """Run a callable at each available level; restores the best level afterwards."""
    def run(fn):
        out = {}
        try:
            for level in LEVELS:
                assert k._select_simd(level) == level
                out[level] = fn()
        finally:
            k._select_simd(None)
        return out
    return run


MATMUL_SHAPES = [(512, 128), (37, 130), (16, 1), (5, 3), (200, 17)]
MATMUL_ROWS = [1, 2, 3, 5, 6, 7, 13, 64]


def matmul_case(N, K, m, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((m, K)).astype(np.float32)
    start = rng.standard_normal((m, N)).astype(np.float32)
    return W, x, start


def run_matmul(W, x, start):
    out = start.copy()
    k.matmul_packed(x, k.pack_weight(W), out)
    return out


@pytest.mark.parametrize("N,K", MATMUL_SHAPES)
@pytest.mark.parametrize("m", MATMUL_ROWS)
def test_matmul_level_equals_numpy(N, K, m, level):
    W, x, start = matmul_case(N, K, m, N * 1000 + K * 10 + m)
    # float64 reference; K products of N(0,1) values: the float32 sum errs by ~K * eps * sqrt(K)
    want = start.astype(np.float64) + x.astype(np.float64) @ W.T.astype(np.float64)
    np.testing.assert_allclose(run_matmul(W, x, start), want, atol=KERNEL_ATOL * np.sqrt(K), rtol=KERNEL_RTOL)


@pytest.mark.parametrize("N,K", MATMUL_SHAPES)
@pytest.mark.parametrize("m", MATMUL_ROWS)
def test_matmul_avx512_equals_avx2_bitwise(N, K, m, at_level):
    if "avx512" not in LEVELS:
        pytest.skip(f"this CPU lacks avx512 (best level here: {BEST})")
    W, x, start = matmul_case(N, K, m, N * 1000 + K * 10 + m)
    outs = at_level(lambda: run_matmul(W, x, start))
    np.testing.assert_array_equal(outs["avx512"], outs["avx2"])


# past the kernels' blocks: K over 512 (AVX-512's K blocks) and over 256 (AVX2's), and row counts
# over a row block (AVX-512: 192 rows, AVX2: 96) with every remainder kind of the last block;
# batched steps of 6 to 96 rows (AVX-512: K in blocks of 128)
BLOCKED_CASES = [(70, 600, 103), (64, 257, 200), (33, 40, 389), (16, 520, 199),
                 (70, 300, 64), (33, 129, 96), (80, 1030, 6)]


@pytest.mark.parametrize("N,K,m", BLOCKED_CASES)
def test_matmul_blocks_of_rows_and_k_equal_numpy_and_every_level(N, K, m, at_level):
    """The input projection of a batch of rows x steps runs as one product of hundreds or
    thousands of rows, in blocks of rows and of K: every level equals NumPy, and AVX-512 and
    AVX2 give the same bits (the same chain of multiply-adds over k for every output)."""
    W, x, start = matmul_case(N, K, m, N + K + m)
    want = start.astype(np.float64) + x.astype(np.float64) @ W.T.astype(np.float64)
    outs = at_level(lambda: run_matmul(W, x, start))
    for level, out in outs.items():
        np.testing.assert_allclose(out, want, atol=KERNEL_ATOL * np.sqrt(K), rtol=KERNEL_RTOL, err_msg=level)
    if "avx512" in outs:
        np.testing.assert_array_equal(outs["avx512"], outs["avx2"])


@pytest.mark.parametrize("cell,options", [
    ("lstm", {"peephole": True, "clip": 0.9}), ("lstm", {"proj_size": 19}), ("gru", {}),
    ("gru", {"linear_before_reset": False}), ("rnn", {"activations": ("relu",)}), ("lstm", {"bidirectional": True}),
    ("rnn", {"activations": (("scaled_tanh", 0.7, 1.3),), "clip": 1.5}), ("rnn", {"activations": ("swish",)}),
    ("gru", {"activations": ("sigmoid", "softsign")}),
])
@pytest.mark.parametrize("batch", [1, 6, 13, 64])
def test_sequence_levels(cell, options, batch, at_level, rng):
    """Every level against the NumPy reference (states too), and AVX-512 against AVX2 bitwise."""
    layer = random_recurrent(rng, cell, input_size=11, hidden_size=37, scale=0.3, **options)
    model = fastrnn.Model([layer])
    x = rng.standard_normal((batch, 9, 11)).astype(np.float32)
    lengths = rng.integers(0, 10, batch)
    state = [random_state(rng, layer, batch)]
    want, want_state = model.predict(x, lengths=lengths, initial_state=state, backend="numpy", return_state=True)
    outs = at_level(lambda: model.predict(x, lengths=lengths, initial_state=state, backend="cython", threads=1,
                                          return_state=True))
    for level, (y, st) in outs.items():
        np.testing.assert_allclose(y, want, atol=KERNEL_ATOL, rtol=KERNEL_RTOL, err_msg=f"{level} output")
        parts = (lambda s: s if isinstance(s, tuple) else (s,))  # noqa: E731 - (h, c) or h
        for got_part, want_part in zip(parts(st[0]), parts(want_state[0]), strict=True):
            np.testing.assert_allclose(got_part, want_part, atol=KERNEL_ATOL, rtol=KERNEL_RTOL,
                                       err_msg=f"{level} state")
    if "avx512" in outs:
        np.testing.assert_array_equal(outs["avx512"][0], outs["avx2"][0])
    missing = [level for level in k.SIMD_LEVELS if level not in outs]
    if missing:
        pytest.skip(f"compared plain..{BEST} with the reference; this CPU lacks {', '.join(missing)}")
