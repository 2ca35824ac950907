"""The weight readers and their matching to the architecture's layers.

``_Keras3Weights`` (``layers/<key>/vars/N``, keyed by the layer's name or its position per class),
``_LegacyWeights`` (Keras 1 / 2 ``<layer>/<weight>`` groups; a weights-only file matched in order
or by name, as Keras 2's ``load_weights``, after checking counts and the shapes each layer's
config expects, with a misfit listing both sides) and ``_LiveWeights`` (a Keras model in
memory). Each gives a layer entry's arrays in Keras's weight order and a nested model's scope."""
from __future__ import annotations

import re

import numpy as np

from ...errors import ModelFormatError
from .config import CUDNN_LAYERS, GATES, MASK_OPS, MODEL_CLASSES, RECURRENT_CELLS, _entry, _keras1_config, _node_call
from .files import _attr_list, _attr_str, _read_dataset
from .layers import NO_OP_LAYERS, _CONVERTERS

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


def _snake_case(name):
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
