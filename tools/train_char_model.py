"""Train fastrnn's bundled character-level LSTM (developer-only; needs PyTorch).

    python tools/train_char_model.py                      # ~35 min on 1 thread, writes the model
    python tools/train_char_model.py --minutes 2 --out /tmp/char_lstm.safetensors   # quick try

Corpus: the Python sources of the installed CPython standard library (PSF license, available
offline on every machine that runs fastrnn): the fixed list of top-level modules below, read
from ``sysconfig.get_paths()["stdlib"]``. Split by module, deterministically: the modules in
HELD_OUT (about 6.6% of the characters) are never trained on and give the reported bits per
character. A module missing from the installed Python is skipped (and reported).

Vocabulary (98 tokens, char level): id 0 = U+FFFD, the unknown id (anything outside the set
below, e.g. the few non-ASCII characters of the stdlib), 1 = tab, 2 = newline, 3..97 = the
printable ASCII characters ' ' .. '~'.

Model: Embedding(98, 64) -> LSTM(256, 2 layers) -> Linear(256, 98): 0.88 M parameters, 3.5 MB
as float32. Training: truncated back-propagation through time over BATCH contiguous streams of
the training text (the state is carried across windows, as it is when generating), Adam with a
learning rate that decays with the elapsed fraction of the time budget, gradient clipping.
Every --eval-minutes the held-out loss is measured and, when it improved, the model is written
(so a usable model exists early) together with a resumable checkpoint.

The output is converted with fastrnn.from_torch(..., vocabulary=...) and fastrnn.save; the held-out
bits per character and the training settings are stored in the model's metadata.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import sysconfig
import time

import numpy as np
import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "fastrnn", "data", "char_lstm.safetensors")

HELD_OUT = ["argparse", "calendar", "difflib", "fractions", "heapq", "queue", "shlex", "textwrap"]
TRAIN = """
__future__ _collections_abc _compat_pickle _compression _markupbase _py_abc _pydecimal _pyio
_sitebuiltins _strptime _threading_local _weakrefset abc aifc ast asynchat asyncore base64 bdb
bisect bz2 cProfile cgi cgitb chunk cmd code codecs codeop colorsys compileall configparser
contextlib contextvars copy copyreg crypt csv dataclasses datetime decimal dis doctest enum
filecmp fileinput fnmatch ftplib functools genericpath getopt getpass gettext glob graphlib gzip
hashlib hmac imaplib imghdr imp inspect io ipaddress keyword linecache locale lzma mailbox
mailcap mimetypes modulefinder netrc nntplib ntpath nturl2path numbers opcode operator optparse
os pathlib pdb pickle pickletools pipes pkgutil platform plistlib poplib posixpath pprint
profile pstats pty py_compile pyclbr pydoc quopri random reprlib rlcompleter runpy sched secrets
selectors shelve shutil signal site smtpd smtplib sndhdr socket socketserver sre_compile
sre_constants sre_parse ssl stat statistics string struct subprocess sunau symtable sysconfig
tabnanny tarfile telnetlib tempfile threading timeit token tokenize trace traceback tracemalloc
tty turtle types typing uu uuid warnings wave weakref webbrowser xdrlib zipapp zipfile zipimport
""".split()

UNK = "\ufffd"
TOKENS = [UNK, "\t", "\n"] + [chr(c) for c in range(32, 127)]
EMBED, HIDDEN, LAYERS = 64, 256, 2


class CharLSTM(nn.Module):
    """Children in registration order Embedding -> LSTM -> Linear: the shape from_torch reads."""

    def __init__(self, vocab_size=len(TOKENS)):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.fc = nn.Linear(HIDDEN, vocab_size)

    def forward(self, ids, state=None):
        y, state = self.lstm(self.embedding(ids), state)
        return self.fc(y), state


def read_corpus(names):
    root = sysconfig.get_paths()["stdlib"]
    texts, missing = [], []
    for name in names:
        path = os.path.join(root, name + ".py")
        if not os.path.exists(path):
            missing.append(name)
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    if missing:
        print(f"skipped (not in this Python): {' '.join(missing)}", flush=True)
    return "\n".join(texts)


def encode(text):
    index = {t: i for i, t in enumerate(TOKENS)}
    return np.array([index.get(ch, 0) for ch in text], dtype=np.int64)


def streams(ids, batch):
    """ids (N,) -> (batch, N // batch): contiguous streams read in parallel."""
    n = len(ids) // batch
    return torch.from_numpy(ids[: n * batch].reshape(batch, n).copy())


@torch.no_grad()
def evaluate(model, data, window=256):
    """Mean negative log-likelihood in bits per character over data (B, N), state carried."""
    model.eval()
    total, count, state = 0.0, 0, None
    for s in range(0, data.shape[1] - 1, window):
        x = data[:, s: s + window]
        y = data[:, s + 1: s + window + 1]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                             reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count / math.log(2)


def export(model, path, metadata):
    sys.path.insert(0, REPO)
    import fastrnn

    fmodel = fastrnn.from_torch(model, vocabulary=fastrnn.Vocabulary(TOKENS, level="char", unk=0),
                                name="char_lstm")
    fmodel.metadata.update(metadata)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fastrnn.save(fmodel, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def sample(model, prompt, n=300, temperature=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.eval()
    ids = torch.from_numpy(encode(prompt))[None]
    logits, state = model(ids)
    out = []
    for _ in range(n):
        p = torch.softmax(logits[0, -1] / temperature, -1)
        nxt = torch.multinomial(p, 1, generator=g)
        out.append(TOKENS[nxt.item()])
        logits, state = model(nxt[None], state)
    model.train()
    return prompt + "".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=35.0, help="wall-time budget for training")
    ap.add_argument("--out", default=DEFAULT_OUT, help="fastrnn model file to write")
    ap.add_argument("--checkpoint", default="/tmp/char_lstm_checkpoint.pt", help="resumable PyTorch checkpoint")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-minutes", type=float, default=3.0)
    ap.add_argument("--eval-chars", type=int, default=100_000, help="held-out chars used during training")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ids = encode(read_corpus(TRAIN))
    held_ids = encode(read_corpus(HELD_OUT))
    print(f"train {len(train_ids):,} chars, held-out {len(held_ids):,} chars "
          f"({np.mean(train_ids == 0) * 100:.3f}% unknown)", flush=True)
    held_quick = streams(held_ids[: args.eval_chars], 8)
    held_full = streams(held_ids, 8)

    model = CharLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step, best, trained_seconds = 0, float("inf"), 0.0
    if args.resume and os.path.exists(args.checkpoint):
        ck = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, best, trained_seconds = ck["step"], ck["best"], ck["seconds"]
        print(f"resumed at step {step}, best {best:.4f} bpc", flush=True)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)

    budget = args.minutes * 60.0
    gen = np.random.default_rng(args.seed + step)
    start = time.monotonic() - trained_seconds
    last_eval = time.monotonic()
    state, data, pos = None, None, 0
    running = None
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget:
            break
        if data is None or pos + args.seq_len + 1 > data.shape[1]:
            shift = int(gen.integers(0, args.seq_len))  # a new cut of the streams each epoch
            data, pos, state = streams(train_ids[shift:], args.batch), 0, None
        x = data[:, pos: pos + args.seq_len]
        y = data[:, pos + 1: pos + args.seq_len + 1]
        pos += args.seq_len
        # learning rate: linear warm-up over 200 steps, then cosine decay to 5% over the budget
        frac = min(1.0, elapsed / budget)
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bits = loss.item() / math.log(2)
        running = bits if running is None else 0.98 * running + 0.02 * bits
        if step % 100 == 0:
            print(f"step {step} {elapsed / 60:.1f} min lr {lr:.2e} train {running:.3f} bpc", flush=True)
        if time.monotonic() - last_eval >= args.eval_minutes * 60:
            last_eval = time.monotonic()
            held = evaluate(model, held_quick)
            print(f"step {step}: held-out (first {args.eval_chars:,} chars) {held:.4f} bpc", flush=True)
            improved = held < best
            best = min(best, held)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "best": best, "seconds": time.monotonic() - start}, args.checkpoint)
            if improved:
                export(model, args.out, {"heldout_bpc_quick": round(held, 4), "train_steps": step})
                print(f"  wrote {args.out}", flush=True)

    held = evaluate(model, held_full)
    quick = evaluate(model, held_quick)
    print(f"final: step {step}, held-out {held:.4f} bpc over {len(held_ids):,} chars "
          f"(quick subset {quick:.4f}; best quick so far {best:.4f})", flush=True)
    # the final model is written whatever the quick score says: the learning rate has decayed,
    # and its full held-out score is the one reported
    meta = {"heldout_bpc": round(held, 4), "train_steps": step,
            "corpus": "CPython standard library sources (PSF license), modules listed in tools/train_char_model.py",
            "trained_by": "tools/train_char_model.py"}
    export(model, args.out, meta)
    print(f"wrote {args.out}", flush=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "best": min(best, quick), "seconds": time.monotonic() - start}, args.checkpoint)
    print("sample (temperature 0.8):\n" + sample(model, "def "), flush=True)


if __name__ == "__main__":
    main()
