"""The arguments of generation: defaults, prompts, seeds, stop sequences, counts.

Semantics (decisions where the issue is open):
- The result is the continuation only, not the prompt, in the prompt's kind: a str for a str,
  a list of ids for a list of ids (an array for an array), a list of those for a batch.
- ``stop``: a string, a token id, a list of ids (a sequence of several tokens) inside a list,
  or a list mixing those. Strings are turned into tokens with the model's vocabulary (a stop
  containing a symbol outside it can never occur and is ignored); matching is on tokens and only
  inside the generated part (not across the prompt). Generation ends at the first match and the
  stop text is NOT kept in the output (when several stops end there, the longest is removed).
  ``max_new_tokens`` counts the stop tokens too. Streaming holds back a tail that could still
  become a stop, so the pieces always add up to the non-streamed result.
- ``seed``: an int gives every row the same generator, so a row's output equals running its
  prompt alone with that seed (identical prompts give identical rows: pass one seed per row, a
  list, to get different samples); None draws a fresh seed per row.
- Streaming a batch yields, per step, a list with one piece per row ("" or [] when a row
  produced nothing visible).
- Defaults (one set for Python and the command line): ``GENERATION_DEFAULTS`` (200 new
  tokens, temperature 0.8, no top-k / top-p / repetition penalty), overridden by the values a
  model file recommends in its metadata ``"generation"`` (a dict with any of those keys, e.g.
  ``{"temperature": 0.7, "top_k": 40}``), overridden by the arguments of the call. A parameter
  left at None takes the default; top_k=0, top_p=1 and repetition_penalty=1 switch a
  recommended setting off.
- A prompt is never empty; ``initial_state`` (as in Model.predict, batch = number of prompts)
  starts the recurrent layers from that state instead of zeros.
"""
from __future__ import annotations

import numbers

import numpy as np

from .sampling import MASK64, Sampling

# The defaults of generate(), Model.generate, Session and `fastrnn generate` (see the module doc);
# a model's metadata "generation" overrides them for that model.
GENERATION_DEFAULTS = {"max_new_tokens": 200, "temperature": 0.8, "top_k": None, "top_p": None,
                       "repetition_penalty": None}

# generate(None, ...), beam_search(None, ...) and Session() use the bundled character model.
# Loading a file builds a Model, which sits above this package in the import layers (README
# "Design"), so the loader is plugged in from above: fastrnn/generate/__init__.py sets
# DEFAULT_MODEL to fastrnn.bundled.bundled_model when the package is first imported, which is
# before any of its modules can be used.
DEFAULT_MODEL = None


def model_or_default(model):
    """``model``, or the bundled character model when it is None."""
    return DEFAULT_MODEL() if model is None else model


def _is_int(x):
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def _prompt_rows(model, plan, prompt):
    """prompt -> (list of int32 id arrays, batch?, kind in {'text', 'list', 'array'})"""
    if prompt is None:
        raise ValueError("empty prompt: give a str or a list of token ids")
    if isinstance(prompt, str):
        items, batch, kind = [prompt], False, "text"
    elif isinstance(prompt, np.ndarray):
        if prompt.ndim == 1:
            items, batch = [prompt], False
        elif prompt.ndim == 2:
            items, batch = list(prompt), True
        else:
            raise ValueError(f"a prompt array must be 1-D (ids) or 2-D (a batch of ids), got shape {prompt.shape}")
        kind = "array"
    elif isinstance(prompt, (list, tuple)):
        if len(prompt) == 0:
            raise ValueError("empty prompt: give at least one token or character")
        if all(isinstance(p, str) for p in prompt):
            items, batch, kind = list(prompt), True, "text"
        elif all(_is_int(p) for p in prompt):
            items, batch, kind = [list(prompt)], False, "list"
        elif all(isinstance(p, (list, tuple, np.ndarray)) for p in prompt):
            items, batch = list(prompt), True
            kind = "array" if all(isinstance(p, np.ndarray) for p in prompt) else "list"
        else:
            raise ValueError("a prompt is a str, a list of token ids, or a list of either (a batch); "
                             "this list mixes kinds")
    else:
        raise ValueError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
    rows = []
    for i, item in enumerate(items):
        where = f"prompt {i} of the batch" if batch else "prompt"
        if kind == "text":
            if model.vocabulary is None:
                raise ValueError("this model has no vocabulary, so it cannot read text: give the prompt as "
                                 "token ids (a list of ints)")
            if len(item) == 0:
                raise ValueError(f"{where} is empty: generation needs at least one character to start from")
            ids = model.vocabulary.encode(item)  # ValueError for a symbol outside it (no unk id)
            if len(ids) == 0:
                raise ValueError(f"{where} has no tokens")
        else:
            if isinstance(item, (list, tuple)) and all(_is_int(i) for i in item):
                bad = [i for i in item if not 0 <= i < plan.table_rows]
                if bad:
                    raise ValueError(f"{where}: token id {bad[0]} is outside the model's vocabulary "
                                     f"(valid: 0..{plan.table_rows - 1})")
            arr = np.asarray(item)
            if arr.ndim != 1:
                raise ValueError(f"{where}: token ids must be a flat list, got shape {arr.shape}")
            if arr.size == 0:
                raise ValueError(f"{where} is empty: generation needs at least one token to start from")
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{where}: token ids must be integers, got dtype {arr.dtype}")
            ids = arr
        ids = np.asarray(ids, np.int64)
        if ids.min() < 0 or ids.max() >= plan.table_rows:
            bad = ids[(ids < 0) | (ids >= plan.table_rows)][0]
            raise ValueError(f"{where}: token id {bad} is outside the model's vocabulary "
                             f"(valid: 0..{plan.table_rows - 1})")
        rows.append(ids.astype(np.int32))
    return rows, batch, kind


def _seeds(seed, batch):
    if seed is None:
        import secrets  # when used: `import fastrnn` loads this module

        return [secrets.randbits(64) for _ in range(batch)]
    if _is_int(seed):
        return [int(seed) & MASK64] * batch
    if isinstance(seed, (list, tuple, np.ndarray)) and len(seed) == batch and all(_is_int(s) for s in seed):
        return [int(s) & MASK64 for s in seed]
    raise ValueError(f"seed must be an int, None, or a list of {batch} ints (one per prompt), got {seed!r}")


def _stops(model, plan, stop):
    """stop -> (tokens int32, offsets int64), see the module docstring"""
    if stop is None:
        seqs = []
    else:
        items = [stop] if isinstance(stop, (str,)) or _is_int(stop) else list(stop)
        seqs = []
        for item in items:
            if isinstance(item, str):
                if item == "":
                    raise ValueError("an empty stop string would stop at once; remove it")
                vocab = model.vocabulary
                if vocab is None:
                    raise ValueError("this model has no vocabulary: give stop sequences as token ids")
                ids = [vocab.index.get(piece) for piece in vocab.split(item)]
                if not ids or any(i is None or i >= plan.vocab_size for i in ids):
                    continue  # a symbol the model never produces: this stop cannot occur
                seqs.append(ids)
            elif _is_int(item) or (isinstance(item, (list, tuple, np.ndarray)) and len(item) > 0
                                   and all(_is_int(i) for i in item)):
                ids = [int(item)] if _is_int(item) else [int(i) for i in item]
                if any(i < 0 for i in ids):
                    raise ValueError(f"stop token ids must be >= 0, got {item!r}")
                if any(i >= plan.vocab_size for i in ids):
                    continue  # an id the model never produces: this stop cannot occur
                seqs.append(ids)
            else:
                raise ValueError(f"stop must be strings, token ids or lists of ids, got {item!r}")
    tokens = np.array([t for s in seqs for t in s], np.int32)
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    return tokens, offsets


def _count(n, name="max_new_tokens"):
    if not _is_int(n) or n < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
    return int(n)


def generation_defaults(model) -> dict:
    """GENERATION_DEFAULTS updated with ``model``'s recommended values (metadata "generation")."""
    defaults = dict(GENERATION_DEFAULTS)
    stored = (getattr(model, "metadata", None) or {}).get("generation")
    if stored is None:
        return defaults
    if not isinstance(stored, dict) or set(stored) - set(defaults):
        raise ValueError(f"model metadata 'generation' must be a dict with keys among {sorted(defaults)}, "
                         f"got {stored!r}")
    defaults.update(stored)
    try:
        _count(defaults["max_new_tokens"])
        Sampling(**{k: v for k, v in defaults.items() if k != "max_new_tokens"})
    except ValueError as exc:
        raise ValueError(f"model metadata 'generation' is invalid: {exc}") from None
    return defaults


def _with_defaults(model, **given) -> dict:
    """The arguments ``given`` with each None replaced by the model's default (generation_defaults)."""
    defaults = generation_defaults(model)
    return {k: defaults[k] if v is None else v for k, v in given.items()}
