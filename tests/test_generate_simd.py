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
