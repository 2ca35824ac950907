# cython: language_level=3
"""fastrnn.kernels._cygenerate: the compiled generation loop (kernels/generate_core.c).

Thin layer over C: ``CompiledModel`` packs a generation plan (fastrnn.generate.GenerationPlan)
once; ``Runner`` binds caller-owned row buffers to it and runs lockstep steps with the GIL
released. ``process_logits`` and ``sample_logits`` expose the C sampler for the tests. Inputs
are validated by fastrnn.generate, not here.
"""
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np

cimport numpy as cnp

cnp.import_array()


include "rnn_core.pxi"


cdef extern from "generate_core.h" nogil:
    ctypedef struct gen_matrix:
        rnn_packed f32
        const uint16_t *half
        const int8_t *q8
        const float *scale
    ctypedef struct gen_layer:
        int cell
        ptrdiff_t input_size
        ptrdiff_t hidden_size
        ptrdiff_t output_size
        ptrdiff_t h_offset
        ptrdiff_t c_offset
        gen_matrix w_a
        const float *b_a
        gen_matrix w_xn
        const float *b_xn
        gen_matrix w_hn
        const float *b_hn
        gen_matrix w_hr
        const float *peephole
        rnn_cell opts
    ctypedef struct gen_model:
        ptrdiff_t n_layers
        const gen_layer *layers
        const float *table
        ptrdiff_t table_rows
        gen_matrix dense
        const float *dense_bias
        ptrdiff_t vocab_size
        ptrdiff_t state_size
    ctypedef struct gen_sampling:
        double temperature
        ptrdiff_t top_k
        double top_p
        double repetition_penalty
    ctypedef struct gen_sample_scratch:
        double *y
        double *e
        double *tmp
        ptrdiff_t *heap
    ctypedef struct gen_rows:
        ptrdiff_t batch
        float *state
        float *logits
        uint8_t *seen
        uint64_t *rng
        int64_t *status
        const int32_t *prompt
        ptrdiff_t prompt_cols
        int32_t *out
        ptrdiff_t max_new
        int64_t *stop_state
    ctypedef struct gen_stops:
        ptrdiff_t count
        const int32_t *tokens
        const int64_t *offsets
        const int32_t *fail
    int GEN_STATUS_COLS
    double gen_uniform(uint64_t *state)
    void gen_process_logits(const float *logits, const uint8_t *seen, ptrdiff_t V, const gen_sampling *s,
                            gen_sample_scratch *scratch)
    int32_t gen_sample_token(const float *logits, const uint8_t *seen, ptrdiff_t V, const gen_sampling *s,
                             uint64_t *rng, gen_sample_scratch *scratch)
    size_t gen_workspace_bytes(const gen_model *m, ptrdiff_t batch)
    ptrdiff_t gen_run(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *rows,
                      void *workspace, ptrdiff_t max_steps)
    ctypedef struct spin_barrier:
        int parts
        int stop
    void spin_barrier_abort(spin_barrier *b)
    ctypedef struct gen_split_shared:
        spin_barrier bar
        ptrdiff_t n_feed
        ptrdiff_t n_logits
        ptrdiff_t *rows
        ptrdiff_t *lrows
        int32_t *inputs
        float *rh
    ptrdiff_t gen_run_split(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *rows,
                            void *workspace, ptrdiff_t max_steps, gen_split_shared *shared, int part)


# This module links its own copy of rnn_core (its activations and float32 matrix multiply):
# FASTRNN_SIMD=plain|avx2|avx512 caps the loop's instruction set (float32, float16 and int8
# products, activations), decided once at import by rnn_core.pxi.
SIMD_LEVELS = FLOAT_SIMD_LEVELS


def simd_level():
    """The instruction set the generation loop uses now: one of SIMD_LEVELS."""
    return SIMD_LEVELS[rnn_simd_enabled()]


def _select_simd(level):
    """Cap the loop's instruction set (a name of SIMD_LEVELS, None for the best); returns the
    level now in use. For tests and benchmarks; not thread-safe against running loops."""
    return SIMD_LEVELS[rnn_select_simd(-1 if level is None else SIMD_LEVELS.index(level))]


STATUS_COLS = GEN_STATUS_COLS
KMP_STOPS = True  # Runner takes stops (tokens, offsets, fail) and stop_state (see Runner)
_CELLS = {"rnn": 0, "lstm": 1, "gru": 2}


def pack_weight(w):
    """w (N, K) float32, out = w @ in  ->  rnn_core's panel layout (1-D float32)."""
    cdef cnp.ndarray[float, ndim=2, mode="c"] src = np.ascontiguousarray(w, dtype=np.float32)
    cdef ptrdiff_t rows = src.shape[0], cols = src.shape[1]
    packed = np.empty(max(1, rnn_packed_size(rows, cols)), np.float32)
    cdef float[::1] dst = packed
    rnn_pack_weight(&src[0, 0] if src.size else NULL, rows, cols, &dst[0])
    return packed


def pack_int8(q):
    """q (N, K) int8 -> the pair panels of generate_core.h: (panels, K2 / 2, 16, 2) int8"""
    N, K = q.shape
    panels, K2 = -(-N // 16), K + K % 2
    padded = np.zeros((panels * 16, K2), np.int8)
    padded[:N, :K] = q
    return np.ascontiguousarray(padded.reshape(panels, 16, K2 // 2, 2).transpose(0, 2, 1, 3))


cdef const float *_ptr(object keep, object a) except? NULL:
    """data pointer of a float32 C-contiguous array (None -> NULL); keep holds a reference"""
    if a is None:
        return NULL
    cdef cnp.ndarray arr = np.ascontiguousarray(a, dtype=np.float32)
    keep.append(arr)
    return <const float *>cnp.PyArray_DATA(arr)


cdef gen_matrix _matrix(object keep, object matrix, str kind):
    """a fastrnn.generate.Matrix -> gen_matrix (f32.data NULL for None), in the form ``kind``:
    float32 panels; float16: also half panels; int8: f32 panels of q, int8 panels, row scales"""
    cdef gen_matrix m
    m.f32.data = NULL
    m.f32.rows = 0
    m.f32.cols = 0
    m.half = NULL
    m.q8 = NULL
    m.scale = NULL
    if matrix is None:
        return m
    rows, cols = matrix.shape
    m.f32.rows = rows
    m.f32.cols = cols
    if kind == "int8":
        q8 = pack_int8(matrix.q)
        scale = np.zeros(q8.shape[0] * 16, np.float32)
        scale[:rows] = matrix.scale
        keep.extend((q8, scale))
        m.q8 = <const int8_t *>cnp.PyArray_DATA(q8)
        m.scale = <const float *>cnp.PyArray_DATA(scale)
        return m
    packed = pack_weight(matrix.values)
    keep.append(packed)
    m.f32.data = <const float *>cnp.PyArray_DATA(packed)
    if kind == "float16":
        halves = packed.astype(np.float16).view(np.uint16)
        keep.append(halves)
        m.half = <const uint16_t *>cnp.PyArray_DATA(halves)
    return m


cdef class CompiledModel:
    """A GenerationPlan with its weights packed for the C loop (read-only, shared by runners)."""

    cdef gen_model model
    cdef gen_layer *layers
    cdef list keep
    cdef readonly object plan

    def __cinit__(self):
        self.layers = NULL

    def __init__(self, plan):
        cdef Py_ssize_t l, j
        cdef gen_layer *L
        cdef str kind = plan.weights
        self.plan = plan
        self.keep = []
        n = len(plan.layers)
        self.layers = <gen_layer *>malloc(n * sizeof(gen_layer))
        if self.layers == NULL:
            raise MemoryError()
        memset(self.layers, 0, n * sizeof(gen_layer))
        for l, lp in enumerate(plan.layers):
            L = &self.layers[l]
            L.cell = _CELLS[lp.cell]
            L.input_size = lp.input_size
            L.hidden_size = lp.hidden_size
            L.output_size = lp.output_size
            L.h_offset = lp.h_offset
            L.c_offset = lp.c_offset
            L.w_a = _matrix(self.keep, lp.w_a, kind)
            L.b_a = _ptr(self.keep, lp.b_a)
            L.w_xn = _matrix(self.keep, lp.w_xn, kind)
            L.b_xn = _ptr(self.keep, lp.b_xn)
            L.w_hn = _matrix(self.keep, lp.w_hn, kind)
            L.b_hn = _ptr(self.keep, lp.b_hn)
            L.w_hr = _matrix(self.keep, lp.w_hr, kind)
            L.peephole = _ptr(self.keep, lp.peephole)
            for j in range(3):
                L.opts.act[j].code = lp.acts[j]
                L.opts.act[j].alpha = lp.act_params[j][0]
                L.opts.act[j].beta = lp.act_params[j][1]
            L.opts.clip = lp.clip
            L.opts.input_forget = lp.input_forget
            L.opts.linear_before_reset = lp.linear_before_reset
        self.model.n_layers = n
        self.model.layers = self.layers
        self.model.table = _ptr(self.keep, plan.table)
        self.model.table_rows = plan.table.shape[0]
        self.model.dense = _matrix(self.keep, plan.dense_w, kind)
        self.model.dense_bias = _ptr(self.keep, plan.dense_b)
        self.model.vocab_size = plan.vocab_size
        self.model.state_size = plan.state_size

    def __dealloc__(self):
        free(self.layers)

    def workspace_bytes(self, Py_ssize_t batch):
        return gen_workspace_bytes(&self.model, batch)


cdef gen_sampling _sampling(object s):
    cdef gen_sampling out
    out.temperature = s[0]
    out.top_k = s[1]
    out.top_p = s[2]
    out.repetition_penalty = s[3]
    return out


cdef class Runner:
    """Binds caller-owned buffers of B rows to a CompiledModel; ``run(n)`` does n lockstep steps.

    state (B, S) f32, logits (B, V) f32, seen (B, V) u8, rng (B,) u64, status (B, 6) i64,
    prompt (B, P) i32, out (B, max_new) i32: all INOUT/IN as in generate_core.h, C-contiguous.
    sampling: (temperature, top_k, top_p, repetition_penalty); stops: (tokens i32, offsets i64) or
    (tokens, offsets, fail i32) with the stops' KMP failure functions, then stop_state (B, count)
    i64 INOUT holds each row's matched-prefix lengths (zeros at the start of a job): stop matching
    costs O(1) per token instead of a comparison with each whole stop.
    """

    cdef CompiledModel compiled
    cdef gen_rows rows
    cdef gen_sampling sampling
    cdef gen_stops stops
    cdef object arrays
    cdef cnp.ndarray workspace
    cdef void *workspace_ptr

    def __init__(self, CompiledModel compiled, sampling, stops, state, logits, seen, rng, status, prompt,
                 out, stop_state=None):
        cdef float[:, ::1] state_v = state
        cdef float[:, ::1] logits_v = logits
        cdef uint8_t[:, ::1] seen_v = seen
        cdef uint64_t[::1] rng_v = rng
        cdef int64_t[:, ::1] status_v = status
        cdef int32_t[:, ::1] prompt_v = prompt
        cdef int32_t[:, ::1] out_v = out
        cdef int32_t[::1] stop_tokens = stops[0]
        cdef int64_t[::1] stop_offsets = stops[1]
        cdef Py_ssize_t B = state_v.shape[0]
        cdef size_t addr
        cdef int32_t[::1] stop_fail
        cdef int64_t[:, ::1] stop_state_v
        self.compiled = compiled
        self.arrays = (state, logits, seen, rng, status, prompt, out, stops, stop_state)
        self.stops.fail = NULL
        self.rows.stop_state = NULL
        if len(stops) > 2 and stop_state is not None and stop_tokens.shape[0]:
            stop_fail = stops[2]
            stop_state_v = stop_state
            if stop_fail.shape[0] != stop_tokens.shape[0] or stop_state_v.shape[0] != B \
                    or stop_state_v.shape[1] != stop_offsets.shape[0] - 1:
                raise ValueError("Runner: stop failure function or state of the wrong shape")
            self.stops.fail = &stop_fail[0]
            self.rows.stop_state = &stop_state_v[0, 0] if B else NULL
        self.sampling = _sampling(sampling)
        self.stops.count = stop_offsets.shape[0] - 1
        self.stops.tokens = &stop_tokens[0] if stop_tokens.shape[0] else NULL
        self.stops.offsets = &stop_offsets[0]
        self.rows.batch = B
        self.rows.state = &state_v[0, 0] if state_v.size else NULL
        self.rows.logits = &logits_v[0, 0] if logits_v.size else NULL
        self.rows.seen = &seen_v[0, 0] if seen_v.size else NULL
        self.rows.rng = &rng_v[0] if B else NULL
        self.rows.status = &status_v[0, 0] if B else NULL
        self.rows.prompt = &prompt_v[0, 0] if prompt_v.size else NULL
        self.rows.prompt_cols = prompt_v.shape[1]
        self.rows.out = &out_v[0, 0] if out_v.size else NULL
        self.rows.max_new = out_v.shape[1]
        nbytes = gen_workspace_bytes(&compiled.model, B) + 64
        self.workspace = np.empty(nbytes, np.uint8)
        addr = <size_t>cnp.PyArray_DATA(self.workspace)
        self.workspace_ptr = <void *>((addr + 63) // 64 * 64)

    def run(self, Py_ssize_t max_steps):
        """Run at most max_steps lockstep steps; returns the number of rows not finished."""
        cdef ptrdiff_t active
        with nogil:
            active = gen_run(&self.compiled.model, &self.sampling, &self.stops, &self.rows,
                             self.workspace_ptr, max_steps)
        return active


cdef class SplitRunner(Runner):
    """A Runner whose steps are computed by ``parts`` threads, each owning whole panels of every
    layer's hidden units (generate_core.h, gen_run_split). ``run_part(part, n)`` must be called
    for every part at the same time, on different threads; part 0's value is the result."""

    cdef gen_split_shared shared
    cdef list part_workspaces
    cdef object rh
    cdef size_t part_ptrs[64]

    def __init__(self, CompiledModel compiled, sampling, stops, state, logits, seen, rng, status, prompt, out,
                 int parts, Py_ssize_t max_hidden, stop_state=None):
        Runner.__init__(self, compiled, sampling, stops, state, logits, seen, rng, status, prompt, out, stop_state)
        cdef float[::1] rh_v
        cdef size_t addr
        if not 1 <= parts <= 64:
            raise ValueError("SplitRunner: parts must be in 1..64")
        self.rh = np.zeros(max(1, self.rows.batch * max_hidden), np.float32)
        rh_v = self.rh
        memset(&self.shared, 0, sizeof(gen_split_shared))
        self.shared.bar.parts = parts
        self.shared.rh = &rh_v[0]
        self.part_workspaces = [self.workspace]
        self.part_ptrs[0] = <size_t>self.workspace_ptr
        nbytes = gen_workspace_bytes(&compiled.model, self.rows.batch) + 64
        for i in range(1, parts):
            buf = np.empty(nbytes, np.uint8)
            addr = <size_t>cnp.PyArray_DATA(buf)
            self.part_ptrs[i] = (addr + 63) // 64 * 64
            self.part_workspaces.append(buf)

    def run_part(self, int part, Py_ssize_t max_steps):
        cdef ptrdiff_t active
        cdef void *ws = <void *>self.part_ptrs[part]
        if not 0 <= part < self.shared.bar.parts:
            raise ValueError("run_part: no such part")
        with nogil:
            active = gen_run_split(&self.compiled.model, &self.sampling, &self.stops, &self.rows, ws, max_steps,
                                   &self.shared, part)
        return active

    def abort(self):
        """Release every part waiting at the barrier: a part will never come (its thread raised
        before entering the loop). The runner is unusable afterwards."""
        spin_barrier_abort(&self.shared.bar)

    @property
    def degraded(self):
        """True once the parts found that they mostly waited for each other (another process
        busy on a core): the loop returned early and one thread (Runner) should go on."""
        return bool(self.shared.bar.stop)


def process_logits(logits, seen, sampling):
    """logits (B, V) f32, seen (B, V) u8 or None -> (B, V) f64 processed logits (-inf = masked)."""
    cdef float[:, ::1] lg = np.ascontiguousarray(logits, dtype=np.float32)
    cdef Py_ssize_t B = lg.shape[0], V = lg.shape[1], b
    cdef uint8_t[:, ::1] sn = np.ascontiguousarray(seen if seen is not None else np.zeros((B, V), np.uint8),
                                                   dtype=np.uint8)
    out = np.empty((B, V), np.float64)
    cdef double[:, ::1] ov = out
    cdef double[::1] e = np.empty(V, np.float64), tmp = np.empty(V, np.float64)
    cdef ptrdiff_t[::1] heap = np.empty(V, np.intp)
    cdef gen_sample_scratch w
    cdef gen_sampling s = _sampling(sampling)
    for b in range(B):
        w.y = &ov[b, 0]
        w.e = &e[0]
        w.tmp = &tmp[0]
        w.heap = &heap[0]
        gen_process_logits(&lg[b, 0], &sn[b, 0], V, &s, &w)
    return out


def sample_logits(logits, seen, sampling, rng, Py_ssize_t draws=1):
    """logits (B, V) f32, seen (B, V) u8 or None, rng (B,) u64 INOUT -> tokens (B, draws) int32,
    draws successive samples per row from that row's generator."""
    cdef float[:, ::1] lg = np.ascontiguousarray(logits, dtype=np.float32)
    cdef Py_ssize_t B = lg.shape[0], V = lg.shape[1], b, d
    cdef uint8_t[:, ::1] sn = np.ascontiguousarray(seen if seen is not None else np.zeros((B, V), np.uint8),
                                                   dtype=np.uint8)
    cdef uint64_t[::1] rv = rng
    out = np.empty((B, draws), np.int32)
    cdef int32_t[:, ::1] ov = out
    cdef double[::1] y = np.empty(V, np.float64), e = np.empty(V, np.float64), tmp = np.empty(V, np.float64)
    cdef ptrdiff_t[::1] heap = np.empty(V, np.intp)
    cdef gen_sample_scratch w
    cdef gen_sampling s = _sampling(sampling)
    w.y = &y[0]
    w.e = &e[0]
    w.tmp = &tmp[0]
    w.heap = &heap[0]
    with nogil:
        for b in range(B):
            for d in range(draws):
                ov[b, d] = gen_sample_token(&lg[b, 0], &sn[b, 0], V, &s, &rv[b], &w)
    return out


def uniforms(uint64_t state, Py_ssize_t n):
    """n successive uniforms from a SplitMix64 state (for the tests)."""
    out = np.empty(n, np.float64)
    cdef double[::1] ov = out
    cdef Py_ssize_t i
    for i in range(n):
        ov[i] = gen_uniform(&state)
    return out
