"""fastrnn.formats.keras against real Keras 3 models (torch backend), on every backend.

Each model gets random weights (non-zero biases, so a misplaced bias or gate shows), is saved
as a Keras 3 ``.keras`` archive and as a legacy ``.h5`` file, loaded back with fastrnn (which
never imports Keras) and compared with Keras's own output at the framework tolerance. Legacy
tf.keras 2 files (names ending ':0', byte-string attributes, ``batch_input_shape``, the old
hard_sigmoid) are synthesised from Keras 3 ones with h5py, since TensorFlow is not installed.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import json
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

import fastrnn
from fastrnn.formats.keras import load, load_weights_h5
from conftest import BACKENDS, FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require

keras = require("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - keras was imported earlier with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)
L = keras.layers


# -- helpers -------------------------------------------------------------------------------------
def randomize(model, seed=0, scale=0.5):
    """Random weights, biases included, so that a wrong bias split or gate order shows."""
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(w.shape) * scale).astype(np.float32) for w in model.get_weights()])
    return model


def keras_out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def check_model(model, x, tmp_path, formats=("keras", "h5"), name="m"):
    """Save ``model`` in each format, load it with fastrnn, compare outputs on every backend
    and the parameter count. Returns the loaded models."""
    expected = keras_out(model, x)
    loaded = []
    for fmt in formats:
        path = tmp_path / f"{name}.{fmt}"
        model.save(str(path))
        fm = fastrnn.load(path)
        assert fm.count_params() == model.count_params(), fmt
        assert fm.metadata["source"] == "keras"
        for backend in BACKENDS:
            assert_close(fm.predict(x, backend=backend), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL,
                         f"{fmt} / {backend}")
        loaded.append(fm)
    return loaded


def seq(input_shape, *layers, dtype="float32"):
    return randomize(keras.Sequential([keras.Input(input_shape, dtype=dtype), *layers]))


RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 6, 4)).astype(np.float32)  # (B, T, F)
# right-padded token ids: lengths 7, 4, 1 and 0 (id 0 = padding)
IDS = np.array([[3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 9, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0], [0] * 7])


def padded_floats(lengths=(6, 3, 1), T=6, F=4, pad=0.0):
    x = RNG.standard_normal((len(lengths), T, F)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[b, n:] = pad
    return x


# -- the models of the lecture notes --------------------------------------------------------------
def test_simple_rnn_has_42_params_and_keras_summary(tmp_path):
    model = seq((2, 10), L.SimpleRNN(3, name="simple_rnn"))  # named: Keras numbers unnamed layers per process
    x = RNG.standard_normal((4, 2, 10)).astype(np.float32)
    for fm in check_model(model, x, tmp_path):
        assert fm.count_params() == 42
        assert fm.input_shape == (2, 10)
        assert [layer.name for layer in fm.layers] == ["simple_rnn"]
        text = fm.summary(print_fn=None)
        assert "simple_rnn (SimpleRNN)" in text and "(None, 3)" in text
        assert "42" in text and "Total params: 42" in text


CELLS = {"SimpleRNN": L.SimpleRNN, "LSTM": L.LSTM, "GRU": L.GRU}

MODELS = {
    "return_sequences": lambda: seq((6, 4), L.SimpleRNN(5, return_sequences=True)),
    "two_stacked_simple_rnn": lambda: seq((6, 4), L.SimpleRNN(5, return_sequences=True), L.SimpleRNN(3)),
    "four_stacked_bidirectional": lambda: seq(
        (6, 4), *[L.Bidirectional(L.SimpleRNN(3, return_sequences=True)) for _ in range(4)]),
    "lstm": lambda: seq((6, 4), L.LSTM(5)),
    "lstm_sequences_dense": lambda: seq((6, 4), L.LSTM(5, return_sequences=True), L.Dense(2)),
    "gru_reset_after": lambda: seq((6, 4), L.GRU(5, reset_after=True, return_sequences=True)),
    "gru_reset_before": lambda: seq((6, 4), L.GRU(5, reset_after=False, return_sequences=True)),
    "relu_simple_rnn": lambda: seq((6, 4), L.SimpleRNN(5, activation="relu", return_sequences=True)),
    "lstm_hard_sigmoid": lambda: seq((6, 4), L.LSTM(5, recurrent_activation="hard_sigmoid",
                                                     return_sequences=True)),
    "gru_hard_sigmoid_relu": lambda: seq((6, 4), L.GRU(5, recurrent_activation="hard_sigmoid",
                                                       activation="relu")),
    "lstm_softsign_linear": lambda: seq((6, 4), L.LSTM(4, activation="softsign",
                                                        recurrent_activation="linear")),
    "no_bias_simple_rnn": lambda: seq((6, 4), L.SimpleRNN(5, use_bias=False), L.Dense(2, use_bias=False)),
    "no_bias_lstm": lambda: seq((6, 4), L.LSTM(5, use_bias=False, return_sequences=True)),
    "no_bias_gru": lambda: seq((6, 4), L.GRU(5, use_bias=False), L.Dense(3)),
    "no_bias_gru_reset_before": lambda: seq((6, 4), L.GRU(5, use_bias=False, reset_after=False)),
    "no_bias_bidirectional": lambda: seq((6, 4), L.Bidirectional(L.GRU(3, use_bias=False))),
    "time_distributed_softmax": lambda: seq(
        (6, 4), L.LSTM(5, return_sequences=True), L.TimeDistributed(L.Dense(3)), L.Activation("softmax")),
    "dropouts_are_no_ops": lambda: seq(
        (6, 4), L.Dropout(0.5), L.GRU(5, return_sequences=True), L.SpatialDropout1D(0.5),
        L.GaussianNoise(1.0), L.LSTM(3), L.Dropout(0.5), L.Dense(4), L.Activation("sigmoid")),
    "dense_activations": lambda: seq(
        (6, 4), L.Dense(5, activation="tanh"), L.SimpleRNN(4, return_sequences=True), L.Dense(3, activation="relu"),
        L.Dense(3), L.Activation("linear"), L.Dense(2, activation="softmax")),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=list(MODELS))
def test_model_matches_keras(tmp_path, make):
    check_model(make(), X, tmp_path)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("return_sequences", [False, True])
def test_go_backwards(tmp_path, cell, return_sequences):
    """Keras go_backwards: output[t] is the t-th step of the reversed scan, not flipped back."""
    model = seq((6, 4), CELLS[cell](5, go_backwards=True, return_sequences=return_sequences))
    (fm,) = check_model(model, X, tmp_path, formats=("keras",))
    assert fm.layers[0].go_backwards


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_padded_batch(tmp_path, cell, go_backwards, return_sequences):
    """Embedding(mask_zero) on right-padded rows of lengths 7, 4, 1, 0: masked steps keep the
    state, a returned sequence repeats the last output (forward) or starts with zeros (go_backwards)."""
    model = seq((None,), L.Embedding(10, 4, mask_zero=True),
                CELLS[cell](5, go_backwards=go_backwards, return_sequences=return_sequences), dtype="int32")
    fm, _ = check_model(model, IDS, tmp_path)
    assert fm.takes_tokens and fm.layers[0].mask_zero


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_merge_modes_with_mask(tmp_path, merge_mode, return_sequences):
    model = seq((None,), L.Embedding(10, 4, mask_zero=True),
                L.Bidirectional(L.LSTM(3, return_sequences=return_sequences), merge_mode=merge_mode),
                L.Dense(2), dtype="int32")
    fm, _ = check_model(model, IDS, tmp_path)
    assert fm.layers[1].bidirectional and fm.layers[1].merge_mode == merge_mode


def lecture_classifier(functional):
    """Embedding(mask_zero) -> Bidirectional(LSTM) -> GRU -> Dense(softmax)."""
    layers = [L.Embedding(12, 6, mask_zero=True, name="embed"),
              L.Bidirectional(L.LSTM(4, return_sequences=True), name="bilstm"), L.GRU(5, name="gru"),
              L.Dense(3, activation="softmax", name="probs")]
    if not functional:
        return seq((None,), *layers, dtype="int32")
    inp = x = keras.Input((None,), dtype="int32")
    for layer in layers:
        x = layer(x)
    return randomize(keras.Model(inp, x))


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_embedding_bidirectional_lstm_gru_softmax(tmp_path, functional):
    model = lecture_classifier(functional)
    for fm in check_model(model, IDS, tmp_path):
        assert [layer.name for layer in fm.layers] == ["embed", "bilstm", "gru", "probs"]
        assert fm.metadata["keras_model_class"] == ("Functional" if functional else "Sequential")
        assert fm.input_shape == (None,)
        assert_close(fm.predict(IDS).sum(axis=1), np.ones(len(IDS)), FRAMEWORK_ATOL, FRAMEWORK_RTOL, "softmax")


def test_masking_layer(tmp_path):
    x = padded_floats()
    model = seq((6, 4), L.Masking(0.0), L.LSTM(5, return_sequences=True), L.GRU(3, return_sequences=True),
                L.Dense(2))
    fm, _ = check_model(model, x, tmp_path)
    assert type(fm.layers[0]).__name__ == "Masking"
    assert [layer.masked_output for layer in fm.recurrent_layers] == ["hold", "hold"]


def test_masking_functional_and_zero_output_for_mask(tmp_path):
    """Keras 3 records a Functional model's mask as NotEqual/Any op nodes off the chain; a layer
    with zero_output_for_mask=True returns zeros (not the held output) at masked steps."""
    x = padded_floats()
    inp = keras.Input((6, 4))
    h = L.Masking()(inp)
    h = L.LSTM(3, return_sequences=True, zero_output_for_mask=True)(h)
    out = L.GRU(2, return_sequences=True)(h)
    model = randomize(keras.Model(inp, out))
    fm, _ = check_model(model, x, tmp_path)
    assert [layer.masked_output for layer in fm.recurrent_layers] == ["zero", "hold"]


def test_masking_nonzero_value_go_backwards(tmp_path):
    x = padded_floats(pad=-1.0)
    model = seq((6, 4), L.Masking(-1.0), L.GRU(5, go_backwards=True, return_sequences=True),
                L.Bidirectional(L.SimpleRNN(3)))
    check_model(model, x, tmp_path)


def test_functional_chain_with_time_distributed_and_activation(tmp_path):
    inp = keras.Input((None,), dtype="int32")
    x = L.Embedding(10, 4, mask_zero=True)(inp)
    x = L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False), merge_mode="sum")(x)
    x = L.TimeDistributed(L.Dense(4))(x)
    x = L.Activation("tanh")(x)
    x = L.Dropout(0.2)(x)
    x = L.SimpleRNN(5, go_backwards=True)(x)
    out = L.Dense(3, activation="softmax")(x)
    model = randomize(keras.Model(inp, out))
    for fm in check_model(model, IDS, tmp_path):
        # the graph keeps every Keras layer; the execution plan drops the Dropout and folds the
        # Activation into the Dense before it
        assert [type(layer).__name__ for layer in fm.layers] == ["Embedding", "Recurrent", "Dense", "Activation",
                                                                 "Identity", "Recurrent", "Dense"]
        planned = [n.layer for n in fm.plan().graph.nodes]
        assert [type(layer).__name__ for layer in planned] == ["Embedding", "Recurrent", "Dense", "Recurrent",
                                                               "Dense"]
        assert planned[2].activation == "tanh"


def test_bidirectional_with_explicit_backward_layer(tmp_path):
    bi = L.Bidirectional(L.GRU(3, return_sequences=True),
                         backward_layer=L.GRU(3, return_sequences=True, go_backwards=True))
    check_model(seq((6, 4), bi), X, tmp_path)


def test_keras_directory_layout(tmp_path):
    """An unzipped .keras archive (config.json + model.weights.h5 in a folder) loads too."""
    model = lecture_classifier(functional=False)
    model.save(str(tmp_path / "m.keras"))
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        zf.extractall(tmp_path / "unzipped")
    fm = load(tmp_path / "unzipped")
    assert_close(fm.predict(IDS), keras_out(model, IDS), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


# -- weights-only files ----------------------------------------------------------------------------
def test_load_weights_h5_with_config_dict_or_json_file(tmp_path):
    model = lecture_classifier(functional=True)
    model.save_weights(str(tmp_path / "m.weights.h5"))
    config = json.loads(model.to_json())
    (tmp_path / "config.json").write_text(json.dumps(config))
    expected = keras_out(model, IDS)
    for cfg in (config, str(tmp_path / "config.json"), tmp_path / "config.json"):
        fm = load_weights_h5(tmp_path / "m.weights.h5", cfg)
        assert fm.count_params() == model.count_params()
        assert fm.metadata["keras_format"] == "weights.h5"
        assert_close(fm.predict(IDS), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_weights_only_file_through_load_points_to_load_weights_h5(tmp_path):
    model = seq((6, 4), L.LSTM(3))
    model.save_weights(str(tmp_path / "m.weights.h5"))
    with pytest.raises(fastrnn.ModelFormatError, match="load_weights_h5") as err:
        fastrnn.load(tmp_path / "m.weights.h5")
    assert "m.weights.h5" in str(err.value)


# -- legacy tf.keras 2 files, synthesised ----------------------------------------------------------
def _to_keras2_config(obj):
    """A Keras 3 layer/model config in the tf.keras 2 spelling."""
    if isinstance(obj, list):
        return [_to_keras2_config(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k in ("module", "registered_name", "build_config", "shared_object_id", "optional"):
            continue
        if k == "dtype" and isinstance(v, dict):
            v = v["config"]["name"]
        if k == "batch_shape":
            k = "batch_input_shape"
        if k == "backward_layer":  # tf.keras derives it from the forward layer
            continue
        if k == "inbound_nodes":
            v = [[[a["config"]["keras_history"][0], 0, 0, {}] for a in node["args"]
                  if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"] for node in v]
        out[k] = _to_keras2_config(v)
    return out


def write_tf_keras2_h5(model, path, keras_version="2.15.0", weights_only=False):
    """Write ``model`` the way tf.keras 2 ``model.save("x.h5")`` did: byte-string attributes,
    weight names ending in ':0', layer_names on model_weights, a tf.keras 2 model_config."""
    config = _to_keras2_config(json.loads(model.to_json()))
    if config["class_name"] == "Functional":
        config["class_name"] = "Model"
        config["config"]["layers"] = [lc for lc in config["config"]["layers"] if lc["class_name"] != "NotEqual"]
        config["config"]["input_layers"] = [config["config"]["input_layers"]]
        config["config"]["output_layers"] = [config["config"]["output_layers"]]
    with h5py.File(path, "w") as f:
        if weights_only:
            group = f
        else:
            f.attrs["model_config"] = json.dumps(config).encode("utf8")
            f.attrs["keras_version"] = keras_version.encode("utf8")
            f.attrs["backend"] = b"tensorflow"
            group = f.create_group("model_weights")
        group.attrs["keras_version"] = keras_version.encode("utf8")
        layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
        group.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in layers])
        for layer in layers:
            g = group.create_group(layer.name)
            names = []
            for w in layer.weights:
                name = f"{layer.name}/{w.path.split('/', 1)[-1]}:0"  # e.g. gru/gru_cell/kernel:0
                g.create_dataset(name, data=keras.ops.convert_to_numpy(w))
                names.append(name.encode("utf8"))
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([], dtype="S1")
    return config


@keras.saving.register_keras_serializable(package="fastrnn_tests")
def legacy_hard_sigmoid(x):
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "model"])
def test_tf_keras2_h5_with_legacy_hard_sigmoid(tmp_path, functional):
    """tf.keras 2 file: hard_sigmoid means clip(0.2x + 0.5) there; GRU reset_after=False."""
    def build(rec_act):
        layers = [L.Embedding(10, 4, mask_zero=True),
                  L.Bidirectional(L.LSTM(3, recurrent_activation=rec_act, return_sequences=True)),
                  L.GRU(4, reset_after=False, recurrent_activation=rec_act), L.Dense(2)]
        if not functional:
            return seq((None,), *layers, dtype="int32")
        inp = x = keras.Input((None,), dtype="int32")
        for layer in layers:
            x = layer(x)
        return randomize(keras.Model(inp, x))

    model = build("hard_sigmoid")
    config = write_tf_keras2_h5(model, tmp_path / "old.h5")
    assert "batch_input_shape" in json.dumps(config) and "backward_layer" not in json.dumps(config)
    twin = build(legacy_hard_sigmoid)  # what tf.keras 2 computed
    twin.set_weights(model.get_weights())
    fm = fastrnn.load(tmp_path / "old.h5")
    assert fm.metadata["keras_version"] == "2.15.0"
    assert fm.count_params() == model.count_params()
    for backend in BACKENDS:
        assert_close(fm.predict(IDS, backend=backend), keras_out(twin, IDS), FRAMEWORK_ATOL, FRAMEWORK_RTOL,
                     backend)
    # the same file read as Keras 3 would use the Keras 3 hard_sigmoid: the version matters
    assert np.abs(keras_out(twin, IDS) - keras_out(model, IDS)).max() > 1e-3

    # legacy weights-only file + the tf.keras 2 config
    write_tf_keras2_h5(model, tmp_path / "old_weights.h5", weights_only=True)
    config["keras_version"] = "2.15.0"
    fw = load_weights_h5(tmp_path / "old_weights.h5", config)
    assert_close(fw.predict(IDS), keras_out(twin, IDS), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


# -- round trip through the native format ----------------------------------------------------------
def test_native_round_trip(tmp_path):
    model = lecture_classifier(functional=True)
    model.save(str(tmp_path / "m.keras"))
    fm = fastrnn.load(tmp_path / "m.keras")
    fastrnn.save(fm, tmp_path / "m.safetensors")
    again = fastrnn.load(tmp_path / "m.safetensors")
    assert again.count_params() == fm.count_params() == model.count_params()
    assert again.metadata["source"] == "keras"
    assert [layer.name for layer in again.layers] == [layer.name for layer in fm.layers]
    for backend in BACKENDS:
        np.testing.assert_array_equal(again.predict(IDS, backend=backend), fm.predict(IDS, backend=backend))


def test_fastrnn_never_imports_keras(tmp_path):
    model = seq((6, 4), L.GRU(3))
    model.save(str(tmp_path / "m.keras"))
    code = ("import sys, numpy as np, fastrnn.formats.keras as k; "
            f"m = k.load({str(tmp_path / 'm.keras')!r}); m.predict(np.zeros((1, 6, 4), np.float32), backend='numpy'); "
            "bad = [n for n in ('keras', 'tensorflow', 'tf_keras') if n in sys.modules]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_names_of_the_single_module_stay_reachable():
    """formats/keras.py became a package (issue 27): every public name it had, and the private ones
    the tests use, are still fastrnn.formats.keras.<name>, the same objects as in their modules."""
    import fastrnn.formats.keras as k
    from fastrnn.formats.keras import build, config, files, layers, weights

    public = {"load": k, "load_weights_h5": k, "from_keras": k, "_build": build, "_LiveWeights": weights,
              "SUPPORTED_LAYERS": layers, "NO_OP_LAYERS": layers, "MERGE_OPS": layers, "KERAS1_MERGE_MODES": layers,
              "RECURRENT_CELLS": config, "CUDNN_LAYERS": config, "GATES": config, "MASK_OPS": config,
              "MODEL_CLASSES": config, "MAX_JSON_MEMBER_BYTES": files, "MAX_EXPANSION": files}
    for name, module in public.items():
        assert getattr(k, name) is getattr(module, name), name
    assert "LSTM" in k.SUPPORTED_LAYERS and k.RECURRENT_CELLS["GRU"] == "gru"


# -- errors ----------------------------------------------------------------------------------------
def test_unsupported_layer_names_layer_class_and_supported_list(tmp_path):
    model = seq((6, 4), L.UpSampling1D(2, name="my_up"), L.LSTM(3))
    model.save(str(tmp_path / "up.keras"))
    with pytest.raises(fastrnn.UnsupportedLayerError) as err:
        fastrnn.load(tmp_path / "up.keras")
    msg = str(err.value)
    assert "my_up" in msg and "UpSampling1D" in msg and "LSTM" in msg and "Bidirectional" in msg
    assert "up.keras" in msg and "custom_layers" in msg


@pytest.mark.parametrize("make,words", [
    (lambda: seq((6, 4), L.Bidirectional(L.LSTM(3), merge_mode=None)), ["merge_mode=None", "bidirectional"]),
    (lambda: seq((6, 4), L.LSTM(3, return_sequences=True), L.TimeDistributed(L.Reshape((3, 1)))),
     ["TimeDistributed(Reshape)"]),
    (lambda: seq((6, 4), L.ReLU(threshold=0.5), L.LSTM(3)), ["ReLU", "threshold"]),
    (lambda: seq((6, 4), L.SimpleRNN(3, activation="gelu")), ["gelu"]),
    (lambda: seq((6, 4), L.Bidirectional(L.LSTM(3, go_backwards=True),
                                         backward_layer=L.LSTM(3))), ["go_backwards"]),
    (lambda: seq((6, 4), L.Bidirectional(L.LSTM(3), backward_layer=L.LSTM(3, activation="relu",
                                                                           go_backwards=True))), ["differs"]),
], ids=["merge_none", "time_distributed_other", "relu_threshold", "gelu", "forward_goes_backwards",
        "different_backward_layer"])
def test_unsupported_options(tmp_path, make, words):
    make().save(str(tmp_path / "m.keras"))
    with pytest.raises(fastrnn.UnsupportedLayerError) as err:
        fastrnn.load(tmp_path / "m.keras")
    for w in words:
        assert w in str(err.value)


def test_branching_functional_model_is_a_graph(tmp_path):
    """Branches used to be refused (chains only); now they load as a graph."""
    inp = keras.Input((6, 4))
    a = L.LSTM(3, name="left")(inp)
    b = L.GRU(3, name="right")(inp)
    model = randomize(keras.Model(inp, L.Add(name="join")([a, b])))
    fm, _ = check_model(model, X, tmp_path, name="branch")
    assert not fm.is_chain()
    assert [n.name for n in fm.nodes] == ["left", "right", "join"]


def _rewrite_zip(src, dst, replace=None, drop=()):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in drop:
                continue
            data = zin.read(item.filename)
            zout.writestr(item, (replace or {}).get(item.filename, data))


def test_corrupt_keras_files(tmp_path):
    model = seq((6, 4), L.LSTM(3), L.Dense(2))
    good = tmp_path / "good.keras"
    model.save(str(good))
    raw = good.read_bytes()
    cases = {}
    cases["truncated.keras"] = raw[: len(raw) // 2]
    cases["garbage.keras"] = b"PK\x03\x04" + b"\x00" * 64
    cases["empty.keras"] = b""
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    _rewrite_zip(good, tmp_path / "no_weights.keras", drop=("model.weights.h5",))
    _rewrite_zip(good, tmp_path / "no_config.keras", drop=("config.json",))
    _rewrite_zip(good, tmp_path / "bad_json.keras", replace={"config.json": b"{not json"})
    _rewrite_zip(good, tmp_path / "bad_h5.keras", replace={"model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"\x00" * 100})
    cfg = json.loads(zipfile.ZipFile(good).read("config.json"))
    cfg["config"]["layers"][1]["config"]["units"] = 4  # weights no longer fit the config
    _rewrite_zip(good, tmp_path / "wrong_units.keras", replace={"config.json": json.dumps(cfg).encode()})
    del cfg["config"]["layers"][1]["config"]["units"]
    _rewrite_zip(good, tmp_path / "missing_key.keras", replace={"config.json": json.dumps(cfg).encode()})
    for name in list(cases) + ["no_weights.keras", "no_config.keras", "bad_json.keras", "bad_h5.keras",
                               "wrong_units.keras", "missing_key.keras"]:
        with pytest.raises(fastrnn.ModelFormatError) as err:
            fastrnn.load(tmp_path / name)
        assert name in str(err.value), str(err.value)


def test_corrupt_legacy_h5(tmp_path):
    model = seq((6, 4), L.GRU(3, name="gru"), L.Dense(2))
    model.save(str(tmp_path / "good.h5"))
    raw = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "not_hdf5.h5").write_bytes(b"hello world, not a model")
    with h5py.File(tmp_path / "good.h5", "r") as src, h5py.File(tmp_path / "missing_layer.h5", "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        src.copy("model_weights", dst)
        del dst["model_weights/gru"]
    for name in ("truncated.h5", "not_hdf5.h5", "missing_layer.h5"):
        with pytest.raises(fastrnn.ModelFormatError) as err:
            fastrnn.load(tmp_path / name)
        assert name in str(err.value), str(err.value)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nowhere.keras")
