"""The model as a graph: named inputs, nodes (a layer and the tensors it reads), named outputs.

    Graph(inputs=[Input("ids", (None,), "int64")],
          nodes=[Node("emb", Embedding(...), [("ids", 0)]),
                 Node("lstm", Recurrent(...), [("emb", 0)]),
                 Node("out", Dense(...), [("lstm", 0)])],
          outputs=[("out", 0)])

A tensor is referred to as ``(producer, index)``: a model input ``(name, 0)`` or the index-th
output of a node (only recurrent nodes with ``return_state`` have more than one). A layer object
may appear in several nodes (a shared layer); a chain is a graph with one path. Importers build
graphs; fusions are passes over them (``optimize``) shared by every importer, so a model runs the
same plan whatever file it came from; ``Plan`` runs a graph on a backend.

Masks travel beside the tensors, created by Embedding(mask_zero) and Masking (and ``lengths=``
of predict) and propagated by each layer's ``output_lengths`` as Keras propagates masks: as
``lengths`` (B,) int64 when they are right padding (the kernels' own form), else as a boolean
(B, T) array (fastrnn.layers.mask). A recurrent layer runs a (B, T) mask by packing each row's
real steps to the left, running them with lengths, and putting the outputs back (exact: a
masked step leaves the state unchanged).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from .layers.activation import AXIS_FUNCTIONS, Activation
from .layers.attention import Attention
from .layers.base import shape_str
from .layers.conv import Conv1D
from .layers.custom import CustomLayer
from .layers.dense import Dense
from .layers.embedding import Embedding, Masking
from .layers.mask import combine, compact, is_lengths
from .layers.recurrent import Recurrent, expand_compacted
from .layers.reshape import Identity

f32 = np.float32
INPUT_DTYPES = ("int64", "float32")
MAX_NODES = 1_000_000  # a stated bound: graphs are checked in time linear in their size


@dataclass
class Input:
    """A model input: ``shape`` without the batch axis (None = any size), ``dtype`` "int64" (token
    ids) or "float32" (features)."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        self.shape = tuple(None if s is None else int(s) for s in self.shape)
        if self.dtype not in INPUT_DTYPES:
            raise ValueError(f"input {self.name!r}: dtype must be one of {INPUT_DTYPES}, got {self.dtype!r}")


@dataclass
class Node:
    """One use of a layer: ``inputs`` are tensor references (producer name, output index)."""

    name: str
    layer: object
    inputs: list

    def __post_init__(self):
        self.inputs = [as_ref(r) for r in self.inputs]


def as_ref(ref):
    """A tensor reference: "name" (output 0) or (name, index)."""
    if isinstance(ref, str):
        return (ref, 0)
    if isinstance(ref, (tuple, list)) and len(ref) == 2 and isinstance(ref[0], str) and isinstance(ref[1], int) \
            and not isinstance(ref[1], bool) and ref[1] >= 0:
        return (ref[0], int(ref[1]))
    raise ValueError(f"a tensor reference is a name or (name, output index), got {ref!r:.80}")


def ref_str(ref) -> str:
    return ref[0] if ref[1] == 0 else f"{ref[0]}[{ref[1]}]"


class Graph:
    """A checked, topologically ordered graph with every tensor's shape inferred.

    Raises ValueError naming the node for: duplicate names, references to unknown tensors,
    cycles, unused outputs of wrong arity and shapes a layer cannot take."""

    def __init__(self, inputs, nodes, outputs):
        self.inputs = list(inputs)
        nodes = list(nodes)
        self.outputs = [as_ref(r) for r in outputs]
        if not self.inputs:
            raise ValueError("a model needs at least one input")
        if not nodes:
            raise ValueError("a Model needs at least one layer")
        if len(nodes) > MAX_NODES:
            raise ValueError(f"a graph of {len(nodes)} nodes is beyond fastrnn's limit of {MAX_NODES}")
        if not self.outputs:
            raise ValueError("a model needs at least one output")
        names = set()
        for item in self.inputs + nodes:
            if not isinstance(item.name, str) or not item.name:
                raise ValueError(f"every input and node needs a non-empty name, got {item.name!r}")
            if item.name in names:
                raise ValueError(f"the name {item.name!r} is used twice (input and node names must be unique)")
            names.add(item.name)
        self.nodes = _toposort(nodes, {i.name for i in self.inputs})
        self.node_by_name = {n.name: n for n in self.nodes}
        self.input_by_name = {i.name: i for i in self.inputs}
        self.input_by_name = {i.name: i for i in self.inputs}
        self.shapes = {(i.name, 0): tuple(i.shape) for i in self.inputs}
        self.num_outputs = {}
        for node in self.nodes:
            in_shapes = []
            for ref in node.inputs:
                if ref not in self.shapes:
                    raise ValueError(f"node {node.name!r} reads {ref_str(ref)!r}, which "
                                     f"{'has no output ' + str(ref[1]) if ref[0] in names else 'does not exist'}")
                in_shapes.append(self.shapes[ref])
            for ref in node.inputs:
                inp = self.input_by_name.get(ref[0])
                ids_in = inp is not None and inp.dtype == "int64"
                if isinstance(node.layer, Embedding) != ids_in and not isinstance(node.layer, CustomLayer):
                    raise ValueError(
                        f"node {node.name!r} ({type_name(node.layer)}) reads {ref_str(ref)!r}: " + (
                            "an Embedding reads token ids, a model input of dtype int64"
                            if isinstance(node.layer, Embedding) else
                            "token ids (an int64 input) are read by Embedding layers only"))
            n_in = getattr(node.layer, "num_inputs", 1)
            if n_in is not None and len(in_shapes) != n_in:
                raise ValueError(f"node {node.name!r} ({type_name(node.layer)}) takes {n_in} input(s), "
                                 f"got {len(in_shapes)}")
            try:
                out = node.layer.output_shape(in_shapes)
            except ValueError as exc:
                msg = str(exc)
                raise ValueError(msg if node.name in msg else f"node {node.name!r}: {msg}") from None
            outs = out if isinstance(out, list) else [out]
            self.num_outputs[node.name] = len(outs)
            for k, s in enumerate(outs):
                self.shapes[(node.name, k)] = tuple(s)
        for ref in self.outputs:
            if ref not in self.shapes:
                raise ValueError(f"model output {ref_str(ref)!r} is not a tensor of the graph")
        self.consumers = {}
        for node in self.nodes:
            for pos, ref in enumerate(node.inputs):
                self.consumers.setdefault(ref, []).append((node, pos))

    # -- structure -----------------------------------------------------------------------------
    @property
    def layers(self):
        """Each distinct layer once, in the order of its first node."""
        seen, out = set(), []
        for n in self.nodes:
            if id(n.layer) not in seen:
                seen.add(id(n.layer))
                out.append(n.layer)
        return out

    def is_chain(self) -> bool:
        """One input, one output, each node reading the previous one's only output."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return False
        prev = (self.inputs[0].name, 0)
        for n in self.nodes:
            if n.inputs != [prev] or self.num_outputs[n.name] != 1:
                return False
            prev = (n.name, 0)
        return self.outputs[0] == prev

    def producer(self, ref):
        return self.node_by_name.get(ref[0])

    def to_json(self, layer_names):
        """The graph part of the native file: layer objects replaced by their names."""
        return {
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in self.inputs],
            "nodes": [{"name": n.name, "layer": layer_names[id(n.layer)],
                       "inputs": [[r[0], r[1]] for r in n.inputs]} for n in self.nodes],
            "outputs": [[r[0], r[1]] for r in self.outputs],
        }


def type_name(layer) -> str:
    f = getattr(layer, "type_name", None)
    return f() if f else type(layer).__name__


def _toposort(nodes, input_names):
    """Kahn's algorithm, stable (nodes keep their given order when free to): linear time."""
    by_name = {n.name: n for n in nodes}
    waiting = {}
    indegree = {}
    for n in nodes:
        deps = {r[0] for r in n.inputs if r[0] not in input_names}
        for d in deps:
            if d not in by_name:
                raise ValueError(f"node {n.name!r} reads {d!r}, which does not exist")
            waiting.setdefault(d, []).append(n.name)
        indegree[n.name] = len(deps)
    position = {n.name: i for i, n in enumerate(nodes)}
    import heapq

    ready = [(position[n.name], n.name) for n in nodes if indegree[n.name] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(by_name[name])
        for m in waiting.get(name, ()):
            indegree[m] -= 1
            if indegree[m] == 0:
                heapq.heappush(ready, (position[m], m))
    if len(order) != len(nodes):
        stuck = sorted(n for n, d in indegree.items() if d > 0)[:5]
        raise ValueError(f"the graph has a cycle (through {', '.join(map(repr, stuck))})")
    return order


def chain(layers, input_name="input", input_shape=None, input_dtype=None) -> Graph:
    """The graph of layers applied one after the other."""
    layers = list(layers)
    if not layers:
        raise ValueError("a Model needs at least one layer")
    first = layers[0]
    tokens = isinstance(first, Embedding)
    if input_shape is None:
        if tokens:
            input_shape = (None,)
        else:
            size = next((getattr(x, "input_size", None) for x in layers if getattr(x, "input_size", None)), None)
            input_shape = (None, size)
    dtype = input_dtype or ("int64" if tokens else "float32")
    names = _unique_names([layer.name for layer in layers], {input_name})
    nodes, prev = [], (input_name, 0)
    for i, (layer, name) in enumerate(zip(layers, names)):
        if isinstance(layer, Embedding) and i != 0:
            raise ValueError(f"layer {i} ({layer.name}): an Embedding must be the first layer")
        nodes.append(Node(name, layer, [prev]))
        prev = (name, 0)
    return Graph([Input(input_name, input_shape, dtype)], nodes, [prev])


def _unique_names(names, taken):
    taken = set(taken)
    return [_take_unique(n, taken) for n in names]


def _take_unique(name, taken):
    """``name``, or ``name_1``, ``name_2``, ... : the first not in ``taken`` (which gains it)."""
    base, k = name, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


class GraphBuilder:
    """What every importer (Keras, torch.export, ONNX) builds a graph with: nodes in the order they
    are added, each under a name no other node or input has. Importers subclass it and add their
    framework's bookkeeping; the resulting ``nodes`` go into a Graph."""

    def __init__(self, taken_names=()):
        self.nodes = []
        self.names = set(taken_names)

    def unique(self, name):
        """``name`` made unique among the names given so far (``name_1``, ``name_2``, ...)."""
        return _take_unique(name, self.names)

    def add(self, name, layer, inputs):
        """Append a node computing ``layer`` on the tensor refs ``inputs``; returns its first output's ref."""
        name = self.unique(name)
        self.nodes.append(Node(name, layer, list(inputs)))
        return (name, 0)


# =============================================================================================
# Passes: graph -> graph rewrites, each a small function (tract's "declutter", onnxruntime's
# transformers). They never change what the graph computes, only how it is laid out to run.
# =============================================================================================

def remove_identities(graph: Graph) -> Graph:
    """Bypass Identity nodes (Dropout at inference, Keras glue) and identity activations."""
    alias = {}

    def resolve(ref):
        while ref in alias:
            ref = alias[ref]
        return ref

    kept = []
    for n in graph.nodes:
        layer = n.layer
        if isinstance(layer, Identity) or (isinstance(layer, Activation) and not layer.custom
                                           and layer.function == "identity"):
            alias[(n.name, 0)] = resolve(n.inputs[0])
            continue
        kept.append(Node(n.name, layer, [resolve(r) for r in n.inputs]))
    if len(kept) == len(graph.nodes):
        return graph
    outputs = [resolve(r) for r in graph.outputs]
    if not kept:
        kept = [Node("__identity__", Identity(name="identity"), [outputs[0]])]
        outputs = [("__identity__", 0)]
    return Graph(graph.inputs, kept, outputs)


def fuse_dense_activation(graph: Graph) -> Graph:
    """Dense(linear) followed only by an element-wise Activation (or softmax over features)
    becomes one Dense with that activation: the compiled Dense applies it in place, and
    generation sees the chain Embedding -> recurrent -> Dense it compiles."""
    from .activations import ACTIVATION_CODES

    outputs = set(graph.outputs)
    replace_by = {}
    for n in graph.nodes:
        layer = n.layer
        if not (isinstance(layer, Activation) and not layer.custom):
            continue
        src = graph.producer(n.inputs[0])
        if src is None or not isinstance(src.layer, Dense) or src.layer.activation != "linear":
            continue
        if len(graph.consumers.get((src.name, 0), [])) != 1 or (src.name, 0) in outputs:
            continue
        f = layer.function
        if f in ("softmax", "log_softmax") and layer.axis == -1:
            act = f
        elif f in ACTIVATION_CODES and (layer.alpha, layer.beta) == ACTIVATION_CODES[f][1:]:
            act = f
        else:
            continue
        replace_by[src.name] = n.name
        replace_by[n.name] = replace(src.layer, activation=act, name=src.layer.name)
    if not replace_by:
        return graph
    nodes = []
    for n in graph.nodes:
        if n.name in replace_by and isinstance(replace_by[n.name], str):
            continue  # the Dense, now merged into the activation's node
        if n.name in replace_by:
            src = graph.producer(n.inputs[0])
            nodes.append(Node(n.name, replace_by[n.name], src.inputs))
        else:
            nodes.append(n)
    return Graph(graph.inputs, nodes, graph.outputs)


PASSES = (remove_identities, fuse_dense_activation)


def optimize(graph: Graph) -> Graph:
    for p in PASSES:
        graph = p(graph)
    return graph


# =============================================================================================
# Plan: run a graph on a backend
# =============================================================================================

class _Tokens:
    """An Embedding's output left as ids: the recurrent layer reading it looks up its folded table."""

    __slots__ = ("layer", "ids")

    def __init__(self, layer, ids):
        self.layer, self.ids = layer, ids


class Plan:
    """The optimized graph of a model, in execution order, with what can be folded marked.

    ``run(feeds, lengths, states, backend, threads)`` -> (outputs, final states of the recurrent
    nodes). ``feeds``: one checked array per model input; ``lengths``: one (B,) array or None per
    input; ``states``: one initial state (or None) per recurrent node, in node order."""

    def __init__(self, graph: Graph):
        self.source = graph
        self.graph = g = optimize(graph)
        self.recurrent_nodes = [n for n in g.nodes if isinstance(n.layer, Recurrent)]
        # an Embedding read by exactly one node, a recurrent layer's x: foldable
        self.foldable = set()
        for n in g.nodes:
            if isinstance(n.layer, Embedding) and (n.name, 0) not in g.outputs:
                users = g.consumers.get((n.name, 0), [])
                if len(users) == 1 and isinstance(users[0][0].layer, Recurrent) and users[0][1] == 0:
                    self.foldable.add(n.name)
        # each node's output is dropped after its last reader ran (memory stays bounded)
        last_use = {}
        for i, n in enumerate(g.nodes):
            for r in n.inputs:
                last_use[r] = i
        self.free_after = {}
        keep = set(g.outputs)
        for r, i in last_use.items():
            if r not in keep:
                self.free_after.setdefault(i, []).append(r)

    def run(self, feeds, lengths, states, backend, threads):
        g = self.graph
        values, lens = {}, {}
        for inp, x, L in zip(g.inputs, feeds, lengths):
            values[(inp.name, 0)] = x
            lens[(inp.name, 0)] = L
        states_out = []
        r = 0
        for i, node in enumerate(g.nodes):
            layer = node.layer
            xs = [values[ref] for ref in node.inputs]
            ls = [lens[ref] for ref in node.inputs]
            if isinstance(layer, (Embedding, Masking)):
                x = xs[0]
                L = combine([ls[0], layer.mask_lengths(x)], "and")  # lengths= and the padding ids both mask
                if isinstance(layer, Masking):
                    y = x
                elif node.name in self.foldable and backend.can_fold_embedding(
                        layer, g.consumers[(node.name, 0)][0][0].layer):
                    y = _Tokens(layer, x)
                else:
                    y = layer.call([x])
                outs, out_lens = [y], [L]
            elif isinstance(layer, Recurrent):
                x, tokens = xs[0], None
                if isinstance(x, _Tokens):
                    x, tokens = x.ids, (x.layer, x.ids)
                state = layer.states_from_inputs(xs, x.shape[0]) if len(xs) > 1 else states[r]
                mask = ls[0] if layer.use_mask else None
                if x.shape[0] == 0:
                    y, st = _empty_recurrent(layer, x)
                elif mask is not None and not is_lengths(mask):
                    y, st = _masked_recurrent(backend, layer, x, tokens, mask, state, threads)
                else:
                    y, st = backend.recurrent(layer, x, mask, state, threads=threads, tokens=tokens)
                states_out.append(st)
                r += 1
                outs = [y] + layer.states_to_outputs(st) if layer.return_state else [y]
                ol = layer.output_lengths(ls, None)
                out_lens = ol if isinstance(ol, list) else [ol]
            else:
                # the layers with matrix products run on the backend (on its threads: never
                # NumPy's BLAS under a compiled backend); the others run their NumPy definition
                if isinstance(layer, Dense):
                    outs = [backend.dense(layer, xs[0], threads=threads)]
                elif isinstance(layer, Conv1D):
                    outs = [backend.conv1d(layer, xs[0], threads=threads)]
                elif isinstance(layer, Attention):
                    outs = [backend.attention(layer, xs, ls, threads=threads)]
                else:
                    res = layer.call(xs, ls)
                    outs = res if isinstance(res, list) else [res]
                shapes = [g.shapes[ref] for ref in node.inputs]
                ol = layer.output_lengths(ls, shapes)
                out_lens = ol if isinstance(ol, list) else [ol]
            for k, (y, L) in enumerate(zip(outs, out_lens)):
                values[(node.name, k)] = y
                lens[(node.name, k)] = _lengths_for(y, L)
            for ref in self.free_after.get(i, ()):
                values.pop(ref, None)
        return [values[ref] for ref in g.outputs], states_out


def _lengths_for(y, L):
    """A mask only travels with a tensor that still has a time axis of matching batch."""
    if L is None or isinstance(y, _Tokens):
        return L
    return L if (y.ndim >= 3 or (y.ndim == 2 and y.dtype.kind in "iu")) else None


def _masked_recurrent(backend, layer, x, tokens, mask, state, threads):
    """A recurrent layer under a (B, T) mask that is not right padding: each row's real steps
    packed to the left (a gather of x, or of the token ids of a folded embedding), run with
    lengths = their counts, the outputs put back at their positions (expand_compacted)."""
    order, lengths = compact(mask)
    if tokens is not None:
        x = np.take_along_axis(tokens[1], order, axis=1)
        tokens = (tokens[0], x)
    else:
        x = np.take_along_axis(x, order[:, :, None], axis=1)
    y, st = backend.recurrent(layer, x, lengths, state, threads=threads, tokens=tokens)
    if layer.return_sequences:
        y = expand_compacted(layer, y, mask)
    return y, st


def _empty_recurrent(layer, x):
    T = x.shape[1]
    F = layer.output_size
    out = np.zeros((0, T, F) if layer.return_sequences else (0, F), f32)
    shapes = layer.state_shapes(0)
    st = tuple(np.zeros(s, f32) for s in shapes)
    return out, (st if layer.cell == "lstm" else st[0])


# =============================================================================================
# summary
# =============================================================================================

def summary_rows(graph: Graph):
    """(layer (type), output shape, params, connected to) per node; a shared layer's parameters
    are counted at its first node only (as Keras does)."""
    rows, seen = [], set()
    for i in graph.inputs:
        rows.append((f"{i.name} (InputLayer)", shape_str(i.shape), "0", ""))
    for n in graph.nodes:
        k = graph.num_outputs[n.name]
        shapes = [graph.shapes[(n.name, j)] for j in range(k)]
        shown = shape_str(shapes[0]) if k == 1 else "[" + ", ".join(shape_str(s) for s in shapes) + "]"
        params = 0 if id(n.layer) in seen else n.layer.count_params()
        seen.add(id(n.layer))
        rows.append((f"{n.name} ({type_name(n.layer)})", shown, f"{params:,}",
                     ", ".join(ref_str(r) for r in n.inputs)))
    return rows


__all__ = ["Graph", "GraphBuilder", "Node", "Input", "Plan", "chain", "optimize", "remove_identities", "fuse_dense_activation",
           "AXIS_FUNCTIONS"]
