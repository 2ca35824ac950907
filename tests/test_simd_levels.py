"""The instruction-set levels of the C kernels (kernels/rnn_core.h): AVX-512 and AVX2 give the
same bits, plain C the same values within KERNEL_ATOL. Levels the CPU lacks are skipped by name."""
import numpy as np
import pytest

import fastrnn
from conftest import KERNEL_ATOL, KERNEL_RTOL
from helpers import random_recurrent, random_state

# the C kernels only (.ci/checked_kernels.sh also runs the suite on a tree without them)
k = pytest.importorskip("fastrnn.kernels._cykernels")

BEST = k._select_simd(None)
LEVELS = k.SIMD_LEVELS[: k.SIMD_LEVELS.index(BEST) + 1]


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


def test_best_level_is_reported():
    assert k.simd_level() == BEST
    if BEST == "plain":
        pytest.skip("this CPU has no AVX2+FMA: only the plain-C kernels run here")


@pytest.mark.parametrize("N,K", [(512, 128), (37, 130), (16, 1), (5, 3), (200, 17)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 7, 13, 64])
def test_matmul_levels(N, K, m, at_level, rng):
    W = rng.standard_normal((N, K)).astype(np.float32)
    packed = k.pack_weight(W)
    x = rng.standard_normal((m, K)).astype(np.float32)
    start = rng.standard_normal((m, N)).astype(np.float32)

    def run():
        out = start.copy()
        k.matmul_packed(x, packed, out)
        return out

    outs = at_level(run)
    np.testing.assert_allclose(outs["plain"], start + x @ W.T, atol=1e-4, rtol=1e-4)
    if "avx512" in outs:
        np.testing.assert_array_equal(outs["avx512"], outs["avx2"])
    if "avx2" in outs:
        np.testing.assert_allclose(outs["avx2"], outs["plain"], atol=KERNEL_ATOL, rtol=KERNEL_RTOL)


@pytest.mark.parametrize("cell,options", [
    ("lstm", {"peephole": True, "clip": 0.9}), ("lstm", {"proj_size": 19}), ("gru", {}),
    ("gru", {"linear_before_reset": False}), ("rnn", {"activations": ("relu",)}), ("lstm", {"bidirectional": True}),
    ("rnn", {"activations": (("scaled_tanh", 0.7, 1.3),), "clip": 1.5}), ("rnn", {"activations": ("swish",)}),
    ("gru", {"activations": ("sigmoid", "softsign")}),
])
@pytest.mark.parametrize("batch", [1, 6, 13, 64])
def test_sequence_levels(cell, options, batch, at_level, rng):
    layer = random_recurrent(rng, cell, input_size=11, hidden_size=37, scale=0.3, **options)
    model = fastrnn.Model([layer])
    x = rng.standard_normal((batch, 9, 11)).astype(np.float32)
    lengths = rng.integers(0, 10, batch)
    state = [random_state(rng, layer, batch)]
    outs = at_level(lambda: model.predict(x, lengths=lengths, initial_state=state, backend="cython", threads=1))
    if "avx512" in outs:
        np.testing.assert_array_equal(outs["avx512"], outs["avx2"])
    if "avx2" in outs:
        np.testing.assert_allclose(outs["avx2"], outs["plain"], atol=KERNEL_ATOL, rtol=KERNEL_RTOL)
