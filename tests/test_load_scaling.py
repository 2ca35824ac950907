"""Loading is near-linear in the size of the model (issue 15): 20,000 recurrent modules in a
state_dict, a 60,000-layer Keras chain and 20,000 ONNX nodes stored in reverse order each load in
seconds (they took minutes where a step was quadratic). The bounds count this process's CPU
seconds (time.process_time), not wall-clock time: other processes on a busy machine slow the
test down but add nothing to them. Quadratic behaviour is 10-100x beyond them."""
import json
import os
import time
import zipfile

import numpy as np
from onnx import TensorProto, helper

os.environ.setdefault("KERAS_BACKEND", "torch")
from conftest import require  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.formats.torch import from_state_dict  # noqa: E402

BOUND = 30.0  # CPU seconds of this process


def test_state_dict_with_20000_recurrent_modules():
    params = {"emb.weight": np.ones((5, 2), np.float32)}
    for i in range(20000):
        params[f"rnn{i}.weight_ih_l0"] = np.zeros((2, 2), np.float32)
        params[f"rnn{i}.weight_hh_l0"] = np.zeros((2, 2), np.float32)
    params["fc.weight"] = np.zeros((5, 2), np.float32)
    t = time.process_time()
    model = from_state_dict(params, "rnn_tanh")
    assert time.process_time() - t < BOUND
    assert len(model.layers) == 20002


def test_onnx_20000_nodes_in_reverse_order(tmp_path):
    n = 20000
    nodes = [helper.make_node("Tanh", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)][::-1]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["B", 3])],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, ["B", 3])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    (tmp_path / "big.onnx").write_bytes(m.SerializeToString())
    t = time.process_time()
    model = fastrnn.load(tmp_path / "big.onnx")
    assert time.process_time() - t < BOUND
    x = np.full((1, 3), 0.5, np.float32)
    want = x
    for _ in range(n):
        want = np.tanh(want)
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5)


def test_keras_chain_of_60000_layers(tmp_path):
    keras = require("keras")
    small = keras.Sequential([keras.Input((4, 2)), keras.layers.Dense(2, name="d"),
                              keras.layers.Activation("tanh", name="a0")])
    small.save(tmp_path / "small.keras")
    with zipfile.ZipFile(tmp_path / "small.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    template = json.dumps(layers[-1])
    layers[-1:] = [json.loads(template.replace('"a0"', f'"a{i}"')) for i in range(60000)]
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "big.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    t = time.process_time()
    model = fastrnn.load(tmp_path / "big.keras")
    assert time.process_time() - t < BOUND
    assert len(model.nodes) == 60001


def test_live_torch_chain_of_20000_recurrent_modules():
    torch = require("torch")
    modules = [torch.nn.Embedding(5, 2)] + [torch.nn.RNN(2, 2, batch_first=True) for _ in range(20000)]
    net = torch.nn.Sequential(*modules, torch.nn.Linear(2, 5)).eval()
    t = time.process_time()
    model = fastrnn.from_torch(net)
    assert time.process_time() - t < BOUND
    assert len(model.layers) == 20002
