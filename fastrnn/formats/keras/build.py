"""The graph builder: a model config plus a weights reader -> a fastrnn Model.

``_build`` expands a Sequential or Functional model (nested models flattened, node names prefixed
``outer/inner``) into graph inputs and nodes, calling each Keras layer on its inputs
(``_call_layer``: shared layers are one layer object in several nodes, ``initial_state=``,
TimeDistributed, custom layers through ``custom_layers=`` factories) with the translations of
layers.py, then checks that every custom layer has its factory and makes the Graph and Model."""
from __future__ import annotations

import json
from dataclasses import replace

from ...errors import ModelFormatError, UnsupportedLayerError
from ...graph import Graph, GraphBuilder, Input
from ...layers import Attention, CustomLayer, Embedding, Select
from ...layers.custom import call_factory
from ...model import Model
from .. import text_vectorization
from .config import (MASK_OPS, MODEL_CLASSES, RECURRENT_CELLS, _entry, _json_default, _major, _node_call, _ref_specs,
                     _tensor_refs, _version_tuple)
from .layers import (SUPPORTED_LAYERS, _CONVERTERS, _MULTI_INPUT, _PER_STEP, _MissingCustom, _MissingLayer,
                     _bidirectional, _recurrent)
from .weights import _feature_sizes

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


class _Builder(GraphBuilder):
    """Collects the graph: inputs, nodes (unique names), one layer object per Keras layer."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.inputs = []
        self.layers = {}  # (weights scope id, layer name) -> converted layer objects
        self.keras_layers = []  # [node name, class name] for the metadata

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
            if kwargs.get("mask") is not None:
                kw["mask"] = True  # an explicit mask= (fastrnn derives the mask itself; Keras uses it)
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
        if extra and not ctx.legacy and not kw.get("mask"):
            # Keras 3 passes a layer its input's mask only when the input is its one tensor argument:
            # given initial_state tensors, it runs every step (its returned sequence keeps the mask)
            layer = replace(layer, use_mask=False)
        last_step = cls != "Bidirectional" and layer.masked_output == "zero" and not layer.return_sequences
        if last_step:
            # zero_output_for_mask=True without return_sequences: Keras returns the last output of the
            # scan, which is 0 when that step is masked (not the final state): the sequence's last step
            layer = replace(layer, return_sequences=True)
        name = b.add(node_name, layer, ins + extra)[0]
        n_out = 1 + (len(layer.state_sizes()) if layer.return_state else 0)
        outs = [(name, i) for i in range(n_out)]
        if last_step:
            outs[0] = b.add(node_name + "/last_step", Select(axis=1, index=-1, name=e["name"] + "/last_step"),
                            [outs[0]])
        return outs
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
