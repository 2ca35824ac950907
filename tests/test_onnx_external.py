"""ONNX files with external data (issue 13): PyTorch 2.13's exporter writes the weights to a file
beside the .onnx (the dynamo exporter by default, the TorchScript one's file re-saved so here).
fastrnn reads them from the model's folder only: relative paths, no "..", no
absolute paths, no links out of the folder, offsets and lengths checked against the file."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import fastrnn
import fastrnn.onnx
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close
from helpers import assert_runs_on_the_plan, export_onnx, onnx_input_shape


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(30, 8)
        self.rnn = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.rnn(self.emb(x))[0])


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    m = Tagger().eval()
    path = tmp_path / "model" / "tagger.onnx"
    path.parent.mkdir()
    ids = torch.randint(0, 30, (3, 7))
    torch.onnx.export(m, (ids,), str(path), dynamo=False, input_names=["ids"], output_names=["y"],
                      dynamic_axes={"ids": {0: "b", 1: "t"}})
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tagger.onnx.data", size_threshold=0)
    assert (path.parent / "tagger.onnx.data").stat().st_size > 1000
    return path, ids.numpy()


def test_external_data_loads_and_matches_onnxruntime(exported):
    path, ids = exported
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert_close(fastrnn.load(path).predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert_close(fastrnn.onnx.InferenceSession(path).run(None, {"ids": ids})[0], want, FRAMEWORK_ATOL,
                 FRAMEWORK_RTOL)


def test_the_dynamo_exporters_own_external_data(tmp_path):
    """PyTorch's default (dynamo) exporter writes the weights beside the .onnx by itself; the file
    runs on the Model (not the interpreter) and matches onnxruntime and torch."""
    torch.manual_seed(1)
    m = Tagger().eval()
    path = tmp_path / "tagger.onnx"
    export_onnx(m, (torch.randint(0, 30, (3, 7)),), path, ["x"], ["y"], {"x": {0: "b", 1: "t"}}, dynamo=True)
    assert (tmp_path / "tagger.onnx.data").stat().st_size > 1000
    ids = np.random.default_rng(2).integers(0, 30, onnx_input_shape(path, "x", (4, 9)))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": ids})[0]
    with torch.no_grad():
        assert_close(want, m(torch.from_numpy(ids)).numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    sess = fastrnn.onnx.InferenceSession(path)
    assert_runs_on_the_plan(sess)
    assert_close(sess.run(None, {"x": ids})[0], want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert_close(fastrnn.load(path).predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def _rewrite(path, edit):
    """Load the graph without its data, change every initializer's external_data entries."""
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        edit(info)
        del t.external_data[:]
        for k, v in info.items():
            t.external_data.add(key=k, value=v)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


@pytest.mark.parametrize("edit,words", [
    (lambda i: i.update(location="/etc/passwd"), "relative path"),
    (lambda i: i.update(location="../secret.bin"), "relative path"),
    (lambda i: i.update(location="sub/../../secret.bin"), "relative path"),
    (lambda i: i.update(location="missing.data"), "cannot be read"),
    (lambda i: i.update(offset=str(10 ** 9)), "past the end"),
    (lambda i: i.update(length="3"), "do not fit"),
    (lambda i: i.update(offset="abc"), "integers"),
])
def test_external_data_that_points_elsewhere_is_refused(exported, tmp_path, edit, words):
    path, _ = exported
    (tmp_path / "secret.bin").write_bytes(os.urandom(1 << 16))
    _rewrite(path, edit)
    with pytest.raises(fastrnn.ModelFormatError, match=words):
        fastrnn.load(path)


def test_link_out_of_the_folder_is_refused(exported, tmp_path):
    path, _ = exported
    outside = tmp_path / "outside.data"
    os.replace(path.parent / "tagger.onnx.data", outside)
    os.symlink(outside, path.parent / "tagger.onnx.data")
    with pytest.raises(fastrnn.ModelFormatError, match="out of the model's folder"):
        fastrnn.load(path)
