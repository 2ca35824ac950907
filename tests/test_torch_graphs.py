"""PyTorch modules as graphs (issue 12): chains with activation / normalization / convolution
modules between layers, any forward captured with torch.export (two inputs, concatenation,
residual adds, unbatched sentences, time-major layouts, Conv1d + LSTM), their errors, parameter
counts and native round trips. Every result is compared with the torch module's own output on
random weights and inputs, within FRAMEWORK_ATOL / FRAMEWORK_RTOL (1e-4)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close

torch.set_num_threads(1)


def run_torch(module, *inputs):
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.asarray(x)) for x in inputs])
    if isinstance(out, (tuple, list)):
        return [o.numpy() for o in out]
    return out.numpy()


def randomize(module, seed):
    """Random weights everywhere, and running statistics far from (0, 1) for batch norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# =============================================================================================
# chains read from the children
# =============================================================================================

class TaggerChain(nn.Module):
    """Embedding -> LSTM -> Dropout -> Linear -> act -> Linear -> out (the forward is the chain)."""

    def __init__(self, act, out, batch_first=True):
        super().__init__()
        self.embed = nn.Embedding(15, 6)
        self.rnn = nn.LSTM(6, 10, batch_first=batch_first)
        self.drop = nn.Dropout(0.3)
        self.hidden = nn.Linear(10, 12)
        self.act = act
        self.head = nn.Linear(12, 7)
        self.out = out

    def forward(self, ids):
        y, _ = self.rnn(self.embed(ids))
        return self.out(self.head(self.act(self.hidden(self.drop(y)))))


@pytest.mark.parametrize("act,out", [
    (nn.Tanh(), nn.LogSoftmax(dim=-1)),
    (nn.ReLU(), nn.LogSoftmax(dim=2)),
    (nn.Sigmoid(), nn.Softmax(dim=2)),
    (nn.GELU(), nn.Softmax(dim=1)),  # over time: a softmax on another axis than the features
    (nn.GELU(approximate="tanh"), nn.Identity()),
], ids=["tanh-logsoftmax", "relu-logsoftmax2", "sigmoid-softmax2", "gelu-softmax-time", "gelu_tanh-identity"])
def test_chain_with_activation_modules(act, out):
    module = randomize(TaggerChain(act, out), 1)
    model = fastrnn.from_torch(module)
    ids = np.random.default_rng(1).integers(0, 15, (3, 8))
    assert_close(model.predict(ids), run_torch(module, ids), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert model.count_params() == n_params(module)
    assert f"Total params: {n_params(module):,}" in model.summary(print_fn=None)


def test_time_major_chain_reads_dims_in_the_modules_layout():
    """batch_first=False: the module's tensors are (T, B, F), so LogSoftmax(dim=2) is over the
    features and Softmax(dim=0) over time; fastrnn's predict stays batch-major."""
    for out, torch_axis in ((nn.LogSoftmax(dim=2), None), (nn.Softmax(dim=0), None)):
        module = randomize(TaggerChain(nn.Tanh(), out, batch_first=False), 2)
        model = fastrnn.from_torch(module)
        ids = np.random.default_rng(2).integers(0, 15, (4, 6))  # batch-major for fastrnn
        want = run_torch(module, ids.T.copy()).transpose(1, 0, 2)
        assert_close(model.predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    module = TaggerChain(nn.Tanh(), nn.Softmax(dim=1), batch_first=False)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="batch axis"):
        fastrnn.from_torch(module)


class ConvChain(nn.Module):
    """Embedding -> Conv1d -> BatchNorm1d -> ReLU -> LSTM -> LayerNorm -> Linear, with the
    permutes to channels-first and back in forward (the chain as it is really written)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 5)
        self.conv = nn.Conv1d(5, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.relu = nn.ReLU()
        self.rnn = nn.GRU(8, 9, batch_first=True)
        self.norm = nn.LayerNorm(9)
        self.fc = nn.Linear(9, 4)

    def forward(self, ids):
        x = self.embed(ids).permute(0, 2, 1)
        x = self.relu(self.bn(self.conv(x))).permute(0, 2, 1)
        y, _ = self.rnn(x)
        return self.fc(self.norm(y))


def test_chain_with_conv_batchnorm_layernorm():
    module = randomize(ConvChain(), 3)
    model = fastrnn.from_torch(module)
    ids = np.random.default_rng(3).integers(0, 12, (2, 10))
    assert_close(model.predict(ids), run_torch(module, ids), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    # the same module through torch.export gives the same graph numbers
    exported = fastrnn.from_torch(module, example_inputs=(torch.from_numpy(ids),))
    assert_close(exported.predict(ids), run_torch(module, ids), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_nested_sequential_chain_and_activation_option():
    torch.manual_seed(4)
    module = nn.Sequential(nn.Embedding(9, 4), nn.GRU(4, 6, batch_first=True))
    head = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = module
            self.head = head

    net = randomize(Net(), 4)
    model = fastrnn.from_torch(net, return_sequences=False, activation="softmax")
    ids = np.random.default_rng(4).integers(0, 9, (3, 5))
    with torch.no_grad():
        _, h = net.body[1](net.body[0](torch.from_numpy(ids)))
        want = torch.softmax(net.head(h[-1]), dim=-1).numpy()
    assert_close(model.predict(ids), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


@pytest.mark.parametrize("vocab", ["abcdefgh", list("abcdefgh"), {c: i for i, c in enumerate("abcdefgh")}],
                         ids=["str", "list", "dict"])
def test_vocabulary_given_as_str_list_or_dict(vocab):
    module = randomize(TaggerChain(nn.Tanh(), nn.Identity()), 5)
    model = fastrnn.from_torch(module, vocabulary=vocab)
    assert model.vocabulary.tokens == list("abcdefgh")
    assert model.vocabulary.encode("bad") == [1, 0, 3]
    with pytest.raises(ValueError, match="ids being 0..n-1"):
        fastrnn.from_torch(module, vocabulary={"a": 0, "b": 2})


def test_unknown_child_points_to_example_inputs():
    module = nn.Sequential(nn.Embedding(5, 3), nn.LSTM(3, 4), nn.Conv2d(1, 1, 1))
    with pytest.raises(fastrnn.UnsupportedLayerError, match=r"2 \(Conv2d\).*example_inputs"):
        fastrnn.from_torch(module)


# =============================================================================================
# any forward, through torch.export
# =============================================================================================

class LastStepClassifier(nn.Module):
    """out, _ = lstm(emb(x)); fc(tanh(out[:, -1])) -> log_softmax: not a chain."""

    def __init__(self, cell=nn.LSTM, bidirectional=False, num_layers=1):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.rnn = cell(8, 12, batch_first=True, bidirectional=bidirectional, num_layers=num_layers)
        self.fc = nn.Linear(12 * (2 if bidirectional else 1), 5)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return torch.log_softmax(self.fc(torch.tanh(out[:, -1])), dim=1)


@pytest.mark.parametrize("cell,bidirectional,num_layers", [
    (nn.LSTM, False, 1), (nn.GRU, True, 2), (nn.RNN, False, 2)], ids=["lstm", "bigru2", "rnn2"])
def test_export_last_step_classifier(backend, cell, bidirectional, num_layers):
    module = randomize(LastStepClassifier(cell, bidirectional, num_layers), 6)
    example = torch.randint(0, 20, (3, 7))
    model = fastrnn.from_torch(module, example_inputs=(example,))
    ids = np.random.default_rng(6).integers(0, 20, (5, 11))  # another batch and length than the example
    got = model.predict(ids, backend=backend)
    assert got.shape == (5, 5)
    assert_close(got, run_torch(module, ids), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert model.count_params() == n_params(module)
    assert f"Total params: {n_params(module):,}" in model.summary(print_fn=None)


class TwoInputs(nn.Module):
    """Two LSTM branches (token ids and float features), their final states concatenated, a
    residual add, a learned scale (a constant parameter), a Dense head with softmax."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.words = nn.LSTM(8, 10, batch_first=True)
        self.feats = nn.GRU(4, 6, batch_first=True, bidirectional=True)
        self.mix = nn.Linear(22, 22)
        self.scale = nn.Parameter(torch.randn(22))
        self.out = nn.Linear(22, 3)

    def forward(self, ids, feats):
        _, (h, _) = self.words(self.emb(ids))
        _, g = self.feats(feats)
        z = torch.cat([h[-1], g[-2], g[-1]], dim=1)
        z = z + torch.relu(self.mix(z)) * self.scale - 0.5
        return torch.softmax(self.out(z), dim=-1)


def test_export_two_inputs_concatenate_residual():
    module = randomize(TwoInputs(), 7)
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 30, (2, 5)), torch.randn(2, 9, 4)))
    assert model.input_names == ["ids", "feats"]
    rng = np.random.default_rng(7)
    ids, feats = rng.integers(0, 30, (4, 6)), rng.standard_normal((4, 3, 4)).astype(np.float32)
    want = run_torch(module, ids, feats)
    assert_close(model.predict([ids, feats]), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert_close(model.predict({"feats": feats, "ids": ids}), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert model.count_params() == n_params(module)


class Sentence(nn.Module):
    """A tagger over ONE unbatched sentence: ids (T,) -> log-probabilities (T, V), LogSoftmax(dim=1)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(25, 8)
        self.rnn = nn.LSTM(8, 10)
        self.fc = nn.Linear(10, 25)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.logsoftmax(self.fc(out))


def test_export_unbatched_sentence_keeps_its_signature(tmp_path):
    module = randomize(Sentence(), 8)
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 25, (6,)),))
    ids = np.random.default_rng(8).integers(0, 25, 9)  # one sentence, another length
    got = model.predict(ids)
    assert got.shape == (9, 25)  # no batch axis in, none out
    assert_close(got, run_torch(module, ids), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1, atol=1e-5)  # dim=1 is the vocabulary here
    with pytest.raises(ValueError, match="unbatched"):
        model.predict(ids, lengths=[9])
    path = tmp_path / "sentence.safetensors"
    fastrnn.save(model, path)
    assert_close(fastrnn.load(path).predict(ids), got, 1e-6, 1e-6)


class TimeMajor(nn.Module):
    """batch_first=False: x (T, B, F); the output (T, B, H) transposed by the forward's own code,
    plus h_n stacked (num_layers, B, H) returned as a second output."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 7, num_layers=2)
        self.proj = nn.Linear(7, 3)

    def forward(self, x):
        out, h = self.rnn(x)
        return self.proj(out).transpose(0, 1), h


def test_export_time_major_with_stacked_states():
    module = randomize(TimeMajor(), 9)
    model = fastrnn.from_torch(module, example_inputs=(torch.randn(6, 3, 4),))
    x = np.random.default_rng(9).standard_normal((8, 5, 4)).astype(np.float32)  # (T, B, F) as the forward takes
    got = model.predict(x)
    want = run_torch(module, x)
    assert got[0].shape == (5, 8, 3) and got[1].shape == (2, 5, 7)
    for g, w in zip(got, want):
        assert_close(g, w, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


class ConvLSTM(nn.Module):
    """Embedding -> Conv1d (channels-first through permutes) -> ReLU -> max over... then LSTM on
    the convolved sequence, mean- and max-pooled over time, concatenated."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 6)
        self.conv = nn.Conv1d(6, 10, kernel_size=3, padding="same")
        self.lstm = nn.LSTM(10, 8, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(32, 2)

    def forward(self, ids):
        x = torch.relu(self.conv(self.emb(ids).transpose(1, 2))).transpose(1, 2)
        out, _ = self.lstm(x)
        pooled = torch.cat([out.mean(dim=1), out.amax(dim=1)], dim=1)
        return self.fc(pooled)


def test_export_conv1d_lstm_pooling():
    module = randomize(ConvLSTM(), 10)
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 40, (3, 12)),))
    ids = np.random.default_rng(10).integers(0, 40, (4, 15))
    assert_close(model.predict(ids), run_torch(module, ids), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    kinds = [type(n.layer).__name__ for n in model.plan().graph.nodes]
    assert "Permute" not in kinds  # the transposes around the convolution cost nothing
    assert model.count_params() == n_params(module)


class WithInitialState(nn.Module):
    """A decoder step over a sequence from a given state (h0 an input of forward)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 5)
        self.rnn = nn.LSTM(5, 6, batch_first=True)
        self.fc = nn.Linear(6, 11)

    def forward(self, ids, h0, c0):
        out, (h, c) = self.rnn(self.emb(ids), (h0, c0))
        return self.fc(out), h, c


def test_export_initial_state_inputs_and_state_outputs():
    module = randomize(WithInitialState(), 11)
    ex = (torch.randint(0, 11, (2, 4)), torch.randn(1, 2, 6), torch.randn(1, 2, 6))
    model = fastrnn.from_torch(module, example_inputs=ex)
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 11, (3, 5))
    h0, c0 = (rng.standard_normal((1, 3, 6)).astype(np.float32) for _ in range(2))
    got = model.predict([ids, h0, c0])
    for g, w in zip(got, run_torch(module, ids, h0, c0)):
        assert_close(g, w, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_export_model_saves_and_loads(tmp_path):
    module = randomize(TwoInputs(), 12)
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 30, (2, 5)), torch.randn(2, 9, 4)))
    rng = np.random.default_rng(12)
    x = [rng.integers(0, 30, (3, 4)), rng.standard_normal((3, 4, 4)).astype(np.float32)]
    path = tmp_path / "two.safetensors"
    fastrnn.save(model, path)
    loaded = fastrnn.load(path)
    assert_close(loaded.predict(x), model.predict(x), 1e-6, 1e-6)
    assert loaded.count_params() == n_params(module)


def test_unmappable_operator_names_op_and_source_line():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            out, _ = self.rnn(x)
            return torch.cumsum(out, dim=1)  # MARKER-LINE

    with pytest.raises(fastrnn.UnsupportedLayerError) as info:
        fastrnn.from_torch(Cumulative(), example_inputs=(torch.randn(2, 5, 3),))
    msg = str(info.value)
    assert "aten.cumsum" in msg
    assert "test_torch_graphs.py" in msg and "MARKER-LINE" in msg


def test_example_inputs_excludes_chain_options():
    with pytest.raises(ValueError, match="example_inputs"):
        fastrnn.from_torch(LastStepClassifier(), example_inputs=(torch.randint(0, 20, (2, 3)),),
                           return_sequences=False)


class SentenceClassifier(nn.Module):
    """One unbatched sentence -> class log-probabilities (C,)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.rnn = nn.GRU(6, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids):
        _, h = self.rnn(self.emb(ids))
        return torch.log_softmax(self.fc(h[-1]), dim=-1)


def test_classify_runs_an_unbatched_module_batch_major():
    module = randomize(SentenceClassifier(), 13)
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 20, (5,)),))
    rng = np.random.default_rng(13)
    sentences = [rng.integers(0, 20, n) for n in (4, 9, 1, 6)]
    for s in sentences:
        assert_close(model.predict(s), run_torch(module, s), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    results = list(model.classify(sentences))
    for s, r in zip(sentences, results):
        assert_close(r.probabilities, np.exp(run_torch(module, s)), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


class CharLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 30)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return torch.log_softmax(self.fc(out), dim=-1)


def test_exported_language_model_generates_like_torch():
    module = randomize(CharLM(), 14)
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 30, (2, 10)),))
    ids = [3, 1, 4]
    for _ in range(12):  # torch's greedy loop over the whole prefix
        ids.append(int(run_torch(module, np.array([ids]))[0, -1].argmax()))
    assert model.generate([3, 1, 4], max_new_tokens=12, temperature=0) == ids[3:]
