"""One model shared by many threads, and a long-running process loading models over and over.

- 8 threads calling predict on one model at once get exactly (bit for bit) what serial calls get,
  on every backend, starting from a freshly loaded model so the threads also race on the one-time
  weight packing; and with the threads spread over all backends at once.
- Callers passing different ``threads=`` counts at once get the same results as threads=1.
- 10,000 load / release cycles (every fourth with a predict) of a small native model leave memory, memory maps and
  file descriptors flat (measured in a fresh interpreter, growth bounded below).
"""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastrnn
from conftest import BACKENDS, COMPILED_BACKENDS
from helpers import random_recurrent

THREADS = 8
LEAK_CYCLES = 10_000
RSS_GROWTH_LIMIT = 8 * 2**20  # bytes over all cycles: a leak of 1 KB per cycle would show as 10 MB


def run_python(script, *args, cwd, timeout):
    """Run ``script`` in a fresh interpreter that imports this fastrnn (same sys.path; cwd away
    from the source tree, whose fastrnn/ has no compiled kernels)."""
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def save_models(folder):
    """A token model (Embedding -> biLSTM -> GRU -> Dense) and a feature model (GRU -> LSTM(proj))."""
    rng = np.random.default_rng(0)
    tokens = fastrnn.Model([
        fastrnn.Embedding(rng.standard_normal((30, 8)).astype(np.float32), name="emb"),
        random_recurrent(rng, "lstm", input_size=8, hidden_size=24, bidirectional=True, name="bilstm"),
        random_recurrent(rng, "gru", input_size=48, hidden_size=16, return_sequences=False, name="gru"),
        fastrnn.Dense(rng.standard_normal((30, 16)).astype(np.float32), np.zeros(30, np.float32), "softmax"),
    ])
    feats = fastrnn.Model([
        random_recurrent(rng, "gru", input_size=6, hidden_size=20, linear_before_reset=False, name="gru"),
        random_recurrent(rng, "lstm", input_size=20, hidden_size=12, proj_size=5, name="lstm"),
    ])
    paths = folder / "tokens.safetensors", folder / "features.safetensors"
    fastrnn.save(tokens, paths[0])
    fastrnn.save(feats, paths[1])
    return paths


def work_items(n):
    """n different calls (inputs, lengths, initial states) per model kind."""
    rng = np.random.default_rng(1)
    items = []
    for i in range(n):
        B, T = 1 + i % 4, 5 + 3 * i
        lengths = rng.integers(0, T + 1, B)
        h = (rng.standard_normal((1, B, 20)) * 0.5).astype(np.float32)
        c = (rng.standard_normal((1, B, 12)) * 0.5).astype(np.float32)
        hp = (rng.standard_normal((1, B, 5)) * 0.5).astype(np.float32)
        items.append((
            dict(x=rng.integers(0, 30, (B, T)), lengths=lengths),
            dict(x=rng.standard_normal((B, T, 6)).astype(np.float32), lengths=lengths,
                 initial_state=[h, (hp, c)], return_state=True),
        ))
    return items


def flatten(result):
    if isinstance(result, tuple):
        out, states = result
        return [out] + [a for s in states for a in (s if isinstance(s, tuple) else (s,))]
    return [result]


def run_threads(models, items, backends):
    """Every thread runs every item on ``backends[thread % len(backends)]``, all starting together."""
    results = [None] * THREADS
    errors = []
    start = threading.Barrier(THREADS)

    def work(t):
        try:
            start.wait()
            backend = backends[t % len(backends)]
            order = items[t % len(items):] + items[:t % len(items)]  # threads run different calls at once
            mine = {}
            for k, (tok, feat) in enumerate(order):
                key = (t % len(items) + k) % len(items)
                mine[key] = (flatten(models[0].predict(**tok, backend=backend)),
                             flatten(models[1].predict(**feat, backend=backend)))
            results[t] = mine
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is still running after 120 s"
    assert not errors, errors[0]
    return results


def serial(paths, items, backend):
    models = [fastrnn.load(p) for p in paths]
    return {k: (flatten(models[0].predict(**tok, backend=backend)), flatten(models[1].predict(**feat, backend=backend)))
            for k, (tok, feat) in enumerate(items)}


def assert_identical(got, want, what):
    for key in want:
        for part, (g, w) in enumerate(zip(got[key], want[key])):
            assert len(g) == len(w)
            for a, b in zip(g, w):
                assert np.array_equal(a, b), f"{what}: call {key}, model {part} differs from the serial result"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_threads_give_the_serial_results(tmp_path, backend):
    paths = save_models(tmp_path)
    items = work_items(6)
    want = serial(paths, items, backend)
    models = [fastrnn.load(p) for p in paths]  # fresh: the threads race on packing the weights
    for t, got in enumerate(run_threads(models, items, [backend])):
        assert_identical(got, want, f"{backend}, thread {t}")


def test_threads_on_all_backends_at_once(tmp_path):
    paths = save_models(tmp_path)
    items = work_items(4)
    want = {b: serial(paths, items, b) for b in BACKENDS}
    models = [fastrnn.load(p) for p in paths]
    for t, got in enumerate(run_threads(models, items, BACKENDS)):
        backend = BACKENDS[t % len(BACKENDS)]
        assert_identical(got, want[backend], f"{backend}, thread {t}")


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_callers_asking_for_different_thread_counts(backend):
    """Callers that each pass their own ``threads=`` at the same time: every round brings larger
    counts than before, so the shared worker pool is being resized while others are using it."""
    rng = np.random.default_rng(3)
    model = fastrnn.Model([random_recurrent(rng, "lstm", input_size=6, hidden_size=16, bidirectional=True)])
    x = rng.standard_normal((16, 12, 6)).astype(np.float32)  # 16 rows: split into blocks across workers
    want = model.predict(x, backend=backend, threads=1)
    errors = []
    for round_ in range(10):
        start = threading.Barrier(THREADS)

        def work(t):
            try:
                start.wait()
                got = model.predict(x, backend=backend, threads=2 + THREADS * round_ + t)
                if not np.array_equal(got, want):
                    errors.append(f"threads={2 + THREADS * round_ + t}: result differs from threads=1")
            except BaseException as exc:
                errors.append(f"threads={2 + THREADS * round_ + t}: {exc!r}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors[:3]


def test_load_release_cycles_do_not_leak(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "tiny.safetensors"
    fastrnn.save(fastrnn.Model([
        fastrnn.Embedding(rng.standard_normal((30, 4)).astype(np.float32)),
        random_recurrent(rng, "lstm", input_size=4, hidden_size=6, bidirectional=True),
        fastrnn.Dense(rng.standard_normal((3, 12)).astype(np.float32), None, "softmax"),
    ], vocabulary=fastrnn.Vocabulary([chr(97 + i) for i in range(26)])), path)
    script = textwrap.dedent("""
        import gc, json, os, sys, time
        import numpy as np
        import fastrnn

        path, cycles, backends = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
        x = np.random.default_rng(0).integers(0, 30, (2, 3))
        page = os.sysconf("SC_PAGE_SIZE")

        def usage():
            gc.collect()
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            with open("/proc/self/maps") as f:
                maps = sum(1 for _ in f)
            return rss, maps, len(os.listdir("/proc/self/fd"))

        def cycle(i):
            model = fastrnn.load(path, mmap=i % 2 == 0)  # memory-mapped and read
            if i % 4 == 0:  # a quarter of the models also pack their weights and run
                model.predict(x, backend=backends[i // 4 % len(backends)])

        for i in range(500):  # warm up: JIT, BLAS buffers, allocator pools
            cycle(i)
        before = usage()
        start = time.perf_counter()
        for i in range(cycles):
            cycle(i)
        seconds = time.perf_counter() - start
        after = usage()
        print(json.dumps({"before": before, "after": after, "seconds": seconds}))
    """)
    out = run_python(script, path, LEAK_CYCLES, ",".join(BACKENDS), cwd=tmp_path, timeout=300)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(report)
    (rss0, maps0, fds0), (rss1, maps1, fds1) = report["before"], report["after"]
    assert rss1 - rss0 < RSS_GROWTH_LIMIT, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB over {LEAK_CYCLES} cycles"
    assert maps1 - maps0 < 10, f"{maps1 - maps0} memory maps left behind (mmaps not released)"
    assert fds1 == fds0, f"{fds1 - fds0} file descriptors left open"


IDLE_SECONDS = 0.5
IDLE_CPU_LIMIT = 0.1  # CPU seconds the whole process may use while idle for IDLE_SECONDS


def test_no_thread_keeps_a_core_busy_after_a_call(tmp_path):
    """threads=2 runs on persistent workers and, at batch 1, on parts that spin at a barrier
    between steps. Once a call has returned nothing may keep running: over half a second of
    idling, the process (all its threads) uses almost no CPU. A worker left spinning would use
    the whole half second. In a fresh interpreter, so that no other library's threads count."""
    script = textwrap.dedent("""
        import sys, time
        import numpy as np
        import fastrnn
        from fastrnn.classify import bundled_classifier
        from fastrnn.generate import bundled_model
        sys.path.insert(0, sys.argv[1])
        from helpers import random_recurrent

        rng = np.random.default_rng(0)
        lstm = fastrnn.Model([random_recurrent(rng, "lstm", input_size=8, hidden_size=128)])
        char, langid = bundled_model(), bundled_classifier()
        calls = {
            "predict batch 64 (rows split)": lambda: lstm.predict(rng.standard_normal((64, 50, 8), np.float32), threads=2),
            "predict batch 1 (hidden units split)": lambda: lstm.predict(rng.standard_normal((1, 200, 8), np.float32), threads=2),
            "generate batch 1 (hidden units split)": lambda: char.generate("def ", max_new_tokens=100, seed=1, threads=2),
            "generate batch 8 (rows split)": lambda: char.generate(["a"] * 8, max_new_tokens=50, seed=1, threads=2),
            # classify returns a lazy generator: consume it, or nothing runs
            "classify": lambda: list(langid.classify(["house", "maison"] * 100, threads=2)),
        }
        for name, call in calls.items():
            call()
            c0 = time.process_time()
            time.sleep(float(sys.argv[2]))
            print(f"{name}\\t{time.process_time() - c0:.4f}")
    """)
    out = run_python(script, os.path.dirname(os.path.abspath(__file__)), IDLE_SECONDS, cwd=tmp_path, timeout=300)
    rows = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert len(rows) == 5, out.stdout
    for name, cpu in rows:
        assert float(cpu) < IDLE_CPU_LIMIT, f"{name}: {cpu} s of CPU while idle for {IDLE_SECONDS} s"
