"""Generation from causal graphs that are not the compiled chain.

The compiled generation loop (fastrnn.generate.plan, kernels/generate_core.c) runs the chain
[Embedding] -> forward recurrent layers -> Dense. A model whose step is still causal but has
other per-step layers (a Tanh between the GRU and the Linear, a LayerNorm, two Dense layers, a
Concatenate of the embedding and the LSTM outputs, several recurrent branches) generates here:
each step runs the model's execution plan (fastrnn.graph.Plan) on one time step of the rows that
advance, with every recurrent node's state carried in the rows' state buffer, on the chosen
backend's kernels; sampling, stop strings, seeds and streaming are fastrnn.generate's, so the
results follow the same rules (the same seed gives the same text streamed or not, alone or in a
batch). The loop over steps returns to Python once per step: slower than the compiled chain,
which is why the chain stays the fast path.

A graph generates this way when it has one input of token ids and one output of shape
(time, vocabulary), and every node is a forward-in-time recurrent layer (no state inputs) or a
per-step layer (``layer.per_step``). Anything else gets an error saying which node looks at the
future.
"""
from __future__ import annotations

import numpy as np

from ..layers import Activation, Dense, Recurrent
from .engines import BAD_LOGITS, FINISHED, HAS_LOGITS, LEN, LIMIT, NOUT, POS, STOP_LEN, match_stop, stops_list
from .sampling import Sampling

f32 = np.float32


def causal_problem(model):
    """Why ``model`` cannot generate step by step (a sentence), or None if it can."""
    g = model.plan().graph
    if len(g.inputs) != 1 or g.inputs[0].dtype != "int64" or g.inputs[0].shape != (None,):
        return (f"generation needs one input of token ids (batch, time); this model's inputs are "
                f"{[(i.name, i.dtype, i.shape) for i in g.inputs]}")
    if len(g.outputs) != 1 or len(g.shapes[g.outputs[0]]) != 2:
        return ("generation needs one output of shape (batch, time, vocabulary); this model's outputs are "
                f"{[g.shapes[r] for r in g.outputs]}")
    head = g.producer(g.outputs[0])
    head_ok = head is not None and (
        (isinstance(head.layer, Dense) and head.layer.activation in ("linear", "softmax", "log_softmax"))
        or (isinstance(head.layer, Activation) and not head.layer.custom
            and head.layer.function in ("softmax", "log_softmax") and head.layer.axis == -1))
    if not head_ok:
        return ("generation needs logits or (log-)probabilities over the vocabulary from the last layer (a Dense "
                "with a linear, softmax or log_softmax activation, or a softmax / log_softmax layer)")
    for n in g.nodes:
        layer = n.layer
        if isinstance(layer, Recurrent):
            if not layer.per_step:
                return (f"layer {n.name!r} does not run forward in time only (bidirectional / reverse / "
                        "go_backwards cannot generate)")
            if len(n.inputs) > 1:
                return f"layer {n.name!r} takes its initial state from another node"
            if not layer.return_sequences:
                return f"layer {n.name!r} returns only its last state, so the output is not per step"
        elif not getattr(layer, "per_step", False):
            return (f"layer {n.name!r} ({type(layer).__name__}) mixes time steps (it looks at the whole "
                    "sequence), so the model cannot be run one token at a time")
    return None


class StepGraphPlan:
    """Duck-typed fastrnn.generate.plan.GenerationPlan for a causal graph: the rows' state holds, per
    recurrent node, h (H_out) then c (H) for an LSTM."""

    weights = "float32"

    def __init__(self, model):
        problem = causal_problem(model)
        if problem:
            raise ValueError(problem)
        self.model = model
        self.exec_plan = model.plan()
        g = self.exec_plan.graph
        self.recurrent = [n.layer for n in self.exec_plan.recurrent_nodes]
        self.offsets = []
        offset = 0
        for layer in self.recurrent:
            h = offset
            offset += layer.output_size_per_direction
            c = -1
            if layer.cell == "lstm":
                c = offset
                offset += layer.hidden_size
            self.offsets.append((h, c))
        self.state_size = offset
        self.vocab_size = g.shapes[g.outputs[0]][-1]
        readers = [n.layer.vocab_size for n in g.nodes if n.inputs[0] == (g.inputs[0].name, 0)]
        self.table_rows = min(readers)
        out = g.producer(g.outputs[0]).layer
        self.output_kind = "linear"
        if isinstance(out, Dense) and out.activation in ("softmax", "log_softmax"):
            self.output_kind = out.activation
        elif isinstance(out, Activation) and not out.custom and out.function in ("softmax", "log_softmax"):
            self.output_kind = out.function
        if self.vocab_size is None:
            raise ValueError("generation needs an output whose last axis (the vocabulary) has a fixed size")
        vocab = model.vocabulary
        if vocab is not None and len(vocab) < self.vocab_size:
            raise ValueError(f"the output has {self.vocab_size} tokens but the vocabulary only {len(vocab)}: "
                             "sampled ids could not be decoded")
        if self.vocab_size > self.table_rows:
            raise ValueError(f"the output has {self.vocab_size} tokens but the embedding only {self.table_rows} "
                             "rows, so a sampled token could not be fed back")

    def engine_for(self, engine):
        return StepEngine(engine)

    def state_to_rows(self, states, rows_state):
        for (h_off, c_off), layer, st in zip(self.offsets, self.recurrent, states):
            if st is None:
                continue
            h, c = (st if layer.cell == "lstm" else (st, None))
            rows_state[:, h_off:h_off + layer.output_size_per_direction] = h[0]
            if c is not None:
                rows_state[:, c_off:c_off + layer.hidden_size] = c[0]

    def rows_to_state(self, rows_state):
        out = []
        for (h_off, c_off), layer in zip(self.offsets, self.recurrent):
            h = np.ascontiguousarray(rows_state[None, :, h_off:h_off + layer.output_size_per_direction])
            if layer.cell == "lstm":
                out.append((h, np.ascontiguousarray(rows_state[None, :, c_off:c_off + layer.hidden_size])))
            else:
                out.append(h)
        return out

    def step(self, tokens, rows_state, backend, threads):
        """Feed one token per row: tokens (n,) for the rows whose state is rows_state (n, S),
        updated in place; returns the logits (n, V) float32."""
        n = len(tokens)
        states = self.rows_to_state(rows_state)
        ids = np.asarray(tokens, np.int64).reshape(n, 1)
        outs, new_states = self.exec_plan.run([ids], [np.ones(n, np.int64)], states, backend, threads)
        for (h_off, c_off), layer, st in zip(self.offsets, self.recurrent, new_states):
            h, c = (st if layer.cell == "lstm" else (st, None))
            rows_state[:, h_off:h_off + layer.output_size_per_direction] = h[0]
            if c is not None:
                rows_state[:, c_off:c_off + layer.hidden_size] = c[0]
        y = np.asarray(outs[0], f32)[:, 0]
        if self.output_kind == "softmax":  # probabilities -> log-probabilities: the same distribution
            with np.errstate(divide="ignore"):
                y = np.log(y).astype(f32)
        return y


class StepEngine:
    """Wraps a generation engine: the step runs the graph on ``engine``'s backend; the logit
    processing and sampling are the engine's own (so seeds give the engine's tokens)."""

    def __init__(self, engine):
        self.engine = engine
        self.name = engine.name

    def split_parts(self, plan, batch, threads):
        return 1

    def runner(self, plan, sampling, stops, rows, prompt, out):
        return StepRunner(plan, self.engine, sampling, stops, rows, prompt, out)

    def process_logits(self, logits, seen, sampling):
        return self.engine.process_logits(logits, seen, sampling)

    def sample_logits(self, logits, seen, sampling, rng, draws=1):
        return self.engine.sample_logits(logits, seen, sampling, rng, draws)


class StepRunner:
    """The lockstep loop of fastrnn.generate.engines.NumpyRunner with the step of a graph: every step,
    the rows that have a token to feed (the next prompt token or the one just sampled) run one
    time step of the graph together."""

    def __init__(self, plan: StepGraphPlan, engine, sampling, stops, rows, prompt, out):
        from ..backends import get_backend

        self.plan, self.engine = plan, engine
        self.sampling = Sampling(*sampling)
        self.sampling_tuple = tuple(sampling)
        self.stops = [list(s) for s in stops_list(stops)]
        self.rows, self.prompt, self.out = rows, prompt, out
        self.backend = get_backend(engine.name)

    def run(self, max_steps):
        r, st = self.rows, self.rows.status
        limit = np.minimum(st[:, LIMIT], self.out.shape[1])  # a row ends with this many tokens in out
        V = self.plan.vocab_size
        for _ in range(max_steps):
            feed_rows, feed_tokens = [], []
            for b in range(st.shape[0]):  # the caller raises on logits that cannot be sampled
                if not st[b, FINISHED] and st[b, HAS_LOGITS] and not np.all(np.isfinite(r.logits[b])):
                    st[b, FINISHED] = st[b, BAD_LOGITS] = 1
            sample_rows = [b for b in range(st.shape[0]) if not st[b, FINISHED] and st[b, HAS_LOGITS]
                           and st[b, NOUT] < limit[b]]
            if sample_rows:  # the engine's sampler, row by row (each row's own generator)
                idx = np.array(sample_rows)
                rngs = np.ascontiguousarray(r.rng[idx], np.uint64)  # INOUT: each row's generator
                toks = self.engine.sample_logits(np.ascontiguousarray(r.logits[idx]),
                                                 np.ascontiguousarray(r.seen[idx]), self.sampling_tuple, rngs)
                drawn = dict(zip(sample_rows, zip(np.asarray(toks)[:, 0].tolist(), rngs.tolist())))
            for b in range(st.shape[0]):
                if st[b, FINISHED]:
                    continue
                if st[b, HAS_LOGITS]:
                    if st[b, NOUT] >= limit[b]:
                        st[b, FINISHED] = 1
                        continue
                    tok, rng = drawn[b]
                    r.rng[b] = np.uint64(rng)
                    self.out[b, st[b, NOUT]] = tok
                    st[b, NOUT] += 1
                    st[b, HAS_LOGITS] = 0
                    r.seen[b, tok] = 1
                    stop_len = match_stop(self.stops, self.out[b, :st[b, NOUT]])
                    if stop_len or st[b, NOUT] >= limit[b]:
                        st[b, FINISHED] = 1
                        st[b, STOP_LEN] = stop_len
                        continue
                    feed_rows.append(b)
                    feed_tokens.append(tok)
                elif st[b, POS] < st[b, LEN]:
                    tok = int(self.prompt[b, st[b, POS]])
                    st[b, POS] += 1
                    if tok < V:
                        r.seen[b, tok] = 1
                    feed_rows.append(b)
                    feed_tokens.append(tok)
                else:
                    st[b, FINISHED] = 1
            if not feed_rows:
                break
            idx = np.array(feed_rows)
            block = r.state[idx]
            logits = self.plan.step(feed_tokens, block, self.backend, 1)
            r.state[idx] = block
            for j, b in enumerate(feed_rows):
                if st[b, POS] >= st[b, LEN]:
                    r.logits[b] = logits[j]
                    st[b, HAS_LOGITS] = 1
        return int(np.count_nonzero(st[:, FINISHED] == 0))
