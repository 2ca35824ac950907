"""Hand-written PyTorch cells (issue 22.7) and the nokcut module shape.

- The lecture notes' RNN written with three nn.Linear and a loop in forward is refused, with and
  without example_inputs, with a message pointing to fastrnn.Recurrent (it used to be read as a
  chain of the three Linear layers: 0.59 off, silently).
- Any forward that is not provably the chain of the children is refused (a sum of two Linear
  outputs, a functional activation not asked for, the children in another order, out[:, -1] of
  a bidirectional layer read as its final state).
- nn.RNNCell / nn.LSTMCell / nn.GRUCell modules import as the layer applying the cell at every
  step; loops over them in forward import with example_inputs (torch.export unrolls the loop;
  fastrnn rolls it back into one recurrent layer), with zero initial states made by torch.zeros.
- nokcut's WordsegModel calls ``torch.LongTensor(ids)`` inside forward (aten.to.dtype_layout):
  a cast that keeps ids ids is mapped; ids turned into floats are refused.
Every comparison is against the module's own forward, within 1e-4.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close

torch.set_num_threads(1)
TOL = dict(atol=FRAMEWORK_ATOL, rtol=FRAMEWORK_RTOL)
HELL_ELLO = torch.eye(4)[torch.tensor([[0, 1, 2, 2], [1, 2, 2, 3]])]  # one-hot "hell", "ello" (vocabulary "helo")


def out(module, *args):
    with torch.no_grad():
        y = module(*(torch.as_tensor(a) for a in args))
    return (y[0] if isinstance(y, tuple) else y).numpy()


class NotesRNN(nn.Module):
    """The notes' char RNN: h = tanh(W_xh x + W_hh h), y = W_hy h, one-hot "hello" inputs."""

    def __init__(self, vocab=4, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.W_xh = nn.Linear(vocab, hidden)
        self.W_hh = nn.Linear(hidden, hidden, bias=False)
        self.W_hy = nn.Linear(hidden, vocab)

    def forward(self, x):  # (B, T, vocab)
        h = torch.zeros(x.size(0), self.hidden)
        ys = []
        for t in range(x.size(1)):
            h = torch.tanh(self.W_xh(x[:, t]) + self.W_hh(h))
            ys.append(self.W_hy(h))
        return torch.stack(ys, 1)


def test_hand_written_loop_over_linear_is_refused():
    torch.manual_seed(0)
    module = NotesRNN().eval()
    with pytest.raises(fastrnn.UnsupportedLayerError, match="fastrnn.Recurrent") as info:
        fastrnn.from_torch(module)
    assert "example_inputs" in str(info.value) and "Hand-written weights" in str(info.value)
    x = HELL_ELLO
    with pytest.raises(fastrnn.UnsupportedLayerError, match="zero tensor made inside forward.*fastrnn.Recurrent"):
        fastrnn.from_torch(module, example_inputs=(x,))
    with pytest.raises(fastrnn.UnsupportedLayerError, match="batch of 2 or more.*fastrnn.Recurrent"):
        fastrnn.from_torch(module, example_inputs=(x[:1],))  # a batch of one: torch.export fixes it


def test_hand_written_loop_from_a_constant_state_is_refused():
    """torch.zeros(1, H) is a constant (broadcast over the batch): the steps still depend on each other."""
    class Fixed(NotesRNN):
        def forward(self, x):
            h = torch.zeros(1, self.hidden)
            ys = []
            for t in range(x.size(1)):
                h = torch.tanh(self.W_xh(x[:, t]) + self.W_hh(h))
                ys.append(self.W_hy(h))
            return torch.stack(ys, 1)

    with pytest.raises(fastrnn.UnsupportedLayerError, match="combines steps .* of the loop.*fastrnn.Recurrent"):
        fastrnn.from_torch(Fixed().eval(), example_inputs=(HELL_ELLO,))


class OneStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.i2h, self.h2h, self.h2o = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x, h):
        h = torch.tanh(self.i2h(x) + self.h2h(h))
        return self.h2o(h), h


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc1, self.fc2 = nn.GRU(4, 6, batch_first=True), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.rnn(x)[0])))


class Reordered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.rnn = nn.GRU(4, 6, batch_first=True)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


class BiLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.GRU(4, 6, batch_first=True, bidirectional=True), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])  # not the final state of the backward direction


class SoftmaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(4, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x):
        return torch.softmax(self.fc(self.rnn(x)[0]), dim=-1)


@pytest.mark.parametrize("module, kwargs, message", [
    (OneStep, {}, "self.h2h is applied to a value computed from h"),
    (FunctionalRelu, {}, "relu"),
    (Reordered, {}, "in the order"),
    (BiLast, {"return_sequences": False}, "other numbers than the chain"),
    (SoftmaxHead, {}, "pass activation='softmax'"),
])
def test_forward_that_is_not_the_chain_is_refused(module, kwargs, message):
    torch.manual_seed(1)
    with pytest.raises(fastrnn.UnsupportedLayerError, match=message):
        fastrnn.from_torch(module().eval(), **kwargs)


def test_forward_that_is_the_chain_is_read():
    torch.manual_seed(1)
    m = SoftmaxHead().train()
    m.fc.eval()
    model = fastrnn.from_torch(m, activation="softmax")  # forward runs once, in eval mode
    assert m.training and m.rnn.training and not m.fc.training  # the module's modes are left as they were
    m.eval()
    x = np.random.default_rng(0).standard_normal((3, 7, 4)).astype(np.float32)
    assert_close(model.predict(x), out(m, x), **TOL)
    # BiLast's forward, captured as it is
    m = BiLast().eval()
    model = fastrnn.from_torch(m, example_inputs=(torch.as_tensor(x),))
    assert_close(model.predict(x), out(m, x), **TOL)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_nobias"])
def test_bare_cells(cell, backend):
    torch.manual_seed(2)
    if cell.startswith("rnn"):
        module = nn.RNNCell(5, 7, nonlinearity=cell[4:])
    elif cell == "lstm":
        module = nn.LSTMCell(5, 7)
    else:
        module = nn.GRUCell(5, 7, bias=cell == "gru")
    model = fastrnn.from_torch(module)
    x = np.random.default_rng(3).standard_normal((3, 6, 5)).astype(np.float32)
    h0 = np.random.default_rng(4).standard_normal((3, 7)).astype(np.float32)
    c0 = np.random.default_rng(5).standard_normal((3, 7)).astype(np.float32)
    h, c = torch.as_tensor(h0), torch.as_tensor(c0)
    hs = []
    with torch.no_grad():
        for t in range(6):
            if cell == "lstm":
                h, c = module(torch.as_tensor(x[:, t]), (h, c))
            else:
                h = module(torch.as_tensor(x[:, t]), h)
            hs.append(h.numpy())
    state = (h0, c0) if cell == "lstm" else h0
    y, (final,) = model.predict(x, initial_state=[state], return_state=True, backend=backend)
    assert_close(y, np.stack(hs, 1), **TOL)
    assert_close(final[0] if cell == "lstm" else final, h.numpy()[None], **TOL)


class CellLM(nn.Module):
    """Embedding -> a cell run over the steps by a Python loop -> Linear at every step."""

    def __init__(self, cell, vocab=11, emb=5, hidden=7):
        super().__init__()
        self.hidden = hidden
        self.embedding = nn.Embedding(vocab, emb)
        self.cell = cell(emb, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids):
        x = self.embedding(ids)
        h = torch.zeros(ids.size(0), self.hidden)
        c = torch.zeros(ids.size(0), self.hidden)
        logits = []
        for t in range(ids.size(1)):
            if isinstance(self.cell, nn.LSTMCell):
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            logits.append(self.out(h))
        return torch.stack(logits, dim=1)


@pytest.mark.parametrize("cell", [nn.RNNCell, nn.LSTMCell, nn.GRUCell])
def test_loop_over_a_cell(cell, backend):
    torch.manual_seed(3)
    module = CellLM(cell).eval()
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 11, (2, 5)),))
    assert [type(layer).__name__ for layer in model.layers] == ["Embedding", "Recurrent", "Dense"]
    for shape in ((3, 9), (1, 1), (2, 5)):  # any batch and length, not only the example's
        ids = np.random.default_rng(sum(shape)).integers(0, 11, size=shape)
        assert_close(model.predict(ids, backend=backend), out(module, ids), **TOL)
    # greedy generation: the torch loop feeding back its argmax
    ids = [3, 1]
    for _ in range(6):
        ids.append(int(out(module, np.array([ids]))[0, -1].argmax()))
    assert model.generate([3, 1], temperature=0, max_new_tokens=6, backend=backend) == ids[2:]


class StackedCells(nn.Module):
    """Two GRU cells, time-major input (x[t]), outputs gathered with unsqueeze + cat, the final
    state of the second cell returned too."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.GRUCell(4, 6), nn.GRUCell(6, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):  # (T, B, 4)
        h1 = torch.zeros(x.size(1), 6)
        h2 = torch.zeros(x.size(1), 5)
        ys = []
        for t in range(x.size(0)):
            h1 = self.c1(x[t], h1)
            h2 = self.c2(h1, h2)
            ys.append(torch.log_softmax(self.fc(h2), -1).unsqueeze(0))
        return torch.cat(ys, 0), h2


def test_stacked_cells_time_major():
    torch.manual_seed(4)
    module = StackedCells().eval()
    model = fastrnn.from_torch(module, example_inputs=(torch.randn(4, 2, 4),))
    x = np.random.default_rng(1).standard_normal((7, 3, 4)).astype(np.float32)
    with torch.no_grad():
        y, h = module(torch.as_tensor(x))
    got = model.predict(x)
    assert_close(got[0], y.numpy(), **TOL)
    assert_close(got[1], h.numpy(), **TOL)


class CellClassifier(nn.Module):
    """A loop over x.unbind(1) keeping only the last state; the initial state is an argument."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(4, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x, h0, c0):
        h, c = h0, c0
        for x_t in x.unbind(1):
            h, c = self.cell(x_t, (h, c))
        return torch.softmax(self.fc(h), -1)


def test_cell_classifier_final_state_and_lengths():
    torch.manual_seed(5)
    module = CellClassifier().eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8, 4)).astype(np.float32)
    h0, c0 = (rng.standard_normal((3, 6)).astype(np.float32) for _ in range(2))
    model = fastrnn.from_torch(module, example_inputs=(torch.as_tensor(x[:, :5]), torch.as_tensor(h0),
                                                       torch.as_tensor(c0)))
    assert_close(model.predict([x, h0, c0]), out(module, x, h0, c0), **TOL)
    # the last state is the recurrent layer's final state: right padding with lengths is exact
    lengths = np.array([8, 3, 5])
    got = model.predict([x, h0, c0], lengths=[lengths, None, None])
    for b, n in enumerate(lengths):
        assert_close(got[b], out(module, x[b:b + 1, :n], h0[b:b + 1], c0[b:b + 1])[0], **TOL)


def test_cell_loop_that_skips_steps_is_refused():
    class Partial(CellLM):
        def forward(self, ids):
            x = self.embedding(ids)
            h = torch.zeros(ids.size(0), self.hidden)
            logits = []
            for t in range(1, ids.size(1)):  # starts at step 1
                h = self.cell(x[:, t], h)
                logits.append(self.out(h))
            return torch.stack(logits, dim=1)

    with pytest.raises(fastrnn.UnsupportedLayerError, match="starts an nn.GRUCell loop at step 1"):
        fastrnn.from_torch(Partial(nn.GRUCell).eval(), example_inputs=(torch.randint(0, 11, (2, 5)),))


class WordsegModel(nn.Module):
    """nokcut's model (nokcut 0.4, nokcut/__init__.py), at a smaller size: unbatched ids in,
    ``torch.LongTensor`` inside forward, a bidirectional GRU on a batch of one, log-probabilities
    of break / no break per character."""

    def __init__(self, no_subword=50, dim_charvec=12, dim_trans=8, no_layers=2):
        super().__init__()
        self._charemb = nn.Embedding(no_subword, dim_charvec)
        self._rnn = nn.GRU(dim_charvec, dim_trans, no_layers, batch_first=True, bidirectional=True)
        self._tanh = nn.Tanh()
        self._hidden = nn.Linear(2 * dim_trans, 2)
        self._log_softmax = nn.LogSoftmax(dim=1)

    def forward(self, charidxs):
        charvecs = self._charemb(torch.LongTensor(charidxs).to("cpu"))
        ctxvecs, lasthids = self._rnn(charvecs.unsqueeze(0))
        ctxvecs, lasthids = ctxvecs.squeeze(0), lasthids.squeeze(1)
        statevecs = self._hidden(self._tanh(ctxvecs))
        return self._log_softmax(statevecs)


def test_nokcut_wordseg_model(backend):
    torch.manual_seed(6)
    module = WordsegModel().eval()
    model = fastrnn.from_torch(module, example_inputs=(torch.tensor([5, 10, 7, 9, 30]),))
    for n in (1, 7, 40):
        ids = np.random.default_rng(n).integers(0, 50, size=n)
        assert_close(model.predict(ids, backend=backend), out(module, ids), **TOL)


def test_casts_inside_forward():
    class IdsToFloat(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, ids):
            return self.rnn(ids.float())[0]

    with pytest.raises(fastrnn.UnsupportedLayerError, match="converts token ids into numbers"):
        fastrnn.from_torch(IdsToFloat(), example_inputs=(torch.randint(0, 3, (2, 4, 3)),))

    class Int32Ids(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn = nn.Embedding(9, 3), nn.GRU(3, 4, batch_first=True)

        def forward(self, ids):
            return self.rnn(self.emb(ids.int().long()))[0]

    module = Int32Ids().eval()
    model = fastrnn.from_torch(module, example_inputs=(torch.randint(0, 9, (2, 4)),))
    ids = np.random.default_rng(0).integers(0, 9, size=(3, 6))
    assert_close(model.predict(ids), out(module, ids), **TOL)
