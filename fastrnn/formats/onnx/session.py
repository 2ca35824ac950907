"""fastrnn.onnx.InferenceSession: the part of onnxruntime.InferenceSession people use.

    sess = fastrnn.onnx.InferenceSession("model.onnx")
    [i.name for i in sess.get_inputs()], [o.shape for o in sess.get_outputs()]
    y, h = sess.run(None, {"x": x})          # None = every graph output, in graph order

The session runs the same fastrnn Model that ``fastrnn.load("model.onnx")`` returns (one engine):
the graph is translated once at load time (translate.py), then every ``run`` moves each input's
batch axis first, calls ``Model.predict`` and restores each output's ONNX layout (Y as
(T, D, B, H), Y_h as (D, B, H), ...). Outputs have the names, shapes and layouts onnxruntime gives,
including layout=1 nodes (which onnxruntime's CPU provider refuses).

Fallback: a graph with no Model equivalent runs on the node-by-node interpreter below (RNN nodes on
fastrnn's kernels, glue operators in NumPy, ops.py); ``session.model`` is then None and
``session.fallback_reason`` says why. These graphs take that path:
- recurrent weights (W, R, B, P) fed as graph inputs rather than stored (the ONNX conformance
  cases do this): a Model's weights are part of the model;
- graph inputs that share no batch axis with the others, or outputs that do not depend on a
  batch (e.g. a graph of pure tensor arithmetic on a (4,) vector);
- sequence_lens computed inside the graph, or given for an X that is not a graph input;
- inputs of other types than float32 features and int32/int64 token ids;
- an operator applied to run-time tensors that has no fastrnn layer (see translate.py).
onnxruntime's quantized operators run there too (ops.py); DynamicQuantizeLSTM runs as an LSTM with
its dequantized weights (float kernels), the int8 engine being reserved for translated Models.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelFormatError, UnsupportedLayerError
from . import graph as graph_mod
from .ops import OPS, check_quantization_parameters
from .recurrent import RECURRENT_OPS, layers_for_node, run_node
from .translate import Untranslatable, to_model_inputs, to_onnx_output, translate_graph

FEED_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16}
QUANTIZED_LSTM = "DynamicQuantizeLSTM"  # onnxruntime's (com.microsoft); the interpreter runs it dequantized


class InferenceSession:
    """Load an ONNX model (path or bytes) and run it. ``providers`` and ``sess_options`` are
    accepted for drop-in compatibility and ignored (fastrnn runs on the CPU)."""

    def __init__(self, path_or_bytes, sess_options=None, providers=None, **kwargs):
        self._graph = graph_mod.parse(path_or_bytes)
        self._source = self._graph.source
        opset = self._graph.opset
        self._layers = {}
        for node in self._graph.nodes:
            node.attrs.setdefault("_opset", opset)
        constants = dict(self._graph.initializers)
        constants.update({n.outputs[0]: n.attrs["value"] for n in self._graph.nodes
                          if n.op_type == "Constant" and n.outputs and isinstance(n.attrs.get("value"), np.ndarray)})
        try:
            check_quantization_parameters(self._graph.nodes, constants)
        except ValueError as exc:
            raise ModelFormatError(str(exc), self._source) from None
        self.model = None
        self.fallback_reason = None
        try:
            graph, self._boundary = translate_graph(self._graph)
        except Untranslatable as exc:
            self.fallback_reason = str(exc)
        else:
            from ...model import Model

            metadata = {"source": "onnx", "onnx_batch_axes": {name: b for name, b, _ in self._boundary.inputs}}
            if self._boundary.int8 is not None:  # onnxruntime-quantized: an int8 model (fastrnn.quantize)
                metadata["quantized"] = "int8"
                metadata["onnx_int8"] = self._boundary.int8
            self.model = Model(graph=graph, name=model_name(self._source), metadata=metadata)
        # recurrent weights fed as graph inputs (the ONNX conformance cases): the Model is built
        # for the weights of each run (the last one kept), so these graphs run on the Model too
        self._weight_inputs = weight_inputs(self._graph) if self.model is None else []
        self._specialised = (None, None, None)
        if self.model is None:
            for node in self._graph.nodes:
                if node.op_type not in RECURRENT_OPS and node.op_type not in OPS and node.op_type != QUANTIZED_LSTM:
                    raise UnsupportedLayerError(
                        f"{node.where()}: operator {node.op_type} is not supported by fastrnn.onnx (it runs RNN, "
                        f"LSTM, GRU, the operators that map to fastrnn layers and the glue operators "
                        f"{', '.join(sorted(OPS))}); {self.fallback_reason}", self._source)
            for node in self._graph.nodes:
                if node.op_type in RECURRENT_OPS and all(
                        not n or n in self._graph.initializers for n in node.inputs[1:4] + node.inputs[7:8]):
                    self._layers[id(node)] = layers_for_node(node, self._graph.initializers, self._source)

    def get_inputs(self):
        return list(self._graph.inputs)

    def get_outputs(self):
        return list(self._graph.outputs)

    def get_providers(self):
        return ["fastrnn"]

    def _check_feed(self, input_feed):
        if not isinstance(input_feed, dict):
            raise TypeError(f"input_feed must be a dict of input name -> array, got {type(input_feed).__name__}")
        known = {i.name: i for i in self._graph.inputs}
        for name in input_feed:
            if name not in known:
                raise ValueError(f"input {name!r} is not an input of this model; inputs: {sorted(known)}")
        values = {}
        for name, info in known.items():
            if name not in input_feed:
                raise ValueError(f"input {name!r} is missing from input_feed (expected {info.type}, shape "
                                 f"{info.shape})")
            a = np.asarray(input_feed[name])
            want = FEED_DTYPES.get(info.type)
            if want is not None and a.dtype != want:
                raise ValueError(f"input {name!r} has dtype {a.dtype}, the model expects {info.type}")
            if info.shape and a.ndim != len(info.shape):
                raise ValueError(f"input {name!r} has {a.ndim} dimensions (shape {a.shape}), the model expects "
                                 f"{len(info.shape)} {info.shape}")
            for i, (got, dim) in enumerate(zip(a.shape, info.shape or [])):
                if isinstance(dim, int) and got != dim:
                    raise ValueError(f"input {name!r} dimension {i} is {got}, the model expects {dim}")
            values[name] = a
        return values

    def run(self, output_names, input_feed, run_options=None):
        """Outputs named in ``output_names`` (None = all graph outputs), as a list of arrays."""
        names = [o.name for o in self._graph.outputs] if output_names is None else list(output_names)
        valid = {o.name for o in self._graph.outputs}
        for n in names:
            if n not in valid:
                raise ValueError(f"{n!r} is not an output of this model; outputs: {sorted(valid)}")
        feeds = self._check_feed(input_feed)
        if self.model is not None:
            return self._run_model(names, feeds, self.model, self._boundary)
        if self._weight_inputs:
            found = self._model_for_weights(feeds)
            if found is not None:
                return self._run_model(names, {k: v for k, v in feeds.items() if k not in self._weight_inputs},
                                       *found)
        values = dict(self._graph.initializers)
        values.update(feeds)
        for node in self._graph.nodes:
            inputs = [values[n] if n else None for n in node.inputs]
            try:
                if node.op_type in RECURRENT_OPS:
                    outs = run_node(node, values, self._source, self._layers.get(id(node)))
                elif node.op_type == QUANTIZED_LSTM:  # its dequantized weights, on the float kernels
                    outs = run_node(*dequantized_lstm(node, values), self._source)
                else:
                    outs = OPS[node.op_type](node, inputs)
            except (ModelFormatError, UnsupportedLayerError):
                raise
            except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:  # bad attributes too
                raise ValueError(f"{node.where()} failed: {exc}") from None
            for name, value in zip(node.outputs, outs):
                if name:
                    values[name] = value
        return [np.asarray(values[n]) for n in names]

    def _model_for_weights(self, feeds):
        """(Model, Boundary) of the graph with the fed weights as constants, or None."""
        import dataclasses
        import hashlib

        digest = hashlib.sha1()
        for name in self._weight_inputs:
            a = np.ascontiguousarray(feeds[name])
            digest.update(f"{name}{a.shape}{a.dtype}".encode())
            digest.update(a.tobytes())
        key = digest.hexdigest()
        cached_key, model, boundary = self._specialised
        if cached_key == key:
            return None if model is None else (model, boundary)
        g = self._graph
        inits = dict(g.initializers)
        inits.update({name: np.asarray(feeds[name]) for name in self._weight_inputs})
        g2 = dataclasses.replace(g, initializers=inits, inputs=[i for i in g.inputs if i.name not in inits])
        try:
            graph, boundary = translate_graph(g2)
        except Untranslatable:
            self._specialised = (key, None, None)
            return None
        from ...model import Model

        model = Model(graph=graph, name=model_name(self._source), metadata={"source": "onnx"})
        self._specialised = (key, model, boundary)
        return model, boundary

    def _run_model(self, names, feeds, model, b):
        xs, ls = to_model_inputs(b, feeds)
        for (name, _, _), x, L in zip(b.inputs, xs, ls):
            if L is not None and (L.shape != (x.shape[0],) or (L.size and (L.min() < 0 or L.max() > x.shape[1]))):
                raise ValueError(f"sequence_lens for {name!r} must be {x.shape[0]} values within 0..{x.shape[1]}, "
                                 f"got {L}")
        one = len(xs) == 1
        outs = model.predict(xs[0] if one else xs, lengths=(ls[0] if one else ls))
        if len(b.outputs) == 1:
            outs = [outs]
        by_name = {name: (k, split, axes) for name, k, split, axes in b.outputs}
        result = []
        for n in names:
            k, split, axes = by_name[n]
            result.append(to_onnx_output(outs[k], split, axes))
        return result


def dequantized_lstm(node, values):
    """DynamicQuantizeLSTM as an LSTM node with the dequantized weights -> (node, values)."""
    import dataclasses

    from .ops import OPS, check_quantization_parameters

    names = list(node.inputs) + [""] * (12 - len(node.inputs))
    vals = dict(values)
    new = list(names[:8])
    for k, (w, sc, zp) in ((1, (1, 8, 9)), (2, (2, 10, 11))):
        q = np.asarray(values[names[w]])
        if q.ndim != 3 or not names[sc]:
            raise ValueError(f"{node.where()}: input {k} must be 3-D with its scale")
        D = q.shape[0]
        scale = np.asarray(values[names[sc]], np.float32)
        zero = np.asarray(values[names[zp]]) if names[zp] else np.zeros((), q.dtype)
        deq = OPS["DequantizeLinear"]
        parts = []
        for d in range(D):
            s_d = scale if scale.size == 1 else scale.reshape(D, -1)[d]
            z_d = zero if zero.size == 1 else zero.reshape(D, -1)[d]
            axis_node = dataclasses.replace(node, attrs={"axis": 1})
            parts.append(deq(axis_node, [q[d], s_d.reshape(-1) if s_d.size > 1 else s_d.reshape(()),
                                         z_d.reshape(-1) if z_d.size > 1 else z_d.reshape(())])[0].T)
        name = f"{node.name}/input{k}_dequantized"
        vals[name] = np.ascontiguousarray(np.stack(parts))
        new[k] = name
    return dataclasses.replace(node, op_type="LSTM", inputs=new), vals


def model_name(source):
    import os

    return os.path.splitext(os.path.basename(source))[0] if source != "<bytes>" else "onnx_model"


def weight_inputs(g):
    """Graph inputs used only as RNN/LSTM/GRU weights (W, R, B, P)."""
    uses = {}
    for node in g.nodes:
        for k, name in enumerate(node.inputs):
            if name:
                uses.setdefault(name, []).append((node.op_type, k))
    return [i.name for i in g.inputs
            if uses.get(i.name) and all(op in RECURRENT_OPS and k in (1, 2, 3, 7) for op, k in uses[i.name])]
