"""Backend selection: available_backends, set_backend, FASTRNN_BACKEND."""
import importlib
import os
import subprocess
import sys

import pytest

import fastrnn
from conftest import in_ci, require

# Everything a test file imports only when present (conftest.require / pytest.importorskip) or
# that a backend needs. CI installs the `test` extra and builds the kernels: there, a missing one
# would silently turn whole files into skips, so it is a failure instead.
OPTIONAL_TEST_DEPENDENCIES = ["fastrnn.kernels._cykernels", "fastrnn.kernels._cygenerate", "fastrnn.kernels._cyint8",
                              "numba",
                              "fastrnn.kernels.numba_kernels", "torch", "keras", "h5py", "onnx", "onnxruntime",
                              "hypothesis", "safetensors", "starlette", "uvicorn", "httpx", "openai"]


def test_all_backends_present_in_ci():
    # CI installs everything: a missing compiled backend there is a build defect, not a skip.
    names = fastrnn.available_backends()
    assert "numpy" in names
    if in_ci():
        assert names == ["cython", "numba", "numpy"], names
        from fastrnn.generate import available_engines

        assert available_engines() == ["cython", "numba", "numpy"]


@pytest.mark.parametrize("module", OPTIONAL_TEST_DEPENDENCIES)
def test_all_optional_dependencies_present_in_ci(module):
    if module == "keras":
        os.environ.setdefault("KERAS_BACKEND", "torch")  # as the Keras tests do: TensorFlow is not installed
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"{module} is missing in CI, where the tests needing it would be skipped: {exc}")
        pytest.skip(f"{module} is not installed here (CI requires it): {exc}")


def test_hypothesis_is_derandomized_in_ci():
    """In CI a hypothesis failure must be reproducible: the examples depend only on the test."""
    hypothesis = require("hypothesis")
    if not in_ci():
        pytest.skip("the derandomized profile is selected only with CI=true")
    assert hypothesis.settings.default.derandomize, "CI must run hypothesis derandomized (tests/conftest.py)"
    import test_fuzz  # its settings objects are made from the profile in force when it is imported

    assert test_fuzz.FUZZ.derandomize and test_fuzz.PROPERTY.derandomize


def test_default_prefers_cython_when_built():
    names = fastrnn.available_backends()
    code = "import fastrnn; print(fastrnn.get_backend().name)"
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == names[0]


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_env_var_selects_backend(name):
    if name not in fastrnn.available_backends():
        pytest.fail(f"backend {name} unavailable")
    code = "import fastrnn; print(fastrnn.get_backend().name)"
    env = dict(os.environ, FASTRNN_BACKEND=name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == name


def test_default_path_does_not_import_numba_when_cython_built():
    if "cython" not in fastrnn.available_backends():
        pytest.skip("cython extension not built (CI asserts it is)")
    code = ("import sys, numpy as np, fastrnn, torch\n"
            "m = fastrnn.from_torch(torch.nn.GRU(3, 4))\n"
            "m.predict(np.zeros((1, 2, 3), np.float32))\n"
            "print('numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_set_backend_rejects_unknown():
    with pytest.raises(ValueError, match="unknown backend"):
        fastrnn.set_backend("cuda")
