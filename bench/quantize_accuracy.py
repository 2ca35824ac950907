"""What float16 / bfloat16 / int8 weights cost in accuracy, on the two bundled models and on the
benchmark workloads' classifier and sequence models (issues: reduced precision, 14). Not part
of the test suite (reads the Debian word lists and the held-out stdlib modules; a few minutes).

Every kind is ``model.quantize(kind)`` run by predict / classify (int8: int8 products with
activations quantized per row and step, fastrnn/quantize.py); the character model also reports
the generation loop's own weight kinds (its int8 multiplies int16-quantized inputs).

    python bench/quantize_accuracy.py                 # both models
    python bench/quantize_accuracy.py --chars 20000   # more held-out text for the char model
    python bench/quantize_accuracy.py --only workloads  # the cls / seq / LSTM(512) models only

Character model (fastrnn/data/char_model, tools/train_char_model.py's held-out modules), one
generation session per module, teacher-forced, with each weight kind the generation loop runs on:
- bits per character of the true next character;
- the largest |logit - float32 logit|;
- next-token agreement: how often the most likely next character equals float32's.
Language classifier (fastrnn/data/langid.safetensors, tools/train_langid.py's held-out words;
needs the Debian word lists: without them this half is skipped with a message saying which
packages to install, and the character model's half still runs):
the model saved with `quantize=` and loaded again, then
- held-out accuracy, and its change from float32;
- how often the label equals float32's, and the largest probability difference.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

# the repository root, for bench/ and tools/; bench/__init__ imports the installed fastrnn first
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bench  # noqa: E402,F401

import fastrnn  # noqa: E402

KINDS = ("float32", "float16", "bfloat16", "int8")
LOOP_KINDS = ("float32", "float16", "int8")  # the generation loop's weights=


def tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def char_model(chars):
    from fastrnn.generate import bundled_model

    tcm = tool("train_char_model")
    model = bundled_model()
    texts = [model.vocabulary.encode(tcm.read_corpus([name])[:chars]) for name in tcm.HELD_OUT]
    logits = {}
    for kind in KINDS:  # predict, teacher-forced: the engine of model.quantize(kind)
        m = model if kind == "float32" else model.quantize(kind)
        logits[kind] = np.concatenate([m.predict([ids[:-1]])[0] for ids in texts]).astype(np.float64)
    for weights in LOOP_KINDS[1:]:  # the generation loop's own weight kinds
        rows = []
        for ids in texts:
            s = model.session(weights=weights)
            for t in ids[:-1]:
                s.feed([t])
                rows.append(s.logits())
        logits[f"gen {weights}"] = np.array(rows, np.float64)
    target = np.concatenate([ids[1:] for ids in texts])
    print(f"character model, {len(target):,} held-out characters ({', '.join(tcm.HELD_OUT)})")
    print(f"{'weights':<12} {'bits/char':>9} {'change':>9} {'max |logit - f32|':>18} {'next-token agreement':>21}")
    top32 = logits["float32"].argmax(1)
    bpc32 = None
    for weights, lg in logits.items():
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        bpc = np.mean(lse - lg[np.arange(len(target)), target]) / np.log(2)
        bpc32 = bpc if bpc32 is None else bpc32
        diff = np.abs(lg - logits["float32"]).max()
        agree = np.mean(lg.argmax(1) == top32)
        print(f"{weights:<12} {bpc:>9.4f} {bpc - bpc32:>+9.1e} {diff:>18.2e} {agree:>20.2%}")


def classifier():
    from fastrnn.classify import bundled_classifier

    tl = tool("train_langid")
    missing = tl.missing_word_lists()
    if missing:
        print(f"\nlanguage classifier: skipped, its held-out words come from the Debian word lists and "
              f"{', '.join(p for p, _ in missing)} {'is' if len(missing) == 1 else 'are'} missing "
              f"(apt-get install {' '.join(k for _, k in missing)})")
        return False
    model = bundled_classifier()
    meta = model.metadata.get("training", {})
    _, held = tl.load_data(meta.get("words_per_language", 40000), meta.get("seed", 0))
    words, labels = [w for w, _ in held], np.array([y for _, y in held])
    probs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            m = model if kind == "float32" else model.quantize(kind)
            path = os.path.join(tmp, f"langid-{kind}.safetensors")
            fastrnn.save(m, path)  # a quantized model is stored in its kind and loads as such
            m = fastrnn.load(path)
            probs[kind] = np.array([r.probabilities for r in m.classify(words, return_probs=True)])
    print(f"\nlanguage classifier, {len(words):,} held-out words")
    print(f"{'weights':<8} {'accuracy':>9} {'change':>8} {'same label':>11} {'max |p - f32|':>14}")
    acc32 = np.mean(probs["float32"].argmax(1) == labels)
    for kind, p in probs.items():
        acc = np.mean(p.argmax(1) == labels)
        same = np.mean(p.argmax(1) == probs["float32"].argmax(1))
        print(f"{kind:<8} {acc:>9.2%} {(acc - acc32) * 100:>+7.2f}pt {same:>11.2%} "
              f"{np.abs(p - probs['float32']).max():>14.2e}")


def workloads():
    """The benchmark workloads' classifier (cls) and sequence models (seq GRU, LSTM(512) x 2),
    random weights (PyTorch's initialisation), random inputs: outputs against float32."""
    import torch

    from bench.models import ClsModel

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    modules = {"cls": ClsModel().eval(), "seq": torch.nn.GRU(128, 512, batch_first=True).eval(),
               "lstm": torch.nn.LSTM(512, 512, num_layers=2, batch_first=True).eval()}
    cls = fastrnn.from_torch(modules["cls"], return_sequences=False, activation="softmax")
    seq = fastrnn.from_torch(modules["seq"])
    lstm = fastrnn.from_torch(modules["lstm"])
    cases = [("cls", "cls: BiLSTM(128) classifier, 256 x 100 ids", cls, rng.integers(1, 20000, (256, 100))),
             ("seq", "seq: GRU(128 -> 512), 4 x 1000 steps", seq,
              rng.standard_normal((4, 1000, 128)).astype(np.float32)),
             ("lstm", "LSTM(512) x 2, 16 x 50 steps", lstm, rng.standard_normal((16, 50, 512)).astype(np.float32))]
    for key, title, model, x in cases:
        y32 = model.predict(x).astype(np.float64)
        print(f"\n{title} (|y| up to {np.abs(y32).max():.3g})")
        print(f"{'weights':<13} {'max |y - f32|':>14} {'mean |y - f32|':>15} {'same label':>11}")
        outs = {kind: model.quantize(kind).predict(x) for kind in KINDS[1:]}
        if key != "seq":  # quantize_dynamic has no int8 GRU
            outs["onnxrt int8"] = ort_int8_output(modules[key], x).reshape(y32.shape)
        for kind, y in outs.items():
            y = y.astype(np.float64)
            same = f"{np.mean(y.argmax(-1) == y32.argmax(-1)):>11.2%}" if y.ndim == 2 else f"{'-':>11}"
            print(f"{kind:<13} {np.abs(y - y32).max():>14.2e} {np.abs(y - y32).mean():>15.2e} {same}")


def ort_int8_output(module, x):
    """onnxruntime's int8 model (quantize_dynamic, QInt8 weights) of the exported module, run on x;
    its first output."""
    import logging

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path, path8 = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m8.onnx")
        torch.onnx.export(module, (torch.from_numpy(x),), path, dynamo=False, input_names=["x"])
        quantize_dynamic(path, path8, weight_type=QuantType.QInt8)
        sess = ort.InferenceSession(path8, providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=4000, help="held-out characters per module (char model)")
    ap.add_argument("--only", choices=["char", "classifier", "workloads"], help="one part only")
    args = ap.parse_args(argv)
    if args.only in (None, "char"):
        char_model(args.chars)
    if args.only in (None, "classifier"):
        classifier()
    if args.only in (None, "workloads"):
        workloads()


if __name__ == "__main__":
    main()
