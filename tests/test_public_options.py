"""Public options that had no test of their effect (issue 18): set_backend, set_num_threads /
get_num_threads, Vocabulary(level="word"), classify(max_length=...), and class probabilities of a
linear-logit classifier at batch sizes above 1, each against an independent computation."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
from conftest import BACKENDS, COMPILED_BACKENDS, FRAMEWORK_ATOL, assert_close
from fastrnn import backends
from fastrnn import generate as g
from helpers import random_recurrent


@pytest.fixture
def restore_process_settings():
    """set_backend / set_num_threads are process-wide: put them back after the test."""
    backend, threads = fastrnn.get_backend().name, fastrnn.get_num_threads()
    yield
    fastrnn.set_backend(backend)
    fastrnn.set_num_threads(threads)


def small_model(seed=0):
    rng = np.random.default_rng(seed)
    return fastrnn.Model([random_recurrent(rng, "lstm", input_size=6, hidden_size=16, bidirectional=True),
                          random_recurrent(rng, "gru", input_size=32, hidden_size=12)])


class Spy:
    """Wraps a method of a backend object, recording the keyword arguments of each call."""

    def __init__(self, monkeypatch, obj, name):
        self.calls = []
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            self.calls.append(kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(obj, name, wrapper)


# -- set_backend ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_set_backend_runs_later_calls_on_that_backend(name, monkeypatch, restore_process_settings, rng):
    model = small_model()
    x = rng.standard_normal((5, 7, 6)).astype(np.float32)
    spies = {n: Spy(monkeypatch, fastrnn.get_backend(n), "recurrent") for n in BACKENDS}
    fastrnn.set_backend(name)
    assert fastrnn.get_backend().name == name
    got = model.predict(x)  # no backend argument: the process setting decides
    assert len(spies[name].calls) == 2 and all(not s.calls for n, s in spies.items() if n != name)
    np.testing.assert_array_equal(got, model.predict(x, backend=name))
    # generation follows it too (each backend has its own loop)
    assert g.get_engine().name == name


def test_set_backend_overrides_the_environment():
    code = "import fastrnn; fastrnn.set_backend('numpy'); print(fastrnn.get_backend().name)"
    env = dict(os.environ, FASTRNN_BACKEND=COMPILED_BACKENDS[0] if COMPILED_BACKENDS else "numpy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "numpy"


# -- set_num_threads / get_num_threads --------------------------------------------------------------
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_set_num_threads_is_the_default_of_every_call(backend, monkeypatch, restore_process_settings, rng):
    model = small_model(1)
    x = rng.standard_normal((64, 9, 6)).astype(np.float32)  # 64 rows: enough to split across threads
    want = model.predict(x, backend=backend, threads=1)
    for n in (1, 3):
        fastrnn.set_num_threads(n)
        assert fastrnn.get_num_threads() == n
        spy = Spy(monkeypatch, fastrnn.get_backend(backend), "recurrent")
        tasks = []
        real_run_tasks = backends.run_tasks
        monkeypatch.setattr(backends, "run_tasks", lambda t, threads: (tasks.append(threads), real_run_tasks(t, threads)))
        got = model.predict(x, backend=backend)
        assert [c["threads"] for c in spy.calls] == [n, n]
        assert tasks and set(tasks) == {n}
        np.testing.assert_array_equal(got, want)  # the thread count never changes a result
        monkeypatch.undo()
    # an explicit threads= wins over the process setting
    fastrnn.set_num_threads(3)
    spy = Spy(monkeypatch, fastrnn.get_backend(backend), "recurrent")
    model.predict(x, backend=backend, threads=2)
    assert [c["threads"] for c in spy.calls] == [2, 2]


def test_set_num_threads_rejects_bad_values(restore_process_settings):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            fastrnn.set_num_threads(bad)


def test_default_thread_count_comes_from_the_environment_or_the_cpus():
    code = "import fastrnn; print(fastrnn.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == len(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(env, FASTRNN_NUM_THREADS="5"))
    assert int(out.stdout) == 5


# -- Vocabulary(level="word") ----------------------------------------------------------------------
WORDS = ["<unk>", "the", "cat", "sat", "on", "mat", "dog", "ran", "le", "chat"]


def test_word_vocabulary_encodes_words_not_characters():
    vocab = fastrnn.Vocabulary(WORDS, level="word", unk=0, lowercase=True)
    assert vocab.encode("The cat  sat\ton the MAT") == [1, 2, 3, 4, 1, 5]
    assert vocab.encode("the zebra sat") == [1, 0, 3]  # an unknown word is one unknown id
    assert vocab.decode([1, 6, 7]) == "the dog ran"
    assert vocab.encode("") == []
    strict = fastrnn.Vocabulary(WORDS[1:], level="word")
    with pytest.raises(ValueError, match="'zebra' is not in the model's vocabulary"):
        strict.encode("the zebra")
    with pytest.raises(ValueError, match="level"):
        fastrnn.Vocabulary(WORDS, level="sentence")


class WordClassifier(nn.Module):
    def __init__(self, vocab, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.rnn = nn.GRU(8, 10, batch_first=True)
        self.fc = nn.Linear(10, classes)


def torch_last_logits(net, ids):
    with torch.no_grad():
        if len(ids) == 0:
            return net.fc(torch.zeros(1, net.fc.in_features))[0].numpy()
        _, h = net.rnn(net.embedding(torch.tensor([ids])))
        return net.fc(h[-1])[0].numpy()


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_word_level_model_classifies_text_by_words(tmp_path):
    torch.manual_seed(0)
    net = WordClassifier(len(WORDS)).eval()
    vocab = fastrnn.Vocabulary(WORDS, level="word", unk=0, lowercase=True)
    model = fastrnn.from_torch(net, return_sequences=False, vocabulary=vocab)
    fastrnn.save(model, tmp_path / "w.safetensors")
    loaded = fastrnn.load(tmp_path / "w.safetensors")
    assert loaded.vocabulary.level == "word"
    texts = ["the cat sat on the mat", "Le chat", "dog ran", "the unknown dog", ""]
    ids = [[1, 2, 3, 4, 1, 5], [8, 9], [6, 7], [1, 0, 6], []]  # by hand: one id per word, lowercased
    for m in (model, loaded):
        for text, r, want_ids in zip(texts, m.classify(texts, batch_size=2), ids):
            assert_close(r.probabilities, softmax(torch_last_logits(net, want_ids)), FRAMEWORK_ATOL, what=text)


# -- classify(max_length=...) ----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:input .* is longer than max_length:UserWarning")  # the cut is the point here
@pytest.mark.parametrize("level", ["char", "word"])
def test_classify_max_length_keeps_the_first_tokens(level):
    torch.manual_seed(1)
    tokens = WORDS if level == "word" else ["?"] + list("abcdefghij ")
    vocab = fastrnn.Vocabulary(tokens, level=level, unk=0)
    net = WordClassifier(len(tokens)).eval()
    model = fastrnn.from_torch(net, return_sequences=False, vocabulary=vocab)
    rng = np.random.default_rng(2)
    if level == "word":
        texts = [" ".join(rng.choice(WORDS[1:], size=int(n))) for n in rng.integers(0, 12, 20)]
    else:
        texts = ["".join(rng.choice(tokens[1:], size=int(n))) for n in rng.integers(0, 12, 20)]
    index = {t: i for i, t in enumerate(tokens)}
    for max_length in (1, 4):
        got = [r.probabilities for r in model.classify(texts, max_length=max_length, batch_size=4)]
        for text, p in zip(texts, got):
            ids = [index[t] for t in (text.split() if level == "word" else text)][:max_length]
            assert_close(p, softmax(torch_last_logits(net, ids)), FRAMEWORK_ATOL, what=f"{text!r}[:{max_length}]")
    # token ids are cut the same way
    ids = [vocab.encode(t) for t in texts]
    by_ids = [r.probabilities for r in model.classify(ids, max_length=4)]
    np.testing.assert_array_equal(np.array(by_ids), np.array([r.probabilities for r in model.classify(texts, max_length=4)]))
    with pytest.raises(ValueError, match="max_length"):
        model.classify(texts, max_length=0)


# -- probabilities of a linear-logit classifier, batched ----------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_linear_logit_classifier_batches_equal_pytorch_softmax(batch_size):
    """The last Dense layer returns logits: classify soft-maxes each row (over the classes, not
    over the batch). Checked against PyTorch for every batch size."""
    torch.manual_seed(3)
    vocab = fastrnn.Vocabulary(["?"] + list("abcdefghij "), level="char", unk=0)
    net = WordClassifier(len(vocab), classes=5).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)  # 3x the default init: probabilities that differ from row to row
    model = fastrnn.from_torch(net, return_sequences=False, vocabulary=vocab)  # activation linear
    rng = np.random.default_rng(4)
    texts = ["".join(rng.choice(list("abcdefghij "), size=int(n))) for n in rng.integers(1, 15, 30)]
    got = np.array([r.probabilities for r in model.classify(texts, batch_size=batch_size)])
    want = np.array([softmax(torch_last_logits(net, vocab.encode(t))) for t in texts])
    assert_close(got, want, FRAMEWORK_ATOL)
    assert np.ptp(want, axis=0).max() > 0.1, "rows must differ for a wrong axis to show"


def test_several_sigmoid_units_are_independent_probabilities():
    torch.manual_seed(5)
    vocab = fastrnn.Vocabulary(["?"] + list("abcdefghij "), level="char", unk=0)
    net = WordClassifier(len(vocab), classes=4).eval()
    model = fastrnn.from_torch(net, return_sequences=False, activation="sigmoid", vocabulary=vocab)
    texts = ["abc", "jihgf edcba", "a", "bbbbbbbbbb"]
    got = np.array([r.probabilities for r in model.classify(texts, batch_size=4)])
    want = np.array([1 / (1 + np.exp(-torch_last_logits(net, vocab.encode(t)))) for t in texts])
    assert_close(got, want, FRAMEWORK_ATOL)
