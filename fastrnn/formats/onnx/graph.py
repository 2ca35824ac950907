"""Reading an ONNX file into plain Python: initializers as NumPy arrays, nodes with decoded
attributes, graph inputs/outputs with their declared types and shapes.

The ``onnx`` package parses the protobuf (parsing runs no code). Limits: the file must be a
regular file of at most MAX_MODEL_BYTES; tensors stored as external data are refused (fastrnn
reads one self-contained file); subgraphs (If/Loop/Scan) are not supported. Every problem raises
ModelFormatError naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ...errors import ModelFormatError, UnsupportedLayerError

MAX_MODEL_BYTES = 2 * 1024 ** 3  # protobuf's own limit for one message

# ONNX TensorProto data types -> NumPy (those an RNN model plausibly carries)
ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
TYPE_NAMES = {1: "float", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
              11: "double", 12: "uint32", 13: "uint64"}


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading .onnx files needs the onnx package: pip install onnx (or, in a fastrnn checkout, "
                          "pip install \".[onnx]\")") from None
    return onnx


@dataclass
class ValueInfo:
    """A graph input or output as onnxruntime reports it: name, shape (ints, symbolic names or
    None), type string such as 'tensor(float)'."""

    name: str
    shape: list
    type: str
    elem_type: int = 0

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


@dataclass
class Node:
    op_type: str
    name: str
    inputs: list  # names; "" = an omitted optional input
    outputs: list
    attrs: dict = field(default_factory=dict)
    domain: str = ""

    def where(self):
        return f"node {self.name or '(unnamed)'} ({self.op_type})"


@dataclass
class Graph:
    nodes: list
    initializers: dict  # name -> ndarray
    inputs: list  # ValueInfo of the inputs to feed (initializers excluded)
    outputs: list  # ValueInfo
    opset: int
    source: str


def _value_info(vi):
    t = vi.type.tensor_type
    shape = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
    return ValueInfo(vi.name, shape, f"tensor({TYPE_NAMES.get(t.elem_type, 'unknown')})", t.elem_type)


def tensor_to_array(t, source, base_dir=None):
    """A TensorProto -> ndarray. Tensors stored as external data (PyTorch 2.13's default exporter
    writes them beside the .onnx) are read from ``base_dir``, the model's folder; see
    read_external."""
    from onnx import numpy_helper

    if t.data_type not in ONNX_DTYPES:
        raise ModelFormatError(f"tensor {t.name!r} has unsupported data type {t.data_type}", source)
    if t.data_location == 1:  # EXTERNAL
        return read_external(t, source, base_dir)
    try:
        return np.array(numpy_helper.to_array(t))
    except Exception as exc:  # malformed tensor bytes of any kind
        raise ModelFormatError(f"tensor {t.name!r} cannot be decoded: {exc}", source) from None


def read_external(t, source, base_dir):
    """The bytes of an external-data tensor: ``location`` must be a relative path to a regular file
    inside the model's folder (no absolute path, no "..", no link leading out of the folder), and
    ``offset`` / ``length`` must lie inside that file and match the tensor's size. Nothing else on
    disk is ever read."""
    if base_dir is None:
        raise ModelFormatError(
            f"tensor {t.name!r} is stored as external data (a separate file beside the .onnx), which needs the "
            "model loaded from its path (not from bytes). Or export with torch.onnx.export(..., "
            "external_data=False), or re-save with onnx.save_model(onnx.load(path), path, "
            "save_as_external_data=False)", source)
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    where = f"tensor {t.name!r}: external data {location!r:.80}"
    parts = location.replace("\\", "/").split("/")
    if (not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts
            or ":" in parts[0]):
        raise ModelFormatError(f"{where}: the location must be a relative path inside the model's folder", source)
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise ModelFormatError(f"{where}: the location leads out of the model's folder (a link?); refused", source)
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelFormatError(f"{where}: offset and length must be integers", source) from None
    dtype = np.dtype(ONNX_DTYPES[t.data_type])
    count = 1
    for d in t.dims:
        if d < 0:
            raise ModelFormatError(f"{where}: negative dimension {d}", source)
        count *= int(d)
    need = count * dtype.itemsize
    if offset < 0 or (length is not None and length != need):
        raise ModelFormatError(f"{where}: length {length} / offset {offset} do not fit a tensor of {need} bytes",
                               source)
    from ..safetensors import open_regular_file

    try:
        f, size = open_regular_file(path)
    except (OSError, ModelFormatError) as exc:
        raise ModelFormatError(f"{where}: cannot be read ({exc})", source) from None
    with f:
        if offset + need > size:
            raise ModelFormatError(f"{where}: bytes {offset}..{offset + need} lie past the end of the "
                                   f"{size}-byte file", source)
        f.seek(offset)
        raw = f.read(need)
    if len(raw) != need:
        raise ModelFormatError(f"{where}: the file is shorter than it claims", source)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tuple(int(d) for d in t.dims))


def _attribute(a, source, base_dir=None):
    from onnx import AttributeProto

    k = a.type
    if k == AttributeProto.FLOAT:
        return float(a.f)
    if k == AttributeProto.INT:
        return int(a.i)
    if k == AttributeProto.STRING:
        return a.s.decode("utf-8", "replace")
    if k == AttributeProto.FLOATS:
        return [float(v) for v in a.floats]
    if k == AttributeProto.INTS:
        return [int(v) for v in a.ints]
    if k == AttributeProto.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if k == AttributeProto.TENSOR:
        return tensor_to_array(a.t, source, base_dir)
    raise UnsupportedLayerError(f"attribute {a.name!r} of type {k} (subgraphs and sparse tensors are not "
                                "supported)", source)


def read_model_proto(path_or_bytes):
    """-> (ModelProto, source name). Bounded read; garbage raises ModelFormatError."""
    onnx = import_onnx()
    from google.protobuf.message import DecodeError

    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        from ..safetensors import open_regular_file

        source = os.fspath(path_or_bytes)
        f, size = open_regular_file(source)
        with f:
            if size > MAX_MODEL_BYTES:
                raise ModelFormatError(f"file of {size:,} bytes is larger than an ONNX model can be "
                                       f"({MAX_MODEL_BYTES:,})", source)
            data = f.read(size + 1)
    if not data:
        raise ModelFormatError("file is empty", source)
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelFormatError(f"not an ONNX model (protobuf parse failed: {exc})", source) from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelFormatError("not an ONNX model (no graph with nodes)", source)
    return proto, source


# onnxruntime's quantized operators (domain com.microsoft) that fastrnn reads (translate.py, ops.py)
MICROSOFT_OPS = frozenset({"DynamicQuantizeLSTM", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                           "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger"})


def parse(path_or_bytes) -> Graph:
    proto, source = read_model_proto(path_or_bytes)
    opset = 0
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    g = proto.graph
    base_dir = None if source == "<bytes>" else os.path.dirname(os.path.abspath(source))
    inits = {t.name: tensor_to_array(t, source, base_dir) for t in g.initializer}
    nodes = []
    for i, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx") and not (n.domain == "com.microsoft" and n.op_type in MICROSOFT_OPS):
            raise UnsupportedLayerError(f"node {n.name or i} ({n.op_type}) is in domain {n.domain!r}; "
                                        "fastrnn runs standard ONNX operators and onnxruntime's quantized "
                                        f"operators ({', '.join(sorted(MICROSOFT_OPS))}) only", source)
        nodes.append(Node(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input), list(n.output),
                          {a.name: _attribute(a, source, base_dir) for a in n.attribute}, n.domain))
    inputs = [_value_info(v) for v in g.input if v.name not in inits]
    outputs = [_value_info(v) for v in g.output]
    return Graph(_toposort(nodes, set(inits) | {v.name for v in inputs}, source), inits, inputs, outputs, opset,
                 source)


def _toposort(nodes, available, source):
    """Nodes in an order where every input is produced before use (ONNX requires it, but files
    in the wild break the rule; check). Kahn's algorithm: linear in nodes + edges, and nodes keep
    their file order wherever they are free to."""
    import heapq

    available = set(available) | {""}
    producer = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o:
                producer.setdefault(o, i)
    waiting = [0] * len(nodes)
    readers = {}
    for i, n in enumerate(nodes):
        for name in set(n.inputs):
            if name in available:
                continue
            j = producer.get(name)
            if j is None:
                raise ModelFormatError(f"{n.where()} uses values no node produces: {[name]}", source)
            waiting[i] += 1
            readers.setdefault(j, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for r in readers.get(i, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(ordered) != len(nodes):
        stuck = [nodes[i] for i, w in enumerate(waiting) if w > 0]
        raise ModelFormatError(f"{stuck[0].where()} is part of a cycle: its inputs depend on its own outputs", source)
    return ordered
