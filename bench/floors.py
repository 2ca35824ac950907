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

    python -m bench.floors --workloads    # also: each standard workload (float32 and int8, 1 thread)
                                          # against its floor

With --workloads, fastrnn's float32 time of each workload of bench.compare is set against its
floor (issue 14's targets): batch-1 workloads (gen512, seq, lstm_b1) against the time to stream
their weights once per step at the measured bandwidth (plus their all-steps input projection at
the GEMM rate) -- target: within 10%; batch-64 workloads (cls, lstm_b64, batchgen) as their
FLOP rate over the FMA peak -- target: 80%. The int8 engine (``model.quantize("int8")``;
generation: ``weights="int8"``) the same way (issue 23's targets): batch 1 against its int8
weights streamed once per step at the int8 product's own rate for that many bytes -- target:
within 25%; batch 64 as its int8 rate (2 OP per multiply-add) over the vpdpbusd peak -- target:
80% (where the CPU has no AVX-512 VNNI, over the AVX2 int8 product's rate at the same shape,
stated as such). `--int8-only` skips the float32 rows.

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


QUICK = False  # --quick: a check that everything runs, not figures


def median_seconds(fn, min_total_s=0.5, warmup_s=0.2, min_runs=20):
    if QUICK:
        min_total_s, warmup_s, min_runs = 0.0, 0.0, 1
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
        t_end = clock() + (0.0 if QUICK else 0.5)
        while clock() < t_end or len(rates) < (1 if QUICK else 9):
            t0 = clock()
            int8_kernels.peak_probe(kind, iterations)
            rates.append(ops / (clock() - t0))
        out[kind] = statistics.median(rates)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", action="store_true",
                    help="also time each standard workload (float32 and int8, 1 thread) against its floor")
    ap.add_argument("--int8-only", action="store_true", help="with --workloads: only the int8 engine's rows")
    ap.add_argument("--quick", action="store_true", help="shorter timings (a check that it runs, not figures)")
    args = ap.parse_args(argv)
    if args.quick:
        global QUICK
        QUICK = True
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
    if int8_kernels is not None:
        print(f"int8 products (level {int8_kernels.simd_level()}), the product alone (activations quantized "
              "beforehand):")
        for name, (M, N, K) in GEMM_SHAPES.items():
            t = int8_product_seconds(rng, M, N, K)
            rate = 2 * M * N * K / t
            share = f"  {rate / peak['vnni']:4.0%} of the vpdpbusd peak" if "vnni" in peak else ""
            if "amx" in peak and int8_kernels.simd_level() == "amx":
                share += f", {rate / peak['amx']:4.0%} of the AMX peak (AMX from 16 rows)"
            print(f"batch {M}, {name:<17} ({M} x {K} -> {N}): {t * 1e6:8.1f} us  {rate / 1e9:6.1f} GOP/s{share}")
    if args.workloads:
        workloads(bandwidth, gemm, peak, int8_only=args.int8_only)


def int8_product_seconds(rng, M, N, K):
    """CPU seconds of the int8 product alone, (M x K) quantized rows times a (N x K) int8 matrix"""
    q = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w = int8_kernels.pack_int8(q, np.full(N, 0.01, np.float32))
    xq, xs = int8_kernels.quantize_rows(rng.standard_normal((M, K)).astype(np.float32))
    out = np.zeros((M, N), np.float32)
    return median_seconds(lambda: int8_kernels.matmul_quantized(xq, xs, w, out))


# -- the standard workloads against their floors ------------------------------------------------
def _flops_lstm(batch_steps, n_in, hidden):
    """FLOP of a (batch_steps x n_in) -> 4*hidden product"""
    return 2.0 * batch_steps * n_in * 4 * hidden


def workloads(bandwidth, gemm, peak, int8_only=False):
    """fastrnn float32 and int8, one thread, each workload against its floor (see the module's help)."""
    import fastrnn
    import torch

    from .compare import build
    from .models import VOCAB

    fastrnn.set_num_threads(1)
    fma_peak = peak.get("fma")
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

    def stream_rate_int8(nbytes):
        """the same for an int8 matrix of nbytes (the int8 product at batch 1)"""
        N = int(nbytes // 512)
        return N * 512 / int8_product_seconds(rng, 1, N, 512)

    # the int8 batch-64 peak: vpdpbusd where the CPU has AVX-512 VNNI, else the AVX2 int8
    # product's own rate at an LSTM(512) step (an achieved rate, not a peak: stated as such)
    i8_gemm_rate = None if int8_kernels is None else 2.0 * 64 * 2048 * 512 / int8_product_seconds(rng, 64, 2048, 512)
    if "vnni" in peak:
        i8_peak, i8_peak_name = peak["vnni"], "vpdpbusd peak"
    elif int8_kernels is not None:
        i8_peak, i8_peak_name = i8_gemm_rate, f"{int8_kernels.simd_level()} int8 product"
    else:
        i8_peak, i8_peak_name = None, None

    rows = []  # (workload, engine, kind, seconds per unit, floor seconds or None, unit, detail, peak, peak name)

    def stream_row(name, engine, t_us, nbytes, rate, extra_us, unit, what):
        """t_us per step or token; the floor: nbytes at rate, plus extra_us (an input GEMM)"""
        rows.append((name, engine, "batch 1", t_us, nbytes / rate * 1e6 + extra_us, unit,
                     f"{nbytes / 1e6:.1f} MB at {rate / 1e9:.1f} GB/s{what}", None, None))

    def rate_row(name, engine, t, ops, unit_name, top, top_name):
        detail = f"{ops / t / 1e9:.1f} {unit_name}"
        if engine == "int8" and "amx" in peak and int8_kernels.simd_level() == "amx":
            detail += f" (AMX: {ops / t / peak['amx']:.0%} of its peak)"
        rows.append((name, engine, "batch 64", t, None, "share", detail, top, top_name))

    engines = (["int8"] if int8_only else ["float32", "int8"]) if int8_kernels is not None else ["float32"]
    m = build("char", 512)[1]
    torch.manual_seed(0)
    seq = fastrnn.from_torch(torch.nn.GRU(128, 512, batch_first=True).eval())
    lstm = fastrnn.from_torch(torch.nn.LSTM(512, 512, num_layers=2, batch_first=True).eval())
    cls = build("cls")[1]
    models = {"float32": (seq, lstm, cls), "int8": tuple(x.quantize("int8") for x in (seq, lstm, cls))}
    x_seq = np.random.default_rng(0).standard_normal((1, 1000, 128)).astype(np.float32)
    x1 = np.random.default_rng(0).standard_normal((1, 200, 512)).astype(np.float32)
    x64 = np.random.default_rng(0).standard_normal((64, 50, 512)).astype(np.float32)
    ids = np.random.default_rng(0).integers(1, 20000, (64, 100))
    for engine in engines:
        size = 4 if engine == "float32" else 1  # bytes per weight
        rate_of = stream_rate if engine == "float32" else stream_rate_int8
        top, top_name, unit_name = ((fma_peak, "FMA peak", "GFLOP/s") if engine == "float32"
                                    else (i8_peak, i8_peak_name, "GOP/s"))
        weights = {"weights": engine}
        input_rate = gemm_rate if engine == "float32" else i8_gemm_rate  # the all-steps input projection
        seq_m, lstm_m, cls_m = models[engine]
        # gen512: per token both layers' W_hh (layer 1's W_ih is folded into a table), layer 2's
        # W_ih, and the Dense, streamed once per token
        macs = 4 * 512 * 512 + 4 * 512 * 1024 + VOCAB * 512
        t = median_seconds(lambda: m.generate([1, 2, 3, 4], max_new_tokens=300, temperature=0.8, seed=0, **weights),
                           min_total_s=1.0, min_runs=5) / 300
        stream_row("gen512", engine, t * 1e6, size * macs, rate_of(size * macs), 0.0, "us/token", "")
        # batchgen: 64 rows, 200 tokens; the same products as operations
        t = median_seconds(lambda: m.generate([[1, 2, 3, 4]] * 64, max_new_tokens=200, temperature=0.8, seed=0,
                                              **weights), min_total_s=2.0, min_runs=3) / 200
        rate_row("batchgen", engine, t, 2.0 * 64 * macs, unit_name, top, top_name)
        # seq: GRU(128 -> 512), T = 1000: W_hh per step + the input projection (one GEMM)
        nbytes, flops = size * 3 * 512 * 512, 2.0 * 3 * 512 * 128
        t = median_seconds(lambda: seq_m.predict(x_seq), min_total_s=1.0, min_runs=5) / 1000
        stream_row("seq", engine, t * 1e6, nbytes, rate_of(nbytes), flops / input_rate * 1e6, "us/step",
                   " + input GEMM")
        # lstm_b1 / lstm_b64: LSTM(512) x 2
        nbytes, flops = size * 2 * 4 * 512 * 512, 2 * _flops_lstm(1, 512, 512)
        t = median_seconds(lambda: lstm_m.predict(x1), min_total_s=1.0, min_runs=5) / 200
        stream_row("lstm_b1", engine, t * 1e6, nbytes, rate_of(nbytes), flops / input_rate * 1e6, "us/step",
                   " + input GEMM")
        t = median_seconds(lambda: lstm_m.predict(x64), min_total_s=2.0, min_runs=3)
        rate_row("lstm_b64", engine, t, 2 * 2 * _flops_lstm(64 * 50, 512, 512), unit_name, top, top_name)
        # cls: BiLSTM(128) over 64 x 100 ids: the recurrent products (the input side is a table lookup)
        t = median_seconds(lambda: cls_m.predict(ids), min_total_s=1.0, min_runs=5)
        rate_row("cls", engine, t, 2 * 100 * _flops_lstm(64, 128, 128), unit_name, top, top_name)

    print("\nworkload  engine  kind      fastrnn                  floor / peak             where it sits")
    for name, engine, kind, t, floor, unit, detail, top, top_name in rows:
        if unit == "share":
            rate = float(detail.split()[0]) * 1e9
            if top is None:
                print(f"{name:<9} {engine:<7} {kind:<9} {detail:<24} (no peak measured)")
                continue
            share = rate / top
            target = 0.8
            verdict = "meets" if share >= target else "misses"
            print(f"{name:<9} {engine:<7} {kind:<9} {detail:<24} {top_name} {top / 1e9:6.1f}    "
                  f"{share:5.0%} of it ({verdict} the {target:.0%} target)")
        else:
            target = 1.10 if engine == "float32" else 1.25
            verdict = "meets" if t <= floor * target else "misses"
            print(f"{name:<9} {engine:<7} {kind:<9} {t:8.1f} {unit:<14} floor {floor:7.1f} {unit:<9} "
                  f"{t / floor:5.2f}x the floor ({verdict} the {target - 1:.0%} target; {detail})")


if __name__ == "__main__":
    main()
