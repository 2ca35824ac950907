"""Backend selection: available_backends, set_backend, FASTRNN_BACKEND."""
import os
import subprocess
import sys

import pytest

import fastrnn
from conftest import in_ci


def test_all_backends_present_in_ci():
    # CI installs everything: a missing compiled backend there is a build defect, not a skip.
    names = fastrnn.available_backends()
    assert "numpy" in names
    if in_ci():
        assert names == ["cython", "numba", "numpy"], names


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
