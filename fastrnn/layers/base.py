"""What every fastrnn layer is: read-only weights, a config, shapes, and a NumPy definition.

A layer is a small object holding weights in fastrnn's internal layout (float32, read-only) and
its options. It never holds running state. Every layer type provides:

- ``kind``: the name of its type in the native file (the registry key, see fastrnn.layers);
- ``name``: the user's name for this layer (unique inside a model);
- ``num_inputs``: 1, or None for layers that take a list of tensors (merges, attention);
- ``output_shape(shapes)``: the output shape(s) without the batch axis, from the input shapes
  (a list, one per input; ``None`` entries are free sizes);
- ``call(inputs, lengths)``: the NumPy definition of the layer, batch-major (the spec, and the
  implementation for every layer that has no compiled kernel). ``lengths`` is one mask per
  input, or None: int64 (B,), the number of valid steps of each row (right padding), or a
  boolean (B, T) array for any other pattern (fastrnn.layers.mask: ``step_mask`` gives the
  (B, T) form of either);
- ``output_lengths(lengths, shapes)``: how the mask propagates (Keras's ``compute_mask``), in
  the same forms;
- ``per_step``: True when the output at step t depends only on the inputs at step t (such a layer
  runs unchanged inside generation, one step at a time);
- ``count_params()``, ``arrays()`` (name -> array, what the native file stores), ``config()``
  (JSON-serialisable options) and the class method ``from_config(name, config, arrays)``, the
  inverse used by the native loader (``config`` is a ConfigReader that validates as it reads);
- ``int8_forms()`` / ``set_int8_forms(forms)``: the exact int8 forms (Int8Weights) a source file
  gave for some of those arrays, keyed as ``arrays()`` (Embedding, Dense and Recurrent keep them;
  the other layers compute in float32 and have none).

A layer may cache backend data (packed weights) in ``_packed``; a copy or a pickle leaves it out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

f32 = np.float32


def frozen_array(a, shape=None, name="array") -> np.ndarray:
    """float32 C-contiguous read-only view/copy of ``a``, checked against ``shape`` (None = any)."""
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    arr = arr.view()  # a view: never change the flags of the caller's array
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Int8Weights:
    """The int8 form a source file gave for a weight matrix W (N, K): W == scale[:, None] * q
    exactly, q int8 (N, K) in [-127, 127], scale float32 (N,) > 0 (onnxruntime's weight integers,
    the integers of an int8 native file). A layer keeps it (``Dense.int8``, ``Embedding.int8``,
    ``DirectionWeights.int8``) where fastrnn's per-row rule would pick other integers (a per-tensor
    scale); the int8 engines, int8 files and generation's int8 weights then use these integers
    (fastrnn.quantize.int8_rule). It travels with the layer: copies, pickles, saved files.
    Rows slice like the matrix: ``form[rows]`` (the GRU's r|z and n blocks)."""

    q: np.ndarray  # (N, K) int8
    scale: np.ndarray  # (N,) float32

    def __post_init__(self):
        q = np.ascontiguousarray(self.q)
        if q.dtype != np.int8 or q.ndim != 2:
            raise ValueError(f"Int8Weights.q must be a 2-D int8 array, got {q.dtype} {q.shape}")
        q = q.view()
        q.flags.writeable = False
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "scale", frozen_array(self.scale, (q.shape[0],), "Int8Weights.scale"))

    @property
    def shape(self):
        return self.q.shape

    def __getitem__(self, rows):
        return Int8Weights(self.q[rows], self.scale[rows])


def check_int8(form, matrix, name):
    """``form`` (an Int8Weights or None) fits ``matrix`` (N, K): raises ValueError naming it if not."""
    if form is None:
        return None
    if matrix is None:
        raise ValueError(f"{name}: an int8 form for a matrix the layer does not have")
    if not isinstance(form, Int8Weights):
        raise ValueError(f"{name}: the int8 form must be an Int8Weights (q, scale), got {type(form).__name__}")
    if form.shape != matrix.shape:
        raise ValueError(f"{name}: int8 form of shape {form.shape} for a matrix of shape {matrix.shape}")
    return form


def shape_str(shape) -> str:
    """A shape without the batch axis as Keras prints it, batch included: (None, 10, 64)."""
    return "(" + ", ".join(["None"] + ["None" if s is None else str(s) for s in shape]) + ")"


def min_lengths(lengths):
    """The AND of the inputs' masks (None entries ignored): with right padding, the shortest
    valid length wins."""
    from .mask import combine

    return combine(list(lengths), "and")


class Layer:
    """Base class of the layers without compiled kernels: defaults for the protocol above."""

    kind = "layer"
    num_inputs = 1
    per_step = False
    #: how the mask goes through: "keep" (the time axis survives unchanged), "drop", "merge"
    mask_rule = "drop"

    name: str

    def count_params(self) -> int:
        return int(sum(a.size for a in self.arrays().values()))

    def arrays(self) -> dict:
        return {}

    def config(self) -> dict:
        return {}

    def output_lengths(self, lengths, shapes):
        if self.mask_rule == "keep":
            return lengths[0]
        if self.mask_rule == "merge":
            return min_lengths(lengths)
        return None

    def int8_forms(self) -> dict:
        """{arrays() key: Int8Weights}: the exact int8 forms the source file gave (none here)."""
        return {}

    def set_int8_forms(self, forms):
        """Keep the int8 forms read with the arrays (a layer computing in float32 keeps none:
        an int8 file's values are exact as float32 already)."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_packed", None)  # backend caches: rebuilt on first use
        return state

    def type_name(self) -> str:
        return type(self).__name__

    def __repr__(self):
        return f"<{self.type_name()} {self.name!r}>"


class ConfigReader:
    """Typed, validating access to a layer's JSON config; errors name the layer and the field."""

    def __init__(self, obj, where):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: config must be a JSON object, got {type(obj).__name__}")
        self.obj, self.where = obj, where

    def error(self, key, what):
        return ValueError(f"{self.where}: {key!r} {what}, got {self.obj.get(key)!r:.60}")

    def int(self, key, default=None, minimum=0):
        v = self.obj.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self.error(key, f"must be an integer >= {minimum}")
        return v

    def int_or_none(self, key, default=None, minimum=0):
        if self.obj.get(key, default) is None:
            return None
        return self.int(key, default, minimum)

    def int_list(self, key, default=None, minimum=None, allow_none=False):
        v = self.obj.get(key, default)
        ok = isinstance(v, list) and len(v) <= 64 and all(
            (allow_none and x is None)
            or (isinstance(x, int) and not isinstance(x, bool) and (minimum is None or x >= minimum)) for x in v)
        if not ok:
            raise self.error(key, "must be a list of integers" + (f" >= {minimum}" if minimum is not None else ""))
        return list(v)

    def bool(self, key, default):
        v = self.obj.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, "must be true or false")
        return v

    def str(self, key, default, choices=None):
        v = self.obj.get(key, default)
        if not isinstance(v, str) or (choices is not None and v not in choices):
            raise self.error(key, "must be a string" + (f" among {list(choices)}" if choices else ""))
        return v

    def number(self, key, default, allow_none=False):
        v = self.obj.get(key, default)
        if v is None and allow_none:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.error(key, "must be a finite number" + (" or null" if allow_none else ""))
        return float(v)

    def raw(self, key, default=None):
        return self.obj.get(key, default)


def check_axis(axis, ndim, where):
    """A Keras/NumPy axis of a batch-major tensor with ``ndim`` axes (batch included) -> 0..ndim-1."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise ValueError(f"{where}: axis {axis!r} is out of range for a tensor with {ndim} axes (batch included)")
    return int(axis) % ndim
