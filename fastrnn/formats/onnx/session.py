"""fastrnn.onnx.InferenceSession: the part of onnxruntime.InferenceSession people use.

    sess = fastrnn.onnx.InferenceSession("model.onnx")
    [i.name for i in sess.get_inputs()], [o.shape for o in sess.get_outputs()]
    y, h = sess.run(None, {"x": x})          # None = every graph output, in graph order

RNN / LSTM / GRU nodes run on fastrnn's compiled kernels (their weights converted and packed once,
at load time, when they are initializers); the other nodes run in NumPy (ops.py). Outputs have
the names, shapes and layouts onnxruntime gives, including layout=1 nodes (which onnxruntime's
CPU provider refuses).
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelFormatError, UnsupportedLayerError
from . import graph as graph_mod
from .ops import OPS
from .recurrent import RECURRENT_OPS, layers_for_node, run_node

FEED_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16}


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
            if node.op_type in RECURRENT_OPS:
                if all(not n or n in self._graph.initializers for n in node.inputs[1:4] + node.inputs[7:8]):
                    self._layers[id(node)] = layers_for_node(node, self._graph.initializers, self._source)
            elif node.op_type not in OPS:
                raise UnsupportedLayerError(
                    f"{node.where()}: operator {node.op_type} is not supported by fastrnn.onnx (it runs RNN, LSTM, "
                    f"GRU and the glue operators {', '.join(sorted(OPS))})", self._source)

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
        values = dict(self._graph.initializers)
        values.update(self._check_feed(input_feed))
        for node in self._graph.nodes:
            inputs = [values[n] if n else None for n in node.inputs]
            try:
                if node.op_type in RECURRENT_OPS:
                    outs = run_node(node, values, self._source, self._layers.get(id(node)))
                else:
                    outs = OPS[node.op_type](node, inputs)
            except (ModelFormatError, UnsupportedLayerError):
                raise
            except (ValueError, IndexError, TypeError, KeyError) as exc:
                raise ValueError(f"{node.where()} failed: {exc}") from None
            for name, value in zip(node.outputs, outs):
                if name:
                    values[name] = value
        return [np.asarray(values[n]) for n in names]
