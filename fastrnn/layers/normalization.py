"""LayerNormalization and BatchNormalization (inference form), over the last axis.

Both keep their parameters as the frameworks store them (gamma/beta, moving mean/variance) so
parameter counts match Keras and PyTorch; a missing gamma is 1, a missing beta 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import Layer, frozen_array

f32 = np.float32


def _vector(a, name, size=None):
    return None if a is None else frozen_array(a, None if size is None else (size,), name)


def _last_axis_shape(layer, what, shapes):
    """Both normalizations keep the shape and need ``layer.size`` features on the last axis."""
    shape = tuple(shapes[0])
    if not shape or (shape[-1] is not None and shape[-1] != layer.size):
        raise ValueError(f"{layer.name} ({what}) expects {layer.size} features, gets {shape}")
    return shape


def _scale_shift(layer, y):
    """y * gamma + beta, each only when the layer has it (a missing gamma is 1, beta 0)."""
    if layer.gamma is not None:
        y = y * layer.gamma
    if layer.beta is not None:
        y = y + layer.beta
    return y.astype(f32)


@dataclass(repr=False)
class LayerNormalization(Layer):
    """y = (x - mean(x)) / sqrt(var(x) + epsilon) * gamma + beta, statistics over the last axis."""

    size: int = 0
    gamma: Optional[np.ndarray] = None  # (size,)
    beta: Optional[np.ndarray] = None  # (size,)
    epsilon: float = 1e-3
    name: str = "layer_normalization"

    kind = "layer_normalization"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        self.size = int(self.size)
        self.gamma = _vector(self.gamma, f"{self.name}.gamma", self.size)
        self.beta = _vector(self.beta, f"{self.name}.beta", self.size)
        if not (self.epsilon >= 0):
            raise ValueError(f"{self.name}: epsilon must be >= 0, got {self.epsilon}")

    def output_shape(self, shapes):
        return _last_axis_shape(self, "LayerNormalization", shapes)

    def call(self, inputs, lengths=None):
        return layer_normalization(self, inputs[0])

    def arrays(self):
        return {k: v for k, v in (("gamma", self.gamma), ("beta", self.beta)) if v is not None}

    def config(self):
        return {"size": self.size, "epsilon": self.epsilon}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.int("size", minimum=1), arrays.get("gamma"), arrays.get("beta"),
                   config.number("epsilon", 1e-3), name)


def layer_normalization(layer: LayerNormalization, x):
    x = np.asarray(x, f32)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return _scale_shift(layer, (x - mean) / np.sqrt(var + np.float32(layer.epsilon)))


@dataclass(repr=False)
class BatchNormalization(Layer):
    """Inference form: y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta,
    per feature of the last axis."""

    moving_mean: np.ndarray = None  # (F,)
    moving_variance: np.ndarray = None  # (F,)
    gamma: Optional[np.ndarray] = None  # (F,)
    beta: Optional[np.ndarray] = None  # (F,)
    epsilon: float = 1e-3
    name: str = "batch_normalization"

    kind = "batch_normalization"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        if self.moving_mean is None or self.moving_variance is None:
            raise ValueError(f"{self.name}: BatchNormalization needs moving_mean and moving_variance")
        self.moving_mean = frozen_array(self.moving_mean, name=f"{self.name}.moving_mean")
        F = self.moving_mean.shape[0] if self.moving_mean.ndim == 1 else -1
        if F < 1:
            raise ValueError(f"{self.name}.moving_mean must be a non-empty vector, got {self.moving_mean.shape}")
        self.moving_variance = frozen_array(self.moving_variance, (F,), f"{self.name}.moving_variance")
        self.gamma = _vector(self.gamma, f"{self.name}.gamma", F)
        self.beta = _vector(self.beta, f"{self.name}.beta", F)
        if not (self.epsilon >= 0):
            raise ValueError(f"{self.name}: epsilon must be >= 0, got {self.epsilon}")
        if np.any(self.moving_variance + self.epsilon <= 0):
            raise ValueError(f"{self.name}: moving_variance + epsilon must be > 0")

    @property
    def size(self):
        return self.moving_mean.shape[0]

    def output_shape(self, shapes):
        return _last_axis_shape(self, "BatchNormalization", shapes)

    def call(self, inputs, lengths=None):
        return batch_normalization(self, inputs[0])

    def arrays(self):
        return {k: getattr(self, k) for k in ("gamma", "beta", "moving_mean", "moving_variance")
                if getattr(self, k) is not None}

    def config(self):
        return {"epsilon": self.epsilon}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(arrays.get("moving_mean"), arrays.get("moving_variance"), arrays.get("gamma"), arrays.get("beta"),
                   config.number("epsilon", 1e-3), name)


def batch_normalization(layer: BatchNormalization, x):
    x = np.asarray(x, f32)
    return _scale_shift(layer, (x - layer.moving_mean) / np.sqrt(layer.moving_variance + np.float32(layer.epsilon)))
