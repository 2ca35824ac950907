"""Property tests and loader fuzzing with hypothesis, bounded in time (~30 s for the file).

- Every backend equals the NumPy reference (fastrnn.reference.recurrent) on random cells,
  options, shapes, lengths, initial states and weights.
- Each loader gets mutated valid files: byte-level edits (flips, truncation, insertion,
  deletion) and structure-aware edits (a value anywhere in the safetensors header or the
  architecture JSON replaced by arbitrary JSON; a pickle opcode stream edited inside a well-formed
  zip). Any exception must be fastrnn.ModelFormatError; a file that still loads must give a model
  that runs and prints its summary.

Hypothesis keeps failing examples in .hypothesis/ and prints a @reproduce_failure blob.
FASTRNN_FUZZ_EXAMPLES=5000 runs a deeper search (default 300 per test, 150 for the property).
"""
import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import ModelFormatError, reference
from fastrnn.backends import get_backend
from fastrnn.formats.torch import from_state_dict, read_state_dict
from conftest import BACKENDS, COMPILED_BACKENDS, KERNEL_ATOL, assert_close, require
from helpers import random_recurrent, random_state

# Examples per test; FASTRNN_FUZZ_EXAMPLES raises it for a deeper run (e.g. 5000 before a release).
EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROPERTY = settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- every backend equals the reference ------------------------------------------------------------
GATE_ACTIVATIONS = ["sigmoid", "hard_sigmoid", ("hard_sigmoid", 0.2, 0.5)]
OTHER_ACTIVATIONS = ["tanh", "relu", "softsign", "elu", "selu", ("scaled_tanh", 1.7, 0.66), "swish",
                     ("leaky_relu", 0.1, 0.0)]


@st.composite
def recurrent_cases(draw):
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    hidden = draw(st.integers(1, 12))
    direction = draw(st.sampled_from(["forward", "reverse", "go_backwards", "bidirectional"]))
    opts = dict(bidirectional=direction == "bidirectional", reverse=direction == "reverse",
                go_backwards=direction == "go_backwards", return_sequences=draw(st.booleans()),
                merge_mode=draw(st.sampled_from(["concat", "sum", "mul", "ave"])),
                masked_output=draw(st.sampled_from(["zero", "hold"])),
                clip=draw(st.none() | st.floats(0.1, 5.0)))
    if cell == "rnn":
        opts["activations"] = (draw(st.sampled_from(["tanh", "relu", ("scaled_tanh", 1.7, 0.66)])),)
    elif draw(st.booleans()):
        n_other = 2 if cell == "lstm" else 1
        opts["activations"] = (draw(st.sampled_from(GATE_ACTIVATIONS)),) + tuple(
            draw(st.sampled_from(OTHER_ACTIVATIONS)) for _ in range(n_other))
    if cell == "lstm":
        opts["proj_size"] = draw(st.sampled_from([0, 0, 1, max(1, hidden - 1)]))
        opts["peephole"] = draw(st.booleans())
        opts["input_forget"] = draw(st.booleans())
    if cell == "gru":
        opts["linear_before_reset"] = draw(st.booleans())
    batch, steps, inputs = draw(st.integers(1, 6)), draw(st.integers(0, 12)), draw(st.integers(1, 8))
    lengths = draw(st.none() | st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    return dict(cell=cell, hidden_size=hidden, input_size=inputs, opts=opts, batch=batch, steps=steps,
                lengths=None if lengths is None else np.array(lengths, np.int64),
                with_state=draw(st.booleans()), bias=draw(st.booleans()),
                # Weights of std gain/sqrt(hidden) keep the recurrence non-chaotic (gain <= 1), so
                # rounding differences do not grow exponentially with the steps; large inputs
                # drive the gates into saturation instead.
                scale=draw(st.sampled_from([0.3, 0.7, 1.0])) / np.sqrt(hidden),
                amplitude=draw(st.sampled_from([0.5, 2.0, 8.0])), seed=draw(st.integers(0, 2**32 - 1)))


@PROPERTY
@given(case=recurrent_cases())
def test_every_backend_equals_the_reference(case):
    rng = np.random.default_rng(case["seed"])
    layer = random_recurrent(rng, case["cell"], input_size=case["input_size"], hidden_size=case["hidden_size"],
                             bias=case["bias"], scale=case["scale"], **case["opts"])
    x = (rng.standard_normal((case["batch"], case["steps"], case["input_size"])) * case["amplitude"]).astype(np.float32)
    state = random_state(rng, layer, case["batch"]) if case["with_state"] else None
    saved = None if state is None else [a.copy() for a in _parts(state)]
    want_y, want_state = reference.recurrent(layer, x, case["lengths"], state)
    # Unbounded activations (relu, elu, ...) with large weights grow values to 1e4 and more; a
    # small output can then be the difference of large terms, so the absolute tolerance scales
    # with the largest value computed (float32 rounding is relative to the terms, not the result).
    scale = max(1.0, *(float(np.abs(a).max(initial=0)) for a in (want_y, *_parts(want_state))))
    atol = KERNEL_ATOL * scale
    for name in COMPILED_BACKENDS:
        got_y, got_state = get_backend(name).recurrent(layer, x, case["lengths"], state)
        assert_close(got_y, want_y, atol=atol, what=f"{name} output")
        for g, w in zip(_parts(got_state), _parts(want_state)):
            assert_close(g, w, atol=atol, what=f"{name} state")
    if state is not None:  # the caller's state is input only
        assert all(np.array_equal(a, b) for a, b in zip(_parts(state), saved))


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


# -- mutations ---------------------------------------------------------------------------------
@st.composite
def byte_edits(draw, size, hot=None):
    """1-4 edits of a ``size``-byte file; ``hot`` = (start, end) where most edits land."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "truncate", "insert", "delete", "duplicate"]))
        if hot is not None and draw(st.integers(0, 9)) < 7:
            pos = draw(st.integers(*hot))
        else:
            pos = draw(st.integers(0, max(size - 1, 0)))
        edits.append((kind, pos, draw(st.binary(min_size=1, max_size=8)), draw(st.integers(1, 64))))
    return edits


def apply_edits(data, edits):
    data = bytearray(data)
    for kind, pos, payload, n in edits:
        pos = min(pos, len(data))
        if kind == "set":
            data[pos:pos + len(payload)] = payload
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = payload
        elif kind == "delete":
            del data[pos:pos + n]
        else:
            data[pos:pos] = data[pos:pos + n]
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["F32", "F64", "I64", "lstm", "gru", "rnn", "recurrent", "dense", "embedding", "masking",
                       "tanh", "softmax", "concat", "hold", "layers.1.d0.w_hh", "layers.0.weight", "1", "2", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


def json_paths(node, prefix=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,))


@st.composite
def json_edit(draw, tree):
    """Replace a value somewhere in ``tree`` by arbitrary JSON, or delete it (in place)."""
    paths = [p for p, _ in json_paths(tree) if p]
    path = draw(st.sampled_from(paths))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.integers(0, 3)) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return path


def check_loaded(model):
    """A model that loaded must run and describe itself."""
    x = np.zeros((2, 3), np.int64) if model.takes_tokens else np.zeros((2, 3, model.input_size), np.float32)
    for backend in BACKENDS:
        with np.errstate(all="ignore"):
            model.predict(x, backend=backend)
    model.summary(print_fn=None)


# -- native files -----------------------------------------------------------------------------------
def native_models():
    rng = np.random.default_rng(0)
    tokens = fastrnn.Model([
        fastrnn.Embedding(rng.standard_normal((9, 3)).astype(np.float32), mask_zero=True, name="emb"),
        random_recurrent(rng, "lstm", input_size=3, hidden_size=4, bidirectional=True, proj_size=2, name="bilstm"),
        random_recurrent(rng, "gru", input_size=4, hidden_size=3, linear_before_reset=False, clip=2.0,
                         return_sequences=False, name="gru"),
        fastrnn.Dense(rng.standard_normal((2, 3)).astype(np.float32), np.zeros(2, np.float32), "softmax", name="out"),
    ], vocabulary=fastrnn.Vocabulary(list("abcdefgh") + ["<unk>"], unk=8))
    features = fastrnn.Model([
        fastrnn.Masking(0.0),
        random_recurrent(rng, "rnn", input_size=4, hidden_size=5, activations=("relu",), masked_output="hold",
                         name="rnn"),
        fastrnn.Dense(rng.standard_normal((3, 5)).astype(np.float32), None, "tanh"),
    ])
    return tokens, features


@pytest.fixture(scope="module")
def native_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    out = []
    for i, model in enumerate(native_models()):
        path = folder / f"m{i}.safetensors"
        fastrnn.save(model, path)
        out.append(path.read_bytes())
    return out


def load_native_bytes(path, data):
    path.write_bytes(data)
    try:
        model = fastrnn.load(path)
    except ModelFormatError as exc:
        assert str(path) in str(exc)
        return
    check_loaded(model)


@FUZZ
@given(which=st.integers(0, 1), data=st.data())
def test_fuzz_native_bytes(native_files, tmp_path, which, data):
    raw = native_files[which]
    (n,) = struct.unpack("<Q", raw[:8])
    mutated = apply_edits(raw, data.draw(byte_edits(len(raw), hot=(0, 8 + n))))
    load_native_bytes(tmp_path / "fuzz.safetensors", mutated)


@FUZZ
@given(which=st.integers(0, 1), in_model=st.booleans(), data=st.data())
def test_fuzz_native_structure(native_files, tmp_path, which, in_model, data):
    raw = native_files[which]
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if in_model:  # the architecture JSON inside the metadata
        spec = json.loads(header["__metadata__"]["model"])
        data.draw(json_edit(spec))
        header["__metadata__"]["model"] = json.dumps(spec)
    else:  # the safetensors header itself (tensor entries, metadata)
        data.draw(json_edit(header))
    new = json.dumps(header).encode()
    load_native_bytes(tmp_path / "fuzz.safetensors", struct.pack("<Q", len(new)) + new + raw[8 + n:])


# -- PyTorch state_dict files ----------------------------------------------------------------------
class CharModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(7, 3)
        self.rnn = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(8, 7)


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("torch") / "char.pt"
    torch.save(CharModel().state_dict(), path)
    return path.read_bytes()


def load_torch_bytes(path, data):
    path.write_bytes(data)
    try:
        model = from_state_dict(read_state_dict(path), "gru", source=str(path))
    except ModelFormatError as exc:
        assert str(path) in str(exc)
        return
    check_loaded(model)


def rezip(raw, edit):
    """Rewrite a torch.save archive with ``edit(name, bytes) -> bytes`` applied to each entry."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info)))
    return out.getvalue()


@FUZZ
@given(data=st.data())
def test_fuzz_torch_archive_bytes(torch_file, tmp_path, data):
    load_torch_bytes(tmp_path / "fuzz.pt", apply_edits(torch_file, data.draw(byte_edits(len(torch_file)))))


PICKLE_OPCODES = [b"(", b")", b"]", b"}", b"t", b"u", b"e", b"a", b"s", b"R", b"b", b"Q", b"q\x00", b"h\x01",
                  b"K\xff", b"J\xff\xff\xff\x7f", b"\x8a\x01\x80", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89", b"N",
                  b"0", b"1", b"2", b".", b"\x81", b"\x8c\x05torch", b"\x93", b"X\xff\xff\xff\x7f",
                  b"ctorch._utils\n_rebuild_tensor_v2\n", b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n",
                  b"cbuiltins\neval\n", b"cos\nsystem\n"]


@FUZZ
@given(data=st.data())
def test_fuzz_torch_pickle(torch_file, tmp_path, data):
    """Edits inside data.pkl (and the storages), the zip around them left well-formed."""
    def edit(name, content):
        if name.endswith("data.pkl"):
            content = apply_edits(content, data.draw(byte_edits(len(content))))
            for _ in range(data.draw(st.integers(0, 3))):
                pos = data.draw(st.integers(0, len(content)))
                content = content[:pos] + data.draw(st.sampled_from(PICKLE_OPCODES)) + content[pos:]
        elif "/data/" in name and data.draw(st.integers(0, 4)) == 0:
            content = apply_edits(content, data.draw(byte_edits(len(content))))
        return content

    load_torch_bytes(tmp_path / "fuzz.pt", rezip(torch_file, edit))


# -- Keras files --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """A .keras archive and a legacy-layout .h5 of a small Keras model (torch backend)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras")
    folder = tmp_path_factory.mktemp("keras")
    inputs = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(9, 3, mask_zero=True)(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(h)
    h = keras.layers.GRU(3)(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    out = {}
    for ext in ("keras", "h5"):
        model.save(str(folder / f"m.{ext}"))
        out[ext] = (folder / f"m.{ext}").read_bytes()
    return out


@FUZZ
@given(ext=st.just("keras"), data=st.data())
def test_fuzz_keras(keras_files, tmp_path, ext, data):
    """Mutations of the Keras archive's structure: its config.json, or a truncated zip.

    Byte edits inside the HDF5 weights are not fuzzed here: libhdf5 itself can hang or crash on
    corrupt HDF5 internals before fastrnn sees anything (a known limitation, stated in the
    README); the truncation and zip-size checks around it are fastrnn's own."""
    from fastrnn.formats import keras as keras_format

    raw = keras_files[ext]
    if data.draw(st.booleans()):  # edit config.json inside a well-formed zip
        def edit(name, content):
            if name != "config.json":
                return content
            config = json.loads(content)
            data.draw(json_edit(config))
            return json.dumps(config).encode()
        mutated = rezip(raw, edit)
    else:  # a truncated archive: the zip directory is gone or points past the end
        mutated = raw[:data.draw(st.integers(0, len(raw) - 1))]
    path = tmp_path / f"fuzz.{ext}"
    path.write_bytes(mutated)
    try:
        model = keras_format.load(path)
    except ModelFormatError as exc:
        assert str(path) in str(exc)
        return
    check_loaded(model)
