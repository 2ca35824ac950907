"""User-defined layers: the door for what fastrnn does not know (Keras custom classes, a custom
activation function stored by name).

A user passes ``custom_layers={"ClassName": factory}`` to fastrnn.load / fastrnn.from_keras /
``fastrnn convert --custom-layers module.py``. For a layer, ``factory(config, weights)`` receives
the layer's config (a dict, as the source file stores it) and its weights (a list of float32
arrays, in the source's order) and returns ``fn(inputs, mask=None)``: ``inputs`` is one
batch-major array (or a list of them for a layer with several inputs), ``mask`` None or a
boolean (B, T) array (a list for several inputs) of the valid steps; ``fn`` returns one array.
The output carries no mask. A saved model records the class name, the config and the weights;
loading it again needs the same factory, else the error names the missing ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .base import Layer, frozen_array
from .mask import step_mask

f32 = np.float32


@dataclass(repr=False)
class CustomLayer(Layer):
    """A node computed by a user function of NumPy arrays (see the module doc)."""

    class_name: str = "Custom"
    source_config: dict = field(default_factory=dict)
    weights: list = field(default_factory=list)
    fn: Optional[Callable] = field(default=None, compare=False)
    name: str = "custom"
    n_inputs: int = 1
    #: the output shape (without batch) if known, else computed on a probe at graph build time
    shape: Optional[tuple] = None

    kind = "custom"
    num_inputs = None

    def __post_init__(self):
        if not callable(self.fn):
            raise ValueError(f"{self.name}: custom layer class {self.class_name!r} needs a factory "
                             f"(pass custom_layers={{{self.class_name!r}: factory}})")
        self.weights = [frozen_array(w, name=f"{self.name}.weights[{i}]") for i, w in enumerate(self.weights)]
        json.dumps(self.source_config)  # must be storable

    def type_name(self):
        return self.class_name

    def output_shape(self, shapes):
        if len(shapes) != self.n_inputs:
            raise ValueError(f"{self.name} ({self.class_name}) takes {self.n_inputs} inputs, got {len(shapes)}")
        if self.shape is not None:
            return tuple(self.shape)
        # probe with free sizes set to 2: the user function tells its own output shape
        probe = [np.zeros((1,) + tuple(2 if s is None else s for s in shp), f32) for shp in shapes]
        out = self.call(probe)
        shape = list(out.shape[1:])
        for i, s in enumerate(shape):  # a free input time axis stays free in the output
            if i == 0 and len(shapes[0]) >= 1 and shapes[0][0] is None and s == 2:
                shape[i] = None
        return tuple(shape)

    def call(self, inputs, lengths=None):
        masks = None
        if lengths is not None and any(x is not None for x in lengths):
            masks = [None if L is None else step_mask(L, x.shape[1]) for x, L in zip(inputs, lengths)]
        if self.n_inputs == 1:
            out = self.fn(inputs[0], mask=None if masks is None else masks[0])
        else:
            out = self.fn(list(inputs), mask=masks)
        out = np.asarray(out)
        if not np.issubdtype(out.dtype, np.number):
            raise TypeError(f"{self.name} ({self.class_name}): the custom function returned {out.dtype}, not numbers")
        return np.ascontiguousarray(out, dtype=f32)

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def arrays(self):
        return {f"w{i}": w for i, w in enumerate(self.weights)}

    def config(self):
        return {"class_name": self.class_name, "config": self.source_config, "n_inputs": self.n_inputs,
                "num_weights": len(self.weights), "shape": None if self.shape is None else list(self.shape)}

    @classmethod
    def from_config(cls, name, config, arrays, custom=None):
        class_name = config.str("class_name", None)
        factory = (custom or {}).get(class_name)
        if factory is None:
            raise LookupError(class_name)
        n = config.int("num_weights", 0)
        weights = []
        for i in range(n):
            if arrays.get(f"w{i}") is None:
                raise ValueError(f"{name}: missing tensor for 'w{i}'")
            weights.append(arrays.get(f"w{i}"))
        source_config = config.raw("config", {})
        if not isinstance(source_config, dict):
            raise ValueError(f"{name}: 'config' must be a JSON object")
        shape = config.raw("shape")
        if shape is not None:
            shape = tuple(config.int_list("shape", allow_none=True, minimum=0))
        return cls(class_name, source_config, weights, factory(dict(source_config), list(weights)), name,
                   config.int("n_inputs", 1, minimum=1), shape)


def call_factory(factory, class_name, config, weights, where):
    """Call a user factory with a clear error if it fails."""
    try:
        return factory(config, weights)
    except Exception as exc:  # the user's code: report what failed and where
        raise ValueError(f"{where}: custom_layers[{class_name!r}] failed: {type(exc).__name__}: {exc}") from exc
