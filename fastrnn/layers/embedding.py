"""Token lookup (Embedding) and Keras Masking: the layers that create masks.

Embedding(mask_zero) marks id 0 as padding wherever it stands, Masking a step whose features all
equal ``mask_value``. The mask is lengths (B,) when it is right padding, else a boolean (B, T)
array (fastrnn.layers.mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .base import Int8Weights, Layer, check_int8, frozen_array
from .mask import check_has_steps, normalize


def lengths_from_mask(mask, what):
    """Per-row lengths from a (B, T) validity mask that must be right-padded (the real steps of
    each row first). Models need no such conversion: they run any mask (see fastrnn.layers.mask)."""
    mask = np.asarray(mask, bool)
    out = normalize(mask)
    if out.ndim != 1:
        raise ValueError(
            f"{what}: this mask is not right padding (a row has a masked step before a real one: left "
            "padding or a gap), so lengths cannot describe it; a model with Embedding(mask_zero=True) or "
            "Masking runs such masks itself")
    return out


@dataclass(repr=False)
class Embedding(Layer):
    """Token lookup: ids (B, T) -> (B, T, E). ``mask_zero``: id 0 is padding (Keras). ``int8``:
    the exact int8 form of the table its source file gave (Int8Weights), or None."""

    weight: np.ndarray  # (V, E)
    mask_zero: bool = False
    name: str = "embedding"
    int8: Optional[Int8Weights] = field(default=None, compare=False)

    kind = "embedding"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        self.weight = frozen_array(self.weight, name=f"{self.name}.weight")
        if self.weight.ndim != 2:
            raise ValueError(f"{self.name}.weight must be 2-D (vocab, dim), got {self.weight.shape}")
        self.int8 = check_int8(self.int8, self.weight, f"{self.name}.weight")

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def output_size(self) -> int:
        return self.weight.shape[1]

    def output_shape(self, shapes):
        return tuple(shapes[0]) + (self.output_size,)

    def mask_lengths(self, ids):
        """The mask this layer creates from its input: lengths (B,) or bool (B, T) (None: no mask)."""
        if not self.mask_zero:
            return None
        check_has_steps(ids, f"{self.name} (Embedding with mask_zero)")
        return normalize(ids != 0)

    def call(self, inputs, lengths=None):
        return embedding(self, inputs[0])

    def arrays(self):
        return {"weight": self.weight}

    def config(self):
        return {"mask_zero": self.mask_zero}

    def int8_forms(self):
        return {} if self.int8 is None else {"weight": self.int8}

    def set_int8_forms(self, forms):
        self.int8 = check_int8(forms.get("weight"), self.weight, f"{self.name}.weight")

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(arrays.get("weight"), config.bool("mask_zero", False), name)


def embedding(layer: Embedding, ids: np.ndarray) -> np.ndarray:
    """ids (B, T) int -> (B, T, E)."""
    return layer.weight[ids]


@dataclass(repr=False)
class Masking(Layer):
    """Keras Masking: a step whose features all equal ``mask_value`` is padding."""

    mask_value: float = 0.0
    name: str = "masking"

    kind = "masking"
    per_step = True
    mask_rule = "keep"

    def __post_init__(self):
        if not np.isfinite(self.mask_value):
            raise ValueError(f"{self.name}: mask_value must be a finite number, got {self.mask_value}")

    def output_shape(self, shapes):
        return tuple(shapes[0])

    def mask_lengths(self, x):
        """The mask: lengths (B,) or bool (B, T), a step masked when all its features equal mask_value."""
        check_has_steps(x, f"{self.name} (Masking)")
        return normalize(np.any(x != self.mask_value, axis=-1))

    def call(self, inputs, lengths=None):
        return inputs[0]

    def config(self):
        return {"mask_value": float(self.mask_value)}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.number("mask_value", 0.0), name)
