"""A small, defensive reader and writer of the safetensors format (no third-party package).

File layout: 8-byte little-endian header length N, N bytes of JSON header, then the raw tensor
bytes. The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
relative to the end of the header) and may carry "__metadata__": {str: str}.

Every number in the header is checked against the real file size before anything is allocated,
so a hostile header can neither make us allocate without bound nor read out of bounds.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..errors import ModelFormatError

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}
DTYPE_NAMES = {np.dtype(v).str: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a header (JSON) larger than this is refused
MAX_DIMS = 8
ALIGN = 64


def write(path, tensors: dict, metadata: dict | None = None):
    """Write ``tensors`` (name -> array) and string ``metadata`` to ``path`` (atomically)."""
    header = {}
    blobs = []
    offset = 0
    # No gaps between tensors (the format forbids them); wider dtypes first keeps every tensor
    # aligned to its item size, as the data section itself starts 64-byte aligned.
    items = sorted(tensors.items(), key=lambda kv: -np.asarray(kv[1]).dtype.itemsize)
    for name, arr in items:
        arr = np.ascontiguousarray(arr)
        key = DTYPE_NAMES.get(arr.dtype.newbyteorder("<").str if arr.dtype.byteorder == ">" else arr.dtype.str)
        if key is None:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        data = arr.tobytes()
        header[name] = {"dtype": key, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-(8 + len(raw))) % ALIGN)  # data starts aligned
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read(path, mmap: bool = True):
    """Read a safetensors file. Returns (tensors: dict name -> read-only ndarray, metadata: dict).

    With ``mmap=True`` the tensors are read-only views of a memory map of the file (no copy)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError("file is too short to be a safetensors file (empty or truncated)", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise ModelFormatError(
                    f"header claims {n} bytes but the file has {size - 8} after the length field "
                    "(truncated or not a safetensors file)", path)
            raw = f.read(n)
    except OSError as exc:
        raise ModelFormatError(f"cannot read file: {exc.strerror or exc}", path) from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"header is not valid JSON ({exc.__class__.__name__})", path) from None
    if not isinstance(header, dict):
        raise ModelFormatError("header is not a JSON object", path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError("__metadata__ must map strings to strings", path)
    data_start = 8 + n
    data_len = size - data_start
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise ModelFormatError(f"tensor {name!r}: entry is not an object", path)
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModelFormatError(f"tensor {name!r}: unsupported dtype {info.get('dtype')!r}", path)
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ModelFormatError(f"tensor {name!r}: bad shape {shape!r}", path)
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ModelFormatError(f"tensor {name!r}: bad data_offsets {offs!r}", path)
        begin, end = offs
        count = 1
        for s in shape:
            count *= s
        nbytes = count * np.dtype(dtype).itemsize
        if not (0 <= begin <= end <= data_len):
            raise ModelFormatError(
                f"tensor {name!r}: data_offsets {offs} fall outside the {data_len} data bytes of the file "
                "(truncated file or corrupt header)", path)
        if end - begin != nbytes:
            raise ModelFormatError(
                f"tensor {name!r}: shape {shape} of {info['dtype']} needs {nbytes} bytes, offsets give {end - begin}",
                path)
        spans.append((begin, end, name, dtype, tuple(shape)))
    spans.sort()
    for (b0, e0, n0, *_), (b1, e1, n1, *_) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ModelFormatError(f"tensors {n0!r} and {n1!r} overlap", path)
    tensors = {}
    if mmap and data_len > 0:
        buf = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,))
    else:
        with open(path, "rb") as f:
            f.seek(data_start)
            buf = np.frombuffer(f.read(data_len), dtype=np.uint8)
    for begin, end, name, dtype, shape in spans:
        raw_arr = buf[begin:end]
        if begin % np.dtype(dtype).itemsize:
            raw_arr = raw_arr.copy()  # unaligned data: copy once so kernels see aligned memory
        arr = raw_arr.view(np.dtype(dtype).newbyteorder("<")).reshape(shape)
        arr = arr.view()
        arr.flags.writeable = False
        tensors[name] = arr
    return tensors, metadata
