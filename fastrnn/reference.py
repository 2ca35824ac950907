"""The plain NumPy reference of every layer: the specification the compiled kernels must match.

Each function lives beside its layer class in fastrnn/layers/ (one module per family); this
module gathers the ones the compiled backends implement, under the names the tests and backends
use. Written to be read, not to be fast: one step at a time, the math of each cell spelled out.
Shapes are batch-major: x (B, T, F), lengths (B,) int. Gate orders are those of fastrnn.layers
(PyTorch's): LSTM i|f|g|o, GRU r|z|n. Every backend is tested against these functions, and these
functions are tested against PyTorch, Keras and ONNX Runtime.
"""
from __future__ import annotations

from .layers.attention import attention  # noqa: F401
from .layers.conv import conv1d  # noqa: F401
from .layers.dense import dense, dense_activation, log_softmax, softmax  # noqa: F401
from .layers.embedding import embedding  # noqa: F401
from .layers.recurrent import cell_step, recurrent, run_direction  # noqa: F401
