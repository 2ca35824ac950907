"""fastrnn's native model file: one safetensors file, the architecture as JSON in its metadata.

Metadata keys: ``format`` = "fastrnn", ``format_version`` = "1", ``model`` = JSON:
    {"name": str, "input_shape": [...], "metadata": {...}, "vocabulary": {...} | null,
     "layers": [{"kind": "embedding" | "masking" | "recurrent" | "dense", "name": str,
                 "config": {...}, "tensors": {field: tensor name}}]}
Recurrent tensors are named ``layers.{i}.d{direction}.{w_ih|w_hh|b_ih|b_hh|w_hr|peephole}`` in the
internal layout (fastrnn.layers). Loading parses JSON and maps arrays: it runs no code.

Reduced-precision files (``save(..., quantize=...)``, ``fastrnn convert --quantize``): every weight
matrix (2-D: embedding, W_ih, W_hh, W_hr, Dense weight; biases and peepholes stay float32) is
stored as F16, or as I8 ``q`` with a float32 tensor ``<name>.scale`` (N,) of per-row scales, the
matrix being ``scale[:, None] * q``. Loading turns them back into float32 (exactly the stored
values); the model's metadata "quantized" records the kind, and generation then runs with that
weight kind by default (fastrnn.generate, ``weights=``).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..errors import ModelFormatError
from ..layers import Dense, DirectionWeights, Embedding, Masking, Recurrent
from ..model import Model
from ..vocab import Vocabulary
from . import safetensors

FORMAT_NAME = "fastrnn"
FORMAT_VERSION = 1


QUANTIZE_KINDS = ("float16", "int8")


def quantize_int8(a):
    """a (N, K) float32 -> (q int8 (N, K), scale float32 (N,)): a[n] ~ scale[n] * q[n], with
    scale = max |a[n]| / 127 (1 for an all-zero row) and q = round(a / scale)."""
    top = np.abs(a).max(axis=1) if a.size else np.zeros(a.shape[0], np.float32)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def save(model: Model, path, quantize=None):
    """Write ``model`` to ``path`` as a fastrnn safetensors file; ``quantize`` = None (float32),
    "float16" or "int8" stores the weight matrices in reduced precision (see the module doc)."""
    if quantize not in (None, "float32") + QUANTIZE_KINDS:
        raise ValueError(f"quantize must be one of float16, int8 (or None), got {quantize!r}")
    quantize = None if quantize == "float32" else quantize
    tensors = {}
    layers = []
    for i, layer in enumerate(model.layers):
        names = {}
        for field, arr in layer.arrays().items():
            key = f"layers.{i}.{field}"
            if quantize and arr.ndim == 2:
                if quantize == "float16":
                    if arr.size and float(np.abs(arr).max()) > 65504.0:
                        raise ValueError(f"{layer.name}.{field} has weights beyond the float16 range (65504)")
                    arr = arr.astype(np.float16)
                else:
                    arr, tensors[key + ".scale"] = quantize_int8(arr)
            tensors[key] = arr
            names[field] = key
        layers.append({"kind": layer.kind, "name": layer.name, "config": layer.config(), "tensors": names})
    metadata = dict(model.metadata)
    if quantize:
        metadata["quantized"] = quantize
    spec = {
        "name": model.name,
        "input_shape": list(model.input_shape),
        "metadata": metadata,
        "vocabulary": None if model.vocabulary is None else model.vocabulary.to_json(),
        "layers": layers,
    }
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
            "model": json.dumps(spec, ensure_ascii=False)}
    safetensors.write(os.fspath(path), tensors, meta)
    return path


def load(path, mmap=True) -> Model:
    """Read a fastrnn safetensors file. Raises ModelFormatError naming the file and the problem."""
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
    if int(version) != FORMAT_VERSION:
        raise ModelFormatError(f"unsupported format_version {int(version)}; this fastrnn reads version "
                               f"{FORMAT_VERSION}", path)
    if "model" not in meta:
        raise ModelFormatError("no architecture: the 'model' metadata entry is missing", path)
    try:
        spec = json.loads(meta["model"])
    except RecursionError:
        raise ModelFormatError("architecture JSON is nested too deeply", path) from None
    except ValueError as exc:
        raise ModelFormatError(f"architecture ('model' metadata) is not valid JSON: {exc}", path) from None
    try:
        return _build(spec, tensors, path)
    except ModelFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        # A last net: every field is checked below, so reaching this is a gap in those checks.
        raise ModelFormatError(f"invalid model description: {exc.__class__.__name__}: {exc}", path) from None


class _Fields:
    """Typed access to one JSON object of the architecture; errors name the place and the field."""

    def __init__(self, obj, where, path):
        if not isinstance(obj, dict):
            raise ModelFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}", path)
        self.obj, self.where, self.path = obj, where, path

    def error(self, key, what):
        return ModelFormatError(f"{self.where}: {key!r} {what}, got {self.obj.get(key)!r:.60}", self.path)

    def int(self, key, default=None, minimum=0):
        v = self.obj.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self.error(key, f"must be an integer >= {minimum}")
        return v

    def bool(self, key, default):
        v = self.obj.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, "must be true or false")
        return v

    def str(self, key, default):
        v = self.obj.get(key, default)
        if not isinstance(v, str):
            raise self.error(key, "must be a string")
        return v

    def number(self, key, default, allow_none=False):
        v = self.obj.get(key, default)
        if v is None and allow_none:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.error(key, "must be a finite number" + (" or null" if allow_none else ""))
        return float(v)


def _activations(value, where, path):
    """[[name, alpha, beta], ...] (as written by save) or [name, ...]; alpha/beta finite."""
    if not isinstance(value, list):
        raise ModelFormatError(f"{where}: 'activations' must be a list, got {value!r:.60}", path)
    out = []
    for a in value:
        if isinstance(a, str):
            out.append(a)
        elif (isinstance(a, list) and len(a) == 3 and isinstance(a[0], str)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in a[1:])):
            out.append(tuple(a))
        else:
            raise ModelFormatError(f"{where}: activation {a!r:.60} is not a name or [name, alpha, beta] "
                                   "with finite alpha and beta", path)
    return tuple(out)


def _tensor(tensors, names, field, path, required=True):
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
        arr = scale[:, None] * arr.astype(np.float32)
    elif arr.dtype != np.float32:
        raise ModelFormatError(f"tensor {key!r} has dtype {arr.dtype}, expected float32 (or a float16/int8 "
                               "weight matrix)", path)
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"tensor {key!r} contains NaN or infinite values", path)
    return arr


def _build(spec, tensors, path) -> Model:
    top = _Fields(spec, "architecture", path)
    if not isinstance(spec.get("layers"), list) or not spec["layers"]:
        raise ModelFormatError("architecture JSON has no 'layers' list", path)
    layers = []
    for i, entry in enumerate(spec["layers"]):
        ls = _Fields(entry, f"layer {i}", path)
        name = ls.str("name", f"layer_{i}")
        where = f"layer {i} ({name})"
        kind = entry.get("kind")
        names = entry.get("tensors", {})
        if not isinstance(names, dict):
            raise ModelFormatError(f"{where}: 'tensors' must map fields to tensor names", path)
        cfg = _Fields(entry.get("config", {}), f"{where} config", path)
        try:
            if kind == "embedding":
                layers.append(Embedding(_tensor(tensors, names, "weight", path), cfg.bool("mask_zero", False), name))
            elif kind == "masking":
                layers.append(Masking(cfg.number("mask_value", 0.0), name))
            elif kind == "dense":
                layers.append(Dense(_tensor(tensors, names, "weight", path),
                                    _tensor(tensors, names, "bias", path, required=False),
                                    cfg.str("activation", "linear"), name))
            elif kind == "recurrent":
                D = cfg.int("num_directions", minimum=1)
                if D not in (1, 2):
                    raise ModelFormatError(f"{where}: num_directions must be 1 or 2, got {D}", path)
                dirs = []
                for d in range(D):
                    fields = {f: _tensor(tensors, names, f"d{d}.{f}", path, required=f in ("w_ih", "w_hh"))
                              for f in DirectionWeights.FIELDS}
                    dirs.append(DirectionWeights(**fields))
                clip = cfg.number("clip", None, allow_none=True)
                if clip is not None and clip <= 0:
                    raise ModelFormatError(f"{where}: clip must be > 0 or null, got {clip}", path)
                layers.append(Recurrent(
                    cell=cfg.str("cell", None), hidden_size=cfg.int("hidden_size", minimum=1), directions=dirs,
                    proj_size=cfg.int("proj_size", 0),
                    activations=_activations(cfg.obj.get("activations", []), where, path),
                    reverse=cfg.bool("reverse", False), go_backwards=cfg.bool("go_backwards", False),
                    return_sequences=cfg.bool("return_sequences", True),
                    merge_mode=cfg.str("merge_mode", "concat"), masked_output=cfg.str("masked_output", "zero"),
                    clip=clip, input_forget=cfg.bool("input_forget", False),
                    linear_before_reset=cfg.bool("linear_before_reset", True), name=name))
            else:
                raise ModelFormatError(
                    f"{where}: unknown layer kind {kind!r:.60}; this fastrnn reads "
                    "embedding, masking, recurrent, dense", path)
        except ModelFormatError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFormatError(f"{where}: {exc}", path) from None
    vocab = spec.get("vocabulary")
    if vocab is not None:
        v = _Fields(vocab, "vocabulary", path)
        tokens = vocab.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ModelFormatError("vocabulary: 'tokens' must be a list of strings", path)
        try:
            vocab = Vocabulary(tokens, level=v.str("level", "char"),
                               unk=None if vocab.get("unk") is None else v.int("unk"),
                               pad=None if vocab.get("pad") is None else v.int("pad"),
                               lowercase=v.bool("lowercase", False))
        except ValueError as exc:
            raise ModelFormatError(f"vocabulary: {exc}", path) from None
    metadata = spec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFormatError("architecture: 'metadata' must be a JSON object", path)
    input_shape = spec.get("input_shape")
    if input_shape is not None and not (
            isinstance(input_shape, list)
            and all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 0) for s in input_shape)):
        raise ModelFormatError(f"architecture: 'input_shape' must be a list of sizes or nulls, got "
                               f"{input_shape!r:.60}", path)
    try:
        model = Model(layers, vocabulary=vocab, metadata=metadata, name=top.str("name", "model"),
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
