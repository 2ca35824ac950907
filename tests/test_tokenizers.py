"""The tokenizer that came with a Keras model (issue 13): a Keras 2 ``Tokenizer.to_json()`` and
``pad_sequences`` give fastrnn's classify on raw Korean text exactly the ids and padding Keras's
model was trained on.

The tokenizers are real ones: Keras 2's ``Tokenizer`` (the tf_keras package) fitted on the Hangul
review texts below by tests/fixtures/keras2_tokenizer/make_fixtures.py, which committed their JSON
and the sequences Keras 2 made (TensorFlow is not a test dependency). The classifiers are Keras 3 models (torch backend) trained for a few steps
on those sequences; fastrnn's ``classify`` on the raw texts must equal Keras's ``predict`` on the
Keras-padded sequences.
"""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require  # noqa: E402

keras = require("keras")  # a skip outside CI, a failure in CI

import fastrnn  # noqa: E402
from fastrnn.formats.tokenizers import read_keras_tokenizer  # noqa: E402

from tokenizer_cases import CASE_FILES, CASES, LABELS, REVIEWS, UNSEEN  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras2_tokenizer")


def keras2_tokenize(case):
    """The committed outputs of Keras 2's Tokenizer for ``case`` (made by make_fixtures.py):
    (tokenizer.json path, padded REVIEWS, padded UNSEEN, unpadded UNSEEN ids)."""
    base = os.path.join(FIXTURES, CASE_FILES[case])
    data = np.load(base + ".npz", allow_pickle=False)
    return base + ".json", data["train"], data["unseen"], json.loads(str(data["unseen_ids"]))


def train(model, x, steps=5):
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(x, LABELS, epochs=steps, batch_size=6, verbose=0)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_classify_raw_text_equals_keras_on_keras_padded_ids(tmp_path, case):
    tok_args, pad_args, masked = CASES[case]
    tok_path, x_train, x_unseen, _ = keras2_tokenize(case)
    vocab = read_keras_tokenizer(tok_path)
    V = len(vocab)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(V, 8, mask_zero=masked)(inp)
    h = keras.layers.LSTM(6)(h) if masked else keras.layers.GRU(6)(h)
    km = train(keras.Model(inp, keras.layers.Dense(2, activation="softmax")(h)), x_train)
    km.save(tmp_path / "review.keras")
    model = fastrnn.load(tmp_path / "review.keras", tokenizer=tok_path, padding=pad_args.get("padding", "pre"),
                         truncating=pad_args.get("truncating", "pre"), maxlen=pad_args["maxlen"])
    texts = REVIEWS + UNSEEN
    want = km.predict(np.concatenate([x_train, x_unseen]), verbose=0)
    got = np.stack([r.probabilities for r in model.classify(texts, batch_size=5)])
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL, case)
    # the tokenizer and padding survive a native save
    fastrnn.save(model, tmp_path / "review.safetensors")
    back = fastrnn.load(tmp_path / "review.safetensors")
    assert back.metadata["text_input"]["maxlen"] == pad_args["maxlen"]
    np.testing.assert_array_equal(np.stack([r.probabilities for r in back.classify(texts)]), got)


@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_masked_model_equals_keras_for_every_padding_and_truncating_side(tmp_path, padding, truncating):
    """A masked model (Embedding(mask_zero=True)) trained on pad_sequences(..., padding, truncating):
    fastrnn's classify on the raw texts equals Keras's predict on the Keras-padded ids for all four
    sides. Truncation decides which words the model sees, so fastrnn cuts as the tokenizer did;
    the padding zeros are masked, so fastrnn feeds none of them (pre-padding zeros would be masked
    steps before the text, which Keras skips: the same result, at the cost of the padded steps).
    maxlen 4 cuts 6 of the 16 texts and pads 4: every case has both."""
    case = "word, mask_zero, post"
    maxlen = 4
    tok_path, _, _, ids = keras2_tokenize(case)  # Keras 2's texts_to_sequences of UNSEEN + REVIEWS
    assert sum(len(s) > maxlen for s in ids) == 6 and sum(0 < len(s) < maxlen for s in ids) == 4
    padded = keras.utils.pad_sequences(ids, maxlen=maxlen, padding=padding, truncating=truncating)
    unseen, train_x = padded[:len(UNSEEN)], padded[len(UNSEEN):]
    keras.utils.set_random_seed(3)
    inp = keras.Input((None,), dtype="int32")
    h = keras.layers.LSTM(6)(keras.layers.Embedding(len(read_keras_tokenizer(tok_path)), 8, mask_zero=True)(inp))
    km = train(keras.Model(inp, keras.layers.Dense(2, activation="softmax")(h)), train_x)
    km.save(tmp_path / "masked.keras")
    model = fastrnn.load(tmp_path / "masked.keras", tokenizer=tok_path, padding=padding, truncating=truncating,
                         maxlen=maxlen)
    want = km.predict(np.concatenate([train_x, unseen]), verbose=0)
    got = np.stack([r.probabilities for r in model.classify(REVIEWS + UNSEEN, batch_size=5)])
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL, f"padding={padding} truncating={truncating}")
    # the sides matter to this model: the other truncation gives other probabilities
    other = keras.utils.pad_sequences(ids, maxlen=maxlen, padding=padding,
                                      truncating="post" if truncating == "pre" else "pre")
    assert np.abs(km.predict(other[len(UNSEEN):], verbose=0) - want[:len(REVIEWS)]).max() > 1e-3


def test_ids_equal_keras2_texts_to_sequences():
    """Before padding: every text's ids equal Keras 2's texts_to_sequences (num_words cut-off, oov,
    filters, lower; unknown words dropped without an oov_token)."""
    for case in CASES:
        tok_path, _, _, unseen_ids = keras2_tokenize(case)
        vocab = read_keras_tokenizer(tok_path)
        for text, ids in zip(UNSEEN + REVIEWS, unseen_ids):
            assert vocab.encode(text) == ids, (case, text)


@pytest.mark.parametrize("bad,words", [
    ({"class_name": "Nope", "config": {}}, "Tokenizer"),
    ({"class_name": "Tokenizer", "config": {"word_index": "{\"a\": 0}"}}, "ids >= 1"),
    ({"class_name": "Tokenizer", "config": {"word_index": "{not json"}}, "word_index"),
    ({"class_name": "Tokenizer", "config": {"word_index": "{\"a\": 1}", "oov_token": "<x>"}}, "oov_token"),
    ({"class_name": "Tokenizer", "config": {"word_index": "{\"a\": 1, \"b\": 1}"}}, "two words"),
])
def test_bad_tokenizer_files_are_refused(bad, words):
    with pytest.raises(fastrnn.ModelFormatError, match=words):
        read_keras_tokenizer(bad)


def test_cli_convert_with_tokenizer(tmp_path):
    """`fastrnn convert model.keras out.safetensors --tokenizer tok.json --maxlen N`: the file
    classifies raw text as the Python call does."""
    from fastrnn.cli import main

    case = "word, no mask, pre"
    tok_path, x_train, _, _ = keras2_tokenize(case)
    V = len(read_keras_tokenizer(tok_path))
    keras.utils.set_random_seed(1)
    inp = keras.Input((None,), dtype="int32")
    km = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(
        keras.layers.GRU(4)(keras.layers.Embedding(V, 4)(inp))))
    km.save(tmp_path / "m.keras")
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "m.safetensors"), "--tokenizer", tok_path,
                 "--maxlen", "10"]) == 0
    converted = fastrnn.load(tmp_path / "m.safetensors")
    direct = fastrnn.load(tmp_path / "m.keras", tokenizer=tok_path, maxlen=10)
    texts = REVIEWS[:4]
    np.testing.assert_array_equal(np.stack([r.probabilities for r in converted.classify(texts)]),
                                  np.stack([r.probabilities for r in direct.classify(texts)]))
    assert_close(np.stack([r.probabilities for r in converted.classify(texts)]),
                 km.predict(x_train[:4], verbose=0), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
