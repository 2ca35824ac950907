"""The plain NumPy reference of every layer: the specification the compiled kernels must match.

Written to be read, not to be fast: one short function per layer, one time step at a time,
the math of each cell spelled out. Shapes are batch-major: x (B, T, F), lengths (B,) int.
Internal layout and gate orders are those of fastrnn.layers (PyTorch's): LSTM i|f|g|o,
GRU r|z|n. Every backend is tested against these functions, and these functions are tested
against PyTorch, Keras and ONNX Runtime.
"""
from __future__ import annotations

import numpy as np

from .activations import Activation, apply_activation
from .layers import Dense, Embedding, Recurrent

f32 = np.float32


def embedding(layer: Embedding, ids: np.ndarray) -> np.ndarray:
    """ids (B, T) int -> (B, T, E)."""
    return layer.weight[ids]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(f32)


def dense(layer: Dense, x: np.ndarray) -> np.ndarray:
    """x (..., in) -> act(x @ W.T + b) (..., out); softmax over the last axis."""
    y = x @ layer.weight.T
    if layer.bias is not None:
        y = y + layer.bias
    return dense_activation(layer, y.astype(f32))


def dense_activation(layer: Dense, y: np.ndarray) -> np.ndarray:
    """The activation of a Dense layer on its affine output y (..., out) float32."""
    if layer.activation == "softmax":
        return softmax(y)
    if layer.activation == "linear":
        return y
    return apply_activation(Activation.of(layer.activation), y)


def _clip(x, clip):
    return x if clip is None else np.clip(x, -clip, clip)


def cell_step(layer: Recurrent, w, x_t, h, c):
    """One step of one direction for a batch. x_t (B, I), h (B, H_out), c (B, H) or None.

    Returns (h', c'). The cell math, exactly as in kernels/README.md."""
    H = layer.hidden_size
    zero = np.zeros(layer.gates * H, f32)
    b_ih = zero if w.b_ih is None else w.b_ih
    b_hh = zero if w.b_hh is None else w.b_hh
    xw = x_t @ w.w_ih.T + b_ih  # (B, G*H)
    hw = h @ w.w_hh.T + b_hh  # (B, G*H)
    act = layer.activations
    clip = layer.clip

    if layer.cell == "rnn":
        # h' = f(W_ih x + b_ih + W_hh h + b_hh)
        return apply_activation(act[0], _clip(xw + hw, clip)), None

    if layer.cell == "lstm":
        a = xw + hw
        a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))
        p = np.zeros((3, H), f32) if w.peephole is None else w.peephole  # rows i|f|o
        i = apply_activation(act[0], _clip(a_i + p[0] * c, clip))
        if layer.input_forget:
            f = (1 - i).astype(f32)
        else:
            f = apply_activation(act[0], _clip(a_f + p[1] * c, clip))
        g = apply_activation(act[1], _clip(a_g, clip))
        c_new = f * c + i * g  # c' = f*c + i*g
        o = apply_activation(act[0], _clip(a_o + p[2] * c_new, clip))
        m = o * apply_activation(act[2], c_new)  # m = o * h(c')
        h_new = m @ w.w_hr.T if w.w_hr is not None else m  # projection: h' = W_hr m
        return h_new.astype(f32), c_new.astype(f32)

    # GRU
    x_r, x_z, x_n = (xw[:, k * H:(k + 1) * H] for k in range(3))
    h_r, h_z, h_n = (hw[:, k * H:(k + 1) * H] for k in range(3))
    r = apply_activation(act[0], _clip(x_r + h_r, clip))
    z = apply_activation(act[0], _clip(x_z + h_z, clip))
    if layer.linear_before_reset:
        # n = g(W_in x + b_in + r * (W_hn h + b_hn))
        n = apply_activation(act[1], _clip(x_n + r * h_n, clip))
    else:
        # n = g(W_in x + b_in + W_hn (r * h) + b_hn)
        w_hn = w.w_hh[2 * H:3 * H]
        b_hn = b_hh[2 * H:3 * H]
        n = apply_activation(act[1], _clip(x_n + (r * h) @ w_hn.T + b_hn, clip))
    return ((1 - z) * n + z * h).astype(f32), None  # h' = (1 - z) n + z h


def run_direction(layer: Recurrent, w, x, lengths, backward, h0, c0):
    """Scan one direction. x (B, T, I); lengths (B,); backward: from each row's last valid
    step down to 0. Returns y (B, T, H_out) with outputs at their own time positions and 0 at
    padded steps, and the final (h, c) (the state after each row's last processed step)."""
    B, T, _ = x.shape
    h, c = h0.astype(f32), None if c0 is None else c0.astype(f32)
    y = np.zeros((B, T, layer.output_size_per_direction), f32)
    steps = range(T - 1, -1, -1) if backward else range(T)
    for t in steps:
        valid = (t < lengths)[:, None]  # padded steps leave the state alone
        h_new, c_new = cell_step(layer, w, x[:, t], h, c)
        h = np.where(valid, h_new, h)
        if c is not None:
            c = np.where(valid, c_new, c)
        y[:, t] = np.where(valid, h_new, 0)
    return y, h, c


def recurrent(layer: Recurrent, x, lengths=None, state=None):
    """x (B, T, I) -> (y, state).

    y: (B, T, F) if return_sequences else (B, F), F = layer.output_size.
    state: h (D, B, H_out) for rnn/gru, (h, c) with c (D, B, H) for lstm; None = zeros."""
    B, T, _ = x.shape
    D, Ho, H = layer.num_directions, layer.output_size_per_direction, layer.hidden_size
    lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    if state is None:
        h0 = np.zeros((D, B, Ho), f32)
        c0 = np.zeros((D, B, H), f32) if layer.cell == "lstm" else None
    elif layer.cell == "lstm":
        h0, c0 = state
    else:
        h0, c0 = state, None

    ys, hs, cs = [], [], []
    for d, w in enumerate(layer.directions):
        backward = d == 1 or layer.reverse or layer.go_backwards
        y, h, c = run_direction(layer, w, x, lengths, backward, h0[d], None if c0 is None else c0[d])
        if layer.go_backwards:
            y = y[:, ::-1]  # Keras: output[t] is the t-th step of the reversed scan
        elif layer.masked_output == "hold" and not backward and D == 1:
            # Keras: a padded step repeats the last valid output
            for b in range(B):
                if 0 < lengths[b] < T:
                    y[b, lengths[b]:] = y[b, lengths[b] - 1]
        ys.append(y)
        hs.append(h)
        cs.append(c)

    outs = ys if layer.return_sequences else hs
    if D == 1:
        out = outs[0]
    elif layer.merge_mode == "concat":
        out = np.concatenate(outs, axis=-1)
    elif layer.merge_mode == "sum":
        out = outs[0] + outs[1]
    elif layer.merge_mode == "mul":
        out = outs[0] * outs[1]
    else:  # ave
        out = (outs[0] + outs[1]) / 2
    h_n = np.stack(hs)
    new_state = (h_n, np.stack(cs)) if layer.cell == "lstm" else h_n
    return np.ascontiguousarray(out, dtype=f32), new_state
