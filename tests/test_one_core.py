"""threads=1 is one core (issue 23): no call of predict / classify / generate, float32 or int8,
may start another library's threads. A NumPy product on these paths used to run on OpenBLAS's
threads, which then spun on the other cores while fastrnn computed (1.85 cores busy at
threads=1), and which the batch-1 split took for contention. Models with a Conv1D or an
attention layer are checked too: their products (im2col @ filters, q k^T, weights v) ran on
NumPy's matmul before they went through the backend's packed matmul.

Measured in a fresh interpreter with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS
unset (BLAS free to use every core), over a run of threads=1 calls, first calls included (where
plans, tables and packed weights are made): the process's CPU time over the wall time (cores
busy), and over the calling thread's own CPU time (which shows another thread's work even when a
loaded machine gives every thread less than a core). Both bounds are generous (1.3) and cannot
flake under load: CPU time never exceeds wall time times the threads that actually ran, and with
no other thread running the process's CPU time is the calling thread's.
"""
import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))
MAX_CORES = 1.3

SCRIPT = """
    import sys, time
    import numpy as np
    import fastrnn
    from fastrnn.graph import Graph, Input, Node
    from fastrnn.layers import Attention, Conv1D, Dense, Embedding, GlobalPooling1D
    sys.path.insert(0, sys.argv[1])
    from helpers import random_recurrent

    rng = np.random.default_rng(0)
    V, E, H = 96, 48, 128  # big enough that a BLAS product of these shapes would use threads
    lm = fastrnn.Model([Embedding(rng.standard_normal((V, E)).astype(np.float32)),
                        random_recurrent(rng, "lstm", input_size=E, hidden_size=H, scale=0.1),
                        random_recurrent(rng, "lstm", input_size=H, hidden_size=H, scale=0.1),
                        Dense((rng.standard_normal((V, H)) * 0.1).astype(np.float32), np.zeros(V, np.float32))])
    cls = fastrnn.Model([Embedding(rng.standard_normal((V, E)).astype(np.float32)),
                         random_recurrent(rng, "gru", input_size=E, hidden_size=H, scale=0.1, bidirectional=True,
                                          return_sequences=False),
                         Dense((rng.standard_normal((3, 2 * H)) * 0.1).astype(np.float32), np.zeros(3, np.float32),
                               activation="softmax")])
    # Conv1D (im2col then one product) and attention (two products of activations): BLAS-sized
    conv = fastrnn.Model([Embedding(rng.standard_normal((V, E)).astype(np.float32)),
                          Conv1D((rng.standard_normal((H, E, 3)) * 0.1).astype(np.float32), np.zeros(H, np.float32),
                                 padding="same", activation="relu"),
                          random_recurrent(rng, "gru", input_size=H, hidden_size=H, scale=0.1, return_sequences=False),
                          Dense((rng.standard_normal((3, H)) * 0.1).astype(np.float32), np.zeros(3, np.float32),
                                activation="softmax")])
    att = fastrnn.Model(graph=Graph(
        [Input("ids", (None,), "int64")],
        [Node("emb", Embedding(rng.standard_normal((V, E)).astype(np.float32), mask_zero=True), ["ids"]),
         Node("lstm", random_recurrent(rng, "lstm", input_size=E, hidden_size=H, scale=0.1), ["emb"]),
         Node("att", Attention(use_causal_mask=True), ["lstm", "lstm"]),
         Node("pool", GlobalPooling1D(), ["att"]),
         Node("out", Dense((rng.standard_normal((3, H)) * 0.1).astype(np.float32), np.zeros(3, np.float32),
                           activation="softmax"), ["pool"])],
        ["out"]))
    ids = rng.integers(0, V, (8, 60))
    docs = [list(rng.integers(0, V, int(n))) for n in rng.integers(5, 80, 40)]

    calls = {
        "generate": lambda: lm.generate([1, 2, 3], max_new_tokens=60, seed=0, threads=1),
        "generate int8 weights": lambda: lm.generate([1, 2, 3], max_new_tokens=60, seed=0, weights="int8", threads=1),
        "predict": lambda: lm.predict(ids, threads=1),
        "predict batch 1": lambda: lm.predict(ids[:1], threads=1),
        "classify": lambda: list(cls.classify(docs, threads=1)),
        "int8 predict": lambda: lm.quantize("int8").predict(ids, threads=1),
        "int8 generate": lambda: lm.quantize("int8").generate([1, 2, 3], max_new_tokens=60, seed=0, threads=1),
        "int8 classify": lambda: list(cls.quantize("int8").classify(docs, threads=1)),
        "conv predict": lambda: conv.predict(ids, threads=1),
        "conv classify": lambda: list(conv.classify(docs, threads=1)),
        "int8 conv predict": lambda: conv.quantize("int8").predict(ids, threads=1),
        "attention predict": lambda: att.predict(ids, threads=1),
        "attention classify": lambda: list(att.classify(docs, threads=1)),
        "int8 attention predict": lambda: att.quantize("int8").predict(ids, threads=1),
    }
    for name, call in calls.items():
        wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        for _ in range(3):
            call()
        wall, cpu, own = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own
        print(f"{name}: {cpu / wall:.2f} cores, {cpu / own:.2f} x the calling thread's CPU time "
              f"({cpu:.3f} s CPU, {own:.3f} s of it on the calling thread, over {wall:.3f} s)")
"""


def test_threads_1_keeps_one_core_busy(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "FASTRNN_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), TESTS], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if " cores, " in line]
    assert len(rows) == 14, out.stdout
    for line in rows:
        name, rest = line.split(": ", 1)
        cores, own = float(rest.split()[0]), float(rest.split(", ")[1].split()[0])
        assert cores <= MAX_CORES, f"{name}: threads=1 kept {cores} cores busy\n{out.stdout}"
        # under load the line above can pass with a second thread busy (every thread gets less
        # than a core); other threads' CPU time shows it anyway
        assert own <= MAX_CORES, f"{name}: other threads used CPU time during threads=1 calls\n{out.stdout}"
