"""Where fastrnn's and onnxruntime's logits part on dksplit's int8 ONNX file (issue 22).

    pip download --no-deps dksplit==1.0.2 && unzip dksplit-1.0.2-py3-none-any.whl -d dksplit
    python tools/dksplit_gap.py dksplit/dksplit/models/dksplit-int8.onnx

Prints, per string, the largest difference of fastrnn's logits from onnxruntime's, and of each
from a NumPy emulation of the file's integer model with its activation rule: fastrnn's per-row
symmetric int8 and onnxruntime's per-tensor uint8 (docs/loading.md, "onnxruntime-quantized ONNX
files"; tests/test_onnx_dksplit.py checks the same on a small file of this shape). Then the
mixed emulations: onnxruntime's rule in the LSTMs with fastrnn's in the head, and the reverse.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import fastrnn

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"  # dksplit's CHAR_VOCAB: id = index + 2, 1 = unknown
TEXTS = ["chatgptlogin", "bestbuyonline", "thequickbrownfoxjumpsoverthelazydog", "mynameisjohn2024",
         "openaiapikey", "wwwgooglecom", "kakaotalkdownload", "navermapsearch", "iloveyou", "a", "zz9",
         "freeshippingcoupon", "stackoverflowquestions", "pythonprogramminglanguage", "helloworld"]


def read_int8(path):
    """The integers and scales of the file: [(W, W scale, R, R scale, B) per LSTM], embedding, head."""
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 3 and "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    lstms = []
    for n in m.graph.node:
        if n.op_type == "DynamicQuantizeLSTM":
            i = list(n.input)
            assert not init[i[9]].any() and not init[i[11]].any()  # int8 weights, zero points 0
            lstms.append((init[i[1]].astype(np.float64), init[i[8]].astype(np.float64),
                          init[i[2]].astype(np.float64), init[i[10]].astype(np.float64), init[i[3]]))
        if n.op_type == "MatMulInteger":
            head_q = init[n.input[1]].astype(np.float64)
            assert not init[n.input[3]].any()
        if n.op_type == "Mul" and any(k.endswith("_scale") and k in init for k in n.input):
            head_scale = float(next(init[k] for k in n.input if k in init))
        if n.op_type == "Add" and any(k in init for k in n.input):
            head_bias = next(init[k] for k in n.input if k in init)
    gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[0] in init)
    table = init[gather.input[0]]
    if table.dtype != np.float32:  # a quantized table, then DequantizeLinear
        deq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == gather.output[0])
        table = (table.astype(np.float32) - init[deq.input[2]].astype(np.float32)) * init[deq.input[1]]
    return lstms, table.astype(np.float32), (head_q, head_scale, head_bias)


def per_tensor_u8(a):
    """onnxruntime's dynamic activation rule: uint8, one scale and zero point for the tensor."""
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zero = np.float32(np.clip(np.rint(-lo / scale), 0, 255))
    return np.clip(np.rint(a / scale) + zero, 0, 255) - zero, np.float64(scale)


def per_row_s8(a):
    """fastrnn's int8 activation rule (fastrnn.quantize): symmetric int8, one scale per row."""
    top = np.abs(a).max(axis=-1, keepdims=True).astype(np.float32)
    scale = np.where(top > 0, top / np.float32(127), np.float32(1)).astype(np.float32)
    return np.clip(np.rint(a * (np.float32(1) / scale)), -127, 127), scale.astype(np.float64)


def emulate(path, ids, rule, head_rule=None):
    """The file's integer model on one sequence, activations quantized by ``rule`` (``head_rule``
    for the head, default the same)."""
    lstms, table, (head_q, head_scale, head_bias) = read_int8(path)

    def product(x, q, scale, rule=rule):  # x (M, K) float32 times the int8 matrix q (K, N) of scale ``scale``
        xq, xs = rule(np.asarray(x, np.float32))
        return (xq.astype(np.float64) @ q) * (xs * scale)

    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    x = table[ids]
    for W, Ws, R, Rs, B in lstms:
        outs = []
        for d in range(2):
            Hd = R.shape[1]
            xw = product(x, W[d], Ws[d]) + B[d][:4 * Hd] + B[d][4 * Hd:]  # every step at once
            h, c, out = np.zeros(Hd, np.float32), np.zeros(Hd), np.zeros((len(ids), Hd), np.float32)
            for t in (range(len(ids)) if d == 0 else range(len(ids) - 1, -1, -1)):
                g = xw[t] + product(h[None], R[d], Rs[d])[0]
                i, o, f, cc = np.split(g, 4)  # ONNX gate order i o f c
                c = sig(f) * c + sig(i) * np.tanh(cc)
                h = (sig(o) * np.tanh(c)).astype(np.float32)
                out[t] = h
            outs.append(out)
        x = np.concatenate(outs, axis=1)
    return (product(x, head_q, head_scale, head_rule or rule) + head_bias).astype(np.float32)


def main(path):
    model = fastrnn.load(path)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    cols = ["fastrnn-ort", "fastrnn-rowrule", "ort-tensorrule", "ort-(tensor lstm,row head)",
            "ort-(row lstm,tensor head)", "max|logit|"]
    print(f"{'text':36s}" + " ".join(f"{c:>14s}" for c in cols))
    worst = np.zeros(len(cols))
    for text in TEXTS:
        ids = np.array([CHARS.index(c) + 2 if c in CHARS else 1 for c in text], np.int64)
        got = model.predict(ids[None])[0]
        ref = session.run(None, {"chars": ids[None]})[0][0]
        row = [np.abs(got - ref).max(), np.abs(got - emulate(path, ids, per_row_s8)).max(),
               np.abs(ref - emulate(path, ids, per_tensor_u8)).max(),
               np.abs(ref - emulate(path, ids, per_tensor_u8, per_row_s8)).max(),
               np.abs(ref - emulate(path, ids, per_row_s8, per_tensor_u8)).max(), np.abs(ref).max()]
        worst = np.maximum(worst, row)
        print(f"{text:36s}" + " ".join(f"{v:14.4f}" for v in row))
    print(f"{'max':36s}" + " ".join(f"{v:14.4f}" for v in worst))


if __name__ == "__main__":
    main(sys.argv[1])
