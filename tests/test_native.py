"""The native format: save/load round trips, metadata, vocabulary, read-only mmap."""
import json
import struct

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.formats import safetensors
from helpers import random_recurrent


def make_model(rng):
    emb = fastrnn.Embedding(rng.standard_normal((12, 4)).astype(np.float32), name="emb")
    rec = random_recurrent(rng, "lstm", input_size=4, hidden_size=6, bidirectional=True, proj_size=2,
                           name="bilstm")
    rec2 = random_recurrent(rng, "gru", input_size=4, hidden_size=5, linear_before_reset=False,
                            return_sequences=False, clip=3.0, name="gru")
    dense = fastrnn.Dense(rng.standard_normal((3, 5)).astype(np.float32), np.zeros(3, np.float32), "softmax")
    vocab = fastrnn.Vocabulary(list("가나다라마바사아자차카타"), level="char")
    return fastrnn.Model([emb, rec, rec2, dense], vocabulary=vocab, metadata={"labels": ["a", "b", "c"]}, name="m")


def test_round_trip_identical_outputs(tmp_path, rng, backend):
    model = make_model(rng)
    path = tmp_path / "m.safetensors"
    fastrnn.save(model, path)
    loaded = fastrnn.load(path)
    ids = rng.integers(0, 12, (3, 7))
    assert np.array_equal(loaded.predict(ids, backend=backend), model.predict(ids, backend=backend))
    assert loaded.vocabulary.tokens == model.vocabulary.tokens
    assert loaded.metadata == {"labels": ["a", "b", "c"]}
    assert loaded.count_params() == model.count_params()
    assert loaded.summary(print_fn=None) == model.summary(print_fn=None)


def test_from_torch_save_load_round_trip(tmp_path, backend):
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).eval()
    model = fastrnn.from_torch(module)
    path = tmp_path / "lstm.safetensors"
    fastrnn.save(model, path)
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    assert np.array_equal(fastrnn.load(path).predict(x, backend=backend), model.predict(x, backend=backend))


def test_file_is_plain_safetensors(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    fastrnn.save(make_model(rng), path)
    import safetensors.numpy as st  # the reference implementation reads our files
    tensors = st.load_file(str(path))
    assert "layers.0.weight" in tensors
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    assert meta["format"] == "fastrnn" and json.loads(meta["model"])["layers"][1]["kind"] == "recurrent"


def test_loaded_weights_are_read_only(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    fastrnn.save(make_model(rng), path)
    for mmap in (True, False):
        m = fastrnn.load(path, mmap=mmap)
        w = m.layers[1].directions[0].w_ih
        assert not w.flags.writeable
        with pytest.raises(ValueError):
            w[0, 0] = 1.0


def test_not_a_fastrnn_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.write(path, {"x": np.zeros(3, np.float32)})
    with pytest.raises(fastrnn.ModelFormatError, match="fastrnn metadata"):
        fastrnn.load(path)


def test_newer_format_version_refused(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    model = make_model(rng)
    fastrnn.save(model, path)
    tensors, meta = safetensors.read(path, mmap=False)
    meta["format_version"] = "99"
    safetensors.write(path, tensors, meta)
    with pytest.raises(fastrnn.ModelFormatError, match="newer"):
        fastrnn.load(path)


def test_vocabulary_keys_round_trip_and_unknown_key_refused(tmp_path, rng):
    """Every text rule a Vocabulary writes is read back; a key this version does not know (a newer
    writer's rule) is refused by name instead of being ignored, which would tokenize differently."""
    from fastrnn.formats.native import VOCABULARY_KEYS

    path = tmp_path / "m.safetensors"
    vocab = fastrnn.Vocabulary(["", "[UNK]", "좋아요", "word"], level="word", unk=1, pad=0, lowercase_ascii=True,
                               strip="!?.", splitter="ascii_whitespace")
    model = fastrnn.Model([fastrnn.Embedding(rng.standard_normal((4, 3)).astype(np.float32))], vocabulary=vocab)
    fastrnn.save(model, path)
    tensors, meta = safetensors.read(path, mmap=False)
    written = json.loads(meta["model"])["vocabulary"]
    assert set(written) <= VOCABULARY_KEYS and {"lowercase_ascii", "strip", "splitter"} <= set(written)
    loaded = fastrnn.load(path).vocabulary
    assert loaded.encode("WORD 좋아요!!") == vocab.encode("WORD 좋아요!!") == [3, 2]
    spec = json.loads(meta["model"])
    spec["vocabulary"]["normalize_unicode"] = "NFC"
    meta["model"] = json.dumps(spec)
    safetensors.write(path, tensors, meta)
    with pytest.raises(fastrnn.ModelFormatError, match=r"unknown keys \['normalize_unicode'\]"):
        fastrnn.load(path)
