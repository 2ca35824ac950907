"""Build script for fastrnn.

The compiled kernels live in the top-level folder ``kernels/`` and are installed as the
subpackage ``fastrnn.kernels``. Cython directives and C flags are set here, in one place.

Rebuilds: pip builds every ``pip install ".[extra]"`` in a fresh build environment, whose Cython
include files (libc/*.pxd) are newer than the C files generated last time, so Cython would
regenerate them all and everything would be compiled again (about two minutes) for an install
that only adds packages. The generated C files are therefore reused when they are newer than the
.pyx files (and the .pxi / .pxd files they include) and were generated with the same Cython, NumPy and directives (kernels/.cython-stamp.json);
setuptools then skips each extension whose build/ output is newer than its sources and headers.
"""
import glob
import json
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

HEADERS = sorted(glob.glob("kernels/*.h"))  # every extension is rebuilt when one of them changes

extensions = [
    Extension(
        "fastrnn.kernels._cykernels",
        sources=["kernels/_cykernels.pyx", "kernels/rnn_core.c", "kernels/rnn_split.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        extra_compile_args=C_FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=HEADERS,
    ),
    Extension(
        "fastrnn.kernels._cygenerate",
        sources=["kernels/_cygenerate.pyx", "kernels/generate_core.c", "kernels/rnn_core.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        extra_compile_args=C_FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=HEADERS,
    ),
    Extension(
        "fastrnn.kernels._cyint8",
        sources=["kernels/_cyint8.pyx", "kernels/int8_core.c", "kernels/int8_split.c", "kernels/rnn_core.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        extra_compile_args=C_FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=HEADERS,
    ),
]

STAMP = "kernels/.cython-stamp.json"


def _generated_c_is_current():
    """The .c files Cython generated last time can be compiled as they are (see the module doc)."""
    import Cython

    want = {"cython": Cython.__version__, "numpy": numpy.__version__, "directives": CYTHON_DIRECTIVES}
    try:
        with open(STAMP, encoding="utf-8") as f:
            if json.load(f) != want:
                return False, want
    except (OSError, ValueError):
        return False, want
    included = glob.glob("kernels/*.pxi") + glob.glob("kernels/*.pxd")  # what every .pyx may include
    for ext in extensions:
        for pyx in (src for src in ext.sources if src.endswith(".pyx")):
            c = pyx[:-4] + ".c"
            newest = max(os.path.getmtime(f) for f in [pyx] + included)
            if not os.path.exists(c) or os.path.getmtime(c) < newest:
                return False, want
    return True, want


current, stamp = _generated_c_is_current()
if current:
    for ext in extensions:
        ext.sources = [src[:-4] + ".c" if src.endswith(".pyx") else src for src in ext.sources]
    ext_modules = extensions
else:
    ext_modules = cythonize(extensions, compiler_directives=CYTHON_DIRECTIVES, force=True)
    with open(STAMP, "w", encoding="utf-8") as f:
        json.dump(stamp, f)

setup(
    ext_modules=ext_modules,
)
