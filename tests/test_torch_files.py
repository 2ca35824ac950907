"""PyTorch weight files as projects ship them (issue 13): recognised by content, not extension;
the legacy (non-zip) torch.save format read by the same restricted unpickler (tensors only,
never code)."""
import os

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.cli import main as cli_main
from fastrnn.formats.torch import read_state_dict
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close


class CharNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 4)
        self.rnn = torch.nn.GRU(4, 6, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(6, 11)

    def forward(self, x):
        return self.fc(self.rnn(self.emb(x))[0])


def net():
    torch.manual_seed(0)
    return CharNet().eval()


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("name", ["weights", "model.bin", "net.ckpt", "lm.model", "x.pt"])
def test_state_dict_recognised_by_content_in_either_format(tmp_path, legacy, name):
    m = net()
    path = tmp_path / name
    torch.save(m.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    got = read_state_dict(path)
    assert sorted(got) == sorted(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(got[k], v.numpy())
    out = tmp_path / "out.safetensors"
    assert cli_main(["convert", str(path), str(out), "--cell", "gru"]) == 0
    model = fastrnn.load(out)
    ids = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with torch.no_grad():
        want = m(torch.from_numpy(ids)).numpy()
    assert_close(model.predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_legacy_views_and_shared_storage(tmp_path):
    """Tied / sliced tensors share one storage in the legacy file too."""
    base = torch.arange(24, dtype=torch.float32)
    sd = {"a": base[:12].view(3, 4), "b": base[12:].view(4, 3), "c": base.view(6, 4)[::2]}
    torch.save(sd, tmp_path / "s", _use_new_zipfile_serialization=False)
    got = read_state_dict(tmp_path / "s")
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v.numpy())


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_legacy_pickles_run_no_code(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil"
    torch.save({"w": torch.zeros(2), "x": _Marker(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(fastrnn.ModelFormatError, match="posix.system|os.system|refused"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [10, 200, -3])
def test_truncated_legacy_file(tmp_path, cut):
    path = tmp_path / "w"
    torch.save(net().state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(fastrnn.ModelFormatError):
        read_state_dict(path)


def test_plain_pickle_that_is_not_torch_is_refused(tmp_path):
    import pickle

    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(fastrnn.ModelFormatError, match="magic number"):
        read_state_dict(path)


class TanhHead(torch.nn.Module):
    """GRU -> Tanh -> Linear -> LogSoftmax: the Tanh and LogSoftmax leave no trace in the state_dict."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(9, 4)
        self.rnn = torch.nn.GRU(4, 5, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(10, 3)

    def forward(self, x):
        out, h = self.rnn(self.emb(x))
        return torch.log_softmax(self.fc(torch.tanh(torch.cat([h[-2], h[-1]], dim=1))), dim=-1)


SPEC = {"format": "fastrnn-torch-architecture",
        "layers": [{"module": "Embedding", "prefix": "emb."},
                   {"module": "GRU", "prefix": "rnn.", "return_sequences": False},
                   {"module": "Tanh"}, {"module": "Linear", "prefix": "fc."}, {"module": "LogSoftmax", "dim": -1}]}


def test_architecture_file_describes_what_the_state_dict_cannot(tmp_path, capsys):
    import json

    torch.manual_seed(3)
    m = TanhHead().eval()
    torch.save(m.state_dict(), tmp_path / "w.model")
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    with torch.no_grad():
        want = m(torch.from_numpy(ids)).numpy()
    # --cell guesses the plain chain, says so on stderr, and the guess is a different network
    assert cli_main(["convert", str(tmp_path / "w.model"), str(tmp_path / "guess.safetensors"), "--cell", "gru",
                     "--last"]) == 0
    err = capsys.readouterr().err
    guessed = json.loads(err[err.index("{"):])
    assert [e["module"] for e in guessed["layers"]] == ["Embedding", "GRU", "Linear"]
    assert np.abs(fastrnn.load(tmp_path / "guess.safetensors").predict(ids) - want).max() > 1e-2
    # the explicit architecture gives torch's numbers
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    assert cli_main(["convert", str(tmp_path / "w.model"), str(tmp_path / "ok.safetensors"), "--architecture",
                     str(tmp_path / "spec.json")]) == 0
    model = fastrnn.load(tmp_path / "ok.safetensors")
    assert_close(model.predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert model.metadata["architecture"] == SPEC
    assert [r.label for r in model.classify([[1, 2, 3, 4]])] == [int(np.argmax(want[0]))]


@pytest.mark.parametrize("edit,words", [
    (lambda s: s["layers"].append({"module": "Transformer"}), "unknown module 'Transformer'"),
    (lambda s: s["layers"].pop(3), "does not use the state_dict entries.*fc.bias"),
    (lambda s: s["layers"][0].update(prefix="nope."), "no 'nope.weight'"),
    (lambda s: s["layers"][1].update(nonlinearity="gelu"), "nonlinearity"),
    (lambda s: s.update(layers="GRU"), "format"),
])
def test_bad_architecture_files(tmp_path, edit, words):
    import copy

    from fastrnn.formats.torch_spec import from_architecture

    spec = copy.deepcopy(SPEC)
    edit(spec)
    params = {k: v.numpy() for k, v in TanhHead().state_dict().items()}
    with pytest.raises(fastrnn.ModelFormatError, match=words):
        from_architecture(params, spec)
