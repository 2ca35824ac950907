"""The NumPy reference of sampling: random numbers, logit processing, the sampler.

Logit processing, in float64 on the model's float32 logits, in this order
(../shared/CONVENTIONS.md):
1. repetition penalty (CTRL): for every distinct token already fed or sampled in this row, a
   positive logit is divided by the penalty, a negative one multiplied;
2. temperature: y = (x - max x) / T (the shift changes nothing but keeps exp finite); T = 0 is
   greedy: the first largest penalised logit, nothing else applies and no random number is used;
3. top-k: keep y >= the k-th largest y (ties kept);
4. top-p: with e = exp(y) and Z = sum(e) in index order, walk the tokens by decreasing e; the
   first whose running sum reaches p * Z is kept with everything at least as likely (ties kept);
5. sample by inverse CDF: u in [0, 1) from the row's generator; the first token (index order)
   whose running sum of e exceeds u * sum(e).
The random numbers come from SplitMix64 (a 64-bit counter through a mixer), implemented
identically here, in C (kernels/generate_core.c) and in Numba (kernels/numba_generate.py); one
number per sampled token. Backends compute the same logits up to float32 rounding (about 1e-6),
so the same seed gives the same tokens on every backend except when a draw falls within that
rounding of a boundary between two tokens; within one backend the result does not depend on
streaming, batching or threads.

The functions here, with the ``numpy`` engine's loop (fastrnn.generate.engines), are the
reference every compiled engine is tested against.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

f32 = np.float32

# A penalty far from 1 divides or multiplies logits into overflow (1e-320 gave NaN probabilities);
# useful values are around 1.0-2.0.
REPETITION_PENALTY_RANGE = (0.01, 100.0)

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(state: int):
    """One SplitMix64 draw: (new_state, u) with u in [0, 1) (53 bits)."""
    state = (state + GOLDEN_GAMMA) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return state, (z >> 11) * 2.0 ** -53


class Sampling:
    """Validated sampling parameters; ``as_tuple()`` is what the kernels take."""

    __slots__ = ("temperature", "top_k", "top_p", "repetition_penalty")

    def __init__(self, temperature=1.0, top_k=None, top_p=None, repetition_penalty=None):
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
        temperature = float(temperature)
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
        if top_k is None:
            top_k = 0
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 or None = off), got {top_k!r}")
        if top_p is None:
            top_p = 1.0
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not (0.0 < float(top_p) <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 or None = off), got {top_p!r}")
        if repetition_penalty is None:
            repetition_penalty = 1.0
        lo, hi = REPETITION_PENALTY_RANGE
        if (isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, numbers.Real)
                or not (lo <= float(repetition_penalty) <= hi)):
            raise ValueError(f"repetition_penalty must be a number in [{lo}, {hi}] (1 or None = off; values "
                             f"above 1 discourage repeats), got {repetition_penalty!r}")
        self.temperature = temperature
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.repetition_penalty = float(repetition_penalty)

    def as_tuple(self):
        return (self.temperature, self.top_k, self.top_p, self.repetition_penalty)

    def __repr__(self):
        return ("Sampling(temperature={}, top_k={}, top_p={}, repetition_penalty={})"
                .format(*self.as_tuple()))


def process_logits(logits, sampling: Sampling, seen=None) -> np.ndarray:
    """The reference logit processing. logits (V,) float32, seen (V,) bool/uint8 or None
    (tokens already fed or sampled) -> (V,) float64 processed logits, -inf where masked.
    Greedy (temperature 0): the penalised logits, nothing masked."""
    x = np.asarray(logits, dtype=f32).astype(np.float64)
    V = x.shape[0]
    r = sampling.repetition_penalty
    if seen is not None and r != 1.0:
        s = np.asarray(seen).astype(bool)
        x[s] = np.where(x[s] > 0, x[s] / r, x[s] * r)
    if sampling.temperature == 0.0:
        return x
    y = (x - x.max()) / sampling.temperature
    k = sampling.top_k
    if 0 < k < V:
        kth = np.partition(y, V - k)[V - k]  # the k-th largest
        y[y < kth] = -np.inf
    if sampling.top_p < 1.0:
        e = np.exp(y)
        total = np.cumsum(e)[-1]  # sequential sum in index order (np.sum is pairwise)
        desc = np.sort(e)[::-1]
        cum = np.cumsum(desc)
        m = int(np.searchsorted(cum, sampling.top_p * total, side="left"))  # first cum >= p * Z
        if m < V:
            y[e < desc[m]] = -np.inf
    return y


def sample_processed(y, u: float) -> int:
    """Inverse CDF over processed logits y (V,) float64 with u in [0, 1)."""
    e = np.exp(y)
    cum = np.cumsum(e)
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))  # first cum > u * total
    if i >= len(y):  # u * total rounded up to total
        i = int(np.nonzero(e > 0)[0][-1])
    return i


def sample_token(logits, sampling: Sampling, seen=None, rng_state: int = 0):
    """The reference sampler: (token, new_rng_state). Greedy uses no random number."""
    y = process_logits(logits, sampling, seen)
    if sampling.temperature == 0.0:
        return int(np.argmax(y)), rng_state
    rng_state, u = splitmix64(rng_state)
    return sample_processed(y, u), rng_state


def probabilities(logits, sampling: Sampling, seen=None) -> np.ndarray:
    """The distribution a token is drawn from: (V,) float64 (one-hot at the argmax when greedy)."""
    return distribution(process_logits(logits, sampling, seen), sampling)


def distribution(y, sampling: Sampling) -> np.ndarray:
    """Processed logits y (V,) -> the probabilities a token is drawn with: (V,) float64, one-hot at
    the argmax when greedy (temperature 0)."""
    if sampling.temperature == 0.0:
        p = np.zeros(len(y))
        p[int(np.argmax(y))] = 1.0
        return p
    e = np.exp(y)
    return e / np.cumsum(e)[-1]
