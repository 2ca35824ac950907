"""Keras 1 / Keras 2 weights-only files (``save_weights("weights.h5")`` + ``model.to_json()``) and
CuDNNLSTM / CuDNNGRU weights (issue 13).

The files are written here with h5py in the legacy layout Keras 1 and 2 wrote (root attributes
``layer_names``, ``backend``, ``keras_version``; one group per layer listing its datasets in
``weight_names``), and the architectures as the JSON Keras 1.2 / 2.x ``to_json()`` wrote (class
names, config keys, ``batch_input_shape``, list-of-lists ``inbound_nodes``). Every output is
checked against an independent NumPy implementation of the equations (Keras 2 LSTM / GRU with
Keras 2's hard_sigmoid 0.2x + 0.5, the reset-before GRU, the cuDNN LSTM / GRU equations on cuDNN's
own weight layout) within 1e-5, and, where Keras 3 can express the same model, against live
Keras 3 (torch backend) given the same weights, within the framework tolerance 1e-4.
tests/fixtures/keras2/ holds files written by the real Keras 2 (tf_keras), see make_fixtures.py.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import copy
import json

import numpy as np
import pytest

import fastrnn
from fastrnn.formats.keras import load_weights_h5
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require

h5py = require("h5py")
keras = require("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - keras was imported earlier with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)
L = keras.layers

REF_ATOL = REF_RTOL = 1e-5  # fastrnn against the NumPy equations (float32 both)
RNG = np.random.default_rng(13)
X = RNG.standard_normal((3, 5, 8)).astype(np.float32)  # (B, T, F)


def rand(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# -- writing the files as Keras 1 / 2 did ----------------------------------------------------------
def write_weights_h5(path, groups, keras_version="2.4.0", backend="tensorflow", chunk_layer_names=False):
    """A legacy ``save_weights`` file: ``groups`` = [(layer name, [(weight name, array)])] in
    model.layers order (a layer without weights has an empty list). ``keras_version=None``: no
    version attribute, as Keras 1 files."""
    with h5py.File(path, "w") as f:
        names = np.array([g.encode("utf8") for g, _ in groups])
        if chunk_layer_names:  # Keras splits a long attribute into layer_names0, layer_names1, ...
            half = len(names) // 2
            f.attrs["layer_names0"], f.attrs["layer_names1"] = names[:half], names[half:]
        else:
            f.attrs["layer_names"] = names
        f.attrs["backend"] = backend.encode("utf8")
        if keras_version is not None:
            f.attrs["keras_version"] = keras_version.encode("utf8")
        for gname, weights in sorted(groups, key=lambda g: g[0]):  # Keras writes the groups sorted by name
            g = f.create_group(gname)
            g.attrs["weight_names"] = (np.array([n.encode("utf8") for n, _ in weights]) if weights
                                       else np.array([], dtype="S1"))
            for n, a in weights:
                g.create_dataset(n, data=a)


INIT = {"kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
        "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}},
        "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
        "bias_constraint": None}


def k2_rnn(cls, name, units, version="2.4.0", batch_input_shape=None, **options):
    """A Keras 2 LSTM / GRU / SimpleRNN / CuDNNLSTM / CuDNNGRU config as that version's get_config."""
    cfg = {"name": name, "trainable": True}
    if batch_input_shape:
        cfg["batch_input_shape"] = batch_input_shape
    cfg.update({"dtype": "float32", "return_sequences": False, "return_state": False, "go_backwards": False,
                "stateful": False})
    if cls.startswith("CuDNN"):
        cfg.update({"units": units}, **copy.deepcopy(INIT))
        if cls == "CuDNNLSTM":
            cfg["unit_forget_bias"] = True
    else:
        modern = tuple(int(v) for v in version.split(".")[:2]) >= (2, 3)
        cfg.update({"unroll": False, "units": units, "activation": "tanh"})
        if cls != "SimpleRNN":
            cfg["recurrent_activation"] = "sigmoid" if modern else "hard_sigmoid"
        cfg["use_bias"] = True
        cfg.update(copy.deepcopy(INIT))
        if cls == "LSTM":
            cfg["unit_forget_bias"] = True
        cfg.update({"dropout": 0.0, "recurrent_dropout": 0.0})
        if cls != "SimpleRNN":
            cfg["implementation"] = 2 if modern else 1
        if cls == "GRU" and tuple(int(v) for v in version.split(".")[:3]) >= (2, 1, 3):
            cfg["reset_after"] = modern  # the key appeared in 2.1.3; the default became True in 2.3
    cfg.update(options)
    return {"class_name": cls, "config": cfg}


def k2_dense(name, units, activation="linear"):
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "dtype": "float32", "units": units, "activation": activation,
        "use_bias": True, **{k: v for k, v in copy.deepcopy(INIT).items() if not k.startswith("recurrent")}}}


def k2_dropout(name, rate=0.2):
    return {"class_name": "Dropout", "config": {"name": name, "trainable": True, "dtype": "float32", "rate": rate,
                                                "noise_shape": None, "seed": None}}


def k2_sequential(layers, version="2.4.0", name="sequential", input_shape=(None, None, 8)):
    """tf.keras >= 2.2 ``to_json()`` of a Sequential model: an InputLayer entry first (2.4), the
    version and backend at the top."""
    inp = {"class_name": "InputLayer", "config": {"batch_input_shape": list(input_shape), "dtype": "float32",
                                                  "sparse": False, "ragged": False, "name": f"{name}_input"}}
    return {"class_name": "Sequential", "config": {"name": name, "layers": [inp] + layers},
            "keras_version": version, "backend": "tensorflow"}


def k2_names(gname, cls, weights, cell=None):
    """tf.keras 2 dataset names: 'lstm_3/lstm_cell_3/kernel:0' (TF 2 cells) or 'lstm_3/kernel:0'."""
    prefix = f"{gname}/{cell}/" if cell else f"{gname}/"
    return [(f"{prefix}{n}:0", a) for n, a in zip(("kernel", "recurrent_kernel", "bias"), weights)]


# -- independent NumPy references ------------------------------------------------------------------
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def hard_sigmoid_k2(v):  # Keras 1 / 2: clip(0.2x + 0.5, 0, 1)
    return np.clip(0.2 * v + 0.5, 0.0, 1.0)


def ref_lstm(x, kernel, rec, bias, rec_act=sigmoid, sequences=False):
    """Keras LSTM (row vectors, gate blocks i|f|c|o)."""
    U = rec.shape[0]
    h = np.zeros((x.shape[0], U)); c = np.zeros((x.shape[0], U))
    out = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ rec + bias
        i, f, g, o = (z[:, k * U:(k + 1) * U] for k in range(4))
        c = rec_act(f) * c + rec_act(i) * np.tanh(g)
        h = rec_act(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, 1) if sequences else h


def ref_gru_reset_before(x, kernel, rec, bias, rec_act=sigmoid, sequences=False):
    """Keras GRU(reset_after=False), the Keras 1 / 2.0 GRU: z|r|h blocks, reset applied to h
    before the recurrent product; h' = z h + (1 - z) hh."""
    U = rec.shape[0]
    h = np.zeros((x.shape[0], U))
    out = []
    for t in range(x.shape[1]):
        xk = x[:, t] @ kernel + bias
        z = rec_act(xk[:, :U] + h @ rec[:, :U])
        r = rec_act(xk[:, U:2 * U] + h @ rec[:, U:2 * U])
        hh = np.tanh(xk[:, 2 * U:] + (r * h) @ rec[:, 2 * U:])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out, 1) if sequences else h


def cudnn_matrices(kernel, rec, gates):
    """cuDNN's canonical matrices from a Keras 2 CuDNN layer's kernel (I, G*U) and recurrent kernel
    (U, G*U): Keras hands cuDNN each gate block flattened in C order, and cuDNN reads those bytes as
    a row-major (U, I) matrix W applied as W @ x (the layout torch's weight_ih also has)."""
    I, U = kernel.shape[0], rec.shape[0]
    W = [kernel[:, g * U:(g + 1) * U].reshape(-1).reshape(U, I) for g in range(gates)]
    R = [rec[:, g * U:(g + 1) * U].reshape(-1).reshape(U, U) for g in range(gates)]
    return W, R


def ref_cudnn_lstm(x, kernel, rec, bias, sequences=False):
    """cuDNN LSTM: i, f, g, o = sigma/tanh(W x + bW + R h + bR); c' = f c + i g; h' = o tanh(c')
    with Keras's CuDNNLSTM blocks i|f|c|o and its bias [input biases (4U); recurrent biases (4U)]."""
    U = rec.shape[0]
    W, R = cudnn_matrices(kernel, rec, 4)
    bW, bR = bias[:4 * U].reshape(4, U), bias[4 * U:].reshape(4, U)
    h = np.zeros((x.shape[0], U)); c = np.zeros((x.shape[0], U))
    out = []
    for t in range(x.shape[1]):
        a = [x[:, t] @ W[g].T + bW[g] + h @ R[g].T + bR[g] for g in range(4)]
        i, f, g_, o = sigmoid(a[0]), sigmoid(a[1]), np.tanh(a[2]), sigmoid(a[3])
        c = f * c + i * g_
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, 1) if sequences else h


def ref_cudnn_gru(x, kernel, rec, bias, sequences=False):
    """cuDNN GRU: r = sigma(W_r x + bW_r + R_r h + bR_r), u = sigma(...), n = tanh(W_n x + bW_n +
    r * (R_n h + bR_n)), h' = (1 - u) n + u h; Keras's CuDNNGRU keeps the blocks z|r|h (u = z) and
    its bias [input (3U); recurrent (3U)]."""
    U = rec.shape[0]
    W, R = cudnn_matrices(kernel, rec, 3)
    bW, bR = bias[:3 * U].reshape(3, U), bias[3 * U:].reshape(3, U)
    h = np.zeros((x.shape[0], U))
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        u = sigmoid(xt @ W[0].T + bW[0] + h @ R[0].T + bR[0])
        r = sigmoid(xt @ W[1].T + bW[1] + h @ R[1].T + bR[1])
        n = np.tanh(xt @ W[2].T + bW[2] + r * (h @ R[2].T + bR[2]))
        h = (1 - u) * n + u * h
        out.append(h)
    return np.stack(out, 1) if sequences else h


def dense(x, kernel, bias, act=None):
    y = x @ kernel + bias
    if act == "softmax":
        e = np.exp(y - y.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return y


def keras_out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


# -- a tf.keras 2.4 project: model.json + weights.h5 saved by another process -------------------------
def stacked_project(tmp_path):
    """LSTM(16, sequences) -> Dropout -> LSTM(12) -> Dense(3, softmax), as model.json + weights.h5 whose
    groups say lstm_3 / lstm_4 / dropout_2 / dense_7 (saved by a process that built other models
    first) where the JSON says lstm / lstm_1 / dropout / dense. Returns (paths, the twin Keras 3 model)."""
    twin = keras.Sequential([keras.Input((None, 8)), L.LSTM(16, return_sequences=True), L.Dropout(0.2),
                             L.LSTM(12), L.Dense(3, activation="softmax")])
    twin.set_weights([rand(*w.shape) for w in twin.get_weights()])
    arch = k2_sequential([k2_rnn("LSTM", "lstm", 16, return_sequences=True), k2_dropout("dropout"),
                          k2_rnn("LSTM", "lstm_1", 12), k2_dense("dense", 3, "softmax")])
    w = [w.get_weights() for w in twin.layers]
    groups = [("lstm_3", k2_names("lstm_3", "LSTM", w[0], "lstm_cell_3")), ("dropout_2", []),
              ("lstm_4", k2_names("lstm_4", "LSTM", w[2], "lstm_cell_4")),
              ("dense_7", [("dense_7/kernel:0", w[3][0]), ("dense_7/bias:0", w[3][1])])]
    write_weights_h5(tmp_path / "weights.h5", groups)
    (tmp_path / "model.json").write_text(json.dumps(arch))
    return arch, twin


def test_in_order_matching_with_renamed_groups_and_every_architecture_form(tmp_path):
    arch, twin = stacked_project(tmp_path)
    expected = keras_out(twin, X)
    w = twin.get_weights()
    h1 = ref_lstm(X, *w[0:3], sequences=True)
    ref = dense(ref_lstm(h1, *w[3:6]), w[6], w[7], "softmax")
    assert_close(expected, ref, 1e-5, 1e-4, "keras 3 twin against the NumPy reference")
    forms = {"path": tmp_path / "model.json", "str path": str(tmp_path / "model.json"),
             "JSON text": json.dumps(arch), "dict": arch, "live Keras model": twin}
    for what, architecture in forms.items():
        fm = fastrnn.load(tmp_path / "weights.h5", architecture=architecture)
        assert fm.count_params() == twin.count_params(), what
        assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL, what)
        assert_close(fm.predict(X), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL, what)
    assert fastrnn.load(tmp_path / "weights.h5", architecture=arch).metadata["keras_version"] == "2.4.0"
    # the same through formats.keras directly
    fm = load_weights_h5(tmp_path / "weights.h5", arch)
    assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL)


def test_by_name_matches_names_not_order(tmp_path):
    """Groups listed in another order than the model's layers: in order they do not fit (the
    shapes say so), by name they do."""
    twin = keras.Sequential([keras.Input((None, 8)), L.GRU(6, return_sequences=True), L.GRU(6)])
    twin.set_weights([rand(*w.shape) for w in twin.get_weights()])
    arch = k2_sequential([k2_rnn("GRU", "gru_1", 6, return_sequences=True), k2_rnn("GRU", "gru_2", 6)])
    w = [layer.get_weights() for layer in twin.layers]
    groups = [("gru_2", k2_names("gru_2", "GRU", w[1], "gru_cell_2")),
              ("gru_1", k2_names("gru_1", "GRU", w[0], "gru_cell_1"))]
    write_weights_h5(tmp_path / "weights.h5", groups)
    fm = fastrnn.load(tmp_path / "weights.h5", architecture=arch, by_name=True)
    assert_close(fm.predict(X), keras_out(twin, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    with pytest.raises(fastrnn.ModelFormatError) as err:
        fastrnn.load(tmp_path / "weights.h5", architecture=arch)  # in order: gru_2's (6, 18) kernel for gru_1
    msg = str(err.value)
    assert "in order" in msg and "'gru_1'" in msg and "(6, 18)" in msg and "(8, 18)" in msg, msg
    assert "by_name=True" in msg  # the hint: every layer has a group of its name


def test_shape_mismatch_names_the_pair_and_lists_both_sides(tmp_path):
    arch, twin = stacked_project(tmp_path)
    arch = copy.deepcopy(arch)
    arch["config"]["layers"][3]["config"]["units"] = 10  # the JSON says LSTM(10), the file holds LSTM(12)
    for by_name in (False, True):
        arch_b = copy.deepcopy(arch)
        if by_name:  # names as in the file
            for lc, n in zip(arch_b["config"]["layers"][1:], ("lstm_3", "dropout_2", "lstm_4", "dense_7")):
                lc["config"]["name"] = n
        with pytest.raises(fastrnn.ModelFormatError) as err:
            fastrnn.load(tmp_path / "weights.h5", architecture=arch_b, by_name=by_name)
        msg = str(err.value)
        assert "weights.h5" in msg and "does not fit the architecture" in msg, msg
        assert "(12, 48)" in msg and "(10, 40)" in msg, msg  # what the file has, what LSTM(10) takes
        # the listing: every group with its weight shapes, every layer with weights
        for part in ("lstm_3 [", "lstm_4 [", "dense_7 [", "dense_7/kernel:0 (12, 3)", "LSTM, units=16",
                     "LSTM, units=10", "Dense, units=3"):
            assert part in msg, (part, msg)
        assert "dropout_2 [" not in msg  # no weights: not listed


def test_no_fit_error_lists_the_groups_and_the_layers(tmp_path):
    arch, twin = stacked_project(tmp_path)
    short = copy.deepcopy(arch)
    del short["config"]["layers"][3]  # drop lstm_1: 2 layers with weights, the file has 3 groups
    short["config"]["layers"][1]["config"]["return_sequences"] = False
    with pytest.raises(fastrnn.ModelFormatError) as err:
        fastrnn.load(tmp_path / "weights.h5", architecture=short)
    msg = str(err.value)
    assert "the file holds weights for 3 layers, the architecture has 2 layers with weights" in msg, msg
    assert "lstm_3 [lstm_3/lstm_cell_3/kernel:0 (8, 64)" in msg and "lstm_4 [" in msg and "dense_7 [" in msg, msg
    assert "lstm (LSTM, units=16); dense (Dense, units=3)" in msg, msg
    with pytest.raises(fastrnn.ModelFormatError, match="no weights group named 'lstm'"):
        fastrnn.load(tmp_path / "weights.h5", architecture=arch, by_name=True)


def test_weights_only_file_without_architecture_says_how(tmp_path):
    stacked_project(tmp_path)
    with pytest.raises(fastrnn.ModelFormatError, match="architecture=") as err:
        fastrnn.load(tmp_path / "weights.h5")
    assert "model.json" in str(err.value) and "--architecture" in str(err.value)
    with pytest.raises(fastrnn.ModelFormatError, match="weights only"):
        fastrnn.load(tmp_path / "model.json", architecture=tmp_path / "model.json")
    with pytest.raises(fastrnn.ModelFormatError, match="not valid JSON"):
        fastrnn.load(tmp_path / "weights.h5", architecture="{not json")
    with pytest.raises(TypeError, match="architecture must be"):
        fastrnn.load(tmp_path / "weights.h5", architecture=42)


def test_chunked_layer_names_attribute(tmp_path):
    arch, twin = stacked_project(tmp_path)
    w = [layer.get_weights() for layer in twin.layers]
    groups = [("lstm_3", k2_names("lstm_3", "LSTM", w[0])), ("dropout_2", []),
              ("lstm_4", k2_names("lstm_4", "LSTM", w[2])),
              ("dense_7", [("dense_7/kernel:0", w[3][0]), ("dense_7/bias:0", w[3][1])])]
    write_weights_h5(tmp_path / "chunked.h5", groups, chunk_layer_names=True)
    fm = fastrnn.load(tmp_path / "chunked.h5", architecture=arch)
    assert_close(fm.predict(X), keras_out(twin, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


# -- legacy semantics from keras_version -------------------------------------------------------------
@keras.saving.register_keras_serializable(package="fastrnn_keras2_tests")
def k2_hard_sigmoid(x):
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@pytest.mark.parametrize("version", ["2.0.8", "2.2.4"])
def test_keras2_gru_reset_before_and_hard_sigmoid(tmp_path, version):
    """Keras 2.0.8 wrote no reset_after (the GRU was reset-before), 2.2.4 wrote reset_after: false;
    both computed hard_sigmoid as clip(0.2x + 0.5)."""
    kernel, rec, bias = rand(8, 18), rand(6, 18), rand(18)
    k_d, b_d = rand(6, 2), rand(2)
    arch = k2_sequential([k2_rnn("GRU", "gru_1", 6, version=version), k2_dense("dense_1", 2)], version=version,
                         name="sequential_1")
    assert ("reset_after" in json.dumps(arch)) == (version == "2.2.4")
    write_weights_h5(tmp_path / "w.h5", [("gru_1", k2_names("gru_1", "GRU", [kernel, rec, bias])),
                                         ("dense_1", [("dense_1/kernel:0", k_d), ("dense_1/bias:0", b_d)])],
                     keras_version=version)
    fm = fastrnn.load(tmp_path / "w.h5", architecture=arch)
    ref = dense(ref_gru_reset_before(X, kernel, rec, bias, hard_sigmoid_k2), k_d, b_d)
    assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL)
    assert fm.count_params() == 8 * 18 + 6 * 18 + 18 + 6 * 2 + 2  # Keras's count: one bias
    twin = keras.Sequential([keras.Input((None, 8)), L.GRU(6, reset_after=False, recurrent_activation=k2_hard_sigmoid),
                             L.Dense(2)])
    twin.set_weights([kernel, rec, bias, k_d, b_d])
    assert_close(fm.predict(X), keras_out(twin, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def k2_activation(name, activation):
    return {"class_name": "Activation", "config": {"name": name, "trainable": True, "dtype": "float32",
                                                   "activation": activation}}


@pytest.mark.parametrize("version", ["2.2.4", "2.4.0"])
def test_keras2_hard_sigmoid_outside_the_cell_is_keras2s(tmp_path, version):
    """hard_sigmoid as a Dense activation and as an Activation layer of a Keras 2 file is Keras 2's
    clip(0.2x + 0.5, 0, 1) (Keras 3's x/6 + 0.5 differs by up to 1/30 of x): LSTM -> Dense(5,
    hard_sigmoid) -> Dense(3) -> Activation(hard_sigmoid), checked against that formula in NumPy and
    against Keras 3 running the same weights with clip(0.2x + 0.5) as a custom activation."""
    rng = np.random.default_rng(25)  # its own draws: the checks below on the pre-activations hold in any order

    def draw(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    kernel, rec, bias = draw(8, 24), draw(6, 24), draw(24)
    k1, b1, k2, b2 = draw(6, 5, scale=2.0), draw(5), draw(5, 3, scale=2.0), draw(3)
    arch = k2_sequential([k2_rnn("LSTM", "lstm_1", 6, version=version), k2_dense("dense_1", 5, "hard_sigmoid"),
                          k2_dense("dense_2", 3), k2_activation("activation_1", "hard_sigmoid")], version=version,
                         name="sequential_1")
    write_weights_h5(tmp_path / "w.h5", [("lstm_1", k2_names("lstm_1", "LSTM", [kernel, rec, bias])),
                                         ("dense_1", [("dense_1/kernel:0", k1), ("dense_1/bias:0", b1)]),
                                         ("dense_2", [("dense_2/kernel:0", k2), ("dense_2/bias:0", b2)]),
                                         ("activation_1", [])], keras_version=version)
    fm = fastrnn.load(tmp_path / "w.h5", architecture=arch)
    rec_act = hard_sigmoid_k2 if version < "2.3" else sigmoid  # the LSTM's own default of that version
    h = ref_lstm(X, kernel, rec, bias, rec_act)
    z1 = dense(h, k1, b1)
    z2 = dense(hard_sigmoid_k2(z1), k2, b2)
    want = hard_sigmoid_k2(z2)
    # the inputs reach where the two definitions differ, unclipped, in both hard_sigmoids
    keras3 = lambda v: np.clip(v / 6 + 0.5, 0.0, 1.0)  # noqa: E731
    for z in (z1, z2):
        inside = np.abs(z) < 2.5
        assert inside.mean() > 0.3 and np.abs(hard_sigmoid_k2(z) - keras3(z))[inside].max() > 0.02
    assert np.abs(hard_sigmoid_k2(keras3(z1) @ k2 + b2) - want).max() > 0.01  # Keras 3's in the Dense alone
    assert np.abs(keras3(z2) - want).max() > 0.01  # Keras 3's in the Activation alone
    assert_close(fm.predict(X), want, REF_ATOL, REF_RTOL)
    twin = keras.Sequential([keras.Input((None, 8)), L.LSTM(6, recurrent_activation=k2_hard_sigmoid if
                                                            version < "2.3" else "sigmoid"),
                             L.Dense(5, activation=k2_hard_sigmoid), L.Dense(3), L.Activation(k2_hard_sigmoid)])
    twin.set_weights([kernel, rec, bias, k1, b1, k2, b2])
    assert_close(fm.predict(X), keras_out(twin, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_keras3_architecture_of_a_rebuilt_model_is_a_different_model(tmp_path):
    """A Keras 3 to_json() of the model rebuilt from Keras 2 code computes Keras 3's hard_sigmoid
    (x/6 + 0.5): the architecture's version decides, not the weights file's."""
    kernel, rec, bias = rand(8, 24), rand(6, 24), rand(24)
    rebuilt = keras.Sequential([keras.Input((None, 8)), L.LSTM(6, recurrent_activation="hard_sigmoid")])
    rebuilt.set_weights([kernel, rec, bias])
    write_weights_h5(tmp_path / "w.h5", [("lstm_1", k2_names("lstm_1", "LSTM", [kernel, rec, bias]))],
                     keras_version="2.2.4")
    k3 = json.loads(rebuilt.to_json())
    assert "keras_version" not in k3  # Keras 3 does not record it: its layers' "module" says Keras 3
    fm = fastrnn.load(tmp_path / "w.h5", architecture=k3)
    assert_close(fm.predict(X), keras_out(rebuilt, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    k2 = k2_sequential([k2_rnn("LSTM", "lstm_1", 6, version="2.2.4")], version="2.2.4")
    old = fastrnn.load(tmp_path / "w.h5", architecture=k2)
    assert_close(old.predict(X), ref_lstm(X, kernel, rec, bias, hard_sigmoid_k2), REF_ATOL, REF_RTOL)
    assert np.abs(old.predict(X) - fm.predict(X)).max() > 1e-3


# -- CuDNNLSTM / CuDNNGRU ----------------------------------------------------------------------------
def cudnn_weights(cell, n_in=8, units=6):
    G = 4 if cell == "lstm" else 3
    return [rand(n_in, G * units), rand(units, G * units), rand(2 * G * units)]


@pytest.mark.parametrize("sequences", [False, True])
def test_cudnn_lstm_and_gru_against_the_cudnn_equations(tmp_path, sequences):
    wl, wg = cudnn_weights("lstm"), cudnn_weights("gru", n_in=6)
    arch = k2_sequential([k2_rnn("CuDNNLSTM", "cu_dnnlstm_1", 6, return_sequences=True),
                          k2_rnn("CuDNNGRU", "cu_dnngru_1", 6, return_sequences=sequences)],
                         version="2.2.4", name="sequential_1")
    groups = [("cu_dnnlstm_1", k2_names("cu_dnnlstm_1", "CuDNNLSTM", wl)),
              ("cu_dnngru_1", k2_names("cu_dnngru_1", "CuDNNGRU", wg))]
    write_weights_h5(tmp_path / "gpu.h5", groups, keras_version="2.2.4")
    fm = fastrnn.load(tmp_path / "gpu.h5", architecture=arch)
    h = ref_cudnn_lstm(X, *wl, sequences=True)
    assert_close(fm.predict(X), ref_cudnn_gru(h, *wg, sequences=sequences), REF_ATOL, REF_RTOL)
    # the bias counts once per gate for LSTM (the halves are summed), twice for GRU (reset after)
    assert fm.count_params() == (8 * 24 + 6 * 24 + 24) + (6 * 18 + 6 * 18 + 2 * 18)


def test_cudnn_weights_into_plain_lstm_gru_architecture(tmp_path):
    """Keras 2's loader converted CuDNN weights when the architecture says LSTM / GRU(reset_after):
    the usual way to run a GPU-trained model on a CPU. CuDNNGRU weights do not fit a reset-before GRU."""
    wl, wg = cudnn_weights("lstm"), cudnn_weights("gru", n_in=6)
    groups = [("cu_dnnlstm_1", k2_names("cu_dnnlstm_1", "CuDNNLSTM", wl)),
              ("cu_dnngru_1", k2_names("cu_dnngru_1", "CuDNNGRU", wg))]
    write_weights_h5(tmp_path / "gpu.h5", groups, keras_version="2.2.4")
    arch = k2_sequential([k2_rnn("LSTM", "lstm_1", 6, return_sequences=True, recurrent_activation="sigmoid"),
                          k2_rnn("GRU", "gru_1", 6, version="2.4.0", recurrent_activation="sigmoid")])
    assert arch["config"]["layers"][2]["config"]["reset_after"] is True
    fm = fastrnn.load(tmp_path / "gpu.h5", architecture=arch)
    ref = ref_cudnn_gru(ref_cudnn_lstm(X, *wl, sequences=True), *wg)
    assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL)
    arch["config"]["layers"][2]["config"]["reset_after"] = False
    with pytest.raises(fastrnn.ModelFormatError, match="CuDNNGRU weights.*reset_after=False"):
        fastrnn.load(tmp_path / "gpu.h5", architecture=arch)


def test_bidirectional_cudnn_lstm(tmp_path):
    fwd, bwd = cudnn_weights("lstm"), cudnn_weights("lstm")
    inner = k2_rnn("CuDNNLSTM", "cu_dnnlstm_1", 6, version="2.2.4")
    arch = k2_sequential([{"class_name": "Bidirectional", "config": {
        "name": "bidirectional_1", "trainable": True, "batch_input_shape": [None, None, 8], "dtype": "float32",
        "layer": inner, "merge_mode": "concat"}}], version="2.2.4", name="sequential_1")
    names = [f"bidirectional_1/{d}_cu_dnnlstm_1/{n}:0" for d in ("forward", "backward")
             for n in ("kernel", "recurrent_kernel", "bias")]
    write_weights_h5(tmp_path / "bi.h5", [("bidirectional_1", list(zip(names, fwd + bwd)))], keras_version="2.2.4")
    fm = fastrnn.load(tmp_path / "bi.h5", architecture=arch)
    ref = np.concatenate([ref_cudnn_lstm(X, *fwd), ref_cudnn_lstm(X[:, ::-1], *bwd)], axis=-1)
    assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL)


# -- Keras 1.2 -----------------------------------------------------------------------------------
def k1_rnn(cls, name, output_dim, batch_input_shape=None, **options):
    """A Keras 1.2 recurrent layer config (output_dim, init, inner_init, inner_activation, consume_less,
    W_regularizer, dropout_W ...)."""
    cfg = {"name": name, "trainable": True}
    if batch_input_shape:
        cfg.update({"batch_input_shape": batch_input_shape, "input_dtype": "float32"})
    cfg.update({"return_sequences": False, "go_backwards": False, "stateful": False, "unroll": False,
                "consume_less": "cpu", "output_dim": output_dim, "init": "glorot_uniform",
                "inner_init": "orthogonal", "activation": "tanh"})
    if cls != "SimpleRNN":
        cfg["inner_activation"] = "hard_sigmoid"
    if cls == "LSTM":
        cfg["forget_bias_init"] = "one"
    cfg.update({"W_regularizer": None, "U_regularizer": None, "b_regularizer": None, "dropout_W": 0.0,
                "dropout_U": 0.0})
    cfg.update(options)
    return {"class_name": cls, "config": cfg}


def k1_dense(name, output_dim, input_dim, activation="linear"):
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "output_dim": output_dim, "init": "glorot_uniform",
        "activation": activation, "W_regularizer": None, "b_regularizer": None, "activity_regularizer": None,
        "W_constraint": None, "b_constraint": None, "bias": True, "input_dim": input_dim}}


def k1_gate_arrays(name, n_in, units, gates):
    """Keras 1 LSTM / GRU weights: W_g (I, U), U_g (U, U), b_g (U,) for each gate letter."""
    out, per_gate = [], {}
    for g in gates:
        per_gate[g] = (rand(n_in, units), rand(units, units), rand(units))
        out += [(f"{name}_{p}_{g}", a) for p, a in zip(("W", "U", "b"), per_gate[g])]
    return out, per_gate


def test_keras1_sequential_lstm_twelve_arrays(tmp_path):
    arrays, w = k1_gate_arrays("lstm_1", 8, 6, "icfo")  # Keras 1 order: i, c, f, o
    k_d, b_d = rand(6, 3), rand(3)
    arch = {"class_name": "Sequential", "config": [
        k1_rnn("LSTM", "lstm_1", 6, batch_input_shape=[None, 5, 8]), k1_dense("dense_1", 3, 6, "softmax")],
        "keras_version": "1.2.2", "backend": "tensorflow"}
    write_weights_h5(tmp_path / "k1.h5", [("lstm_1", arrays), ("dense_1", [("dense_1_W", k_d), ("dense_1_b", b_d)])],
                     keras_version=None)  # Keras 1 wrote no keras_version attribute
    fm = fastrnn.load(tmp_path / "k1.h5", architecture=arch)
    kernel, rec, bias = (np.concatenate([w[g][j] for g in "ifco"], axis=-1) for j in range(3))
    ref = dense(ref_lstm(X, kernel, rec, bias, hard_sigmoid_k2), k_d, b_d, "softmax")
    assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL)
    assert fm.count_params() == 4 * (8 * 6 + 6 * 6 + 6) + 6 * 3 + 3
    # the same without keras_version anywhere: Keras 2's rule, no version = Keras 1
    del arch["keras_version"]
    fm = fastrnn.load(tmp_path / "k1.h5", architecture=json.dumps(arch))
    assert fm.metadata["keras_version"] == "1"
    assert_close(fm.predict(X), ref, REF_ATOL, REF_RTOL)


def k1_merge(name, mode, inbound, **extra):
    cfg = {"name": name, "mode": mode, "concat_axis": -1, "dot_axes": -1, "output_shape": None,
           "output_shape_type": "raw", "output_mask": None, "output_mask_type": "raw", "arguments": {},
           "mode_type": "raw"}
    cfg.update(extra)
    return {"class_name": "Merge", "config": cfg, "inbound_nodes": [[[n, 0, 0] for n in inbound]], "name": name}


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave", "max"])
def test_keras1_functional_gru_nine_arrays_and_merge(tmp_path, mode):
    """Keras 1 functional model: two GRUs (9 arrays each, z, r, h) merged with merge(mode=...)."""
    a1, w1 = k1_gate_arrays("gru_1", 8, 5, "zrh")
    a2, w2 = k1_gate_arrays("gru_2", 8, 5, "zrh")
    k_d, b_d = rand(10 if mode == "concat" else 5, 2), rand(2)

    def node(layer_cfg, inbound):
        return dict(layer_cfg, inbound_nodes=[[[inbound, 0, 0]]], name=layer_cfg["config"]["name"])

    d = k1_dense("dense_1", 2, k_d.shape[0])
    del d["config"]["input_dim"]
    arch = {"class_name": "Model", "config": {"name": "model_1", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 5, 8], "input_dtype": "float32",
                                                "sparse": False, "name": "input_1"}, "inbound_nodes": [],
         "name": "input_1"},
        node(k1_rnn("GRU", "gru_1", 5), "input_1"), node(k1_rnn("GRU", "gru_2", 5, go_backwards=True), "input_1"),
        k1_merge("merge_1", mode, ["gru_1", "gru_2"]), node(d, "merge_1")],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]},
        "keras_version": "1.2.2", "backend": "theano"}
    write_weights_h5(tmp_path / "k1.h5", [("input_1", []), ("gru_1", a1), ("gru_2", a2), ("merge_1", []),
                                          ("dense_1", [("dense_1_W", k_d), ("dense_1_b", b_d)])],
                     keras_version=None, backend="theano")
    fm = fastrnn.load(tmp_path / "k1.h5", architecture=arch)

    def gru(x, w):
        kernel, rec, bias = (np.concatenate([w[g][j] for g in "zrh"], axis=-1) for j in range(3))
        return ref_gru_reset_before(x, kernel, rec, bias, hard_sigmoid_k2)

    h1, h2 = gru(X, w1), gru(X[:, ::-1], w2)
    merged = {"concat": lambda: np.concatenate([h1, h2], -1), "sum": lambda: h1 + h2, "mul": lambda: h1 * h2,
              "ave": lambda: (h1 + h2) / 2, "max": lambda: np.maximum(h1, h2)}[mode]()
    assert_close(fm.predict(X), dense(merged, k_d, b_d), REF_ATOL, REF_RTOL)



@pytest.mark.parametrize("cls", ["Add", "Maximum", "Multiply", "Concatenate"])
def test_keras2_merge_of_masked_inputs_ands_the_masks(tmp_path, cls):
    """Keras 1 / 2 merges take the AND of their inputs' masks (``_Merge.compute_mask``: ``K.all``
    over the masks present) and merge the values as they are; Keras 3 ORs them. Two Masking inputs
    padded to different lengths -> merge -> LSTM: the LSTM runs the steps where BOTH are real (the
    shorter length), which the OR rule (the longer length) and Keras 3's masked values would miss."""
    T, F, U = 6, 4, 5
    rng = np.random.default_rng(21)
    a, b = rng.standard_normal((3, T, F)).astype(np.float32), rng.standard_normal((3, T, F)).astype(np.float32)
    la, lb = np.array([6, 2, 4]), np.array([3, 5, 4])
    for x, lens in ((a, la), (b, lb)):
        for r, n in enumerate(lens):
            x[r, n:] = 0.0  # Masking(0.0): right padding of different lengths per input
    n_in = 2 * F if cls == "Concatenate" else F
    kernel, rec, bias = rand(n_in, 4 * U), rand(U, 4 * U), rand(4 * U)

    def inp(name):
        return {"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                "config": {"batch_input_shape": [None, T, F], "dtype": "float32", "sparse": False, "ragged": False,
                           "name": name}}

    def masking(name, src):
        return {"class_name": "Masking", "name": name, "inbound_nodes": [[[src, 0, 0, {}]]],
                "config": {"name": name, "trainable": True, "dtype": "float32", "mask_value": 0.0}}

    merge_cfg = {"name": "merge", "trainable": True, "dtype": "float32"}
    if cls == "Concatenate":
        merge_cfg["axis"] = -1
    lstm = k2_rnn("LSTM", "lstm", U)
    arch = {"class_name": "Functional", "keras_version": "2.4.0", "backend": "tensorflow", "config": {
        "name": "model", "layers": [
            inp("in_a"), inp("in_b"), masking("mask_a", "in_a"), masking("mask_b", "in_b"),
            {"class_name": cls, "name": "merge", "config": merge_cfg,
             "inbound_nodes": [[["mask_a", 0, 0, {}], ["mask_b", 0, 0, {}]]]},
            dict(lstm, name="lstm", inbound_nodes=[[["merge", 0, 0, {}]]])],
        "input_layers": [["in_a", 0, 0], ["in_b", 0, 0]], "output_layers": [["lstm", 0, 0]]}}
    write_weights_h5(tmp_path / "w.h5", [("in_a", []), ("in_b", []), ("mask_a", []), ("mask_b", []), ("merge", []),
                                         ("lstm", k2_names("lstm", "LSTM", [kernel, rec, bias], "lstm_cell"))])
    fm = fastrnn.load(tmp_path / "w.h5", architecture=arch)
    merged = {"Add": lambda: a + b, "Maximum": lambda: np.maximum(a, b), "Multiply": lambda: a * b,
              "Concatenate": lambda: np.concatenate([a, b], -1)}[cls]()
    both = np.minimum(la, lb)  # AND of right-padded masks: the shorter length
    want = np.stack([ref_lstm(merged[r:r + 1, :n], kernel, rec, bias)[0] for r, n in enumerate(both)])
    assert_close(fm.predict([a, b]), want, REF_ATOL, REF_RTOL, f"Keras 2 {cls}")
    # the same model saved natively keeps the Keras 2 rule
    fastrnn.save(fm, tmp_path / "m.safetensors")
    assert_close(fastrnn.load(tmp_path / "m.safetensors").predict([a, b]), want, REF_ATOL, REF_RTOL)

def test_keras1_merge_modes_without_an_equivalent_are_refused(tmp_path):
    arrays, _ = k1_gate_arrays("gru_1", 8, 5, "zrh")
    arch = {"class_name": "Model", "config": {"name": "model_1", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 5, 8], "input_dtype": "float32",
                                                "name": "input_1"}, "inbound_nodes": [], "name": "input_1"},
        dict(k1_rnn("GRU", "gru_1", 5), inbound_nodes=[[["input_1", 0, 0]]], name="gru_1"),
        k1_merge("merge_1", "cos", ["gru_1", "gru_1"])],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["merge_1", 0, 0]]}, "keras_version": "1.2.2"}
    write_weights_h5(tmp_path / "k1.h5", [("gru_1", arrays)], keras_version=None)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="Merge mode 'cos'"):
        fastrnn.load(tmp_path / "k1.h5", architecture=arch)


# -- the command line --------------------------------------------------------------------------------
def test_cli_convert_with_keras_architecture(tmp_path, capsys):
    from fastrnn.cli import main

    arch, twin = stacked_project(tmp_path)
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(tmp_path / "weights.h5"), str(out), "--architecture",
                 str(tmp_path / "model.json")]) == 0
    fm = fastrnn.load(out)
    assert_close(fm.predict(X), keras_out(twin, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    # --by-name: the file's names are not the JSON's, so it fails and says which group is missing
    assert main(["convert", str(tmp_path / "weights.h5"), str(out), "--architecture",
                 str(tmp_path / "model.json"), "--by-name"]) == 2
    assert "no weights group named 'lstm'" in capsys.readouterr().err
    # without --architecture: the one-line error says how
    assert main(["convert", str(tmp_path / "weights.h5"), str(out)]) == 2
    assert "--architecture model.json" in capsys.readouterr().err


# -- files written by the real Keras 2 (tf_keras 2.21, tests/fixtures/keras2/make_fixtures.py) ---------
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras2")


def fixture(name):
    return os.path.join(FIXTURES, name)


def test_real_keras2_cudnn_weights_against_keras2s_own_conversion():
    """tf_keras saved CuDNNLSTM -> CuDNNGRU -> Dense weights; its load_weights converted them into
    LSTM -> GRU(reset_after) -> Dense and predicted: fastrnn gives those outputs with the CuDNN
    architecture and with the CPU one, and so do the NumPy cuDNN equations of this file."""
    expected = np.load(fixture("expected.npz"))
    x, y = expected["cudnn_x"], expected["cudnn_y"]
    for arch in ("cudnn.json", "cpu.json"):
        fm = fastrnn.load(fixture("cudnn_weights.h5"), architecture=fixture(arch))
        assert fm.metadata["keras_version"] == "2.21.0"
        assert_close(fm.predict(x), y, FRAMEWORK_ATOL, FRAMEWORK_RTOL, arch)
    with h5py.File(fixture("cudnn_weights.h5"), "r") as f:
        w = {n: [np.asarray(f[n][k]) for k in f[n].attrs["weight_names"]] for n in ("cu_dnnlstm", "cu_dnngru", "dense")}
    ref = dense(ref_cudnn_gru(ref_cudnn_lstm(x, *w["cu_dnnlstm"], sequences=True), *w["cu_dnngru"]), *w["dense"])
    assert_close(ref, y, FRAMEWORK_ATOL, FRAMEWORK_RTOL, "the NumPy cuDNN equations against Keras 2")


def test_real_keras2_renamed_groups_hard_sigmoid_reset_before():
    """tf_keras saved the weights after building other models (groups embedding_2, lstm_3, gru_3,
    dense_4), the JSON comes from a fresh process (embedding, lstm, gru, dense): matched in order,
    with Keras 2's hard_sigmoid and the reset-before GRU, masked token ids."""
    expected = np.load(fixture("expected.npz"))
    fm = fastrnn.load(fixture("renamed_weights.h5"), architecture=fixture("renamed.json"))
    assert_close(fm.predict(expected["renamed_x"]), expected["renamed_y"], FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    with pytest.raises(fastrnn.ModelFormatError, match="no weights group named 'embedding'") as err:
        fastrnn.load(fixture("renamed_weights.h5"), architecture=fixture("renamed.json"), by_name=True)
    assert "lstm_3 [lstm_3/lstm_cell/kernel:0 (8, 28)" in str(err.value)


def test_keras3_weights_file_with_live_model_or_its_json(tmp_path):
    """architecture= also takes a Keras 3 .weights.h5 (matched as Keras 3 does) with the model or its JSON."""
    model = keras.Sequential([keras.Input((None, 8)), L.Bidirectional(L.GRU(4, return_sequences=True)),
                              L.LSTM(3, recurrent_activation="hard_sigmoid")])
    model.set_weights([rand(*w.shape) for w in model.get_weights()])
    model.save_weights(str(tmp_path / "m.weights.h5"))
    for architecture in (model, model.to_json()):
        fm = fastrnn.load(tmp_path / "m.weights.h5", architecture=architecture)
        assert_close(fm.predict(X), keras_out(model, X), FRAMEWORK_ATOL, FRAMEWORK_RTOL)


def test_keras1_bidirectional_lstm_and_time_distributed_dense(tmp_path):
    """Keras 1.2 Bidirectional(LSTM) (24 arrays: the forward layer's 12, then the backward's) and
    TimeDistributed(Dense(output_dim=...))."""
    fa, fw = k1_gate_arrays("forward_lstm_1", 8, 4, "icfo")
    ba, bw = k1_gate_arrays("backward_lstm_1", 8, 4, "icfo")
    k_d, b_d = rand(8, 3), rand(3)
    inner = k1_rnn("LSTM", "lstm_1", 4, return_sequences=True)
    td_dense = k1_dense("dense_1", 3, 8)
    del td_dense["config"]["input_dim"]
    arch = {"class_name": "Sequential", "config": [
        {"class_name": "Bidirectional", "config": {"layer": inner, "name": "bidirectional_1", "trainable": True,
                                                   "merge_mode": "concat", "batch_input_shape": [None, 5, 8],
                                                   "input_dtype": "float32"}},
        {"class_name": "TimeDistributed", "config": {"layer": td_dense, "name": "timedistributed_1",
                                                     "trainable": True}}],
        "keras_version": "1.2.2", "backend": "tensorflow"}
    write_weights_h5(tmp_path / "k1.h5", [("bidirectional_1", fa + ba),
                                          ("timedistributed_1", [("dense_1_W", k_d), ("dense_1_b", b_d)])],
                     keras_version=None)
    fm = fastrnn.load(tmp_path / "k1.h5", architecture=arch)

    def lstm(x, w):
        kernel, rec, bias = (np.concatenate([w[g][j] for g in "ifco"], axis=-1) for j in range(3))
        return ref_lstm(x, kernel, rec, bias, hard_sigmoid_k2, sequences=True)

    h = np.concatenate([lstm(X, fw), lstm(X[:, ::-1], bw)[:, ::-1]], axis=-1)
    assert_close(fm.predict(X), dense(h, k_d, b_d), REF_ATOL, REF_RTOL)


def test_keras1_layers_in_another_layout_are_refused_by_name(tmp_path):
    conv = {"class_name": "Convolution1D", "config": {
        "name": "convolution1d_1", "nb_filter": 4, "filter_length": 3, "init": "glorot_uniform",
        "activation": "linear", "border_mode": "valid", "subsample_length": 1, "bias": True,
        "batch_input_shape": [None, 5, 8], "input_dtype": "float32"}}
    arch = {"class_name": "Sequential", "config": [conv], "keras_version": "1.2.2"}
    write_weights_h5(tmp_path / "k1.h5", [("convolution1d_1", [("convolution1d_1_W", rand(3, 1, 8, 4)),
                                                               ("convolution1d_1_b", rand(4))])], keras_version=None)
    with pytest.raises(fastrnn.UnsupportedLayerError, match="Keras 1 Convolution1D"):
        fastrnn.load(tmp_path / "k1.h5", architecture=arch)


def test_load_architecture_routes_a_torch_state_dict_to_fastrnns_spec(tmp_path):
    """fastrnn.load(path, architecture=...) routes by the file's kind, like convert --architecture:
    a PyTorch state_dict takes fastrnn's architecture JSON (it is tested in full in test_torch_files)."""
    torch = require("torch")
    torch.manual_seed(0)
    rnn, fc = torch.nn.GRU(8, 5, batch_first=True), torch.nn.Linear(5, 2)
    torch.save({**{f"rnn.{k}": v for k, v in rnn.state_dict().items()},
                **{f"fc.{k}": v for k, v in fc.state_dict().items()}}, tmp_path / "weights")
    spec = {"format": "fastrnn-torch-architecture",
            "layers": [{"module": "GRU", "prefix": "rnn."}, {"module": "Tanh"}, {"module": "Linear", "prefix": "fc."}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    fm = fastrnn.load(tmp_path / "weights", architecture=str(tmp_path / "spec.json"))
    with torch.no_grad():
        want = fc(torch.tanh(rnn(torch.from_numpy(X))[0])).numpy()
    assert_close(fm.predict(X), want, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
