"""HDF5 features that make h5py read other files (issue 15): external links, external storage and
virtual datasets inside a Keras file are refused with an error naming them, before any weight is
read; the other file is never opened for its data."""
import io
import os
import zipfile

import h5py
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
from conftest import require  # noqa: E402

keras = require("keras")

import fastrnn  # noqa: E402


@pytest.fixture
def keras_files(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, name="gru"), keras.layers.Dense(2, name="d")])
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")  # legacy full-model HDF5
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["w"] = np.full((3, 12), 7.0, np.float32)
    (tmp_path / "raw.bin").write_bytes(np.full(48, 9.0, np.float32).tobytes())
    return tmp_path


def _first_dataset(h5):
    found = []
    h5.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and not found else None)
    return found[0]


@pytest.mark.parametrize("kind,words", [("external link", "external link"), ("external storage", "external files"),
                                        ("virtual", "virtual dataset")])
def test_legacy_h5_pointing_outside_is_refused(keras_files, kind, words):
    path = keras_files / "m.h5"
    with h5py.File(path, "r+") as h5:
        name = _first_dataset(h5["model_weights"])
        full = "model_weights/" + name
        shape, dtype = h5[full].shape, h5[full].dtype
        del h5[full]
        if kind == "external link":
            h5[full] = h5py.ExternalLink(str(keras_files / "secret.h5"), "w")
        elif kind == "external storage":
            h5.create_dataset(full, shape=shape, dtype=dtype,
                              external=[(str(keras_files / "raw.bin"), 0, int(np.prod(shape)) * 4)])
        else:
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(str(keras_files / "secret.h5"), "w", shape=(3, 12))[:shape[0], :shape[1]] \
                if len(shape) == 2 else h5py.VirtualSource(str(keras_files / "secret.h5"), "w", shape=(3, 12))[0, :shape[0]]
            h5.create_virtual_dataset(full, layout)
    with pytest.raises(fastrnn.ModelFormatError, match=words):
        fastrnn.load(path)


def test_keras_archive_with_external_link_is_refused(keras_files):
    src = keras_files / "m.keras"
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as h5:
        full = _first_dataset(h5["layers"])
        del h5["layers/" + full]
        h5["layers/" + full] = h5py.ExternalLink(str(keras_files / "secret.h5"), "w")
    members["model.weights.h5"] = buf.getvalue()
    out = keras_files / "evil.keras"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(fastrnn.ModelFormatError, match="external link"):
        fastrnn.load(out)


def test_untouched_files_still_load(keras_files):
    assert fastrnn.load(keras_files / "m.keras").count_params() == fastrnn.load(keras_files / "m.h5").count_params()
