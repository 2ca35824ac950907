"""A regression gate that works on a shared machine: two builds, interleaved, ratios with an
interval.

    python -m bench.regress BASE                     # BASE: a git ref; B = the working tree
    python -m bench.regress main --threshold 10 --pairs 30
    python -m bench.regress HEAD --env-b FASTRNN_SIMD=plain    # prove it: a slowed build B

Both builds are installed side by side in a scratch directory (BASE from ``git archive``, the
working tree as it is on disk; the compiled kernels are built for each), then one worker process
per build runs the workloads below, one call at a time, alternately: A B, B A, A B, ... so the
two builds see the same load. For each workload the ratio B / A of every pair is kept; the
report gives their median and a bootstrap 95% interval of that median. The gate fails (exit 1)
only when the whole interval lies above 1 + threshold: a regression that noise cannot explain.
A load that slows both builds alike moves both times of a pair and leaves the ratio alone, which
is what a comparison against a saved baseline (pytest-benchmark) cannot do.

Building needs what `pip install --no-build-isolation` needs: Cython, setuptools and wheel in
this environment (``pip install Cython setuptools wheel``); ``--keep DIR`` reuses the builds.

Workloads (random weights, one thread, built with the public layer API so any recent BASE runs
them): seq (GRU 128 -> 256, batch 1, 200 steps), cls (Embedding(2000, 64) -> BiLSTM(64) ->
Dense(2), batch 32, 50 steps), lstm64 (LSTM(256), batch 64, 20 steps), gen (Embedding(96, 64)
-> LSTM(256) x 2 -> Dense(96), 60 greedy tokens), long (LSTM(128 -> 256), batch 16, 1200 steps: a
call long enough to run in chunks of time steps, its input projection in blocks).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ("seq", "cls", "lstm64", "gen", "long")

WORKER = r'''
import sys, time
import numpy as np
import fastrnn
from fastrnn.layers import Dense, DirectionWeights, Embedding, Recurrent

fastrnn.set_num_threads(1)
rng = np.random.default_rng(0)


def rec(cell, i, h, bidirectional=False, **kw):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    r = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
    dirs = [DirectionWeights(r(G * h, i), r(G * h, h), r(G * h), r(G * h)) for _ in range(2 if bidirectional else 1)]
    return Recurrent(cell=cell, hidden_size=h, directions=dirs, **kw)


def dense(o, i, **kw):
    return Dense((rng.standard_normal((o, i)) * 0.1).astype(np.float32), np.zeros(o, np.float32), **kw)


def emb(v, e):
    return Embedding((rng.standard_normal((v, e)) * 0.5).astype(np.float32))


seq = fastrnn.Model([rec("gru", 128, 256)])
x_seq = rng.standard_normal((1, 200, 128)).astype(np.float32)
cls = fastrnn.Model([emb(2000, 64), rec("lstm", 64, 64, bidirectional=True, return_sequences=False),
                     dense(2, 128, activation="softmax")])
x_cls = rng.integers(1, 2000, (32, 50))
lstm64 = fastrnn.Model([rec("lstm", 256, 256)])
x_l64 = rng.standard_normal((64, 20, 256)).astype(np.float32)
long = fastrnn.Model([rec("lstm", 128, 256)])
x_long = rng.standard_normal((16, 1200, 128)).astype(np.float32)
gen = fastrnn.Model([emb(96, 64), rec("lstm", 64, 256), rec("lstm", 256, 256), dense(96, 256)],
                    vocabulary=fastrnn.Vocabulary([chr(32 + i) for i in range(96)]))
RUN = {"seq": lambda: seq.predict(x_seq), "cls": lambda: cls.predict(x_cls),
       "lstm64": lambda: lstm64.predict(x_l64), "long": lambda: long.predict(x_long),
       "gen": lambda: gen.generate([1, 2, 3], max_new_tokens=60, temperature=0)}
for fn in RUN.values():
    fn()
print("ready", flush=True)
for line in sys.stdin:
    name = line.strip()
    t0 = time.perf_counter()
    RUN[name]()
    print(time.perf_counter() - t0, flush=True)
'''


def build(source, target, log):
    """pip install the tree at ``source`` (no dependencies) into ``target``."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target,
           source]
    subprocess.run(cmd, check=True, stdout=log, stderr=log)


def export_ref(ref, dest):
    """The tree of git ``ref`` into ``dest`` (git archive)."""
    os.makedirs(dest)
    archive = os.path.join(dest + ".tar")
    subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", "-o", archive, ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest)
    os.remove(archive)


def export_worktree(dest):
    """The working tree (tracked and untracked files that git does not ignore) into ``dest``."""
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))


class Worker:
    def __init__(self, lib, cwd, env_extra):
        env = dict(os.environ, PYTHONPATH=lib, **env_extra)
        env.pop("FASTRNN_NUM_THREADS", None)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=cwd, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("a worker failed to start (see its error above)")

    def run(self, name):
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def interval(ratios, rng):
    """median of the ratios and a bootstrap 95% interval of it"""
    r = np.asarray(ratios)
    boot = np.median(rng.choice(r, (4000, len(r))), axis=1)
    return float(np.median(r)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.regress", description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="git ref of the baseline build A (the working tree is B)")
    ap.add_argument("--threshold", type=float, default=10.0, help="percent slower that counts (default 10)")
    ap.add_argument("--pairs", type=int, default=20, help="A/B pairs per workload (default 20)")
    ap.add_argument("-w", "--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--env-b", action="append", default=[], metavar="VAR=VALUE",
                    help="environment of build B's worker only (e.g. FASTRNN_SIMD=plain to prove the gate)")
    ap.add_argument("--keep", help="build into this directory and keep it (reused when it holds both builds)")
    args = ap.parse_args(argv)
    env_b = dict(item.split("=", 1) for item in args.env_b)

    tmp = args.keep or tempfile.mkdtemp(prefix="fastrnn-regress-")
    try:
        lib_a, lib_b = os.path.join(tmp, "lib-a"), os.path.join(tmp, "lib-b")
        with open(os.path.join(tmp, "build.log"), "a") as log:
            for lib, label, export in ((lib_a, f"A = {args.base}", lambda d: export_ref(args.base, d)),
                                       (lib_b, "B = the working tree", export_worktree)):
                if args.keep and os.path.isdir(lib):
                    continue
                src = lib + "-src"
                shutil.rmtree(src, ignore_errors=True)
                print(f"building {label} ...", flush=True)
                export(src)
                build(src, lib, log)
        a, b = Worker(lib_a, tmp, {}), Worker(lib_b, tmp, env_b)
        rng = np.random.default_rng(0)
        failed = []
        print(f"\nB / A time per call, {args.pairs} interleaved pairs each, one thread "
              f"(fail: the whole 95% interval above {1 + args.threshold / 100:.2f})")
        print(f"{'workload':<8} {'A median':>10} {'B median':>10} {'B / A':>7} {'95% interval':>16}  verdict")
        for w in args.workloads:
            ta, tb = [], []
            for i in range(args.pairs + 2):  # the first two pairs warm up
                first, second = (a, b) if i % 2 == 0 else (b, a)
                t_first, t_second = first.run(w), second.run(w)
                if i >= 2:
                    (ta if first is a else tb).append(t_first)
                    (tb if first is a else ta).append(t_second)
            mid, lo, hi = interval(np.array(tb) / np.array(ta), rng)
            verdict = "REGRESSION" if lo > 1 + args.threshold / 100 else ("faster" if hi < 1 else "ok")
            if verdict == "REGRESSION":
                failed.append(w)
            print(f"{w:<8} {statistics.median(ta) * 1e3:>8.2f}ms {statistics.median(tb) * 1e3:>8.2f}ms "
                  f"{mid:>7.3f} [{lo:6.3f}, {hi:6.3f}]  {verdict}", flush=True)
        a.close()
        b.close()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else 'PASS'} (CPU: {cpu()})")
    return 1 if failed else 0


def cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
