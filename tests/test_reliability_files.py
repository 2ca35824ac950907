"""Model files from strangers fail safe and clearly.

Every malformed, hostile or mismatched file raises fastrnn.ModelFormatError (a ValueError) whose
message names the file and the problem: never a raw KeyError / struct.error / JSON error, a crash,
a hang, an allocation sized by a number in the file, or code from the file being run.

Decisions tested here:
- The format is recognised from the file's first bytes, not its extension: a native file named
  ``model.onnx`` or ``model.pt`` loads; a PyTorch archive named ``model.safetensors`` gets the
  PyTorch advice. The extension only decides for ONNX, which has no signature.
- A missing file is FileNotFoundError (an OSError, like open()); directories, pipes and devices
  are ModelFormatError, refused before they are read (a FIFO would block forever).
- "No allocation sized by the file" is checked with tracemalloc (peak under LOW_PEAK bytes while
  reading a file that claims gigabytes) and once in a subprocess under RLIMIT_AS.
"""
import contextlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn import ModelFormatError
from fastrnn.cli import main as cli_main
from fastrnn.formats import safetensors
from fastrnn.formats.torch import from_state_dict, read_state_dict
from helpers import random_recurrent

LOW_PEAK = 16 * 1024 * 1024  # bytes: far below every size the hostile files below claim


# -- helpers ---------------------------------------------------------------------------------
def small_model(seed=0):
    """Embedding(10, 3) -> LSTM(3 -> 4) -> Dense(4 -> 10) with a vocabulary: a ~2 KB file."""
    rng = np.random.default_rng(seed)
    emb = fastrnn.Embedding(rng.standard_normal((10, 3)).astype(np.float32), name="emb")
    lstm = random_recurrent(rng, "lstm", input_size=3, hidden_size=4, name="lstm")
    dense = fastrnn.Dense(rng.standard_normal((10, 4)).astype(np.float32), np.zeros(10, np.float32), "softmax",
                          name="head")
    return fastrnn.Model([emb, lstm, dense], vocabulary=fastrnn.Vocabulary(list("abcdefghij")), name="small")


@pytest.fixture
def native_file(tmp_path):
    path = tmp_path / "small.safetensors"
    fastrnn.save(small_model(), path)
    return path


def parts(path):
    """(tensors, metadata, architecture) of a native file, all editable."""
    tensors, meta = safetensors.read(path, mmap=False)
    return {k: np.array(v) for k, v in tensors.items()}, dict(meta), json.loads(meta["model"])


def write_parts(path, tensors, meta, spec=None):
    meta = dict(meta)
    if spec is not None:
        meta["model"] = json.dumps(spec)
    safetensors.write(path, tensors, meta)
    return path


def raw_safetensors(path, header, data=b""):
    """A safetensors file with an arbitrary header (dict -> JSON, or raw bytes) and data bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def expect_error(path, *words, load=fastrnn.load):
    """``load(path)`` raises ModelFormatError naming ``path`` and containing every word."""
    with pytest.raises(ModelFormatError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message, f"the file is not named in: {message}"
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    return message


def run_python(script, *args, cwd, timeout=120):
    """Run ``script`` in a fresh interpreter that imports this fastrnn (same sys.path; cwd away
    from the source tree, whose fastrnn/ has no compiled kernels)."""
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@contextlib.contextmanager
def no_hang(seconds):
    """Fail (instead of blocking the test run) if the body takes longer than ``seconds``."""
    def fail(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def small_allocation(limit=LOW_PEAK):
    """The body allocates (through Python or NumPy) at most ``limit`` bytes at any moment."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak allocation {peak / 2**20:.0f} MiB while reading a hostile file"


# -- truncated, random, empty, not a file --------------------------------------------------
def test_every_truncated_prefix_is_a_clear_error(native_file, tmp_path):
    data = native_file.read_bytes()
    assert len(data) < 4096  # every prefix, cheaply
    cut = tmp_path / "cut.safetensors"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        expect_error(cut)


@pytest.mark.parametrize("suffix", [".safetensors", "", ".bin", ".pt", ".model"])
def test_random_bytes_are_a_clear_error(tmp_path, suffix):
    rng = np.random.default_rng(len(suffix))
    path = tmp_path / f"random{suffix}"
    for size in [1, 7, 8, 9, 64, 1000, 5000]:
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        expect_error(path)
        # the same behind a plausible header length and an opening brace: the JSON parser's turn
        body = b"{" + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path.write_bytes(struct.pack("<Q", len(body)) + body)
        expect_error(path)


@pytest.mark.parametrize("name", ["empty.safetensors", "empty", "empty.pt", "empty.bin"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    expect_error(path, "empty")
    expect_error(path, "empty", load=safetensors.read)
    expect_error(path, "empty", load=read_state_dict)


def test_directory_is_refused(tmp_path):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    for load in (fastrnn.load, safetensors.read, read_state_dict):
        expect_error(folder, "directory", load=load)


def test_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with no_hang(10):
        for load in (fastrnn.load, safetensors.read, read_state_dict):
            expect_error(fifo, "regular file", load=load)


def test_device_is_refused():
    expect_error("/dev/zero", "regular file")


def test_missing_file_is_file_not_found(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        fastrnn.load(path)


# -- wrong extensions: the content decides ---------------------------------------------------
@pytest.mark.parametrize("name", ["m.onnx", "m.h5", "m.keras", "m.pt", "m.txt", "m"])
def test_native_file_under_another_extension_loads(native_file, tmp_path, name):
    renamed = tmp_path / name
    renamed.write_bytes(native_file.read_bytes())
    ids = np.array([[1, 2, 3], [4, 5, 0]])
    assert np.array_equal(fastrnn.load(renamed).predict(ids, backend="numpy"),
                          fastrnn.load(native_file).predict(ids, backend="numpy"))


def test_pytorch_archive_named_safetensors_gets_the_pytorch_advice(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.save(torch.nn.LSTM(3, 4).state_dict(), path)
    expect_error(path, "PyTorch", "fastrnn convert")
    legacy = tmp_path / "legacy.safetensors"
    legacy.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    expect_error(legacy, "PyTorch")


def test_other_zip_archive_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    expect_error(path, "zip")


# -- headers that claim enormous sizes ---------------------------------------------------------
F32 = {"dtype": "F32"}
HOSTILE_HEADERS = {
    "header length 2**64-1": struct.pack("<Q", 2**64 - 1) + b"{}",
    "header length 1 TiB": struct.pack("<Q", 2**40) + b"{}",
    "header length just under the cap": struct.pack("<Q", safetensors.MAX_HEADER_BYTES - 1) + b"{}",
    "huge shape, small offsets": {"w": {**F32, "shape": [2**31, 2**31], "data_offsets": [0, 16]}},
    "shape whose int64 product wraps to 0": {"w": {**F32, "shape": [2**32, 2**32], "data_offsets": [0, 0]}},
    "offsets past the end": {"w": {**F32, "shape": [2**28], "data_offsets": [0, 2**30]}},
    "negative offsets": {"w": {**F32, "shape": [4], "data_offsets": [-16, 0]}},
    "too many dimensions": {"w": {**F32, "shape": [1] * 100, "data_offsets": [0, 4]}},
    "unhashable dtype": {"w": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}},
    "integer of 5000 digits": b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}',
    "deeply nested JSON": b'{"w": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "overlapping tensors": {"a": {**F32, "shape": [4], "data_offsets": [0, 16]},
                            "b": {**F32, "shape": [4], "data_offsets": [8, 24]}},
    "metadata not strings": {"__metadata__": {"format": 1}},
}


def write_hostile(tmp_path, name, header):
    path = tmp_path / (name.replace(" ", "_").replace("*", "") + ".safetensors")
    if isinstance(header, bytes) and not header.startswith(b"{"):
        path.write_bytes(header + b"\0" * 64)  # the length field itself is the lie
    else:
        raw_safetensors(path, header, b"\0" * 32)
    return path


@pytest.mark.parametrize("name", list(HOSTILE_HEADERS))
def test_hostile_header_fails_before_allocating(tmp_path, name):
    path = write_hostile(tmp_path, name, HOSTILE_HEADERS[name])
    with small_allocation():
        expect_error(path)


def test_architecture_claiming_huge_sizes_allocates_nothing(native_file):
    tensors, meta, spec = parts(native_file)
    spec["layers"][1]["config"]["hidden_size"] = 2**40
    write_parts(native_file, tensors, meta, spec)
    with small_allocation():
        expect_error(native_file, "w_ih", "shape")


def test_hostile_files_under_an_address_space_limit(tmp_path):
    """The same hostile files (native and PyTorch) in a process whose address space may grow by
    only 256 MiB: any allocation sized by a claim in a file would raise MemoryError there."""
    paths = [write_hostile(tmp_path, name, header) for name, header in HOSTILE_HEADERS.items()]
    paths += [write_torch_archive(tmp_path / f"hostile{i}.pt", pkl, storages, **kw)
              for i, (pkl, storages, kw) in enumerate(hostile_torch_archives())]
    script = textwrap.dedent("""
        import resource, sys
        import fastrnn
        from fastrnn.formats.torch import read_state_dict
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
        for path in sys.argv[1:]:
            load = read_state_dict if path.endswith(".pt") else fastrnn.load
            try:
                load(path)
                print("LOADED", path)
            except fastrnn.ModelFormatError:
                print("ok", path)
            except BaseException as exc:
                print("BAD", type(exc).__name__, path)
    """)
    out = run_python(script, *paths, cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert len(lines) == len(paths) and all(line.startswith("ok ") for line in lines), out.stdout


# -- tensors that disagree with the architecture, bad values, unknown kinds, versions ----------
def _set(path_in_spec, value):
    def edit(tensors, meta, spec):
        node = spec
        for key in path_in_spec[:-1]:
            node = node[key]
        node[path_in_spec[-1]] = value
    return edit


def _del(path_in_spec):
    def edit(tensors, meta, spec):
        node = spec
        for key in path_in_spec[:-1]:
            node = node[key]
        del node[path_in_spec[-1]]
    return edit


def _tensor(name, value):
    def edit(tensors, meta, spec):
        tensors[name] = value(tensors[name]) if callable(value) else value
    return edit


def _drop_tensor(name):
    def edit(tensors, meta, spec):
        del tensors[name]
    return edit


def _poison(name, index, value):
    def edit(tensors, meta, spec):
        tensors[name][index] = value
    return edit


REC = ["layers", 1]
MISMATCHES = {
    "w_hh of the wrong shape": (_tensor("layers.1.d0.w_hh", np.zeros((16, 5), np.float32)), ["w_hh", "shape"]),
    "w_hh pointing at w_ih": (_set(REC + ["tensors", "d0.w_hh"], "layers.1.d0.w_ih"), ["w_hh", "shape"]),
    "w_hh not named": (_del(REC + ["tensors", "d0.w_hh"]), ["missing tensor", "d0.w_hh"]),
    "w_hh missing from the file": (_drop_tensor("layers.1.d0.w_hh"), ["layers.1.d0.w_hh", "not in the file"]),
    "hidden_size disagrees": (_set(REC + ["config", "hidden_size"], 5), ["w_ih", "shape"]),
    "dense input disagrees": (_tensor("layers.2.weight", np.zeros((10, 5), np.float32)), ["expects 5 features"]),
    "embedding smaller than vocabulary": (_tensor("layers.0.weight", np.zeros((4, 3), np.float32)), ["vocabulary"]),
    "float64 tensor": (_tensor("layers.1.d0.w_ih", lambda a: a.astype(np.float64)), ["dtype", "float32"]),
    "bias of the wrong length": (_tensor("layers.1.d0.b_ih", np.zeros(3, np.float32)), ["b_ih", "shape"]),
    "NaN in w_hh": (_poison("layers.1.d0.w_hh", (0, 0), np.nan), ["layers.1.d0.w_hh", "NaN"]),
    "Inf in the embedding": (_poison("layers.0.weight", (3, 1), np.inf), ["layers.0.weight", "infinite"]),
    "NaN in the dense bias": (_poison("layers.2.bias", 0, np.nan), ["layers.2.bias", "NaN"]),
    "unknown layer kind": (_set(["layers", 1, "kind"], "transformer_block"), ["unknown layer kind 'transformer_block'"]),
    "unknown cell": (_set(REC + ["config", "cell"], "transformer"), ["cell", "transformer"]),
    "unknown activation": (_set(REC + ["config", "activations"], ["gelu", "tanh", "tanh"]), ["gelu"]),
    "activation with NaN alpha": (_set(REC + ["config", "activations"], [["sigmoid", float("nan"), 0],
                                                                         "tanh", "tanh"]), ["finite"]),
    "activations not a list": (_set(REC + ["config", "activations"], "tanh"), ["activations"]),
    "hidden_size as text": (_set(REC + ["config", "hidden_size"], "4"), ["hidden_size"]),
    "hidden_size zero": (_set(REC + ["config", "hidden_size"], 0), ["hidden_size"]),
    "num_directions 3": (_set(REC + ["config", "num_directions"], 3), ["num_directions"]),
    "reverse as text": (_set(REC + ["config", "reverse"], "false"), ["reverse", "true or false"]),
    "clip as text": (_set(REC + ["config", "clip"], "abc"), ["clip"]),
    "clip NaN": (_set(REC + ["config", "clip"], float("nan")), ["clip"]),
    "clip negative": (_set(REC + ["config", "clip"], -1.0), ["clip"]),
    "merge mode unknown": (_set(REC + ["config", "merge_mode"], "max"), ["merge_mode"]),
    "dense activation unknown": (_set(["layers", 2, "config", "activation"], "gelu"), ["gelu"]),
    "mask_value NaN": (_set(["layers", 0], {"kind": "masking", "name": "m", "config": {"mask_value": float("nan")},
                                            "tensors": {}}), ["mask_value"]),
    "layer entry not an object": (_set(["layers", 1], ["recurrent"]), ["layer 1", "object"]),
    "tensors not a mapping": (_set(REC + ["tensors"], ["layers.1.d0.w_ih"]), ["tensors"]),
    "tensor name not a string": (_set(REC + ["tensors", "d0.w_ih"], 7), ["string"]),
    "config not an object": (_set(REC + ["config"], "lstm"), ["config", "object"]),
    "no layers": (_set(["layers"], []), ["layers"]),
    "layers not a list": (_set(["layers"], {"0": 1}), ["layers"]),
    "vocabulary tokens not a list": (_set(["vocabulary", "tokens"], 5), ["vocabulary", "tokens"]),
    "vocabulary unk out of range": (_set(["vocabulary", "unk"], 99), ["vocabulary", "unk"]),
    "vocabulary not an object": (_set(["vocabulary"], "abc"), ["vocabulary"]),
    "graph input shape nonsense": (_set(["graph", "inputs", 0, "shape"], [{"a": 1}]), ["shape"]),
    "graph input dtype unknown": (_set(["graph", "inputs", 0, "dtype"], "complex64"), ["dtype"]),
    "graph embedding reading floats": (_set(["graph", "inputs", 0, "dtype"], "float32"), ["Embedding", "int64"]),
    "graph missing": (_set(["graph"], None), ["graph"]),
    "graph node reads nothing known": (_set(["graph", "nodes", 1, "inputs"], [["nowhere", 0]]), ["nowhere"]),
    "graph node reads a missing output": (_set(["graph", "nodes", 1, "inputs"], [["emb", 3]]), ["emb", "output 3"]),
    "graph node of an unknown layer": (_set(["graph", "nodes", 1, "layer"], "ghost"), ["ghost", "not in 'layers'"]),
    "graph cycle": (_set(["graph", "nodes", 0, "inputs"], [["head", 0]]), ["cycle"]),
    "graph duplicate node": (_set(["graph", "nodes", 2, "name"], "emb"), ["emb", "twice"]),
    "graph output unknown": (_set(["graph", "outputs"], [["nope", 0]]), ["nope"]),
    "graph no outputs": (_set(["graph", "outputs"], []), ["output"]),
    "graph reference not a pair": (_set(["graph", "outputs"], ["out"]), ["tensor reference"]),
    "graph too many inputs to a node": (_set(["graph", "nodes", 2, "inputs"], [["lstm", 0], ["emb", 0]]),
                                        ["takes"]),
    "metadata not an object": (_set(["metadata"], [1, 2]), ["metadata"]),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_bad_architecture_or_tensors(native_file, case):
    edit, words = MISMATCHES[case]
    tensors, meta, spec = parts(native_file)
    edit(tensors, meta, spec)
    write_parts(native_file, tensors, meta, spec)
    expect_error(native_file, *words)


@pytest.mark.parametrize("meta_edit,words", [
    ({"format_version": "99"}, ["newer", "upgrade"]),
    ({"format_version": "3"}, ["newer"]),
    ({"format_version": "0"}, ["unsupported format_version 0"]),
    ({"format_version": "-1"}, ["format_version"]),
    ({"format_version": "1.0"}, ["format_version"]),
    ({"format_version": ""}, ["format_version"]),
    ({"format": "keras"}, ["fastrnn metadata"]),
    ({"model": "{not json"}, ["not valid JSON"]),
    ({"model": "[" * 100_000}, ["architecture"]),
    ({"model": "[]"}, ["architecture"]),
], ids=lambda v: str(v)[:40])
def test_versions_and_metadata(native_file, meta_edit, words):
    tensors, meta, _ = parts(native_file)
    meta.update(meta_edit)
    write_parts(native_file, tensors, meta)
    expect_error(native_file, *words)


def test_missing_architecture(native_file):
    tensors, meta, _ = parts(native_file)
    del meta["model"]
    write_parts(native_file, tensors, meta)
    expect_error(native_file, "architecture")


def test_valid_edits_still_load(native_file):
    """The edit helpers themselves do not break files (so the errors above come from the edits)."""
    tensors, meta, spec = parts(native_file)
    write_parts(native_file, tensors, meta, spec)
    assert fastrnn.load(native_file).count_params() == small_model().count_params()


# -- pickles: never run, never imported --------------------------------------------------------
class _WriteMarker:
    """Unpickling this runs exec(...), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _SystemMarker(_WriteMarker):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def zip_pickle(path, data, prefix="archive/"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}data.pkl", data)
        zf.writestr(f"{prefix}byteorder", "little")
    return path


@pytest.mark.parametrize("payload", [_WriteMarker, _SystemMarker])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_pickle_payload_in_a_pt_file_never_runs(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"rnn.weight_ih_l0": payload(marker)}, protocol=protocol)
    archive = zip_pickle(tmp_path / "evil.pt", evil)
    bare = tmp_path / "bare.pt"  # a bare pickle, no zip archive around it
    bare.write_bytes(evil)
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(archive.read_bytes())
    for path in (archive, bare):
        expect_error(path, load=read_state_dict)
    for path in (archive, bare, disguised):
        expect_error(path)
    assert cli_main(["convert", str(archive), str(tmp_path / "out.safetensors"), "--cell", "lstm"]) == 2
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_pickle_global_is_never_imported(tmp_path, monkeypatch):
    """Refusing a global must not import its module first (an import runs the module's code)."""
    marker = tmp_path / "imported"
    (tmp_path / "fastrnn_trap_module.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = b"\x80\x02cfastrnn_trap_module\nNet\n)\x81."  # fastrnn_trap_module.Net.__new__()
    expect_error(zip_pickle(tmp_path / "trap.pt", data), "fastrnn_trap_module.Net", load=read_state_dict)
    assert not marker.exists()
    assert "fastrnn_trap_module" not in sys.modules


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4)


@pytest.mark.parametrize("module", [torch.nn.LSTM(3, 4), TinyNet()], ids=["nn.LSTM", "custom module"])
def test_whole_module_pickle_gets_the_state_dict_advice(tmp_path, module):
    path = tmp_path / "whole.pt"
    torch.save(module, path)
    message = expect_error(path, "torch.save(model.state_dict(), path)", load=read_state_dict)
    assert type(module).__name__ in message  # names what was found
    expect_error(path, "fastrnn convert")  # fastrnn.load: a PyTorch file, convert it


# -- PyTorch state_dicts that disagree with the architecture -----------------------------------
def lstm_state_dict():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in torch.nn.LSTM(3, 4, num_layers=2).state_dict().items()}


@pytest.mark.parametrize("edit,cell,words", [
    (lambda sd: sd.update({"weight_hh_l1": torch.zeros(16, 5)}), "lstm", ["weight_hh_l1", "shape (16, 5)", "expected (16, 4)"]),
    (lambda sd: sd.pop("weight_hh_l1"), "lstm", ["missing parameter 'weight_hh_l1'"]),
    (lambda sd: sd["weight_ih_l0"].__setitem__((0, 0), float("nan")), "lstm", ["weight_ih_l0", "NaN"]),
    (lambda sd: sd.update({"weight_ih_l0": torch.zeros(15, 3)}), "lstm", ["weight_ih_l0", "multiple of 4"]),
    (lambda sd: sd.update({"weight_ih_l0": torch.zeros(16)}), "lstm", ["weight_ih_l0", "dimensions"]),
    (lambda sd: sd.update({"bias_ih_l0": torch.zeros(7)}), "lstm", ["bias_ih_l0", "shape"]),
    (lambda sd: None, "gru", ["weight_ih_l0"]),  # 16 rows: not 3 GRU gates
    (lambda sd: sd.update({"head.weight": torch.zeros(5, 7)}), "lstm", ["expects 7 features"]),
], ids=["w_hh shape", "missing w_hh", "NaN", "rows", "1-D", "bias", "wrong cell", "head"])
def test_state_dict_that_disagrees(tmp_path, edit, cell, words):
    sd = lstm_state_dict()
    edit(sd)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    expect_error(path, *words, load=lambda p: from_state_dict(read_state_dict(p), cell, source=str(p)))
    assert cli_main(["convert", str(path), str(tmp_path / "out.safetensors"), "--cell", cell]) == 2


# -- hand-made torch archives: lying sizes, aliasing, compression ------------------------------
class G:
    """A pickle GLOBAL."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """REDUCE: func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args


class PersId:
    def __init__(self, value):
        self.value = value


class Raw:
    def __init__(self, data):
        self.data = data


def encode(obj) -> bytes:
    """A protocol-2 pickle of a small tree of G / Call / PersId / Raw / tuples / dicts / scalars,
    written opcode by opcode so tests can say things no real pickler would."""
    if isinstance(obj, G):
        return b"c" + f"{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Call):
        return encode(obj.func) + encode(tuple(obj.args)) + b"R"
    if isinstance(obj, PersId):
        return encode(obj.value) + b"Q"
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, tuple):
        return b"(" + b"".join(encode(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(encode(v) for v in obj) + b"e" if obj else b"")
    if isinstance(obj, dict):
        return b"}" + (b"(" + b"".join(encode(k) + encode(v) for k, v in obj.items()) + b"u" if obj else b"")
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if isinstance(obj, str):
        raw = obj.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    if obj is None:
        return b"N"
    raise TypeError(type(obj))


def tensor(key, numel, size, stride, offset=0, storage="FloatStorage"):
    """What torch.save writes for one tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""
    return Call(G("torch._utils", "_rebuild_tensor_v2"),
                PersId(("storage", G("torch", storage), key, "cpu", numel)), offset, tuple(size), tuple(stride),
                False, Call(G("collections", "OrderedDict")))


def state_pickle(entries) -> bytes:
    return b"\x80\x02" + encode(entries) + b"."


def write_torch_archive(path, pkl, storages, byteorder=b"little", compress=zipfile.ZIP_STORED, patch=None):
    """A torch.save-like zip: archive/data.pkl, archive/byteorder, archive/data/<key>.
    ``patch``: (entry name, claimed size) written over the central directory's sizes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data, compress_type=compress)
    if patch is not None:
        name, claimed = patch
        raw = bytearray(path.read_bytes())
        at = raw.index(name.encode(), raw.index(b"PK\x01\x02")) - 46  # its central directory record
        assert raw[at:at + 4] == b"PK\x01\x02"
        raw[at + 20:at + 28] = struct.pack("<II", claimed, claimed)
        path.write_bytes(bytes(raw))
    return path


def f32(*values):
    return np.array(values, np.float32).tobytes()


def hostile_torch_archives():
    """(pickle, storages, options) of archives that lie about sizes; each must be refused cheaply."""
    one = {"0": f32(1.0)}
    return [
        # a stride-0 view claiming a billion elements of a one-element storage
        (state_pickle({"w": tensor("0", 1, [10**9], [0])}), one, {}),
        # the zip directory claims 1 GiB for a 16-byte storage, the pickle agrees
        (state_pickle({"w": tensor("0", 2**28, [4], [1])}), {"0": f32(1, 2, 3, 4)},
         {"patch": ("archive/data/0", 2**30)}),
        # BINBYTES8 claiming 8 GiB inside data.pkl (a size malloc grants without touching it)
        (state_pickle({"w": Raw(b"\x8e" + struct.pack("<Q", 2**33) + b"abc")}), one, {}),
        # BINUNICODE8 claiming 8 GiB
        (state_pickle({"w": Raw(b"\x8d" + struct.pack("<Q", 2**33) + b"abc")}), one, {}),
        # BYTEARRAY8 claiming 8 GiB (a pure-Python unpickler zero-fills it before reading)
        (state_pickle({"w": Raw(b"\x96" + struct.pack("<Q", 2**33) + b"abc")}), one, {}),
        # a thousand full-size views of one 1 MiB storage
        (state_pickle({f"w{i}": tensor("0", 2**18, [2**18], [1]) for i in range(1000)}),
         {"0": bytes(2**20)}, {}),
    ]


def test_crafted_archive_baseline_reads(tmp_path):
    """The hand-made archive format is right: a well-formed one reads (so refusals below are real)."""
    pkl = state_pickle({"w": tensor("0", 6, [2, 3], [3, 1]), "b": tensor("1", 2, [2], [1]),
                        "t": tensor("0", 6, [3, 2], [1, 3])})
    path = write_torch_archive(tmp_path / "ok.pt", pkl, {"0": f32(0, 1, 2, 3, 4, 5), "1": f32(7, 8)})
    sd = read_state_dict(path)
    assert np.array_equal(sd["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(sd["t"], sd["w"].T)
    assert np.array_equal(sd["b"], [7, 8])


@pytest.mark.parametrize("index", range(len(hostile_torch_archives())))
def test_torch_archive_lying_about_sizes(tmp_path, index):
    pkl, storages, options = hostile_torch_archives()[index]
    path = write_torch_archive(tmp_path / "lie.pt", pkl, storages, **options)
    with small_allocation():
        expect_error(path, load=read_state_dict)


@pytest.mark.parametrize("pkl,storages,options,words", [
    (state_pickle({"w": tensor("0", 4, [4], [1])}), {"0": f32(1, 2, 3)}, {}, ["12 bytes", "claims 16"]),
    (state_pickle({"w": tensor("9", 1, [1], [1])}), {"0": f32(1)}, {}, ["missing"]),
    (state_pickle({"w": tensor("0", 2, [2], [5])}), {"0": f32(1, 2)}, {}, ["past its storage"]),
    (state_pickle({"w": tensor("0", 1, [1], [1], offset=-1)}), {"0": f32(1)}, {}, ["malformed tensor"]),
    (state_pickle({"w": tensor("0", 4, [4], [1])}), {"0": f32(1, 2, 3, 4)}, {"compress": zipfile.ZIP_DEFLATED},
     ["compressed"]),
    (state_pickle({"w": tensor("0", 1, [1], [1])}), {"0": f32(1)}, {"byteorder": b"big"}, ["byte order"]),
    (state_pickle({"w": Call(G("torch._utils", "_rebuild_tensor_v2"), "storage?", 0, (1,), (1,))}), {}, {},
     ["without storage"]),
    (state_pickle({"w": PersId(("storage", "FloatStorage", "0", "cpu", 1))}), {"0": f32(1)}, {}, ["storage record"]),
    (state_pickle({"w": PersId("not a storage")}), {}, {}, ["persistent"]),
    (state_pickle([1, 2]), {}, {}, ["list", "not a state_dict"]),
    (state_pickle({"model": {"w": 1}}), {}, {}, ["not a tensor", "checkpoint"]),
    (state_pickle({"w": Raw(b"}" + encode({"x": 1}) + b"b")}), {}, {}, ["state of an object"]),  # BUILD on a dict
    (b"\x80\x02}q\x00(X\x01\x00\x00\x00w", {}, {}, ["corrupt"]),  # truncated pickle
    (b"\x80\x02\xff.", {}, {}, ["corrupt"]),  # unknown opcode
    (state_pickle({"w": Call(G("collections", "OrderedDict"), 5)}), {}, {}, ["corrupt"]),
], ids=["numel", "missing storage", "stride", "offset", "deflate", "big endian", "no storage", "dtype",
        "persid", "list", "checkpoint", "build", "truncated", "opcode", "ordered dict args"])
def test_torch_archive_malformed(tmp_path, pkl, storages, options, words):
    path = write_torch_archive(tmp_path / "bad.pt", pkl, storages, **options)
    expect_error(path, *words, load=read_state_dict)


# -- Keras archives: the same rule for the zip directory ---------------------------------------
def test_keras_archive_lying_about_sizes(tmp_path):
    """A .keras archive whose zip directory claims 1 GiB for a 100-byte entry, and one whose
    config.json inflates 1000x (48 MiB from ~50 KiB): refused before allocating that much."""
    lying = tmp_path / "lying.keras"
    with zipfile.ZipFile(lying, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(100))
    raw = bytearray(lying.read_bytes())
    at = raw.index(b"model.weights.h5", raw.index(b"PK\x01\x02")) - 46  # its central directory record
    raw[at + 20:at + 28] = struct.pack("<II", 2**30, 2**30)
    lying.write_bytes(bytes(raw))
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b" " * (48 * 2**20))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(100))
    for path in (lying, bomb):
        with small_allocation():
            expect_error(path)
