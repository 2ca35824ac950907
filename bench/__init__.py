"""Benchmarks (never run in CI). See docs/performance.md for the workflow.

Run from the repository root (``python -m bench.compare``, ``pytest bench/...``): the root is
then on sys.path, and its ``fastrnn/`` source folder has no compiled kernels. Importing this
package first imports the *installed* fastrnn (``pip install ".[bench]"``), so every benchmark
measures the compiled kernels, never the NumPy reference by accident.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_installed_fastrnn():
    if "fastrnn" in sys.modules:
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]
    try:
        import fastrnn.kernels  # noqa: F401  (the compiled extension must be there)
    except ImportError:
        for name in [m for m in sys.modules if m == "fastrnn" or m.startswith("fastrnn.")]:
            del sys.modules[name]
        raise SystemExit("the benchmarks need fastrnn installed with its compiled kernels: "
                         "python -m pip install \".[bench]\"") from None
    finally:
        sys.path[:] = saved


_import_installed_fastrnn()
