"""The machine's floors for the standard workloads, measured with fastrnn's own matrix multiply
(docs/performance.md cites them). One thread, medians over repeats.

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

    python -m bench.floors --workloads    # also: each standard workload (float32, 1 thread) against its floor

With --workloads, fastrnn's float32 time of each workload of bench.compare is set against its
floor (issue 14's targets): batch-1 workloads (gen512, seq, lstm_b1) against the time to stream
their weights once per step at the measured bandwidth (plus their all-steps input projection at
the GEMM rate) -- target: within 10%; batch-64 workloads (cls, lstm_b64, batchgen) as their
FLOP rate over the FMA peak -- target: 80%.

Every time here is CPU time of this process (time.process_time), not wall time: on a shared
machine a process that is descheduled does not count, so the floors hold under load (cache
sharing with the other processes still costs some). One thread throughout.
"""
from __future__ import annotations

import argparse
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


clock = time.process_time  # CPU time: see the module's help


def median_seconds(fn, min_total_s=0.5, warmup_s=0.2, min_runs=20):
    t_end = clock() + warmup_s
    while clock() < t_end:
        fn()
    times, total = [], 0.0  # a running total: summing a long list between calls would evict L2
    while total < min_total_s or len(times) < min_runs:
        t0 = clock()
        fn()
        times.append(clock() - t0)
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
        t_end = clock() + 0.5
        while clock() < t_end or len(rates) < 9:
            t0 = clock()
            int8_kernels.peak_probe(kind, iterations)
            rates.append(ops / (clock() - t0))
        out[kind] = statistics.median(rates)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", action="store_true",
                    help="also time each standard workload (float32, 1 thread) against its floor")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"instruction set: {kernels.simd_level()}, one thread, CPU time")
    peak = peaks()
    names = {"fma": "float32 FMA peak", "vnni": "int8 vpdpbusd peak", "amx": "int8 AMX tdpbssd peak"}
    for kind, rate in peak.items():
        unit = "GFLOP/s" if kind == "fma" else "GOP/s"
        print(f"{names[kind]:<22}: {rate / 1e9:8.1f} {unit}")
    bandwidth, gemm = {}, {}
    for name, (N, K) in GEMV_SHAPES.items():
        w = kernels.pack_weight(rng.standard_normal((N, K)).astype(np.float32))
        x = rng.standard_normal((1, K)).astype(np.float32)
        out = np.zeros((1, N), np.float32)
        t = median_seconds(lambda: kernels.matmul_packed(x, w, out))
        bandwidth[name] = N * K * 4 / t
        print(f"batch 1, {name:<8} W ({N} x {K}): {t * 1e6:8.1f} us  {N * K * 4 / t / 1e9:6.1f} GB/s")
    for name, (M, N, K) in GEMM_SHAPES.items():
        w = kernels.pack_weight(rng.standard_normal((N, K)).astype(np.float32))
        x = rng.standard_normal((M, K)).astype(np.float32)
        out = np.zeros((M, N), np.float32)
        t = median_seconds(lambda: kernels.matmul_packed(x, w, out))
        rate = 2 * M * N * K / t
        gemm[name] = rate
        share = f"  {rate / peak['fma']:4.0%} of the FMA peak" if "fma" in peak else ""
        print(f"batch {M}, {name:<17} ({M} x {K} -> {N}): {t * 1e6:8.1f} us  {rate / 1e9:6.1f} GFLOP/s{share}")
    if args.workloads:
        workloads(bandwidth, gemm, peak.get("fma"))


# -- the standard workloads against their floors ------------------------------------------------
def _flops_lstm(batch_steps, n_in, hidden):
    """FLOP of a (batch_steps x n_in) -> 4*hidden product"""
    return 2.0 * batch_steps * n_in * 4 * hidden


def workloads(bandwidth, gemm, fma_peak):
    """fastrnn float32, one thread, each workload against its floor (see the module's help)."""
    import fastrnn

    from .compare import build
    from .models import VOCAB

    fastrnn.set_num_threads(1)
    gemm_rate = max(gemm.values())
    rng = np.random.default_rng(1)

    def stream_rate(nbytes):
        """bytes/s of one float32 matrix of nbytes streamed once (W @ x, K = 512): the rate at
        the workload's own size (what fits in L2, what comes from L3)"""
        N = int(nbytes // (4 * 512))
        w = kernels.pack_weight(rng.standard_normal((N, 512)).astype(np.float32))
        x = rng.standard_normal((1, 512)).astype(np.float32)
        out = np.zeros((1, N), np.float32)
        return N * 512 * 4 / median_seconds(lambda: kernels.matmul_packed(x, w, out))

    rows = []

    def gen_model(hidden):
        return build("char", hidden)[1]

    # gen512: per token both layers' W_hh (layer 1's W_ih is folded into a table), layer 2's
    # W_ih, and the Dense: float32 bytes streamed once per token
    m = gen_model(512)
    nbytes = 4 * (4 * 512 * 512 + 4 * 512 * 1024 + VOCAB * 512)
    bw_l3 = stream_rate(nbytes)
    t = median_seconds(lambda: m.generate([1, 2, 3, 4], max_new_tokens=300, temperature=0.8, seed=0),
                       min_total_s=1.0, min_runs=5) / 300
    rows.append(("gen512", "batch 1", t * 1e6, nbytes / bw_l3 * 1e6, "us/token",
                 f"{nbytes / 1e6:.1f} MB at {bw_l3 / 1e9:.1f} GB/s"))
    # batchgen: 64 rows, 200 tokens; the same products as FLOP
    flops = 2.0 * 64 * (4 * 512 * 512 + 4 * 512 * 1024 + VOCAB * 512)
    t = median_seconds(lambda: m.generate([[1, 2, 3, 4]] * 64, max_new_tokens=200, temperature=0.8, seed=0),
                       min_total_s=2.0, min_runs=3) / 200
    rows.append(("batchgen", "batch 64", t, flops / fma_peak if fma_peak else None, "share",
                 f"{flops / t / 1e9:.1f} GFLOP/s"))
    # seq: GRU(128 -> 512), T = 1000: W_hh (3 MB) per step + the input projection (one GEMM)
    import torch

    torch.manual_seed(0)
    seq = fastrnn.from_torch(torch.nn.GRU(128, 512, batch_first=True).eval())
    x = np.random.default_rng(0).standard_normal((1, 1000, 128)).astype(np.float32)
    nbytes, flops = 4 * 3 * 512 * 512, 2.0 * 3 * 512 * 128
    t = median_seconds(lambda: seq.predict(x), min_total_s=1.0, min_runs=5) / 1000
    bw = stream_rate(nbytes)
    floor = nbytes / bw + flops / gemm_rate
    rows.append(("seq", "batch 1", t * 1e6, floor * 1e6, "us/step",
                 f"{nbytes / 1e6:.1f} MB at {bw / 1e9:.1f} GB/s + input GEMM"))
    # lstm_b1 / lstm_b64: LSTM(512) x 2
    lstm = fastrnn.from_torch(torch.nn.LSTM(512, 512, num_layers=2, batch_first=True).eval())
    x1 = np.random.default_rng(0).standard_normal((1, 200, 512)).astype(np.float32)
    nbytes, flops = 2 * 4 * 4 * 512 * 512, 2 * _flops_lstm(1, 512, 512)
    t = median_seconds(lambda: lstm.predict(x1), min_total_s=1.0, min_runs=5) / 200
    bw_l3 = stream_rate(nbytes)
    floor = nbytes / bw_l3 + flops / gemm_rate
    rows.append(("lstm_b1", "batch 1", t * 1e6, floor * 1e6, "us/step",
                 f"{nbytes / 1e6:.1f} MB at {bw_l3 / 1e9:.1f} GB/s + input GEMM"))
    x64 = np.random.default_rng(0).standard_normal((64, 50, 512)).astype(np.float32)
    flops = 2 * 2 * _flops_lstm(64 * 50, 512, 512)
    t = median_seconds(lambda: lstm.predict(x64), min_total_s=2.0, min_runs=3)
    rows.append(("lstm_b64", "batch 64", t, flops / fma_peak if fma_peak else None, "share",
                 f"{flops / t / 1e9:.1f} GFLOP/s"))
    # cls: BiLSTM(128) over 64 x 100 ids: the recurrent products (the input side is a table lookup)
    cls = build("cls")[1]
    ids = np.random.default_rng(0).integers(1, 20000, (64, 100))
    flops = 2 * 100 * _flops_lstm(64, 128, 128)
    t = median_seconds(lambda: cls.predict(ids), min_total_s=1.0, min_runs=5)
    rows.append(("cls", "batch 64", t, flops / fma_peak if fma_peak else None, "share",
                 f"{flops / t / 1e9:.1f} GFLOP/s"))

    print("\nworkload  kind      fastrnn float32         floor / FMA peak        where it sits")
    for name, kind, t, floor, unit, detail in rows:
        if unit == "share":
            rate = float(detail.split()[0]) * 1e9
            share = rate / fma_peak if fma_peak else float("nan")
            verdict = "meets" if share >= 0.8 else "misses"
            print(f"{name:<9} {kind:<9} {detail:<23} peak {fma_peak / 1e9:6.1f} GFLOP/s    "
                  f"{share:5.0%} of the FMA peak ({verdict} the 80% target)")
        else:
            verdict = "meets" if t <= floor * 1.10 else "misses"
            print(f"{name:<9} {kind:<9} {t:8.1f} {unit:<13} floor {floor:7.1f} {unit:<9} "
                  f"{t / floor:5.2f}x the floor ({verdict} the 10% target; {detail})")


if __name__ == "__main__":
    main()
