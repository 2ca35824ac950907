"""Constant: a fixed tensor as a graph node (a parameter a PyTorch forward adds or multiplies
by, e.g. ``x * self.scale + self.offset``), read by element-wise merges.

``value`` holds the tensor without the batch axis; the layer outputs it with a batch axis of 1,
which the merges broadcast against any batch (NumPy broadcasting, as PyTorch's).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Layer, frozen_array


@dataclass(repr=False)
class Constant(Layer):
    """y = value[None] (batch axis 1): a node with no inputs."""

    value: np.ndarray = None
    name: str = "constant"

    kind = "constant"
    num_inputs = 0
    per_step = False

    def __post_init__(self):
        if self.value is None:
            raise ValueError(f"{self.name} (Constant) needs a value")
        self.value = frozen_array(self.value, name=f"{self.name}.value")

    def output_shape(self, shapes):
        return tuple(self.value.shape)

    def call(self, inputs, lengths=None):
        return constant(self)

    def arrays(self):
        return {"value": self.value}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(arrays.get("value"), name)


def constant(layer: Constant) -> np.ndarray:
    """The NumPy definition: the value with a leading batch axis of size 1."""
    return layer.value[None]
