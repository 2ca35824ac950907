"""The config dialects: what a model's architecture JSON says, in Keras 1.2, 2.x and 3 spelling.

Layer entries (``_entry``, Keras 1 options read in Keras 2 spelling), the Keras version and its
rules (``_config_version``, ``_major``, ``_version_tuple``), tensor references and inbound nodes
in both formats (Keras 3 ``{"args", "kwargs"}``, Keras 1/2 ``[[layer, node, tensor, kwargs]]``),
the model's input / output lists, JSON parsing, and the config of a Keras model in memory. The
Keras layer classes the other modules share (recurrent cells, model classes, mask ops) are here."""
from __future__ import annotations

import json
import re

import numpy as np

from ...errors import ModelFormatError, UnsupportedLayerError
from .files import _attr_str

RECURRENT_CELLS = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru", "CuDNNLSTM": "lstm", "CuDNNGRU": "gru"}
CUDNN_LAYERS = ("CuDNNLSTM", "CuDNNGRU")  # Keras 2 GPU layers: tanh / sigmoid, GRU reset after, 2 biases
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
MASK_OPS = ("NotEqual", "Any")  # Keras 3 Functional graphs record mask computations as these ops
MODEL_CLASSES = ("Sequential", "Functional", "Model")


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
