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

A graph generates this way when it has one sequence input (token ids (batch, time), or one-hot
vectors (batch, time, features): token i is the vector with a 1 at feature i), one output of
shape (time, vocabulary), and every node on the way from that input to that output is a
forward-in-time recurrent layer or a per-step layer (``layer.per_step``). Anything else gets an
error saying which node looks at the future.

Extra inputs: the encoder / decoder idiom of Keras
-------------------------------------------------
Inputs without a time axis give the recurrent layers their initial states: directly (the
inference decoder of the Keras seq2seq tutorials, ``Model([dec_in, h_in, c_in], [y, h, c])``:
``h_in`` and ``c_in`` feed ``LSTM(...)(dec_in, initial_state=[h_in, c_in])``) or through
per-example layers (the captioning "inject" model: image features -> Dense -> the LSTM's
initial state). Their values are ``initial_state=`` of generate / Session / beam search: a list
with one array (batch, size) per extra input, in the model's input order, or a dict by input
name. They are turned into the recurrent layers' initial states once, before the prompt; from
then on every recurrent state is carried from token to token.

A model whose extra outputs are the final states of the recurrent layers fed by its state inputs
(``[y, h, c]``) is a step function: generating from it equals the tutorials' Python loop that
calls ``decoder_model.predict([token, h, c])`` once per token and feeds the returned ``h, c``
back (greedy: the same tokens). Such a model must pass every recurrent layer's state in and out
(a layer whose state is not an input would restart from zeros at every call of that loop, which
carrying the state would not reproduce: it is refused, naming the layer).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..graph import Graph, Plan, ref_str
from ..layers import Activation, Dense, Embedding, Recurrent
from .engines import BAD_LOGITS, FINISHED, HAS_LOGITS, LEN, LIMIT, NOUT, POS, STOP_LEN, match_stop, stops_list
from .sampling import Sampling

f32 = np.float32


class _Problem(Exception):
    """Why a graph cannot generate step by step (the message is the reason)."""


def _sequence_input(inp):
    """True for an input with a time axis: ids (time,) or features (time, features)."""
    return (inp.dtype == "int64" and len(inp.shape) == 1) or (inp.dtype == "float32" and len(inp.shape) == 2)


class StepSpec:
    """The step form of a graph (model.plan().graph), or _Problem saying why it has none.

    token: the sequence input; one_hot: its feature count for one-hot input (None for ids).
    extras: the other inputs (no time axis), in model order. prefix: the nodes computed from the
    extras only (run once, before the prompt). step_nodes: the nodes that depend on the tokens.
    slots: {recurrent node name: [refs of its initial-state inputs]}. main: the per-step output;
    state_outputs: the other outputs (final states of recurrent nodes); step_function: the model
    has state outputs (a Keras inference decoder)."""

    def __init__(self, g):
        self.graph = g
        seq = [i for i in g.inputs if _sequence_input(i)]
        if len(seq) != 1 or any(len(i.shape) != 1 or i.dtype != "float32" for i in g.inputs if i not in seq):
            raise _Problem("generation needs one input of token ids (batch, time) or one-hot vectors (batch, time, "
                           "vocabulary), the other inputs (if any) without a time axis (initial states, image "
                           f"features); this model's inputs are {[(i.name, i.dtype, i.shape) for i in g.inputs]}")
        self.token = seq[0]
        self.one_hot = None
        if self.token.dtype == "float32":
            self.one_hot = self.token.shape[-1]
            if self.one_hot is None:
                raise _Problem(f"input {self.token.name!r} has no fixed number of features, so a token cannot be "
                               "fed as a one-hot vector")
        self.extras = [i for i in g.inputs if i is not self.token]
        timed = {(self.token.name, 0)}
        masked = self.one_hot is None and all(
            n.layer.mask_zero for n in g.nodes if (self.token.name, 0) in n.inputs and isinstance(n.layer, Embedding))
        flat = set()  # refs that depend on the tokens but hold the last step only (no time axis)
        self.last_state = set()  # recurrent nodes returning their last state, run per step instead
        self.prefix, self.step_nodes, self.slots = [], [], {}
        for n in g.nodes:
            if not any(r in timed for r in n.inputs):
                if isinstance(n.layer, Recurrent):
                    raise _Problem(f"layer {n.name!r} runs over a sequence that does not come from the tokens")
                self.prefix.append(n)
                continue
            self.step_nodes.append(n)
            for k in range(g.num_outputs[n.name]):
                timed.add((n.name, k))
            layer = n.layer
            if isinstance(layer, Recurrent):
                if not layer.per_step:
                    raise _Problem(f"layer {n.name!r} does not run forward in time only (bidirectional / reverse / "
                                   "go_backwards cannot generate)")
                if n.inputs[0] in flat:
                    raise _Problem(f"layer {n.name!r} reads the last state of another recurrent layer")
                if not layer.return_sequences:
                    if not (masked and layer.use_mask):
                        raise _Problem(
                            f"layer {n.name!r} returns only its last state, so the output is not per step; such a "
                            "model predicts the next token from a whole padded prefix, which equals running it "
                            "token by token only when the padding is masked (Embedding(mask_zero=True); Keras 3 "
                            "does not mask a recurrent layer called with initial_state=)")
                    self.last_state.add(n.name)
                    flat.add((n.name, 0))
                if n.inputs[0] not in timed or any(r in timed for r in n.inputs[1:]):
                    raise _Problem(f"layer {n.name!r} takes its initial state from another node of the sequence")
                if len(n.inputs) > 1:
                    self.slots[n.name] = list(n.inputs[1:])
            elif not getattr(layer, "per_step", False):
                raise _Problem(f"layer {n.name!r} ({type(layer).__name__}) mixes time steps (it looks at the whole "
                               "sequence), so the model cannot be run one token at a time")
            elif not all(r in timed for r in n.inputs):
                raise _Problem(f"layer {n.name!r} ({type(layer).__name__}) combines the per-step values with "
                               "values computed once per example; fastrnn generates when the extra inputs only "
                               "give the recurrent layers their initial states")
            elif any(r in flat for r in n.inputs):
                if not all(r in flat for r in n.inputs):
                    raise _Problem(f"layer {n.name!r} combines a last state with a sequence")
                for k in range(g.num_outputs[n.name]):
                    flat.add((n.name, k))
        mains = [r for r in g.outputs if r in timed and not _is_state_output(g, r)
                 and len(g.shapes[r]) == (1 if r in flat else 2)]
        if len(mains) != 1:
            raise _Problem("generation needs one output of shape (batch, time, vocabulary) (besides the final states "
                           f"of recurrent layers); this model's outputs are {[g.shapes[r] for r in g.outputs]}")
        self.main = mains[0]
        others = [r for r in g.outputs if r != self.main]
        bad = [ref_str(r) for r in others if not (r in timed and _is_state_output(g, r))]
        if bad:
            raise _Problem(f"output(s) {bad} are neither the per-step output nor final states of recurrent layers")
        self.state_outputs = others
        self.step_function = bool(others)
        if self.step_function:
            self._check_step_function(g)
        head = g.producer(self.main)
        head_ok = head is not None and (
            (isinstance(head.layer, Dense) and head.layer.activation in ("linear", "softmax", "log_softmax"))
            or (isinstance(head.layer, Activation) and not head.layer.custom
                and head.layer.function in ("softmax", "log_softmax") and head.layer.axis == -1))
        if not head_ok:
            raise _Problem("generation needs logits or (log-)probabilities over the vocabulary from the last layer (a "
                           "Dense with a linear, softmax or log_softmax activation, or a softmax / log_softmax layer)")

    def _check_step_function(self, g):
        """Every recurrent state passes in from a state input and out as an output, one to one."""
        extra_names = {i.name for i in self.extras}
        fed = {}
        outputs = set(self.state_outputs)
        for n in self.step_nodes:
            if not isinstance(n.layer, Recurrent):
                continue
            count = len(n.layer.state_sizes())
            slots = self.slots.get(n.name, [])
            if len(slots) != count or any(r[0] not in extra_names for r in slots):
                raise _Problem(
                    f"this model returns recurrent states as outputs (a step function, as the Keras inference "
                    f"decoder), but layer {n.name!r} does not take all of its {count} state(s) from inputs of the "
                    "model: a loop over calls of the model would restart that state from zeros at every token, "
                    "which generation (that carries every state) would not reproduce. Give the layer "
                    "initial_state=[inputs] and return its states too, or build the model without state outputs")
            missing = [ref_str((n.name, 1 + k)) for k in range(count) if (n.name, 1 + k) not in outputs]
            if missing:
                raise _Problem(f"layer {n.name!r} takes its state from inputs but the model does not return its "
                               f"final state(s) {missing}, so the state could not be carried from call to call")
            for r in slots:
                if r in fed:
                    raise _Problem(f"input {r[0]!r} feeds the state of both {fed[r]!r} and {n.name!r}; a state input "
                                   "is the state of one layer")
                fed[r] = n.name


def _is_state_output(g, ref):
    node = g.producer(ref)
    return node is not None and isinstance(node.layer, Recurrent) and ref[1] >= 1


def causal_problem(model):
    """Why ``model`` cannot generate step by step (a sentence), or None if it can."""
    try:
        StepSpec(model.plan().graph)
    except _Problem as exc:
        return str(exc)
    return None


class StepGraphPlan:
    """Duck-typed fastrnn.generate.plan.GenerationPlan for a causal graph: the rows' state holds, per
    recurrent node, h (H_out) then c (H) for an LSTM."""

    weights = "float32"

    def __init__(self, model):
        try:
            spec = StepSpec(model.plan().graph)
        except _Problem as exc:
            raise ValueError(str(exc)) from None
        self.model = model
        self.spec = spec
        g = spec.graph
        # the graph of one step: the nodes that depend on the tokens, the recurrent ones without
        # their initial-state inputs (the state is carried in the rows instead)
        step_nodes = []
        for n in spec.step_nodes:
            if isinstance(n.layer, Recurrent) and (len(n.inputs) > 1 or n.name in spec.last_state):
                layer = n.layer
                if n.name in spec.last_state:  # its last state after each token = its output at that step
                    layer = dataclasses.replace(layer, return_sequences=True)
                n = type(n)(n.name, layer, [n.inputs[0]])
            step_nodes.append(n)
        self.exec_plan = Plan(Graph([spec.token], step_nodes, [spec.main]))
        self.recurrent_nodes = [n for n in spec.step_nodes if isinstance(n.layer, Recurrent)]
        step_order = [n.name for n in self.exec_plan.recurrent_nodes]
        if step_order != [n.name for n in self.recurrent_nodes]:  # the passes keep recurrent nodes in order
            raise ValueError("internal error: the step graph reordered the recurrent layers")
        self.recurrent = [n.layer for n in self.exec_plan.recurrent_nodes]
        # the initial states computed from the extra inputs (the prefix: e.g. image -> Dense)
        self.init_plan = None
        slot_refs = [r for n in self.recurrent_nodes for r in spec.slots.get(n.name, [])]
        computed = [r for r in dict.fromkeys(slot_refs) if r[0] not in {i.name for i in spec.extras}]
        if computed:
            self.init_plan = Plan(Graph(spec.extras, spec.prefix, computed))
        self.init_outputs = computed
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
        self.vocab_size = g.shapes[spec.main][-1]
        if spec.one_hot is not None:
            self.table_rows = spec.one_hot
        else:
            readers = [n.layer.vocab_size for n in g.nodes
                       if (spec.token.name, 0) in n.inputs and isinstance(n.layer, Embedding)]
            self.table_rows = min(readers)
        out = g.producer(spec.main).layer
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
            kind = "one-hot input only" if spec.one_hot is not None else "embedding only"
            raise ValueError(f"the output has {self.vocab_size} tokens but the {kind} {self.table_rows} "
                             "rows, so a sampled token could not be fed back")

    def engine_for(self, engine):
        return StepEngine(engine)

    # -- the initial state ---------------------------------------------------------------------
    def initial_rows(self, initial_state, batch, rows_state):
        """``initial_state`` of generate / Session / beam search -> the rows' state, in place.

        Without extra inputs: Model.predict's form (one entry per recurrent node). With extra
        inputs: their values, a list in the model's input order or a dict by input name, each
        (batch, size) (or (size,) / (1, size) for every row); None gives zeros where the extra
        inputs are states, and is an error where they are other features (an image)."""
        spec = self.spec
        if not spec.extras:
            self.state_to_rows(self.model._check_states(initial_state, batch), rows_state)
            return
        names = [i.name for i in spec.extras]
        slot_names = {r[0] for refs in spec.slots.values() for r in refs}
        if initial_state is None:
            features = [n for n in names if n not in slot_names]
            if features:
                raise ValueError(f"this model takes {names} besides the tokens: pass their values as initial_state= "
                                 f"(a list in that order or a dict by name); {features} give the initial state "
                                 "through other layers and have no default")
            return  # zero states
        if isinstance(initial_state, dict):
            unknown = sorted(set(initial_state) - set(names))
            missing = [n for n in names if n not in initial_state]
            if unknown or missing:
                raise ValueError(f"initial_state: this model's inputs besides the tokens are {names}; got "
                                 f"{sorted(initial_state)}")
            values = [initial_state[n] for n in names]
        elif isinstance(initial_state, (list, tuple)) and len(initial_state) == len(names):
            values = list(initial_state)
        elif len(names) == 1 and isinstance(initial_state, np.ndarray):
            values = [initial_state]
        else:
            raise ValueError(f"initial_state: this model takes {names} besides the tokens: pass one array (batch, "
                             "size) per input, a list in that order or a dict by name (e.g. the states an encoder "
                             "model's predict returns)")
        arrays = {}
        for inp, v in zip(spec.extras, values):
            where = f"initial_state[{inp.name!r}]"
            try:
                a = np.asarray(v, dtype=f32)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where} must be an array of numbers ({exc})") from None
            size = inp.shape[0]
            if a.ndim == 1:
                a = a[None]
            if a.ndim != 2 or (size is not None and a.shape[1] != size) or a.shape[0] not in (1, batch):
                raise ValueError(f"{where} has shape {a.shape}, expected ({batch}, {size}) (one row per prompt)")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{where} holds NaN or infinite values")
            arrays[inp.name] = np.ascontiguousarray(np.broadcast_to(a, (batch, a.shape[1])))
        values = {(n, 0): a for n, a in arrays.items()}
        if self.init_plan is not None:
            from ..backends import get_backend

            feeds = [arrays[i.name] for i in spec.extras]
            outs, _ = self.init_plan.run(feeds, [None] * len(feeds), [], get_backend(), 1)
            values.update(zip(self.init_outputs, outs))
        for (h_off, c_off), node in zip(self.offsets, self.recurrent_nodes):
            layer = node.layer
            refs = spec.slots.get(node.name)
            if not refs:
                continue
            parts = [np.asarray(values[r], f32) for r in refs]
            for part, (off, size) in zip(parts, [(h_off, layer.output_size_per_direction),
                                                 (c_off, layer.hidden_size)]):
                if part.shape != (batch, size):
                    raise ValueError(f"the initial state of layer {node.name!r} has shape {part.shape}, expected "
                                     f"({batch}, {size})")
                rows_state[:, off:off + size] = part

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
        if self.spec.one_hot is not None:  # token i = the vector with a 1 at feature i
            x = np.zeros((n, 1, self.spec.one_hot), f32)
            x[np.arange(n), 0, ids[:, 0]] = 1.0
        else:
            x = ids
        outs, new_states = self.exec_plan.run([x], [np.ones(n, np.int64)], states, backend, threads)
        for (h_off, c_off), layer, st in zip(self.offsets, self.recurrent, new_states):
            h, c = (st if layer.cell == "lstm" else (st, None))
            rows_state[:, h_off:h_off + layer.output_size_per_direction] = h[0]
            if c is not None:
                rows_state[:, c_off:c_off + layer.hidden_size] = c[0]
        y = np.asarray(outs[0], f32)
        y = y[:, 0] if y.ndim == 3 else y
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
