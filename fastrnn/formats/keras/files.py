"""The Keras file containers, below everything else of the importer: the HDF5 magic and h5py
import, the members of a ``.keras`` zip read with their claimed sizes checked, the refusal of
HDF5 data kept outside the file (external links, external storage, virtual datasets), datasets
read as float32, the attributes of legacy files, and the guard that turns a low-level parsing
error into a ModelFormatError naming the file."""
from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from ...errors import ModelFormatError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError, EOFError,
                NotImplementedError, zipfile.BadZipFile, zlib.error, RecursionError, UnicodeDecodeError)


def _guarded(path, fn):
    """Run ``fn(path)``; turn any low-level parsing error into a ModelFormatError naming the file."""
    try:
        return fn(path)
    except ModelFormatError:
        raise
    except _READ_ERRORS as exc:
        raise ModelFormatError(f"cannot read Keras model: {exc.__class__.__name__}: {exc}", path) from None


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is the keras extra
        raise ImportError("reading Keras files needs h5py: pip install h5py (or, in a fastrnn checkout, "
                          "pip install \".[keras]\")") from exc
    return h5py


MAX_JSON_MEMBER_BYTES = 64 * 1024 * 1024
MAX_EXPANSION = 100  # Keras itself refuses archives expanding more than this


def _read_member(zf, name, path) -> bytes:
    """Read one archive member, checking the sizes its directory claims against the real file
    before anything is allocated (a hostile archive cannot make us allocate without bound)."""
    info = zf.getinfo(name)
    archive_size = os.path.getsize(path)
    if info.header_offset + info.compress_size > archive_size:
        raise ModelFormatError(f"{name}: the archive claims more bytes than the file holds (truncated?)", path)
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * MAX_EXPANSION
    if info.file_size > max(limit, 1024):
        raise ModelFormatError(f"{name}: claims {info.file_size} bytes from {info.compress_size} stored", path)
    if name.endswith(".json") and info.file_size > MAX_JSON_MEMBER_BYTES:
        raise ModelFormatError(f"{name} is implausibly large ({info.file_size} bytes)", path)
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ModelFormatError(f"{name}: content size differs from the archive directory", path)
    return data


def _attr_str(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _attr_list(group, name):
    """A list-of-names attribute of a legacy file (Keras splits one too long for an HDF5 object
    header into ``name0``, ``name1``, ...)."""
    if name in group.attrs:
        return [_attr_str(n) for n in np.atleast_1d(group.attrs[name])]
    out, k = [], 0
    while f"{name}{k}" in group.attrs:
        out += [_attr_str(n) for n in np.atleast_1d(group.attrs[f"{name}{k}"])]
        k += 1
    return out


def _refuse_external(h5, source):
    """HDF5 can make a dataset's bytes come from other files: external links (a link to an object
    in another file), external storage (raw data in named files) and virtual datasets (mapped
    from other files). A model file must hold its own weights: refuse all three, naming them,
    before anything is read (no link is followed to check)."""
    import h5py

    problems = []

    def link(name, lnk):
        if isinstance(lnk, h5py.ExternalLink):
            problems.append(f"{name!r} is an external link to {lnk.filename!r}")
        return None if len(problems) < 5 else True

    def obj(name, item):
        if isinstance(item, h5py.Dataset):
            if item.external:
                problems.append(f"dataset {name!r} keeps its data in external files {[e[0] for e in item.external]!r:.120}")
            elif item.is_virtual:
                problems.append(f"dataset {name!r} is a virtual dataset (mapped from other files)")
        return None if len(problems) < 5 else True

    h5.visititems_links(link)
    if not problems:
        h5.visititems(obj)
    if problems:
        raise ModelFormatError("the file refers to data outside itself, which fastrnn never reads: "
                               + "; ".join(problems), source)


def _read_dataset(ds, source):
    if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
        raise ModelFormatError(f"{getattr(ds, 'name', ds)!s} is not a dataset", source)
    if not (np.issubdtype(ds.dtype, np.floating) or np.issubdtype(ds.dtype, np.integer)):
        raise ModelFormatError(f"{ds.name}: weights of dtype {ds.dtype} are not supported", source)
    return np.asarray(ds[()], dtype=np.float32)
