"""Beam search: the deterministic decoding translation and grapheme-to-phoneme users expect.

    model.generate("prompt", num_beams=4, length_penalty=1.0, max_new_tokens=50, stop="\\n")

``num_beams`` hypotheses per prompt are decoded together as rows of one batch through the same
engines and generation plan as sampling (fastrnn.generate): each step feeds every live beam its
last token, reads the next-token logits of every row, and keeps the best continuations; when
beams are reordered, each row's state is copied from the beam it continues.

Scoring follows Hugging Face's ``BeamSearchScorer`` (early_stopping=False):

- a beam's score is the sum of the log-probabilities (log-softmax of the logits, float64) of its
  generated tokens;
- each step ranks the ``2 * num_beams`` best (beam, token) candidates of a prompt (ties: the
  lower beam, then the lower token id). A candidate that completes a stop sequence (``stop=``,
  as in generate: a stop id, a stop string or a sequence of ids) and ranks among the first
  ``num_beams`` becomes a finished hypothesis scored ``sum_logprobs / length ** length_penalty``
  (length: generated tokens including the stop); the others continue, ``num_beams`` of them;
- at most ``num_beams`` finished hypotheses are kept (a better one replaces the worst); a
  prompt is done when it has ``num_beams`` of them and the best candidate's score divided by the
  current length ** length_penalty cannot beat the worst kept one;
- at ``max_new_tokens`` the running beams join the finished ones with the same scoring, and the
  best score wins (ties: the latest added).

The result is the best hypothesis without the prompt and without its stop tokens, in the
prompt's kind (str, list of ids, array; a list for a batch), as ``generate`` returns. Sampling
options (temperature, top_k, top_p, repetition_penalty, seed) do not apply to beam search.
``num_beams=1`` keeps one beam: greedy decoding (identical to ``temperature=0`` when no stop
ends it early).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .engines import HAS_LOGITS, Rows, get_engine, match_stop, stops_list
from .job import _Formatter, _Job
from .options import _count, _prompt_rows, _stops, _with_defaults, model_or_default
from .plan import generation_plan
from .run import default_weights
from .sampling import Sampling


class Hypotheses:
    """The finished hypotheses of one prompt (Hugging Face's BeamHypotheses)."""

    def __init__(self, num_beams, length_penalty):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams = []  # (score, tokens)
        self.worst_score = 1e9

    def add(self, tokens, sum_logprobs, length):
        score = sum_logprobs / (length ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, list(tokens)))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs, length):
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / (length ** self.length_penalty)

    def best(self):
        ranked = sorted(self.beams, key=lambda b: b[0])  # stable: the latest of equal scores wins
        return ranked[-1][1]


def _check(num_beams, length_penalty):
    if isinstance(num_beams, bool) or not isinstance(num_beams, numbers.Integral) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real) \
            or not math.isfinite(float(length_penalty)):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    return int(num_beams), float(length_penalty)


def log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def beam_search(model, prompt, max_new_tokens=None, num_beams=4, length_penalty=1.0, stop=None, initial_state=None,
                backend=None, weights=None, threads=None):
    """The best continuation of ``prompt`` by beam search (see the module docstring). Arguments
    as fastrnn.generate.generate (max_new_tokens=None: the model's recommended count, else
    GENERATION_DEFAULTS'); ``num_beams`` >= 1, ``length_penalty`` a finite number (> 0
    favours longer hypotheses, < 0 shorter ones)."""
    from ..backends import check_threads

    model = model_or_default(model)
    K, lp = _check(num_beams, length_penalty)
    plan = generation_plan(model, default_weights(model, weights))
    threads = check_threads(threads)
    max_new = _count(_with_defaults(model, max_new_tokens=max_new_tokens)["max_new_tokens"])
    prompts, batch, kind = _prompt_rows(model, plan, prompt)
    B = len(prompts)
    stops = _stops(model, plan, stop)
    stop_seqs = [list(s) for s in stops_list(stops)]
    no_stops = _stops(model, plan, None)
    engine = plan.engine_for(get_engine(backend))
    greedy = Sampling(temperature=0.0)
    # the prompts, once per prompt; then each row copied to its beams
    first = Rows(plan, B)
    plan.initial_rows(initial_state, B, first.state)
    _Job(plan, engine, first, prompts, greedy, no_stops, 0, threads).run_all()
    rows = Rows(plan, B * K)
    for name in Rows.FIELDS:
        getattr(rows, name)[...] = np.repeat(getattr(first, name), K, axis=0)
    V = plan.vocab_size
    scores = np.full((B, K), -np.inf)
    scores[:, 0] = 0.0  # all beams start equal: only the first may extend at the first step
    tokens = [[[] for _ in range(K)] for _ in range(B)]
    hyps = [Hypotheses(K, lp) for _ in range(B)]
    done = [False] * B
    for step in range(max_new):
        logp = log_softmax64(rows.logits[:, :V]).reshape(B, K, V)
        source = np.arange(B * K)
        feed = []
        for b in range(B):
            if done[b]:
                feed += [[]] * K
                continue
            flat = (scores[b][:, None] + logp[b]).reshape(-1)
            order = np.argsort(-flat, kind="stable")[:2 * K]
            chosen = []
            for rank, idx in enumerate(order):
                beam, tok = divmod(int(idx), V)
                seq = tokens[b][beam] + [tok]
                matched = match_stop(stop_seqs, seq) if stop_seqs else 0
                if matched:
                    if rank < K:
                        hyps[b].add(seq[:len(seq) - matched], float(flat[idx]), len(seq))
                    continue
                chosen.append((beam, tok, float(flat[idx])))
                if len(chosen) == K:
                    break
            while len(chosen) < K:  # a tiny vocabulary: fewer continuations than beams
                chosen.append((chosen[0][0] if chosen else 0, 0, -np.inf))
            new_tokens = []
            for k, (beam, tok, score) in enumerate(chosen):
                source[b * K + k] = b * K + beam
                scores[b, k] = score
                new_tokens.append(tokens[b][beam] + [tok])
            tokens[b] = new_tokens
            done[b] = hyps[b].is_done(float(flat[order[0]]), step + 1)
            feed += [[] if done[b] else [t[-1]] for t in new_tokens]
        if all(done) or step == max_new - 1:
            break
        for name in ("state", "seen"):
            getattr(rows, name)[...] = getattr(rows, name)[source]
        rows.status[:, HAS_LOGITS] = 0
        _Job(plan, engine, rows, [np.asarray(f, np.int32) for f in feed], greedy, no_stops, 0, threads).run_all()
    for b in range(B):
        if not done[b]:
            for k in range(K):
                if max_new and np.isfinite(scores[b, k]):
                    hyps[b].add(tokens[b][k], float(scores[b, k]), len(tokens[b][k]))
    fmt = _Formatter(model, kind)
    results = [fmt.whole(np.asarray(h.best() if h.beams else [], np.int64)) for h in hyps]
    return results if batch else results[0]
