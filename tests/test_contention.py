"""The contention decision of fastrnn's pool (issue 23): when batch-1 calls stop splitting their
hidden units across threads, and for how long (fastrnn/pool.py, SplitVerdict).

The kernels' barrier stops a split in the middle of a call when its parts mostly waited for each
other (kernels/spin_barrier.h); SplitVerdict decides from those stops, the involuntary context
switches of the part threads and the gangs' durations whether the next gangs split. Every test
here drives it with an injected clock and injected counters: nothing depends on wall time, load
or the number of cores, so nothing can flake. The fresh-process tests only check decisions that
hold whatever the machine does (the first split call never sets a back-off on its own).
"""
import os
import subprocess
import sys
import textwrap

import pytest

from fastrnn import pool

TESTS = os.path.dirname(os.path.abspath(__file__))
Verdict = pool.SplitVerdict
LONG = Verdict.CLEAN_EVIDENCE * 5   # a gang long enough to be judged
SHORT = Verdict.CLEAN_EVIDENCE / 10  # a gang too short to show anything
TAKEN = Verdict.PREEMPTED            # involuntary switches: another thread took a part's core


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def verdict(clock):
    return Verdict(clock=clock)


def test_first_split_gang_of_a_process_does_not_set_the_back_off_on_its_own(verdict):
    """A cold start (threads being created, caches cold, another library's threads still
    spinning from the import) can make the first split look contended: even with preemptions it
    only counts as a strike."""
    assert verdict.report(degraded=True, preempted=10 * TAKEN, elapsed=LONG) is False
    assert verdict.allows_split()
    assert verdict.strikes == 1


def test_a_second_stop_in_a_row_sets_a_short_back_off_that_expires(verdict, clock):
    verdict.report(degraded=True, preempted=0, elapsed=LONG)
    assert verdict.report(degraded=True, preempted=0, elapsed=LONG) is True
    assert not verdict.allows_split()
    assert verdict.hold == Verdict.MIN_HOLD
    clock.now += Verdict.MIN_HOLD * 0.99
    assert not verdict.allows_split()
    clock.now += Verdict.MIN_HOLD * 0.02
    assert verdict.allows_split(), "a verdict of milliseconds held on"


def test_a_preempted_stop_after_the_first_gang_sets_the_back_off_at_once(verdict):
    verdict.report(degraded=False, preempted=0, elapsed=LONG)
    assert verdict.report(degraded=True, preempted=TAKEN, elapsed=LONG) is True
    assert not verdict.allows_split()


def test_a_lone_stop_without_preemption_does_not_hold(verdict):
    """Waiting without another thread on our core (a partner blocked on a page fault, a slow
    wake-up) is not contention unless it repeats."""
    verdict.report(degraded=False, preempted=0, elapsed=LONG)
    assert verdict.report(degraded=True, preempted=TAKEN - 1, elapsed=LONG) is False
    assert verdict.allows_split()
    verdict.report(degraded=False, preempted=0, elapsed=LONG)  # a clean split: the strike is forgotten
    assert verdict.strikes == 0
    assert verdict.report(degraded=True, preempted=0, elapsed=LONG) is False
    assert verdict.allows_split()


def test_unknown_switch_counts_rely_on_repetition(verdict):
    verdict.report(degraded=False, preempted=None, elapsed=LONG)
    assert verdict.report(degraded=True, preempted=None, elapsed=LONG) is False
    assert verdict.report(degraded=True, preempted=None, elapsed=LONG) is True


def test_short_clean_gangs_prove_nothing(verdict):
    """A split gang too short for the barrier to judge neither clears strikes nor a hold."""
    verdict.report(degraded=True, preempted=0, elapsed=LONG)
    for _ in range(5):
        verdict.report(degraded=False, preempted=0, elapsed=SHORT)
    assert verdict.strikes == 1
    assert verdict.report(degraded=True, preempted=0, elapsed=LONG) is True


def test_back_off_doubles_only_while_the_cause_persists(verdict, clock):
    """A busy core for good: every probe after a back-off finds it again, the back-off doubles up
    to MAX_HOLD (probes every MAX_HOLD seconds). Once a probe runs clean, the next verdict starts
    from MIN_HOLD again: a new, short cause is not held for seconds."""
    verdict.report(degraded=True, preempted=TAKEN, elapsed=LONG)
    holds = []
    for _ in range(12):
        assert verdict.report(degraded=True, preempted=TAKEN, elapsed=LONG) is True
        holds.append(verdict.hold)
        clock.now = verdict.until  # the back-off ends: the next gang is a probe
        assert verdict.allows_split()
    assert holds[0] == Verdict.MIN_HOLD
    assert all(b == min(2 * a, Verdict.MAX_HOLD) for a, b in zip(holds, holds[1:]))
    assert holds[-1] == Verdict.MAX_HOLD
    assert verdict.report(degraded=False, preempted=0, elapsed=LONG) is False  # the cause went away
    assert verdict.hold == 0.0 and verdict.strikes == 0
    assert verdict.report(degraded=True, preempted=TAKEN, elapsed=LONG) is True  # a new spinner
    assert verdict.hold == Verdict.MIN_HOLD


def test_reset_and_force(verdict, clock):
    verdict.force()
    assert not verdict.allows_split()
    verdict.reset()
    assert verdict.allows_split() and verdict.hold == 0.0 and verdict.strikes == 0


class _Recorder(Verdict):
    """A SplitVerdict that records what Gang.report hands it."""

    def __init__(self, clock):
        super().__init__(clock=clock)
        self.reports = []

    def report(self, degraded, preempted=None, elapsed=None):
        self.reports.append((degraded, preempted, elapsed))
        return super().report(degraded, preempted, elapsed)


def test_gang_counts_the_involuntary_switches_of_every_part(monkeypatch, clock):
    """Gang.run reads each part thread's involuntary context switches before and after its part
    (injected counter: +3 per part) and hands their sum, the gang's duration and the barrier's
    stop to the verdict; a gang that got one part reports nothing."""
    import threading

    state = pool._State()
    state.verdict = _Recorder(clock)
    monkeypatch.setattr(pool, "_state", state)
    counts = {}

    def fake_switches():  # 0, then 3 more at each read: every part is preempted 3 times
        me = threading.get_ident()
        counts[me] = counts.get(me, -3) + 3
        return counts[me]

    monkeypatch.setattr(pool, "thread_switches", fake_switches)
    ran = []
    with pool.Gang(3) as gang:
        assert gang.size == 3
        gang.run([lambda i=i: ran.append(i) for i in range(3)], abort=lambda: None)
        assert sorted(ran) == [0, 1, 2]
        assert gang.preempted == 3 * 3 and gang.elapsed >= 0.0
        gang.report(degraded=True)
    (degraded, preempted, elapsed), = state.verdict.reports
    assert degraded is True and preempted == gang.preempted and elapsed == gang.elapsed
    state.verdict.force()
    with pool.Gang(3) as gang:
        assert gang.size == 1  # held: one part
        gang.run([lambda: ran.append("alone")], abort=lambda: None)
        assert gang.report(degraded=False) is False
    assert len(state.verdict.reports) == 1


def test_switch_counter_of_this_platform():
    n = pool.thread_switches()
    if sys.platform.startswith("linux"):
        assert isinstance(n, int) and n >= 0
    else:  # pragma: no cover
        assert n is None or n >= 0


FIRST_CALL_SCRIPT = """
    import sys
    import numpy as np
    import fastrnn
    from fastrnn import pool
    sys.path.insert(0, sys.argv[1])
    from helpers import random_recurrent
    from test_generate import char_model

    rng = np.random.default_rng(0)
    if sys.argv[2] in ("predict", "predict-int8"):
        model = fastrnn.Model([random_recurrent(rng, "gru", input_size=8, hidden_size=256, scale=0.05)])
        if sys.argv[2] == "predict-int8":
            model = model.quantize("int8")  # the int8 engine's split (kernels/int8_split.c)
        x = rng.standard_normal((1, 300, 8)).astype(np.float32)
        model.predict(x, threads=2)
    else:
        model = char_model(seed=3, cell="lstm", V=12, E=16, H=256)
        model.generate([1, 2, 3], max_new_tokens=10, seed=0, threads=2)  # one chunk of steps: one gang
    v = pool.split_verdict()
    print("gangs", v.gangs, "strikes", v.strikes, "contended", pool.contended())
    assert v.gangs == 1, "the call did not run as one split gang"
    assert not pool.contended(), "the first split call of a fresh process set the back-off"
    print("ok")
"""


@pytest.mark.parametrize("call", ["predict", "predict-int8", "generate"])
def test_first_split_call_of_a_fresh_process_keeps_splitting(tmp_path, call):
    """Issue 23: the first split call of a process (a command-line run is often nothing else) used
    to set a 2 s back-off from its cold start. Whatever the machine's load, its one gang does not
    now (it may still stop its own split, and count a strike)."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FIRST_CALL_SCRIPT), TESTS, call],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
