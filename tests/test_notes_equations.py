"""The recipe of docs/lecture-notes.md "Hand-written weights" (issue 22.7): the notes'
NumPy equations, written here as the notes write them, equal fastrnn.Recurrent built from the
same matrices (orientation out = W @ in, note 004's transposed form, gate orders, the GRU's update
gate u = 1 - z with the reset before the product, a sigmoid state), on every backend; and the
PyTorch module the error message is about (three nn.Linear and a loop) equals the layer built
from its matrices."""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close, require
from fastrnn import Dense, DirectionWeights, Recurrent

TOL = dict(atol=1e-5, rtol=1e-5)
T, I, H, V = 10, 4, 8, 4


def sig(a):
    return 1 / (1 + np.exp(-a))


@pytest.fixture
def xs():
    return np.random.default_rng(0).random((T, I)).astype(np.float32)  # note 001: np.random.random((T, input_dim))


def test_note_001_numpy_rnn(xs, backend):
    rng = np.random.default_rng(1)
    Wx, Wh, b = rng.random((H, I)), rng.random((H, H)) * 0.2, rng.random((H,))
    hidden_state_t, total = np.zeros((H,)), []
    for input_t in xs:
        output_t = np.tanh(np.dot(Wx, input_t) + np.dot(Wh, hidden_state_t) + b)
        total.append(list(output_t))
        hidden_state_t = output_t
    layer = Recurrent("rnn", H, [DirectionWeights(w_ih=Wx, w_hh=Wh, b_ih=b)])
    assert_close(fastrnn.Model([layer]).predict(xs[None], backend=backend)[0], np.stack(total), **TOL)


def test_note_004_transposed_form(xs, backend):
    rng = np.random.default_rng(2)
    W_xh, W_hh, W_hy = rng.normal(size=(I, H)), rng.normal(size=(H, H)) * 0.3, rng.normal(size=(H, V))
    h, ys = np.zeros(H), []
    for x_t in xs:
        h = np.tanh(W_hh.T @ h + W_xh.T @ x_t)
        ys.append(W_hy.T @ h)
    model = fastrnn.Model([Recurrent("rnn", H, [DirectionWeights(w_ih=W_xh.T, w_hh=W_hh.T)]), Dense(W_hy.T)])
    assert_close(model.predict(xs[None], backend=backend)[0], np.stack(ys), **TOL)
    # forgetting the transpose is not silently accepted when the shapes differ
    with pytest.raises(ValueError, match="w_ih has shape"):
        Recurrent("rnn", H, [DirectionWeights(w_ih=W_xh, w_hh=W_hh.T)])


@pytest.mark.parametrize("reset_before", [True, False])
def test_note_002_gru_update_gate(xs, backend, reset_before):
    rng = np.random.default_rng(3)
    W = {k: rng.normal(size=(H, H)) * 0.3 for k in "urh"}
    U = {k: rng.normal(size=(H, I)) for k in "urh"}
    b = {k: rng.normal(size=H) for k in "urh"}
    h, ref = np.zeros(H), []
    for x_t in xs:
        u = sig(W["u"] @ h + U["u"] @ x_t + b["u"])
        r = sig(W["r"] @ h + U["r"] @ x_t + b["r"])
        if reset_before:  # the notes: W_h (r ∘ h)
            h_tilde = np.tanh(W["h"] @ (r * h) + U["h"] @ x_t + b["h"])
        else:  # PyTorch's form: r ∘ (W_h h)
            h_tilde = np.tanh(r * (W["h"] @ h) + U["h"] @ x_t + b["h"])
        h = (1 - u) * h + u * h_tilde
        ref.append(h)
    gru = Recurrent("gru", H, [DirectionWeights(w_ih=np.concatenate([U["r"], -U["u"], U["h"]]),
                                                w_hh=np.concatenate([W["r"], -W["u"], W["h"]]),
                                                b_ih=np.concatenate([b["r"], -b["u"], b["h"]]))],
                    linear_before_reset=not reset_before)
    assert_close(fastrnn.Model([gru]).predict(xs[None], backend=backend)[0], np.stack(ref), **TOL)


def test_note_003_sigmoid_state_space(xs, backend):
    rng = np.random.default_rng(4)
    W_xx, W_xu, b_x = rng.normal(size=(H, H)) * 0.3, rng.normal(size=(H, I)), rng.normal(size=H)
    W_yx, b_y = rng.normal(size=(2, H)), rng.normal(size=2)
    x, ys = np.zeros(H), []
    for u_t in xs:
        x = sig(W_xx @ x + W_xu @ u_t + b_x)
        ys.append(sig(W_yx @ x + b_y))
    model = fastrnn.Model([Recurrent("rnn", H, [DirectionWeights(w_ih=W_xu, w_hh=W_xx, b_ih=b_x)],
                                     activations=("sigmoid",)),
                           Dense(W_yx, b_y, activation="sigmoid")])
    assert_close(model.predict(xs[None], backend=backend)[0], np.stack(ys), **TOL)


def test_lstm_gate_blocks(xs, backend):
    """Notes 001 / 002's LSTM: input, forget, cell (g) and output gates, stacked i | f | g | o."""
    rng = np.random.default_rng(5)
    Wx = {k: rng.normal(size=(H, I)) for k in "ifgo"}
    Wh = {k: rng.normal(size=(H, H)) * 0.3 for k in "ifgo"}
    b = {k: rng.normal(size=H) for k in "ifgo"}
    h, c, ref = np.zeros(H), np.zeros(H), []
    for x_t in xs:
        a = {k: Wx[k] @ x_t + Wh[k] @ h + b[k] for k in "ifgo"}
        c = sig(a["f"]) * c + sig(a["i"]) * np.tanh(a["g"])
        h = sig(a["o"]) * np.tanh(c)
        ref.append(h)
    lstm = Recurrent("lstm", H, [DirectionWeights(w_ih=np.concatenate([Wx[k] for k in "ifgo"]),
                                                 w_hh=np.concatenate([Wh[k] for k in "ifgo"]),
                                                 b_ih=np.concatenate([b[k] for k in "ifgo"]))])
    assert_close(fastrnn.Model([lstm]).predict(xs[None], backend=backend)[0], np.stack(ref), **TOL)


def test_the_refused_torch_module_built_from_its_matrices():
    """What the error of from_torch(NotesRNN) says to do: the same numbers as its forward."""
    torch = require("torch")
    from test_torch_cells import NotesRNN

    torch.manual_seed(0)
    module = NotesRNN(vocab=V, hidden=H).eval()
    with pytest.raises(fastrnn.UnsupportedLayerError):
        fastrnn.from_torch(module)
    w = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = fastrnn.Model([Recurrent("rnn", H, [DirectionWeights(w_ih=w["W_xh.weight"], w_hh=w["W_hh.weight"],
                                                                 b_ih=w["W_xh.bias"])]),
                           Dense(w["W_hy.weight"], w["W_hy.bias"])], vocabulary="helo")
    x = np.eye(V, dtype=np.float32)[[[0, 1, 2, 2], [1, 2, 2, 3]]]
    with torch.no_grad():
        expected = module(torch.as_tensor(x)).numpy()
    assert_close(model.predict(x), expected, **TOL)
    assert model.generate("h", temperature=0, max_new_tokens=3) == "".join(
        "helo"[i] for i in _greedy(module, torch, [0], 3))


def _greedy(module, torch, ids, n):
    out = []
    for _ in range(n):
        x = torch.eye(V)[torch.tensor([ids])]
        with torch.no_grad():
            k = int(module(x)[0, -1].argmax())
        out.append(k)
        ids = ids + [k]
    return out
