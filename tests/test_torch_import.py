"""fastrnn.from_torch on every nn.RNN/LSTM/GRU configuration, on every backend, against PyTorch;
chains with Embedding and Linear; state_dict files read without torch's unpickler."""
import pickle
import zipfile

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.formats.torch import from_state_dict, read_state_dict
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close

torch.set_num_threads(1)


def torch_out(module, x):
    with torch.no_grad():
        out, state = module(torch.from_numpy(x))
    return out.numpy(), state


@pytest.mark.parametrize("cls,kw", [
    (torch.nn.RNN, dict(nonlinearity="tanh")), (torch.nn.RNN, dict(nonlinearity="relu")),
    (torch.nn.LSTM, {}), (torch.nn.LSTM, dict(proj_size=4)), (torch.nn.GRU, {}),
], ids=["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_matches_pytorch(backend, cls, kw, num_layers, bidirectional, batch_first, bias):
    torch.manual_seed(2)
    module = cls(6, 10, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 bias=bias, **kw).eval()
    model = fastrnn.from_torch(module)
    x = np.random.default_rng(2).standard_normal((3, 8, 6)).astype(np.float32)  # batch-major
    y, state = model.predict(x, return_state=True, backend=backend)
    xt = x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))
    y_t, s_t = torch_out(module, xt)
    if not batch_first:
        y_t = y_t.transpose(1, 0, 2)
    assert_close(y, y_t, FRAMEWORK_ATOL, FRAMEWORK_RTOL, "output")
    if cls is torch.nn.LSTM:
        assert_close(np.concatenate([s[0] for s in state]), s_t[0].numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "h_n")
        assert_close(np.concatenate([s[1] for s in state]), s_t[1].numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "c_n")
    else:
        assert_close(np.concatenate(state), s_t.numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "h_n")


class CharModel(torch.nn.Module):
    def __init__(self, vocab=20, cell=torch.nn.LSTM):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8)
        self.rnn = cell(8, 16, num_layers=2, batch_first=True)
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(16, vocab)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(self.drop(out))


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(30, 8)
        self.rnn = torch.nn.GRU(8, 12, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(24, 3)

    def forward(self, ids):
        _, h = self.rnn(self.embed(ids))
        return torch.softmax(self.out(torch.cat([h[-2], h[-1]], dim=1)), dim=1)


@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
def test_char_model_chain(backend, cell):
    torch.manual_seed(3)
    module = CharModel(cell=cell).eval()
    model = fastrnn.from_torch(module)
    ids = np.random.default_rng(3).integers(0, 20, (4, 9))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    assert_close(model.predict(ids, backend=backend), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_classifier_chain(backend):
    torch.manual_seed(4)
    module = Classifier().eval()
    model = fastrnn.from_torch(module, return_sequences=False, activation="softmax")
    ids = np.random.default_rng(4).integers(0, 30, (5, 11))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    got = model.predict(ids, backend=backend)
    assert got.shape == (5, 3)
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_unsupported_module_is_named():
    class Weird(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)  # (nn.Conv1d is read since issue 12)
            self.rnn = torch.nn.LSTM(3, 4)

    with pytest.raises(fastrnn.UnsupportedLayerError, match=r"conv \(Conv2d\)"):
        fastrnn.from_torch(Weird())
    with pytest.raises(fastrnn.ModelFormatError, match="nn.Module"):
        fastrnn.from_torch("not a module")


def test_state_dict_file_without_torch_unpickler(tmp_path, monkeypatch):
    torch.manual_seed(5)
    module = CharModel().eval()
    path = tmp_path / "char.pt"
    torch.save(module.state_dict(), path)
    # Reading must not touch torch's unpickler at all.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    sd = read_state_dict(path)
    assert set(sd) == set(module.state_dict())
    model = from_state_dict(sd, "lstm")
    ids = np.random.default_rng(5).integers(0, 20, (2, 6))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    assert_close(model.predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_whole_module_pickle_is_refused_without_running_code(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(CharModel(), path)
    with pytest.raises(fastrnn.ModelFormatError, match="state_dict"):
        read_state_dict(path)


class _Evil:
    def __reduce__(self):
        return (exec, ("open(%r, 'w').write('pwned')" % self.target,))


def test_malicious_pickle_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.target = str(marker)
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": evil}))
    with pytest.raises(fastrnn.ModelFormatError, match="refused|state_dict"):
        read_state_dict(path)
    assert not marker.exists()


def test_load_of_pt_file_explains_conversion(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.LSTM(2, 3).state_dict(), path)
    with pytest.raises(fastrnn.ModelFormatError, match="convert"):
        fastrnn.load(path)
