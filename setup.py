"""Build script for fastrnn.

The compiled kernels live in the top-level folder ``kernels/`` and are installed as the
subpackage ``fastrnn.kernels``. Cython directives and C flags are set here, in one place.
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# Cython directives in one place. FASTRNN_BOUNDSCHECK=1 builds the kernels with bounds and
# wraparound checks on (CI runs the kernel tests once that way).
_checked = os.environ.get("FASTRNN_BOUNDSCHECK", "0") == "1"
CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": _checked,
    "wraparound": _checked,
    "initializedcheck": _checked,
    "cdivision": not _checked,
    "embedsignature": True,
}

if sys.platform == "win32":
    C_FLAGS = ["/O2"]
else:
    # No -march=native: the package must run on any CPU of its architecture. The AVX2/FMA code
    # paths are compiled with per-function target attributes and chosen at run time.
    C_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]

extensions = [
    Extension(
        "fastrnn.kernels._cykernels",
        sources=["kernels/_cykernels.pyx", "kernels/rnn_core.c", "kernels/rnn_split.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        extra_compile_args=C_FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "fastrnn.kernels._cygenerate",
        sources=["kernels/_cygenerate.pyx", "kernels/generate_core.c", "kernels/rnn_core.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        extra_compile_args=C_FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "fastrnn.kernels._cyint8",
        sources=["kernels/_cyint8.pyx", "kernels/int8_core.c", "kernels/rnn_core.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        extra_compile_args=C_FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=CYTHON_DIRECTIVES),
)
