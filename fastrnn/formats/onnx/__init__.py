"""ONNX import: ``InferenceSession`` (run any graph of RNN/LSTM/GRU nodes and glue operators)
and ``load_model`` (a graph that is a plain chain becomes a fastrnn Model).

- graph.py: the file -> nodes, initializers, inputs/outputs (bounded, no external data).
- recurrent.py: RNN/LSTM/GRU node conventions -> fastrnn.layers.Recurrent; running a node.
- ops.py: the glue operators in NumPy.
- session.py: InferenceSession.

``load_model`` recognises Gather(embedding) -> RNN/LSTM/GRU nodes -> MatMul/Gemm (+Add) ->
[Softmax|Sigmoid|Tanh|Relu], with any shape-only glue between them, then **checks** the Model it
built against the session on a random probe input (batch 3, 7 steps; time-major graphs are
recognised too). A graph that is not such a chain, or whose glue does something the chain does not
(e.g. taking the last time step of Y instead of Y_h), raises ModelFormatError pointing to
InferenceSession, which runs any supported graph.
"""
from __future__ import annotations

import os

import numpy as np

from ...errors import ModelFormatError
from ...layers import Dense, Embedding
from ...model import Model
from .recurrent import RECURRENT_OPS, layer_from_node
from .session import InferenceSession

__all__ = ["InferenceSession", "load_model"]

GLUE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Shape", "Gather", "Concat", "Slice", "Cast", "Identity",
        "Dropout", "Constant", "ConstantOfShape", "Expand", "Flatten", "Split", "Range", "Equal", "Where", "Not",
        "Less", "Greater", "Div", "Sub", "Mul", "Add", "Size", "Tile"}
ACTIVATIONS = {"Softmax": "softmax", "Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}
PROBE_BATCH, PROBE_STEPS = 3, 7


def _not_a_chain(why, source):
    return ModelFormatError(f"not a model fastrnn can run as a plain layer chain ({why}); run it with "
                            "fastrnn.onnx.InferenceSession(path), which executes the whole graph", source)


def load_model(path) -> Model:
    sess = InferenceSession(path)
    g = sess._graph
    src = g.source
    init = g.initializers
    if len(g.inputs) != 1:
        raise _not_a_chain(f"{len(g.inputs)} graph inputs; a chain has one", src)
    layers, users = [], {}
    for node in g.nodes:
        for n in node.inputs:
            users.setdefault(n, []).append(node)
    graph_outputs = {o.name for o in g.outputs}
    pending_dense = None
    for node in g.nodes:
        op = node.op_type
        if op == "Gather" and node.inputs[0] in init and not layers and init[node.inputs[0]].ndim == 2:
            layers.append(Embedding(init[node.inputs[0]], name=node.name))
        elif op in RECURRENT_OPS:
            used = bool(users.get(node.outputs[0])) or node.outputs[0] in graph_outputs if node.outputs else False
            layers.append(layer_from_node(node, init, src, return_sequences=used, name=node.name))
        elif op == "MatMul" and node.inputs[1] in init and init[node.inputs[1]].ndim == 2:
            pending_dense = Dense(np.ascontiguousarray(init[node.inputs[1]].T), None, name=node.name)
            layers.append(pending_dense)
        elif op == "Gemm" and node.inputs[1] in init:
            w = init[node.inputs[1]]
            w = w if node.attrs.get("transB", 0) else w.T
            bias = init.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0 or node.attrs.get("transA", 0):
                raise _not_a_chain(f"{node.where()} has alpha/beta/transA", src)
            pending_dense = Dense(np.ascontiguousarray(w), None if bias is None else bias.reshape(-1), name=node.name)
            layers.append(pending_dense)
        elif (op == "Add" and pending_dense is not None and pending_dense.bias is None and layers[-1] is pending_dense
              and any(n in init and init[n].size == pending_dense.output_size for n in node.inputs)):
            b = next(init[n] for n in node.inputs if n in init)
            pending_dense.bias = np.ascontiguousarray(b.reshape(-1), dtype=np.float32)
        elif op in ACTIVATIONS and layers and isinstance(layers[-1], Dense) and layers[-1].activation == "linear":
            layers[-1].activation = ACTIVATIONS[op]
        elif op in GLUE:
            continue
        else:
            raise _not_a_chain(f"{node.where()} has no place in a layer chain", src)
    if not any(hasattr(layer, "cell") for layer in layers):
        raise _not_a_chain("no RNN, LSTM or GRU node", src)
    try:
        # Dense dataclasses were filled in place: rebuild them so their arrays are frozen and checked
        layers = [Dense(x.weight, x.bias, x.activation, x.name) if isinstance(x, Dense) else x for x in layers]
        name = os.path.splitext(os.path.basename(src))[0] if src != "<bytes>" else "onnx_model"
        model = Model(layers, name=name, metadata={"source": "onnx"})
    except (ValueError, TypeError) as exc:
        raise _not_a_chain(str(exc), src) from None
    layout = _verify(sess, model, src)
    model.metadata["onnx_input_layout"] = layout
    return model


def _verify(sess, model, src):
    """Run the session and the model on a probe; return the input layout that matched."""
    info = sess.get_inputs()[0]
    rng = np.random.default_rng(0)
    if model.takes_tokens:
        x = rng.integers(0, model.layers[0].vocab_size, size=(PROBE_BATCH, PROBE_STEPS))
        dtype = np.int32 if info.type == "tensor(int32)" else np.int64
    else:
        x = rng.standard_normal((PROBE_BATCH, PROBE_STEPS, model.input_size)).astype(np.float32)
        dtype = np.float32
    want = model.predict(x)
    for layout, feed, back in (("batch", x, lambda y: y), ("time", np.swapaxes(x, 0, 1), lambda y: np.swapaxes(y, 0, 1))):
        try:
            (got,) = sess.run([sess.get_outputs()[0].name], {info.name: np.ascontiguousarray(feed, dtype=dtype)})
        except ValueError:
            continue
        got = np.asarray(got)
        if got.ndim == want.ndim + 1 and 1 in got.shape:  # e.g. a leftover direction axis
            got = got.reshape([s for i, s in enumerate(got.shape) if not (s == 1 and i == got.shape.index(1))])
        if want.ndim == 3:
            got = back(got) if got.ndim == 3 else got
        if got.shape == want.shape and np.allclose(got, want, atol=1e-4, rtol=1e-4):
            return layout
    raise _not_a_chain("the layers found do not reproduce the graph's output on a probe input", src)
