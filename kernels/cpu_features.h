/* cpu_features.h — what this CPU can run, asked at run time: the one copy of the feature
 * detection, the target attributes and the capping rule that rnn_core.c, int8_core.c and
 * generate_core.c share (private to the kernels; the public levels are in rnn_core.h and
 * int8_core.h).
 *
 * FR_X86_SIMD is 1 on x86 with gcc or clang, unless the build defines RNN_NO_SIMD (plain C only,
 * in every kernel file). Code for an instruction set carries its target attribute (FR_AVX2,
 * FR_AVX512, ...), never a global -march: the package runs on any x86-64 CPU, and each
 * dispatcher picks a kernel with fr_cpu_has() (capped by FASTRNN_SIMD through the *_select_simd
 * functions) at run time.
 *
 * Also here, because every AVX2 micro-kernel needs them: the lane masks and the masked load /
 * store of one 16-float panel row (a partial last panel has `valid` < 16 outputs).
 */
#ifndef FASTRNN_CPU_FEATURES_H
#define FASTRNN_CPU_FEATURES_H

#include <stddef.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(RNN_NO_SIMD)
#define FR_X86_SIMD 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* target attributes: FR_X for a function, FR_X_INLINE for a helper inlined into one */
#define FR_TARGET(isa) __attribute__((target(isa)))
#define FR_TARGET_INLINE(isa) __attribute__((target(isa), always_inline)) inline
#define FR_ISA_AVX2 "avx2,fma"
#define FR_ISA_F16C "avx2,fma,f16c"
#define FR_ISA_AVXVNNI "avx2,fma,avxvnni"
#define FR_ISA_AVX512 "avx512f,fma"
#define FR_ISA_AVX512VNNI "avx512f,avx512bw,avx512vl,avx512vnni,fma"
#define FR_ISA_AVX512BF16 "avx512f,avx512bw,avx512vl,avx512bf16,fma"
#define FR_ISA_AMX "amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,fma"
#define FR_AVX2 FR_TARGET(FR_ISA_AVX2)
#define FR_AVX2_INLINE FR_TARGET_INLINE(FR_ISA_AVX2)
#define FR_F16C FR_TARGET(FR_ISA_F16C)
#define FR_F16C_INLINE FR_TARGET_INLINE(FR_ISA_F16C)
#define FR_AVXVNNI FR_TARGET(FR_ISA_AVXVNNI)
#define FR_AVXVNNI_INLINE FR_TARGET_INLINE(FR_ISA_AVXVNNI)
#define FR_AVX512 FR_TARGET(FR_ISA_AVX512)
#define FR_AVX512_INLINE FR_TARGET_INLINE(FR_ISA_AVX512)
#define FR_AVX512VNNI FR_TARGET(FR_ISA_AVX512VNNI)
#define FR_AVX512VNNI_INLINE FR_TARGET_INLINE(FR_ISA_AVX512VNNI)
#define FR_AVX512BF16 FR_TARGET(FR_ISA_AVX512BF16)
#define FR_AVX512BF16_INLINE FR_TARGET_INLINE(FR_ISA_AVX512BF16)
#define FR_AMX FR_TARGET(FR_ISA_AMX)
#else
#define FR_X86_SIMD 0
#endif

/* The small loops over the rows and panels of a register tile must unroll fully, so that the
 * accumulators live in registers (their trip counts are literals after inlining). */
#if defined(__clang__)
#define FR_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FR_UNROLL _Pragma("GCC unroll 16")
#else
#define FR_UNROLL
#endif

/* ============================================================================================
 * what the CPU has
 * ========================================================================================== */

enum {
    FR_HAS_AVX2_FMA,    /* AVX2 + FMA: the base of every SIMD path */
    FR_HAS_F16C,        /* + F16C (float16 weights of the generation loop) */
    FR_HAS_AVX_VNNI,    /* + AVX-VNNI (vpdpbusd on ymm, VEX) */
    FR_HAS_AVX512F,     /* + AVX-512F */
    FR_HAS_AVX512_VNNI, /* + AVX-512 BW, VL, VNNI */
    FR_HAS_AVX512_BF16, /* + AVX512_BF16 (vdpbf16ps) */
    FR_HAS_AMX_INT8     /* + AMX tile and int8, and Linux granted this process the tile state */
};

#if FR_X86_SIMD
/* AMX: CPUID.(7,0):EDX bit 24 (AMX-TILE) and 25 (AMX-INT8), and on Linux the tile data state
 * must be requested once per process (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18)
 * or the first tile instruction faults. Asked once per module that calls it. */
static inline int fr_amx_usable(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    static int usable = -1;
    if (usable < 0) {
        unsigned a, b, c, d;
        usable = 0;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 1) && ((d >> 25) & 1))
            usable = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    return usable;
#else
    return 0;
#endif
}
#endif

/* 1 when the CPU (and OS) can run the FR_HAS_* feature; each implies the base AVX2 + FMA */
static inline int fr_cpu_has(int feature)
{
#if FR_X86_SIMD
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
    switch (feature) {
    case FR_HAS_AVX2_FMA: return 1;
    case FR_HAS_F16C: return __builtin_cpu_supports("f16c");
    case FR_HAS_AVX_VNNI: return __builtin_cpu_supports("avxvnni");
    case FR_HAS_AVX512F: return __builtin_cpu_supports("avx512f");
    case FR_HAS_AVX512_VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case FR_HAS_AVX512_BF16:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    case FR_HAS_AMX_INT8: return fr_cpu_has(FR_HAS_AVX512_VNNI) && fr_amx_usable();
    default: return 0;
    }
#else
    (void)feature;
    return 0;
#endif
}

/* A module's instruction-set level (ordered, plain C = 0) lives in one `static int state = -1`:
 * fr_level() decides it on first use (the best the CPU has, from best()); fr_cap_level() is the
 * level a cap gives: the requested `level` (-1 = no cap), never above the best. */
static inline int fr_level(int *state, int (*best)(void))
{
    if (*state < 0)
        *state = best();
    return *state;
}

static inline int fr_cap_level(int level, int best) { return level < 0 || level > best ? best : level; }

/* ============================================================================================
 * the denormal switch (x86 MXCSR, per thread): a decaying state must not fall onto the slow
 * denormal path. rnn_denormals_off / rnn_denormals_restore (rnn_core.h) are these.
 * ========================================================================================== */

static inline unsigned fr_denormals_off(void)
{
#if FR_X86_SIMD && defined(__SSE__)
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040); /* FTZ | DAZ */
    return saved;
#else
    return 0;
#endif
}

static inline void fr_denormals_restore(unsigned saved)
{
#if FR_X86_SIMD && defined(__SSE__)
    _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

/* ============================================================================================
 * AVX2 panel rows: 16 floats as two ymm halves, `valid` (>= 1) of them real
 * ========================================================================================== */

#if FR_X86_SIMD
/* lanes [0, count) set, count in 1..8 */
static FR_AVX2_INLINE __m256i fr_lanes8(ptrdiff_t count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* lo, hi <- o[0..16) (zeros past valid) */
static FR_AVX2_INLINE void fr_load16(const float *o, ptrdiff_t valid, __m256 *lo, __m256 *hi)
{
    if (valid >= 16) {
        *lo = _mm256_loadu_ps(o);
        *hi = _mm256_loadu_ps(o + 8);
    } else {
        *lo = _mm256_maskload_ps(o, fr_lanes8(valid > 8 ? 8 : valid));
        *hi = valid > 8 ? _mm256_maskload_ps(o + 8, fr_lanes8(valid - 8)) : _mm256_setzero_ps();
    }
}

/* o[0..valid) <- lo, hi */
static FR_AVX2_INLINE void fr_store16(float *o, ptrdiff_t valid, __m256 lo, __m256 hi)
{
    if (valid >= 16) {
        _mm256_storeu_ps(o, lo);
        _mm256_storeu_ps(o + 8, hi);
    } else {
        _mm256_maskstore_ps(o, fr_lanes8(valid > 8 ? 8 : valid), lo);
        if (valid > 8)
            _mm256_maskstore_ps(o + 8, fr_lanes8(valid - 8), hi);
    }
}
#endif

#endif /* FASTRNN_CPU_FEATURES_H */
