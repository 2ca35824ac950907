"""ONNX import: ``load_model`` (any graph of supported operators -> a fastrnn Model) and
``InferenceSession`` (onnxruntime's API, running that same Model).

The package, by layer (each module imports only those listed before it):

- graph.py            the file -> nodes, initializers, inputs/outputs (bounded, no external data)
- ops.py              the operators in NumPy: constant folding at import and the session's
                      interpreter, including the quantized ones (QuantizeLinear, DequantizeLinear,
                      DynamicQuantizeLinear, MatMulInteger, com.microsoft MatMulIntegerToFloat /
                      DynamicQuantizeMatMul / DynamicQuantizeLSTM)
- recurrent.py        RNN/LSTM/GRU node conventions (gate orders, biases) -> fastrnn.layers.Recurrent
- unrolled.py         a graph rewrite before translation: an RNN unrolled step by step (PyTorch's
                      dynamo exporter writes nn.RNN so) -> one RNN node again
- values.py           what the translator knows of each ONNX value (Const, ShapeVec, Zeros,
                      SeqLens, Tensor views, ...), Untranslatable, and RuleFamily
- rules_recurrent.py  RNN / LSTM / GRU nodes with their layout glue and initial states -> Recurrent
- rules_math.py       MatMul / Gemm -> Dense, activations and element-wise functions, Add / Sub /
                      Mul / Div / Pow / Max / Min -> Merge or Arithmetic, reductions over time
- rules_shape.py      shape glue (Shape, Gather, Concat, Reshape, Squeeze / Unsqueeze, Transpose,
                      Slice, Expand, Cast, ...): view changes; Gather on a weight -> Embedding
- rules_quantized.py  onnxruntime's quantized operators (quantize_dynamic) -> int8 layers keeping
                      onnxruntime's weight integers (docs/loading.md "onnxruntime-quantized ONNX
                      files")
- translate.py        ONNX nodes -> fastrnn layers and nodes, batch-major: the Translator core
                      (node loop, constant folding, the table of every family's rules, views)
- session.py          InferenceSession

The Model takes batch-major inputs named as the graph's (token ids as int64, features as float32;
a time-major graph input (T, B, ...) becomes (B, T, ...)) and returns batch-major outputs (an RNN's
Y as (B, T, D*H)); the session converts at the boundary so that its inputs and outputs are
exactly onnxruntime's. A graph input that only feeds RNN nodes' sequence_lens becomes the
``lengths=`` argument of predict.
"""
from __future__ import annotations

from ...errors import ModelFormatError
from .session import InferenceSession

__all__ = ["InferenceSession", "load_model"]


def load_model(path):
    """The fastrnn Model of an ONNX file (raises ModelFormatError saying why when the graph has no
    Model equivalent; fastrnn.onnx.InferenceSession still runs such graphs)."""
    sess = InferenceSession(path)
    if sess.model is None:
        raise ModelFormatError(f"this graph has no fastrnn Model equivalent ({sess.fallback_reason}); "
                               "fastrnn.onnx.InferenceSession(path) still runs it", sess._source)
    return sess.model
