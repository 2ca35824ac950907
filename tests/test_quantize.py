"""Reduced-precision model files: fastrnn.save(..., quantize=) and `fastrnn convert --quantize`."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastrnn
from conftest import BACKENDS, assert_close
from fastrnn.formats import safetensors


class CharNet(torch.nn.Module):
    def __init__(self, vocab=40, hidden=48):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 16)
        self.lstm = torch.nn.LSTM(16, hidden, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(hidden, vocab)


VOCAB = fastrnn.Vocabulary([chr(c) for c in range(0xAC00, 0xAC00 + 40)])  # Hangul syllables


def char_net():
    torch.manual_seed(0)
    return CharNet().eval()


@pytest.fixture(scope="module")
def char_model():
    return fastrnn.from_torch(char_net(), vocabulary=VOCAB)


def per_row_int8(w):
    """The int8 rule, written independently of fastrnn: scale = max |row| / 127, q = round(w / scale)."""
    top = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(top > 0, top / 127, 1).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127) * scale


def rounded_reference(kind):
    """The float32 model with every weight matrix rounded as ``kind`` stores it, in PyTorch: what a
    quantized file must compute, up to float32 rounding."""
    net = char_net()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 2:
                w = p.numpy()
                p.copy_(torch.from_numpy(w.astype(np.float16).astype(np.float32) if kind == "float16"
                                         else per_row_int8(w)))
    return net


def torch_logits(net, ids):
    with torch.no_grad():
        y, _ = net.lstm(net.embedding(torch.from_numpy(ids)))
        return net.fc(y).numpy()


def matrices(model):
    return [(f"{layer.name}.{k}", v) for layer in model.layers for k, v in layer.arrays().items() if v.ndim == 2]


def test_float16_file_holds_the_rounded_weights(char_model, tmp_path):
    path = tmp_path / "m16.safetensors"
    fastrnn.save(char_model, path, quantize="float16")
    tensors, _ = safetensors.read(path)
    assert {str(a.dtype) for k, a in tensors.items() if a.ndim == 2} == {"float16"}
    loaded = fastrnn.load(path)
    assert loaded.metadata["quantized"] == "float16"
    for (name, a), (_, b) in zip(matrices(char_model), matrices(loaded)):
        np.testing.assert_array_equal(b, a.astype(np.float16).astype(np.float32), err_msg=name)
    # predict: test_quantized_file_computes_the_rounded_model; distance to float32: test_quantize_bounds.py
    # generation runs on the stored float16 weights: the same as asking for them explicitly
    assert loaded.generate("가", max_new_tokens=40, seed=3) == char_model.generate("가", max_new_tokens=40, seed=3,
                                                                                   weights="float16")


def test_int8_file_per_row_scales(char_model, tmp_path):
    path32, path8 = tmp_path / "m32.safetensors", tmp_path / "m8.safetensors"
    fastrnn.save(char_model, path32)
    fastrnn.save(char_model, path8, quantize="int8")
    tensors, _ = safetensors.read(path8)
    q = [k for k, a in tensors.items() if a.dtype == np.int8]
    assert q and all(k + ".scale" in tensors for k in q)
    assert os.path.getsize(path8) < 0.4 * os.path.getsize(path32)
    loaded = fastrnn.load(path8)
    assert loaded.metadata["quantized"] == "int8"
    for (name, a), (_, b) in zip(matrices(char_model), matrices(loaded)):
        step = np.abs(a).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(a - b) <= step / 2 + 1e-7), name  # round to nearest, per row
    # predict: test_quantized_file_computes_the_rounded_model
    text = loaded.generate("가각", max_new_tokens=30, seed=5)
    assert text == loaded.generate("가각", max_new_tokens=30, seed=5, weights="int8")
    assert len(text) == 30


ROUNDED_MODEL_ATOL = 1e-6


# int8 models compute in int8 (activations quantized too): tests/test_int8.py checks that against its
# spec within the quantization step; the int8 file's stored values are checked above.
@pytest.mark.parametrize("kind", ["float16"])
def test_quantized_file_computes_the_rounded_model(char_model, tmp_path, kind):
    """A quantized file's model is the float32 model with its weight matrices rounded (float16:
    to nearest; int8: per row, the rule in per_row_int8), computed here in PyTorch: equal up to
    float32 rounding, on every backend. (Its distance to the unrounded model is bounded by the
    quantization step in test_quantize_bounds.py.)

    Tolerance: the same float32 weights and math on both sides, 25 steps of a small model: measured
    <= 1e-7 on every backend, so 1e-6; float16 rounding moves these logits by 3e-5, int8 by 6e-4, and
    an int8 scale off by 1% by ~2e-3: FRAMEWORK_ATOL (1e-4) would not see the float16 rounding."""
    path = tmp_path / f"m_{kind}.safetensors"
    fastrnn.save(char_model, path, quantize=kind)
    loaded = fastrnn.load(path)
    ids = np.random.default_rng(1).integers(0, 40, (3, 25))
    want = torch_logits(rounded_reference(kind), ids)
    for backend in BACKENDS:
        assert_close(loaded.predict(ids, backend=backend), want, atol=ROUNDED_MODEL_ATOL, rtol=0, what=backend)
    assert np.abs(want - char_model.predict(ids)).max() > 10 * ROUNDED_MODEL_ATOL, "the weights were rounded"


def test_quantize_rejects_unknown_kind_and_bad_scales(char_model, tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        fastrnn.save(char_model, tmp_path / "x.safetensors", quantize="int4")
    path = tmp_path / "m8.safetensors"
    fastrnn.save(char_model, path, quantize="int8")
    tensors, meta = safetensors.read(path, mmap=False)
    tensors = dict(tensors)
    key = next(k for k in tensors if k.endswith(".scale"))
    tensors[key] = np.full_like(tensors[key], np.nan)
    safetensors.write(str(tmp_path / "nan.safetensors"), tensors, meta)
    with pytest.raises(fastrnn.ModelFormatError, match="NaN"):
        fastrnn.load(tmp_path / "nan.safetensors")
    del tensors[key]
    safetensors.write(str(tmp_path / "noscale.safetensors"), tensors, meta)
    with pytest.raises(fastrnn.ModelFormatError, match="needs a float32 tensor"):
        fastrnn.load(tmp_path / "noscale.safetensors")


def test_cli_convert_quantize(char_model, tmp_path):
    src = tmp_path / "m.safetensors"
    fastrnn.save(char_model, src)
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "convert", str(src), str(tmp_path / "q.safetensors"),
                          "--quantize", "int8"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "int8" in out.stdout
    assert fastrnn.load(tmp_path / "q.safetensors").metadata["quantized"] == "int8"
