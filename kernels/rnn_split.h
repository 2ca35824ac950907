/* rnn_split.h — one batch row's sequence with the hidden units split across threads.
 *
 * At batch 1 a step is a matrix-vector product that streams all recurrent weights: it is bound
 * by memory bandwidth. Splitting the hidden units across P threads gives each thread the rows of
 * its own units (every gate block), so each core streams a P-th of the weights, from its own L2
 * cache when that slice fits. The caller starts P calls of rnn_split_sequence (part = 0..P-1)
 * on P threads at once, sharing one rnn_split_shared; they meet at a barrier after every step
 * (the next step needs the whole h), two for a GRU with linear_before_reset = 0 (W_hn (r * h)
 * needs the whole r * h).
 *
 * Every output is computed by the same operations as rnn_sequence_f32 / lstm_sequence_f32 /
 * gru_sequence_f32 at batch 1 (the same FMA chain per matmul output, the same element-wise
 * steps), so the result is bitwise identical to the one-thread kernels. Conditions (checked by
 * the caller, fastrnn/backends.py): batch 1, H a multiple of RNN_PANEL (gate blocks start on
 * panel boundaries), LSTM without projection, P <= H / RNN_PANEL.
 *
 * The barrier (spin_barrier.h) spins briefly, then blocks, so a part that waits for a late
 * partner does not burn a core; nothing spins once the calls return.
 */
#ifndef FASTRNN_RNN_SPLIT_H
#define FASTRNN_RNN_SPLIT_H

#include "rnn_core.h"
#include "spin_barrier.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { RNN_SPLIT_RNN = 0, RNN_SPLIT_LSTM = 1, RNN_SPLIT_GRU = 2 };

typedef struct {
    spin_barrier bar; /* bar.parts = P; zero otherwise */
    int failed;       /* a part could not allocate its scratch (atomic) */
    float *h2;        /* (2, H) running h, double buffered; h2[0..H) = initial h on entry */
    float *shared_rh; /* (H) GRU linear_before_reset = 0: r * h */
} rnn_split_shared;

typedef struct {
    int cell;                  /* RNN_SPLIT_* */
    const rnn_packed *w_a;     /* rnn: W_hh (H <- H); lstm: W_hh (4H <- H); gru: W_hh rows r|z (2H <- H) */
    const rnn_packed *w_n;     /* gru: W_hh rows n (H <- H); else NULL */
    const float *b_hn;         /* gru: (H,) */
    const float *peephole;     /* lstm: (3, H) rows i|f|o, or NULL */
} rnn_split_weights;

/* Returns the number of steps done: lengths[0], or fewer when the barrier found that waiting
 * dominated (shared->bar.stop; the caller runs the remaining steps on one thread: h, c and the
 * outputs of the steps done are final). -1 when a part is out of memory (every part allocates its
 * scratch, then all meet at a first barrier and return -1 together if any allocation failed) or
 * the barrier was aborted. */
ptrdiff_t rnn_split_sequence(const rnn_sequence_io *io,   /* batch must be 1 */
                       const float *xproj,          /* IN    (1, T, G*H) */
                       const rnn_split_weights *w,
                       float *h,                    /* OUT   (1, H): final h (own units written) */
                       float *c,                    /* INOUT (1, H): LSTM cell state, else NULL */
                       const rnn_cell *cell,
                       rnn_split_shared *shared,
                       int part);

#ifdef __cplusplus
}
#endif
#endif
