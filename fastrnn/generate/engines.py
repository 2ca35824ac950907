"""Engines: one generation loop per backend, all on the same row buffers.

The C loop (kernels/generate_core.c via _cygenerate), its Numba twin (kernels/numba_generate.py)
and the NumPy reference loop (NumpyRunner, with fastrnn.generate.sampling), chosen like fastrnn's
backends.

Each engine gives ``runner(plan, sampling, stops, rows, prompt, out)``, whose ``run(steps)``
advances every row in lockstep (prompt tokens, then sampled ones) and returns the rows left;
fastrnn.generate.job drives it.
"""
from __future__ import annotations

import numpy as np

from .. import reference
from .sampling import Sampling, process_logits, sample_token

f32 = np.float32

# columns of the per-row status array (kernels/generate_core.h)
POS, LEN, NOUT, HAS_LOGITS, FINISHED, STOP_LEN, BAD_LOGITS, LIMIT = range(8)
STATUS_COLS = 8


class Rows:
    """The caller-owned buffers of B rows (generate_core.h): kept between calls."""

    def __init__(self, plan, batch: int):
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
