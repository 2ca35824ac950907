"""Layers in fastrnn's one internal layout, one module per family, each holding its layer
classes and their NumPy reference side by side:

- embedding.py: Embedding, Masking (the layers that create masks)
- recurrent.py: Recurrent (RNN / LSTM / GRU, one or two directions), DirectionWeights
- dense.py: Dense (+ softmax / log_softmax)
- activation.py: Activation (element-wise, softmax on an axis, GELU, identity, custom functions)
- merge.py: Concatenate, Merge (add, subtract, multiply, average, maximum, minimum), Dot
- pooling.py: GlobalPooling1D (average mask-aware, max), Pooling1D (max, average)
- conv.py: Conv1D
- normalization.py: LayerNormalization, BatchNormalization (inference form)
- attention.py: Attention (dot / concat, Luong), additive (Bahdanau)
- reshape.py: Identity, Flatten, Reshape, Permute, RepeatVector, Select, Slice
- custom.py: CustomLayer (a user function of NumPy arrays)
- elementwise.py: Arithmetic (a tensor with a constant operand), Math (exp, log, sqrt, ...)
- constant.py: Constant (a fixed tensor read by merges, e.g. a PyTorch parameter added in forward)

Every importer (PyTorch, Keras, ONNX, the native file) produces these; weights are read-only
float32 arrays in PyTorch's orientation (``out = W @ in``) and gate order (LSTM i|f|g|o, GRU
r|z|n). See base.py for the protocol every layer follows.
"""
from .activation import Activation
from .attention import Attention
from .base import ConfigReader, Int8Weights, Layer, frozen_array
from .constant import Constant
from .conv import Conv1D
from .custom import CustomLayer
from .dense import DENSE_ACTIVATIONS, Dense
from .elementwise import Arithmetic, Math
from .embedding import Embedding, Masking
from .merge import Concatenate, Dot, Merge
from .normalization import BatchNormalization, LayerNormalization
from .pooling import GlobalPooling1D, Pooling1D
from .recurrent import CELL_GATES, DEFAULT_ACTIVATIONS, MERGE_MODES, DirectionWeights, Recurrent
from .reshape import Flatten, Identity, Permute, RepeatVector, Reshape, Select, Slice

#: kind (as stored in native files) -> layer class
LAYER_TYPES = {cls.kind: cls for cls in (
    Embedding, Masking, Dense, Recurrent, Activation, Concatenate, Merge, Dot, GlobalPooling1D, Pooling1D,
    Conv1D, LayerNormalization, BatchNormalization, Attention, Identity, Flatten, Reshape, Permute,
    RepeatVector, Select, Slice, CustomLayer, Arithmetic, Math, Constant)}

__all__ = sorted(cls.__name__ for cls in LAYER_TYPES.values()) + [
    "DirectionWeights", "Int8Weights", "Layer", "ConfigReader", "frozen_array", "CELL_GATES", "DEFAULT_ACTIVATIONS",
    "MERGE_MODES", "DENSE_ACTIVATIONS", "LAYER_TYPES"]
