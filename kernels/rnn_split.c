/* rnn_split.c — batch-1 sequences with the hidden units split across threads (see rnn_split.h).
 *
 * Part p owns units [u0, u1) (whole panels). For each gate block b its rows b*H + [u0, u1) are a
 * contiguous run of panels of the packed matrix, i.e. a smaller rnn_packed starting at panel
 * (b*H + u0) / RNN_PANEL: the matmul code is rnn_core's, on a slice. The element-wise steps are
 * rnn_core's too (rnn_activate, rnn_lstm_pointwise, rnn_gru_pointwise) on the own units, so every
 * unit gets the same bits as in the one-thread loop (the spec: fastrnn/reference.py).
 */
#include "rnn_split.h"

#include <stdlib.h>
#include <string.h>


static int barrier_wait(rnn_split_shared *s)
{
    return spin_barrier_wait(&s->bar);
}

/* out[0, 0..n) += W[rows r0 .. r0+n) @ in, for a panel-aligned r0 */
static void matmul_rows(const rnn_packed *w, ptrdiff_t r0, ptrdiff_t n, const float *in, float *out)
{
    rnn_packed sub;
    sub.data = w->data + (r0 / RNN_PANEL) * w->cols * RNN_PANEL;
    sub.rows = n;
    sub.cols = w->cols;
    rnn_matmul_packed(&sub, in, w->cols, out, n, 1);
}

ptrdiff_t rnn_split_sequence(const rnn_sequence_io *io, const float *xproj, const rnn_split_weights *w, float *h,
                             float *c, const rnn_cell *cell, rnn_split_shared *shared, int part)
{
    const int P = shared->bar.parts;
    const ptrdiff_t G = w->cell == RNN_SPLIT_LSTM ? 4 : (w->cell == RNN_SPLIT_GRU ? 3 : 1);
    const ptrdiff_t H = w->cell == RNN_SPLIT_GRU ? w->w_n->rows : w->w_a->rows / G;
    const ptrdiff_t panels = H / RNN_PANEL;
    const ptrdiff_t u0 = panels * part / P * RNN_PANEL, u1 = panels * (part + 1) / P * RNN_PANEL;
    const ptrdiff_t n = u1 - u0, T = io->steps, len = io->lengths[0];

    /* scratch: gates (G, n) for the own units, hn (n), c (n) */
    float *scratch = (float *)malloc((size_t)(G + 2) * (size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!scratch)
        __atomic_store_n(&shared->failed, 1, __ATOMIC_RELEASE);
    if (barrier_wait(shared) || __atomic_load_n(&shared->failed, __ATOMIC_ACQUIRE)) {
        free(scratch);
        return -1;
    }
    float *gates = scratch, *hn = scratch + G * n, *cs = hn + n;
    if (c)
        memcpy(cs, c + u0, (size_t)n * sizeof(float));
    const unsigned csr = rnn_denormals_off(); /* MXCSR is per thread */
    const rnn_activation *f = &cell->act[0];
    float *y = io->y + io->y_offset + u0;
    ptrdiff_t s;
    for (s = 0; s < len; s++) {
        const ptrdiff_t t = io->reverse ? len - 1 - s : s;
        const float *xp = xproj + t * G * H;
        const float *hc = shared->h2 + (s & 1) * H; /* whole h of the previous step */
        float *hx = shared->h2 + ((s + 1) & 1) * H; /* own units of the new h */
        const ptrdiff_t ga = w->cell == RNN_SPLIT_GRU ? 2 : G; /* gate blocks in w_a */
        for (ptrdiff_t b = 0; b < G; b++)
            memcpy(gates + b * n, xp + b * H + u0, (size_t)n * sizeof(float));
        for (ptrdiff_t b = 0; b < ga; b++)
            matmul_rows(w->w_a, b * H + u0, n, hc, gates + b * n);
        if (w->cell == RNN_SPLIT_RNN) {
            rnn_activate(f, cell->clip, gates, n);
            memcpy(hx + u0, gates, (size_t)n * sizeof(float));
        } else if (w->cell == RNN_SPLIT_LSTM) {
            rnn_lstm_pointwise(gates, n, cs, hx + u0, w->peephole ? w->peephole + u0 : NULL, H, cell, n);
        } else { /* GRU */
            float *r = gates, *z = gates + n, *nn = gates + 2 * n;
            rnn_activate(f, cell->clip, r, 2 * n); /* r and z blocks are adjacent */
            memset(hn, 0, (size_t)n * sizeof(float));
            if (cell->linear_before_reset) {
                matmul_rows(w->w_n, u0, n, hc, hn); /* W_hn h */
            } else {
                for (ptrdiff_t j = 0; j < n; j++)
                    shared->shared_rh[u0 + j] = r[j] * hc[u0 + j];
                barrier_wait(shared); /* the whole r * h is needed */
                matmul_rows(w->w_n, u0, n, shared->shared_rh, hn); /* W_hn (r * h) */
            }
            rnn_gru_pointwise(nn, r, z, hn, w->b_hn + u0, hc + u0, hx + u0, cell, n);
        }
        memcpy(y + t * io->y_cols, hx + u0, (size_t)n * sizeof(float));
        barrier_wait(shared); /* the next step reads the whole new h */
        if (shared->bar.stop) { /* waiting dominates: the caller goes on with one thread */
            s++;
            break;
        }
    }
    for (ptrdiff_t t = len; t < T; t++) /* padded steps: zeros */
        memset(y + t * io->y_cols, 0, (size_t)n * sizeof(float));
    memcpy(h + u0, shared->h2 + (s & 1) * H + u0, (size_t)n * sizeof(float));
    if (c)
        memcpy(c + u0, cs, (size_t)n * sizeof(float));
    rnn_denormals_restore(csr);
    free(scratch);
    return s;
}
