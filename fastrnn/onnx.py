"""ONNX models in fastrnn (needs the ``onnx`` package to read the files).

    sess = fastrnn.onnx.InferenceSession("model.onnx")   # drop-in for onnxruntime's run/get_inputs/get_outputs
    model = fastrnn.onnx.load_model("model.onnx")        # any graph of supported operators -> fastrnn.Model (= fastrnn.load)

The session runs that same Model, converting inputs and outputs to and from the ONNX layouts.
"""
from .formats.onnx import InferenceSession, load_model

__all__ = ["InferenceSession", "load_model"]
