"""Every Keras layer fastrnn maps, in a small model, against Keras 3 (torch backend) within 1e-4.

Each case builds a model with random weights, saves it as ``.keras``, loads it with fastrnn and
compares on the NumPy reference and the default backend. Masked cases use right-padded inputs.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import numpy as np
import pytest

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, require

keras = require("keras")  # a skip outside CI, a failure in CI
if keras.backend.backend() != "torch":  # pragma: no cover
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)
L = keras.layers
ops = keras.ops

RNG = np.random.default_rng(3)
X = RNG.standard_normal((3, 6, 4)).astype(np.float32)
IDS = np.array([[3, 4, 5, 6, 7, 8], [1, 2, 3, 9, 0, 0], [5, 0, 0, 0, 0, 0]])
MASKED = X.copy()
MASKED[1, 4:] = 0.0
MASKED[2, 2:] = 0.0
# second inputs padded otherwise (lengths 2, 6, 3 and 3, 6, 5 against 6, 4, 1 and 6, 4, 2): the OR
# of two masks (the longer of two right-paddings) differs from their AND in every row
IDS_B = np.array([[7, 2, 0, 0, 0, 0], [4, 4, 6, 1, 2, 9], [8, 3, 1, 0, 0, 0]])
MASKED_B = RNG.standard_normal((3, 6, 4)).astype(np.float32)
MASKED_B[0, 3:] = 0.0
MASKED_B[2, 5:] = 0.0


def randomize(model, seed=1, scale=0.5):
    rng = np.random.default_rng(seed)
    out = []
    for w in model.weights:
        a = rng.standard_normal(w.shape) * scale
        if "variance" in w.path:
            a = np.abs(a) + 0.5
        out.append(a.astype(np.float32))
    model.set_weights(out)
    return model


def seq(*layers, shape=(6, 4), dtype="float32"):
    return randomize(keras.Sequential([keras.Input(shape, dtype=dtype), *layers]))


def functional(build, shape=(6, 4), dtype="float32"):
    inp = keras.Input(shape, dtype=dtype)
    return randomize(keras.Model(inp, build(inp)))


CASES = {
    # activations as layers
    "activation_softmax": lambda: seq(L.Dense(5), L.Activation("softmax")),
    "activation_gelu": lambda: seq(L.Activation("gelu")),
    "activation_log_softmax": lambda: seq(L.Activation("log_softmax")),
    "activation_elu_selu_swish": lambda: seq(L.Activation("elu"), L.Dense(4), L.Activation("selu"),
                                             L.Activation("swish"), L.Activation("softplus")),
    "activation_hard_sigmoid": lambda: seq(L.Activation("hard_sigmoid")),
    "activation_leaky_relu": lambda: seq(L.Activation("leaky_relu")),
    "softmax_time_axis": lambda: seq(L.Softmax(axis=1)),
    "relu_layer": lambda: seq(L.ReLU()),
    "relu_negative_slope": lambda: seq(L.ReLU(negative_slope=0.1)),
    "leaky_relu_layer": lambda: seq(L.LeakyReLU(negative_slope=0.2)),
    "leaky_relu_default": lambda: seq(L.LeakyReLU()),
    "elu_layer": lambda: seq(L.ELU(alpha=0.5)),
    "dense_gelu": lambda: seq(L.Dense(3, activation="gelu")),
    "dense_hard_sigmoid": lambda: seq(L.Dense(3, activation="hard_sigmoid")),
    "no_ops": lambda: seq(L.Dropout(0.5), L.SpatialDropout1D(0.3), L.GaussianNoise(0.2), L.GaussianDropout(0.2),
                          L.ActivityRegularization(0.1), L.Dense(2)),
    # time distributed per-step layers
    "time_distributed_layer_norm": lambda: seq(L.TimeDistributed(L.LayerNormalization()),
                                               L.TimeDistributed(L.Activation("tanh"))),
    # merges
    "concatenate_time_axis": lambda: functional(lambda x: L.Concatenate(axis=1)([x, L.Dense(4)(x)])),
    "add_subtract_multiply": lambda: functional(
        lambda x: L.Multiply()([L.Add()([x, L.Dense(4)(x), x]), L.Subtract()([x, L.Dense(4)(x)])])),
    "average_maximum_minimum": lambda: functional(
        lambda x: L.Concatenate()([L.Average()([x, L.Dense(4)(x)]), L.Maximum()([x, L.Dense(4)(x)]),
                                   L.Minimum()([x, L.Dense(4)(x)])])),
    "dot_features": lambda: functional(lambda x: L.Dot(axes=(2, 2))([x, L.Dense(4)(x)])),
    "dot_time_normalized": lambda: functional(lambda x: L.Dot(axes=1, normalize=True)([x, L.Dense(3)(x)])),
    "dot_vectors": lambda: functional(lambda x: L.Dot(axes=-1)([L.LSTM(3)(x), L.GRU(3)(x)])),
    # pooling
    "global_average_keepdims": lambda: seq(L.GlobalAveragePooling1D(keepdims=True)),
    "global_max": lambda: seq(L.GlobalMaxPooling1D(), L.Dense(2)),
    "max_pooling_same": lambda: seq(L.MaxPooling1D(pool_size=3, strides=2, padding="same")),
    "average_pooling_valid": lambda: seq(L.AveragePooling1D(pool_size=2)),
    # even "same" padding: Keras's torch backend counts the padded zeros of uneven padding (its
    # TensorFlow and JAX backends, and fastrnn, average the real steps only)
    "average_pooling_same": lambda: seq(L.AveragePooling1D(pool_size=3, strides=1, padding="same")),
    # shapes
    "flatten_dense": lambda: seq(L.Flatten(), L.Dense(3)),
    "reshape": lambda: seq(L.Reshape((12, 2)), L.LSTM(3)),
    "permute": lambda: seq(L.Permute((2, 1)), L.Dense(2)),
    "repeat_vector_decoder": lambda: seq(L.LSTM(5), L.RepeatVector(4), L.LSTM(3, return_sequences=True),
                                         L.TimeDistributed(L.Dense(2))),
    # convolutions
    "conv1d_valid_strides": lambda: seq(L.Conv1D(5, 2, strides=2)),
    "conv1d_same_dilated_tanh": lambda: seq(L.Conv1D(3, 3, padding="same", dilation_rate=2, activation="tanh")),
    "conv1d_causal_no_bias_softmax": lambda: seq(L.Conv1D(3, 3, padding="causal", use_bias=False,
                                                          activation="softmax")),
    # normalization
    "layer_norm": lambda: seq(L.Dense(5), L.LayerNormalization(epsilon=1e-5)),
    "layer_norm_no_center": lambda: seq(L.LayerNormalization(center=False)),
    "batch_norm": lambda: seq(L.BatchNormalization(), L.LSTM(3)),
    "batch_norm_no_scale": lambda: seq(L.BatchNormalization(scale=False, epsilon=0.01)),
    # attention
    "attention_dot_scaled": lambda: functional(lambda x: L.Attention(use_scale=True)([L.Dense(4)(x), x])),
    "attention_concat": lambda: functional(lambda x: L.Attention(score_mode="concat")([x, x])),
    "additive_attention_no_scale": lambda: functional(lambda x: L.AdditiveAttention(use_scale=False)([x, x])),
    # recurrent options reachable only in graphs
    "gru_return_state": lambda: functional(lambda x: L.Add()(L.GRU(4, return_state=True)(x))),
    "bidirectional_return_state": lambda: functional(
        lambda x: L.Concatenate()(L.Bidirectional(L.LSTM(3, return_state=True))(x))),
    "bidirectional_initial_state": lambda: functional(
        lambda x: L.Bidirectional(L.GRU(3, return_sequences=True))(
            x, initial_state=[L.Dense(3)(L.Flatten()(x)), L.Dense(3, activation="tanh")(L.Flatten()(x))])),
}


@pytest.mark.parametrize("make", CASES.values(), ids=list(CASES))
def test_layer_matches_keras(tmp_path, make):
    model = make()
    expected = ops.convert_to_numpy(model(X, training=False))
    model.save(str(tmp_path / "m.keras"))
    fm = fastrnn.load(tmp_path / "m.keras")
    assert fm.count_params() == model.count_params()
    for backend in ("numpy", None):
        assert_close(fm.predict(X, backend=backend), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL, str(backend))


MASKED_CASES = {
    # Keras 3 mask propagation: which layers pass the mask on, which use it, which drop it
    "masking_dense_lstm": lambda: seq(L.Masking(), L.Dense(4), L.LSTM(3)),
    "masking_activation_norms_lstm": lambda: seq(L.Masking(), L.Activation("tanh"), L.LayerNormalization(),
                                                 L.BatchNormalization(), L.Dropout(0.1), L.GRU(3)),
    "masking_conv_drops_mask": lambda: seq(L.Masking(), L.Conv1D(4, 1), L.LSTM(3, return_sequences=True)),
    "masking_global_average": lambda: seq(L.Masking(), L.GRU(3, return_sequences=True), L.GlobalAveragePooling1D()),
    "masking_concatenate_unmasked": lambda: functional(
        lambda x: L.LSTM(3)(L.Concatenate()([L.Masking()(x), L.Dense(2)(x)]))),
    "masking_add_one_unmasked": lambda: functional(lambda x: L.GRU(3)(L.Add()([L.Masking()(x), x]))),
    "masking_concatenate_both": lambda: functional(
        lambda x: L.LSTM(3)(L.Concatenate()([L.Masking()(x), L.Masking()(L.Dense(4)(x))]))),
    "masking_attention": lambda: functional(
        lambda x: L.Attention()([L.LSTM(4, return_sequences=True)(L.Masking()(x)), L.Masking()(x)])),
    "masking_time_distributed": lambda: seq(L.Masking(), L.TimeDistributed(L.Dense(3)), L.SimpleRNN(2, name="srnn")),
}


@pytest.mark.parametrize("make", MASKED_CASES.values(), ids=list(MASKED_CASES))
def test_masks_propagate_as_in_keras(tmp_path, make):
    model = make()
    expected = ops.convert_to_numpy(model(MASKED, training=False))
    model.save(str(tmp_path / "m.keras"))
    fm = fastrnn.load(tmp_path / "m.keras")
    for backend in ("numpy", None):
        assert_close(fm.predict(MASKED, backend=backend), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL, str(backend))


def two_inputs(build, shape=(6, 4), dtype="float32"):
    a, b = keras.Input(shape, dtype=dtype, name="a"), keras.Input(shape, dtype=dtype, name="b")
    return randomize(keras.Model([a, b], build(a, b)))


MERGES = {"add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply, "average": L.Average,
          "maximum": L.Maximum, "minimum": L.Minimum, "concatenate": L.Concatenate}


@pytest.mark.parametrize("head", ["lstm", "none"])
@pytest.mark.parametrize("source", ["embedding", "masking"])
@pytest.mark.parametrize("merge", list(MERGES))
def test_merge_of_branches_with_different_masks_ors_them(tmp_path, merge, source, head):
    """Keras 3 merges OR their inputs' masks (a step is valid if it is valid in any branch): two
    branches padded differently, merged, then a masked LSTM, whose final state is the state at the
    last step valid in either branch (AND would stop at the shorter branch in every row); or the
    merged values themselves (Maximum / Minimum / Multiply leave masked steps out of them)."""
    def build(a, b):
        if source == "embedding":
            a, b = L.Embedding(10, 4, mask_zero=True)(a), L.Embedding(10, 4, mask_zero=True)(b)
        else:
            a, b = L.Masking()(a), L.Masking()(b)
        merged = MERGES[merge]()([a, b])
        return L.LSTM(3)(merged) if head == "lstm" else merged

    if source == "embedding":
        model, feeds = two_inputs(build, shape=(None,), dtype="int32"), [IDS, IDS_B]
    else:
        model, feeds = two_inputs(build), [MASKED, MASKED_B]
    expected = ops.convert_to_numpy(model(feeds, training=False))
    model.save(str(tmp_path / "m.keras"))
    fm = fastrnn.load(tmp_path / "m.keras")
    for backend in ("numpy", None):
        assert_close(fm.predict(feeds, backend=backend), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL, str(backend))


def test_embedding_masks_through_maximum_of_two_inputs(tmp_path):
    """Maximum of two Embedding(mask_zero) branches of different padding (lengths 6, 4, 1 and
    2, 6, 3): the LSTM runs to the longer of the two in each row, as in Keras."""
    model = two_inputs(lambda a, b: L.LSTM(3)(L.Maximum()([L.Embedding(10, 4, mask_zero=True)(a),
                                                          L.Embedding(10, 4, mask_zero=True)(b)])),
                       shape=(None,), dtype="int32")
    expected = ops.convert_to_numpy(model([IDS, IDS_B], training=False))
    model.save(str(tmp_path / "m.keras"))
    assert_close(fastrnn.load(tmp_path / "m.keras").predict([IDS, IDS_B]), expected, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
