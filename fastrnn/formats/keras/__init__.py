"""Keras importer: Keras 3 ``.keras`` archives, Keras 3 ``.weights.h5`` + config, legacy Keras 2 /
tf.keras ``.h5`` full-model files (read with zipfile, json, h5py and NumPy only: Keras and
TensorFlow are never imported for files), and live Keras models (``from_keras``).

Entry points
------------
``load(path, custom_layers=None)``
    ``.keras`` (zip of config.json, metadata.json, model.weights.h5; also an unzipped directory
    holding the same files) or a legacy full-model ``.h5``/``.hdf5`` (root attribute
    ``model_config``). A weights-only HDF5 file is refused with a pointer to ``load_weights_h5``.
``load_weights_h5(weights_path, config, custom_layers=None, by_name=False)``
    A weights-only HDF5 file (Keras 3 ``model.save_weights("x.weights.h5")`` or a legacy Keras 1 /
    2 ``save_weights("x.h5")``) plus the architecture (``fastrnn.load(path, architecture=...)``):
    ``config`` is ``model.to_json()`` as a dict, its text or a JSON file's path (the
    ``config.json`` of a .keras archive too), or a Keras model in memory. Legacy files are matched
    as Keras 2's ``load_weights`` matched them: in order of the layers that have weights, or by
    name with ``by_name=True``; counts and shapes are checked first.
``from_keras(keras_model, custom_layers=None)``
    A Keras model in memory: its config and weights are read through Keras's own API.

Every model becomes a fastrnn graph (fastrnn.graph): Sequential and Functional models, any
number of inputs and outputs, nested Sequential / Functional models (flattened into the graph,
their node names prefixed ``outer/inner``), shared layers (a layer called twice is one layer
object in two nodes: the second node is named ``name#1``), the Keras 3 ``inbound_nodes`` format
({"args", "kwargs"}) and the Keras 1/2 one ([[layer, node index, tensor index, kwargs]]). Call
arguments understood: ``initial_state=[h, c]`` (extra inputs of the recurrent node),
``use_causal_mask`` (Attention), ``mask=`` and ``training=`` (ignored: fastrnn derives masks
itself, from Embedding(mask_zero) and Masking, and propagates them as Keras 3 does; Keras 3
records those masks as ``NotEqual`` / ``Any`` operation nodes, which are skipped).

Layers: see ``SUPPORTED_LAYERS``. ``Lambda`` layers (Python code in the file) are never run;
they, and any class fastrnn does not know, need ``custom_layers={"ClassName": factory}``
(fastrnn.layers.custom): ``factory(config, weights)`` returns ``fn(inputs, mask=None)`` of
NumPy arrays. A user-defined activation function (stored by name, a Keras 2 lambda as
``"<lambda>"``) becomes an Activation node whose function is ``custom_layers[name](name)``.
Anything else raises UnsupportedLayerError naming the layer and its class; an unreadable file
raises ModelFormatError naming the file.

Keras facts mapped here, and only here (../../../shared/CONVENTIONS.md):
- Kernels are row-vector style (x @ kernel): kernel (I, G*U), recurrent_kernel (U, G*U);
  fastrnn wants W (G*U, I) with out = W @ in  ->  transpose. Conv1D kernel (k, in, filters) ->
  (filters, in, k).
- LSTM gate blocks i|f|c|o are fastrnn's i|f|g|o: no reordering.
- GRU gate blocks z|r|h  ->  fastrnn r|z|n: columns reordered [U:2U], [0:U], [2U:3U].
- GRU reset_after=True: bias (2, 3U) = [input bias; recurrent bias] -> b_ih, b_hh
  (linear_before_reset=True). reset_after=False: bias (3U,) -> b_ih, b_hh=None,
  linear_before_reset=False. LSTM / SimpleRNN have one bias -> b_ih, b_hh=None. With b_hh None
  the parameter count equals Keras's.
- Masking: a unidirectional layer returning sequences repeats the previous output at masked
  steps unless its ``zero_output_for_mask`` is set -> masked_output "hold" / "zero"; inside
  Bidirectional Keras forces zeros -> "zero".
- go_backwards: output[t] is the t-th step of the reversed scan -> Recurrent(go_backwards=True).
  Bidirectional: forward layer (go_backwards False) + backward layer (go_backwards True), the
  backward outputs flipped back before merging -> a two-direction Recurrent.
- return_state: [output, h, c] (LSTM) / [output, h]; Bidirectional [output, h_f, (c_f,) h_b, (c_b)].
- hard_sigmoid: Keras 3 clip(x/6 + 0.5, 0, 1); Keras 1/2 clip(0.2x + 0.5, 0, 1). The file's
  keras_version decides (for a weights-only file: the architecture's, else the file's; a legacy
  file without one is Keras 1's, as Keras 2 read it). LeakyReLU: Keras 3 ``negative_slope``
  (default 0.3), Keras 2 ``alpha``.
- Keras 1.2 configs (``output_dim``, ``inner_activation``, Dense ``bias``, ``input_dtype``, the
  input shape from ``input_dim`` / ``input_length``) are read in Keras 2 spelling; Keras 1 LSTM
  weights are 12 per-gate arrays (i, c, f, o), GRU 9 (z, r, h), concatenated as Keras 2 did.
  Keras 1 ``Merge`` (mode concat / sum / mul / ave / max) -> Concatenate / Merge.
- CuDNNLSTM / CuDNNGRU (Keras 2, GPU): sigmoid / tanh, the GRU reset after; their bias holds the
  input and recurrent halves (8U / 6U). Recognised by that bias shape, whether the architecture
  says CuDNN* or LSTM / GRU(reset_after=True), and converted as Keras 2's loader did
  (``_keras2_rnn_arrays``).
- Dense(activation=...) with an activation the Dense kernel does not apply becomes Dense(linear)
  followed by an Activation node; Dropout-like layers and ActivityRegularization are Identity
  nodes (removed by the graph passes).
- Ignored because they do not change inference: dropout, recurrent_dropout, unroll,
  implementation, unit_forget_bias, initializers, regularizers, constraints, dtype policies
  (fastrnn computes in float32). ``stateful=True`` is read like a stateless layer: every
  ``predict`` starts from zero state unless ``initial_state`` is given.
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib

import numpy as np

from ...activations import Activation as ActivationFunction
from ...errors import ModelFormatError, UnsupportedLayerError
from ...graph import Graph, Input, Node
from ...layers import (Activation, Attention, BatchNormalization, Concatenate, Conv1D, CustomLayer, Dense,
                       DirectionWeights, Dot, Embedding, Flatten, GlobalPooling1D, Identity, LayerNormalization,
                       Masking, Merge, Permute, Pooling1D, Recurrent, RepeatVector, Reshape)
from ...layers.custom import call_factory
from ...model import Model
from .. import text_vectorization

RECURRENT_CELLS = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru", "CuDNNLSTM": "lstm", "CuDNNGRU": "gru"}
CUDNN_LAYERS = ("CuDNNLSTM", "CuDNNGRU")  # Keras 2 GPU layers: tanh / sigmoid, GRU reset after, 2 biases
# Keras 1 merge(mode=...) -> fastrnn merge; "concat" is a Concatenate
KERAS1_MERGE_MODES = {"sum": "add", "mul": "multiply", "ave": "average", "max": "maximum"}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NO_OP_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                "ActivityRegularization", "Identity")
MASK_OPS = ("NotEqual", "Any")  # Keras 3 Functional graphs record mask computations as these ops
MERGE_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
             "Maximum": "maximum", "Minimum": "minimum"}
MODEL_CLASSES = ("Sequential", "Functional", "Model")
SUPPORTED_LAYERS = (
    "InputLayer", "Embedding", "Masking", "Dense", "TimeDistributed(Dense and other per-step layers)",
    "SimpleRNN", "LSTM", "GRU", "CuDNNLSTM", "CuDNNGRU", "Bidirectional", "Activation", "Softmax", "ReLU",
    "LeakyReLU", "ELU",
    "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot",
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "MaxPooling1D", "AveragePooling1D", "Conv1D", "Flatten",
    "Reshape", "Permute", "RepeatVector", "LayerNormalization", "BatchNormalization", "Attention",
    "AdditiveAttention", "Merge (Keras 1: mode concat, sum, mul, ave, max)", "Sequential / Functional (nested)"
) + NO_OP_LAYERS

# Keras activation name -> fastrnn activation name, for functions defined identically in both.
# hard_sigmoid is handled apart (its definition depends on the Keras version).
_SAME_ACTIVATIONS = {
    "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "linear": "affine", "elu": "elu",
    "selu": "selu", "softplus": "softplus", "softsign": "softsign", "exponential": "exponential",
    "swish": "swish", "silu": "swish",
}
# activations an Activation layer adds to the element-wise ones (softmax over the last axis)
_LAYER_ACTIVATIONS = {"softmax": "softmax", "log_softmax": "log_softmax", "gelu": "gelu"}
_DENSE_ACTIVATIONS = {"linear", "softmax", "sigmoid", "tanh", "relu", "elu", "selu", "softplus",
                      "softsign", "exponential", "swish", "silu"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError, EOFError,
                NotImplementedError, zipfile.BadZipFile, zlib.error, RecursionError, UnicodeDecodeError)


def _check_custom(custom_layers):
    if custom_layers is None:
        return {}
    if not isinstance(custom_layers, dict) or not all(isinstance(k, str) and callable(v)
                                                      for k, v in custom_layers.items()):
        raise TypeError("custom_layers must be a dict {class or function name: factory}, the factories callable")
    return dict(custom_layers)


# -- public API ------------------------------------------------------------------------------
def load(path, custom_layers=None) -> Model:
    """Read a Keras 3 ``.keras`` archive (or its unzipped directory) or a legacy Keras 2 /
    tf.keras full-model ``.h5`` file into a fastrnn Model.

    Raises FileNotFoundError, UnsupportedLayerError (a layer or option fastrnn does not run,
    named with its class and the supported list) or ModelFormatError (file and problem)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    custom = _check_custom(custom_layers)
    return _guarded(path, lambda p: _load(p, custom))


def load_weights_h5(weights_path, config, custom_layers=None, by_name=False) -> Model:
    """Build a Model from a weights-only HDF5 file and the model's architecture.

    weights_path : a Keras 3 ``model.save_weights("x.weights.h5")`` file, or a legacy Keras 1 / 2
        ``save_weights("x.h5")`` file (a legacy full-model .h5 is accepted too: its weights are used,
        with the architecture given here).
    config : the architecture: ``model.to_json()`` of Keras 1, 2 or 3 (Keras 2 projects ship it as
        ``model.json`` beside ``weights.h5``) as the parsed dict, the JSON text or the path of a file
        holding it (the ``config.json`` of a .keras archive also works), or a Keras model in memory
        (read as ``fastrnn.from_keras`` reads it).
    by_name : legacy files only. False (Keras 2's ``load_weights`` default): the file's weight
        groups are matched IN ORDER to the architecture's layers that have weights, whatever
        their names (a file saved by one process often says ``lstm_3`` where a freshly built model
        says ``lstm_1``). True: each layer takes the group of its own name. Shapes are checked
        either way; when the file does not fit, the error lists the file's groups (with their
        weight shapes) and the architecture's layers that have weights. Keras 3 ``.weights.h5``
        files are matched as Keras 3 does (by each layer's position per class).

    The architecture's ``keras_version`` (else the file's) decides the legacy semantics, as the
    Keras that made the model computed: Keras 1 / 2 ``hard_sigmoid`` is clip(0.2x + 0.5), a GRU
    without ``reset_after`` in its config is the reset-before variant (Keras < 2.1.3). Keras 1
    per-gate weight arrays and CuDNNLSTM / CuDNNGRU weights are converted as Keras 2's loader did.
    """
    weights_path = os.fspath(weights_path)
    if not os.path.exists(weights_path):
        raise FileNotFoundError(weights_path)
    config, live_version = _architecture(config)
    custom = _check_custom(custom_layers)
    return _guarded(weights_path, lambda p: _load_weights_h5(p, config, custom, bool(by_name), live_version))


def _architecture(config):
    """(config dict, Keras version of a live model or None) from a dict, JSON text, a path or a
    Keras model in memory."""
    if hasattr(config, "get_config") and hasattr(config, "get_layer"):  # a Keras model in memory
        cfg, version, _ = _live_config(config)
        return cfg, version
    if isinstance(config, (bytes, bytearray)):
        config = bytes(config).decode("utf-8")
    if isinstance(config, str) and config.lstrip().startswith("{"):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ModelFormatError(f"the architecture JSON text is not valid JSON: {exc}", "architecture") from None
    elif isinstance(config, (str, os.PathLike)):
        config_path = os.fspath(config)
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"cannot read the model config JSON: {exc}", config_path) from None
    if not isinstance(config, dict):
        raise TypeError(f"the architecture must be a dict (the parsed model.to_json() / config.json), its JSON "
                        f"text, the path of a JSON file or a Keras model, got {type(config).__name__}")
    return config, None


# -- containers ------------------------------------------------------------------------------
def _guarded(path, fn):
    """Run ``fn(path)``; turn any low-level parsing error into a ModelFormatError naming the file."""
    try:
        return fn(path)
    except ModelFormatError:
        raise
    except _READ_ERRORS as exc:
        raise ModelFormatError(f"cannot read Keras model: {exc.__class__.__name__}: {exc}", path) from None


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is the keras extra
        raise ImportError("reading Keras files needs h5py: pip install h5py (or, in a fastrnn checkout, "
                          "pip install \".[keras]\")") from exc
    return h5py


def _load(path, custom) -> Model:
    if os.path.isdir(path):
        return _load_keras_dir(path, custom)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return _load_keras_zip(path, custom)
    if head == _HDF5_MAGIC:
        return _load_legacy_h5(path, custom)
    raise ModelFormatError("neither a Keras .keras archive (zip) nor an HDF5 .h5 file", path)


MAX_JSON_MEMBER_BYTES = 64 * 1024 * 1024
MAX_EXPANSION = 100  # Keras itself refuses archives expanding more than this


def _read_member(zf, name, path) -> bytes:
    """Read one archive member, checking the sizes its directory claims against the real file
    before anything is allocated (a hostile archive cannot make us allocate without bound)."""
    info = zf.getinfo(name)
    archive_size = os.path.getsize(path)
    if info.header_offset + info.compress_size > archive_size:
        raise ModelFormatError(f"{name}: the archive claims more bytes than the file holds (truncated?)", path)
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * MAX_EXPANSION
    if info.file_size > max(limit, 1024):
        raise ModelFormatError(f"{name}: claims {info.file_size} bytes from {info.compress_size} stored", path)
    if name.endswith(".json") and info.file_size > MAX_JSON_MEMBER_BYTES:
        raise ModelFormatError(f"{name} is implausibly large ({info.file_size} bytes)", path)
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ModelFormatError(f"{name}: content size differs from the archive directory", path)
    return data


def _load_keras_zip(path, custom) -> Model:
    h5py = _h5py()
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ModelFormatError(f"not a valid .keras archive (truncated or corrupt zip: {exc})", path) from None
    with zf:
        names = set(zf.namelist())
        if "config.json" not in names:
            raise ModelFormatError("the .keras archive has no config.json", path)
        config = _parse_json(_read_member(zf, "config.json", path), "config.json", path)
        meta = (_parse_json(_read_member(zf, "metadata.json", path), "metadata.json", path)
                if "metadata.json" in names else {})
        if "model.weights.h5" not in names:
            if "model.weights.npz" in names or "model.weights.json" in names:
                raise ModelFormatError("the .keras archive stores its weights as npz or in shards; fastrnn reads "
                                       "the default single model.weights.h5", path)
            raise ModelFormatError("the .keras archive has no model.weights.h5", path)
        weights = _read_member(zf, "model.weights.h5", path)
        assets = text_vectorization.zip_assets(zf, path, _read_member)  # TextVectorization vocabularies
    version = str(meta.get("keras_version", "3")) if isinstance(meta, dict) else "3"
    with h5py.File(io.BytesIO(weights), "r") as h5:
        _refuse_external(h5, path)
        return _build(config, _Keras3Weights(h5, path), version, "keras", path, custom, assets)


def _load_keras_dir(path, custom) -> Model:
    h5py = _h5py()
    cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.weights.h5")
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise ModelFormatError("a Keras model directory must hold config.json and model.weights.h5", path)
    with open(cfg_path, "rb") as f:
        config = _parse_json(f.read(), "config.json", path)
    meta = {}
    if os.path.isfile(os.path.join(path, "metadata.json")):
        with open(os.path.join(path, "metadata.json"), "rb") as f:
            meta = _parse_json(f.read(), "metadata.json", path)
    version = str(meta.get("keras_version", "3")) if isinstance(meta, dict) else "3"
    assets = text_vectorization.dir_assets(path)  # TextVectorization vocabularies
    with h5py.File(w_path, "r") as h5:
        _refuse_external(h5, w_path)
        return _build(config, _Keras3Weights(h5, path), version, "keras", path, custom, assets)


def _load_legacy_h5(path, custom) -> Model:
    h5py = _h5py()
    with h5py.File(path, "r") as h5:
        _refuse_external(h5, path)
        if "model_config" not in h5.attrs:
            raise ModelFormatError(
                "this HDF5 file holds weights only (no model_config attribute); pass the architecture (the "
                "model.json of model.to_json(), its text or dict, or the Keras model): fastrnn.load(path, "
                "architecture=\"model.json\") or fastrnn.formats.keras.load_weights_h5(path, config); on the "
                "command line fastrnn convert weights.h5 out.safetensors --architecture model.json", path)
        config = _parse_json(h5.attrs["model_config"], "model_config", path)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        version = _attr_str(h5.attrs.get("keras_version", group.attrs.get("keras_version", "2")))
        return _build(config, _LegacyWeights(group, path), version, "h5", path, custom)


def _load_weights_h5(path, config, custom, by_name=False, live_version=None) -> Model:
    h5py = _h5py()
    with open(path, "rb") as f:
        if f.read(8) != _HDF5_MAGIC:
            raise ModelFormatError("not an HDF5 file", path)
    with h5py.File(path, "r") as h5:
        _refuse_external(h5, path)
        if "layers" in h5 or "vars" in h5:  # Keras 3 layout
            return _build(config, _Keras3Weights(h5, path), live_version or str(config.get("keras_version", "3")),
                          "weights.h5", path, custom)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        if not _attr_list(group, "layer_names"):
            raise ModelFormatError("HDF5 file has neither Keras 3 'layers/' groups nor a legacy 'layer_names' "
                                   "attribute: not a Keras weights file", path)
        # Keras 2's rule: a legacy file without keras_version was written by Keras 1
        file_version = _attr_str(group.attrs.get("keras_version", h5.attrs.get("keras_version", "1")))
        version = live_version or _config_version(config) or file_version
        weights = _LegacyWeights(group, path, match="name" if by_name else "order")
        return _build(config, weights, version, "weights.h5", path, custom)


def _config_version(config):
    """The Keras version an architecture JSON was written by: its ``keras_version`` (Keras 1 and 2
    ``to_json()`` record it), "3" for a Keras 3 config (which does not, but names each layer's
    ``module``), None when it does not say."""
    if config.get("keras_version"):
        return _attr_str(config["keras_version"])
    body = config.get("config")
    layers = body.get("layers") if isinstance(body, dict) else body
    if isinstance(layers, list) and any(isinstance(lc, dict) and "module" in lc for lc in layers):
        return "3"
    return None


def _parse_json(raw, what, path):
    if isinstance(raw, (bytes, np.bytes_)):
        raw = bytes(raw).decode("utf-8")
    try:
        return json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(f"{what} is not valid JSON: {exc}", path) from None


def _attr_str(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _attr_list(group, name):
    """A list-of-names attribute of a legacy file (Keras splits one too long for an HDF5 object
    header into ``name0``, ``name1``, ...)."""
    if name in group.attrs:
        return [_attr_str(n) for n in np.atleast_1d(group.attrs[name])]
    out, k = [], 0
    while f"{name}{k}" in group.attrs:
        out += [_attr_str(n) for n in np.atleast_1d(group.attrs[f"{name}{k}"])]
        k += 1
    return out


class _Keras3Weights:
    """Keras 3 (and tf.keras >= 2.13 ``.keras``) weights: ``layers/<key>/.../vars/{0,1,...}``.

    <key> is the snake_case class name, numbered per class in model.layers order
    (``simple_rnn``, ``simple_rnn_1``); Keras 3 also writes the user's layer name as attribute
    ``name`` of each ``vars`` group, which is used first. A nested model keeps its own layers
    under ``layers/<key>/layers/``."""

    # where each layer class keeps its variables, in Keras's weight order
    SUBPATHS = {"Bidirectional": ("forward_layer/cell", "backward_layer/cell"), "TimeDistributed": ("layer",)}
    SUBPATHS.update({cls: ("cell",) for cls in RECURRENT_CELLS})

    def __init__(self, h5, source):
        self.source = source
        if "layers" not in h5:
            raise ModelFormatError("weights file has no 'layers' group", source)
        self.root = h5["layers"]
        self.by_name = {}
        for key in self.root:
            vars_group = self.root[key].get("vars") if hasattr(self.root[key], "get") else None
            if vars_group is not None and "name" in vars_group.attrs:
                self.by_name[_attr_str(vars_group.attrs["name"])] = key
        self.by_position = {}

    def set_layer_order(self, entries, sizes=None):
        """Keys as Keras computes them, from model.layers (class name snake_cased, numbered)."""
        used = {}
        for e in entries:
            base = _snake_case(e["class_name"])
            n = used.get(base)
            used[base] = 0 if n is None else n + 1
            self.by_position[e["name"]] = base if n is None else f"{base}_{n + 1}"

    def _group(self, entry):
        name, cls = entry["name"], entry["class_name"]
        key = self.by_name.get(name) or self.by_position.get(name)
        if key is None or key not in self.root:
            raise ModelFormatError(f"no weights for layer {name!r} ({cls}) in the weights file", self.source)
        return key, self.root[key]

    def arrays(self, entry):
        key, group = self._group(entry)
        subs = self.SUBPATHS.get(entry["class_name"])
        if subs is None:  # any other layer: its own variables, then its sub-layers' (custom layers)
            subs = [""] + sorted(k for k in group if k != "vars")
        out = []
        for sub in subs:
            self._collect(group, sub, f"{key}/{sub}" if sub else key, out, depth=0)
        return out

    def _collect(self, group, sub, where, out, depth):
        g = group.get(sub) if sub else group
        if g is None or not hasattr(g, "keys") or depth > 8:
            return
        v = g.get("vars")
        if v is not None and hasattr(v, "keys"):
            for ds_name in sorted(v, key=lambda s: int(s) if s.isdigit() else 1 << 30):
                out.append((f"{where}/vars/{ds_name}", _read_dataset(v[ds_name], self.source)))
        if sub and sub not in ("cell", "layer") and not sub.endswith("/cell"):
            for k in sorted(k for k in g if k != "vars"):
                self._collect(g, k, f"{where}/{k}", out, depth + 1)

    def scope(self, entry):
        """The weights of a nested model."""
        key, group = self._group(entry)
        if "layers" not in group:
            raise ModelFormatError(f"no weights for the layers of nested model {entry['name']!r}", self.source)
        return _Keras3Weights(group, self.source)


class _LegacyWeights:
    """Legacy Keras 1/2 HDF5 weights: ``<group>/<layer name>`` lists its datasets, in Keras's
    weight order, in attribute ``weight_names`` (tf.keras names end in ':0'). A nested model is
    one group listing all its layers' weights (``<layer>/<weight>:0``).

    ``match``: None (a full-model file: each layer reads the group of its name), "name" or
    "order" (a weights-only file, as Keras 2's ``load_weights(by_name=True | False)``: the file's
    groups that hold weights are paired with the model's layers that have weights, by name or in
    order; counts and shapes are checked first, and a misfit lists both sides)."""

    def __init__(self, group, source, nested=False, match=None):
        self.group, self.source, self.nested, self.match = group, source, nested, match
        self.assigned = {}  # architecture layer name -> file group name

    def set_layer_order(self, entries, sizes=None):
        """``sizes``: {layer name: its input feature size} where the config shows it."""
        sizes = sizes or {}
        if self.nested or self.match is None:
            return  # inside a nested model, or a full-model file: by the layer names
        files = self._file_groups()
        kinds = [(e, _has_weights(e, self.source)) for e in entries]
        if self.match == "name":
            names = {g for g, _ in files}
            weighted = [e for e, k in kinds if k or (k is None and e["name"] in names)]
            for i, e in enumerate(weighted):
                if e["name"] not in names:
                    raise self._misfit(f"by_name=True and the file has no weights group named {e['name']!r} "
                                       f"({e['class_name']})", files, kinds)
                shapes = dict(files)[e["name"]]
                why = _shape_problem(e, shapes, self.source, sizes.get(e["name"]))
                if why:
                    raise self._misfit(f"layer {e['name']!r} ({e['class_name']}): {why}", files, kinds)
                self.assigned[e["name"]] = e["name"]
            return
        known = [e for e, k in kinds if k]
        unknown = [e for e, k in kinds if k is None]  # custom layers: weights or not, the file says
        weighted = known
        if unknown and len(known) + len(unknown) == len(files):
            weighted = [e for e, k in kinds if k is not False]
        hint = ""
        if known and all(e["name"] in dict(files) for e in known):
            hint = " (every layer with weights has a group of its name in the file: by_name=True reads them)"
        if len(weighted) != len(files):
            raise self._misfit(f"the file holds weights for {len(files)} layers, the architecture has "
                               f"{len(weighted)} layers with weights{hint}", files, kinds)
        for i, (e, (gname, shapes)) in enumerate(zip(weighted, files)):
            why = _shape_problem(e, shapes, self.source, sizes.get(e["name"]))
            if why:
                raise self._misfit(f"matched in order (Keras 2's load_weights), layer #{i} {e['name']!r} "
                                   f"({e['class_name']}) takes the file's group {gname!r}, but {why}{hint}",
                                   files, kinds)
            self.assigned[e["name"]] = gname

    def _file_groups(self):
        """[(group name, [(weight name, shape)])] of the groups holding weights, in file order."""
        out = []
        for name in _attr_list(self.group, "layer_names"):
            if name not in self.group:
                raise ModelFormatError(f"layer_names lists {name!r} but the file has no such group", self.source)
            g = self.group[name]
            shapes = []
            for n in self._names(g):
                if n not in g or not hasattr(g[n], "shape"):
                    raise ModelFormatError(f"group {name!r}: weight {n!r} listed in weight_names is missing",
                                           self.source)
                shapes.append((n, tuple(g[n].shape)))
            if shapes:
                out.append((name, shapes))
        return out

    def _misfit(self, why, files, kinds):
        def weights(shapes):
            return ", ".join(f"{n} {tuple(s)}" for n, s in shapes)

        listed = "; ".join(f"{g} [{weights(sh)}]" for g, sh in files[:40]) + (" ..." if len(files) > 40 else "")
        layers = [(e, k) for e, k in kinds if k is not False]
        arch = "; ".join(f"{e['name']} ({_describe(e)})" + (" (custom: weights unknown)" if k is None else "")
                         for e, k in layers[:40]) + (" ..." if len(layers) > 40 else "")
        return ModelFormatError(
            f"the weights file does not fit the architecture: {why}. The file's groups with weights, in order: "
            f"{listed or 'none'}. The architecture's {len(layers)} layers with weights, in order: {arch or 'none'}",
            self.source)

    def arrays(self, entry):
        name = entry["name"]
        if self.nested:
            g = self.group
            names = [n for n in self._names(g) if name in n.split("/")[:-1]]
        else:
            gname = self.assigned.get(name, name)
            if gname not in self.group:
                raise ModelFormatError(f"no weights group for layer {name!r} ({entry['class_name']})", self.source)
            g = self.group[gname]
            names = self._names(g)
        out = []
        for n in names:
            if n not in g:
                raise ModelFormatError(f"layer {name!r}: weight {n!r} listed in weight_names is missing", self.source)
            out.append((n, _read_dataset(g[n], self.source)))
        return out

    @staticmethod
    def _names(g):
        return _attr_list(g, "weight_names")

    def scope(self, entry):
        name = self.assigned.get(entry["name"], entry["name"])
        if name not in self.group:
            raise ModelFormatError(f"no weights group for nested model {entry['name']!r}", self.source)
        return _LegacyWeights(self.group[name], self.source, nested=True)


def _has_weights(e, source):
    """Whether a layer entry has weights, from its class and config: True, False, or None (a class
    fastrnn does not know: a custom layer)."""
    cls = e["class_name"]
    cfg = e["config"] if isinstance(e["config"], dict) else {}
    module = str(e.get("module") or "")
    if module and not module.startswith("keras"):
        return None
    if cls in RECURRENT_CELLS or cls in ("Bidirectional", "Dense", "Embedding", "Conv1D", "Convolution1D",
                                        "BatchNormalization"):
        return True
    if cls == "TimeDistributed":
        try:
            return _has_weights(_entry(cfg.get("layer") or {}, source), source)
        except ModelFormatError:
            return None
    if cls == "LayerNormalization":
        return bool(cfg.get("scale", True) or cfg.get("center", True))
    if cls == "Attention":
        return bool(cfg.get("use_scale", False)) or cfg.get("score_mode") == "concat"
    if cls == "AdditiveAttention":
        return bool(cfg.get("use_scale", True))
    if cls in MODEL_CLASSES:
        body = e["config"]
        layers = body if isinstance(body, list) else (body or {}).get("layers") or []
        kinds = []
        for lc in layers:
            try:
                kinds.append(_has_weights(_entry(lc, source), source))
            except ModelFormatError:
                kinds.append(None)
        return True if any(kinds) else (None if None in kinds else False)
    if cls in _CONVERTERS or cls in NO_OP_LAYERS or cls in ("InputLayer", "Lambda") or cls in MASK_OPS:
        return False
    return None


_SAME_SIZE = {"Activation", "Masking", "Softmax", "ReLU", "LeakyReLU", "ELU", "LayerNormalization",
              "BatchNormalization"} | set(NO_OP_LAYERS)


def _feature_sizes(kind, entries, source):
    """{layer name: the feature size (last axis) of its input} where the config shows it: from the
    input's shape through the layers whose output size their config gives. Only for checking a
    weights file against the architecture before anything is built."""
    def out_size(e, n):
        cls = e["class_name"]
        cfg = e["config"] if isinstance(e["config"], dict) else {}
        if cls == "InputLayer":
            shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
            return shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) else None
        if cls in RECURRENT_CELLS or cls == "Dense":
            return cfg.get("units") if isinstance(cfg.get("units"), int) else None
        if cls in ("Bidirectional", "TimeDistributed"):
            try:
                inner = _entry(cfg.get("layer") or {}, source)
            except ModelFormatError:
                return None
            m = out_size(inner, n)
            if cls == "Bidirectional" and m is not None and cfg.get("merge_mode", "concat") == "concat":
                return 2 * m
            return m
        if cls == "Embedding":
            return cfg.get("output_dim") if isinstance(cfg.get("output_dim"), int) else None
        if cls in _SAME_SIZE:
            return n
        return None

    sizes, outs = {}, {}
    if kind == "Sequential":
        first = entries[0]["config"] if entries and isinstance(entries[0]["config"], dict) else {}
        shape = first.get("batch_input_shape") or first.get("batch_shape")
        n = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) else None
        for e in entries:
            if e["class_name"] == "InputLayer":
                n = out_size(e, None)
                continue
            sizes[e["name"]] = n
            n = out_size(e, n)
        return sizes
    for e in entries:
        n = None
        try:
            if e["inbound_nodes"]:
                args = _node_call(e["inbound_nodes"][0], source, e["name"])[0]
                if len(args) == 1:
                    n = outs.get(args[0][0])
        except (ModelFormatError, KeyError, TypeError, ValueError, IndexError):
            n = None
        sizes[e["name"]] = n
        outs[e["name"]] = out_size(e, n)
    return sizes


def _describe(e):
    cfg = e["config"] if isinstance(e["config"], dict) else {}
    if e["class_name"] in ("Bidirectional", "TimeDistributed") and isinstance(cfg.get("layer"), dict):
        inner = cfg["layer"]
        icfg = _keras1_config(str(inner.get("class_name")), inner.get("config") or {})
        sizes = {k: icfg[k] for k in ("units",) if k in icfg}
        return f"{e['class_name']}({inner.get('class_name')}{', ' if sizes else ''}" \
               f"{', '.join(f'{k}={v}' for k, v in sizes.items())})"
    sizes = {k: cfg[k] for k in ("units", "input_dim", "output_dim", "filters") if k in cfg}
    return e["class_name"] + (", " + ", ".join(f"{k}={v}" for k, v in sizes.items()) if sizes else "")


def _expected_shapes(e, source, n_in=None):
    """The weight shapes a layer entry may hold, from its config (None: any size), as a list of
    alternatives; None when fastrnn does not check this class here (its converter checks)."""
    cls = e["class_name"]
    cfg = e["config"] if isinstance(e["config"], dict) else {}
    if cls in ("Bidirectional", "TimeDistributed"):
        try:
            inner = _entry(cfg.get("layer") or {}, source)
        except ModelFormatError:
            return None
        alts = _expected_shapes(inner, source, n_in)
        if alts is None or cls == "TimeDistributed":
            return alts
        return [a + a for a in alts]
    if cls in RECURRENT_CELLS:
        try:
            U = int(cfg["units"])
        except (KeyError, TypeError, ValueError):
            return None
        cell = RECURRENT_CELLS[cls]
        G = GATES[cell]
        base = [(n_in, G * U), (U, G * U)]
        if cls in CUDNN_LAYERS:
            alts = [base + [(2 * G * U,)]]
        elif not cfg.get("use_bias", True):
            return [base]
        else:
            alts = [base + [(G * U,)]]
        if cell == "gru":
            alts.append(base + [(2, G * U)])
        if cell in ("lstm", "gru"):
            alts.append(base + [(2 * G * U,)])  # cuDNN weights, converted as Keras 2 did
            alts.append([(n_in, U), (U, U), (U,)] * G)  # Keras 1: one kernel, recurrent kernel, bias per gate
        return alts
    if cls == "Dense":
        try:
            U = int(cfg["units"])
        except (KeyError, TypeError, ValueError):
            return None
        return [[(n_in, U)] + ([(U,)] if cfg.get("use_bias", True) else [])]
    if cls == "Embedding" and isinstance(cfg.get("input_dim"), int) and isinstance(cfg.get("output_dim"), int):
        return [[(cfg["input_dim"], cfg["output_dim"])]]
    return None


def _shape_problem(e, shapes, source, n_in=None):
    """None when the file's weights ``shapes`` [(name, shape)] fit layer entry ``e`` (reading
    ``n_in`` features, None if unknown), else why not."""
    alts = _expected_shapes(e, source, n_in)
    if alts is None:
        return None
    got = [tuple(s) for _, s in shapes]

    def fits(alt):
        return len(alt) == len(got) and all(
            len(a) == len(b) and all(x is None or x == y for x, y in zip(a, b)) for a, b in zip(alt, got))

    if any(fits(a) for a in alts):
        return None
    want = " or ".join("[" + ", ".join(str(tuple("?" if x is None else x for x in s)) for s in a) + "]"
                       for a in alts[:2])
    return f"its weights have shapes [{', '.join(str(s) for s in got)}] where {_describe(e)} takes {want}"


class _LiveWeights:
    """The weights of a Keras model in memory, through its layers' ``weights`` (Keras's order)."""

    def __init__(self, model, source):
        self.model, self.source = model, source

    def set_layer_order(self, entries, sizes=None):
        pass

    def _layer(self, entry):
        try:
            return self.model.get_layer(entry["name"])
        except (ValueError, KeyError):
            raise ModelFormatError(f"the Keras model has no layer {entry['name']!r}", self.source) from None

    def arrays(self, entry):
        out = []
        for w in self._layer(entry).weights:
            value = w.numpy() if hasattr(w, "numpy") else w
            out.append((str(getattr(w, "path", getattr(w, "name", "?"))), np.asarray(value, dtype=np.float32)))
        return out

    def scope(self, entry):
        return _LiveWeights(self._layer(entry), self.source)


def _refuse_external(h5, source):
    """HDF5 can make a dataset's bytes come from other files: external links (a link to an object
    in another file), external storage (raw data in named files) and virtual datasets (mapped
    from other files). A model file must hold its own weights: refuse all three, naming them,
    before anything is read (no link is followed to check)."""
    import h5py

    problems = []

    def link(name, lnk):
        if isinstance(lnk, h5py.ExternalLink):
            problems.append(f"{name!r} is an external link to {lnk.filename!r}")
        return None if len(problems) < 5 else True

    def obj(name, item):
        if isinstance(item, h5py.Dataset):
            if item.external:
                problems.append(f"dataset {name!r} keeps its data in external files {[e[0] for e in item.external]!r:.120}")
            elif item.is_virtual:
                problems.append(f"dataset {name!r} is a virtual dataset (mapped from other files)")
        return None if len(problems) < 5 else True

    h5.visititems_links(link)
    if not problems:
        h5.visititems(obj)
    if problems:
        raise ModelFormatError("the file refers to data outside itself, which fastrnn never reads: "
                               + "; ".join(problems), source)


def _read_dataset(ds, source):
    if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
        raise ModelFormatError(f"{getattr(ds, 'name', ds)!s} is not a dataset", source)
    if not (np.issubdtype(ds.dtype, np.floating) or np.issubdtype(ds.dtype, np.integer)):
        raise ModelFormatError(f"{ds.name}: weights of dtype {ds.dtype} are not supported", source)
    return np.asarray(ds[()], dtype=np.float32)


def _snake_case(name):
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# -- from a live Keras model ---------------------------------------------------------------------
def from_keras(keras_model, custom_layers=None) -> Model:
    """A fastrnn Model from a Keras model in memory (Sequential or Functional; Keras 3 or tf.keras):
    its config through ``keras.saving.serialize_keras_object`` (or ``get_config``) and its
    weights through each layer's ``weights``. ``custom_layers`` as for ``fastrnn.load``."""
    custom = _check_custom(custom_layers)
    config, version, source = _live_config(keras_model)
    return _build(config, _LiveWeights(keras_model, source), version, "in-memory", source, custom)


def _live_config(keras_model):
    """(config dict, Keras version, source label) of a Keras model in memory."""
    if not (hasattr(keras_model, "get_config") and hasattr(keras_model, "get_layer")):
        raise TypeError(f"from_keras takes a Keras Sequential or Functional model, got {type(keras_model).__name__}")
    source = f"keras model {getattr(keras_model, 'name', '?')!r}"
    cls = type(keras_model).__name__
    config = None
    try:
        import keras  # only here: the caller already has a Keras model, so Keras is installed

        config = keras.saving.serialize_keras_object(keras_model)
        version = str(getattr(keras, "__version__", "3"))
    except (ImportError, AttributeError):
        version = "3"
    if not isinstance(config, dict) or "config" not in config:
        config = {"class_name": cls, "config": keras_model.get_config()}
    if config.get("class_name") not in MODEL_CLASSES:
        raise UnsupportedLayerError(
            f"model class {config.get('class_name')!r}: fastrnn reads Sequential and Functional models "
            "(a subclassed model has no architecture to read)", source)
    config = json.loads(json.dumps(config, default=_json_default))
    return config, version, source


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return repr(obj)


# -- architecture: config JSON -> graph nodes ------------------------------------------------------
def _entry(layer_cfg, source):
    """{"class_name", "name", "config", "inbound_nodes", "module", "registered_name"} from one
    serialized layer (Keras 1/2/3)."""
    if not isinstance(layer_cfg, dict) or "class_name" not in layer_cfg:
        raise ModelFormatError(f"malformed layer entry in the model config: {str(layer_cfg)[:120]}", source)
    cfg = layer_cfg.get("config") or {}
    if not isinstance(cfg, (dict, list)):
        raise ModelFormatError(f"layer {layer_cfg['class_name']}: config is not an object", source)
    name = layer_cfg.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None) \
        or layer_cfg["class_name"].lower()
    if isinstance(cfg, dict):
        cfg = _keras1_config(str(layer_cfg["class_name"]), cfg)
    nodes = layer_cfg.get("inbound_nodes") or []
    if not isinstance(nodes, list):
        raise ModelFormatError(f"layer {name!r}: inbound_nodes is not a list", source)
    return {"class_name": str(layer_cfg["class_name"]), "name": str(name), "config": cfg, "inbound_nodes": nodes,
            "module": layer_cfg.get("module"), "registered_name": layer_cfg.get("registered_name"),
            "raw": layer_cfg}


_KERAS1_RECURRENT = ("SimpleRNN", "LSTM", "GRU")


def _keras1_config(cls, cfg):
    """A Keras 1.x layer config in the Keras 2 spelling (Keras 2 and 3 configs pass unchanged):
    ``output_dim`` -> ``units`` (not Embedding's), ``inner_activation`` -> ``recurrent_activation``,
    Dense ``bias`` -> ``use_bias``, ``input_dtype`` -> ``dtype``, and the input shape from
    ``input_dim`` / ``input_length``. The rest (``init``, ``inner_init``, ``consume_less``,
    ``W_regularizer``, ``dropout_W``, ...) does not change inference."""
    if not any(k in cfg for k in ("output_dim", "inner_activation", "input_dtype", "bias", "input_dim",
                                  "input_length")):
        return cfg
    cfg = dict(cfg)
    if cls in _KERAS1_RECURRENT + ("Dense",) and "output_dim" in cfg and "units" not in cfg:
        cfg["units"] = cfg.pop("output_dim")
    if "inner_activation" in cfg and "recurrent_activation" not in cfg:
        cfg["recurrent_activation"] = cfg.pop("inner_activation")
    if cls == "Dense" and isinstance(cfg.get("bias"), bool) and "use_bias" not in cfg:
        cfg["use_bias"] = cfg.pop("bias")
    if "input_dtype" in cfg and "dtype" not in cfg:
        cfg["dtype"] = cfg.pop("input_dtype")
    if "batch_input_shape" not in cfg and "batch_shape" not in cfg:
        length = cfg.get("input_length")
        if cls in _KERAS1_RECURRENT and isinstance(cfg.get("input_dim"), int):
            cfg["batch_input_shape"] = [None, length, cfg["input_dim"]]
        elif cls == "Dense" and isinstance(cfg.get("input_dim"), int):
            cfg["batch_input_shape"] = [None, cfg["input_dim"]]
        elif cls == "Embedding" and "input_length" in cfg and (length is None or isinstance(length, int)):
            cfg["batch_input_shape"] = [None, length]
    return cfg


def _version_tuple(version):
    nums = [int(n) for n in re.findall(r"\d+", str(version))[:2]]
    return tuple(nums + [0] * (2 - len(nums))) if nums else (3, 0)


def _major(version) -> int:
    m = re.match(r"\s*(\d+)", str(version))
    return int(m.group(1)) if m else 3


def _is_ref(x):
    """A Keras 1/2 tensor reference [layer name, node index, tensor index(, kwargs)]."""
    return (isinstance(x, list) and 3 <= len(x) <= 4 and isinstance(x[0], str) and isinstance(x[1], int)
            and isinstance(x[2], int) and not isinstance(x[1], bool))


def _tensor_refs(obj, out, legacy=False):
    """Collect (layer name, node index, tensor index) of every tensor referenced in obj."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            h = obj["config"]["keras_history"]
            out.append((str(h[0]), int(h[1]), int(h[2])))
        else:
            for v in obj.values():
                _tensor_refs(v, out, legacy)
    elif isinstance(obj, (list, tuple)):
        if legacy and _is_ref(list(obj)):
            out.append((str(obj[0]), int(obj[1]), int(obj[2])))
        else:
            for v in obj:
                _tensor_refs(v, out, legacy)
    return out


def _node_call(node, source, where):
    """(positional tensor refs, {kwarg: value with refs}) of one inbound node, either format."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        kwargs = node.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ModelFormatError(f"{where}: malformed inbound node kwargs", source)
        return _tensor_refs(node.get("args", []), []), dict(kwargs), False
    if not isinstance(node, list):
        raise ModelFormatError(f"{where}: malformed inbound node {str(node)[:80]}", source)
    # Keras 1/2: [[layer name, node index, tensor index, kwargs], ...] (or one such item)
    items = [node] if _is_ref(node) else node
    refs, kwargs = [], {}
    for item in items:
        if not _is_ref(item):
            raise ModelFormatError(f"{where}: malformed inbound node item {str(item)[:80]}", source)
        refs.append((str(item[0]), int(item[1]), int(item[2])))
        if len(item) > 3 and isinstance(item[3], dict):
            kwargs.update(item[3])
    return refs, kwargs, True


def _ref_specs(spec):
    """input_layers / output_layers: [name, 0, 0], a list of those, or a dict of those -> (keys, refs)."""
    if isinstance(spec, dict):
        keys = list(spec)
        return keys, [_ref_specs(spec[k])[1][0] for k in keys]
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        return [None], [(str(spec[0]), int(spec[1]), int(spec[2]))]
    if isinstance(spec, list):
        out = []
        for s in spec:
            out += _ref_specs(s)[1]
        return [None] * len(out), out
    raise ValueError(f"malformed input/output layer list {str(spec)[:80]}")


class _Context:
    def __init__(self, keras_version, source, custom):
        self.legacy = _major(keras_version) < 3
        self.version = _version_tuple(keras_version)
        self.source = source
        self.custom = custom

    def unsupported(self, entry, why=None):
        what = f"layer {entry['name']!r} ({entry['class_name']})"
        if why:
            return UnsupportedLayerError(f"{what}: {why}", self.source)
        return UnsupportedLayerError(
            f"{what} is not supported; fastrnn reads Keras layers {', '.join(SUPPORTED_LAYERS)}; for any other "
            f"layer class pass custom_layers={{{entry['class_name']!r}: factory}} (see fastrnn.layers.custom)",
            self.source)

    def error(self, entry, problem):
        return ModelFormatError(f"layer {entry['name']!r} ({entry['class_name']}): {problem}", self.source)


class _Builder:
    """Collects the graph: inputs, nodes (unique names), one layer object per Keras layer."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.inputs = []
        self.nodes = []
        self.names = set()
        self.layers = {}  # (weights scope id, layer name) -> converted layer objects
        self.keras_layers = []  # [node name, class name] for the metadata

    def unique(self, name):
        base, k = name, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def add(self, name, layer, inputs):
        name = self.unique(name)
        self.nodes.append(Node(name, layer, list(inputs)))
        return (name, 0)

    def scope(self, weights, entry):
        """The weights of a nested model (one object per nested model: its layers are shared
        between its calls)."""
        key = (id(weights), entry["name"], "scope")
        if key not in self.layers:
            self.layers[key] = weights.scope(entry)
        return self.layers[key]

    def layer(self, weights, entry, make):
        """The layer object(s) of a Keras layer, made once (a shared layer is one object)."""
        key = (id(weights), entry["name"])
        if key not in self.layers:
            self.layers[key] = make()
        return self.layers[key]


def _build(config, weights, keras_version, fmt, source, custom, assets=None) -> Model:
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFormatError("model config has no 'class_name' (expected Sequential or Functional)", source)
    ctx = _Context(keras_version, source, custom)
    ctx.assets = assets or {}  # {path under assets/: bytes} of a .keras archive
    b = _Builder(ctx)
    kind = config["class_name"]
    if kind not in MODEL_CLASSES:
        raise UnsupportedLayerError(
            f"model class {kind!r}: fastrnn reads Sequential and Functional models (subclassed models have no "
            "architecture in the file)", source)
    body = config.get("config")
    name = (body.get("name") if isinstance(body, dict) else None) or kind.lower()
    outputs = _expand_model(b, config, weights, prefix="", feeds=None)
    _set_input_dtypes(b)
    missing = sorted({n.layer.function for n in b.nodes if isinstance(n.layer, _MissingCustom)}
                     | {n.layer.class_name for n in b.nodes if isinstance(n.layer, _MissingLayer)})
    if missing:
        raise UnsupportedLayerError(
            f"the model uses custom layers / functions {missing} (user-defined in Python, not in the file): pass "
            "custom_layers={name: factory} for each, e.g. fastrnn.load(path, custom_layers={"
            f"{missing[0]!r}: factory}}) (see fastrnn.layers.custom)", source)
    metadata = {"source": "keras", "keras_version": str(keras_version), "keras_format": fmt,
                "keras_model_class": kind, "keras_layers": b.keras_layers}
    vocabulary = text_vectorization.model_vocabulary(b, metadata)  # None without a TextVectorization
    try:
        graph = Graph(b.inputs, b.nodes, outputs)
        return Model(graph=graph, metadata=metadata, name=str(name), vocabulary=vocabulary)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(f"the layers do not form a model fastrnn can run: {exc}", source) from None


def _set_input_dtypes(b):
    """An input read by an Embedding takes token ids (int64), whatever dtype Keras declared
    (Keras's default Input dtype is float32 even in front of an Embedding)."""
    readers = {}
    for n in b.nodes:
        for ref in n.inputs:
            readers.setdefault(ref[0], []).append(n.layer)
    for inp in b.inputs:
        layers = readers.get(inp.name, [])
        if any(isinstance(x, Embedding) for x in layers):
            inp.dtype = "int64"
        elif inp.dtype == "int64" and not any(isinstance(x, CustomLayer) for x in layers):
            inp.dtype = "float32"  # integer features read by other layers: numbers


def _input_from_entry(b, entry, prefix):
    cfg = entry["config"] if isinstance(entry["config"], dict) else {}
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if not isinstance(shape, list) or not shape or not all(s is None or isinstance(s, int) for s in shape):
        raise b.ctx.error(entry, "the input has no batch_shape")
    dtype = str(cfg.get("dtype") or "float32")
    if isinstance(cfg.get("dtype"), dict):
        dtype = str(cfg["dtype"].get("config", {}).get("name", "float32"))
    name = b.unique(prefix + entry["name"])
    b.inputs.append(Input(name, tuple(shape[1:]), "int64" if dtype.startswith(("int", "uint")) else "float32"))
    return (name, 0)


def _expand_model(b, config, weights, prefix, feeds):
    """Add the nodes of a Sequential / Functional model; returns its output refs. ``feeds``: the
    refs its inputs are bound to (a nested model), or None (the top model: new graph inputs)."""
    ctx, source = b.ctx, b.ctx.source
    kind = config.get("class_name")
    body = config.get("config")
    if kind == "Sequential":
        layers = body if isinstance(body, list) else (body or {}).get("layers")  # Keras <= 2.1: a list
        if not isinstance(layers, list) or not layers:
            raise ModelFormatError("Sequential config has no layers", source)
        entries = [_entry(lc, source) for lc in layers]
        weights.set_layer_order([e for e in entries if e["class_name"] != "InputLayer"],
                                _feature_sizes(kind, entries, source))
        if feeds is not None:
            cur = feeds[0]
        elif entries[0]["class_name"] == "InputLayer":
            cur = _input_from_entry(b, entries[0], prefix)
        else:
            cfg0 = entries[0]["config"] if isinstance(entries[0]["config"], dict) else {}
            shape = cfg0.get("batch_input_shape") or cfg0.get("batch_shape")
            if not shape and isinstance(body, dict):
                shape = body.get("build_input_shape")
            if not isinstance(shape, list) or not shape:
                raise ModelFormatError("the Sequential model does not record its input shape", source)
            dtype = cfg0.get("dtype") if isinstance(cfg0.get("dtype"), str) else "float32"
            name = b.unique(prefix + "input")
            b.inputs.append(Input(name, tuple(shape[1:]), "int64" if dtype.startswith(("int", "uint")) else "float32"))
            cur = (name, 0)
        for e in entries:
            if e["class_name"] == "InputLayer":
                continue
            outs = _call_layer(b, e, weights, [cur], {}, prefix, 0)
            if len(outs) != 1:
                raise ctx.unsupported(e, "inside a Sequential model a layer must return one tensor")
            cur = outs[0]
        return [cur]
    # Functional
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        raise ModelFormatError(f"{kind} config has no layers", source)
    entries = [_entry(lc, source) for lc in body["layers"]]
    weights.set_layer_order([e for e in entries if not _is_op(e)], _feature_sizes(kind, entries, source))
    by_name = {e["name"]: e for e in entries}
    tensors = {}  # (keras layer name, node index, tensor index) -> graph ref
    try:
        _, in_refs = _ref_specs(body.get("input_layers"))
        _, out_refs = _ref_specs(body.get("output_layers"))
    except (ValueError, TypeError, IndexError) as exc:
        raise ModelFormatError(f"model config: {exc}", source) from None
    if feeds is not None and len(feeds) != len(in_refs):
        raise ModelFormatError(f"nested model {body.get('name')!r} takes {len(in_refs)} inputs, called with "
                               f"{len(feeds)}", source)
    for i, ref in enumerate(in_refs):
        e = by_name.get(ref[0])
        if e is None or e["class_name"] != "InputLayer":
            raise ModelFormatError(f"model input {ref[0]!r} is not an InputLayer of the model", source)
        tensors[ref] = feeds[i] if feeds is not None else _input_from_entry(b, e, prefix)
    needed_layers = _needed(entries, by_name, out_refs, source)
    pending = []
    for e in entries:
        if e["class_name"] == "InputLayer" or e["name"] not in needed_layers:
            continue  # e.g. the ops Keras 3 records to compute masks (NotEqual, Any, LogicalOr...)
        for k, node in enumerate(e["inbound_nodes"]):
            pending.append((e, k, node))
    while pending:
        waiting = []
        for e, k, node in pending:
            args, kwargs, legacy = _node_call(node, source, f"layer {e['name']!r}")
            kw_refs = {key: _tensor_refs(v, [], legacy) for key, v in kwargs.items() if key != "mask"}
            needed = args + [r for refs in kw_refs.values() for r in refs]
            if not all(r in tensors for r in needed):
                waiting.append((e, k, node))
                continue
            ins = [tensors[r] for r in args]
            kw = {key: [tensors[r] for r in refs] if refs else kwargs[key] for key, refs in kw_refs.items()}
            for t, ref in enumerate(_call_layer(b, e, weights, ins, kw, prefix, k, legacy)):
                tensors[(e["name"], k, t)] = ref
        if len(waiting) == len(pending):
            e, k, node = waiting[0]
            args, kwargs, legacy = _node_call(node, source, f"layer {e['name']!r}")
            needed = args + [r for key, v in kwargs.items() if key != "mask" for r in _tensor_refs(v, [], legacy)]
            gone = [r for r in needed if r not in tensors]
            src = by_name.get(gone[0][0]) if gone else None
            if src is not None and _is_op(src):
                raise UnsupportedLayerError(
                    f"layer {e['name']!r} ({e['class_name']}) reads the result of the Keras operation "
                    f"{src['name']!r} ({src['class_name']}); fastrnn runs Keras layers, not operations applied to "
                    "tensors (wrap the computation in a layer and pass custom_layers=)", source)
            raise ModelFormatError(f"layer {e['name']!r} ({e['class_name']}) reads tensor {list(gone[0])} which no "
                                   "layer of the model produces (or the graph has a cycle)", source)
        pending = waiting
    outs = []
    for ref in out_refs:
        if ref not in tensors:
            raise ModelFormatError(f"model output {list(ref)} is not produced by any layer", source)
        outs.append(tensors[ref])
    return outs


def _needed(entries, by_name, out_refs, source):
    """Names of the layers the outputs depend on through their inputs (``mask=`` arguments
    excluded: fastrnn derives masks itself, so the operations Keras 3 records to compute them
    are not needed)."""
    needed, stack = set(), [r[0] for r in out_refs]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        e = by_name.get(name)
        if e is None:
            continue
        for node in e["inbound_nodes"]:
            args, kwargs, legacy = _node_call(node, source, f"layer {name!r}")
            stack += [r[0] for r in args]
            for key, v in kwargs.items():
                if key != "mask":
                    stack += [r[0] for r in _tensor_refs(v, [], legacy)]
    return needed


def _is_op(e):
    """A Keras 3 operation recorded in a functional graph (keras.src.ops.*), not a layer."""
    module = str(e.get("module") or "")
    return module.startswith("keras.src.ops") or (not module and e["class_name"] in MASK_OPS)


def _call_layer(b, e, weights, ins, kw, prefix, k, legacy=False):
    """One call of Keras layer ``e`` on graph refs ``ins`` -> its output refs."""
    ctx = b.ctx
    cls, cfg = e["class_name"], e["config"]
    node_name = prefix + e["name"] + (f"#{k}" if k else "")
    b.keras_layers.append([node_name, cls])
    if _is_op(e) and cls not in MASK_OPS:
        raise UnsupportedLayerError(
            f"layer {e['name']!r}: the Keras operation {cls} applied to tensors is not supported; fastrnn runs Keras "
            "layers (wrap the computation in a layer and pass custom_layers=)", ctx.source)
    for key, value in kw.items():
        if key in ("training", "mask", "initial_state", "use_causal_mask"):
            continue
        if key == "return_attention_scores" and not value:
            continue
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            raise ctx.unsupported(e, f"it is called with the tensor argument {key}=; fastrnn understands "
                                     "initial_state= and mask=")
        if key in ("return_attention_scores",):
            raise ctx.unsupported(e, "return_attention_scores=True is not supported")
    custom = _custom_factory(ctx, e)
    if custom is not None:
        return _custom_layer(b, e, weights, ins, node_name, custom)
    if cls in MODEL_CLASSES:
        nested_prefix = node_name + "/"
        return _expand_model(b, e["raw"], b.scope(weights, e), nested_prefix, ins)
    if not isinstance(cfg, dict):
        raise ctx.error(e, "config is not an object")
    if cls == "TextVectorization" and str(e.get("module") or "keras").startswith("keras"):
        return text_vectorization.vectorize_input(b, e, weights, ins, prefix)  # becomes the model's vocabulary
    if cls == "Lambda":
        raise UnsupportedLayerError(
            f"layer {e['name']!r} is a Lambda layer: its Python code is not read or run by fastrnn; pass "
            f"custom_layers={{'Lambda': factory}} (the factory receives the layer's config, e.g. its "
            "'function' entry, and weights) or rewrite the Lambda as a named layer class and pass a factory for it "
            "(see fastrnn.layers.custom)", ctx.source)
    if cls in RECURRENT_CELLS or cls == "Bidirectional":
        layer = b.layer(weights, e, lambda: _recurrent(ctx, e, weights) if cls != "Bidirectional"
                        else _bidirectional(ctx, e, weights))
        states = kw.get("initial_state")
        extra = list(states) if isinstance(states, list) and states and isinstance(states[0], tuple) else []
        if legacy and len(ins) > 1:
            ins, extra = ins[:1], ins[1:] + extra  # tf.keras 2: [x, h, c] as the first argument
        if len(ins) != 1:
            raise ctx.unsupported(e, f"a recurrent layer takes one sequence input, got {len(ins)}")
        if extra and len(extra) != len(layer.state_sizes()):
            raise ctx.error(e, f"initial_state has {len(extra)} tensors, expected {len(layer.state_sizes())}")
        name = b.add(node_name, layer, ins + extra)[0]
        n_out = 1 + (len(layer.state_sizes()) if layer.return_state else 0)
        return [(name, i) for i in range(n_out)]
    if cls == "TimeDistributed":
        inner = _entry(cfg.get("layer") or {}, ctx.source)
        inner = dict(inner, name=e["name"])
        if inner["class_name"] not in _PER_STEP:
            raise ctx.unsupported(e, f"TimeDistributed({inner['class_name']}) is not supported; fastrnn reads "
                                     f"TimeDistributed of the per-step layers {', '.join(sorted(_PER_STEP))}")
        td_entry = dict(e, config=inner["config"], inner_class=inner["class_name"])
        return _simple(b, td_entry, inner["class_name"], weights, ins, node_name, kw)
    if cls not in _CONVERTERS and e.get("module") and not str(e["module"]).startswith("keras"):
        # a user-defined class without its factory: a placeholder, so that every missing factory is
        # reported at once (_build raises before the graph is built); it stands for any output index
        ref = b.add(node_name, _MissingLayer(cls, e["name"]), ins[:1])
        return [ref] * 8
    return _simple(b, e, cls, weights, ins, node_name, kw)


def _simple(b, e, cls, weights, ins, node_name, kw):
    """Layers that map to one node (plus an Activation node for some activations)."""
    ctx = b.ctx
    conv = _CONVERTERS.get(cls)
    if conv is None:
        raise ctx.unsupported(e)
    if cls in _MULTI_INPUT:
        if len(ins) < 1:
            raise ctx.error(e, "called without inputs")
    elif len(ins) != 1:
        raise ctx.unsupported(e, f"takes one input, called with {len(ins)}")
    made = b.layer(weights, e, lambda: conv(ctx, e, e["config"], weights, kw))
    causal = bool(kw.get("use_causal_mask", False))
    if isinstance(made, Attention) and causal != made.use_causal_mask:  # one layer, called both ways
        made = Attention(made.score_mode, made.scale, made.concat_score_weight, causal, made.name)
    layers = made if isinstance(made, tuple) else (made,)
    ref = None
    for i, layer in enumerate(layers):
        ref = b.add(node_name if i == 0 else f"{node_name}/{layer.name.rsplit('/', 1)[-1]}", layer,
                    ins if i == 0 else [ref])
    return [ref]


def _custom_factory(ctx, e):
    """The user's factory for this layer if it is a custom (non-Keras) class, or one the user
    chose to provide (Lambda, an unknown class)."""
    cls, reg = e["class_name"], e.get("registered_name")
    module = str(e.get("module") or "")
    known = cls in _CONVERTERS or cls in RECURRENT_CELLS or cls in MODEL_CLASSES or cls in (
        "Bidirectional", "TimeDistributed", "InputLayer")
    if known and (not module or module.startswith("keras")):
        return None
    for key in (cls, reg):
        if isinstance(key, str) and key in ctx.custom:
            return ctx.custom[key]
    return None


def _custom_layer(b, e, weights, ins, node_name, factory):
    ctx = b.ctx
    key = (id(weights), e["name"])
    if key not in b.layers:
        arrays = [a for _, a in weights.arrays(e)]
        cfg = e["config"] if isinstance(e["config"], dict) else {"config": e["config"]}
        cfg = json.loads(json.dumps(cfg, default=_json_default))
        fn = call_factory(factory, e["class_name"], dict(cfg), list(arrays), f"layer {e['name']!r}")
        if not callable(fn):
            raise ModelFormatError(f"layer {e['name']!r}: custom_layers[{e['class_name']!r}] returned "
                                   f"{type(fn).__name__}, not a function", ctx.source)
        try:
            b.layers[key] = CustomLayer(e["class_name"], cfg, arrays, fn, e["name"], len(ins))
        except ValueError as exc:
            raise ctx.error(e, str(exc)) from None
    return [b.add(node_name, b.layers[key], ins)]


class _MissingLayer(Identity):
    """Placeholder for a custom layer without a factory (reported once, with all the others)."""

    def __init__(self, class_name, name):
        super().__init__(name)
        self.class_name = class_name


class _MissingCustom(Identity):
    """Placeholder for a custom activation function without a factory."""

    def __init__(self, function, name):
        super().__init__(name)
        self.function = function


# -- layers ------------------------------------------------------------------------------------
def _take(ctx, entry, arrays, names):
    """Check the layer has exactly the arrays ``names`` (Keras weight order) and return them."""
    if len(arrays) != len(names):
        raise ctx.error(entry, f"expected {len(names)} weight arrays ({', '.join(names)}), the file has "
                               f"{len(arrays)}: {[n for n, _ in arrays]}")
    return [a for _, a in arrays]


def _activation_name(spec):
    """A Keras activation spec -> (name, builtin): builtin False for a user-defined function."""
    if spec is None:
        return "linear", True
    if isinstance(spec, dict):  # a serialized function: {"module": ..., "class_name": "function", "config": name}
        inner, module = spec.get("config"), str(spec.get("module") or "keras")
        registered = spec.get("registered_name")
        if isinstance(inner, str) and module.startswith("keras") and registered in (None, "function", inner):
            return inner, True
        name = registered if isinstance(registered, str) and registered not in ("function",) else inner
        return str(name), False
    name = str(spec)
    if name in _SAME_ACTIVATIONS or name in _LAYER_ACTIVATIONS or name in _EXTRA_KERAS or name == "hard_sigmoid":
        return name, True
    return name, False  # a name Keras does not define: a custom function (Keras 2 "<lambda>", "my_fn")


# Keras activations that fastrnn's Activation layer computes with other parameters
_EXTRA_KERAS = {"relu6": None, "leaky_relu": None, "hard_silu": None, "hard_swish": None}


def _keras_activation_layer(ctx, entry, spec, name):
    """An Activation layer computing Keras activation ``spec`` exactly as Keras defines it."""
    fname, builtin = _activation_name(spec)
    if not builtin:
        # Keras 3 stores a registered function as "package>name": either key finds the factory
        keys = [fname] + ([fname.split(">", 1)[1]] if re.fullmatch(r"[^<>]+>[^<>]+", fname) else [])
        key = next((k for k in keys if k in ctx.custom), None)
        if key is None:
            return _MissingCustom(keys[-1], name)
        fn = call_factory(lambda cfg, w: ctx.custom[key](key), key, {}, [], f"layer {entry['name']!r}")
        if not callable(fn):
            raise ctx.error(entry, f"custom_layers[{key!r}] returned {type(fn).__name__}, not a function")
        return Activation(key, name=name, custom=True, fn=fn)
    if fname == "linear":
        return Activation("identity", name=name)
    if fname == "hard_sigmoid":
        return Activation("hard_sigmoid", alpha=0.2 if ctx.legacy else 1.0 / 6.0, beta=0.5, name=name)
    if fname in _SAME_ACTIVATIONS:
        return Activation(_SAME_ACTIVATIONS[fname], name=name)
    if fname in _LAYER_ACTIVATIONS:
        return Activation(_LAYER_ACTIVATIONS[fname], name=name)
    if fname == "leaky_relu":  # keras.activations.leaky_relu: negative_slope 0.2
        return Activation("leaky_relu", alpha=0.2, name=name)
    known = sorted(set(_SAME_ACTIVATIONS) | set(_LAYER_ACTIVATIONS) | {"hard_sigmoid", "leaky_relu"})
    raise ctx.unsupported(entry, f"activation {fname!r} is not supported; fastrnn runs {known} or a custom "
                                 "function through custom_layers=")


def _activation(ctx, entry, spec, what):
    """A Keras activation (name) as a fastrnn activation function (inside recurrent cells)."""
    name, builtin = _activation_name(spec)
    if not builtin:
        raise ctx.unsupported(entry, f"{what} is the user-defined function {name!r}; fastrnn's recurrent kernels "
                                     f"run {sorted(set(_SAME_ACTIVATIONS) | {'hard_sigmoid'})}")
    if name == "hard_sigmoid":
        # Keras 3: relu6(x + 3) / 6 = clip(x/6 + 0.5); Keras 1/2: clip(0.2x + 0.5)
        return ActivationFunction("hard_sigmoid", 0.2 if ctx.legacy else 1.0 / 6.0, 0.5)
    if name in _SAME_ACTIVATIONS:
        return ActivationFunction.of(_SAME_ACTIVATIONS[name])
    raise ctx.unsupported(entry, f"{what} {name!r} is not supported; fastrnn runs "
                                 f"{sorted(set(_SAME_ACTIVATIONS) | {'hard_sigmoid'})}")


def _with_activation(ctx, e, layer, spec):
    """``layer`` (computing a linear map) followed by Keras activation ``spec``: one layer when the
    activation is linear, else (layer, Activation)."""
    act = _keras_activation_layer(ctx, e, spec, f"{e['name']}/activation")
    if isinstance(act, Activation) and not act.custom and act.function == "identity":
        return layer
    return (layer, act)


def _embedding(ctx, e, cfg, weights, kw):
    (table,) = _take(ctx, e, weights.arrays(e), ["embeddings"])
    if table.ndim != 2 or ("input_dim" in cfg and table.shape[0] != int(cfg["input_dim"])):
        raise ctx.error(e, f"embeddings have shape {table.shape}, config says ({cfg.get('input_dim')}, "
                           f"{cfg.get('output_dim')})")
    return Embedding(table, mask_zero=bool(cfg.get("mask_zero", False)), name=e["name"])


def _masking(ctx, e, cfg, weights, kw):
    return Masking(float(cfg.get("mask_value", 0.0)), name=e["name"])


def _dense(ctx, e, cfg, weights, kw):
    """Dense (or the Dense inside TimeDistributed): kernel (I, U) -> weight (U, I)."""
    use_bias = bool(cfg.get("use_bias", True))
    got = _take(ctx, e, weights.arrays(e), ["kernel", "bias"] if use_bias else ["kernel"])
    kernel, bias = got[0], (got[1] if use_bias else None)
    units = int(cfg.get("units", kernel.shape[-1]))
    if kernel.ndim != 2 or kernel.shape[1] != units or (bias is not None and bias.shape != (units,)):
        raise ctx.error(e, f"kernel {kernel.shape} / bias {None if bias is None else bias.shape} do not match "
                           f"units={units}")
    spec = cfg.get("activation", "linear")
    name, builtin = _activation_name(spec)
    if builtin and name in _DENSE_ACTIVATIONS and not (name == "hard_sigmoid" and ctx.legacy):
        return Dense(kernel.T, bias, name, name=e["name"])
    if builtin and name == "hard_sigmoid" and not ctx.legacy:
        return Dense(kernel.T, bias, "hard_sigmoid", name=e["name"])
    return _with_activation(ctx, e, Dense(kernel.T, bias, "linear", name=e["name"]), spec)


def _no_op(ctx, e, cfg, weights, kw):
    return Identity(name=e["name"])


def _activation_layer(ctx, e, cfg, weights, kw):
    act = _keras_activation_layer(ctx, e, cfg.get("activation", "linear"), e["name"])
    return act


def _softmax_layer(ctx, e, cfg, weights, kw):
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise ctx.unsupported(e, f"softmax over several axes {axis} is not supported")
        axis = axis[0]
    return Activation("softmax", axis=int(axis), name=e["name"])


def _relu_layer(ctx, e, cfg, weights, kw):
    max_value = cfg.get("max_value")
    slope = float(cfg.get("negative_slope", 0.0) or 0.0)
    threshold = float(cfg.get("threshold", 0.0) or 0.0)
    if max_value is not None or threshold != 0.0:
        raise ctx.unsupported(e, "ReLU with max_value or threshold is not supported")
    if slope:
        return Activation("leaky_relu", alpha=slope, name=e["name"])
    return Activation("relu", name=e["name"])


def _leaky_relu_layer(ctx, e, cfg, weights, kw):
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    return Activation("leaky_relu", alpha=float(slope), name=e["name"])


def _elu_layer(ctx, e, cfg, weights, kw):
    return Activation("elu", alpha=float(cfg.get("alpha", 1.0)), name=e["name"])


def _concatenate(ctx, e, cfg, weights, kw):
    return Concatenate(int(cfg.get("axis", -1)), name=e["name"])


def _merge(ctx, e, cfg, weights, kw):
    return Merge(MERGE_OPS[e.get("inner_class", e["class_name"])], name=e["name"])


def _keras1_merge(ctx, e, cfg, weights, kw):
    """Keras 1's ``merge(..., mode=...)`` layer."""
    if cfg.get("layers"):
        raise ctx.unsupported(e, "a Keras 1 Merge of whole models inside a Sequential model is not supported; "
                                 "rebuild it as a functional model (Concatenate / Add / ...) with the same weights")
    mode = cfg.get("mode", "sum")
    if not isinstance(mode, str):
        raise ctx.unsupported(e, "a Keras 1 Merge with a Python function as mode is never run; pass "
                                 "custom_layers={'Merge': factory}")
    if mode == "concat":
        return Concatenate(int(cfg.get("concat_axis", -1)), name=e["name"])
    if mode in KERAS1_MERGE_MODES:
        return Merge(KERAS1_MERGE_MODES[mode], name=e["name"])
    raise ctx.unsupported(e, f"Keras 1 Merge mode {mode!r} is not supported; fastrnn reads modes concat, "
                             f"{', '.join(KERAS1_MERGE_MODES)}")


def _dot(ctx, e, cfg, weights, kw):
    axes = cfg.get("axes", -1)
    return Dot(tuple(axes) if isinstance(axes, list) else int(axes), bool(cfg.get("normalize", False)), name=e["name"])


def _channels_last(ctx, e, cfg):
    if cfg.get("data_format", "channels_last") not in ("channels_last", None):
        raise ctx.unsupported(e, f"data_format={cfg.get('data_format')!r} is not supported (channels_last only)")


def _one(ctx, e, value, what):
    if isinstance(value, list):
        if len(value) != 1:
            raise ctx.error(e, f"{what} {value} is not one integer")
        value = value[0]
    return int(value)


def _global_pooling(ctx, e, cfg, weights, kw):
    _channels_last(ctx, e, cfg)
    cls = e.get("inner_class", e["class_name"])
    return GlobalPooling1D("average" if "Average" in cls else "max", bool(cfg.get("keepdims", False)), True,
                           name=e["name"])


def _pooling(ctx, e, cfg, weights, kw):
    _channels_last(ctx, e, cfg)
    cls = e.get("inner_class", e["class_name"])
    pool = _one(ctx, e, cfg.get("pool_size", 2), "pool_size")
    strides = cfg.get("strides")
    strides = pool if strides is None else _one(ctx, e, strides, "strides")
    return Pooling1D("max" if cls.startswith("Max") else "average", pool, strides, str(cfg.get("padding", "valid")),
                     name=e["name"])


def _conv1d(ctx, e, cfg, weights, kw):
    if "nb_filter" in cfg:
        raise ctx.unsupported(e, "a Keras 1 Convolution1D (nb_filter, filter_length: its kernel is stored in "
                                 "another layout) is not supported; rebuild it as a Keras 2 Conv1D")
    _channels_last(ctx, e, cfg)
    if int(cfg.get("groups", 1)) != 1:
        raise ctx.unsupported(e, "grouped convolutions (groups > 1) are not supported")
    use_bias = bool(cfg.get("use_bias", True))
    got = _take(ctx, e, weights.arrays(e), ["kernel", "bias"] if use_bias else ["kernel"])
    kernel = got[0]
    if kernel.ndim != 3:
        raise ctx.error(e, f"kernel has shape {kernel.shape}, expected (kernel_size, in_channels, filters)")
    conv = Conv1D(kernel.transpose(2, 1, 0), got[1] if use_bias else None,
                  _one(ctx, e, cfg.get("strides", 1), "strides"), str(cfg.get("padding", "valid")),
                  _one(ctx, e, cfg.get("dilation_rate", 1), "dilation_rate"), "linear", name=e["name"])
    return _with_activation(ctx, e, conv, cfg.get("activation", "linear"))


def _flatten(ctx, e, cfg, weights, kw):
    _channels_last(ctx, e, cfg)
    return Flatten(name=e["name"])


def _reshape(ctx, e, cfg, weights, kw):
    return Reshape(tuple(int(s) for s in cfg.get("target_shape", [])), name=e["name"])


def _permute(ctx, e, cfg, weights, kw):
    return Permute(tuple(int(d) for d in cfg.get("dims", [])), name=e["name"])


def _repeat_vector(ctx, e, cfg, weights, kw):
    return RepeatVector(int(cfg["n"]), name=e["name"])


def _norm_axis(ctx, e, cfg):
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise ctx.unsupported(e, f"normalization over several axes {axis} is not supported (last axis only)")
        axis = axis[0]
    return int(axis)


def _layer_norm(ctx, e, cfg, weights, kw):
    if cfg.get("rms_scaling"):
        raise ctx.unsupported(e, "rms_scaling=True is not supported")
    if _norm_axis(ctx, e, cfg) != -1:
        raise ctx.unsupported(e, "normalization over an axis other than the last (-1) is not supported")
    names = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else [])
    got = dict(zip(names, _take(ctx, e, weights.arrays(e), names)))
    size = (got.get("gamma") if "gamma" in got else got.get("beta"))
    if size is None:
        raise ctx.unsupported(e, "LayerNormalization without scale and center: fastrnn needs the feature size")
    return LayerNormalization(size.shape[0], got.get("gamma"), got.get("beta"), float(cfg.get("epsilon", 1e-3)),
                              name=e["name"])


def _batch_norm(ctx, e, cfg, weights, kw):
    if cfg.get("mode", 0) != 0:  # Keras 1: modes 1 and 2 normalize with the batch's own statistics
        raise ctx.unsupported(e, f"Keras 1 BatchNormalization mode={cfg.get('mode')} is not supported (mode 0 is)")
    if _norm_axis(ctx, e, cfg) != -1:
        raise ctx.unsupported(e, "normalization over an axis other than the last (-1) is not supported")
    names = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else []) + [
        "moving_mean", "moving_variance"]
    got = dict(zip(names, _take(ctx, e, weights.arrays(e), names)))
    return BatchNormalization(got["moving_mean"], got["moving_variance"], got.get("gamma"), got.get("beta"),
                              float(cfg.get("epsilon", 1e-3)), name=e["name"])


def _attention(ctx, e, cfg, weights, kw):
    additive = e.get("inner_class", e["class_name"]) == "AdditiveAttention"
    mode = "additive" if additive else str(cfg.get("score_mode", "dot"))
    if mode not in ("dot", "concat", "additive"):
        raise ctx.unsupported(e, f"score_mode {mode!r}")
    names = (["scale"] if cfg.get("use_scale", additive) else []) + (["concat_score_weight"] if mode == "concat"
                                                                     else [])
    got = dict(zip(names, _take(ctx, e, weights.arrays(e), names)))
    causal = bool(kw.get("use_causal_mask", False)) or bool(cfg.get("causal", False))
    return Attention(mode, got.get("scale"), got.get("concat_score_weight"), causal, name=e["name"])


_CONVERTERS = {
    "Embedding": _embedding, "Masking": _masking, "Dense": _dense, "Activation": _activation_layer,
    "Softmax": _softmax_layer, "ReLU": _relu_layer, "LeakyReLU": _leaky_relu_layer, "ELU": _elu_layer,
    "Concatenate": _concatenate, "Dot": _dot, "GlobalAveragePooling1D": _global_pooling,
    "GlobalMaxPooling1D": _global_pooling, "GlobalAvgPool1D": _global_pooling, "GlobalMaxPool1D": _global_pooling,
    "MaxPooling1D": _pooling, "AveragePooling1D": _pooling, "MaxPool1D": _pooling, "AvgPool1D": _pooling,
    "Conv1D": _conv1d, "Convolution1D": _conv1d, "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute,
    "RepeatVector": _repeat_vector, "LayerNormalization": _layer_norm, "BatchNormalization": _batch_norm,
    "Attention": _attention, "AdditiveAttention": _attention, "Merge": _keras1_merge,
}
_CONVERTERS.update({cls: _merge for cls in MERGE_OPS})
_CONVERTERS.update({cls: _no_op for cls in NO_OP_LAYERS})
_MULTI_INPUT = set(MERGE_OPS) | {"Concatenate", "Dot", "Attention", "AdditiveAttention", "Merge"}
# layers that act on each step alone (on the last axis): TimeDistributed of them is the layer itself
_PER_STEP = {"Dense", "Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "LayerNormalization",
             "BatchNormalization"} | set(NO_OP_LAYERS)


def _rnn_options(ctx, e, cfg):
    """Cell kind, units and the options of one Keras SimpleRNN / LSTM / GRU config."""
    cls = e["class_name"] if e["class_name"] in RECURRENT_CELLS else None
    if cls is None:
        raise ctx.unsupported(e)
    if cfg.get("time_major"):
        raise ctx.unsupported(e, "time_major=True is not supported")
    cell = RECURRENT_CELLS[cls]
    cudnn = cls in CUDNN_LAYERS
    act = "tanh" if cudnn else cfg.get("activation", "tanh")
    if cell == "rnn":
        acts = (_activation(ctx, e, act, "activation"),)
    else:
        # Keras 1 and Keras 2 before 2.3 defaulted to hard_sigmoid (their configs record it anyway)
        default = "hard_sigmoid" if ctx.version < (2, 3) else "sigmoid"
        rec = _activation(ctx, e, "sigmoid" if cudnn else cfg.get("recurrent_activation", default),
                          "recurrent_activation")
        g = _activation(ctx, e, act, "activation")
        acts = (rec, g, g) if cell == "lstm" else (rec, g)
    if "units" not in cfg:
        raise ctx.error(e, "the config has no 'units' (nor Keras 1's 'output_dim')")
    return {
        "cell": cell, "units": int(cfg["units"]), "activations": acts, "cudnn": cudnn,
        "use_bias": True if cudnn else bool(cfg.get("use_bias", True)),
        # reset_after appeared in Keras 2.1.3 (default False); Keras 3 defaults to True; CuDNNGRU is
        # the reset-after variant
        "reset_after": (cudnn or bool(cfg.get("reset_after", not ctx.legacy))) if cell == "gru" else True,
        "go_backwards": bool(cfg.get("go_backwards", False)),
        "return_sequences": bool(cfg.get("return_sequences", False)),
        "return_state": bool(cfg.get("return_state", False)),
        "zero_output_for_mask": bool(cfg.get("zero_output_for_mask", False)),
    }


def _per_gate(a, gates, fn):
    """Apply ``fn`` to each gate block (last axis split in ``gates``) and put them back together."""
    return np.concatenate([fn(block) for block in np.split(a, gates, axis=-1)], axis=-1)


def _keras2_rnn_arrays(ctx, e, opts, arrays):
    """One direction's weight arrays in the Keras 2 LSTM / GRU / SimpleRNN layout [kernel,
    recurrent_kernel(, bias)], converted as Keras 2's loader did (its
    ``preprocess_weights_for_loading``):

    - Keras 1 stored one kernel, recurrent kernel and bias per gate: LSTM 12 arrays in gate order
      i, c, f, o (-> i|f|c|o), GRU 9 arrays z, r, h (-> z|r|h).
    - CuDNNLSTM / CuDNNGRU (recognised by their bias: input and recurrent halves, 2x the size, as
      Keras 2 did, whether the architecture says CuDNNLSTM or LSTM): cuDNN reads each gate's
      kernel block (I, U) as the flat bytes of a row-major (U, I) matrix W applied as W @ x, so the
      row-vector kernel is that W transposed; each recurrent block (U, U) is applied as R @ h, so
      it is transposed; CuDNNLSTM's two biases are summed, CuDNNGRU's become GRU(reset_after)'s
      (2, 3U) [input; recurrent] bias. CuDNNGRU weights do not fit a reset-before GRU."""
    cell, U = opts["cell"], opts["units"]
    G = GATES[cell]
    names, a = [n for n, _ in arrays], [x for _, x in arrays]
    if cell == "lstm" and len(a) == 12:
        order = (0, 2, 1, 3)  # file i, c, f, o -> i, f, c, o
        return [(f"{names[0]}..{names[-1]} (Keras 1, {part})",
                 np.concatenate([a[3 * gate + j] for gate in order], axis=-1))
                for j, part in enumerate(("kernel", "recurrent_kernel", "bias"))]
    if cell == "gru" and len(a) == 9:  # z, r, h: Keras 2's order already
        return [(f"{names[0]}..{names[-1]} (Keras 1, {part})",
                 np.concatenate([a[3 * gate + j] for gate in range(3)], axis=-1))
                for j, part in enumerate(("kernel", "recurrent_kernel", "bias"))]
    if cell in ("lstm", "gru") and len(a) == 3 and a[1].ndim == 2 and a[2].shape == (2 * G * a[1].shape[0],):
        kernel, rec, bias = a
        if cell == "gru" and not opts["reset_after"]:
            raise ctx.error(e, "the file holds CuDNNGRU weights (bias of 6 x units), which do not fit a GRU with "
                               "reset_after=False (Keras 2 refused it too): the architecture must say "
                               "CuDNNGRU or GRU(reset_after=True)")
        n_in, units = kernel.shape[0], rec.shape[0]
        kernel = _per_gate(kernel, G, lambda k: k.reshape(units, n_in).T)
        rec = _per_gate(rec, G, lambda r: r.T)
        bias = bias[:G * units] + bias[G * units:] if cell == "lstm" else bias.reshape(2, G * units)
        return [(names[0] + " (cuDNN)", kernel), (names[1] + " (cuDNN)", rec), (names[2] + " (cuDNN)", bias)]
    return arrays


def _zrh_to_rzn(a, units):
    """Keras GRU gate blocks z|r|h on the last axis -> fastrnn r|z|n."""
    U = units
    return np.concatenate([a[..., U:2 * U], a[..., :U], a[..., 2 * U:3 * U]], axis=-1)


def _direction(ctx, e, opts, arrays) -> DirectionWeights:
    """One direction from Keras kernel (I, G*U), recurrent_kernel (U, G*U) [, bias]."""
    cell, U = opts["cell"], opts["units"]
    G = GATES[cell]
    arrays = _keras2_rnn_arrays(ctx, e, opts, arrays)
    got = _take(ctx, e, arrays, ["kernel", "recurrent_kernel", "bias"] if opts["use_bias"]
                else ["kernel", "recurrent_kernel"])
    kernel, rec = got[0], got[1]
    bias = got[2] if opts["use_bias"] else None
    if kernel.ndim != 2 or kernel.shape[1] != G * U or rec.shape != (U, G * U):
        raise ctx.error(e, f"kernel {kernel.shape} / recurrent_kernel {rec.shape} do not match units={U} "
                           f"({G} gate blocks)")
    two_biases = cell == "gru" and opts["reset_after"]
    if bias is not None and bias.shape != ((2, G * U) if two_biases else (G * U,)):
        raise ctx.error(e, f"bias has shape {bias.shape}, expected {(2, G * U) if two_biases else (G * U,)}")
    if cell == "gru":  # z|r|h -> r|z|n
        kernel, rec = _zrh_to_rzn(kernel, U), _zrh_to_rzn(rec, U)
        bias = None if bias is None else _zrh_to_rzn(bias, U)
    b_ih, b_hh = (bias[0], bias[1]) if (two_biases and bias is not None) else (bias, None)
    return DirectionWeights(w_ih=kernel.T, w_hh=rec.T, b_ih=b_ih, b_hh=b_hh)


def _recurrent(ctx, e, weights) -> Recurrent:
    opts = _rnn_options(ctx, e, e["config"])
    d = _direction(ctx, e, opts, weights.arrays(e))
    try:
        return Recurrent(
            cell=opts["cell"], hidden_size=opts["units"], directions=[d], activations=opts["activations"],
            go_backwards=opts["go_backwards"], return_sequences=opts["return_sequences"],
            masked_output="zero" if opts["zero_output_for_mask"] else "hold",
            linear_before_reset=opts["reset_after"], name=e["name"], return_state=opts["return_state"])
    except ValueError as exc:
        raise ctx.error(e, str(exc)) from None


def _bidirectional(ctx, e, weights) -> Recurrent:
    cfg = e["config"]
    merge_mode = cfg.get("merge_mode", "concat")
    if merge_mode is None:
        raise ctx.unsupported(e, "merge_mode=None returns two separate outputs; fastrnn supports merge_mode "
                                 "concat, sum, mul and ave")
    if merge_mode not in ("concat", "sum", "mul", "ave"):
        raise ctx.unsupported(e, f"merge_mode {merge_mode!r}")
    fwd = _entry(cfg.get("layer") or {}, ctx.source)
    if cfg.get("backward_layer"):
        bwd = _entry(cfg["backward_layer"], ctx.source)
    else:  # Keras recreates the backward layer from the forward config with go_backwards flipped
        bwd = dict(fwd, config=dict(fwd["config"], go_backwards=not fwd["config"].get("go_backwards", False)))
    for inner in (fwd, bwd):
        if inner["class_name"] not in RECURRENT_CELLS:
            raise ctx.unsupported(e, f"Bidirectional({inner['class_name']}) is not supported; fastrnn reads "
                                     "Bidirectional(SimpleRNN | LSTM | GRU)")
    fo, bo = _rnn_options(ctx, fwd, fwd["config"]), _rnn_options(ctx, bwd, bwd["config"])
    if fo["go_backwards"] or not bo["go_backwards"]:
        raise ctx.unsupported(e, "the forward layer must have go_backwards=False and the backward layer "
                                 "go_backwards=True (fastrnn's bidirectional layout)")
    same = ("cell", "units", "activations", "reset_after", "return_sequences", "cudnn")
    if fwd["class_name"] != bwd["class_name"] or any(fo[k] != bo[k] for k in same):
        raise ctx.unsupported(e, "a backward layer that differs from the forward layer (class, units, "
                                 "activations, reset_after) is not supported")
    arrays = weights.arrays(e)
    n_fwd = len(arrays) // 2  # forward then backward weights (3 each, 12 / 9 for Keras 1 files)
    dirs = [_direction(ctx, e, fo, arrays[:n_fwd]), _direction(ctx, e, bo, arrays[n_fwd:])]
    try:
        return Recurrent(
            cell=fo["cell"], hidden_size=fo["units"], directions=dirs, activations=fo["activations"],
            return_sequences=fo["return_sequences"], merge_mode=merge_mode,
            masked_output="zero",  # Keras forces zero_output_for_mask inside Bidirectional
            linear_before_reset=fo["reset_after"], name=e["name"],
            return_state=bool(cfg.get("return_state", fo["return_state"])))
    except ValueError as exc:
        raise ctx.error(e, str(exc)) from None
