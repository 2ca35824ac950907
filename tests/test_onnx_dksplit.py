"""dksplit's model shape (issue 22, "two models shipped in public packages"): an int8 ONNX file from
onnxruntime's quantize_dynamic of Embedding -> 3-layer bidirectional LSTM -> Linear (three
DynamicQuantizeLSTM, a DynamicQuantizeLinear -> MatMulInteger head), built here from a torch
module of the same shape (dksplit 1.0.2 ships dksplit-int8.onnx: Embedding 38x384, LSTM 384 units).

Where fastrnn's and onnxruntime's numbers part, pinned by two NumPy emulations that differ only
in how activations are quantized before each integer product:
- fastrnn = the per-row rule (quantize.py: symmetric int8, one scale per row and step), exactly;
- onnxruntime = the per-tensor rule (uint8 with a zero point, one scale for the whole tensor: all
  steps of the input projection at once, the batch's h at each step, the whole head input);
so the difference between the two is that rule (mostly inside the LSTMs), not a misread weight.
On dksplit's own file the difference reaches 0.26 on logits of up to 13 (300 domain-like strings),
both are within 0.08 of the float model, and the CRF segmentations were all equal
(docs/loading.md, "onnxruntime-quantized ONNX files").
"""
import importlib.util
import os

import numpy as np
import pytest

import fastrnn
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
torch = require("torch")

V, E, H = 38, 16, 24


class Splitter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, E)
        self.lstm = torch.nn.LSTM(E, H, num_layers=3, bidirectional=True, batch_first=True)
        self.hidden2tag = torch.nn.Linear(2 * H, 2)

    def forward(self, chars):
        return self.hidden2tag(self.lstm(self.embedding(chars))[0])


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    module = Splitter().eval()
    d = tmp_path_factory.mktemp("dksplit")
    torch.onnx.export(module, (torch.zeros(1, 5, dtype=torch.long),), str(d / "f.onnx"), dynamo=False,
                      input_names=["chars"], output_names=["emissions"],
                      dynamic_axes={"chars": {0: "batch_size", 1: "seq_len"}})
    quantize_dynamic(str(d / "f.onnx"), str(d / "int8.onnx"), weight_type=QuantType.QInt8)
    return module, d / "int8.onnx"


# The file reader and the two emulations are tools/dksplit_gap.py's (the script that measures the
# same on dksplit's own file): one copy, so the test pins exactly what the script reports.
_spec = importlib.util.spec_from_file_location(
    "dksplit_gap", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "dksplit_gap.py"))
dksplit_gap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dksplit_gap)
read_int8, per_tensor_u8, per_row_s8, emulate = (dksplit_gap.read_int8, dksplit_gap.per_tensor_u8,
                                                 dksplit_gap.per_row_s8, dksplit_gap.emulate)


def test_fastrnn_and_onnxruntime_part_at_the_activation_rule(int8_file):
    module, path = int8_file
    model = fastrnn.load(path)
    assert model.metadata["quantized"] == "int8"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")  # exact integer sums on any x64 CPU
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = {"fastrnn-rule": 0.0, "ort-rule": 0.0, "between": 0.0, "fastrnn-float": 0.0, "ort-float": 0.0}
    for T in (1, 7, 20, 40):
        ids = rng.integers(2, V, size=T)
        got = model.predict(ids[None])[0]
        ref = session.run(None, {"chars": ids[None]})[0][0]
        with torch.no_grad():
            float_model = module(torch.as_tensor(ids[None]))[0].numpy()
        worst["fastrnn-rule"] = max(worst["fastrnn-rule"], np.abs(got - emulate(path, ids, per_row_s8)).max())
        worst["ort-rule"] = max(worst["ort-rule"], np.abs(ref - emulate(path, ids, per_tensor_u8)).max())
        worst["between"] = max(worst["between"], np.abs(got - ref).max())
        worst["fastrnn-float"] = max(worst["fastrnn-float"], np.abs(got - float_model).max())
        worst["ort-float"] = max(worst["ort-float"], np.abs(ref - float_model).max())
    assert worst["fastrnn-rule"] < 1e-4, worst  # fastrnn computes its documented rule
    assert worst["ort-rule"] < 2e-3, worst  # onnxruntime computes the per-tensor uint8 rule
    assert worst["between"] > 10 * worst["ort-rule"], worst  # so the two part at that rule, nowhere else
    assert worst["fastrnn-float"] < 0.05 and worst["ort-float"] < 0.05, worst  # both near the float model


def test_batch_independence(int8_file):
    """fastrnn's rule gives a sequence the same logits in any batch; onnxruntime's does not."""
    _, path = int8_file
    model = fastrnn.load(path)
    rng = np.random.default_rng(2)
    batch = rng.integers(2, V, size=(4, 12))
    alone = np.stack([model.predict(row[None])[0] for row in batch])
    np.testing.assert_array_equal(model.predict(batch), alone)
