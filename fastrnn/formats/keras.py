"""Keras importer: Keras 3 ``.keras`` archives, Keras 3 ``.weights.h5`` + config, and legacy
Keras 2 / tf.keras ``.h5`` full-model files — read with zipfile, json, h5py and NumPy only.
Keras and TensorFlow are never imported.

Entry points
------------
``load(path)``
    ``.keras`` (zip of config.json, metadata.json, model.weights.h5; also an unzipped directory
    holding the same files) or a legacy full-model ``.h5``/``.hdf5`` (root attribute
    ``model_config``). A weights-only HDF5 file is refused with a pointer to ``load_weights_h5``.
``load_weights_h5(weights_path, config)``
    A weights-only HDF5 file (Keras 3 ``model.save_weights("x.weights.h5")`` or a legacy
    Keras 2 ``save_weights("x.h5")``) plus the architecture: ``config`` is the parsed JSON dict
    (the ``config.json`` of a .keras archive, or ``json.loads(model.to_json())``) or the path
    of a JSON file holding it.

Understood models: Sequential, and Functional models that are one chain from one input to one
output (Keras 3 records the mask of ``Embedding(mask_zero=True)`` / ``Masking`` as extra
``NotEqual`` / ``Any`` op nodes; those are recognised and skipped — fastrnn derives the mask
itself). Layers: see ``SUPPORTED_LAYERS``. Anything else raises ``UnsupportedLayerError``
naming the layer and its class; an unreadable file raises ``ModelFormatError`` naming the file.

Keras facts mapped here, and only here (../../shared/CONVENTIONS.md):
- Kernels are row-vector style (x @ kernel): kernel (I, G*U), recurrent_kernel (U, G*U);
  fastrnn wants W (G*U, I) with out = W @ in  ->  transpose.
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
- hard_sigmoid: Keras 3 clip(x/6 + 0.5, 0, 1); Keras 1/2 clip(0.2x + 0.5, 0, 1). The file's
  keras_version decides.
- Activation layers fold into the Dense (or TimeDistributed(Dense)) before them when that one
  is linear; Dropout-like layers are no-ops at inference.
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

from ..activations import Activation
from ..errors import ModelFormatError, UnsupportedLayerError
from ..layers import Dense, DirectionWeights, Embedding, Masking, Recurrent
from ..model import Model

RECURRENT_CELLS = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NO_OP_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout")
MASK_OPS = ("NotEqual", "Any")  # Keras 3 Functional graphs record mask computations as these ops
SUPPORTED_LAYERS = ("InputLayer", "Embedding", "Masking", "SimpleRNN", "LSTM", "GRU", "Bidirectional",
                    "Dense", "TimeDistributed(Dense)", "Activation") + NO_OP_LAYERS

# Keras activation name -> fastrnn activation name, for functions defined identically in both.
# hard_sigmoid is handled apart (its definition depends on the Keras version).
_SAME_ACTIVATIONS = {
    "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "linear": "affine", "elu": "elu",
    "selu": "selu", "softplus": "softplus", "softsign": "softsign", "exponential": "exponential",
    "swish": "swish", "silu": "swish",
}
_DENSE_ACTIVATIONS = {"linear", "softmax", "sigmoid", "tanh", "relu", "elu", "selu", "softplus",
                      "softsign", "exponential", "swish", "silu"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError, EOFError,
                NotImplementedError, zipfile.BadZipFile, zlib.error, RecursionError, UnicodeDecodeError)


# -- public API ------------------------------------------------------------------------------
def load(path, custom_layers=None) -> Model:
    """Read a Keras 3 ``.keras`` archive (or its unzipped directory) or a legacy Keras 2 /
    tf.keras full-model ``.h5`` file into a fastrnn Model.

    Raises FileNotFoundError, UnsupportedLayerError (a layer or option fastrnn does not run,
    named with its class and the supported list) or ModelFormatError (file and problem)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return _guarded(path, _load)


def load_weights_h5(weights_path, config) -> Model:
    """Build a Model from a weights-only HDF5 file and the model's architecture.

    weights_path : a Keras 3 ``model.save_weights("x.weights.h5")`` file, or a legacy Keras 2
        ``save_weights("x.h5")`` file (a legacy full-model .h5 is accepted too).
    config : the architecture, as the dict ``{"class_name": "Sequential" | "Functional",
        "config": {...}}`` — the ``config.json`` of a .keras archive or
        ``json.loads(keras_model.to_json())`` — or the path of a JSON file holding it.
    """
    weights_path = os.fspath(weights_path)
    if not os.path.exists(weights_path):
        raise FileNotFoundError(weights_path)
    if isinstance(config, (str, os.PathLike)):
        config_path = os.fspath(config)
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"cannot read the model config JSON: {exc}", config_path) from None
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict (the parsed config.json) or a path to a JSON file, "
                        f"got {type(config).__name__}")
    return _guarded(weights_path, lambda p: _load_weights_h5(p, config))


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


def _load(path) -> Model:
    if os.path.isdir(path):
        return _load_keras_dir(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return _load_keras_zip(path)
    if head == _HDF5_MAGIC:
        return _load_legacy_h5(path)
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


def _load_keras_zip(path) -> Model:
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
    version = str(meta.get("keras_version", "3")) if isinstance(meta, dict) else "3"
    with h5py.File(io.BytesIO(weights), "r") as h5:
        return _build(config, _Keras3Weights(h5, path), version, "keras", path)


def _load_keras_dir(path) -> Model:
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
    with h5py.File(w_path, "r") as h5:
        return _build(config, _Keras3Weights(h5, path), version, "keras", path)


def _load_legacy_h5(path) -> Model:
    h5py = _h5py()
    with h5py.File(path, "r") as h5:
        if "model_config" not in h5.attrs:
            raise ModelFormatError(
                "this HDF5 file holds weights only (no model_config attribute); pass the architecture: "
                "fastrnn.formats.keras.load_weights_h5(path, config)", path)
        config = _parse_json(h5.attrs["model_config"], "model_config", path)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        version = _attr_str(h5.attrs.get("keras_version", group.attrs.get("keras_version", "2")))
        return _build(config, _LegacyWeights(group, path), version, "h5", path)


def _load_weights_h5(path, config) -> Model:
    h5py = _h5py()
    with open(path, "rb") as f:
        if f.read(8) != _HDF5_MAGIC:
            raise ModelFormatError("not an HDF5 file", path)
    with h5py.File(path, "r") as h5:
        if "layers" in h5 or "vars" in h5:  # Keras 3 layout
            return _build(config, _Keras3Weights(h5, path), str(config.get("keras_version", "3")),
                          "weights.h5", path)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        if "layer_names" not in group.attrs:
            raise ModelFormatError("HDF5 file has neither Keras 3 'layers/' groups nor a legacy 'layer_names' "
                                   "attribute: not a Keras weights file", path)
        version = _attr_str(h5.attrs.get("keras_version", group.attrs.get("keras_version",
                                                                          config.get("keras_version", "2"))))
        return _build(config, _LegacyWeights(group, path), version, "weights.h5", path)


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


class _Keras3Weights:
    """Keras 3 (and tf.keras >= 2.13 ``.keras``) weights: ``layers/<key>/.../vars/{0,1,...}``.

    <key> is the snake_case class name, numbered per class in model.layers order
    (``simple_rnn``, ``simple_rnn_1``); Keras 3 also writes the user's layer name as attribute
    ``name`` of each ``vars`` group, which is used first."""

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

    def set_layer_order(self, entries):
        """Keys as Keras computes them, from model.layers (class name snake_cased, numbered)."""
        used = {}
        for e in entries:
            base = _snake_case(e["class_name"])
            n = used.get(base)
            used[base] = 0 if n is None else n + 1
            self.by_position[e["name"]] = base if n is None else f"{base}_{n + 1}"

    def arrays(self, entry):
        name, cls = entry["name"], entry["class_name"]
        key = self.by_name.get(name) or self.by_position.get(name)
        if key is None or key not in self.root:
            raise ModelFormatError(f"no weights for layer {name!r} ({cls}) in the weights file", self.source)
        out = []
        for sub in self.SUBPATHS.get(cls, ("",)):
            path = f"{sub}/vars" if sub else "vars"
            group = self.root[key].get(path)
            if group is None:
                continue
            for ds_name in sorted(group, key=lambda s: int(s) if s.isdigit() else 1 << 30):
                out.append((f"{key}/{path}/{ds_name}", _read_dataset(group[ds_name], self.source)))
        return out


class _LegacyWeights:
    """Legacy Keras 1/2 HDF5 weights: ``<group>/<layer name>`` lists its datasets, in Keras's
    weight order, in attribute ``weight_names`` (tf.keras names end in ':0')."""

    def __init__(self, group, source):
        self.group, self.source = group, source

    def set_layer_order(self, entries):
        pass  # legacy files address layers by their user names

    def arrays(self, entry):
        name = entry["name"]
        if name not in self.group:
            raise ModelFormatError(f"no weights group for layer {name!r} ({entry['class_name']})", self.source)
        g = self.group[name]
        names = [_attr_str(n) for n in np.atleast_1d(g.attrs.get("weight_names", []))]
        out = []
        for n in names:
            if n not in g:
                raise ModelFormatError(f"layer {name!r}: weight {n!r} listed in weight_names is missing", self.source)
            out.append((n, _read_dataset(g[n], self.source)))
        return out


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


# -- architecture: config JSON -> a chain of layer entries -------------------------------------
def _entry(layer_cfg, source):
    """{"class_name", "name", "config", "inbound_nodes"} from one serialized layer (Keras 1/2/3)."""
    if not isinstance(layer_cfg, dict) or "class_name" not in layer_cfg:
        raise ModelFormatError(f"malformed layer entry in the model config: {str(layer_cfg)[:120]}", source)
    cfg = layer_cfg.get("config") or {}
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"layer {layer_cfg['class_name']}: config is not an object", source)
    name = layer_cfg.get("name") or cfg.get("name") or layer_cfg["class_name"].lower()
    return {"class_name": str(layer_cfg["class_name"]), "name": str(name), "config": cfg,
            "inbound_nodes": layer_cfg.get("inbound_nodes", [])}


def _model_chain(config, source):
    """(model class, model name, [layer entries in order], per-example input shape or None,
    [entries in model.layers order, for Keras 3 weight keys])."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFormatError("model config has no 'class_name' (expected Sequential or Functional)", source)
    kind = config["class_name"]
    body = config.get("config")
    if kind == "Sequential":
        layers = body if isinstance(body, list) else (body or {}).get("layers")  # Keras <= 2.1: a list
        if not isinstance(layers, list) or not layers:
            raise ModelFormatError("Sequential config has no layers", source)
        entries = [_entry(lc, source) for lc in layers]
        name = (body or {}).get("name", "sequential") if isinstance(body, dict) else "sequential"
        shape = _input_shape(entries, body if isinstance(body, dict) else {})
        return kind, name, entries, shape, [e for e in entries if e["class_name"] != "InputLayer"]
    if kind in ("Functional", "Model"):
        if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
            raise ModelFormatError(f"{kind} config has no layers", source)
        entries = [_entry(lc, source) for lc in body["layers"]]
        chain = _functional_chain(body, entries, source)
        return kind, body.get("name", "model"), chain, _input_shape(chain, {}), entries
    raise UnsupportedLayerError(
        f"model class {kind!r}: fastrnn reads Sequential models and Functional models that are a chain "
        "(subclassed models have no architecture in the file)", source)


def _input_shape(entries, body):
    for e in entries[:1]:
        shape = e["config"].get("batch_shape") or e["config"].get("batch_input_shape")
        if shape:
            return tuple(shape[1:])
    shape = body.get("build_input_shape")
    return tuple(shape[1:]) if isinstance(shape, list) and shape else None


def _tensor_refs(obj, out):
    """Collect (layer name, node index, tensor index) of every Keras 3 __keras_tensor__ in obj."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            h = obj["config"]["keras_history"]
            out.append((str(h[0]), int(h[1]), int(h[2])))
        else:
            for v in obj.values():
                _tensor_refs(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensor_refs(v, out)
    return out


def _node_inputs(node):
    """(positional input refs, mask refs, other tensor kwargs) of one inbound node."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        kwargs = node.get("kwargs") or {}
        masks = _tensor_refs(kwargs.get("mask"), [])
        extra = [k for k, v in kwargs.items() if k != "mask" and _tensor_refs(v, [])]
        return _tensor_refs(node.get("args", []), []), masks, extra
    # Keras 1/2: [[layer name, node index, tensor index, kwargs], ...]
    refs, extra = [], []
    for item in node:
        refs.append((str(item[0]), int(item[1]), int(item[2])))
        if len(item) > 3 and isinstance(item[3], dict):
            extra += [k for k in item[3] if k in ("initial_state", "constants")]
    return refs, [], extra


def _single_ref(spec, what, source):
    """Normalise input_layers / output_layers ([name, 0, 0] or [[name, 0, 0]]) to one ref."""
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        spec = [spec]
    if not isinstance(spec, list) or len(spec) != 1:
        n = len(spec) if isinstance(spec, list) else "?"
        raise UnsupportedLayerError(f"the model has {n} {what}; fastrnn reads chains with one input and one output",
                                    source)
    return str(spec[0][0]), int(spec[0][2])


def _functional_chain(body, entries, source):
    """Walk back from the single output to the single input; every layer must have one inbound
    node with one tensor input. Layers off the chain are allowed only if they compute masks."""
    by_name = {e["name"]: e for e in entries}
    in_name, _ = _single_ref(body.get("input_layers"), "inputs", source)
    out_name, out_index = _single_ref(body.get("output_layers"), "outputs", source)
    if out_index != 0:
        raise UnsupportedLayerError(f"the model output is output #{out_index} of layer {out_name!r} (a state?); "
                                    "fastrnn returns a layer's main output", source)
    chain, cur = [], out_name
    while True:
        if cur not in by_name:
            raise ModelFormatError(f"model config refers to an unknown layer {cur!r}", source)
        e = by_name[cur]
        if any(c is e for c in chain):
            raise ModelFormatError(f"model graph has a cycle at layer {cur!r}", source)
        chain.append(e)
        if e["class_name"] == "InputLayer":
            break
        nodes = e["inbound_nodes"] or []
        if len(nodes) != 1:
            raise UnsupportedLayerError(
                f"layer {cur!r} ({e['class_name']}) is called {len(nodes)} times (shared layer); fastrnn reads "
                "Functional models that are a single chain", source)
        refs, _masks, extra = _node_inputs(nodes[0])
        if extra:
            raise UnsupportedLayerError(f"layer {cur!r} ({e['class_name']}) is called with tensor arguments "
                                        f"{extra}; fastrnn reads plain chains", source)
        if len(refs) != 1:
            raise UnsupportedLayerError(
                f"layer {cur!r} ({e['class_name']}) takes {len(refs)} inputs; fastrnn reads Functional models "
                "that are a single chain", source)
        prev, _node, tensor = refs[0]
        if tensor != 0:
            raise UnsupportedLayerError(
                f"layer {cur!r} ({e['class_name']}) reads output #{tensor} of layer {prev!r} (a state?); fastrnn "
                "reads chains of main outputs", source)
        cur = prev
    chain.reverse()
    if chain[0]["name"] != in_name:
        raise ModelFormatError(f"the chain starts at {chain[0]['name']!r}, not at the model input {in_name!r}",
                               source)
    on_chain = {id(e) for e in chain}
    for e in entries:
        if id(e) not in on_chain and e["class_name"] not in MASK_OPS:
            raise UnsupportedLayerError(
                f"layer {e['name']!r} ({e['class_name']}) is off the input-to-output chain; fastrnn reads "
                "Functional models that are a single chain", source)
    return chain


# -- layers ------------------------------------------------------------------------------------
class _Context:
    def __init__(self, weights, keras_version, source):
        self.weights = weights
        self.legacy = _major(keras_version) < 3
        self.source = source

    def unsupported(self, entry, why=None):
        what = f"layer {entry['name']!r} ({entry['class_name']})"
        if why:
            return UnsupportedLayerError(f"{what}: {why}", self.source)
        return UnsupportedLayerError(
            f"{what} is not supported; fastrnn reads Keras layers {', '.join(SUPPORTED_LAYERS)}", self.source)

    def error(self, entry, problem):
        return ModelFormatError(f"layer {entry['name']!r} ({entry['class_name']}): {problem}", self.source)


def _major(version) -> int:
    m = re.match(r"\s*(\d+)", str(version))
    return int(m.group(1)) if m else 3


def _build(config, weights, keras_version, fmt, source) -> Model:
    kind, name, chain, input_shape, layer_order = _model_chain(config, source)
    weights.set_layer_order(layer_order)
    ctx = _Context(weights, keras_version, source)
    layers = []
    for i, e in enumerate(chain):
        cls, cfg = e["class_name"], e["config"]
        if cls == "InputLayer":
            if i != 0:
                raise ctx.unsupported(e, "an InputLayer inside the model")
        elif cls in NO_OP_LAYERS:
            continue  # identity at inference
        elif cls == "Activation":
            _fold_activation(ctx, e, layers)
        elif cls == "Embedding":
            layers.append(_embedding(ctx, e))
        elif cls == "Masking":
            layers.append(Masking(float(cfg.get("mask_value", 0.0)), name=e["name"]))
        elif cls == "Dense":
            layers.append(_dense(ctx, e, cfg, ctx.weights.arrays(e)))
        elif cls == "TimeDistributed":
            inner = _entry(cfg.get("layer") or {}, source)
            if inner["class_name"] != "Dense":
                raise ctx.unsupported(e, f"TimeDistributed({inner['class_name']}) is not supported; "
                                         "fastrnn reads TimeDistributed(Dense)")
            layers.append(_dense(ctx, e, inner["config"], ctx.weights.arrays(e)))
        elif cls in RECURRENT_CELLS:
            layers.append(_recurrent(ctx, e))
        elif cls == "Bidirectional":
            layers.append(_bidirectional(ctx, e))
        else:
            raise ctx.unsupported(e)
    if not layers:
        raise ModelFormatError("the model has no layer fastrnn can run", source)
    metadata = {"source": "keras", "keras_version": str(keras_version), "keras_format": fmt,
                "keras_model_class": kind, "keras_layers": [[e["name"], e["class_name"]] for e in chain]}
    takes_tokens = isinstance(layers[0], Embedding)
    if input_shape is not None:
        if len(input_shape) != (1 if takes_tokens else 2) or not all(s is None or isinstance(s, int)
                                                                     for s in input_shape):
            input_shape = None
    try:
        return Model(layers, metadata=metadata, name=str(name), input_shape=input_shape)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(f"the layers do not form a model fastrnn can run: {exc}", source) from None


def _take(ctx, entry, arrays, names):
    """Check the layer has exactly the arrays ``names`` (Keras weight order) and return them."""
    if len(arrays) != len(names):
        raise ctx.error(entry, f"expected {len(names)} weight arrays ({', '.join(names)}), the file has "
                               f"{len(arrays)}: {[n for n, _ in arrays]}")
    return [a for _, a in arrays]


def _activation_name(spec):
    if spec is None:
        return "linear"
    if isinstance(spec, dict):  # a serialized function: {"module": ..., "class_name": "function", "config": name}
        inner, module = spec.get("config"), str(spec.get("module") or "keras")
        if isinstance(inner, str) and module.startswith("keras") and spec.get("registered_name") in (None, "function"):
            return inner
        return f"custom function {spec.get('registered_name') or inner!r}"
    return str(spec)


def _activation(ctx, entry, spec, what):
    """A Keras activation (name) as a fastrnn Activation, exactly as Keras defines it."""
    name = _activation_name(spec)
    if name == "hard_sigmoid":
        # Keras 3: relu6(x + 3) / 6 = clip(x/6 + 0.5); Keras 1/2: clip(0.2x + 0.5)
        return Activation("hard_sigmoid", 0.2 if ctx.legacy else 1.0 / 6.0, 0.5)
    if name in _SAME_ACTIVATIONS:
        return Activation.of(_SAME_ACTIVATIONS[name])
    raise ctx.unsupported(entry, f"{what} {name!r} is not supported; fastrnn runs "
                                 f"{sorted(set(_SAME_ACTIVATIONS) | {'hard_sigmoid'})}")


def _dense_activation(ctx, entry, spec):
    name = _activation_name(spec)
    if name == "hard_sigmoid" and not ctx.legacy:
        return name  # fastrnn's default hard_sigmoid is Keras 3's
    if name not in _DENSE_ACTIVATIONS:
        raise ctx.unsupported(entry, f"activation {name!r} after a Dense is not supported; fastrnn runs "
                                     f"{sorted(_DENSE_ACTIVATIONS)}")
    return name


def _embedding(ctx, e):
    cfg = e["config"]
    (table,) = _take(ctx, e, ctx.weights.arrays(e), ["embeddings"])
    if table.ndim != 2 or ("input_dim" in cfg and table.shape[0] != int(cfg["input_dim"])):
        raise ctx.error(e, f"embeddings have shape {table.shape}, config says ({cfg.get('input_dim')}, "
                           f"{cfg.get('output_dim')})")
    return Embedding(table, mask_zero=bool(cfg.get("mask_zero", False)), name=e["name"])


def _dense(ctx, e, cfg, arrays):
    """Dense (or the Dense inside TimeDistributed): kernel (I, U) -> weight (U, I)."""
    use_bias = bool(cfg.get("use_bias", True))
    got = _take(ctx, e, arrays, ["kernel", "bias"] if use_bias else ["kernel"])
    kernel, bias = got[0], (got[1] if use_bias else None)
    units = int(cfg.get("units", kernel.shape[-1]))
    if kernel.ndim != 2 or kernel.shape[1] != units or (bias is not None and bias.shape != (units,)):
        raise ctx.error(e, f"kernel {kernel.shape} / bias {None if bias is None else bias.shape} do not match "
                           f"units={units}")
    return Dense(kernel.T, bias, _dense_activation(ctx, e, cfg.get("activation", "linear")), name=e["name"])


def _fold_activation(ctx, e, layers):
    """Activation layer: a no-op if linear, else folded into the linear Dense just before it."""
    name = _activation_name(e["config"].get("activation", "linear"))
    if name == "linear":
        return
    prev = layers[-1] if layers else None
    if not isinstance(prev, Dense) or prev.activation != "linear":
        raise ctx.unsupported(e, f"Activation({name!r}) is supported only right after a Dense (or "
                                 "TimeDistributed(Dense)) without its own activation, where it is folded in")
    layers[-1] = Dense(prev.weight, prev.bias, _dense_activation(ctx, e, name), name=prev.name)


def _rnn_options(ctx, e, cfg):
    """Cell kind, units and the options of one Keras SimpleRNN / LSTM / GRU config."""
    cls = e["class_name"] if e["class_name"] in RECURRENT_CELLS else None
    if cls is None:
        raise ctx.unsupported(e)
    if cfg.get("time_major"):
        raise ctx.unsupported(e, "time_major=True is not supported")
    cell = RECURRENT_CELLS[cls]
    act = cfg.get("activation", "tanh")
    if cell == "rnn":
        acts = (_activation(ctx, e, act, "activation"),)
    else:
        rec = _activation(ctx, e, cfg.get("recurrent_activation", "sigmoid"), "recurrent_activation")
        g = _activation(ctx, e, act, "activation")
        acts = (rec, g, g) if cell == "lstm" else (rec, g)
    return {
        "cell": cell, "units": int(cfg["units"]), "activations": acts,
        "use_bias": bool(cfg.get("use_bias", True)),
        # reset_after appeared in Keras 2.1.3 (default False); Keras 3 defaults to True
        "reset_after": bool(cfg.get("reset_after", not ctx.legacy)) if cell == "gru" else True,
        "go_backwards": bool(cfg.get("go_backwards", False)),
        "return_sequences": bool(cfg.get("return_sequences", False)),
        "zero_output_for_mask": bool(cfg.get("zero_output_for_mask", False)),
    }


def _zrh_to_rzn(a, units):
    """Keras GRU gate blocks z|r|h on the last axis -> fastrnn r|z|n."""
    U = units
    return np.concatenate([a[..., U:2 * U], a[..., :U], a[..., 2 * U:3 * U]], axis=-1)


def _direction(ctx, e, opts, arrays) -> DirectionWeights:
    """One direction from Keras kernel (I, G*U), recurrent_kernel (U, G*U) [, bias]."""
    cell, U = opts["cell"], opts["units"]
    G = GATES[cell]
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


def _recurrent(ctx, e) -> Recurrent:
    opts = _rnn_options(ctx, e, e["config"])
    d = _direction(ctx, e, opts, ctx.weights.arrays(e))
    try:
        return Recurrent(
            cell=opts["cell"], hidden_size=opts["units"], directions=[d], activations=opts["activations"],
            go_backwards=opts["go_backwards"], return_sequences=opts["return_sequences"],
            masked_output="zero" if opts["zero_output_for_mask"] else "hold",
            linear_before_reset=opts["reset_after"], name=e["name"])
    except ValueError as exc:
        raise ctx.error(e, str(exc)) from None


def _bidirectional(ctx, e) -> Recurrent:
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
    same = ("cell", "units", "activations", "reset_after", "return_sequences")
    if fwd["class_name"] != bwd["class_name"] or any(fo[k] != bo[k] for k in same):
        raise ctx.unsupported(e, "a backward layer that differs from the forward layer (class, units, "
                                 "activations, reset_after) is not supported")
    arrays = ctx.weights.arrays(e)
    n_fwd = 3 if fo["use_bias"] else 2
    dirs = [_direction(ctx, e, fo, arrays[:n_fwd]), _direction(ctx, e, bo, arrays[n_fwd:])]
    try:
        return Recurrent(
            cell=fo["cell"], hidden_size=fo["units"], directions=dirs, activations=fo["activations"],
            return_sequences=fo["return_sequences"], merge_mode=merge_mode,
            masked_output="zero",  # Keras forces zero_output_for_mask inside Bidirectional
            linear_before_reset=fo["reset_after"], name=e["name"])
    except ValueError as exc:
        raise ctx.error(e, str(exc)) from None
