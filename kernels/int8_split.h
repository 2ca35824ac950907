/* int8_split.h — one batch row's int8 sequence with the hidden units split across threads.
 *
 * The int8 form of rnn_split.h (same design, same contract): at batch 1 a step streams all the
 * recurrent int8 weights (LSTM(512): 1 MB a layer), so P threads each take the rows of their own
 * units (every gate block's slice) and stream a P-th of them, from their own L2 when it fits.
 * The caller starts P calls of i8_split_sequence (part = 0..P-1) on P threads at once, sharing
 * one rnn_split_shared (rnn_split.h: the barrier, the double-buffered h, the GRU's r * h); they
 * meet at a barrier after every step, twice for a GRU with linear_before_reset = 0 (W_hn (r * h)
 * quantizes the whole r * h).
 *
 * Every part quantizes the whole h of the step itself (one row, one scale: the same bytes and
 * scale in every part, so no barrier for it), then computes the int8 products of its own panels
 * with i8_matmul and the element-wise steps of its own units with rnn_core's functions. Integer
 * sums are exact and the float epilogue of an output does not depend on the panels around it,
 * so every output has the bits of i8_sequence at batch 1, at every int8 SIMD level (and in the
 * bfloat16 form, whose sum per output is one fixed chain).
 *
 * Conditions (checked by the caller, fastrnn/quantize.py): batch 1, H a multiple of I8_PANEL
 * (gate blocks start on panel boundaries), LSTM without projection, P <= H / I8_PANEL.
 */
#ifndef FASTRNN_INT8_SPLIT_H
#define FASTRNN_INT8_SPLIT_H

#include "int8_core.h"
#include "rnn_split.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cell_kind: I8_RNN | I8_LSTM | I8_GRU. w: as for i8_sequence (w_hr.rows must be 0).
 * Returns the number of steps done: lengths[0], or fewer when the barrier found that waiting
 * dominated (shared->bar.stop; h, c and the outputs of the steps done are final, the caller runs
 * the rest on one thread). -1 when a part is out of memory (all parts return -1 together) or the
 * barrier was aborted. */
ptrdiff_t i8_split_sequence(int cell_kind,
                            const rnn_sequence_io *io,  /* batch must be 1, io->tokens NULL */
                            const float *xproj,         /* IN    (1, T, G*H), gates i|f|g|o, r|z|n */
                            const i8_weights *w,        /* W_hh (G*H <- H) packed; GRU: r|z and n apart */
                            float *h,                   /* OUT   (1, H): final h (own units written) */
                            float *c,                   /* INOUT (1, H): LSTM cell state, else NULL */
                            const rnn_cell *cell,
                            rnn_split_shared *shared,   /* h2 (2, H), shared_rh (H), bar.parts = P */
                            int part);                  /* 0 .. P-1 */

#ifdef __cplusplus
}
#endif
#endif /* FASTRNN_INT8_SPLIT_H */
