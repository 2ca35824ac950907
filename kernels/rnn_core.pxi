# rnn_core.pxi — the preamble shared by _cykernels.pyx, _cyint8.pyx and _cygenerate.pyx
# (`include "rnn_core.pxi"`): rnn_core.h's declarations, the reading of a cell tuple, and
# FASTRNN_SIMD. Each of the three extension modules links its own copy of rnn_core.c (its
# activations, element-wise steps and float32 products), so each one caps its own copy at import.

from libc.stdint cimport int32_t, int64_t

cdef extern from "rnn_core.h" nogil:
    enum: RNN_PANEL

    ctypedef struct rnn_packed:
        const float *data
        Py_ssize_t rows
        Py_ssize_t cols

    ctypedef struct rnn_activation:
        int code
        float alpha
        float beta

    ctypedef struct rnn_cell:
        rnn_activation act[3]
        float clip
        int input_forget
        int linear_before_reset

    ctypedef struct rnn_sequence_io:
        Py_ssize_t batch
        Py_ssize_t steps
        const int64_t *lengths
        int reverse
        float *y
        Py_ssize_t y_cols
        Py_ssize_t y_offset
        const int64_t *tokens

    ctypedef struct rnn_lstm_weights:
        rnn_packed w_hh
        rnn_packed w_hr
        const float *peephole

    ctypedef struct rnn_gru_weights:
        rnn_packed w_hh_rz
        rnn_packed w_hh_n
        const float *b_hn

    size_t rnn_packed_size(Py_ssize_t rows, Py_ssize_t cols)
    void rnn_pack_weight(const float *w, Py_ssize_t rows, Py_ssize_t cols, float *packed)
    void rnn_matmul_packed(const rnn_packed *w, const float *inp, Py_ssize_t ld_in,
                           float *out, Py_ssize_t ld_out, Py_ssize_t m)
    int rnn_sequence_f32(const rnn_sequence_io *io, const float *xproj, const rnn_packed *w_hh,
                         float *h, const rnn_cell *cell)
    int lstm_sequence_f32(const rnn_sequence_io *io, const float *xproj, const rnn_lstm_weights *w,
                          float *h, float *c, const rnn_cell *cell)
    int gru_sequence_f32(const rnn_sequence_io *io, const float *xproj, const rnn_gru_weights *w,
                         float *h, const rnn_cell *cell)
    int rnn_simd_enabled()
    int rnn_select_simd(int level)


# rnn_core's levels, best last (rnn_core.h RNN_SIMD_*)
FLOAT_SIMD_LEVELS = ("plain", "avx2", "avx512")


def _simd_env():
    """FASTRNN_SIMD, stripped and lower-cased ("" when unset)."""
    import os

    return os.environ.get("FASTRNN_SIMD", "").strip().lower()


def _float_simd_cap():
    """FASTRNN_SIMD -> the cap of rnn_core's level (an index of FLOAT_SIMD_LEVELS), -1 = the best.
    An unknown name means the best (_cykernels warns about it once)."""
    name = _simd_env()
    return FLOAT_SIMD_LEVELS.index(name) if name in FLOAT_SIMD_LEVELS else -1


def zeros_aligned(Py_ssize_t size, dtype):
    """ndarray of shape (size,), dtype, zeros, whose data starts on a 64-byte boundary (packed
    weights: a panel row is one cache line)."""
    import numpy

    itemsize = numpy.dtype(dtype).itemsize
    raw = numpy.zeros(size + 64 // itemsize, dtype=dtype)
    shift = (-raw.ctypes.data % 64) // itemsize
    return raw[shift:shift + size]


cdef inline int read_cell(tuple cell, rnn_cell *out) except -1:
    """cell = (acts int32 (3,), act_params float32 (3, 2), clip, input_forget, linear_before_reset)"""
    cdef const int32_t[::1] acts = cell[0]
    cdef const float[:, ::1] params = cell[1]
    cdef int i
    for i in range(3):
        out.act[i].code = acts[i]
        out.act[i].alpha = params[i, 0]
        out.act[i].beta = params[i, 1]
    out.clip = cell[2]
    out.input_forget = cell[3]
    out.linear_before_reset = cell[4]
    return 0


rnn_select_simd(_float_simd_cap())  # decided once, at import, with the GIL held
