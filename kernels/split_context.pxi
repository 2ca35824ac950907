# split_context.pxi — what the P parts of a batch-1 split call share (rnn_split.h's
# rnn_split_shared: the barrier of spin_barrier.h, the double-buffered h, the GRU's r * h), for
# the float split (_cykernels: rnn_split.c) and the int8 split (_cyint8: int8_split.c). Included
# by both after rnn_core.pxi; needs `memset` (libc.string) and `np` in the including module.

cdef extern from "rnn_split.h" nogil:
    ctypedef struct spin_barrier:
        int parts
        int stop
    void spin_barrier_abort(spin_barrier *b)
    ctypedef struct rnn_split_shared:
        spin_barrier bar
        int failed
        float *h2
        float *shared_rh


cdef class SplitContext:
    """What the P parts of one split call share: the barrier and the double-buffered h (2, H),
    whose first half is the initial h. Made once per call by fastrnn.backends; each part then
    runs split_sequence(ctx, part, ...) on its own thread, all P at the same time."""

    cdef rnn_split_shared shared
    cdef float[:, ::1] _h2
    cdef float[::1] _rh

    def __init__(self, int parts, const float[:, ::1] h0):
        cdef Py_ssize_t H = h0.shape[1]
        if parts < 1 or h0.shape[0] != 1:
            raise ValueError("SplitContext: parts >= 1 and an initial h of shape (1, H)")
        self._h2 = np.zeros((2, H), dtype=np.float32)
        self._h2[0, :] = h0[0, :]
        self._rh = np.zeros(H, dtype=np.float32)
        memset(&self.shared, 0, sizeof(rnn_split_shared))
        self.shared.bar.parts = parts
        self.shared.h2 = &self._h2[0, 0]
        self.shared.shared_rh = &self._rh[0]

    def abort(self):
        """Release every part waiting at the barrier (a part will never come)."""
        spin_barrier_abort(&self.shared.bar)

    @property
    def degraded(self):
        """True once the parts mostly waited for each other: they returned early (see split_sequence)."""
        return bool(self.shared.bar.stop)
