"""FASTRNN_SIMD caps the generation loop too (kernels/_cygenerate.pyx links its own copy of
rnn_core and reads the variable itself). At every level the loop's logits stay within the
tolerance of the NumPy reference engine (fastrnn.generate); AVX2 and AVX-512 give the same bits
(rnn_core's promise); and a process started with FASTRNN_SIMD=plain runs the plain-C loop,
bit for bit what the in-process cap to plain gives."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import require
from test_generate import char_model

cg = require("fastrnn.kernels._cygenerate")

_NOW = cg.simd_level()
BEST = cg._select_simd(None)
cg._select_simd(_NOW)  # importing this module (the subprocess below does) keeps the level
LEVELS = cg.SIMD_LEVELS[: cg.SIMD_LEVELS.index(BEST) + 1]
PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2]
# float32 / float16: the same values in every engine, differing only in the order of float
# operations and the activations' last bits; int8: the C loop also quantizes each product's
# input to int16, the NumPy reference does not (tests/test_generate.py uses the same 2e-3)
TOLERANCE = {"float32": 2e-5, "float16": 2e-5, "int8": 2e-3}


def model():
    return char_model(seed=21, cell="lstm", H=40, proj_size=0)


def logits(m, weights, backend="cython"):
    s = m.session(backend=backend, weights=weights)
    s.feed(PROMPT)
    return s.logits()


def at_levels(fn):
    out = {}
    try:
        for level in LEVELS:
            assert cg._select_simd(level) == level
            out[level] = fn()
    finally:
        cg._select_simd(None)
    return out


@pytest.mark.parametrize("weights", sorted(TOLERANCE))
def test_every_level_close_to_the_reference_and_simd_levels_bitwise(weights):
    m = model()
    expected = logits(m, weights, backend="numpy")
    got = at_levels(lambda: logits(m, weights))
    assert set(got) == set(LEVELS)
    for level, value in got.items():
        np.testing.assert_allclose(value, expected, atol=TOLERANCE[weights] * np.abs(expected).max(), rtol=0,
                                   err_msg=level)
    if "avx512" in got:
        np.testing.assert_array_equal(got["avx512"], got["avx2"])


def test_environment_cap_reaches_the_generation_loop():
    """FASTRNN_SIMD=plain at start-up: the loop reports plain and computes what the in-process
    cap to plain computes (the int8 and float32 logits, bit for bit)."""
    code = ("import json, sys; sys.path.insert(0, %r); from test_generate_simd import model, logits; "
            "from fastrnn.kernels import _cygenerate as cg; m = model(); "
            "print(json.dumps([cg.simd_level(), logits(m, 'float32').tolist(), logits(m, 'int8').tolist()]))"
            % os.path.dirname(__file__))
    env = dict(os.environ, FASTRNN_SIMD="plain")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    level, f32, i8 = json.loads(res.stdout.strip().splitlines()[-1])
    assert level == "plain"
    m = model()
    try:
        cg._select_simd("plain")
        np.testing.assert_array_equal(np.array(f32, np.float32), logits(m, "float32"))
        np.testing.assert_array_equal(np.array(i8, np.float32), logits(m, "int8"))
    finally:
        cg._select_simd(None)


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_int8_rows_state_and_logits_bitwise_across_simd_levels(batch):
    """The int8 form's products for 1 to 9 rows (AVX-512 VNNI: vpdpwssd tiles of up to 4 rows x
    8 panels; AVX2: vpmaddwd tiles): after a prompt and a few sampled steps, every row's state
    and logits are the same bits at avx2 and avx512 (the same integers, the same float epilogue)."""
    from fastrnn.generate.engines import Rows, get_engine
    from fastrnn.generate.job import _Job
    from fastrnn.generate.options import _stops
    from fastrnn.generate.plan import generation_plan
    from fastrnn.generate.sampling import Sampling

    if "avx512" not in LEVELS:
        pytest.skip(f"this CPU's best level is {BEST}: no AVX-512 form to compare")
    m = char_model(seed=5, cell="gru", H=48, proj_size=0)  # 3H = 144: 9 panels, and V = 12: a partial one
    plan = generation_plan(m, "int8")

    def run():
        rows = Rows(plan, batch)
        rows.rng[:] = np.arange(batch, dtype=np.uint64) + 11
        prompts = [PROMPT[: 3 + b] for b in range(batch)]
        job = _Job(plan, get_engine("cython"), rows, prompts, Sampling(temperature=1.0), _stops(m, plan, None), 6)
        job.run(len(PROMPT) + 3)
        return rows.state.copy(), rows.logits.copy()

    got = at_levels(run)
    np.testing.assert_array_equal(got["avx512"][0], got["avx2"][0])
    np.testing.assert_array_equal(got["avx512"][1], got["avx2"][1])
    assert np.abs(got["avx2"][1]).max() > 0  # the loop ran
