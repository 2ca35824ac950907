"""fastrnn.kernels.numba_generate: the generation loop in Numba, for when the C extension
(kernels/_cygenerate.pyx + generate_core.c) is not built. Same entry points, same buffers and
the same step as kernels/generate_core.h; the sampler follows fastrnn/generate.py's NumPy
reference operation by operation (float64, sums in index order, SplitMix64).

Layers, as in the rest of fastrnn's kernels:
- ``_matmul_acc``, ``_activate``, ``_layer_step``, ``_dense_step``, ``_sample_token``: @njit
  functions for one piece of one step;
- ``_run``: the lockstep loop over steps (no allocation inside);
- ``CompiledModel`` / ``Runner``: thin Python classes that flatten the plan and own the scratch.
Weights are stored transposed, W.T (K, N) row-major in one flat buffer, so the inner loop of the
matrix multiply runs over contiguous outputs and vectorises without reordering any sum. For int8
weights the loop does what generate_core.c does (inputs quantized to int16, exact integer sums,
the same two float operations); the results still differ from C's in the last bits, because the
activation functions do (libm here, vectorised polynomials there), which can move an int16 input
by one step.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

f32 = np.float32

# generate_core.h
POS, LEN, NOUT, HAS_LOGITS, FINISHED, STOP_LEN, BAD_LOGITS, LIMIT = 0, 1, 2, 3, 4, 5, 6, 7
STATUS_COLS = 8
CELLS = {"rnn": 0, "lstm": 1, "gru": 2}

# layer meta columns (int64)
# (M_W*: offset of W.T in the weight buffer; M_S*: offset of int8 row scales, -1 for float weights)
(M_CELL, M_I, M_H, M_HOUT, M_HOFF, M_COFF, M_WA, M_NA, M_KA, M_BA, M_WXN, M_BXN, M_WHN, M_BHN, M_WHR,
 M_PEEP, M_ACT0, M_ACT1, M_ACT2, M_IF, M_LBR, M_SA, M_SXN, M_SHN, M_SHR) = range(25)
META_COLS = 25
# layer float params: alpha/beta of the three activations, clip
FMETA_COLS = 7

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0

SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


# ---- random numbers -------------------------------------------------------------------------
@njit(cache=True)
def _uniform(rng, b):
    """SplitMix64 draw from rng[b] (advanced): u in [0, 1)"""
    s = rng[b] + _GAMMA
    rng[b] = s
    z = s
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return np.float64(z >> _S11) * _INV53


# ---- logit processing and sampling ------------------------------------------------------------
@njit(cache=True)
def _select_nth(a, n, idx):
    """value at position idx of a[:n] sorted ascending (a reordered), Hoare quickselect"""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = lo + (hi - lo) // 2
        x, y, z = a[lo], a[mid], a[hi]
        if x < y:
            pivot = y if y < z else (z if x < z else x)
        else:
            pivot = x if x < z else (z if y < z else y)
        i, j = lo, hi
        while i <= j:
            while i <= hi and a[i] < pivot:
                i += 1
            while j >= lo and a[j] > pivot:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if idx <= j:
            hi = j
        elif idx >= i:
            lo = i
        else:
            return a[idx]
    return a[idx]


@njit(cache=True)
def _sift_down(heap, n, at, key):
    item = heap[at]
    while True:
        child = 2 * at + 1
        if child >= n:
            break
        if child + 1 < n and key[heap[child + 1]] > key[heap[child]]:
            child += 1
        if key[heap[child]] <= key[item]:
            break
        heap[at] = heap[child]
        at = child
    heap[at] = item


@njit(cache=True)
def _process_logits(logits, seen, V, temperature, top_k, top_p, penalty, y, e, tmp, heap):
    """logits (V,) f32 -> y (V,) f64 processed (-inf masked), e = exp(y); see generate_core.h"""
    for i in range(V):
        x = np.float64(logits[i])
        if penalty != 1.0 and seen[i]:
            x = x / penalty if x > 0.0 else x * penalty
        y[i] = x
    if temperature == 0.0:
        return
    top = y[0]
    for i in range(1, V):
        if y[i] > top:
            top = y[i]
    for i in range(V):
        y[i] = (y[i] - top) / temperature
    if top_k > 0 and top_k < V:
        for i in range(V):
            tmp[i] = y[i]
        kth = _select_nth(tmp, V, V - top_k)
        for i in range(V):
            if y[i] < kth:
                y[i] = -np.inf
    total = 0.0
    for i in range(V):
        e[i] = math.exp(y[i])
        total += e[i]
    if top_p < 1.0:
        target = top_p * total
        n = 0
        for i in range(V):
            if e[i] > 0.0:
                heap[n] = i
                n += 1
        for at in range(n // 2 - 1, -1, -1):
            _sift_down(heap, n, at, e)
        cum = 0.0
        threshold = -1.0
        while n > 0:
            best = heap[0]
            cum += e[best]
            if cum >= target:
                threshold = e[best]
                break
            n -= 1
            heap[0] = heap[n]
            _sift_down(heap, n, 0, e)
        if threshold > 0.0:
            for i in range(V):
                if e[i] < threshold:
                    e[i] = 0.0
                    y[i] = -np.inf


@njit(cache=True)
def _sample_token(logits, seen, V, temperature, top_k, top_p, penalty, rng, b, y, e, tmp, heap):
    _process_logits(logits, seen, V, temperature, top_k, top_p, penalty, y, e, tmp, heap)
    if temperature == 0.0:
        best = 0
        for i in range(1, V):
            if y[i] > y[best]:
                best = i
        return best
    u = _uniform(rng, b)
    total = 0.0
    for i in range(V):
        total += e[i]
    target = u * total
    cum = 0.0
    last = 0
    for i in range(V):
        if e[i] > 0.0:
            cum += e[i]
            last = i
            if cum > target:
                return i
    return last


# ---- layers -----------------------------------------------------------------------------------
@njit(cache=True)
def _act(code, alpha, beta, x):
    """one activation (codes of kernels/README.md) of a float"""
    if code == 0:
        return 1.0 / (1.0 + math.exp(-x))
    if code == 1:
        return math.tanh(x)
    if code == 2:
        return x if x > 0.0 else 0.0
    if code == 3:
        return alpha * x + beta
    if code == 4:
        v = alpha * x + beta
        return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)
    if code == 5:
        return x if x >= 0.0 else alpha * x
    if code == 6:
        return x if x > alpha else 0.0
    if code == 7:
        return alpha * math.tanh(beta * x)
    if code == 8:
        return x if x >= 0.0 else alpha * (math.exp(x) - 1.0)
    if code == 9:
        return x / (1.0 + abs(x))
    if code == 10:
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    if code == 11:
        return math.exp(x)
    if code == 12:
        return SELU_SCALE * (x if x > 0.0 else SELU_ALPHA * (math.exp(x) - 1.0))
    return x / (1.0 + math.exp(-x))  # 13 swish


@njit(cache=True)
def _activate(v, start, n, code, alpha, beta, clip):
    """v[start:start+n] <- act(clip(v)), clip to [-clip, clip] (inf = none)"""
    for j in range(start, start + n):
        x = np.float64(v[j])
        if x < -clip:
            x = -clip
        elif x > clip:
            x = clip
        v[j] = _act(code, alpha, beta, x)


@njit(cache=True)
def _int8_xmax(K):
    """generate_core.c's gen_int8_xmax: no int32 sum of K products can overflow"""
    K2 = (K + 1) // 2 * 2
    limit = 2147483647 // (127 * max(K2, 1))
    return min(limit, 32767)


@njit(cache=True)
def _matmul_acc(wbuf, qbuf, off, soff, K, N, x, x_col, n, out, out_col, xq, iacc):
    """out[i, out_col:out_col+N] += W @ x[i, x_col:x_col+K] for i < n; W.T (K, N) at wbuf[off:].
    soff >= 0: int8 weights, q.T at qbuf[off:], row scales at wbuf[soff:] (generate_core.h)."""
    if soff < 0:
        for i in range(n):
            o = out[i, out_col:out_col + N]
            for k in range(K):
                xk = x[i, x_col + k]
                w = wbuf[off + k * N: off + (k + 1) * N]
                for j in range(N):
                    o[j] += xk * w[j]
        return
    xmax = np.float32(_int8_xmax(K))
    for i in range(n):
        top = np.float32(0.0)
        for k in range(K):
            a = abs(x[i, x_col + k])
            if a > top:
                top = a
        s = top / xmax
        for k in range(K):
            v = np.float32(0.0)
            if s > 0:
                v = np.rint(x[i, x_col + k] / s)
            if v > xmax:
                v = xmax
            elif v < -xmax:
                v = -xmax
            xq[k] = np.int64(v)
        for j in range(N):
            iacc[j] = 0
        for k in range(K):
            xk = xq[k]
            q = qbuf[off + k * N: off + (k + 1) * N]
            for j in range(N):
                iacc[j] += q[j] * xk
        for j in range(N):
            ws = wbuf[soff + j] * s
            t = np.float32(iacc[j]) * ws
            out[i, out_col + j] = out[i, out_col + j] + t


@njit(cache=True)
def _layer_step(meta, fmeta, wbuf, qbuf, table, l, state, rows, inputs, n, xin, gates, ext1, ext2, xq, iacc):
    """layer l for the n rows in rows[:n] (first-layer inputs in inputs[:n])"""
    cell, H, H_out = meta[l, M_CELL], meta[l, M_H], meta[l, M_HOUT]
    first = l == 0
    I = 0 if first else meta[l, M_I]
    K = I + H_out
    G = 4 if cell == 1 else (3 if cell == 2 else 1)
    NG = G * H
    NA = meta[l, M_NA]
    h_off, c_off = meta[l, M_HOFF], meta[l, M_COFF]
    clip = np.float64(fmeta[l, 6])
    # gates <- table row (first layer) or biases
    for i in range(n):
        if first:
            for j in range(NG):
                gates[i, j] = table[inputs[i], j]
        else:
            ba = meta[l, M_BA]
            for j in range(NA):
                gates[i, j] = wbuf[ba + j] if ba >= 0 else 0.0
            if cell == 2:
                bx = meta[l, M_BXN]
                for j in range(H):
                    gates[i, 2 * H + j] = wbuf[bx + j] if bx >= 0 else 0.0
    # xin <- [x | h]
    for i in range(n):
        b = rows[i]
        if not first:
            p_off = meta[l - 1, M_HOFF]
            for j in range(I):
                xin[i, j] = state[b, p_off + j]
        for j in range(H_out):
            xin[i, I + j] = state[b, h_off + j]
    _matmul_acc(wbuf, qbuf, meta[l, M_WA], meta[l, M_SA], K, NA, xin, 0, n, gates, 0, xq, iacc)
    if cell == 2 and not first:
        _matmul_acc(wbuf, qbuf, meta[l, M_WXN], meta[l, M_SXN], I, H, xin, 0, n, gates, 2 * H, xq, iacc)
    a0, b0 = np.float64(fmeta[l, 0]), np.float64(fmeta[l, 1])
    a1, b1 = np.float64(fmeta[l, 2]), np.float64(fmeta[l, 3])
    a2, b2 = np.float64(fmeta[l, 4]), np.float64(fmeta[l, 5])
    f, g, hc = meta[l, M_ACT0], meta[l, M_ACT1], meta[l, M_ACT2]
    if cell == 0:  # h' = f(a)
        for i in range(n):
            _activate(gates[i], 0, H, f, a0, b0, clip)
            for j in range(H):
                state[rows[i], h_off + j] = gates[i, j]
        return
    if cell == 1:  # LSTM (kernels/README.md)
        peep = meta[l, M_PEEP]
        proj = meta[l, M_WHR] >= 0
        input_forget = meta[l, M_IF] != 0
        for i in range(n):
            b = rows[i]
            a = gates[i]
            if peep >= 0:  # i = f(a_i + p_i c), ff = f(a_f + p_f c)
                for j in range(H):
                    a[j] += wbuf[peep + j] * state[b, c_off + j]
                if not input_forget:
                    for j in range(H):
                        a[H + j] += wbuf[peep + H + j] * state[b, c_off + j]
            if input_forget:  # ff = 1 - i
                _activate(a, 0, H, f, a0, b0, clip)
                for j in range(H):
                    a[H + j] = 1.0 - a[j]
            else:
                _activate(a, 0, 2 * H, f, a0, b0, clip)
            _activate(a, 2 * H, H, g, a1, b1, clip)
            for j in range(H):  # c' = ff*c + i*g
                state[b, c_off + j] = a[H + j] * state[b, c_off + j] + a[j] * a[2 * H + j]
            if peep >= 0:  # o = f(a_o + p_o c')
                for j in range(H):
                    a[3 * H + j] += wbuf[peep + 2 * H + j] * state[b, c_off + j]
            _activate(a, 3 * H, H, f, a0, b0, clip)
            for j in range(H):  # m = o * h(c')
                m = a[3 * H + j] * _act(hc, a2, b2, np.float64(state[b, c_off + j]))
                if proj:
                    ext1[i, j] = m
                else:
                    state[b, h_off + j] = m
        if proj:  # h' = W_hr m
            for i in range(n):
                for j in range(H_out):
                    ext2[i, j] = 0.0
            _matmul_acc(wbuf, qbuf, meta[l, M_WHR], meta[l, M_SHR], H, H_out, ext1, 0, n, ext2, 0, xq, iacc)
            for i in range(n):
                for j in range(H_out):
                    state[rows[i], h_off + j] = ext2[i, j]
        return
    # GRU: r, z
    for i in range(n):
        _activate(gates[i], 0, 2 * H, f, a0, b0, clip)
    bhn = meta[l, M_BHN]
    lbr = meta[l, M_LBR] != 0
    for i in range(n):
        for j in range(H):
            ext1[i, j] = wbuf[bhn + j]
    if lbr:  # ext1 = W_hn h + b_hn
        _matmul_acc(wbuf, qbuf, meta[l, M_WHN], meta[l, M_SHN], H, H, xin, I, n, ext1, 0, xq, iacc)
    else:  # ext1 = W_hn (r * h) + b_hn
        for i in range(n):
            for j in range(H):
                ext2[i, j] = gates[i, j] * xin[i, I + j]
        _matmul_acc(wbuf, qbuf, meta[l, M_WHN], meta[l, M_SHN], H, H, ext2, 0, n, ext1, 0, xq, iacc)
    for i in range(n):
        b = rows[i]
        for j in range(H):
            if lbr:  # n = g(x_n + r * (W_hn h + b_hn))
                gates[i, 2 * H + j] = gates[i, 2 * H + j] + gates[i, j] * ext1[i, j]
            else:  # n = g(x_n + W_hn (r * h) + b_hn)
                gates[i, 2 * H + j] = gates[i, 2 * H + j] + ext1[i, j]
        _activate(gates[i], 2 * H, H, g, a1, b1, clip)
        for j in range(H):  # h' = (1 - z) * n + z * h
            z = gates[i, H + j]
            state[b, h_off + j] = (1.0 - z) * gates[i, 2 * H + j] + z * xin[i, I + j]


@njit(cache=True)
def _dense_step(meta, n_layers, wbuf, qbuf, dense, dense_b, state, logits, lrows, n, xin, dense_out, xq, iacc):
    """logits[b] = W h_last + bias for the n rows in lrows; dense = (W.T offset, scale offset, K, V)"""
    last = n_layers - 1
    K, h_off = meta[last, M_HOUT], meta[last, M_HOFF]
    V = dense[3]
    for i in range(n):
        for j in range(K):
            xin[i, j] = state[lrows[i], h_off + j]
        for j in range(V):
            dense_out[i, j] = dense_b[j]
    _matmul_acc(wbuf, qbuf, dense[0], dense[1], K, V, xin, 0, n, dense_out, 0, xq, iacc)
    for i in range(n):
        for j in range(V):
            logits[lrows[i], j] = dense_out[i, j]


@njit(cache=True)
def _stop_match(stop_tokens, stop_offsets, out, n):
    best = 0
    for s in range(stop_offsets.shape[0] - 1):
        a, L = stop_offsets[s], stop_offsets[s + 1] - stop_offsets[s]
        if L > 0 and L <= n and L > best:
            same = True
            for j in range(L):
                if out[n - L + j] != stop_tokens[a + j]:
                    same = False
                    break
            if same:
                best = L
    return best


@njit(cache=True, nogil=True)
def _run(model, rows, sampling, stops, work, max_steps):
    """At most max_steps lockstep steps (generate_core.h); returns the rows not finished."""
    meta, fmeta, wbuf, qbuf, table, dense, dense_b = model
    state, logits, seen, rng, status, prompt, out = rows
    temperature, top_k, top_p, penalty = sampling
    stop_tokens, stop_offsets = stops
    xin, gates, ext1, ext2, dense_out, frows, lrows, inputs, y, e, tmp, heap, xq, iacc = work
    B, V, n_layers = state.shape[0], dense[3], meta.shape[0]
    max_new = out.shape[1]
    for _ in range(max_steps):
        n_feed = 0
        for b in range(B):
            if status[b, FINISHED]:
                continue
            limit = min(status[b, LIMIT], max_new)
            if status[b, HAS_LOGITS]:
                if status[b, NOUT] >= limit:
                    status[b, FINISHED] = 1
                    continue
                if not np.all(np.isfinite(logits[b])):  # the caller raises
                    status[b, FINISHED] = 1
                    status[b, BAD_LOGITS] = 1
                    continue
                tok = _sample_token(logits[b], seen[b], V, temperature, top_k, top_p, penalty, rng, b,
                                    y, e, tmp, heap)
                out[b, status[b, NOUT]] = tok
                status[b, NOUT] += 1
                status[b, HAS_LOGITS] = 0
                seen[b, tok] = 1
                stop_len = _stop_match(stop_tokens, stop_offsets, out[b], status[b, NOUT])
                if stop_len > 0 or status[b, NOUT] >= limit:
                    status[b, FINISHED] = 1
                    status[b, STOP_LEN] = stop_len
                    continue
                inp = tok
            elif status[b, POS] < status[b, LEN]:
                inp = prompt[b, status[b, POS]]
                status[b, POS] += 1
                if inp < V:
                    seen[b, inp] = 1
            else:
                status[b, FINISHED] = 1
                continue
            frows[n_feed] = b
            inputs[n_feed] = inp
            n_feed += 1
        if n_feed == 0:
            break
        for l in range(n_layers):
            _layer_step(meta, fmeta, wbuf, qbuf, table, l, state, frows, inputs, n_feed, xin, gates, ext1, ext2, xq,
                        iacc)
        n_logits = 0
        for i in range(n_feed):
            b = frows[i]
            if status[b, POS] >= status[b, LEN]:
                lrows[n_logits] = b
                n_logits += 1
                status[b, HAS_LOGITS] = 1
        if n_logits:
            _dense_step(meta, n_layers, wbuf, qbuf, dense, dense_b, state, logits, lrows, n_logits, xin, dense_out,
                        xq, iacc)
    active = 0
    for b in range(B):
        if status[b, FINISHED] == 0:
            active += 1
    return active


# ---- Python layer -----------------------------------------------------------------------------
class CompiledModel:
    """A GenerationPlan flattened for _run: layer meta, one transposed weight buffer (and, for int8
    weights, the transposed q in an int64 buffer at the same offsets), the table."""

    def __init__(self, plan):
        parts, qparts, size = [], [], 0
        int8 = plan.weights == "int8"

        def put(a, transpose=False):
            """append a (a Matrix: its values; int8: q too) -> (offset, scale offset or -1)"""
            nonlocal size
            if a is None:
                return -1, -1
            q = getattr(a, "q", None)
            scale = getattr(a, "scale", None)
            a = getattr(a, "values", a)
            a = np.ascontiguousarray(a.T if transpose else a, dtype=f32).reshape(-1)
            off = size
            parts.append(a)
            qparts.append(np.ascontiguousarray(q.T if transpose else q, dtype=np.int64).reshape(-1) if q is not None
                          else np.zeros(a.size, np.int64))
            size += a.size
            if scale is None:
                return off, -1
            parts.append(np.ascontiguousarray(scale, dtype=f32))
            qparts.append(np.zeros(scale.size, np.int64))
            size += scale.size
            return off, size - scale.size

        n = len(plan.layers)
        meta = np.full((n, META_COLS), -1, np.int64)
        fmeta = np.zeros((n, FMETA_COLS), f32)
        self.k_max = self.g_max = self.x_max = 1
        for l, lp in enumerate(plan.layers):
            G = {"rnn": 1, "lstm": 4, "gru": 3}[lp.cell]
            meta[l, M_CELL] = CELLS[lp.cell]
            meta[l, M_I], meta[l, M_H], meta[l, M_HOUT] = lp.input_size, lp.hidden_size, lp.output_size
            meta[l, M_HOFF], meta[l, M_COFF] = lp.h_offset, lp.c_offset
            meta[l, M_WA], meta[l, M_SA] = put(lp.w_a, True)
            meta[l, M_NA], meta[l, M_KA] = lp.w_a.shape
            meta[l, M_BA] = put(lp.b_a)[0]
            meta[l, M_WXN], meta[l, M_SXN] = put(lp.w_xn, True)
            meta[l, M_BXN] = put(lp.b_xn)[0]
            meta[l, M_WHN], meta[l, M_SHN] = put(lp.w_hn, True)
            meta[l, M_BHN] = put(lp.b_hn)[0]
            meta[l, M_WHR], meta[l, M_SHR] = put(lp.w_hr, True)
            meta[l, M_PEEP] = put(lp.peephole)[0]
            meta[l, M_ACT0:M_ACT2 + 1] = lp.acts
            meta[l, M_IF], meta[l, M_LBR] = lp.input_forget, lp.linear_before_reset
            fmeta[l, :6] = np.asarray(lp.act_params, f32).reshape(-1)
            fmeta[l, 6] = lp.clip
            self.k_max = max(self.k_max, lp.input_size + lp.output_size)
            self.g_max = max(self.g_max, G * lp.hidden_size)
            self.x_max = max(self.x_max, lp.hidden_size, lp.output_size)
        d_off, d_soff = put(plan.dense_w, True)
        dense = np.array([d_off, d_soff, plan.dense_w.shape[1], plan.vocab_size], np.int64)
        wbuf = np.concatenate(parts)
        qbuf = np.concatenate(qparts) if int8 else np.zeros(1, np.int64)
        dense_b = np.zeros(plan.vocab_size, f32) if plan.dense_b is None else plan.dense_b
        self.model = (meta, fmeta, wbuf, qbuf, np.ascontiguousarray(plan.table, dtype=f32), dense,
                      np.ascontiguousarray(dense_b, dtype=f32))
        self.vocab_size = plan.vocab_size
        self.n_max = max(self.g_max, self.x_max, plan.vocab_size)


class Runner:
    """Binds caller-owned row buffers (see _cygenerate.Runner) to a CompiledModel."""

    def __init__(self, compiled, sampling, stops, state, logits, seen, rng, status, prompt, out):
        B, V = state.shape[0], compiled.vocab_size
        self.model = compiled.model
        self.rows = (state, logits, seen, rng, status, prompt, out)
        t, k, p, r = sampling
        self.sampling = (float(t), int(k), float(p), float(r))
        self.stops = (np.ascontiguousarray(stops[0], np.int32), np.ascontiguousarray(stops[1], np.int64))
        self.work = (np.zeros((B, compiled.k_max), f32), np.zeros((B, compiled.g_max), f32),
                     np.zeros((B, compiled.x_max), f32), np.zeros((B, compiled.x_max), f32),
                     np.zeros((B, V), f32), np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, np.int64),
                     np.zeros(V), np.zeros(V), np.zeros(V), np.zeros(V, np.int64),
                     np.zeros(max(compiled.k_max, compiled.x_max), np.int64), np.zeros(compiled.n_max, np.int64))

    def run(self, max_steps):
        return int(_run(self.model, self.rows, self.sampling, self.stops, self.work, int(max_steps)))


@njit(cache=True, nogil=True)
def _process_many(logits, seen, temperature, top_k, top_p, penalty, out, e, tmp, heap):
    for b in range(logits.shape[0]):
        _process_logits(logits[b], seen[b], logits.shape[1], temperature, top_k, top_p, penalty, out[b], e, tmp,
                        heap)


@njit(cache=True, nogil=True)
def _sample_many(logits, seen, temperature, top_k, top_p, penalty, rng, out, y, e, tmp, heap):
    for b in range(logits.shape[0]):
        for d in range(out.shape[1]):
            out[b, d] = _sample_token(logits[b], seen[b], logits.shape[1], temperature, top_k, top_p, penalty, rng,
                                      b, y, e, tmp, heap)


def process_logits(logits, seen, sampling):
    """logits (B, V) f32, seen (B, V) u8 or None -> (B, V) f64 processed logits (-inf = masked)."""
    logits = np.ascontiguousarray(logits, f32)
    B, V = logits.shape
    seen = np.zeros((B, V), np.uint8) if seen is None else np.ascontiguousarray(seen, np.uint8)
    out = np.empty((B, V))
    t, k, p, r = sampling
    _process_many(logits, seen, float(t), int(k), float(p), float(r), out, np.empty(V), np.empty(V),
                  np.empty(V, np.int64))
    return out


def sample_logits(logits, seen, sampling, rng, draws=1):
    """logits (B, V) f32, seen or None, rng (B,) u64 INOUT -> tokens (B, draws) int32."""
    logits = np.ascontiguousarray(logits, f32)
    B, V = logits.shape
    seen = np.zeros((B, V), np.uint8) if seen is None else np.ascontiguousarray(seen, np.uint8)
    out = np.empty((B, draws), np.int32)
    t, k, p, r = sampling
    _sample_many(logits, seen, float(t), int(k), float(p), float(r), rng, out, np.empty(V), np.empty(V),
                 np.empty(V), np.empty(V, np.int64))
    return out


@njit(cache=True)
def _uniforms(rng, out):
    for i in range(out.shape[0]):
        out[i] = _uniform(rng, 0)


def uniforms(state, n):
    """n successive uniforms from a SplitMix64 state (for the tests)."""
    out = np.empty(n)
    _uniforms(np.array([state], np.uint64), out)
    return out
