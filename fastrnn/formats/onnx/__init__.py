"""ONNX import: ``load_model`` (any graph of supported operators -> a fastrnn Model) and
``InferenceSession`` (onnxruntime's API, running that same Model).

- graph.py: the file -> nodes, initializers, inputs/outputs (bounded, no external data).
- translate.py: ONNX nodes -> fastrnn layers and nodes, batch-major, by named pattern rules
  (Gather on a weight -> Embedding, RNN nodes with their layout glue -> Recurrent, MatMul + Add /
  Gemm -> Dense, Softmax / Tanh / ... -> Activation, Concat -> Concatenate, ...).
- recurrent.py: RNN/LSTM/GRU node conventions -> fastrnn.layers.Recurrent.
- ops.py: the glue operators in NumPy (constant folding at import; the session's fallback),
  including the quantized ones (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
  MatMulInteger, com.microsoft MatMulIntegerToFloat / DynamicQuantizeMatMul).

onnxruntime-quantized files (quantize_dynamic) load as int8 Models keeping onnxruntime's weight
integers (translate.py; docs/loading.md "onnxruntime-quantized ONNX files").
- session.py: InferenceSession.

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
