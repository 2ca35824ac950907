/* rnn_core.h — the C kernels of fastrnn: activations, packed matrix multiply, and the
 * whole-sequence loops of the RNN, LSTM and GRU cells (contract: kernels/README.md).
 *
 * Everything is float32. Gate orders are PyTorch's: LSTM i|f|g|o, GRU r|z|n, RNN one block.
 * B = batch, T = steps, H = hidden size, H_out = projection size or H, G = gates (1, 4, 3).
 * Nothing here validates user input (the Python API does), nothing allocates per step, and no
 * function ever exits the process: the sequence functions return 0, or -1 when malloc fails.
 */
#ifndef FASTRNN_RNN_CORE_H
#define FASTRNN_RNN_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- weights ----------------------------------------------------------------------------
 * A matrix W (N, K), used as out (N) = W @ in (K), is packed once into column panels of
 * RNN_PANEL output rows: packed[p, k, j] = W[p*RNN_PANEL + j, k], zero-padded to a whole
 * number of panels. A panel is contiguous (K, RNN_PANEL), so the matmul streams it once. */
#define RNN_PANEL 16

typedef struct {
    const float *data; /* (ceil(N / RNN_PANEL), K, RNN_PANEL), see above */
    ptrdiff_t rows;    /* N: outputs */
    ptrdiff_t cols;    /* K: inputs */
} rnn_packed;

/* number of floats in the packed form of a (rows, cols) matrix */
size_t rnn_packed_size(ptrdiff_t rows, ptrdiff_t cols);

/* w (rows, cols) row-major -> packed (rnn_packed_size floats) */
void rnn_pack_weight(const float *w, ptrdiff_t rows, ptrdiff_t cols, float *packed);

/* out (M, N) += in (M, K) @ W.T for W packed; rows of in are ld_in apart, rows of out ld_out */
void rnn_matmul_packed(const rnn_packed *w, const float *in, ptrdiff_t ld_in,
                       float *out, ptrdiff_t ld_out, ptrdiff_t m);

/* ---- activations ------------------------------------------------------------------------
 * Codes (shared with fastrnn/activations.py): 0 sigmoid, 1 tanh, 2 relu, 3 affine,
 * 4 hard_sigmoid, 5 leaky_relu, 6 thresholded_relu, 7 scaled_tanh, 8 elu, 9 softsign,
 * 10 softplus, 11 exponential, 12 selu, 13 swish. */
typedef struct {
    int code;
    float alpha;
    float beta;
} rnn_activation;

/* x (n,) <- act(clip(x)), clip to [-clip, clip] first unless clip is inf */
void rnn_activate(const rnn_activation *act, float clip, float *x, ptrdiff_t n);

/* the options of a cell: activations [f, g, h] as in the README, clip, LSTM/GRU flags */
typedef struct {
    rnn_activation act[3];   /* f (gates), g (cell input / candidate), h (LSTM output) */
    float clip;              /* pre-activation clip, inf = none */
    int input_forget;        /* LSTM: ff = 1 - i */
    int linear_before_reset; /* GRU: n = g(xp_n + r * (W_hn h + b_hn)) */
} rnn_cell;

/* One row's LSTM step after the matrix multiply (README cell math), units [0, n):
 * a: the pre-activations of gates i|f|g|o, gate k's n values at a + k*a_stride (overwritten);
 * c (n) INOUT; m (n) OUT = o * h(c'); peephole: rows i|f|o at peephole + k*p_stride, or NULL.
 * The usual cell (sigmoid, tanh, tanh, no clip, no input_forget) runs in one fused SIMD pass;
 * any other cell one operation at a time. Both give the same bits. */
void rnn_lstm_pointwise(float *a, ptrdiff_t a_stride, float *c, float *m, const float *peephole,
                        ptrdiff_t p_stride, const rnn_cell *cell, ptrdiff_t n);

/* One row's GRU step after both matrix multiplies (README cell math), units [0, count):
 * n (count) the candidate's pre-activation xp_n, overwritten; r, z (count) the activated gates;
 * hn (count): W_hn h (linear_before_reset) or W_hn (r * h), plus b_hn already when b_hn is
 * NULL; h (count) the previous state; h_new (count) OUT = (1 - z) * n + z * h (may be h).
 * The usual candidate (tanh, no clip) runs in one fused SIMD pass, with the same bits. */
void rnn_gru_pointwise(float *n, const float *r, const float *z, const float *hn, const float *b_hn,
                       const float *h, float *h_new, const rnn_cell *cell, ptrdiff_t count);

/* ---- sequences --------------------------------------------------------------------------
 * Where the steps come from and where the outputs go; shared by the three cells. */
typedef struct {
    ptrdiff_t batch;        /* B */
    ptrdiff_t steps;        /* T */
    const int64_t *lengths; /* (B,) in [0, T]: row b runs steps 0..len-1 */
    int reverse;            /* 1: row b runs t = len-1 .. 0, outputs at original positions */
    float *y;               /* (B, T, y_cols): columns [y_offset, y_offset + H_out) written,
                               0 at t >= len */
    ptrdiff_t y_cols;       /* Y */
    ptrdiff_t y_offset;
    const int64_t *tokens;  /* NULL: xproj is (B, T, G*H). Else (B, T) row indices in [0, V):
                               xproj is a table (V, G*H) and step (b, t) reads row tokens[b, t]
                               (the folded embedding, looked up in place) */
} rnn_sequence_io;

typedef struct {
    rnn_packed w_hh;        /* (4H <- H_out), gates i|f|g|o */
    rnn_packed w_hr;        /* (H_out <- H) projection; data == NULL when proj_size == 0 */
    const float *peephole;  /* (3, H) rows i|f|o, or NULL */
} rnn_lstm_weights;

typedef struct {
    rnn_packed w_hh_rz;     /* (2H <- H), rows r|z of W_hh */
    rnn_packed w_hh_n;      /* (H <- H), rows n of W_hh */
    const float *b_hn;      /* (H,) */
} rnn_gru_weights;

/* h' = f(xp + W_hh h) over the whole sequence; returns 0, -1 if out of memory */
int rnn_sequence_f32(const rnn_sequence_io *io,
                     const float *xproj,        /* IN    (B, T, H), or a table (see io->tokens) */
                     const rnn_packed *w_hh,    /* IN    packed (H <- H) */
                     float *h,                  /* INOUT (B, H) */
                     const rnn_cell *cell);

/* LSTM (README cell math) over the whole sequence; returns 0, -1 if out of memory */
int lstm_sequence_f32(const rnn_sequence_io *io,
                      const float *xproj,       /* IN    (B, T, 4H), gates i|f|g|o, or a table */
                      const rnn_lstm_weights *w,
                      float *h,                 /* INOUT (B, H_out) */
                      float *c,                 /* INOUT (B, H) */
                      const rnn_cell *cell);

/* GRU (README cell math) over the whole sequence; returns 0, -1 if out of memory */
int gru_sequence_f32(const rnn_sequence_io *io,
                     const float *xproj,        /* IN    (B, T, 3H), gates r|z|n, or a table */
                     const rnn_gru_weights *w,
                     float *h,                  /* INOUT (B, H) */
                     const rnn_cell *cell);

/* ---- rows of a sequence call (shared by the float32 loops here and int8_core.c) ----------
 * A sequence call sorts its rows by length, longest first (stable counting sort), so the rows
 * still running at step s are a prefix of the sorted rows (the matrix multiply covers only
 * those), and keeps the running state in that order. Sorted row i is the caller's row order[i]
 * and takes t = s (forward) or t = length[i] - 1 - s (reverse) at step s. */
typedef struct {
    ptrdiff_t *order;  /* (B,) the caller's row of sorted row i */
    ptrdiff_t *length; /* (B + T + 1,): length of sorted row i, then the counting sort's scratch */
    float *h;          /* (B, h_out) running h, sorted rows */
    float *c;          /* (B, c_size) running c (LSTM), sorted rows; unused when c_size == 0 */
    ptrdiff_t h_out;   /* H_out */
    ptrdiff_t c_size;  /* H (LSTM) or 0 */
} rnn_rows;

/* bytes of the rows' buffers for B rows of T steps; rnn_rows_place lays them out from p (64-byte
 * aligned) and returns the first byte after them (64-byte aligned) */
size_t rnn_rows_bytes(ptrdiff_t B, ptrdiff_t T, ptrdiff_t h_out, ptrdiff_t c_size);
char *rnn_rows_place(rnn_rows *rows, char *p, ptrdiff_t B, ptrdiff_t T, ptrdiff_t h_out, ptrdiff_t c_size);
/* Sort io's rows; rows->h (and c, when c != NULL) <- the initial state h (B, h_out), c (B, c_size)
 * in sorted order; y <- 0 at t >= len. Returns the longest length. */
ptrdiff_t rnn_rows_begin(const rnn_sequence_io *io, rnn_rows *rows, const float *h, const float *c);
/* the number of rows running at step s, given the n that ran at step s - 1 */
ptrdiff_t rnn_rows_active(const rnn_rows *rows, ptrdiff_t n, ptrdiff_t s);
/* sorted row i's input at step s: xproj[b, t] (width floats), or table row tokens[b, t] */
const float *rnn_rows_input(const rnn_sequence_io *io, const rnn_rows *rows, const float *xproj, ptrdiff_t width,
                            ptrdiff_t i, ptrdiff_t s);
/* ask for the inputs of the first n rows at step s (while step s - 1 computes: folded-table rows
 * are scattered over many MB, each would otherwise be a cache miss); nothing for xproj rows,
 * which the hardware prefetcher follows (asking for them cost 5% of a batch-64 int8 LSTM) */
void rnn_rows_prefetch(const rnn_sequence_io *io, const rnn_rows *rows, const float *xproj, ptrdiff_t width,
                       ptrdiff_t n, ptrdiff_t s);
/* y[b, t, y_offset:] <- rows->h of the first n rows at step s */
void rnn_rows_store(const rnn_sequence_io *io, const rnn_rows *rows, ptrdiff_t n, ptrdiff_t s);
/* the final h (and c, when c != NULL) back to the caller's rows */
void rnn_rows_end(const rnn_sequence_io *io, const rnn_rows *rows, float *h, float *c);

/* ---- instruction set ----------------------------------------------------------------------
 * The instruction set in use: RNN_SIMD_PLAIN (plain C), RNN_SIMD_AVX2 (AVX2 + FMA kernels) or
 * RNN_SIMD_AVX512 (the matrix multiply in AVX-512F, the rest AVX2), the best the CPU has unless
 * capped. The AVX2 and AVX-512 levels give the same bits (the matrix multiply is one FMA chain
 * per output on both; plain C multiplies and adds separately, so it rounds differently). rnn_select_simd(level) caps the level (-1: the
 * best available; for tests and FASTRNN_SIMD) and returns the level now in use. */
enum { RNN_SIMD_PLAIN = 0, RNN_SIMD_AVX2 = 1, RNN_SIMD_AVX512 = 2 };

/* Flush denormals to zero on the calling thread (x86 MXCSR FTZ|DAZ) for the duration of a
 * kernel call; returns the previous setting for rnn_denormals_restore. No-op elsewhere. */
unsigned rnn_denormals_off(void);
void rnn_denormals_restore(unsigned saved);
int rnn_simd_enabled(void);
int rnn_select_simd(int level);

#ifdef __cplusplus
}
#endif
#endif /* FASTRNN_RNN_CORE_H */
