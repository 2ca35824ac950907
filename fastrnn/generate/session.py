"""Session: stateful token-by-token generation for embedded use."""
from __future__ import annotations

import threading

import numpy as np

from .engines import FINISHED, HAS_LOGITS, NOUT, Rows, get_engine
from .job import GenerationError, _Formatter, _Job, _stream_pieces
from .options import _count, _prompt_rows, _seeds, _stops, _with_defaults, generation_defaults, model_or_default
from .plan import generation_plan
from .run import default_weights
from .sampling import Sampling, distribution


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
        self.model = model_or_default(model)
        self.plan = generation_plan(self.model, default_weights(self.model, weights))
        self.defaults = _with_defaults(self.model, temperature=temperature, top_k=top_k, top_p=top_p,
                                       repetition_penalty=repetition_penalty)
        self.max_new_tokens = generation_defaults(self.model)["max_new_tokens"]
        Sampling(**self.defaults)  # validate now
        self.engine = self.plan.engine_for(get_engine(backend))
        self._rows = Rows(self.plan, 1)
        self.plan.initial_rows(initial_state, 1, self._rows.state)
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
        return distribution(self.engine.process_logits(logits, self._rows.seen, sampling.as_tuple())[0], sampling)

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
