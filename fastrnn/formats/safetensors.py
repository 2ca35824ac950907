"""A small, defensive reader and writer of the safetensors format (no third-party package).

File layout: 8-byte little-endian header length N, N bytes of JSON header, then the raw tensor
bytes. The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
relative to the end of the header) and may carry "__metadata__": {str: str}.

Every number in the header is checked against the real file size before anything is allocated,
so a hostile header can neither make us allocate without bound nor read out of bounds.
"""
from __future__ import annotations

import errno
import json
import os
import stat
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
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "cannot write a model file over a directory", path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for b in blobs:
                f.write(b)
        os.replace(tmp, path)
    except BaseException:  # a failed write (disk full, interrupted, a directory in the way) leaves nothing
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_regular_file(path):
    """Open ``path`` for binary reading if it is a regular file; returns (file, size in bytes).

    Directories, pipes, sockets and devices are refused with ModelFormatError naming the file
    (opening a FIFO for reading would block until a writer appears). The file is opened
    non-blocking first and checked with fstat, so the check and the read see the same file.
    A missing file raises FileNotFoundError."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such model file", path) from None
    except IsADirectoryError:
        raise ModelFormatError("is a directory, not a model file", path) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot open file: {exc.strerror or exc}", path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ModelFormatError("is a directory, not a model file", path)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFormatError("is not a regular file (a pipe, socket or device); fastrnn reads model files only",
                                   path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read(path, mmap: bool = True):
    """Read a safetensors file. Returns (tensors: dict name -> read-only ndarray, metadata: dict).

    With ``mmap=True`` the tensors are read-only views of a memory map of the file (no copy).
    Raises ModelFormatError naming the file for anything that is not a well-formed safetensors
    file, before allocating anything whose size comes from the file."""
    path = os.fspath(path)
    f, size = open_regular_file(path)
    with f:
        try:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError(
                    "file is empty" if size == 0 else
                    f"file is too short ({size} bytes) to be a safetensors file (truncated)", path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ModelFormatError(
                    f"header claims {n} bytes but the file has {size - 8} after the length field "
                    "(truncated or not a safetensors file)", path)
            if n > MAX_HEADER_BYTES:
                raise ModelFormatError(
                    f"header is {n} bytes, over fastrnn's limit of {MAX_HEADER_BYTES // 2**20} MiB "
                    f"({MAX_HEADER_BYTES} bytes) for the JSON header; a model's header is a few KB to a few MB: "
                    "store large data as tensors, not in the header or its metadata", path)
            raw = f.read(n)
            if len(raw) != n:
                raise ModelFormatError("file shrank while being read", path)
        except OSError as exc:
            raise ModelFormatError(f"cannot read file: {exc.strerror or exc}", path) from None
        header = _parse_header(raw, path)
        metadata = header.pop("__metadata__", None)
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ModelFormatError("__metadata__ must map strings to strings", path)
        data_start = 8 + n
        data_len = size - data_start
        spans = [_check_entry(name, info, data_len, path) for name, info in header.items()]
        spans.sort()
        for (b0, e0, n0, *_), (b1, e1, n1, *_) in zip(spans, spans[1:]):
            if b1 < e0:
                raise ModelFormatError(f"tensors {n0!r} and {n1!r} overlap", path)
        # The data section is mapped or read from the file object opened above (not the path
        # again), so the sizes checked are the sizes of the bytes used.
        try:
            if mmap and data_len > 0:
                buf = np.memmap(f, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,))
            else:
                f.seek(data_start)
                data = f.read(data_len)
                if len(data) != data_len:
                    raise ModelFormatError("file shrank while being read", path)
                buf = np.frombuffer(data, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            if isinstance(exc, ModelFormatError):
                raise
            raise ModelFormatError(f"cannot read the tensor data: {exc}", path) from None
    tensors = {}
    for begin, end, name, dtype, shape in spans:
        raw_arr = buf[begin:end]
        if raw_arr.ctypes.data % dtype.itemsize:
            raw_arr = raw_arr.copy()  # unaligned data: copy once so kernels see aligned memory
        arr = raw_arr.view(dtype.newbyteorder("<")).reshape(shape)
        arr = arr.view()
        arr.flags.writeable = False
        tensors[name] = arr
    return tensors, metadata


def _parse_header(raw, path):
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelFormatError("header is not UTF-8 text (not a safetensors file)", path) from None
    except RecursionError:
        raise ModelFormatError("header JSON is nested too deeply", path) from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ModelFormatError(f"header is not valid JSON ({exc})", path) from None
    if not isinstance(header, dict):
        raise ModelFormatError("header is not a JSON object", path)
    return header


def _check_entry(name, info, data_len, path):
    """Validate one tensor entry against the data section; returns (begin, end, name, dtype, shape)."""
    if not isinstance(info, dict):
        raise ModelFormatError(f"tensor {name!r}: entry is not an object", path)
    dtype_name = info.get("dtype")
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise ModelFormatError(f"tensor {name!r}: unsupported dtype {dtype_name!r:.40}", path)
    dtype = np.dtype(dtype)
    shape = info.get("shape")
    offs = info.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(s) for s in shape):
        raise ModelFormatError(f"tensor {name!r}: bad shape {shape!r:.80} (at most {MAX_DIMS} sizes >= 0)", path)
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_count(o) for o in offs):
        raise ModelFormatError(f"tensor {name!r}: bad data_offsets {offs!r:.80}", path)
    begin, end = offs
    if not begin <= end <= data_len:
        raise ModelFormatError(
            f"tensor {name!r}: data_offsets {offs} fall outside the {data_len} data bytes of the file "
            "(truncated file or corrupt header)", path)
    count = 1
    for s in shape:
        count *= s  # exact (Python int): a hostile shape cannot overflow into a small size
    nbytes = count * dtype.itemsize
    if end - begin != nbytes:
        raise ModelFormatError(
            f"tensor {name!r}: shape {shape} of {dtype_name} needs {nbytes} bytes, offsets give {end - begin}", path)
    return begin, end, name, dtype, tuple(shape)
