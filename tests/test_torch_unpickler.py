"""The allow-list of the restricted unpickler that reads PyTorch files (fastrnn.formats.torch,
issue 25): no global outside it is ever resolved or called, whatever the protocol or the container.

- The allow-list itself: every name of the modules a payload reaches for (builtins, os, posix,
  subprocess, importlib, pickle, operator, functools, torch, torch._utils, fastrnn's own reader,
  ...) plus the spellings that exist only elsewhere (``__builtin__``, ``nt``, Python 2's
  ``commands``) is refused with an error naming ``module.name``, except exactly the globals a
  state_dict needs (written out here, not read from fastrnn), which resolve to no callable that
  could run code.
- Payloads: a pickle calling each dangerous global with arguments that create a marker file when
  the call runs, written opcode by opcode at every protocol 0-5 (GLOBAL below protocol 4,
  STACK_GLOBAL and frames from 4), inside a real ``torch.save`` zip archive (as its data.pkl) and
  inside the legacy (non-zip) format (as the object's pickle and as a header pickle). Each load
  raises ModelFormatError naming the file and the global; the marker never appears; and a spy
  put in place of each reachable global records no call. A control unpickles every payload with
  Python's own pickle and sees the marker appear: the payloads do run when nothing stops them.
"""
import builtins
import importlib
import os
import pickle
import pickletools
import struct
import sys
import zipfile

import pytest
import torch

import fastrnn
from fastrnn.formats.torch import _StateDictUnpickler, read_state_dict

MARK = "pwned"  # the marker files' names start with it; no other argument in these tests contains it
TRAP = "fastrnn_trap_module_25"  # a module whose import writes the marker


# -- pickles written opcode by opcode ----------------------------------------------------------
class G:
    """A global, as a payload names it."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """REDUCE: func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args


def encode(obj, protocol) -> bytes:
    """A pickle of ``obj`` (G / Call / str / bytes / int / tuple / dict) in ``protocol``'s opcodes: GLOBAL
    ('c module\\nname\\n') below protocol 4, STACK_GLOBAL of two strings and a FRAME from 4, as
    Python's pickler writes them."""

    def enc(o):
        if isinstance(o, G):
            if protocol >= 4:
                return enc(o.module) + enc(o.name) + pickle.STACK_GLOBAL
            return pickle.GLOBAL + o.module.encode() + b"\n" + o.name.encode() + b"\n"
        if isinstance(o, Call):
            return enc(o.func) + enc(tuple(o.args)) + pickle.REDUCE
        if isinstance(o, str):
            if protocol == 0:
                escaped = o.replace("\\", "\\u005c").replace("\n", "\\u000a")
                return pickle.UNICODE + escaped.encode("raw-unicode-escape") + b"\n"
            raw = o.encode("utf-8")
            if protocol >= 4 and len(raw) < 256:
                return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
            return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
        if isinstance(o, bytes):  # BINBYTES (protocol 3) at any protocol: the unpickler takes it
            return pickle.BINBYTES + struct.pack("<I", len(o)) + o
        if isinstance(o, bool) or not isinstance(o, (int, tuple, list, dict)):
            raise TypeError(o)
        if isinstance(o, int):
            return pickle.INT + str(o).encode() + b"\n"
        if isinstance(o, (tuple, list)):
            return pickle.MARK + b"".join(enc(x) for x in o) + (pickle.TUPLE if isinstance(o, tuple) else pickle.LIST)
        return pickle.MARK + b"".join(enc(k) + enc(v) for k, v in o.items()) + pickle.DICT

    body = enc(obj) + pickle.STOP
    if protocol >= 4:
        body = pickle.FRAME + struct.pack("<Q", len(body)) + body
    data = (pickle.PROTO + bytes([protocol]) if protocol >= 2 else b"") + body
    ops = {op.name for op, _, _ in pickletools.genops(data)}  # well formed, with the protocol's global opcode
    assert ("STACK_GLOBAL" in ops) == (protocol >= 4 and "GLOBAL" not in ops)
    return data


# -- the payloads ------------------------------------------------------------------------------
def write_marker_code(marker):
    return f"open({str(marker)!r}, 'w').close()"


def getattr_chain(module, marker):
    """getattr alone is enough: an allowed function's __globals__ hold __builtins__, which hold exec.
    (The only other global named is torch._utils._rebuild_parameter, which the allow-list has.)"""
    ga = G(module, "getattr")
    globals_ = Call(ga, G("torch._utils", "_rebuild_parameter"), "__globals__")
    builtins_ = Call(Call(ga, globals_, "get"), "__builtins__")
    exec_ = Call(Call(ga, builtins_, "get"), "exec")
    return Call(exec_, write_marker_code(marker))


def simple(name, args):
    return lambda module, marker: Call(G(module, name), *args(marker))


BUILTIN_PAYLOADS = {  # name -> payload(module, marker); every call but compile's writes the marker
    "eval": simple("eval", lambda m: (write_marker_code(m),)),
    "exec": simple("exec", lambda m: (write_marker_code(m),)),
    "compile": simple("compile", lambda m: (write_marker_code(m), f"<{MARK}>", "exec")),
    "open": simple("open", lambda m: (str(m), "w")),
    "__import__": simple("__import__", lambda m: (TRAP,)),
    "getattr": getattr_chain,
}
OTHER_PAYLOADS = {  # (module, name) -> args(marker) of a call that writes the marker
    ("os", "system"): lambda m: (f"touch {m}",),
    ("posix", "system"): lambda m: (f"touch {m}",),
    ("nt", "system"): lambda m: (f"touch {m}",),
    ("os", "popen"): lambda m: (f"touch {m}",),
    ("subprocess", "call"): lambda m: (["touch", str(m)],),
    ("subprocess", "run"): lambda m: (["touch", str(m)],),
    ("subprocess", "check_call"): lambda m: (["touch", str(m)],),
    ("subprocess", "check_output"): lambda m: (["touch", str(m)],),
    ("subprocess", "getoutput"): lambda m: (f"touch {m}",),
    ("subprocess", "getstatusoutput"): lambda m: (f"touch {m}",),
    ("subprocess", "Popen"): lambda m: (["touch", str(m)],),
    ("commands", "getoutput"): lambda m: (f"touch {m}",),  # Python 2's subprocess
    ("importlib", "import_module"): lambda m: (TRAP,),
    ("pickle", "loads"): lambda m: (pickle.dumps(RunsCode(m), protocol=0),),
}
PAYLOADS = {**{(mod, name): p for mod in ("builtins", "__builtin__") for name, p in BUILTIN_PAYLOADS.items()},
            **{key: simple(key[1], args) for key, args in OTHER_PAYLOADS.items()}}
NO_EFFECT_OF_ITS_OWN = {"compile"}  # compiling writes nothing: the spy and the error show it was never called


class RunsCode:
    """What an attacker pickles with Python's pickler (the control for pickle.loads)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (write_marker_code(self.marker),))


def payload_pickle(key, marker, protocol):
    """A state_dict-shaped pickle whose only value is the payload's call."""
    return encode({"rnn.weight_ih_l0": PAYLOADS[key](key[0], marker)}, protocol)


# -- containers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_archive(tmp_path_factory):
    """The entries of a real torch.save zip archive: {name: bytes}, in order."""
    path = tmp_path_factory.mktemp("real") / "real.pt"
    torch.save({"rnn.weight_ih_l0": torch.zeros(4, 3)}, path)
    with zipfile.ZipFile(path) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    assert sum(name.endswith("/data.pkl") for name in entries) == 1 and any("/data/" in n for n in entries)
    return entries


def zip_file(path, entries, data_pkl):
    """The real archive with its data.pkl replaced (entries stored, as torch.save writes them)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data_pkl if name.endswith("/data.pkl") else data)
    return path


LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch/serialization.py


def legacy_file(path, evil, where):
    """The legacy torch.save layout: pickles of the magic number, the protocol version, sys_info,
    then the object, then the storage keys (here none), all protocol 2 as torch writes them; the
    payload replaces the object's pickle or the sys_info pickle."""
    sys_info = pickle.dumps({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    obj = pickle.dumps({}, protocol=2)
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(LEGACY_PROTOCOL, protocol=2),
             evil if where == "sys_info" else sys_info, evil if where == "object" else obj,
             pickle.dumps([], protocol=2)]
    path.write_bytes(b"".join(parts))
    return path


CONTAINERS = ["zip data.pkl", "legacy object", "legacy sys_info"]


def container(tmp_path, kind, evil, entries):
    if kind == "zip data.pkl":
        return zip_file(tmp_path / "evil.pt", entries, evil)
    return legacy_file(tmp_path / "evil.pt", evil, kind.split()[1])


# -- spies and the trap module --------------------------------------------------------------------
@pytest.fixture
def trap(tmp_path, monkeypatch):
    """The marker path, with TRAP importable: importing it writes the marker."""
    marker = tmp_path / f"{MARK}-marker"
    (tmp_path / f"{TRAP}.py").write_text(f"{write_marker_code(marker)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop(TRAP, None)


def _mentions_marker(value):
    """Whether a string argument (or one inside a list / tuple) names the marker. No repr():
    the spy may stand in for getattr, which repr() of most objects calls."""
    if isinstance(value, (str, bytes)):
        return MARK in (value if isinstance(value, str) else value.decode("latin-1"))
    if isinstance(value, (tuple, list)):
        return any(_mentions_marker(v) for v in value)
    return False


def spy_on(monkeypatch, key, calls):
    """Replace global ``key`` (where it exists here) by a function that records any call whose
    arguments mention the marker and otherwise passes the call through (fastrnn's own open()
    of the file, Python's own imports)."""
    module_name, name = key
    try:
        module = builtins if module_name in ("builtins", "__builtin__") else importlib.import_module(module_name)
    except ImportError:
        return
    real = getattr(module, name, None)
    if real is None:
        return

    def spy(*args, **kwargs):
        if _mentions_marker(args) or _mentions_marker(tuple(kwargs.values())):
            calls.append(key)
            raise RuntimeError(f"{module_name}.{name} was called")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", CONTAINERS)
@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("key", list(PAYLOADS), ids=[f"{m}.{n}" for m, n in PAYLOADS])
def test_no_payload_global_is_resolved_or_called(tmp_path, trap, torch_archive, key, protocol, kind):
    evil = payload_pickle(key, trap, protocol)
    path = container(tmp_path, kind, evil, torch_archive)
    calls = []
    with pytest.MonkeyPatch.context() as spies:
        spy_on(spies, key, calls)
        with pytest.raises(fastrnn.ModelFormatError) as info:
            read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and f"{key[0]}.{key[1]}" in message and "refused" in message, message
    assert calls == [], f"{key[0]}.{key[1]} was called"
    assert not trap.exists(), f"{key[0]}.{key[1]} ran"
    assert TRAP not in sys.modules


def control_loads(data):
    """Python's own unpickler, which resolves any global (the payloads' control)."""
    return pickle.loads(data)


def _importable(module):
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


# Python's pickle maps Python 2's __builtin__ to builtins below protocol 3 only; nt and commands
# do not exist here: those payloads have no control on this machine.
CONTROLS = [(key, protocol) for key in PAYLOADS if key[1] not in NO_EFFECT_OF_ITS_OWN for protocol in range(6)
            if _importable("builtins" if key[0] == "__builtin__" and protocol < 3 else key[0])]


@pytest.mark.parametrize("key,protocol", CONTROLS, ids=[f"{m}.{n}-{p}" for (m, n), p in CONTROLS])
def test_control_the_payloads_run_when_nothing_stops_them(tmp_path, trap, key, protocol):
    """The same payloads, unpickled by Python's pickle: the marker appears (so the test above
    would see a payload that got through)."""
    result = control_loads(payload_pickle(key, trap, protocol))["rnn.weight_ih_l0"]
    if hasattr(result, "wait"):  # subprocess.Popen
        result.wait()
    if hasattr(result, "close"):  # open() / os.popen
        result.close()
    assert trap.exists()


# The globals a state_dict needs, from torch's own pickles (torch/_utils.py, torch/storage.py):
ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter")}
TORCH_TYPE_NAMES = {  # torch.<Storage> and torch.<dtype>: resolved to data, never to something callable
    "FloatStorage", "DoubleStorage", "HalfStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage",
    "ByteStorage", "BoolStorage", "float32", "float", "float64", "double", "float16", "half", "int64", "long",
    "int32", "int", "int16", "int8", "uint8", "bool"}
UNIVERSE_MODULES = ["builtins", "os", "posix", "subprocess", "sys", "importlib", "runpy", "code", "codeop", "pickle",
                    "_pickle", "marshal", "types", "operator", "functools", "shutil", "pty", "socket", "ctypes",
                    "copyreg", "io", "collections", "numpy", "torch", "torch._utils", "torch.serialization",
                    "torch.storage", "torch._tensor", "fastrnn.formats.torch"]
ELSEWHERE = [("__builtin__", n) for n in ("eval", "exec", "execfile", "getattr", "__import__", "compile", "open",
                                          "file", "apply", "input", "reload")] + [
    ("nt", "system"), ("nt", "popen"), ("commands", "getoutput"), ("commands", "getstatusoutput"),
    ("torch", "load"), ("torch._utils", "_rebuild_from_type_v2"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("collections", "namedtuple")]


def universe():
    for module in UNIVERSE_MODULES:
        names = dir(importlib.import_module(module))
        yield from ((module, name) for name in names if "\n" not in name)
    yield from ELSEWHERE


def resolve(module, name, protocol):
    """Load a pickle that only names the global (no call): what the allow-list hands back."""
    data = encode(G(module, name), protocol)
    return _StateDictUnpickler(data, None, "", len(data), "payload.pkl").load()


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL
def test_the_allow_list_is_exactly_what_a_state_dict_needs(protocol):
    refused, allowed = 0, set()
    for module, name in universe():
        if (module, name) in ALLOWED or (module == "torch" and name in TORCH_TYPE_NAMES):
            got = resolve(module, name, protocol)
            allowed.add((module, name))
            if module == "torch":
                assert not callable(got), f"torch.{name} resolves to a callable {got!r}"
            continue
        with pytest.raises(fastrnn.ModelFormatError) as info:
            resolve(module, name, protocol)
        assert f"{module}.{name}" in str(info.value) and "refused" in str(info.value)
        refused += 1
    assert allowed == ALLOWED | {("torch", n) for n in TORCH_TYPE_NAMES if hasattr(torch, n)}
    assert refused > 3000  # the whole of builtins, os, subprocess, torch, ... was tried


def test_a_real_state_dict_still_loads_through_the_allow_list(tmp_path):
    """The allowed globals do their job (so the refusals above are not a reader that refuses all)."""
    sd = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.nn.Parameter(torch.ones(3))}
    for legacy in (False, True):
        path = tmp_path / f"ok{legacy}.pt"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        got = read_state_dict(path)
        assert sorted(got) == ["b", "w"] and got["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def globals_named(data):
    """[(opcode, module, name)] of every global a pickle names, read with pickletools (no unpickling)."""
    out, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            out.append(("GLOBAL", *arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            out.append(("STACK_GLOBAL", strings[-2], strings[-1]))
        elif isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
    return out


class _System:
    def __reduce__(self):
        return (os.system, ("x",))


@pytest.mark.parametrize("protocol", range(6))
def test_encoder_names_globals_as_pythons_pickler_does(protocol):
    """encode() names a global with the opcode Python's pickler uses at that protocol (so the
    payloads hold what an attacker's pickle.dumps would write)."""
    real = globals_named(pickle.dumps(_System(), protocol=protocol))
    assert real == [("GLOBAL" if protocol < 4 else "STACK_GLOBAL", os.system.__module__, "system")]
    assert globals_named(encode(Call(G(os.system.__module__, "system"), "x"), protocol)) == real
