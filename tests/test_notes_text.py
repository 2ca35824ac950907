"""Text in and out of the lecture notes' models (issue 22.5, 22.6).

- One vocabulary rule: a str of characters, a list of tokens, a dict or a Vocabulary, wherever a
  vocabulary is given (Model.vocabulary on a Keras-loaded model -- it used to fail with
  ``LookupError: unknown encoding: h`` --, fastrnn.load, from_keras, from_torch, Model(...),
  ``fastrnn convert --vocab`` / ``--vocab-chars``), sizes checked.
- One-hot character models (the notes' "hello" model, no Embedding, trained briefly in Keras 3):
  token i is the vector with a 1 at feature i; ``convert --vocab-chars`` accepts them and the
  command line generates; classify reads text; predict equals Keras within 1e-4.
- Label names: ``convert --labels 부정,긍정`` (or a file), one sigmoid unit = [1 - p, p].
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require

keras = require("keras")  # a skip outside CI, a failure in CI
if keras.backend.backend() != "torch":  # pragma: no cover - keras was imported earlier with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)
L = keras.layers
TOL = dict(atol=FRAMEWORK_ATOL, rtol=FRAMEWORK_RTOL)
HELO = "helo"


def cli(*args, cwd):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          env=env)


def run(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    """Notes 000 / 002: "hell" -> "ello", one-hot characters, SimpleRNN, softmax; trained briefly."""
    keras.utils.set_random_seed(0)
    x = np.eye(4, dtype=np.float32)[[0, 1, 2, 2]][None]
    y = np.eye(4, dtype=np.float32)[[1, 2, 2, 3]][None]
    model = keras.Sequential([keras.Input((None, 4)), L.SimpleRNN(8, return_sequences=True),
                              L.Dense(4, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.05), "categorical_crossentropy")
    model.fit(x, y, epochs=150, verbose=0)
    path = tmp_path_factory.mktemp("hello") / "hello.keras"
    model.save(str(path))
    return model, path


def test_vocabulary_forms_everywhere(hello):
    model, path = hello
    loaded = fastrnn.load(path)
    loaded.vocabulary = "helo"  # was: LookupError: unknown encoding: h
    assert loaded.vocabulary.tokens == list(HELO) and loaded.vocabulary.level == "char"
    for form in ("helo", list(HELO), {c: i for i, c in enumerate(HELO)}, fastrnn.Vocabulary(list(HELO))):
        m = fastrnn.load(path, vocabulary=form)
        assert m.vocabulary.tokens == list(HELO)
        assert m.generate("h", temperature=0, max_new_tokens=4) == "ello"
        assert fastrnn.from_keras(model, vocabulary=form).vocabulary.tokens == list(HELO)
    words = fastrnn.load(path, vocabulary=["<s>", "안녕", "나도", "</s>"])
    assert words.vocabulary.level == "word" and words.vocabulary.encode("안녕 나도") == [1, 2]
    with pytest.raises(ValueError, match="5 tokens but the model's input has 4 features"):
        loaded.vocabulary = "helo!"
    with pytest.raises(TypeError, match="vocabulary must be"):
        loaded.vocabulary = 42
    with pytest.raises(ValueError, match="tokenizer= and vocabulary= both"):
        fastrnn.load(path, vocabulary="helo", tokenizer="{}")
    loaded.vocabulary = None
    assert loaded.vocabulary is None


def test_vocabulary_forms_for_token_models():
    rng = np.random.default_rng(0)
    emb = fastrnn.Embedding(rng.standard_normal((5, 3)).astype(np.float32))
    rec = fastrnn.Recurrent("gru", 4, [fastrnn.DirectionWeights(rng.standard_normal((12, 3)),
                                                                rng.standard_normal((12, 4)))])
    dense = fastrnn.Dense(rng.standard_normal((5, 4)).astype(np.float32))
    model = fastrnn.Model([emb, rec, dense], vocabulary="안녕나도!")
    assert model.vocabulary.encode("나도") == [2, 3]
    with pytest.raises(ValueError, match="6 tokens but the embedding only 5 rows"):
        model.vocabulary = "안녕하세요!"
    torch = require("torch")
    net = torch.nn.GRU(3, 4)
    assert fastrnn.from_torch(net, vocabulary="abc").vocabulary.tokens == ["a", "b", "c"]


def test_one_hot_model_matches_keras_and_generates(hello, backend):
    model, path = hello
    m = fastrnn.load(path, vocabulary=HELO)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(1).integers(0, 4, size=(3, 6))]
    assert_close(m.predict(x, backend=backend), run(model, x), **TOL)
    # generation feeds token i as the one-hot vector i: greedy equals argmax over Keras's output
    text = "h"
    for _ in range(4):
        probs = run(model, np.eye(4, dtype=np.float32)[[HELO.index(c) for c in text]][None])
        text += HELO[int(np.argmax(probs[0, -1]))]
    assert "h" + m.generate("h", temperature=0, max_new_tokens=4, backend=backend) == text == "hello"


def test_convert_vocab_chars_one_hot_and_cli_generates(hello, tmp_path):
    _, path = hello
    out = cli("convert", path, "hello.safetensors", "--vocab-chars", HELO, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert fastrnn.load(tmp_path / "hello.safetensors").vocabulary.tokens == list(HELO)
    out = cli("generate", "--model", "hello.safetensors", "--prompt", "h", "-n", "4", "--temperature", "0",
              "--no-stream", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode("utf-8").strip() == "hello"
    (tmp_path / "chars.txt").write_text("h\ne\nl\no\n", encoding="utf-8")
    out = cli("convert", path, "file.safetensors", "--vocab", "chars.txt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for bad, message in ((["--vocab-chars", "helo!"], b"4 features"), (["--vocab-chars", "hello"], b"twice"),
                         (["--vocab", "chars.txt", "--vocab-chars", "helo"], b"pass one of them")):
        out = cli("convert", path, "bad.safetensors", *bad, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """A review classifier of the notes (one-hot characters, LSTM, one sigmoid unit)."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((None, 6)), L.LSTM(8), L.Dense(1, activation="sigmoid")])
    path = tmp_path_factory.mktemp("sentiment") / "review.keras"
    model.save(str(path))
    return model, path


def test_labels_and_one_hot_classify(sentiment, tmp_path):
    model, path = sentiment
    chars = "좋다별로영화"
    out = cli("convert", path, "review.safetensors", "--vocab-chars", chars, "--labels", "부정,긍정", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    m = fastrnn.load(tmp_path / "review.safetensors")
    assert m.metadata["labels"] == ["부정", "긍정"]
    texts = ["영화좋다", "별로", "영화별로다"]
    results = list(m.classify(texts))
    for text, r in zip(texts, results):
        x = np.eye(6, dtype=np.float32)[[chars.index(c) for c in text]][None]
        p = float(run(model, x)[0, 0])
        assert_close(r.probabilities, [1 - p, p], **TOL)  # one sigmoid unit: [1 - p, p]
        assert r.label == ("긍정" if p > 0.5 else "부정")
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = cli("classify", "in.txt", "--model", "review.safetensors", "--format", "csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode("utf-8").splitlines()
    assert lines[0].startswith("text,label,부정,긍정")
    assert [line.split(",")[1] for line in lines[1:]] == [r.label for r in results]
    (tmp_path / "labels.txt").write_text("부정\n긍정\n", encoding="utf-8")
    out = cli("convert", path, "r2.safetensors", "--vocab-chars", chars, "--labels", "labels.txt", cwd=tmp_path)
    assert out.returncode == 0 and fastrnn.load(tmp_path / "r2.safetensors").metadata["labels"] == ["부정", "긍정"]
    out = cli("convert", path, "r3.safetensors", "--labels", "긍정", cwd=tmp_path)
    assert out.returncode == 2 and "[1 - p, p]" in out.stderr.decode("utf-8")
    out = cli("convert", path, "r4.safetensors", "--labels", "a,a", cwd=tmp_path)
    assert out.returncode == 2 and b"repeat" in out.stderr


def test_labels_refused_for_a_model_that_does_not_classify(hello, tmp_path):
    _, path = hello
    out = cli("convert", path, "x.safetensors", "--labels", "a,b,c,d", cwd=tmp_path)
    assert out.returncode == 2 and b"not a classifier" in out.stderr


def test_classify_text_needs_a_vocabulary_for_one_hot_models(sentiment):
    _, path = sentiment
    m = fastrnn.load(path)
    with pytest.raises(ValueError, match="one-hot character model set model.vocabulary"):
        list(m.classify(["좋다"]))
    m.vocabulary = "좋다별로영화"
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        list(m.classify(["안녕"]))
