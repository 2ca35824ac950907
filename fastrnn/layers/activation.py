"""Activation layers: element-wise functions, softmax / log-softmax on any axis, identity, and
user-defined activation functions (Keras Activation / Softmax, PyTorch nn.Tanh, nn.ReLU,
nn.Sigmoid, nn.GELU, nn.Softmax, nn.LogSoftmax, nn.Identity, ONNX Tanh / Softmax / ...).

``function`` names one of fastrnn.activations (with alpha, beta), or "softmax", "log_softmax",
"gelu" (exact, with erf), "gelu_tanh" (the tanh approximation), "identity". A custom function is
an Activation with ``custom=True``: its name is the one stored in the source config, and the
callable comes from the user (``custom_layers={name: factory}``; see fastrnn.layers.custom).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..activations import ACTIVATION_CODES, ALIASES, Activation as ActivationFunction, apply_activation
from .base import Layer, check_axis
from .dense import log_softmax, softmax

f32 = np.float32
AXIS_FUNCTIONS = ("softmax", "log_softmax")
EXTRA_FUNCTIONS = ("gelu", "gelu_tanh", "identity") + AXIS_FUNCTIONS

# The one table of framework activation names -> fastrnn element-wise function names, for every
# importer: Keras activation names ("linear", "swish", "exponential") and PyTorch / aten operator
# names ("silu", "exp"). A function with parameters of its own (ELU's alpha, leaky ReLU's slope,
# hard sigmoid's line, which Keras 2 and 3 define differently) is mapped by its importer instead.
FRAMEWORK_ACTIVATIONS = {
    "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "linear": "affine", "elu": "elu",
    "selu": "selu", "softplus": "softplus", "softsign": "softsign", "exponential": "exponential",
    "exp": "exponential", "swish": "swish", "silu": "swish",
}


def erf(x):
    """Error function in float64, through the complementary function's Chebyshev fit (Numerical
    Recipes' erfcc; fractional error below 1.2e-7 everywhere: exact at float32 precision)."""
    x = np.asarray(x, np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def gelu(x, approximate=False):
    """GELU: x * Phi(x) exactly (PyTorch default, Keras approximate=False) or the tanh form."""
    x64 = np.asarray(x, np.float64)
    if approximate:
        out = 0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    else:
        out = 0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))
    return out.astype(f32)


def known_function(name) -> bool:
    name = ALIASES.get(name, name)
    return name in ACTIVATION_CODES or name in EXTRA_FUNCTIONS or name == "linear"


@dataclass(repr=False)
class Activation(Layer):
    """y = f(x), element-wise, or softmax / log-softmax along ``axis`` (batch-major, batch = axis 0)."""

    function: str = "identity"
    axis: int = -1
    alpha: Optional[float] = None
    beta: Optional[float] = None
    name: str = "activation"
    custom: bool = False
    fn: Optional[Callable] = field(default=None, compare=False)

    kind = "activation"
    mask_rule = "keep"

    def __post_init__(self):
        if self.custom:
            if not callable(self.fn):
                raise ValueError(f"{self.name}: custom activation {self.function!r} needs a function "
                                 f"(pass custom_layers={{{self.function!r}: factory}})")
            return
        name = self.function.lower()
        name = "identity" if name == "linear" else ALIASES.get(name, name)
        if name == "affine" and self.alpha is None and self.beta is None:
            name = "identity"
        if name not in ACTIVATION_CODES and name not in EXTRA_FUNCTIONS:
            raise ValueError(f"{self.name}: unknown activation {self.function!r}; supported: "
                             f"{sorted(set(ACTIVATION_CODES) | set(EXTRA_FUNCTIONS))}, or a custom function "
                             "through custom_layers=")
        self.function = name
        if name in ACTIVATION_CODES:
            base = ActivationFunction.of(name)
            self.alpha = base.alpha if self.alpha is None else float(self.alpha)
            self.beta = base.beta if self.beta is None else float(self.beta)
        self.axis = int(self.axis)

    @property
    def per_step(self):
        # element-wise functions act on each step; softmax only when over the feature axis
        return self.function not in AXIS_FUNCTIONS or self.axis == -1

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if self.function in AXIS_FUNCTIONS:
            check_axis(self.axis, len(shape) + 1, self.name)
        return shape

    def call(self, inputs, lengths=None):
        return activation(self, inputs[0])

    def config(self):
        cfg = {"function": self.function, "axis": self.axis}
        if self.custom:
            cfg["custom"] = True
        elif self.function in ACTIVATION_CODES:
            cfg.update(alpha=self.alpha, beta=self.beta)
        return cfg

    def type_name(self):
        return f"Activation({self.function})"

    @classmethod
    def from_config(cls, name, config, arrays, custom=None):
        function = config.str("function", "identity")
        if config.bool("custom", False):
            factory = (custom or {}).get(function)
            if factory is None:
                raise LookupError(function)
            return cls(function, name=name, custom=True, fn=factory(function))
        return cls(function, config.int("axis", -1, minimum=-64), config.number("alpha", None, allow_none=True),
                   config.number("beta", None, allow_none=True), name)


def activation(layer: Activation, x: np.ndarray) -> np.ndarray:
    """The NumPy definition of the Activation layer."""
    x = np.asarray(x, f32)
    f = layer.function
    if layer.custom:
        return np.asarray(layer.fn(x), f32)
    if f == "identity":
        return x
    if f == "softmax":
        return softmax(x, axis=layer.axis)
    if f == "log_softmax":
        return log_softmax(x, axis=layer.axis)
    if f in ("gelu", "gelu_tanh"):
        return gelu(x, approximate=f == "gelu_tanh")
    return apply_activation(ActivationFunction(f, layer.alpha, layer.beta), x)
