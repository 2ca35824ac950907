"""The exported C against fastrnn in Python, per time step, beside the core's floor (issue 29).

    python -m bench.bench_export_c                  # both models, float32 and int8, 1 thread
    python -m bench.bench_export_c --quick          # a few steps only: checks that it runs
    python -m bench.bench_export_c --cc clang -r 9  # another compiler, 9 repeats

Not part of the test suite. Models:
- char: the bundled character LSTM (Embedding 98x64 -> LSTM 256 -> LSTM 256 -> Dense 98), one
  token per step, the logits read at every step.
- stream: LSTM(1 -> 40) -> Dense(1), one sample per step (the real-time audio case): the state
  carried from one sample to the next, one output per sample.
Per model and weight kind, ns per step of:
- C step: NAME_step of the exported C (``cc -O2``, the documented build line; ``--cflags`` to
  change), output written, timed inside the C program over a run of steps;
- Python step: fastrnn's own step from Python: a Session feeding one token and reading the
  logits (char), or Model.predict of one step with the state passed in and returned (stream,
  which takes feature vectors: a Session needs tokens);
- predict / step: the compiled Model.predict of one long sequence, divided by its steps;
- floor: the time the step cannot beat on this core: its weight bytes at the bandwidth measured
  for a matrix of that size (fastrnn's own matrix-vector product, as bench.floors), or its FLOPs
  at the core's float32 FMA peak, whichever is longer.
Medians over repeats; one thread (fastrnn.set_num_threads(1)); CPU time of the process measuring
(the C program times itself with CLOCK_PROCESS_CPUTIME_ID).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402,F401  (imports the installed fastrnn)
import fastrnn  # noqa: E402

BENCH_MAIN = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "$n.h"

static $n_state s;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); /* CPU time, as the Python figures */
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* argv: steps repeats; prints the ns per step of each repeat */
int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 1000, i;
    int repeats = argc > 2 ? atoi(argv[2]) : 5, r;
    static float out[$N_OUTPUT_SIZE];
    float sink = 0.0f;
#if !$N_TAKES_TOKENS
    static float x[64][$N_INPUT_SIZE];
    for (i = 0; i < 64 * $N_INPUT_SIZE; i++)
        x[i / $N_INPUT_SIZE][i % $N_INPUT_SIZE] = (float)((i * 7919) % 200 - 100) / 100.0f;
#endif
    $n_reset(&s);
    for (r = -1; r < repeats; r++) { /* repeat -1 warms up */
        double t0 = now();
        for (i = 0; i < steps; i++) {
#if $N_TAKES_TOKENS
            $n_step(&s, (int32_t)((i * 37) % $N_INPUT_SIZE), out);
#else
            $n_step(&s, x[i & 63], out);
#endif
            sink += out[0];
        }
        if (r >= 0)
            printf("%.1f\n", (now() - t0) * 1e9 / steps);
    }
    return sink == 12345.0f;
}
"""


def build_c(model, weights, cc, tmp, cflags=("-O2",)):
    name = "bench_" + weights
    out = os.path.join(tmp, f"{model.name}_{weights}")
    fastrnn.export_c(model, out, name=name, weights=weights)
    with open(os.path.join(out, "bench_main.c"), "w") as f:
        f.write(BENCH_MAIN.replace("$N_", name.upper() + "_").replace("$n", name))
    binary = os.path.join(out, "bench")
    subprocess.run([cc, *cflags, os.path.join(out, f"{name}.c"), os.path.join(out, "bench_main.c"), "-lm", "-o",
                    binary], check=True)
    return binary


def c_step_ns(binary, steps, repeats):
    out = subprocess.run([binary, str(steps), str(repeats)], capture_output=True, text=True, check=True).stdout
    return statistics.median(float(v) for v in out.split())


def median_cpu(fn, repeats):
    fn()  # warm-up (packs the weights, builds plans)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def python_step_ns(model, steps, repeats, weights):
    if model.takes_tokens:
        session = model.session(weights=weights)
        ids = [(i * 37) % model.input_size for i in range(steps)]

        def run():
            for t in ids:
                session.feed([t])
                session.logits()
    else:
        x = np.random.default_rng(0).standard_normal((steps, 1, 1, model.input_size)).astype(np.float32)
        state = [None]

        def run():
            st = state[0]
            for xt in x:
                _, st = model.predict(xt, initial_state=st, return_state=True)
            state[0] = st
    return median_cpu(run, repeats) / steps * 1e9


def predict_step_ns(model, steps, repeats):
    if model.takes_tokens:
        x = (np.arange(steps)[None] * 37) % model.input_size
    else:
        x = np.random.default_rng(0).standard_normal((1, steps, model.input_size)).astype(np.float32)
    return median_cpu(lambda: model.predict(x), repeats) / steps * 1e9


def step_cost(model):
    """(weight bytes read per step in float32, FLOPs per step) of a chain of Embedding, recurrent
    layers and Dense (the Embedding reads one row)."""
    nbytes = flops = 0
    for layer in model.layers:
        if isinstance(layer, fastrnn.Embedding):
            nbytes += 4 * layer.output_size
            continue
        arrays = layer.arrays()
        for name, a in arrays.items():
            nbytes += 4 * a.size
            if a.ndim == 2:
                flops += 2 * a.size
    return nbytes, flops


def floor_ns(model, weights):
    """max(bytes at the measured bandwidth, FLOPs at the FMA peak), one step."""
    from bench.floors import median_seconds, peaks
    from fastrnn.kernels import _cykernels as kernels

    nbytes, flops = step_cost(model)
    if weights == "int8":
        nbytes = nbytes // 4  # the matrices as int8 (scales and biases are small)
    rng = np.random.default_rng(0)
    K = 256
    N = max(8, nbytes // (4 * K))
    w = kernels.pack_weight(rng.standard_normal((N, K)).astype(np.float32))
    x = rng.standard_normal((1, K)).astype(np.float32)
    out = np.zeros((1, N), np.float32)
    bandwidth = N * K * 4 / median_seconds(lambda: kernels.matmul_packed(x, w, out), min_total_s=0.2, min_runs=10)
    fma = peaks().get("fma")
    t = nbytes / bandwidth
    if fma:
        t = max(t, flops / fma)
    return t * 1e9, nbytes, bandwidth


def stream_model():
    import torch

    torch.manual_seed(0)
    model = fastrnn.from_torch(torch.nn.Sequential(torch.nn.LSTM(1, 40, batch_first=True), torch.nn.Linear(40, 1)),
                               name="stream")
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_export_c", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few steps and repeats: checks that everything runs")
    ap.add_argument("-r", "--repeats", type=int, default=7)
    ap.add_argument("--cc", default="cc", help="C compiler (default cc)")
    ap.add_argument("--cflags", default="-O2", help="compiler flags (default -O2, the documented line; e.g. "
                                                    "\"-O3 -march=native\" for the core's widest vectors)")
    ap.add_argument("--weights", nargs="+", default=["float32", "int8"], choices=["float32", "int8"])
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(1)
    repeats = 2 if args.quick else args.repeats
    models = {"char": (fastrnn.generate.bundled_model(), 20 if args.quick else 2000, 20 if args.quick else 500),
              "stream": (stream_model(), 50 if args.quick else 200_000, 50 if args.quick else 2000)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (model, c_steps, py_steps) in models.items():
            for weights in args.weights:
                run_model = model.quantize("int8") if weights == "int8" else model
                binary = build_c(model, weights, args.cc, tmp, args.cflags.split())
                c_ns = c_step_ns(binary, c_steps, repeats)
                py_ns = python_step_ns(run_model, py_steps, repeats, weights if model.takes_tokens else None)
                pred_ns = predict_step_ns(run_model, c_steps, repeats)
                fl, nbytes, bw = floor_ns(model, weights)
                rows.append((label, weights, c_ns, py_ns, pred_ns, fl, f"{nbytes / 1e3:.0f} kB at {bw / 1e9:.0f} GB/s"))
    print(f"one thread, {args.cc} {args.cflags}; ns per step (median of {repeats}), CPU time")
    print(f"{'model':<7} {'weights':<8} {'C step':>10} {'Python step':>12} {'predict/step':>13} {'floor':>9}  "
          f"C / floor  floor from")
    for label, weights, c_ns, py_ns, pred_ns, fl, detail in rows:
        print(f"{label:<7} {weights:<8} {c_ns:>10.0f} {py_ns:>12.0f} {pred_ns:>13.0f} {fl:>9.0f}  {c_ns / fl:>8.1f}x  "
              f"{detail}")


if __name__ == "__main__":
    main()
