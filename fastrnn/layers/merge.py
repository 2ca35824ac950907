"""Merge layers: Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum, Dot (Keras).

Inputs are batch-major arrays; element-wise merges broadcast as NumPy (and Keras 3) do.
Masks (Keras 3): Concatenate ORs its inputs' masks, an unmasked input counting as all valid
(``ops.any`` over the concatenated masks: an unmasked input leaves every step valid); the
element-wise merges OR them too (no mask if any input has none); Dot drops them. With right
padding, OR is the longest length. Maximum, Minimum and Multiply also leave an input's masked
steps out of the value (Keras 3 since keras-team/keras#19685, 2024): Maximum / Minimum take the
other inputs' values there, Multiply counts them as 1 and gives 0 where every input is masked.
Add, Subtract and Average combine the values as they are.

Keras 1 and 2 (and tf.keras 2) did otherwise: ``_Merge.compute_mask`` and
``Concatenate.compute_mask`` take the AND of the masks present (an unmasked input leaves the others'
mask as it is), and every merge combines the values as they are. Their importer sets
``mask_rule="and"`` for that; ``"or"`` (the default) is Keras 3's rule above.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Layer, check_axis
from .mask import combine

f32 = np.float32


def _broadcast(shapes, where):
    out = []
    for dims in zip(*[tuple(reversed(s)) for s in _padded(shapes)]):
        known = {d for d in dims if d not in (None, 1)}
        if len(known) > 1:
            raise ValueError(f"{where}: input shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(known.pop() if known else (None if None in dims else 1))
    return tuple(reversed(out))


def _padded(shapes):
    n = max(len(s) for s in shapes)
    return [(1,) * (n - len(s)) + tuple(s) for s in shapes]


@dataclass(repr=False)
class Merge(Layer):
    """Element-wise merge of two or more inputs: op in add | subtract | multiply | average |
    maximum | minimum."""

    op: str = "add"
    name: str = "merge"
    mask_rule: str = "or"  # "or": Keras 3; "and": Keras 1 / 2 (see the module doc)

    kind = "merge"
    num_inputs = None
    per_step = True
    OPS = ("add", "subtract", "multiply", "average", "maximum", "minimum")

    def __post_init__(self):
        if self.op not in self.OPS:
            raise ValueError(f"{self.name}: merge op must be one of {self.OPS}, got {self.op!r}")
        _check_mask_rule(self)

    def type_name(self):
        return self.op.capitalize()

    def output_shape(self, shapes):
        if len(shapes) < 2 or (self.op == "subtract" and len(shapes) != 2):
            raise ValueError(f"{self.name} ({self.type_name()}) needs "
                             f"{'exactly 2' if self.op == 'subtract' else 'at least 2'} inputs, got {len(shapes)}")
        return _broadcast(shapes, self.name)

    def output_lengths(self, lengths, shapes):
        # Keras 3: OR of the masks, none if an input has none; Keras 2: AND of the masks present
        return combine(list(lengths), self.mask_rule)

    def call(self, inputs, lengths=None):
        return merge(self, inputs, lengths)

    def config(self):
        return {"op": self.op, **_mask_rule_config(self)}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.str("op", "add", choices=cls.OPS), name, config.str("mask_rule", "or", choices=MASK_RULES))


MASK_RULES = ("or", "and")


def _check_mask_rule(layer):
    if layer.mask_rule not in MASK_RULES:
        raise ValueError(f"{layer.name}: mask_rule must be one of {MASK_RULES}, got {layer.mask_rule!r}")


def _mask_rule_config(layer):
    """The key only when it is not the default, so files without masks read as before."""
    return {} if layer.mask_rule == "or" else {"mask_rule": layer.mask_rule}


def _step_masks(xs, lengths):
    """Per input: a (B, T, 1, ...) bool mask of its valid steps (right padding), or None."""
    if lengths is None:
        return [None] * len(xs)
    out = []
    for x, L in zip(xs, lengths):
        if L is None or x.ndim < 3:
            out.append(None)
        else:
            valid = np.arange(x.shape[1])[None, :] < np.asarray(L)[:, None]
            out.append(valid.reshape(valid.shape + (1,) * (x.ndim - 2)))
    return out


def merge(layer: Merge, xs, lengths=None):
    """Element-wise merge of ``xs``; ``lengths`` (one per input, None when unmasked) as Keras 3's
    masks (see the module doc)."""
    xs = [np.asarray(x, f32) for x in xs]
    op = layer.op
    masks = _step_masks(xs, lengths) if layer.mask_rule == "or" else [None] * len(xs)  # Keras 2: values as they are
    if op in ("maximum", "minimum") and any(m is not None for m in masks):
        # keras.layers.Merge._apply_merge_op_and_or_mask
        f = np.maximum if op == "maximum" else np.minimum
        out, out_mask = xs[0], masks[0]
        for x, mask in zip(xs[1:], masks[1:]):
            if mask is not None:
                x = np.where(mask, x, out)
            if out_mask is not None:
                out = np.where(out_mask, out, x)
            out_mask = out_mask | mask if (mask is not None and out_mask is not None) else None
            out = f(out, x)
        return np.asarray(out, f32)
    if op == "multiply" and any(m is not None for m in masks):
        # keras.layers.Multiply._merge_function: masked steps count as 1, all masked gives 0
        every = all(m is not None for m in masks)
        out = out_mask = None
        for x, mask in zip(xs, masks):
            if mask is not None:
                x = np.where(mask, x, f32(1))
                if every:
                    out_mask = mask if out_mask is None else out_mask | mask
            out = x if out is None else out * x
        if every:
            out = np.where(out_mask, out, f32(0))
        return np.asarray(out, f32)
    if op == "subtract":
        out = xs[0] - xs[1]
    elif op == "average":
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        out = out / np.float32(len(xs))
    else:
        f = {"add": np.add, "multiply": np.multiply, "maximum": np.maximum, "minimum": np.minimum}[op]
        out = xs[0]
        for x in xs[1:]:
            out = f(out, x)
    return np.asarray(out, f32)


@dataclass(repr=False)
class Concatenate(Layer):
    """Concatenate inputs along ``axis`` (batch-major; Keras default -1)."""

    axis: int = -1
    name: str = "concatenate"
    mask_rule: str = "or"  # "or": Keras 3; "and": Keras 1 / 2 (see the module doc)

    kind = "concatenate"
    num_inputs = None

    def __post_init__(self):
        _check_mask_rule(self)

    @property
    def per_step(self):
        return self.axis == -1

    def output_shape(self, shapes):
        if len(shapes) < 1:
            raise ValueError(f"{self.name} (Concatenate) needs at least one input")
        ndim = len(shapes[0]) + 1
        if any(len(s) + 1 != ndim for s in shapes):
            raise ValueError(f"{self.name} (Concatenate): inputs have different ranks {[tuple(s) for s in shapes]}")
        ax = check_axis(self.axis, ndim, self.name) - 1
        if ax < 0:
            raise ValueError(f"{self.name} (Concatenate): cannot concatenate along the batch axis")
        out = []
        for i in range(ndim - 1):
            dims = [s[i] for s in shapes]
            if i == ax:
                out.append(None if None in dims else sum(dims))
            else:
                known = {d for d in dims if d is not None}
                if len(known) > 1:
                    raise ValueError(f"{self.name} (Concatenate): shapes {[tuple(s) for s in shapes]} differ "
                                     f"on axis {i + 1}")
                out.append(known.pop() if known else None)
        return tuple(out)

    def output_lengths(self, lengths, shapes):
        ndim = len(shapes[0]) + 1
        ax = check_axis(self.axis, ndim, self.name)
        if ndim < 3 or ax == 1:
            return None  # no time axis left to mask along (or joined along time)
        # Keras 3: OR of the masks, None if an input has none; Keras 2: AND of the masks present
        return combine(list(lengths), self.mask_rule)

    def call(self, inputs, lengths=None):
        return concatenate(self, inputs)

    def config(self):
        return {"axis": self.axis, **_mask_rule_config(self)}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.int("axis", -1, minimum=-64), name, config.str("mask_rule", "or", choices=MASK_RULES))


def concatenate(layer: Concatenate, xs):
    return np.ascontiguousarray(np.concatenate([np.asarray(x, f32) for x in xs], axis=layer.axis))


@dataclass(repr=False)
class Dot(Layer):
    """Keras Dot: batch-wise dot product of two inputs over ``axes`` (one per input, batch-major,
    axis 0 = batch excluded); ``normalize`` L2-normalises both along those axes first (cosine)."""

    axes: tuple = (-1, -1)
    normalize: bool = False
    name: str = "dot"

    kind = "dot"
    num_inputs = 2

    def __post_init__(self):
        axes = self.axes
        if isinstance(axes, (int, np.integer)):
            axes = (int(axes), int(axes))
        self.axes = tuple(int(a) for a in axes)
        if len(self.axes) != 2:
            raise ValueError(f"{self.name} (Dot): axes must be one integer or a pair, got {axes!r}")

    def _axes(self, shapes):
        if len(shapes) != 2:
            raise ValueError(f"{self.name} (Dot) needs exactly 2 inputs, got {len(shapes)}")
        out = []
        for a, s in zip(self.axes, shapes):
            ax = check_axis(a, len(s) + 1, self.name)
            if ax == 0:
                raise ValueError(f"{self.name} (Dot): cannot reduce over the batch axis")
            out.append(ax)
        return out

    def output_shape(self, shapes):
        a0, a1 = self._axes(shapes)
        s0, s1 = tuple(shapes[0]), tuple(shapes[1])
        if None not in (s0[a0 - 1], s1[a1 - 1]) and s0[a0 - 1] != s1[a1 - 1]:
            raise ValueError(f"{self.name} (Dot): sizes {s0[a0 - 1]} and {s1[a1 - 1]} differ on the dot axes")
        out = s0[:a0 - 1] + s0[a0:] + s1[:a1 - 1] + s1[a1:]
        return out if out else (1,)

    def call(self, inputs, lengths=None):
        return dot(self, inputs)

    def config(self):
        return {"axes": list(self.axes), "normalize": self.normalize}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(tuple(config.int_list("axes", [-1, -1], minimum=-64)), config.bool("normalize", False), name)


def dot(layer: Dot, xs):
    x, y = (np.asarray(v, f32) for v in xs)
    a0, a1 = layer._axes([x.shape[1:], y.shape[1:]])
    if layer.normalize:  # Keras: x / sqrt(max(sum(x^2), 1e-12))
        x = x / np.sqrt(np.maximum(np.sum(x * x, axis=a0, keepdims=True), 1e-12))
        y = y / np.sqrt(np.maximum(np.sum(y * y, axis=a1, keepdims=True), 1e-12))
    x = np.moveaxis(x, a0, -1)
    y = np.moveaxis(y, a1, -1)
    B = x.shape[0]
    rx, ry = x.shape[1:-1], y.shape[1:-1]
    out = np.einsum("bik,bjk->bij", x.reshape(B, -1, x.shape[-1]), y.reshape(B, -1, y.shape[-1]))
    out = out.reshape((B,) + rx + ry)
    if out.ndim == 1:
        out = out[:, None]
    return np.ascontiguousarray(out, dtype=f32)
