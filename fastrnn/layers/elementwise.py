"""Element-wise arithmetic that exported graphs carry between layers: a tensor combined with a
constant (``x * 0.5``, ``x - mean``, ``1 / x``), and unary math functions (exp, log, sqrt, abs,
neg, reciprocal). PyTorch code such as ``torch.exp(logits) / t`` exports to these operators.

Constants are stored without the batch axis and broadcast against the batch-major input as NumPy
does (aligned on the right), so a (features,) constant acts on the last axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Layer, frozen_array

f32 = np.float32

ARITHMETIC_OPS = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
                  "maximum": np.maximum, "minimum": np.minimum, "power": np.power}
MATH_FUNCTIONS = {"neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
                  "reciprocal": np.reciprocal}


@dataclass(repr=False)
class Arithmetic(Layer):
    """y = x <op> constant, or constant <op> x when ``constant_first`` (for subtract, divide,
    power). ``constant``: float32 array broadcastable against the input without its batch axis."""

    op: str = "add"
    constant: np.ndarray = None
    constant_first: bool = False
    name: str = "arithmetic"

    kind = "arithmetic"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        if self.op not in ARITHMETIC_OPS:
            raise ValueError(f"{self.name} (Arithmetic): op must be one of {sorted(ARITHMETIC_OPS)}, got {self.op!r}")
        if self.constant is None:
            raise ValueError(f"{self.name} (Arithmetic) needs a constant")
        self.constant = frozen_array(self.constant, name=f"{self.name}.constant")

    def type_name(self):
        return f"Arithmetic({self.op})"

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        c = self.constant.shape
        if len(c) > len(shape):
            raise ValueError(f"{self.name} (Arithmetic): constant of shape {c} has more axes than the input {shape}")
        out = list(shape)
        for i in range(1, len(c) + 1):
            d, k = shape[-i], c[-i]
            if k != 1 and d is not None and d != 1 and d != k:
                raise ValueError(f"{self.name} (Arithmetic): constant of shape {c} does not broadcast against {shape}")
            if d == 1 or (d is None and k != 1):
                out[-i] = k if d == 1 else d
        return tuple(out)

    def count_params(self) -> int:
        return 0  # a constant of the computation, not a trained weight (as Keras/PyTorch count)

    def call(self, inputs, lengths=None):
        return arithmetic(self, inputs[0])

    def arrays(self):
        return {"constant": self.constant}

    def config(self):
        return {"op": self.op, "constant_first": self.constant_first}

    @classmethod
    def from_config(cls, name, config, arrays):
        constant = arrays.get("constant")
        if constant is None:
            raise ValueError(f"{name}: missing tensor for 'constant'")
        return cls(config.str("op", "add", choices=tuple(ARITHMETIC_OPS)), constant,
                   config.bool("constant_first", False), name)


def arithmetic(layer: Arithmetic, x):
    x = np.asarray(x, f32)
    f = ARITHMETIC_OPS[layer.op]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = f(layer.constant, x) if layer.constant_first else f(x, layer.constant)
    return np.ascontiguousarray(out, dtype=f32)


@dataclass(repr=False)
class Math(Layer):
    """y = f(x) element-wise, f one of neg, exp, log, sqrt, abs, reciprocal."""

    function: str = "exp"
    name: str = "math"

    kind = "math"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        if self.function not in MATH_FUNCTIONS:
            raise ValueError(f"{self.name} (Math): function must be one of {sorted(MATH_FUNCTIONS)}, "
                             f"got {self.function!r}")

    def type_name(self):
        return f"Math({self.function})"

    def output_shape(self, shapes):
        return tuple(shapes[0])

    def call(self, inputs, lengths=None):
        x = np.asarray(inputs[0], f32)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.ascontiguousarray(MATH_FUNCTIONS[self.function](x), dtype=f32)

    def config(self):
        return {"function": self.function}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.str("function", "exp", choices=tuple(MATH_FUNCTIONS)), name)
