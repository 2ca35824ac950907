"""Keras Attention (Luong: dot or concat scores) and AdditiveAttention (Bahdanau), as used in
encoder-decoder models. Inputs [query (B, Tq, d), value (B, Tv, d)] or [query, value, key].

scores (B, Tq, Tv): dot: scale * q k^T; concat: w * sum(tanh(scale * (q_i + k_j))); additive:
sum(scale_vector * tanh(q_i + k_j)). Padded value steps (value mask) get -1e9, a causal mask
hides j > i; weights = softmax(scores) over Tv; out = weights @ v, rows of padded query steps
set to 0 (Keras). The output keeps the query's mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import Layer, frozen_array
from .dense import softmax
from .mask import step_mask

f32 = np.float32


@dataclass(repr=False)
class Attention(Layer):
    """score_mode: "dot" | "concat" (Keras Attention) or "additive" (AdditiveAttention).
    scale: None, a scalar (1,) (dot / concat with use_scale) or a vector (d,) (additive);
    concat_score_weight: (1,) for score_mode "concat"."""

    score_mode: str = "dot"
    scale: Optional[np.ndarray] = None
    concat_score_weight: Optional[np.ndarray] = None
    use_causal_mask: bool = False
    name: str = "attention"

    kind = "attention"
    num_inputs = None

    def __post_init__(self):
        if self.score_mode not in ("dot", "concat", "additive"):
            raise ValueError(f"{self.name}: score_mode must be dot, concat or additive, got {self.score_mode!r}")
        if self.scale is not None:
            self.scale = frozen_array(np.atleast_1d(self.scale), name=f"{self.name}.scale")
        if self.score_mode == "concat":
            if self.concat_score_weight is None:
                raise ValueError(f"{self.name}: score_mode concat needs concat_score_weight")
            self.concat_score_weight = frozen_array(np.atleast_1d(self.concat_score_weight), (1,),
                                                    f"{self.name}.concat_score_weight")

    def type_name(self):
        return "AdditiveAttention" if self.score_mode == "additive" else "Attention"

    def output_shape(self, shapes):
        if len(shapes) not in (2, 3):
            raise ValueError(f"{self.name} ({self.type_name()}) takes [query, value] or [query, value, key], "
                             f"got {len(shapes)} inputs")
        q, v = tuple(shapes[0]), tuple(shapes[1])
        k = tuple(shapes[2]) if len(shapes) == 3 else v
        if len(q) != 2 or len(v) != 2 or len(k) != 2:
            raise ValueError(f"{self.name} ({self.type_name()}) needs (time, dim) inputs, got {q}, {v}, {k}")
        if None not in (q[1], k[1]) and q[1] != k[1]:
            raise ValueError(f"{self.name}: query dim {q[1]} != key dim {k[1]}")
        return (q[0], v[1])

    def output_lengths(self, lengths, shapes):
        return lengths[0]

    def call(self, inputs, lengths=None):
        lengths = lengths or [None] * len(inputs)
        return attention(self, inputs, lengths[0], lengths[1])

    def arrays(self):
        out = {}
        if self.scale is not None:
            out["scale"] = self.scale
        if self.concat_score_weight is not None:
            out["concat_score_weight"] = self.concat_score_weight
        return out

    def config(self):
        return {"score_mode": self.score_mode, "use_causal_mask": self.use_causal_mask}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.str("score_mode", "dot", choices=("dot", "concat", "additive")), arrays.get("scale"),
                   arrays.get("concat_score_weight"), config.bool("use_causal_mask", False), name)


def numpy_products(a, b):
    """a (B, M, K), b (B, N, K) -> a[i] @ b[i].T for each i, (B, M, N): NumPy's matmul (the spec)."""
    return a @ np.swapaxes(b, -1, -2)


def attention(layer: Attention, inputs, query_lengths=None, value_lengths=None, products=numpy_products):
    """[query (B, Tq, d), value (B, Tv, dv)(, key (B, Tv, d))] -> (B, Tq, dv). ``products``: how
    the two batched products between activations are computed (numpy_products's contract); the
    compiled backends pass theirs (fastrnn.backends.CompiledBackend.attention)."""
    q = np.asarray(inputs[0], f32)
    v = np.asarray(inputs[1], f32)
    k = np.asarray(inputs[2], f32) if len(inputs) > 2 else v
    if layer.score_mode == "dot":
        scores = products(q, k)  # q k^T
        if layer.scale is not None:
            scores = scores * layer.scale[0]
    else:
        pair = q[:, :, None, :] + k[:, None, :, :]  # (B, Tq, Tv, d)
        if layer.score_mode == "concat":
            if layer.scale is not None:
                pair = pair * layer.scale[0]
            scores = layer.concat_score_weight[0] * np.tanh(pair).sum(axis=-1)
        else:
            scale = 1.0 if layer.scale is None else layer.scale
            scores = (scale * np.tanh(pair)).sum(axis=-1)
    scores = scores.astype(f32)
    B, Tq, Tv = scores.shape
    allowed = np.ones((B, Tq, Tv), bool)
    if value_lengths is not None:
        allowed &= step_mask(value_lengths, Tv)[:, None, :]
    if layer.use_causal_mask:
        allowed &= np.tril(np.ones((Tq, Tv), bool))[None]
    scores = np.where(allowed, scores, scores - np.float32(1e9))
    out = products(softmax(scores, axis=-1), np.swapaxes(v, -1, -2))  # weights @ v
    if query_lengths is not None:
        out = np.where(step_mask(query_lengths, Tq)[:, :, None], out, 0)
    return np.ascontiguousarray(out, dtype=f32)
