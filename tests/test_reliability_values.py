"""Values that used to be accepted but gave wrong results, crashes or unreadable files (issue 15),
and the files that must not be trusted (truncated memory map, pickle bombs); the CLI's errors."""
import io
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import generate as gen
from fastrnn.classify import bundled_classifier
from fastrnn.formats.torch import read_state_dict
from fastrnn.generate import bundled_model
from helpers import random_recurrent

ENGINES = gen.available_engines()


# -- fastrnn convert / save: the loader's rules on the way in ---------------------------------
def small_model(rng, **options):
    return fastrnn.Model([random_recurrent(rng, "lstm", input_size=3, hidden_size=4, **options)])


@pytest.mark.parametrize("make, words", [
    (lambda rng: small_model(rng, clip=float("nan")), "clip"),
    (lambda rng: small_model(rng, clip=-1.0), "clip"),
    (lambda rng: fastrnn.Model([fastrnn.Masking(float("nan")), random_recurrent(rng, "gru", input_size=3,
                                                                               hidden_size=4)]), "mask_value"),
    (lambda rng: fastrnn.Model([random_recurrent(rng, "gru", input_size=3, hidden_size=4),
                                fastrnn.Dense(np.full((2, 4), np.nan, np.float32))]), "nan"),
])
def test_save_refuses_what_load_would_refuse(tmp_path, make, words):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=f"(?i){words}"):
        fastrnn.save(make(np.random.default_rng(0)), path)
    assert os.listdir(tmp_path) == []  # nothing written, no temporary left


def test_save_still_writes_good_models(tmp_path):
    model = small_model(np.random.default_rng(0), clip=3.0)
    fastrnn.save(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == ["m.safetensors"]
    x = np.ones((1, 5, 3), np.float32)
    np.testing.assert_array_equal(fastrnn.load(tmp_path / "m.safetensors").predict(x), model.predict(x))


# -- generation values --------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("penalty", [1e-320, 0.0, 1e-3, 1e3, float("inf"), float("nan")])
def test_repetition_penalty_out_of_range(engine, penalty):
    with pytest.raises(ValueError, match="repetition_penalty"):
        bundled_model().generate("a", max_new_tokens=3, repetition_penalty=penalty, backend=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_repetition_penalty_at_the_bounds_gives_valid_text(engine):
    model = bundled_model()
    for penalty in (0.01, 100.0):
        text = model.generate("def ", max_new_tokens=20, seed=1, repetition_penalty=penalty, backend=engine)
        assert len(text) == 20
        p = model.session(seed=1, backend=engine).feed("def ").probabilities(repetition_penalty=penalty)
        assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-9


def model_with_logits(bias):
    rng = np.random.default_rng(0)
    V = 5
    return fastrnn.Model([
        fastrnn.Embedding((rng.standard_normal((V, 4)) * 0.5).astype(np.float32)),
        random_recurrent(rng, "gru", input_size=4, hidden_size=8),
        fastrnn.Dense((rng.standard_normal((V, 8)) * 0.5).astype(np.float32), np.asarray(bias, np.float32)),
    ])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_logits_raise(engine, bad):
    model = model_with_logits([0, 0, bad, 0, 0])
    with pytest.raises(gen.GenerationError, match="NaN or infinite"):
        model.generate([1, 2], max_new_tokens=5, seed=1, backend=engine)
    with pytest.raises(gen.GenerationError):
        list(model.generate([1, 2], max_new_tokens=5, seed=1, backend=engine, stream=True))
    s = model.session(seed=1, backend=engine).feed([1, 2])
    with pytest.raises(gen.GenerationError):
        s.sample()
    with pytest.raises(gen.GenerationError):
        s.probabilities()
    # finite logits generate
    assert len(model_with_logits([0] * 5).generate([1, 2], max_new_tokens=5, seed=1, backend=engine)) == 5


@pytest.mark.parametrize("engine", ENGINES)
def test_session_feed_validates_like_generate(engine):
    model = bundled_model()
    s = model.session(seed=1, backend=engine)
    for bad, words in [([40.9, 41.7], "mixes kinds|integers"), ([2**70], "outside"), ([-1], "outside"),
                       (np.array([1.5]), "integers")]:
        with pytest.raises(ValueError, match=words):
            s.feed(bad)
        with pytest.raises(ValueError, match=words):
            model.generate(bad, max_new_tokens=2, backend=engine)
    with pytest.raises(ValueError, match="one sequence"):
        s.feed([[1, 2]])  # a batch for generate, not for a session
    s.feed([40, 41])  # still usable, and nothing of the refused calls was fed
    np.testing.assert_array_equal(s.logits(), model.session(seed=1, backend=engine).feed([40, 41]).logits())


def test_stop_ids_beyond_int32():
    model = bundled_model()
    want = model.generate("def ", max_new_tokens=20, seed=1)
    assert model.generate("def ", max_new_tokens=20, seed=1, stop=2**40) == want  # never produced
    assert model.generate("def ", max_new_tokens=20, seed=1, stop=[[1, 2**33]]) == want
    with pytest.raises(ValueError, match=">= 0"):
        model.generate("def ", max_new_tokens=20, seed=1, stop=-3)


def test_dense_without_outputs_is_refused():
    with pytest.raises(ValueError, match="at least one output"):
        fastrnn.Dense(np.zeros((0, 4), np.float32))


def test_classify_giant_line_is_cut_to_max_length_with_a_warning():
    model = bundled_classifier()
    t0 = time.process_time()  # CPU seconds of this process: a busy machine does not add to them
    with pytest.warns(UserWarning, match="max_length=10000"):
        got = list(model.classify(["maison " * 2_000_000, "house"]))
    assert time.process_time() - t0 < 30
    want = list(model.classify([("maison " * 2_000_000)[:10000], "house"]))
    assert [r.label for r in got] == [r.label for r in want]
    np.testing.assert_array_equal(got[0].probabilities, want[0].probabilities)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(model.classify(["maison " * 2000], max_length=20000))  # under the limit: no warning


# -- files ------------------------------------------------------------------------------------
def test_truncated_file_after_load_does_not_kill_the_process(tmp_path):
    """load() reads the weights into memory by default: truncating the file afterwards changes
    nothing (with mmap=True the OS would raise SIGBUS on the next read; documented)."""
    script = """
        import os, sys
        import numpy as np
        import fastrnn
        from helpers import random_recurrent

        path = sys.argv[1]
        rng = np.random.default_rng(0)
        model = fastrnn.Model([fastrnn.Embedding(rng.standard_normal((40, 8)).astype(np.float32)),
                               random_recurrent(rng, "lstm", input_size=8, hidden_size=300),
                               fastrnn.Dense(rng.standard_normal((40, 300)).astype(np.float32))])
        fastrnn.save(model, path)
        x = rng.integers(0, 40, (2, 7))
        for backend in fastrnn.available_backends():
            loaded = fastrnn.load(path)
            with open(path, "r+b") as f:
                f.truncate(64)
            np.testing.assert_array_equal(loaded.predict(x, backend=backend), model.predict(x, backend=backend))
            fastrnn.save(model, path)
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "m.safetensors")],
                         capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.abspath(__file__)),
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


def torch_archive(path, pkl):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", b"little")


ORDERED_DICT = b"ccollections\nOrderedDict\nq\x00"


def nested_dicts(n):  # {'a': OrderedDict({'a': ...})}, n deep, built iteratively by the pickle
    return b"\x80\x02" + ORDERED_DICT + (b"h\x00)R" + b"X\x01\x00\x00\x00a") * n + b"}" + b"s" * n + b"."


def nested_tuples(n):
    return b"\x80\x02}" + b"\x85" * n + b"."


def memo_amplified_ordered_dicts(pairs, copies):  # OrderedDict(one memoized list) built `copies` times
    big = b"(" + b"X\x01\x00\x00\x00aK\x01\x86" * pairs + b"lq\x01"
    return b"\x80\x02" + ORDERED_DICT + big + b"0(" + b"h\x00h\x01\x85R0" * copies + b"1}."


def one_tensor_many_names(tmp_path, names):
    import torch

    t = torch.zeros(100_000)
    buf = io.BytesIO()
    torch.save({f"k{i}": t for i in range(names)}, buf)  # one storage, referenced by every entry
    (tmp_path / "shared.pt").write_bytes(buf.getvalue())
    return tmp_path / "shared.pt"


@pytest.mark.parametrize("make, words", [
    (lambda: nested_dicts(100_000), "nests containers"),
    (lambda: nested_tuples(200_000), "nests containers"),
    (lambda: memo_amplified_ordered_dicts(100_000, 1000), "memo amplification"),
])
def test_pickle_bombs_are_refused_quickly(tmp_path, make, words):
    path = tmp_path / "bomb.pt"
    torch_archive(path, make())
    t0 = time.process_time()  # CPU seconds of this process: a busy machine does not add to them
    with pytest.raises(fastrnn.ModelFormatError, match=words):
        read_state_dict(path)
    assert time.process_time() - t0 < 20


def test_one_tensor_referenced_by_many_names_is_refused(tmp_path):
    with pytest.raises(fastrnn.ModelFormatError, match="memo amplification"):
        read_state_dict(one_tensor_many_names(tmp_path, 100))
    assert len(read_state_dict(one_tensor_many_names(tmp_path, 3))) == 3  # tied weights stay fine


# -- CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["classify", "{dir}"],
    ["generate", "--batch", "{dir}"],
    ["generate", "--model", "{dir}/missing.safetensors"],
    ["summary", "{dir}"],
    ["generate", "--repetition-penalty", "1e-320", "-n", "3"],
    ["generate", "--top-p", "2", "-n", "3"],
    ["generate", "--batch", "{dir}/late_error.txt", "-n", "2"],  # found before the first 256 lines print
    ["classify", "{dir}/missing.txt"],
])
def test_cli_errors_are_one_line_exit_2_and_nothing_on_stdout(tmp_path, argv):
    (tmp_path / "late_error.txt").write_bytes(b"def \n" * 300 + b"\xff\n" + b"x\n")  # line 301 not UTF-8
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    out = subprocess.run([sys.executable, "-c", "import sys; from fastrnn.cli import main; sys.exit(main())", *argv],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastrnn {argv[0]}: error:"), out.stderr
