"""The lecture notes' review classifiers as a note reader builds them (issue 22, items 1-3):
Keras 3 models (torch backend) with ``Embedding(mask_zero=True)``, fed Hangul reviews through a
Keras tokenizer and ``pad_sequences``, whose default pads at the FRONT. A masked step leaves the
state unchanged and, in a returned sequence, gives what Keras gives there (the previous output of
the scan, or 0 inside Bidirectional / with zero_output_for_mask); fastrnn must equal Keras's
``predict`` within 1e-4 on every backend, in int8 (against its own float32 within the int8 bound
of tests/test_int8.py, and bitwise between a pre-padded row and the same row right-padded), with
``classify`` equal to ``predict``; and a tokenizer attached without ``maxlen`` takes the model's
fixed length or warns.

The tokenizers are real Keras 2 ones (tests/fixtures/keras2_tokenizer, the ids tested against
Keras 2's texts_to_sequences in tests/test_tokenizers.py); padding is Keras 3's own
``keras.utils.pad_sequences``.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
from conftest import (BACKENDS, COMPILED_BACKENDS, FRAMEWORK_ATOL, FRAMEWORK_RTOL, KERNEL_ATOL,  # noqa: E402
                      KERNEL_RTOL, assert_close, require)

keras = require("keras")  # a skip outside CI, a failure in CI

import fastrnn  # noqa: E402
from fastrnn.errors import PaddingLengthWarning  # noqa: E402
from fastrnn.formats.tokenizers import MAX_MAXLEN, read_keras_tokenizer  # noqa: E402
from fastrnn.graph import Plan, chain  # noqa: E402
from fastrnn.layers import Embedding  # noqa: E402
from fastrnn.layers.mask import compact  # noqa: E402
from fastrnn.layers.recurrent import expand_compacted, recurrent  # noqa: E402
from helpers import random_recurrent  # noqa: E402

from tokenizer_cases import LABELS, REVIEWS, UNSEEN  # noqa: E402

L = keras.layers
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras2_tokenizer")
WORD_TOKENIZER = os.path.join(FIXTURES, "word_pre.json")  # Keras 2 Tokenizer(), word level
CHAR_TOKENIZER = os.path.join(FIXTURES, "char_pre.json")  # Keras 2 Tokenizer(char_level=True, oov_token="?")
MAXLEN = 12
TEXTS = REVIEWS + UNSEEN + ["", "영화"]  # an empty review: an all-padding row


def padded(tokenizer, texts=TEXTS, maxlen=MAXLEN, **options):
    """What the notes do: texts_to_sequences, then pad_sequences (padding="pre" by default)."""
    vocab = read_keras_tokenizer(tokenizer)
    return keras.utils.pad_sequences([vocab.encode(t) for t in texts], maxlen=maxlen, **options), len(vocab)


def with_gaps(x):
    """Masked steps in the middle of rows too (Keras masks any step)."""
    x = x.copy()
    x[1, -3] = 0
    x[2, -5:-2] = 0
    x[4, ::3] = 0
    x[5, -1] = 0  # the last step masked: the output is held from the step before
    return x


def classifier(vocab_size, kind):
    """The notes' review classifiers (Sequential, Embedding(mask_zero=True) first)."""
    emb = L.Embedding(vocab_size, 8, mask_zero=True)
    body = {
        "simplernn": [L.SimpleRNN(6), L.Dense(1, activation="sigmoid")],
        "lstm": [L.LSTM(6), L.Dense(2, activation="softmax")],
        "gru": [L.GRU(6), L.Dense(2, activation="softmax")],
        "bilstm": [L.Bidirectional(L.LSTM(5)), L.Dense(1, activation="sigmoid")],
        # stacked layers returning sequences, then a recurrent layer returning its state
        "stacked": [L.LSTM(6, return_sequences=True), L.Bidirectional(L.GRU(4, return_sequences=True)),
                    L.SimpleRNN(5), L.Dense(2, activation="softmax")],
        # a Bidirectional sequence pooled over the real steps
        "bigru_pool": [L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum"),
                       L.GlobalAveragePooling1D(), L.Dense(2, activation="softmax")],
    }[kind]
    return keras.Sequential([keras.Input((None,), dtype="int32"), emb] + body)


def sequence_model(vocab_size, kind):
    """Models returning a sequence: what Keras gives AT the masked steps is compared too."""
    inp = keras.Input((None,), dtype="int32")
    e = L.Embedding(vocab_size, 8, mask_zero=True)(inp)
    if kind == "lstm_gru_timedistributed":  # held outputs through two layers and a per-step Dense
        out = L.TimeDistributed(L.Dense(3))(L.GRU(4, return_sequences=True)(L.LSTM(5, return_sequences=True)(e)))
    elif kind == "bidirectional_concat":  # 0 at masked steps in both directions
        out = L.Bidirectional(L.LSTM(4, return_sequences=True))(e)
    elif kind == "simplernn_go_backwards":  # the reversed scan, in scan order
        out = L.SimpleRNN(4, return_sequences=True, go_backwards=True)(e)
    elif kind == "zero_output_for_mask":
        out = L.GRU(4, return_sequences=True, zero_output_for_mask=True)(e)
    elif kind == "zero_output_for_mask_last":  # Keras returns the scan's last output: 0 if that step is masked
        out = L.Dense(2)(L.GRU(4, zero_output_for_mask=True)(e))
    elif kind == "merge_add":  # masks OR-ed by the merge, then a recurrent layer over it
        a = L.GRU(4, return_sequences=True)(e)
        b = L.SimpleRNN(4, return_sequences=True)(e)
        out = L.LSTM(3, return_sequences=True)(L.Add()([a, b]))
    return keras.Model(inp, out)


CLASSIFIERS = ["simplernn", "lstm", "gru", "bilstm", "stacked", "bigru_pool"]
SEQUENCES = ["lstm_gru_timedistributed", "bidirectional_concat", "simplernn_go_backwards",
             "zero_output_for_mask", "zero_output_for_mask_last", "merge_add"]


@pytest.fixture(scope="module", autouse=True)
def fresh_keras_names():
    """Keras numbers layer names process-wide (simple_rnn, simple_rnn_1, ...): leave the count as
    found, for the tests that read default names."""
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    """Every model trained briefly on the pre-padded reviews (classifiers) or left at Keras's
    initialisation (sequence models), saved as .keras; with Keras's predictions."""
    d = tmp_path_factory.mktemp("notes")
    x, V = padded(WORD_TOKENIZER)
    x_gaps = with_gaps(x)
    out = {}
    keras.utils.set_random_seed(0)
    for kind in CLASSIFIERS:
        km = classifier(V, kind)
        sigmoid = km.layers[-1].units == 1
        km.compile(optimizer=keras.optimizers.Adam(0.05),
                   loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy")
        km.fit(x[:len(LABELS)], LABELS, epochs=3, batch_size=6, verbose=0)
        km.save(d / f"{kind}.keras")
        out[kind] = (d / f"{kind}.keras", km.predict(x, verbose=0), km.predict(x_gaps, verbose=0))
    for kind in SEQUENCES:
        km = sequence_model(V, kind)
        km.save(d / f"{kind}.keras")
        out[kind] = (d / f"{kind}.keras", km.predict(x, verbose=0), km.predict(x_gaps, verbose=0))
    return x, x_gaps, out


def test_the_reviews_are_pre_padded_with_gaps_and_an_empty_row(notes):
    x, x_gaps, _ = notes
    assert (x[:, 0] == 0).any() and (x[:, -1] != 0).any()  # padding at the front, text at the end
    assert (x[-2] == 0).all()  # the empty review
    assert ((x_gaps[:, 1:] == 0) & (x_gaps[:, :-1] != 0)).any()  # a masked step after a real one


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CLASSIFIERS + SEQUENCES)
def test_predict_equals_keras_on_pre_padded_and_gapped_rows(notes, kind, backend):
    x, x_gaps, models = notes
    path, want, want_gaps = models[kind]
    model = fastrnn.load(path)
    got, got_gaps = model.predict(x, backend=backend), model.predict(x_gaps, backend=backend)
    if kind == "bigru_pool":
        # GlobalAveragePooling1D of an all-padding row (the empty review, a review of unknown
        # words only): Keras divides 0 by 0 (NaN), fastrnn gives 0 (fastrnn.layers.pooling); every
        # other row is compared
        keep = (x != 0).any(axis=1) & (x_gaps != 0).any(axis=1)
        assert np.isnan(want[~keep]).all() and np.isfinite(got).all() and keep.sum() >= len(x) - 3
        got, want, got_gaps, want_gaps = got[keep], want[keep], got_gaps[keep], want_gaps[keep]
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL, f"{kind} pre-padded")
    assert_close(got_gaps, want_gaps, FRAMEWORK_ATOL, FRAMEWORK_RTOL, f"{kind} gaps")


def right_padded(x):
    """Each row's real steps moved to the front: what the same texts give with padding="post"."""
    order, _ = compact(x != 0)
    return np.take_along_axis(x, order, axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["simplernn", "bilstm", "stacked"])
def test_masked_rows_equal_the_same_rows_right_padded_in_float_and_int8(notes, kind, backend):
    """A masked step changes nothing: a pre-padded (or gapped) row gives bitwise what the row with
    its real steps first gives (the right-padding path, lengths), in float32 and int8; int8 stays
    within the int8 bound of float32 (tests/test_int8.py: 4 quantization steps of W_hh)."""
    x, x_gaps, models = notes
    model = fastrnn.load(models[kind][0])
    q = model.quantize("int8")
    for m in (model, q):
        for rows in (x, x_gaps):
            np.testing.assert_array_equal(m.predict(rows, backend=backend),
                                          m.predict(right_padded(rows), backend=backend))
    if kind == "simplernn":  # one recurrent layer: the bound of tests/test_int8.py applies
        w = model.recurrent_layers[0].directions[0].w_hh
        step = np.abs(w).max() / 127 * w.shape[1] / 2 + np.abs(w).sum(1).max() / 127 / 2
        err = np.abs(q.predict(x, backend=backend) - model.predict(x, backend=backend)).max()
        assert err <= 4 * step, (err, step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classify_equals_predict_on_padded_id_rows(notes, backend):
    """Item 2: classify on pre-padded id rows masks the zeros as predict does (before, it ran
    them as tokens: 0.03-0.08 off Keras, labels flipped)."""
    x, x_gaps, models = notes
    for kind in ("lstm", "simplernn", "bilstm"):
        path, want, want_gaps = models[kind]
        model = fastrnn.load(path)
        for rows, keras_out in ((x, want), (x_gaps, want_gaps)):
            got = np.stack([r.probabilities for r in model.classify(list(rows), batch_size=4, backend=backend)])
            direct = model.predict(rows, backend=backend)
            direct = np.concatenate([1 - direct, direct], axis=1) if direct.shape[1] == 1 else direct
            tol = (0, 0) if backend != "numpy" else (KERNEL_ATOL, KERNEL_RTOL)  # compiled: batch-invariant
            assert_close(got, direct, *tol, what=f"{kind} classify vs predict")
            keras_p = np.concatenate([1 - keras_out, keras_out], axis=1) if keras_out.shape[1] == 1 else keras_out
            assert_close(got, keras_p, FRAMEWORK_ATOL, FRAMEWORK_RTOL, f"{kind} classify vs keras")


def test_classify_unknown_fraction_ignores_the_padding_id(notes):
    """Padding ids are not tokens: a pre-padded row's unknown fraction is its text's."""
    _, _, models = notes
    oov_tokenizer = os.path.join(FIXTURES, "word_oov_post.json")  # num_words=40, oov_token="<OOV>"
    vocab = read_keras_tokenizer(oov_tokenizer)
    model = fastrnn.load(models["lstm"][0], tokenizer=oov_tokenizer, maxlen=MAXLEN)
    ids = [vocab.encode(t)[-MAXLEN:] for t in TEXTS]
    rows = keras.utils.pad_sequences(ids, maxlen=MAXLEN)
    fractions = [r.unknown_fraction for r in model.classify(list(rows))]
    want = [ids_.count(vocab.unk) / len(ids_) if ids_ else 1.0 for ids_ in ids]
    assert any(0 < w < 1 for w in want) and fractions == pytest.approx(want)
    assert fractions == [r.unknown_fraction for r in model.classify(TEXTS)]  # as for the raw texts


def test_classify_raw_hangul_text_equals_keras_on_pad_sequences(notes):
    """The notes' whole path: raw Korean reviews -> the Keras tokenizer -> the masked model."""
    x, _, models = notes
    path, want, _ = models["lstm"]
    model = fastrnn.load(path, tokenizer=WORD_TOKENIZER, maxlen=MAXLEN)
    got = np.stack([r.probabilities for r in model.classify(TEXTS)])
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    assert [r.label for r in model.classify(TEXTS)] == list(np.argmax(want, axis=1))


def test_char_level_model_with_masking_layer_on_features_pre_padded(tmp_path):
    """Masking (not Embedding) on one-hot characters, pre-padded as the notes' char models are."""
    xi, V = padded(CHAR_TOKENIZER, maxlen=20)
    onehot = np.eye(V, dtype=np.float32)[xi]
    onehot[xi == 0] = 0.0  # a padding step: all features 0, masked by Masking()
    keras.utils.set_random_seed(3)
    km = keras.Sequential([keras.Input((None, V)), L.Masking(), L.GRU(5, return_sequences=True), L.LSTM(4),
                           L.Dense(2, activation="softmax")])
    km.save(tmp_path / "chars.keras")
    want = km.predict(onehot, verbose=0)
    model = fastrnn.load(tmp_path / "chars.keras")
    for backend in BACKENDS:
        assert_close(model.predict(onehot, backend=backend), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [
    dict(cell="lstm"), dict(cell="gru", masked_output="hold"), dict(cell="rnn", masked_output="hold"),
    dict(cell="gru", bidirectional=True, merge_mode="ave"), dict(cell="lstm", bidirectional=True),
    dict(cell="rnn", go_backwards=True, masked_output="hold"), dict(cell="gru", go_backwards=True),
    dict(cell="lstm", reverse=True), dict(cell="gru", masked_output="hold", return_sequences=False),
    dict(cell="lstm", bidirectional=True, return_sequences=False, merge_mode="mul"),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_packed_run_equals_the_step_by_step_masked_reference(rng, options, backend):
    """The graph runs a (B, T) mask by packing each row's real steps to the left and putting the
    outputs back (expand_compacted); the NumPy reference scans every step with the mask (the
    spec, which Keras's comparisons above pin). Random masks, folded embedding or features."""
    layer = random_recurrent(rng, input_size=6, hidden_size=5, **options)
    B, T = 7, 9
    mask = rng.random((B, T)) < 0.6
    mask[0] = False  # an all-masked row
    mask[1] = True
    mask[2, :4] = False  # left padding
    x = rng.standard_normal((B, T, 6)).astype(np.float32)
    want_y, want_state = recurrent(layer, x, mask)
    ids = np.where(mask, rng.integers(1, 11, (B, T)), 0)
    emb = Embedding(rng.standard_normal((11, 6)).astype(np.float32), mask_zero=True)
    plan = Plan(chain([emb, layer]))
    backend_obj = fastrnn.get_backend(backend)
    (got,), (state,) = plan.run([ids], [None], [None], backend_obj, 1)
    want_ids, want_ids_state = recurrent(layer, emb.weight[ids], mask)
    assert_close(got, want_ids, what="packed run through the embedding")
    for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (state, want_ids_state))):
        assert_close(a, b, what="final state (h, and c for an LSTM)")
    if layer.return_sequences:  # the gather on its own, on features
        order, counts = compact(mask)
        packed = np.take_along_axis(x, order[:, :, None], axis=1)
        y, _ = recurrent(layer, packed, counts)
        assert_close(expand_compacted(layer, y, mask), want_y, what="expand_compacted")


def test_lengths_stay_the_fast_path_and_combine_with_the_mask(notes):
    """Right padding travels as lengths (no packing); lengths= and the padding ids both mask."""
    x, _, models = notes
    model = fastrnn.load(models["gru"][0])
    post = right_padded(x)
    counts = (post != 0).sum(1)
    np.testing.assert_array_equal(model.predict(post, lengths=counts), model.predict(post))
    shorter = np.maximum(counts - 2, 0)
    cut = np.where(np.arange(x.shape[1])[None, :] < shorter[:, None], post, 0)
    np.testing.assert_array_equal(model.predict(post, lengths=shorter), model.predict(cut))


def test_an_input_without_time_steps_and_a_mask_is_a_clear_error(notes):
    _, _, models = notes
    model = fastrnn.load(models["lstm"][0])
    with pytest.raises(ValueError, match=r"mask_zero\): the input has no time steps \(shape \(1, 0\)\).*at least one step"):
        model.predict(np.zeros((1, 0), np.int64))
    assert model.predict(np.zeros((0, 0), np.int64)).shape == (0, 2)  # no rows: nothing to refuse


# -- item 3: a tokenizer without maxlen ---------------------------------------------------------
def unmasked_gru(V, length=None):
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input((length,), dtype="int32"), L.Embedding(V, 6), L.GRU(5),
                             L.Dense(2, activation="softmax")])


def test_tokenizer_without_maxlen_takes_the_models_fixed_input_length(tmp_path):
    x, V = padded(WORD_TOKENIZER, maxlen=20)
    km = unmasked_gru(V, length=20)
    km.save(tmp_path / "fixed.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PaddingLengthWarning)
        model = fastrnn.load(tmp_path / "fixed.keras", tokenizer=WORD_TOKENIZER)
    assert model.metadata["text_input"]["maxlen"] == 20
    got = np.stack([r.probabilities for r in model.classify(TEXTS)])
    assert_close(got, km.predict(x, verbose=0), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    with pytest.raises(ValueError, match="maxlen=30.*fixed length of 20"):
        fastrnn.load(tmp_path / "fixed.keras", tokenizer=WORD_TOKENIZER, maxlen=30)


def test_tokenizer_without_maxlen_warns_for_a_model_without_mask_or_fixed_length(tmp_path, notes):
    _, V = padded(WORD_TOKENIZER)
    unmasked_gru(V).save(tmp_path / "free.keras")
    with pytest.warns(PaddingLengthWarning, match=r"depend on the padding length.*maxlen=N.*--maxlen N"):
        fastrnn.load(tmp_path / "free.keras", tokenizer=WORD_TOKENIZER)
    with warnings.catch_warnings():  # a model with a mask skips padding: no warning
        warnings.simplefilter("error", PaddingLengthWarning)
        fastrnn.load(notes[2]["lstm"][0], tokenizer=WORD_TOKENIZER)
        fastrnn.load(tmp_path / "free.keras", tokenizer=WORD_TOKENIZER, maxlen=MAXLEN)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_convert_tokenizer_without_maxlen_says_so_on_stderr(tmp_path):
    _, V = padded(WORD_TOKENIZER)
    unmasked_gru(V).save(tmp_path / "free.keras")
    out = run_cli("convert", tmp_path / "free.keras", tmp_path / "free.safetensors", "--tokenizer", WORD_TOKENIZER)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "padding length" in line]
    assert len(lines) == 1 and lines[0].startswith("fastrnn convert: warning:") and "--maxlen N" in lines[0]
    out = run_cli("convert", tmp_path / "free.keras", tmp_path / "free.safetensors", "--tokenizer", WORD_TOKENIZER,
                  "--maxlen", 10 ** 10)
    assert out.returncode == 2 and "--maxlen=10000000000" in out.stderr and f"{MAX_MAXLEN:,}" in out.stderr


def test_maxlen_is_bounded_with_an_error_naming_it(tmp_path):
    _, V = padded(WORD_TOKENIZER)
    unmasked_gru(V).save(tmp_path / "free.keras")
    with pytest.raises(ValueError, match=rf"maxlen=10000000000 is beyond .* {MAX_MAXLEN:,}"):
        fastrnn.load(tmp_path / "free.keras", tokenizer=WORD_TOKENIZER, maxlen=10 ** 10)


def test_maxlen_above_max_length_cuts_the_text_before_padding(tmp_path):
    """Issue 24: with maxlen above classify's max_length the text was padded to maxlen and then
    its FIRST max_length ids kept: only padding. Now the text is cut to max_length on the side
    pad_sequences truncates (the front, by default), then padded to maxlen as in training."""
    long_text = " ".join(REVIEWS)  # 50+ words
    vocab = read_keras_tokenizer(WORD_TOKENIZER)
    ids = vocab.encode(long_text)
    assert len(ids) > 20
    km = unmasked_gru(len(vocab))
    km.save(tmp_path / "free.keras")
    model = fastrnn.load(tmp_path / "free.keras", tokenizer=WORD_TOKENIZER, maxlen=40)
    short = REVIEWS[:3]
    got = np.stack([r.probabilities for r in model.classify(short, max_length=20)])
    want = km.predict(keras.utils.pad_sequences([vocab.encode(t) for t in short], maxlen=40), verbose=0)
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)  # short texts: exactly Keras
    with pytest.warns(UserWarning, match="only its last 20 tokens"):
        got = next(iter(model.classify([long_text], max_length=20))).probabilities
    want = km.predict(keras.utils.pad_sequences([ids[-20:]], maxlen=40), verbose=0)[0]
    assert_close(got, want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_lengths_from_mask_still_converts_right_padding_and_explains_left_padding():
    from fastrnn.model import lengths_from_mask  # public since 0.1

    np.testing.assert_array_equal(lengths_from_mask([[1, 1, 0], [0, 0, 0], [1, 1, 1]], "m"), [2, 0, 3])
    with pytest.raises(ValueError, match=r"m: this mask is not right padding \(.*left padding"):
        lengths_from_mask([[0, 1, 1]], "m")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras3_runs_a_layer_given_initial_state_tensors_without_the_mask(tmp_path, bidirectional):
    """Keras 3 passes a layer its input's mask only when the input is its one tensor argument:
    a decoder called with initial_state=[h] runs its padding steps too (its returned sequence
    still carries the mask to the next layer). Keras 2 masked them; fastrnn follows the file."""
    x, V = padded(WORD_TOKENIZER)
    h0 = np.random.default_rng(4).normal(size=(len(x), 3)).astype(np.float32)
    keras.utils.set_random_seed(4)
    ids, h_in = keras.Input((None,), dtype="int32"), keras.Input((3,))
    e = L.Embedding(V, 4, mask_zero=True)(ids)
    gru = L.GRU(3, return_sequences=True, return_state=True)
    out, *states = (L.Bidirectional(gru)(e, initial_state=[h_in, h_in]) if bidirectional
                    else gru(e, initial_state=[h_in]))
    km = keras.Model([ids, h_in], [L.LSTM(2, return_sequences=True)(out)] + states)  # masked again
    km.save(tmp_path / "decoder.keras")
    want = km.predict([x, h0], verbose=0)
    model = fastrnn.load(tmp_path / "decoder.keras")
    fastrnn.save(model, tmp_path / "decoder.safetensors")
    for m in (model, fastrnn.load(tmp_path / "decoder.safetensors")):
        assert [layer.use_mask for layer in m.recurrent_layers] == [False, True]
        for backend in BACKENDS:
            for got, w in zip(m.predict([x, h0], backend=backend), want):
                assert_close(got, w, FRAMEWORK_ATOL, FRAMEWORK_RTOL, backend)


def captioning_merge_model(vocab_size, feature_size=20, units=8):
    """The notes' captioning "merge" model (Keras's image-captioning tutorial form): image features
    -> Dropout -> Dense(relu); the caption so far, pre-padded -> Embedding(mask_zero=True) ->
    Dropout -> LSTM; the two added, -> Dense(relu) -> Dense(softmax) over the next word."""
    image = keras.Input((feature_size,), name="image")
    words = keras.Input((None,), dtype="int32", name="words")
    fe = L.Dense(units, activation="relu")(L.Dropout(0.5)(image))
    se = L.LSTM(units)(L.Dropout(0.5)(L.Embedding(vocab_size, 8, mask_zero=True)(words)))
    hidden = L.Dense(units, activation="relu")(L.Add()([fe, se]))
    return keras.Model([image, words], L.Dense(vocab_size, activation="softmax")(hidden))


@pytest.mark.parametrize("backend", BACKENDS)
def test_captioning_merge_model_equals_keras_on_pre_padded_captions(tmp_path, backend):
    """Two inputs, one of them a pre-padded (and gapped) caption under a mask: fastrnn's predict
    equals Keras's within 1e-4 on every backend; in int8 a pre-padded caption gives bitwise what
    the same caption right-padded gives."""
    x, V = padded(WORD_TOKENIZER)
    keras.utils.set_random_seed(1)
    km = captioning_merge_model(V)
    features = np.random.default_rng(1).standard_normal((len(x), 20)).astype(np.float32)
    km.save(tmp_path / "caption.keras")
    model = fastrnn.load(tmp_path / "caption.keras")
    assert model.input_names == ["image", "words"]
    for rows in (x, with_gaps(x)):
        want = km.predict([features, rows], verbose=0)
        assert_close(model.predict([features, rows], backend=backend), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL,
                     "caption merge model")
        # a dict by input name is the same call
        np.testing.assert_array_equal(model.predict({"words": rows, "image": features}, backend=backend),
                                      model.predict([features, rows], backend=backend))
    q = model.quantize("int8")
    np.testing.assert_array_equal(q.predict([features, x], backend=backend),
                                  q.predict([features, right_padded(x)], backend=backend))
    # masked: where the padding sits changes nothing in float32 either
    assert np.abs(model.predict([features, x], backend=backend)
                  - model.predict([features, right_padded(x)], backend=backend)).max() < 1e-6
