/* generate_core.c — the compiled generation loop (declarations and contract: generate_core.h).
 *
 * Sections, in order:
 *   1. random numbers: SplitMix64
 *   2. logit processing and the sampler (repetition penalty, temperature, top-k, top-p, inverse CDF)
 *   3. the matrix multiply: float32 (rnn_core), float16 (F16C) or int8 weights
 *   4. workspace layout
 *   5. one recurrent layer for the rows being fed, and the output Dense
 *   6. the lockstep generation loop
 *
 * The sampler works in float64 and follows fastrnn/generate.py's NumPy reference operation by
 * operation (same sums in the same order), so the same logits and seed give the same token.
 */
#include "generate_core.h"
#include "cpu_features.h"
#include "spin_barrier.h"

#include <math.h>
#include <string.h>


/* ============================================================================================
 * 1. random numbers
 * ========================================================================================== */

double gen_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0); /* 2^-53 */
}

/* ============================================================================================
 * 2. logit processing and the sampler
 * ========================================================================================== */

/* the value at position idx of a (n,) sorted ascending; a is reordered (Hoare quickselect) */
static double select_nth(double *a, ptrdiff_t n, ptrdiff_t idx)
{
    ptrdiff_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const ptrdiff_t mid = lo + (hi - lo) / 2;
        double x = a[lo], y = a[mid], z = a[hi], pivot;
        if (x < y)
            pivot = y < z ? y : (x < z ? z : x);
        else
            pivot = x < z ? x : (y < z ? z : y);
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (i <= hi && a[i] < pivot)
                i++;
            while (j >= lo && a[j] > pivot)
                j--;
            if (i <= j) {
                double t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (idx <= j)
            hi = j;
        else if (idx >= i)
            lo = i;
        else
            return a[idx]; /* j < idx < i: equal to the pivot */
    }
    return a[idx];
}

/* max-heap of indices keyed by key[]: move heap[at] down to its place among n entries */
static void sift_down(ptrdiff_t *heap, ptrdiff_t n, ptrdiff_t at, const double *key)
{
    const ptrdiff_t item = heap[at];
    for (;;) {
        ptrdiff_t child = 2 * at + 1;
        if (child >= n)
            break;
        if (child + 1 < n && key[heap[child + 1]] > key[heap[child]])
            child++;
        if (key[heap[child]] <= key[item])
            break;
        heap[at] = heap[child];
        at = child;
    }
    heap[at] = item;
}

void gen_process_logits(const float *logits, const uint8_t *seen, ptrdiff_t V, const gen_sampling *s,
                        gen_sample_scratch *w)
{
    double *y = w->y, *e = w->e;
    const double penalty = s->repetition_penalty, T = s->temperature;
    /* repetition penalty (CTRL): a seen token's positive logit / penalty, negative * penalty */
    for (ptrdiff_t i = 0; i < V; i++) {
        double x = (double)logits[i];
        if (seen && penalty != 1.0 && seen[i])
            x = x > 0.0 ? x / penalty : x * penalty;
        y[i] = x;
    }
    if (T == 0.0) /* greedy: the penalised logits are all that matters */
        return;
    /* temperature: y = (x - max x) / T  (the shift keeps exp finite for a tiny T) */
    double top = y[0];
    for (ptrdiff_t i = 1; i < V; i++)
        if (y[i] > top)
            top = y[i];
    for (ptrdiff_t i = 0; i < V; i++)
        y[i] = (y[i] - top) / T;
    /* top-k: keep y >= the k-th largest (ties kept) */
    if (s->top_k > 0 && s->top_k < V) {
        memcpy(w->tmp, y, (size_t)V * sizeof(double));
        const double kth = select_nth(w->tmp, V, V - s->top_k);
        for (ptrdiff_t i = 0; i < V; i++)
            if (y[i] < kth)
                y[i] = -INFINITY;
    }
    double Z = 0.0; /* in index order, like the reference's cumsum */
    for (ptrdiff_t i = 0; i < V; i++) {
        e[i] = exp(y[i]);
        Z += e[i];
    }
    /* top-p: walk the tokens by decreasing e; the first whose running sum reaches p * Z is the
     * last kept (with its ties); if rounding never reaches it, everything stays */
    if (s->top_p < 1.0) {
        const double target = s->top_p * Z;
        ptrdiff_t n = 0;
        for (ptrdiff_t i = 0; i < V; i++)
            if (e[i] > 0.0)
                w->heap[n++] = i;
        for (ptrdiff_t at = n / 2 - 1; at >= 0; at--)
            sift_down(w->heap, n, at, e);
        double cum = 0.0, threshold = -1.0;
        while (n > 0) {
            const ptrdiff_t best = w->heap[0];
            cum += e[best];
            if (cum >= target) {
                threshold = e[best];
                break;
            }
            w->heap[0] = w->heap[--n];
            sift_down(w->heap, n, 0, e);
        }
        if (threshold > 0.0)
            for (ptrdiff_t i = 0; i < V; i++)
                if (e[i] < threshold) {
                    e[i] = 0.0;
                    y[i] = -INFINITY;
                }
    }
}

int32_t gen_sample_token(const float *logits, const uint8_t *seen, ptrdiff_t V, const gen_sampling *s,
                         uint64_t *rng, gen_sample_scratch *w)
{
    gen_process_logits(logits, seen, V, s, w);
    const double *y = w->y, *e = w->e;
    if (s->temperature == 0.0) { /* greedy: the first largest */
        ptrdiff_t best = 0;
        for (ptrdiff_t i = 1; i < V; i++)
            if (y[i] > y[best])
                best = i;
        return (int32_t)best;
    }
    /* inverse CDF: the first token whose running sum exceeds u * (sum of e) */
    const double u = gen_uniform(rng);
    double total = 0.0;
    for (ptrdiff_t i = 0; i < V; i++)
        total += e[i];
    const double target = u * total;
    double cum = 0.0;
    ptrdiff_t last = 0;
    for (ptrdiff_t i = 0; i < V; i++) {
        if (e[i] > 0.0) {
            cum += e[i];
            last = i;
            if (cum > target)
                return (int32_t)i;
        }
    }
    return (int32_t)last; /* u * total rounded up to total: the last token with weight */
}

/* ============================================================================================
 * 3. the matrix multiply
 * ========================================================================================== */

#if FR_X86_SIMD
static int half_state = -1; /* -1: not decided, 0: no F16C, 1: F16C */

static int q8_state = -1; /* -1: not decided, 0/1: AVX-512 VNNI (vpdpwssd) for the int8 form */

static int q8_vnni512(void)
{
    if (q8_state < 0)
        q8_state = fr_cpu_has(FR_HAS_AVX512_VNNI);
    return q8_state;
}

static int half_supported(void)
{
    if (half_state < 0)
        half_state = fr_cpu_has(FR_HAS_F16C);
    return half_state && rnn_simd_enabled(); /* rnn_select_simd(0) turns this path off too */
}

/* out (MR, NPG*16) += in (MR, K) @ NPG half panels, each (K, 16): for every k, the panel rows
 * are converted to floats and fused-multiply-added into accumulators that were loaded from out,
 * k = 0 .. K-1 in order: the chain rnn_core's AVX2 kernel computes for the same values.
 * Only NPG == 1 handles a partial last panel (valid < 16). */
static FR_F16C_INLINE void half_tile(const int MR, const int NPG, const uint16_t *panel, ptrdiff_t panel_stride,
                                      ptrdiff_t K, const float *in, ptrdiff_t ld_in, float *out, ptrdiff_t ld_out,
                                      ptrdiff_t valid)
{
    __m256 acc[4][8];
    for (int r = 0; r < MR; r++)
        for (int g = 0; g < NPG; g++)
            fr_load16(out + r * ld_out + g * RNN_PANEL, valid, &acc[r][2 * g], &acc[r][2 * g + 1]);
    for (ptrdiff_t k = 0; k < K; k++) {
        __m256 wv[8];
        for (int g = 0; g < NPG; g++) {
            const __m256i both = _mm256_loadu_si256((const __m256i *)(panel + g * panel_stride + k * RNN_PANEL));
            wv[2 * g] = _mm256_cvtph_ps(_mm256_castsi256_si128(both));
            wv[2 * g + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(both, 1));
        }
        for (int r = 0; r < MR; r++) {
            const __m256 a = _mm256_broadcast_ss(in + r * ld_in + k);
            for (int v = 0; v < 2 * NPG; v++)
                acc[r][v] = _mm256_fmadd_ps(a, wv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int g = 0; g < NPG; g++)
            fr_store16(out + r * ld_out + g * RNN_PANEL, valid, acc[r][2 * g], acc[r][2 * g + 1]);
}

/* MR rows over every panel: NPG panels at a time while whole groups fit, then one at a time */
#define HALF_ROWS(MR, NPG)                                                                        \
    static FR_F16C void half_rows_##MR(const gen_matrix *w, const float *in, ptrdiff_t ld_in, float *out, \
                                        ptrdiff_t ld_out)                                         \
    {                                                                                             \
        const ptrdiff_t N = w->f32.rows, K = w->f32.cols, stride = K * RNN_PANEL;                 \
        const ptrdiff_t full_panels = N / RNN_PANEL, panels = (N + RNN_PANEL - 1) / RNN_PANEL;    \
        ptrdiff_t p = 0;                                                                          \
        for (; p + NPG <= full_panels; p += NPG)                                                  \
            half_tile(MR, NPG, w->half + p * stride, stride, K, in, ld_in, out + p * RNN_PANEL, ld_out, \
                      RNN_PANEL);                                                                 \
        for (; p < panels; p++)                                                                   \
            half_tile(MR, 1, w->half + p * stride, stride, K, in, ld_in, out + p * RNN_PANEL, ld_out, \
                      N - p * RNN_PANEL);                                                         \
    }
HALF_ROWS(1, 4)
HALF_ROWS(2, 2)
HALF_ROWS(3, 2)
HALF_ROWS(4, 1)

/* int8: acc (MR, NPG*16) int32 = q (NPG pair panels) @ xq (MR, K2) int16, exact; then
 * out = out + float(acc) * (scale * xs[r]). One vpmaddwd per 8 outputs and pair of inputs. */
static FR_F16C_INLINE void int8_tile(const int MR, const int NPG, const int8_t *panel, ptrdiff_t panel_stride,
                                      ptrdiff_t K2, const int16_t *xq, const float *xs, float *out,
                                      ptrdiff_t ld_out, ptrdiff_t valid, const float *scale)
{
    __m256i acc[4][8];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < 2 * NPG; v++)
            acc[r][v] = _mm256_setzero_si256();
    for (ptrdiff_t k2 = 0; k2 < K2 / 2; k2++) {
        __m256i wv[8];
        for (int g = 0; g < NPG; g++) {
            const int8_t *p = panel + g * panel_stride + k2 * 2 * RNN_PANEL;
            wv[2 * g] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
            wv[2 * g + 1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16)));
        }
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, xq + r * K2 + 2 * k2, sizeof pair);
            const __m256i xp = _mm256_set1_epi32(pair);
            for (int v = 0; v < 2 * NPG; v++)
                acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(wv[v], xp));
        }
    }
    for (int r = 0; r < MR; r++) {
        const __m256 sx = _mm256_set1_ps(xs[r]);
        for (int g = 0; g < NPG; g++) {
            float *o = out + r * ld_out + g * RNN_PANEL;
            const __m256 w0 = _mm256_mul_ps(_mm256_loadu_ps(scale + g * RNN_PANEL), sx);
            const __m256 w1 = _mm256_mul_ps(_mm256_loadu_ps(scale + g * RNN_PANEL + 8), sx);
            __m256 o0, o1;
            fr_load16(o, valid, &o0, &o1);
            fr_store16(o, valid, _mm256_add_ps(o0, _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][2 * g]), w0)),
                       _mm256_add_ps(o1, _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][2 * g + 1]), w1)));
        }
    }
}

/* MR rows over every panel of an int8 matrix */
#define INT8_ROWS(MR, NPG)                                                                        \
    static FR_F16C void int8_rows_##MR(const gen_matrix *w, const int16_t *xq, const float *xs, float *out, \
                                        ptrdiff_t ld_out)                                         \
    {                                                                                             \
        const ptrdiff_t N = w->f32.rows, K2 = (w->f32.cols + 1) / 2 * 2, stride = K2 * RNN_PANEL; \
        const ptrdiff_t full_panels = N / RNN_PANEL, panels = (N + RNN_PANEL - 1) / RNN_PANEL;    \
        ptrdiff_t p = 0;                                                                          \
        for (; p + NPG <= full_panels; p += NPG)                                                  \
            int8_tile(MR, NPG, w->q8 + p * stride, stride, K2, xq, xs, out + p * RNN_PANEL, ld_out, RNN_PANEL, \
                      w->scale + p * RNN_PANEL);                                                  \
        for (; p < panels; p++)                                                                   \
            int8_tile(MR, 1, w->q8 + p * stride, stride, K2, xq, xs, out + p * RNN_PANEL, ld_out, \
                      N - p * RNN_PANEL, w->scale + p * RNN_PANEL);                               \
    }
INT8_ROWS(1, 4)
INT8_ROWS(2, 2)
INT8_ROWS(3, 2)
INT8_ROWS(4, 1)

/* many rows: panel by panel, so that a panel stays in L1 while every block of rows reads it */
static FR_F16C void int8_many(const gen_matrix *w, const int16_t *xq, const float *xs, float *out,
                               ptrdiff_t ld_out, ptrdiff_t m)
{
    const ptrdiff_t N = w->f32.rows, K2 = (w->f32.cols + 1) / 2 * 2, stride = K2 * RNN_PANEL;
    const ptrdiff_t panels = (N + RNN_PANEL - 1) / RNN_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++) {
        const int8_t *panel = w->q8 + p * stride;
        const ptrdiff_t valid = N - p * RNN_PANEL < RNN_PANEL ? N - p * RNN_PANEL : RNN_PANEL;
        const float *scale = w->scale + p * RNN_PANEL;
        float *o = out + p * RNN_PANEL;
        ptrdiff_t r = 0;
        for (; r + 4 <= m; r += 4)
            int8_tile(4, 1, panel, stride, K2, xq + r * K2, xs + r, o + r * ld_out, ld_out, valid, scale);
        switch (m - r) {
        case 1: int8_tile(1, 1, panel, stride, K2, xq + r * K2, xs + r, o + r * ld_out, ld_out, valid, scale); break;
        case 2: int8_tile(2, 1, panel, stride, K2, xq + r * K2, xs + r, o + r * ld_out, ld_out, valid, scale); break;
        case 3: int8_tile(3, 1, panel, stride, K2, xq + r * K2, xs + r, o + r * ld_out, ld_out, valid, scale); break;
        default: break;
        }
    }
}

/* AVX-512 VNNI: the same integers with vpdpwssd (int16 pairs times int16 pairs, summed into
 * int32, exact: |acc| stays below 2^31 by gen_int8_xmax) on 16 outputs per zmm; a panel's pair
 * of inputs is 32 bytes, widened to int16 once (vpmovsxbw) and used by every row. Three times
 * fewer instructions per weight byte than the AVX2 tile, which a batch-1 step is bound by. The
 * float epilogue is the AVX2 tile's operations, lane by lane: the same bits. */
static FR_AVX512VNNI_INLINE __m512i dpwssd512(__m512i acc, __m512i a, __m512i b)
{
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); /* any zmm (see int8_core.c) */
    return acc;
#else
    return _mm512_dpwssd_epi32(acc, a, b);
#endif
}

static FR_AVX512VNNI_INLINE void int8_store512(__m512i acc, const float *scale, float xs_r, float *o, ptrdiff_t valid)
{
    const __mmask16 mask = valid >= RNN_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1u);
    const __m512 ws = _mm512_mul_ps(_mm512_loadu_ps(scale), _mm512_set1_ps(xs_r));
    const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), ws);
    _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), t));
}

/* MR rows (<= 4) times NPG panels (<= 8 for one row, else <= 4), accumulators c<row><panel>
 * (named: see int8_core.c's tile); `valid` outputs of the last panel (the others are whole) */
#define Q8_W(g) (NPG > g ? _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(pk + g * panel_stride))) : zero)
#define Q8_ROW(r)                                                                                  \
    if (MR > r) {                                                                                  \
        int32_t pair;                                                                              \
        memcpy(&pair, xq + r * K2 + 2 * k2, sizeof pair);                                          \
        const __m512i x = _mm512_set1_epi32(pair);                                                 \
        c##r##0 = dpwssd512(c##r##0, w0, x);                                                       \
        if (NPG > 1) c##r##1 = dpwssd512(c##r##1, w1, x);                                          \
        if (NPG > 2) c##r##2 = dpwssd512(c##r##2, w2, x);                                          \
        if (NPG > 3) c##r##3 = dpwssd512(c##r##3, w3, x);                                          \
    }
#define Q8_OUT(r, g)                                                                               \
    if (MR > r && NPG > g)                                                                         \
        int8_store512(c##r##g, scale + g * RNN_PANEL, xs[r], out + r * ld_out + g * RNN_PANEL,    \
                      g == NPG - 1 ? valid : RNN_PANEL);
static FR_AVX512VNNI_INLINE void int8_tile512(const int MR, const int NPG, const int8_t *panel, ptrdiff_t panel_stride,
                                              ptrdiff_t K2, const int16_t *xq, const float *xs, float *out,
                                              ptrdiff_t ld_out, ptrdiff_t valid, const float *scale)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i c00 = zero, c01 = zero, c02 = zero, c03 = zero, c04 = zero, c05 = zero, c06 = zero, c07 = zero;
    __m512i c10 = zero, c11 = zero, c12 = zero, c13 = zero, c20 = zero, c21 = zero, c22 = zero, c23 = zero;
    __m512i c30 = zero, c31 = zero, c32 = zero, c33 = zero;
    for (ptrdiff_t k2 = 0; k2 < K2 / 2; k2++) {
        const int8_t *pk = panel + k2 * 2 * RNN_PANEL;
        const __m512i w0 = Q8_W(0), w1 = Q8_W(1), w2 = Q8_W(2), w3 = Q8_W(3);
        Q8_ROW(0) Q8_ROW(1) Q8_ROW(2) Q8_ROW(3)
        if (MR == 1 && NPG > 4) { /* one row: four more panels */
            int32_t pair;
            memcpy(&pair, xq + 2 * k2, sizeof pair);
            const __m512i x = _mm512_set1_epi32(pair);
            c04 = dpwssd512(c04, Q8_W(4), x);
            if (NPG > 5) c05 = dpwssd512(c05, Q8_W(5), x);
            if (NPG > 6) c06 = dpwssd512(c06, Q8_W(6), x);
            if (NPG > 7) c07 = dpwssd512(c07, Q8_W(7), x);
        }
    }
    Q8_OUT(0, 0) Q8_OUT(0, 1) Q8_OUT(0, 2) Q8_OUT(0, 3) Q8_OUT(0, 4) Q8_OUT(0, 5) Q8_OUT(0, 6) Q8_OUT(0, 7)
    Q8_OUT(1, 0) Q8_OUT(1, 1) Q8_OUT(1, 2) Q8_OUT(1, 3)
    Q8_OUT(2, 0) Q8_OUT(2, 1) Q8_OUT(2, 2) Q8_OUT(2, 3)
    Q8_OUT(3, 0) Q8_OUT(3, 1) Q8_OUT(3, 2) Q8_OUT(3, 3)
}

/* m rows over every panel: groups of NPG_BIG panels (8 for one row, else 4), then one panel at a
 * time; rows in blocks of 4 */
#define Q8_CASES(NPG)                                                                              \
    switch (mr) {                                                                                  \
    case 1: int8_tile512(1, NPG, pn, stride, K2, x, s, o, ld_out, valid, sc); break;              \
    case 2: int8_tile512(2, NPG > 4 ? 4 : NPG, pn, stride, K2, x, s, o, ld_out, valid, sc); break; \
    case 3: int8_tile512(3, NPG > 4 ? 4 : NPG, pn, stride, K2, x, s, o, ld_out, valid, sc); break; \
    default: int8_tile512(4, NPG > 4 ? 4 : NPG, pn, stride, K2, x, s, o, ld_out, valid, sc); break; \
    }
static FR_AVX512VNNI void int8_vnni512(const gen_matrix *w, const int16_t *xq, const float *xs, float *out,
                                       ptrdiff_t ld_out, ptrdiff_t m)
{
    const ptrdiff_t N = w->f32.rows, K2 = (w->f32.cols + 1) / 2 * 2, stride = K2 * RNN_PANEL;
    const ptrdiff_t full_panels = N / RNN_PANEL, panels = (N + RNN_PANEL - 1) / RNN_PANEL;
    const ptrdiff_t group = m == 1 ? 8 : 4;
    for (ptrdiff_t r = 0; r < m; r += 4) {
        const ptrdiff_t mr = m - r < 4 ? m - r : 4;
        const int16_t *x = xq + r * K2;
        const float *s = xs + r;
        ptrdiff_t p = 0;
        for (; p + group <= full_panels; p += group) {
            const int8_t *pn = w->q8 + p * stride;
            const float *sc = w->scale + p * RNN_PANEL;
            float *o = out + r * ld_out + p * RNN_PANEL;
            const ptrdiff_t valid = RNN_PANEL;
            if (group == 8) {
                Q8_CASES(8)
            } else {
                Q8_CASES(4)
            }
        }
        for (; p < panels; p++) {
            const int8_t *pn = w->q8 + p * stride;
            const float *sc = w->scale + p * RNN_PANEL;
            float *o = out + r * ld_out + p * RNN_PANEL;
            const ptrdiff_t valid = N - p * RNN_PANEL < RNN_PANEL ? N - p * RNN_PANEL : RNN_PANEL;
            Q8_CASES(1)
        }
    }
}
#endif

int32_t gen_int8_xmax(ptrdiff_t K)
{
    const ptrdiff_t K2 = (K + 1) / 2 * 2;
    const int64_t limit = (int64_t)2147483647 / (127 * (int64_t)(K2 > 0 ? K2 : 1));
    return (int32_t)(limit < 32767 ? limit : 32767);
}

/* x (K,) -> q (K,) int16 and its scale s: s = max|x| / xmax, q = clamp(rint(x / s)) (0 if s = 0) */
static float quantize_plain(const float *x, ptrdiff_t K, float xmax, int16_t *q)
{
    float top = 0.0f;
    for (ptrdiff_t k = 0; k < K; k++) {
        const float a = fabsf(x[k]);
        top = a > top ? a : top;
    }
    const float s = top / xmax;
    for (ptrdiff_t k = 0; k < K; k++) {
        float v = s > 0.0f ? rintf(x[k] / s) : 0.0f;
        v = v > xmax ? xmax : (v < -xmax ? -xmax : v);
        q[k] = (int16_t)v;
    }
    return s;
}

#if FR_X86_SIMD
/* the same numbers, 16 at a time (the division and the rounding are exact IEEE operations) */
static FR_F16C float quantize_avx2(const float *x, ptrdiff_t K, float xmax, int16_t *q)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vtop = _mm256_setzero_ps();
    ptrdiff_t k = 0;
    for (; k + 8 <= K; k += 8)
        vtop = _mm256_max_ps(vtop, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
    float lanes_top[8], top = 0.0f;
    _mm256_storeu_ps(lanes_top, vtop);
    for (int j = 0; j < 8; j++)
        top = lanes_top[j] > top ? lanes_top[j] : top;
    for (; k < K; k++) {
        const float a = fabsf(x[k]);
        top = a > top ? a : top;
    }
    const float s = top / xmax;
    if (!(s > 0.0f)) {
        memset(q, 0, (size_t)K * sizeof(int16_t));
        return s;
    }
    const __m256 vs = _mm256_set1_ps(s), hi = _mm256_set1_ps(xmax), lo = _mm256_set1_ps(-xmax);
    for (k = 0; k + 16 <= K; k += 16) {
        __m256 a = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 b = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k + 8), vs),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        a = _mm256_min_ps(hi, _mm256_max_ps(lo, a));
        b = _mm256_min_ps(hi, _mm256_max_ps(lo, b));
        const __m256i packed = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
        _mm256_storeu_si256((__m256i *)(q + k), _mm256_permute4x64_epi64(packed, 0xD8));
    }
    for (; k < K; k++) {
        float v = rintf(x[k] / s);
        v = v > xmax ? xmax : (v < -xmax ? -xmax : v);
        q[k] = (int16_t)v;
    }
    return s;
}
#endif

/* xq (m, K2) int16, xs (m,) <- the int8 form's quantization of in (m, K) */
static void quantize_rows(const float *in, ptrdiff_t ld_in, ptrdiff_t m, ptrdiff_t K, int16_t *xq, float *xs)
{
    const ptrdiff_t K2 = (K + 1) / 2 * 2;
    const float xmax = (float)gen_int8_xmax(K);
    for (ptrdiff_t r = 0; r < m; r++) {
        int16_t *q = xq + r * K2;
#if FR_X86_SIMD
        if (rnn_simd_enabled())
            xs[r] = quantize_avx2(in + r * ld_in, K, xmax, q);
        else
#endif
            xs[r] = quantize_plain(in + r * ld_in, K, xmax, q);
        if (K2 > K)
            q[K] = 0;
    }
}

/* out (m, N) += int8 W @ in, plain C: the same integers, the same two float operations */
static void int8_plain(const gen_matrix *w, const int16_t *xq, const float *xs, float *out, ptrdiff_t ld_out,
                       ptrdiff_t m)
{
    const ptrdiff_t N = w->f32.rows, K2 = (w->f32.cols + 1) / 2 * 2, panels = (N + RNN_PANEL - 1) / RNN_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++) {
        const int8_t *panel = w->q8 + p * K2 * RNN_PANEL;
        const ptrdiff_t n0 = p * RNN_PANEL, valid = N - n0 < RNN_PANEL ? N - n0 : RNN_PANEL;
        for (ptrdiff_t r = 0; r < m; r++) {
            int32_t acc[RNN_PANEL] = {0};
            const int16_t *x = xq + r * K2;
            for (ptrdiff_t k2 = 0; k2 < K2 / 2; k2++)
                for (int j = 0; j < RNN_PANEL; j++)
                    acc[j] += panel[(k2 * RNN_PANEL + j) * 2] * x[2 * k2] +
                              panel[(k2 * RNN_PANEL + j) * 2 + 1] * x[2 * k2 + 1];
            float *o = out + r * ld_out + n0;
            for (ptrdiff_t j = 0; j < valid; j++) {
                const float ws = w->scale[n0 + j] * xs[r];
                const float t = (float)acc[j] * ws;
                o[j] = o[j] + t;
            }
        }
    }
}

void gen_matmul(const gen_matrix *w, const float *in, ptrdiff_t ld_in, float *out, ptrdiff_t ld_out, ptrdiff_t m,
                int16_t *xq, float *xs)
{
    if (m <= 0 || w->f32.rows <= 0)
        return;
    if (w->q8) {
        quantize_rows(in, ld_in, m, w->f32.cols, xq, xs);
#if FR_X86_SIMD
        if (rnn_simd_enabled() >= RNN_SIMD_AVX512 && q8_vnni512()) {
            int8_vnni512(w, xq, xs, out, ld_out, m);
            return;
        }
        if (rnn_simd_enabled()) {
            switch (m) {
            case 1: int8_rows_1(w, xq, xs, out, ld_out); break;
            case 2: int8_rows_2(w, xq, xs, out, ld_out); break;
            case 3: int8_rows_3(w, xq, xs, out, ld_out); break;
            case 4: int8_rows_4(w, xq, xs, out, ld_out); break;
            default: int8_many(w, xq, xs, out, ld_out, m); break;
            }
            return;
        }
#endif
        int8_plain(w, xq, xs, out, ld_out, m);
        return;
    }
#if FR_X86_SIMD
    if (w->half && m <= GEN_SMALL_ROWS && half_supported()) {
        switch (m) {
        case 1: half_rows_1(w, in, ld_in, out, ld_out); return;
        case 2: half_rows_2(w, in, ld_in, out, ld_out); return;
        case 3: half_rows_3(w, in, ld_in, out, ld_out); return;
        default: half_rows_4(w, in, ld_in, out, ld_out); return;
        }
    }
#endif
    rnn_matmul_packed(&w->f32, in, ld_in, out, ld_out, m);
}

/* ============================================================================================
 * 4. workspace layout
 * ========================================================================================== */

typedef struct {
    float *xin;        /* (B, k_max) gathered matmul inputs */
    float *gates;      /* (B, g_max) one step's pre-activations */
    float *ext1;       /* (B, x_max) GRU W_hn h (+ b_hn); LSTM m before the projection */
    float *ext2;       /* (B, x_max) GRU r * h; LSTM projected h */
    float *dense_out;  /* (B, V) */
    int16_t *xq;       /* (B, k2_max) int8 form: quantized inputs */
    float *xs;         /* (B,) their scales */
    ptrdiff_t *rows;   /* (B,) rows fed this step */
    ptrdiff_t *lrows;  /* (B,) rows that compute logits this step */
    int32_t *inputs;   /* (B,) their input tokens */
    gen_sample_scratch sampler;
    ptrdiff_t k_max, g_max;
} workspace;

static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

/* sizes (and, when base != NULL, pointers) of the workspace; returns the total bytes */
static size_t layout(const gen_model *m, ptrdiff_t B, workspace *w, char *base)
{
    ptrdiff_t k_max = 1, g_max = 1, x_max = 1;
    for (ptrdiff_t l = 0; l < m->n_layers; l++) {
        const gen_layer *L = &m->layers[l];
        const ptrdiff_t G = L->cell == GEN_LSTM ? 4 : (L->cell == GEN_GRU ? 3 : 1);
        const ptrdiff_t k = L->input_size + L->output_size;
        k_max = k > k_max ? k : k_max;
        g_max = G * L->hidden_size > g_max ? G * L->hidden_size : g_max;
        x_max = L->hidden_size > x_max ? L->hidden_size : x_max;
        x_max = L->output_size > x_max ? L->output_size : x_max;
    }
    const ptrdiff_t V = m->vocab_size;
    size_t off = 0;
#define TAKE(field, type, count)                                  \
    do {                                                          \
        if (base)                                                 \
            w->field = (type *)(base + off);                      \
        off += align64((size_t)(count) * sizeof(type));           \
    } while (0)
    TAKE(xin, float, B * k_max);
    TAKE(gates, float, B * g_max);
    TAKE(ext1, float, B * x_max);
    TAKE(ext2, float, B * x_max);
    TAKE(dense_out, float, B * V);
    TAKE(xq, int16_t, B * ((k_max > x_max ? k_max : x_max) + 1));
    TAKE(xs, float, B);
    TAKE(rows, ptrdiff_t, B);
    TAKE(lrows, ptrdiff_t, B);
    TAKE(inputs, int32_t, B);
    TAKE(sampler.y, double, V);
    TAKE(sampler.e, double, V);
    TAKE(sampler.tmp, double, V);
    TAKE(sampler.heap, ptrdiff_t, V);
#undef TAKE
    if (base) {
        w->k_max = k_max;
        w->g_max = g_max;
    }
    return off;
}

size_t gen_workspace_bytes(const gen_model *m, ptrdiff_t batch)
{
    return layout(m, batch, NULL, NULL);
}

/* ============================================================================================
 * 5. one layer, and the output Dense
 * ========================================================================================== */

/* Denormals are flushed to zero while the layers run (rnn_denormals_off), restored before the
 * sampler so that its float64 arithmetic is the reference's. */

/* layer L for the n rows in w->rows (inputs w->inputs); prev = the layer below or NULL */
static void layer_step(const gen_model *m, const gen_layer *L, const gen_layer *prev, float *state,
                       workspace *w, ptrdiff_t n)
{
    const ptrdiff_t S = m->state_size, H = L->hidden_size, H_out = L->output_size;
    const ptrdiff_t I = prev ? L->input_size : 0, K = I + H_out;
    const ptrdiff_t G = L->cell == GEN_LSTM ? 4 : (L->cell == GEN_GRU ? 3 : 1), NG = G * H;
    const ptrdiff_t NA = L->w_a.f32.rows;
    /* gates <- W_ih x + biases: a table row for the first layer, the bias otherwise */
    for (ptrdiff_t i = 0; i < n; i++) {
        float *g = w->gates + i * NG;
        if (!prev) {
            memcpy(g, m->table + (ptrdiff_t)w->inputs[i] * NG, (size_t)NG * sizeof(float));
            continue;
        }
        if (L->b_a)
            memcpy(g, L->b_a, (size_t)NA * sizeof(float));
        else
            memset(g, 0, (size_t)NA * sizeof(float));
        if (L->cell == GEN_GRU) {
            if (L->b_xn)
                memcpy(g + 2 * H, L->b_xn, (size_t)H * sizeof(float));
            else
                memset(g + 2 * H, 0, (size_t)H * sizeof(float));
        }
    }
    /* xin <- [x | h] per row (x = the new h of the layer below) */
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *st = state + w->rows[i] * S;
        float *x = w->xin + i * K;
        if (prev)
            memcpy(x, st + prev->h_offset, (size_t)I * sizeof(float));
        memcpy(x + I, st + L->h_offset, (size_t)H_out * sizeof(float));
    }
    /* gates[:, :NA] += W_a [x | h];  GRU: gates[:, 2H:] += W_in x */
    gen_matmul(&L->w_a, w->xin, K, w->gates, NG, n, w->xq, w->xs);
    if (L->cell == GEN_GRU && prev)
        gen_matmul(&L->w_xn, w->xin, K, w->gates + 2 * H, NG, n, w->xq, w->xs);

    if (L->cell == GEN_RNN) { /* h' = f(a) */
        for (ptrdiff_t i = 0; i < n; i++) {
            float *a = w->gates + i * NG;
            rnn_activate(&L->opts.act[0], L->opts.clip, a, H);
            memcpy(state + w->rows[i] * S + L->h_offset, a, (size_t)H * sizeof(float));
        }
        return;
    }
    if (L->cell == GEN_LSTM) {
        const int proj = L->w_hr.f32.rows > 0;
        for (ptrdiff_t i = 0; i < n; i++) {
            float *st = state + w->rows[i] * S;
            rnn_lstm_pointwise(w->gates + i * NG, H, st + L->c_offset, proj ? w->ext1 + i * H : st + L->h_offset,
                               L->peephole, H, &L->opts, H);
        }
        if (proj) { /* h' = W_hr m */
            memset(w->ext2, 0, (size_t)(n * H_out) * sizeof(float));
            gen_matmul(&L->w_hr, w->ext1, H, w->ext2, H_out, n, w->xq, w->xs);
            for (ptrdiff_t i = 0; i < n; i++)
                memcpy(state + w->rows[i] * S + L->h_offset, w->ext2 + i * H_out,
                       (size_t)H_out * sizeof(float));
        }
        return;
    }
    /* GRU: r = f(.), z = f(.) */
    for (ptrdiff_t i = 0; i < n; i++)
        rnn_activate(&L->opts.act[0], L->opts.clip, w->gates + i * NG, 2 * H);
    const int lbr = L->opts.linear_before_reset;
    for (ptrdiff_t i = 0; i < n; i++)
        memcpy(w->ext1 + i * H, L->b_hn, (size_t)H * sizeof(float));
    if (lbr) { /* ext1 = W_hn h + b_hn */
        gen_matmul(&L->w_hn, w->xin + I, K, w->ext1, H, n, w->xq, w->xs);
    } else { /* ext1 = W_hn (r * h) + b_hn */
        for (ptrdiff_t i = 0; i < n; i++) {
            const float *r = w->gates + i * NG, *h = w->xin + i * K + I;
            float *rh = w->ext2 + i * H;
            for (ptrdiff_t j = 0; j < H; j++)
                rh[j] = r[j] * h[j];
        }
        gen_matmul(&L->w_hn, w->ext2, H, w->ext1, H, n, w->xq, w->xs);
    }
    for (ptrdiff_t i = 0; i < n; i++) { /* n = g(x_n + ...), h' = (1 - z) * n + z * h; b_hn is in ext1 */
        float *a = w->gates + i * NG;
        rnn_gru_pointwise(a + 2 * H, a, a + H, w->ext1 + i * H, NULL, w->xin + i * K + I,
                          state + w->rows[i] * S + L->h_offset, &L->opts, H);
    }
}

/* logits[b] = W h_last + bias for the n rows in w->lrows */
static void dense_step(const gen_model *m, float *state, float *logits, workspace *w, ptrdiff_t n)
{
    const gen_layer *last = &m->layers[m->n_layers - 1];
    const ptrdiff_t S = m->state_size, V = m->vocab_size, K = last->output_size;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(w->xin + i * K, state + w->lrows[i] * S + last->h_offset, (size_t)K * sizeof(float));
        if (m->dense_bias)
            memcpy(w->dense_out + i * V, m->dense_bias, (size_t)V * sizeof(float));
        else
            memset(w->dense_out + i * V, 0, (size_t)V * sizeof(float));
    }
    gen_matmul(&m->dense, w->xin, K, w->dense_out, V, n, w->xq, w->xs);
    for (ptrdiff_t i = 0; i < n; i++)
        memcpy(logits + w->lrows[i] * V, w->dense_out + i * V, (size_t)V * sizeof(float));
}

/* ============================================================================================
 * 6. the generation loop
 * ========================================================================================== */

static int all_finite(const float *x, ptrdiff_t n)
{
    float acc = 0.0f; /* x * 0 is 0 for finite x, NaN for NaN and infinities */
    for (ptrdiff_t i = 0; i < n; i++)
        acc += x[i] * 0.0f;
    return acc == 0.0f;
}

/* length of the longest stop sequence that out (n,) ends with, 0 if none */
static ptrdiff_t stop_match(const gen_stops *stops, const int32_t *out, ptrdiff_t n)
{
    ptrdiff_t best = 0;
    for (ptrdiff_t j = 0; j < stops->count; j++) {
        const ptrdiff_t a = (ptrdiff_t)stops->offsets[j], len = (ptrdiff_t)stops->offsets[j + 1] - a;
        if (len > 0 && len <= n && len > best && out[n - 1] == stops->tokens[a + len - 1] &&
            memcmp(out + n - len, stops->tokens + a, (size_t)len * sizeof(int32_t)) == 0)
            best = len;
    }
    return best;
}

/* KMP: advance each stop's matched-prefix length (state, (count,)) by tok: O(1) amortised per
 * stop and token, however long the stop. Returns the longest stop that out now ends with, 0 if none. */
static ptrdiff_t stop_advance(const gen_stops *stops, int64_t *state, int32_t tok)
{
    ptrdiff_t best = 0;
    for (ptrdiff_t j = 0; j < stops->count; j++) {
        const ptrdiff_t a = (ptrdiff_t)stops->offsets[j], len = (ptrdiff_t)stops->offsets[j + 1] - a;
        const int32_t *stop = stops->tokens + a, *fail = stops->fail + a;
        if (len <= 0)
            continue;
        int64_t k = state[j];
        if (k == len)
            k = fail[k - 1];
        while (k > 0 && tok != stop[k])
            k = fail[k - 1];
        if (tok == stop[k])
            k++;
        state[j] = k;
        if (k == len && len > best)
            best = len;
    }
    return best;
}

/* (a) of a step: sample where logits are ready; choose every row's input (w->rows, w->inputs).
 * Returns the number of rows fed. */
static ptrdiff_t choose_inputs(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *r,
                               workspace *w)
{
    const ptrdiff_t B = r->batch, V = m->vocab_size, max_new = r->max_new;
    ptrdiff_t n_feed = 0;
    for (ptrdiff_t b = 0; b < B; b++) {
        int64_t *st = r->status + b * GEN_STATUS_COLS;
        if (st[GEN_FINISHED])
            continue;
        int32_t input;
        const int64_t limit = st[GEN_LIMIT] < max_new ? st[GEN_LIMIT] : max_new;
        if (st[GEN_HAS_LOGITS]) {
            if (st[GEN_NOUT] >= limit) {
                st[GEN_FINISHED] = 1;
                continue;
            }
            if (!all_finite(r->logits + b * V, V)) { /* the caller raises: sampling would be garbage */
                st[GEN_FINISHED] = 1;
                st[GEN_BAD_LOGITS] = 1;
                continue;
            }
            int32_t *out = r->out + b * max_new;
            const int32_t tok = gen_sample_token(r->logits + b * V, r->seen + b * V, V, s, r->rng + b,
                                                 &w->sampler);
            out[st[GEN_NOUT]++] = tok;
            st[GEN_HAS_LOGITS] = 0;
            r->seen[b * V + tok] = 1;
            const ptrdiff_t stop_len = r->stop_state && stops->fail
                                           ? stop_advance(stops, r->stop_state + b * stops->count, tok)
                                           : stop_match(stops, out, (ptrdiff_t)st[GEN_NOUT]);
            if (stop_len || st[GEN_NOUT] >= limit) {
                st[GEN_FINISHED] = 1;
                st[GEN_STOP_LEN] = stop_len;
                continue;
            }
            input = tok;
        } else if (st[GEN_POS] < st[GEN_LEN]) {
            input = r->prompt[b * r->prompt_cols + st[GEN_POS]++];
            if (input < V)
                r->seen[b * V + input] = 1;
        } else { /* no logits and nothing to feed */
            st[GEN_FINISHED] = 1;
            continue;
        }
        w->rows[n_feed] = b;
        w->inputs[n_feed] = input;
        n_feed++;
    }
    return n_feed;
}

/* (c) of a step: the fed rows whose prompt is used up compute logits (w->lrows); their count */
static ptrdiff_t logit_rows(gen_rows *r, workspace *w, ptrdiff_t n_feed)
{
    ptrdiff_t n_logits = 0;
    for (ptrdiff_t i = 0; i < n_feed; i++) {
        int64_t *st = r->status + w->rows[i] * GEN_STATUS_COLS;
        if (st[GEN_POS] >= st[GEN_LEN]) {
            w->lrows[n_logits++] = w->rows[i];
            st[GEN_HAS_LOGITS] = 1;
        }
    }
    return n_logits;
}

static ptrdiff_t rows_active(const gen_rows *r)
{
    ptrdiff_t active = 0;
    for (ptrdiff_t b = 0; b < r->batch; b++)
        active += r->status[b * GEN_STATUS_COLS + GEN_FINISHED] == 0;
    return active;
}

ptrdiff_t gen_run(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *r,
                  void *workspace_memory, ptrdiff_t max_steps)
{
    workspace w;
    layout(m, r->batch, &w, (char *)workspace_memory);
    for (ptrdiff_t step = 0; step < max_steps; step++) {
        const ptrdiff_t n_feed = choose_inputs(m, s, stops, r, &w); /* (a) */
        if (n_feed == 0)
            break;
        const unsigned csr = rnn_denormals_off(); /* (b) the recurrent layers for every fed row */
        for (ptrdiff_t l = 0; l < m->n_layers; l++)
            layer_step(m, &m->layers[l], l ? &m->layers[l - 1] : NULL, r->state, &w, n_feed);
        const ptrdiff_t n_logits = logit_rows(r, &w, n_feed); /* (c) */
        if (n_logits)
            dense_step(m, r->state, r->logits, &w, n_logits);
        rnn_denormals_restore(csr);
    }
    return rows_active(r);
}

/* ============================================================================================
 * 7. the loop with the hidden units split across threads (gen_run_split)
 * ========================================================================================== */

static int split_barrier(gen_split_shared *sh)
{
    return spin_barrier_wait(&sh->bar);
}

/* rows [r0, r0 + n) of w (r0 a multiple of RNN_PANEL) as a matrix of its own: a run of panels */
static gen_matrix matrix_rows(const gen_matrix *w, ptrdiff_t r0, ptrdiff_t n)
{
    gen_matrix sub = *w;
    const ptrdiff_t K = w->f32.cols, K2 = (K + 1) / 2 * 2, p0 = r0 / RNN_PANEL;
    sub.f32.rows = n;
    if (w->f32.data)
        sub.f32.data = w->f32.data + p0 * K * RNN_PANEL;
    if (w->half)
        sub.half = w->half + p0 * K * RNN_PANEL;
    if (w->q8) {
        sub.q8 = w->q8 + p0 * K2 * RNN_PANEL;
        sub.scale = w->scale + r0;
    }
    return sub;
}

/* whole panels [part/P, (part+1)/P) of `count` rows -> [*a, *b) */
static void part_range(ptrdiff_t count, int part, int parts, ptrdiff_t *a, ptrdiff_t *b)
{
    const ptrdiff_t panels = (count + RNN_PANEL - 1) / RNN_PANEL;
    *a = panels * part / parts * RNN_PANEL;
    *b = panels * (part + 1) / parts * RNN_PANEL;
    *b = *b < count ? *b : count;
}

/* layer_step for this part's units [u0, u1); the same operations per unit as layer_step */
static void layer_step_part(const gen_model *m, const gen_layer *L, const gen_layer *prev, float *state,
                            workspace *w, ptrdiff_t n, gen_split_shared *sh, int part)
{
    const ptrdiff_t S = m->state_size, H = L->hidden_size, H_out = L->output_size;
    const ptrdiff_t I = prev ? L->input_size : 0, K = I + H_out;
    const ptrdiff_t G = L->cell == GEN_LSTM ? 4 : (L->cell == GEN_GRU ? 3 : 1), NG = G * H;
    const ptrdiff_t GA = L->cell == GEN_GRU ? 2 : G; /* gate blocks in w_a */
    ptrdiff_t u0, u1;
    part_range(H, part, sh->bar.parts, &u0, &u1);
    const ptrdiff_t nu = u1 - u0;
    for (ptrdiff_t i = 0; i < n; i++) { /* own gates <- table row, or biases */
        float *g = w->gates + i * NG;
        for (ptrdiff_t b = 0; b < G; b++) {
            float *dst = g + b * H + u0;
            const float *src = !prev ? m->table + (ptrdiff_t)w->inputs[i] * NG + b * H + u0
                             : (b < GA ? (L->b_a ? L->b_a + b * H + u0 : NULL) : (L->b_xn ? L->b_xn + u0 : NULL));
            if (src)
                memcpy(dst, src, (size_t)nu * sizeof(float));
            else
                memset(dst, 0, (size_t)nu * sizeof(float));
        }
    }
    for (ptrdiff_t i = 0; i < n; i++) { /* xin <- [x | h], all of it */
        const float *st = state + w->rows[i] * S;
        float *x = w->xin + i * K;
        if (prev)
            memcpy(x, st + prev->h_offset, (size_t)I * sizeof(float));
        memcpy(x + I, st + L->h_offset, (size_t)H_out * sizeof(float));
    }
    split_barrier(sh); /* every part has read the old h before any part writes the new one */
    if (nu > 0) {
        for (ptrdiff_t b = 0; b < GA; b++) {
            const gen_matrix sub = matrix_rows(&L->w_a, b * H + u0, nu);
            gen_matmul(&sub, w->xin, K, w->gates + b * H + u0, NG, n, w->xq, w->xs);
        }
        if (L->cell == GEN_GRU && prev) {
            const gen_matrix sub = matrix_rows(&L->w_xn, u0, nu);
            gen_matmul(&sub, w->xin, K, w->gates + 2 * H + u0, NG, n, w->xq, w->xs);
        }
    }
    if (L->cell == GEN_RNN) {
        for (ptrdiff_t i = 0; i < n; i++) {
            float *a = w->gates + i * NG + u0;
            rnn_activate(&L->opts.act[0], L->opts.clip, a, nu);
            memcpy(state + w->rows[i] * S + L->h_offset + u0, a, (size_t)nu * sizeof(float));
        }
    } else if (L->cell == GEN_LSTM) { /* no projection (checked by the caller) */
        for (ptrdiff_t i = 0; i < n; i++) {
            float *st = state + w->rows[i] * S;
            rnn_lstm_pointwise(w->gates + i * NG + u0, H, st + L->c_offset + u0, st + L->h_offset + u0,
                               L->peephole ? L->peephole + u0 : NULL, H, &L->opts, nu);
        }
    } else {
        const int lbr = L->opts.linear_before_reset;
        for (ptrdiff_t i = 0; i < n; i++) {
            rnn_activate(&L->opts.act[0], L->opts.clip, w->gates + i * NG + u0, nu);     /* r */
            rnn_activate(&L->opts.act[0], L->opts.clip, w->gates + i * NG + H + u0, nu); /* z */
            memcpy(w->ext1 + i * H + u0, L->b_hn + u0, (size_t)nu * sizeof(float));
        }
        if (lbr) { /* ext1 = W_hn h + b_hn */
            const gen_matrix sub = matrix_rows(&L->w_hn, u0, nu);
            if (nu > 0)
                gen_matmul(&sub, w->xin + I, K, w->ext1 + u0, H, n, w->xq, w->xs);
        } else { /* ext1 = W_hn (r * h) + b_hn: the whole r * h first */
            for (ptrdiff_t i = 0; i < n; i++) {
                const float *r = w->gates + i * NG, *h = w->xin + i * K + I;
                for (ptrdiff_t j = u0; j < u1; j++)
                    sh->rh[i * H + j] = r[j] * h[j];
            }
            split_barrier(sh);
            const gen_matrix sub = matrix_rows(&L->w_hn, u0, nu);
            if (nu > 0)
                gen_matmul(&sub, sh->rh, H, w->ext1 + u0, H, n, w->xq, w->xs);
        }
        for (ptrdiff_t i = 0; i < n; i++) { /* as in layer_step, units [u0, u1) */
            float *a = w->gates + i * NG + u0;
            rnn_gru_pointwise(a + 2 * H, a, a + H, w->ext1 + i * H + u0, NULL, w->xin + i * K + I + u0,
                              state + w->rows[i] * S + L->h_offset + u0, &L->opts, nu);
        }
    }
    split_barrier(sh); /* the new h is whole before the next layer or the Dense reads it */
}

/* dense_step for this part's output rows */
static void dense_part(const gen_model *m, float *state, float *logits, workspace *w, ptrdiff_t n,
                       gen_split_shared *sh, int part)
{
    const gen_layer *last = &m->layers[m->n_layers - 1];
    const ptrdiff_t S = m->state_size, V = m->vocab_size, K = last->output_size;
    ptrdiff_t v0, v1;
    part_range(V, part, sh->bar.parts, &v0, &v1);
    if (v1 <= v0)
        return;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(w->xin + i * K, state + w->lrows[i] * S + last->h_offset, (size_t)K * sizeof(float));
        if (m->dense_bias)
            memcpy(w->dense_out + i * V + v0, m->dense_bias + v0, (size_t)(v1 - v0) * sizeof(float));
        else
            memset(w->dense_out + i * V + v0, 0, (size_t)(v1 - v0) * sizeof(float));
    }
    const gen_matrix sub = matrix_rows(&m->dense, v0, v1 - v0);
    gen_matmul(&sub, w->xin, K, w->dense_out + v0, V, n, w->xq, w->xs);
    for (ptrdiff_t i = 0; i < n; i++)
        memcpy(logits + w->lrows[i] * V + v0, w->dense_out + i * V + v0, (size_t)(v1 - v0) * sizeof(float));
}

ptrdiff_t gen_run_split(const gen_model *m, const gen_sampling *s, const gen_stops *stops, gen_rows *r,
                        void *workspace_memory, ptrdiff_t max_steps, gen_split_shared *sh, int part)
{
    workspace w;
    layout(m, r->batch, &w, (char *)workspace_memory);
    if (part == 0) { /* part 0 chooses the inputs and the logit rows; everyone reads them */
        sh->rows = w.rows;
        sh->lrows = w.lrows;
        sh->inputs = w.inputs;
    }
    if (split_barrier(sh))
        return -1; /* aborted: a part never came */
    w.rows = sh->rows;
    w.lrows = sh->lrows;
    w.inputs = sh->inputs;
    for (ptrdiff_t step = 0; step < max_steps; step++) {
        if (part == 0)
            sh->n_feed = choose_inputs(m, s, stops, r, &w); /* (a), sampling included */
        split_barrier(sh);
        const ptrdiff_t n_feed = sh->n_feed;
        if (n_feed == 0)
            break;
        const unsigned csr = rnn_denormals_off();
        for (ptrdiff_t l = 0; l < m->n_layers; l++)
            layer_step_part(m, &m->layers[l], l ? &m->layers[l - 1] : NULL, r->state, &w, n_feed, sh, part);
        if (part == 0)
            sh->n_logits = logit_rows(r, &w, n_feed);
        split_barrier(sh);
        if (sh->n_logits)
            dense_part(m, r->state, r->logits, &w, sh->n_logits, sh, part);
        rnn_denormals_restore(csr);
        split_barrier(sh); /* all logits written before part 0 samples */
        if (sh->bar.stop) /* waiting dominates: the caller goes on with gen_run */
            break;
    }
    split_barrier(sh); /* everyone has read n_feed == 0 (or hit max_steps) before a next call */
    return part == 0 ? rows_active(r) : 0;
}
