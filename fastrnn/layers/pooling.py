"""Pooling over time: GlobalAveragePooling1D (mask-aware), GlobalMaxPooling1D, MaxPooling1D,
AveragePooling1D (Keras, channels_last: x (B, T, F)).

With "same" padding AveragePooling1D averages the real steps of each window only, as Keras's
TensorFlow and JAX backends do (Keras 3's torch backend counts the padded zeros when the padding
is uneven; fastrnn follows the other two).

Masks follow Keras 3: GlobalAveragePooling1D averages the valid steps only; GlobalMaxPooling1D
takes the maximum over every step (Keras ignores the mask there); no pooling layer passes a
mask on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Layer
from .mask import counts, step_mask

f32 = np.float32


@dataclass(repr=False)
class GlobalPooling1D(Layer):
    """(B, T, F) -> (B, F) (or (B, 1, F) with keepdims): op "average" | "max"; ``mask_aware``
    averages over each row's valid steps only."""

    op: str = "average"
    keepdims: bool = False
    mask_aware: bool = True
    name: str = "global_pooling1d"

    kind = "global_pooling1d"

    def __post_init__(self):
        if self.op not in ("average", "max"):
            raise ValueError(f"{self.name}: op must be 'average' or 'max', got {self.op!r}")

    def type_name(self):
        return "GlobalAveragePooling1D" if self.op == "average" else "GlobalMaxPooling1D"

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != 2:
            raise ValueError(f"{self.name} ({self.type_name()}) needs (time, features) inputs, gets {shape}")
        return (1, shape[1]) if self.keepdims else (shape[1],)

    def call(self, inputs, lengths=None):
        return global_pooling1d(self, inputs[0], None if lengths is None else lengths[0])

    def config(self):
        return {"op": self.op, "keepdims": self.keepdims, "mask_aware": self.mask_aware}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.str("op", "average", choices=("average", "max")), config.bool("keepdims", False),
                   config.bool("mask_aware", True), name)


def global_pooling1d(layer: GlobalPooling1D, x, lengths=None):
    x = np.asarray(x, f32)
    B, T, F = x.shape
    if layer.op == "max":
        out = x.max(axis=1) if T else np.full((B, F), -np.inf, f32)
    elif lengths is not None and layer.mask_aware:
        valid = step_mask(lengths, T)[:, :, None]
        # Keras: sum(x * mask) / sum(mask); an all-masked row gives 0 / 0 there, 0 here
        out = np.where(valid, x, 0).sum(axis=1) / np.maximum(counts(lengths), 1)[:, None].astype(f32)
    else:
        out = x.mean(axis=1)
    out = out.astype(f32)
    return out[:, None, :] if layer.keepdims else out


def pool_padding(T, pool, stride, padding):
    """(left, right) padding and output length of a 1-D window of ``pool`` with ``stride``:
    "valid" (no padding) or "same" (output ceil(T / stride), TensorFlow's split of the padding)."""
    if padding == "valid":
        return 0, 0, max(0, (T - pool) // stride + 1)
    out = -(-T // stride)
    total = max((out - 1) * stride + pool - T, 0)
    return total // 2, total - total // 2, out


@dataclass(repr=False)
class Pooling1D(Layer):
    """MaxPooling1D / AveragePooling1D over time: (B, T, F) -> (B, T', F). With "same" padding,
    the average counts only the real steps of each window (Keras / TensorFlow)."""

    op: str = "max"
    pool_size: int = 2
    strides: int = 2
    padding: str = "valid"
    name: str = "pooling1d"

    kind = "pooling1d"

    def __post_init__(self):
        if self.op not in ("average", "max"):
            raise ValueError(f"{self.name}: op must be 'average' or 'max', got {self.op!r}")
        if self.padding not in ("valid", "same"):
            raise ValueError(f"{self.name}: padding must be 'valid' or 'same', got {self.padding!r}")
        if int(self.pool_size) < 1 or int(self.strides) < 1:
            raise ValueError(f"{self.name}: pool_size and strides must be >= 1")
        self.pool_size, self.strides = int(self.pool_size), int(self.strides)

    def type_name(self):
        return "MaxPooling1D" if self.op == "max" else "AveragePooling1D"

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != 2:
            raise ValueError(f"{self.name} ({self.type_name()}) needs (time, features) inputs, gets {shape}")
        T = shape[0]
        return (None if T is None else pool_padding(T, self.pool_size, self.strides, self.padding)[2], shape[1])

    def call(self, inputs, lengths=None):
        return pooling1d(self, inputs[0])

    def config(self):
        return {"op": self.op, "pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.str("op", "max", choices=("average", "max")), config.int("pool_size", 2, minimum=1),
                   config.int("strides", 2, minimum=1), config.str("padding", "valid", choices=("valid", "same")),
                   name)


def pooling1d(layer: Pooling1D, x):
    x = np.asarray(x, f32)
    B, T, F = x.shape
    left, right, T_out = pool_padding(T, layer.pool_size, layer.strides, layer.padding)
    out = np.empty((B, T_out, F), f32)
    for t in range(T_out):
        start = t * layer.strides - left
        lo, hi = max(start, 0), min(start + layer.pool_size, T)
        window = x[:, lo:hi]
        out[:, t] = window.max(axis=1) if layer.op == "max" else window.mean(axis=1)
    return out
