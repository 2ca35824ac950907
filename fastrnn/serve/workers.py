"""The threads that compute: one generation engine per language model, one micro-batcher per classifier.

The HTTP side (fastrnn.serve.app) never computes. It validates a request, hands its streams to
the model's GenerationWorker (``submit``) and reads what comes back; the worker's thread runs
the BatchSession loop (fastrnn.generate.batch_session): admit waiting streams into free rows,
one batched step, hand each stream's new text to ``deliver`` (once per step for all streams;
the app turns that into one call on the event loop). The compiled step releases the GIL, so
the event loop serves HTTP while a step runs.

Back-pressure: at most ``max_queue`` streams wait for a free row (beyond those, ``submit``
raises QueueFull: the app answers 429). A stream whose ``cancel()`` was called (its client went
away) leaves its row at the next step. An exception inside a step fails the streams then in the
batch (with an "internal error") and the worker goes on with fresh rows; a stream whose logits
cannot be sampled fails alone (BatchSession).

ClassifyWorker gathers the classify requests that arrive within ``wait_seconds`` of the first
(up to ``max_inputs`` texts) and runs them as one ``model.classify`` call; if that call fails,
each request is run alone so that only the one at fault fails.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback

from ..generate.batch_session import BatchSession


class QueueFull(Exception):
    """More requests wait than the queue bound allows (the app answers 429)."""


class StreamTag:
    """What the server keeps on a BatchStream (``stream.tag``): its request (job), its choice
    index, the request's arrival time, and for the metrics the tokens seen and when."""

    __slots__ = ("job", "index", "arrival", "t_last", "n_tokens")

    def __init__(self, job, index, arrival):
        self.job, self.index, self.arrival = job, index, arrival
        self.t_last = arrival
        self.n_tokens = 0


class GenerationWorker:
    """The engine thread of one language model (see the module docstring).

    ``deliver(items)`` is called from the engine thread once per step with a list of
    ``(job, index, piece, tokens, finish_reason, error)`` for the streams that changed: piece is
    the new final text, tokens the stream's generated-token count, finish_reason None while it
    runs, error a message when finish_reason is "error"."""

    def __init__(self, name, model, deliver, metrics, capacity=64, max_queue=256, threads=1, backend=None,
                 weights=None):
        self.name = name
        self.model = model
        self.session = BatchSession(model, capacity=capacity, backend=backend, weights=weights, threads=threads)
        self.deliver = deliver
        self.metrics = metrics
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting = collections.deque()
        self._stopping = False
        self._thread = None
        self._open = set()  # streams admitted and not yet reported finished (engine thread only)
        metrics.capacity.set(capacity, name)
        metrics.active_rows.set(0, name)
        metrics.queue.set(0, name)

    def make_stream(self, prompt, **params):
        """A validated stream (ValueError as model.generate would raise); any thread."""
        return self.session.make_stream(prompt, **params)

    @property
    def queued(self):
        return len(self._waiting)

    def submit(self, streams):
        """Queue ``streams`` (tags set) for the next free rows; QueueFull when more than
        ``max_queue`` streams would wait beyond the free rows."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + len(streams) > self.session.free + self.max_queue:
                raise QueueFull(f"{len(self._waiting)} streams are waiting for the model {self.name!r} "
                                f"(queue bound {self.max_queue})")
            self._waiting.extend(streams)
            self.metrics.queue.set(len(self._waiting), self.name)
            self._cond.notify()

    def warm_up(self):
        """One short stream through the session before serving (packs the weights for the loop)."""
        stream = self.session.make_stream([0], max_new_tokens=2, temperature=0)
        self.session.add(stream)
        while self.session.active:
            self.session.step()

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"fastrnn-generate-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout=None):
        """Cancel what is left and end the thread."""
        with self._cond:
            self._stopping = True
            for s in self._waiting:
                s.cancel()
            for s in self.session.streams:
                if s is not None:
                    s.cancel()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the engine thread ------------------------------------------------------------------------
    def _run(self):
        while True:
            session = self.session  # replaced by _reset after an exception
            with self._cond:
                while not self._waiting and session.idle and not self._stopping:
                    self._cond.wait()
                while self._waiting and session.free:
                    stream = self._waiting.popleft()
                    self._open.add(stream)
                    session.add(stream)
                if self._stopping and not self._waiting and session.idle:
                    return
                self.metrics.queue.set(len(self._waiting), self.name)
            active = session.active
            try:
                changed = session.step()
            except Exception:  # a bug, or a kernel refusing something: fail this batch, keep serving
                traceback.print_exc(file=sys.stderr)
                changed = self._reset()
            self._publish(changed, active)

    def _reset(self):
        """After an exception in a step: every stream of the session not reported finished
        fails (one that had finished is reported as it is); fresh rows."""
        old = self.session
        self.session = BatchSession(self.model, capacity=old.capacity, backend=old.engine.name,
                                    weights=old.plan.weights, threads=old.threads)
        failed = list(self._open)
        for s in failed:
            if s.finish_reason is None:
                s.finish_reason = "error"
                s.error = "internal error in the generation step (see the server's log)"
        return failed

    def _publish(self, changed, active):
        now = time.monotonic()
        m, name = self.metrics, self.name
        m.steps.inc(name)
        if active:
            m.occupancy.observe(active, name)
        m.active_rows.set(self.session.active, name)
        items, gaps, generated = [], [], 0
        for s in changed:
            tag = s.tag
            n = len(s.tokens)
            new = n - tag.n_tokens
            if new > 0:
                generated += new
                if tag.n_tokens == 0:
                    m.ttft.observe(now - tag.arrival, name)
                    new -= 1
                if new > 0:
                    gaps.extend([(now - tag.t_last) / new] * new)
                tag.n_tokens = n
                tag.t_last = now
            if s.finish_reason is not None:
                m.streams.inc(name, s.finish_reason)
                self._open.discard(s)
            error = str(s.error) if s.error is not None else None
            items.append((tag.job, tag.index, s.take_piece(), n, s.finish_reason, error))
        if generated:
            m.generated_tokens.inc(name, amount=generated)
        if gaps:
            m.itl.observe_many(gaps, name)
        if items:
            self.deliver(items)


class ClassifyJob:
    """One classify request: ``texts``; ``on_done(results, error)`` is called from the worker's
    thread with the list of fastrnn Classification results, or an error message."""

    __slots__ = ("texts", "on_done", "arrival")

    def __init__(self, texts, on_done):
        self.texts, self.on_done = texts, on_done
        self.arrival = time.monotonic()


class ClassifyWorker:
    """The micro-batching thread of one classifier (see the module docstring)."""

    def __init__(self, name, model, metrics, max_queue=256, wait_seconds=0.005, max_inputs=256, threads=1,
                 backend=None):
        from ..classify import labels_of

        self.name, self.model, self.metrics = name, model, metrics
        self.labels = labels_of(model)
        self.max_queue, self.wait_seconds, self.max_inputs = max_queue, wait_seconds, max_inputs
        self.threads, self.backend = threads, backend
        self._cond = threading.Condition()
        self._pending = collections.deque()
        self._stopping = False
        self._thread = None
        metrics.queue.set(0, name)

    def submit(self, job: ClassifyJob):
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} classify requests are waiting for the model {self.name!r} "
                                f"(queue bound {self.max_queue})")
            self._pending.append(job)
            self.metrics.queue.set(len(self._pending), self.name)
            self._cond.notify()

    def warm_up(self):
        list(self.model.classify([[0]], threads=1, backend=self.backend))

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"fastrnn-classify-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout=None):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self):
        """The requests of the next batch: those arriving within wait_seconds of the first."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = time.monotonic() + self.wait_seconds
            batch, count = [], 0
            while True:
                while self._pending and (not batch or count + len(self._pending[0].texts) <= self.max_inputs):
                    job = self._pending.popleft()
                    batch.append(job)
                    count += len(job.texts)
                left = deadline - time.monotonic()
                if count >= self.max_inputs or left <= 0 or self._stopping or (
                        self._pending and count + len(self._pending[0].texts) > self.max_inputs):
                    break
                self._cond.wait(left)
            self.metrics.queue.set(len(self._pending), self.name)
            return batch

    def _classify(self, texts):
        return list(self.model.classify(texts, threads=self.threads, backend=self.backend))

    def _run(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.metrics.classify_batches.inc(self.name)
            texts = [t for job in batch for t in job.texts]
            try:
                results = self._classify(texts)
            except Exception:
                results = None
            if results is not None and len(results) == len(texts):
                at = 0
                for job in batch:
                    job.on_done(results[at:at + len(job.texts)], None)
                    at += len(job.texts)
                self.metrics.classified.inc(self.name, amount=len(texts))
                continue
            for job in batch:  # the batch failed: each request alone, so only the one at fault fails
                try:
                    alone = self._classify(job.texts)
                except Exception as exc:
                    job.on_done(None, f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))
                else:
                    self.metrics.classified.inc(self.name, amount=len(job.texts))
                    job.on_done(alone, None)
