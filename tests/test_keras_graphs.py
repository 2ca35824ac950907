"""Keras graph models (issue 12): files written by real Keras 3 (torch backend) with random
weights, loaded by fastrnn as graphs and compared with Keras's own output (within 1e-4).

Covered: two inputs + Concatenate, Embedding -> Conv1D -> MaxPooling1D -> LSTM classifier, a
user-defined layer through custom_layers (saved natively, reloaded with and without its
factory), a user-defined activation, Bidirectional LSTM -> GlobalMaxPooling1D with mask_zero,
an encoder-decoder with Attention and initial_state, a nested Sequential, a shared layer,
multi-output predict (list and dict), summary parameter totals, classify, fastrnn.from_keras,
and a legacy Keras 2 ``.h5`` two-input graph written with h5py in the Keras 2 layout.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import json

import h5py
import numpy as np
import pytest

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require

keras = require("keras")  # a skip outside CI, a failure in CI
if keras.backend.backend() != "torch":  # pragma: no cover - keras was imported earlier with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)
L = keras.layers
ops = keras.ops
TOL = dict(atol=FRAMEWORK_ATOL, rtol=FRAMEWORK_RTOL)
RNG = np.random.default_rng(12)


def randomize(model, seed=0, scale=0.5):
    """Random weights, biases included (BatchNormalization variances kept positive)."""
    rng = np.random.default_rng(seed)
    out = []
    for w in model.weights:
        a = rng.standard_normal(w.shape) * scale
        if "variance" in w.path:
            a = np.abs(a) + 0.5
        out.append(a.astype(np.float32))
    model.set_weights(out)
    return model


def keras_predict(model, x):
    y = model(x, training=False)
    if isinstance(y, dict):
        return {k: ops.convert_to_numpy(v) for k, v in y.items()}
    if isinstance(y, (list, tuple)):
        return [ops.convert_to_numpy(v) for v in y]
    return ops.convert_to_numpy(y)


def check(model, x, tmp_path, name="m", custom_layers=None, backends=("numpy", None)):
    """Save as .keras, load with fastrnn and through from_keras; compare with Keras (list outputs
    compared in order). Returns the model loaded from the file."""
    expected = keras_predict(model, x)
    path = tmp_path / f"{name}.keras"
    model.save(str(path))
    loaded = fastrnn.load(path, custom_layers=custom_layers)
    live = fastrnn.from_keras(model, custom_layers=custom_layers)
    for fm, how in ((loaded, "file"), (live, "from_keras")):
        assert fm.count_params() == model.count_params(), how
        for backend in backends:
            got = fm.predict(x, backend=backend)
            if isinstance(expected, list):
                assert isinstance(got, list) and len(got) == len(expected)
                for g, e in zip(got, expected):
                    assert_close(g, e, what=f"{how} / {backend}", **TOL)
            else:
                assert_close(got, expected, what=f"{how} / {backend}", **TOL)
    return loaded


# right-padded token ids (id 0 = padding): lengths 7, 4, 1
IDS = np.array([[3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 9, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0]])


# -- the models of the issue ------------------------------------------------------------------------
def two_input_model():
    a = keras.Input((6, 4), name="left_in")
    b = keras.Input((5, 3), name="right_in")
    x = L.LSTM(5, name="lstm_a")(a)
    y = L.LSTM(4, name="lstm_b")(b)
    h = L.Concatenate(name="join")([x, y])
    h = L.Dense(8, activation="relu", name="hidden")(h)
    out = L.Dense(3, activation="softmax", name="probs")(h)
    return randomize(keras.Model([a, b], out))


def test_two_inputs_concatenate(tmp_path):
    model = two_input_model()
    xa = RNG.standard_normal((3, 6, 4)).astype(np.float32)
    xb = RNG.standard_normal((3, 5, 3)).astype(np.float32)
    fm = check(model, [xa, xb], tmp_path)
    assert fm.input_names == ["left_in", "right_in"]
    assert_close(fm.predict({"right_in": xb, "left_in": xa}), keras_predict(model, [xa, xb]), **TOL)
    text = fm.summary(print_fn=None)
    assert "Connected to" in text and "lstm_a, lstm_b" in text
    assert f"Total params: {model.count_params():,}" in text


def test_weights_h5_plus_config_graph(tmp_path):
    """Keras 3 save_weights + the architecture JSON, for a graph."""
    model = two_input_model()
    model.save_weights(str(tmp_path / "m.weights.h5"))
    (tmp_path / "m.json").write_text(model.to_json())
    fm = fastrnn.formats.keras.load_weights_h5(tmp_path / "m.weights.h5", tmp_path / "m.json")
    xa = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    xb = RNG.standard_normal((2, 5, 3)).astype(np.float32)
    assert_close(fm.predict([xa, xb]), keras_predict(model, [xa, xb]), **TOL)


def test_cnn_lstm_classifier_and_classify(tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(12, 6), L.Conv1D(8, 3, padding="same", activation="relu"),
        L.MaxPooling1D(2), L.LSTM(5), L.Dense(3, activation="softmax")]))
    ids = RNG.integers(1, 12, (4, 10))
    fm = check(model, ids, tmp_path)
    results = list(fm.classify(list(ids)))
    probs = keras_predict(model, ids)
    assert [r.index for r in results] == list(probs.argmax(axis=1))
    assert_close(np.stack([r.probabilities for r in results]), probs, **TOL)


@keras.saving.register_keras_serializable(package="fastrnn_tests")
class WeightedAverage(L.Layer):
    """Attention pooling over time: softmax(x w) weights, masked steps excluded."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 1), name="w")

    def call(self, x, mask=None):
        s = ops.squeeze(ops.matmul(x, self.w), -1)
        if mask is not None:
            s = ops.where(mask, s, -1e9)
        a = ops.softmax(s, axis=1)
        return ops.sum(x * ops.expand_dims(a, -1), axis=1)

    def compute_mask(self, x, mask=None):
        return None


def weighted_average_factory(config, weights):
    (w,) = weights

    def fn(x, mask=None):
        s = x @ w[:, 0]
        if mask is not None:
            s = np.where(mask, s, -1e9)
        a = np.exp(s - s.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        return (x * a[..., None]).sum(axis=1)
    return fn


def char_model_with_custom_layer():
    """As the issue's char model: Concatenate([embedding, lstm_1, lstm_2]) -> custom attention."""
    inp = keras.Input((None,), dtype="int32", name="chars")
    e = L.Embedding(10, 4, mask_zero=True, name="emb")(inp)
    h1 = L.LSTM(5, return_sequences=True, name="lstm_1")(e)
    h2 = L.LSTM(5, return_sequences=True, name="lstm_2")(h1)
    h = L.Concatenate(name="cat")([e, h1, h2])
    h = WeightedAverage(name="attn")(h)
    out = L.Dense(10, activation="softmax", name="out")(h)
    return randomize(keras.Model(inp, out))


def test_custom_layer_through_custom_layers_and_native_round_trip(tmp_path):
    model = char_model_with_custom_layer()
    with pytest.raises(fastrnn.UnsupportedLayerError) as err:
        model.save(str(tmp_path / "c.keras"))
        fastrnn.load(tmp_path / "c.keras")
    assert "WeightedAverage" in str(err.value) and "custom_layers" in str(err.value)
    custom = {"WeightedAverage": weighted_average_factory}
    fm = check(model, IDS, tmp_path, custom_layers=custom)
    assert type(fm.graph.node_by_name["attn"].layer).__name__ == "CustomLayer"
    fastrnn.save(fm, tmp_path / "c.safetensors")
    again = fastrnn.load(tmp_path / "c.safetensors", custom_layers=custom)
    np.testing.assert_array_equal(again.predict(IDS), fm.predict(IDS))
    with pytest.raises(fastrnn.ModelFormatError) as err:
        fastrnn.load(tmp_path / "c.safetensors")
    assert "WeightedAverage" in str(err.value) and "custom_layers" in str(err.value)


@keras.saving.register_keras_serializable(package="fastrnn_tests")
def scaled_tanh(x):
    return 1.7 * ops.tanh(0.66 * x)


def test_dense_with_user_defined_activation(tmp_path):
    model = randomize(keras.Sequential([keras.Input((6, 4)), L.GRU(5, return_sequences=True),
                                        L.Dense(3, activation=scaled_tanh)]))
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    custom = {"scaled_tanh": lambda name: (lambda a: 1.7 * np.tanh(0.66 * a))}
    fm = check(model, x, tmp_path, custom_layers=custom)
    kinds = [type(n.layer).__name__ for n in fm.nodes]
    assert kinds == ["Recurrent", "Dense", "Activation"] and fm.nodes[2].layer.custom
    fastrnn.save(fm, tmp_path / "a.safetensors")
    assert_close(fastrnn.load(tmp_path / "a.safetensors", custom_layers=custom).predict(x), fm.predict(x))
    with pytest.raises(fastrnn.ModelFormatError, match="scaled_tanh"):
        fastrnn.load(tmp_path / "a.safetensors")
    with pytest.raises(fastrnn.UnsupportedLayerError, match="scaled_tanh.*custom_layers|custom_layers.*scaled_tanh"):
        fastrnn.load(tmp_path / "m.keras")


def test_bidirectional_lstm_global_max_pooling_with_mask(tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(10, 4, mask_zero=True),
        L.Bidirectional(L.LSTM(4, return_sequences=True)), L.GlobalMaxPooling1D(),
        L.Dense(2, activation="softmax")]))
    fm = check(model, IDS, tmp_path)
    # Keras's GlobalMaxPooling1D ignores the mask: the zeros Bidirectional writes at padded steps
    # take part in the maximum, so a padded row differs from its unpadded twin, in both
    assert np.abs(fm.predict(IDS[1:2, :4]) - fm.predict(IDS[1:2])).max() > 1e-4


def test_global_average_pooling_uses_the_mask(tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(10, 4, mask_zero=True), L.GRU(4, return_sequences=True),
        L.GlobalAveragePooling1D(), L.Dense(2)]))
    fm = check(model, IDS, tmp_path)
    assert_close(fm.predict(IDS[1:2, :4]), fm.predict(IDS[1:2]), atol=1e-6, rtol=1e-6)


def encoder_decoder():
    enc_in = keras.Input((None,), dtype="int32", name="source")
    dec_in = keras.Input((None,), dtype="int32", name="target")
    e = L.Embedding(11, 6, mask_zero=True, name="enc_emb")(enc_in)
    enc_seq, h, c = L.LSTM(5, return_sequences=True, return_state=True, name="encoder")(e)
    d = L.Embedding(11, 6, name="dec_emb")(dec_in)
    dec_seq = L.LSTM(5, return_sequences=True, name="decoder")(d, initial_state=[h, c])
    ctx = L.Attention(name="attention")([dec_seq, enc_seq])
    h = L.Concatenate(name="cat")([dec_seq, ctx])
    out = L.TimeDistributed(L.Dense(11, activation="softmax"), name="probs")(h)
    return randomize(keras.Model([enc_in, dec_in], out))


def test_encoder_decoder_with_attention(tmp_path):
    model = encoder_decoder()
    target = RNG.integers(1, 11, (3, 5))
    fm = check(model, [IDS, target], tmp_path)
    dec = fm.graph.node_by_name["decoder"]
    assert dec.inputs[1:] == [("encoder", 1), ("encoder", 2)]
    assert fm.graph.node_by_name["encoder"].layer.return_state


def test_causal_self_attention_and_additive_attention(tmp_path):
    inp = keras.Input((6, 4))
    q = L.Dense(4, name="q")(inp)
    a = L.Attention(use_scale=True, score_mode="concat", name="self")([q, inp], use_causal_mask=True)
    b = L.AdditiveAttention(name="bahdanau")([q, inp, a])
    model = randomize(keras.Model(inp, L.Add()([a, b])))
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    fm = check(model, x, tmp_path)
    assert fm.graph.node_by_name["self"].layer.use_causal_mask


def test_nested_sequential_inside_functional(tmp_path):
    inner = keras.Sequential([keras.Input((6, 4)), L.LSTM(5, return_sequences=True, name="lstm"),
                              L.Dense(3, name="dense")], name="inner")
    inp = keras.Input((6, 4), name="x")
    h = inner(inp)
    out = L.GlobalAveragePooling1D(name="pool")(h)
    model = randomize(keras.Model(inp, out))
    x = RNG.standard_normal((3, 6, 4)).astype(np.float32)
    fm = check(model, x, tmp_path)
    assert [n.name for n in fm.nodes] == ["inner/lstm", "inner/dense", "pool"]


def test_nested_functional_called_twice_shares_its_layers(tmp_path):
    i = keras.Input((6, 4))
    encoder = keras.Model(i, L.Dense(3, name="proj")(L.GRU(4, name="gru")(i)), name="encoder")
    a = keras.Input((6, 4), name="a")
    b = keras.Input((6, 4), name="b")
    out = L.Dot(axes=-1, normalize=True, name="cosine")([encoder(a), encoder(b)])
    model = randomize(keras.Model([a, b], out))
    xa, xb = (RNG.standard_normal((3, 6, 4)).astype(np.float32) for _ in range(2))
    fm = check(model, [xa, xb], tmp_path)
    assert len(fm.nodes) == 5 and len(fm.layers) == 3  # two calls of gru and proj, one Dot


def test_shared_layer(tmp_path):
    inp_a = keras.Input((None,), dtype="int32", name="a")
    inp_b = keras.Input((None,), dtype="int32", name="b")
    emb = L.Embedding(10, 4, name="emb")
    rnn = L.GRU(5, name="shared_gru")
    diff = L.Subtract(name="diff")([rnn(emb(inp_a)), rnn(emb(inp_b))])
    model = randomize(keras.Model([inp_a, inp_b], L.Dense(2, name="out")(diff)))
    ids_b = RNG.integers(1, 10, IDS.shape)
    fm = check(model, [IDS, ids_b], tmp_path)
    gru_nodes = [n for n in fm.nodes if n.layer.name == "shared_gru"]
    assert len(gru_nodes) == 2 and gru_nodes[0].layer is gru_nodes[1].layer
    text = fm.summary(print_fn=None)
    assert f"Total params: {model.count_params():,}" in text


def test_multi_output_list_and_dict(tmp_path):
    inp = keras.Input((6, 4), name="x")
    seq, h = L.GRU(5, return_sequences=True, return_state=True, name="gru")(inp)
    tags = L.TimeDistributed(L.Dense(3, activation="softmax"), name="tags")(seq)
    cls = L.Dense(2, name="cls")(h)
    model = randomize(keras.Model(inp, [tags, cls]))
    x = RNG.standard_normal((3, 6, 4)).astype(np.float32)
    fm = check(model, x, tmp_path)
    expected = keras_predict(model, x)
    out = fm.predict({"x": x})
    assert isinstance(out, dict) and list(out) == fm.output_names == ["tags", "cls"]
    assert_close(out["tags"], expected[0], **TOL)
    assert_close(out["cls"], expected[1], **TOL)


def test_masking_through_merges_and_time_distributed(tmp_path):
    inp = keras.Input((None,), dtype="int32")
    e = L.Embedding(10, 4, mask_zero=True)(inp)
    a = L.LSTM(4, return_sequences=True)(e)
    b = L.TimeDistributed(L.Dense(4))(e)
    h = L.Add()([a, b])
    h = L.LayerNormalization()(h)
    out = L.GRU(3)(h)
    model = randomize(keras.Model(inp, out))
    fm = check(model, IDS, tmp_path)
    assert_close(fm.predict(IDS[1:2, :4]), fm.predict(IDS[1:2]), atol=1e-5, rtol=1e-5)


def test_lambda_is_refused_with_a_pointer_to_custom_layers(tmp_path):
    model = keras.Sequential([keras.Input((6, 4)), L.Lambda(lambda t: t * 2, name="double"), L.LSTM(3)])
    config = json.loads(model.to_json())
    with pytest.raises(fastrnn.UnsupportedLayerError) as err:
        fastrnn.formats.keras._build(config, fastrnn.formats.keras._LiveWeights(model, "m"), "3", "t", "m", {})
    assert "Lambda" in str(err.value) and "double" in str(err.value) and "custom_layers" in str(err.value)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="Lambda"):
        fastrnn.from_keras(model)
    # with a factory the Lambda runs as the user says
    fm = fastrnn.from_keras(randomize(model), custom_layers={"Lambda": lambda cfg, w: (lambda t, mask=None: 2 * t)})
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    assert_close(fm.predict(x), keras_predict(model, x), **TOL)


def test_unknown_class_without_factory_names_it():
    model = char_model_with_custom_layer()
    with pytest.raises(fastrnn.UnsupportedLayerError) as err:
        fastrnn.from_keras(model)
    assert "WeightedAverage" in str(err.value) and "custom_layers" in str(err.value)


# -- legacy Keras 2 .h5 graphs, written with h5py in the Keras 2 layout --------------------------------
def _keras2_node(node):
    """A Keras 3 inbound node -> the Keras 2 form [[layer, node index, tensor index, kwargs], ...]."""
    refs = []

    def walk(obj):
        if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
            refs.append(list(obj["config"]["keras_history"]))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
    walk(node["args"])
    kwargs = {}
    for k, v in (node.get("kwargs") or {}).items():
        if k == "initial_state":
            kwargs[k] = [list(t["config"]["keras_history"]) for t in v]
    return [ref + [kwargs] for ref in refs]


def _keras2_config(obj):
    if isinstance(obj, list):
        return [_keras2_config(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k in ("module", "registered_name", "build_config", "optional"):
            continue
        if k == "dtype" and isinstance(v, dict):
            v = v["config"]["name"]
        if k == "batch_shape":
            k = "batch_input_shape"
        if k == "inbound_nodes":
            v = [_keras2_node(n) for n in v]
        out[k] = _keras2_config(v)
    return out


def write_keras2_h5(model, path, edit=None):
    config = _keras2_config(json.loads(model.to_json()))
    if edit is not None:
        edit(config)
    config["class_name"] = "Model"
    body = config["config"]
    body["layers"] = [lc for lc in body["layers"] if lc["class_name"] not in ("NotEqual", "Any")]
    body["input_layers"] = [list(r) for r in body["input_layers"]] if isinstance(body["input_layers"][0], list) \
        else [body["input_layers"]]
    body["output_layers"] = [list(r) for r in body["output_layers"]] if isinstance(body["output_layers"][0], list) \
        else [body["output_layers"]]
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        group = f.create_group("model_weights")
        layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
        group.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in layers])
        for layer in layers:
            g = group.create_group(layer.name)
            names = []
            for w in layer.weights:
                name = f"{layer.name}/{w.path.split('/', 1)[-1]}:0"
                g.create_dataset(name, data=ops.convert_to_numpy(w))
                names.append(name.encode("utf8"))
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([], dtype="S1")
    return config


def test_keras2_h5_two_input_graph(tmp_path):
    model = two_input_model()
    config = write_keras2_h5(model, tmp_path / "old.h5")
    join = next(lc for lc in config["config"]["layers"] if lc["name"] == "join")
    assert join["inbound_nodes"] == [[["lstm_a", 0, 0, {}], ["lstm_b", 0, 0, {}]]]
    xa = RNG.standard_normal((3, 6, 4)).astype(np.float32)
    xb = RNG.standard_normal((3, 5, 3)).astype(np.float32)
    fm = fastrnn.load(tmp_path / "old.h5")
    assert fm.metadata["keras_version"] == "2.15.0" and fm.input_names == ["left_in", "right_in"]
    assert_close(fm.predict([xa, xb]), keras_predict(model, [xa, xb]), **TOL)


def test_keras2_h5_encoder_decoder_with_initial_state_kwargs(tmp_path):
    model = encoder_decoder()
    config = write_keras2_h5(model, tmp_path / "s2s.h5")
    dec = next(lc for lc in config["config"]["layers"] if lc["name"] == "decoder")
    assert dec["inbound_nodes"][0][0][3] == {"initial_state": [["encoder", 0, 1], ["encoder", 0, 2]]}
    target = RNG.integers(1, 11, (3, 5))
    # a Keras 2 GRU would default to reset_after=False: only LSTMs here, whose math is the same
    fm = fastrnn.load(tmp_path / "s2s.h5")
    assert_close(fm.predict([IDS, target]), keras_predict(model, [IDS, target]), **TOL)


def test_keras2_h5_nested_sequential(tmp_path):
    """A nested model is one weights group listing its layers' weights (lstm/lstm_cell/kernel:0 ...)."""
    inner = keras.Sequential([keras.Input((6, 4)), L.LSTM(5, return_sequences=True, name="lstm"),
                              L.Dense(3, name="dense")], name="inner")
    inp = keras.Input((6, 4), name="x")
    model = randomize(keras.Model(inp, L.GlobalAveragePooling1D(name="pool")(inner(inp))))
    write_keras2_h5(model, tmp_path / "nested.h5")
    x = RNG.standard_normal((3, 6, 4)).astype(np.float32)
    fm = fastrnn.load(tmp_path / "nested.h5")
    assert [n.name for n in fm.nodes] == ["inner/lstm", "inner/dense", "pool"]
    assert_close(fm.predict(x), keras_predict(model, x), **TOL)


def test_keras2_lambda_activation_through_custom_layers(tmp_path):
    """Keras 2 stores Dense(activation=lambda x: ...) as "<lambda>": the factory under that key."""
    inp = keras.Input((6, 4), name="x")
    h = L.GRU(4, return_sequences=True, name="gru", reset_after=False)(inp)
    out = L.Dense(3, activation="tanh", name="head")(h)
    model = randomize(keras.Model(inp, out))

    def to_lambda(config):
        head = next(lc for lc in config["config"]["layers"] if lc["name"] == "head")
        head["config"]["activation"] = "<lambda>"
    write_keras2_h5(model, tmp_path / "lam.h5", edit=to_lambda)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="<lambda>"):
        fastrnn.load(tmp_path / "lam.h5")
    fm = fastrnn.load(tmp_path / "lam.h5", custom_layers={"<lambda>": lambda name: np.tanh})
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    assert_close(fm.predict(x), keras_predict(model, x), **TOL)
    fastrnn.save(fm, tmp_path / "lam.safetensors")
    with pytest.raises(fastrnn.ModelFormatError, match="<lambda>"):
        fastrnn.load(tmp_path / "lam.safetensors")


# -- the command line --------------------------------------------------------------------------------
CUSTOM_MODULE = '''
import numpy as np


def WeightedAverage(config, weights):  # a function named like the class
    (w,) = weights

    def fn(x, mask=None):
        s = x @ w[:, 0]
        if mask is not None:
            s = np.where(mask, s, -1e9)
        a = np.exp(s - s.max(axis=1, keepdims=True))
        return (x * (a / a.sum(axis=1, keepdims=True))[..., None]).sum(axis=1)
    return fn
'''


def test_cli_convert_with_custom_layers_module(tmp_path):
    import subprocess
    import sys

    model = char_model_with_custom_layer()
    model.save(str(tmp_path / "c.keras"))
    (tmp_path / "mine.py").write_text(CUSTOM_MODULE)
    (tmp_path / "table.py").write_text(CUSTOM_MODULE + "\nCUSTOM_LAYERS = {'WeightedAverage': WeightedAverage}\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fastrnn.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)

    out = cli("convert", "c.keras", "c.safetensors")
    assert out.returncode == 2 and "WeightedAverage" in out.stderr and "custom_layers" in out.stderr
    out = cli("convert", "c.keras", "c.safetensors", "--custom-layers", "mine.py")
    assert out.returncode == 0, out.stderr
    fm = fastrnn.load(tmp_path / "c.safetensors", custom_layers={"WeightedAverage": weighted_average_factory})
    assert_close(fm.predict(IDS), keras_predict(model, IDS), **TOL)
    out = cli("summary", "c.keras", "--custom-layers", "table.py")
    assert out.returncode == 0 and "attn (WeightedAverage)" in out.stdout, out.stderr


def test_from_keras_refuses_subclassed_models_and_other_objects():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.rnn = L.GRU(3)

        def call(self, x):
            return self.rnn(x)

    net = Net()
    net(np.zeros((1, 6, 4), np.float32))
    with pytest.raises(fastrnn.UnsupportedLayerError, match="Sequential and Functional"):
        fastrnn.from_keras(net)
    with pytest.raises(TypeError, match="Keras"):
        fastrnn.from_keras(object())
