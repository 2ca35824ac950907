/* int8_split.c — batch-1 int8 sequences with the hidden units split across threads
 * (see int8_split.h; the float form is rnn_split.c).
 *
 * Part p owns units [u0, u1) (whole panels). For each gate block b its rows b*H + [u0, u1) are a
 * contiguous run of panels of the packed matrix: an i8_packed starting at panel
 * (b*H + u0) / I8_PANEL, with its row sums and scales from row b*H + u0 on. The step is
 * i8_sequence's at batch 1, restricted to the own units: the same quantized h, the same product
 * per output (addend: the step's xproj, copied into the gates first, as i8_sequence's GRU does;
 * the same bits as reading it through src), the same element-wise functions.
 */
#include "int8_split.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* rows r0 .. r0+n of w (r0 a multiple of I8_PANEL) as a matrix of their own */
static i8_packed rows_of(const i8_packed *w, ptrdiff_t r0, ptrdiff_t n)
{
    i8_packed sub = *w;
    const ptrdiff_t panel_bytes = w->bf16 ? (w->cols + 1) / 2 * 2 * I8_PANEL * 2 : i8_cols_padded(w->cols) * I8_PANEL;
    sub.data = w->data + (r0 / I8_PANEL) * panel_bytes;
    sub.row_sum = w->row_sum ? w->row_sum + r0 : NULL;
    sub.scale = w->scale ? w->scale + r0 : NULL;
    sub.rows = n;
    return sub;
}

ptrdiff_t i8_split_sequence(int cell_kind, const rnn_sequence_io *io, const float *xproj, const i8_weights *w,
                            float *h, float *c, const rnn_cell *cell, rnn_split_shared *shared, int part)
{
    const int lstm = cell_kind == I8_LSTM, gru = cell_kind == I8_GRU;
    const int P = shared->bar.parts;
    const ptrdiff_t G = gru ? 3 : (lstm ? 4 : 1);
    const ptrdiff_t H = gru ? w->w_hh_n.rows : w->w_hh_rz.rows / G;
    const ptrdiff_t panels = H / I8_PANEL;
    const ptrdiff_t u0 = panels * part / P * I8_PANEL, u1 = panels * (part + 1) / P * I8_PANEL;
    const ptrdiff_t n = u1 - u0, len = io->lengths[0], T = io->steps;
    const ptrdiff_t ga = gru ? 2 : G; /* gate blocks in w_hh_rz */
    const ptrdiff_t k4 = i8_cols_padded(H);

    /* scratch: gates (G, n), hn (n), c (n), then the quantized row (k4 int8 or k4 bfloat16) */
    const size_t nf = (size_t)(G + 2) * (size_t)(n > 0 ? n : 1);
    char *block = (char *)malloc(nf * sizeof(float) + (size_t)k4 * 2 + 128);
    if (!block)
        __atomic_store_n(&shared->failed, 1, __ATOMIC_RELEASE);
    if (spin_barrier_wait(&shared->bar) || __atomic_load_n(&shared->failed, __ATOMIC_ACQUIRE)) {
        free(block);
        return -1;
    }
    float *gates = (float *)block, *hn = gates + G * n, *cs = hn + n;
    int8_t *xq = (int8_t *)(((uintptr_t)(cs + n) + 63) & ~(uintptr_t)63);
    float xs = 1.0f;
    i8_packed rows_a[4], rows_n;
    for (ptrdiff_t b = 0; b < ga; b++)
        rows_a[b] = rows_of(&w->w_hh_rz, b * H + u0, n);
    if (gru)
        rows_n = rows_of(&w->w_hh_n, u0, n);
    if (lstm)
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
        for (ptrdiff_t b = 0; b < G; b++)           /* a = xp (+ W_hh h below) */
            memcpy(gates + b * n, xp + b * H + u0, (size_t)n * sizeof(float));
        i8_prepare_rows(&w->w_hh_rz, hc, H, 1, H, xq, &xs); /* the whole h: the same in every part */
        for (ptrdiff_t b = 0; b < ga; b++)
            i8_matmul(&rows_a[b], xq, &xs, 1, NULL, gates + b * n, n);
        if (lstm) {
            rnn_lstm_pointwise(gates, n, cs, hx + u0, w->peephole ? w->peephole + u0 : NULL, H, cell, n);
        } else if (gru) {
            float *r = gates, *z = gates + n, *nn = gates + 2 * n;
            rnn_activate(f, cell->clip, r, 2 * n); /* r and z blocks are adjacent */
            memset(hn, 0, (size_t)n * sizeof(float));
            if (cell->linear_before_reset) { /* W_hn h, with the same quantized h */
                i8_matmul(&rows_n, xq, &xs, 1, NULL, hn, n);
            } else { /* W_hn (r * h): the whole r * h is quantized, by every part */
                for (ptrdiff_t j = 0; j < n; j++)
                    shared->shared_rh[u0 + j] = r[j] * hc[u0 + j];
                spin_barrier_wait(&shared->bar);
                i8_prepare_rows(&w->w_hh_n, shared->shared_rh, H, 1, H, xq, &xs);
                i8_matmul(&rows_n, xq, &xs, 1, NULL, hn, n);
            }
            rnn_gru_pointwise(nn, r, z, hn, w->b_hn + u0, hc + u0, hx + u0, cell, n);
        } else { /* h' = f(a) */
            rnn_activate(f, cell->clip, gates, n);
            memcpy(hx + u0, gates, (size_t)n * sizeof(float));
        }
        memcpy(y + t * io->y_cols, hx + u0, (size_t)n * sizeof(float));
        spin_barrier_wait(&shared->bar); /* the next step reads the whole new h */
        if (shared->bar.stop) {           /* waiting dominates: the caller goes on with one thread */
            s++;
            break;
        }
    }
    for (ptrdiff_t t = len; t < T; t++) /* padded steps: zeros */
        memset(y + t * io->y_cols, 0, (size_t)n * sizeof(float));
    memcpy(h + u0, shared->h2 + (s & 1) * H + u0, (size_t)n * sizeof(float));
    if (lstm)
        memcpy(c + u0, cs, (size_t)n * sizeof(float));
    rnn_denormals_restore(csr);
    free(block);
    return s;
}
