"""A Keras 3 ``.keras`` model whose first layer is ``TextVectorization`` (issue 13): fastrnn reads
its vocabulary and options into the model's Vocabulary, so ``classify`` on raw text feeds the
Embedding exactly the ids Keras did, without TensorFlow.

Keras 3's TextVectorization runs on TensorFlow only, which is not a test dependency: the models in
tests/fixtures/textvec were trained and saved by make_fixtures.py there, with TensorFlow 2.21 and
Keras 3.15, together with what Keras computed for 39 raw texts (Hangul reviews, unknown words,
punctuation, the empty text, a 600-character text, mixed-case Latin, non-ASCII capitals and
spaces, emoji): the layer's ids and the model's probabilities, one text per call. Here the ids
must be equal and the probabilities within 1e-5. The refusals are tested on copies of a fixture
whose config.json is edited (no TensorFlow needed either).
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn.errors import ModelFormatError, UnsupportedLayerError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "textvec")
CASES = ["word_default", "word_lower_nomask", "char_strip", "word_raw_vocab", "whole_text"]
PROBABILITY_ATOL = 1e-5  # the fixtures' float32 Keras outputs against fastrnn's float32 kernels


def fixture(case):
    with open(os.path.join(FIXTURES, case + ".json"), encoding="utf-8") as f:
        return os.path.join(FIXTURES, case + ".keras"), json.load(f)


def keras_ids(vocabulary, text, length):
    """fastrnn's ids for ``text`` laid out as TextVectorization's output (cut and padded at the end)."""
    ids = vocabulary.encode(text)
    return ids if length is None else (ids + [0] * length)[:length]


def probabilities(model, texts, **kwargs):
    return np.stack([r.probabilities for r in model.classify(texts, **kwargs)])


@pytest.mark.parametrize("case", CASES)
def test_ids_equal_text_vectorization(case):
    path, rec = fixture(case)
    model = fastrnn.load(path)
    assert model.vocabulary.tokens == rec["vocabulary"]  # "" = 0, "[UNK]" = 1, then the asset / config order
    length = rec["text_vectorization"]["output_sequence_length"]
    for text, want in zip(rec["texts"], rec["ids"]):
        assert keras_ids(model.vocabulary, text, length) == want, (case, text)


@pytest.mark.parametrize("case", CASES)
def test_classify_raw_text_equals_keras_predict(case):
    path, rec = fixture(case)
    model = fastrnn.load(path)
    ran = [i for i, p in enumerate(rec["probabilities"]) if p is not None]
    # Keras cannot run the empty text only where the model sees an empty sequence (no mask, no length)
    assert len(ran) == len(rec["texts"]) - (case == "word_raw_vocab")
    got = probabilities(model, [rec["texts"][i] for i in ran], batch_size=7)
    want = np.array([rec["probabilities"][i] for i in ran])
    np.testing.assert_allclose(got, want, rtol=0, atol=PROBABILITY_ATOL, err_msg=case)


def test_options_become_the_vocabulary_rules():
    """What each fixture's options turned into (the behaviour is checked against Keras above)."""
    expect = {  # case: (level, lowercase_ascii, strips punctuation, splitter, text_input maxlen)
        "word_default": ("word", True, True, "ascii_whitespace", 12),
        "word_lower_nomask": ("word", True, False, "ascii_whitespace", 10),
        "char_strip": ("char", False, True, None, None),
        "word_raw_vocab": ("word", False, False, "ascii_whitespace", None),
        "whole_text": ("word", True, True, "whole", 3),
    }
    for case, (level, lower, strip, splitter, maxlen) in expect.items():
        model = fastrnn.load(fixture(case)[0])
        v = model.vocabulary
        assert (v.level, v.lowercase_ascii, bool(v.strip), v.splitter, v.unk, v.pad, v.lowercase) == (
            level, lower, strip, splitter, 1, 0, False), case
        assert (model.metadata.get("text_input") or {}).get("maxlen") == maxlen, case
        if maxlen:
            assert model.metadata["text_input"]["padding"] == model.metadata["text_input"]["truncating"] == "post"


@pytest.mark.parametrize("case", ["word_lower_nomask", "char_strip", "whole_text"])
def test_native_save_keeps_the_vocabulary(tmp_path, case):
    path, rec = fixture(case)
    model = fastrnn.load(path)
    fastrnn.save(model, tmp_path / "m.safetensors")
    back = fastrnn.load(tmp_path / "m.safetensors")
    assert back.vocabulary.to_json() == model.vocabulary.to_json()
    assert back.metadata.get("text_input") == model.metadata.get("text_input")
    length = rec["text_vectorization"]["output_sequence_length"]
    for text, want in zip(rec["texts"], rec["ids"]):
        assert keras_ids(back.vocabulary, text, length) == want, (case, text)
    texts = [t for t, p in zip(rec["texts"], rec["probabilities"]) if p is not None]
    np.testing.assert_array_equal(probabilities(back, texts), probabilities(model, texts))


def test_unzipped_archive_directory_loads_the_same(tmp_path):
    path, rec = fixture("word_default")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "model")
    model = fastrnn.load(tmp_path / "model")
    assert model.vocabulary.tokens == rec["vocabulary"]
    np.testing.assert_allclose(probabilities(model, rec["texts"]), np.array(rec["probabilities"]),
                               rtol=0, atol=PROBABILITY_ATOL)


def test_max_length_cuts_tokens_not_characters():
    """classify(max_length=N) keeps the first N tokens; with punctuation stripped, N characters of
    text can hold fewer than N tokens, so the text must not be cut before tokenizing."""
    path, rec = fixture("char_strip")
    model = fastrnn.load(path)
    text = "!!!...??? 정말 재밌어요 강추"
    ids = model.vocabulary.encode(text)
    assert len(ids) > 6 and ids[:6] == model.vocabulary.encode(text[9:15])
    with pytest.warns(UserWarning, match="max_length=6"):
        got = probabilities(model, [text], max_length=6)
    np.testing.assert_array_equal(got, probabilities(model, [ids[:6]]))


def test_cli_classify_hangul_stdin(tmp_path):
    path, rec = fixture("word_default")
    texts = rec["texts"][:24]  # the reviews: one line each
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "classify", "--model", path],
                         input="\n".join(texts).encode("utf-8") + b"\n", capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    rows = [json.loads(line) for line in out.stdout.decode("utf-8").splitlines()]
    assert [r["text"] for r in rows] == texts
    got = np.array([[r["probabilities"][k] for k in sorted(r["probabilities"], key=int)] for r in rows])
    np.testing.assert_allclose(got, np.array(rec["probabilities"][:24]), rtol=0, atol=PROBABILITY_ATOL)


# -- what is refused ---------------------------------------------------------------------------

def edited(tmp_path, case, edit, drop=()):
    """A copy of fixture ``case`` whose config.json went through ``edit(config)`` (in place) and
    without the archive members ``drop``."""
    src, _ = fixture(case)
    dst = tmp_path / (case + ".keras")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in drop:
                continue
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode("utf-8")
            zout.writestr(item, data)
    return dst


def tv_config(config):
    layers = config["config"]["layers"]
    return next(layer for layer in layers if layer["class_name"] == "TextVectorization")["config"]


def set_options(**options):
    return lambda config: tv_config(config).update(options)


CUSTOM_FUNCTION = {"module": "builtins", "class_name": "function", "config": "my_korean_splitter",
                   "registered_name": "function"}


@pytest.mark.parametrize("options,named", [
    (dict(ngrams=2), "ngrams=2"),
    (dict(ngrams=[1, 2]), "ngrams=[1, 2]"),
    (dict(output_mode="multi_hot", output_sequence_length=None), "output_mode='multi_hot'"),
    (dict(output_mode="tf_idf", output_sequence_length=None, idf_weights=[1.0] * 87), "idf_weights"),
    (dict(standardize=CUSTOM_FUNCTION), "standardize=my_korean_splitter"),
    (dict(split=CUSTOM_FUNCTION), "split=my_korean_splitter"),
    (dict(ragged=True), "ragged=True"),
    (dict(sparse=True), "sparse=True"),
    (dict(encoding="euc-kr"), "encoding='euc-kr'"),
    (dict(vocabulary="/data/vocab.txt"), "vocabulary='/data/vocab.txt'"),
    (dict(output_sequence_length=0), "output_sequence_length=0"),
])
def test_unsupported_option_is_named(tmp_path, options, named):
    with pytest.raises(UnsupportedLayerError, match="text_vectorization.*TextVectorization") as err:
        fastrnn.load(edited(tmp_path, "word_default", set_options(**options)))
    assert named in str(err.value)


def test_every_unsupported_option_is_named_at_once(tmp_path):
    bad = dict(ngrams=3, output_mode="count", output_sequence_length=None, split=CUSTOM_FUNCTION, ragged=True)
    with pytest.raises(UnsupportedLayerError) as err:
        fastrnn.load(edited(tmp_path, "word_default", set_options(**bad)))
    for named in ("ngrams=3", "output_mode='count'", "split=my_korean_splitter", "ragged=True"):
        assert named in str(err.value)


def test_options_that_do_not_change_int_ids_are_accepted(tmp_path):
    """pad_to_max_tokens only shapes the multi_hot / count / tf_idf outputs; a larger max_tokens
    only capped adapt()."""
    path, rec = fixture("word_default")
    model = fastrnn.load(edited(tmp_path, "word_default", set_options(pad_to_max_tokens=True, max_tokens=1000)))
    assert model.vocabulary.tokens == rec["vocabulary"]


ASSETS = ("assets/layers/text_vectorization/vocabulary.txt",
          "assets/layers/text_vectorization/_lookup_layer/vocabulary.txt")


@pytest.mark.parametrize("options,drop,problem", [
    (dict(vocabulary_size=50), (), "vocabulary_size=50"),
    (dict(max_tokens=20), (), "max_tokens=20"),
    ({}, ASSETS, "assets/layers/text_vectorization/vocabulary.txt"),
    (dict(vocabulary=["a", "b", "a"]), (), "repeats tokens \\['a'\\]"),
    (dict(vocabulary=["a", "", "b"]), (), "mask token"),
])
def test_inconsistent_vocabulary_is_refused(tmp_path, options, drop, problem):
    with pytest.raises(ModelFormatError, match=problem):
        fastrnn.load(edited(tmp_path, "word_default", set_options(**options), drop=drop))


def test_only_the_first_assets_layer_copy_is_needed(tmp_path):
    path, rec = fixture("word_default")
    model = fastrnn.load(edited(tmp_path, "word_default", lambda c: None, drop=ASSETS[:1]))
    assert model.vocabulary.tokens == rec["vocabulary"]


def test_config_vocabulary_with_the_special_tokens_first(tmp_path):
    """A vocabulary passed to the constructor may start with "" and "[UNK]" (Keras drops them)."""
    path, rec = fixture("word_raw_vocab")
    with_specials = edited(tmp_path, "word_raw_vocab", set_options(vocabulary=rec["vocabulary"]))
    assert fastrnn.load(with_specials).vocabulary.tokens == rec["vocabulary"]


def test_text_vectorization_must_read_the_model_input(tmp_path):
    def dropout_first(config):
        layers = config["config"]["layers"]
        layers.insert(1, {"module": "keras.layers", "class_name": "Dropout",
                          "config": {"name": "dropout", "rate": 0.1}, "registered_name": None})
    with pytest.raises(UnsupportedLayerError, match="first layer"):
        fastrnn.load(edited(tmp_path, "whole_text", dropout_first))


def test_vocabulary_larger_than_the_embedding_is_refused(tmp_path):
    def small_embedding(config):
        emb = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Embedding")
        emb["config"]["input_dim"] = 10
    with pytest.raises(ModelFormatError):
        fastrnn.load(edited(tmp_path, "word_default", small_embedding))


def test_cli_convert_keeps_the_vocabulary(tmp_path):
    from fastrnn.cli import main

    path, rec = fixture("char_strip")
    assert main(["convert", path, str(tmp_path / "m.safetensors")]) == 0
    converted = fastrnn.load(tmp_path / "m.safetensors")
    assert converted.vocabulary.to_json() == fastrnn.load(path).vocabulary.to_json()
    np.testing.assert_allclose(probabilities(converted, rec["texts"]), np.array(rec["probabilities"]),
                               rtol=0, atol=PROBABILITY_ATOL)


def test_vocabulary_json_of_other_vocabularies_is_unchanged():
    """The new keys are written only when used: vocabularies of other sources keep their JSON."""
    from fastrnn.vocab import Vocabulary

    plain = Vocabulary(["a", "b"], level="char", unk=1)
    assert set(plain.to_json()) == {"level", "tokens", "unk", "pad", "lowercase"}
    tv = Vocabulary(["", "[UNK]", "a b"], level="word", unk=1, pad=0, lowercase_ascii=True, strip="!",
                    splitter="whole")
    assert Vocabulary.from_json(tv.to_json()) == tv
    assert tv.encode("A! B") == [2] and tv.encode("") == [0] and tv.encode("a  b") == [1]
    with pytest.raises(ValueError, match="splitter"):
        Vocabulary(["a"], level="char", splitter="ascii_whitespace")
