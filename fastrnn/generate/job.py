"""A generation job: B rows through an engine's loop, with the output window, stop sequences
(held back while streaming) and the results in the caller's kind."""
from __future__ import annotations

import time

import numpy as np

from .engines import BAD_LOGITS, FINISHED, HAS_LOGITS, LEN, LIMIT, NOUT, POS, STOP_LEN, Rows, row_blocks, stops_list


class _StopMatcher:
    """The stop sequences of one row, matched incrementally (KMP): ``feed(tokens)`` returns the
    length of the longest stop the output ends with after them (0: none); ``hold()`` is the
    longest proper prefix of a stop that the output ends with (tokens to hold back while
    streaming). Each token costs O(1) amortised per stop, so a very long stop stays linear.

    ``sequences`` holds every stop as given, one-token ones included (the serve request check
    reads their lengths). A one-token stop is never a proper prefix of anything held back, so it
    is a set lookup on the last token (``single``), not an automaton; ``kmp_seqs`` are the
    others, each with its failure table and matched-prefix length."""

    __slots__ = ("sequences", "single", "kmp_seqs", "fail", "state")

    def __init__(self, seqs):
        self.sequences = [list(s) for s in seqs]
        self.single = frozenset(s[0] for s in self.sequences if len(s) == 1)
        self.kmp_seqs = [s for s in self.sequences if len(s) > 1]
        self.fail = [self._failure(s) for s in self.kmp_seqs]
        self.state = [0] * len(self.kmp_seqs)

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
        """Advance over ``tokens`` (a sequence of ints); the longest stop the output now ends with."""
        best = 0
        for j, (s, f) in enumerate(zip(self.kmp_seqs, self.fail)):
            k, n = self.state[j], len(s)
            for t in tokens:
                if k == n:  # a whole match (the row ends there): continue as KMP does
                    k = f[k - 1]
                while k and t != s[k]:
                    k = f[k - 1]
                if t == s[k]:
                    k += 1
            self.state[j] = k
            if k == n and n > best:
                best = n
        if not best and tokens and tokens[-1] in self.single:
            best = 1
        return best

    def hold(self):
        return max((k if k < len(s) else f[k - 1] for k, s, f in zip(self.state, self.kmp_seqs, self.fail)),
                   default=0)


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
            gang.report(runner.degraded)  # the pool decides whether the next gangs split
            if runner.degraded:  # the parts mostly waited: this chunk went on with one thread
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
