"""Text generation: sample continuations of a prompt from a recurrent language model.

    import fastrnn
    from fastrnn.generate import bundled_model
    model = bundled_model()                       # the character LSTM shipped in fastrnn/data
    model.generate("def ", max_new_tokens=200, temperature=0.8, seed=1)
    for piece in model.generate("def ", stream=True, seed=1):
        print(piece, end="", flush=True)
    model.generate(["def ", "class "], seed=1)    # a batch, decoded together in lockstep
    s = model.session(seed=1); s.feed("import "); s.probabilities(); s.sample(); s.generate(20)

Models understood: ``[Embedding] -> recurrent layers -> Dense``. The recurrent layers are
unidirectional RNN/LSTM/GRU layers returning sequences (any options of fastrnn.layers:
projections, peepholes, clipping, activations); the Dense (linear, softmax or log_softmax, whose
input is then taken as the logits: the same distribution) maps every step to the vocabulary.
The model's graph is first simplified by fastrnn.graph's passes (Dropout removed, a Dense followed
by its activation fused), so a PyTorch chain Embedding -> LSTM -> Dropout -> Linear -> LogSoftmax
generates as the plain chain does. Without an Embedding the first
recurrent layer takes one-hot vectors of the vocabulary.

Semantics (decisions where the issue is open):
- The result is the continuation only, not the prompt, in the prompt's kind: a str for a str,
  a list of ids for a list of ids (an array for an array), a list of those for a batch.
- ``stop``: a string, a token id, a list of ids (a sequence of several tokens) inside a list,
  or a list mixing those. Strings are turned into tokens with the model's vocabulary (a stop
  containing a symbol outside it can never occur and is ignored); matching is on tokens and only
  inside the generated part (not across the prompt). Generation ends at the first match and the
  stop text is NOT kept in the output (when several stops end there, the longest is removed).
  ``max_new_tokens`` counts the stop tokens too. Streaming holds back a tail that could still
  become a stop, so the pieces always add up to the non-streamed result.
- ``seed``: an int gives every row the same generator, so a row's output equals running its
  prompt alone with that seed (identical prompts give identical rows: pass one seed per row, a
  list, to get different samples); None draws a fresh seed per row.
- Streaming a batch yields, per step, a list with one piece per row ("" or [] when a row
  produced nothing visible).
- Defaults (one set for Python and the command line): ``GENERATION_DEFAULTS`` (200 new
  tokens, temperature 0.8, no top-k / top-p / repetition penalty), overridden by the values a
  model file recommends in its metadata ``"generation"`` (a dict with any of those keys, e.g.
  ``{"temperature": 0.7, "top_k": 40}``), overridden by the arguments of the call. A parameter
  left at None takes the default; top_k=0, top_p=1 and repetition_penalty=1 switch a
  recommended setting off.
- A prompt is never empty; ``initial_state`` (as in Model.predict, batch = number of prompts)
  starts the recurrent layers from that state instead of zeros.

Logit processing, in float64 on the model's float32 logits, in this order
(../shared/CONVENTIONS.md):
1. repetition penalty (CTRL): for every distinct token already fed or sampled in this row, a
   positive logit is divided by the penalty, a negative one multiplied;
2. temperature: y = (x - max x) / T (the shift changes nothing but keeps exp finite); T = 0 is
   greedy: the first largest penalised logit, nothing else applies and no random number is used;
3. top-k: keep y >= the k-th largest y (ties kept);
4. top-p: with e = exp(y) and Z = sum(e) in index order, walk the tokens by decreasing e; the
   first whose running sum reaches p * Z is kept with everything at least as likely (ties kept);
5. sample by inverse CDF: u in [0, 1) from the row's generator; the first token (index order)
   whose running sum of e exceeds u * sum(e).
The random numbers come from SplitMix64 (a 64-bit counter through a mixer), implemented
identically here, in C (kernels/generate_core.c) and in Numba (kernels/numba_generate.py); one
number per sampled token. Backends compute the same logits up to float32 rounding (about 1e-6),
so the same seed gives the same tokens on every backend except when a draw falls within that
rounding of a boundary between two tokens; within one backend the result does not depend on
streaming, batching or threads.

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

Engines: the C loop (kernels/generate_core.c via _cygenerate), its Numba twin
(kernels/numba_generate.py) and the NumPy reference loop below, chosen like fastrnn's backends.
The functions ``process_logits`` and ``sample_token`` below, with the ``numpy`` engine's loop,
are the reference every compiled engine is tested against.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import secrets
import time
import sys
import threading

import numpy as np

from .. import reference
from ..layers import Dense, DirectionWeights, Embedding, Recurrent
from ..textio import ERRORS

f32 = np.float32

# columns of the per-row status array (kernels/generate_core.h)
POS, LEN, NOUT, HAS_LOGITS, FINISHED, STOP_LEN, BAD_LOGITS, LIMIT = range(8)
STATUS_COLS = 8

# A penalty far from 1 divides or multiplies logits into overflow (1e-320 gave NaN probabilities);
# useful values are around 1.0-2.0.
REPETITION_PENALTY_RANGE = (0.01, 100.0)

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15

BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "char_lstm.safetensors")

# The defaults of generate(), Model.generate, Session and `fastrnn generate` (see the module doc);
# a model's metadata "generation" overrides them for that model.
GENERATION_DEFAULTS = {"max_new_tokens": 200, "temperature": 0.8, "top_k": None, "top_p": None,
                       "repetition_penalty": None}


# =============================================================================================
# The NumPy reference: random numbers, logit processing, sampler
# =============================================================================================

def splitmix64(state: int):
    """One SplitMix64 draw: (new_state, u) with u in [0, 1) (53 bits)."""
    state = (state + GOLDEN_GAMMA) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return state, (z >> 11) * 2.0 ** -53


class Sampling:
    """Validated sampling parameters; ``as_tuple()`` is what the kernels take."""

    __slots__ = ("temperature", "top_k", "top_p", "repetition_penalty")

    def __init__(self, temperature=1.0, top_k=None, top_p=None, repetition_penalty=None):
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
        temperature = float(temperature)
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
        if top_k is None:
            top_k = 0
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 or None = off), got {top_k!r}")
        if top_p is None:
            top_p = 1.0
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not (0.0 < float(top_p) <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 or None = off), got {top_p!r}")
        if repetition_penalty is None:
            repetition_penalty = 1.0
        lo, hi = REPETITION_PENALTY_RANGE
        if (isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, numbers.Real)
                or not (lo <= float(repetition_penalty) <= hi)):
            raise ValueError(f"repetition_penalty must be a number in [{lo}, {hi}] (1 or None = off; values "
                             f"above 1 discourage repeats), got {repetition_penalty!r}")
        self.temperature = temperature
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.repetition_penalty = float(repetition_penalty)

    def as_tuple(self):
        return (self.temperature, self.top_k, self.top_p, self.repetition_penalty)

    def __repr__(self):
        return ("Sampling(temperature={}, top_k={}, top_p={}, repetition_penalty={})"
                .format(*self.as_tuple()))


def process_logits(logits, sampling: Sampling, seen=None) -> np.ndarray:
    """The reference logit processing. logits (V,) float32, seen (V,) bool/uint8 or None
    (tokens already fed or sampled) -> (V,) float64 processed logits, -inf where masked.
    Greedy (temperature 0): the penalised logits, nothing masked."""
    x = np.asarray(logits, dtype=f32).astype(np.float64)
    V = x.shape[0]
    r = sampling.repetition_penalty
    if seen is not None and r != 1.0:
        s = np.asarray(seen).astype(bool)
        x[s] = np.where(x[s] > 0, x[s] / r, x[s] * r)
    if sampling.temperature == 0.0:
        return x
    y = (x - x.max()) / sampling.temperature
    k = sampling.top_k
    if 0 < k < V:
        kth = np.partition(y, V - k)[V - k]  # the k-th largest
        y[y < kth] = -np.inf
    if sampling.top_p < 1.0:
        e = np.exp(y)
        total = np.cumsum(e)[-1]  # sequential sum in index order (np.sum is pairwise)
        desc = np.sort(e)[::-1]
        cum = np.cumsum(desc)
        m = int(np.searchsorted(cum, sampling.top_p * total, side="left"))  # first cum >= p * Z
        if m < V:
            y[e < desc[m]] = -np.inf
    return y


def sample_processed(y, u: float) -> int:
    """Inverse CDF over processed logits y (V,) float64 with u in [0, 1)."""
    e = np.exp(y)
    cum = np.cumsum(e)
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))  # first cum > u * total
    if i >= len(y):  # u * total rounded up to total
        i = int(np.nonzero(e > 0)[0][-1])
    return i


def sample_token(logits, sampling: Sampling, seen=None, rng_state: int = 0):
    """The reference sampler: (token, new_rng_state). Greedy uses no random number."""
    y = process_logits(logits, sampling, seen)
    if sampling.temperature == 0.0:
        return int(np.argmax(y)), rng_state
    rng_state, u = splitmix64(rng_state)
    return sample_processed(y, u), rng_state


def probabilities(logits, sampling: Sampling, seen=None) -> np.ndarray:
    """The distribution a token is drawn from: (V,) float64 (one-hot at the argmax when greedy)."""
    y = process_logits(logits, sampling, seen)
    if sampling.temperature == 0.0:
        p = np.zeros(len(y))
        p[int(np.argmax(y))] = 1.0
        return p
    e = np.exp(y)
    return e / np.cumsum(e)[-1]


# =============================================================================================
# The generation plan: the model in the form the loop wants (built once per model)
# =============================================================================================

WEIGHT_KINDS = ("float32", "float16", "int8")


def to_half(a, name="weights"):
    """float32 values rounded to the nearest float16 (kept as float32), None stays None."""
    if a is None:
        return None
    if a.size and float(np.abs(a).max()) > 65504.0:
        raise ValueError(f"{name} has weights beyond the float16 range (65504); use weights='float32'")
    return np.ascontiguousarray(a.astype(np.float16).astype(f32))


def to_int8(a):
    """a (N, K) float32 -> (q int8 (N, K), scale float32 (N,)); the same rule as int8 model
    files (fastrnn.formats.native.quantize_int8), so weights read from such a file are kept."""
    from ..formats.native import quantize_int8

    return quantize_int8(a)


AUTO_MARGIN = 0.95  # "auto" takes float16 only when it is at least 5% faster than float32


def _measure_auto(model):
    """float32 or float16, whichever generates faster here (median of interleaved runs)."""
    import statistics
    import time

    from ..backends import get_backend

    if get_backend().name != "cython" or not model.takes_tokens:
        return "float32"
    times = {"float32": [], "float16": []}
    for rep in range(6):  # the first round warms up (packs the plans)
        for kind in (("float32", "float16") if rep % 2 else ("float16", "float32")):
            t0 = time.perf_counter()
            generate(model, [0], max_new_tokens=24, temperature=0, weights=kind, threads=1)
            if rep:
                times[kind].append(time.perf_counter() - t0)
    fast16 = statistics.median(times["float16"]) < AUTO_MARGIN * statistics.median(times["float32"])
    return "float16" if fast16 else "float32"


def default_weights(model, weights):
    """weights=None -> the kind the model file was quantized to ("float32" if it was not);
    "auto" -> that kind for a quantized model, else float32 or float16 by a measurement (once
    per model)."""
    if weights == "auto":
        kind = (model.metadata or {}).get("quantized")
        if kind in WEIGHT_KINDS:
            return kind
        if "_auto_weights" not in model.__dict__:
            model.__dict__["_auto_weights"] = _measure_auto(model)
        return model.__dict__["_auto_weights"]
    if weights is None:
        weights = (model.metadata or {}).get("quantized") or "float32"
        if weights not in WEIGHT_KINDS:  # e.g. bfloat16: the values are rounded already
            weights = "float32"
    return weights


class Matrix:
    """One matrix of the loop, out = W @ in: ``values`` (N, K) float32 are the weights every
    engine computes with (for int8, scale * q rounded to float32); ``q``/``scale`` for int8."""

    __slots__ = ("values", "q", "scale")

    def __init__(self, a, weights, name):
        a = np.ascontiguousarray(a, dtype=f32)
        self.q = self.scale = None
        if weights == "float16":
            self.values = to_half(a, name)
        elif weights == "int8":
            self.q, self.scale = to_int8(a)
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
            self.w_a = Matrix(w.w_hh[rows], weights, name)
            self.b_a = None
        else:
            self.w_a = Matrix(np.concatenate([w.w_ih[rows], w.w_hh[rows]], axis=1), weights, name)
            self.b_a = np.ascontiguousarray(b_ih[rows] + b_hh[rows])
        self.w_xn = self.b_xn = self.w_hn = self.b_hn = None
        if layer.cell == "gru":
            if not first:
                self.w_xn = Matrix(w.w_ih[2 * H:], weights, name)
                self.b_xn = np.ascontiguousarray(b_ih[2 * H:])
            self.w_hn = Matrix(w.w_hh[2 * H:], weights, name)
            self.b_hn = np.ascontiguousarray(b_hh[2 * H:])
        self.w_hr = None if w.w_hr is None else Matrix(w.w_hr, weights, name)
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
        return (np.asarray(x, np.float64) @ w.w_ih.T.astype(np.float64) + b_ih + b_hh).astype(f32)


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
        self.dense_w = Matrix(self.dense.weight, weights, self.dense.name)
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
        from .stepwise import StepGraphPlan, causal_problem

        problem = causal_problem(model)
        if problem is None and weights != "float32" and model.metadata.get("quantized") != weights:
            problem = f"weights={weights!r} needs the compiled chain; a causal graph generates with float32 weights"
        if problem is None:
            try:
                return StepGraphPlan(model)
            except ValueError as exc:
                problem = str(exc)
        if model.is_chain():
            raise  # the chain's own reason says it best
        raise ValueError(f"{chain_error}; nor can it generate step by step: {problem}") from None


# =============================================================================================
# Engines: one generation loop per backend, all with the same row buffers
# =============================================================================================

class Rows:
    """The caller-owned buffers of B rows (generate_core.h): kept between calls."""

    def __init__(self, plan: GenerationPlan, batch: int):
        V = plan.vocab_size
        self.state = np.zeros((batch, plan.state_size), f32)
        self.logits = np.zeros((batch, V), f32)
        self.seen = np.zeros((batch, V), np.uint8)
        self.rng = np.zeros(batch, np.uint64)
        self.status = np.zeros((batch, STATUS_COLS), np.int64)

    FIELDS = ("state", "logits", "seen", "rng", "status")

    def copy(self):
        new = object.__new__(Rows)
        for name in self.FIELDS:
            setattr(new, name, getattr(self, name).copy())
        return new

    def view(self, start, stop):
        """Rows start..stop-1 as views (C-contiguous: whole rows)."""
        new = object.__new__(Rows)
        for name in self.FIELDS:
            setattr(new, name, getattr(self, name)[start:stop])
        return new


def row_blocks(batch, threads):
    """Contiguous blocks of rows for up to ``threads`` threads, at least MIN_ROWS_PER_TASK rows
    each. A row's tokens never depend on the other rows, so neither does the split."""
    from ..backends import MIN_ROWS_PER_TASK

    n = max(1, min(threads, batch // MIN_ROWS_PER_TASK))
    edges = [batch * i // n for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


class NumpyRunner:
    """The reference generation loop: the lockstep step of generate_core.h, written plainly.
    Each row runs through fastrnn.reference one at a time, so batching cannot change a row."""

    def __init__(self, plan, sampling, stops, rows: Rows, prompt, out):
        self.plan = plan
        self.sampling = Sampling(*sampling)
        self.stops = [list(s) for s in stops_list(stops)]
        self.rows = rows
        self.prompt = prompt
        self.out = out

    def _feed(self, b, token):
        plan, state = self.plan, self.rows.state[b]
        if plan.embedding is not None:
            x = reference.embedding(plan.embedding, np.array([[token]]))[:, 0]
        else:
            x = np.zeros((1, plan.vocab_size), f32)
            x[0, token] = 1
        for lp in plan.layers:
            layer = lp.layer
            h = state[None, lp.h_offset:lp.h_offset + lp.output_size]
            c = state[None, lp.c_offset:lp.c_offset + lp.hidden_size] if lp.cell == "lstm" else None
            h_new, c_new = reference.cell_step(layer, layer.directions[0], x, h, c)
            state[lp.h_offset:lp.h_offset + lp.output_size] = h_new[0]
            if c_new is not None:
                state[lp.c_offset:lp.c_offset + lp.hidden_size] = c_new[0]
            x = h_new

    def _logits(self, b):
        plan = self.plan
        last = plan.layers[-1]
        h = self.rows.state[b, last.h_offset:last.h_offset + last.output_size]
        y = h @ plan.dense_w.values.T
        if plan.dense_b is not None:
            y = y + plan.dense_b
        return y.astype(f32)

    def run(self, max_steps):
        r, st, max_new = self.rows, self.rows.status, self.out.shape[1]
        V = self.plan.vocab_size
        for _ in range(max_steps):
            feed = []
            for b in range(st.shape[0]):
                if st[b, FINISHED]:
                    continue
                limit = min(int(st[b, LIMIT]), max_new)
                if st[b, HAS_LOGITS]:
                    if st[b, NOUT] >= limit:
                        st[b, FINISHED] = 1
                        continue
                    if not np.all(np.isfinite(r.logits[b])):  # the caller raises
                        st[b, FINISHED] = 1
                        st[b, BAD_LOGITS] = 1
                        continue
                    tok, rng = sample_token(r.logits[b], self.sampling, r.seen[b], int(r.rng[b]))
                    r.rng[b] = np.uint64(rng)
                    self.out[b, st[b, NOUT]] = tok
                    st[b, NOUT] += 1
                    st[b, HAS_LOGITS] = 0
                    r.seen[b, tok] = 1
                    stop_len = match_stop(self.stops, self.out[b, :st[b, NOUT]])
                    if stop_len or st[b, NOUT] >= limit:
                        st[b, FINISHED] = 1
                        st[b, STOP_LEN] = stop_len
                        continue
                    feed.append((b, tok))
                elif st[b, POS] < st[b, LEN]:
                    tok = int(self.prompt[b, st[b, POS]])
                    st[b, POS] += 1
                    if tok < V:
                        r.seen[b, tok] = 1
                    feed.append((b, tok))
                else:
                    st[b, FINISHED] = 1
            if not feed:
                break
            for b, tok in feed:
                self._feed(b, tok)
                if st[b, POS] >= st[b, LEN]:
                    r.logits[b] = self._logits(b)
                    st[b, HAS_LOGITS] = 1
        return int(np.count_nonzero(st[:, FINISHED] == 0))


def stops_list(stops):
    """(tokens int32, offsets int64) -> list of token arrays"""
    tokens, offsets = stops
    return [tokens[offsets[j]:offsets[j + 1]] for j in range(len(offsets) - 1)]


def match_stop(stops, out) -> int:
    """Length of the longest stop sequence that out ends with, 0 if none."""
    best, n = 0, len(out)
    for s in stops:
        L = len(s)
        if best < L <= n and list(out[n - L:]) == list(s):
            best = L
    return best


class NumpyEngine:
    name = "numpy"

    def compile(self, plan):
        return None

    def split_parts(self, plan, batch, threads):
        return 1

    def runner(self, plan, sampling, stops, rows, prompt, out):
        return NumpyRunner(plan, sampling, stops, rows, prompt, out)

    def process_logits(self, logits, seen, sampling):
        s = Sampling(*sampling)
        return np.stack([process_logits(logits[b], s, None if seen is None else seen[b])
                         for b in range(logits.shape[0])])

    def sample_logits(self, logits, seen, sampling, rng, draws=1):
        s = Sampling(*sampling)
        out = np.empty((logits.shape[0], draws), np.int32)
        for b in range(logits.shape[0]):
            state = int(rng[b])
            for d in range(draws):
                out[b, d], state = sample_token(logits[b], s, None if seen is None else seen[b], state)
            rng[b] = np.uint64(state)
        return out


class CompiledEngine:
    """The Cython (kernels/_cygenerate.pyx) or Numba (kernels/numba_generate.py) loop."""

    def __init__(self, name, module):
        self.name = name
        self.module = module

    def compile(self, plan):
        return self.module.CompiledModel(plan)

    def runner(self, plan, sampling, stops, rows, prompt, out, stop_state=None):
        """stops (tokens, offsets[, fail]) and stop_state: see _Job (the KMP form, Cython only)."""
        kw = {"stop_state": stop_state} if stop_state is not None else {}
        return self.module.Runner(plan.compiled_for(self), sampling, stops, rows.state, rows.logits, rows.seen,
                                  rows.rng, rows.status, prompt, out, **kw)

    def split_parts(self, plan, batch, threads):
        """Threads for one row split over the hidden units (generate_core.h, gen_run_split), or 1:
        batch 1, the Cython loop, float32 weights (float16/int8 slices are too small to pay for
        the barriers: measured slower), every layer's H a multiple of 16 and >= 64, no projection."""
        if batch != 1 or threads < 2 or plan.weights != "float32" or not hasattr(self.module, "SplitRunner"):
            return 1
        hidden = [lp.layer.hidden_size for lp in plan.layers]
        if any(h % 16 or h < 64 for h in hidden) or any(lp.layer.proj_size for lp in plan.layers):
            return 1
        return min(threads, min(hidden) // 16)

    def split_runner(self, plan, sampling, stops, rows, prompt, out, parts, stop_state=None):
        kw = {"stop_state": stop_state} if stop_state is not None else {}
        return self.module.SplitRunner(plan.compiled_for(self), sampling, stops, rows.state, rows.logits, rows.seen,
                                       rows.rng, rows.status, prompt, out, parts,
                                       max(lp.layer.hidden_size for lp in plan.layers), **kw)

    def process_logits(self, logits, seen, sampling):
        return self.module.process_logits(logits, seen, sampling)

    def sample_logits(self, logits, seen, sampling, rng, draws=1):
        return self.module.sample_logits(logits, seen, sampling, rng, draws)


_ENGINE_MODULES = {"cython": "fastrnn.kernels._cygenerate", "numba": "fastrnn.kernels.numba_generate"}
_engines = {}
_engine_errors = {}


def _load_engine(name):
    if name not in _engines:
        if name == "numpy":
            _engines[name] = NumpyEngine()
        else:
            import importlib

            try:
                _engines[name] = CompiledEngine(name, importlib.import_module(_ENGINE_MODULES[name]))
            except ImportError as exc:
                _engine_errors[name] = exc
                _engines[name] = None
    return _engines[name]


def get_engine(backend=None):
    """The generation loop of ``backend``. Without one, the current fastrnn backend's, falling
    back to the next (cython, numba, numpy) when its generation module is missing; a backend
    asked for by name must be there (RuntimeError otherwise)."""
    from ..backends import BACKEND_NAMES, get_backend

    name = backend if backend is not None else get_backend().name
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")
    if backend is not None:
        engine = _load_engine(name)
        if engine is None:
            raise RuntimeError(f"the {name} generation loop is not available here: {_engine_errors.get(name)}")
        return engine
    for candidate in BACKEND_NAMES[BACKEND_NAMES.index(name):]:
        engine = _load_engine(candidate)
        if engine is not None:
            return engine
    raise RuntimeError("no generation engine available")  # pragma: no cover - numpy always is


def available_engines():
    """Backends whose own generation loop can run here, fastest first (a superset of the
    backends in fastrnn.available_backends() that can generate)."""
    from ..backends import BACKEND_NAMES

    return [n for n in BACKEND_NAMES if _load_engine(n) is not None]


# =============================================================================================
# Input normalisation
# =============================================================================================

def _is_int(x):
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def _prompt_rows(model, plan, prompt):
    """prompt -> (list of int32 id arrays, batch?, kind in {'text', 'list', 'array'})"""
    if prompt is None:
        raise ValueError("empty prompt: give a str or a list of token ids")
    if isinstance(prompt, str):
        items, batch, kind = [prompt], False, "text"
    elif isinstance(prompt, np.ndarray):
        if prompt.ndim == 1:
            items, batch = [prompt], False
        elif prompt.ndim == 2:
            items, batch = list(prompt), True
        else:
            raise ValueError(f"a prompt array must be 1-D (ids) or 2-D (a batch of ids), got shape {prompt.shape}")
        kind = "array"
    elif isinstance(prompt, (list, tuple)):
        if len(prompt) == 0:
            raise ValueError("empty prompt: give at least one token or character")
        if all(isinstance(p, str) for p in prompt):
            items, batch, kind = list(prompt), True, "text"
        elif all(_is_int(p) for p in prompt):
            items, batch, kind = [list(prompt)], False, "list"
        elif all(isinstance(p, (list, tuple, np.ndarray)) for p in prompt):
            items, batch = list(prompt), True
            kind = "array" if all(isinstance(p, np.ndarray) for p in prompt) else "list"
        else:
            raise ValueError("a prompt is a str, a list of token ids, or a list of either (a batch); "
                             "this list mixes kinds")
    else:
        raise ValueError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
    rows = []
    for i, item in enumerate(items):
        where = f"prompt {i} of the batch" if batch else "prompt"
        if kind == "text":
            if model.vocabulary is None:
                raise ValueError("this model has no vocabulary, so it cannot read text: give the prompt as "
                                 "token ids (a list of ints)")
            if len(item) == 0:
                raise ValueError(f"{where} is empty: generation needs at least one character to start from")
            ids = model.vocabulary.encode(item)  # ValueError for a symbol outside it (no unk id)
            if len(ids) == 0:
                raise ValueError(f"{where} has no tokens")
        else:
            if isinstance(item, (list, tuple)) and all(_is_int(i) for i in item):
                bad = [i for i in item if not 0 <= i < plan.table_rows]
                if bad:
                    raise ValueError(f"{where}: token id {bad[0]} is outside the model's vocabulary "
                                     f"(valid: 0..{plan.table_rows - 1})")
            arr = np.asarray(item)
            if arr.ndim != 1:
                raise ValueError(f"{where}: token ids must be a flat list, got shape {arr.shape}")
            if arr.size == 0:
                raise ValueError(f"{where} is empty: generation needs at least one token to start from")
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{where}: token ids must be integers, got dtype {arr.dtype}")
            ids = arr
        ids = np.asarray(ids, np.int64)
        if ids.min() < 0 or ids.max() >= plan.table_rows:
            bad = ids[(ids < 0) | (ids >= plan.table_rows)][0]
            raise ValueError(f"{where}: token id {bad} is outside the model's vocabulary "
                             f"(valid: 0..{plan.table_rows - 1})")
        rows.append(ids.astype(np.int32))
    return rows, batch, kind


def _seeds(seed, batch):
    if seed is None:
        return [secrets.randbits(64) for _ in range(batch)]
    if _is_int(seed):
        return [int(seed) & MASK64] * batch
    if isinstance(seed, (list, tuple, np.ndarray)) and len(seed) == batch and all(_is_int(s) for s in seed):
        return [int(s) & MASK64 for s in seed]
    raise ValueError(f"seed must be an int, None, or a list of {batch} ints (one per prompt), got {seed!r}")


def _stops(model, plan, stop):
    """stop -> (tokens int32, offsets int64), see the module docstring"""
    if stop is None:
        seqs = []
    else:
        items = [stop] if isinstance(stop, (str,)) or _is_int(stop) else list(stop)
        seqs = []
        for item in items:
            if isinstance(item, str):
                if item == "":
                    raise ValueError("an empty stop string would stop at once; remove it")
                vocab = model.vocabulary
                if vocab is None:
                    raise ValueError("this model has no vocabulary: give stop sequences as token ids")
                ids = [vocab.index.get(piece) for piece in vocab.split(item)]
                if not ids or any(i is None or i >= plan.vocab_size for i in ids):
                    continue  # a symbol the model never produces: this stop cannot occur
                seqs.append(ids)
            elif _is_int(item) or (isinstance(item, (list, tuple, np.ndarray)) and len(item) > 0
                                   and all(_is_int(i) for i in item)):
                ids = [int(item)] if _is_int(item) else [int(i) for i in item]
                if any(i < 0 for i in ids):
                    raise ValueError(f"stop token ids must be >= 0, got {item!r}")
                if any(i >= plan.vocab_size for i in ids):
                    continue  # an id the model never produces: this stop cannot occur
                seqs.append(ids)
            else:
                raise ValueError(f"stop must be strings, token ids or lists of ids, got {item!r}")
    tokens = np.array([t for s in seqs for t in s], np.int32)
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    return tokens, offsets


def _count(n, name="max_new_tokens"):
    if not _is_int(n) or n < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
    return int(n)


def generation_defaults(model) -> dict:
    """GENERATION_DEFAULTS updated with ``model``'s recommended values (metadata "generation")."""
    defaults = dict(GENERATION_DEFAULTS)
    stored = (getattr(model, "metadata", None) or {}).get("generation")
    if stored is None:
        return defaults
    if not isinstance(stored, dict) or set(stored) - set(defaults):
        raise ValueError(f"model metadata 'generation' must be a dict with keys among {sorted(defaults)}, "
                         f"got {stored!r}")
    defaults.update(stored)
    try:
        _count(defaults["max_new_tokens"])
        Sampling(**{k: v for k, v in defaults.items() if k != "max_new_tokens"})
    except ValueError as exc:
        raise ValueError(f"model metadata 'generation' is invalid: {exc}") from None
    return defaults


def _with_defaults(model, **given) -> dict:
    """The arguments ``given`` with each None replaced by the model's default (generation_defaults)."""
    defaults = generation_defaults(model)
    return {k: defaults[k] if v is None else v for k, v in given.items()}


def check_arguments(model, max_new_tokens=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
                    stop=None, weights=None, threads=None):
    """Validate generation arguments without generating (the command line checks everything
    before it prints anything). Raises ValueError as generate() would."""
    from ..backends import check_threads

    kw = _with_defaults(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty)
    _count(kw.pop("max_new_tokens"))
    Sampling(**kw)
    plan = generation_plan(model, default_weights(model, weights))
    _stops(model, plan, stop)
    check_threads(threads)


# =============================================================================================
# A generation job: B rows through the loop, results and streamed pieces
# =============================================================================================

class _StopMatcher:
    """Incremental KMP over every stop sequence for one row: after feeding tokens, ``hold()`` is
    the longest proper prefix of a stop that the output ends with (tokens to hold back while
    streaming). Each token costs O(1) amortised per stop, so a very long stop stays linear."""

    def __init__(self, seqs):
        self.seqs = [s for s in seqs if len(s) > 1]
        self.fail = [self._failure(s) for s in self.seqs]
        self.state = [0] * len(self.seqs)

    @staticmethod
    def _failure(s):
        f = [0] * len(s)
        k = 0
        for i in range(1, len(s)):
            while k and s[i] != s[k]:
                k = f[k - 1]
            if s[i] == s[k]:
                k += 1
            f[i] = k
        return f

    def feed(self, tokens):
        for j, (s, f) in enumerate(zip(self.seqs, self.fail)):
            k, n = self.state[j], len(s)
            for t in tokens:
                if k == n:  # a whole match (the row ends there): continue as KMP does
                    k = f[k - 1]
                while k and t != s[k]:
                    k = f[k - 1]
                if t == s[k]:
                    k += 1
            self.state[j] = k

    def hold(self):
        return max((k if k < len(s) else f[k - 1] for k, s, f in zip(self.state, self.seqs, self.fail)), default=0)


class GenerationError(ValueError):
    """The model produced logits that cannot be sampled from (NaN or infinite)."""


class _Job:
    """One call of the loop over B rows: prompts, outputs, stop hold-back.

    The outputs live in a window of at most ``keep + OUT_BLOCK`` tokens per row (keep = the
    longest stop minus one), whatever ``max_new`` is: when a row fills its window, the tokens
    before its last ``keep`` are moved out (kept for the result, or dropped once streamed) and
    the row goes on, so a stream runs in memory independent of max_new_tokens.
    The loop runs in chunks of steps (about CHUNK_SECONDS each), so Ctrl-C is seen between
    chunks; the rows are then left at a step boundary and the model stays usable."""

    OUT_BLOCK = 4096
    CHUNK_SECONDS = 0.05

    def __init__(self, plan, engine, rows: Rows, prompts, sampling, stops, max_new, threads=1, collect=True):
        B = len(prompts)
        width = max((len(p) for p in prompts), default=0)
        self.prompt = np.zeros((B, max(width, 1)), np.int32)
        for b, p in enumerate(prompts):
            self.prompt[b, :len(p)] = p
        rows.status[:, POS] = 0
        rows.status[:, LEN] = [len(p) for p in prompts]
        rows.status[:, NOUT] = 0
        rows.status[:, FINISHED] = 0
        rows.status[:, STOP_LEN] = 0
        rows.status[:, BAD_LOGITS] = 0
        self.rows = rows
        self.stops = stops
        self.stop_seqs = [list(s) for s in stops_list(stops)]
        self.keep = max((len(s) for s in self.stop_seqs), default=1) - 1
        self.max_new = max_new
        self.out = np.zeros((B, min(max_new, self.keep + self.OUT_BLOCK)), np.int32)
        rows.status[:, LIMIT] = self.out.shape[1]
        self.base = [0] * B            # tokens of row b moved out of the window
        self.collect = collect
        self.flushed = [[] for _ in range(B)]  # those tokens, when collected for the result
        self.matchers = [_StopMatcher(self.stop_seqs) for _ in range(B)]
        self.matched = [0] * B         # tokens of the window fed to matchers[b]
        self.engine, self.plan, self.sampling = engine, plan, sampling.as_tuple()
        self.parts = engine.split_parts(plan, B, threads)
        self.split_runners = {}        # gang size -> SplitRunner
        # The Cython loop matches stops incrementally (KMP: per row and stop, the longest prefix
        # the output ends with), so a long stop costs O(1) per token; the others compare the end.
        self.kmp = None
        if getattr(getattr(engine, "module", None), "KMP_STOPS", False) and self.stop_seqs:
            fail = np.concatenate([_StopMatcher._failure(s) for s in self.stop_seqs]).astype(np.int32)
            self.stops = stops = (stops[0], stops[1], fail)
            self.kmp = np.zeros((B, len(self.stop_seqs)), np.int64)

        def kmp(a, b):
            return {} if self.kmp is None else {"stop_state": self.kmp[a:b]}
        self._kmp_rows = kmp
        if self.parts > 1:  # one row: the hidden units of every layer split across threads
            self.runners = [engine.runner(plan, self.sampling, stops, rows, self.prompt, self.out, **kmp(0, B))]
        else:
            self.runners = [engine.runner(plan, self.sampling, stops, rows.view(a, b), self.prompt[a:b],
                                          self.out[a:b], **kmp(a, b)) for a, b in row_blocks(B, threads)]
        self.threads = threads
        self.active = B
        self.steps = 16

    def _resumable(self, b):
        """Row b stopped only because its window is full (more tokens are due)."""
        st, W = self.rows.status[b], self.out.shape[1]
        return bool(st[FINISHED] and st[NOUT] == W and st[STOP_LEN] == 0 and not st[BAD_LOGITS]
                    and self.base[b] + W < self.max_new)

    def _make_room(self):
        """Rows that filled their window but must go on: keep the last ``keep`` tokens, feed
        the last one (the loop ends a full row without feeding its token) and un-finish."""
        st, W = self.rows.status, self.out.shape[1]
        for b in range(st.shape[0]):
            if not self._resumable(b):
                continue  # finished for good, or still going
            drop = W - self.keep
            self._feed_matcher(b)
            if self.collect:
                self.flushed[b].append(self.out[b, :drop].copy())
            last = int(self.out[b, W - 1])
            self.out[b, :self.keep] = self.out[b, drop:W].copy()
            self.base[b] += drop
            self.matched[b] -= drop
            self.prompt[b, 0] = last
            st[b, POS], st[b, LEN], st[b, HAS_LOGITS] = 0, 1, 0
            st[b, NOUT], st[b, FINISHED] = self.keep, 0
            st[b, LIMIT] = min(W, self.max_new - self.base[b])

    def _check_logits(self):
        bad = np.nonzero(self.rows.status[:, BAD_LOGITS])[0]
        if len(bad):
            b = int(bad[0])
            n = self.base[b] + int(self.rows.status[b, NOUT])
            raise GenerationError(f"the model's next-token logits hold NaN or infinite values (row {b}, after "
                                  f"{n} generated tokens): nothing can be sampled; check the model's weights")

    def _run_split(self, steps):
        from .. import pool

        with pool.Gang(self.parts) as gang:
            if gang.size == 1:
                return self.runners[0].run(steps)
            runner = self.split_runners.get(gang.size)
            if runner is None:
                runner = self.split_runners[gang.size] = self.engine.split_runner(
                    self.plan, self.sampling, self.stops, self.rows, self.prompt, self.out, gang.size,
                    **self._kmp_rows(0, 1))
            left = [0] * gang.size

            def part(p):
                left[p] = runner.run_part(p, steps)
            try:
                gang.run([lambda p=p: part(p) for p in range(gang.size)], runner.abort)
            except BaseException:
                self.split_runners.pop(gang.size, None)  # may be aborted: never reused
                raise
            if runner.degraded:  # the parts mostly waited: one thread from here on, for a while
                pool.note_contention()
                self.split_runners.pop(gang.size, None)
            return left[0]

    def run(self, steps):
        """At most ``steps`` lockstep steps (each block of rows on its own thread); rows left."""
        if self.out.shape[1] < self.max_new:
            self._make_room()
        if self.active:
            if self.parts > 1:
                self.active = self._run_split(steps)
            elif len(self.runners) == 1:
                self.active = self.runners[0].run(steps)
            else:
                from ..backends import run_tasks

                left = [0] * len(self.runners)

                def task(i):
                    left[i] = self.runners[i].run(steps)

                run_tasks([lambda i=i: task(i) for i in range(len(self.runners))], self.threads)
                self.active = sum(left)
            self._check_logits()
            if self.out.shape[1] < self.max_new:  # rows that will go on after _make_room
                self.active += sum(self._resumable(b) for b in range(self.out.shape[0]))
        return self.active

    def run_all(self):
        """Run to the end in chunks of steps (grown until a chunk takes about CHUNK_SECONDS)."""
        while True:
            t0 = time.perf_counter()
            if not self.run(self.steps):
                return
            if time.perf_counter() - t0 < self.CHUNK_SECONDS / 2:
                self.steps = min(self.steps * 2, 1 << 20)

    def _feed_matcher(self, b):
        n = int(self.rows.status[b, NOUT])
        if self.stop_seqs and self.matched[b] < n:
            self.matchers[b].feed(self.out[b, max(self.matched[b], 0):n].tolist())
            self.matched[b] = n

    def visible(self, b) -> int:
        """Tokens of row b in the window that are final: all but a matched stop, or a tail that
        may become one."""
        st = self.rows.status[b]
        n = int(st[NOUT])
        if st[FINISHED] and not self._resumable(b):
            return n - int(st[STOP_LEN])
        if not self.stop_seqs:
            return n
        self._feed_matcher(b)
        return n - self.matchers[b].hold()

    def result(self, b):
        tail = self.out[b, :self.visible(b)]
        return np.concatenate(self.flushed[b] + [tail]) if self.flushed[b] else tail

    def stream(self):
        """Yields, per step with something new, a list of new token arrays (one per row)."""
        B = self.out.shape[0]
        emitted = [0] * B  # in window coordinates
        while True:
            bases = list(self.base)
            active = self.run(1)
            new = []
            for b in range(B):
                emitted[b] -= self.base[b] - bases[b]
                v = self.visible(b)
                new.append(self.out[b, emitted[b]:v].copy())
                emitted[b] = max(emitted[b], v)
            if any(len(x) for x in new):
                yield new
            if not active:
                return


class _Formatter:
    """Token ids -> the caller's kind (text / list / array), whole or as streamed pieces."""

    def __init__(self, model, kind):
        self.vocab = model.vocabulary if kind == "text" else None
        self.kind = kind

    def whole(self, ids):
        if self.kind == "text":
            return self.vocab.decode(ids)
        return np.asarray(ids, np.int64) if self.kind == "array" else [int(i) for i in ids]

    def piece(self, ids, first):
        if self.kind == "text":
            text = self.vocab.decode(ids)
            if self.vocab.level == "word" and not first and len(ids):
                text = " " + text  # pieces of a word vocabulary join with spaces like decode
            return text
        return self.whole(ids)


def _stream_pieces(job, fmt, batch, lock=None):
    started = [False] * job.out.shape[0]
    steps = job.stream()
    while True:
        if lock is None:
            new = next(steps, None)
        else:
            with lock:
                new = next(steps, None)
        if new is None:
            return
        pieces = []
        for b, ids in enumerate(new):
            pieces.append(fmt.piece(ids, not started[b]))
            started[b] = started[b] or len(ids) > 0
        yield pieces if batch else pieces[0]


# =============================================================================================
# Public API
# =============================================================================================

def bundled_model():
    """The character-level LSTM shipped with fastrnn (trained by tools/train_char_model.py on
    the CPython standard library sources), loaded once."""
    from .. import load_bundled

    return load_bundled(BUNDLED_MODEL, "character model")


def generate(model, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
             repetition_penalty=None, seed=None, stop=None, stream=False, initial_state=None, backend=None,
             weights=None, threads=None, num_beams=1, length_penalty=1.0):
    """Sample a continuation of ``prompt`` from ``model`` (None = the bundled character model).

    Parameters
    ----------
    prompt : str (encoded with the model's vocabulary), list/1-D array of token ids, or a list of
        either (a batch, decoded together in lockstep; rows may have different lengths).
    max_new_tokens : int >= 0, tokens to generate per row (fewer when a stop sequence ends it).
    temperature : float >= 0, 0 = greedy. top_k : int >= 0 (0 = off). top_p : float in (0, 1]
        (1 = off). repetition_penalty : float in [0.01, 100] (1 = off; CTRL style, over prompt and
        output). Each of these five left at None takes the model's recommended value (metadata
        "generation"), else GENERATION_DEFAULTS: 200 tokens, temperature 0.8, the rest off
        (the same defaults as `fastrnn generate`).
    seed : int (the same generator for every row), list of ints (one per row) or None (random).
    stop : str, id, or a list of strings / ids / id lists; the stop text is not kept.
    stream : False -> the result; True -> an iterator of pieces (per row lists for a batch)
        whose concatenation is the result for the same seed.
    initial_state : recurrent states as in Model.predict (batch = number of prompts), or None.
    backend : "cython" | "numba" | "numpy" for this call (default: the current backend).
    weights : "float32" (exact), "float16", "int8" or "auto" (default: "float32", or the kind
        of a quantized model / file): the matrices read at every step rounded once (half / a
        quarter of the bytes; logits change slightly, see GenerationPlan and the README's
        accuracy note). int8 is faster at small batch; float16 can be slower than float32
        where the weights fit in cache; "auto" measures float16 against float32 once per model.
    threads : threads for a batch (blocks of rows run in parallel; None = fastrnn's setting).
        The result is the same for any thread count.

    num_beams : 1 (sampling as above) or more: beam search with that many beams per prompt,
        deterministic; sampling options and seed do not apply (see fastrnn.beam).
    length_penalty : beam search scores sum(log-probs) / length ** length_penalty.

    Returns the continuation (without the prompt) in the prompt's kind: str, list of ids or
    array; a list of those for a batch.
    """
    from ..backends import check_threads

    from .beam import _check, beam_search

    if model is None:
        model = bundled_model()
    num_beams, length_penalty = _check(num_beams, length_penalty)
    if num_beams > 1:
        if stream:
            raise ValueError("stream=True is not available with num_beams > 1 (the best beam is known at the end)")
        return beam_search(model, prompt, max_new_tokens=max_new_tokens, num_beams=num_beams,
                           length_penalty=length_penalty, stop=stop, initial_state=initial_state, backend=backend,
                           weights=weights, threads=threads)
    kw = _with_defaults(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty)
    plan = generation_plan(model, default_weights(model, weights))
    threads = check_threads(threads)
    max_new = _count(kw.pop("max_new_tokens"))
    sampling = Sampling(**kw)
    prompts, batch, kind = _prompt_rows(model, plan, prompt)
    B = len(prompts)
    seeds = _seeds(seed, B)
    stops = _stops(model, plan, stop)
    states = model._check_states(initial_state, B)
    engine = plan.engine_for(get_engine(backend))
    rows = Rows(plan, B)
    plan.state_to_rows(states, rows.state)
    rows.rng[:] = np.array(seeds, np.uint64)
    job = _Job(plan, engine, rows, prompts, sampling, stops, max_new, threads, collect=not stream)
    fmt = _Formatter(model, kind)
    if stream:
        return _stream_pieces(job, fmt, batch)
    job.run_all()
    results = [fmt.whole(job.result(b)) for b in range(B)]
    return results if batch else results[0]


def _locked(method):
    """Session methods run one at a time, and never while a stream of the session is open."""
    import functools

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            if self._streaming:
                raise RuntimeError("a stream from this session's generate(stream=True) is still open: "
                                   "exhaust it or call its close() before using the session again")
            return method(self, *args, **kwargs)
    return call


class Session:
    """A stateful generation session for embedded use: feed text or ids, read the next-token
    distribution, sample, generate, save and restore.

        s = model.session(seed=1)          # or Session(model, seed=1)
        s.feed("def ")
        p = s.probabilities(temperature=0.8)   # (V,) float64
        tok = s.sample(temperature=0.8)        # an id; fed lazily before the next read
        text = s.generate(50, stop="\\n")
        snap = s.save_state(); ...; s.restore_state(snap)   # continues identically

    Sessions are independent (each owns its buffers and its generator). One session may be
    shared by threads: its calls run one at a time (a lock). While a stream from
    ``generate(stream=True)`` is open (not exhausted or closed), any other call on the session
    raises RuntimeError: it would change the state the stream is decoding from. The repetition penalty
    of a session covers every token fed or sampled in it. Sampling parameters given to the
    constructor are the defaults of sample() and generate(); each call may override them. Those
    left at None take the model's recommended values or GENERATION_DEFAULTS, as generate() does.
    """

    def __init__(self, model=None, seed=None, initial_state=None, temperature=None, top_k=None, top_p=None,
                 repetition_penalty=None, backend=None, weights=None):
        self.model = bundled_model() if model is None else model
        self.plan = generation_plan(self.model, default_weights(self.model, weights))
        self.defaults = _with_defaults(self.model, temperature=temperature, top_k=top_k, top_p=top_p,
                                       repetition_penalty=repetition_penalty)
        self.max_new_tokens = generation_defaults(self.model)["max_new_tokens"]
        Sampling(**self.defaults)  # validate now
        self.engine = self.plan.engine_for(get_engine(backend))
        self._rows = Rows(self.plan, 1)
        self.plan.state_to_rows(self.model._check_states(initial_state, 1), self._rows.state)
        self._rows.rng[0] = np.uint64(_seeds(seed, 1)[0])
        self._pending = None  # a sampled token not yet fed
        self._lock = threading.RLock()
        self._streaming = False

    # -- internals --------------------------------------------------------------------------
    def _sampling(self, kw):
        merged = dict(self.defaults)
        merged.update(kw)
        return Sampling(**merged)

    def _ids(self, prompt):
        """Validated like generate's prompts (integers in the vocabulary, one flat sequence);
        may be empty."""
        if isinstance(prompt, (list, tuple, np.ndarray)) and len(prompt) == 0:
            return np.zeros(0, np.int32)
        if isinstance(prompt, str) and prompt == "":
            return np.zeros(0, np.int32)
        rows, batch, _ = _prompt_rows(self.model, self.plan, prompt)
        if batch:
            raise ValueError("a session decodes one sequence: feed a str or a flat list of token ids")
        return rows[0]

    def _job(self, ids, sampling, stops, max_new, collect=True):
        if self._pending is not None:
            ids = np.concatenate([[self._pending], ids]).astype(np.int32)
            self._pending = None
        if len(ids):
            self._rows.status[0, HAS_LOGITS] = 0
        elif not self._rows.status[0, HAS_LOGITS]:
            raise ValueError("nothing has been fed to this session yet: call feed() first")
        return _Job(self.plan, self.engine, self._rows, [ids], sampling, stops, max_new, collect=collect)

    # -- public ------------------------------------------------------------------------------
    @_locked
    def feed(self, prompt):
        """Feed text (with the model's vocabulary) or token ids; returns the session."""
        ids = self._ids(prompt)
        if len(ids) == 0 and self._pending is None:
            return self
        self._job(ids, Sampling(), _stops(self.model, self.plan, None), 0).run_all()
        return self

    @_locked
    def logits(self) -> np.ndarray:
        """The next-token logits, (V,) float32 (a copy)."""
        self.feed([])
        if not self._rows.status[0, HAS_LOGITS]:
            raise ValueError("nothing has been fed to this session yet: call feed() first")
        return self._rows.logits[0].copy()

    @_locked
    def probabilities(self, temperature=None, top_k=None, top_p=None, repetition_penalty=None):
        """The distribution the next token is drawn from, after logit processing: (V,) float64."""
        kw = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                   repetition_penalty=repetition_penalty).items() if v is not None}
        sampling = self._sampling(kw)
        logits = self.logits()[None]
        if not np.all(np.isfinite(logits)):
            raise GenerationError("the model's next-token logits hold NaN or infinite values: nothing can be "
                                  "sampled; check the model's weights")
        y = self.engine.process_logits(logits, self._rows.seen, sampling.as_tuple())[0]
        if sampling.temperature == 0.0:
            p = np.zeros(len(y))
            p[int(np.argmax(y))] = 1.0
            return p
        e = np.exp(y)
        return e / np.cumsum(e)[-1]

    @_locked
    def sample(self, temperature=None, top_k=None, top_p=None, repetition_penalty=None) -> int:
        """Draw the next token (an id) with the session's generator and append it."""
        kw = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                   repetition_penalty=repetition_penalty).items() if v is not None}
        job = self._job(np.zeros(0, np.int32), self._sampling(kw), _stops(self.model, self.plan, None), 1)
        job.run_all()
        token = int(job.out[0, 0])
        self._pending = token
        return token

    @_locked
    def generate(self, max_new_tokens=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
                 stop=None, stream=False):
        """Continue from the current state; text if the model has a vocabulary, else a list of ids.
        Tokens that end in a stop sequence are part of the session's history but not returned.
        max_new_tokens=None: the model's recommended count, else GENERATION_DEFAULTS' (200)."""
        kw = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                   repetition_penalty=repetition_penalty).items() if v is not None}
        sampling = self._sampling(kw)
        max_new = _count(self.max_new_tokens if max_new_tokens is None else max_new_tokens)
        stops = _stops(self.model, self.plan, stop)
        fmt = _Formatter(self.model, "text" if self.model.vocabulary is not None else "list")
        if stream:
            if self._pending is None and not self._rows.status[0, HAS_LOGITS]:
                raise ValueError("nothing has been fed to this session yet: call feed() first")

            def pieces():  # the job starts at the first next(): a stream never started changes nothing
                with self._lock:
                    if self._streaming:
                        raise RuntimeError("another stream of this session is still open")
                    job = self._job(np.zeros(0, np.int32), sampling, stops, max_new, collect=False)
                    self._streaming = True
                try:
                    yield from _stream_pieces(job, fmt, False, self._lock)
                finally:
                    with self._lock:
                        self._finish(job)
                        self._streaming = False
            return pieces()
        job = self._job(np.zeros(0, np.int32), sampling, stops, max_new)
        try:
            job.run_all()
        finally:  # also after Ctrl-C: the rows stopped at a step boundary
            self._finish(job)
        return fmt.whole(job.result(0))

    def _finish(self, job):
        """A row that ended by sampling its last token has not fed it: feed it lazily."""
        st = job.rows.status[0]
        n = int(st[NOUT])
        if n and st[FINISHED] and not st[HAS_LOGITS]:
            self._pending = int(job.out[0, n - 1])

    @_locked
    def save_state(self):
        """A snapshot (copies) of everything that determines what comes next."""
        return {"rows": self._rows.copy(), "pending": self._pending}

    @_locked
    def restore_state(self, snapshot):
        """Go back to a snapshot from save_state() (of this or another session of the same model)."""
        rows = snapshot["rows"]
        for name in Rows.FIELDS:
            getattr(self._rows, name)[...] = getattr(rows, name)
        self._pending = snapshot["pending"]

    @_locked
    def states(self):
        """The recurrent states after everything fed, in Model.predict's structure."""
        self.feed([])
        return self.plan.rows_to_state(self._rows.state)

    def decode(self, ids) -> str:
        if self.model.vocabulary is None:
            raise ValueError("this model has no vocabulary")
        return self.model.vocabulary.decode(ids)


# =============================================================================================
# Command line: fastrnn generate
# =============================================================================================

def add_cli(subparsers):
    import argparse

    p = subparsers.add_parser(
        "generate", help="sample text from a character/word language model (default: the bundled model)",
        description="Sample text from a language model. Without --model the bundled character LSTM "
                    "(trained on the CPython standard library) is used. The output is the prompt "
                    "followed by the generated text.")
    p.add_argument("--model", help="model file (.safetensors, .keras, .h5, .onnx); default: the bundled model")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    # defaults None: the model's recommended values (metadata "generation"), else GENERATION_DEFAULTS,
    # exactly as in Python's generate()
    p.add_argument("-n", "--max-new-tokens", type=int, default=None,
                   help=f"tokens to generate (default {GENERATION_DEFAULTS['max_new_tokens']}, or the model's "
                        "recommended count)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"0 = greedy (default {GENERATION_DEFAULTS['temperature']}, or the model's recommended value)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample only from the K most likely tokens (ties kept); 0 = off (default: off)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only from the most likely tokens whose probabilities add up to P (the one "
                        "crossing P kept); 1 = off (default: off)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="CTRL-style penalty > 0 on every token already in the prompt or output (e.g. 1.2); "
                        "1 = off (default: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed (every prompt of --batch uses it)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable; not printed)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they are produced (default: when stdout is a terminal)")
    p.add_argument("--weights", choices=WEIGHT_KINDS + ("auto",), default=None,
                   help="int8 / float16 store the weights read at every step in a quarter / half of the bytes, "
                        "with slightly different logits; int8 is faster at batch 1, float16 only where the "
                        "weights do not fit in cache ('auto' measures float16 against float32 here) "
                        "(default: float32, or the kind the model file was quantized to by "
                        "`fastrnn convert --quantize`)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for a --batch of prompts (default: all cores; results do not depend on it)")
    p.add_argument("--batch", metavar="FILE",
                   help="one prompt per line ('-' = stdin); writes one JSON object per line, in order: "
                        '{"prompt": ..., "text": ...}')
    p.add_argument("--errors", choices=ERRORS, default="strict",
                   help="--batch: a line that is not UTF-8: strict = stop with an error naming it (default), "
                        "replace = decode it with U+FFFD for bad bytes, skip = leave it out and report its line "
                        "number on stderr")
    from ..dask import add_cli_options  # --dask, --partition-size for --batch (issue 16)

    add_cli_options(p, "prompts of --batch")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args):
    from .. import load

    model = load(args.model) if args.model else bundled_model()
    if model.vocabulary is None:
        raise ValueError("this model has no vocabulary, so the command line cannot read or print text")
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, weights=args.weights,
              threads=args.threads)
    check_arguments(model, **kw)  # every argument is checked before anything is printed
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    out = sys.stdout
    if getattr(args, "dask", None):  # --batch: the same output from a Dask cluster (issue 16)
        from ..dask import cmd_generate_batch

        return cmd_generate_batch(args, seed, kw)
    if args.batch:
        import itertools

        from ..textio import LineReader

        if args.batch != "-":  # a file can be read twice: every line is checked before anything is printed
            with open(args.batch, "rb") as first_pass:
                reader = LineReader(first_pass, args.batch, errors=args.errors, command="fastrnn generate")
                for line in reader:
                    if line == "":
                        raise ValueError(f"{args.batch}: line {reader.count} is empty (every line is a prompt)")
                    try:
                        model.vocabulary.encode(line)
                    except ValueError as exc:
                        raise ValueError(f"{args.batch}: line {reader.count}: {exc}") from None
        raw = sys.stdin.buffer if args.batch == "-" else open(args.batch, "rb")
        name = "<stdin>" if args.batch == "-" else args.batch
        try:
            # read lazily (memory stays flat on long files); line endings and a BOM removed as for classify
            reader = LineReader(raw, name, errors=args.errors, command="fastrnn generate")
            lines = iter(reader)
            while True:
                prompts = []
                for line in itertools.islice(lines, 256):  # rows decoded together
                    if line == "":
                        raise ValueError(f"{name}: line {reader.count} is empty (every line is a prompt)")
                    prompts.append(line)
                if not prompts:
                    break
                texts = generate(model, prompts, seed=seed, **kw)
                for prompt, text in zip(prompts, texts):
                    out.write(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) + "\n")
            out.flush()
        finally:
            if raw is not sys.stdin.buffer:
                raw.close()
        return 0
    prompt = "\n" if args.prompt is None else args.prompt
    stream = args.stream if args.stream is not None else out.isatty()
    # generate() validates the prompt (vocabulary) before returning, so nothing is printed on an error
    result = generate(model, prompt, seed=seed, stream=stream, **kw)
    out.write(prompt)
    if stream:
        out.flush()
        for piece in result:
            out.write(piece)
            out.flush()
    else:
        out.write(result)
    out.write("\n")
    out.flush()
    return 0
