"""Cython front end of the int8 kernels (int8_core.c; the arithmetic and layout: int8_core.h,
the NumPy spec: fastrnn/quantize.py).

Thin on purpose, like _cykernels: typed memoryviews in, one C call with the GIL released. No
input validation here (fastrnn.quantize checks and allocates before calling).
"""
import numpy as np

from libc.stdint cimport int8_t, int32_t, int64_t, uint16_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

include "rnn_core.pxi"
include "split_context.pxi"

cdef extern from "int8_core.h" nogil:
    enum: I8_PANEL

    ctypedef struct i8_packed:
        const int8_t *data
        const int32_t *row_sum
        const float *scale
        Py_ssize_t rows
        Py_ssize_t cols
        int bf16

    ctypedef struct i8_weights:
        i8_packed w_hh_rz
        i8_packed w_hh_n
        i8_packed w_hr
        const float *peephole
        const float *b_hn

    Py_ssize_t i8_cols_padded(Py_ssize_t cols)
    size_t i8_packed_size(Py_ssize_t rows, Py_ssize_t cols)
    void i8_pack(const int8_t *q, Py_ssize_t rows, Py_ssize_t cols, int8_t *packed, int32_t *row_sum)
    void i8_quantize_rows(const float *inp, Py_ssize_t ld_in, Py_ssize_t m, Py_ssize_t K, int8_t *xq, float *xs)
    void i8_matmul(const i8_packed *w, const int8_t *xq, const float *xs, Py_ssize_t m, const float **src,
                   float *out, Py_ssize_t ld_out)
    int i8_sequence(int cell_kind, const rnn_sequence_io *io, const float *xproj, const i8_weights *w,
                    float *h, float *c, const rnn_cell *cell)
    int i8_simd_enabled()
    int i8_select_simd(int level)
    double i8_peak_probe(int kind, int64_t iters)
    size_t bf16_packed_size(Py_ssize_t rows, Py_ssize_t cols)
    void bf16_pack(const float *w, Py_ssize_t rows, Py_ssize_t cols, uint16_t *packed)
    void i8_prepare_rows(const i8_packed *w, const float *inp, Py_ssize_t ld_in, Py_ssize_t m, Py_ssize_t K,
                         int8_t *xq, float *xs)
    int bf16_native(int use)


# Levels of this module, best last; FASTRNN_SIMD (plain|avx2|avx512) caps them like the float
# kernels: avx2 -> the vpmaddubsw path, avx512 (or unset) -> the best the CPU has.
SIMD_LEVELS = ("plain", "avx2", "avxvnni", "avx512vnni", "amx")
CELL_KINDS = {"rnn": 0, "lstm": 1, "gru": 2}


def _int8_simd_cap():
    """FASTRNN_SIMD -> the int8 kernels' cap: plain, or avx2 (the vpmaddubsw path); avx512 (or
    unset) -> the best the CPU has. rnn_core.pxi caps this module's float kernels the same way."""
    return {"plain": 0, "avx2": 1}.get(_simd_env(), -1)


i8_select_simd(_int8_simd_cap())  # decided once, at import


def simd_level():
    """The instruction set the int8 kernels use now: one of SIMD_LEVELS."""
    return SIMD_LEVELS[i8_simd_enabled()]


def select_simd(level):
    """Cap the int8 instruction set (a name of SIMD_LEVELS, or None for the best); returns the
    level now in use. For tests and benchmarks; not thread-safe against running kernels."""
    return SIMD_LEVELS[i8_select_simd(-1 if level is None else SIMD_LEVELS.index(level))]


cdef class Int8Weight:
    """W (rows, cols) ~ scale[:, None] * q, packed for int8_core (see int8_core.h). Read-only."""

    cdef readonly object data     # int8 (i8_packed_size,), 64-byte aligned
    cdef readonly object row_sum  # int32 (panels * 16,)
    cdef readonly object scale    # float32 (panels * 16,), zero-padded
    cdef readonly Py_ssize_t rows
    cdef readonly Py_ssize_t cols
    cdef readonly bint bf16          # the bfloat16 form: data is the bf16 panels as bytes
    cdef const int8_t[::1] _data
    cdef const int32_t[::1] _row_sum
    cdef const float[::1] _scale

    def __init__(self, data, row_sum, scale, Py_ssize_t rows, Py_ssize_t cols, bint bf16=False):
        self._data, self._row_sum, self._scale = data, row_sum, scale
        panels = (rows + I8_PANEL - 1) // I8_PANEL
        if bf16:
            ok = self._data.shape[0] == 2 * <Py_ssize_t>bf16_packed_size(rows, cols)
        else:
            ok = (self._data.shape[0] == <Py_ssize_t>i8_packed_size(rows, cols)
                  and self._row_sum.shape[0] == panels * I8_PANEL and self._scale.shape[0] == panels * I8_PANEL)
        if rows < 0 or cols < 0 or not ok:
            raise ValueError(f"packed data does not hold a ({rows}, {cols}) matrix; make it with pack_int8 / pack_bf16")
        self.data, self.row_sum, self.scale, self.rows, self.cols, self.bf16 = data, row_sum, scale, rows, cols, bf16

    def __reduce__(self):
        return (Int8Weight, (self.data, self.row_sum, self.scale, self.rows, self.cols, self.bf16))

    def __repr__(self):
        return f"Int8Weight(rows={self.rows}, cols={self.cols}{', bfloat16' if self.bf16 else ''})"

    cdef i8_packed packed(self):
        cdef i8_packed p
        p.data = &self._data[0] if self._data.shape[0] > 0 else NULL
        p.row_sum = &self._row_sum[0] if self._row_sum.shape[0] > 0 else NULL
        p.scale = &self._scale[0] if self._scale.shape[0] > 0 else NULL
        p.rows = self.rows
        p.cols = self.cols
        p.bf16 = self.bf16
        return p


cdef i8_packed no_matrix():
    cdef i8_packed p
    p.data = NULL
    p.row_sum = NULL
    p.scale = NULL
    p.rows = 0
    p.cols = 0
    p.bf16 = 0
    return p


def pack_int8(q, scale):
    """q (N, K) int8 in [-127, 127], scale (N,) float32 -> Int8Weight (W = scale[:, None] * q)."""
    cdef const int8_t[:, ::1] qv = np.ascontiguousarray(q, dtype=np.int8)
    cdef Py_ssize_t rows = qv.shape[0], cols = qv.shape[1]
    cdef Py_ssize_t size = <Py_ssize_t>i8_packed_size(rows, cols)
    cdef Py_ssize_t padded = (rows + I8_PANEL - 1) // I8_PANEL * I8_PANEL
    data = zeros_aligned(size, np.int8)
    row_sum = np.zeros(padded, np.int32)
    sc = np.zeros(padded, np.float32)
    sc[:rows] = scale
    cdef int8_t[::1] out = data
    cdef int32_t[::1] rs = row_sum
    if size > 0:
        with nogil:
            i8_pack(&qv[0, 0], rows, cols, &out[0], &rs[0])
    for a in (data, row_sum, sc):
        a.flags.writeable = False
    return Int8Weight(data, row_sum, sc, rows, cols)


def pack_bf16(W):
    """W (N, K) float32 -> Int8Weight in the bfloat16 form (W rounded to bfloat16, nearest even)."""
    cdef const float[:, ::1] wv = np.ascontiguousarray(W, dtype=np.float32)
    cdef Py_ssize_t rows = wv.shape[0], cols = wv.shape[1]
    cdef Py_ssize_t size = <Py_ssize_t>bf16_packed_size(rows, cols)
    data = zeros_aligned(size, np.uint16)
    cdef uint16_t[::1] out = data
    if size > 0:
        with nogil:
            bf16_pack(&wv[0, 0], rows, cols, &out[0])
    data = data.view(np.int8)
    data.flags.writeable = False
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return Int8Weight(data, empty_i, empty_f, rows, cols, True)


def set_bf16_native(use):
    """Use vdpbf16ps where the CPU has it (True, the default) or the FMA form (False); both
    give the same bits (tests). Returns the setting."""
    return bool(bf16_native(1 if use else 0))


def quantize_rows(x):
    """x (M, K) float32 -> (xq int8 (M, K4) zero-padded, xs float32 (M,)), int8_core.h's rule."""
    cdef const float[:, ::1] xv = np.ascontiguousarray(x, dtype=np.float32)
    cdef Py_ssize_t M = xv.shape[0], K = xv.shape[1]
    xq = np.zeros((M, i8_cols_padded(K)), np.int8)
    xs = np.zeros(M, np.float32)
    cdef int8_t[:, ::1] qv = xq
    cdef float[::1] sv = xs
    if M > 0 and K > 0:
        with nogil:
            i8_quantize_rows(&xv[0, 0], K, M, K, &qv[0, 0], &sv[0])
    return xq, xs


def matmul_int8(x, Int8Weight w not None, float[:, ::1] out, bias=None):
    """out (M, N) += the int8 product of x (M, K) float32 with w (rows of x quantized here);
    with bias (N,) float32: out = bias + the product (out is only written)."""
    cdef const float[:, ::1] xv = x
    cdef Py_ssize_t M = xv.shape[0], K = xv.shape[1], K4 = i8_cols_padded(K), r
    cdef const float[::1] bv
    cdef const float **src = NULL
    if M == 0 or w.rows == 0:
        return
    if K == 0:
        if bias is not None:
            out[:, :] = bias
        return
    xq = np.empty((M, 2 * K4), np.int8)  # int8 rows, or bfloat16 rows (2 bytes each)
    xs = np.empty(M, np.float32)
    cdef int8_t[:, ::1] qv = xq
    cdef float[::1] sv = xs
    cdef i8_packed p = w.packed()
    if bias is not None:
        bv = bias
        src = <const float **>malloc(M * sizeof(float *))
        if src == NULL:
            raise MemoryError()
        for r in range(M):
            src[r] = &bv[0]
    try:
        with nogil:
            i8_prepare_rows(&p, &xv[0, 0], K, M, K, &qv[0, 0], &sv[0])
            i8_matmul(&p, &qv[0, 0], &sv[0], M, src, &out[0, 0], out.shape[1])
    finally:
        free(src)


def matmul_quantized(const int8_t[:, ::1] xq, const float[::1] xs, Int8Weight w not None, float[:, ::1] out):
    """out (M, N) += xq (M, K4) int8 with scales xs (M,) times w: the product alone (tests)."""
    cdef i8_packed p = w.packed()
    if xq.shape[0] == 0 or w.rows == 0:
        return
    with nogil:
        i8_matmul(&p, &xq[0, 0], &xs[0], xq.shape[0], NULL, &out[0, 0], out.shape[1])


def sequence(str kind, xproj, Int8Weight w_hh_rz not None, Int8Weight w_hh_n, Int8Weight w_hr, peephole, b_hn,
             const int64_t[::1] lengths, int reverse, float[:, ::1] h, c, float[:, :, ::1] y,
             Py_ssize_t y_offset, tuple cell, tokens=None):
    """One direction, whole sequence, int8 products (int8_core.h i8_sequence).

    kind "rnn" | "lstm" | "gru"; xproj (B, T, G*H) IN, or with tokens (B, T) int64 the folded
    table (V, G*H); w_hh_rz: all of W_hh (gru: rows r|z); w_hh_n: gru rows n, else None;
    w_hr: lstm projection or None; peephole (3, H) or None; b_hn (H,) gru or None;
    h (B, H_out) INOUT; c (B, H) INOUT (lstm) or None; y (B, T, Y) OUT, columns
    [y_offset, y_offset + H_out) written."""
    cdef rnn_sequence_io io
    cdef rnn_cell c_cell
    cdef i8_weights w
    cdef const float[:, :, ::1] steps
    cdef const float[:, ::1] table
    cdef const int64_t[:, ::1] ids
    cdef const float[:, ::1] pv
    cdef const float[::1] bv
    cdef float[:, ::1] cv
    cdef const float *xp
    cdef float *cptr = NULL
    cdef int cell_kind = CELL_KINDS[kind]
    cdef int rc
    if tokens is None:
        steps = xproj
        if steps.shape[0] == 0 or steps.shape[1] == 0:
            return
        io.batch, io.steps, io.tokens = steps.shape[0], steps.shape[1], NULL
        xp = &steps[0, 0, 0]
    else:
        table, ids = xproj, tokens
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            return
        io.batch, io.steps, io.tokens = ids.shape[0], ids.shape[1], &ids[0, 0]
        xp = &table[0, 0]
    io.lengths = &lengths[0]
    io.reverse = reverse
    io.y = &y[0, 0, 0]
    io.y_cols = y.shape[2]
    io.y_offset = y_offset
    read_cell(cell, &c_cell)
    w.w_hh_rz = w_hh_rz.packed()
    w.w_hh_n = no_matrix() if w_hh_n is None else w_hh_n.packed()
    w.w_hr = no_matrix() if w_hr is None else w_hr.packed()
    w.peephole = NULL
    w.b_hn = NULL
    if peephole is not None:
        pv = peephole
        w.peephole = &pv[0, 0]
    if b_hn is not None:
        bv = b_hn
        w.b_hn = &bv[0]
    if c is not None:
        cv = c
        cptr = &cv[0, 0]
    with nogil:
        rc = i8_sequence(cell_kind, &io, xp, &w, &h[0, 0], cptr, &c_cell)
    if rc != 0:
        raise MemoryError("int8 sequence: out of memory for the workspace")


cdef extern from "int8_split.h" nogil:
    Py_ssize_t i8_split_sequence(int cell_kind, const rnn_sequence_io *io, const float *xproj, const i8_weights *w,
                                 float *h, float *c, const rnn_cell *cell, rnn_split_shared *shared, int part)


def split_sequence(SplitContext ctx not None, int part, str kind, const float[:, :, ::1] xproj,
                   Int8Weight w_a not None, Int8Weight w_n, b_hn, peephole, const int64_t[::1] lengths,
                   int reverse, float[:, ::1] h, c, float[:, :, ::1] y, Py_ssize_t y_offset, tuple cell):
    """One part of a batch-1 int8 sequence split over the hidden units (kernels/int8_split.h);
    the arguments of _cykernels.split_sequence, with int8 (or bfloat16) weights.

    kind "rnn" | "lstm" | "gru"; xproj (1, T, G*H) IN (gates i|f|g|o, r|z|n); w_a: rnn W_hh
    (H <- H), lstm W_hh (4H <- H), gru rows r|z (2H <- H); w_n gru rows n (H <- H) else None;
    b_hn (H,) for gru; peephole (3, H) rows i|f|o or None; h (1, H) OUT (own units); c (1, H)
    INOUT for lstm else None; y (1, T, Y) OUT, own columns of [y_offset, y_offset + H).

    Returns the steps done: lengths[0], or fewer when waiting dominated (ctx.degraded; the
    caller runs the rest on one thread)."""
    cdef rnn_sequence_io io
    cdef rnn_cell c_cell
    cdef i8_weights w
    cdef const float[::1] bv
    cdef const float[:, ::1] pv
    cdef float[:, ::1] cv
    cdef float *cptr = NULL
    cdef int cell_kind = CELL_KINDS[kind]
    cdef Py_ssize_t rc
    read_cell(cell, &c_cell)
    io.batch, io.steps, io.tokens = 1, xproj.shape[1], NULL
    io.lengths = &lengths[0]
    io.reverse = reverse
    io.y = &y[0, 0, 0]
    io.y_cols = y.shape[2]
    io.y_offset = y_offset
    w.w_hh_rz = w_a.packed()
    w.w_hh_n = no_matrix() if w_n is None else w_n.packed()
    w.w_hr = no_matrix()
    w.peephole = NULL
    w.b_hn = NULL
    if peephole is not None:
        pv = peephole
        w.peephole = &pv[0, 0]
    if b_hn is not None:
        bv = b_hn
        w.b_hn = &bv[0]
    if c is not None:
        cv = c
        cptr = &cv[0, 0]
    with nogil:
        rc = i8_split_sequence(cell_kind, &io, &xproj[0, 0, 0], &w, &h[0, 0], cptr, &c_cell, &ctx.shared, part)
    if rc < 0:
        raise MemoryError("split_sequence: out of memory for the scratch buffers (or aborted)")
    return rc


def peak_probe(kind, iterations):
    """Operations done by `iterations` of int8_core.h's peak probe `kind` ("fma", "vnni",
    "amx"), 0 when unavailable; the caller times the call."""
    cdef int code = ("fma", "vnni", "amx").index(kind)
    cdef int64_t n = iterations
    cdef double ops
    with nogil:
        ops = i8_peak_probe(code, n)
    return ops
