/* int8_core.h — int8 compute for predict and classify: weights stored as int8 with one float
 * scale per output row, activations quantized on the fly per row, integer dot products.
 * The spec (NumPy) is fastrnn/quantize.py; the cell math is rnn_core's (rnn_core.h).
 *
 * The arithmetic, for a matrix W (N, K) ~ scale[n] * q[n, k], q in [-127, 127]:
 *   each input row x (K,) is quantized:  top = max_k |x[k]|,  s_x = top / 127 (1 if top == 0),
 *                                          inv = 1 / s_x  (float32 division, once per row),
 *                                          xq[k] = clamp(rint(x[k] * inv), -127, 127)   (int8)
 *   acc[n] = sum_k q[n, k] * xq[k]       exact in int32 (|acc| <= K * 127^2)
 *   out[n] = out[n] + (float)acc[n] * (s_x * scale[n])   (one multiply for the scale, one
 *                                                          multiply, one add: no fused ops)
 * Every instruction set computes the same integers and the same three float operations, so all
 * levels give the same bits (tests/test_int8.py), and a row's result never depends on the batch.
 *
 * Instruction sets, chosen at run time (i8_select_simd caps it, like rnn_select_simd):
 *   I8_SIMD_AMX:        AMX tiles (tdpbssd, s8 x s8 -> s32) for products of at least 16 rows with
 *       K4 a multiple of 64 (the input projections, batches of 16+); others as AVX-512 VNNI.
 *       Linux must grant the tile state (arch_prctl ARCH_REQ_XCOMP_PERM), asked once.
 *   I8_SIMD_AVX512VNNI: vpdpbusd on zmm (u8 x s8 -> s32). The activations enter as unsigned
 *       bytes xq + 128; the offset is taken back out with the row sums of q: 128 * sum_k q[n, k].
 *   I8_SIMD_AVXVNNI:    the same on ymm (AVX-VNNI, VEX encoded).
 *   I8_SIMD_AVX2:       vpmaddubsw + vpmaddwd. The pair sums of vpmaddubsw saturate at int16;
 *       with |xq| <= 127 as unsigned (vpabsb) and the sign moved onto q (vpsignb) each pair sum
 *       is at most 2 * 127 * 127 = 32258 < 32767, so nothing saturates.
 *   I8_SIMD_PLAIN:      C loops over the same packed layout.
 *
 * Packed layout (i8_pack): panels of I8_PANEL = 16 output rows; inside a panel, for each group of
 * 4 inputs k = 4g..4g+3, 64 bytes: q[n0 + j, 4g + 0..3] for j = 0..15 (one zmm: the operand of
 * vpdpbusd for 16 outputs). K is zero-padded to K4 = a multiple of 4, N to whole panels.
 * Quantized activation rows are K4 bytes long (zero-padded).
 *
 * Nothing here validates user input, allocates per step, or exits; the sequence functions
 * return 0, or -1 when malloc fails.
 */
#ifndef FASTRNN_INT8_CORE_H
#define FASTRNN_INT8_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "rnn_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define I8_PANEL 16

typedef struct {
    const int8_t *data;     /* (panels, K4 / 4, 16, 4), see above; bfloat16: see below */
    const int32_t *row_sum; /* (panels * 16,) sum_k q[n, k] (0 in padding rows); bf16: NULL */
    const float *scale;     /* (panels * 16,) row scales (0 in padding rows); bf16: NULL */
    ptrdiff_t rows;         /* N */
    ptrdiff_t cols;         /* K */
    int bf16;               /* 0: int8 as above; 1: bfloat16 (below) */
} i8_packed;

/* The bfloat16 form (bf16 = 1) of the same functions: W (N, K) rounded to bfloat16; data holds,
 * per panel of 16 rows and per pair of inputs (2k, 2k+1), 64 bytes: the bf16 pairs
 * (W[n0 + j, 2k], W[n0 + j, 2k + 1]) for j = 0..15 (vdpbf16ps's operand), K2 = K rounded up to
 * even. An input row x is rounded to bfloat16 (to nearest even; the "quantized" row is K2
 * uint16, xs unused), and
 *   acc = 0;  for k2 = 0..K2/2-1: acc = acc + x[2k2+1] W[n, 2k2+1];  acc = acc + x[2k2] W[n, 2k2]
 *   out[n] = out[n] + acc
 * every product exact in float32, every add rounded to nearest (vdpbf16ps's order; with
 * AVX512_BF16, else the same adds as FMAs of the exact products: the same bits). */
size_t bf16_packed_size(ptrdiff_t rows, ptrdiff_t cols); /* uint16 values */
void bf16_pack(const float *w, ptrdiff_t rows, ptrdiff_t cols, uint16_t *packed);
/* the activation form of rows for w's kind: int8 (xq (m, K4), xs) or bfloat16 (xq as (m, K2) uint16) */
void i8_prepare_rows(const i8_packed *w, const float *in, ptrdiff_t ld_in, ptrdiff_t m, ptrdiff_t K,
                     int8_t *xq, float *xs);
/* 1: use vdpbf16ps where the CPU has it (default), 0: the FMA form (tests); returns the setting */
int bf16_native(int use);

/* K rounded up to a multiple of 4 */
ptrdiff_t i8_cols_padded(ptrdiff_t cols);
/* bytes of the packed form of a (rows, cols) matrix */
size_t i8_packed_size(ptrdiff_t rows, ptrdiff_t cols);

/* q (rows, cols) int8 row-major -> packed (i8_packed_size bytes), row_sum (panels * 16,) */
void i8_pack(const int8_t *q, ptrdiff_t rows, ptrdiff_t cols, int8_t *packed, int32_t *row_sum);

/* xq (m, K4) int8, xs (m,) <- the quantization of in (m, K) (rows ld_in floats apart) */
void i8_quantize_rows(const float *in, ptrdiff_t ld_in, ptrdiff_t m, ptrdiff_t K, int8_t *xq, float *xs);

/* out (m, N) = src + the int8 product of xq (m, K4) with W (see above); rows of out ld_out apart.
 * src: (m,) row pointers, row r's addend at src[r][0..N) (a bias, or the step's xproj row; out is
 * then only written), or NULL: the addend is out itself (out +=). The same bits either way. */
void i8_matmul(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m, const float *const *src,
               float *out, ptrdiff_t ld_out);

/* Weights of one direction. LSTM: w_hh (4H <- H_out) gates i|f|g|o, w_hr (H_out <- H) or
 * rows == 0, peephole (3, H) or NULL. GRU: w_hh (3H <- H) gates r|z|n (rows r|z and n are
 * multiplied separately), b_hn (H,). RNN: w_hh (H <- H). */
typedef struct {
    i8_packed w_hh_rz;     /* GRU: rows r|z of W_hh; LSTM/RNN: all of W_hh */
    i8_packed w_hh_n;      /* GRU: rows n of W_hh; else rows 0 */
    i8_packed w_hr;        /* LSTM projection, rows 0 when none */
    const float *peephole; /* LSTM (3, H) rows i|f|o, or NULL */
    const float *b_hn;     /* GRU (H,) */
} i8_weights;

enum { I8_RNN = 0, I8_LSTM = 1, I8_GRU = 2 };

/* One direction over the whole sequence, the cell math of kernels/README.md with every matrix
 * product in int8. xproj: (B, T, G*H) or a folded table (io->tokens), as in rnn_core.h.
 * h (B, H_out) and c (B, H, LSTM only) INOUT. Returns 0, -1 if out of memory. */
int i8_sequence(int cell_kind, const rnn_sequence_io *io, const float *xproj, const i8_weights *w,
                float *h, float *c, const rnn_cell *cell);

/* Peak probes for bench/floors.py: run `iters` iterations of independent chains of kind 0:
 * float32 FMA (AVX-512, else AVX2), 1: vpdpbusd (zmm), 2: AMX tdpbssd; returns the operations
 * done (FLOP, or int8 OP = 2 per multiply-add), 0 when the CPU (or the cap) lacks the kind. */
double i8_peak_probe(int kind, int64_t iters);

enum { I8_SIMD_PLAIN = 0, I8_SIMD_AVX2 = 1, I8_SIMD_AVXVNNI = 2, I8_SIMD_AVX512VNNI = 3, I8_SIMD_AMX = 4 };
int i8_simd_enabled(void);
/* cap the level (-1: the best available); returns the level now in use */
int i8_select_simd(int level);

#ifdef __cplusplus
}
#endif
#endif /* FASTRNN_INT8_CORE_H */
