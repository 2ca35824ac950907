"""onnxruntime's quantized operators (quantize_dynamic) -> fastrnn layers computed by the int8 engine.
"""
from __future__ import annotations

import numpy as np

from .values import Const, IntProduct, Quantized, RuleFamily, ScaleProduct, f32

RULES = RuleFamily("quantized")


# tested by tests/test_onnx_quantized.py::test_runs_on_the_int8_engine_with_those_integers
@RULES.rule("Mul")
def dequantizing_mul(tr, node, ins):
    """Mul(the dynamic scale of x, B's scale), then Mul(Cast(MatMulInteger(...)), that product):
    the Dense of the MatMulInteger pattern. Any other Mul: None (rules_math.py's arithmetic)."""
    a, b = ins[0], ins[1]
    for u, v in ((a, b), (b, a)):
        if isinstance(u, Quantized) and u.part == "scale" and isinstance(v, Const):
            return [ScaleProduct(u.source, np.asarray(v.value, f32))]
        if (isinstance(u, IntProduct) and u.cast and isinstance(v, ScaleProduct)
                and u.source is v.source):
            return [tr.int8_dense(node, u.source, u.weight, u.zero, v.scale, None)]
    return None
