"""Classification and generation over large corpora on a Dask cluster (``pip install .[dask]``).

    import dask.bag as db
    import fastrnn.dask
    from distributed import Client

    client = Client(fastrnn.dask.local_cluster(2))        # or Client("tcp://scheduler:8786")
    lines = db.read_text("corpus.txt", blocksize="1MiB").map(str.rstrip)  # or a dask Series
    labels = fastrnn.dask.classify(lines, "langid.safetensors")         # lazy, in input order
    texts = fastrnn.dask.generate(prompts, "char.safetensors", max_new_tokens=50, seed=1)
    for r in fastrnn.dask.ordered(labels):                  # in order, a few partitions at a time
        ...

    fastrnn classify corpus.txt --dask local:2              # the command line (issue 16)
    fastrnn classify corpus.txt --dask tcp://scheduler:8786

Dask does the scheduling: fastrnn only runs one partition at a time inside a task.
- Results: one per input, in input order, equal to the single-process results (bitwise with the
  compiled backends: a row's result does not depend on the batch it ran in), whatever the
  partitioning. ``classify`` on a Bag gives a Bag of fastrnn.classify.Classification; on a
  dask Series a DataFrame with the same index, a ``label`` column, one float32 column per class
  and ``unknown_fraction``.
  ``generate`` gives a Bag of str, or a Series of str with the same index.
- Models: ``model`` is a file path (or None / "langid" / "char_lstm" for the bundled models),
  never a loaded Model: each worker process loads the file itself, once, and keeps it in a cache
  keyed by the path and the file's identity (device, inode, size, modification time), so a
  replaced file is reloaded and weights never travel through the scheduler. The path must name
  the same file on every worker (a shared or copied file system); relative paths are made
  absolute on the client. A worker that cannot load it raises ModelLoadError naming the worker
  and the file: the computation fails once with that error (not retried, not hung).
- Threads: a worker runs one partition per worker thread; fastrnn uses ``threads`` per partition
  (default: FASTRNN_NUM_THREADS when it is set in the worker's environment, else 1), so a worker
  started with ``--nthreads N`` keeps N cores busy. Numba reads NUMBA_NUM_THREADS once, at import,
  and BLAS reads OMP/OPENBLAS/MKL_NUM_THREADS at load: ``local_cluster`` sets them in each worker
  process before it starts (``thread_env``); for a cluster started by hand, set them on the
  ``dask worker`` command line (README) or call ``setup_workers(client)`` before the first task,
  which sets any that are missing in each worker before fastrnn is imported there.
- Generation seeds: an int ``seed`` gives every row the same generator (a row's text is that of
  its prompt alone with that seed, so the partitioning cannot change it); None draws one seed
  on the client for the whole collection; a Bag of (prompt, seed) pairs gives a seed per row.

Dask itself is imported inside the functions (absolute imports: this module is ``fastrnn.dask``,
the library is ``dask``), so the command line can offer ``--dask`` without the extra installed.
"""
from __future__ import annotations

import collections
import collections.abc
import itertools
import os
import re
import secrets
import threading

from .errors import ModelFormatError

__all__ = ["classify", "generate", "ordered", "local_cluster", "connect", "setup_workers", "thread_env",
           "worker_model", "ModelLoadError"]

THREAD_ENV_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "FASTRNN_NUM_THREADS")
BUNDLED_PREFIX = "bundled:"
BUNDLED_NAMES = ("langid", "char_lstm")
# Lines per task for the command line: bench/bench_dask.py measured about 12 ms of CPU per task
# (scheduler, transfers, task start) against 24 us per line of the bundled classifier, so
# 10,000 lines (about 240 ms of work) keep that overhead near 5%.
DEFAULT_PARTITION_LINES = 10000
DEFAULT_GENERATE_BATCH = 256  # prompts decoded together inside a partition (as `generate --batch`)
RESULT_TIMEOUT = None  # seconds to wait for one partition in ``ordered`` (None: no limit)


class ModelLoadError(ModelFormatError):
    """A worker could not load the model file (missing, unreadable, not a model): names the worker."""


def _require_dask(what="fastrnn.dask"):
    try:
        import dask  # noqa: F401  (the library, not this module: absolute import)
        import distributed  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the extra is part of the test install
        raise ImportError(f"{what} needs Dask: pip install '.[dask]' from fastrnn's checkout ({exc})") from None


# =============================================================================================
# Models on the workers: a per-process cache keyed by path and file identity
# =============================================================================================

_models = {}  # path -> (identity, Model)
_models_lock = threading.Lock()
load_count = collections.Counter()  # path -> loads in this process (tests read it on the workers)


def model_ref(model, default):
    """What the tasks carry instead of a model: an absolute path, or "bundled:<name>" (resolved on
    the worker, whose package may be installed elsewhere). ``default`` is the bundled name used
    for None."""
    from .model import Model

    if isinstance(model, Model):
        raise TypeError("pass the model's file path, not a loaded Model: each Dask worker loads the file "
                        "itself, once per process, and weights are never sent through the scheduler")
    if model is None:
        return BUNDLED_PREFIX + default
    path = os.fspath(model)
    if path.startswith(BUNDLED_PREFIX):
        name = path[len(BUNDLED_PREFIX):]
        if name not in BUNDLED_NAMES:
            raise ValueError(f"unknown bundled model {name!r}: choose one of {', '.join(BUNDLED_NAMES)}")
        return path
    if path in BUNDLED_NAMES and not os.path.exists(path):
        return BUNDLED_PREFIX + path
    return os.path.abspath(path)


def _resolve(ref):
    if ref.startswith(BUNDLED_PREFIX):
        name = ref[len(BUNDLED_PREFIX):]
        if name == "langid":
            from .bundled import BUNDLED_CLASSIFIER

            return BUNDLED_CLASSIFIER
        from .bundled import BUNDLED_MODEL

        return BUNDLED_MODEL
    return ref


def worker_model(ref):
    """The Model for ``ref`` in this process: loaded on first use, reloaded only when the file at
    that path changes identity (st_dev, st_ino, st_size, st_mtime_ns). Raises ModelLoadError."""
    path = _resolve(ref)
    with _models_lock:  # a worker's threads share one copy; the first loads it
        try:
            if ref.startswith(BUNDLED_PREFIX):  # exactly what a single process uses (loaded once)
                from .bundled import bundled_classifier, bundled_model

                return bundled_classifier() if ref == BUNDLED_PREFIX + "langid" else bundled_model()
            st = os.stat(path)
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            hit = _models.get(path)
            if hit is not None and hit[0] == identity:
                return hit[1]
            from . import load

            model = load(path)
        except Exception as exc:
            raise ModelLoadError(f"{_where()} could not load the model: {exc}", path) from None
        _models[path] = (identity, model)
        load_count[path] += 1
        return model


def _where():
    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return f"process {os.getpid()}"


def _task_threads(threads):
    """fastrnn threads for one partition (see the module doc)."""
    if threads is not None:
        return threads
    return None if os.environ.get("FASTRNN_NUM_THREADS") else 1


# =============================================================================================
# What runs inside a task: one partition
# =============================================================================================

def classify_partition(items, ref, options):
    """Classify one partition (any iterable of inputs) -> ClassificationList, in order."""
    from .classify.classifier import classify

    model = worker_model(ref)
    options = dict(options, threads=_task_threads(options.get("threads")))
    return ClassificationList.of(classify(model, items, **options))


class ClassificationList(collections.abc.Sequence):
    """A partition's Classifications held as a few arrays: what a task sends back (Dask serializes a
    list of small arrays one frame per array, about 60 us each; this is a single pickle).

    labels : list (N,) of labels (the same few objects, pickled once each). index : int64 (N,),
    -1 where the Classification's index is None ("unknown"). probabilities : float32 (N, C), or
    None when return_probs=False. unknown_fraction : float64 (N,). Items are
    fastrnn.classify.Classification."""

    def __init__(self, labels, index, probabilities, unknown_fraction):
        self.labels = labels
        self.index = index
        self.probabilities = probabilities
        self.unknown_fraction = unknown_fraction

    @classmethod
    def of(cls, results):
        import numpy as np

        results = list(results)
        index = np.array([-1 if r.index is None else r.index for r in results], dtype=np.int64)
        unknown = np.array([r.unknown_fraction for r in results], dtype=np.float64)
        probs = None
        if results and results[0].probabilities is not None:
            probs = np.stack([r.probabilities for r in results])
        return cls([r.label for r in results], index, probs, unknown)

    def __len__(self):
        return len(self.index)

    def _item(self, k, p):
        from .classify.classifier import Classification

        i = int(self.index[k])
        return Classification(self.labels[k], None if i < 0 else i, p, float(self.unknown_fraction[k]))

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = range(len(self))[k]
        return self._item(k, None if self.probabilities is None else self.probabilities[k].copy())

    def __iter__(self):  # the common way to read it: no per-item copies
        # rows of one private copy: a user who changes one changes nothing else here
        probs = [None] * len(self) if self.probabilities is None else self.probabilities.copy()
        for k, p in enumerate(probs):
            yield self._item(k, p)

    def __reduce__(self):
        return (ClassificationList, (self.labels, self.index, self.probabilities, self.unknown_fraction))


def _classify_frame(series, ref, options, columns):
    import numpy as np
    import pandas as pd

    results = classify_partition(series.tolist(), ref, options)
    data = {"label": pd.Series(results.labels, index=series.index, dtype=object)}
    names = columns[1:-1]
    for j, name in enumerate(names):
        data[name] = pd.Series(results.probabilities[:, j], index=series.index, dtype=np.float32)
    data["unknown_fraction"] = pd.Series(results.unknown_fraction, index=series.index, dtype=np.float64)
    return pd.DataFrame(data, index=series.index, columns=columns)


def generate_partition(items, ref, options, seed):
    """Generate for one partition: items are prompts (every row uses ``seed``) or (prompt, seed)
    pairs -> list of continuations, in order. Rows are decoded ``batch_size`` at a time."""
    from .generate.decode import generate

    model = worker_model(ref)
    options = dict(options)
    batch_size = options.pop("batch_size", DEFAULT_GENERATE_BATCH)
    options["threads"] = _task_threads(options.get("threads"))
    out = []
    it = iter(items)
    while True:
        rows = list(itertools.islice(it, batch_size))
        if not rows:
            return out
        if all(isinstance(r, tuple) and len(r) == 2 for r in rows):
            prompts = [r[0] for r in rows]
            seeds = [r[1] for r in rows]
        elif any(isinstance(r, tuple) for r in rows):
            raise ValueError("generate: give every item as a prompt, or every item as a (prompt, seed) pair")
        else:
            prompts, seeds = rows, seed
        out.extend(generate(model, prompts, seed=seeds, **options))


def _generate_series(series, ref, options, seed):
    import pandas as pd

    texts = generate_partition(series.tolist(), ref, options, seed)
    return pd.Series(texts, index=series.index, name=series.name, dtype=object)


# =============================================================================================
# The lazy API
# =============================================================================================

def _options_of(function, exclude):
    import inspect

    return tuple(n for n in inspect.signature(function).parameters if n not in exclude)


def _classify_options():
    from .classify.classifier import classify

    return _options_of(classify, ("model", "inputs"))


def _generate_options():
    from .generate.decode import generate

    return _options_of(generate, ("model", "prompt", "seed", "stream", "initial_state")) + ("batch_size",)


def _check_options(options, allowed, what):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"fastrnn.dask.{what}: unknown option(s) {', '.join(unknown)}; "
                        f"accepted: {', '.join(allowed)}")
    return dict(sorted(options.items()))


def _kind(collection, what):
    """"bag" or "series" (raises TypeError for anything else)."""
    _require_dask(f"fastrnn.dask.{what}")
    import dask.bag as db

    if isinstance(collection, db.Bag):
        return "bag"
    try:
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - dask without the dataframe extra
        dd = None
    if dd is not None and isinstance(collection, dd.Series):
        return "series"
    if dd is not None and isinstance(collection, dd.DataFrame):
        raise TypeError(f"fastrnn.dask.{what}: pass one column (a dask Series), not a whole DataFrame")
    raise TypeError(f"fastrnn.dask.{what}: expected a dask.bag.Bag or a dask.dataframe.Series, "
                    f"got {type(collection).__name__}")


def classify(texts, model=None, **options):
    """Classify every element of ``texts`` on the cluster, lazily, in input order.

    texts : dask.bag.Bag of texts (or token-id sequences), or dask.dataframe.Series of texts.
    model : path of a classifier file, or None / "langid" for the bundled language identifier.
    options : those of fastrnn.classify.classify (batch_size, return_probs, window, max_length,
        max_batch_tokens, threads, backend, unknown_threshold, ...); ``threads`` is per
        partition (default 1, see the module doc).

    Returns a Bag of Classification for a Bag; for a Series, a dask DataFrame with the Series'
    index, a ``label`` column, one float32 column per class (named by the model's labels; none
    when return_probs=False) and ``unknown_fraction`` (float64).
    """
    kind = _kind(texts, "classify")
    options = _check_options(options, _classify_options(), "classify")
    ref = model_ref(model, "langid")
    if kind == "bag":
        return texts.map_partitions(classify_partition, ref, options)
    import numpy as np
    import pandas as pd

    labels = [str(x) for x in _labels(ref)]
    if {"label", "unknown_fraction"} & set(labels):
        raise ValueError("the model has a class named 'label' or 'unknown_fraction', which would collide with "
                         "the column of that name")
    columns = ["label"] + (labels if options.get("return_probs", True) else []) + ["unknown_fraction"]
    meta = pd.DataFrame({c: pd.Series([], dtype=object if c == "label" else np.float64 if c == "unknown_fraction"
                                      else np.float32) for c in columns}, columns=columns)
    return texts.map_partitions(_classify_frame, ref, options, columns, meta=meta)


def _labels(ref):
    """The model's labels, for the DataFrame's columns: read here when the file is here, else
    asked of a worker (the path only has to exist on the workers)."""
    from .classify.classifier import labels_of

    if not os.path.exists(_resolve(ref)):
        try:
            from distributed import get_client

            client = get_client()
        except ValueError:  # no client: let the local load say what is wrong
            client = None
        if client is not None:
            return client.submit(_worker_labels, ref, pure=False).result()
    return labels_of(worker_model(ref))


def _worker_labels(ref):
    from .classify.classifier import labels_of

    return labels_of(worker_model(ref))


def generate(prompts, model=None, seed=None, **options):
    """Generate a continuation of every prompt on the cluster, lazily, in input order.

    prompts : dask.bag.Bag of prompts (str or token-id lists) or of (prompt, seed) pairs, or a
        dask.dataframe.Series of prompts.
    model : path of a language model file, or None / "char_lstm" for the bundled character model.
    seed : int (every row uses it), or None (one seed drawn here for the whole collection).
    options : those of fastrnn.generate.generate except stream and initial_state
        (max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, weights, threads,
        backend), and batch_size: prompts decoded together inside a partition (default 256).

    Returns a Bag of continuations (str for str prompts), or a Series of str with the same index.
    """
    kind = _kind(prompts, "generate")
    options = _check_options(options, _generate_options(), "generate")
    if "batch_size" in options:
        from .classify.classifier import _positive

        options["batch_size"] = _positive(options["batch_size"], "batch_size")
    if seed is None:
        seed = secrets.randbits(63)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None (a seed per row: a Bag of (prompt, seed) pairs), got {seed!r}")
    ref = model_ref(model, "char_lstm")
    if kind == "bag":
        return prompts.map_partitions(generate_partition, ref, options, seed)
    import pandas as pd

    meta = pd.Series([], dtype=object, name=prompts.name)
    return prompts.map_partitions(_generate_series, ref, options, seed, meta=meta)


def ordered(collection, client=None, window=None, timeout=RESULT_TIMEOUT):
    """Yield the elements of a Bag (or the partitions of a dask DataFrame/Series, as pandas
    objects) in order, computing at most ``window`` partitions at once (default: twice the
    cluster's threads): the cluster and this process hold only those, whatever the length."""
    _require_dask("fastrnn.dask.ordered")
    import dask.bag as db

    if client is None:
        from distributed import get_client

        client = get_client()
    parts = collection.to_delayed()
    is_bag = isinstance(collection, db.Bag)
    for result in _in_order((client.compute(p) for p in parts), _window(client, window), timeout):
        if is_bag:
            yield from result
        else:
            yield result


def _window(client, window):
    if window is not None:
        from .classify.classifier import _positive

        return _positive(window, "window")
    threads = sum(client.nthreads().values()) or 1
    return 2 * threads + 1


def _in_order(futures, window, timeout=None):
    """Results of an iterator of futures, in order, with at most ``window`` submitted at once."""
    pending = collections.deque()
    futures = iter(futures)
    try:
        while True:
            while len(pending) < window:
                f = next(futures, None)
                if f is None:
                    break
                pending.append(f)
            if not pending:
                return
            f = pending.popleft()
            try:
                yield f.result(timeout=timeout)
            finally:
                f.release()
    finally:
        for f in pending:
            f.cancel()


# =============================================================================================
# Clusters
# =============================================================================================

def thread_env(threads=1):
    """Environment for a worker process whose tasks each use ``threads`` cores: Numba, BLAS/OpenMP
    and fastrnn pools sized before anything is imported (Numba reads NUMBA_NUM_THREADS only then)."""
    return {name: str(int(threads)) for name in THREAD_ENV_VARS}


def local_cluster(n_workers=2, threads_per_worker=1, threads=1, **kwargs):
    """A LocalCluster of ``n_workers`` worker processes, each running ``threads_per_worker``
    partitions at a time with ``threads`` fastrnn/Numba/BLAS threads each (thread_env set before
    the worker process starts). Other keyword arguments go to distributed.LocalCluster."""
    _require_dask("fastrnn.dask.local_cluster")
    _check_workers(n_workers, "local_cluster(n_workers=)")
    from distributed import LocalCluster

    env = dict(thread_env(threads), **kwargs.pop("env", {}))
    kwargs.setdefault("dashboard_address", ":0")  # a free port: never "8787 already in use" warnings
    kwargs.setdefault("silence_logs", 40)  # logging.ERROR: no worker start-up chatter on stderr
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, env=env,
                        **kwargs)


def _limit_threads(threads, dask_worker=None):
    """Worker setup callback: set the thread variables missing from this worker's environment."""
    import sys

    for name, value in thread_env(threads).items():
        os.environ.setdefault(name, value)
    if "numba" in sys.modules and os.environ["NUMBA_NUM_THREADS"] != str(threads):
        import logging

        logging.getLogger("distributed.worker").warning(
            "fastrnn: Numba was imported in this worker before NUMBA_NUM_THREADS was set; start the worker "
            "with NUMBA_NUM_THREADS=%s in its environment", threads)


def setup_workers(client, threads=1):
    """Set NUMBA/OMP/OPENBLAS/MKL/FASTRNN_NUM_THREADS to ``threads`` in every worker (present and
    future) where they are not set yet (a worker setup callback). Call it before the first task:
    Numba reads its variable once, when fastrnn first imports it in that worker."""
    import functools

    client.register_worker_callbacks(setup=functools.partial(_limit_threads, int(threads)))


DEFAULT_CONNECT_TIMEOUT = 60.0  # seconds: --dask-connect-timeout


def max_local_workers():
    """The most worker processes ``local:N`` / local_cluster start: twice the cores (at least 4).
    Each is a Python process with fastrnn loaded; more than the cores only share them."""
    return max(4, 2 * (os.cpu_count() or 1))


def _check_workers(n, what):
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_local_workers():
        raise ValueError(f"{what}: the number of local worker processes must be from 1 to {max_local_workers()} "
                         f"(twice this machine's {os.cpu_count()} cores, at least 4), got {n!r:.40}; for more "
                         "workers start a Dask cluster and pass its scheduler address (tcp://host:8786)")
    return n


def _check_timeout(timeout):
    import math

    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or not 0 < timeout <= 86400:
        raise ValueError(f"--dask-connect-timeout must be a number of seconds above 0 (at most a day), got "
                         f"{timeout!r:.40}")
    return float(timeout)


def _probe(address, timeout):
    """Open (and close) a TCP connection to a tcp:// or tls:// scheduler address, so that a refused
    connection or an unknown host fails at once (the Dask client retries until its timeout), and,
    for tcp://, wait up to ``timeout`` s for the first bytes of the scheduler's handshake (a Dask
    server sends it as soon as it accepts; distributed's client waits for it without a timeout)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port or 8786
    except ValueError:
        raise ValueError(f"--dask {address}: the port is not a number (tcp://host:8786)") from None
    if not host:
        raise ValueError(f"--dask {address}: no host name (tcp://host:8786)")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parts.scheme == "tcp" and not sock.recv(1):
                raise ValueError(f"cannot reach the Dask scheduler at {address}: the server closed the connection "
                                 "without a Dask handshake (is it a Dask scheduler?)")
    except ConnectionRefusedError:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: connection refused (no scheduler listens "
                         f"on {host} port {port}: start it, or check the address)") from None
    except socket.gaierror as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: unknown host {host!r} ({exc.strerror})") \
            from None
    except (socket.timeout, TimeoutError):
        raise ValueError(f"cannot reach the Dask scheduler at {address}: no Dask answer within {timeout:g} s "
                         "(is it a Dask scheduler? --dask-connect-timeout SECONDS waits longer)") from None
    except OSError as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc.strerror or exc}") from None


def connect(address, timeout=DEFAULT_CONNECT_TIMEOUT):
    """``local:N`` -> (Client, LocalCluster of N processes); ``tcp://host:port`` (any scheduler
    address) -> (Client, None), connecting within ``timeout`` s (a refused connection fails at
    once) and then waiting up to ``timeout`` s for a worker."""
    _require_dask("--dask")
    timeout = _check_timeout(timeout)
    from distributed import Client

    if address.startswith("local:"):
        n = address[len("local:"):]
        if not re.fullmatch(r"[0-9]{1,9}", n):  # ASCII digits (str.isdigit also takes "²")
            raise ValueError(f"--dask local:N needs a positive number of worker processes, got {address!r}")
        _check_workers(int(n), f"--dask {address}")
        # logging.CRITICAL: a worker's heartbeat racing the shutdown must not print a traceback
        # into the user's terminal (task errors still reach the command as exceptions)
        cluster = local_cluster(int(n), silence_logs=50)
        return Client(cluster), cluster
    if "://" not in address:
        raise ValueError(f"--dask takes local:N or a scheduler address such as tcp://host:8786, got {address!r}")
    _probe(address, timeout)
    try:
        client = Client(address, timeout=timeout)
    except OSError as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc} (--dask-connect-timeout "
                         f"{timeout:g})") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise ValueError(f"the Dask scheduler at {address} has no workers (waited {timeout:g} s, "
                         "--dask-connect-timeout)") from None
    setup_workers(client)
    return client, None


# =============================================================================================
# Command line: --dask for `fastrnn classify` and `fastrnn generate --batch`
# =============================================================================================

def add_cli_options(parser, what="lines"):
    default = DEFAULT_GENERATE_BATCH if what.startswith("prompts") else DEFAULT_PARTITION_LINES
    parser.add_argument("--dask", metavar="local:N|tcp://HOST:PORT", default=None,
                        help="run on a Dask cluster: local:N starts N worker processes here, tcp://... "
                             "connects to a running scheduler (needs the .[dask] extra); the output "
                             "is the same, in the same order")
    parser.add_argument("--partition-size", type=int, default=None, metavar="N",
                        help=f"with --dask: {what} per task (default {default})")
    parser.add_argument("--dask-connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS",
                        help="with --dask tcp://...: seconds to wait for the scheduler to answer, then for a worker "
                             f"(default {DEFAULT_CONNECT_TIMEOUT:g}); a refused connection fails at once")


class _Cluster:
    """The CLI's client (and local cluster), closed when the results are done or abandoned."""

    def __init__(self, address, timeout=DEFAULT_CONNECT_TIMEOUT):
        self.client, self.cluster = connect(address, timeout)

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _submit_chunks(client, items, size, fn, *args):
    """One task per ``size`` items of the iterator, the items embedded in the task (so a task lost
    with its worker is simply rerun elsewhere)."""
    items = iter(items)
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield client.submit(fn, chunk, *args, pure=False)


def cli_classify(args, texts):
    """`fastrnn classify --dask`: the Classification of every text (an iterator, read lazily) in
    input order, computed on the cluster a bounded number of partitions at a time."""
    from .classify.classifier import _positive

    size = _positive(args.partition_size or DEFAULT_PARTITION_LINES, "--partition-size")
    ref = model_ref(args.model, "langid")
    options = {"batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads,
               "backend": getattr(args, "backend", None)}
    cluster = _Cluster(args.dask, getattr(args, "dask_connect_timeout", DEFAULT_CONNECT_TIMEOUT))
    try:
        futures = _submit_chunks(cluster.client, texts, size, classify_partition, ref, options)
        for results in _in_order(futures, _window(cluster.client, None)):
            yield from results
    finally:
        cluster.close()


def cmd_generate_batch(args, seed, options):
    """`fastrnn generate --batch FILE --dask ...`: one JSON line per prompt, in order, as without --dask."""
    import json
    import sys

    from .classify.classifier import _positive

    if not args.batch:
        raise ValueError("--dask runs a --batch FILE of prompts; a single --prompt runs here")
    size = _positive(args.partition_size or DEFAULT_GENERATE_BATCH, "--partition-size")
    ref = model_ref(args.model, "char_lstm")
    options = dict(options, backend=getattr(args, "backend", None))
    out = sys.stdout
    from .textio import LineReader

    f = sys.stdin.buffer if args.batch == "-" else open(args.batch, "rb")
    name = "<stdin>" if args.batch == "-" else args.batch
    reader = LineReader(f, name, errors=getattr(args, "errors", "strict"), command="fastrnn generate",
                        encoding=getattr(args, "encoding", "utf-8"))
    pending = collections.deque()  # prompts sent and not yet written: bounded by the window

    def prompts():  # the lines as without --dask: a blank line is no prompt (skipped, and said)
        for line in reader:
            if line == "":
                sys.stderr.write(f"fastrnn generate: skipped line {reader.count} of {name}: empty\n")
                continue
            pending.append(line)
            yield line

    cluster = None
    try:
        cluster = _Cluster(args.dask, getattr(args, "dask_connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        futures = _submit_chunks(cluster.client, prompts(), size, generate_partition, ref, options, seed)
        for texts in _in_order(futures, _window(cluster.client, None)):
            for text in texts:
                out.write(json.dumps({"prompt": pending.popleft(), "text": text}, ensure_ascii=False) + "\n")
        out.flush()
    finally:
        if cluster is not None:
            cluster.close()
        if f is not sys.stdin.buffer:
            f.close()
    return 0
