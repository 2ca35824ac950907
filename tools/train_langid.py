"""Train fastrnn's bundled word language identifier (developer-only; needs PyTorch).

    apt-get install wamerican wfrench wngerman wspanish witalian wportuguese wdutch wpolish wswedish
    pip install torch==2.13.0
    python tools/train_langid.py                       # ~12 min on 1 thread, writes the model
    python tools/train_langid.py --minutes 1 --out /tmp/langid.safetensors   # quick try

Data: the Debian word lists in /usr/share/dict (one word per line; Swedish is Latin-1, the rest
UTF-8), one per language of LANGUAGES. Words are lowercased and deduplicated; English
possessives ("house's") are dropped; a word found in more than one list is dropped everywhere
(it has no single right answer, e.g. "radio"). Each language contributes at most
--words-per-language words (a seeded sample), so classes are balanced. Split: a word is held out
when crc32(word) % 10 == 0 (about 10%, deterministic, independent of the sample) and is never
trained on; held-out accuracy, overall and per language, is stored in the model's metadata.

Model: characters (lowercase; id 0 = U+FFFD for characters outside the training alphabet) ->
Embedding(V, 32) -> GRU(128) -> Linear(languages), softmax; the classifier reads the GRU's final
state. Exported with fastrnn.from_torch(..., return_sequences=False, activation="softmax").
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import zlib

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "fastrnn", "data", "langid.safetensors")

# code, name, word list file, encoding, Debian package
LANGUAGES = [
    ("en", "English", "american-english", "utf-8", "wamerican"),
    ("fr", "French", "french", "utf-8", "wfrench"),
    ("de", "German", "ngerman", "utf-8", "wngerman"),
    ("es", "Spanish", "spanish", "utf-8", "wspanish"),
    ("it", "Italian", "italian", "utf-8", "witalian"),
    ("pt", "Portuguese", "portuguese", "utf-8", "wportuguese"),
    ("nl", "Dutch", "dutch", "utf-8", "wdutch"),
    ("pl", "Polish", "polish", "utf-8", "wpolish"),
    ("sv", "Swedish", "swedish", "latin-1", "wswedish"),
]
UNK = "\ufffd"
DICT_DIR = "/usr/share/dict"
# Stored in the model's metadata: fastrnn answers "unknown" for a text more than this fraction of
# whose characters are outside the vocabulary (fastrnn.classify.BUNDLED_UNKNOWN_THRESHOLD).
UNKNOWN_THRESHOLD = 0.5
EMBED, HIDDEN = 32, 128


def read_words(path, encoding, code):
    words = set()
    with open(path, encoding=encoding) as f:
        for line in f:
            w = line.strip().lower()
            if not w or " " in w:
                continue
            if code == "en" and w.endswith("'s"):
                continue
            words.add(w)
    return words


def package_versions():
    out = {}
    for *_, pkg in LANGUAGES:
        try:
            v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
        except OSError:
            v = ""
        out[pkg] = v or "unknown"
    return out


def missing_word_lists():
    """[(path, Debian package)] of the word lists that are not installed."""
    return [(os.path.join(DICT_DIR, fname), pkg) for _, _, fname, _, pkg in LANGUAGES
            if not os.path.exists(os.path.join(DICT_DIR, fname))]


def load_data(per_language, seed):
    missing = missing_word_lists()
    if missing:
        sys.exit(f"{', '.join(p for p, _ in missing)} missing: apt-get install {' '.join(k for _, k in missing)}")
    sets = {}
    for code, _, fname, enc, pkg in LANGUAGES:
        sets[code] = read_words(os.path.join(DICT_DIR, fname), enc, code)
    count = {}
    for words in sets.values():
        for w in words:
            count[w] = count.get(w, 0) + 1
    rng = random.Random(seed)
    train, held = [], []
    for label, (code, *_rest) in enumerate(LANGUAGES):
        unique = sorted(w for w in sets[code] if count[w] == 1)
        h = [w for w in unique if zlib.crc32(w.encode()) % 10 == 0]
        t = [w for w in unique if zlib.crc32(w.encode()) % 10 != 0]
        rng.shuffle(t)
        rng.shuffle(h)
        train += [(w, label) for w in t[:per_language]]
        held += [(w, label) for w in h[: max(1, per_language // 9)]]
    return train, held


class LangId(nn.Module):
    """Children in the order from_torch reads: Embedding -> GRU -> Linear."""

    def __init__(self, vocab, classes):
        super().__init__()
        self.embedding = nn.Embedding(vocab, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.fc = nn.Linear(HIDDEN, classes)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.fc(h[-1])


def encode_batch(words, index):
    lengths = torch.tensor([len(w) for w in words])
    ids = torch.zeros(len(words), int(lengths.max()), dtype=torch.long)
    for i, w in enumerate(words):
        ids[i, : len(w)] = torch.tensor([index.get(ch, 0) for ch in w])
    return ids, lengths


def evaluate(model, data, index, batch=1024):
    model.eval()
    correct = np.zeros(len(LANGUAGES))
    total = np.zeros(len(LANGUAGES))
    with torch.no_grad():
        for i in range(0, len(data), batch):
            chunk = data[i: i + batch]
            ids, lengths = encode_batch([w for w, _ in chunk], index)
            pred = model(ids, lengths).argmax(1).numpy()
            for (_, y), p in zip(chunk, pred):
                total[y] += 1
                correct[y] += p == y
    model.train()
    return correct.sum() / total.sum(), correct / np.maximum(total, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--words-per-language", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train, held = load_data(args.words_per_language, args.seed)
    alphabet = sorted({ch for w, _ in train for ch in w})
    tokens = [UNK] + alphabet
    index = {ch: i for i, ch in enumerate(tokens)}
    print(f"{len(train)} training words, {len(held)} held out, {len(tokens)} characters", flush=True)

    model = LangId(len(tokens), len(LANGUAGES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = random.Random(args.seed)
    start, step, epoch = time.time(), 0, 0
    budget = args.minutes * 60
    done = False
    while not done:
        epoch += 1
        rng.shuffle(train)
        for i in range(0, len(train) - args.batch + 1, args.batch):
            frac = (time.time() - start) / budget
            if frac >= 1:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = 3e-3 * (1 - 0.9 * frac)
            chunk = train[i: i + args.batch]
            ids, lengths = encode_batch([w for w, _ in chunk], index)
            loss = nn.functional.cross_entropy(model(ids, lengths), torch.tensor([y for _, y in chunk]))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 500 == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
    model.eval()
    acc, per = evaluate(model, held, index)
    print(f"held-out accuracy {acc:.4f}: " + ", ".join(f"{c} {a:.3f}" for (c, *_), a in zip(LANGUAGES, per)))

    import fastrnn

    fmodel = fastrnn.from_torch(model, return_sequences=False, activation="softmax", name="langid",
                                vocabulary=fastrnn.Vocabulary(tokens, level="char", unk=0, lowercase=True))
    fmodel.metadata.update({
        "task": "classify",
        "labels": [c for c, *_ in LANGUAGES],
        "label_names": {c: n for c, n, *_ in LANGUAGES},
        "held_out_accuracy": round(float(acc), 4),
        "held_out_accuracy_per_label": {c: round(float(a), 4) for (c, *_), a in zip(LANGUAGES, per)},
        "held_out_words": len(held),
        "unknown_threshold": UNKNOWN_THRESHOLD,
        "training": {"script": "tools/train_langid.py", "minutes": args.minutes, "steps": step, "epochs": epoch,
                     "words_per_language": args.words_per_language, "batch": args.batch, "seed": args.seed,
                     "data": "Debian word lists (/usr/share/dict)", "packages": package_versions()},
    })
    # check: fastrnn equals torch on held-out words
    words = [w for w, _ in held[:: max(1, len(held) // 200)]]
    got = np.array([r.probabilities for r in fmodel.classify(words)])
    with torch.no_grad():
        want = torch.softmax(model(*encode_batch(words, index)), 1).numpy()
    print(f"max |fastrnn - torch| over {len(words)} held-out words: {np.abs(got - want).max():.2e}")
    tmp = args.out + ".tmp"
    fastrnn.save(fmodel, tmp)
    os.replace(tmp, args.out)
    for w in ["house", "maison", "Haus", "casa", "huis", "dom", "hus", "ciao", "obrigado"]:
        r = next(iter(fmodel.classify([w])))
        print(f"{w!r}: {r.label} ({r.probabilities.max():.2f})")
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)")


if __name__ == "__main__":
    main()
