/* generate_core.h — fastrnn's compiled generation loop: folded embedding, every recurrent layer,
 * the output Dense, the logit processing and the sampler, for a batch of rows decoding in
 * lockstep (the spec: fastrnn/generate.py, "NumPy reference"; the Numba twin:
 * kernels/numba_generate.py).
 *
 * Everything the loop touches is owned by the caller: the model (read-only, packed once per
 * model), the rows' state (kept between calls, so a stream is a series of calls), and one
 * workspace sized by gen_workspace_bytes(). Nothing here allocates, validates user input or
 * exits. The activations and the float32 matrix multiply are rnn_core's (rnn_core.h); the
 * float16 and int8 matrix multiplies are here. One call runs on the calling thread (the Python
 * layer runs blocks of rows on several threads; rows are independent).
 *
 * One lockstep step, for every row b that is not finished:
 *   (a) if the row holds next-token logits: stop if it already has its limit of tokens (max_new, or GEN_LIMIT if smaller), or (with
 *       GEN_BAD_LOGITS) if a logit is not finite; else process the logits and sample a token (rng advanced once when temperature > 0), append
 *       it, finish on a stop sequence or on max_new; otherwise the token is the row's input.
 *       Without logits the input is the next prompt token.
 *   (b) all rows with an input run the recurrent layers (one matmul per layer for the batch);
 *   (c) rows whose prompt is used up compute their logits with the output Dense.
 * A row's tokens depend only on its own prompt, state, seed and the sampling parameters: the
 * matrix multiply gives a row the same bits whatever the other rows are.
 */
#ifndef FASTRNN_GENERATE_CORE_H
#define FASTRNN_GENERATE_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "rnn_core.h"
#include "spin_barrier.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the model (read-only) ---------------------------------------------------------------- */
enum { GEN_RNN = 0, GEN_LSTM = 1, GEN_GRU = 2 };

/* A weight matrix W (N, K), out = W @ in, in one of three forms:
 * - float32: f32 holds rnn_core's panels.
 * - float16 (half != NULL): W rounded once to half precision. half holds the same panels as
 *   IEEE halves (converted with F16C: half the bytes to stream), f32 the same values as floats.
 *   Batches of at most GEN_SMALL_ROWS rows read half (AVX2), larger batches (compute bound) and
 *   CPUs without F16C read f32 with rnn_core's matmul. Both compute an output as the same chain
 *   of fused multiply-adds over k = 0..K-1, so a row's result does not depend on the path.
 * - int8 (q8 != NULL): W[n, k] = scale[n] * q[n, k], q in [-127, 127], a quarter of the bytes.
 *   Each input row x is quantized on the fly to int16: s_x = max|x| / X_MAX, xq = rint(x / s_x)
 *   with X_MAX = min(32767, (2^31 - 1) / (127 * K2)) so that no int32 sum can overflow, then
 *   out[n] = out[n] + float(sum_k q[n, k] xq[k]) * (scale[n] * s_x)  (a multiply, then an add).
 *   The integer sums are exact, so every path and every batch gives the same bits (plain C;
 *   AVX2 vpmaddwd; AVX-512 VNNI vpdpwssd at the avx512 level where the CPU has it).
 *   q8 panels: for each panel of 16 outputs and each pair of inputs (2k, 2k+1), 32 bytes:
 *   q[n0 + j, 2k], q[n0 + j, 2k + 1] for j = 0..15; K2 = K rounded up to even, zero-padded.
 *   f32.data is unused (NULL) in this form. */
#define GEN_SMALL_ROWS 4
typedef struct {
    rnn_packed f32;        /* rows N, cols K (rows 0: no matrix); float32 panels or NULL (int8) */
    const uint16_t *half;  /* float16 panels, or NULL */
    const int8_t *q8;      /* int8 pair panels, or NULL */
    const float *scale;    /* int8: (panels * RNN_PANEL,) row scales, zero-padded */
} gen_matrix;

/* out (m, N) += in (m, K) @ W.T; rows of in are ld_in apart, rows of out ld_out.
 * xq: (m, K2) int16 scratch and xs: (m,) floats, used by the int8 form. */
void gen_matmul(const gen_matrix *w, const float *in, ptrdiff_t ld_in, float *out, ptrdiff_t ld_out,
                ptrdiff_t m, int16_t *xq, float *xs);

/* the int8 form's X_MAX for K inputs (see gen_matrix) */
int32_t gen_int8_xmax(ptrdiff_t K);

/* One unidirectional recurrent layer, gates in PyTorch order (LSTM i|f|g|o, GRU r|z|n).
 * G = gates, H = hidden size, H_out = proj or H, I = input size. The first layer takes its
 * input part (W_ih x + biases) from the model's table, so its w_a sees only h. */
typedef struct {
    int cell;              /* GEN_RNN | GEN_LSTM | GEN_GRU */
    ptrdiff_t input_size;  /* I; 0 for the first layer (table) */
    ptrdiff_t hidden_size; /* H */
    ptrdiff_t output_size; /* H_out */
    ptrdiff_t h_offset;    /* where h (H_out) sits in a row's state */
    ptrdiff_t c_offset;    /* where c (H) sits (LSTM), else -1 */
    gen_matrix w_a;        /* rnn/lstm: (G*H <- I + H_out) [W_ih | W_hh]; gru: (2H <- I + H) rows r|z;
                              first layer: the W_hh part only */
    const float *b_a;      /* (rows of w_a,) b_ih + b_hh (gru: r|z rows); NULL = zero (first layer) */
    gen_matrix w_xn;       /* gru, not first: (H <- I) rows n of W_ih */
    const float *b_xn;     /* gru, not first: (H,) b_in */
    gen_matrix w_hn;       /* gru: (H <- H) rows n of W_hh */
    const float *b_hn;     /* gru: (H,) */
    gen_matrix w_hr;       /* lstm projection (H_out <- H); f32.rows 0 when none */
    const float *peephole; /* lstm (3, H) rows i|f|o, or NULL */
    rnn_cell opts;         /* activations, clip, input_forget, linear_before_reset */
} gen_layer;

typedef struct {
    ptrdiff_t n_layers;
    const gen_layer *layers;
    const float *table;      /* (table_rows, G0*H0): first layer's W_ih x + bias for every input token */
    ptrdiff_t table_rows;
    gen_matrix dense;        /* (V <- H_out of the last layer) */
    const float *dense_bias; /* (V,) or NULL */
    ptrdiff_t vocab_size;    /* V */
    ptrdiff_t state_size;    /* S: floats of one row's state (every layer's h, then c for LSTM) */
} gen_model;

/* ---- logit processing and sampling -------------------------------------------------------- */
typedef struct {
    double temperature;        /* 0 = greedy */
    ptrdiff_t top_k;           /* 0 = off */
    double top_p;              /* 1 = off; in (0, 1] */
    double repetition_penalty; /* 1 = off; > 0 */
} gen_sampling;

/* Scratch of the sampler: 3 (V,) doubles and (V,) indices. */
typedef struct {
    double *y;       /* (V,) processed logits, -inf where masked */
    double *e;       /* (V,) exp(y), 0 where masked */
    double *tmp;     /* (V,) quickselect copy */
    ptrdiff_t *heap; /* (V,) top-p max-heap of indices */
} gen_sample_scratch;

/* SplitMix64: state += golden gamma; mix; u = top 53 bits * 2^-53 in [0, 1). */
double gen_uniform(uint64_t *state);

/* logits (V,) f32 -> y (V,) f64 (in scratch->y): repetition penalty on seen tokens (seen may be
 * NULL), then (unless greedy) y = (x - max x) / T, top-k (ties kept), top-p (the token crossing
 * p kept, ties kept), -inf where masked; scratch->e = exp(y). */
void gen_process_logits(const float *logits, const uint8_t *seen, ptrdiff_t V, const gen_sampling *s,
                        gen_sample_scratch *scratch);

/* process, then greedy argmax (T = 0) or inverse-CDF sampling with one uniform from *rng */
int32_t gen_sample_token(const float *logits, const uint8_t *seen, ptrdiff_t V, const gen_sampling *s,
                         uint64_t *rng, gen_sample_scratch *scratch);

/* ---- the rows (caller-owned, kept between calls) ------------------------------------------ */
/* columns of the status array (B, GEN_STATUS_COLS) int64 */
enum {
    GEN_POS = 0,        /* prompt tokens fed so far */
    GEN_LEN = 1,        /* prompt tokens of the row */
    GEN_NOUT = 2,       /* tokens generated so far (written to out) */
    GEN_HAS_LOGITS = 3, /* 1: logits[b] holds the next-token logits */
    GEN_FINISHED = 4,   /* 1: the row is done */
    GEN_STOP_LEN = 5,   /* length of the stop sequence that ended the row, else 0 */
    GEN_BAD_LOGITS = 6, /* 1: the row ended because its logits held a NaN or an infinity */
    GEN_LIMIT = 7,      /* the row ends when it has min(this, max_new) tokens in out */
    GEN_STATUS_COLS = 8
};

typedef struct {
    ptrdiff_t batch;       /* B */
    float *state;          /* INOUT (B, S) */
    float *logits;         /* INOUT (B, V) */
    uint8_t *seen;         /* INOUT (B, V) tokens fed or sampled (repetition penalty) */
    uint64_t *rng;         /* INOUT (B,) */
    int64_t *status;       /* INOUT (B, GEN_STATUS_COLS) */
    const int32_t *prompt; /* IN    (B, prompt_cols) */
    ptrdiff_t prompt_cols;
    int32_t *out;          /* INOUT (B, max_new) */
    ptrdiff_t max_new;
    int64_t *stop_state;   /* INOUT (B, stops->count): per row and stop, the length of the longest
                              prefix of the stop that out ends with (KMP), or NULL (then every step
                              compares each stop with the end of out) */
} gen_rows;

/* stop sequences: stop j is tokens[offsets[j] .. offsets[j+1]) */
typedef struct {
    ptrdiff_t count;
    const int32_t *tokens;
    const int64_t *offsets; /* (count + 1,) */
    const int32_t *fail;    /* KMP failure function of each stop at the same offsets (fail[i]: the longest
                               proper prefix of stop[0..i] that is also its suffix), or NULL */
} gen_stops;

/* bytes of workspace gen_run needs for a batch of B rows (64-byte aligned sub-buffers) */
size_t gen_workspace_bytes(const gen_model *m, ptrdiff_t batch);

/* Run at most max_steps lockstep steps. workspace: gen_workspace_bytes(m, rows->batch) bytes,
 * 64-byte aligned. Returns the number of rows not finished. */
ptrdiff_t gen_run(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *rows,
                  void *workspace, ptrdiff_t max_steps);

/* ---- the same loop with the hidden units split across threads -------------------------------
 * For small batches (one row), where a step is bound by streaming the weights: P calls of
 * gen_run_split (part = 0..P-1) run at the same time on P threads, sharing one gen_split_shared
 * (zeroed, bar.parts = P, rh: (batch, max H) floats) and the rows; each has its own workspace. Part p
 * computes the units of whole panels [p/P, (p+1)/P) of every layer (and of the Dense's outputs);
 * part 0 alone samples and keeps the rows' bookkeeping. The parts meet at a barrier (spin with
 * pause, then block) after reading each layer's input, after writing its output (and before
 * W_hn (r * h) of a GRU with linear_before_reset = 0), and around the Dense. Conditions (checked
 * by fastrnn/generate.py): every layer's H a multiple of RNN_PANEL, no LSTM projection. The
 * results are bitwise those of gen_run. Returns gen_run's value in part 0, 0 in the others, -1
 * in every part when the barrier was aborted before the first step. The parts return early, all
 * after the same whole step, when waiting dominated (bar.stop, see spin_barrier.h): the rows are
 * then left exactly as gen_run leaves them after that many steps, so gen_run can go on. */
typedef struct {
    spin_barrier bar;          /* bar.parts = P (spin_barrier.h) */
    ptrdiff_t n_feed, n_logits; /* published by part 0 */
    ptrdiff_t *rows, *lrows;   /* part 0's workspace lists, read by all */
    int32_t *inputs;
    float *rh;                 /* (batch, max H) GRU r * h, shared */
} gen_split_shared;

ptrdiff_t gen_run_split(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *rows,
                        void *workspace, ptrdiff_t max_steps, gen_split_shared *shared, int part);

#ifdef __cplusplus
}
#endif
#endif /* FASTRNN_GENERATE_CORE_H */
