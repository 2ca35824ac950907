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
- Masking (masked steps anywhere in a row: pad_sequences pads at the front): a unidirectional
  layer returning sequences repeats the previous output at masked steps unless its
  ``zero_output_for_mask`` is set -> masked_output "hold" / "zero"; inside Bidirectional Keras
  forces zeros -> "zero". ``zero_output_for_mask=True`` without return_sequences returns the
  scan's last output, 0 when that step is masked -> the layer returns its sequence and a Select
  node takes the last step.
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

The package, by layer (each module imports only those listed before it; this ``__init__``, the
loader above them all, reads a file as the sequence: open the container, parse the config, pick
the weights reader, build the graph):

- files.py    file containers: .keras zip members, h5py, the external-data refusals, datasets
- config.py   config dialects: Keras 1.2 / 2.x / 3 entries, version rules, inbound nodes, JSON
- layers.py   the table of layer translations, one function per Keras layer family; activations
- weights.py  weight readers (Keras 3, legacy, live) and their matching, by order or by name
- build.py    the graph builder: models (nested too), layer calls, shared and custom layers
"""
from __future__ import annotations

import io
import json
import os
import zipfile

from ...errors import ModelFormatError
from ...model import Model
from .. import text_vectorization
from .build import _build
# with the public names that fastrnn.formats.keras.<name> gave before the split (the tests also use
# _build and _LiveWeights)
from .config import (CUDNN_LAYERS, GATES, MASK_OPS, MODEL_CLASSES, RECURRENT_CELLS, _config_version, _live_config,
                     _parse_json)
from .files import (MAX_EXPANSION, MAX_JSON_MEMBER_BYTES, _HDF5_MAGIC, _attr_list, _attr_str, _guarded, _h5py,
                    _read_member, _refuse_external)
from .layers import KERAS1_MERGE_MODES, MERGE_OPS, NO_OP_LAYERS, SUPPORTED_LAYERS
from .weights import _Keras3Weights, _LegacyWeights, _LiveWeights


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


# -- from a live Keras model ---------------------------------------------------------------------
def from_keras(keras_model, custom_layers=None) -> Model:
    """A fastrnn Model from a Keras model in memory (Sequential or Functional; Keras 3 or tf.keras):
    its config through ``keras.saving.serialize_keras_object`` (or ``get_config``) and its
    weights through each layer's ``weights``. ``custom_layers`` as for ``fastrnn.load``."""
    custom = _check_custom(custom_layers)
    config, version, source = _live_config(keras_model)
    return _build(config, _LiveWeights(keras_model, source), version, "in-memory", source, custom)
