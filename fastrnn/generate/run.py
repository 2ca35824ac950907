"""The sampling run: prompts through the loop (generate's path when num_beams is 1), and the
choices every entry point shares: ``default_weights`` (including "auto", which times this run)
and ``check_arguments``."""
from __future__ import annotations

import numpy as np

from .engines import Rows, get_engine
from .job import _Formatter, _Job, _stream_pieces
from .options import _count, _prompt_rows, _seeds, _stops, _with_defaults
from .plan import WEIGHT_KINDS, generation_plan
from .sampling import Sampling

AUTO_MARGIN = 0.95  # "auto" takes float16 only when it is at least 5% faster than float32


def _measure_auto(model):
    """float32 or float16, whichever generates faster here (median of interleaved runs)."""
    import statistics
    import time

    from ..backends import get_backend

    if get_backend().name != "cython" or not model.takes_tokens:
        return "float32"
    times = {"float32": [], "float16": []}
    for rep in range(6):  # the first round warms up (packs the plans)
        for kind in (("float32", "float16") if rep % 2 else ("float16", "float32")):
            t0 = time.perf_counter()
            sample(model, [0], max_new_tokens=24, temperature=0, weights=kind, threads=1)
            if rep:
                times[kind].append(time.perf_counter() - t0)
    fast16 = statistics.median(times["float16"]) < AUTO_MARGIN * statistics.median(times["float32"])
    return "float16" if fast16 else "float32"


def default_weights(model, weights):
    """weights=None -> the kind the model file was quantized to ("float32" if it was not);
    "auto" -> that kind for a quantized model, else float32 or float16 by a measurement (once
    per model)."""
    if weights == "auto":
        kind = (model.metadata or {}).get("quantized")
        if kind in WEIGHT_KINDS:
            return kind
        if "_auto_weights" not in model.__dict__:
            model.__dict__["_auto_weights"] = _measure_auto(model)
        return model.__dict__["_auto_weights"]
    if weights is None:
        weights = (model.metadata or {}).get("quantized") or "float32"
        if weights not in WEIGHT_KINDS:  # e.g. bfloat16: the values are rounded already
            weights = "float32"
    return weights


def check_arguments(model, max_new_tokens=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
                    stop=None, weights=None, threads=None):
    """Validate generation arguments without generating (the command line checks everything
    before it prints anything). Raises ValueError as generate() would."""
    from ..backends import check_threads

    kw = _with_defaults(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty)
    _count(kw.pop("max_new_tokens"))
    Sampling(**kw)
    plan = generation_plan(model, default_weights(model, weights))
    _stops(model, plan, stop)
    check_threads(threads)


def sample(model, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
           seed=None, stop=None, stream=False, initial_state=None, backend=None, weights=None, threads=None):
    """generate()'s sampling path (``num_beams`` = 1): every argument as in
    fastrnn.generate.generate, whose checks and defaults apply (``model`` is a Model here)."""
    from ..backends import check_threads

    kw = _with_defaults(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty)
    plan = generation_plan(model, default_weights(model, weights))
    threads = check_threads(threads)
    max_new = _count(kw.pop("max_new_tokens"))
    sampling = Sampling(**kw)
    prompts, batch, kind = _prompt_rows(model, plan, prompt)
    B = len(prompts)
    seeds = _seeds(seed, B)
    stops = _stops(model, plan, stop)
    engine = plan.engine_for(get_engine(backend))
    rows = Rows(plan, B)
    plan.initial_rows(initial_state, B, rows.state)
    rows.rng[:] = np.array(seeds, np.uint64)
    job = _Job(plan, engine, rows, prompts, sampling, stops, max_new, threads, collect=not stream)
    fmt = _Formatter(model, kind)
    if stream:
        return _stream_pieces(job, fmt, batch)
    job.run_all()
    results = [fmt.whole(job.result(b)) for b in range(B)]
    return results if batch else results[0]
