/* spin_barrier.h — the barrier of the batch-1 split kernels (rnn_split.c, generate_core.c).
 *
 * P threads call spin_barrier_wait on one spin_barrier; each returns once all P have arrived.
 * A phase counter tells one use from the next, so the barrier can be reused at once.
 *
 * Waiting spins with a pause instruction for at most SPIN_BARRIER_SPIN_NS (the partner is
 * normally a few hundred nanoseconds away), then blocks in the kernel (a futex on Linux, short
 * sleeps elsewhere), so a thread whose partner was descheduled gives its core away instead of
 * burning it: on a machine where another process is busy on one core, a spinning or yielding
 * waiter made every step wait for a whole scheduler time slice (30-60x slower than one thread).
 *
 * Contention verdict: the waiting time of all parts is summed over windows of
 * SPIN_BARRIER_WINDOW_NS of wall time. Over a window of elapsed time E, the parts' busy time is
 * P E - waited; at P = 2 the split step is slower than one thread doing both halves exactly when
 * waited > E, i.e. when the parts waited more than half their time, which is the rule (kept for
 * every P: the split's step time against the one-thread step time estimated from the parts' busy
 * time). Start-up and transients are not judged: the first window of a barrier is a warm-up (its
 * waits, and those before it, are dropped: a partner thread being woken, cold caches), and
 * `stop` is set only after SPIN_BARRIER_BAD_WINDOWS consecutive windows in which waiting
 * dominated. `stop` is sticky; the split loops read it after the barrier that ends a step and
 * return early, all at the same step; the caller continues on one thread and tells fastrnn's
 * pool (fastrnn/pool.py decides whether, and for how long, the next calls run on one thread).
 * `stop` is written only by the last part to arrive, before it releases the others, so every
 * part reads the same value after that barrier (a later write needs all parts to arrive again).
 *
 * Abort: the owner sets `abort` (spin_barrier_abort) when a part will never arrive (its thread
 * raised before entering the kernel); every wait then returns -1 at once instead of hanging.
 */
#ifndef FASTRNN_SPIN_BARRIER_H
#define FASTRNN_SPIN_BARRIER_H

#include <stdint.h>
#include <time.h>

#if defined(__linux__)
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SPIN_BARRIER_PAUSE() _mm_pause()
#else
#define SPIN_BARRIER_PAUSE() ((void)0)
#endif

#define SPIN_BARRIER_SPIN_NS 50000           /* spin this long before blocking */
#define SPIN_BARRIER_WINDOW_NS 10000000      /* contention verdict over windows of 10 ms */
#define SPIN_BARRIER_BAD_WINDOWS 2           /* ... this many in a row with waiting dominant */

typedef struct {
    int parts;            /* P */
    int arrived;          /* parts arrived in this phase (atomic) */
    int phase;            /* phase counter; the futex word (atomic) */
    int sleepers;         /* parts blocked in the kernel (atomic) */
    int abort;            /* 1: a part will never come, waits return -1 (atomic) */
    int stop;             /* 1: waiting dominated, the loops should return (sticky) */
    int64_t wait_ns;      /* waiting time of all parts in this window (atomic) */
    int64_t window_start; /* start of the window (written by last arrivers only); 0 = not started */
    int windows;          /* windows ended so far (the first is the warm-up; last arrivers only) */
    int bad_windows;      /* consecutive judged windows in which waiting dominated (last arrivers) */
} spin_barrier;

static inline int64_t spin_barrier_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void spin_barrier_block(int *word, int current)
{
#if defined(__linux__)
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, current, NULL, NULL, 0);
#else
    (void)word;
    (void)current;
    struct timespec ts = {0, 20000}; /* no futex: sleep 20 us and look again */
    nanosleep(&ts, NULL);
#endif
}

static inline void spin_barrier_wake_all(int *word)
{
#if defined(__linux__)
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* Wake every waiter and make every wait return -1 from now on. */
static inline void spin_barrier_abort(spin_barrier *b)
{
    __atomic_store_n(&b->abort, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&b->phase, 1, __ATOMIC_SEQ_CST);
    spin_barrier_wake_all(&b->phase);
}

/* Returns 0, or -1 when aborted. */
static inline int spin_barrier_wait(spin_barrier *b)
{
    const int current = __atomic_load_n(&b->phase, __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&b->abort, __ATOMIC_ACQUIRE))
        return -1;
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->parts) {
        const int64_t now = spin_barrier_now();
        if (b->window_start == 0) { /* the warm-up window starts: earlier waits are start-up */
            b->window_start = now;
            __atomic_store_n(&b->wait_ns, 0, __ATOMIC_RELEASE);
        } else if (now - b->window_start >= SPIN_BARRIER_WINDOW_NS) {
            const int64_t waited = __atomic_exchange_n(&b->wait_ns, 0, __ATOMIC_ACQ_REL);
            if (b->windows++ > 0) { /* not the warm-up */
                b->bad_windows = 2 * waited > (now - b->window_start) * (int64_t)b->parts ? b->bad_windows + 1 : 0;
                if (b->bad_windows >= SPIN_BARRIER_BAD_WINDOWS)
                    b->stop = 1;
            }
            b->window_start = now;
        }
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->phase, current + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST))
            spin_barrier_wake_all(&b->phase);
        return 0;
    }
    const int64_t t0 = spin_barrier_now();
    unsigned spins = 0;
    while (__atomic_load_n(&b->phase, __ATOMIC_ACQUIRE) == current) {
        SPIN_BARRIER_PAUSE();
        if (++spins % 64 == 0 && spin_barrier_now() - t0 > SPIN_BARRIER_SPIN_NS) {
            __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&b->phase, __ATOMIC_SEQ_CST) == current)
                spin_barrier_block(&b->phase, current);
            __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
            break;
        }
    }
    __atomic_add_fetch(&b->wait_ns, spin_barrier_now() - t0, __ATOMIC_ACQ_REL);
    return __atomic_load_n(&b->abort, __ATOMIC_ACQUIRE) ? -1 : 0;
}

#endif /* FASTRNN_SPIN_BARRIER_H */
