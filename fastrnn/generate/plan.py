"""The generation plan: the model in the form the compiled loop wants (built once per model).

Models understood: ``[Embedding] -> recurrent layers -> Dense``. The recurrent layers are
unidirectional RNN/LSTM/GRU layers returning sequences (any options of fastrnn.layers:
projections, peepholes, clipping, activations); the Dense (linear, softmax or log_softmax, whose
input is then taken as the logits: the same distribution) maps every step to the vocabulary.
The model's graph is first simplified by fastrnn.graph's passes (Dropout removed, a Dense followed
by its activation fused), so a PyTorch chain Embedding -> LSTM -> Dropout -> Linear -> LogSoftmax
generates as the plain chain does. Without an Embedding the first
recurrent layer takes one-hot vectors of the vocabulary.

Other causal graphs generate step by step (fastrnn.generate.stepwise); generation_plan picks.

Weight storage (``weights=``): "float32" (default, the model as it is), "float16", "int8" or
"auto". The matrices read at every step are rounded once (to half precision, or to int8 with one
scale per output row), which halves or quarters the bytes streamed per token. int8 is faster at
batch 1 (the step is memory-bound). float16 is not always faster: each weight is converted back
to float32 on the critical path, which costs more than it saves when the float32 weights already
come from a large cache (measured slower than float32 for gen512 on a Zen 5 with a 32 MB L3).
"auto" measures float32 against float16 once per model on this machine (a few short greedy
generations, interleaved) and keeps the faster. float16 changes logits by about 1e-3 of
their range, int8 by about 1e-2 (bits per character of the bundled model: bench/bench_generate.py
--accuracy). All engines compute with the same rounded weights; for int8 the C and Numba loops
also quantize each matmul input to int16 on the fly (exact integer sums), while the NumPy
reference multiplies the dequantized weights in float (they agree to about 1e-4 of the logits'
range; a few 1e-3 after long prompts).

``weights`` left at None and "auto" are resolved by fastrnn.generate.run.default_weights.
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from ..layers import Dense, DirectionWeights, Embedding, Recurrent
from ..quantize import int8_rule, int8_slice
from .stepwise import StepGraphPlan, causal_problem

f32 = np.float32

WEIGHT_KINDS = ("float32", "float16", "int8")


def to_half(a, name="weights"):
    """float32 values rounded to the nearest float16 (kept as float32), None stays None."""
    if a is None:
        return None
    if a.size and float(np.abs(a).max()) > 65504.0:
        raise ValueError(f"{name} has weights beyond the float16 range (65504); use weights='float32'")
    return np.ascontiguousarray(a.astype(np.float16).astype(f32))


def to_int8(a, exact=None):
    """a (N, K) float32 -> (q int8 (N, K), scale float32 (N,)); the same rule as int8 model
    files (fastrnn.quantize.int8_rule), so weights read from such a file are kept, and the exact
    integers of other tools' int8 weights when given (``exact``: the layer's Int8Weights)."""
    return int8_rule(a, exact)


class Matrix:
    """One matrix of the loop, out = W @ in: ``values`` (N, K) float32 are the weights every
    engine computes with (for int8, scale * q rounded to float32); ``q``/``scale`` for int8
    (``int8``: the matrix's exact int8 form from its layer, fastrnn.layers.Int8Weights, or None)."""

    __slots__ = ("values", "q", "scale")

    def __init__(self, a, weights, name, int8=None):
        a = np.ascontiguousarray(a, dtype=f32)
        self.q = self.scale = None
        if weights == "float16":
            self.values = to_half(a, name)
        elif weights == "int8":
            self.q, self.scale = to_int8(a, int8)
            self.values = np.ascontiguousarray(self.q.astype(f32) * self.scale[:, None])
        else:
            self.values = a

    @property
    def shape(self):
        return self.values.shape


class LayerPlan:
    """One recurrent layer for the generation loop (fields as gen_layer in generate_core.h).

    w_a (NA, K): rnn/lstm [W_ih | W_hh] (G*H rows), gru rows r|z of [W_ih | W_hh]; the first
    layer keeps only the W_hh part (its input part is in the table). b_a: bias of those rows (None
    for the first layer). GRU: w_xn (H, I) W_in and b_xn (not first), w_hn (H, H) W_hn, b_hn.
    LSTM: w_hr (P, H) projection, peephole (3, H). acts int32 (3,), act_params float32 (3, 2).
    Matrices are Matrix objects (or None); ``layer`` is the Recurrent layer whose weights are
    exactly the matrices' values (the model's own layer for float32), used by the NumPy engine.
    """

    def __init__(self, layer: Recurrent, first: bool, h_offset: int, c_offset: int, weights="float32"):
        w = layer.directions[0]
        G, H, Ho = layer.gates, layer.hidden_size, layer.output_size_per_direction
        I = layer.input_size
        self.cell = layer.cell
        self.input_size = 0 if first else I
        self.hidden_size = H
        self.output_size = Ho
        self.h_offset = h_offset
        self.c_offset = c_offset
        zeros = np.zeros(G * H, f32)
        b_ih = zeros if w.b_ih is None else w.b_ih
        b_hh = zeros if w.b_hh is None else w.b_hh
        rows = slice(0, 2 * H) if layer.cell == "gru" else slice(0, G * H)
        name = layer.name
        if first:
            self.w_a = Matrix(w.w_hh[rows], weights, name, int8_slice(w.int8_of("w_hh"), rows))
            self.b_a = None
        else:  # (rows of [W_ih | W_hh] take one scale each: the rule's, over both parts)
            self.w_a = Matrix(np.concatenate([w.w_ih[rows], w.w_hh[rows]], axis=1), weights, name)
            self.b_a = np.ascontiguousarray(b_ih[rows] + b_hh[rows])
        self.w_xn = self.b_xn = self.w_hn = self.b_hn = None
        if layer.cell == "gru":
            if not first:
                self.w_xn = Matrix(w.w_ih[2 * H:], weights, name, int8_slice(w.int8_of("w_ih"), slice(2 * H, None)))
                self.b_xn = np.ascontiguousarray(b_ih[2 * H:])
            self.w_hn = Matrix(w.w_hh[2 * H:], weights, name, int8_slice(w.int8_of("w_hh"), slice(2 * H, None)))
            self.b_hn = np.ascontiguousarray(b_hh[2 * H:])
        self.w_hr = None if w.w_hr is None else Matrix(w.w_hr, weights, name, w.int8_of("w_hr"))
        self.peephole = None if w.peephole is None else np.ascontiguousarray(w.peephole)
        acts = list(layer.activations) + [layer.activations[-1]] * (3 - len(layer.activations))
        self.acts = np.array([a.code for a in acts], np.int32)
        self.act_params = np.array([[a.alpha, a.beta] for a in acts], f32)
        self.clip = float("inf") if layer.clip is None else float(layer.clip)
        self.input_forget = int(layer.input_forget)
        self.linear_before_reset = int(layer.linear_before_reset)
        self.original = layer
        if weights == "float32":
            self.layer = layer
        else:  # the layer with the rounded matrices put back (the first W_ih stays: it is in the table)
            a = self.w_a.values
            x_part = w.w_ih if first else a[:, :I]
            h_part = a if first else a[:, I:]
            if layer.cell == "gru":
                x_part = x_part if first else np.concatenate([x_part, self.w_xn.values])
                h_part = np.concatenate([h_part, self.w_hn.values])
            rounded = DirectionWeights(w_ih=x_part, w_hh=h_part, b_ih=w.b_ih, b_hh=w.b_hh,
                                       w_hr=None if self.w_hr is None else self.w_hr.values, peephole=w.peephole)
            self.layer = dataclasses.replace(layer, directions=[rounded])

    def input_projection(self, x):
        """x (N, I) -> W_ih x + the biases that go with it (the first layer's table)."""
        layer, w = self.original, self.original.directions[0]
        G, H = layer.gates, layer.hidden_size
        zeros = np.zeros(G * H, np.float64)
        b_ih = zeros if w.b_ih is None else w.b_ih.astype(np.float64)
        b_hh = zeros if w.b_hh is None else w.b_hh.astype(np.float64)
        if layer.cell == "gru":  # b_hn stays inside the reset product
            b_hh = np.concatenate([b_hh[:2 * H], np.zeros(H)])
        # float64 sums of the exact float32 products, rounded once. einsum without `optimize` runs
        # NumPy's own loops, never BLAS: a BLAS call here started OpenBLAS's threads, which then
        # spun on the other core through the first generation calls (threads=1 was not one core,
        # and a split generation took the spinner for contention; issue 23)
        prod = np.einsum("vk,nk->vn", np.asarray(x, np.float64), w.w_ih.astype(np.float64), optimize=False)
        return (prod + b_ih + b_hh).astype(f32)


class GenerationPlan:
    """Checks that a model can generate and lays it out for the loop.

    weights: "float32" (the model as it is), "float16" or "int8": every matrix the loop streams
    at each step (recurrent W_hh, the W_ih of the layers above the first, projections, the output
    Dense) is rounded once, to float16 (half the bytes read per token) or to int8 with one scale
    per output row (a quarter). The C loop stores them compactly; the other engines compute with
    the same rounded values as float32. The embedding table stays float32.

    table (table_rows, G0*H0): W_ih E[v] + biases of the first layer for every input token v
    (the embedding folded into the first layer; one-hot inputs give W_ih[:, v] + biases).
    dense_w (V, K), dense_b (V,) or None: the output layer (its input taken as the logits).
    A row's state is one float32 vector of state_size: for every layer h (H_out), then c (H)
    for an LSTM, at the offsets of its LayerPlan.
    """

    def __init__(self, model, weights="float32"):
        if weights not in WEIGHT_KINDS:
            raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
        self.model = model
        self.weights = weights
        graph = model.plan().graph  # after the passes: Dropout gone, Dense + activation fused
        layers = [n.layer for n in graph.nodes]
        shape = " -> ".join(model.layer_type_name(layer) for layer in layers)
        need = ("generation needs a model [Embedding] -> recurrent layers -> Dense (over the vocabulary, "
                f"applied at every step); this model is {shape}")
        if not graph.is_chain():
            raise ValueError(f"{need}: generation runs a chain of layers (one input, one output, each layer "
                             f"reading the previous one); this model is a graph with inputs {model.input_names} "
                             f"and outputs {model.output_names}")
        causal = [n.name for n in graph.nodes if not getattr(n.layer, "per_step", False)
                  and not isinstance(n.layer, Recurrent)]
        if causal:
            raise ValueError(f"{need}: layer(s) {causal} mix time steps (they look at the whole sequence), so "
                             "the model cannot be run one token at a time")
        self.embedding = layers[0] if isinstance(layers[0], Embedding) else None
        body = layers[1:] if self.embedding is not None else layers
        if len(body) < 2 or not isinstance(body[-1], Dense) or not all(isinstance(x, Recurrent) for x in body[:-1]):
            raise ValueError(need)
        self.recurrent = body[:-1]
        self.dense = body[-1]
        for layer in self.recurrent:
            if layer.bidirectional or layer.reverse or layer.go_backwards:
                raise ValueError(f"{need}: layer {layer.name!r} does not run forward in time only "
                                 "(bidirectional / reverse / go_backwards cannot generate)")
            if not layer.return_sequences:
                raise ValueError(f"{need}: layer {layer.name!r} returns only its last state, so the Dense "
                                 "is not applied at every step")
        if self.dense.activation not in ("linear", "softmax", "log_softmax"):
            raise ValueError(f"{need}: the output Dense has activation {self.dense.activation!r}; "
                             "generation needs logits (linear) or (log-)probabilities (softmax, log_softmax)")
        self.vocab_size = V = self.dense.output_size
        first = self.recurrent[0]
        if self.embedding is None and first.input_size != V:
            raise ValueError(f"{need}: without an Embedding the first layer must take one-hot tokens "
                             f"({V} inputs), it takes {first.input_size}")
        self.table_rows = self.embedding.vocab_size if self.embedding is not None else V
        if V > self.table_rows:
            raise ValueError(f"{need}: the output has {V} tokens but the embedding only {self.table_rows} "
                             "rows, so a sampled token could not be fed back")
        vocab = model.vocabulary
        if vocab is not None and len(vocab) < V:
            raise ValueError(f"the output layer has {V} tokens but the vocabulary only {len(vocab)}: "
                             "sampled ids could not be decoded")
        self.layers = []
        offset = 0
        for i, layer in enumerate(self.recurrent):
            h_offset = offset
            offset += layer.output_size_per_direction
            c_offset = -1
            if layer.cell == "lstm":
                c_offset = offset
                offset += layer.hidden_size
            self.layers.append(LayerPlan(layer, i == 0, h_offset, c_offset, weights))
        self.state_size = offset
        if self.embedding is not None:
            self.table = self.layers[0].input_projection(self.embedding.weight)
        else:
            self.table = self.layers[0].input_projection(np.eye(V, dtype=f32))
        self.dense_w = Matrix(self.dense.weight, weights, self.dense.name, self.dense.int8)
        self.dense_b = None if self.dense.bias is None else np.ascontiguousarray(self.dense.bias)
        self.compiled = {}  # engine name -> the engine's packed form
        self._lock = threading.Lock()

    def engine_for(self, engine):
        """The engine that runs this plan: the backend's own compiled loop."""
        return engine

    def compiled_for(self, engine):
        entry = self.compiled.get(engine.name)
        if entry is None:
            with self._lock:
                entry = self.compiled.get(engine.name)
                if entry is None:
                    entry = engine.compile(self)
                    self.compiled[engine.name] = entry
        return entry

    def initial_rows(self, initial_state, batch, rows_state):
        """``initial_state`` as in Model.predict (checked) -> rows_state (batch, S) in place."""
        self.state_to_rows(self.model._check_states(initial_state, batch), rows_state)

    def state_to_rows(self, states, rows_state):
        """Model.predict-style states (checked) -> rows_state (B, S) in place."""
        for lp, st in zip(self.layers, states):
            if st is None:
                continue
            h, c = (st if lp.cell == "lstm" else (st, None))
            rows_state[:, lp.h_offset:lp.h_offset + lp.output_size] = h[0]
            if c is not None:
                rows_state[:, lp.c_offset:lp.c_offset + lp.hidden_size] = c[0]

    def rows_to_state(self, rows_state):
        """rows_state (B, S) -> Model.predict-style states: per layer h (1, B, H_out) or (h, c)."""
        out = []
        for lp in self.layers:
            h = np.ascontiguousarray(rows_state[None, :, lp.h_offset:lp.h_offset + lp.output_size])
            if lp.cell == "lstm":
                out.append((h, np.ascontiguousarray(rows_state[None, :, lp.c_offset:lp.c_offset + lp.hidden_size])))
            else:
                out.append(h)
        return out


_plan_lock = threading.Lock()


def generation_plan(model, weights="float32"):
    """The model's generation plan for ``weights``, built on first use and cached on the model:
    the compiled chain's GenerationPlan, or for another causal graph fastrnn.stepwise's plan
    (float32 weights only)."""
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    key = id(model.plan())
    plans = model.__dict__.setdefault("_generation_plans", {})
    entry = plans.get(weights)
    if entry is None or entry[0] != key:
        with _plan_lock:
            entry = plans.get(weights)
            if entry is None or entry[0] != key:
                entry = (key, _build_generation_plan(model, weights))
                plans[weights] = entry
    return entry[1]


def _build_generation_plan(model, weights):
    try:
        return GenerationPlan(model, weights)
    except ValueError as chain_error:
        problem = causal_problem(model)
        if problem is None and weights != "float32" and model.metadata.get("quantized") != weights:
            problem = f"weights={weights!r} needs the compiled chain; a causal graph generates with float32 weights"
        if problem is None:
            try:
                return StepGraphPlan(model)
            except ValueError as exc:
                problem = str(exc)
        if model.is_chain():
            if problem and "padded prefix" in problem:  # a last-state chain: say when it could generate
                raise ValueError(f"{chain_error}; {problem.split('; ', 1)[1]}") from None
            raise  # the chain's own reason says it best
        raise ValueError(f"{chain_error}; nor can it generate step by step: {problem}") from None
