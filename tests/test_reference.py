"""The NumPy reference (the spec) against live PyTorch, for every cell and option torch has."""
import numpy as np
import pytest
import torch

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close

torch.set_num_threads(1)

CONFIGS = [
    # (module class, kwargs)
    (torch.nn.RNN, dict(nonlinearity="tanh")),
    (torch.nn.RNN, dict(nonlinearity="relu")),
    (torch.nn.GRU, {}),
    (torch.nn.LSTM, {}),
    (torch.nn.LSTM, dict(proj_size=3)),
]


def torch_run(module, x, lengths=None, h0=None):
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if lengths is not None:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False)
            out, state = module(packed, h0)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        else:
            out, state = module(xt, h0)
    return out.numpy(), state


def split_states(model, state):
    """fastrnn's per-layer states -> torch's stacked h_n (and c_n)."""
    h = np.concatenate([s[0] if isinstance(s, tuple) else s for s in state])
    c = np.concatenate([s[1] for s in state]) if isinstance(state[0], tuple) else None
    return h, c


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_reference_matches_torch(cls, kw, num_layers, bidirectional, bias):
    torch.manual_seed(0)
    module = cls(4, 6, num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=True, **kw).eval()
    model = fastrnn.from_torch(module)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    y, state = model.predict(x, return_state=True, backend="numpy")
    y_t, s_t = torch_run(module, x)
    assert_close(y, y_t, FRAMEWORK_ATOL, FRAMEWORK_RTOL, "output")
    h, c = split_states(model, state)
    if cls is torch.nn.LSTM:
        assert_close(h, s_t[0].numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "h_n")
        assert_close(c, s_t[1].numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "c_n")
    else:
        assert_close(h, s_t.numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "h_n")


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_reference_matches_torch_packed_lengths_and_initial_state(cls, kw, bidirectional):
    torch.manual_seed(1)
    module = cls(3, 5, num_layers=2, bidirectional=bidirectional, batch_first=True, **kw).eval()
    model = fastrnn.from_torch(module)
    rng = np.random.default_rng(1)
    B, T = 4, 7
    x = rng.standard_normal((B, T, 3)).astype(np.float32)
    lengths = np.array([7, 3, 5, 1], np.int64)
    D = 2 if bidirectional else 1
    Ho = kw.get("proj_size") or 5
    h0 = (rng.standard_normal((2 * D, B, Ho)) * 0.5).astype(np.float32)
    if cls is torch.nn.LSTM:
        c0 = (rng.standard_normal((2 * D, B, 5)) * 0.5).astype(np.float32)
        init_t = (torch.from_numpy(h0), torch.from_numpy(c0))
        init = [(h0[:D], c0[:D]), (h0[D:], c0[D:])]
    else:
        init_t = torch.from_numpy(h0)
        init = [h0[:D], h0[D:]]
    y, state = model.predict(x, lengths=lengths, initial_state=init, return_state=True, backend="numpy")
    y_t, s_t = torch_run(module, x, lengths, init_t)
    assert_close(y, y_t, FRAMEWORK_ATOL, FRAMEWORK_RTOL, "output")
    h, c = split_states(model, state)
    if cls is torch.nn.LSTM:
        assert_close(h, s_t[0].numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "h_n")
        assert_close(c, s_t[1].numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "c_n")
    else:
        assert_close(h, s_t.numpy(), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "h_n")
