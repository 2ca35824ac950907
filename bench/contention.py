"""Contention: the default thread count against threads=1, with both cores free and with another
process busy on one core (docs/performance.md; issue 15).

    python -m bench.contention [--repeats 5] [--rounds 3]

Workloads (batch 1, where fastrnn splits the hidden units across threads and the parts meet at
a barrier after every step): gen256 and gen512 (300 sampled tokens, us/token) and seq512
(GRU(128 -> 512), T = 1000, us/step). For each load ("free", then "busy": a process spinning
on the last core of this process's affinity mask), the two settings are measured interleaved
(ABAB..., the order alternating per round) and the medians are reported with the ratio
default / threads=1. Targets: busy ratio <= 1.3 (the default degrades gracefully), free ratio
well below 1 (the 2-thread speed-up is kept). Run by hand; never in CI.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import fastrnn

try:
    from fastrnn import pool
except ImportError:  # a build before fastrnn/pool.py (to measure the old behaviour)
    pool = None

from .compare import build, cpu_name, median_time


def hog(cpu):
    """A process spinning on ``cpu`` until killed."""
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def workloads():
    out = {}
    for hidden in (256, 512):
        _, model = build("char", hidden)
        out[f"gen{hidden}"] = ("us/token", 300,
                               lambda threads, m=model: m.generate([1, 2, 3, 4], max_new_tokens=300, temperature=0.8,
                                                                   seed=0, threads=threads))
    rng = np.random.default_rng(0)
    H = 512
    gru = fastrnn.Model([fastrnn.Recurrent(
        cell="gru", hidden_size=H, directions=[fastrnn.DirectionWeights(
            w_ih=(rng.standard_normal((3 * H, 128)) * 0.05).astype(np.float32),
            w_hh=(rng.standard_normal((3 * H, H)) * 0.05).astype(np.float32),
            b_ih=np.zeros(3 * H, np.float32), b_hh=np.zeros(3 * H, np.float32))])])
    x = rng.standard_normal((1, 1000, 128)).astype(np.float32)
    out["seq512"] = ("us/step", 1000, lambda threads: gru.predict(x, threads=threads))
    return out


def measure(fn, per_call, repeats, rounds):
    """Interleaved medians (us per unit) of threads=1 and the default (threads=None)."""
    got = {"threads=1": [], "default": []}
    for r in range(rounds):
        order = ["threads=1", "default"] if r % 2 == 0 else ["default", "threads=1"]
        for name in order:
            threads = 1 if name == "threads=1" else None
            got[name].append(median_time(lambda: fn(threads), repeats) / per_call * 1e6)
    return {k: statistics.median(v) for k, v in got.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"CPU: {cpu_name()}; cores available: {len(cpus)}; default threads: {fastrnn.get_num_threads()}")
    print(f"{'workload':10} {'load':5} {'threads=1':>12} {'default':>12} {'default/1':>10}")
    loads = workloads()
    for load in ("free", "busy"):
        proc = hog(cpus[-1]) if load == "busy" else None
        try:
            time.sleep(0.5)
            if pool is not None:  # each load starts without the other's verdict
                if hasattr(pool, "reset_contention"):
                    pool.reset_contention()
                else:  # a build before issue 23's SplitVerdict
                    pool._state.contended_until = 0.0
            for name, (unit, per_call, fn) in loads.items():
                res = measure(fn, per_call, args.repeats, args.rounds)
                print(f"{name:10} {load:5} {res['threads=1']:10.1f}   {res['default']:10.1f}   "
                      f"{res['default'] / res['threads=1']:8.2f}   ({unit})", flush=True)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
