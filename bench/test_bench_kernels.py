"""Kernel regression benchmarks: cell x hidden size x batch x sequence length x threads x backend.

Run (never in CI; minutes, not seconds):
    pytest bench/test_bench_kernels.py --benchmark-autosave                 # save a baseline
    pytest bench/test_bench_kernels.py --benchmark-compare \
        --benchmark-compare-fail=median:10%                                 # later: fail on a >10% regression
Select a subset with -k, e.g. -k "lstm and 512 and b1 and t1".
"""
import numpy as np
import pytest

import fastrnn
from helpers import random_recurrent

HIDDEN = [64, 256, 512, 1024]
BATCH = [1, 8, 64]
CELLS = ["rnn", "lstm", "gru"]
THREADS = [1, 2]
BACKENDS = [b for b in fastrnn.available_backends() if b != "numpy"]


def steps_for(hidden, batch):
    # keep each measured call in the 5-50 ms range
    work = hidden * hidden * batch
    return int(max(10, min(500, 2e8 / max(work, 1) / 8)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("batch", BATCH, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("cell", CELLS)
def test_sequence(benchmark, cell, hidden, batch, threads, backend):
    rng = np.random.default_rng(0)
    layer = random_recurrent(rng, cell, input_size=128, hidden_size=hidden, scale=0.05)
    model = fastrnn.Model([layer])
    T = steps_for(hidden, batch)
    x = rng.standard_normal((batch, T, 128)).astype(np.float32)
    model.predict(x[:, :2], backend=backend)  # pack weights / JIT outside the timing
    benchmark.extra_info.update(cell=cell, hidden=hidden, batch=batch, steps=T, threads=threads, backend=backend)
    benchmark(model.predict, x, backend=backend, threads=threads)
