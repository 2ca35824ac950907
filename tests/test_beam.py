"""Beam search (fastrnn.generate.beam, generate(num_beams=, length_penalty=)) against a brute-force NumPy
beam search that recomputes every prefix with Model.predict (no row states, no reordering), an
exhaustive search over every sequence, and greedy decoding."""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn.generate.beam import beam_search
from fastrnn.layers import Dense, DirectionWeights, Embedding, Recurrent


def tiny_model(V=5, H=8, seed=0, cell="gru"):
    """A random language model whose next-token distributions are flat enough for beams to
    differ from greedy decoding."""
    rng = np.random.default_rng(seed)
    G = {"gru": 3, "lstm": 4}[cell]

    def w(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    rnn = Recurrent(cell=cell, hidden_size=H, directions=[
        DirectionWeights(w(G * H, 4, s=1.5), w(G * H, H, s=0.8), w(G * H, s=0.3), w(G * H, s=0.3))])
    return fastrnn.Model([Embedding(w(V, 4)), rnn, Dense(w(V, H, s=0.6), w(V, s=0.2))])


def sequence_logprob(model, prompt, seq):
    logits = model.predict(np.array([list(prompt) + list(seq)]), backend="numpy")[0]
    return sum(log_softmax(logits[len(prompt) - 1 + i])[t] for i, t in enumerate(seq))


def log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def brute_force_beam(model, prompt, K, lp, max_new, stop_ids=()):
    """Hugging Face's BeamSearchScorer rules, written plainly: every candidate's log-probabilities
    recomputed from the whole sequence."""
    V = model.output_size

    def logprobs(seq):
        return log_softmax(model.predict(np.array([list(prompt) + seq]), backend="numpy")[0, -1])

    running = [(0.0, [])]
    finished = []  # (score, tokens)
    for step in range(max_new):
        cands = []
        for bi, (score, seq) in enumerate(running):
            lpv = logprobs(seq)
            cands += [(score + lpv[t], bi, t) for t in range(V)]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        cands = cands[:2 * K]
        new = []
        for rank, (score, bi, t) in enumerate(cands):
            seq = running[bi][1] + [t]
            if t in stop_ids:
                if rank < K:
                    norm = score / len(seq) ** lp
                    if len(finished) < K or norm > min(f[0] for f in finished):
                        finished.append((norm, seq[:-1]))
                        if len(finished) > K:
                            finished.remove(min(finished, key=lambda f: f[0]))
                continue
            new.append((score, seq))
            if len(new) == K:
                break
        running = new
        if len(finished) >= K and min(f[0] for f in finished) >= cands[0][0] / (step + 1) ** lp:
            break
    else:
        for score, seq in running:
            norm = score / len(seq) ** lp
            if len(finished) < K or norm > min(f[0] for f in finished):
                finished.append((norm, seq))
                if len(finished) > K:
                    finished.remove(min(finished, key=lambda f: f[0]))
    return max(finished, key=lambda f: f[0])[1]


@pytest.mark.parametrize("K,lp,stops", [(2, 1.0, ()), (3, 1.0, (1,)), (3, 0.0, (1,)), (4, 2.0, (2, 4)), (3, -1.0, (0,))])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_search_equals_brute_force(backend, K, lp, stops, cell):
    model = tiny_model(seed=3 if cell == "gru" else 4, cell=cell)
    for prompt in ([0], [3, 1, 2]):
        want = brute_force_beam(model, prompt, K, lp, 6, stops)
        got = model.generate(prompt, max_new_tokens=6, num_beams=K, length_penalty=lp, stop=list(stops),
                             backend=backend)
        assert got == want, (prompt, got, want)


def test_beam_search_batch_equals_each_prompt_alone():
    model = tiny_model(seed=5)
    prompts = [[0], [2, 2, 3], [4, 1]]
    alone = [beam_search(model, p, max_new_tokens=7, num_beams=3, stop=1) for p in prompts]
    assert beam_search(model, prompts, max_new_tokens=7, num_beams=3, stop=1) == alone
    assert beam_search(model, prompts, max_new_tokens=7, num_beams=3, stop=1, threads=2) == alone


def test_wide_beam_is_exhaustive_search():
    """With num_beams = V ** (L - 1) and no stop, beam search keeps every prefix: its result is
    the most likely of all V ** L sequences."""
    V, L = 4, 3
    model = tiny_model(V=V, seed=6)
    prompt = [1, 2]
    best, best_score = None, -np.inf
    for seq in itertools.product(range(V), repeat=L):
        ids = np.array([prompt + list(seq)])
        logits = model.predict(ids, backend="numpy")[0]
        score = sum(log_softmax(logits[len(prompt) - 1 + i])[t] for i, t in enumerate(seq))
        if score > best_score:
            best, best_score = list(seq), score
    assert beam_search(model, prompt, max_new_tokens=L, num_beams=V ** (L - 1)) == best


def test_beams_find_more_likely_sequences_than_greedy():
    model = tiny_model(seed=4, cell="lstm")
    prompt = [0]
    greedy = model.generate(prompt, max_new_tokens=6, temperature=0)
    beam = model.generate(prompt, max_new_tokens=6, num_beams=2, length_penalty=0.0)
    assert beam != greedy
    assert sequence_logprob(model, prompt, beam) > sequence_logprob(model, prompt, greedy)


def test_one_beam_is_greedy():
    model = tiny_model(seed=7)
    for prompt in ([0], [3, 4, 1], [[1], [2, 3]]):
        greedy = model.generate(prompt, max_new_tokens=9, temperature=0)
        assert beam_search(model, prompt, max_new_tokens=9, num_beams=1) == greedy


def test_beam_arguments_are_checked():
    model = tiny_model()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_beams"):
            model.generate([0], num_beams=bad)
    with pytest.raises(ValueError, match="length_penalty"):
        model.generate([0], num_beams=2, length_penalty=float("nan"))
    with pytest.raises(ValueError, match="stream"):
        model.generate([0], num_beams=2, stream=True)
    assert model.generate([0], num_beams=3, max_new_tokens=0) == []
