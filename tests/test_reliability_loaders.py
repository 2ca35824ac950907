"""What the loaders still let through (issue 24), each probe rebuilt from files made here by the
real frameworks (h5py / Keras, torch, onnx) or written byte by byte where no framework would.

Every case ends in a clear error naming the input and the fix, or in the result the source
framework gives; never a crash, a hang or an allocation sized by the file."""
import io
import json
import os
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
