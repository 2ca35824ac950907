"""The machine's floors for the standard workloads, measured with fastrnn's own matrix multiply
(the README's "Where the time goes" cites them). One thread, medians over repeats.

    python -m bench.floors

- Batch 1: out = W @ x over one matrix, streamed once per call, as a batch-1 step streams its
  recurrent weights. Reported as GB/s of weights read: 1.5 MB (one core's half of seq at two
  threads: fits in L2), 3 MB (seq, gen256: does not), 12.5 MB (gen512: comes from L3).
- Batch 64: out = X @ W.T at the shapes of an LSTM step (cls: 64 x 128 -> 512; batchgen's two
  layers: 64 x 512 -> 2048 and 64 x 1024 -> 2048), reported as GFLOP/s.
A workload cannot run faster than its bytes (batch 1) or FLOPs (batch 64) at these rates.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from fastrnn.kernels import _cykernels as kernels

GEMV_SHAPES = {"1.5 MB": (768, 512), "3 MB": (1536, 512), "12.5 MB": (4096, 800)}  # (N, K)
GEMM_SHAPES = {"cls step": (64, 512, 128), "batchgen layer 1": (64, 2048, 512),
               "batchgen layer 2": (64, 2048, 1024)}  # (M, N, K)


def median_seconds(fn, min_total_s=0.5, warmup_s=0.2):
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        fn()
    times, total = [], 0.0  # a running total: summing a long list between calls would evict L2
    while total < min_total_s or len(times) < 20:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    print(f"instruction set: {kernels.simd_level()}, one thread")
    for name, (N, K) in GEMV_SHAPES.items():
        w = kernels.pack_weight(rng.standard_normal((N, K)).astype(np.float32))
        x = rng.standard_normal((1, K)).astype(np.float32)
        out = np.zeros((1, N), np.float32)
        t = median_seconds(lambda: kernels.matmul_packed(x, w, out))
        print(f"batch 1, {name:<8} W ({N} x {K}): {t * 1e6:8.1f} us  {N * K * 4 / t / 1e9:6.1f} GB/s")
    for name, (M, N, K) in GEMM_SHAPES.items():
        w = kernels.pack_weight(rng.standard_normal((N, K)).astype(np.float32))
        x = rng.standard_normal((M, K)).astype(np.float32)
        out = np.zeros((M, N), np.float32)
        t = median_seconds(lambda: kernels.matmul_packed(x, w, out))
        print(f"batch {M}, {name:<17} ({M} x {K} -> {N}): {t * 1e6:8.1f} us  {2 * M * N * K / t / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
