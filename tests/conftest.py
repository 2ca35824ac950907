"""Shared tolerances and fixtures for the fastrnn tests.

Tolerances (float32 everywhere):
- KERNEL: a compiled backend against the NumPy reference, same math in another order.
- FRAMEWORK: fastrnn against PyTorch / Keras / ONNX Runtime (the project's promise: 1e-4).
- LONG_SEQUENCE: T = 5000 steps, where rounding differences accumulate through the state.

In CI (CI=true) hypothesis runs derandomized (the "ci" profile): the examples depend only on
the test, so a failure there reproduces on any machine by running the same test with CI=true.
Optional test dependencies are imported with ``require``: a skip outside CI, a failure in it.
"""
import importlib
import os

import numpy as np
import pytest

import fastrnn

try:  # the compiled kernels live in the installed package, not in the source tree
    import fastrnn.kernels  # noqa: F401
except ImportError:  # pragma: no cover - a setup mistake, not a test result
    pytest.exit("fastrnn is imported from the source tree without its kernels: install it with "
                "`pip install .[test]` and run `pytest` (not `python -m pytest`) from the repository root",
                returncode=4)

KERNEL_ATOL, KERNEL_RTOL = 2e-5, 1e-4
FRAMEWORK_ATOL, FRAMEWORK_RTOL = 1e-4, 1e-4
LONG_SEQUENCE_ATOL = 1e-3


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


try:  # hypothesis is a test dependency; without it only test_fuzz.py cannot run
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    if in_ci():
        _hypothesis_settings.load_profile("ci")
except ImportError:  # pragma: no cover - test_all_optional_dependencies_present_in_ci fails in CI
    pass


def require(module):
    """Import an optional test dependency: skip the caller's tests when it is missing, except
    in CI, where every dependency is installed and a missing one must fail, not skip."""
    if in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module)


BACKENDS = fastrnn.available_backends()
COMPILED_BACKENDS = [b for b in BACKENDS if b != "numpy"]


def assert_close(actual, expected, atol=KERNEL_ATOL, rtol=KERNEL_RTOL, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=what)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=COMPILED_BACKENDS)
def compiled_backend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _run_away_from_source_tree(tmp_path_factory):
    """Tests (and the subprocesses they start) run in a scratch directory: from the repository
    root, `python -c`/`python -m` would import the source tree's fastrnn/, which has no compiled
    kernels, instead of the installed package under test."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)
