"""Activation functions: names, kernel codes and the NumPy definitions (the spec).

An activation is the triple ``(name, alpha, beta)``. The integer codes are shared by every
kernel backend (see kernels/README.md); this table is their Python mirror.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# name -> (kernel code, default alpha, default beta)
ACTIVATION_CODES = {
    "sigmoid": (0, 0.0, 0.0),
    "tanh": (1, 0.0, 0.0),
    "relu": (2, 0.0, 0.0),
    "affine": (3, 1.0, 0.0),
    "hard_sigmoid": (4, 1.0 / 6.0, 0.5),  # Keras 3; legacy Keras 2 used alpha=0.2; ONNX 0.2, 0.5
    "leaky_relu": (5, 0.01, 0.0),
    "thresholded_relu": (6, 1.0, 0.0),
    "scaled_tanh": (7, 1.0, 1.0),
    "elu": (8, 1.0, 0.0),
    "softsign": (9, 0.0, 0.0),
    "softplus": (10, 0.0, 0.0),
    "exponential": (11, 0.0, 0.0),
    "selu": (12, 0.0, 0.0),
    "swish": (13, 0.0, 0.0),
}
ALIASES = {"linear": "affine", "silu": "swish"}

SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


@dataclass(frozen=True)
class Activation:
    """One activation function with its parameters, e.g. ``Activation("hard_sigmoid", 0.2, 0.5)``."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    @classmethod
    def of(cls, spec) -> "Activation":
        """Build from an Activation, a name (defaults filled in) or a (name, alpha, beta) tuple."""
        if isinstance(spec, Activation):
            return spec
        if isinstance(spec, str):
            name = ALIASES.get(spec.lower(), spec.lower())
            if name not in ACTIVATION_CODES:
                raise ValueError(
                    f"unknown activation {spec!r}; supported: {sorted(ACTIVATION_CODES) + sorted(ALIASES)}"
                )
            _, alpha, beta = ACTIVATION_CODES[name]
            return cls(name, alpha, beta)
        name, alpha, beta = spec
        base = cls.of(name)
        return cls(base.name, float(alpha), float(beta))

    @property
    def code(self) -> int:
        return ACTIVATION_CODES[self.name][0]

    def to_json(self):
        return [self.name, self.alpha, self.beta]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return apply_activation(self, x)


def apply_activation(act: Activation, x: np.ndarray) -> np.ndarray:
    """The NumPy definition of every activation (float32 in, float32 out)."""
    a = np.float32(act.alpha)
    b = np.float32(act.beta)
    name = act.name
    with np.errstate(over="ignore", under="ignore"):
        if name == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-x))
        elif name == "tanh":
            out = np.tanh(x)
        elif name == "relu":
            out = np.maximum(x, 0)
        elif name == "affine":
            out = a * x + b
        elif name == "hard_sigmoid":
            out = np.clip(a * x + b, 0, 1)
        elif name == "leaky_relu":
            out = np.where(x >= 0, x, a * x)
        elif name == "thresholded_relu":
            out = np.where(x > a, x, 0)
        elif name == "scaled_tanh":
            out = a * np.tanh(b * x)
        elif name == "elu":
            out = np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1))
        elif name == "softsign":
            out = x / (1 + np.abs(x))
        elif name == "softplus":
            out = np.logaddexp(np.float32(0), x)
        elif name == "exponential":
            out = np.exp(x)
        elif name == "selu":
            out = SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * (np.exp(np.minimum(x, 0)) - 1))
        elif name == "swish":
            out = x / (1.0 + np.exp(-x))
        else:  # pragma: no cover - Activation.of rejects unknown names
            raise ValueError(name)
    return np.asarray(out, dtype=np.float32)


SIGMOID = Activation.of("sigmoid")
TANH = Activation.of("tanh")
RELU = Activation.of("relu")
LINEAR = Activation.of("linear")
