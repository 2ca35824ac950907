"""fastrnn's native model file: one safetensors file, the architecture as JSON in its metadata.

Metadata keys: ``format`` = "fastrnn", ``format_version`` = "2", ``model`` = JSON:
    {"name": str, "metadata": {...}, "vocabulary": {...} | null,
     "layers": [{"kind": one of fastrnn.layers.LAYER_TYPES, "name": str,
                 "config": {...}, "tensors": {field: tensor name}}],
     "graph": {"inputs": [{"name": str, "shape": [size | null, ...], "dtype": "int64" | "float32"}],
               "nodes": [{"name": str, "layer": layer name, "inputs": [[tensor, index], ...]}],
               "outputs": [[tensor, index], ...]}}
Each layer is stored once (a shared layer has several nodes). Recurrent tensors are named
``layers.{i}.d{direction}.{w_ih|w_hh|b_ih|b_hh|w_hr|peephole}`` in the internal layout
(fastrnn.layers). Loading parses JSON and maps arrays: it runs no code. Custom layers and custom
activation functions are stored by name with their config and weights; loading them needs the
same ``custom_layers`` factories.

Format version 1 (fastrnn 0.1, a chain): the same "layers" list, no "graph", and an
"input_shape"; it still loads, as the chain of its layers.

Reduced-precision files (``save(..., quantize=...)``, ``fastrnn convert --quantize``): every weight
matrix (2-D: embedding, W_ih, W_hh, W_hr, Dense weight; biases and peepholes stay float32) is
stored as F16, or as I8 ``q`` with a float32 tensor ``<name>.scale`` (N,) of per-row scales, the
matrix being ``scale[:, None] * q``. Loading turns them back into float32 (exactly the stored
values); the model's metadata "quantized" records the kind: predict and classify of an int8 model
then compute with int8 products, and generation runs with that weight kind by default
(fastrnn.quantize, fastrnn.generate ``weights=``). A model from ``model.quantize(kind)`` is saved
in its kind unless ``quantize`` says otherwise.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np

from ..errors import ModelFormatError
from ..graph import MAX_NODES, Graph, Input, Node
from ..layers import LAYER_TYPES, ConfigReader
from ..model import Model
from ..quantize import exact_int8
from ..quantize import int8_rule as quantize_int8  # the rule of int8 files, kept by model.quantize
from ..vocab import Vocabulary
from . import jsontext, safetensors

FORMAT_NAME = "fastrnn"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Every key a vocabulary may hold (fastrnn.vocab.Vocabulary.to_json); any other key is refused, so a
# file whose text rules this version does not know is never tokenized differently without a word.
VOCABULARY_KEYS = frozenset({"level", "tokens", "unk", "pad", "lowercase", "filters", "separator", "drop_unknown",
                             "lowercase_ascii", "strip", "splitter"})


QUANTIZE_KINDS = ("float16", "int8")


# Suffixes of the formats fastrnn reads but does not write: save refuses them (a native file under
# such a name would be mistaken for one by other tools).
OTHER_FORMATS = {".onnx": "ONNX", ".keras": "Keras", ".h5": "Keras HDF5", ".hdf5": "Keras HDF5",
                 ".pt": "PyTorch", ".pth": "PyTorch"}


def save(model: Model, path, quantize=None):
    """Write ``model`` to ``path`` as a fastrnn safetensors file; ``quantize`` = None (float32),
    "float16" or "int8" stores the weight matrices in reduced precision (see the module doc)."""
    suffix = os.path.splitext(os.fspath(path))[1]
    if suffix.lower() in OTHER_FORMATS:
        raise ValueError(f"fastrnn.save writes fastrnn's native safetensors format, not {OTHER_FORMATS[suffix.lower()]}: "
                         f"name the file *.safetensors (got {os.fspath(path)!r})")
    if quantize not in (None, "float32") + QUANTIZE_KINDS:
        raise ValueError(f"quantize must be one of float16, int8 (or None), got {quantize!r}")
    quantize = None if quantize == "float32" else quantize
    if quantize is None and (model.metadata or {}).get("quantized") in QUANTIZE_KINDS:
        quantize = model.metadata["quantized"]  # model.quantize(kind): stored in that kind
    tensors = {}
    layers = []
    layer_names = {}
    for i, layer in enumerate(model.layers):
        names = {}
        exact = layer.int8_forms()  # the integers another tool gave (onnxruntime's), kept as they are
        for field, arr in layer.arrays().items():
            key = f"layers.{i}.{field}"
            if quantize and arr.ndim == 2:
                if quantize == "float16":
                    if arr.size and float(np.abs(arr).max()) > 65504.0:
                        raise ValueError(f"{layer.name}.{field} has weights beyond the float16 range (65504)")
                    arr = arr.astype(np.float16)
                else:
                    arr, tensors[key + ".scale"] = quantize_int8(arr, exact.get(field))
            tensors[key] = arr
            names[field] = key
        layer_names[id(layer)] = f"{layer.name}#{i}" if any(
            x.name == layer.name for x in model.layers[:i]) else layer.name
        layers.append({"kind": layer.kind, "name": layer_names[id(layer)], "config": layer.config(),
                       "tensors": names})
    metadata = dict(model.metadata)
    if quantize:
        metadata["quantized"] = quantize
    spec = {
        "name": model.name,
        "metadata": metadata,
        "vocabulary": None if model.vocabulary is None else model.vocabulary.to_json(),
        "layers": layers,
        "graph": model.graph.to_json(layer_names),
    }
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
            "model": json.dumps(spec, ensure_ascii=False)}
    folder = os.path.dirname(os.fspath(path)) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot save {os.fspath(path)}: no such folder", folder)
    check = f"{os.fspath(path)}.check-{os.getpid()}"
    try:
        safetensors.write(check, tensors, meta)
    except OSError as exc:  # say the user's file name, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None
    try:
        try:  # the loader's own rules (finite weights, clip > 0, ...) before the file takes its name
            load(check, mmap=False)
        except ModelFormatError as exc:
            if "custom_layers=" not in str(exc):  # (custom layers need the user's factories to load)
                raise ValueError(f"not saved: fastrnn would refuse to load this model "
                                 f"({str(exc).split(': ', 1)[-1]})") from None
        os.replace(check, path)
    finally:
        if os.path.exists(check):
            os.unlink(check)
    return path


def load(path, mmap=False, custom_layers=None) -> Model:
    """Read a fastrnn safetensors file. Raises ModelFormatError naming the file and the problem.
    ``custom_layers``: {name: factory} for the custom layers / activations the file records.
    ``mmap=True`` maps the file instead of reading it (see fastrnn.load: the file must then not
    change while the model is in use)."""
    tensors, meta = safetensors.read(path, mmap=mmap)
    if meta.get("format") != FORMAT_NAME:
        raise ModelFormatError(
            "safetensors file without fastrnn metadata (format=fastrnn); "
            "convert the source model with `fastrnn convert`", path)
    version = meta.get("format_version", "")
    if not (version.isascii() and version.isdigit()):
        raise ModelFormatError(f"bad format_version {version!r:.40}; this fastrnn reads version {FORMAT_VERSION}",
                               path)
    if int(version) > FORMAT_VERSION:
        raise ModelFormatError(
            f"format_version {int(version)} is newer than this fastrnn reads ({FORMAT_VERSION}); upgrade fastrnn", path)
    if int(version) not in READABLE_VERSIONS:
        raise ModelFormatError(f"unsupported format_version {int(version)}; this fastrnn reads versions "
                               f"{', '.join(map(str, READABLE_VERSIONS))}", path)
    if "model" not in meta:
        raise ModelFormatError("no architecture: the 'model' metadata entry is missing", path)
    try:
        spec = jsontext.loads(meta["model"], "the architecture JSON ('model' metadata)", path)
    except ValueError as exc:
        raise ModelFormatError(f"architecture ('model' metadata) is not valid JSON: {exc}", path) from None
    try:
        return _build(spec, tensors, path, int(version), custom_layers or {})
    except ModelFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        # A last net: every field is checked below, so reaching this is a gap in those checks.
        raise ModelFormatError(f"invalid model description: {exc.__class__.__name__}: {exc}", path) from None


def _tensor(tensors, names, field, path, required=True, int8=None):
    """The float32 array of ``field`` (dequantized, checked finite); ``int8``: a dict receiving the
    field's Int8Weights when the file stores integers the per-row rule would not give."""
    key = names.get(field)
    if key is None:
        if required:
            raise ModelFormatError(f"missing tensor for {field!r}", path)
        return None
    if not isinstance(key, str):
        raise ModelFormatError(f"tensor name for {field!r} must be a string, got {key!r:.60}", path)
    if key not in tensors:
        raise ModelFormatError(f"tensor {key!r} named in the architecture is not in the file", path)
    arr = tensors[key]
    if arr.dtype == np.float16 and arr.ndim == 2:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.int8 and arr.ndim == 2:
        scale = tensors.get(key + ".scale")
        if scale is None or scale.dtype != np.float32 or scale.shape != arr.shape[:1]:
            raise ModelFormatError(f"int8 tensor {key!r} needs a float32 tensor {key + '.scale'!r} of shape "
                                   f"({arr.shape[0]},)", path)
        if not np.all(np.isfinite(scale)):
            raise ModelFormatError(f"tensor {key + '.scale'!r} contains NaN or infinite values", path)
        q, arr = arr, scale[:, None] * arr.astype(np.float32)
        if int8 is not None and np.all(np.isfinite(arr)) and q.size and int(q.min()) >= -127 and np.all(scale > 0):
            form = exact_int8(arr, q, scale)  # the stored integers, not the rule's
            if form is not None:
                int8[field] = form
    elif arr.dtype != np.float32:
        raise ModelFormatError(f"tensor {key!r} has dtype {arr.dtype}, expected float32 (or a float16/int8 "
                               "weight matrix)", path)
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"tensor {key!r} contains NaN or infinite values", path)
    return arr


class _Arrays:
    """The tensors of one layer, looked up by field name (dequantized, checked finite); ``int8``
    collects the exact int8 forms of the int8 tensors read (for layer.set_int8_forms)."""

    def __init__(self, tensors, names, path):
        self.tensors, self.names, self.path = tensors, names, path
        self.int8 = {}

    def get(self, field):
        return _tensor(self.tensors, self.names, field, self.path, required=False, int8=self.int8)


def _build(spec, tensors, path, version, custom) -> Model:
    if not isinstance(spec, dict):
        raise ModelFormatError(f"architecture: expected a JSON object, got {type(spec).__name__}", path)
    top = ConfigReader(spec, "architecture")
    if not isinstance(spec.get("layers"), list) or not spec["layers"]:
        raise ModelFormatError("architecture JSON has no 'layers' list", path)
    layers = []
    by_name = {}
    missing_custom = []
    for i, entry in enumerate(spec["layers"]):
        if not isinstance(entry, dict):
            raise ModelFormatError(f"layer {i}: expected a JSON object, got {type(entry).__name__}", path)
        ls = ConfigReader(entry, f"layer {i}")
        name = ls.str("name", f"layer_{i}")
        where = f"layer {i} ({name})"
        kind = entry.get("kind")
        names = entry.get("tensors", {})
        if not isinstance(names, dict):
            raise ModelFormatError(f"{where}: 'tensors' must map fields to tensor names", path)
        cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None or (version == 1 and kind not in V1_KINDS):
            known = V1_KINDS if version == 1 else sorted(LAYER_TYPES)
            raise ModelFormatError(f"{where}: unknown layer kind {kind!r:.60}; this fastrnn reads "
                                   f"{', '.join(known)}", path)
        if name in by_name:
            raise ModelFormatError(f"{where}: the layer name {name!r} is used twice", path)
        cfg = ConfigReader(entry.get("config", {}), f"{where} config")
        arrays = _Arrays(tensors, names, path)
        display = name.split("#")[0] if version >= 2 else name
        try:
            if kind in ("custom", "activation"):
                layer = cls.from_config(display, cfg, arrays, custom=custom)
            else:
                layer = cls.from_config(display, cfg, arrays)
        except LookupError as exc:  # a custom layer / activation without its factory
            missing_custom.append(str(exc.args[0]) if exc.args else "?")
            continue
        except ModelFormatError:
            raise
        except (ValueError, TypeError) as exc:
            msg = str(exc)
            raise ModelFormatError(msg if msg.startswith(where) else f"{where}: {msg}", path) from None
        if arrays.int8:
            layer.set_int8_forms(arrays.int8)
        layers.append(layer)
        by_name[name] = layer
    if missing_custom:
        raise ModelFormatError(
            f"the model uses custom layers / activations {sorted(set(missing_custom))}: pass "
            f"custom_layers={{name: factory}} for each (see fastrnn.layers.custom)", path)
    vocab = spec.get("vocabulary")
    if vocab is not None:
        v = ConfigReader(vocab, "vocabulary") if isinstance(vocab, dict) else None
        tokens = vocab.get("tokens") if v else None
        if v is None or not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ModelFormatError("vocabulary: 'tokens' must be a list of strings", path)
        unknown = sorted(set(vocab) - VOCABULARY_KEYS)
        if unknown:  # a newer writer's text rule: ignoring it would tokenize differently
            raise ModelFormatError(f"vocabulary: unknown keys {unknown} (written by a newer fastrnn? this one "
                                   f"reads {sorted(VOCABULARY_KEYS)})", path)
        try:
            separator = vocab.get("separator")
            vocab = Vocabulary(tokens, level=v.str("level", "char"),
                               unk=None if vocab.get("unk") is None else v.int("unk"),
                               pad=None if vocab.get("pad") is None else v.int("pad"),
                               lowercase=v.bool("lowercase", False), filters=v.str("filters", ""),
                               separator=None if separator is None else v.str("separator", None),
                               drop_unknown=v.bool("drop_unknown", False),
                               lowercase_ascii=v.bool("lowercase_ascii", False), strip=v.str("strip", ""),
                               splitter=None if vocab.get("splitter") is None else v.str("splitter", None))
        except ValueError as exc:
            raise ModelFormatError(f"vocabulary: {exc}", path) from None
    metadata = spec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFormatError("architecture: 'metadata' must be a JSON object", path)
    model_name = top.str("name", "model")
    if version == 1:
        return _build_chain_v1(spec, layers, vocab, metadata, model_name, path)
    graph = _graph(spec.get("graph"), by_name, path)
    try:
        return Model(graph=graph, vocabulary=vocab, metadata=metadata, name=model_name)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(str(exc), path) from None


V1_KINDS = ("embedding", "masking", "recurrent", "dense")


def _build_chain_v1(spec, layers, vocab, metadata, name, path) -> Model:
    """format_version 1: the layers form a chain; "input_shape" is the chain's input."""
    input_shape = spec.get("input_shape")
    if input_shape is not None and not (
            isinstance(input_shape, list)
            and all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 0) for s in input_shape)):
        raise ModelFormatError(f"architecture: 'input_shape' must be a list of sizes or nulls, got "
                               f"{input_shape!r:.60}", path)
    try:
        model = Model(layers, vocabulary=vocab, metadata=metadata, name=name,
                      input_shape=tuple(input_shape) if input_shape else None)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(str(exc), path) from None
    shape = model.input_shape  # (time,) for token ids, (time, features) otherwise
    if len(shape) != (1 if model.takes_tokens else 2) or (
            not model.takes_tokens and shape[1] not in (None, model.input_size)):
        want = "[time]" if model.takes_tokens else f"[time, {model.input_size}]"
        raise ModelFormatError(f"architecture: input_shape {list(shape)} does not fit the layers (expected {want})",
                               path)
    return model


def _graph(spec, by_name, path) -> Graph:
    """The "graph" entry of a version-2 file -> a checked Graph over the loaded layers."""
    if not isinstance(spec, dict):
        raise ModelFormatError("architecture: 'graph' must be a JSON object with inputs, nodes, outputs", path)
    for key in ("inputs", "nodes", "outputs"):
        if not isinstance(spec.get(key), list):
            raise ModelFormatError(f"graph: {key!r} must be a list", path)
    if len(spec["nodes"]) > MAX_NODES:
        raise ModelFormatError(f"graph: {len(spec['nodes'])} nodes is beyond the limit of {MAX_NODES}", path)

    def ref(value, where):
        if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                and isinstance(value[1], int) and not isinstance(value[1], bool) and 0 <= value[1] < 1024):
            return (value[0], value[1])
        raise ModelFormatError(f"{where}: a tensor reference is [name, output index], got {value!r:.60}", path)

    try:
        inputs = []
        for i, e in enumerate(spec["inputs"]):
            c = ConfigReader(e, f"graph input {i}")
            inputs.append(Input(c.str("name", None), tuple(c.int_list("shape", allow_none=True, minimum=0)),
                                c.str("dtype", "float32", choices=("int64", "float32"))))
        nodes = []
        for i, e in enumerate(spec["nodes"]):
            c = ConfigReader(e, f"graph node {i}")
            name, layer_name = c.str("name", None), c.str("layer", None)
            if layer_name not in by_name:
                raise ModelFormatError(f"graph node {i} ({name}): layer {layer_name!r:.60} is not in 'layers'", path)
            refs = c.raw("inputs")
            if not isinstance(refs, list) or len(refs) > 4096:
                raise ModelFormatError(f"graph node {i} ({name}): 'inputs' must be a list of tensor references", path)
            nodes.append(Node(name, by_name[layer_name], [ref(r, f"graph node {i} ({name})") for r in refs]))
        outputs = [ref(r, "graph outputs") for r in spec["outputs"]]
        return Graph(inputs, nodes, outputs)
    except ModelFormatError:
        raise
    except ValueError as exc:
        raise ModelFormatError(f"graph: {exc}", path) from None
