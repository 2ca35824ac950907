"""Generation speed, side by side: fastrnn vs PyTorch vs ONNX Runtime (docs/performance.md).

    python bench/bench_generate.py                 # gen256, gen512, batchgen at 1 thread
    python bench/bench_generate.py -t 1 2 -r 7     # 1 and 2 threads, 7 repeats
    python bench/bench_generate.py -w gen512 --backend numba
    python bench/bench_generate.py --weights float32 float16 int8   # the storage modes side by side

Not part of the test suite. Workloads (random weights; speed does not depend on them):
- gen256 / gen512: Embedding(96, 64) -> LSTM(H, 2 layers) -> Linear(96), batch 1, a 4-token
  prompt, 300 sampled tokens at temperature 0.8: microseconds per generated token.
- batchgen: the gen512 model, 64 prompts of 1 to 4 tokens decoded together, 200 tokens each:
  generated tokens per second.
Peers, written the way their users write a sampling loop:
- PyTorch: the nn.Module called one step at a time under torch.inference_mode(), softmax of
  logits / T and torch.multinomial, state carried between calls.
- ONNX Runtime: the same module exported (torch.onnx.export, dynamo=False) as a one-step model
  (ids, h0, c0) -> (logits, h, c), one session.run per token, sampling in NumPy.
The three runs of a repeat are interleaved (fastrnn, PyTorch, ORT, fastrnn, ...) so that the
load of a shared machine hits them alike; each figure is the median over repeats, and a ratio
is the peer's median over fastrnn's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

# the repository root, for bench.models; bench/__init__ imports the installed fastrnn first
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.models import VOCAB, CharLSTM  # noqa: E402

import fastrnn  # noqa: E402

WORKLOADS = {"gen256": (256, 1, 300), "gen512": (512, 1, 300), "batchgen": (512, 64, 200)}

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None
try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    ort = None


def prompts_for(batch):
    return [[1, 2, 3, 4][: 1 + b % 4] for b in range(batch)] if batch > 1 else [[1, 2, 3, 4]]


def make_fastrnn(module, prompts, tokens, backend, weights):
    vocab = fastrnn.Vocabulary([chr(32 + i) for i in range(VOCAB)])
    model = fastrnn.from_torch(module, vocabulary=vocab)
    prompt = prompts if len(prompts) > 1 else prompts[0]

    def run():
        model.generate(prompt, max_new_tokens=tokens, temperature=0.8, seed=0, backend=backend, weights=weights)

    return run


def make_torch(module, prompts, tokens, hidden):
    gen = torch.Generator().manual_seed(0)
    batch = len(prompts)
    width = max(len(p) for p in prompts)

    @torch.inference_mode()
    def run():
        h = torch.zeros(2, batch, hidden)
        c = torch.zeros(2, batch, hidden)
        if batch == 1:
            logits, h, c = module(torch.tensor(prompts), h, c)
            last = logits[:, -1]
        else:  # rows of different lengths: prime them step by step, keep each row's last logits
            lengths = torch.tensor([len(p) for p in prompts])
            padded = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
            last = torch.zeros(batch, VOCAB)
            for t in range(width):
                logits, h2, c2 = module(padded[:, t:t + 1], h, c)
                live = (t < lengths)[None, :, None]
                h, c = torch.where(live, h2, h), torch.where(live, c2, c)
                last = torch.where((t == lengths - 1)[:, None], logits[:, -1], last)
        for _ in range(tokens):
            nxt = torch.multinomial(torch.softmax(last / 0.8, dim=-1), 1, generator=gen)
            logits, h, c = module(nxt, h, c)
            last = logits[:, -1]

    return run


def make_ort(module, prompts, tokens, hidden, threads, tmp):
    batch = len(prompts)
    path = os.path.join(tmp, f"char{hidden}.onnx")
    if not os.path.exists(path):
        torch.onnx.export(module, (torch.zeros(1, 1, dtype=torch.long), torch.zeros(2, 1, hidden),
                                   torch.zeros(2, 1, hidden)), path, dynamo=False,
                          input_names=["ids", "h0", "c0"], output_names=["logits", "h", "c"],
                          dynamic_axes={"ids": {0: "B", 1: "T"}, "h0": {1: "B"}, "c0": {1: "B"},
                                        "logits": {0: "B", 1: "T"}, "h": {1: "B"}, "c": {1: "B"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    width = max(len(p) for p in prompts)
    rng = np.random.default_rng(0)

    def sample(last):
        z = last / 0.8
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.array([[rng.choice(VOCAB, p=row)] for row in p], np.int64)

    def run():
        h = np.zeros((2, batch, hidden), np.float32)
        c = np.zeros((2, batch, hidden), np.float32)
        if batch == 1:
            logits, h, c = sess.run(None, {"ids": np.array(prompts, np.int64), "h0": h, "c0": c})
            last = logits[:, -1]
        else:
            lengths = np.array([len(p) for p in prompts])
            padded = np.array([p + [0] * (width - len(p)) for p in prompts], np.int64)
            last = np.zeros((batch, VOCAB), np.float32)
            for t in range(width):
                logits, h2, c2 = sess.run(None, {"ids": padded[:, t:t + 1], "h0": h, "c0": c})
                live = (t < lengths)[None, :, None]
                h, c = np.where(live, h2, h), np.where(live, c2, c)
                last = np.where((t == lengths - 1)[:, None], logits[:, -1], last)
        for _ in range(tokens):
            logits, h, c = sess.run(None, {"ids": sample(last), "h0": h, "c0": c})
            last = logits[:, -1]

    return run


def measure(workload, threads, repeats, backend, weight_kinds, tmp):
    hidden, batch, tokens = WORKLOADS[workload]
    torch.manual_seed(0)
    module = CharLSTM(hidden).eval()
    prompts = prompts_for(batch)
    runs = {f"fastrnn {w}": make_fastrnn(module, prompts, tokens, backend, w) for w in weight_kinds}
    if torch is not None:
        runs["pytorch"] = make_torch(module, prompts, tokens, hidden)
    if ort is not None:
        runs["onnxruntime"] = make_ort(module, prompts, tokens, hidden, threads, tmp)
    times = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up (packing, JIT, session start)
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    if batch == 1:
        return {name: t / tokens * 1e6 for name, t in med.items()}, "us/token", False
    return {name: batch * tokens / t for name, t in med.items()}, "tokens/s", True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("-t", "--threads", nargs="+", type=int, default=[1])
    ap.add_argument("-r", "--repeats", type=int, default=5)
    ap.add_argument("--backend", default=None, help="fastrnn backend (default: the fastest available)")
    ap.add_argument("--weights", nargs="+", default=["float32", "int8"], choices=["float32", "float16", "int8"],
                    help="fastrnn weight storage modes to measure (default: float32 int8)")
    args = ap.parse_args(argv)
    from fastrnn.generate import get_engine

    print(f"fastrnn {fastrnn.__version__}, generation engine: {get_engine(args.backend).name}; "
          f"torch {torch.__version__ if torch else '-'}; onnxruntime {ort.__version__ if ort else '-'}")
    header = f"{'workload':<9} {'thr':>3} {'unit':<9} {'fastrnn':<16} {'value':>9} {'pytorch':>9} {'onnxrt':>9} " \
             f"{'vs pytorch':>11} {'vs onnxrt':>10}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            if torch is not None:
                torch.set_num_threads(threads)
            if hasattr(fastrnn, "set_num_threads"):
                fastrnn.set_num_threads(threads)
            for w in args.workloads:
                res, unit, higher = measure(w, threads, args.repeats, args.backend, args.weights, tmp)

                def val(name):
                    v = res.get(name)
                    return "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")

                for kind in args.weights:
                    mine = res[f"fastrnn {kind}"]

                    def ratio(peer):
                        if res.get(peer) is None:
                            return "-"
                        r = mine / res[peer] if higher else res[peer] / mine
                        return f"{r:.2f}x"

                    print(f"{w:<9} {threads:>3} {unit:<9} {kind:<16} {val('fastrnn ' + kind):>9} {val('pytorch'):>9} "
                          f"{val('onnxruntime'):>9} {ratio('pytorch'):>11} {ratio('onnxruntime'):>10}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
