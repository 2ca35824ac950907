/* int8_core.c — int8 matrix products and the int8 sequence loops (declarations and the
 * arithmetic: int8_core.h; the NumPy spec: fastrnn/quantize.py).
 *
 * Sections, in order:
 *   1. instruction set (AVX-512 VNNI, AVX-VNNI, AVX2, plain C), chosen at run time
 *   2. packing and activation quantization
 *   3. the matrix product, one micro-kernel per instruction set over the same packed layout
 *   4. the sequence loop of the three cells (rnn_core's element-wise steps, int8 products)
 */
#include "int8_core.h"
#include "cpu_features.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * 1. instruction set (the detection itself: cpu_features.h)
 * ========================================================================================== */

static int i8_state = -1;

static int i8_cpu_level(void)
{
    if (!fr_cpu_has(FR_HAS_AVX2_FMA))
        return I8_SIMD_PLAIN;
    if (fr_cpu_has(FR_HAS_AVX512_VNNI))
        return fr_cpu_has(FR_HAS_AMX_INT8) ? I8_SIMD_AMX : I8_SIMD_AVX512VNNI;
    return fr_cpu_has(FR_HAS_AVX_VNNI) ? I8_SIMD_AVXVNNI : I8_SIMD_AVX2;
}

int i8_simd_enabled(void) { return fr_level(&i8_state, i8_cpu_level); }

int i8_select_simd(int level)
{
    /* AVX-VNNI is not implied by AVX-512 VNNI: a cap at AVX-VNNI on a CPU without it is AVX2 */
    if (level == I8_SIMD_AVXVNNI && !fr_cpu_has(FR_HAS_AVX_VNNI))
        level = I8_SIMD_AVX2;
    return i8_state = fr_cap_level(level, i8_cpu_level());
}

/* ============================================================================================
 * 2. packing and activation quantization
 * ========================================================================================== */

ptrdiff_t i8_cols_padded(ptrdiff_t cols) { return (cols + 3) / 4 * 4; }

size_t i8_packed_size(ptrdiff_t rows, ptrdiff_t cols)
{
    const ptrdiff_t panels = (rows + I8_PANEL - 1) / I8_PANEL;
    return (size_t)(panels * I8_PANEL * i8_cols_padded(cols));
}

void i8_pack(const int8_t *q, ptrdiff_t rows, ptrdiff_t cols, int8_t *packed, int32_t *row_sum)
{
    const ptrdiff_t K4 = i8_cols_padded(cols), panels = (rows + I8_PANEL - 1) / I8_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++)
        for (ptrdiff_t j = 0; j < I8_PANEL; j++) {
            const ptrdiff_t n = p * I8_PANEL + j;
            int32_t sum = 0;
            for (ptrdiff_t k = 0; k < K4; k++) {
                const int8_t v = n < rows && k < cols ? q[n * cols + k] : 0;
                packed[p * K4 * I8_PANEL + (k / 4) * 4 * I8_PANEL + j * 4 + k % 4] = v;
                sum += v;
            }
            row_sum[n] = sum;
        }
}

/* one row: xq (K4,) <- clamp(rint(x * (1 / s))), returns s = max|x| / 127 (1 when x is all zero) */
static float quantize_row_plain(const float *x, ptrdiff_t K, ptrdiff_t K4, int8_t *xq)
{
    float top = 0.0f;
    for (ptrdiff_t k = 0; k < K; k++)
        top = fabsf(x[k]) > top ? fabsf(x[k]) : top;
    const float s = top > 0.0f ? top / 127.0f : 1.0f, inv = 1.0f / s;
    for (ptrdiff_t k = 0; k < K; k++) {
        float v = nearbyintf(x[k] * inv);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        xq[k] = (int8_t)v;
    }
    for (ptrdiff_t k = K; k < K4; k++)
        xq[k] = 0;
    return s;
}

#if FR_X86_SIMD
static FR_AVX512VNNI float quantize_row_avx512(const float *x, ptrdiff_t K, ptrdiff_t K4, int8_t *xq)
{
    __m512 vmax = _mm512_setzero_ps();
    ptrdiff_t k = 0;
    for (; k < K; k += 16) {
        const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + k)));
    }
    const float top = _mm512_reduce_max_ps(vmax);
    const float s = top > 0.0f ? top / 127.0f : 1.0f, inv = 1.0f / s;
    const __m512 vs = _mm512_set1_ps(inv), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    for (k = 0; k < K; k += 16) {
        const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), vs);
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_mask_storeu_epi8(xq + k, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    for (k = K; k < K4; k++)
        xq[k] = 0;
    return s;
}

static FR_AVX2 float quantize_row_avx2(const float *x, ptrdiff_t K, ptrdiff_t K4, int8_t *xq)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    ptrdiff_t k = 0;
    for (; k + 8 <= K; k += 8)
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float top = 0.0f;
    for (int j = 0; j < 8; j++)
        top = lanes[j] > top ? lanes[j] : top;
    for (ptrdiff_t t = k; t < K; t++)
        top = fabsf(x[t]) > top ? fabsf(x[t]) : top;
    const float s = top > 0.0f ? top / 127.0f : 1.0f, inv = 1.0f / s;
    const __m256 vs = _mm256_set1_ps(inv), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    for (k = 0; k + 8 <= K; k += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), vs);
        v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
        int32_t iv[8];
        _mm256_storeu_si256((__m256i *)iv, _mm256_cvtps_epi32(v));
        for (int j = 0; j < 8; j++)
            xq[k + j] = (int8_t)iv[j];
    }
    for (; k < K; k++) {
        float v = nearbyintf(x[k] * inv);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        xq[k] = (int8_t)v;
    }
    for (k = K; k < K4; k++)
        xq[k] = 0;
    return s;
}
#endif

void i8_quantize_rows(const float *in, ptrdiff_t ld_in, ptrdiff_t m, ptrdiff_t K, int8_t *xq, float *xs)
{
    const ptrdiff_t K4 = i8_cols_padded(K);
#if FR_X86_SIMD
    const int level = i8_simd_enabled();
    if (level >= I8_SIMD_AVX512VNNI) {
        for (ptrdiff_t r = 0; r < m; r++)
            xs[r] = quantize_row_avx512(in + r * ld_in, K, K4, xq + r * K4);
        return;
    }
    if (level != I8_SIMD_PLAIN) {
        for (ptrdiff_t r = 0; r < m; r++)
            xs[r] = quantize_row_avx2(in + r * ld_in, K, K4, xq + r * K4);
        return;
    }
#endif
    for (ptrdiff_t r = 0; r < m; r++)
        xs[r] = quantize_row_plain(in + r * ld_in, K, K4, xq + r * K4);
}

/* ============================================================================================
 * 3. the matrix product
 * ========================================================================================== */

/* four activation bytes as one int32 (the broadcast operand) */
static inline int32_t load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* plain C: the same integers, the same three float operations per output */
static void matmul_plain(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m,
                         const float *const *src, float *out, ptrdiff_t ld_out)
{
    const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols);
    for (ptrdiff_t r = 0; r < m; r++) {
        const int8_t *x = xq + r * K4;
        for (ptrdiff_t n = 0; n < N; n++) {
            const int8_t *panel = w->data + (n / I8_PANEL) * K4 * I8_PANEL + (n % I8_PANEL) * 4;
            int32_t acc = 0;
            for (ptrdiff_t g = 0; g < K4 / 4; g++)
                for (int j = 0; j < 4; j++)
                    acc += (int32_t)panel[g * 4 * I8_PANEL + j] * (int32_t)x[4 * g + j];
            const float t = xs[r] * w->scale[n];
            const float base = src ? src[r][n] : out[r * ld_out + n];
            out[r * ld_out + n] = base + (float)acc * t;
        }
    }
}

#if FR_X86_SIMD
/* AVX-512 VNNI, two rows or more (compute bound). vpdpbusd multiplies unsigned bytes by signed
 * ones: the activations enter as xu = xq + 128 (xq ^ 0x80), flipped once per block of rows into
 * a buffer on the stack (I8_XU_BYTES), and 128 * row_sum[n] is taken back out at the end.
 *
 * The tile: MR (<= 6) rows times NPG (<= 4) panels of 16 outputs, the whole of K, in 24 zmm
 * accumulators named c<row><panel> (named, not an array: gcc kept an array's elements in memory
 * beside their registers, two moves and a store per vpdpbusd, 41% of the vpdpbusd peak). For
 * each group of 4 inputs: NPG weight vectors are loaded once and serve MR rows, each row's 4
 * bytes are broadcast once (a load-port broadcast, no ALU op) and serve NPG panels: MR * NPG
 * vpdpbusd for NPG + MR loads. `flip`: 1 when xq is still signed (the rows did not fit the
 * buffer: an xor per broadcast instead). `left`: outputs from this tile's first column on. */
#define I8_XU_BYTES 32768
/* acc += the dot products of 4 unsigned bytes of a with 4 signed bytes of b, per int32 lane
 * (vpdpbusd). In asm because gcc 12 ties the accumulator of _mm512_dpbusd_epi32 to zmm0-15 (the
 * AVX-VNNI alternative of its pattern): with 24 accumulators that meant a copy in, a copy out
 * and a store per instruction. */
static FR_AVX512VNNI_INLINE __m512i dpbusd512(__m512i acc, __m512i a, __m512i b)
{
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
#else
    return _mm512_dpbusd_epi32(acc, a, b);
#endif
}
#define VNNI_W(g) (NPG > g ? _mm512_loadu_si512((const void *)(bk + g * stride)) : zero)
#define VNNI_ROW(r)                                                                                   \
    if (MR > r) {                                                                                     \
        __m512i x = _mm512_set1_epi32(load4((const int8_t *)xu + r * K4 + k));                        \
        if (flip)                                                                                     \
            x = _mm512_xor_si512(x, flip_bits);                                                       \
        c##r##0 = dpbusd512(c##r##0, x, w0);                                                \
        if (NPG > 1) c##r##1 = dpbusd512(c##r##1, x, w1);                                   \
        if (NPG > 2) c##r##2 = dpbusd512(c##r##2, x, w2);                                   \
        if (NPG > 3) c##r##3 = dpbusd512(c##r##3, x, w3);                                   \
    }
#define VNNI_OUT(r, g)                                                                                \
    if (MR > r && NPG > g)                                                                            \
        vnni512_store(c##r##g, w, p0 + g, left - g * I8_PANEL, xs[r], src ? src[r] : NULL,           \
                      out + r * ld_out + g * I8_PANEL);

/* Ask for the lines the epilogue of a tile of `rows` rows x `cols` outputs will read and write
 * (out, and the addend rows src[r] + n0), before the tile's products run: rows of a large output
 * (an input projection of every step: 26 MB for LSTM(512) B64 T50) or of the step's xproj rows
 * are far apart and come from memory, which the prefetcher does not foresee (measured: the
 * AVX-512 VNNI product at M = 3200 ran at 454 GOP/s against 700 at M = 64). */
static inline void prefetch_outputs(int rows, ptrdiff_t cols, const float *const *src, ptrdiff_t n0, float *out,
                                    ptrdiff_t ld_out)
{
#if defined(__GNUC__) || defined(__clang__)
    for (int r = 0; r < rows; r++)
        for (ptrdiff_t j = 0; j < cols; j += 16) {
            __builtin_prefetch(out + r * ld_out + j, 1, 3);
            if (src)
                __builtin_prefetch(src[r] + n0 + j, 0, 3);
        }
#else
    (void)rows, (void)cols, (void)src, (void)n0, (void)out, (void)ld_out;
#endif
}

/* o[0..valid) = in + float(acc - 128 row_sum) * (xs_r * scale): in = src_r + n0, or o itself */
static FR_AVX512VNNI_INLINE void vnni512_store(__m512i acc, const i8_packed *w, ptrdiff_t panel, ptrdiff_t valid,
                                               float xs_r, const float *src_r, float *o)
{
    const __mmask16 mask = valid >= I8_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1u);
    const ptrdiff_t n0 = panel * I8_PANEL;
    const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(w->row_sum + n0)), 7);
    const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, off));
    const __m512 t = _mm512_mul_ps(_mm512_set1_ps(xs_r), _mm512_loadu_ps(w->scale + n0));
    const float *in = src_r ? src_r + n0 : o;
    _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, in), _mm512_mul_ps(f, t)));
}

static FR_AVX512VNNI_INLINE void tile_vnni512(const int MR, const int NPG, const int flip, const i8_packed *w,
                                              ptrdiff_t p0, const uint8_t *xu, ptrdiff_t K4, const float *xs,
                                              const float *const *src, float *out, ptrdiff_t ld_out, ptrdiff_t left)
{
    const ptrdiff_t stride = K4 * I8_PANEL;
    const int8_t *panel = w->data + p0 * stride;
    const __m512i zero = _mm512_setzero_si512(), flip_bits = _mm512_set1_epi32((int32_t)0x80808080u);
    __m512i c00 = zero, c01 = zero, c02 = zero, c03 = zero, c10 = zero, c11 = zero, c12 = zero, c13 = zero;
    __m512i c20 = zero, c21 = zero, c22 = zero, c23 = zero, c30 = zero, c31 = zero, c32 = zero, c33 = zero;
    __m512i c40 = zero, c41 = zero, c42 = zero, c43 = zero, c50 = zero, c51 = zero, c52 = zero, c53 = zero;
    prefetch_outputs(MR, NPG * I8_PANEL, src, p0 * I8_PANEL, out, ld_out);
    for (ptrdiff_t k = 0; k < K4; k += 4) {
        const int8_t *bk = panel + k * I8_PANEL;
        const __m512i w0 = VNNI_W(0), w1 = VNNI_W(1), w2 = VNNI_W(2), w3 = VNNI_W(3);
        VNNI_ROW(0) VNNI_ROW(1) VNNI_ROW(2) VNNI_ROW(3) VNNI_ROW(4) VNNI_ROW(5)
    }
    VNNI_OUT(0, 0) VNNI_OUT(0, 1) VNNI_OUT(0, 2) VNNI_OUT(0, 3)
    VNNI_OUT(1, 0) VNNI_OUT(1, 1) VNNI_OUT(1, 2) VNNI_OUT(1, 3)
    VNNI_OUT(2, 0) VNNI_OUT(2, 1) VNNI_OUT(2, 2) VNNI_OUT(2, 3)
    VNNI_OUT(3, 0) VNNI_OUT(3, 1) VNNI_OUT(3, 2) VNNI_OUT(3, 3)
    VNNI_OUT(4, 0) VNNI_OUT(4, 1) VNNI_OUT(4, 2) VNNI_OUT(4, 3)
    VNNI_OUT(5, 0) VNNI_OUT(5, 1) VNNI_OUT(5, 2) VNNI_OUT(5, 3)
}

/* xu (n,) <- xq ^ 0x80 (xq + 128 as unsigned bytes); n a multiple of 4 */
static FR_AVX512VNNI void flip_bytes512(const int8_t *xq, ptrdiff_t n, uint8_t *xu)
{
    const __m512i bits = _mm512_set1_epi32((int32_t)0x80808080u);
    ptrdiff_t i = 0;
    for (; i + 64 <= n; i += 64)
        _mm512_storeu_si512((void *)(xu + i), _mm512_xor_si512(_mm512_loadu_si512((const void *)(xq + i)), bits));
    if (i < n) {
        const __mmask64 m = ((__mmask64)1 << (n - i)) - 1;
        _mm512_mask_storeu_epi8(xu + i, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, xq + i), bits));
    }
}

/* the tile for the literal (mr, npg) of a runtime one (mr 1..6, npg 1..4) */
#define VNNI_CASE(MR, NPG, FLIP) \
    case (MR - 1) * 4 + (NPG - 1): tile_vnni512(MR, NPG, FLIP, w, p, x, K4, s, sr, o, ld_out, left); break;
#define VNNI_CASES_ROW(MR, FLIP) \
    VNNI_CASE(MR, 1, FLIP) VNNI_CASE(MR, 2, FLIP) VNNI_CASE(MR, 3, FLIP) VNNI_CASE(MR, 4, FLIP)
#define VNNI_CASES(FLIP) VNNI_CASES_ROW(1, FLIP) VNNI_CASES_ROW(2, FLIP) VNNI_CASES_ROW(3, FLIP) \
    VNNI_CASES_ROW(4, FLIP) VNNI_CASES_ROW(5, FLIP) VNNI_CASES_ROW(6, FLIP)

/* rows [r0, r1) of xu (flipped, or still signed when flip) over every panel: for each group of
 * 4 panels (K4 x 64 bytes, kept in L1 while the rows pass), every block of 6 rows */
static FR_AVX512VNNI void vnni512_rows(const i8_packed *w, const uint8_t *xu, ptrdiff_t rows, int flip,
                                       const float *xs, const float *const *src, float *out, ptrdiff_t ld_out)
{
    const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols), panels = (N + I8_PANEL - 1) / I8_PANEL;
    for (ptrdiff_t p = 0; p < panels; p += 4) {
        const ptrdiff_t npg = panels - p < 4 ? panels - p : 4, left = N - p * I8_PANEL;
        for (ptrdiff_t r = 0; r < rows; r += 6) {
            const ptrdiff_t mr = rows - r < 6 ? rows - r : 6;
            const uint8_t *x = xu + r * K4;
            const float *s = xs + r;
            const float *const *sr = src ? src + r : NULL;
            float *o = out + r * ld_out + p * I8_PANEL;
            if (flip) {
                switch ((mr - 1) * 4 + (npg - 1)) { VNNI_CASES(1) }
            } else {
                switch ((mr - 1) * 4 + (npg - 1)) { VNNI_CASES(0) }
            }
        }
    }
}

/* out (m, N) = src + W xq (see i8_matmul), m >= 2: blocks of rows flipped into the stack buffer */
static FR_AVX512VNNI void matmul_vnni512(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m,
                                         const float *const *src, float *out, ptrdiff_t ld_out)
{
    const ptrdiff_t K4 = i8_cols_padded(w->cols);
    const ptrdiff_t block = K4 > 0 ? I8_XU_BYTES / K4 / 6 * 6 : 6;
    if (block < 6) { /* rows too long for the buffer: flip at each broadcast */
        vnni512_rows(w, (const uint8_t *)xq, m, 1, xs, src, out, ld_out);
        return;
    }
    uint8_t xu[I8_XU_BYTES] __attribute__((aligned(64)));
    for (ptrdiff_t r0 = 0; r0 < m; r0 += block) {
        const ptrdiff_t rows = m - r0 < block ? m - r0 : block;
        flip_bytes512(xq + r0 * K4, rows * K4, xu);
        vnni512_rows(w, xu, rows, 0, xs + r0, src ? src + r0 : NULL, out + r0 * ld_out, ld_out);
    }
}

/* One row (a batch-1 step, bandwidth bound): 4 panels at a time with two accumulators each
 * (even and odd groups of 4 inputs), so 8 vpdpbusd chains are in flight. Integer sums are
 * exact, so splitting them changes no bit. */
static FR_AVX512VNNI void gemv_vnni512(const i8_packed *w, const int8_t *xq, const float *xs,
                                   const float *const *src, float *out)
{
    const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols), stride = K4 * I8_PANEL;
    const ptrdiff_t panels = (N + I8_PANEL - 1) / I8_PANEL, groups = K4 / 4;
    const __m512i flip = _mm512_set1_epi32((int32_t)0x80808080u);
    const __m512 vxs = _mm512_set1_ps(xs[0]);
    for (ptrdiff_t p = 0; p < panels; p += 4) {
        const int np = panels - p < 4 ? (int)(panels - p) : 4;
        const int8_t *panel = w->data + p * stride;
        __m512i acc0[4], acc1[4];
        for (int g = 0; g < 4; g++)
            acc0[g] = acc1[g] = _mm512_setzero_si512();
        ptrdiff_t k = 0;
        if (np == 4) {
            for (; k + 1 < groups; k += 2) {
                const __m512i a0 = _mm512_xor_si512(_mm512_set1_epi32(load4(xq + 4 * k)), flip);
                const __m512i a1 = _mm512_xor_si512(_mm512_set1_epi32(load4(xq + 4 * k + 4)), flip);
                FR_UNROLL for (int g = 0; g < 4; g++) {
                    const int8_t *b = panel + g * stride + k * 64;
                    acc0[g] = _mm512_dpbusd_epi32(acc0[g], a0, _mm512_loadu_si512((const void *)b));
                    acc1[g] = _mm512_dpbusd_epi32(acc1[g], a1, _mm512_loadu_si512((const void *)(b + 64)));
                }
            }
        }
        for (; k < groups; k++) {
            const __m512i a0 = _mm512_xor_si512(_mm512_set1_epi32(load4(xq + 4 * k)), flip);
            for (int g = 0; g < np; g++)
                acc0[g] = _mm512_dpbusd_epi32(acc0[g], a0,
                                              _mm512_loadu_si512((const void *)(panel + g * stride + k * 64)));
        }
        for (int g = 0; g < np; g++) {
            const ptrdiff_t n0 = (p + g) * I8_PANEL, valid = N - n0;
            const __mmask16 mask = valid >= I8_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1u);
            const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(w->row_sum + n0)), 7);
            const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(acc0[g], acc1[g]), off));
            const __m512 t = _mm512_mul_ps(vxs, _mm512_loadu_ps(w->scale + n0));
            const float *in = src ? src[0] + n0 : out + n0;
            _mm512_mask_storeu_ps(out + n0, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, in), _mm512_mul_ps(f, t)));
        }
    }
}

/* AVX-VNNI (ymm) and AVX2: a panel is two ymm halves of 8 outputs. */
static FR_AVX2_INLINE void store8_avx2(float *o, const float *in, ptrdiff_t valid, __m256 v)
{
    if (valid >= 8) {
        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(in), v));
    } else if (valid > 0) {
        float lanes[8];
        _mm256_storeu_ps(lanes, v);
        for (ptrdiff_t j = 0; j < valid; j++)
            o[j] = in[j] + lanes[j];
    }
}

/* one AVX-VNNI tile: MR (<= 2) rows times NPG (<= 2) panels, each panel two ymm of 8 outputs */
#define TILE_YMM_BODY(DOT, OFFSET)                                                                    \
    __m256i acc[2][4];                                                                                \
    const ptrdiff_t stride = K4 * I8_PANEL;                                                           \
    const int8_t *panel = w->data + p0 * stride;                                                      \
    FR_UNROLL for (int r = 0; r < MR; r++)                                                            \
        FR_UNROLL for (int g = 0; g < 2 * NPG; g++)                                                   \
            acc[r][g] = _mm256_setzero_si256();                                                       \
    for (ptrdiff_t k = 0; k < K4; k += 4) {                                                           \
        __m256i wv[4];                                                                                \
        FR_UNROLL for (int g = 0; g < 2 * NPG; g++)                                                   \
            wv[g] = _mm256_loadu_si256((const __m256i *)(panel + (g / 2) * stride + k * I8_PANEL + (g % 2) * 32)); \
        FR_UNROLL for (int r = 0; r < MR; r++) {                                                      \
            const __m256i a = _mm256_set1_epi32(load4(xq + r * K4 + k));                              \
            FR_UNROLL for (int g = 0; g < 2 * NPG; g++)                                               \
                acc[r][g] = DOT(acc[r][g], a, wv[g]);                                                  \
        }                                                                                             \
    }                                                                                                 \
    FR_UNROLL for (int g = 0; g < 2 * NPG; g++) {                                                     \
        const ptrdiff_t n0 = p0 * I8_PANEL + g * 8;                                                   \
        const __m256i off = OFFSET;                                                                   \
        const __m256 sc = _mm256_loadu_ps(w->scale + n0);                                             \
        FR_UNROLL for (int r = 0; r < MR; r++) {                                                      \
            const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][g], off));                     \
            const __m256 t = _mm256_mul_ps(_mm256_set1_ps(xs[r]), sc);                                \
            float *o = out + r * ld_out + g * 8;                                                      \
            store8_avx2(o, src ? src[r] + n0 : o, left - g * 8, _mm256_mul_ps(f, t));                 \
        }                                                                                             \
    }

static FR_AVXVNNI_INLINE __m256i dot4_avxvnni(__m256i acc, __m256i a, __m256i wv)
{
    return _mm256_dpbusd_avx_epi32(acc, _mm256_xor_si256(a, _mm256_set1_epi32((int32_t)0x80808080u)), wv);
}

static FR_AVXVNNI_INLINE void tile_avxvnni(const int MR, const int NPG, const i8_packed *w, ptrdiff_t p0,
                                           const int8_t *xq, ptrdiff_t K4, const float *xs,
                                           const float *const *src, float *out, ptrdiff_t ld_out, ptrdiff_t left)
{
    TILE_YMM_BODY(dot4_avxvnni, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(w->row_sum + n0)), 7))
}

/* The driver: for each group of up to NPG_MAX panels, every block of up to MR_MAX rows. The
 * group's weights (K4 x 16 x NPG bytes) stay in L1 while the rows pass. */
#define I8_DRIVER(NAME, ATTR, TILE, MR_MAX, NPG_MAX)                                                   \
    static ATTR void NAME(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m,         \
                          const float *const *src, float *out, ptrdiff_t ld_out)                      \
    {                                                                                                 \
        const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols);                                    \
        const ptrdiff_t panels = (N + I8_PANEL - 1) / I8_PANEL;                                       \
        for (ptrdiff_t p = 0; p < panels; p += NPG_MAX) {                                             \
            const ptrdiff_t npg = panels - p < NPG_MAX ? panels - p : NPG_MAX;                        \
            const ptrdiff_t left = N - p * I8_PANEL;                                                  \
            for (ptrdiff_t r = 0; r < m; r += MR_MAX) {                                               \
                const ptrdiff_t mr = m - r < MR_MAX ? m - r : MR_MAX;                                 \
                const int8_t *x = xq + r * K4;                                                        \
                float *o = out + r * ld_out + p * I8_PANEL;                                           \
                const float *s = xs + r;                                                              \
                const float *const *sr = src ? src + r : NULL;                                        \
                switch ((mr - 1) * 4 + (npg - 1)) {                                                   \
                I8_CASES_##MR_MAX(TILE)                                                               \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }

#define I8_CASE(TILE, MR, NPG) case (MR - 1) * 4 + (NPG - 1): TILE(MR, NPG, w, p, x, K4, s, sr, o, ld_out, left); break;
#define I8_CASES_ROW2(TILE, MR) I8_CASE(TILE, MR, 1) I8_CASE(TILE, MR, 2)
#define I8_CASES_2(TILE) I8_CASES_ROW2(TILE, 1) I8_CASES_ROW2(TILE, 2)

I8_DRIVER(matmul_avxvnni, FR_AVXVNNI, tile_avxvnni, 2, 2)

/* AVX2 without VNNI, written out so that every accumulator stays in a register (a generic
 * ymm tile like the AVX-VNNI one spilled with gcc): |xq| as unsigned
 * bytes times q with xq's sign (vpsignb), pair sums in int16 (at most 2 * 127^2), vpmaddwd with
 * ones to int32. On a Zen 3 core vpsignb, vpmaddubsw and vpmaddwd issue on different pipes
 * (measured: the three together at about one per cycle), so 32 multiply-adds cost about one
 * cycle; the alternative of int16 weights through vpmaddwd alone is limited by vpmovsxbw (one per
 * cycle) and measured slower.
 *
 * Two rows or more (compute bound): tiles of up to SGN_MR rows times one panel (16 outputs, two
 * ymm of 8 outputs x 4 inputs); the panel's K4 x 16 bytes stay in L1 while the rows pass.
 * One row (a batch-1 step, bound by streaming the weights): two panels at a time, |xq| and its
 * broadcast made once per group of 4 inputs and shared by the two panels. */
#ifndef SGN_MR
#define SGN_MR 6
#endif

static FR_AVX2_INLINE __m256i sgn_dot(__m256i acc, __m256i ua, __m256i a, const int8_t *wp, __m256i ones)
{
    const __m256i wv = _mm256_loadu_si256((const __m256i *)wp);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(wv, a)), ones));
}

static FR_AVX2_INLINE void tile_sgn(const int MR, const int8_t *panel, const int8_t *xq, ptrdiff_t K4,
                                    const float *xs, const float *scale, const float *const *src, ptrdiff_t n0,
                                    float *out, ptrdiff_t ld_out, ptrdiff_t valid)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a0[SGN_MR], a1[SGN_MR];
    FR_UNROLL for (int r = 0; r < MR; r++)
        a0[r] = a1[r] = _mm256_setzero_si256();
    for (ptrdiff_t k = 0; k < K4; k += 4) {
        const int8_t *g = panel + k * I8_PANEL;
        FR_UNROLL for (int r = 0; r < MR; r++) {
            const __m256i a = _mm256_set1_epi32(load4(xq + r * K4 + k)), ua = _mm256_abs_epi8(a);
            a0[r] = sgn_dot(a0[r], ua, a, g, ones);
            a1[r] = sgn_dot(a1[r], ua, a, g + 32, ones);
        }
    }
    const __m256 sc0 = _mm256_loadu_ps(scale), sc1 = _mm256_loadu_ps(scale + 8);
    FR_UNROLL for (int r = 0; r < MR; r++) {
        const __m256 vx = _mm256_set1_ps(xs[r]);
        float *o = out + r * ld_out;
        const float *in = src ? src[r] + n0 : o;
        store8_avx2(o, in, valid, _mm256_mul_ps(_mm256_cvtepi32_ps(a0[r]), _mm256_mul_ps(vx, sc0)));
        store8_avx2(o + 8, in + 8, valid - 8, _mm256_mul_ps(_mm256_cvtepi32_ps(a1[r]), _mm256_mul_ps(vx, sc1)));
    }
}

static FR_AVX2 void matmul_avx2_sgn(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m,
                                    const float *const *src, float *out, ptrdiff_t ld_out)
{
    const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols), stride = K4 * I8_PANEL;
    const ptrdiff_t panels = (N + I8_PANEL - 1) / I8_PANEL;
    /* blocks of rows whose quantized inputs (about 64 KB) stay in L2 while every panel passes */
    ptrdiff_t block = (65536 / (K4 > 0 ? K4 : 1)) / SGN_MR * SGN_MR;
    block = block < SGN_MR ? SGN_MR : block;
    for (ptrdiff_t r0 = 0; r0 < m; r0 += block)
    for (ptrdiff_t p = 0; p < panels; p++) {
        const int8_t *panel = w->data + p * stride;
        const ptrdiff_t n0 = p * I8_PANEL, valid = N - n0, r_end = m - r0 < block ? m : r0 + block;
        for (ptrdiff_t r = r0; r < r_end; r += SGN_MR) {
            const float *const *sr = src ? src + r : NULL;
            float *o = out + r * ld_out + n0;
            const int8_t *x = xq + r * K4;
            switch (r_end - r < SGN_MR ? r_end - r : SGN_MR) {
            case 1: tile_sgn(1, panel, x, K4, xs + r, w->scale + n0, sr, n0, o, ld_out, valid); break;
            case 2: tile_sgn(2, panel, x, K4, xs + r, w->scale + n0, sr, n0, o, ld_out, valid); break;
            case 3: tile_sgn(3, panel, x, K4, xs + r, w->scale + n0, sr, n0, o, ld_out, valid); break;
            case 4: tile_sgn(4, panel, x, K4, xs + r, w->scale + n0, sr, n0, o, ld_out, valid); break;
            case 5: tile_sgn(5, panel, x, K4, xs + r, w->scale + n0, sr, n0, o, ld_out, valid); break;
            default: tile_sgn(SGN_MR, panel, x, K4, xs + r, w->scale + n0, sr, n0, o, ld_out, valid); break;
            }
        }
    }
}

/* one row: NP panels at a time (see above) */
static FR_AVX2_INLINE void gemv_avx2_panels(const int NP, const i8_packed *w, ptrdiff_t p, const int8_t *xq,
                                            __m256 vxs, const float *const *src, float *out)
{
    const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols), stride = K4 * I8_PANEL;
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *b = w->data + p * stride;
    __m256i acc[8];
    FR_UNROLL for (int h = 0; h < 2 * NP; h++)
        acc[h] = _mm256_setzero_si256();
    for (ptrdiff_t k = 0; k < K4; k += 4) {
        const __m256i a = _mm256_set1_epi32(load4(xq + k)), ua = _mm256_abs_epi8(a);
        const int8_t *g = b + k * I8_PANEL;
        FR_UNROLL for (int h = 0; h < 2 * NP; h++)
            acc[h] = sgn_dot(acc[h], ua, a, g + (h / 2) * stride + (h % 2) * 32, ones);
    }
    FR_UNROLL for (int h = 0; h < 2 * NP; h++) {
        const ptrdiff_t n0 = p * I8_PANEL + h * 8;
        if (n0 < N) {
            const __m256 t = _mm256_mul_ps(vxs, _mm256_loadu_ps(w->scale + n0));
            float *o = out + n0;
            store8_avx2(o, src ? src[0] + n0 : o, N - n0, _mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), t));
        }
    }
}

#ifndef GEMV_NP
#define GEMV_NP 4
#endif
static FR_AVX2 void gemv_avx2(const i8_packed *w, const int8_t *xq, const float *xs, const float *const *src,
                              float *out)
{
    const ptrdiff_t panels = (w->rows + I8_PANEL - 1) / I8_PANEL;
    const __m256 vxs = _mm256_set1_ps(xs[0]);
    ptrdiff_t p = 0;
    for (; p + GEMV_NP <= panels; p += GEMV_NP)
        gemv_avx2_panels(GEMV_NP, w, p, xq, vxs, src, out);
    for (; p < panels; p++)
        gemv_avx2_panels(1, w, p, xq, vxs, src, out);
}

/* AMX: blocks of 16 rows times panels of 16 outputs, K in chunks of 64, with tdpbssd (s8 x s8 ->
 * s32, no offset). A panel's 16 groups of 4 inputs (64 k) are 16 rows of 64 bytes: the packed
 * layout is already tdpbssd's B operand. Tiles 0-3: C (2 row blocks x 2 panels), 4-5: A, 6-7: B,
 * all 16 rows x 64 bytes. Rows beyond the last whole block of 16 go through the AVX-512 VNNI
 * kernel: the integer sums are exact, so they get the same bits either way. Needs K4 % 64 == 0. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static FR_AMX void amx_epilogue(const i8_packed *w, ptrdiff_t p, int np, int nr, const int32_t *cbuf,
                                const float *xs, const float *const *src, float *out, ptrdiff_t ld_out)
{
    for (int g = 0; g < np; g++) {
        const ptrdiff_t n0 = (p + g) * I8_PANEL, valid = w->rows - n0;
        const __mmask16 mask = valid >= I8_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1u);
        const __m512 sc = _mm512_loadu_ps(w->scale + n0);
        for (int r = 0; r < 16 * nr; r++) {
            const __m512 f = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(cbuf + r * 32 + g * 16)));
            const __m512 t = _mm512_mul_ps(_mm512_set1_ps(xs[r]), sc);
            float *o = out + r * ld_out + n0;
            const float *in = src ? src[r] + n0 : o;
            _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, in), _mm512_mul_ps(f, t)));
        }
    }
}

#define AMX_ROWS 256
static FR_AMX void matmul_amx(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m,
                              const float *const *src, float *out, ptrdiff_t ld_out)
{
    const ptrdiff_t N = w->rows, K4 = i8_cols_padded(w->cols), stride = K4 * I8_PANEL;
    const ptrdiff_t panels = (N + I8_PANEL - 1) / I8_PANEL, m16 = m / 16 * 16;
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    /* The epilogue of a block runs after the next block's products are issued, from the other of
     * two buffers: it then reads tiles stored a block earlier, and its vector work overlaps the
     * tile products instead of waiting for the last of them (3200 x 512 -> 2048: 8.5 -> 7.0 ms
     * on a Sapphire Rapids class core). The same operations: the same bits. (Blocks of 4 row
     * tiles on one panel, loading each weight tile once for 64 rows, measured slower: 10 ms.) */
    int32_t cbuf[2][32 * 32] __attribute__((aligned(64)));
    int cur = 0, pending = 0;
    ptrdiff_t pend_p = 0, pend_r = 0;
    int pend_np = 0, pend_nr = 0;
    /* chunks of AMX_ROWS rows (their quantized inputs stay in L2 while every panel passes);
     * inside, each pair of panels (their 2 x K4 x 16 bytes stay in L1) meets every row pair */
    for (ptrdiff_t r0 = 0; r0 < m16; r0 += AMX_ROWS)
    for (ptrdiff_t p = 0; p < panels; p += 2) {
        const int np = panels - p >= 2 ? 2 : 1;
        const int8_t *b0 = w->data + p * stride, *b1 = b0 + stride;
        const ptrdiff_t r_end = m16 - r0 < AMX_ROWS ? m16 : r0 + AMX_ROWS;
        for (ptrdiff_t r = r0; r < r_end; r += 32) {
            const int nr = r_end - r >= 32 ? 2 : 1;
            const int8_t *a0 = xq + r * K4, *a1 = a0 + 16 * K4;
            prefetch_outputs(16 * nr, np * I8_PANEL, src ? src + r : NULL, p * I8_PANEL, out + r * ld_out + p * I8_PANEL,
                             ld_out);
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (ptrdiff_t k = 0; k < K4; k += 64) {
                _tile_loadd(4, a0 + k, K4);
                _tile_loadd(6, b0 + k * I8_PANEL, 64);
                _tile_dpbssd(0, 4, 6);
                if (np == 2) {
                    _tile_loadd(7, b1 + k * I8_PANEL, 64);
                    _tile_dpbssd(1, 4, 7);
                }
                if (nr == 2) {
                    _tile_loadd(5, a1 + k, K4);
                    _tile_dpbssd(2, 5, 6);
                    if (np == 2)
                        _tile_dpbssd(3, 5, 7);
                }
            }
            if (pending) /* the block before, from the other buffer */
                amx_epilogue(w, pend_p, pend_np, pend_nr, cbuf[cur ^ 1], xs + pend_r, src ? src + pend_r : NULL,
                             out + pend_r * ld_out, ld_out);
            _tile_stored(0, cbuf[cur], 128);
            _tile_stored(1, cbuf[cur] + 16, 128);
            _tile_stored(2, cbuf[cur] + 16 * 32, 128);
            _tile_stored(3, cbuf[cur] + 16 * 32 + 16, 128);
            pending = 1, pend_p = p, pend_r = r, pend_np = np, pend_nr = nr;
            cur ^= 1;
        }
    }
    if (pending)
        amx_epilogue(w, pend_p, pend_np, pend_nr, cbuf[cur ^ 1], xs + pend_r, src ? src + pend_r : NULL,
                     out + pend_r * ld_out, ld_out);
    _tile_release();
    if (m16 < m)
        matmul_vnni512(w, xq + m16 * K4, xs + m16, m - m16, src ? src + m16 : NULL, out + m16 * ld_out, ld_out);
}
#endif

static void bf16_matmul(const i8_packed *w, const uint16_t *xq, ptrdiff_t m, const float *const *src, float *out,
                        ptrdiff_t ld_out); /* section 3b */

void i8_matmul(const i8_packed *w, const int8_t *xq, const float *xs, ptrdiff_t m, const float *const *src,
               float *out, ptrdiff_t ld_out)
{
    if (m <= 0 || w->rows <= 0)
        return;
    if (w->bf16) {
        bf16_matmul(w, (const uint16_t *)xq, m, src, out, ld_out);
        return;
    }
#if FR_X86_SIMD
    switch (i8_simd_enabled()) {
    case I8_SIMD_AMX:
        if (m >= 16 && i8_cols_padded(w->cols) % 64 == 0) {
            matmul_amx(w, xq, xs, m, src, out, ld_out);
            return;
        }
        if (m == 1)
            gemv_vnni512(w, xq, xs, src, out);
        else
            matmul_vnni512(w, xq, xs, m, src, out, ld_out);
        return;
    case I8_SIMD_AVX512VNNI:
        if (m == 1)
            gemv_vnni512(w, xq, xs, src, out);
        else
            matmul_vnni512(w, xq, xs, m, src, out, ld_out);
        return;
    case I8_SIMD_AVXVNNI: matmul_avxvnni(w, xq, xs, m, src, out, ld_out); return;
    case I8_SIMD_AVX2:
        if (m == 1)
            gemv_avx2(w, xq, xs, src, out);
        else
            matmul_avx2_sgn(w, xq, xs, m, src, out, ld_out);
        return;
    default: break;
    }
#endif
    matmul_plain(w, xq, xs, m, src, out, ld_out);
}

/* ============================================================================================
 * 3b. bfloat16 (layout and arithmetic: int8_core.h)
 * ========================================================================================== */

static int bf16_use_native = 1;

int bf16_native(int use)
{
    if (use >= 0)
        bf16_use_native = use;
    return bf16_use_native;
}

static ptrdiff_t cols_even(ptrdiff_t cols) { return (cols + 1) / 2 * 2; }

size_t bf16_packed_size(ptrdiff_t rows, ptrdiff_t cols)
{
    return (size_t)(((rows + I8_PANEL - 1) / I8_PANEL) * I8_PANEL * cols_even(cols));
}

/* float32 -> bfloat16, round to nearest even (weights and activations are finite) */
static inline uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void bf16_pack(const float *w, ptrdiff_t rows, ptrdiff_t cols, uint16_t *packed)
{
    const ptrdiff_t K2 = cols_even(cols), panels = (rows + I8_PANEL - 1) / I8_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++)
        for (ptrdiff_t j = 0; j < I8_PANEL; j++)
            for (ptrdiff_t k = 0; k < K2; k++) {
                const ptrdiff_t n = p * I8_PANEL + j;
                packed[p * K2 * I8_PANEL + (k / 2) * 2 * I8_PANEL + j * 2 + k % 2] =
                    n < rows && k < cols ? to_bf16(w[n * cols + k]) : 0;
            }
}

static void bf16_rows(const float *in, ptrdiff_t ld_in, ptrdiff_t m, ptrdiff_t K, uint16_t *xq)
{
    const ptrdiff_t K2 = cols_even(K);
    for (ptrdiff_t r = 0; r < m; r++) {
        for (ptrdiff_t k = 0; k < K; k++)
            xq[r * K2 + k] = to_bf16(in[r * ld_in + k]);
        for (ptrdiff_t k = K; k < K2; k++)
            xq[r * K2 + k] = 0;
    }
}

void i8_prepare_rows(const i8_packed *w, const float *in, ptrdiff_t ld_in, ptrdiff_t m, ptrdiff_t K,
                     int8_t *xq, float *xs)
{
    if (w->bf16)
        bf16_rows(in, ld_in, m, K, (uint16_t *)xq);
    else
        i8_quantize_rows(in, ld_in, m, K, xq, xs);
}

/* gcc 12's loop vectorizer miscompiles this loop at -O3 (an input counted twice; -O2, -O0 and
 * -fno-tree-loop-vectorize are right): it stays scalar, the fallback's speed does not matter */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-vectorize")))
#endif
static void bf16_matmul_plain(const i8_packed *w, const uint16_t *xq, ptrdiff_t m, const float *const *src,
                              float *out, ptrdiff_t ld_out)
{
    const ptrdiff_t N = w->rows, K2 = cols_even(w->cols), panels = (N + I8_PANEL - 1) / I8_PANEL;
    for (ptrdiff_t r = 0; r < m; r++) {
        const uint16_t *x = xq + r * K2;
        for (ptrdiff_t p = 0; p < panels; p++) { /* 16 outputs at a time, each its own chain */
            const uint16_t *panel = (const uint16_t *)w->data + p * K2 * I8_PANEL;
            float acc[I8_PANEL] = {0};
            for (ptrdiff_t g = 0; g < K2 / 2; g++) {
                const float x1 = from_bf16(x[2 * g + 1]), x0 = from_bf16(x[2 * g]);
                const uint16_t *pair = panel + g * 2 * I8_PANEL;
                for (int j = 0; j < I8_PANEL; j++) {
                    acc[j] = acc[j] + x1 * from_bf16(pair[2 * j + 1]);
                    acc[j] = acc[j] + x0 * from_bf16(pair[2 * j]);
                }
            }
            for (int j = 0; j < I8_PANEL && p * I8_PANEL + j < N; j++) {
                const ptrdiff_t n = p * I8_PANEL + j;
                const float base = src ? src[r][n] : out[r * ld_out + n];
                out[r * ld_out + n] = base + acc[j];
            }
        }
    }
}

#if FR_X86_SIMD

/* out (MR, NPG*16): MR rows times NPG panels; native: vdpbf16ps, else two FMAs of the exact
 * products (odd input first), which round exactly as vdpbf16ps does */
static FR_AVX512BF16_INLINE void tile_bf16(const int MR, const int NPG, const int native, const i8_packed *w,
                                         ptrdiff_t p0, const uint16_t *xq, ptrdiff_t K2, const float *const *src,
                                         float *out, ptrdiff_t ld_out, ptrdiff_t left)
{
    __m512 acc[6][4];
    const ptrdiff_t stride = K2 * I8_PANEL;
    const uint16_t *panel = (const uint16_t *)w->data + p0 * stride;
    const __m512i hi_mask = _mm512_set1_epi32((int32_t)0xFFFF0000u);
    FR_UNROLL for (int r = 0; r < MR; r++)
        FR_UNROLL for (int g = 0; g < NPG; g++)
            acc[r][g] = _mm512_setzero_ps();
    for (ptrdiff_t k = 0; k < K2; k += 2) {
        __m512i wv[4];
        FR_UNROLL for (int g = 0; g < NPG; g++)
            wv[g] = _mm512_loadu_si512((const void *)(panel + g * stride + k * I8_PANEL));
        FR_UNROLL for (int r = 0; r < MR; r++) {
            uint32_t pair;
            memcpy(&pair, xq + r * K2 + k, 4);
            if (native) {
                const __m512bh a = (__m512bh)_mm512_set1_epi32((int32_t)pair);
                FR_UNROLL for (int g = 0; g < NPG; g++)
                    acc[r][g] = _mm512_dpbf16_ps(acc[r][g], a, (__m512bh)wv[g]);
            } else {
                const __m512 x1 = _mm512_castsi512_ps(_mm512_set1_epi32((int32_t)(pair & 0xFFFF0000u)));
                const __m512 x0 = _mm512_castsi512_ps(_mm512_set1_epi32((int32_t)(pair << 16)));
                FR_UNROLL for (int g = 0; g < NPG; g++) {
                    const __m512 w1 = _mm512_castsi512_ps(_mm512_and_si512(wv[g], hi_mask));
                    const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(wv[g], 16));
                    acc[r][g] = _mm512_fmadd_ps(x0, w0, _mm512_fmadd_ps(x1, w1, acc[r][g]));
                }
            }
        }
    }
    FR_UNROLL for (int g = 0; g < NPG; g++) {
        const ptrdiff_t valid = left - g * I8_PANEL;
        const __mmask16 mask = valid >= I8_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1u);
        const ptrdiff_t n0 = (p0 + g) * I8_PANEL;
        FR_UNROLL for (int r = 0; r < MR; r++) {
            float *o = out + r * ld_out + g * I8_PANEL;
            const float *in = src ? src[r] + n0 : o;
            _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, in), acc[r][g]));
        }
    }
}

#define BF16_CASE(NATIVE, MR, NPG) \
    case (MR - 1) * 4 + (NPG - 1): tile_bf16(MR, NPG, NATIVE, w, p, x, K2, sr, o, ld_out, left); break;
#define BF16_ROW(NATIVE, MR) BF16_CASE(NATIVE, MR, 1) BF16_CASE(NATIVE, MR, 2) BF16_CASE(NATIVE, MR, 3) \
    BF16_CASE(NATIVE, MR, 4)
#define BF16_DRIVER(NAME, NATIVE)                                                                     \
    static FR_AVX512BF16 void NAME(const i8_packed *w, const uint16_t *xq, ptrdiff_t m,             \
                                      const float *const *src, float *out, ptrdiff_t ld_out)          \
    {                                                                                                 \
        const ptrdiff_t N = w->rows, K2 = cols_even(w->cols), panels = (N + I8_PANEL - 1) / I8_PANEL; \
        for (ptrdiff_t p = 0; p < panels; p += 4) {                                                   \
            const ptrdiff_t npg = panels - p < 4 ? panels - p : 4, left = N - p * I8_PANEL;           \
            for (ptrdiff_t r = 0; r < m; r += 6) {                                                    \
                const ptrdiff_t mr = m - r < 6 ? m - r : 6;                                           \
                const uint16_t *x = xq + r * K2;                                                      \
                float *o = out + r * ld_out + p * I8_PANEL;                                           \
                const float *const *sr = src ? src + r : NULL;                                        \
                switch ((mr - 1) * 4 + (npg - 1)) {                                                   \
                BF16_ROW(NATIVE, 1) BF16_ROW(NATIVE, 2) BF16_ROW(NATIVE, 3)                           \
                BF16_ROW(NATIVE, 4) BF16_ROW(NATIVE, 5) BF16_ROW(NATIVE, 6)                           \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }
/* both carry the avx512bf16 target (tile_bf16 is inlined), but only the native one contains
 * vdpbf16ps: the FMA form runs on any AVX-512 CPU */
BF16_DRIVER(bf16_matmul_native, 1)
BF16_DRIVER(bf16_matmul_fma, 0)
#endif

static void bf16_matmul(const i8_packed *w, const uint16_t *xq, ptrdiff_t m, const float *const *src, float *out,
                        ptrdiff_t ld_out)
{
#if FR_X86_SIMD
    if (i8_simd_enabled() >= I8_SIMD_AVX512VNNI) {
        if (bf16_use_native && fr_cpu_has(FR_HAS_AVX512_BF16))
            bf16_matmul_native(w, xq, m, src, out, ld_out);
        else
            bf16_matmul_fma(w, xq, m, src, out, ld_out);
        return;
    }
#endif
    bf16_matmul_plain(w, xq, m, src, out, ld_out);
}

/* ============================================================================================
 * 4. the sequence loop
 * ========================================================================================== */

/* Rows are sorted by length, longest first, so the rows running at step s are a prefix (as in
 * rnn_core.c); working state lives here in sorted order and goes back at the end. */
typedef struct {
    void *block;
    rnn_rows rows;     /* sorted rows, running h (B, H_out) and c (B, H) */
    float *gates;      /* (B, G*H) */
    float *extra;      /* (B, H): LSTM m; GRU W_hn h or W_hn (r * h) */
    float *extra2;     /* (B, H): GRU r * h */
    const float **src; /* (B,) each running row's xproj row at this step */
    int8_t *xq;        /* (B, k4) quantized rows */
    float *xs;         /* (B,) their scales */
} i8_workspace;

static size_t up16(size_t n) { return (n + 15) / 16 * 16; }

static int ws_alloc(i8_workspace *ws, ptrdiff_t B, ptrdiff_t T, ptrdiff_t h_out, ptrdiff_t H, ptrdiff_t G)
{
    const ptrdiff_t k4 = i8_cols_padded(h_out > H ? h_out : H);
    /* xq: bfloat16 rows take 2 bytes a value */
    const size_t nc = up16((size_t)(B * H)), ng = up16((size_t)(B * G * H));
    const size_t nq = up16((size_t)(B * k4 * 2)), ns = up16((size_t)B);
    ws->block = malloc(rnn_rows_bytes(B, T, h_out, H) + up16((size_t)B) * sizeof(float *) +
                       (2 * nc + ng + ns) * sizeof(float) + nq + 64);
    if (!ws->block)
        return -1;
    char *p = (char *)(((uintptr_t)ws->block + 63) & ~(uintptr_t)63);
    p = rnn_rows_place(&ws->rows, p, B, T, h_out, H);
    ws->src = (const float **)p;
    p += up16((size_t)B) * sizeof(float *);
    ws->extra = (float *)p;
    ws->extra2 = ws->extra + nc;
    ws->gates = ws->extra2 + nc;
    ws->xs = ws->gates + ng;
    ws->xq = (int8_t *)(ws->xs + ns);
    return 0;
}

int i8_sequence(int cell_kind, const rnn_sequence_io *io, const float *xproj, const i8_weights *w,
                float *h, float *c, const rnn_cell *cell)
{
    const int lstm = cell_kind == I8_LSTM, gru = cell_kind == I8_GRU;
    const ptrdiff_t H = gru ? w->w_hh_n.rows : (lstm ? w->w_hh_rz.rows / 4 : w->w_hh_rz.rows);
    const ptrdiff_t G = gru ? 3 : (lstm ? 4 : 1), GH = G * H;
    const ptrdiff_t h_out = w->w_hh_rz.cols;
    const int proj = lstm && w->w_hr.rows > 0, lbr = cell->linear_before_reset;
    i8_workspace ws;
    if (ws_alloc(&ws, io->batch, io->steps, h_out, H, G))
        return -1;
    const unsigned csr = rnn_denormals_off();
    const ptrdiff_t longest = rnn_rows_begin(io, &ws.rows, h, lstm ? c : NULL);
    ptrdiff_t n = io->batch;
    for (ptrdiff_t s = 0; s < longest; s++) {
        n = rnn_rows_active(&ws.rows, n, s);
        for (ptrdiff_t i = 0; i < n; i++) /* xp (bias included) */
            ws.src[i] = rnn_rows_input(io, &ws.rows, xproj, GH, i, s);
        if (gru) /* a = xp: the n block is read by the element-wise step */
            for (ptrdiff_t i = 0; i < n; i++)
                memcpy(ws.gates + i * GH, ws.src[i], (size_t)GH * sizeof(float));
        rnn_rows_prefetch(io, &ws.rows, xproj, GH, n, s + 1); /* next step's rows (folded table) */
        i8_prepare_rows(&w->w_hh_rz, ws.rows.h, h_out, n, h_out, ws.xq, ws.xs); /* h, one scale per row */
        /* a = xp + W_hh h (gru: rows r|z, added to the copy) */
        i8_matmul(&w->w_hh_rz, ws.xq, ws.xs, n, gru ? NULL : ws.src, ws.gates, GH);
        if (lstm) {
            for (ptrdiff_t i = 0; i < n; i++)
                rnn_lstm_pointwise(ws.gates + i * GH, H, ws.rows.c + i * H, proj ? ws.extra + i * H : ws.rows.h + i * h_out,
                                   w->peephole, H, cell, H);
            if (proj) { /* h' = W_hr m */
                memset(ws.rows.h, 0, (size_t)(n * h_out) * sizeof(float));
                i8_prepare_rows(&w->w_hr, ws.extra, H, n, H, ws.xq, ws.xs);
                i8_matmul(&w->w_hr, ws.xq, ws.xs, n, NULL, ws.rows.h, h_out);
            }
        } else if (gru) {
            for (ptrdiff_t i = 0; i < n; i++) /* r, z */
                rnn_activate(&cell->act[0], cell->clip, ws.gates + i * GH, 2 * H);
            memset(ws.extra, 0, (size_t)(n * H) * sizeof(float));
            if (lbr) { /* W_hn h, with the same quantized h */
                i8_matmul(&w->w_hh_n, ws.xq, ws.xs, n, NULL, ws.extra, H);
            } else { /* W_hn (r * h) */
                for (ptrdiff_t i = 0; i < n; i++) {
                    const float *r = ws.gates + i * GH, *hi = ws.rows.h + i * H;
                    float *rh = ws.extra2 + i * H;
                    for (ptrdiff_t j = 0; j < H; j++)
                        rh[j] = r[j] * hi[j];
                }
                i8_prepare_rows(&w->w_hh_n, ws.extra2, H, n, H, ws.xq, ws.xs);
                i8_matmul(&w->w_hh_n, ws.xq, ws.xs, n, NULL, ws.extra, H);
            }
            for (ptrdiff_t i = 0; i < n; i++) {
                float *a = ws.gates + i * GH, *hi = ws.rows.h + i * H;
                rnn_gru_pointwise(a + 2 * H, a, a + H, ws.extra + i * H, w->b_hn, hi, hi, cell, H);
            }
        } else {
            for (ptrdiff_t i = 0; i < n; i++) { /* h' = f(a) */
                float *a = ws.gates + i * GH;
                rnn_activate(&cell->act[0], cell->clip, a, H);
                memcpy(ws.rows.h + i * H, a, (size_t)H * sizeof(float));
            }
        }
        rnn_rows_store(io, &ws.rows, n, s); /* y[b, t] = h' */
    }
    rnn_rows_end(io, &ws.rows, h, lstm ? c : NULL);
    free(ws.block);
    rnn_denormals_restore(csr);
    return 0;
}

/* ============================================================================================
 * 5. peak probes (bench/floors.py): the core's arithmetic limits, measured
 * ========================================================================================== */

#if FR_X86_SIMD
static FR_AVX512VNNI double peak_fma512(int64_t iters)
{
    __m512 acc[16];
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < 16; j++)
        acc[j] = _mm512_set1_ps((float)j);
    for (int64_t i = 0; i < iters; i++)
        FR_UNROLL for (int j = 0; j < 16; j++)
            acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    __m512 sum = acc[0];
    for (int j = 1; j < 16; j++)
        sum = _mm512_add_ps(sum, acc[j]);
    volatile float sink = _mm512_reduce_add_ps(sum);
    (void)sink;
    return (double)iters * 16 * 16 * 2; /* FLOP */
}

static FR_AVX2 double peak_fma256(int64_t iters)
{
    __m256 acc[12];
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < 12; j++)
        acc[j] = _mm256_set1_ps((float)j);
    for (int64_t i = 0; i < iters; i++)
        FR_UNROLL for (int j = 0; j < 12; j++)
            acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    float lanes[8];
    __m256 sum = acc[0];
    for (int j = 1; j < 12; j++)
        sum = _mm256_add_ps(sum, acc[j]);
    _mm256_storeu_ps(lanes, sum);
    volatile float sink = lanes[0];
    (void)sink;
    return (double)iters * 12 * 8 * 2;
}

static FR_AVX512VNNI double peak_vnni512(int64_t iters)
{
    __m512i acc[16];
    const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
    for (int j = 0; j < 16; j++)
        acc[j] = _mm512_set1_epi32(j);
    for (int64_t i = 0; i < iters; i++)
        FR_UNROLL for (int j = 0; j < 16; j++)
            acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
    __m512i sum = acc[0];
    for (int j = 1; j < 16; j++)
        sum = _mm512_add_epi32(sum, acc[j]);
    volatile int sink = _mm512_reduce_add_epi32(sum);
    (void)sink;
    return (double)iters * 16 * 64 * 2; /* int8 OP: 64 multiply-adds per instruction */
}

static FR_AMX double peak_amx(int64_t iters)
{
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    static int8_t buf[16 * 64] __attribute__((aligned(64)));
    _tile_loadconfig(&cfg);
    _tile_loadd(4, buf, 64);
    _tile_loadd(5, buf, 64);
    _tile_loadd(6, buf, 64);
    _tile_loadd(7, buf, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t i = 0; i < iters; i++) {
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
    int32_t out[16 * 16];
    _tile_stored(0, out, 64);
    _tile_release();
    volatile int32_t sink = out[0];
    (void)sink;
    return (double)iters * 4 * 16 * 16 * 64 * 2;
}
#endif

double i8_peak_probe(int kind, int64_t iters)
{
#if FR_X86_SIMD
    const int level = i8_simd_enabled();
    if (kind == 0)
        return level >= I8_SIMD_AVX512VNNI || fr_cpu_has(FR_HAS_AVX512F) ? peak_fma512(iters)
             : (level >= I8_SIMD_AVX2 ? peak_fma256(iters) : 0.0);
    if (kind == 1 && level >= I8_SIMD_AVX512VNNI)
        return peak_vnni512(iters);
    if (kind == 2 && level >= I8_SIMD_AMX)
        return peak_amx(iters);
#else
    (void)kind, (void)iters;
#endif
    return 0.0;
}
