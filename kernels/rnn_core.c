/* rnn_core.c — the C kernels of fastrnn (contract: kernels/README.md, declarations: rnn_core.h).
 *
 * Sections, in order:
 *   1. instruction set: AVX2+FMA chosen at run time on x86 (gcc/clang), plain C everywhere else
 *   2. activations: plain C (libm expf/tanhf), and AVX2 sigmoid/tanh as accurate as libm's
 *      (measured against float64: sigmoid <= 2.5 ulp like 1/(1+expf(-x)), tanh <= 1.3 ulp)
 *   3. packed weights and the matrix multiply: plain C, and AVX2 micro-kernels
 *   4. sequence plumbing: workspace, rows sorted by length, outputs
 *   5. the three cells: rnn, lstm, gru, and the LSTM/GRU element-wise step (generic, and fused in
 *      AVX2 / AVX-512 for the usual cell), shared with rnn_split.c and generate_core.c
 *
 * The time loop of every cell has the same shape. Rows are sorted by length, longest first,
 * so at step s the rows still running are a prefix of the batch: the matrix multiply covers
 * only those rows. Row b takes t = s (forward) or t = len_b - 1 - s (reverse) at step s.
 * Working state (h, c) lives in the workspace in sorted order and is copied back at the end.
 *
 * Denormals are flushed to zero (MXCSR FTZ/DAZ) for the duration of a call on x86.
 *
 * Summation order: every matmul path computes out[n] = out[n] + sum_k in[k] W[n, k] as one
 * chain over k = 0..K-1, whatever the batch size, so a row's result does not depend on the
 * other rows of the batch.
 */
#include "rnn_core.h"
#include "cpu_features.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * 1. instruction set (the detection itself: cpu_features.h)
 * ========================================================================================== */

static int simd_state = -1; /* -1: not decided yet, else the level in use (RNN_SIMD_*) */

static int cpu_simd_level(void)
{
    if (!fr_cpu_has(FR_HAS_AVX2_FMA))
        return RNN_SIMD_PLAIN;
    return fr_cpu_has(FR_HAS_AVX512F) ? RNN_SIMD_AVX512 : RNN_SIMD_AVX2;
}

int rnn_simd_enabled(void) { return fr_level(&simd_state, cpu_simd_level); }

int rnn_select_simd(int level) { return simd_state = fr_cap_level(level, cpu_simd_level()); }

unsigned rnn_denormals_off(void) { return fr_denormals_off(); }

void rnn_denormals_restore(unsigned saved) { fr_denormals_restore(saved); }

/* ============================================================================================
 * 2. activations
 * ========================================================================================== */

#define SELU_SCALE 1.0507009873554805f
#define SELU_ALPHA 1.6732632423543772f

/* x (n,) <- clip(x) to [-clip, clip]; NaN stays NaN */
static void clip_plain(float clip, float *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = x[i] < -clip ? -clip : (x[i] > clip ? clip : x[i]);
}

/* x (n,) <- act(x), libm only; the loop is inside each case */
static void activate_plain(const rnn_activation *act, float *x, ptrdiff_t n)
{
    const float a = act->alpha, b = act->beta;
    ptrdiff_t i;
    switch (act->code) {
    case 0: for (i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i])); break;
    case 1: for (i = 0; i < n; i++) x[i] = tanhf(x[i]); break;
    case 2: for (i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f; break;
    case 3: for (i = 0; i < n; i++) x[i] = a * x[i] + b; break;
    case 4:
        for (i = 0; i < n; i++) {
            float v = a * x[i] + b;
            x[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        }
        break;
    case 5: for (i = 0; i < n; i++) x[i] = x[i] >= 0.0f ? x[i] : a * x[i]; break;
    case 6: for (i = 0; i < n; i++) x[i] = x[i] > a ? x[i] : 0.0f; break;
    case 7: for (i = 0; i < n; i++) x[i] = a * tanhf(b * x[i]); break;
    case 8: for (i = 0; i < n; i++) x[i] = x[i] >= 0.0f ? x[i] : a * (expf(x[i]) - 1.0f); break;
    case 9: for (i = 0; i < n; i++) x[i] = x[i] / (1.0f + fabsf(x[i])); break;
    case 10: /* log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)) */
        for (i = 0; i < n; i++) x[i] = fmaxf(x[i], 0.0f) + log1pf(expf(-fabsf(x[i])));
        break;
    case 11: for (i = 0; i < n; i++) x[i] = expf(x[i]); break;
    case 12:
        for (i = 0; i < n; i++)
            x[i] = SELU_SCALE * (x[i] > 0.0f ? x[i] : SELU_ALPHA * (expf(x[i]) - 1.0f));
        break;
    case 13: for (i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i])); break;
    default: break; /* codes are checked by the Python API */
    }
}

#if FR_X86_SIMD
/* exp(x) for 8 lanes: Cephes expf (Cody-Waite reduction, degree-6 polynomial), ~1 ulp.
 * 2^n is applied in two halves so that overflow gives inf and underflow gives 0/denormal. */
static FR_AVX2_INLINE __m256 exp_avx2(__m256 x)
{
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x); /* x second: NaN passes through */
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f)); /* exp(r), r in [-ln2/2, ln2/2] */
    __m256i k = _mm256_cvtps_epi32(n);
    __m256i k1 = _mm256_srai_epi32(k, 1);
    __m256i k2 = _mm256_sub_epi32(k, k1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* tanh(x) for 8 lanes: Cephes tanhf, ~2 ulp. |x| <= 0.625: x + x^3 P(x^2);
 * else sign(x) (1 - 2 / (exp(2|x|) + 1)). */
static FR_AVX2_INLINE __m256 tanh_avx2(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 e = exp_avx2(_mm256_add_ps(ax, ax));
    __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
    big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    return _mm256_blendv_ps(small, big, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_GT_OQ));
}

/* 1 / (1 + exp(-x)), true division */
static FR_AVX2_INLINE __m256 sigmoid_avx2(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

static FR_AVX2_INLINE __m256 activate8(int code, __m256 v, __m256 alpha, __m256 beta)
{
    switch (code) {
    case 0: return sigmoid_avx2(v);
    case 1: return tanh_avx2(v);
    case 7: return _mm256_mul_ps(alpha, tanh_avx2(_mm256_mul_ps(beta, v)));
    default: /* 13 */
        return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f),
                                              exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), v))));
    }
}

/* x (n,) <- act(clip(x)); sigmoid, tanh, scaled_tanh, swish vectorised, the rest plain C */
FR_AVX2 static void activate_avx2(const rnn_activation *act, float clip, float *x, ptrdiff_t n)
{
    const int code = act->code, do_clip = clip < INFINITY;
    if (code != 0 && code != 1 && code != 7 && code != 13) {
        if (do_clip)
            clip_plain(clip, x, n);
        activate_plain(act, x, n);
        return;
    }
    const __m256 alpha = _mm256_set1_ps(act->alpha), beta = _mm256_set1_ps(act->beta);
    const __m256 hi = _mm256_set1_ps(clip), lo = _mm256_set1_ps(-clip);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        if (do_clip)
            v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
        _mm256_storeu_ps(x + i, activate8(code, v, alpha, beta));
    }
    if (i < n) { /* the tail goes through the same vector code */
        __m256i mask = fr_lanes8(n - i);
        __m256 v = _mm256_maskload_ps(x + i, mask);
        if (do_clip)
            v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
        _mm256_maskstore_ps(x + i, mask, activate8(code, v, alpha, beta));
    }
}

/* The same functions for 16 lanes (AVX-512F): exactly the operations of the AVX2 versions in
 * the same order, lane by lane, so both paths give the same bits. */
static FR_AVX512_INLINE __m512 and512(__m512 a, __m512 b)
{
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

static FR_AVX512_INLINE __m512 exp_avx512(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x); /* x second: NaN passes through */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    __m512i k = _mm512_cvtps_epi32(n);
    __m512i k1 = _mm512_srai_epi32(k, 1);
    __m512i k2 = _mm512_sub_epi32(k, k1);
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k1, _mm512_set1_epi32(127)), 23));
    __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k2, _mm512_set1_epi32(127)), 23));
    return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
}

static FR_AVX512_INLINE __m512 tanh_avx512(__m512 x)
{
    const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
    const __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_castps_si512(sign), _mm512_castps_si512(x)));
    __m512 e = exp_avx512(_mm512_add_ps(ax, ax));
    __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
    big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), _mm512_castps_si512(and512(sign, x))));
    __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_GT_OQ), small, big);
}

static FR_AVX512_INLINE __m512 sigmoid_avx512(__m512 x)
{ /* 1 / (1 + exp(-x)), true division */
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

static FR_AVX512_INLINE __m512 activate16(int code, __m512 v, __m512 alpha, __m512 beta)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    switch (code) {
    case 0: return sigmoid_avx512(v);
    case 1: return tanh_avx512(v);
    case 7: return _mm512_mul_ps(alpha, tanh_avx512(_mm512_mul_ps(beta, v)));
    default: /* 13 */
        return _mm512_div_ps(v, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), v))));
    }
}

/* activate_avx2 in 16 lanes; the other activations go to the same plain C */
FR_AVX512 static void activate_avx512(const rnn_activation *act, float clip, float *x, ptrdiff_t n)
{
    const int code = act->code, do_clip = clip < INFINITY;
    if (code != 0 && code != 1 && code != 7 && code != 13) {
        if (do_clip)
            clip_plain(clip, x, n);
        activate_plain(act, x, n);
        return;
    }
    const __m512 alpha = _mm512_set1_ps(act->alpha), beta = _mm512_set1_ps(act->beta);
    const __m512 hi = _mm512_set1_ps(clip), lo = _mm512_set1_ps(-clip);
    for (ptrdiff_t i = 0; i < n; i += 16) {
        const __mmask16 mask = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(mask, x + i);
        if (do_clip)
            v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
        _mm512_mask_storeu_ps(x + i, mask, activate16(code, v, alpha, beta));
    }
}
#endif

void rnn_activate(const rnn_activation *act, float clip, float *x, ptrdiff_t n)
{
#if FR_X86_SIMD
    const int level = rnn_simd_enabled();
    if (level == RNN_SIMD_AVX512) {
        activate_avx512(act, clip, x, n);
        return;
    }
    if (level == RNN_SIMD_AVX2) {
        activate_avx2(act, clip, x, n);
        return;
    }
#endif
    if (clip < INFINITY)
        clip_plain(clip, x, n);
    activate_plain(act, x, n);
}

/* ============================================================================================
 * 3. packed weights and the matrix multiply
 * ========================================================================================== */

size_t rnn_packed_size(ptrdiff_t rows, ptrdiff_t cols)
{
    size_t panels = (size_t)(rows + RNN_PANEL - 1) / RNN_PANEL;
    return panels * (size_t)cols * RNN_PANEL;
}

/* w (rows, cols) -> packed[p, k, j] = w[p*RNN_PANEL + j, k], zero past the last row */
void rnn_pack_weight(const float *w, ptrdiff_t rows, ptrdiff_t cols, float *packed)
{
    ptrdiff_t panels = (rows + RNN_PANEL - 1) / RNN_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++)
        for (ptrdiff_t k = 0; k < cols; k++)
            for (ptrdiff_t j = 0; j < RNN_PANEL; j++) {
                ptrdiff_t n = p * RNN_PANEL + j;
                packed[(p * cols + k) * RNN_PANEL + j] = n < rows ? w[n * cols + k] : 0.0f;
            }
}

/* out (m, N) += in (m, K) @ W.T, plain C: one panel at a time, one row at a time. With gcc or
 * clang the panel row is four 4-float vectors (SSE2 / NEON without any target flag); otherwise
 * scalar loops. Both keep the summation order: one chain over k per output. */
#if defined(__GNUC__) || defined(__clang__)
typedef float vec4 __attribute__((vector_size(16)));

static void panel_row_plain(const float *panel, ptrdiff_t K, const float *x, float *o, ptrdiff_t valid)
{
    float buf[RNN_PANEL] = {0}; /* the panel's 16 outputs, zero past valid */
    vec4 acc0, acc1, acc2, acc3;
    memcpy(buf, o, (size_t)valid * sizeof(float));
    memcpy(&acc0, buf, sizeof(vec4));
    memcpy(&acc1, buf + 4, sizeof(vec4));
    memcpy(&acc2, buf + 8, sizeof(vec4));
    memcpy(&acc3, buf + 12, sizeof(vec4));
    for (ptrdiff_t k = 0; k < K; k++) {
        const float *wk = panel + k * RNN_PANEL;
        vec4 w0, w1, w2, w3, a = {x[k], x[k], x[k], x[k]};
        memcpy(&w0, wk, sizeof(vec4));
        memcpy(&w1, wk + 4, sizeof(vec4));
        memcpy(&w2, wk + 8, sizeof(vec4));
        memcpy(&w3, wk + 12, sizeof(vec4));
        acc0 += a * w0;
        acc1 += a * w1;
        acc2 += a * w2;
        acc3 += a * w3;
    }
    memcpy(buf, &acc0, sizeof(vec4));
    memcpy(buf + 4, &acc1, sizeof(vec4));
    memcpy(buf + 8, &acc2, sizeof(vec4));
    memcpy(buf + 12, &acc3, sizeof(vec4));
    memcpy(o, buf, (size_t)valid * sizeof(float));
}
#else
static void panel_row_plain(const float *panel, ptrdiff_t K, const float *x, float *o, ptrdiff_t valid)
{
    float acc[RNN_PANEL] = {0};
    for (ptrdiff_t j = 0; j < valid; j++)
        acc[j] = o[j];
    for (ptrdiff_t k = 0; k < K; k++)
        for (int j = 0; j < RNN_PANEL; j++)
            acc[j] += x[k] * panel[k * RNN_PANEL + j];
    for (ptrdiff_t j = 0; j < valid; j++)
        o[j] = acc[j];
}
#endif

static void matmul_plain(const rnn_packed *w, const float *in, ptrdiff_t ld_in,
                         float *out, ptrdiff_t ld_out, ptrdiff_t m)
{
    const ptrdiff_t N = w->rows, K = w->cols, panels = (N + RNN_PANEL - 1) / RNN_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++) {
        const ptrdiff_t n0 = p * RNN_PANEL, valid = N - n0 < RNN_PANEL ? N - n0 : RNN_PANEL;
        for (ptrdiff_t r = 0; r < m; r++)
            panel_row_plain(w->data + p * K * RNN_PANEL, K, in + r * ld_in, out + r * ld_out + n0, valid);
    }
}

#if FR_X86_SIMD
/* The micro-kernel: out (MR, NPG*16) += in (MR, kb) @ NPG panels (kb, 16), accumulators in
 * 2*MR*NPG ymm registers (at most 12). For each k: broadcast in[r, k], FMA with the panel
 * vectors. MR and NPG are literal constants at every call, so the loops unroll fully.
 * Only NPG == 1 handles a partial last panel (valid < 16, masked load/store of out). */
#define MR_MAX 6
#define NPG_MAX 4
static FR_AVX2_INLINE void tile_avx2(const int MR, const int NPG,
                                      const float *panel,     /* (NPG, K, 16), kb rows used */
                                      ptrdiff_t panel_stride, /* K*16: from one panel to the next */
                                      ptrdiff_t kb,
                                      const float *in, ptrdiff_t ld_in,  /* (MR, kb) */
                                      float *out, ptrdiff_t ld_out,      /* (MR, NPG*16) */
                                      ptrdiff_t valid)
{
    __m256 acc[MR_MAX][2 * NPG_MAX];
    FR_UNROLL for (int r = 0; r < MR; r++)
        FR_UNROLL for (int g = 0; g < NPG; g++)
            fr_load16(out + r * ld_out + g * RNN_PANEL, valid, &acc[r][2 * g], &acc[r][2 * g + 1]);
    for (ptrdiff_t k = 0; k < kb; k++) {
        __m256 wv[2 * NPG_MAX];
        FR_UNROLL for (int g = 0; g < NPG; g++) {
            wv[2 * g] = _mm256_loadu_ps(panel + g * panel_stride + k * RNN_PANEL);
            wv[2 * g + 1] = _mm256_loadu_ps(panel + g * panel_stride + k * RNN_PANEL + 8);
        }
        FR_UNROLL for (int r = 0; r < MR; r++) {
            __m256 a = _mm256_broadcast_ss(in + r * ld_in + k);
            FR_UNROLL for (int v = 0; v < 2 * NPG; v++)
                acc[r][v] = _mm256_fmadd_ps(a, wv[v], acc[r][v]);
        }
    }
    FR_UNROLL for (int r = 0; r < MR; r++)
        FR_UNROLL for (int g = 0; g < NPG; g++)
            fr_store16(out + r * ld_out + g * RNN_PANEL, valid, acc[r][2 * g], acc[r][2 * g + 1]);
}

/* one block of MR rows (m <= 5) over every panel, the whole of K: NPG panels at a time while
 * whole groups fit, then one at a time */
#define ROW_BLOCK(MR, NPG)                                                                     \
    static FR_AVX2 void row_block_##MR(const rnn_packed *w, const float *in, ptrdiff_t ld_in, \
                                        float *out, ptrdiff_t ld_out)                          \
    {                                                                                          \
        const ptrdiff_t N = w->rows, K = w->cols, stride = K * RNN_PANEL;                      \
        const ptrdiff_t full_panels = N / RNN_PANEL, panels = (N + RNN_PANEL - 1) / RNN_PANEL; \
        ptrdiff_t p = 0;                                                                       \
        for (; p + NPG <= full_panels; p += NPG)                                               \
            tile_avx2(MR, NPG, w->data + p * stride, stride, K, in, ld_in,                     \
                      out + p * RNN_PANEL, ld_out, RNN_PANEL);                                 \
        for (; p < panels; p++)                                                                \
            tile_avx2(MR, 1, w->data + p * stride, stride, K, in, ld_in,                       \
                      out + p * RNN_PANEL, ld_out, N - p * RNN_PANEL);                         \
    }
/* registers: 2 * MR * NPG accumulators <= 12, plus 2 * NPG panel vectors and a broadcast */
ROW_BLOCK(1, 4)
ROW_BLOCK(2, 2)
ROW_BLOCK(3, 2)
ROW_BLOCK(4, 1)
ROW_BLOCK(5, 1)

/* MR rows on one panel (MR = 3..6): 2*MR accumulators */
#define PANEL_ROWS(MR)                                                                         \
    static FR_AVX2 void panel_rows_##MR(const float *panel, ptrdiff_t kb, const float *in,   \
                                         ptrdiff_t ld_in, float *out, ptrdiff_t ld_out,       \
                                         ptrdiff_t valid)                                     \
    {                                                                                          \
        tile_avx2(MR, 1, panel, 0, kb, in, ld_in, out, ld_out, valid);                         \
    }
PANEL_ROWS(3)
PANEL_ROWS(4)
PANEL_ROWS(5)
PANEL_ROWS(6)

/* With more than 6 rows K is cut into blocks of KC, so that a panel's block (KC x 16 floats =
 * 16 KiB) stays in L1 while every block of rows goes over it. */
#define KC 256
#define MC_AVX2 96

/* out (m, N) += in (m, K) @ W.T */
static FR_AVX2 void matmul_avx2(const rnn_packed *w, const float *in, ptrdiff_t ld_in,
                                 float *out, ptrdiff_t ld_out, ptrdiff_t m)
{
    const ptrdiff_t N = w->rows, K = w->cols, panels = (N + RNN_PANEL - 1) / RNN_PANEL;
    if (m <= 5) { /* one block of rows */
        switch (m) {
        case 1: row_block_1(w, in, ld_in, out, ld_out); break;
        case 2: row_block_2(w, in, ld_in, out, ld_out); break;
        case 3: row_block_3(w, in, ld_in, out, ld_out); break;
        case 4: row_block_4(w, in, ld_in, out, ld_out); break;
        default: row_block_5(w, in, ld_in, out, ld_out); break;
        }
        return;
    }
    /* rows in blocks of MC_AVX2 (their K block, 96 KiB, stays in L2 while every panel passes:
     * without it a 3200 x 512 -> 2048 input projection streamed all of its rows once per panel,
     * 56% of the AVX2 FMA peak, 64-75% with it, measured at the avx2 level of a Sapphire Rapids
     * class core); within, blocks of 6 rows; a remainder of 1..3 rows joins the last 6 and the two
     * split evenly (7 = 4 + 3, 8 = 4 + 4, 9 = 5 + 4), so every block has at least 3 rows */
    const ptrdiff_t kc_size = m > 6 ? KC : K;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += kc_size) {
        const ptrdiff_t kb = K - k0 < kc_size ? K - k0 : kc_size;
        for (ptrdiff_t m0 = 0, mb = 0; m0 < m; m0 += mb) {
            mb = m - m0 < MC_AVX2 + 6 ? m - m0 : MC_AVX2; /* (the last block: at least 6 rows) */
            ptrdiff_t n6 = mb / 6, tail1 = mb % 6, tail2 = 0;
            if (tail1 > 0 && tail1 < 4) {
                n6--;
                tail2 = (6 + tail1) / 2;
                tail1 = 6 + tail1 - tail2;
            }
            for (ptrdiff_t p = 0; p < panels; p++) {
                const float *panel = w->data + p * K * RNN_PANEL + k0 * RNN_PANEL;
                const ptrdiff_t valid = N - p * RNN_PANEL;
                const float *x = in + m0 * ld_in + k0;
                float *o = out + m0 * ld_out + p * RNN_PANEL;
                for (ptrdiff_t b = 0; b < n6; b++, x += 6 * ld_in, o += 6 * ld_out)
                    panel_rows_6(panel, kb, x, ld_in, o, ld_out, valid);
                for (int t = 0; t < 2; t++) {
                    const ptrdiff_t rows = t == 0 ? tail1 : tail2;
                    switch (rows) {
                    case 3: panel_rows_3(panel, kb, x, ld_in, o, ld_out, valid); break;
                    case 4: panel_rows_4(panel, kb, x, ld_in, o, ld_out, valid); break;
                    case 5: panel_rows_5(panel, kb, x, ld_in, o, ld_out, valid); break;
                    default: break;
                    }
                    x += rows * ld_in;
                    o += rows * ld_out;
                }
            }
        }
    }
}
#endif

#if FR_X86_SIMD
/* The AVX-512 micro-kernel: one panel row (16 outputs) is one zmm register. out (MR, NPG*16)
 * += in (MR, kb) @ NPG panels (kb, 16), MR*NPG accumulators (at most 24 of the 32 registers).
 * Every output is the same chain of FMAs over k as in tile_avx2 (starting from out, k in
 * increasing order), so both paths give the same bits. Only NPG == 1 handles a partial panel. */
static FR_AVX512_INLINE void tile_avx512(const int MR, const int NPG, const float *panel, ptrdiff_t panel_stride,
                                          ptrdiff_t kb, const float *in, ptrdiff_t ld_in, float *out,
                                          ptrdiff_t ld_out, ptrdiff_t valid)
{
    __m512 acc[12][4];
    const __mmask16 mask = valid >= RNN_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1u);
    FR_UNROLL for (int r = 0; r < MR; r++)
        FR_UNROLL for (int g = 0; g < NPG; g++)
            acc[r][g] = _mm512_maskz_loadu_ps(mask, out + r * ld_out + g * RNN_PANEL);
    for (ptrdiff_t k = 0; k < kb; k++) {
        __m512 wv[4];
        FR_UNROLL for (int g = 0; g < NPG; g++)
            wv[g] = _mm512_loadu_ps(panel + g * panel_stride + k * RNN_PANEL);
        FR_UNROLL for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(in[r * ld_in + k]);
            FR_UNROLL for (int g = 0; g < NPG; g++)
                acc[r][g] = _mm512_fmadd_ps(a, wv[g], acc[r][g]);
        }
    }
    FR_UNROLL for (int r = 0; r < MR; r++)
        FR_UNROLL for (int g = 0; g < NPG; g++)
            _mm512_mask_storeu_ps(out + r * ld_out + g * RNN_PANEL, mask, acc[r][g]);
}

/* tile_avx512 with literal MR (1..6) and NPG (4 full panels, or 1 possibly partial panel) */
#define TILE512_CASES(NPG, valid)                                                                   \
    switch (rows) {                                                                                    \
    case 1: tile_avx512(1, NPG, panel, stride, kb, x, ld_in, o, ld_out, valid); break;            \
    case 2: tile_avx512(2, NPG, panel, stride, kb, x, ld_in, o, ld_out, valid); break;            \
    case 3: tile_avx512(3, NPG, panel, stride, kb, x, ld_in, o, ld_out, valid); break;            \
    case 4: tile_avx512(4, NPG, panel, stride, kb, x, ld_in, o, ld_out, valid); break;            \
    case 5: tile_avx512(5, NPG, panel, stride, kb, x, ld_in, o, ld_out, valid); break;            \
    default: tile_avx512(6, NPG, panel, stride, kb, x, ld_in, o, ld_out, valid); break;           \
    }

/* out (m, N) += in (m, K) @ W.T. Up to 5 rows: one pass over the packed weights, the whole of K.
 * 6 to SMALL_M512 rows (a batched step): K in blocks of KC512_SMALL, all rows at once, each
 * group's (128, 64) weights in L1 while the rows pass. More rows (an all-steps projection):
 * K in blocks of KC512 and the rows in blocks of MC512; within them, for each group of
 * 4 panels, every block of 6 rows goes over the group's (kb, 64) weights (128 KiB at most: L2)
 * while they are hot. Measured on a Sapphire Rapids class core (one thread, % of the FMA peak):
 * KC 128 and no row blocks gave 65% at 64 x 512 -> 2048 and 51% at 3200 x 512 -> 2048 (the
 * input projection of a batch-64 call: every k block read and wrote all of the 26 MB output
 * again); KC 512, MC 192 give 67% and 69%. Copying each group's weights into a k-major slab
 * first (one stream instead of four) did not help there (59-64%). */
#define KC512 512
#define MC512 192
/* Batched steps kept the small K block: batchgen (64 rows, 512 and 1024 -> 2048) ran 5-6% more
 * tokens/s with it than with KC 512 (5 interleaved runs each, median 20.7K vs 19.6K tokens/s, one
 * thread, Sapphire Rapids class), lstm_b64 the same (187.5 vs 187.3 ms). */
#define KC512_SMALL 128
#define SMALL_M512 96
static FR_AVX512 void matmul_avx512(const rnn_packed *w, const float *in, ptrdiff_t ld_in,
                                     float *out, ptrdiff_t ld_out, ptrdiff_t m)
{
    const int small = m <= SMALL_M512;
    const ptrdiff_t N = w->rows, K = w->cols, kc = m <= 5 ? K : small ? KC512_SMALL : KC512;
    const ptrdiff_t mc = m <= 5 || small ? m : MC512;
    const ptrdiff_t full = N / RNN_PANEL, panels = (N + RNN_PANEL - 1) / RNN_PANEL, stride = K * RNN_PANEL;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += kc) {
        const ptrdiff_t kb = K - k0 < kc ? K - k0 : kc;
        for (ptrdiff_t m0 = 0; m0 < m; m0 += mc) {
            const ptrdiff_t m1 = m - m0 < mc ? m : m0 + mc;
            for (ptrdiff_t p = 0; p < panels;) {
                const int group = p + 4 <= full; /* 4 full panels, else one panel */
                const ptrdiff_t valid = N - p * RNN_PANEL;
                const float *panel = w->data + p * stride + k0 * RNN_PANEL;
                for (ptrdiff_t r0 = m0; r0 < m1; r0 += 6) {
                    const ptrdiff_t rows = m1 - r0 < 6 ? m1 - r0 : 6;
                    const float *x = in + r0 * ld_in + k0;
                    float *o = out + r0 * ld_out + p * RNN_PANEL;
                    if (group) {
                        TILE512_CASES(4, RNN_PANEL)
                    } else {
                        TILE512_CASES(1, valid)
                    }
                }
                p += group ? 4 : 1;
            }
        }
    }
}
#endif

void rnn_matmul_packed(const rnn_packed *w, const float *in, ptrdiff_t ld_in,
                       float *out, ptrdiff_t ld_out, ptrdiff_t m)
{
    if (m <= 0 || w->rows <= 0)
        return;
#if FR_X86_SIMD
    const int level = rnn_simd_enabled();
    if (level == RNN_SIMD_AVX512) {
        matmul_avx512(w, in, ld_in, out, ld_out, m);
        return;
    }
    if (level == RNN_SIMD_AVX2) {
        matmul_avx2(w, in, ld_in, out, ld_out, m);
        return;
    }
#endif
    matmul_plain(w, in, ld_in, out, ld_out, m);
}

/* ============================================================================================
 * 4. sequence plumbing
 * ========================================================================================== */

/* Everything a sequence call needs besides its arguments, allocated once per call. */
typedef struct {
    void *block;          /* the one malloc */
    rnn_rows rows;        /* rows by length, longest first; running h, c in that order */
    float *gates;         /* (B, G*H) one step's pre-activations */
    float *extra;         /* (B, H) LSTM: m = o * h(c'); GRU: W_hn h or W_hn (r * h) */
    float *extra2;        /* (B, H) GRU linear_before_reset = 0: r * h */
} workspace;

static size_t round_up16(size_t n) { return (n + 15) / 16 * 16; }

/* one malloc for all buffers, each 64-byte aligned; returns 0 or -1 */
static int workspace_alloc(workspace *ws, ptrdiff_t B, ptrdiff_t T, ptrdiff_t h_out, ptrdiff_t c_size,
                           ptrdiff_t gates, ptrdiff_t extra, ptrdiff_t extra2)
{
    const size_t ng = round_up16((size_t)(B * gates)), ne = round_up16((size_t)(B * extra));
    const size_t ne2 = round_up16((size_t)(B * extra2));
    ws->block = malloc(rnn_rows_bytes(B, T, h_out, c_size) + (ng + ne + ne2) * sizeof(float) + 64);
    if (!ws->block)
        return -1;
    char *p = (char *)(((uintptr_t)ws->block + 63) & ~(uintptr_t)63);
    ws->gates = (float *)rnn_rows_place(&ws->rows, p, B, T, h_out, c_size);
    ws->extra = ws->gates + ng;
    ws->extra2 = ws->extra + ne;
    return 0;
}

size_t rnn_rows_bytes(ptrdiff_t B, ptrdiff_t T, ptrdiff_t h_out, ptrdiff_t c_size)
{
    const size_t idx = round_up16((size_t)(2 * B + T + 1)); /* order, length, counting-sort counts */
    return idx * sizeof(ptrdiff_t) + (round_up16((size_t)(B * h_out)) + round_up16((size_t)(B * c_size))) * sizeof(float);
}

char *rnn_rows_place(rnn_rows *rows, char *p, ptrdiff_t B, ptrdiff_t T, ptrdiff_t h_out, ptrdiff_t c_size)
{
    rows->order = (ptrdiff_t *)p;
    rows->length = rows->order + B;
    rows->h_out = h_out;
    rows->c_size = c_size;
    rows->h = (float *)(p + round_up16((size_t)(2 * B + T + 1)) * sizeof(ptrdiff_t));
    rows->c = rows->h + round_up16((size_t)(B * h_out));
    return (char *)(rows->c + round_up16((size_t)(B * c_size)));
}

ptrdiff_t rnn_rows_begin(const rnn_sequence_io *io, rnn_rows *rows, const float *h, const float *c)
{
    const ptrdiff_t B = io->batch, T = io->steps, h_out = rows->h_out, H = rows->c_size;
    ptrdiff_t *count = rows->length + B; /* (T + 1,) counting sort, longest first, stable */
    for (ptrdiff_t l = 0; l <= T; l++)
        count[l] = 0;
    for (ptrdiff_t b = 0; b < B; b++) {
        const int64_t l = io->lengths[b];
        count[l < 0 ? 0 : (l > T ? T : l)]++; /* clamped for memory safety only */
    }
    for (ptrdiff_t l = T, start = 0; l >= 0; l--) {
        const ptrdiff_t n = count[l];
        count[l] = start;
        start += n;
    }
    for (ptrdiff_t b = 0; b < B; b++) {
        const int64_t l64 = io->lengths[b];
        const ptrdiff_t l = l64 < 0 ? 0 : (l64 > T ? T : (ptrdiff_t)l64);
        const ptrdiff_t i = count[l]++;
        rows->order[i] = b;
        rows->length[i] = l;
    }
    for (ptrdiff_t i = 0; i < B; i++) {
        const ptrdiff_t b = rows->order[i];
        memcpy(rows->h + i * h_out, h + b * h_out, (size_t)h_out * sizeof(float));
        if (c)
            memcpy(rows->c + i * H, c + b * H, (size_t)H * sizeof(float));
        for (ptrdiff_t t = rows->length[i]; t < T; t++)
            memset(io->y + (b * T + t) * io->y_cols + io->y_offset, 0, (size_t)h_out * sizeof(float));
    }
    return B > 0 ? rows->length[0] : 0;
}

ptrdiff_t rnn_rows_active(const rnn_rows *rows, ptrdiff_t n, ptrdiff_t s)
{
    while (n > 0 && rows->length[n - 1] <= s)
        n--;
    return n;
}

/* the time index of sorted row i at step s */
static ptrdiff_t step_time(const rnn_sequence_io *io, const rnn_rows *rows, ptrdiff_t i, ptrdiff_t s)
{
    return io->reverse ? rows->length[i] - 1 - s : s;
}

const float *rnn_rows_input(const rnn_sequence_io *io, const rnn_rows *rows, const float *xproj, ptrdiff_t width,
                            ptrdiff_t i, ptrdiff_t s)
{
    const ptrdiff_t bt = rows->order[i] * io->steps + step_time(io, rows, i, s);
    return xproj + (io->tokens ? (ptrdiff_t)io->tokens[bt] : bt) * width;
}

void rnn_rows_prefetch(const rnn_sequence_io *io, const rnn_rows *rows, const float *xproj, ptrdiff_t width,
                       ptrdiff_t n, ptrdiff_t s)
{
#if defined(__GNUC__) || defined(__clang__)
    if (!io->tokens) /* (B, T, G*H) rows: each row is read in order, the hardware prefetches it */
        return;
    for (ptrdiff_t i = 0; i < n && rows->length[i] > s; i++) {
        const char *row = (const char *)rnn_rows_input(io, rows, xproj, width, i, s);
        for (ptrdiff_t off = 0; off < width * (ptrdiff_t)sizeof(float); off += 64)
            __builtin_prefetch(row + off, 0, 2);
    }
#else
    (void)io, (void)rows, (void)xproj, (void)width, (void)n, (void)s;
#endif
}

void rnn_rows_store(const rnn_sequence_io *io, const rnn_rows *rows, ptrdiff_t n, ptrdiff_t s)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const ptrdiff_t b = rows->order[i], t = step_time(io, rows, i, s);
        memcpy(io->y + (b * io->steps + t) * io->y_cols + io->y_offset, rows->h + i * rows->h_out,
               (size_t)rows->h_out * sizeof(float));
    }
}

void rnn_rows_end(const rnn_sequence_io *io, const rnn_rows *rows, float *h, float *c)
{
    for (ptrdiff_t i = 0; i < io->batch; i++) {
        const ptrdiff_t b = rows->order[i];
        memcpy(h + b * rows->h_out, rows->h + i * rows->h_out, (size_t)rows->h_out * sizeof(float));
        if (c)
            memcpy(c + b * rows->c_size, rows->c + i * rows->c_size, (size_t)rows->c_size * sizeof(float));
    }
}

/* gates (n_active, width) <- every running row's input at step s */
static void load_xproj(const rnn_sequence_io *io, const workspace *ws, const float *xproj,
                       ptrdiff_t width, ptrdiff_t n_active, ptrdiff_t s)
{
    for (ptrdiff_t i = 0; i < n_active; i++)
        memcpy(ws->gates + i * width, rnn_rows_input(io, &ws->rows, xproj, width, i, s),
               (size_t)width * sizeof(float));
}

/* ============================================================================================
 * 5. cells
 * ========================================================================================== */

int rnn_sequence_f32(const rnn_sequence_io *io, const float *xproj, const rnn_packed *w_hh,
                     float *h, const rnn_cell *cell)
{
    const ptrdiff_t H = w_hh->rows;
    workspace ws;
    if (workspace_alloc(&ws, io->batch, io->steps, H, 0, H, 0, 0))
        return -1;
    const unsigned csr = rnn_denormals_off();
    const ptrdiff_t longest = rnn_rows_begin(io, &ws.rows, h, NULL);
    ptrdiff_t n_active = io->batch;
    for (ptrdiff_t s = 0; s < longest; s++) {
        n_active = rnn_rows_active(&ws.rows, n_active, s);
        load_xproj(io, &ws, xproj, H, n_active, s);
        rnn_rows_prefetch(io, &ws.rows, xproj, H, n_active, s + 1);
        rnn_matmul_packed(w_hh, ws.rows.h, H, ws.gates, H, n_active); /* a = xp + W_hh h */
        for (ptrdiff_t i = 0; i < n_active; i++) {               /* h' = f(a) */
            float *a = ws.gates + i * H;
            rnn_activate(&cell->act[0], cell->clip, a, H);
            memcpy(ws.rows.h + i * H, a, (size_t)H * sizeof(float));
        }
        rnn_rows_store(io, &ws.rows, n_active, s);
    }
    rnn_rows_end(io, &ws.rows, h, NULL);
    free(ws.block);
    rnn_denormals_restore(csr);
    return 0;
}

/* The generic LSTM pointwise part: any activations, clip, peepholes, input_forget. One
 * operation at a time over the n units; a is overwritten (the g block ends up holding h(c')). */
static void lstm_pointwise_any(float *a, ptrdiff_t a_stride, float *c, float *m, const float *peephole,
                               ptrdiff_t p_stride, const rnn_cell *cell, ptrdiff_t n)
{
    float *a_i = a, *a_f = a + a_stride, *a_g = a + 2 * a_stride, *a_o = a + 3 * a_stride;
    const rnn_activation *f = &cell->act[0], *g = &cell->act[1], *hact = &cell->act[2];
    if (peephole) { /* i = f(a_i + p_i c), ff = f(a_f + p_f c) */
        const float *p_i = peephole, *p_f = peephole + p_stride;
        for (ptrdiff_t j = 0; j < n; j++)
            a_i[j] += p_i[j] * c[j];
        if (!cell->input_forget)
            for (ptrdiff_t j = 0; j < n; j++)
                a_f[j] += p_f[j] * c[j];
    }
    rnn_activate(f, cell->clip, a_i, n);
    if (cell->input_forget) /* ff = 1 - i */
        for (ptrdiff_t j = 0; j < n; j++)
            a_f[j] = 1.0f - a_i[j];
    else
        rnn_activate(f, cell->clip, a_f, n);
    rnn_activate(g, cell->clip, a_g, n);
    for (ptrdiff_t j = 0; j < n; j++) /* c' = ff*c + i*g */
        c[j] = a_f[j] * c[j] + a_i[j] * a_g[j];
    if (peephole) { /* o = f(a_o + p_o c') */
        const float *p_o = peephole + 2 * p_stride;
        for (ptrdiff_t j = 0; j < n; j++)
            a_o[j] += p_o[j] * c[j];
    }
    rnn_activate(f, cell->clip, a_o, n);
    memcpy(a_g, c, (size_t)n * sizeof(float)); /* m = o * h(c'), not clipped */
    rnn_activate(hact, INFINITY, a_g, n);
    for (ptrdiff_t j = 0; j < n; j++)
        m[j] = a_o[j] * a_g[j];
}

#if FR_X86_SIMD
/* The usual cell (sigmoid, tanh, tanh; no clip, no input_forget; peepholes or not) in one
 * pass: each group of 8 (16) units goes through all four gates while it is in registers. Every
 * unit sees exactly the operations of lstm_pointwise_any, in the same order, so the bits are
 * the same. a is not written. */
static FR_AVX2 void lstm_pointwise_avx2(const float *a, ptrdiff_t a_stride, float *c, float *m,
                                         const float *peephole, ptrdiff_t p_stride, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j += 8) {
        const __m256i mask = fr_lanes8(n - j < 8 ? n - j : 8);
        __m256 a_i = _mm256_maskload_ps(a + j, mask), a_f = _mm256_maskload_ps(a + a_stride + j, mask);
        __m256 a_g = _mm256_maskload_ps(a + 2 * a_stride + j, mask);
        __m256 a_o = _mm256_maskload_ps(a + 3 * a_stride + j, mask), cv = _mm256_maskload_ps(c + j, mask);
        if (peephole) {
            a_i = _mm256_add_ps(a_i, _mm256_mul_ps(_mm256_maskload_ps(peephole + j, mask), cv));
            a_f = _mm256_add_ps(a_f, _mm256_mul_ps(_mm256_maskload_ps(peephole + p_stride + j, mask), cv));
        }
        const __m256 i = sigmoid_avx2(a_i), f = sigmoid_avx2(a_f), g = tanh_avx2(a_g);
        cv = _mm256_add_ps(_mm256_mul_ps(f, cv), _mm256_mul_ps(i, g)); /* c' = ff*c + i*g */
        if (peephole)
            a_o = _mm256_add_ps(a_o, _mm256_mul_ps(_mm256_maskload_ps(peephole + 2 * p_stride + j, mask), cv));
        _mm256_maskstore_ps(c + j, mask, cv);
        _mm256_maskstore_ps(m + j, mask, _mm256_mul_ps(sigmoid_avx2(a_o), tanh_avx2(cv)));
    }
}

static FR_AVX512 void lstm_pointwise_avx512(const float *a, ptrdiff_t a_stride, float *c, float *m,
                                             const float *peephole, ptrdiff_t p_stride, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j += 16) {
        const __mmask16 mask = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1u);
        __m512 a_i = _mm512_maskz_loadu_ps(mask, a + j), a_f = _mm512_maskz_loadu_ps(mask, a + a_stride + j);
        __m512 a_g = _mm512_maskz_loadu_ps(mask, a + 2 * a_stride + j);
        __m512 a_o = _mm512_maskz_loadu_ps(mask, a + 3 * a_stride + j), cv = _mm512_maskz_loadu_ps(mask, c + j);
        if (peephole) {
            a_i = _mm512_add_ps(a_i, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, peephole + j), cv));
            a_f = _mm512_add_ps(a_f, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, peephole + p_stride + j), cv));
        }
        const __m512 i = sigmoid_avx512(a_i), f = sigmoid_avx512(a_f), g = tanh_avx512(a_g);
        cv = _mm512_add_ps(_mm512_mul_ps(f, cv), _mm512_mul_ps(i, g));
        if (peephole)
            a_o = _mm512_add_ps(a_o, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, peephole + 2 * p_stride + j), cv));
        _mm512_mask_storeu_ps(c + j, mask, cv);
        _mm512_mask_storeu_ps(m + j, mask, _mm512_mul_ps(sigmoid_avx512(a_o), tanh_avx512(cv)));
    }
}
#endif

void rnn_lstm_pointwise(float *a, ptrdiff_t a_stride, float *c, float *m, const float *peephole,
                        ptrdiff_t p_stride, const rnn_cell *cell, ptrdiff_t n)
{
#if FR_X86_SIMD
    const int usual = cell->act[0].code == 0 && cell->act[1].code == 1 && cell->act[2].code == 1 &&
                      !(cell->clip < INFINITY) && !cell->input_forget;
    const int level = rnn_simd_enabled();
    if (usual && level == RNN_SIMD_AVX512) {
        lstm_pointwise_avx512(a, a_stride, c, m, peephole, p_stride, n);
        return;
    }
    if (usual && level == RNN_SIMD_AVX2) {
        lstm_pointwise_avx2(a, a_stride, c, m, peephole, p_stride, n);
        return;
    }
#endif
    lstm_pointwise_any(a, a_stride, c, m, peephole, p_stride, cell, n);
}

/* The generic GRU pointwise part after both matrix multiplies: any activation g, clip. */
static void gru_pointwise_any(float *n, const float *r, const float *z, const float *hn, const float *b_hn,
                              const float *h, float *h_new, const rnn_cell *cell, ptrdiff_t count)
{
    if (cell->linear_before_reset) { /* n = xp_n + r * (W_hn h + b_hn) */
        if (b_hn)
            for (ptrdiff_t j = 0; j < count; j++)
                n[j] = n[j] + r[j] * (hn[j] + b_hn[j]);
        else
            for (ptrdiff_t j = 0; j < count; j++)
                n[j] = n[j] + r[j] * hn[j];
    } else { /* n = xp_n + W_hn (r * h) + b_hn */
        if (b_hn)
            for (ptrdiff_t j = 0; j < count; j++)
                n[j] = (n[j] + hn[j]) + b_hn[j];
        else
            for (ptrdiff_t j = 0; j < count; j++)
                n[j] = n[j] + hn[j];
    }
    rnn_activate(&cell->act[1], cell->clip, n, count);
    for (ptrdiff_t j = 0; j < count; j++) /* h' = (1 - z) * n + z * h */
        h_new[j] = (1.0f - z[j]) * n[j] + z[j] * h[j];
}

#if FR_X86_SIMD
/* The usual candidate activation (tanh, no clip) in one pass: the operations of
 * gru_pointwise_any per unit, in the same order, so the same bits. n is not written. */
static FR_AVX2 void gru_pointwise_avx2(const float *n, const float *r, const float *z, const float *hn,
                                        const float *b_hn, const float *h, float *h_new, int lbr, ptrdiff_t count)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    for (ptrdiff_t j = 0; j < count; j += 8) {
        const __m256i mask = fr_lanes8(count - j < 8 ? count - j : 8);
        const __m256 rv = _mm256_maskload_ps(r + j, mask), zv = _mm256_maskload_ps(z + j, mask);
        __m256 a = _mm256_maskload_ps(n + j, mask), hv = _mm256_maskload_ps(hn + j, mask);
        const __m256 bv = b_hn ? _mm256_maskload_ps(b_hn + j, mask) : _mm256_setzero_ps();
        if (lbr)
            a = _mm256_add_ps(a, _mm256_mul_ps(rv, b_hn ? _mm256_add_ps(hv, bv) : hv));
        else
            a = b_hn ? _mm256_add_ps(_mm256_add_ps(a, hv), bv) : _mm256_add_ps(a, hv);
        const __m256 nv = tanh_avx2(a);
        const __m256 out = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(one, zv), nv),
                                         _mm256_mul_ps(zv, _mm256_maskload_ps(h + j, mask)));
        _mm256_maskstore_ps(h_new + j, mask, out);
    }
}

static FR_AVX512 void gru_pointwise_avx512(const float *n, const float *r, const float *z, const float *hn,
                                            const float *b_hn, const float *h, float *h_new, int lbr,
                                            ptrdiff_t count)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (ptrdiff_t j = 0; j < count; j += 16) {
        const __mmask16 mask = count - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - j)) - 1u);
        const __m512 rv = _mm512_maskz_loadu_ps(mask, r + j), zv = _mm512_maskz_loadu_ps(mask, z + j);
        __m512 a = _mm512_maskz_loadu_ps(mask, n + j), hv = _mm512_maskz_loadu_ps(mask, hn + j);
        const __m512 bv = b_hn ? _mm512_maskz_loadu_ps(mask, b_hn + j) : _mm512_setzero_ps();
        if (lbr)
            a = _mm512_add_ps(a, _mm512_mul_ps(rv, b_hn ? _mm512_add_ps(hv, bv) : hv));
        else
            a = b_hn ? _mm512_add_ps(_mm512_add_ps(a, hv), bv) : _mm512_add_ps(a, hv);
        const __m512 nv = tanh_avx512(a);
        const __m512 out = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(one, zv), nv),
                                         _mm512_mul_ps(zv, _mm512_maskz_loadu_ps(mask, h + j)));
        _mm512_mask_storeu_ps(h_new + j, mask, out);
    }
}
#endif

void rnn_gru_pointwise(float *n, const float *r, const float *z, const float *hn, const float *b_hn,
                       const float *h, float *h_new, const rnn_cell *cell, ptrdiff_t count)
{
#if FR_X86_SIMD
    const int usual = cell->act[1].code == 1 && !(cell->clip < INFINITY);
    const int level = rnn_simd_enabled();
    if (usual && level == RNN_SIMD_AVX512) {
        gru_pointwise_avx512(n, r, z, hn, b_hn, h, h_new, cell->linear_before_reset, count);
        return;
    }
    if (usual && level == RNN_SIMD_AVX2) {
        gru_pointwise_avx2(n, r, z, hn, b_hn, h, h_new, cell->linear_before_reset, count);
        return;
    }
#endif
    gru_pointwise_any(n, r, z, hn, b_hn, h, h_new, cell, count);
}

int lstm_sequence_f32(const rnn_sequence_io *io, const float *xproj, const rnn_lstm_weights *w,
                      float *h, float *c, const rnn_cell *cell)
{
    const ptrdiff_t G4 = w->w_hh.rows, H = G4 / 4, h_out = w->w_hh.cols;
    const int proj = w->w_hr.data != NULL;
    workspace ws;
    if (workspace_alloc(&ws, io->batch, io->steps, h_out, H, G4, proj ? H : 0, 0))
        return -1;
    const unsigned csr = rnn_denormals_off();
    const ptrdiff_t longest = rnn_rows_begin(io, &ws.rows, h, c);
    ptrdiff_t n_active = io->batch;
    for (ptrdiff_t s = 0; s < longest; s++) {
        n_active = rnn_rows_active(&ws.rows, n_active, s);
        load_xproj(io, &ws, xproj, G4, n_active, s);
        rnn_rows_prefetch(io, &ws.rows, xproj, G4, n_active, s + 1);
        rnn_matmul_packed(&w->w_hh, ws.rows.h, h_out, ws.gates, G4, n_active); /* a = xp + W_hh h */
        for (ptrdiff_t i = 0; i < n_active; i++) /* without projection, m is h' itself */
            rnn_lstm_pointwise(ws.gates + i * G4, H, ws.rows.c + i * H, proj ? ws.extra + i * H : ws.rows.h + i * h_out,
                               w->peephole, H, cell, H);
        if (proj) { /* h' = W_hr m */
            memset(ws.rows.h, 0, (size_t)(n_active * h_out) * sizeof(float));
            rnn_matmul_packed(&w->w_hr, ws.extra, H, ws.rows.h, h_out, n_active);
        }
        rnn_rows_store(io, &ws.rows, n_active, s);
    }
    rnn_rows_end(io, &ws.rows, h, c);
    free(ws.block);
    rnn_denormals_restore(csr);
    return 0;
}

int gru_sequence_f32(const rnn_sequence_io *io, const float *xproj, const rnn_gru_weights *w,
                     float *h, const rnn_cell *cell)
{
    const ptrdiff_t H = w->w_hh_n.rows, G3 = 3 * H;
    const int lbr = cell->linear_before_reset;
    workspace ws;
    if (workspace_alloc(&ws, io->batch, io->steps, H, 0, G3, H, lbr ? 0 : H))
        return -1;
    const unsigned csr = rnn_denormals_off();
    const ptrdiff_t longest = rnn_rows_begin(io, &ws.rows, h, NULL);
    ptrdiff_t n_active = io->batch;
    for (ptrdiff_t s = 0; s < longest; s++) {
        n_active = rnn_rows_active(&ws.rows, n_active, s);
        load_xproj(io, &ws, xproj, G3, n_active, s);
        rnn_rows_prefetch(io, &ws.rows, xproj, G3, n_active, s + 1);
        /* r = f(xp_r + W_hr h), z = f(xp_z + W_hz h) */
        rnn_matmul_packed(&w->w_hh_rz, ws.rows.h, H, ws.gates, G3, n_active);
        for (ptrdiff_t i = 0; i < n_active; i++)
            rnn_activate(&cell->act[0], cell->clip, ws.gates + i * G3, 2 * H);
        memset(ws.extra, 0, (size_t)(n_active * H) * sizeof(float));
        if (lbr) { /* extra = W_hn h */
            rnn_matmul_packed(&w->w_hh_n, ws.rows.h, H, ws.extra, H, n_active);
        } else { /* extra = W_hn (r * h) */
            for (ptrdiff_t i = 0; i < n_active; i++) {
                const float *r = ws.gates + i * G3, *hi = ws.rows.h + i * H;
                float *rh = ws.extra2 + i * H;
                for (ptrdiff_t j = 0; j < H; j++)
                    rh[j] = r[j] * hi[j];
            }
            rnn_matmul_packed(&w->w_hh_n, ws.extra2, H, ws.extra, H, n_active);
        }
        for (ptrdiff_t i = 0; i < n_active; i++) { /* n = g(...), h' = (1 - z) * n + z * h */
            float *a = ws.gates + i * G3, *hi = ws.rows.h + i * H;
            rnn_gru_pointwise(a + 2 * H, a, a + H, ws.extra + i * H, w->b_hn, hi, hi, cell, H);
        }
        rnn_rows_store(io, &ws.rows, n_active, s);
    }
    rnn_rows_end(io, &ws.rows, h, NULL);
    free(ws.block);
    rnn_denormals_restore(csr);
    return 0;
}
