"""fastrnn's worker threads: independent tasks, and gangs of parts that must run at the same time.

Two kinds of work run on the workers (each kernel call releases the GIL):

- ``run_tasks(tasks, threads)``: independent tasks (the two directions of a layer, blocks of batch
  rows). The calling thread and up to ``threads - 1`` idle workers take tasks from a shared
  counter until none is left. A caller never queues behind another caller: if no worker is idle
  it runs its tasks itself.
- ``gang(parts)``: the batch-1 split kernels (kernels/rnn_split.c, generate_core.c), whose parts
  wait for each other at a barrier after every step, so all of them must be running at once.
  ``gang`` reserves idle workers for the parts other than the caller's and returns how many
  parts it got (1 when none is idle: the caller then runs the one-thread kernel; the split
  results are bitwise those of one thread, so nothing but the speed depends on it).

  Root cause of the deadlocks this replaces: every caller submitted its parts to ONE shared
  ThreadPoolExecutor queue. With two Python threads each running a split call, the pool's
  workers could each pick up a part of a different call; every part then waited at its barrier
  for a sibling that sat in the queue behind it, forever. Reserving the workers before the parts
  start makes that impossible: a part only starts when all its siblings have a thread.

Tasks may be generator functions: they yield between chunks of work, which is where a run is
cancelled (another task failed, or the caller got KeyboardInterrupt). A KeyboardInterrupt in the
caller is re-raised only once every worker of the call has stopped, so nothing keeps writing into
buffers after the call has returned.

Contention: a gang whose parts mostly waited for each other (another process busy on a core,
see kernels/spin_barrier.h) reports it with ``note_contention()``; gangs then get one part
(the caller alone) for CONTENTION_BACKOFF seconds, after which the split is tried again.

After ``fork`` the child has none of the parent's threads: ``os.register_at_fork`` gives it a
fresh, empty pool (and fresh locks) so its first call starts new workers.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time

CONTENTION_BACKOFF = 2.0  # seconds of one-thread gangs after contention was seen
MAX_WORKERS = 256


class _Worker:
    """A thread that runs one job at a time, handed to it through its own queue."""

    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="fastrnn-worker", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            job = self.jobs.get()
            job()
            job = None  # an idle worker must not keep the last job's buffers alive (its closures hold them)


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.idle = []            # workers waiting for a job
        self.count = 0            # workers alive
        self.limit = 0            # the largest threads - 1 asked for so far
        self.contended_until = 0.0


_state = _State()


def _reset_after_fork():
    global _state
    _state = _State()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _acquire(n, want_limit):
    """Up to n idle workers (new ones are started while fewer than want_limit exist)."""
    st = _state
    with st.lock:
        st.limit = min(MAX_WORKERS, max(st.limit, want_limit))
        got = st.idle[len(st.idle) - min(n, len(st.idle)):]
        del st.idle[len(st.idle) - len(got):]
        while len(got) < n and st.count < st.limit:
            got.append(_Worker())
            st.count += 1
    return got


def _release(workers):
    st = _state
    with st.lock:
        st.idle.extend(workers)


def note_contention():
    """A gang mostly waited: the next gangs within CONTENTION_BACKOFF seconds get one part."""
    _state.contended_until = time.monotonic() + CONTENTION_BACKOFF


def contended():
    return time.monotonic() < _state.contended_until


class _Done:
    """Counts finished jobs; the first exception is kept."""

    def __init__(self, n):
        self.cond = threading.Condition(threading.Lock())
        self.left = n
        self.error = None
        self.cancel = False

    def finished(self, error=None):
        with self.cond:
            if error is not None and self.error is None:
                self.error = error
                self.cancel = True
            self.left -= 1
            if self.left == 0:
                self.cond.notify_all()

    def wait(self):
        """Until every job has finished; a KeyboardInterrupt meanwhile cancels the others and is
        raised once they have stopped."""
        pending = None
        while True:
            try:
                with self.cond:
                    while self.left:
                        self.cond.wait()
                break
            except BaseException as exc:  # noqa: B902 - re-raised below, after the workers stop
                self.cancel = True
                pending = pending or exc
        if pending is not None:
            raise pending


def _run_one(task, done):
    """Run a task (a function, or a generator function yielding between chunks)."""
    result = task()
    if result is not None and hasattr(result, "__next__"):
        for _ in result:
            if done.cancel:
                result.close()
                break


def run_tasks(tasks, threads):
    """Run independent zero-argument callables (or generator functions) on up to ``threads``
    threads, the caller's included. Exceptions are re-raised in the caller."""
    tasks = list(tasks)
    if threads <= 1 or len(tasks) <= 1:
        for t in tasks:
            _run_one(t, _Done(0))
        return
    workers = _acquire(min(threads, len(tasks)) - 1, threads - 1)
    if not workers:
        for t in tasks:
            _run_one(t, _Done(0))
        return
    counter = itertools.count()  # next() is atomic under the GIL
    done = _Done(len(workers))

    def loop():
        for i in counter:
            if i >= len(tasks) or done.cancel:
                return
            _run_one(tasks[i], done)

    def job():
        try:
            loop()
        except BaseException as exc:  # noqa: B902 - handed to the caller
            done.finished(exc)
        else:
            done.finished()

    for w in workers:
        w.jobs.put(job)
    own_error = None
    try:
        loop()
    except BaseException as exc:  # noqa: B902
        own_error = exc
        done.cancel = True
    try:
        done.wait()
    finally:
        _release(workers)
    if own_error is not None:
        raise own_error
    if done.error is not None:
        raise done.error


class Gang:
    """Workers reserved for the parts of split kernel calls (see the module doc). ``size`` is
    the number of parts to make (>= 1); ``run(tasks, abort)`` runs len(tasks) == size parts at
    once, tasks[0] on the calling thread; ``abort()`` releases parts waiting for a part that
    will never come (called if the caller's own part raised before entering its kernel)."""

    def __init__(self, parts):
        parts = int(parts)
        self.workers = _acquire(parts - 1, parts - 1) if parts > 1 and not contended() else []
        self.size = 1 + len(self.workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.workers:
            _release(self.workers)
            self.workers = []

    def run(self, tasks, abort):
        assert len(tasks) == self.size
        if self.size == 1:
            tasks[0]()
            return
        done = _Done(len(self.workers))

        def job_for(task):
            def job():
                try:
                    task()
                except BaseException as exc:  # noqa: B902
                    done.finished(exc)
                else:
                    done.finished()
            return job

        for w, t in zip(self.workers, tasks[1:]):
            w.jobs.put(job_for(t))
        own_error = None
        try:
            tasks[0]()
        except BaseException as exc:  # noqa: B902 - e.g. KeyboardInterrupt before our kernel started
            own_error = exc
            abort()
        try:
            done.wait()
        except BaseException:
            abort()
            raise
        if own_error is not None:
            raise own_error
        if done.error is not None:
            raise done.error
