"""The machine's floors for the standard workloads, measured with fastrnn's own matrix multiply
(the README's "Where the time goes" cites them). One thread, medians over repeats.

    python -m bench.floors

- Batch 1: out = W @ x over one matrix, streamed once per call, as a batch-1 step streams its
  recurrent weights. Reported as GB/s of weights read: 1.5 MB (one core's half of seq at two
  threads: fits in L2), 3 MB (seq, gen256: does not), 12.5 MB (gen512: comes from L3).
- Batch 64: out = X @ W.T at the shapes of an LSTM step (cls: 64 x 128 -> 512; batchgen's two
  layers: 64 x 512 -> 2048 and 64 x 1024 -> 2048), reported as GFLOP/s.
- Peaks of the core's arithmetic (kernels/int8_core.h, i8_peak_probe): float32 FMA (AVX-512, else
  AVX2; GFLOP/s), int8 vpdpbusd (AVX-512 VNNI) and AMX tdpbssd (GOP/s, 2 per multiply-add), each
  with independent chains in registers only. The batch-64 GEMMs are also given as a share of the
  FMA peak (issue 14's target: 80%).
A workload cannot run faster than its bytes (batch 1) or FLOPs (batch 64) at these rates.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from fastrnn.kernels import _cykernels as kernels

try:
    from fastrnn.kernels import _cyint8 as int8_kernels
except ImportError:  # pragma: no cover
    int8_kernels = None

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


def peaks():
    """{kind: operations per second} of the probes the CPU has (median of repeated 20 ms runs)."""
    out = {}
    if int8_kernels is None:
        return out
    for kind in ("fma", "vnni", "amx"):
        iterations = 1 << 20
        if int8_kernels.peak_probe(kind, 1000) == 0:
            continue
        rates = []
        ops = int8_kernels.peak_probe(kind, iterations)
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end or len(rates) < 9:
            t0 = time.perf_counter()
            int8_kernels.peak_probe(kind, iterations)
            rates.append(ops / (time.perf_counter() - t0))
        out[kind] = statistics.median(rates)
    return out


def main():
    rng = np.random.default_rng(0)
    print(f"instruction set: {kernels.simd_level()}, one thread")
    peak = peaks()
    names = {"fma": "float32 FMA peak", "vnni": "int8 vpdpbusd peak", "amx": "int8 AMX tdpbssd peak"}
    for kind, rate in peak.items():
        unit = "GFLOP/s" if kind == "fma" else "GOP/s"
        print(f"{names[kind]:<22}: {rate / 1e9:8.1f} {unit}")
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
        rate = 2 * M * N * K / t
        share = f"  {rate / peak['fma']:4.0%} of the FMA peak" if "fma" in peak else ""
        print(f"batch {M}, {name:<17} ({M} x {K} -> {N}): {t * 1e6:8.1f} us  {rate / 1e9:6.1f} GFLOP/s{share}")


if __name__ == "__main__":
    main()
