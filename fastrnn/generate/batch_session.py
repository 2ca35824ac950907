"""Continuous batching: streams join and leave one batch of rows at any step (BatchSession).

``model.generate`` decodes a fixed batch in lockstep until every row is done. A server needs
more: a request arriving while others decode should start at the next step, a row that stops
(stop sequence, max_new_tokens, or its client went away) should free its place at once, and
every row keeps its own sampling parameters and random generator. ``BatchSession`` holds a
fixed pool of ``capacity`` rows (the slots of llama.cpp's server) and advances all of them with
one batched step of the model per call of ``step()``:

    session = BatchSession(model, capacity=64)
    a = session.make_stream("def ", max_new_tokens=50, temperature=0.8, seed=1)
    session.add(a)                           # joins at the next step
    while not session.idle:
        for s in session.step():             # one batched step; the streams that changed
            print(s.take_piece(), end="")     # new text (held back while it may become a stop)
    a.text() == model.generate("def ", max_new_tokens=50, temperature=0.8, seed=1)   # True

How a step runs (each part is the generation loop of the model's engine, kernels/generate_core.c
for the compiled ones, on caller-owned rows, run for one step or a chunk of steps at a time):
1. streams whose ``cancel()`` was called leave (their row is free for the next ``add``);
2. prompts are read in: rows that joined run the loop over their prompts in a separate block of
   rows (the "fill" rows), a chunk of steps per call sized to take about as long as one decode
   step, so a long prompt neither waits for a slot of steps nor stalls the streams decoding;
   a row whose prompt is read moves (state, logits, seen tokens) to the decode rows;
3. every decoding row samples its next token from its logits with its own parameters and its own
   generator, and the rows that go on feed it through the model, in one batched step of the loop:
   the loop itself samples the rows of the parameters most rows share (its sampler,
   gen_sample_token, with each row's generator); the other rows are sampled just before, group
   by group, with the same sampler (the engine's sample_logits; NumPy's reference for the numpy
   engine) and fed by the same step as one-token prompts; then stop sequences and
   max_new_tokens end rows. One step per call: a stream cancelled before a call leaves in it.
The tokens of a row depend only on its prompt, seed and parameters: the loop's matrix multiply
gives a row the same bits whatever the other rows are, reading a prompt in a block of its own
computes what the lockstep loop computes, and the sampler is the loop's own. So a stream's text
equals ``model.generate(prompt, seed=..., ...)`` alone, whatever else is in the batch
(tests/test_serve.py checks it with 32 concurrent streams of different parameters).

Semantics are generate()'s (fastrnn.generate.options): the same defaults, prompts, seeds and
stop sequences (matched on tokens in the generated part, not kept in the text, held back while
streaming; max_new_tokens counts their tokens). One BatchSession is driven by one thread;
``make_stream`` only validates and may be called from any thread, and ``BatchStream.cancel()``
from any thread.
"""
from __future__ import annotations

import time

import numpy as np

from .engines import BAD_LOGITS, FINISHED, HAS_LOGITS, LEN, LIMIT, NOUT, POS, Rows, get_engine, row_blocks
from .job import GenerationError, _Formatter, _StopMatcher
from .options import _count, _is_int, _prompt_rows, _seeds, _stops, _with_defaults, model_or_default
from .plan import generation_plan
from .run import default_weights
from .sampling import Sampling

# Prompt reading: a chunk of steps takes about as long as one decode step (measured), at least
# FILL_MIN_SECONDS; with nothing decoding, up to FILL_IDLE_SECONDS per call of step().
FILL_MIN_SECONDS = 0.002
FILL_IDLE_SECONDS = 0.02
MAX_FILL_STEPS = 4096


class BatchStream:
    """One sequence decoding in a BatchSession (made by ``BatchSession.make_stream``).

    ``tokens``: every token generated so far (a stop sequence's included); ``finish_reason``:
    None while running, then "stop" (a stop sequence), "length" (max_new_tokens), "cancelled"
    (``cancel()``) or "error" (``error`` holds the GenerationError: logits that cannot be
    sampled). ``take()`` / ``take_piece()`` return what became final since the last call (ids /
    text in generate's streaming pieces), ``text()`` / ``ids()`` the whole visible result.
    ``tag`` is free for the caller. ``cancel()`` may be called from any thread: the row leaves
    at the next step."""

    __slots__ = ("prompt", "sampling", "key", "max_new", "seed", "stops", "formatter", "tokens", "visible",
                 "emitted", "started", "finish_reason", "error", "cancelled", "row", "phase", "tag")

    def __init__(self, prompt, sampling, max_new, seed, stops, formatter):
        self.prompt = prompt               # int32 (P,) token ids, P >= 1
        self.sampling = sampling
        self.key = sampling.as_tuple()     # rows with equal keys are sampled together
        self.max_new = max_new
        self.seed = seed
        self.stops = _StopMatcher(stops) if stops else None  # the row's stop sequences (one matcher)
        self.formatter = formatter
        self.tokens = []
        self.visible = 0                   # tokens final for the output (a possible stop held back)
        self.emitted = 0                   # of those, returned by take()
        self.started = False               # take_piece() returned something (word vocabularies join with spaces)
        self.finish_reason = None
        self.error = None
        self.cancelled = False
        self.row = -1
        self.phase = "new"                 # new -> fill (prompt) -> decode -> done
        self.tag = None

    @property
    def done(self):
        return self.finish_reason is not None

    def cancel(self):
        self.cancelled = True

    def take(self):
        """The token ids that became final since the last call (a list)."""
        new = self.tokens[self.emitted:self.visible]
        self.emitted = self.visible
        return new

    def take_piece(self):
        """take(), formatted as generate(stream=True)'s pieces (text for a text prompt)."""
        ids = self.take()
        piece = self.formatter.piece(ids, not self.started)
        self.started = self.started or len(ids) > 0
        return piece

    def ids(self):
        return self.tokens[:self.visible]

    def text(self):
        """The whole result so far, as generate() returns it (str for a text prompt)."""
        return self.formatter.whole(self.ids())


class BatchSession:
    """A pool of ``capacity`` rows decoding streams with one batched step per ``step()`` call
    (see the module docstring). ``backend``, ``weights`` and ``threads`` as in generate();
    ``threads`` > 1 runs blocks of rows in parallel (the tokens do not depend on it)."""

    def __init__(self, model=None, capacity=64, backend=None, weights=None, threads=1):
        from ..backends import check_threads

        self.model = model_or_default(model)
        if not _is_int(capacity) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1 (rows decoding at once), got {capacity!r}")
        self.capacity = int(capacity)
        self.threads = check_threads(threads)
        self.plan = generation_plan(self.model, default_weights(self.model, weights))
        self.engine = self.plan.engine_for(get_engine(backend))
        self.decode = Rows(self.plan, self.capacity)   # rows decoding: one token fed per step
        self.fill = Rows(self.plan, self.capacity)     # rows reading their prompt (same row index)
        self.decode.status[:, FINISHED] = 1
        self.fill.status[:, FINISHED] = 1
        self.feed = np.zeros((self.capacity, 1), np.int32)        # the token each decode row feeds
        self.fill_prompt = np.zeros((self.capacity, 16), np.int32)
        self._out = np.zeros((self.capacity, 2), np.int32)       # the token the loop samples in a decode step
        self._stops = _stops(self.model, self.plan, None)        # no stop sequences inside the loop
        self._sampling = Sampling().as_tuple()                    # the fill runner's: it never samples (LIMIT 0)
        self._runners = {}
        self.streams = [None] * self.capacity
        self._free = list(range(self.capacity - 1, -1, -1))      # lowest row first: rows stay packed
        self._finished_now = []
        self._decode_seconds = 0.0                                # measured, exponential moving averages
        self._fill_step_seconds = 0.0
        self.steps = 0

    # -- streams ------------------------------------------------------------------------------
    def make_stream(self, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
                    repetition_penalty=None, seed=None, stop=None) -> BatchStream:
        """A validated stream (not yet added); arguments as in generate() for one prompt.
        Raises ValueError as generate() would. Safe to call from any thread."""
        kw = _with_defaults(self.model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty)
        max_new = _count(kw.pop("max_new_tokens"))
        sampling = Sampling(**kw)
        rows, batch, kind = _prompt_rows(self.model, self.plan, prompt)
        if batch:
            raise ValueError("a stream decodes one prompt: give a str or a flat list of token ids")
        stops = [list(s) for s in _stop_seqs(_stops(self.model, self.plan, stop))]
        return BatchStream(rows[0], sampling, max_new, _seeds(seed, 1)[0], stops, _Formatter(self.model, kind))

    @property
    def active(self):
        """Rows in use (reading a prompt or decoding)."""
        return self.capacity - len(self._free)

    @property
    def free(self):
        return len(self._free)

    @property
    def idle(self):
        """Nothing to do: no row in use and nothing left to report."""
        return not self.active and not self._finished_now

    def add(self, stream: BatchStream):
        """Put ``stream`` in a free row; it starts at the next step(). RuntimeError when every
        row is taken (check ``free``)."""
        if stream.phase != "new":
            raise ValueError("this stream was added already")
        if stream.max_new == 0 or stream.cancelled:  # nothing to compute: done at the next step
            stream.phase = "done"
            stream.finish_reason = "cancelled" if stream.cancelled else "length"
            self._finished_now.append(stream)
            return
        if not self._free:
            raise RuntimeError(f"all {self.capacity} rows are taken: wait until a stream finishes")
        b = self._free.pop()
        P = len(stream.prompt)
        if P > self.fill_prompt.shape[1]:
            width = max(P, 2 * self.fill_prompt.shape[1])
            wider = np.zeros((self.capacity, width), np.int32)
            wider[:, :self.fill_prompt.shape[1]] = self.fill_prompt
            self.fill_prompt = wider
            self._runners = {k: r for k, r in self._runners.items() if k[0] != "fill"}  # bound to the old buffer
        self.fill_prompt[b, :P] = stream.prompt
        f = self.fill
        f.state[b] = 0
        f.seen[b] = 0
        f.status[b] = 0
        f.status[b, LEN] = P
        f.status[b, LIMIT] = 0  # once the prompt is read the loop stops the row: it never samples
        stream.row = b
        stream.phase = "fill"
        self.streams[b] = stream

    # -- the step -----------------------------------------------------------------------------
    def step(self):
        """One step of every row (see the module docstring); returns the streams that produced
        tokens or finished in it."""
        changed = self._finished_now
        self._finished_now = []
        live = [s for s in self.streams if s is not None]
        for s in live:
            if s.cancelled:
                self._finish(s, "cancelled")
                changed.append(s)
        filling = [s for s in live if s.phase == "fill"]
        if filling:
            self._read_prompts(filling, any(s.phase == "decode" for s in live))
        decoding = [s for s in live if s.phase == "decode"]
        if decoding:
            self._decode(decoding, changed)
        self.steps += 1
        return changed

    def _read_prompts(self, filling, decoding):
        f = self.fill
        rows = [s.row for s in filling]
        left = int(max(f.status[b, LEN] - f.status[b, POS] for b in rows))
        if self._fill_step_seconds > 0:
            budget = max(self._decode_seconds, FILL_MIN_SECONDS) if decoding else FILL_IDLE_SECONDS
            steps = int(budget / self._fill_step_seconds)
        else:
            steps = 1  # measure first
        steps = max(1, min(steps, left + 1, MAX_FILL_STEPS))  # + 1: the step that computes the last logits
        f.status[:, FINISHED] = 1
        f.status[rows, FINISHED] = 0
        t0 = time.perf_counter()
        self._run("fill", f, self.fill_prompt, steps, self._sampling)
        per_step = (time.perf_counter() - t0) / steps
        self._fill_step_seconds = per_step if not self._fill_step_seconds else (
            0.8 * self._fill_step_seconds + 0.2 * per_step)
        d = self.decode
        for s in filling:
            b = s.row
            if not f.status[b, HAS_LOGITS]:
                continue  # prompt not read yet
            d.state[b] = f.state[b]
            d.logits[b] = f.logits[b]
            d.seen[b] = f.seen[b]
            d.rng[b] = np.uint64(s.seed)
            d.status[b] = 0
            d.status[b, HAS_LOGITS] = 1
            d.status[b, LIMIT] = 2  # see _decode: the loop samples one token, feeds it, and goes no further
            d.status[b, FINISHED] = 1
            f.status[b, FINISHED] = 1
            s.phase = "decode"

    def _decode(self, decoding, changed):
        """Sample the next token of every decoding row and feed the rows that go on, in one step
        of the loop. The parameters most rows share are the loop's own: it samples those rows
        itself (status HAS_LOGITS, NOUT 0, out width and LIMIT 2: sample, feed, stop). The other
        rows are sampled here, group by group, with the engine's sampler, and fed by the same
        step as prompt tokens. A row that ends at the token the loop sampled was fed one token
        more than it needed: its state is dropped with it."""
        d = self.decode
        st = d.status
        keys = {}
        for s in decoding:
            keys[s.key] = keys.get(s.key, 0) + 1
        main = max(keys, key=keys.get)
        inside = decoding if len(keys) == 1 else [s for s in decoding if s.key == main]
        if len(keys) > 1:
            self._sample_here([s for s in decoding if s.key != main], changed)
        rows = np.fromiter((s.row for s in inside), np.intp, len(inside))
        st[rows, NOUT] = 0
        st[rows, FINISHED] = 0
        t0 = time.perf_counter()
        self._run("decode", d, self.feed, 1, main)
        seconds = time.perf_counter() - t0
        self._decode_seconds = seconds if not self._decode_seconds else 0.8 * self._decode_seconds + 0.2 * seconds
        tokens = self._out[rows, 0].tolist()
        bad = st[rows, BAD_LOGITS].tolist()
        for s, tok, b in zip(inside, tokens, bad):
            if b:
                self._fail(s)
            else:
                self._take(s, tok)
            changed.append(s)

    def _sample_here(self, streams, changed):
        """Rows whose parameters are not the loop's this step: sampled with the engine's sampler
        (the loop's own function), one call per group of equal parameters, and set to feed their
        token as a one-token prompt."""
        d = self.decode
        groups = {}
        for s in streams:
            groups.setdefault(s.key, []).append(s)
        ordered = [s for members in groups.values() for s in members]  # each group a contiguous block
        idx = np.fromiter((s.row for s in ordered), np.intp, len(ordered))
        logits, seen = d.logits[idx], d.seen[idx]
        rng = d.rng[idx]  # INOUT: each row's own generator
        finite = np.isfinite(logits).all(axis=1)
        drawn = np.zeros(len(ordered), np.int64)
        a = 0
        for key, members in groups.items():
            b = a + len(members)
            if finite[a:b].all():
                drawn[a:b] = self.engine.sample_logits(logits[a:b], seen[a:b], key, rng[a:b])[:, 0]
            else:  # never sample from logits that are not finite
                for j in range(a, b):
                    if finite[j]:
                        drawn[j] = self.engine.sample_logits(logits[j:j + 1], seen[j:j + 1], key, rng[j:j + 1])[0, 0]
            a = b
        d.rng[idx] = rng
        going, tokens = [], []
        for s, ok, tok in zip(ordered, finite.tolist(), drawn.tolist()):
            changed.append(s)
            if not ok:
                self._fail(s)
            elif self._take(s, tok):
                going.append(s.row)
                tokens.append(tok)
        if going:
            self.feed[going, 0] = tokens
            st = d.status
            st[going, POS] = 0
            st[going, LEN] = 1
            st[going, HAS_LOGITS] = 0
            st[going, FINISHED] = 0

    def _take(self, s, tok):
        """Append a sampled token to stream s; True when the stream goes on, else it is finished
        (a stop sequence, or max_new_tokens)."""
        s.tokens.append(tok)
        n = len(s.tokens)
        hold = 0
        if s.stops is not None:
            stop_len = s.stops.feed((tok,))
            if stop_len:
                s.visible = n - stop_len
                self._finish(s, "stop")
                return False
            hold = s.stops.hold()
        if n >= s.max_new:
            s.visible = n
            self._finish(s, "length")
            return False
        s.visible = n - hold
        return True

    def _fail(self, s):
        s.error = GenerationError(
            f"the model's next-token logits hold NaN or infinite values (after {len(s.tokens)} generated tokens): "
            "nothing can be sampled; check the model's weights")
        self._finish(s, "error")

    def _used(self):
        """Rows 0..used-1 hold every row in use (rows are taken lowest first)."""
        return max((b for b, s in enumerate(self.streams) if s is not None), default=0) + 1

    def _run(self, which, rows, prompt, steps, sampling):
        """``steps`` steps of the loop over the rows (blocks of the rows in use on the threads),
        with ``sampling`` for the rows that hold logits."""
        if self.threads > 1:  # rows stay packed at the low indices; round up so few block layouts occur
            used = self._used()
            blocks = row_blocks(min(self.capacity, -(-used // 8) * 8), self.threads)
        else:
            blocks = [(0, self.capacity)]
        runners = []
        for a, b in blocks:
            key = (which, a, b, sampling)
            runner = self._runners.get(key)
            if runner is None:
                if len(self._runners) > 64:  # parameters come and go: keep the cache small
                    self._runners.clear()
                runner = self._runners[key] = self.engine.runner(self.plan, sampling, self._stops, rows.view(a, b),
                                                                 prompt[a:b], self._out[a:b])
            runners.append(runner)
        if len(runners) == 1:
            runners[0].run(steps)
            return
        from ..backends import run_tasks

        run_tasks([lambda r=r: r.run(steps) for r in runners], self.threads)

    def _finish(self, s, reason):
        s.finish_reason = reason
        if s.row >= 0:
            b = s.row
            self.decode.status[b, FINISHED] = 1
            self.fill.status[b, FINISHED] = 1
            self.streams[b] = None
            self._free.append(b)
            self._free.sort(reverse=True)
            s.row = -1
        s.phase = "done"


def _stop_seqs(stops):
    tokens, offsets = stops
    return [tokens[offsets[j]:offsets[j + 1]].tolist() for j in range(len(offsets) - 1)]

