"""Cython front end of the C kernels (rnn_core.c): the entry points of kernels/README.md.

Thin on purpose: take typed memoryviews, fill the small C structs, release the GIL around one C
call that runs the whole sequence. No input validation here (fastrnn.backends and fastrnn.model
check shapes, dtypes, contiguity and ranges before calling); scratch memory is allocated once per
call inside the C function. Cython directives are set in setup.py.
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uintptr_t
from libc.string cimport memset

include "rnn_core.pxi"

SIMD_LEVELS = FLOAT_SIMD_LEVELS


def _warn_unknown_simd():
    """FASTRNN_SIMD=plain|avx2|avx512 caps the instruction set (default: the best the CPU has);
    rnn_core.pxi applies it. Another name is ignored, with this warning (once, from this module)."""
    import warnings

    name = _simd_env()
    if name and name not in SIMD_LEVELS:
        warnings.warn(f"FASTRNN_SIMD={name!r} is not one of {SIMD_LEVELS}; using the best available", RuntimeWarning)


_warn_unknown_simd()


# -- weights -----------------------------------------------------------------------------------
cdef class PackedWeight:
    """A weight matrix W (rows, cols), used as ``out = W @ in``, in the layout of the C kernels
    (column panels of RNN_PANEL rows, see rnn_core.h). Made by ``pack_weight``; read-only."""

    cdef readonly object data        # ndarray float32 (panels * cols * RNN_PANEL,), 64-byte aligned
    cdef readonly Py_ssize_t rows    # N
    cdef readonly Py_ssize_t cols    # K
    cdef const float[::1] _view

    def __init__(self, data, Py_ssize_t rows, Py_ssize_t cols):
        self._view = data
        if rows < 0 or cols < 0 or self._view.shape[0] != <Py_ssize_t>rnn_packed_size(rows, cols):
            # the kernels trust rows and cols: keep the object consistent (e.g. when unpickled)
            raise ValueError(f"packed data of {self._view.shape[0]} floats does not hold a "
                             f"({rows}, {cols}) matrix; make it with pack_weight(W)")
        self.data = data
        self.rows = rows
        self.cols = cols

    def __reduce__(self):
        return (PackedWeight, (self.data, self.rows, self.cols))

    def __repr__(self):
        return f"PackedWeight(rows={self.rows}, cols={self.cols}, panel={RNN_PANEL})"

    cdef rnn_packed packed(self):
        cdef rnn_packed p
        p.data = &self._view[0] if self._view.shape[0] > 0 else NULL
        p.rows = self.rows
        p.cols = self.cols
        return p


def pack_weight(W):
    """Pack W, ndarray of shape (N, K) float32 (out = W @ in), for this backend. Done once at
    load time; the result is opaque to callers and only handed back to this module."""
    cdef const float[:, ::1] w = np.ascontiguousarray(W, dtype=np.float32)
    cdef Py_ssize_t rows = w.shape[0], cols = w.shape[1]
    cdef Py_ssize_t size = <Py_ssize_t>rnn_packed_size(rows, cols)
    data = zeros_aligned(size, np.float32)
    cdef float[::1] out = data
    if size > 0:
        with nogil:
            rnn_pack_weight(&w[0, 0], rows, cols, &out[0])
    data.flags.writeable = False
    return PackedWeight(data, rows, cols)


# -- shared helpers ----------------------------------------------------------------------------
cdef int fill_io(rnn_sequence_io *io, Py_ssize_t batch, Py_ssize_t steps,
                 const int64_t[::1] lengths, int reverse, float[:, :, ::1] y,
                 Py_ssize_t y_offset) except -1:
    io.batch = batch
    io.steps = steps
    io.lengths = &lengths[0]
    io.reverse = reverse
    io.y = &y[0, 0, 0]
    io.y_cols = y.shape[2]
    io.y_offset = y_offset
    io.tokens = NULL
    return 0


cdef int sequence_args(rnn_sequence_io *io, const float **xp, rnn_cell *c_cell, xproj, tokens,
                       const int64_t[::1] lengths, int reverse, float[:, :, ::1] y, Py_ssize_t y_offset,
                       tuple cell) except -1:
    """Fill io, *xp and c_cell for a sequence call; returns 0 when there is nothing to run.
    xproj (B, T, G*H) with tokens None, else a table (V, G*H) read at rows tokens (B, T) int64.
    The pointers stay valid while the caller holds xproj and tokens."""
    cdef const float[:, :, ::1] steps
    cdef const float[:, ::1] table
    cdef const int64_t[:, ::1] ids
    if tokens is None:
        steps = xproj
        if steps.shape[0] == 0 or steps.shape[1] == 0:  # nothing to run (and no element to point at)
            return 0
        fill_io(io, steps.shape[0], steps.shape[1], lengths, reverse, y, y_offset)
        xp[0] = &steps[0, 0, 0]
    else:
        table, ids = xproj, tokens
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            return 0
        fill_io(io, ids.shape[0], ids.shape[1], lengths, reverse, y, y_offset)
        io.tokens = &ids[0, 0]
        xp[0] = &table[0, 0]
    read_cell(cell, c_cell)
    return 1


# -- entry points ------------------------------------------------------------------------------
# xproj is (B, T, G*H), or with tokens=(B, T) int64 the folded table (V, G*H) read in place.
def rnn_sequence(xproj, PackedWeight w_hh not None, const int64_t[::1] lengths, int reverse,
                 float[:, ::1] h, float[:, :, ::1] y, Py_ssize_t y_offset, tuple cell, tokens=None):
    """Whole-sequence RNN: h' = f(xp + W_hh h).

    xproj (B, T, H) IN (or a table, see above); w_hh packed (H <- H); lengths (B,) int64;
    reverse 0/1; h (B, H) INOUT; y (B, T, Y) OUT, columns [y_offset, y_offset + H) written; cell
    as in README."""
    cdef rnn_sequence_io io
    cdef const float *xp
    cdef rnn_cell c_cell
    if not sequence_args(&io, &xp, &c_cell, xproj, tokens, lengths, reverse, y, y_offset, cell):
        return
    cdef rnn_packed w = w_hh.packed()
    cdef int rc
    with nogil:
        rc = rnn_sequence_f32(&io, xp, &w, &h[0, 0], &c_cell)
    if rc != 0:
        raise MemoryError("rnn_sequence: out of memory for the scratch buffers")


def lstm_sequence(xproj, PackedWeight w_hh not None, PackedWeight w_hr, peephole,
                  const int64_t[::1] lengths, int reverse, float[:, ::1] h, float[:, ::1] c,
                  float[:, :, ::1] y, Py_ssize_t y_offset, tuple cell, tokens=None):
    """Whole-sequence LSTM (README cell math).

    xproj (B, T, 4H) IN, gates i|f|g|o (or a table, see above); w_hh packed (4H <- H_out); w_hr
    packed (H_out <- H) or None; peephole (3, H) rows i|f|o or None; lengths (B,) int64;
    reverse 0/1; h (B, H_out), c (B, H) INOUT; y (B, T, Y) OUT, columns [y_offset, y_offset + H_out)."""
    cdef rnn_sequence_io io
    cdef const float *xp
    cdef rnn_cell c_cell
    if not sequence_args(&io, &xp, &c_cell, xproj, tokens, lengths, reverse, y, y_offset, cell):
        return
    cdef rnn_lstm_weights w
    w.w_hh = w_hh.packed()
    if w_hr is None:
        w.w_hr.data = NULL
        w.w_hr.rows = 0
        w.w_hr.cols = 0
    else:
        w.w_hr = w_hr.packed()
    cdef const float[:, ::1] p
    w.peephole = NULL
    if peephole is not None:
        p = peephole
        w.peephole = &p[0, 0]
    cdef int rc
    with nogil:
        rc = lstm_sequence_f32(&io, xp, &w, &h[0, 0], &c[0, 0], &c_cell)
    if rc != 0:
        raise MemoryError("lstm_sequence: out of memory for the scratch buffers")


def gru_sequence(xproj, PackedWeight w_hh_rz not None, PackedWeight w_hh_n not None,
                 const float[::1] b_hn, const int64_t[::1] lengths, int reverse, float[:, ::1] h,
                 float[:, :, ::1] y, Py_ssize_t y_offset, tuple cell, tokens=None):
    """Whole-sequence GRU (README cell math, both linear_before_reset variants).

    xproj (B, T, 3H) IN, gates r|z|n (or a table, see above); w_hh_rz packed (2H <- H); w_hh_n
    packed (H <- H); b_hn (H,); lengths (B,) int64; reverse 0/1; h (B, H) INOUT;
    y (B, T, Y) OUT, columns [y_offset, y_offset + H) written."""
    cdef rnn_sequence_io io
    cdef const float *xp
    cdef rnn_cell c_cell
    if not sequence_args(&io, &xp, &c_cell, xproj, tokens, lengths, reverse, y, y_offset, cell):
        return
    cdef rnn_gru_weights w
    w.w_hh_rz = w_hh_rz.packed()
    w.w_hh_n = w_hh_n.packed()
    w.b_hn = &b_hn[0]
    cdef int rc
    with nogil:
        rc = gru_sequence_f32(&io, xp, &w, &h[0, 0], &c_cell)
    if rc != 0:
        raise MemoryError("gru_sequence: out of memory for the scratch buffers")


# -- instruction set (for tests and reports) -----------------------------------------------------
def simd_enabled():
    """True when SIMD kernels (AVX2 or AVX-512) are in use, False for the plain-C fallback."""
    return bool(rnn_simd_enabled())


def simd_level():
    """The instruction set in use: "plain", "avx2" or "avx512"."""
    return SIMD_LEVELS[rnn_simd_enabled()]


def _select_simd(level):
    """Tests only: cap the instruction set process-wide ("plain", "avx2", "avx512", or None for
    the best available); returns the level now in use. Not thread-safe against running kernels."""
    return SIMD_LEVELS[rnn_select_simd(-1 if level is None else SIMD_LEVELS.index(level))]


# -- batch-invariant matmul (input projections and Dense layers) ----------------------------------


def matmul_packed(const float[:, ::1] inp, PackedWeight w not None, float[:, ::1] out):
    """out (M, N) += inp (M, K) @ W.T, w = pack_weight(W (N, K)). Each output is one FMA chain
    over k, so a row's result does not depend on the other rows (see kernels/README.md)."""
    cdef rnn_packed p = w.packed()
    cdef Py_ssize_t m = inp.shape[0]
    if inp.shape[1] != p.cols or out.shape[0] != m or out.shape[1] != p.rows:  # memory safety
        raise ValueError(f"matmul_packed: ({m}, {inp.shape[1]}) @ ({p.rows}, {p.cols}).T into "
                         f"({out.shape[0]}, {out.shape[1]})")
    if m == 0 or p.rows == 0 or p.cols == 0:
        return
    with nogil:
        rnn_matmul_packed(&p, &inp[0, 0], inp.shape[1], &out[0, 0], out.shape[1], m)


# -- batch 1 with the hidden units split across threads (kernels/rnn_split.h) --------------------
include "split_context.pxi"

cdef extern from "rnn_split.h" nogil:
    enum:
        RNN_SPLIT_RNN
        RNN_SPLIT_LSTM
        RNN_SPLIT_GRU
    ctypedef struct rnn_split_weights:
        int cell
        const rnn_packed *w_a
        const rnn_packed *w_n
        const float *b_hn
        const float *peephole
    ptrdiff_t rnn_split_sequence(const rnn_sequence_io *io, const float *xproj, const rnn_split_weights *w,
                           float *h, float *c, const rnn_cell *cell, rnn_split_shared *shared, int part)


def split_sequence(SplitContext ctx not None, int part, str kind, const float[:, :, ::1] xproj,
                   PackedWeight w_a not None, PackedWeight w_n, b_hn, peephole, const int64_t[::1] lengths,
                   int reverse, float[:, ::1] h, c, float[:, :, ::1] y, Py_ssize_t y_offset, tuple cell):
    """One part of a batch-1 sequence split over the hidden units (kernels/rnn_split.h).

    kind "rnn" | "lstm" | "gru"; xproj (1, T, G*H) IN; w_a packed: rnn W_hh (H <- H), lstm W_hh
    (4H <- H), gru rows r|z (2H <- H); w_n gru rows n (H <- H) else None; b_hn (H,) for gru;
    peephole (3, H) or None; h (1, H) OUT (own units); c (1, H) INOUT for lstm else None; y
    (1, T, Y) OUT, own columns of [y_offset, y_offset + H).

    Returns the steps done: lengths[0], or fewer when waiting dominated (ctx.degraded; the
    caller runs the rest on one thread)."""
    cdef Py_ssize_t T = xproj.shape[1]
    cdef rnn_cell c_cell
    read_cell(cell, &c_cell)
    cdef rnn_sequence_io io
    fill_io(&io, 1, T, lengths, reverse, y, y_offset)
    cdef rnn_packed pa = w_a.packed()
    cdef rnn_packed pn
    cdef rnn_split_weights w
    cdef const float[::1] bhn_view
    cdef const float[:, ::1] peep_view
    cdef float[:, ::1] c_view
    w.w_a = &pa
    w.w_n = NULL
    w.b_hn = NULL
    w.peephole = NULL
    if kind == "gru":
        w.cell = RNN_SPLIT_GRU
        pn = w_n.packed()
        w.w_n = &pn
        bhn_view = b_hn
        w.b_hn = &bhn_view[0]
    elif kind == "lstm":
        w.cell = RNN_SPLIT_LSTM
        if peephole is not None:
            peep_view = peephole
            w.peephole = &peep_view[0, 0]
    else:
        w.cell = RNN_SPLIT_RNN
    cdef float *c_ptr = NULL
    if c is not None:
        c_view = c
        c_ptr = &c_view[0, 0]
    cdef ptrdiff_t rc
    with nogil:
        rc = rnn_split_sequence(&io, &xproj[0, 0, 0], &w, &h[0, 0], c_ptr, &c_cell, &ctx.shared, part)
    if rc < 0:
        raise MemoryError("split_sequence: out of memory for the scratch buffers (or aborted)")
    return rc
