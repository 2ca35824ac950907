"""The fixed C of an exported model: kernels, activations, the sampler, UTF-8 decoding.

Each snippet is written into ``NAME.c`` only when the model uses it (``-Wall -Werror`` refuses
unused static functions); ``$p_`` becomes the model's prefix ``NAME_``, ``$P_`` its upper-case
form. Every kernel states its contract in one line; none allocates, none validates (the public
functions do). The arithmetic is fastrnn's (the NumPy reference in fastrnn.layers and
fastrnn.quantize): the same formulas, in the same order where the order can change a bit of an
int8 product.
"""
from __future__ import annotations

SNIPPETS = {}
REQUIRES = {}


def snippet(name, code, requires=()):
    SNIPPETS[name] = code.strip("\n") + "\n"
    REQUIRES[name] = tuple(requires)


def closure(names):
    """``names`` with every snippet they require, in the order of SNIPPETS (dependencies first)."""
    want = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo.extend(REQUIRES[n])
    return [n for n in SNIPPETS if n in want]


snippet("mv", r"""
/* y (N) = W x, W (N, K) stored transposed as w (K, N): y[n] = sum over k of w[k][n] x[k], four
   columns k at a time (y is read and written once per four); the constant-size blocks of 8
   outputs let compilers use vector registers at -O2. */
static void $p_mv(const float *restrict w, const float *restrict x, int K, int N, float *restrict y)
{
    int k, n, i;
    for (n = 0; n < N; n++)
        y[n] = 0.0f;
    for (k = 0; k + 4 <= K; k += 4) {
        const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        const float *restrict w0 = w + (long)k * N, *restrict w1 = w0 + N, *restrict w2 = w1 + N,
                    *restrict w3 = w2 + N;
        for (n = 0; n + 8 <= N; n += 8)
            for (i = 0; i < 8; i++)
                y[n + i] += w0[n + i] * x0 + w1[n + i] * x1 + w2[n + i] * x2 + w3[n + i] * x3;
        for (; n < N; n++)
            y[n] += w0[n] * x0 + w1[n] * x1 + w2[n] * x2 + w3[n] * x3;
    }
    for (; k < K; k++) {
        const float xk = x[k];
        const float *restrict wk = w + (long)k * N;
        for (n = 0; n < N; n++)
            y[n] += wk[n] * xk;
    }
}
""")


snippet("quantize_row", r"""
/* fastrnn's int8 rule for one activation row x (K) -> xq (K) and its scale (returned):
   xs = max|x| / 127 (1 when x is all zeros), xq = clip(rint(x * (1 / xs)), -127, 127). */
static float $p_quantize_row(const float *restrict x, int K, int8_t *restrict xq)
{
    int k;
    float top = 0.0f, xs, inv;
    for (k = 0; k < K; k++) {
        const float a = fabsf(x[k]);
        if (a > top)
            top = a;
    }
    xs = top > 0.0f ? top / 127.0f : 1.0f;
    inv = 1.0f / xs;
    for (k = 0; k < K; k++) {
        float v = rintf(x[k] * inv);
        if (v > 127.0f)
            v = 127.0f;
        if (v < -127.0f)
            v = -127.0f;
        xq[k] = (int8_t)v;
    }
    return xs;
}
""")

snippet("mv_i8", r"""
/* y (N) = W x the int8 way (fastrnn.quantize): W (N, K) ~ scale[n] * q[n][k], q stored transposed
   as q (K, N); x quantized to xq (K) with one scale xs; exact int32 sums acc[n] = sum xq[k] q[k][n];
   y[n] = (float)acc[n] * (xs * scale[n]). xq and acc are work buffers of K and N entries. */
static void $p_mv_i8(const int8_t *restrict q, const float *restrict scale, const float *restrict x, int K, int N,
                     float *restrict y, int8_t *restrict xq, int32_t *restrict acc)
{
    int k, n, i;
    const float xs = $p_quantize_row(x, K, xq);
    for (n = 0; n < N; n++)
        acc[n] = 0;
    for (k = 0; k < K; k++) {
        const int32_t xk = xq[k];
        const int8_t *restrict qk = q + (long)k * N;
        for (n = 0; n + 16 <= N; n += 16)  /* blocks of a constant 16: vectorized at -O2 */
            for (i = 0; i < 16; i++)
                acc[n + i] += xk * qk[n + i];
        for (; n < N; n++)
            acc[n] += xk * qk[n];
    }
    for (n = 0; n < N; n++)
        y[n] = (float)acc[n] * (xs * scale[n]);
}
""", requires=("quantize_row",))

snippet("sigmoid", r"""
static float $p_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}
""")

snippet("relu", r"""
static float $p_relu(float x)
{
    return x > 0.0f ? x : 0.0f;
}
""")

snippet("clip01", r"""
static float $p_clip01(float x)
{
    return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x);
}
""")

snippet("clip", r"""
/* np.clip(x, -limit, limit): the cell clip of ONNX recurrent layers */
static float $p_clip(float x, float limit)
{
    return x < -limit ? -limit : (x > limit ? limit : x);
}
""")

snippet("leaky_relu", r"""
static float $p_leaky_relu(float x, float alpha)
{
    return x >= 0.0f ? x : alpha * x;
}
""")

snippet("thresholded_relu", r"""
static float $p_thresholded_relu(float x, float alpha)
{
    return x > alpha ? x : 0.0f;
}
""")

snippet("elu", r"""
static float $p_elu(float x, float alpha)
{
    return x >= 0.0f ? x : alpha * (expf(x) - 1.0f);
}
""")

snippet("softplus", r"""
/* log(1 + exp(x)) as NumPy's logaddexp(0, x) */
static float $p_softplus(float x)
{
    if (x == 0.0f)
        return 0.693147182f;
    return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
}
""")

snippet("selu", r"""
static float $p_selu(float x)
{
    return 1.05070102f * (x > 0.0f ? x : 1.67326319f * (expf(x) - 1.0f));
}
""")

snippet("gelu", r"""
/* x * Phi(x), in double as fastrnn.layers.activation.gelu */
static float $p_gelu(float x)
{
    const double v = x;
    return (float)(0.5 * v * (1.0 + erf(v / 1.4142135623730951)));
}
""")

snippet("gelu_tanh", r"""
static float $p_gelu_tanh(float x)
{
    const double v = x;
    return (float)(0.5 * v * (1.0 + tanh(0.79788456080286541 * (v + 0.044715 * v * v * v))));
}
""")

snippet("softmax", r"""
/* y = exp(x - max x) / sum, over n features (x and y may be the same array) */
static void $p_softmax(const float *x, int n, float *y)
{
    int j;
    float top = x[0], sum = 0.0f;
    for (j = 1; j < n; j++)
        if (x[j] > top)
            top = x[j];
    for (j = 0; j < n; j++) {
        y[j] = expf(x[j] - top);
        sum += y[j];
    }
    for (j = 0; j < n; j++)
        y[j] = y[j] / sum;
}
""")

snippet("log_softmax", r"""
/* y = (x - max x) - log(sum exp(x - max x)), over n features (x and y may be the same array) */
static void $p_log_softmax(const float *x, int n, float *y)
{
    int j;
    float top = x[0], sum = 0.0f, lse;
    for (j = 1; j < n; j++)
        if (x[j] > top)
            top = x[j];
    for (j = 0; j < n; j++)
        sum += expf(x[j] - top);
    lse = logf(sum);
    for (j = 0; j < n; j++)
        y[j] = (x[j] - top) - lse;
}
""")

snippet("layer_norm", r"""
/* y = (x - mean) / sqrt(var + eps) * gamma + beta over n features; gamma, beta may be 0 (absent) */
static void $p_layer_norm(const float *x, int n, float eps, const float *gamma, const float *beta, float *y)
{
    int j;
    float mean = 0.0f, var = 0.0f, den;
    for (j = 0; j < n; j++)
        mean += x[j];
    mean = mean / (float)n;
    for (j = 0; j < n; j++)
        var += (x[j] - mean) * (x[j] - mean);
    var = var / (float)n;
    den = sqrtf(var + eps);
    for (j = 0; j < n; j++) {
        float v = (x[j] - mean) / den;
        if (gamma)
            v = v * gamma[j];
        if (beta)
            v = v + beta[j];
        y[j] = v;
    }
}
""")

snippet("splitmix64", r"""
/* SplitMix64, as fastrnn.generate.sampling.splitmix64: the next u in [0, 1) (53 bits) */
static double $p_splitmix64(uint64_t *state)
{
    uint64_t z;
    *state += UINT64_C(0x9E3779B97F4A7C15);
    z = *state;
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
""")

snippet("sample", r"""
/* The next token from logits (V), as fastrnn.generate.sampling.sample_token with top-k, top-p and
   the repetition penalty off: temperature 0 is the first largest logit (no random number drawn);
   else y = (x - max x) / temperature in double, and the first token whose running sum of exp(y)
   exceeds u * sum(exp(y)), u from the generator. -1 when a logit is NaN or infinite. */
static int32_t $p_sample(const float *logits, int V, double temperature, uint64_t *rng)
{
    int i, best = 0;
    double top, total = 0.0, target, run = 0.0;
    for (i = 0; i < V; i++) {
        if (!isfinite(logits[i]))
            return -1;
        if (logits[i] > logits[best])
            best = i;
    }
    if (temperature == 0.0)
        return best;
    top = logits[best];
    for (i = 0; i < V; i++)
        total += exp(((double)logits[i] - top) / temperature);
    target = $p_splitmix64(rng) * total;
    for (i = 0; i < V; i++) {
        run += exp(((double)logits[i] - top) / temperature);
        if (run > target)
            return i;
    }
    for (i = V - 1; i > 0; i--)  /* u * total rounded up to total: the last token with weight */
        if (exp(((double)logits[i] - top) / temperature) > 0.0)
            break;
    return i;
}
""", requires=("splitmix64",))

snippet("utf8", r"""
/* The next code point of UTF-8 text at *p (advanced past it); U+FFFD for a malformed sequence,
   one byte at a time, as Python's errors="replace" does for a lone bad byte. */
static uint32_t $p_utf8_next(const unsigned char **p)
{
    const unsigned char *s = *p;
    uint32_t cp;
    int n, i;
    if (s[0] < 0x80) {
        *p = s + 1;
        return s[0];
    }
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        n = 1;
        cp = s[0] & 0x1Fu;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        n = 2;
        cp = s[0] & 0x0Fu;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        n = 3;
        cp = s[0] & 0x07u;
    } else {
        *p = s + 1;
        return 0xFFFDu;
    }
    for (i = 1; i <= n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *p = s + 1;
            return 0xFFFDu;
        }
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF))) {
        *p = s + 1;
        return 0xFFFDu;
    }
    *p = s + n + 1;
    return cp;
}
""")
