"""Classification throughput on a Dask cluster vs one process (issue 16; never in CI).

    python bench/bench_dask.py --lines 100000 --repeats 1 --skip-cli   # a first look: about a minute
    python bench/bench_dask.py                 # 1,000,000 lines: 20-30 minutes (see below)

How long: the corpus is classified 2 x --repeats times through the API and, unless --skip-cli,
2 x --repeats + 1 times more through the command line, plus task-cost probes (about 300,000
lines and 10,000 tasks: half a minute); on a loaded 2-core machine one pass of 1,000,000 lines
takes 30-45 seconds through the API and several minutes through the command line (JSON lines
written: about 8 times the API's time), so the default run takes 20-30 minutes there, 3-5 with
--skip-cli. After the first round the run prints its own estimate of the time left. Ctrl-C stops it and removes the generated corpus (a
temporary folder, about 16 MB per million lines).

Run it as a script (not `python -m` from the repository root, which would import the source
tree's fastrnn/ without its compiled kernels): it needs `pip install .[bench]`.

What is measured (lines/s, best of --repeats, runs of the two sides interleaved A B A B):
1. One process: fastrnn.classify.classify over the file read line by line (threads = all cores).
2. LocalCluster, 2 worker processes x 1 thread: the same file as a dask Bag (read_text, 1 MiB
   blocks, read by the workers), fastrnn.dask.classify, the results streamed back to this process
   in order with fastrnn.dask.ordered (window 5), as a user of the API would consume them.
3. The command line end to end (reading, JSON lines written to /dev/null): `fastrnn classify FILE`
   against `fastrnn classify FILE --dask local:2` (includes starting and stopping the cluster).
4. Cost of one task: per-task scheduler overhead (10,000 no-op tasks) and, on one worker, the
   time of a partition of P lines for several P, fitted as  t(P) = overhead + P * per_line.
   The partition size that amortises the overhead to 5% is P = 19 * overhead / per_line.
5. N-machine estimate from those numbers (a model, not a measurement): each machine has the
   cores of this one; partitions of P lines; throughput = min(compute, scheduler, client), with
   compute = N * cores * P / t(P), scheduler = P / (scheduler seconds per task), and for the
   command line the client's own CPU per line (reading, sending, receiving, JSON: the CLI run
   in this process against the cluster, measured with process_time).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = {
    "en": "house window water morning little between through another because people",
    "fr": "maison fenêtre eau matin petit entre toujours pourquoi beaucoup gens",
    "de": "Haus Fenster Wasser Morgen klein zwischen immer warum viele Leute",
    "es": "casa ventana agua mañana pequeño entre siempre porque mucho gente",
    "it": "casa finestra acqua mattina piccolo sempre perché molto gente quando",
    "pt": "casa janela água manhã pequeno sempre porque muito gente quando",
    "nl": "huis raam water ochtend klein tussen altijd waarom veel mensen",
    "pl": "dom okno woda rano mały między zawsze dlaczego wiele ludzie",
    "sv": "hus fönster vatten morgon liten mellan alltid varför många folk",
}


def make_corpus(path, n, seed=0):
    """n lines of 1..4 words of one language (the bundled classifier's kind of input)."""
    rng = np.random.default_rng(seed)
    vocab = [w.split() for w in WORDS.values()]
    langs = rng.integers(0, len(vocab), n)
    counts = rng.integers(1, 5, n)
    picks = rng.integers(0, 10, (n, 4))
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = vocab[langs[i]]
            f.write(" ".join(words[j] for j in picks[i, : counts[i]]) + "\n")


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def single_process(path):
    """(lines, wall seconds, CPU seconds of this process)."""
    from fastrnn.classify import bundled_classifier, classify

    model = bundled_classifier()
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in classify(model, (line.rstrip("\n") for line in f)))
    return n, time.perf_counter() - t0, time.process_time() - c0


def worker_cpu(client):
    import psutil

    return sum(client.run(lambda: sum(psutil.Process().cpu_times()[:2])).values())


def on_cluster(client, path):
    """(lines, wall seconds, CPU seconds of the workers + this process: client and scheduler)."""
    import dask.bag as db

    import fastrnn.dask

    w0 = worker_cpu(client)
    t0, c0 = time.perf_counter(), time.process_time()
    bag = db.read_text(path, blocksize=2**20, encoding="utf-8").map(str.rstrip)
    n = sum(1 for _ in fastrnn.dask.ordered(fastrnn.dask.classify(bag), client=client, window=5))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n, wall, cpu + worker_cpu(client) - w0


def cli(path, dask=None):
    cmd = [sys.executable, "-m", "fastrnn.cli", "classify", path]
    if dask:
        cmd += ["--dask", dask]
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        subprocess.run(cmd, stdout=null, check=True)
    return time.perf_counter() - t0


def cli_client_cpu(address, path):
    """CPU seconds of this process (the CLI's client, and the LocalCluster's scheduler, which
    lives here) while `fastrnn classify FILE --dask ADDRESS` runs in it: reading, sending,
    receiving, JSON. The ceiling of the command line however many workers there are."""
    import contextlib

    from fastrnn.cli import main

    c0 = time.process_time()
    with open(os.devnull, "w", encoding="utf-8") as null, contextlib.redirect_stdout(null):
        assert main(["classify", path, "--dask", address]) == 0
    return time.process_time() - c0


def noop(x):
    return x


def scheduler_overhead(client, tasks=10_000):
    """Per no-op task: (wall seconds with all worker threads busy, CPU seconds of the workers +
    this process, where the LocalCluster's scheduler and the client live)."""
    client.gather(client.map(noop, range(200), pure=False))  # warm up
    w0 = worker_cpu(client)
    t0, c0 = time.perf_counter(), time.process_time()
    client.gather(client.map(noop, range(tasks), pure=False))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall / tasks, (cpu + worker_cpu(client) - w0) / tasks


def partition_costs(client, sizes, lines, rounds=3):
    """Per partition of P lines sent to one worker, one at a time, P in sizes: (wall seconds,
    CPU seconds of the worker + this process), each the minimum over rounds."""
    import fastrnn.dask

    ref = fastrnn.dask.model_ref(None, "langid")
    worker = next(iter(client.nthreads()))
    client.submit(fastrnn.dask.classify_partition, lines[:100], ref, {}, workers=[worker], pure=False).result()
    out = {}
    for p in sizes:
        chunk = lines[:p]
        reps = max(1, 20000 // p)
        walls, cpus = [], []
        for _ in range(rounds):
            w0 = worker_cpu(client)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                f = client.submit(fastrnn.dask.classify_partition, chunk, ref, {}, workers=[worker], pure=False)
                f.result()
                f.release()
            walls.append((time.perf_counter() - t0) / reps)
            cpus.append((time.process_time() - c0 + worker_cpu(client) - w0) / reps)
        out[p] = (min(walls), min(cpus))
    return out


def fit(costs, which):
    sizes = np.array(sorted(costs), dtype=float)
    times = np.array([costs[int(p)][which] for p in sizes])
    per_line, overhead = np.polyfit(sizes, times, 1)
    return float(overhead), float(per_line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="The default run takes 20-30 minutes on a 2-core machine (3-5 with --skip-cli); "
                                        "--lines 100000 --repeats 1 --skip-cli about a minute. Ctrl-C stops it and removes the generated corpus.")
    ap.add_argument("--lines", type=int, default=1_000_000,
                    help="lines of the generated corpus (default 1,000,000, about 16 MB; the run's time is "
                         "proportional to it)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of each measurement, the best kept (default 2)")
    ap.add_argument("--skip-cli", action="store_true",
                    help="leave out the command-line runs (half of the default run's time)")
    args = ap.parse_args(argv)
    if args.lines < 20_000 or args.repeats < 1:
        ap.error("--lines must be at least 20,000 (the task-cost probes read 20,000 lines) and --repeats at least 1")
    tmp = tempfile.mkdtemp(prefix="fastrnn-bench-dask-")
    try:
        run(args, tmp)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        print("\ninterrupted: the generated corpus is removed", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp):
    from distributed import Client

    import fastrnn.dask

    import fastrnn

    backend = fastrnn.get_backend().name
    if backend == "numpy":
        sys.exit(f"fastrnn imported from {os.path.dirname(fastrnn.__file__)} has no compiled kernels: "
                 "install it (pip install .[bench]) and run this file as a script")
    cores = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu_name()}, {cores} cores; Python {platform.python_version()}; fastrnn backend {backend}; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    path = os.path.join(tmp, "corpus.txt")
    print(f"writing the corpus ({args.lines:,} lines) in {tmp}", flush=True)
    make_corpus(path, args.lines)
    print(f"corpus: {args.lines:,} lines, {os.path.getsize(path) / 2**20:.1f} MiB in {tmp} (removed at the end, "
          "or on Ctrl-C)", flush=True)

    cluster = fastrnn.dask.local_cluster(2, threads_per_worker=1)
    client = Client(cluster)
    try:
        measure(args, path, client, cores)
    finally:
        client.close()
        cluster.close()


def measure(args, path, client, cores):
    import fastrnn.dask

    single, spread, single_cpu, spread_cpu = [], [], [], []
    started = time.perf_counter()
    for r in range(args.repeats):  # interleaved: A B A B
        n, t, c = single_process(path)
        single.append(n / t)
        single_cpu.append(c / n)
        n2, t2, c2 = on_cluster(client, path)
        assert n2 == n
        spread.append(n2 / t2)
        spread_cpu.append(c2 / n)
        print(f"  round {r + 1}: one process {n / t:,.0f} lines/s ({c / n * 1e6:.1f} CPU-us/line), "
              f"LocalCluster(2) {n2 / t2:,.0f} lines/s ({c2 / n * 1e6:.1f} CPU-us/line, workers + client "
              f"+ scheduler); load average {os.getloadavg()[0]:.1f}", flush=True)
        if r == 0:  # passes left: API rounds, CLI runs (each about 8 API passes: JSON out), probes
            passes = 2 * (args.repeats - 1) + (0 if args.skip_cli else 8 * (2 * args.repeats + 1)) + 300_000 / n
            left = (time.perf_counter() - started) / 2 * passes + 30  # + the scheduler probe
            when = f"{left / 60:.0f} more minutes" if left >= 120 else f"{left:.0f} more seconds"
            print(f"  about {when} at this rate (--lines and --repeats make it shorter)", flush=True)
    best_single, best_spread = max(single), max(spread)
    cpu_single, cpu_spread = min(single_cpu), min(spread_cpu)

    sched_wall, sched = scheduler_overhead(client)
    with open(path, encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(20000)]
    costs = partition_costs(client, [100, 500, 2000, 5000, 20000], lines)
    overhead, per_line = fit(costs, 1)  # CPU: what a dedicated core would spend (robust to other load)
    wall_overhead, wall_per_line = fit(costs, 0)
    client_per_line = None
    if not args.skip_cli:
        client_per_line = cli_client_cpu(client.scheduler.address, path) / args.lines

    cli_single = cli_spread = None
    if not args.skip_cli:
        cli_single = min(cli(path) for _ in range(args.repeats))
        cli_spread = min(cli(path, "local:2") for _ in range(args.repeats))

    print()
    print(f"| {args.lines:,} lines, bundled langid GRU | lines/s (wall) | ratio | CPU-us per line (all processes) |")
    print("|---|---|---|---|")
    print(f"| API, one process (threads={cores}) | {best_single:,.0f} | 1.00 | {cpu_single * 1e6:.1f} |")
    print(f"| API, LocalCluster 2 workers x 1 thread (Bag, results streamed back in order) | {best_spread:,.0f} | "
          f"{best_spread / best_single:.2f} | {cpu_spread * 1e6:.1f} |")
    if cli_single:
        print(f"| CLI `fastrnn classify` (JSON lines out) | {args.lines / cli_single:,.0f} | 1.00 | |")
        print(f"| CLI `--dask local:2` (with cluster start, ~2-3 s) | {args.lines / cli_spread:,.0f} | "
              f"{cli_single / cli_spread:.2f} | |")
    print()
    print(f"scheduler overhead: {sched_wall * 1e3:.2f} ms wall, {sched * 1e3:.2f} ms CPU per no-op task "
          f"(10,000 tasks, {cores} worker threads)")
    print("one partition on one worker (submit -> result), wall and CPU (worker + client + scheduler):")
    for p in sorted(costs):
        wall, cpu = costs[p]
        print(f"  P = {p:>6,} lines: {wall * 1e3:8.2f} ms wall, {cpu * 1e3:8.2f} ms CPU  ({p / cpu:,.0f} lines per CPU-s)")
    print(f"fit (CPU): t(P) = {overhead * 1e3:.2f} ms + P x {per_line * 1e6:.2f} us;  "
          f"(wall): {wall_overhead * 1e3:.2f} ms + P x {wall_per_line * 1e6:.2f} us")
    amortise = 19 * overhead / per_line
    print(f"partition size that amortises the overhead to 5%: P >= {amortise:,.0f} lines")
    if client_per_line:
        print(f"CLI client (+ scheduler) CPU: {client_per_line * 1e6:.2f} us per line "
              f"(ceiling {1 / client_per_line:,.0f} lines/s)")
    print()
    P = max(5000, int(round(amortise, -3)))  # the CLI's default, or larger if the overhead needs it
    print(f"| machines ({cores} cores each), P = {P:,} | API lines/s (estimate) | CLI lines/s (estimate) |")
    print("|---|---|---|")
    for machines in (1, 2, 4, 8, 16, 32, 64):
        compute = machines * cores * P / (overhead + P * per_line)
        scheduler = P / sched
        api = min(compute, scheduler)
        cli_rate = min(api, 1 / client_per_line) if client_per_line else float("nan")
        print(f"| {machines} | {api:,.0f} | {cli_rate:,.0f} |")
    print("(compute = N x cores x P / t(P) with the CPU fit; capped by the scheduler at P / its CPU per task and,"
          " for the CLI, by the client's CPU per line)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
