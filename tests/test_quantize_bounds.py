"""Reduced-precision weights, checked against bounds derived from the quantization step (issue 18).

- A quantized file computes exactly the model with rounded weights (test_quantize.py checks that
  against PyTorch at FRAMEWORK_ATOL); here, how far that is from the float32 model on a Dense layer,
  where the bound is exact: int8 rounds each weight to the nearest multiple of its row's scale,
  so |dy_n| <= scale_n / 2 * ||x||_1; float16 rounds to nearest with relative error <= 2^-11, so
  |dy_n| <= 2^-11 * sum_k |w_nk x_k|.
- Generation with weights="int8": the NumPy engine's logits equal PyTorch running the
  generation's quantization rule (every streamed matrix per row; the first layer's input weights
  and the embedding stay float32, they are in the lookup table) at FRAMEWORK_ATOL. The compiled
  engines also round each matmul input to int16 (scale s = max|x| / xmax): one step from the zero
  state, where only the output layer sees a rounded input, they differ from the NumPy engine by at
  most scale_n * sum_k |q_nk| * s / 2.
"""
import numpy as np
import pytest
import torch

import fastrnn
from conftest import FRAMEWORK_ATOL
from fastrnn import generate as g

ENGINES = g.available_engines()
F32_EPS = np.finfo(np.float32).eps


def per_row_int8(w):
    """scale = max |row| / 127, q = round(w / scale): (q, scale (N, 1)), independent of fastrnn."""
    top = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(top > 0, top / 127, 1).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127), scale


def float32_rounding(w, x):
    """A bound on float32 rounding of y = W x (K terms): K * eps * sum |w x|, plus a floor."""
    return w.shape[1] * F32_EPS * (np.abs(w) @ np.abs(x).T).T + 1e-7


@pytest.fixture(scope="module")
def dense_case():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((50, 64)) * 0.3).astype(np.float32)
    w[3] *= 40  # rows of very different ranges: a per-matrix scale would break the int8 bound
    w[7, :] = 0  # an all-zero row
    b = rng.standard_normal(50).astype(np.float32)
    x = rng.standard_normal((4, 3, 64)).astype(np.float32)
    return fastrnn.Model([fastrnn.Dense(w, b)]), w, x


@pytest.mark.parametrize("backend", fastrnn.available_backends())
def test_int8_dense_error_within_half_a_step(dense_case, tmp_path, backend):
    model, w, x = dense_case
    fastrnn.save(model, tmp_path / "d8.safetensors", quantize="int8")
    got = fastrnn.load(tmp_path / "d8.safetensors").predict(x, backend=backend).reshape(-1, 50)
    want = model.predict(x, backend="numpy").reshape(-1, 50)
    x2 = x.reshape(-1, 64)
    _, scale = per_row_int8(w)
    bound = scale[:, 0] / 2 * np.abs(x2).sum(axis=1, keepdims=True) + float32_rounding(w, x2)
    err = np.abs(got - want)
    assert np.all(err <= bound), f"worst error / bound: {(err / bound).max():.3f}"
    assert np.all(err[:, 7] <= 1e-6), "an all-zero row stays exact"
    assert (err / bound).max() > 0.05, "the weights were quantized at all"


@pytest.mark.parametrize("backend", fastrnn.available_backends())
def test_float16_dense_error_within_relative_half_ulp(dense_case, tmp_path, backend):
    model, w, x = dense_case
    fastrnn.save(model, tmp_path / "d16.safetensors", quantize="float16")
    got = fastrnn.load(tmp_path / "d16.safetensors").predict(x, backend=backend).reshape(-1, 50)
    want = model.predict(x, backend="numpy").reshape(-1, 50)
    x2 = x.reshape(-1, 64)
    bound = 2.0 ** -11 * (np.abs(w) @ np.abs(x2).T).T + 2 * float32_rounding(w, x2)
    err = np.abs(got - want)
    assert np.all(err <= bound), f"worst error / bound: {(err / bound).max():.3f}"
    assert (err / bound).max() > 0.01, "the weights were rounded at all"


# -- generation with int8 weights --------------------------------------------------------------
class CharNet(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(30, 12)
        self.lstm = torch.nn.LSTM(12, 40, num_layers=layers, batch_first=True)
        self.fc = torch.nn.Linear(40, 30)


def char_net(layers, seed=0):
    torch.manual_seed(seed)
    net = CharNet(layers).eval()
    with torch.no_grad():
        for p in net.parameters():  # 3x the default init: logits near 1, saturating gates
            p.mul_(3.0)
    return net


def generation_rule(net):
    """The torch module with the matrices generation streams quantized per row, as documented in
    fastrnn/generate.py: W_hh of the first layer, [W_ih | W_hh] of the others (one scale per row
    of the pair), the output Linear. The embedding and the first W_ih (the table) stay float32."""
    with torch.no_grad():
        for k in range(net.lstm.num_layers):
            w_hh = getattr(net.lstm, f"weight_hh_l{k}")
            if k == 0:
                q, s = per_row_int8(w_hh.numpy())
                w_hh.copy_(torch.from_numpy((q * s).astype(np.float32)))
            else:
                w_ih = getattr(net.lstm, f"weight_ih_l{k}")
                both = np.concatenate([w_ih.numpy(), w_hh.numpy()], axis=1)
                q, s = per_row_int8(both)
                both = (q * s).astype(np.float32)
                w_ih.copy_(torch.from_numpy(both[:, : w_ih.shape[1]]))
                w_hh.copy_(torch.from_numpy(both[:, w_ih.shape[1]:]))
        q, s = per_row_int8(net.fc.weight.numpy())
        net.fc.weight.copy_(torch.from_numpy((q * s).astype(np.float32)))
    return net


def test_int8_generation_reference_equals_pytorch_with_the_rule():
    net = char_net(layers=2)
    model = fastrnn.from_torch(net)
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, 30, 25)]
    session = model.session(weights="int8", backend="numpy")
    session.feed(prompt)
    ref = generation_rule(char_net(layers=2))
    with torch.no_grad():
        y, _ = ref.lstm(ref.embedding(torch.tensor([prompt])))
        want = ref.fc(y[0, -1]).numpy()
    assert np.abs(want).max() > 0.5, "logits near 1: a 1% scale error moves them by ~1e-2, 100x the tolerance"
    np.testing.assert_allclose(session.logits(), want, atol=FRAMEWORK_ATOL, rtol=0)


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "numpy"])
def test_int8_compiled_engines_within_the_int16_input_step(engine):
    """One token from the zero state through Embedding -> LSTM -> Linear: the LSTM's recurrent
    product sees h = 0 (exact in int16), so the engines hold the same h; only the Linear's input
    is rounded to int16, and the logits may differ by scale_n * sum_k |q_nk| * s / 2."""
    net = char_net(layers=1)
    model = fastrnn.from_torch(net)
    xmax = min(32767, (2 ** 31 - 1) // (127 * 40))  # kernels: no int32 sum of K = 40 products overflows
    q, scale = per_row_int8(net.fc.weight.detach().numpy())
    for token in range(30):
        exact = model.session(weights="int8", backend="numpy")
        exact.feed([token])
        h = exact.states()[0][0][0, 0]  # (h, c) of the only layer, direction 0, row 0
        s = np.abs(h).max() / xmax
        bound = scale[:, 0] * np.abs(q).sum(axis=1) * s / 2 + 1e-5 * (1 + np.abs(exact.logits()))
        compiled = model.session(weights="int8", backend=engine)
        compiled.feed([token])
        err = np.abs(compiled.logits() - exact.logits())
        assert np.all(err <= bound), f"token {token}: worst error / bound {(err / bound).max():.2f}"
