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

Contention (issue 23): the split kernels stop splitting in the middle of a call when, over
windows after a warm-up, their parts mostly waited for each other (kernels/spin_barrier.h: the
split's step time against the one-thread step time estimated from the parts' busy time); the call
then finishes on one thread. Whether the *next* gangs split is ``SplitVerdict``'s decision, made
from what the gangs saw: the first split gang of a process (a cold start: threads being created,
caches cold) never sets a back-off on its own; a stop counts as contention when another thread
took a part's core (involuntary context switches of the part threads, ``getrusage``), or when
it repeats in the next gang. The back-off then lasts MIN_HOLD seconds, doubling (up to MAX_HOLD)
only while the probes that follow it keep finding contention, and a clean split that ran long
enough to be judged ends it: a cause that lasted milliseconds (another library's threads spinning
for a moment) costs about that long on one thread, not seconds, while a process busy on a core
for good is probed every MAX_HOLD seconds (a probe costs about 30 ms of split steps).

After ``fork`` the child has none of the parent's threads: ``os.register_at_fork`` gives it a
fresh, empty pool (and fresh locks) so its first call starts new workers.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time

try:
    import resource
except ImportError:  # pragma: no cover - not on this platform (Windows)
    resource = None

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


class SplitVerdict:
    """Whether batch-1 gangs may split now, decided from the outcome of the split gangs so far.

    ``report(degraded, preempted, elapsed)`` after every split gang: ``degraded``, the kernel's
    barrier stopped the split (waiting dominated over judged windows); ``preempted``, involuntary
    context switches of the part threads during the gang (None when unknown); ``elapsed``, the
    gang's wall seconds. ``allows_split()`` before a gang. ``clock`` is injectable (tests)."""

    MIN_HOLD = 0.05        # seconds of one-thread gangs after the first contention verdict
    MAX_HOLD = 2.0         # the longest back-off (a busy core for good is probed this often)
    CLEAN_EVIDENCE = 0.04  # a split gang this long without a stop shows the split works
    PREEMPTED = 2          # involuntary switches of the parts that mean another thread took a core

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.until = 0.0    # gangs before this time get one part
        self.hold = 0.0     # the back-off last given; 0 after a clean split
        self.strikes = 0    # split gangs stopped by the barrier since the last clean one
        self.gangs = 0      # split gangs reported (the first of a process is a cold start)

    def allows_split(self):
        return self.clock() >= self.until

    def report(self, degraded, preempted=None, elapsed=None):
        """The outcome of one split gang; returns True when it set a back-off."""
        with self.lock:
            self.gangs += 1
            if not degraded:
                if elapsed is None or elapsed >= self.CLEAN_EVIDENCE:
                    self.strikes, self.hold = 0, 0.0
                return False
            self.strikes += 1
            taken = preempted is not None and preempted >= self.PREEMPTED
            if self.strikes < 2 and (self.gangs == 1 or not taken):
                return False  # a cold start, or no thread took our core: not enough to hold
            self._hold()
            return True

    def force(self):
        """A back-off as after a confirmed verdict (note_contention)."""
        with self.lock:
            self._hold()

    def _hold(self):
        self.hold = self.MIN_HOLD if self.hold <= 0.0 else min(self.MAX_HOLD, 2.0 * self.hold)
        self.until = self.clock() + self.hold

    def reset(self):
        with self.lock:
            self.until, self.hold, self.strikes = 0.0, 0.0, 0


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.idle = []            # workers waiting for a job
        self.count = 0            # workers alive
        self.limit = 0            # the largest threads - 1 asked for so far
        self.verdict = SplitVerdict()


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
    """Gangs get one part for a while, as after a confirmed contention verdict."""
    _state.verdict.force()


def contended():
    """True while gangs get one part (a contention back-off is running)."""
    return not _state.verdict.allows_split()


def reset_contention():
    """Forget every contention verdict (benchmarks: each load starts afresh)."""
    _state.verdict.reset()


def split_verdict():
    """The process's SplitVerdict (its fields show what the gangs saw)."""
    return _state.verdict


def thread_switches():
    """Involuntary context switches of the calling thread so far, or None where unknown."""
    if resource is None or not hasattr(resource, "RUSAGE_THREAD"):
        return None
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


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
    will never come (called if the caller's own part raised before entering its kernel).
    After ``run``, ``report(degraded)`` hands the outcome to the process's SplitVerdict."""

    def __init__(self, parts):
        parts = int(parts)
        split = parts > 1 and _state.verdict.allows_split()
        self.workers = _acquire(parts - 1, parts - 1) if split else []
        self.size = 1 + len(self.workers)
        self.preempted = None  # involuntary context switches of the parts during run()
        self.elapsed = None    # wall seconds of run()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.workers:
            _release(self.workers)
            self.workers = []

    def report(self, degraded):
        """The split ran (size > 1): ``degraded`` = its barrier stopped it. Returns True when the
        next gangs get one part for a while."""
        if self.size == 1 or self.elapsed is None:
            return False
        return _state.verdict.report(bool(degraded), self.preempted, self.elapsed)

    def run(self, tasks, abort):
        assert len(tasks) == self.size
        if self.size == 1:
            tasks[0]()
            return
        done = _Done(len(self.workers))
        switches = [None] * self.size

        def counted(i, task):
            def run_counted():
                before = thread_switches()
                try:
                    task()
                finally:
                    after = thread_switches()
                    switches[i] = None if before is None or after is None else after - before
            return run_counted

        def job_for(task):
            def job():
                try:
                    task()
                except BaseException as exc:  # noqa: B902
                    done.finished(exc)
                else:
                    done.finished()
            return job

        t0 = time.perf_counter()
        for i, (w, t) in enumerate(zip(self.workers, tasks[1:]), 1):
            w.jobs.put(job_for(counted(i, t)))
        own_error = None
        try:
            counted(0, tasks[0])()
        except BaseException as exc:  # noqa: B902 - e.g. KeyboardInterrupt before our kernel started
            own_error = exc
            abort()
        try:
            done.wait()
        except BaseException:
            abort()
            raise
        self.elapsed = time.perf_counter() - t0
        self.preempted = None if None in switches else sum(switches)
        if own_error is not None:
            raise own_error
        if done.error is not None:
            raise done.error
