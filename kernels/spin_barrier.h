/* spin_barrier.h — the barrier of the batch-1 split kernels (rnn_split.c, generate_core.c).
 *
 * P threads call spin_barrier_wait with the same counters; each returns once all P have
 * arrived. A phase counter tells one use from the next, so the barrier can be reused at once.
 * Waiting spins with a pause instruction (the partner is normally a few hundred nanoseconds
 * away), then yields the CPU, so a thread whose partner was descheduled does not burn a core.
 */
#ifndef FASTRNN_SPIN_BARRIER_H
#define FASTRNN_SPIN_BARRIER_H

#include <sched.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SPIN_BARRIER_PAUSE() _mm_pause()
#else
#define SPIN_BARRIER_PAUSE() ((void)0)
#endif

#define SPIN_BARRIER_SPINS_BEFORE_YIELD (1u << 14)

static inline void spin_barrier_wait(int *arrived, int *phase, int parts)
{
    const int current = __atomic_load_n(phase, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(arrived, 1, __ATOMIC_ACQ_REL) == parts) {
        __atomic_store_n(arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(phase, current + 1, __ATOMIC_RELEASE);
        return;
    }
    unsigned spins = 0;
    while (__atomic_load_n(phase, __ATOMIC_ACQUIRE) == current) {
        if (spins < SPIN_BARRIER_SPINS_BEFORE_YIELD) {
            spins++;
            SPIN_BARRIER_PAUSE();
        } else {
            sched_yield();
        }
    }
}

#endif /* FASTRNN_SPIN_BARRIER_H */
