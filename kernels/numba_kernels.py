"""Numba JIT kernels: the same entry points as the Cython module (contract: kernels/README.md).

Used when the compiled extension is not built. Imported lazily by fastrnn.backends; nothing is
compiled at import (each kernel compiles on its first call and is cached on disk when possible).
Works as plain Python under NUMBA_DISABLE_JIT=1.

Layout: ``pack_weight(W)`` returns W transposed, (K, N) contiguous, so the inner loop
``out[b, :] += in[b, k] * Wt[k, :]`` is unit-stride and vectorises. Sums over k run in the same
order for every row, so a row's result does not depend on the other rows of the batch.
"""
import math

import numpy as np
from numba import njit

JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def pack_weight(W):
    """W (N, K), out = W @ in  ->  Wt (K, N) float32 contiguous."""
    return np.ascontiguousarray(np.asarray(W, dtype=np.float32).T)


@njit(**JIT)
def activate(code, alpha, beta, x):
    """One activation (codes of kernels/README.md) of one float."""
    if code == 0:  # sigmoid
        return 1.0 / (1.0 + math.exp(-x)) if x >= -88.0 else 0.0
    if code == 1:
        return math.tanh(x)
    if code == 2:
        return x if x > 0.0 else 0.0
    if code == 3:  # affine
        return alpha * x + beta
    if code == 4:  # hard_sigmoid
        v = alpha * x + beta
        return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)
    if code == 5:  # leaky_relu
        return x if x >= 0.0 else alpha * x
    if code == 6:  # thresholded_relu
        return x if x > alpha else 0.0
    if code == 7:  # scaled_tanh
        return alpha * math.tanh(beta * x)
    if code == 8:  # elu
        return x if x >= 0.0 else alpha * (math.exp(x) - 1.0)
    if code == 9:  # softsign
        return x / (1.0 + abs(x))
    if code == 10:  # softplus, stable
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    if code == 11:  # exponential
        return math.exp(x) if x < 88.7 else math.inf
    if code == 12:  # selu
        return SELU_SCALE * (x if x > 0.0 else SELU_ALPHA * (math.exp(x) - 1.0))
    # 13 swish
    return x / (1.0 + math.exp(-x)) if x >= -88.0 else 0.0


@njit(**JIT)
def _clip(x, clip):
    return -clip if x < -clip else (clip if x > clip else x)


@njit(**JIT)
def _matmul_acc(inp, rows, Wt, out):
    """out[b, :] += inp[b, :] @ Wt for b in rows.   inp (B, K), Wt (K, N), out (B, N)."""
    K, N = Wt.shape
    for b in rows:
        for k in range(K):
            v = inp[b, k]
            if v != 0.0:
                for j in range(N):
                    out[b, j] += v * Wt[k, j]


@njit(**JIT)
def _active_rows(lengths, t, backward, T):
    """Rows that process step t (t < length), as an index array."""
    n = 0
    for b in range(lengths.shape[0]):
        if t < min(lengths[b], T):
            n += 1
    rows = np.empty(n, np.int64)
    n = 0
    for b in range(lengths.shape[0]):
        if t < min(lengths[b], T):
            rows[n] = b
            n += 1
    return rows


@njit(**JIT)
def _zero_padded(y, lengths, y_offset, width):
    """y[b, t >= len_b, y_offset:y_offset+width] = 0."""
    B, T, _ = y.shape
    for b in range(B):
        for t in range(max(0, min(lengths[b], T)), T):
            for j in range(width):
                y[b, t, y_offset + j] = 0.0


@njit(**JIT)
def _rnn(xproj, Wt_hh, lengths, reverse, h, y, y_offset, acts, params, clip):
    # xproj (B, T, H); Wt_hh (H, H) packed; h INOUT (B, H); y OUT (B, T, Y)
    B, T, H = xproj.shape
    gates = np.empty((B, H), np.float32)
    for s in range(T):
        t = T - 1 - s if reverse else s
        rows = _active_rows(lengths, t, reverse, T)
        for b in rows:
            for j in range(H):
                gates[b, j] = xproj[b, t, j]
        _matmul_acc(h, rows, Wt_hh, gates)
        # h' = f(xp + W_hh h)
        for b in rows:
            for j in range(H):
                v = activate(acts[0], params[0, 0], params[0, 1], _clip(gates[b, j], clip))
                h[b, j] = v
                y[b, t, y_offset + j] = v
    _zero_padded(y, lengths, y_offset, H)


@njit(**JIT)
def _lstm(xproj, Wt_hh, Wt_hr, has_proj, peep, has_peep, lengths, reverse, h, c, y, y_offset, acts, params,
          clip, input_forget):
    # xproj (B, T, 4H) gates i|f|g|o; Wt_hh (H_out, 4H); Wt_hr (H, P); peep (3, H) rows i|f|o
    B, T, G4 = xproj.shape
    H = G4 // 4
    Ho = h.shape[1]
    gates = np.empty((B, G4), np.float32)
    m = np.zeros((B, H), np.float32)
    hp = np.zeros((B, Ho), np.float32)
    fa, fb = params[0, 0], params[0, 1]
    ga, gb = params[1, 0], params[1, 1]
    ha, hb = params[2, 0], params[2, 1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        rows = _active_rows(lengths, t, reverse, T)
        for b in rows:
            for j in range(G4):
                gates[b, j] = xproj[b, t, j]
        _matmul_acc(h, rows, Wt_hh, gates)
        for b in rows:
            for j in range(H):
                cp = c[b, j]
                pi = peep[0, j] * cp if has_peep else 0.0
                pf = peep[1, j] * cp if has_peep else 0.0
                i = activate(acts[0], fa, fb, _clip(gates[b, j] + pi, clip))
                if input_forget:
                    f = 1.0 - i
                else:
                    f = activate(acts[0], fa, fb, _clip(gates[b, H + j] + pf, clip))
                g = activate(acts[1], ga, gb, _clip(gates[b, 2 * H + j], clip))
                cn = f * cp + i * g  # c' = f*c + i*g
                po = peep[2, j] * cn if has_peep else 0.0
                o = activate(acts[0], fa, fb, _clip(gates[b, 3 * H + j] + po, clip))
                c[b, j] = cn
                m[b, j] = o * activate(acts[2], ha, hb, cn)  # m = o * h(c')
        if has_proj:
            # h' = W_hr m
            for b in rows:
                for j in range(Ho):
                    hp[b, j] = 0.0
            _matmul_acc(m, rows, Wt_hr, hp)
            for b in rows:
                for j in range(Ho):
                    h[b, j] = hp[b, j]
                    y[b, t, y_offset + j] = hp[b, j]
        else:
            for b in rows:
                for j in range(H):
                    h[b, j] = m[b, j]
                    y[b, t, y_offset + j] = m[b, j]
    _zero_padded(y, lengths, y_offset, Ho)


@njit(**JIT)
def _gru(xproj, Wt_rz, Wt_n, b_hn, lengths, reverse, h, y, y_offset, acts, params, clip, lbr):
    # xproj (B, T, 3H) gates r|z|n; Wt_rz (H, 2H); Wt_n (H, H); b_hn (H,)
    B, T, G3 = xproj.shape
    H = G3 // 3
    rz = np.empty((B, 2 * H), np.float32)
    hn = np.empty((B, H), np.float32)
    rh = np.zeros((B, H), np.float32)
    r = np.empty((B, H), np.float32)
    fa, fb = params[0, 0], params[0, 1]
    ga, gb = params[1, 0], params[1, 1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        rows = _active_rows(lengths, t, reverse, T)
        for b in rows:
            for j in range(2 * H):
                rz[b, j] = xproj[b, t, j]
            for j in range(H):
                hn[b, j] = 0.0
        _matmul_acc(h, rows, Wt_rz, rz)
        for b in rows:
            for j in range(H):
                r[b, j] = activate(acts[0], fa, fb, _clip(rz[b, j], clip))
        if lbr:
            _matmul_acc(h, rows, Wt_n, hn)
        else:
            for b in rows:
                for j in range(H):
                    rh[b, j] = r[b, j] * h[b, j]
            _matmul_acc(rh, rows, Wt_n, hn)
        for b in rows:
            for j in range(H):
                z = activate(acts[0], fa, fb, _clip(rz[b, H + j], clip))
                if lbr:
                    # n = g(xp_n + r * (W_hn h + b_hn))
                    a = xproj[b, t, 2 * H + j] + r[b, j] * (hn[b, j] + b_hn[j])
                else:
                    # n = g(xp_n + W_hn (r * h) + b_hn)
                    a = (xproj[b, t, 2 * H + j] + hn[b, j]) + b_hn[j]
                n = activate(acts[1], ga, gb, _clip(a, clip))
                v = (1.0 - z) * n + z * h[b, j]  # h' = (1 - z) n + z h
                h[b, j] = v
                y[b, t, y_offset + j] = v
    _zero_padded(y, lengths, y_offset, H)


_EMPTY2 = np.zeros((1, 1), np.float32)
_EMPTY_PEEP = np.zeros((3, 1), np.float32)


def _steps(xproj, tokens):
    """xproj (B, T, G*H), or with tokens (B, T) the folded table (V, G*H): here a gather."""
    return xproj if tokens is None else xproj[tokens]


def rnn_sequence(xproj, w_hh, lengths, reverse, h, y, y_offset, cell, tokens=None):
    acts, params, clip, _, _ = cell
    _rnn(_steps(xproj, tokens), w_hh, lengths, bool(reverse), h, y, int(y_offset), acts, params, np.float32(clip))


def lstm_sequence(xproj, w_hh, w_hr, peephole, lengths, reverse, h, c, y, y_offset, cell, tokens=None):
    acts, params, clip, input_forget, _ = cell
    _lstm(_steps(xproj, tokens), w_hh, _EMPTY2 if w_hr is None else w_hr, w_hr is not None,
          _EMPTY_PEEP if peephole is None else peephole, peephole is not None, lengths, bool(reverse), h, c, y,
          int(y_offset), acts, params, np.float32(clip), bool(input_forget))


def gru_sequence(xproj, w_hh_rz, w_hh_n, b_hn, lengths, reverse, h, y, y_offset, cell, tokens=None):
    acts, params, clip, _, lbr = cell
    _gru(_steps(xproj, tokens), w_hh_rz, w_hh_n, b_hn, lengths, bool(reverse), h, y, int(y_offset), acts, params,
         np.float32(clip), bool(lbr))


@njit(**JIT)
def _matmul_rows(inp, Wt, out):
    """out[b, :] += inp[b, :] @ Wt for every row b.   inp (M, K), Wt (K, N), out (M, N).
    Each output is one sum over k in increasing order: a row's result never depends on M."""
    K, N = Wt.shape
    for b in range(inp.shape[0]):
        for k in range(K):
            v = inp[b, k]
            for j in range(N):
                out[b, j] += v * Wt[k, j]


def matmul_packed(inp, w, out):
    """out (M, N) += inp (M, K) @ W.T, with w = pack_weight(W).   All float32 C-contiguous."""
    _matmul_rows(inp, w, out)
