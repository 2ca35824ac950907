"""Reduced-precision model files: fastrnn.save(..., quantize=) and `fastrnn convert --quantize`."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastrnn
from conftest import assert_close
from fastrnn.formats import safetensors


class CharNet(torch.nn.Module):
    def __init__(self, vocab=40, hidden=48):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 16)
        self.lstm = torch.nn.LSTM(16, hidden, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(hidden, vocab)


@pytest.fixture(scope="module")
def char_model():
    torch.manual_seed(0)
    vocab = fastrnn.Vocabulary([chr(c) for c in range(0xAC00, 0xAC00 + 40)])  # Hangul syllables
    return fastrnn.from_torch(CharNet().eval(), vocabulary=vocab)


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
    ids = np.random.default_rng(0).integers(0, 40, (2, 30))
    assert_close(loaded.predict(ids), char_model.predict(ids), atol=1e-2)
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
    ids = np.random.default_rng(1).integers(0, 40, (3, 25))
    assert_close(loaded.predict(ids), char_model.predict(ids), atol=0.05)
    text = loaded.generate("가각", max_new_tokens=30, seed=5)
    assert text == loaded.generate("가각", max_new_tokens=30, seed=5, weights="int8")
    assert len(text) == 30


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
