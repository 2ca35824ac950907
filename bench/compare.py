"""Side-by-side comparison of fastrnn, PyTorch and ONNX Runtime on the standard workloads (their
models in bench/models.py, the figures in docs/performance.md), in one process, same thread count,
medians over repeats.

    python -m bench.compare                       # all workloads, 1 and 2 threads
    python -m bench.compare -w gen512 cls -t 1    # a subset
    python -m bench.compare --plot ratios.png     # also draw the ratios (needs matplotlib)
    python -m bench.compare -w lstm_b64 lstm_b1 cls gen512 -t 1 2   # the int8 workloads of issue 14

Every workload also runs fastrnn's int8 engine (``model.quantize("int8")``; predict workloads
also its bfloat16 engine, ``model.quantize("bfloat16")``) and, where the model
exports to ONNX, onnxruntime's int8 (``onnxruntime.quantization.quantize_dynamic`` of the same
exported model, QInt8 weights), in the same process and time window; "x ort8" is fastrnn int8's
speed-up over onnxruntime int8. PyTorch's int8 is ``torch.ao.quantization.quantize_dynamic`` of
the module's nn.LSTM and nn.Linear (qint8 weights, dynamic activations; "pytorch i8").
bfloat16 (``--bf16``): by default timed only where the CPU has AVX512_BF16; elsewhere fastrnn's
bfloat16 runs a plain-C emulation (same bits, tens of times slower than float32) and the column
reads "no bf16" unless ``--bf16 on`` asks for it anyway.

Peers that are not installed are reported as "not installed", never silently dropped.
Every ratio compares runs made in this process a few seconds apart: absolute times drift on a
shared machine, ratios hold. Models have random weights (speed does not depend on their values).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import fastrnn

from .models import VOCAB, CharLSTM, ClsModel

WORKLOADS = ("gen256", "gen512", "batchgen", "cls", "seq", "lstm_b64", "lstm_b1", "startup")
UNITS = {"gen256": "us/token", "gen512": "us/token", "batchgen": "tokens/s", "cls": "seq/s", "seq": "us/step",
         "lstm_b64": "ms", "lstm_b1": "us/step", "startup": "s"}
HIGHER_IS_BETTER = {"batchgen", "cls"}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_time(fn, repeats, warmup_s=0.3, min_total_s=0.5, max_runs=200):
    """Median seconds per call of fn. Every engine is measured the same way:
    1. an idle pause, so that the previous engine's worker threads stop spinning (PyTorch's
       OpenMP threads, ONNX Runtime's intra-op threads and OpenBLAS's spin after a run and would
       take the second core);
    2. warm-up calls for at least warmup_s: one-time work (packing, tables, sessions) is done, and
       the cores are busy again (on this VM a core that was idle runs the next ~0.1 s slowly,
       which a single warm-up call followed by a pause would leave in the timed runs);
    3. at least `repeats` timed calls and at least min_total_s of them (at most max_runs)."""
    time.sleep(0.3)
    t_end = time.perf_counter() + warmup_s
    fn()
    while time.perf_counter() < t_end:
        fn()
    times, total = [], 0.0  # a running total: nothing but fn touches memory between calls
    while len(times) < repeats or (total < min_total_s and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return statistics.median(times)


PAIR_WARM_S = 0.04


def paired_times(fast, peer, repeats, min_total_s=1.0, max_pairs=60):
    """fastrnn int8 against onnxruntime int8, interleaved (fast, peer, peer, fast, ...) so that
    both see the same load: (median s of fast, median s of peer, median of the per-pair speed-ups
    peer / fast, (2.5%, 97.5%) bootstrap interval of that median).

    Each timed call follows untimed calls of the same engine lasting at least PAIR_WARM_S:
    onnxruntime's intra-op threads keep spinning for 10-30 ms after a run (measured with 2
    threads: fastrnn's 2-thread call right after one took 42 ms, 27 ms after a 30 ms pause), and
    on this VM a call that follows 50 ms of other work (or of sleep) runs 10-20% slower than one
    that follows its own kind. Timed back to back, the engine that follows would pay for the
    other one; so each engine is timed as in a process that runs only it."""
    time.sleep(0.3)
    for fn in (fast, peer, fast, peer):
        fn()
    tf, tp, total = [], [], 0.0
    while len(tf) < max(repeats, 9) or (total < min_total_s and len(tf) < max_pairs):
        order = ((fast, tf), (peer, tp)) if len(tf) % 2 == 0 else ((peer, tp), (fast, tf))
        for fn, times in order:
            t_end = time.perf_counter() + PAIR_WARM_S
            fn()
            while time.perf_counter() < t_end:
                fn()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            total += times[-1]
    ratios = np.array(tp) / np.array(tf)
    boot = np.median(np.random.default_rng(0).choice(ratios, (2000, len(ratios))), axis=1)
    return statistics.median(tf), statistics.median(tp), float(np.median(ratios)), (
        float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))


def try_import(name):
    try:
        return __import__(name)
    except ImportError:
        return None


torch = try_import("torch")
ort = try_import("onnxruntime")
onnx = try_import("onnx")


def cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


BF16 = "auto"  # --bf16: auto (time it where the CPU has avx512_bf16), on, off


def time_bf16():
    return BF16 == "on" or (BF16 == "auto" and cpu_has("avx512_bf16"))


def torch_int8(module):
    """PyTorch's own int8 inference: dynamic quantization of the nn.LSTM and nn.Linear modules
    (qint8 weights, activations quantized per call), or None without torch.ao."""
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = module if list(module.children()) else torch.nn.Sequential(module)  # the root is not swapped
        return quantize_dynamic(wrapped, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8).eval()


def set_threads(n):
    if hasattr(fastrnn, "set_num_threads"):
        fastrnn.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def ort_int8(path):
    """onnxruntime's dynamic int8 model of the exported file (QInt8 weights), made once."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path[:-5] + ".int8.onnx"
    if not os.path.exists(out):
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    return out


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# -- models ---------------------------------------------------------------------------------
def build(kind, hidden=None):
    torch.manual_seed(0)
    if kind == "char":
        module = CharLSTM(hidden).eval()
        vocab = fastrnn.Vocabulary([chr(32 + i) for i in range(VOCAB)])
        return module, fastrnn.from_torch(module, vocabulary=vocab)
    module = ClsModel().eval()
    return module, fastrnn.from_torch(module, return_sequences=False, activation="softmax")


def torch_sample(logits, temperature, gen):
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)


# -- workloads --------------------------------------------------------------------------------
def bench_gen(hidden, threads, repeats, tmp, batch=1, tokens=300):
    module, model = build("char", hidden)
    prompts = [[1, 2, 3, 4] for _ in range(batch)]
    results = {}

    def run_fastrnn():
        model.generate(prompts if batch > 1 else prompts[0], max_new_tokens=tokens, temperature=0.8, seed=0)

    t = median_time(run_fastrnn, repeats)
    results["fastrnn"] = t

    def run_fastrnn_int8():
        model.generate(prompts if batch > 1 else prompts[0], max_new_tokens=tokens, temperature=0.8, seed=0,
                       weights="int8")


    if torch is None:
        results["pytorch"] = results["pytorch_int8"] = None
    else:
        gen = torch.Generator().manual_seed(0)

        def torch_runner(net):
            @torch.no_grad()
            def run_torch():
                h = torch.zeros(2, batch, hidden)
                c = torch.zeros(2, batch, hidden)
                ids = torch.tensor(prompts)
                logits, h, c = net(ids, h, c)
                nxt = torch_sample(logits[:, -1], 0.8, gen)
                for _ in range(tokens - 1):
                    logits, h, c = net(nxt, h, c)
                    nxt = torch_sample(logits[:, -1], 0.8, gen)
            return run_torch

        results["pytorch"] = median_time(torch_runner(module), max(1, repeats // 2))
        tq = torch_int8(module)
        results["pytorch_int8"] = None if tq is None else median_time(torch_runner(tq), max(1, repeats // 2))

    if ort is None or onnx is None or torch is None:
        results["onnxruntime"] = None
    else:
        path = os.path.join(tmp, f"char{hidden}_{batch}.onnx")
        if not os.path.exists(path):
            torch.onnx.export(module, (torch.zeros(batch, 1, dtype=torch.long), torch.zeros(2, batch, hidden),
                                       torch.zeros(2, batch, hidden)), path, dynamo=False,
                              input_names=["ids", "h0", "c0"], output_names=["logits", "h", "c"],
                              dynamic_axes={"ids": {1: "T"}})
        rng = np.random.default_rng(0)

        def ort_runner(sess):
            def run_ort():
                h = np.zeros((2, batch, hidden), np.float32)
                c = np.zeros((2, batch, hidden), np.float32)
                ids = np.array(prompts, np.int64)
                for _ in range(tokens):
                    logits, h, c = sess.run(None, {"ids": ids, "h0": h, "c0": c})
                    z = logits[:, -1] / 0.8
                    p = np.exp(z - z.max(-1, keepdims=True))
                    p /= p.sum(-1, keepdims=True)
                    ids = np.array([[rng.choice(VOCAB, p=row)] for row in p], np.int64)
            return run_ort

        results["onnxruntime"] = median_time(ort_runner(ort_session(path, threads)), max(1, repeats // 2))
        results["fastrnn_int8"], results["onnxruntime_int8"], ratio, ci = paired_times(
            run_fastrnn_int8, ort_runner(ort_session(ort_int8(path), threads)), repeats)
    if results.get("onnxruntime_int8") is None:
        results["fastrnn_int8"] = median_time(run_fastrnn_int8, repeats)
        ratio = ci = None
    if batch == 1:
        out = {k: None if v is None else v / tokens * 1e6 for k, v in results.items()}
    else:
        out = {k: None if v is None else batch * tokens / v for k, v in results.items()}
    out["int8_speedup"], out["int8_ci"] = ratio, ci
    return out


def bench_cls(threads, repeats, tmp):
    module, model = build("cls")
    ids = np.random.default_rng(0).integers(1, 20000, (64, 100))
    out = {"fastrnn": 64 / median_time(lambda: model.predict(ids), repeats)}
    q = model.quantize("int8")
    if time_bf16():
        qb = model.quantize("bfloat16")
        out["fastrnn_bf16"] = 64 / median_time(lambda: qb.predict(ids), repeats)
    else:
        out["fastrnn_bf16"] = None
    if torch is None:
        out["pytorch"] = out["pytorch_int8"] = None
    else:
        t_ids = torch.from_numpy(ids)
        tq = torch_int8(module)
        out["pytorch"] = 64 / median_time(torch.no_grad()(lambda: module(t_ids)), repeats)
        out["pytorch_int8"] = None if tq is None else 64 / median_time(torch.no_grad()(lambda: tq(t_ids)), repeats)
    if ort is None or onnx is None or torch is None:
        out["onnxruntime"] = None
    else:
        path = os.path.join(tmp, "cls.onnx")
        if not os.path.exists(path):
            torch.onnx.export(module, (torch.from_numpy(ids),), path, dynamo=False, input_names=["ids"],
                              output_names=["probs"], dynamic_axes={"ids": {0: "B", 1: "T"}})
        sess = ort_session(path, threads)
        out["onnxruntime"] = 64 / median_time(lambda: sess.run(None, {"ids": ids}), repeats)
        # the same exported file through fastrnn.onnx.InferenceSession (it runs the imported Model),
        # its calls interleaved with the native Model's (A B A B ...): the ratio is the median of
        # the per-pair ratios, which a busy machine disturbs least
        import fastrnn.onnx

        fsess = fastrnn.onnx.InferenceSession(path)
        pair = (lambda: model.predict(ids), lambda: fsess.run(None, {"ids": ids}))
        median_time(lambda: [f() for f in pair], 1)  # warm-up, as every engine gets
        times = ([], [])
        for _ in range(max(20, 4 * repeats)):
            for f, t in zip(pair, times):
                t0 = time.perf_counter()
                f()
                t.append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(*times)]
        out["fastrnn_onnx_session"] = 64 / statistics.median(times[1])
        out["session_vs_native"] = statistics.median(ratios)
        sess8 = ort_session(ort_int8(path), threads)
        t8, t_ort8, out["int8_speedup"], out["int8_ci"] = paired_times(
            lambda: q.predict(ids), lambda: sess8.run(None, {"ids": ids}), repeats)
        out["fastrnn_int8"], out["onnxruntime_int8"] = 64 / t8, 64 / t_ort8
    if "fastrnn_int8" not in out:
        out["fastrnn_int8"] = 64 / median_time(lambda: q.predict(ids), repeats)
    return out


def bench_seq(threads, repeats, tmp):
    torch.manual_seed(0)
    module = torch.nn.GRU(128, 512, batch_first=True).eval()
    model = fastrnn.from_torch(module)
    x = np.random.default_rng(0).standard_normal((1, 1000, 128)).astype(np.float32)
    out = {"fastrnn": median_time(lambda: model.predict(x), repeats) / 1000 * 1e6}
    q = model.quantize("int8")
    out["fastrnn_int8"] = median_time(lambda: q.predict(x), repeats) / 1000 * 1e6
    if time_bf16():
        qb = model.quantize("bfloat16")
        out["fastrnn_bf16"] = median_time(lambda: qb.predict(x), repeats) / 1000 * 1e6
    else:
        out["fastrnn_bf16"] = None
    out["pytorch_int8"] = None  # quantize_dynamic has no int8 GRU either
    xt = torch.from_numpy(x)

    @torch.no_grad()
    def run_torch():
        module(xt)

    out["pytorch"] = median_time(run_torch, repeats) / 1000 * 1e6
    if ort is None or onnx is None:
        out["onnxruntime"] = None
    else:
        path = os.path.join(tmp, "seq.onnx")
        if not os.path.exists(path):
            torch.onnx.export(module, (xt,), path, dynamo=False, input_names=["x"], output_names=["y", "h"])
        sess = ort_session(path, threads)
        out["onnxruntime"] = median_time(lambda: sess.run(None, {"x": x}), repeats) / 1000 * 1e6
        # quantize_dynamic has no int8 GRU: its "int8" model still runs the GRU in float32
        sess8 = ort_session(ort_int8(path), threads)
        t8, t_ort8, out["int8_speedup"], out["int8_ci"] = paired_times(
            lambda: q.predict(x), lambda: sess8.run(None, {"x": x}), repeats)
        out["fastrnn_int8"], out["onnxruntime_int8"] = t8 / 1000 * 1e6, t_ort8 / 1000 * 1e6
    return out


def bench_lstm(batch, steps, threads, repeats, tmp):
    """LSTM(512) x 2 layers on (batch, steps, 512) features (issue 14's table): batch 64 -> ms
    per call, batch 1 -> us per step."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(512, 512, num_layers=2, batch_first=True).eval()
    model = fastrnn.from_torch(module)
    q = model.quantize("int8")
    x = np.random.default_rng(0).standard_normal((batch, steps, 512)).astype(np.float32)
    unit = 1e3 if batch > 1 else 1e6 / steps
    out = {"fastrnn": median_time(lambda: model.predict(x), repeats) * unit, "fastrnn_bf16": None}
    if time_bf16():
        qb = model.quantize("bfloat16")
        out["fastrnn_bf16"] = median_time(lambda: qb.predict(x), repeats) * unit
    xt = torch.from_numpy(x)
    tq = torch_int8(module)
    out["pytorch"] = median_time(torch.no_grad()(lambda: module(xt)), repeats) * unit
    out["pytorch_int8"] = None if tq is None else median_time(torch.no_grad()(lambda: tq(xt)), repeats) * unit
    if ort is None or onnx is None:
        out["onnxruntime"] = out["onnxruntime_int8"] = None
        out["fastrnn_int8"] = median_time(lambda: q.predict(x), repeats) * unit
    else:
        path = os.path.join(tmp, f"lstm512_{batch}.onnx")
        if not os.path.exists(path):
            torch.onnx.export(module, (xt,), path, dynamo=False, input_names=["x"], output_names=["y", "h", "c"])
        sess = ort_session(path, threads)
        out["onnxruntime"] = median_time(lambda: sess.run(None, {"x": x}), repeats) * unit
        sess8 = ort_session(ort_int8(path), threads)
        t8, t_ort8, out["int8_speedup"], out["int8_ci"] = paired_times(
            lambda: q.predict(x), lambda: sess8.run(None, {"x": x}), repeats)
        out["fastrnn_int8"], out["onnxruntime_int8"] = t8 * unit, t_ort8 * unit
    return out


def bench_startup(threads, repeats, tmp):
    """Wall time and peak RSS of `fastrnn generate -n 1` (bundled model) vs `python -c 'import torch'`."""
    env = dict(os.environ, FASTRNN_NUM_THREADS=str(threads))

    def run(cmd):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=tmp)
        return time.perf_counter() - t0

    fast_cmd = [sys.executable, "-m", "fastrnn.cli", "generate", "-n", "1", "--seed", "1", "--prompt", "a"]
    t_fast = statistics.median(run(fast_cmd) for _ in range(repeats))
    # peak RSS of the fastrnn command alone: measured by a fresh parent that runs only it
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *fast_cmd], check=True, capture_output=True, text=True,
                         env=env, cwd=tmp)
    peak_fast = int(out.stdout.strip()) / 1024  # MB
    t_torch = statistics.median(run([sys.executable, "-c", "import torch"]) for _ in range(repeats)) if torch else None
    return {"fastrnn": t_fast, "pytorch": t_torch, "onnxruntime": None, "fastrnn_peak_mb": peak_fast}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("-w", "--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS,
                    help="the workloads to run (default: all)")
    ap.add_argument("-t", "--threads", nargs="+", type=int, default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("-r", "--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    ap.add_argument("--plot", metavar="PNG", help="write a bar chart of the ratios to this PNG (needs matplotlib: "
                                                  "pip install \".[bench]\")")
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="time fastrnn's bfloat16 engine: auto = only where the CPU has AVX512_BF16")
    args = ap.parse_args(argv)
    if args.plot:  # say it now, not after the whole run
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--plot needs matplotlib: pip install matplotlib (or pip install \".[bench]\")")
    global BF16
    BF16 = args.bf16

    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); fastrnn {fastrnn.__version__} "
          f"backend={fastrnn.get_backend().name}; torch {getattr(torch, '__version__', 'not installed')}; "
          f"onnxruntime {getattr(ort, '__version__', 'not installed')}; "
          f"AVX512_BF16 {'yes' if cpu_has('avx512_bf16') else 'no'}; load average {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            set_threads(threads)
            for w in args.workloads:
                if w in ("gen256", "gen512"):
                    res = bench_gen(int(w[3:]), threads, args.repeats, tmp)
                elif w == "batchgen":
                    res = bench_gen(512, threads, max(1, args.repeats // 2), tmp, batch=64, tokens=200)
                elif w == "cls":
                    res = bench_cls(threads, args.repeats, tmp)
                elif w == "seq":
                    res = bench_seq(threads, args.repeats, tmp)
                elif w == "lstm_b64":
                    res = bench_lstm(64, 50, threads, args.repeats, tmp)
                elif w == "lstm_b1":
                    res = bench_lstm(1, 200, threads, args.repeats, tmp)
                else:
                    res = bench_startup(threads, args.repeats, tmp)
                rows.append((w, threads, res))
                print_row(w, threads, res, flush=True)
    if args.plot:
        plot(rows, args.plot)
    return 0


def speedup(w, fast, peer):
    if fast is None or peer is None:
        return None
    return fast / peer if w in HIGHER_IS_BETTER else peer / fast


def fmt(v, digits=1):
    return "not installed" if v is None else f"{v:,.{digits}f}"


_header_done = False


def bf16_txt(res, digits):
    if "fastrnn_bf16" not in res:
        return "-"
    if res["fastrnn_bf16"] is None:
        return "no bf16" if BF16 == "auto" else "off"
    return fmt(res["fastrnn_bf16"], digits)


def i8_txt(v, digits):
    return v if isinstance(v, str) else ("-" if v is None else fmt(v, digits))


def print_row(w, threads, res, flush=False):
    global _header_done
    if not _header_done:
        print(f"\n{'workload':<9} {'thr':>3} {'unit':>9} {'fastrnn':>10} {'pytorch':>13} {'onnxruntime':>13} "
              f"{'x pytorch':>10} {'x onnxrt':>9} {'fastrnn bf16':>12} {'fastrnn i8':>11} {'pytorch i8':>11} "
              f"{'onnxrt i8':>10} {'x ort8':>7}")
        _header_done = True
    digits = 2 if w == "startup" else 1
    s_pt = speedup(w, res["fastrnn"], res["pytorch"])
    s_ort = speedup(w, res["fastrnn"], res["onnxruntime"])
    s_i8 = res.get("int8_speedup")  # paired (interleaved) runs: see paired_times
    ort_txt = "n/a" if w == "startup" else fmt(res["onnxruntime"], digits)
    print(f"{w:<9} {threads:>3} {UNITS[w]:>9} {fmt(res['fastrnn'], digits):>10} {fmt(res['pytorch'], digits):>13} "
          f"{ort_txt:>13} {('-' if s_pt is None else f'{s_pt:.2f}x'):>10} "
          f"{('-' if s_ort is None else f'{s_ort:.2f}x'):>9}"
          + (f" {bf16_txt(res, digits):>12}"
             f" {fmt(res.get('fastrnn_int8'), digits):>11} {i8_txt(res.get('pytorch_int8', '-'), digits):>11}"
             f" {fmt(res.get('onnxruntime_int8'), digits):>10} "
             f"{('-' if s_i8 is None else f'{s_i8:.2f}x'):>7}"
             + ("" if s_i8 is None else f" [{res['int8_ci'][0]:.2f}, {res['int8_ci'][1]:.2f}]")
             if w != "startup" else "")
          + (f"   peak {res['fastrnn_peak_mb']:.0f} MB" if "fastrnn_peak_mb" in res else "")
          + (f"   fastrnn.onnx session {fmt(res['fastrnn_onnx_session'])} {UNITS[w]} "
             f"({res['session_vs_native']:.2f}x native, "
             f"{res['fastrnn_onnx_session'] / res['onnxruntime']:.2f}x onnxruntime)"
             if "fastrnn_onnx_session" in res else ""), flush=flush)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return
    labels, vs_pt, vs_ort = [], [], []
    for w, threads, res in rows:
        labels.append(f"{w}\n{threads}t")
        vs_pt.append(speedup(w, res["fastrnn"], res["pytorch"]) or 0)
        vs_ort.append(speedup(w, res["fastrnn"], res["onnxruntime"]) or 0)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4))
    ax.bar(x - 0.2, vs_pt, 0.4, label="vs PyTorch")
    ax.bar(x + 0.2, vs_ort, 0.4, label="vs ONNX Runtime")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set_ylabel("fastrnn speed-up (x, higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
