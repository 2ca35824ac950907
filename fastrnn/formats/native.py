"""fastrnn's native model file: one safetensors file, the architecture as JSON in its metadata.

Metadata keys: ``format`` = "fastrnn", ``format_version`` = "1", ``model`` = JSON:
    {"name": str, "input_shape": [...], "metadata": {...}, "vocabulary": {...} | null,
     "layers": [{"kind": "embedding" | "masking" | "recurrent" | "dense", "name": str,
                 "config": {...}, "tensors": {field: tensor name}}]}
Recurrent tensors are named ``layers.{i}.d{direction}.{w_ih|w_hh|b_ih|b_hh|w_hr|peephole}`` in the
internal layout (fastrnn.layers). Loading parses JSON and maps arrays: it runs no code.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import ModelFormatError
from ..layers import Dense, DirectionWeights, Embedding, Masking, Recurrent
from ..model import Model
from ..vocab import Vocabulary
from . import safetensors

FORMAT_NAME = "fastrnn"
FORMAT_VERSION = 1


def save(model: Model, path):
    """Write ``model`` to ``path`` as a fastrnn safetensors file."""
    tensors = {}
    layers = []
    for i, layer in enumerate(model.layers):
        names = {}
        for field, arr in layer.arrays().items():
            key = f"layers.{i}.{field}"
            tensors[key] = arr
            names[field] = key
        layers.append({"kind": layer.kind, "name": layer.name, "config": layer.config(), "tensors": names})
    spec = {
        "name": model.name,
        "input_shape": list(model.input_shape),
        "metadata": model.metadata,
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
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ModelFormatError(f"bad format_version {meta.get('format_version')!r}", path) from None
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"format_version {version} is newer than this fastrnn reads ({FORMAT_VERSION}); upgrade fastrnn", path)
    try:
        spec = json.loads(meta.get("model", ""))
        return _build(spec, tensors, path)
    except ModelFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise ModelFormatError(f"invalid model description: {exc.__class__.__name__}: {exc}", path) from None


def _tensor(tensors, names, field, path, required=True):
    key = names.get(field)
    if key is None:
        if required:
            raise ModelFormatError(f"missing tensor for {field!r}", path)
        return None
    if key not in tensors:
        raise ModelFormatError(f"tensor {key!r} named in the architecture is not in the file", path)
    arr = tensors[key]
    if arr.dtype != np.float32:
        raise ModelFormatError(f"tensor {key!r} has dtype {arr.dtype}, expected float32", path)
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"tensor {key!r} contains NaN or infinite values", path)
    return arr


def _build(spec, tensors, path) -> Model:
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
        raise ModelFormatError("architecture JSON has no 'layers' list", path)
    layers = []
    for i, ls in enumerate(spec["layers"]):
        kind = ls.get("kind")
        names = ls.get("tensors") or {}
        cfg = ls.get("config") or {}
        name = str(ls.get("name", f"layer_{i}"))
        try:
            if kind == "embedding":
                layers.append(Embedding(_tensor(tensors, names, "weight", path), bool(cfg.get("mask_zero", False)), name))
            elif kind == "masking":
                layers.append(Masking(float(cfg.get("mask_value", 0.0)), name))
            elif kind == "dense":
                layers.append(Dense(_tensor(tensors, names, "weight", path),
                                    _tensor(tensors, names, "bias", path, required=False),
                                    cfg.get("activation", "linear"), name))
            elif kind == "recurrent":
                D = int(cfg["num_directions"])
                if D not in (1, 2):
                    raise ModelFormatError(f"layer {i}: num_directions must be 1 or 2, got {D}", path)
                dirs = []
                for d in range(D):
                    fields = {f: _tensor(tensors, names, f"d{d}.{f}", path, required=f in ("w_ih", "w_hh"))
                              for f in DirectionWeights.FIELDS}
                    dirs.append(DirectionWeights(**fields))
                layers.append(Recurrent(
                    cell=cfg["cell"], hidden_size=int(cfg["hidden_size"]), directions=dirs,
                    proj_size=int(cfg.get("proj_size", 0)),
                    activations=tuple(tuple(a) for a in cfg["activations"]),
                    reverse=bool(cfg.get("reverse", False)), go_backwards=bool(cfg.get("go_backwards", False)),
                    return_sequences=bool(cfg.get("return_sequences", True)),
                    merge_mode=cfg.get("merge_mode", "concat"), masked_output=cfg.get("masked_output", "zero"),
                    clip=cfg.get("clip"), input_forget=bool(cfg.get("input_forget", False)),
                    linear_before_reset=bool(cfg.get("linear_before_reset", True)), name=name))
            else:
                raise ModelFormatError(
                    f"layer {i} ({name}): unknown layer kind {kind!r}; this fastrnn reads "
                    "embedding, masking, recurrent, dense", path)
        except ModelFormatError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFormatError(f"layer {i} ({name}): {exc}", path) from None
    vocab = spec.get("vocabulary")
    try:
        return Model(layers, vocabulary=None if vocab is None else Vocabulary.from_json(vocab),
                     metadata=spec.get("metadata") or {}, name=str(spec.get("name", "model")),
                     input_shape=tuple(spec["input_shape"]) if spec.get("input_shape") else None)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(str(exc), path) from None
