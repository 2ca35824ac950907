"""fastrnn: fast CPU inference for recurrent neural networks (RNN, LSTM, GRU).

Load a model trained in PyTorch or Keras (or exported to ONNX), then run it with compiled kernels:

    import fastrnn
    model = fastrnn.from_torch(torch_lstm)        # or fastrnn.load("model.safetensors")
    y = model.predict(x)                          # x (B, T, F) float, or (B, T) token ids
    fastrnn.save(model, "model.safetensors")
"""
from __future__ import annotations

import os

from .backends import available_backends, get_backend, set_backend
from .errors import ModelFormatError, UnsupportedLayerError
from .layers import Dense, DirectionWeights, Embedding, Masking, Recurrent
from .model import Model
from .vocab import Vocabulary

__version__ = "0.1.0"

__all__ = [
    "Model", "Embedding", "Masking", "Dense", "Recurrent", "DirectionWeights", "Vocabulary",
    "load", "save", "from_torch", "available_backends", "set_backend", "get_backend",
    "ModelFormatError", "UnsupportedLayerError", "__version__",
]


def save(model: Model, path):
    """Save ``model`` as a native fastrnn file (safetensors + JSON architecture)."""
    from .formats import native

    return native.save(model, path)


def load(path, mmap: bool = True) -> Model:
    """Load a model file. Native ``.safetensors`` files are read with NumPy only (weights
    memory-mapped when ``mmap``); other formats are dispatched to their importer."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with open(path, "rb") as f:
        head = f.read(8)
    lower = path.lower()
    if lower.endswith((".keras", ".h5", ".hdf5")):
        from .formats import keras

        return keras.load(path)
    if lower.endswith(".onnx"):
        from .formats import onnx

        return onnx.load_model(path)
    if lower.endswith((".pt", ".pth", ".bin")) or head[:2] == b"PK" or head[:1] == b"\x80":
        raise ModelFormatError(
            "a PyTorch file holds weights but no architecture; convert it with "
            "`fastrnn convert FILE out.safetensors --cell lstm|gru|rnn_tanh|rnn_relu`, or build the module "
            "in Python, load the state_dict into it and call fastrnn.from_torch(module)", path)
    from .formats import native

    return native.load(path, mmap=mmap)


def from_torch(obj, **kwargs) -> Model:
    """Build a Model from a live PyTorch module; see fastrnn.formats.torch for the shapes understood."""
    from .formats.torch import from_torch as _from_torch

    return _from_torch(obj, **kwargs)
