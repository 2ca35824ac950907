"""fastrnn: fast CPU inference for recurrent neural networks (RNN, LSTM, GRU).

Load a model trained in PyTorch or Keras (or exported to ONNX), then run it with compiled kernels:

    import fastrnn
    model = fastrnn.from_torch(torch_lstm)        # or fastrnn.load("model.safetensors")
    y = model.predict(x)                          # x (B, T, F) float, or (B, T) token ids
    fastrnn.save(model, "model.safetensors")
"""
from __future__ import annotations

import os
import struct

from .backends import available_backends, get_backend, get_num_threads, set_backend, set_num_threads
from .errors import ModelFormatError, UnsupportedLayerError
from .graph import Graph, Input, Node
from .layers import (Activation, Attention, BatchNormalization, Concatenate, Conv1D, CustomLayer, Dense,
                     DirectionWeights, Dot, Embedding, Flatten, GlobalPooling1D, Identity, LayerNormalization,
                     Masking, Merge, Permute, Pooling1D, Recurrent, RepeatVector, Reshape, Select, Slice)
from .model import Model
from .vocab import Vocabulary

__version__ = "0.1.0"

__all__ = [
    "Model", "Graph", "Node", "Input", "Embedding", "Masking", "Dense", "Recurrent", "DirectionWeights",
    "Activation", "Attention", "BatchNormalization", "Concatenate", "Conv1D", "CustomLayer", "Dot", "Flatten",
    "GlobalPooling1D", "Identity", "LayerNormalization", "Merge", "Permute", "Pooling1D", "RepeatVector",
    "Reshape", "Select", "Slice", "Vocabulary",
    "load", "save", "from_torch", "from_keras", "export_c", "available_backends", "set_backend", "get_backend",
    "set_num_threads", "get_num_threads",
    "ModelFormatError", "UnsupportedLayerError", "__version__",
]


def _warn_without_kernels():
    """Say it once, at import, when this fastrnn has no compiled kernels and no backend was chosen
    (FASTRNN_BACKEND): a Python session started in a fastrnn checkout imports the source folder
    fastrnn/, which hides the installed package, and would silently run 2-3x slower."""
    import importlib.util

    if os.environ.get("FASTRNN_BACKEND"):
        return  # a backend chosen on purpose (the checked-kernels CI script runs a tree without them)
    try:
        if importlib.util.find_spec("fastrnn.kernels._cykernels") is not None:
            return
    except (ImportError, ValueError):
        pass
    import warnings

    from .errors import KernelsMissingWarning

    folder = os.path.dirname(os.path.abspath(__file__))
    from .backends import available_backends

    slower = "the Numba JIT backend" if "numba" in available_backends() else "the NumPy reference backend"
    warnings.warn_explicit(
        f"fastrnn was imported from {folder}, which has no compiled kernels: models run on {slower}, several "
        "times slower. A fastrnn checkout's fastrnn/ folder hides the installed package when Python starts in "
        "the repository root: start Python elsewhere, or build it here with `pip install .` (`pip install -e .` "
        "to edit it). FASTRNN_BACKEND=numba or numpy chooses a slower backend on purpose (and silences this).",
        KernelsMissingWarning, folder, 0, module="fastrnn")


_warn_without_kernels()

_BUNDLED = {}


def load_bundled(path, what) -> Model:
    """A model file shipped inside the package (fastrnn/data), loaded once per process."""
    model = _BUNDLED.get(path)
    if model is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"the bundled {what} is missing ({path}); reinstall fastrnn")
        model = _BUNDLED[path] = load(path)
    return model


def save(model: Model, path, quantize=None):
    """Save ``model`` as a native fastrnn file (safetensors + JSON architecture). ``quantize`` =
    "float16" or "int8" (per-row scales) stores the weight matrices in 2 or 1 bytes per value."""
    from .formats import native

    return native.save(model, path, quantize=quantize)


def load(path, mmap: bool = False, custom_layers=None, tokenizer=None, padding="pre", truncating="pre",
         maxlen=None, architecture=None, by_name=False, vocabulary=None) -> Model:
    """Load a model file. Native fastrnn ``.safetensors`` files are read with NumPy only; Keras
    and ONNX files go to their importers.

    By default the weights are read into memory: the file may then change or disappear while the
    model is in use. ``mmap=True`` maps the file instead (no copy, pages shared between
    processes); the file must then stay unchanged while the model lives: if it is truncated,
    the next read of a weight that was not cached kills the process with SIGBUS (the operating
    system's rule for memory maps; nothing in Python can catch it).

    The format is recognised from the file's first bytes (a native file renamed ``.onnx`` still
    loads), the extension decides only for formats without a signature (ONNX). A directory is
    read as an unzipped Keras archive if it holds config.json. Anything that is not a model file
    raises ModelFormatError naming the file; a missing file FileNotFoundError.

    ``custom_layers``: {name: factory} for user-defined layers and activation functions (Keras
    custom classes, a Dense with a user-defined activation): see fastrnn.layers.custom.

    ``tokenizer``: the Keras ``Tokenizer.to_json()`` the model was trained with (a path, or the JSON
    text): it becomes the model's vocabulary, with ``pad_sequences``' ``padding`` / ``truncating``
    side (Keras's default "pre") and ``maxlen``, so ``classify`` on raw text feeds the model the ids
    and padding Keras did (fastrnn.formats.tokenizers). Without ``maxlen``: the model's fixed input
    length; a model with neither that nor a mask gets a fastrnn.errors.PaddingLengthWarning.

    ``architecture``: for a file that holds weights only. A Keras weights-only HDF5 file (Keras 2
    ``save_weights("weights.h5")``, Keras 3 ``.weights.h5``) takes the Keras architecture: the
    ``model.to_json()`` output (a path such as the ``model.json`` Keras 2 projects ship, the JSON
    text, or the parsed dict) or a Keras model in memory; its weight groups are matched to the
    layers in order, as Keras 2's ``load_weights`` does, or by layer name with ``by_name=True``
    (fastrnn.formats.keras.load_weights_h5). A PyTorch state_dict takes fastrnn's architecture
    JSON (fastrnn.formats.torch_spec).

    ``vocabulary``: text <-> ids to attach (it replaces one the file has): a str of characters
    (``"helo"``), a list of tokens, a dict {token: id} or a fastrnn.Vocabulary, the same forms
    as ``Model.vocabulary`` and ``from_torch(vocabulary=)``. For a model without an Embedding
    (one-hot input) token i is the input vector with a 1 at position i."""
    if architecture is not None:
        model = _load_with_architecture(path, architecture, custom_layers, by_name)
    else:
        model = _load(path, mmap, custom_layers)
    if vocabulary is not None:
        if tokenizer is not None:
            raise ValueError("tokenizer= and vocabulary= both give the vocabulary: pass one of them")
        model.vocabulary = vocabulary
    if tokenizer is not None:
        from .formats.tokenizers import attach_tokenizer

        attach_tokenizer(model, tokenizer, padding=padding, truncating=truncating, maxlen=maxlen)
    return model


def _load(path, mmap, custom_layers):
    path = os.fspath(path)
    kind = _sniff(path)
    if kind == "keras":
        from .formats import keras

        return keras.load(path, custom_layers=custom_layers)
    if kind == "onnx":
        from .formats import onnx

        return onnx.load_model(path)
    if kind == "torch":
        raise ModelFormatError(
            "a PyTorch file holds weights but no architecture; convert it with "
            "`fastrnn convert FILE out.safetensors --cell lstm|gru|rnn_tanh|rnn_relu`, or build the module "
            "in Python, load the state_dict into it and call fastrnn.from_torch(module)", path)
    from .formats import native

    return native.load(path, mmap=mmap, custom_layers=custom_layers)


def _load_with_architecture(path, architecture, custom_layers, by_name):
    """A weights-only file plus the architecture it needs (``load(path, architecture=...)``)."""
    path = os.fspath(path)
    try:
        kind = _sniff(path)
    except ModelFormatError as exc:
        if "not a model file" not in str(exc):
            raise
        # the usual slip: the architecture JSON given as the path (the weights belong there)
        raise ModelFormatError("architecture= goes with a file that holds weights only (a Keras weights HDF5 file "
                               "or a PyTorch state_dict); this file is not one" + _looks_like(_head(path)) +
                               ": pass the weights file as the path and the architecture JSON as architecture=",
                               path) from None
    if kind == "keras" and not os.path.isdir(path):
        with open(path, "rb") as f:
            hdf5 = f.read(8) == _HDF5_MAGIC
        if hdf5:
            from .formats import keras

            return keras.load_weights_h5(path, architecture, custom_layers=custom_layers, by_name=by_name)
    if kind == "torch":
        from .formats.torch import read_state_dict
        from .formats.torch_spec import check_finite_params, from_architecture

        params = check_finite_params(read_state_dict(path), path)
        return from_architecture(params, architecture, name=os.path.splitext(os.path.basename(path))[0], source=path)
    raise ModelFormatError("architecture= is for files that hold weights only: a Keras weights HDF5 file (with the "
                           "model.to_json() architecture) or a PyTorch state_dict (with fastrnn's architecture "
                           "JSON); this file holds its own architecture: load it without architecture=", path)


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_EXTENSIONS = (".keras", ".h5", ".hdf5")
_TORCH_EXTENSIONS = (".pt", ".pth", ".bin")


def _looks_like_safetensors(head, size) -> bool:
    """The safetensors structure: an 8-byte little-endian header length that fits in the file, then
    a JSON object. No other format fastrnn reads starts so (a legacy torch pickle has 0xF9 at byte 8,
    a zip archive its compression method, HDF5 its superblock version)."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8


def _sniff(path) -> str:
    """The kind of model file at ``path``: "native", "keras", "onnx" or "torch"."""
    import zipfile

    from .formats.safetensors import open_regular_file

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return "keras"  # an unzipped .keras archive
    f, size = open_regular_file(path)  # refuses other directories, pipes and devices
    with f:
        head = f.read(16)
        if size == 0:
            raise ModelFormatError("file is empty", path)
        if _looks_like_safetensors(head, size):
            return "native"  # first: the header length's low byte may be anything, 0x80 (a pickle's) included
        if head.startswith(_HDF5_MAGIC):
            return "keras"  # Keras 2 / legacy .h5
        if head[:1] == b"\x80":
            return "torch"  # a pickle: legacy torch.save (read by the restricted unpickler only)
        if head.startswith(b"PK"):
            f.seek(0)
            try:
                names = zipfile.ZipFile(f).namelist()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
                raise ModelFormatError(f"broken zip archive: {exc}", path) from None
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return "torch"
            if "config.json" in names or "model.weights.h5" in names:
                return "keras"  # Keras 3 .keras archive
            raise ModelFormatError("a zip archive that is neither a Keras .keras file nor a torch.save file", path)
    lower = path.lower()
    if lower.endswith(".onnx"):
        return "onnx"  # protobuf has no signature
    if lower.endswith(_KERAS_EXTENSIONS):
        return "keras"
    if lower.endswith(_TORCH_EXTENSIONS):
        raise ModelFormatError("neither a torch.save file (zip archive) nor a fastrnn .safetensors file", path)
    if lower.endswith(".safetensors"):
        return "native"  # the native reader says precisely what is wrong
    raise ModelFormatError(f"not a model file{_looks_like(head)}: fastrnn reads {MODEL_KINDS}", path)


MODEL_KINDS = ("fastrnn .safetensors files, Keras .keras / .h5 files, ONNX .onnx files and PyTorch state_dicts "
               "(torch.save files)")


def _head(path, n=16) -> bytes:
    """The first ``n`` bytes of a regular file (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _looks_like(head):
    """" (it starts like text: ...)" when the first bytes are printable text, else ""."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""  # (16 bytes may cut a character: then say nothing)
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f" (it starts like text: {text[:12]!r})"
    return ""


def from_keras(keras_model, custom_layers=None, vocabulary=None) -> Model:
    """Build a Model from a Keras model in memory (Sequential or Functional, any graph of the
    layers fastrnn.formats.keras lists); ``custom_layers`` and ``vocabulary`` as for ``load``."""
    from .formats.keras import from_keras as _from_keras

    model = _from_keras(keras_model, custom_layers=custom_layers)
    if vocabulary is not None:
        model.vocabulary = vocabulary
    return model


def from_torch(obj, **kwargs) -> Model:
    """Build a Model from a live PyTorch module; see fastrnn.formats.torch for the shapes understood."""
    from .formats.torch import from_torch as _from_torch

    return _from_torch(obj, **kwargs)


def export_c(model, out_dir, name=None, weights=None, example=False, max_steps=None):
    """Write ``model`` as dependency-free C99 (``NAME.h``, ``NAME.c``, with ``example=True`` also
    ``main.c``); returns the paths written. See fastrnn.cexport.export_c and
    docs/running-without-python.md."""
    from .cexport import export_c as _export_c

    return _export_c(model, out_dir, name=name, weights=weights, example=example, max_steps=max_steps)
