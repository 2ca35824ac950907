"""Conv1D and attention on the compiled backends against the NumPy reference (issue 23: their
products run on the packed matmul, on fastrnn's threads, instead of NumPy's BLAS), over
paddings, strides, dilations, masks and score modes; results independent of the thread count
and of the other rows; and under ``quantize("int8")``, where both stay float32.
The reference itself is checked against Keras and PyTorch in test_layers_keras.py,
test_keras_graphs.py and test_torch_graphs.py."""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close
from fastrnn import reference
from fastrnn.backends import get_backend
from fastrnn.graph import Graph, Input, Node
from fastrnn.layers import Attention, Conv1D, Dense, Embedding, GlobalPooling1D
from fastrnn.layers.mask import step_mask
from helpers import random_recurrent

F32 = np.float32


def rand(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(F32)


CONVS = [  # (filters, in_channels, kernel_size, options)
    (5, 4, 2, dict(strides=2)),
    (3, 4, 3, dict(padding="same", dilation_rate=2, activation="tanh")),
    (3, 4, 3, dict(padding="causal", activation="sigmoid")),
    (17, 3, 1, dict(activation="relu")),
    (40, 9, 5, dict(padding=[1, 3], strides=3)),
    (1, 1, 4, dict(padding="same", strides=2)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("filters,channels,kernel,opts", CONVS, ids=[str(c) for c in range(len(CONVS))])
def test_conv1d_matches_reference(compiled_backend, filters, channels, kernel, opts, bias):
    rng = np.random.default_rng(filters * 7 + kernel)
    layer = Conv1D(rand(rng, filters, channels, kernel), rand(rng, filters) if bias else None, **opts)
    for shape in [(3, 11), (1, 1), (70, 23)]:
        x = rand(rng, shape[0], shape[1], channels, scale=1.0)
        want = reference.conv1d(layer, x)
        got = get_backend(compiled_backend).conv1d(layer, x)
        assert got.dtype == F32 and got.flags.c_contiguous
        assert_close(got, want, what=f"{shape}")


def test_conv1d_empty_and_too_short(compiled_backend, rng):
    layer = Conv1D(rand(rng, 6, 2, 3), rand(rng, 6))
    be = get_backend(compiled_backend)
    assert be.conv1d(layer, np.zeros((0, 5, 2), F32)).shape == (0, 3, 6)
    assert be.conv1d(layer, np.zeros((4, 2, 2), F32)).shape == (4, 0, 6)  # shorter than the kernel


def test_conv1d_filters_packed_once(compiled_backend, rng):
    layer = Conv1D(rand(rng, 8, 3, 3), None, padding="same")
    be = get_backend(compiled_backend)
    be.conv1d(layer, rand(rng, 2, 5, 3))
    packed = layer._packed[compiled_backend]
    be.conv1d(layer, rand(rng, 4, 9, 3))
    assert layer._packed[compiled_backend] is packed


def _attention_inputs(rng, B, Tq, Tv, d, dv, key):
    q, v = rand(rng, B, Tq, d, scale=1.0), rand(rng, B, Tv, dv, scale=1.0)
    return [q, v, rand(rng, B, Tv, d, scale=1.0)] if key else [q, v]


ATTENTIONS = [
    dict(score_mode="dot"),
    dict(score_mode="dot", scale=np.array([0.3], F32), use_causal_mask=True),
    dict(score_mode="concat", concat_score_weight=np.array([0.7], F32), scale=np.array([1.5], F32)),
    dict(score_mode="additive", scale=np.linspace(-1, 1, 6).astype(F32)),
]


@pytest.mark.parametrize("key", [False, True])
@pytest.mark.parametrize("opts", ATTENTIONS, ids=[a["score_mode"] + str(i) for i, a in enumerate(ATTENTIONS)])
def test_attention_matches_reference(compiled_backend, opts, key):
    rng = np.random.default_rng(3)
    layer = Attention(**opts)
    be = get_backend(compiled_backend)
    for B, Tq, Tv in [(3, 7, 7), (1, 1, 5), (5, 130, 33)]:
        d = 6
        inputs = _attention_inputs(rng, B, Tq, Tv, d, d, key)
        q_lengths, v_lengths = rng.integers(1, Tq + 1, B), rng.integers(1, Tv + 1, B)
        v_mask = step_mask(v_lengths, Tv) & (rng.random((B, Tv)) < 0.8)  # not right padding
        v_mask[:, 0] = True
        for masks in ([None, None], [q_lengths, v_lengths], [None, v_mask]):
            want = reference.attention(layer, inputs, masks[0], masks[1])
            got = be.attention(layer, inputs, masks + [None] * (len(inputs) - 2))
            assert got.dtype == F32 and got.flags.c_contiguous
            assert_close(got, want, what=f"B{B} Tq{Tq} Tv{Tv} masks {[m is not None for m in masks]}")


def test_attention_value_width_differs_from_key_width(compiled_backend, rng):
    layer = Attention()
    q, k, v = rand(rng, 4, 5, 8), rand(rng, 4, 9, 8), rand(rng, 4, 9, 3)
    got = get_backend(compiled_backend).attention(layer, [q, v, k], [None, None, None])
    assert got.shape == (4, 5, 3)
    assert_close(got, reference.attention(layer, [q, v, k]))


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_results_do_not_depend_on_threads_or_other_rows(compiled_backend, threads):
    """Every product is the packed matmul: a row's bits do not depend on the split across threads
    nor on the other rows of the batch (the batch-1 call splits the rows of one product)."""
    rng = np.random.default_rng(9)
    conv = Conv1D(rand(rng, 24, 5, 3), rand(rng, 24), padding="same")
    att = Attention(scale=np.array([0.5], F32))
    be = get_backend(compiled_backend)
    x = rand(rng, 9, 200, 5, scale=1.0)
    y1 = be.conv1d(conv, x, threads=1)
    assert np.array_equal(be.conv1d(conv, x, threads=threads), y1)
    assert np.array_equal(be.conv1d(conv, x[4:5], threads=threads), y1[4:5])
    a1 = be.attention(att, [y1, y1], [None, None], threads=1)
    assert np.array_equal(be.attention(att, [y1, y1], [None, None], threads=threads), a1)
    assert np.array_equal(be.attention(att, [y1[4:5], y1[4:5]], [None, None], threads=threads), a1[4:5])


def conv_attention_model(rng, V=40, E=8, H=16):
    """ids -> Embedding(mask_zero) -> Conv1D(same, relu) -> LSTM -> Attention([lstm, conv]) ->
    GlobalAveragePooling -> Dense softmax: every layer with a product in one graph."""
    graph = Graph(
        [Input("ids", (None,), "int64")],
        [Node("emb", Embedding(rand(rng, V, E), mask_zero=True), ["ids"]),
         Node("conv", Conv1D(rand(rng, H, E, 3), rand(rng, H), padding="same", activation="relu"), ["emb"]),
         Node("lstm", random_recurrent(rng, "lstm", input_size=H, hidden_size=H), ["conv"]),
         Node("att", Attention(use_causal_mask=True), ["lstm", "conv"]),
         Node("pool", GlobalPooling1D(), ["att"]),
         Node("out", Dense(rand(rng, 3, H), rand(rng, 3), "softmax"), ["pool"])],
        ["out"])
    return fastrnn.Model(graph=graph)


def test_model_with_conv_and_attention_matches_reference(compiled_backend):
    rng = np.random.default_rng(4)
    model = conv_attention_model(rng)
    ids = rng.integers(1, 40, (6, 25))
    ids[1, 20:] = 0  # right padding
    ids[2, [3, 9]] = 0  # padding ids inside: a (B, T) mask
    want = model.predict(ids, backend="numpy")
    for threads in (1, 2):
        assert_close(model.predict(ids, backend=compiled_backend, threads=threads), want, what=f"threads={threads}")


@pytest.mark.parametrize("kind", ["int8", "bfloat16"])
def test_quantized_model_keeps_conv_and_attention_float32(compiled_backend, kind):
    """quantize() rounds Embedding, recurrent and Dense matrices only: Conv1D and attention compute
    in float32 (the int8 engine runs them on the float kernels), so the model matches its int8
    NumPy spec and its Conv1D output is the float model's."""
    pytest.importorskip("fastrnn.kernels._cyint8")
    from fastrnn.quantize import Int8CompiledBackend, int8_backend

    rng = np.random.default_rng(6)
    model = conv_attention_model(rng)
    qm = model.quantize(kind)
    conv = next(n.layer for n in qm.nodes if isinstance(n.layer, Conv1D))
    assert conv is next(n.layer for n in model.nodes if isinstance(n.layer, Conv1D))  # left as it is
    engine = int8_backend(get_backend(compiled_backend), kind)
    assert isinstance(engine, Int8CompiledBackend)
    x = rand(rng, 5, 12, 8, scale=1.0)
    assert_close(engine.conv1d(conv, x), reference.conv1d(conv, x), what="conv under the int8 engine")
    assert np.array_equal(engine.conv1d(conv, x), get_backend(compiled_backend).conv1d(conv, x))
    ids = rng.integers(1, 40, (4, 30))
    ids[0, 11:] = 0
    assert_close(qm.predict(ids, backend=compiled_backend), qm.predict(ids, backend="numpy"), atol=2e-4, rtol=1e-3)
