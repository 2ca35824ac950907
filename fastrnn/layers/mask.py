"""Masks: which steps of each row are real (Keras's (batch, time) boolean masks).

A mask travels beside a tensor in one of two forms:

- ``lengths``, int64 (B,): right padding, steps ``t < lengths[b]`` valid. Every kernel takes this
  form directly; it is what ``predict(lengths=...)`` gives and what right-padded masks become.
- a boolean (B, T) array (True = a real step): any other pattern, e.g. the left padding of
  Keras's ``pad_sequences`` (its default) or masked steps in the middle of a row.

``normalize`` turns a boolean mask into lengths whenever it is right-aligned, so only masks that
need it travel as arrays, and the right-padding path costs one comparison of the mask. Keras's
rule for a masked step: the recurrent state is left unchanged (fastrnn.layers.recurrent runs such
masks by packing each row's real steps to the left, see ``compact``).
"""
from __future__ import annotations

import numpy as np


def is_lengths(mask) -> bool:
    """True for the lengths form (B,), False for a (B, T) boolean mask."""
    return mask.ndim == 1


def step_mask(mask, T) -> np.ndarray:
    """Either form -> bool (B, T), True at real steps."""
    if mask.ndim == 2:
        return mask
    return np.arange(T)[None, :] < mask[:, None]


def normalize(valid) -> np.ndarray:
    """A boolean (B, T) mask -> lengths (B,) int64 when each row's real steps come first (right
    padding), else the mask itself (bool, C-contiguous)."""
    valid = np.ascontiguousarray(valid, dtype=bool)
    counts = valid.sum(axis=1, dtype=np.int64)
    if np.array_equal(valid, np.arange(valid.shape[1])[None, :] < counts[:, None]):
        return counts
    return valid


def combine(masks, how):
    """Masks of tensors of the same (B, T), None = no mask -> one mask (or None).
    ``how`` "and": None entries ignored (a mask-creating layer over a masked input);
    "or": None if any input has no mask (Keras merges: an unmasked input is all valid)."""
    if how == "or" and any(m is None for m in masks):
        return None
    present = [m for m in masks if m is not None]
    if not present:
        return None
    if all(is_lengths(m) for m in present):
        out = present[0]
        for m in present[1:]:
            out = np.minimum(out, m) if how == "and" else np.maximum(out, m)
        return out
    T = next(m.shape[1] for m in present if not is_lengths(m))
    out = step_mask(present[0], T)
    for m in present[1:]:
        out = (out & step_mask(m, T)) if how == "and" else (out | step_mask(m, T))
    return normalize(out)


def counts(mask) -> np.ndarray:
    """Real steps per row, int64 (B,)."""
    return mask if is_lengths(mask) else mask.sum(axis=1, dtype=np.int64)


def compact(valid):
    """bool (B, T) -> (order, counts): ``order[b]`` lists row b's real steps first, in time order,
    then its masked steps; ``counts[b]`` real steps. ``np.take_along_axis(x, order)`` packs each
    row's real steps to the left, to be run with lengths = counts."""
    order = np.argsort(~valid, axis=1, kind="stable")
    return order, valid.sum(axis=1, dtype=np.int64)


def check_has_steps(x, what):
    """A mask over zero time steps is refused with a message (instead of an empty reduction)."""
    if x.ndim >= 2 and x.shape[0] and x.shape[1] == 0:
        raise ValueError(f"{what}: the input has no time steps (shape {tuple(x.shape)}), so there is nothing to "
                         "mask; give each row at least one step (an all-padding row such as [0] is fine: its "
                         "steps are masked and the state stays the initial one)")
