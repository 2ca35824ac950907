"""Conv1D over time (Keras Conv1D, channels_last; PyTorch nn.Conv1d after a Permute).

Internal layout: weight (filters, in_channels, kernel_size) (PyTorch's), bias (filters,) or None.
Keras's kernel is (kernel_size, in_channels, filters): the importer transposes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..activations import Activation as ActivationFunction, apply_activation
from .base import Layer, frozen_array

f32 = np.float32


def conv_padding(T, kernel_size, stride, dilation, padding):
    """(left, right) zero padding of a length-T input: "valid", "causal" (all on the left),
    "same" (output ceil(T / stride); TensorFlow's split, the extra step on the right) or an
    explicit [left, right] pair (PyTorch)."""
    span = (kernel_size - 1) * dilation + 1
    if isinstance(padding, (list, tuple)):
        return int(padding[0]), int(padding[1])
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return span - 1, 0
    out = -(-T // stride)
    total = max((out - 1) * stride + span - T, 0)
    return total // 2, total - total // 2


@dataclass(repr=False)
class Conv1D(Layer):
    """y[b, t, o] = act(bias[o] + sum_{c,k} w[o, c, k] x_padded[b, t*stride + k*dilation, c])."""

    weight: np.ndarray  # (filters, in_channels, kernel_size)
    bias: Optional[np.ndarray] = None  # (filters,)
    strides: int = 1
    padding: object = "valid"  # "valid" | "same" | "causal" | [left, right]
    dilation_rate: int = 1
    activation: str = "linear"
    name: str = "conv1d"

    kind = "conv1d"

    def __post_init__(self):
        self.weight = frozen_array(self.weight, name=f"{self.name}.weight")
        if self.weight.ndim != 3 or 0 in self.weight.shape:
            raise ValueError(f"{self.name}.weight must be (filters, in_channels, kernel_size), got {self.weight.shape}")
        if self.bias is not None:
            self.bias = frozen_array(self.bias, (self.weight.shape[0],), f"{self.name}.bias")
        self.strides, self.dilation_rate = int(self.strides), int(self.dilation_rate)
        if self.strides < 1 or self.dilation_rate < 1:
            raise ValueError(f"{self.name}: strides and dilation_rate must be >= 1")
        if isinstance(self.padding, (list, tuple)):
            if len(self.padding) != 2 or any(int(p) < 0 for p in self.padding):
                raise ValueError(f"{self.name}: padding pair must be two sizes >= 0, got {self.padding}")
            self.padding = [int(p) for p in self.padding]
        elif self.padding not in ("valid", "same", "causal"):
            raise ValueError(f"{self.name}: padding must be valid, same, causal or [left, right]; got {self.padding!r}")
        self.activation = "linear" if self.activation in ("linear", None) else ActivationFunction.of(self.activation).name

    @property
    def filters(self):
        return self.weight.shape[0]

    @property
    def in_channels(self):
        return self.weight.shape[1]

    @property
    def kernel_size(self):
        return self.weight.shape[2]

    def output_length(self, T):
        left, right = conv_padding(T, self.kernel_size, self.strides, self.dilation_rate, self.padding)
        span = (self.kernel_size - 1) * self.dilation_rate + 1
        return max(0, (T + left + right - span) // self.strides + 1)

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != 2:
            raise ValueError(f"{self.name} (Conv1D) needs (time, channels) inputs, gets {shape}")
        if shape[1] is not None and shape[1] != self.in_channels:
            raise ValueError(f"{self.name} (Conv1D) expects {self.in_channels} channels, gets {shape[1]}")
        return (None if shape[0] is None else self.output_length(shape[0]), self.filters)

    def call(self, inputs, lengths=None):
        return conv1d(self, inputs[0])

    def arrays(self):
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def config(self):
        return {"strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate,
                "activation": self.activation}

    @classmethod
    def from_config(cls, name, config, arrays):
        padding = config.raw("padding", "valid")
        if isinstance(padding, list):
            padding = config.int_list("padding", minimum=0)
        else:
            padding = config.str("padding", "valid", choices=("valid", "same", "causal"))
        return cls(arrays.get("weight"), arrays.get("bias"), config.int("strides", 1, minimum=1), padding,
                   config.int("dilation_rate", 1, minimum=1), config.str("activation", "linear"), name)


def conv_windows(layer: Conv1D, x):
    """x (B, T, C) -> the windows the filters see (im2col), (B, T', kernel_size * C) float32:
    windows[b, t, j*C + c] = x_padded[b, t*stride + j*dilation, c]."""
    x = np.asarray(x, f32)
    B, T, C = x.shape
    k, d, s = layer.kernel_size, layer.dilation_rate, layer.strides
    left, right = conv_padding(T, k, s, d, layer.padding)
    xp = np.pad(x, ((0, 0), (left, right), (0, 0)))
    T_out = layer.output_length(T)
    starts = np.arange(T_out) * s
    taps = starts[:, None] + np.arange(k)[None, :] * d  # (T', k)
    windows = xp[:, taps, :]  # (B, T', k, C)
    return windows.reshape(B, T_out, k * C)


def conv_matrix(layer: Conv1D):
    """The filters as one matrix (filters, kernel_size * in_channels) in conv_windows' column
    order: matrix[o, j*C + c] = weight[o, c, j]."""
    return np.ascontiguousarray(layer.weight.transpose(0, 2, 1).reshape(layer.filters, -1))


def conv_activation(layer: Conv1D, y):
    """The activation of a Conv1D on its affine output y (B, T', filters) float32."""
    if layer.activation != "linear":
        y = apply_activation(ActivationFunction.of(layer.activation), y)
    return np.ascontiguousarray(y, dtype=f32)


def conv1d(layer: Conv1D, x):
    """x (B, T, C) -> (B, T', filters): one matmul over the gathered windows (im2col). (The
    compiled backends run the same product through their packed matmul: fastrnn.backends.)"""
    y = conv_windows(layer, x) @ conv_matrix(layer).T
    if layer.bias is not None:
        y = y + layer.bias
    return conv_activation(layer, y.astype(f32))
