"""Continuous batching (fastrnn/generate/batch_session.py, issue 28): streams join and leave one
batch of rows at any step, each with its own sampling parameters and generator, and each gets
exactly the tokens ``model.generate`` gives it alone.

The schedules are random (seeded): streams of different prompts (long ones read in over several
calls), parameters, stop sequences and lengths join while others decode, on every generation
engine, for LSTM / GRU / RNN chains, an LSTM with a projection, float16 / int8 weights and a causal
graph that generates step by step. Nothing here is timed.
"""
import random

import numpy as np
import pytest

import fastrnn
from fastrnn import generate as gen
from fastrnn.generate import BatchSession
from fastrnn.layers import Activation, Dense, Embedding
from helpers import random_recurrent

ENGINES = gen.available_engines()
CHARS = "abcdefghijklmnopqrstuvwxyz ."


def lm(cell="lstm", seed=0, layers=2, H=16, graph=False, vocab=CHARS, **options):
    """[Embedding] -> recurrent layers [-> Tanh] -> Dense over the vocabulary, random weights."""
    rng = np.random.default_rng(seed)
    V = len(vocab)
    out = [Embedding(rng.standard_normal((V, 8)).astype(np.float32))]
    size = 8
    for k in range(layers):
        layer = random_recurrent(rng, cell, input_size=size, hidden_size=H, scale=0.5, name=f"rnn{k}", **options)
        out.append(layer)
        size = layer.output_size
    if graph:  # not the compiled chain: generates through fastrnn.generate.stepwise
        out.append(Activation("tanh"))
    out.append(Dense((rng.standard_normal((V, size)) * 1.5).astype(np.float32),
                     (rng.standard_normal(V) * 0.5).astype(np.float32)))
    return fastrnn.Model(out, vocabulary=fastrnn.Vocabulary(list(vocab)))


def random_requests(n, seed=0, prompts=("ab", "the cat", "q", "a." * 20, "zz z", "hello world " * 3)):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(dict(prompt=rnd.choice(prompts), max_new_tokens=rnd.choice([0, 1, 2, 7, 25, 60]),
                        seed=rnd.randrange(2 ** 64), temperature=rnd.choice([0, 0.3, 0.8, 1.5]),
                        top_k=rnd.choice([None, 3, 10]), top_p=rnd.choice([None, 0.9, 0.4]),
                        repetition_penalty=rnd.choice([None, 1.4, 0.8]),
                        stop=rnd.choice([None, "a", ["b c", "."], ["zz", "z z", "e"]])))
    return out


def serve_all(session, requests, seed=0, join=0.6):
    """Run ``requests`` through ``session``: each step, with probability ``join`` the next request
    joins (while rows are free). Returns {i: (stream, streamed pieces)}."""
    rnd = random.Random(seed)
    pending = list(range(len(requests)))
    out = {}
    while pending or session.active or not session.idle:
        while pending and session.free and rnd.random() < join:
            i = pending.pop(0)
            kw = dict(requests[i])
            stream = session.make_stream(kw.pop("prompt"), **kw)
            stream.tag = i
            out[i] = (stream, [])
            session.add(stream)
        for s in session.step():
            out[s.tag][1].append(s.take_piece())
    return out


def check_equal(model, requests, served, **kw):
    for i, req in enumerate(requests):
        req = dict(req)
        want = model.generate(req.pop("prompt"), **req, **kw)
        stream, pieces = served[i]
        assert stream.text() == want, (i, requests[i])
        assert "".join(pieces) == want, (i, requests[i])
        assert stream.finish_reason in ("stop", "length")
        if stream.finish_reason == "length":
            assert len(stream.tokens) == req["max_new_tokens"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "lstm-proj", "graph"])
def test_streams_joining_at_any_step_equal_generate_alone(engine, kind):
    cell = kind.split("-")[0]
    model = lm("gru" if kind == "graph" else cell, seed=len(kind), graph=kind == "graph",
               proj_size=6 if kind == "lstm-proj" else 0)
    requests = random_requests(30, seed=len(kind))
    session = BatchSession(model, capacity=5, backend=engine)
    served = serve_all(session, requests, seed=1)
    check_equal(model, requests, served, backend=engine)
    assert session.free == 5


@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_rounded_weights_give_generate_s_tokens(weights):
    model = lm("lstm", seed=3)
    requests = random_requests(20, seed=3)
    served = serve_all(BatchSession(model, capacity=4, weights=weights), requests, seed=2)
    check_equal(model, requests, served, weights=weights)


def test_threads_and_the_bundled_model():
    """The bundled character model, blocks of rows on two threads, Hangul prompts (the unknown id)."""
    model = gen.bundled_model()
    requests = random_requests(16, seed=4, prompts=("def ", "import os\n", "안녕하세요 ", "class A:\n    "))
    session = BatchSession(model, capacity=12, threads=2)
    served = serve_all(session, requests, seed=3, join=0.9)
    check_equal(model, requests, served)


def test_the_batch_is_shared():
    """Streams added together decode in the same steps: 6 streams of 20 tokens take 21 steps,
    not 6 x 21, and each got its own text."""
    model = lm("gru", seed=5)
    session = BatchSession(model, capacity=6)
    streams = [session.make_stream("ab", max_new_tokens=20, seed=i, temperature=1.0) for i in range(6)]
    for s in streams:
        session.add(s)
    assert session.active == 6 and session.free == 0
    with pytest.raises(RuntimeError, match="rows are taken"):
        session.add(session.make_stream("ab", max_new_tokens=3))
    steps = 0
    while not session.idle:
        session.step()
        steps += 1
    assert steps <= 25  # 20 sampling steps, and the prompts read in one or a few
    texts = [s.text() for s in streams]
    assert texts == [model.generate("ab", max_new_tokens=20, seed=i, temperature=1.0) for i in range(6)]
    assert len(set(texts)) > 1


def test_cancel_frees_the_row_at_the_next_step():
    model = lm("lstm", seed=6)
    session = BatchSession(model, capacity=2)
    a = session.make_stream("abc", max_new_tokens=10 ** 6, seed=1)
    b = session.make_stream("abc", max_new_tokens=30, seed=2)
    session.add(a)
    session.add(b)
    for _ in range(5):
        session.step()
    n = len(a.tokens)
    assert n > 0 and session.free == 0
    a.cancel()  # any thread may call it
    changed = session.step()
    assert a in changed and a.finish_reason == "cancelled" and a.done
    assert len(a.tokens) == n  # not stepped again
    assert session.free == 1
    c = session.make_stream("xyz", max_new_tokens=5, seed=3)
    session.add(c)  # the freed row is reused at once
    while not session.idle:
        session.step()
    assert b.text() == model.generate("abc", max_new_tokens=30, seed=2)
    assert c.text() == model.generate("xyz", max_new_tokens=5, seed=3)
    # a stream cancelled before it joined never takes a row
    d = session.make_stream("abc", max_new_tokens=5)
    d.cancel()
    session.add(d)
    assert session.free == 2 and session.step() == [d] and d.finish_reason == "cancelled"


def test_zero_tokens_and_misuse():
    model = lm("rnn", seed=7)
    session = BatchSession(model, capacity=1)
    s = session.make_stream("ab", max_new_tokens=0)
    session.add(s)
    assert session.free == 1  # nothing to compute
    assert session.step() == [s] and s.finish_reason == "length" and s.text() == "" == model.generate(
        "ab", max_new_tokens=0)
    with pytest.raises(ValueError, match="added already"):
        session.add(s)
    with pytest.raises(ValueError, match="capacity"):
        BatchSession(model, capacity=0)


def test_arguments_are_checked_as_generate_checks_them():
    model = lm("lstm", seed=8)
    session = BatchSession(model, capacity=1)
    cases = [dict(prompt=""), dict(prompt="ab", temperature=-1), dict(prompt="ab", top_p=0),
             dict(prompt="ab", top_k=-2), dict(prompt="ab", repetition_penalty=1000),
             dict(prompt="ab", max_new_tokens=-1), dict(prompt="ab", stop=""), dict(prompt="AB"),
             dict(prompt=[0, 99]), dict(prompt=["ab", "cd"])]
    for case in cases:
        kw = dict(case)
        prompt = kw.pop("prompt")
        with pytest.raises(ValueError) as got:
            session.make_stream(prompt, **kw)
        if not isinstance(prompt, list) or not all(isinstance(p, str) for p in prompt):
            with pytest.raises(ValueError) as want:
                model.generate(prompt, **kw)
            assert str(got.value) == str(want.value)
    assert session.free == 1


def test_one_stream_with_bad_logits_fails_alone():
    """A token whose embedding holds NaN makes the logits of the rows that read it NaN: those
    streams fail with GenerationError (as model.generate raises), the others go on untouched."""
    model = lm("gru", seed=9, vocab=CHARS + "!")  # "!" is never generated: the Dense covers CHARS only
    emb, *_, dense = model.layers
    weight = emb.weight.copy()
    weight[len(CHARS)] = np.nan
    V = len(CHARS)
    layers = [Embedding(weight)] + list(model.layers[1:-1]) + [Dense(dense.weight[:V], dense.bias[:V])]
    model = fastrnn.Model(layers, vocabulary=fastrnn.Vocabulary(list(CHARS + "!")))
    with pytest.raises(gen.GenerationError):
        model.generate("ab!", max_new_tokens=5, seed=1)
    session = BatchSession(model, capacity=4)
    good = [session.make_stream(p, max_new_tokens=30, seed=i) for i, p in enumerate(["ab", "cat", "q"])]
    bad = session.make_stream("ab!", max_new_tokens=30, seed=5)
    for s in good[:2] + [bad] + good[2:]:
        session.add(s)
    while not session.idle:
        session.step()
    assert bad.finish_reason == "error" and isinstance(bad.error, gen.GenerationError)
    assert bad.tokens == []
    for i, (s, p) in enumerate(zip(good, ["ab", "cat", "q"])):
        assert s.finish_reason == "length" and s.text() == model.generate(p, max_new_tokens=30, seed=i)


def test_word_vocabulary_pieces_and_held_back_stops():
    """Pieces of a word vocabulary join with spaces as generate(stream=True)'s do, and a tail that
    may still become a stop is never in a piece."""
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
    rng = np.random.default_rng(10)
    V = len(words)
    model = fastrnn.Model([Embedding(rng.standard_normal((V, 4)).astype(np.float32)),
                           random_recurrent(rng, "lstm", input_size=4, hidden_size=8, name="lstm"),
                           Dense((rng.standard_normal((V, 8)) * 2).astype(np.float32))],
                          vocabulary=fastrnn.Vocabulary(words, level="word"))
    session = BatchSession(model, capacity=3)
    requests = [dict(prompt="the cat", max_new_tokens=40, seed=s, stop=["sat on", "dog ran"], temperature=1.2)
                for s in range(9)]
    served = serve_all(session, requests, seed=4)
    check_equal(model, requests, served)
    for i, req in enumerate(requests):  # the same pieces as a stream of generate, step by step
        want = model.generate(req["prompt"], **{k: v for k, v in req.items() if k != "prompt"}, stream=True)
        assert [p for p in served[i][1] if p] == [p for p in want if p]


# ---------------------------------------------------------------------------------------------
# Stop sequences: one matcher per row (job._StopMatcher) detects them and decides the hold-back
# ---------------------------------------------------------------------------------------------
def longest_stop(out, stops):
    """The longest stop that ``out`` ends with (0: none), by comparing the ends."""
    return max((len(s) for s in stops if len(s) <= len(out) and out[len(out) - len(s):] == s), default=0)


def longest_prefix(out, stops):
    """The longest proper prefix of a stop that ``out`` ends with: what streaming holds back."""
    return max((L for s in stops for L in range(1, len(s)) if L <= len(out) and out[len(out) - L:] == s[:L]),
               default=0)


def test_stop_matcher_detects_the_longest_stop_and_holds_the_longest_prefix():
    """Fed one token at a time (as BatchSession feeds it) or in chunks (as generate's streaming
    feeds it): ``feed`` returns the longest stop the output ends with, ``hold`` the longest proper
    prefix; ``sequences`` keeps every stop as given, one-token ones included. Small alphabets make
    one-token stops, stops that are prefixes of others and overlaps ("aab" in "aaab") common."""
    rng = np.random.default_rng(1)
    for trial in range(300):
        stops = [rng.integers(0, 3, rng.integers(1, 6)).tolist() for _ in range(rng.integers(1, 5))]
        if trial % 3 == 0:
            stops.append(stops[0][:1])  # a one-token prefix of another stop
        out = rng.integers(0, 3, rng.integers(1, 40)).tolist()
        one, chunked = gen._StopMatcher(stops), gen._StopMatcher(stops)
        assert one.sequences == stops
        for n in range(1, len(out) + 1):
            assert one.feed((out[n - 1],)) == longest_stop(out[:n], stops), (stops, out[:n])
            assert one.hold() == longest_prefix(out[:n], stops), (stops, out[:n])
        cut = int(rng.integers(0, len(out) + 1))
        chunked.feed(out[:cut])
        assert chunked.feed(out[cut:]) == (longest_stop(out, stops) if cut < len(out) else 0)
        assert chunked.hold() == longest_prefix(out, stops)
    m = gen._StopMatcher([[1, 1, 2]])  # the KMP fallback: "aab" found in "aaab"
    assert [m.feed((t,)) for t in (1, 1, 1, 2)] == [0, 0, 0, 3]


def stop_cases(model, prompt, seed, temperature, n=200):
    """Stop lists read off what ``model`` generates without stops (so each one is produced):
    a one-token stop, a stop that is a prefix of another (and one whose end is another's end:
    the longer wins), an overlap (c c d where the output has c c c d), a stop made of the
    prompt's last symbol and the first generated one (matched on the generated part only), and
    several at once with one the model cannot produce (Hangul on an ASCII model: dropped)."""
    import re

    t = model.generate(prompt, max_new_tokens=n, seed=seed, temperature=temperature)
    single = next(c for i, c in enumerate(t) if i >= 5 and c not in t[:i])
    i = next(i for i in range(5, len(t) - 3) if t[i + 1:i + 3] not in t[:i + 2] and len(set(t[i:i + 3])) > 1)
    word = t[i:i + 3]
    run = re.search(r"(.)\1\1(?!\1)(.)", t[1:])
    assert run, t
    cases = [[single], [word, word[:2]], [word[1:], word], [run.group(1) * 2 + run.group(2)],
             [prompt[-1] + t[0]], [word, "하나", single, t[-3:]]]
    return t, cases


def check_stops_served(model, requests):
    """Serve ``requests`` in one session (capacity below their count: streams join mid-way);
    at every step each stream holds back exactly the longest stop prefix its tokens end with;
    its text, finish reason and streamed pieces are generate's alone, and where generate's text
    ends is where a brute-force match over the generated tokens says it ends."""
    vocab = model.vocabulary
    session = BatchSession(model, capacity=max(1, len(requests) - 2))
    pending, served = list(range(len(requests))), {}
    while pending or not session.idle:
        while pending and session.free:
            i = pending.pop(0)
            kw = dict(requests[i])
            kw.pop("base")
            stream = session.make_stream(kw.pop("prompt"), **kw)
            stream.tag = i
            served[i] = (stream, [])
            session.add(stream)
        for s in session.step():
            served[s.tag][1].append(s.take_piece())
            stops = [vocab.encode(x) for x in requests[s.tag]["stop"] if all(c in vocab.index for c in x)]
            held = len(s.tokens) - s.visible
            if s.finish_reason is None:
                assert held == longest_prefix(s.tokens, stops), (requests[s.tag], s.tokens)
            elif s.finish_reason == "stop":
                assert held == longest_stop(s.tokens, stops) > 0, (requests[s.tag], s.tokens)
    for i, req in enumerate(requests):
        req = dict(req)
        base = req.pop("base")
        prompt = req.pop("prompt")
        stream, pieces = served[i]
        want = model.generate(prompt, **req)
        assert stream.text() == want, (i, requests[i])
        assert [p for p in pieces if p] == [p for p in model.generate(prompt, **req, stream=True) if p]
        stops = [vocab.encode(x) for x in req["stop"] if all(c in vocab.index for c in x)]
        ids = vocab.encode(base)
        end = next((n for n in range(1, len(ids) + 1) if longest_stop(ids[:n], stops)), None)
        assert end is not None and stream.finish_reason == "stop", (i, requests[i])
        assert want == base[:end - longest_stop(ids[:end], stops)], (i, requests[i])


@pytest.mark.parametrize("prompt", ["def ", "안녕하세요 ", "    "])
def test_stop_cases_on_the_bundled_model_equal_generate_alone(prompt):
    model = gen.bundled_model()
    base, cases = stop_cases(model, prompt, seed=5, temperature=0.8)
    requests = [dict(prompt=prompt, base=base, stop=stops, max_new_tokens=200, seed=5, temperature=0.8)
                for stops in cases]
    check_stops_served(model, requests)


def test_hangul_stops_on_a_hangul_model_equal_generate_alone():
    """A character model over Hangul syllables: the stops are Hangul (one-token, prefixes,
    overlaps), the prompt too."""
    model = lm("gru", seed=7, vocab="가나다라마바사아자차 .")
    base, cases = stop_cases(model, "가나 ", seed=2, temperature=0.9)
    cases = [c for c in cases if "하나" not in c]  # every symbol here is produced: no dropped stop
    requests = [dict(prompt="가나 ", base=base, stop=stops, max_new_tokens=200, seed=2, temperature=0.9)
                for stops in cases]
    check_stops_served(model, requests)
