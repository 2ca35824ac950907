"""What the loaders still let through (issue 24), each probe rebuilt from files made here by the
real frameworks (h5py / Keras, torch, onnx) or written byte by byte where no framework would.

Every case ends in a clear error naming the input and the fix, or in the result the source
framework gives; never a crash, a hang or an allocation sized by the file."""
import io
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import ModelFormatError
from fastrnn.formats import safetensors
from fastrnn.formats.torch import MAX_PICKLE_BYTES, read_state_dict
from helpers import random_recurrent

QUICK = 20  # seconds: a refusal that takes longer than this is a hang (it takes well under 1 s idle)


def run_python(script, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=os.path.dirname(os.path.abspath(__file__)),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


# -- PyTorch pickles ----------------------------------------------------------------------------
def torch_archive(path, pkl):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", b"little")
    return path


def deep_tuple_key(depth):
    """{((((1,),),)...): 2}: the key is built by `depth` TUPLE1 opcodes, then hashed by SETITEM."""
    return b"\x80\x02}K\x01" + b"\x85" * depth + b"K\x02s."


def legacy_file(path, pkl):
    """A legacy (non-zip) torch.save file: magic, protocol, sys_info pickles, then ``pkl``."""
    from fastrnn.formats.torch import LEGACY_MAGIC, LEGACY_PROTOCOL

    head = b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                                                          {"little_endian": True, "protocol_version": 1001}))
    path.write_bytes(head + pkl + pickle.dumps([], protocol=2))
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_a_dict_key_nested_a_million_deep_is_refused_not_a_crash(tmp_path, legacy):
    """Hashing a tuple recurses in C without a depth check: the depth is bounded as each tuple is built."""
    path = tmp_path / "deep.pt"
    (legacy_file if legacy else torch_archive)(path, deep_tuple_key(1_000_000))
    out = run_python("""
        import sys, fastrnn
        from fastrnn.formats.torch import read_state_dict
        try:
            read_state_dict(sys.argv[1])
        except fastrnn.ModelFormatError as exc:
            print(exc)
    """, path)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert "nests containers more than 32 deep" in out.stdout and "deep.pt" in out.stdout, out.stdout
    # and the CLI says the same in one line
    cli = run_python("import sys; from fastrnn.cli import main; sys.exit(main())", "convert", path,
                     tmp_path / "out.safetensors", "--cell", "lstm")
    assert cli.returncode == 2 and "nests containers" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr


def test_many_views_of_one_storage_are_bounded_by_the_pickle_size(tmp_path):
    """60,000 names viewing one 8 MB storage (memo references): refused at once by the size of
    the pickle (the pure-Python unpickler reads ~1 MB/s), with the limit and the fix named."""
    import torch

    t = torch.zeros(2 * 1024 * 1024)
    torch.save({f"k{i}": t[i:i + 1] for i in range(60_000)}, tmp_path / "views.pt")
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match=r"views\.pt.*over the 4 MiB limit.*model\.state_dict\(\)"):
        read_state_dict(tmp_path / "views.pt")
    assert time.monotonic() - t0 < QUICK
    # the same in the legacy format, whose pickle is not an archive entry with a size
    torch.save({f"k{i}": t[i:i + 1] for i in range(60_000)}, tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match=r"legacy\.pt.*over the 4 MiB limit"):
        read_state_dict(tmp_path / "legacy.pt")
    assert time.monotonic() - t0 < QUICK
    # a few thousand tensors (far more than a recurrent model has) still load, in either format
    small = {f"layer{i}.weight": t[i:i + 3] for i in range(3000)}
    for legacy in (False, True):
        torch.save(small, tmp_path / "ok.pt", _use_new_zipfile_serialization=not legacy)
        got = read_state_dict(tmp_path / "ok.pt")
        assert len(got) == 3000 and got["layer7.weight"].shape == (3,)


def test_memo_references_are_charged_while_unpickling(tmp_path):
    """One memoized 200,000-item list referenced again and again (BINGET, 2 bytes each): refused
    while unpickling, before anything walks the copies."""
    big = b"(" + b"K\x01" * 200_000 + b"lq\x01"
    pkl = b"\x80\x02}" + big + b"0(" + b"h\x01" * 100_000 + b"t."
    assert len(pkl) < MAX_PICKLE_BYTES
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match="memo amplification"):
        read_state_dict(torch_archive(tmp_path / "memo.pt", pkl))
    assert time.monotonic() - t0 < QUICK


# -- file sniffing and the header limit ---------------------------------------------------------
def small_model(seed=0):
    rng = np.random.default_rng(seed)
    emb = fastrnn.Embedding(rng.standard_normal((10, 3)).astype(np.float32), name="emb")
    lstm = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, name="lstm")
    return fastrnn.Model([emb, lstm], name="small")


def save_with_reference_writer(path, tensors, metadata, low_byte=0x80):
    """Write with the safetensors package (another writer: 8-byte padding, not fastrnn's 64),
    padding the metadata until the header length's low byte is ``low_byte``."""
    from safetensors.numpy import save_file

    for pad in range(0, 600):
        save_file(tensors, path, metadata={**metadata, "pad": "x" * pad})
        with open(path, "rb") as f:
            head = f.read(9)
        if head[0] == low_byte:
            assert head[8:9] == b"{"
            return path
    raise AssertionError("no padding gave the wanted header length")


def test_safetensors_from_another_writer_is_not_taken_for_a_pickle(tmp_path):
    """The header length's low byte is 0x80 (a pickle's first byte) in ~1 file in 32 from writers
    that pad to 8 bytes: the safetensors structure is tested first."""
    model = small_model()
    fastrnn.save(model, tmp_path / "m.safetensors")
    tensors, meta = safetensors.read(tmp_path / "m.safetensors", mmap=False)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    path = save_with_reference_writer(str(tmp_path / "other.safetensors"), tensors, meta)
    x = np.arange(12).reshape(2, 6) % 10
    np.testing.assert_array_equal(fastrnn.load(path).predict(x), model.predict(x))
    # a plain (non-fastrnn) safetensors file with that byte: the safetensors advice, not PyTorch's
    plain = save_with_reference_writer(str(tmp_path / "weights.safetensors"), {"w": np.ones((2, 2), np.float32)}, {})
    with pytest.raises(ModelFormatError, match="weights.safetensors: safetensors file without fastrnn metadata"):
        fastrnn.load(plain)
    # the same files under a PyTorch name are still read as safetensors (the content decides)
    os.replace(path, tmp_path / "other.pt")
    np.testing.assert_array_equal(fastrnn.load(tmp_path / "other.pt").predict(x), model.predict(x))
    # and real PyTorch files are still recognised, in both formats
    import torch

    for legacy in (False, True):
        torch.save({"w": torch.ones(2)}, tmp_path / "t.pt", _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ModelFormatError, match="a PyTorch file holds weights but no architecture"):
            fastrnn.load(tmp_path / "t.pt")


def test_header_just_over_the_limit_names_the_limit(tmp_path):
    n = safetensors.MAX_HEADER_BYTES + 8
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + b"{" + b" " * (n - 2) + b"}")
    for call in (lambda: safetensors.read(path), lambda: fastrnn.load(path)):
        with pytest.raises(ModelFormatError, match=r"big\.safetensors: header is \d+ bytes, over fastrnn's limit "
                                                   r"of 64 MiB"):
            call()
    # a header claiming more than the file holds is still called truncated
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ModelFormatError, match="truncated"):
        fastrnn.load(path)


# -- Keras architectures ----------------------------------------------------------------------------
def keras_two_dense(name_a="d1", name_b="d2"):
    import keras

    rng = np.random.default_rng(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name=name_a), keras.layers.Dense(3, name=name_b)])
    for layer in model.layers:
        layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def renamed(arch_json, old_names, new):
    arch = json.loads(arch_json)
    for lc in arch["config"]["layers"]:
        if lc["config"].get("name") in old_names:
            lc["config"]["name"] = new
            if "name" in lc:
                lc["name"] = new
    return arch


def legacy_weights_h5(path, groups):
    """A Keras 2 ``save_weights("w.h5")`` file written with h5py: [(group name, [(weight name, array)])]."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([g.encode() for g, _ in groups])
        f.attrs["keras_version"] = b"2.4.0"
        f.attrs["backend"] = b"tensorflow"
        for gname, weights in groups:
            g = f.create_group(gname)
            g.attrs["weight_names"] = np.array([n.encode() for n, _ in weights] if weights else [], dtype="S64")
            for n, a in weights:
                g.create_dataset(n, data=a)
    return path


def test_duplicate_layer_names_in_an_architecture_are_refused_as_keras_does(tmp_path):
    """Two Dense(3) named "d" (weight groups dense_a, dense_b): both read dense_b before; Keras
    refuses the architecture, so does fastrnn, for every kind of file and every form of the JSON."""
    import keras

    model = keras_two_dense()
    arch = renamed(model.to_json(), ("d1", "d2"), "d")
    with pytest.raises(ValueError, match="unique"):
        keras.models.model_from_json(json.dumps(arch))  # what Keras says
    (a_k, a_b), (b_k, b_b) = (layer.get_weights() for layer in model.layers)
    path = legacy_weights_h5(tmp_path / "w.h5", [("dense_a", [("dense_a/kernel:0", a_k), ("dense_a/bias:0", a_b)]),
                                                 ("dense_b", [("dense_b/kernel:0", b_k), ("dense_b/bias:0", b_b)])])
    (tmp_path / "model.json").write_text(json.dumps(arch))
    want = r"w\.h5: the Sequential model has two layers named 'd' \(Dense and Dense\); Keras requires unique layer " \
           r"names .* rename one of them"
    for form in (arch, json.dumps(arch), str(tmp_path / "model.json")):
        for by_name in (False, True):
            with pytest.raises(ModelFormatError, match=want):
                fastrnn.load(path, architecture=form, by_name=by_name)
    # Keras 3 .weights.h5, and a Functional architecture
    model.save_weights(tmp_path / "k3.weights.h5")
    with pytest.raises(ModelFormatError, match="two layers named 'd'"):
        fastrnn.load(tmp_path / "k3.weights.h5", architecture=arch)
    inp = keras.Input((4,), name="x")
    functional = keras.Model(inp, keras.layers.Dense(2, name="e2")(keras.layers.Dense(3, name="e1")(inp)))
    farch = renamed(functional.to_json(), ("e1", "e2"), "e")
    with pytest.raises(ModelFormatError, match="the Functional model has two layers named 'e'"):
        fastrnn.load(path, architecture=farch)
    # the same file with the real names still loads, in order, and matches Keras
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    got = fastrnn.load(path, architecture=model.to_json()).predict(x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-4, rtol=1e-4)


def test_keras1_merge_with_a_non_integer_axis_names_the_layer(tmp_path):
    arch = {"class_name": "Model", "keras_version": "1.2.2", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "in", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 5, 4], "input_dtype": "float32", "name": "in"}},
        {"class_name": "Merge", "name": "merge_1", "inbound_nodes": [[["in", 0, 0], ["in", 0, 0]]],
         "config": {"name": "merge_1", "mode": "concat", "concat_axis": "x"}}],
        "input_layers": [["in", 0, 0]], "output_layers": [["merge_1", 0, 0]]}}
    path = legacy_weights_h5(tmp_path / "w.h5", [("in", []), ("merge_1", [])])
    with pytest.raises(ModelFormatError, match=r"w\.h5: layer 'merge_1' \(Merge\): concat_axis is 'x', not an "
                                               r"integer: give concat_axis as an integer"):
        fastrnn.load(path, architecture=arch)
    arch["config"]["layers"][1]["config"]["concat_axis"] = -1
    x = np.ones((1, 5, 4), np.float32)
    assert fastrnn.load(path, architecture=arch).predict(x).shape == (1, 5, 8)


# -- JSON nested too deeply, and other specs a user cannot fix from the error -----------------------
DEEP = 100_000
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


KERAS_TOP = '{"class_name": "Sequential", "config": {"layers": [%s]}}'
TORCH_TOP = '{"format": "fastrnn-torch-architecture", "layers": [{"module": "LSTM", "prefix": "rnn.", "x": %s}]}'


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_deeply_nested_architecture_json_names_the_limit(tmp_path, kind):
    """The architecture of a weights-only file as text, file, dict and on the command line: one
    ModelFormatError naming the nesting limit, never a bare RecursionError."""
    import torch

    if kind == "keras":
        weights = legacy_weights_h5(tmp_path / "w.h5", [("d", [("d/kernel:0", np.ones((2, 2), np.float32))])])
        top = KERAS_TOP
    else:
        torch.save(torch.nn.LSTM(2, 3).state_dict(prefix="rnn."), tmp_path / "w.pt")
        weights, top = tmp_path / "w.pt", TORCH_TOP
    text = top % ('{"a": ' * DEEP + "1" + "}" * DEEP)
    (tmp_path / "deep.json").write_text(text)
    d = inner = {}
    for _ in range(DEEP):
        inner["a"] = {}
        inner = inner["a"]
    as_dict = json.loads(top % "1")
    if kind == "keras":
        as_dict["config"]["layers"][0] = d
    else:
        as_dict["layers"][0]["x"] = d
    looped = json.loads(top % "{}")
    looped_inner = looped["config"]["layers"][0] if kind == "keras" else looped["layers"][0]["x"]
    looped_inner["self"] = looped  # a dict that contains itself
    for form in (text, str(tmp_path / "deep.json"), as_dict, looped):
        with pytest.raises(ModelFormatError, match="nested more than 256 levels deep"):
            fastrnn.load(weights, architecture=form)
    cli = run_python("import sys; from fastrnn.cli import main; sys.exit(main())", "convert", weights,
                     tmp_path / "out.safetensors", "--architecture", tmp_path / "deep.json")
    assert cli.returncode == 2 and "nested more than 256 levels deep" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr and not (tmp_path / "out.safetensors").exists()


def test_deeply_nested_tokenizer_names_the_limit(tmp_path):
    """A Keras 2 tokenizer.json (real, from the fixtures) whose word_index string nests deeply, and a
    tokenizer JSON nested deeply as a whole."""
    from fastrnn.formats.tokenizers import read_keras_tokenizer

    with open(os.path.join(FIXTURES, "keras2_tokenizer", "word_pre.json"), encoding="utf-8") as f:
        tok = json.load(f)
    assert len(read_keras_tokenizer(tok)) > 10  # the real file reads
    tok["config"]["word_index"] = '{"a": ' * DEEP + "1" + "}" * DEEP
    (tmp_path / "tok.json").write_text(json.dumps(tok))
    for form in (tok, json.dumps(tok), str(tmp_path / "tok.json")):
        with pytest.raises(ModelFormatError, match="word_index is nested more than 256 levels deep"):
            read_keras_tokenizer(form)
    (tmp_path / "deep_tok.json").write_text('{"class_name": "Tokenizer", "config": ' + '[' * DEEP + ']' * DEEP + '}')
    with pytest.raises(ModelFormatError, match=r"deep_tok\.json: tokenizer is nested more than 256 levels deep"):
        read_keras_tokenizer(str(tmp_path / "deep_tok.json"))


def test_architecture_module_that_is_not_a_string(tmp_path):
    import torch

    torch.save(torch.nn.LSTM(2, 3).state_dict(prefix="rnn."), tmp_path / "w.pt")
    spec = {"format": "fastrnn-torch-architecture", "layers": [{"module": ["LSTM"], "prefix": "rnn."}]}
    with pytest.raises(ModelFormatError, match=r"architecture layer 0: 'module' must be the name of a torch module "
                                               r"as a string .* got \['LSTM'\]"):
        fastrnn.load(tmp_path / "w.pt", architecture=spec)
    spec["layers"][0]["module"] = "LSTM"
    lstm = torch.nn.LSTM(2, 3, batch_first=True)
    lstm.load_state_dict({k[4:]: v for k, v in torch.load(tmp_path / "w.pt").items()})
    x = np.random.default_rng(0).standard_normal((2, 5, 2)).astype(np.float32)
    with torch.no_grad():
        want = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(fastrnn.load(tmp_path / "w.pt", architecture=spec).predict(x), want, atol=1e-4,
                               rtol=1e-4)


# -- torch.export: the forward's conditions on the batch and time sizes -----------------------------
def guarded_module(condition):
    import torch
    from torch import nn

    class Guarded(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.rnn, self.fc = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            y, _ = self.rnn(x)
            y = torch.tanh(y) if condition(x.shape) else torch.sigmoid(y)
            return self.fc(y)

    return Guarded().eval()


@pytest.mark.parametrize("condition, ok, refused, words", [
    (lambda s: s[1] > 4, [(2, 8), (1, 5), (3, 40)], [(2, 3), (2, 4)], "axis 1 \\(its time axis\\).*valid for sizes "
                                                                        "at least 5 there"),
    (lambda s: s[1] == 8, [(2, 8), (5, 8)], [(2, 3), (2, 9)], "axis 1 .* valid for sizes exactly 8 there"),
    (lambda s: s[0] < 10, [(2, 8), (9, 3), (1, 2)], [(10, 8), (12, 8)], "1[02] on axis 0 \\(its batch axis\\).* at "
                                                                          "most 9 there"),
    (lambda s: True, [(2, 8), (1, 1), (7, 30)], [], None),
])
def test_torch_export_guards_on_batch_and_time_are_enforced(tmp_path, condition, ok, refused, words):
    """The issue's probe: `if x.shape[1] > 4: tanh else sigmoid` captured at T=8 ran the tanh branch
    at T=3 (0.66 off). Now sizes inside the recorded range match torch, the others are refused
    (also after a native save and load)."""
    import torch

    module = guarded_module(condition)
    model = fastrnn.from_torch(module, example_inputs=(torch.randn(2, 8, 3),))
    fastrnn.save(model, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    for m in (model, fastrnn.load(tmp_path / "m.safetensors")):
        for B, T in ok:
            x = rng.standard_normal((B, T, 3)).astype(np.float32)
            with torch.no_grad():
                want = module(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(m.predict(x), want, atol=1e-4, rtol=1e-4)
        for B, T in refused:
            x = rng.standard_normal((B, T, 3)).astype(np.float32)
            with pytest.raises(ValueError, match=f"x: input 'x' has size .*{words}.*capture the module again"):
                m.predict(x)


# -- ONNX: quantization parameters and the LSTM clip ---------------------------------------------
def onnx_classifier(tmp_path, quantize=None, name="m"):
    """Embedding -> LSTM -> Linear exported by torch; with ``quantize`` ("QInt8" / "QUInt8") also
    quantized by onnxruntime's quantize_dynamic (DynamicQuantizeLSTM, the MatMulInteger head)."""
    import torch
    from onnxruntime import quantization

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.rnn, self.fc = torch.nn.Embedding(40, 16), torch.nn.LSTM(16, 24, batch_first=True), \
                torch.nn.Linear(24, 5)

        def forward(self, x):
            y, _ = self.rnn(self.emb(x))
            return self.fc(y[:, -1])

    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(Classifier().eval(), (torch.randint(0, 40, (1, 6)),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 1: "t"}})
    if quantize is None:
        return path
    out = tmp_path / f"{name}.{quantize}.onnx"
    quantization.quantize_dynamic(str(path), str(out), weight_type=getattr(quantization.QuantType, quantize))
    return out


def edited(path, out, initializers=None, node_attrs=None):
    """A copy of an ONNX file with initializers replaced ({name: array}) and node attributes set
    ({op_type: {attr: value}})."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name in (initializers or {}):
            t.CopyFrom(numpy_helper.from_array(np.asarray(initializers[t.name]), t.name))
    for node in model.graph.node:
        for attr, value in (node_attrs or {}).get(node.op_type, {}).items():
            for a in list(node.attribute):
                if a.name == attr:
                    node.attribute.remove(a)
            node.attribute.append(helper.make_attribute(attr, value))
    onnx.save(model, str(out))
    return out


def initializer_names(path, op_type, positions):
    import onnx

    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == op_type)
    return [node.input[i] for i in positions]


def refuses(call, words):
    with pytest.raises(ModelFormatError, match=words):
        call()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.01, 0.0])
def test_quantized_lstm_scale_that_is_not_finite_and_positive_is_refused(tmp_path, bad):
    """A quantize_dynamic file whose DynamicQuantizeLSTM R_scale is NaN loaded and gave finite
    garbage; every scale is now checked (the LSTM's, the head's Mul of the MatMulInteger pattern,
    the embedding's DequantizeLinear), by load, the session and `fastrnn convert`."""
    import fastrnn.onnx

    q = onnx_classifier(tmp_path, "QInt8")
    x = np.random.default_rng(0).integers(0, 40, (1, 7))
    good = fastrnn.load(str(q)).predict(x)
    assert np.all(np.isfinite(good))
    r_scale, = initializer_names(q, "DynamicQuantizeLSTM", [10])
    cases = {"R_scale": (r_scale, "DynamicQuantizeLSTM"), "the weight scale": ("fc.weight_Transposed_scale", "Mul"),
             "x_scale": ("emb.weight_scale", "DequantizeLinear")}
    for what, (name, op) in cases.items():
        shape = np.asarray(onnx_initializer(q, name)).shape
        bad_file = edited(q, tmp_path / "bad.onnx", {name: np.full(shape, bad, np.float32)})
        words = rf"bad\.onnx: node .* \({op}\): {what} holds .* finite number > 0"
        refuses(lambda: fastrnn.load(str(bad_file)), words)
        refuses(lambda: fastrnn.onnx.InferenceSession(str(bad_file)), words)
        cli = run_python("import sys; from fastrnn.cli import main; sys.exit(main())", "convert", bad_file,
                         tmp_path / "out.safetensors")
        assert cli.returncode == 2 and "finite number > 0" in cli.stderr and "Traceback" not in cli.stderr


def onnx_initializer(path, name):
    import onnx
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name == name)


def test_quantized_zero_point_type_must_match_its_weights(tmp_path):
    """int8 weights with a uint8 zero point: onnxruntime refuses the file; so does fastrnn now."""
    import onnxruntime as ort

    q = onnx_classifier(tmp_path, "QInt8")
    w_zero, = initializer_names(q, "DynamicQuantizeLSTM", [9])
    bad = edited(q, tmp_path / "bad.onnx", {w_zero: onnx_initializer(q, w_zero).astype(np.uint8)})
    with pytest.raises(Exception):
        ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    refuses(lambda: fastrnn.load(str(bad)), r"bad\.onnx: node .* \(DynamicQuantizeLSTM\): W_zero_point is uint8 but W "
                                            r"is int8; they must have the same integer type")
    bad = edited(q, tmp_path / "bad2.onnx",
                 {"fc.weight_Transposed_zero_point": onnx_initializer(q, "fc.weight_Transposed_zero_point")
                  .astype(np.uint8)})
    refuses(lambda: fastrnn.load(str(bad)), r"\(MatMulInteger\): b_zero_point is uint8 but B is int8")
    # the untouched files load, in both weight types, and match onnxruntime's int8 output closely
    for kind in ("QInt8", "QUInt8"):
        path = onnx_classifier(tmp_path, kind, name=kind)
        x = np.random.default_rng(1).integers(0, 40, (1, 9))
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(fastrnn.load(str(path)).predict(x), want, atol=0.03)


@pytest.mark.parametrize("clip, ok", [(np.nan, False), (-1.0, False), (0.0, False), (np.inf, True), (0.5, True)])
def test_onnx_lstm_clip_follows_onnxruntimes_rule_at_load(tmp_path, clip, ok):
    """clip NaN or <= 0: predict ran while `fastrnn convert` and onnxruntime refused; now one rule
    at load (onnxruntime's: clip > 0; +inf clips nothing), the same for load, session and convert,
    and an accepted clip computes what onnxruntime computes."""
    import fastrnn.onnx
    import onnxruntime as ort

    path = edited(onnx_classifier(tmp_path), tmp_path / "clip.onnx", node_attrs={"LSTM": {"clip": float(clip)}})
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's own refusal
        session = None
    assert (session is not None) == ok
    cli = run_python("import sys; from fastrnn.cli import main; sys.exit(main())", "convert", path,
                     tmp_path / "out.safetensors")
    if not ok:
        words = r"clip\.onnx: node .* \(LSTM\): clip must be a number > 0 .*\(onnxruntime refuses"
        refuses(lambda: fastrnn.load(str(path)), words)
        refuses(lambda: fastrnn.onnx.InferenceSession(str(path)), words)
        assert cli.returncode == 2 and "clip must be a number > 0" in cli.stderr
        return
    x = np.random.default_rng(2).integers(0, 40, (3, 8))
    want = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(fastrnn.load(str(path)).predict(x), want, atol=1e-4, rtol=1e-4)
    assert cli.returncode == 0, cli.stderr
    np.testing.assert_allclose(fastrnn.load(tmp_path / "out.safetensors").predict(x), want, atol=1e-4, rtol=1e-4)


def test_torch_export_model_guarded_on_length_does_not_generate():
    """Generation feeds one step at a time: a forward whose result depends on the length cannot be
    run so; an unguarded capture still generates."""
    import torch

    class LM(torch.nn.Module):
        def __init__(self, guard):
            super().__init__()
            torch.manual_seed(0)
            self.guard = guard
            self.emb, self.rnn, self.fc = torch.nn.Embedding(10, 4), torch.nn.GRU(4, 8, batch_first=True), \
                torch.nn.Linear(8, 10)

        def forward(self, x):
            y = self.rnn(self.emb(x))[0]
            return self.fc(torch.tanh(y) if self.guard and x.shape[1] > 4 else y)

    plain = fastrnn.from_torch(LM(False).eval(), example_inputs=(torch.randint(0, 10, (2, 8)),))
    assert "size_ranges" not in plain.metadata and len(plain.generate([1, 2, 3], max_new_tokens=5, seed=1)) == 5
    guarded = fastrnn.from_torch(LM(True).eval(), example_inputs=(torch.randint(0, 10, (2, 8)),))
    with pytest.raises(ValueError, match="depends on the length of its input .* cannot run one step at a time"):
        guarded.generate([1, 2, 3], max_new_tokens=5, seed=1)
