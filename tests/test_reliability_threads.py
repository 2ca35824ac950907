"""Threads, processes and contention (issue 15): everything runs in fresh interpreters with a
timeout, because the failures these guard against are hangs and crashes.

- Several Python threads calling predict / generate at batch 1 with threads > 1 (the hidden-unit
  split, whose parts wait for each other at a barrier) used to deadlock in a fraction of fresh
  processes: parts of different calls queued behind each other on one shared pool. Many fresh
  processes each run several rounds; every result must equal the one-thread result bit for bit.
- A Session shared by threads: calls are serialised; a call while a stream is open raises.
- fork (multiprocessing's default start method on Linux): the child gets a working pool.
- Oversubscribed split (far more parts than cores): the barrier sees that waiting dominates, the
  call finishes on one thread with the same bits, and after a second such call the next calls do
  not split for a while (tests/test_contention.py tests that decision itself).
"""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
PROCESSES = 12          # fresh interpreters for the deadlock hunt
ROUNDS = 4              # rounds of every scenario in each
PROCESS_TIMEOUT = 120   # seconds; a deadlock shows as a timeout


def run_python(script, *args, cwd, timeout=PROCESS_TIMEOUT):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, cwd=cwd,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-3000:]}"
    return out


DEADLOCK_SCRIPT = """
    import sys, threading
    import numpy as np
    import fastrnn
    from fastrnn.generate import bundled_model
    sys.path.insert(0, sys.argv[1])
    from helpers import random_recurrent

    rng = np.random.default_rng(int(sys.argv[2]))
    models = [fastrnn.Model([random_recurrent(rng, "lstm", input_size=8, hidden_size=128, scale=0.1)]),
              fastrnn.Model([random_recurrent(rng, "gru", input_size=8, hidden_size=144, scale=0.1,
                                              linear_before_reset=False)])]
    x = rng.standard_normal((1, 60, 8)).astype(np.float32)
    char = bundled_model()
    want_predict = [m.predict(x, threads=1) for m in models]
    want_text = char.generate("def ", max_new_tokens=40, seed=5, threads=1)

    def scenario(n_threads, counts, generate):
        errors, start = [], threading.Barrier(n_threads)

        def work(i):
            try:
                start.wait()
                t = counts[i % len(counts)]
                if generate and i % 2 == 0:
                    assert char.generate("def ", max_new_tokens=40, seed=5, threads=t) == want_text
                else:
                    k = i % 2
                    assert np.array_equal(models[k].predict(x, threads=t), want_predict[k])
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

    for _ in range(int(sys.argv[3])):
        scenario(2, [3], False)                  # 2 Python threads, threads=3
        scenario(8, [1, 2, 3, 4], False)         # 8 Python threads, mixed counts
        scenario(2, [4], True)                   # 2 threads generating with threads=4
        scenario(4, [8, 16], True)               # more threads than cores
    print("ok")
"""


def test_concurrent_split_calls_never_deadlock(tmp_path):
    def one(seed):
        return run_python(DEADLOCK_SCRIPT, TESTS, seed, ROUNDS, cwd=tmp_path).stdout.strip()

    with ThreadPoolExecutor(2) as ex:  # two fresh interpreters at a time
        results = list(ex.map(one, range(PROCESSES)))
    assert results == ["ok"] * PROCESSES


def test_shared_session(tmp_path):
    script = """
        import threading
        import numpy as np
        from fastrnn.generate import bundled_model

        model = bundled_model()
        s = model.session(seed=1)
        s.feed("def ")
        errors, lengths = [], []
        start = threading.Barrier(4)

        def work(i):
            try:
                start.wait()
                for k in range(15):
                    if i == 0:
                        s.feed("x = 1\\n")
                    elif i == 1:
                        lengths.append(len(s.generate(20, temperature=0.8)))
                    elif i == 2:
                        s.sample()
                        p = s.probabilities()
                        assert abs(p.sum() - 1) < 1e-9
                    else:
                        snap = s.save_state()
                        s.restore_state(snap)
                        s.states()
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert lengths == [20] * 15, lengths

        # a call while a stream is open raises instead of changing the state under it
        stream = s.generate(50, stream=True)
        next(stream)
        try:
            s.feed("a")
        except RuntimeError as exc:
            assert "stream" in str(exc)
        else:
            raise AssertionError("feed during an open stream did not raise")
        stream.close()
        s.feed("a")  # usable again
        # a stream never started changes nothing
        snap = s.save_state()
        s.generate(10, stream=True)
        after = s.save_state()
        assert all(np.array_equal(getattr(snap["rows"], f), getattr(after["rows"], f)) for f in
                   ("state", "logits", "status"))
        print("ok")
    """
    assert run_python(script, cwd=tmp_path).stdout.strip() == "ok"


def test_fork_child_gets_a_working_pool(tmp_path):
    script = """
        import multiprocessing as mp
        import sys
        import numpy as np
        import fastrnn
        from fastrnn.generate import bundled_model
        sys.path.insert(0, sys.argv[1])
        from helpers import random_recurrent

        rng = np.random.default_rng(0)
        model = fastrnn.Model([random_recurrent(rng, "lstm", input_size=8, hidden_size=128, scale=0.1)])
        x = rng.standard_normal((1, 50, 8)).astype(np.float32)
        xb = rng.standard_normal((32, 20, 8)).astype(np.float32)
        char = bundled_model()

        def work(_):
            return (model.predict(x, threads=2), model.predict(xb, threads=2),
                    char.generate("def ", max_new_tokens=30, seed=2, threads=2))

        parent = work(0)  # the parent's workers exist before the fork
        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map_async(work, range(4)).get(timeout=60)
        for child in results:
            assert np.array_equal(child[0], parent[0]) and np.array_equal(child[1], parent[1])
            assert child[2] == parent[2]
        print("ok")
    """
    assert run_python(script, TESTS, cwd=tmp_path).stdout.strip() == "ok"


def test_oversubscribed_split_falls_back_to_one_thread(tmp_path):
    """Four parts per core: every part waits most of the time, so the barrier's verdict stops the
    split; the call still gives the one-thread bits. The first split call of the process does not
    set a back-off on its own (it may be a cold start, fastrnn/pool.py); the second stop in a row
    does, and the following gangs get one part."""
    script = """
        import os, sys
        import numpy as np
        import fastrnn
        from fastrnn import pool
        sys.path.insert(0, sys.argv[1])
        from helpers import random_recurrent

        parts = 4 * len(os.sched_getaffinity(0))
        rng = np.random.default_rng(0)
        model = fastrnn.Model([random_recurrent(rng, "gru", input_size=4, hidden_size=16 * parts, scale=0.05)])
        x = rng.standard_normal((1, 2000, 4)).astype(np.float32)
        want = model.predict(x, threads=1)
        verdict = pool.split_verdict()
        assert not pool.contended()
        got = model.predict(x, threads=parts)
        assert np.array_equal(got, want)
        assert verdict.strikes == 1, "waiting dominated but the split went on"
        assert not pool.contended(), "the first split call of the process set the back-off on its own"
        got = model.predict(x, threads=parts)
        assert np.array_equal(got, want)
        assert pool.contended(), "waiting dominated twice in a row but the next calls would split"
        assert pool.Gang(parts).size == 1
        # a reverse scan with a shorter length: the rest of the chunk runs backwards on one thread
        rev = fastrnn.Model([random_recurrent(rng, "lstm", input_size=4, hidden_size=16 * parts, scale=0.05,
                                              reverse=True)])
        want = rev.predict(x, lengths=[1777], threads=1, return_state=True)
        pool.reset_contention()
        got = rev.predict(x, lengths=[1777], threads=parts, return_state=True)
        assert verdict.strikes == 1
        assert np.array_equal(got[0], want[0])
        assert all(np.array_equal(a, b) for a, b in zip(got[1][0], want[1][0]))
        print("ok")
    """
    assert run_python(script, TESTS, cwd=tmp_path).stdout.strip() == "ok"
