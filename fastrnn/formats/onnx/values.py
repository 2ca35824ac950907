"""The values the ONNX translator tracks for every ONNX value name (translate.py walks the nodes;
the rules_*.py families turn each node's input values into its output values).

- ``Const``: known at import time (initializers, Constant nodes, anything folded from them);
- ``ShapeVec``: a shape computed from the graph's tensors (Shape -> Gather -> Unsqueeze -> Concat),
  entries known integers or symbolic ``Dim`` sizes (the batch ``BATCH``, a time axis);
- ``Zeros``: ConstantOfShape of such a shape (the zero initial states exporters build);
- ``SeqLens``: a graph input that feeds only RNN nodes' sequence_lens (it becomes ``lengths``);
- ``Tensor``: a fastrnn tensor seen through a view (see translate.py);
- ``Quantized``, ``IntProduct``, ``ScaleProduct``: the steps of onnxruntime's dynamic-quantization
  pattern (rules_quantized.py), before they become a Dense layer.

Also the two refusals (``Untranslatable``, ``WrongBatchAxis``) and the readers of constant node
arguments every family uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

f32 = np.float32
BIG = 2 ** 62


class Untranslatable(Exception):
    """The graph (or one node) has no fastrnn Model equivalent; the message says why."""


class WrongBatchAxis(Untranslatable):
    """The guessed batch axis of a graph input does not fit: another guess may."""


# -- the values the translator tracks ----------------------------------------------------------

@dataclass(frozen=True)
class Dim:
    """A size only known at run time (the batch "B", or an axis of a model input)."""

    key: object


BATCH = Dim("B")


@dataclass
class Const:
    value: np.ndarray


@dataclass
class ShapeVec:
    entries: list  # int or Dim
    scalar: bool = False  # a 0-D shape element (Gather of one index)


@dataclass
class Zeros:
    shape: list  # int or Dim
    fill: float
    dtype: object


@dataclass
class SeqLens:
    input_name: str


@dataclass(eq=False)
class Quantized:
    """An output of DynamicQuantizeLinear on the run-time tensor ``source``: part "q" (the uint8
    values), "scale" or "zero" (its scale and zero point). Only the int8 patterns read these."""

    source: object  # the Tensor quantized (one object per DynamicQuantizeLinear node)
    part: str


@dataclass
class IntProduct:
    """MatMulInteger(DynamicQuantizeLinear(source), B): the integer products (``cast``: Cast to float)."""

    source: object
    weight: np.ndarray  # B (K, N), int8 / uint8
    zero: np.ndarray  # B's zero point: scalar or (N,)
    cast: bool = False


@dataclass
class ScaleProduct:
    """Mul(the dynamic scale of ``source``, B's scale)."""

    source: object
    scale: np.ndarray  # scalar or (N,)


@dataclass
class Tensor:
    """ONNX tensor = view of the fastrnn tensor ``ref`` (shape (B,) + shape)."""

    ref: tuple
    shape: tuple  # fastrnn shape without the batch axis (None = unknown)
    split: tuple = None  # the fastrnn last axis seen as (outer, inner), or None
    axes: list = field(default_factory=list)  # per ONNX axis: view axis or None (size 1)
    dtype: str = "float32"
    pieces: tuple = None  # (source ref, start, stop) when this is a slice of source's last axis

    @property
    def view_sizes(self):
        """Sizes of the view axes (batch first, None for unknown)."""
        base = [None] + list(self.shape)
        return base[:-1] + list(self.split) if self.split else base

    def is_split_axis(self, va):
        return self.split is not None and va >= len(self.shape)


def _py(v):
    """An ONNX slice bound -> a Python one (huge values mean 'to the end')."""
    if v is None:
        return None
    v = int(v)
    return None if abs(v) >= BIG // 4 else v


def _ints(c):
    return [int(x) for x in np.asarray(c.value).reshape(-1)]


def _axes_arg(node, ins):
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(ins) > 1 and ins[1] is not None:
        if not isinstance(ins[1], Const):
            raise Untranslatable(f"{node.where()}: axes computed at run time")
        return _ints(ins[1])
    return None


class RuleFamily:
    """The translation rules of one family of ONNX operators (rules_*.py). ``@RULES.rule("MatMul")``
    registers ``rule(tr, node, ins)``: the Translator ``tr``, the ONNX node and its input values ->
    the node's output values, or None when the node is not this rule's pattern (then the next rule
    registered for that operator is tried; translate.py orders the families)."""

    def __init__(self, name):
        self.name = name
        self.rules = []  # (ONNX op type, rule) in registration order

    def rule(self, *op_types):
        def register(function):
            for op in op_types:
                self.rules.append((op, function))
            return function
        return register
