"""Dense: an affine map on the last axis with an optional activation (Keras Dense,
TimeDistributed(Dense), PyTorch nn.Linear, ONNX MatMul/Gemm + Add)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..activations import Activation, apply_activation
from .base import Int8Weights, Layer, check_int8, frozen_array

f32 = np.float32
DENSE_ACTIVATIONS = ("linear", "softmax", "sigmoid", "tanh", "relu")


@dataclass(repr=False)
class Dense(Layer):
    """Affine map on the last axis: y = act(x @ W.T + b). W (out, in), b (out,) or None.

    activation: "linear", "softmax" / "log_softmax" (over the last axis) or any name of
    fastrnn.activations. int8: the exact int8 form of W its source file gave (Int8Weights), or None."""

    weight: np.ndarray  # (out, in)
    bias: Optional[np.ndarray] = None  # (out,)
    activation: str = "linear"
    name: str = "dense"
    int8: Optional[Int8Weights] = field(default=None, compare=False)

    kind = "dense"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        self.weight = frozen_array(self.weight, name=f"{self.name}.weight")
        if self.weight.ndim != 2:
            raise ValueError(f"{self.name}.weight must be 2-D (out, in), got {self.weight.shape}")
        if self.weight.shape[0] == 0:
            raise ValueError(f"{self.name}: a Dense layer needs at least one output unit")
        if self.bias is not None:
            self.bias = frozen_array(self.bias, (self.weight.shape[0],), f"{self.name}.bias")
        if self.activation not in ("softmax", "log_softmax"):
            self.activation = Activation.of(self.activation).name if self.activation != "linear" else "linear"
        self.int8 = check_int8(self.int8, self.weight, f"{self.name}.weight")

    @property
    def input_size(self) -> int:
        return self.weight.shape[1]

    @property
    def output_size(self) -> int:
        return self.weight.shape[0]

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if not shape:
            raise ValueError(f"{self.name} (Dense) needs at least one feature axis")
        if shape[-1] is not None and shape[-1] != self.input_size:
            raise ValueError(f"{self.name} (Dense) expects {self.input_size} features, gets {shape[-1]}")
        return shape[:-1] + (self.output_size,)

    def call(self, inputs, lengths=None):
        return dense(self, inputs[0])

    def arrays(self):
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def config(self):
        return {"activation": self.activation}

    def int8_forms(self):
        return {} if self.int8 is None else {"weight": self.int8}

    def set_int8_forms(self, forms):
        self.int8 = check_int8(forms.get("weight"), self.weight, f"{self.name}.weight")

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(arrays.get("weight"), arrays.get("bias"), config.str("activation", "linear"), name)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(f32)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=axis, keepdims=True))).astype(f32)


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
    if layer.activation == "log_softmax":
        return log_softmax(y)
    if layer.activation == "linear":
        return y
    return apply_activation(Activation.of(layer.activation), y)
