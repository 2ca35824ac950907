"""The encoder / decoder idiom of the Keras tutorials the lecture notes follow (issue 22.4).

Note 000's chatbot example ("안녕" -> "나도") built as the Keras seq2seq tutorial builds it: a
training model [encoder LSTM -> decoder LSTM(initial_state=encoder states) -> Dense softmax],
trained briefly here, then the inference models ``encoder_model = Model(enc_in, [h, c])`` and
``decoder_model = Model([dec_in, h_in, c_in], [y, h, c])`` saved as .keras files by real Keras 3
(torch backend). fastrnn generates from the decoder file with the encoder's states as
``initial_state=``; greedy decoding must give the tokens of the tutorial's Python loop over
``decoder_model`` (one call per token, its h, c fed back), and every step's probabilities must be
Keras's within 1e-4. Also: the chatbot variant with an Embedding(mask_zero=True) decoder (Keras 3
runs a layer called with initial_state= unmasked: fastrnn must too), the captioning "inject"
model (image features -> Dense -> the LSTM's initial state), a next-token model returning its
last state (generation = the loop over pre-padded prefixes, when the padding is masked), and
the refusals that say why a graph is not a step function.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import numpy as np
import pytest

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require

keras = require("keras")  # a skip outside CI, a failure in CI
if keras.backend.backend() != "torch":  # pragma: no cover - keras was imported earlier with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)
L = keras.layers
TOL = dict(atol=FRAMEWORK_ATOL, rtol=FRAMEWORK_RTOL)

PAIRS = [("안녕", "나도"), ("고마워", "천만에"), ("잘자", "너도"), ("배고파", "밥먹자")]
SOURCE_CHARS = sorted(set("".join(a for a, _ in PAIRS)))
TARGET_CHARS = ["\t", "\n"] + sorted(set("".join(b for _, b in PAIRS)))  # \t starts, \n ends (the tutorial's)
HIDDEN = 24


def run(model, inputs):
    out = model(inputs, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return keras.ops.convert_to_numpy(out)


def one_hot(text, chars, length):
    x = np.zeros((length, len(chars)), np.float32)
    for t, ch in enumerate(text):
        x[t, chars.index(ch)] = 1
    return x


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The Keras seq2seq tutorial (character level, one-hot inputs), trained briefly."""
    keras.utils.set_random_seed(1)
    S, V = len(SOURCE_CHARS), len(TARGET_CHARS)
    Ts, Tt = max(len(a) for a, _ in PAIRS), max(len(b) for _, b in PAIRS) + 2
    enc_x = np.stack([one_hot(a, SOURCE_CHARS, Ts) for a, _ in PAIRS])
    dec_x = np.stack([one_hot("\t" + b + "\n", TARGET_CHARS, Tt) for _, b in PAIRS])
    dec_y = np.concatenate([dec_x[:, 1:], np.zeros_like(dec_x[:, :1])], axis=1)
    enc_in = keras.Input((None, S))
    _, h, c = L.LSTM(HIDDEN, return_state=True)(enc_in)
    dec_in = keras.Input((None, V))
    dec_lstm = L.LSTM(HIDDEN, return_sequences=True, return_state=True)
    dense = L.Dense(V, activation="softmax")
    y = dense(dec_lstm(dec_in, initial_state=[h, c])[0])
    train = keras.Model([enc_in, dec_in], y)
    train.compile("adam", "categorical_crossentropy")
    train.fit([enc_x, dec_x], dec_y, epochs=250, verbose=0)
    encoder_model = keras.Model(enc_in, [h, c])
    h_in, c_in = keras.Input((HIDDEN,)), keras.Input((HIDDEN,))
    out, h2, c2 = dec_lstm(dec_in, initial_state=[h_in, c_in])
    decoder_model = keras.Model([dec_in, h_in, c_in], [dense(out), h2, c2])
    d = tmp_path_factory.mktemp("seq2seq")
    encoder_model.save(str(d / "encoder.keras"))
    decoder_model.save(str(d / "decoder.keras"))
    return dict(encoder=encoder_model, decoder=decoder_model, enc_x=enc_x, dir=d, max_len=Tt)


def tutorial_decode(encoder_model, decoder_model, x, max_len):
    """decode_sequence of the Keras tutorial: one decoder call per character, greedy; returns
    the text and the probabilities of every step."""
    states = run(encoder_model, x)
    target = one_hot("\t", TARGET_CHARS, 1)[None]
    text, probs = "", []
    while True:
        y, h, c = run(decoder_model, [target] + states)
        probs.append(y[0, -1])
        k = int(np.argmax(y[0, -1]))
        if TARGET_CHARS[k] == "\n" or len(text) >= max_len:
            break
        text += TARGET_CHARS[k]
        target = one_hot(TARGET_CHARS[k], TARGET_CHARS, 1)[None]
        states = [h, c]
    return text, np.array(probs)


def test_tutorial_decoder_generates_like_the_loop(tutorial, backend):
    encoder = fastrnn.load(tutorial["dir"] / "encoder.keras")
    decoder = fastrnn.load(tutorial["dir"] / "decoder.keras", vocabulary=TARGET_CHARS)
    assert decoder.input_names[0] == decoder.graph.inputs[0].name and len(decoder.input_names) == 3
    answers = []
    for i, (question, answer) in enumerate(PAIRS):
        x = tutorial["enc_x"][i:i + 1]
        expected, probs = tutorial_decode(tutorial["encoder"], tutorial["decoder"], x, tutorial["max_len"])
        states = encoder.predict(x, backend=backend)  # [h, c], as encoder_model.predict gives
        got = decoder.generate("\t", initial_state=states, temperature=0, max_new_tokens=tutorial["max_len"] + 1,
                               stop="\n", backend=backend)
        assert got == expected, question
        answers.append(got)
        # every step's distribution is the Keras decoder's (a session fed the same tokens)
        s = decoder.session(initial_state=states, backend=backend)
        s.feed("\t")
        for t, p in enumerate(probs):
            assert_close(s.probabilities(temperature=1.0), p, what=f"{question} step {t}", **TOL)
            if t < len(expected):
                s.feed(expected[t])
    assert answers[0] == "나도"  # note 000's example, learned by the brief training
    # a batch with one state row per prompt; states as a dict by input name; beam search
    states = encoder.predict(tutorial["enc_x"], backend=backend)
    batch = decoder.generate(["\t"] * len(PAIRS), initial_state=states, temperature=0, max_new_tokens=8,
                             stop="\n", backend=backend)
    assert batch == answers
    named = dict(zip(decoder.input_names[1:], [s[:1] for s in states]))
    assert decoder.generate("\t", initial_state=named, temperature=0, max_new_tokens=8, stop="\n") == answers[0]
    assert decoder.generate("\t", initial_state=[s[:1] for s in states], num_beams=3, max_new_tokens=8,
                            stop="\n") == answers[0]


def test_tutorial_decoder_through_the_native_file(tutorial, tmp_path):
    decoder = fastrnn.load(tutorial["dir"] / "decoder.keras", vocabulary=TARGET_CHARS)
    path = tmp_path / "decoder.safetensors"
    fastrnn.save(decoder, path)
    again = fastrnn.load(path)
    assert again.vocabulary.tokens == TARGET_CHARS
    states = fastrnn.load(tutorial["dir"] / "encoder.keras").predict(tutorial["enc_x"][:1])
    assert again.generate("\t", initial_state=states, temperature=0, max_new_tokens=8, stop="\n") == "나도"


def test_decoder_state_inputs_default_to_zeros(tutorial):
    """Without initial_state the state inputs are zeros, as the Keras decoder called with zero h, c."""
    decoder = fastrnn.load(tutorial["dir"] / "decoder.keras", vocabulary=TARGET_CHARS)
    zeros = [np.zeros((1, HIDDEN), np.float32)] * 2
    y = run(tutorial["decoder"], [one_hot("\t", TARGET_CHARS, 1)[None]] + zeros)[0]
    s = decoder.session()
    s.feed("\t")
    assert_close(s.probabilities(temperature=1.0), y[0, -1], **TOL)


def test_chatbot_decoder_with_masked_embedding(tmp_path):
    """The chatbot variant: token ids, Embedding(mask_zero=True) in encoder and decoder. Keras 3
    gives a recurrent layer called with initial_state= no mask (only the encoder is masked):
    fastrnn's predict on padded rows and generation both match Keras."""
    keras.utils.set_random_seed(4)
    V, E = 12, 8
    enc_in = keras.Input((None,), dtype="int32")
    _, h, c = L.LSTM(HIDDEN, return_state=True)(L.Embedding(V, E, mask_zero=True)(enc_in))
    dec_in = keras.Input((None,), dtype="int32")
    dec_emb = L.Embedding(V, E, mask_zero=True)
    dec_lstm = L.LSTM(HIDDEN, return_sequences=True, return_state=True)
    dense = L.Dense(V)  # logits
    train = keras.Model([enc_in, dec_in], dense(dec_lstm(dec_emb(dec_in), initial_state=[h, c])[0]))
    h_in, c_in = keras.Input((HIDDEN,)), keras.Input((HIDDEN,))
    out, h2, c2 = dec_lstm(dec_emb(dec_in), initial_state=[h_in, c_in])
    decoder_model = keras.Model([dec_in, h_in, c_in], [dense(out), h2, c2])
    encoder_model = keras.Model(enc_in, [h, c])
    for m, name in ((train, "train"), (encoder_model, "encoder"), (decoder_model, "decoder")):
        m.save(str(tmp_path / f"{name}.keras"))
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])  # right padding, masked in the encoder
    tgt = np.array([[1, 8, 9, 0], [1, 10, 0, 0]])       # zeros the decoder runs as tokens (Keras 3)
    loaded = fastrnn.load(tmp_path / "train.keras")
    assert_close(loaded.predict([src, tgt]), run(train, [src, tgt]), **TOL)
    encoder = fastrnn.load(tmp_path / "encoder.keras")
    decoder = fastrnn.load(tmp_path / "decoder.keras")
    states = encoder.predict(src)
    assert_close(states, run(encoder_model, src), **TOL)
    for b in range(2):
        st = [s[b:b + 1] for s in states]
        tokens, feed = [], np.array([[1]])
        for _ in range(6):
            y, hh, cc = run(decoder_model, [feed] + st)
            tokens.append(int(np.argmax(y[0, -1])))
            feed, st = np.array([[tokens[-1]]]), [hh, cc]
        assert decoder.generate([1], initial_state=[s[b:b + 1] for s in states], temperature=0,
                                max_new_tokens=6) == tokens


def test_inject_captioning_model(tmp_path):
    """Image features -> Dense -> the LSTM's initial state; the caption's tokens through an
    Embedding; a softmax per step. generate(initial_state={"image": features}) equals the greedy
    loop over the Keras model on the growing caption."""
    keras.utils.set_random_seed(2)
    V, F = 12, 10
    image = keras.Input((F,), name="image")
    features = L.Dense(HIDDEN, activation="relu")(image)
    caption = keras.Input((None,), name="caption", dtype="int32")
    seq = L.LSTM(HIDDEN, return_sequences=True)(L.Embedding(V, 8, mask_zero=True)(caption),
                                                initial_state=[features, features])
    model = keras.Model([image, caption], L.Dense(V, activation="softmax")(seq))
    model.save(str(tmp_path / "inject.keras"))
    loaded = fastrnn.load(tmp_path / "inject.keras")
    x = np.random.default_rng(0).normal(size=(3, F)).astype(np.float32)
    expected = []
    for i in range(3):
        tokens = [1]
        for _ in range(6):
            p = run(model, [x[i:i + 1], np.array([tokens])])
            tokens.append(int(np.argmax(p[0, -1])))
        expected.append(tokens[1:])
    assert loaded.generate([[1]] * 3, initial_state={"image": x}, temperature=0, max_new_tokens=6) == expected
    assert loaded.generate([1], initial_state=[x[1]], temperature=0, max_new_tokens=6) == expected[1]
    s = loaded.session(initial_state=[x[:1]])
    s.feed([1, 4])
    assert_close(s.probabilities(temperature=1.0), run(model, [x[:1], np.array([[1, 4]])])[0, -1], **TOL)
    with pytest.raises(ValueError, match=r"\['image'\].*initial_state="):
        loaded.generate([1], temperature=0, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"initial_state\['image'\] has shape \(2, 10\), expected \(1, 10\)"):
        loaded.generate([1], initial_state=[x[:2]], temperature=0, max_new_tokens=2)


def test_last_state_model_generates_like_the_padded_loop(tmp_path):
    """A next-token model on pre-padded prefixes (pad_sequences, LSTM returning its last state):
    with Embedding(mask_zero=True) the padding changes nothing, so generation carries the state;
    without a mask it is refused (the result depends on the padding)."""
    keras.utils.set_random_seed(5)
    V, maxlen = 11, 8
    model = keras.Sequential([keras.Input((maxlen,), dtype="int32"), L.Embedding(V, 6, mask_zero=True),
                              L.LSTM(HIDDEN), L.Dense(V, activation="softmax")])
    w, b = model.layers[-1].get_weights()
    model.layers[-1].set_weights([w * 8, b - 50 * (np.arange(V) == 0)])  # id 0 is padding: never predicted
    model.save(str(tmp_path / "next.keras"))
    tokens = [3]
    for _ in range(7):
        padded = np.zeros((1, maxlen), np.int32)
        padded[0, maxlen - min(len(tokens), maxlen):] = tokens[-maxlen:]
        tokens.append(int(np.argmax(run(model, padded)[0])))
    loaded = fastrnn.load(tmp_path / "next.keras")
    assert 0 not in tokens and len(set(tokens)) > 2
    assert loaded.generate([3], temperature=0, max_new_tokens=7) == tokens[1:]  # prefixes within maxlen
    unmasked = keras.Sequential([keras.Input((maxlen,), dtype="int32"), L.Embedding(V, 6), L.LSTM(HIDDEN),
                                 L.Dense(V, activation="softmax")])
    unmasked.save(str(tmp_path / "unmasked.keras"))
    with pytest.raises(ValueError, match="mask_zero=True"):
        fastrnn.load(tmp_path / "unmasked.keras").generate([3], max_new_tokens=2)


def test_step_function_refusals(tmp_path):
    V = 7
    tok = keras.Input((None,), dtype="int32")
    h_in = keras.Input((HIDDEN,))
    emb = L.Embedding(V, 4)(tok)
    seq, h = L.GRU(HIDDEN, return_sequences=True, return_state=True)(emb, initial_state=[h_in])
    seq2, h_b = L.GRU(HIDDEN, return_sequences=True, return_state=True)(seq)  # its state is not an input
    y = L.Dense(V)(seq2)
    keras.Model([tok, h_in], [y, h, h_b]).save(str(tmp_path / "a.keras"))
    with pytest.raises(ValueError, match="restart that state from zeros"):
        fastrnn.load(tmp_path / "a.keras").generate([1], initial_state=[np.zeros((1, HIDDEN))], max_new_tokens=2)
    keras.Model([tok, h_in], [y, L.Dense(3)(h)]).save(str(tmp_path / "b.keras"))
    with pytest.raises(ValueError, match="neither the per-step output nor final states"):
        fastrnn.load(tmp_path / "b.keras").generate([1], initial_state=[np.zeros((1, HIDDEN))], max_new_tokens=2)
    keras.Model([tok, h_in], [L.Dense(V)(seq), h]).save(str(tmp_path / "c.keras"))  # a valid step function
    step = fastrnn.load(tmp_path / "c.keras")
    assert len(step.generate([1], initial_state=[np.zeros((1, HIDDEN))], temperature=0, max_new_tokens=2)) == 2
    with pytest.raises(ValueError, match="one array \\(batch, size\\) per input"):
        step.generate([1], initial_state=[np.zeros((1, HIDDEN))] * 2, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"has shape \(1, 3\), expected \(1, 24\)"):
        step.generate([1], initial_state=[np.zeros((1, 3))], max_new_tokens=2)
