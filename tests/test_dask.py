"""fastrnn.dask on a real LocalCluster of worker processes (issue 16).

One cluster for the module (2 processes x 1 thread, started once: about 2 s). Every wait on the
cluster has a timeout, so a regression shows as a failure, not a hung CI job. The SIGKILL test
runs last: it leaves the cluster with a restarted worker.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
from distributed import Client

import fastrnn
import fastrnn.dask
from fastrnn.classify import BUNDLED_CLASSIFIER, bundled_classifier
from fastrnn.classify import classify as classify_here
from fastrnn.cli import main
from fastrnn.generate import bundled_model

TIMEOUT = 120  # seconds for any one computation on the cluster (they take well under 10 s)

WORDS = ["house", "maison", "Haus", "casa", "gato", "chat", "Katze", "tree", "arbre", "Baum", "bonjour",
         "hello", "hallo", "Fenster", "window", "fenêtre", "żółw", "kwiat", "blomma", "bloem", "flor"]


def corpus(n, seed=0, max_words=4):
    """n lines of 0..max_words words (some empty), deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(0, max_words + 1))) for _ in range(n)]


@pytest.fixture(scope="module")
def client():
    cluster = fastrnn.dask.local_cluster(n_workers=2, threads_per_worker=1)
    c = Client(cluster)
    try:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c
    finally:
        c.close()
        cluster.close()


def compute(client, collection):
    return client.compute(collection).result(timeout=TIMEOUT)


def assert_same_classifications(got, expected):
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert (g.label, g.index, g.unknown_fraction) == (e.label, e.index, e.unknown_fraction), k
        # bitwise: the compiled kernels give a row the same result in any batch
        assert g.probabilities.dtype == np.float32 and np.array_equal(g.probabilities, e.probabilities), k


# ---------------------------------------------------------------------------------------------
# Workers: environment, threads, model cache
# ---------------------------------------------------------------------------------------------

def test_workers_get_thread_limits_before_start(client):
    def probe():
        from fastrnn.dask import THREAD_ENV_VARS, _task_threads

        import fastrnn as f
        return {name: os.environ.get(name) for name in THREAD_ENV_VARS}, f.get_num_threads(), _task_threads(None)

    seen = client.run(probe)
    assert len(seen) == 2
    for env, fastrnn_threads, task_threads in seen.values():
        assert env == {name: "1" for name in fastrnn.dask.THREAD_ENV_VARS}
        assert fastrnn_threads == 1 and task_threads is None  # FASTRNN_NUM_THREADS set: fastrnn's setting (1)


def test_task_threads_default_is_one_without_env(monkeypatch):
    monkeypatch.delenv("FASTRNN_NUM_THREADS", raising=False)
    assert fastrnn.dask._task_threads(None) == 1
    assert fastrnn.dask._task_threads(3) == 3


def test_model_cache_is_keyed_by_path_and_file_identity(tmp_path):
    path = tmp_path / "langid.safetensors"
    shutil.copyfile(BUNDLED_CLASSIFIER, path)
    ref = fastrnn.dask.model_ref(str(path), "langid")
    first = fastrnn.dask.worker_model(ref)
    assert fastrnn.dask.worker_model(ref) is first  # cached
    loads = fastrnn.dask.load_count[str(path)]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the same bytes, "rewritten"
    second = fastrnn.dask.worker_model(ref)
    assert second is not first and fastrnn.dask.load_count[str(path)] == loads + 1
    assert fastrnn.dask.worker_model(ref) is second


def test_model_ref_resolution(tmp_path):
    assert fastrnn.dask.model_ref(None, "langid") == "bundled:langid"
    assert fastrnn.dask.model_ref("char_lstm", "langid") == "bundled:char_lstm"
    assert fastrnn.dask.model_ref("m.safetensors", "langid") == os.path.abspath("m.safetensors")
    with pytest.raises(TypeError, match="file path, not a loaded Model"):
        fastrnn.dask.model_ref(bundled_classifier(), "langid")
    with pytest.raises(ValueError, match="unknown bundled model"):
        fastrnn.dask.model_ref("bundled:nope", "langid")


def test_model_loaded_once_per_worker_process(client, tmp_path):
    path = tmp_path / "once.safetensors"
    shutil.copyfile(BUNDLED_CLASSIFIER, path)
    texts = corpus(400, seed=5)
    compute(client, fastrnn.dask.classify(db.from_sequence(texts, npartitions=12), str(path)))
    counts = client.run(lambda: fastrnn.dask.load_count[str(path)])
    assert sum(counts.values()) >= 1 and max(counts.values()) == 1, counts  # 12 partitions, <= 1 load each


# ---------------------------------------------------------------------------------------------
# Results equal the single-process results, for any partitioning
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("partition_size", [5000, 401, 171, 29])
def test_classify_bag_equals_single_process(client, partition_size):
    texts = corpus(1200, seed=1) + ["", "x" * 3000, "Zażółć gęślą jaźń", "안녕하세요"]
    expected = list(classify_here(bundled_classifier(), texts))
    assert expected[-1].label == "unknown" and expected[-1].index is None
    bag = db.from_sequence(texts, partition_size=partition_size)
    assert bag.npartitions == -(-len(texts) // partition_size)
    got = compute(client, fastrnn.dask.classify(bag, batch_size=16))
    assert_same_classifications(got, expected)


def test_classify_bag_of_text_file_equals_single_process(client, tmp_path):
    texts = corpus(3000, seed=2)
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    bag = db.read_text(str(path), blocksize=7000, encoding="utf-8").map(lambda s: s.rstrip("\n"))
    assert bag.npartitions > 3
    got = list(fastrnn.dask.ordered(fastrnn.dask.classify(bag), client=client, window=2, timeout=TIMEOUT))
    assert_same_classifications(got, list(classify_here(bundled_classifier(), texts)))


@pytest.mark.parametrize("npartitions", [1, 4])
def test_classify_series_gives_frame_with_same_index(client, npartitions):
    texts = corpus(500, seed=3)
    index = pd.Index(np.arange(len(texts)) * 3 + 100, name="row")
    series = dd.from_pandas(pd.Series(texts, index=index, name="text"), npartitions=npartitions)
    frame = compute(client, fastrnn.dask.classify(series))
    model = bundled_classifier()
    labels = fastrnn.classify.labels_of(model)
    assert list(frame.columns) == ["label"] + labels + ["unknown_fraction"]
    assert frame.index.equals(index)
    expected = list(classify_here(model, texts))
    assert "unknown" in frame["label"].tolist()  # the corpus has empty lines
    assert frame["label"].tolist() == [e.label for e in expected]
    assert frame["unknown_fraction"].tolist() == [e.unknown_fraction for e in expected]
    probs = frame[labels].to_numpy()
    assert probs.dtype == np.float32 and np.array_equal(probs, np.stack([e.probabilities for e in expected]))

    labels_only = compute(client, fastrnn.dask.classify(series, return_probs=False))
    assert list(labels_only.columns) == ["label", "unknown_fraction"]
    assert labels_only["label"].tolist() == frame["label"].tolist()


@pytest.mark.parametrize("npartitions", [1, 5])
def test_generate_bag_and_series_equal_single_process(client, npartitions):
    prompts = [f"{w} {i}" for i, w in enumerate(["def", "class", "import", "for", "while"] * 6)]
    model = bundled_model()
    expected = model.generate(prompts, max_new_tokens=25, temperature=0.8, seed=11)
    bag = db.from_sequence(prompts, npartitions=npartitions)
    # batch_size=4: rows decoded 4 at a time inside a partition; still the same text per row
    got = compute(client, fastrnn.dask.generate(bag, max_new_tokens=25, temperature=0.8, seed=11, batch_size=4))
    assert got == expected
    series = dd.from_pandas(pd.Series(prompts, index=np.arange(len(prompts)) * 7 + 3), npartitions=npartitions)
    got_series = compute(client, fastrnn.dask.generate(series, max_new_tokens=25, temperature=0.8, seed=11))
    assert got_series.tolist() == expected and got_series.index.equals(series.index.compute())


def test_generate_with_a_seed_per_row(client):
    prompts = ["def ", "def ", "class ", "import os"]
    seeds = [1, 2, 3, 4]
    expected = bundled_model().generate(prompts, max_new_tokens=20, seed=seeds)
    assert expected[0] != expected[1]  # different seeds: different samples of the same prompt
    bag = db.from_sequence(list(zip(prompts, seeds)), npartitions=3)
    assert compute(client, fastrnn.dask.generate(bag, max_new_tokens=20)) == expected


def test_api_rejects_bad_calls(client):
    bag = db.from_sequence(["a"], npartitions=1)
    with pytest.raises(TypeError, match="unknown option"):
        fastrnn.dask.classify(bag, batchsize=3)
    with pytest.raises(TypeError, match="Bag or a dask.dataframe.Series"):
        fastrnn.dask.classify(["a", "b"])
    with pytest.raises(TypeError, match="one column"):
        fastrnn.dask.classify(dd.from_pandas(pd.DataFrame({"t": ["a"]}), npartitions=1))
    with pytest.raises(ValueError, match="seed must be an int"):
        fastrnn.dask.generate(bag, seed=[1])


# ---------------------------------------------------------------------------------------------
# A model the workers cannot load: one clear error, quickly
# ---------------------------------------------------------------------------------------------

def test_missing_model_gives_one_clear_error(client, tmp_path):
    missing = tmp_path / "no-such-model.safetensors"
    bag = db.from_sequence(corpus(100), npartitions=8)
    pids = client.run(os.getpid)
    with pytest.raises(fastrnn.dask.ModelLoadError) as info:  # within compute's timeout: no retry loop, no hang
        compute(client, fastrnn.dask.classify(bag, str(missing)))
    assert client.run(os.getpid) == pids  # the error came back from the task: no worker died or restarted
    message = str(info.value)
    assert str(missing) in message and "could not load the model" in message and "Dask worker tcp://" in message
    assert "No such file" in message


def test_corrupt_model_gives_one_clear_error(client, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(200))
    bag = db.from_sequence(["def "] * 10, npartitions=4)
    with pytest.raises(fastrnn.ModelFormatError) as info:
        compute(client, fastrnn.dask.generate(bag, str(corrupt), max_new_tokens=3, seed=1))
    assert isinstance(info.value, fastrnn.dask.ModelLoadError) and str(corrupt) in str(info.value)
    # the cluster is still usable afterwards
    assert compute(client, db.from_sequence([1, 2, 3]).map(lambda x: x + 1)) == [2, 3, 4]


def test_cli_bad_model_is_one_line_on_stderr(client, tmp_path, capsys):
    lines = tmp_path / "in.txt"
    lines.write_text("house\n", encoding="utf-8")
    code = main(["classify", str(lines), "--model", str(tmp_path / "missing.safetensors"),
                 "--dask", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.safetensors" in err


# ---------------------------------------------------------------------------------------------
# Command line: --dask gives the same output file
# ---------------------------------------------------------------------------------------------

def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_classify_dask_output_identical(client, tmp_path, capsys, fmt):
    path = tmp_path / "corpus.txt"
    path.write_bytes(("\n".join(corpus(2500, seed=4)) + "\r\nlast line without newline").encode("utf-8"))
    single = run_main(["classify", str(path), "--format", fmt], capsys)
    for size in ("97", "777", "100000"):
        spread = run_main(["classify", str(path), "--format", fmt, "--dask", client.scheduler.address,
                           "--partition-size", size, "--batch-size", "32"], capsys)
        assert spread == single, size
    assert len(single.splitlines()) == 2501 + (fmt == "csv")


def test_cli_generate_batch_dask_output_identical(client, tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"def f{i}(\n" for i in range(40)), encoding="utf-8")
    argv = ["generate", "--batch", str(path), "-n", "15", "--seed", "5"]
    single = run_main(argv, capsys)
    spread = run_main(argv + ["--dask", client.scheduler.address, "--partition-size", "7"], capsys)
    assert spread == single and len(single.splitlines()) == 40
    assert json.loads(single.splitlines()[3])["prompt"] == "def f3("


def test_cli_generate_dask_needs_batch(client, capsys):
    assert main(["generate", "--prompt", "x", "--dask", client.scheduler.address]) == 2
    assert "--batch" in capsys.readouterr().err


def test_cli_dask_local_cluster_in_a_subprocess(tmp_path):
    """`--dask local:2` starts (and stops) its own cluster; output identical to the plain run."""
    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus(3000, seed=6)) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "fastrnn.cli", "classify", str(path)]
    single = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    spread = subprocess.run(cmd + ["--dask", "local:2", "--partition-size", "500"], capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=tmp_path)
    assert single.returncode == 0 and spread.returncode == 0, spread.stderr
    assert spread.stdout == single.stdout and len(spread.stdout.splitlines()) == 3000
    assert spread.stderr == ""


def test_cli_dask_address_errors(capsys, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("house\n", encoding="utf-8")
    assert main(["classify", str(path), "--dask", "local:zero"]) == 2
    assert "local:N" in capsys.readouterr().err
    assert main(["classify", str(path), "--dask", "somewhere"]) == 2
    assert "tcp://" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Memory stays flat on a long input; a SIGKILLed worker does not change the output
# ---------------------------------------------------------------------------------------------

def worker_rss(client):
    import psutil  # a dependency of distributed

    return client.run(lambda: psutil.Process().memory_info().rss)


def test_worker_memory_flat_on_long_input(client):
    """150,000 distinct lines of 308 characters (about 52 MB as Python strings), streamed in 30
    tasks, at most 5 at a time: a worker that kept its partitions would grow by about 20 MB after
    the first sample; measured growth is about 1 MB. Only the first 2 characters are classified
    (max_length) to keep the test fast."""
    n, size = 150_000, 5000
    texts = (f"{i:07d} " + "ab" * 150 for i in range(n))  # generated lazily, never a list here
    ref = fastrnn.dask.model_ref(None, "langid")
    futures = fastrnn.dask._submit_chunks(client, texts, size, fastrnn.dask.classify_partition, ref,
                                          {"max_length": 2})
    samples = []
    count = 0
    for k, results in enumerate(fastrnn.dask._in_order(futures, 5, timeout=TIMEOUT)):
        count += len(results)
        if k in (5, 15, 29):  # after warm-up, in the middle, at the end
            samples.append(worker_rss(client))
    assert count == n
    for address in samples[0]:
        growth = max(s[address] for s in samples[1:]) - samples[0][address]
        assert growth < 8 * 2**20, (address, [s[address] / 2**20 for s in samples])


def wait_for(condition, what, timeout=TIMEOUT):
    """Poll ``condition`` until it holds (an event to wait for, not a time to sleep): fails after
    ``timeout`` seconds, so a regression shows as a failure, not a hung run."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sigkill_of_a_worker_mid_run_gives_identical_output(client, tmp_path):
    """A worker process is SIGKILLed while it runs a partition, after the first results were
    read: the output is still identical. Deterministic whatever the machine's speed: ``ordered``
    submits ``window`` partitions, then one more each time it hands out a result; the partitions
    after the first window write their worker's pid and wait for a release file. So a held
    partition starts only after partition 0 was read, it is surely running on the worker the test
    kills, and the release comes after the kill (holding an earlier partition could block both
    workers before any result exists)."""
    texts = corpus(8000, seed=9, max_words=12)
    expected = list(classify_here(bundled_classifier(), texts))
    per_partition, window = 250, 6
    release, started = str(tmp_path / "release"), tmp_path / "started"
    started.mkdir()

    def hold(items, release=release, started=str(started), first_held=window * per_partition,
             timeout=TIMEOUT):
        import os as os_
        import time as time_

        first = items[0][0]
        if first >= first_held:
            open(os_.path.join(started, f"{first}-{os_.getpid()}"), "w").close()
            deadline = time_.monotonic() + timeout
            while not os_.path.exists(release):  # held until the test has killed a worker
                if time_.monotonic() > deadline:
                    raise TimeoutError("the test never released the partition")
                time_.sleep(0.01)
        return [text for _, text in items]

    numbered = db.from_sequence(list(enumerate(texts)), partition_size=per_partition)
    assert numbered.npartitions == 32
    bag = fastrnn.dask.classify(numbered.map_partitions(hold))
    pids = client.run(os.getpid)
    got, errors = [], []

    def consume():
        try:
            for item in fastrnn.dask.ordered(bag, client=client, window=window, timeout=TIMEOUT):
                got.append(item)
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        wait_for(lambda: errors or any(started.iterdir()), "a held partition to start")
        assert not errors, errors
        assert len(got) >= per_partition  # partition 0 was read before the held ones were submitted
        first, pid = next(started.iterdir()).name.split("-")
        assert int(pid) in pids.values()
        os.kill(int(pid), signal.SIGKILL)
    finally:
        open(release, "w").close()
        reader.join(TIMEOUT)
    assert not reader.is_alive() and not errors, errors
    assert len(got) == len(texts)
    assert_same_classifications(got, expected)
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarted it
    assert int(pid) not in client.run(os.getpid).values()  # a new worker process took its place
