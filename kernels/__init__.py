"""fastrnn.kernels: compiled compute only (see README.md in this folder for the contract).

- ``_cykernels``: Cython + C (kernels/_cykernels.pyx, kernels/rnn_core.c), built by setup.py.
- ``numba_kernels``: Numba JIT versions of the same entry points, imported lazily.
Nothing here validates user input; fastrnn.model and fastrnn.backends do.
"""
