"""Unrolled RNNs rolled back into RNN nodes: a rewrite of the ONNX graph before translation.

PyTorch's default (dynamo) exporter writes nn.LSTM and nn.GRU as ONNX LSTM / GRU nodes, but
nn.RNN as its decomposition, one group of nodes per time step of the example input:

    P   = Add(MatMul(X, W_ih^T), b_ih)                    X (T, B, I) time-major, P (T, B, H)
    S   = P, or Slice(P, -1, INT_MIN, axis 0, step -1)    (the reverse direction reads P flipped)
    x_t = Squeeze(Slice(S, t, t + 1, axis 0), 0)          for t = 0 .. T-1
    h_t = Tanh(Add(Add(MatMul(h_{t-1}, W_hh^T), b_hh), x_t))   (Relu for nonlinearity="relu")
    Concat(h_1 .. h_T, axis 0)   (h_T .. h_1 for the reverse direction: flipped back)

``reroll(g)`` finds each such chain and puts one ONNX RNN node in its place (W = W_ih, R = W_hh,
B = [b_ih | b_hh], initial_h = h_0), so the translator makes it one Recurrent layer that runs on
the compiled kernels. The chain's length T is the exporter's example length: the RNN node carries
it (attribute ``_unrolled_steps``) and rules_recurrent.py refuses the node unless X's time axis
has exactly that size (a graph whose time axis is only known at run time keeps the interpreter,
which runs the unrolled nodes as they are). A chain whose intermediate states are read by other
nodes is left alone.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .graph import Node, _toposort

ACTIVATIONS = {"Tanh": "Tanh", "Relu": "Relu"}
INT_MIN_BOUND = -(2 ** 31)  # a Slice end at or below this (PyTorch writes INT64_MIN) means "to the start"


def reroll(g):
    """-> the graph with every unrolled RNN chain replaced by an RNN node (``g`` itself when it has
    none)."""
    rw = _Rewrite(g)
    for node in list(g.nodes):
        if node.op_type == "Concat" and node.attrs.get("axis") == 0 and id(node) not in rw.removed:
            rw.try_chain(node)
    if not rw.new_nodes:
        return g
    nodes = [n for n in g.nodes if id(n) not in rw.removed] + rw.new_nodes
    nodes = _without_dead_nodes(nodes, {o.name for o in g.outputs})
    inits = {**g.initializers, **rw.new_inits}
    available = set(inits) | {i.name for i in g.inputs}
    return replace(g, nodes=_toposort(nodes, available, g.source), initializers=inits)


class _Rewrite:
    def __init__(self, g):
        self.g = g
        self.producer = {o: n for n in g.nodes for o in n.outputs if o}
        self.readers = {}
        for n in g.nodes:
            for i in n.inputs:
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.outputs}
        self.names = set(g.initializers) | {i.name for i in g.inputs} | set(self.producer) | {
            n.name for n in g.nodes}
        self.removed = set()  # id() of the nodes replaced
        self.new_nodes = []
        self.new_inits = {}

    # -- reading constants and simple patterns --------------------------------------------------
    def const(self, name):
        if name in self.g.initializers:
            return np.asarray(self.g.initializers[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant" and "value" in n.attrs:
            return np.asarray(n.attrs["value"])
        return None

    def ints(self, name):
        c = self.const(name) if name else None
        return None if c is None or not np.issubdtype(c.dtype, np.integer) else [int(v) for v in c.reshape(-1)]

    def slice_args(self, n):
        """A Slice's (starts, ends, axes, steps) as int lists (constants), or None."""
        if "starts" in n.attrs:
            return n.attrs["starts"], n.attrs["ends"], n.attrs.get("axes"), None
        args = [self.ints(n.inputs[k]) if k < len(n.inputs) and n.inputs[k] else None for k in range(1, 5)]
        if args[0] is None or args[1] is None:
            return None
        return tuple(args)

    def axes_of(self, n):
        if "axes" in n.attrs:
            return list(n.attrs["axes"])
        return self.ints(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None

    def step_input(self, name):
        """x_t = Squeeze(Slice(S, t, t+1, axis 0), 0) or Gather(S, t, axis 0) -> (S, t), or None."""
        n = self.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Gather" and n.attrs.get("axis", 0) == 0:
            idx = self.const(n.inputs[1])
            if idx is not None and idx.ndim == 0 and np.issubdtype(idx.dtype, np.integer) and idx >= 0:
                return n.inputs[0], int(idx)
            return None
        if n.op_type != "Squeeze" or self.axes_of(n) != [0]:
            return None
        s = self.producer.get(n.inputs[0])
        if s is None or s.op_type != "Slice":
            return None
        args = self.slice_args(s)
        if args is None:
            return None
        starts, ends, axes, steps = args
        if len(starts) != 1 or (axes or [0]) != [0] or (steps or [1]) != [1] or starts[0] < 0 \
                or ends[0] != starts[0] + 1:
            return None
        return s.inputs[0], starts[0]

    def flipped(self, name):
        """S = Slice(P, -1, INT_MIN, axis 0, step -1) -> P, or None."""
        n = self.producer.get(name)
        if n is None or n.op_type != "Slice":
            return None
        args = self.slice_args(n)
        if args is None:
            return None
        starts, ends, axes, steps = args
        if starts == [-1] and len(ends) == 1 and ends[0] <= INT_MIN_BOUND and (axes or [0]) == [0] and steps == [-1]:
            return n.inputs[0]
        return None

    def linear(self, name, rows_of):
        """``name`` = Add(MatMul(v, W), b) | Add(b, MatMul(v, W)) | MatMul(v, W) with W (K, N) and b (N,)
        constants -> (v, W, b or None, [nodes]); None otherwise. ``rows_of``: v's name must be that
        (None: any)."""
        n = self.producer.get(name)
        if n is None:
            return None
        bias, nodes = None, [n]
        if n.op_type == "Add":
            for m_name, b_name in (n.inputs, n.inputs[::-1]):
                m = self.producer.get(m_name)
                b = self.const(b_name)
                if m is not None and m.op_type == "MatMul" and b is not None and b.ndim == 1:
                    n, bias = m, b
                    nodes.append(m)
                    break
            else:
                return None
        if n.op_type != "MatMul":
            return None
        w = self.const(n.inputs[1])
        if w is None or w.ndim != 2 or (bias is not None and bias.shape[0] != w.shape[1]):
            return None
        if rows_of is not None and n.inputs[0] != rows_of:
            return None
        return n.inputs[0], w, bias, nodes

    # -- one chain ------------------------------------------------------------------------------
    def step(self, h_name):
        """h_t = act(Add(recurrent term, x_t)) -> (act, h_{t-1}, W_hh^T, b_hh, S, t, [nodes]), or None."""
        act = self.producer.get(h_name)
        if act is None or act.op_type not in ACTIVATIONS:
            return None
        add = self.producer.get(act.inputs[0])
        if add is None or add.op_type != "Add" or len(add.inputs) != 2:
            return None
        for r_name, x_name in (add.inputs, add.inputs[::-1]):
            x = self.step_input(x_name)
            lin = self.linear(r_name, None)
            if x is not None and lin is not None:
                h_prev, w, b, nodes = lin
                return act.op_type, h_prev, w, b, x[0], x[1], [act, add] + nodes
        return None

    def try_chain(self, concat):
        states = list(concat.inputs)
        T = len(states)
        if T == 0 or len(set(states)) != T:
            return
        steps = [self.step(h) for h in states]
        if any(s is None for s in steps):
            return
        if {s[0] for s in steps} != {steps[0][0]} or len({s[4] for s in steps}) != 1:
            return
        source = steps[0][4]
        # which end of the Concat is the chain's first step: its index 0 reads the other end's state
        for order in (list(range(T)), list(range(T - 1, -1, -1))):
            chain = [steps[k] for k in order]
            names = [states[k] for k in order]
            if [c[5] for c in chain] == list(range(T)) and all(
                    chain[k][1] == names[k - 1] for k in range(1, T)):
                break
        else:
            return
        forward = order[0] == 0
        p_name = source if forward else self.flipped(source)
        if p_name is None:  # a forward Concat over a flipped sequence (or the reverse): not torch's pattern
            return
        w_hh, b_hh = chain[0][2], chain[0][3]
        if any(not np.array_equal(c[2], w_hh) or (c[3] is None) != (b_hh is None)
               or (b_hh is not None and not np.array_equal(c[3], b_hh)) for c in chain):
            return
        H = w_hh.shape[1]
        if w_hh.shape != (H, H):
            return
        # the intermediate states feed only the next step and the Concat; the last one may feed more
        chain_nodes = {id(n) for c in chain for n in c[6]}
        for k, name in enumerate(names[:-1]):
            if name in self.outputs or any(id(r) not in chain_nodes and r is not concat
                                           for r in self.readers.get(name, ())):
                return
        for c in chain:
            for n in c[6][1:]:  # the Add / MatMul nodes of the step are read by the step only
                if any(o in self.outputs or any(id(r) not in chain_nodes for r in self.readers.get(o, ()))
                       for o in n.outputs if o):
                    return
        # the input projection: P = X W_ih^T + b_ih (else P itself is the input, W = identity)
        proj = self.linear(p_name, None)
        if proj is not None and proj[1].shape[1] == H:
            x_name, w_ih, b_ih = proj[0], proj[1], proj[2]
        else:
            x_name, w_ih, b_ih = p_name, np.eye(H, dtype=np.float32), None
        bias = np.concatenate([np.zeros(H, np.float32) if b_ih is None else b_ih,
                               np.zeros(H, np.float32) if b_hh is None else b_hh]).astype(np.float32)
        base = self.fresh(concat.name or "unrolled_rnn")
        w_name, r_name, b_name = self.fresh(base + "/W"), self.fresh(base + "/R"), self.fresh(base + "/B")
        self.new_inits[w_name] = np.ascontiguousarray(w_ih.T[None], np.float32)  # (1, H, I)
        self.new_inits[r_name] = np.ascontiguousarray(w_hh.T[None], np.float32)  # (1, H, H)
        self.new_inits[b_name] = bias[None]  # (1, 2H)
        y_name = self.fresh(base + "/Y")
        rnn = Node("RNN", self.fresh(base + "/rnn"), [x_name, w_name, r_name, b_name, "", chain[0][1]],
                   [y_name, names[-1]],
                   {"hidden_size": H, "direction": "forward" if forward else "reverse",
                    "activations": [chain[0][0]], "_unrolled_steps": T, "_opset": self.g.opset})
        squeeze_attrs = {"_opset": self.g.opset}
        squeeze_inputs = [y_name]
        if self.g.opset >= 13:
            axes_name = self.fresh(base + "/axes")
            self.new_inits[axes_name] = np.array([1], np.int64)
            squeeze_inputs.append(axes_name)
        else:
            squeeze_attrs["axes"] = [1]
        squeeze = Node("Squeeze", self.fresh(base + "/squeeze"), squeeze_inputs, list(concat.outputs), squeeze_attrs)
        self.new_nodes += [rnn, squeeze]
        self.removed |= chain_nodes | {id(concat)}

    def fresh(self, base):
        name, k = base, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name


def _without_dead_nodes(nodes, graph_outputs):
    """Drop the nodes none of whose outputs is read (repeatedly): the per-step slices the rewrite
    left unread."""
    while True:
        read = set(graph_outputs)
        for n in nodes:
            read.update(i for i in n.inputs if i)
        kept = [n for n in nodes if any(o in read for o in n.outputs if o)]
        if len(kept) == len(nodes):
            return nodes
        nodes = kept
