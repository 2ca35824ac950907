"""ONNX RNN / LSTM / GRU nodes -> fastrnn.layers.Recurrent, and running them on the kernels.

ONNX conventions (opset 7-22), converted here and nowhere else:
- W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] = [Wb | Rb], P [D, 3H] (LSTM peepholes i, o, f).
- Gate blocks: LSTM i|o|f|c -> internal i|f|g|o; GRU z|r|h -> internal r|z|n; RNN one block.
- layout 0: X [T, B, I], Y [T, D, B, H], Y_h / Y_c [D, B, H];
  layout 1: X [B, T, I], Y [B, T, D, H], Y_h / Y_c [B, D, H].
- activations: one list for both directions of a bidirectional node (forward's, then
  backward's); activation_alpha / activation_beta are consumed in order by the functions that
  take them (onnxruntime's rule), defaults as the ONNX operators of the same name.
- GRU linear_before_reset (default 0) -> Recurrent.linear_before_reset.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelFormatError, UnsupportedLayerError
from ...layers import DirectionWeights, Recurrent
from ...layers.recurrent import check_clip

RECURRENT_OPS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}  # ONNX block -> internal position
DEFAULT_ACTIVATIONS = {"rnn": ["Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"]}
# ONNX activation -> (fastrnn name, default alpha or None if unused, default beta or None)
ONNX_ACTIVATIONS = {
    "relu": ("relu", None, None), "tanh": ("tanh", None, None), "sigmoid": ("sigmoid", None, None),
    "affine": ("affine", 1.0, 0.0), "leakyrelu": ("leaky_relu", 0.01, None),
    "thresholdedrelu": ("thresholded_relu", 1.0, None), "scaledtanh": ("scaled_tanh", 1.0, 1.0),
    "hardsigmoid": ("hard_sigmoid", 0.2, 0.5), "elu": ("elu", 1.0, None), "softsign": ("softsign", None, None),
    "softplus": ("softplus", None, None),
}


def _reorder(a, cell, H, axis=0):
    """Gate blocks along ``axis`` from ONNX order to the internal order."""
    blocks = np.split(a, len(GATE_ORDER[cell]), axis=axis)
    order = GATE_ORDER[cell]
    out = [None] * len(order)
    for onnx_pos, internal_pos in enumerate(order):
        out[internal_pos] = blocks[onnx_pos]
    return np.concatenate(out, axis=axis)


def _activations(node, cell, D, source):
    """-> one (f, g, h) tuple of (name, alpha, beta) per direction."""
    names = node.attrs.get("activations") or DEFAULT_ACTIVATIONS[cell] * D
    per = len(DEFAULT_ACTIVATIONS[cell])
    if len(names) != per * D:
        raise ModelFormatError(f"{node.where()}: 'activations' lists {len(names)} functions, expected {per * D}",
                               source)
    alphas = list(node.attrs.get("activation_alpha", []))
    betas = list(node.attrs.get("activation_beta", []))
    acts = []
    for name in names:
        key = name.lower()
        if key not in ONNX_ACTIVATIONS:
            raise UnsupportedLayerError(f"{node.where()}: activation {name!r} is not supported; supported: "
                                        f"{sorted(ONNX_ACTIVATIONS)}", source)
        ours, a_def, b_def = ONNX_ACTIVATIONS[key]
        alpha = (alphas.pop(0) if alphas else a_def) if a_def is not None else 0.0
        beta = (betas.pop(0) if betas else b_def) if b_def is not None else 0.0
        acts.append((ours, float(alpha), float(beta)))
    return [tuple(acts[d * per:(d + 1) * per]) for d in range(D)]


def layer_from_node(node, values, source, return_sequences=True, name=None) -> Recurrent:
    """Build the Recurrent layer of an RNN/LSTM/GRU node; ``values`` maps input names to arrays
    (W, R and the optional B, P must be known). A bidirectional node whose directions have
    different activations is not one layer: see layers_for_node."""
    layers = layers_for_node(node, values, source, return_sequences, name)
    if len(layers) != 1:
        raise UnsupportedLayerError(f"{node.where()}: different activations per direction do not fit one fastrnn "
                                    "layer; fastrnn.onnx.InferenceSession runs this node", source)
    return layers[0]


def layers_for_node(node, values, source, return_sequences=True, name=None) -> list:
    """[one Recurrent layer], or [forward, reverse] single-direction layers when a bidirectional
    node gives its directions different activations."""
    cell = RECURRENT_OPS[node.op_type]
    where = node.where()

    def inp(i):
        n = node.inputs[i] if i < len(node.inputs) else ""
        if not n:
            return None
        if n not in values:
            raise ModelFormatError(f"{where}: input {n!r} is not available", source)
        return np.asarray(values[n], dtype=np.float32)

    W, R, B = inp(1), inp(2), inp(3)
    P = inp(7) if cell == "lstm" else None
    if W is None or R is None or W.ndim != 3 or R.ndim != 3:
        raise ModelFormatError(f"{where}: W and R must be 3-D arrays", source)
    direction = node.attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ModelFormatError(f"{where}: direction {direction!r} is not forward, reverse or bidirectional", source)
    D = 2 if direction == "bidirectional" else 1
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    H = node.attrs.get("hidden_size", R.shape[-1])
    I = W.shape[2]
    if W.shape != (D, G * H, I) or R.shape != (D, G * H, H):
        raise ModelFormatError(f"{where}: W {W.shape} / R {R.shape} do not fit hidden_size={H}, "
                               f"{D} direction(s), {G} gate(s)", source)
    if B is not None and B.shape != (D, 2 * G * H):
        raise ModelFormatError(f"{where}: B has shape {B.shape}, expected {(D, 2 * G * H)}", source)
    if P is not None and P.shape != (D, 3 * H):
        raise ModelFormatError(f"{where}: P has shape {P.shape}, expected {(D, 3 * H)}", source)
    dirs = []
    for d in range(D):
        b_ih = None if B is None else _reorder(B[d, : G * H], cell, H)
        b_hh = None if B is None else _reorder(B[d, G * H:], cell, H)
        peep = None
        if P is not None:
            p_i, p_o, p_f = np.split(P[d], 3)
            peep = np.stack([p_i, p_f, p_o])
        dirs.append(DirectionWeights(w_ih=_reorder(W[d], cell, H), w_hh=_reorder(R[d], cell, H), b_ih=b_ih,
                                     b_hh=b_hh, peephole=peep))
    clip = node.attrs.get("clip")
    try:
        clip = check_clip(clip, where)
    except ValueError as exc:
        raise ModelFormatError(f"{exc} (onnxruntime refuses to load this node too)", source) from None
    acts = _activations(node, cell, D, source)
    options = dict(cell=cell, hidden_size=int(H), return_sequences=return_sequences,
                   clip=clip, input_forget=bool(node.attrs.get("input_forget", 0)),
                   linear_before_reset=bool(node.attrs.get("linear_before_reset", 0)) if cell == "gru" else True)
    if D == 2 and acts[0] != acts[1]:
        return [Recurrent(directions=[dirs[d]], activations=acts[d], reverse=d == 1, name=f"{name or node.name}.d{d}",
                          **options) for d in range(2)]
    return [Recurrent(directions=dirs, activations=acts[0], reverse=direction == "reverse", name=name or node.name,
                      **options)]


def run_node(node, values, source, layers=None):
    """Run one RNN/LSTM/GRU node with fastrnn's kernels -> [Y, Y_h(, Y_c)] in ONNX layouts.
    ``layers``: the node's layers_for_node (built here when its weights are computed values)."""
    from ...backends import check_threads, get_backend

    layers = layers or layers_for_node(node, values, source)
    layer = layers[0]
    cell = layer.cell
    layout = int(node.attrs.get("layout", 0))
    X = np.asarray(values[node.inputs[0]], dtype=np.float32)
    if X.ndim != 3 or X.shape[2] != layer.input_size:
        raise ValueError(f"{node.where()}: X has shape {X.shape}, expected 3-D with {layer.input_size} features")
    x = np.ascontiguousarray(X if layout == 1 else X.transpose(1, 0, 2))  # (B, T, I)
    Bsz, T = x.shape[:2]
    D, H = sum(part.num_directions for part in layers), layer.hidden_size

    def opt(i):
        n = node.inputs[i] if i < len(node.inputs) else ""
        return values.get(n) if n else None

    lengths = opt(4)
    if lengths is not None:
        lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
        if lengths.shape != (Bsz,) or (lengths.size and (lengths.min() < 0 or lengths.max() > T)):
            raise ValueError(f"{node.where()}: sequence_lens must be {Bsz} values within 0..{T}, got {lengths}")
    state = None
    h0, c0 = opt(5), opt(6) if cell == "lstm" else None
    if h0 is not None or c0 is not None:
        def st(a):
            if a is None:
                return np.zeros((D, Bsz, H), np.float32)
            a = np.asarray(a, dtype=np.float32)
            a = a if layout == 0 else a.transpose(1, 0, 2)
            if a.shape != (D, Bsz, H):
                raise ValueError(f"{node.where()}: initial state has shape {a.shape}, expected {(D, Bsz, H)}")
            return np.ascontiguousarray(a)
        state = (st(h0), st(c0)) if cell == "lstm" else st(h0)
    be = get_backend(None)
    if Bsz == 0 or T == 0:
        y = np.zeros((Bsz, T, D * H), np.float32)
        st_out = state if state is not None else (
            (np.zeros((D, Bsz, H), np.float32),) * 2 if cell == "lstm" else np.zeros((D, Bsz, H), np.float32))
    elif len(layers) == 1:
        y, st_out = be.recurrent(layer, x, lengths, state, threads=check_threads(None))
    else:  # one layer per direction: run each on its half of the state, join as one node
        parts = [be.recurrent(part, x, lengths, None if state is None else (
            tuple(s[d:d + 1] for s in state) if cell == "lstm" else state[d:d + 1]), threads=check_threads(None))
            for d, part in enumerate(layers)]
        y = np.concatenate([p[0] for p in parts], axis=2)
        st_out = (tuple(np.concatenate([p[1][i] for p in parts]) for i in range(2)) if cell == "lstm"
                  else np.concatenate([p[1] for p in parts]))
    h_n, c_n = st_out if cell == "lstm" else (st_out, None)
    y4 = y.reshape(Bsz, T, D, H)
    if layout == 0:
        Y = np.ascontiguousarray(y4.transpose(1, 2, 0, 3))  # (T, D, B, H)
        outs = [Y, np.ascontiguousarray(h_n)]
        if cell == "lstm":
            outs.append(np.ascontiguousarray(c_n))
    else:
        outs = [np.ascontiguousarray(y4), np.ascontiguousarray(h_n.transpose(1, 0, 2))]
        if cell == "lstm":
            outs.append(np.ascontiguousarray(c_n.transpose(1, 0, 2)))
    return outs
