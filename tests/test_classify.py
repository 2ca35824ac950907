"""Classification (fastrnn/classify.py): bucketed batching, order, laziness, probabilities against
PyTorch and Keras 3, the other shapes of the notes (many-to-many, one-to-many, encoder-decoder)
and the ``fastrnn classify`` command line with the bundled language identifier."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
from conftest import COMPILED_BACKENDS, FRAMEWORK_ATOL, assert_close, require
from fastrnn.classify import BUNDLED_CLASSIFIER, Classification, bundled_classifier, probabilities_from_output

ALPHABET = list("abcdefghijklmnopqrstuvwxyz .,!'") + list("가나다라마바사아자차카타파하")
VOCAB = fastrnn.Vocabulary(["\ufffd"] + ALPHABET, level="char", unk=0, lowercase=True)
LABELS = ["negative", "neutral", "positive"]


class TorchClassifier(nn.Module):
    """Embedding -> BiGRU (2 layers) -> Linear: the sentiment shape of the notes."""

    def __init__(self, vocab=len(VOCAB), classes=3, cell=nn.GRU, layers=2, bidirectional=True):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 12)
        self.rnn = cell(12, 16, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.fc = nn.Linear(32 if bidirectional else 16, classes)

    def forward(self, ids):  # one unpadded sequence (1, T) -> probabilities (1, C)
        _, h = self.rnn(self.embedding(ids))
        h = h[0] if isinstance(h, tuple) else h
        last = torch.cat([h[-2], h[-1]], 1) if self.rnn.bidirectional else h[-1]
        return torch.softmax(self.fc(last), 1)


class TorchTagger(TorchClassifier):
    """The same layers with a Linear at every step (a per-step model, not a classifier)."""

    def forward(self, ids):
        return self.fc(self.rnn(self.embedding(ids))[0])


class TorchSigmoidClassifier(TorchClassifier):
    """One sigmoid unit on the last state (binary sentiment)."""

    def forward(self, ids):
        _, h = self.rnn(self.embedding(ids))
        return torch.sigmoid(self.fc(h[-1]))


def torch_probs(net, ids):
    with torch.no_grad():
        if len(ids) == 0:  # an empty input: the classifier sees the zero state
            h = torch.zeros(1, net.fc.in_features)
            return torch.softmax(net.fc(h), 1)[0].numpy()
        return net(torch.tensor([ids]))[0].numpy()


@pytest.fixture(scope="module")
def torch_pair():
    torch.manual_seed(0)
    net = TorchClassifier().eval()
    model = fastrnn.from_torch(net, return_sequences=False, activation="softmax", vocabulary=VOCAB)
    model.metadata["labels"] = LABELS
    return net, model


def random_texts(rng, n, max_len=40):
    return ["".join(rng.choice(ALPHABET, size=int(rng.integers(0, max_len)))) for _ in range(n)]


def test_probabilities_equal_pytorch(torch_pair, rng):
    net, model = torch_pair
    texts = random_texts(rng, 60) + ["", "Hello, World!", "안녕 세계 ✓"]  # '✓' and '녕' are unknown
    results = list(model.classify(texts, batch_size=8))
    assert len(results) == len(texts)
    for text, r in zip(texts, results):
        want = torch_probs(net, VOCAB.encode(text))
        assert_close(r.probabilities, want, FRAMEWORK_ATOL, what=repr(text))
        assert r.index == int(np.argmax(r.probabilities)) and r.label == LABELS[r.index]


def test_saved_classifier_keeps_labels_and_tokenizer(torch_pair, tmp_path):
    net, model = torch_pair
    fastrnn.save(model, tmp_path / "c.safetensors")
    loaded = fastrnn.load(tmp_path / "c.safetensors")
    assert loaded.metadata["labels"] == LABELS and loaded.vocabulary.lowercase
    texts = ["GOOD film", "bad", "사랑해요"]
    a = [r.probabilities for r in model.classify(texts)]
    b = [r.probabilities for r in loaded.classify(texts)]
    np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_bucketed_equals_unbatched_exactly(backend, cell, rng):
    torch.manual_seed(1)
    net = TorchClassifier(cell=cell).eval()  # 2 layers: the second one's input projection is a GEMM
    model = fastrnn.from_torch(net, return_sequences=False, activation="softmax", vocabulary=VOCAB)
    texts = random_texts(rng, 150, max_len=70)
    alone = np.array([next(iter(model.classify([t], backend=backend))).probabilities for t in texts])
    for batch_size, window, threads in [(64, None, 1), (7, 20, 2), (3, 1000, 1), (150, 150, 2)]:
        got = np.array([r.probabilities for r in model.classify(texts, batch_size=batch_size, window=window,
                                                                   threads=threads, backend=backend)])
        np.testing.assert_array_equal(got, alone, err_msg=f"batch_size={batch_size} window={window}")


def test_long_inputs_are_split_by_token_budget(torch_pair, rng):
    _, model = torch_pair
    texts = random_texts(rng, 10, max_len=5) + ["abc " * 300] * 3 + random_texts(rng, 10, max_len=5)
    small = [r.probabilities for r in model.classify(texts, batch_size=64, max_batch_tokens=1000)]
    big = [r.probabilities for r in model.classify(texts, batch_size=64)]
    np.testing.assert_array_equal(np.array(small), np.array(big))


def test_order_preserved_and_lazy(torch_pair, rng):
    _, model = torch_pair
    texts = random_texts(rng, 500, max_len=30)
    consumed = []

    def source():
        for t in texts:
            consumed.append(t)
            yield t

    it = model.classify(source(), batch_size=16, window=50)
    first = next(it)
    assert len(consumed) == 50, "the first result needs only the first window"
    rest = list(it)
    expected = [next(iter(model.classify([t]))).probabilities for t in texts]
    np.testing.assert_array_equal(np.array([first.probabilities] + [r.probabilities for r in rest]),
                                  np.array(expected))


def test_token_ids_and_return_probs_false(torch_pair):
    _, model = torch_pair
    ids = [VOCAB.encode("great movie"), np.array(VOCAB.encode("awful"), dtype=np.int32), []]
    by_ids = list(model.classify(ids, return_probs=False))
    by_text = list(model.classify(["great movie", "awful", ""]))
    assert [r.label for r in by_ids] == [r.label for r in by_text]
    assert all(r.probabilities is None for r in by_ids)
    assert isinstance(by_ids[0], Classification)


def test_not_a_classifier_and_bad_arguments(torch_pair):
    lm = fastrnn.from_torch(TorchTagger(), return_sequences=True, vocabulary=VOCAB)  # per-step outputs
    with pytest.raises(ValueError, match="not a classifier.*per time step"):
        lm.classify(["abc"])
    _, model = torch_pair
    with pytest.raises(ValueError, match="batch_size"):
        model.classify(["a"], batch_size=0)
    with pytest.raises(TypeError, match="wrap a single text"):
        model.classify("abc")
    with pytest.raises(ValueError, match="input 1: token ids"):
        list(model.classify([[1, 2], [[1, 2]]]))
    plain = fastrnn.from_torch(TorchClassifier(), return_sequences=False, activation="softmax")  # no vocabulary
    with pytest.raises(ValueError, match="no vocabulary"):
        list(plain.classify(["abc"]))
    strict = fastrnn.from_torch(TorchClassifier(), return_sequences=False, activation="softmax",
                                vocabulary=fastrnn.Vocabulary(list("abc")))  # no unknown id
    with pytest.raises(ValueError, match="'z' is not in the model's vocabulary"):
        list(strict.classify(["az"]))


def test_probabilities_from_each_output_activation():
    logits = np.array([[1.0, 2.0, 0.5]], np.float32)
    p = probabilities_from_output(logits, "linear")
    assert_close(p, np.exp(logits) / np.exp(logits).sum(), 1e-6)
    p = probabilities_from_output(np.array([[0.8]], np.float32), "sigmoid")
    assert_close(p, [[0.2, 0.8]], 1e-7)
    with pytest.raises(ValueError, match="relu"):
        probabilities_from_output(logits, "relu")


def test_single_sigmoid_unit_gives_two_classes():
    torch.manual_seed(2)
    net = TorchSigmoidClassifier(classes=1, bidirectional=False, layers=1).eval()
    model = fastrnn.from_torch(net, return_sequences=False, activation="sigmoid", vocabulary=VOCAB)
    (r,) = model.classify(["so so"])
    with torch.no_grad():
        _, h = net.rnn(net.embedding(torch.tensor([VOCAB.encode("so so")])))
        p = torch.sigmoid(net.fc(h[-1]))[0, 0].item()
    assert_close(r.probabilities, [1 - p, p], FRAMEWORK_ATOL)
    assert r.label == int(p > 0.5)


def test_keras_classifier_probabilities(tmp_path, rng):
    keras = require("keras")
    L = keras.layers
    keras.utils.set_random_seed(3)
    inp = keras.Input((None,), dtype="int32")
    x = L.Embedding(30, 8, mask_zero=True)(inp)
    x = L.Bidirectional(L.LSTM(10, return_sequences=True))(x)
    x = L.GRU(12)(x)
    out = L.Dense(4, activation="softmax")(x)
    km = keras.Model(inp, out)
    # random weights, biases included: Keras's defaults (zero biases, orthogonal recurrent kernels)
    # give probabilities within 0.003 of 1/4, where even a wrong GRU gate order hides (issue 18)
    wrng = np.random.default_rng(3)
    km.set_weights([(wrng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in km.get_weights()])
    km.save(tmp_path / "cls.keras")
    model = fastrnn.load(tmp_path / "cls.keras")
    seqs = [list(rng.integers(1, 30, size=int(n))) for n in rng.integers(1, 15, size=25)]
    got = np.array([r.probabilities for r in model.classify(seqs, batch_size=6)])
    T = max(map(len, seqs))
    padded = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    want = keras.ops.convert_to_numpy(km(padded, training=False))
    assert want.max() - want.min() > 0.5, "the probabilities must depend on the weights and the input"
    assert_close(got, want, FRAMEWORK_ATOL)
    # the Keras-padded rows themselves: their trailing zeros are masked steps, which Keras skips
    assert_close(np.array([r.probabilities for r in model.classify(padded, batch_size=6)]), want, FRAMEWORK_ATOL)
    # zeros before or between tokens are masked steps too (Keras's default pre-padding, issue 22):
    # classify gives what Keras gives for the same rows
    front = np.array([[0, 0, 5, 6, 7], [3, 0, 4, 0, 0], [0, 9, 0, 0, 8]], np.int32)
    want_front = keras.ops.convert_to_numpy(km(front, training=False))
    assert_close(np.array([r.probabilities for r in model.classify(front)]), want_front, FRAMEWORK_ATOL)


def test_keras_masking_classifier_cuts_masked_feature_steps(tmp_path, rng):
    """Masking(mask_value) -> LSTM -> Dense: feature rows equal to mask_value at the end of an input
    are padding to Keras, and to classify."""
    keras = require("keras")
    L = keras.layers
    km = keras.Sequential([keras.Input((None, 3)), L.Masking(mask_value=-1.0), L.LSTM(5),
                           L.Dense(3, activation="softmax")])
    wrng = np.random.default_rng(5)
    km.set_weights([(wrng.standard_normal(w.shape) * 0.7).astype(np.float32) for w in km.get_weights()])
    km.save(tmp_path / "masking.keras")
    model = fastrnn.load(tmp_path / "masking.keras")
    x = np.full((4, 7, 3), -1.0, np.float32)
    for i, n in enumerate([7, 3, 5, 1]):
        x[i, :n] = rng.standard_normal((n, 3))
    want = keras.ops.convert_to_numpy(km(x, training=False))
    assert_close(np.array([r.probabilities for r in model.classify(list(x))]), want, FRAMEWORK_ATOL)
    assert_close(np.array([r.probabilities for r in model.classify([a[:n] for a, n in zip(x, [7, 3, 5, 1])])]),
                 want, FRAMEWORK_ATOL)


# -- the other shapes of the notes: many-to-many, one-to-many, encoder-decoder -----------------

def test_many_to_many_sequence_labelling_with_predict(rng):
    torch.manual_seed(4)
    emb, lstm, fc = nn.Embedding(20, 6), nn.LSTM(6, 9, bidirectional=True, batch_first=True), nn.Linear(18, 5)
    tagger = nn.Sequential()
    tagger.embedding, tagger.lstm, tagger.fc = emb, lstm, fc
    model = fastrnn.from_torch(tagger.eval(), return_sequences=True, activation="softmax")
    ids = rng.integers(0, 20, size=(3, 11))
    lengths = np.array([11, 4, 7])
    got = model.predict(ids, lengths=lengths)  # (B, T, 5): one tag distribution per token
    for b in range(3):
        with torch.no_grad():
            y, _ = lstm(emb(torch.from_numpy(ids[b: b + 1, : lengths[b]])))
            want = torch.softmax(fc(y), -1)[0].numpy()
        assert_close(got[b, : lengths[b]], want, FRAMEWORK_ATOL)


def test_one_to_many_decoder_primed_by_a_feature_vector():
    """Image captioning in the notes: a feature vector (the image) becomes the decoder's initial
    state; generation then continues from it. Greedy decoding equals a torch loop."""
    torch.manual_seed(5)
    vocab = fastrnn.Vocabulary(list("^$abcdefgh "), level="char")
    emb, lstm, fc = nn.Embedding(len(vocab), 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, len(vocab))
    decoder = nn.Sequential()
    decoder.embedding, decoder.lstm, decoder.fc = emb, lstm, fc
    model = fastrnn.from_torch(decoder.eval(), vocabulary=vocab)
    features = torch.randn(1, 16)  # an encoder's image embedding, mapped to (h0, c0)
    h0, c0 = torch.tanh(features), torch.zeros(1, 16)

    text = model.generate("^", max_new_tokens=12, temperature=0, initial_state=[(h0[None].numpy(), c0[None].numpy())])
    state = (h0[None], c0[None])
    token, want = vocab.index["^"], []
    with torch.no_grad():
        for _ in range(12):
            y, state = lstm(emb(torch.tensor([[token]])), state)
            token = int(fc(y)[0, -1].argmax())
            want.append(vocab.tokens[token])
    assert text == "".join(want)
    primed, plain = model.session(initial_state=[(h0[None].numpy(), c0[None].numpy())]), model.session()
    primed.feed("^")
    plain.feed("^")
    with torch.no_grad():
        y, _ = lstm(emb(torch.tensor([[vocab.index["^"]]])), (h0[None], c0[None]))
        assert_close(primed.logits(), fc(y)[0, -1].numpy(), FRAMEWORK_ATOL)
    assert not np.allclose(primed.logits(), plain.logits(), atol=1e-3), "the initial state must matter"


def test_encoder_decoder_final_state_primes_decoder(rng):
    """Translation in the notes: the encoder's final state is the decoder's initial state."""
    torch.manual_seed(6)
    enc_emb, enc = nn.Embedding(15, 7), nn.GRU(7, 10, num_layers=2, batch_first=True)
    dec_emb, dec, dec_fc = nn.Embedding(12, 7), nn.GRU(7, 10, num_layers=2, batch_first=True), nn.Linear(10, 12)
    encoder = nn.Sequential()
    encoder.embedding, encoder.gru = enc_emb, enc
    decoder = nn.Sequential()
    decoder.embedding, decoder.gru, decoder.fc = dec_emb, dec, dec_fc
    f_enc = fastrnn.from_torch(encoder.eval())
    f_dec = fastrnn.from_torch(decoder.eval(), activation="softmax")
    src = rng.integers(0, 15, size=(4, 9))
    tgt = rng.integers(0, 12, size=(4, 6))
    _, states = f_enc.predict(src, return_state=True)
    got = f_dec.predict(tgt, initial_state=states)  # layer by layer: encoder layer k primes decoder layer k
    with torch.no_grad():
        _, h = enc(enc_emb(torch.from_numpy(src)))
        y, _ = dec(dec_emb(torch.from_numpy(tgt)), h)
        want = torch.softmax(dec_fc(y), -1).numpy()
    assert_close(got, want, FRAMEWORK_ATOL)


# -- command line --------------------------------------------------------------------------------

def run_cli(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", "classify", *map(str, args)], input=stdin,
                          capture_output=True, cwd=cwd, timeout=600)


def test_bundled_classifier_is_shipped_and_labelled():
    assert os.path.exists(BUNDLED_CLASSIFIER)
    model = bundled_classifier()
    labels = model.metadata["labels"]
    assert {"en", "fr", "de"} <= set(labels)  # accuracy: measured in test_bundled_models.py
    results = list(model.classify(["house", "maison", "haus", "Häuser"]))
    assert [r.label for r in results[:2]] == ["en", "fr"]


def test_cli_stdin_jsonl_in_order():
    out = run_cli(stdin="house\nmaison\n\nmaison\n".encode())
    assert out.returncode == 0, out.stderr.decode()
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["house", "maison", "", "maison"]
    assert rows[0]["label"] == "en" and rows[1]["label"] == "fr"
    assert rows[1] == rows[3]
    p = rows[0]["probabilities"]
    assert set(p) == set(bundled_classifier().metadata["labels"]) and abs(sum(p.values()) - 1) < 1e-4
    assert out.stderr == b"", "no progress bar when stderr is not a terminal"


def test_cli_csv_file_unicode_and_progress(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("maison\r\nstraße\n한국어,\"quoted\"\n", encoding="utf-8")
    out = run_cli(path, "--format", "csv", "--batch-size", "2", "--progress")
    assert out.returncode == 0, out.stderr.decode()
    import csv
    import io

    rows = list(csv.reader(io.StringIO(out.stdout.decode("utf-8"))))
    labels = bundled_classifier().metadata["labels"]
    assert rows[0] == ["text", "label"] + labels + ["unknown_fraction"]
    assert [r[0] for r in rows[1:]] == ["maison", "straße", '한국어,"quoted"']
    assert all(r[1] in labels and len(r) == 3 + len(labels) for r in rows[1:])
    # 6 of the 12 characters (Hangul, comma, double quotes) are outside the vocabulary: not more
    # than half, so a language is still named
    assert [float(r[-1]) for r in rows[1:]] == [0.0, 0.0, 0.5]
    err = out.stderr.decode()
    assert "100.0%" in err and "3 lines" in err


def test_cli_errors_are_clear(tmp_path):
    lm_path = tmp_path / "lm.safetensors"
    fastrnn.save(fastrnn.from_torch(TorchTagger(), vocabulary=VOCAB), lm_path)
    out = run_cli("--model", lm_path, stdin=b"abc\n")
    assert out.returncode == 2 and b"not a classifier" in out.stderr and b"Traceback" not in out.stderr
    out = run_cli(stdin=b"fine\n\xff\xfe bad\n")
    assert out.returncode == 2 and b"line 2 is not valid UTF-8" in out.stderr
    out = run_cli(tmp_path / "missing.txt")
    assert out.returncode == 2 and b"missing.txt" in out.stderr


def _peak_rss_mb(path):
    """Peak resident memory (MB) of a `fastrnn classify` child run on ``path``."""
    code = ("import resource, subprocess, sys; "
            "subprocess.run([sys.executable, '-m', 'fastrnn.cli', 'classify', sys.argv[1]], "
            "stdout=subprocess.DEVNULL, check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


def test_cli_memory_is_flat_on_100k_lines(tmp_path):
    """100k lines must not use more memory than 5k lines: inputs are streamed a window at a time
    and every result is written before the next window is read. Bound: 15 MB of growth (the
    output rows of one window and allocator noise; holding 100k results would cost far more)."""
    words = [w.strip() for w in ["house", "maison", "Haus", "casa", "huis", "dom", "casa", "hus", "talo"]]
    r = np.random.default_rng(0)
    small, large = tmp_path / "5k.txt", tmp_path / "100k.txt"
    lines = ["".join(r.choice(words, size=int(r.integers(1, 4)))) for _ in range(100_000)]
    small.write_text("\n".join(lines[:5000]) + "\n", encoding="utf-8")
    large.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = _peak_rss_mb(small)
    peak = _peak_rss_mb(large)
    assert peak - base < 15, f"peak RSS grew from {base:.1f} MB (5k lines) to {peak:.1f} MB (100k lines)"
