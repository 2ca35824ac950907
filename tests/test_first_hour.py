"""Issue 17: what a new user hit in the first hour. One section per item of the issue; the
README's own code examples run in tests/test_readme.py."""
import glob
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.classify import BUNDLED_UNKNOWN_THRESHOLD, bundled_classifier
from fastrnn.generate import GENERATION_DEFAULTS, bundled_model
from fastrnn.textio import clean_text

from helpers import random_recurrent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def fastrnn_cli(*args, cwd=None, stdin=None, env=None):
    """Run `fastrnn ARGS` in a child process; returns CompletedProcess with bytes output."""
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", *map(str, args)], input=stdin, capture_output=True,
                          cwd=cwd, timeout=300, env=env)


def run_python(code, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(out, *fragments):
    """exit code 2, one line on stderr naming the problem, no traceback, nothing on stdout."""
    err = out.stderr.decode() if isinstance(out.stderr, bytes) else out.stderr
    assert out.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    assert not out.stdout, out.stdout


def pyproject():
    if tomllib is None:  # pragma: no cover - CI runs Python 3.11
        pytest.fail("tomllib (Python >= 3.11) is needed to read pyproject.toml")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


class CharNet(torch.nn.Module):
    def __init__(self, vocab_size=6):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, 4)
        self.lstm = torch.nn.LSTM(4, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, vocab_size)


def char_lm(vocabulary=None, seed=0):
    torch.manual_seed(seed)
    return fastrnn.from_torch(CharNet().eval(), vocabulary=vocabulary)


# -- 1. text inputs: line endings and a BOM, the same in Python and on the CLI ---------------------

def test_clean_text_removes_bom_and_one_line_ending():
    assert clean_text("\ufeffhouse\r\n") == "house"
    assert clean_text("maison\n") == "maison"
    assert clean_text("Haus\r") == "Haus"
    assert clean_text("casa\n\n") == "casa\n"  # one line ending, not every trailing newline
    assert clean_text(" a b ") == " a b "  # nothing else is touched


def test_classifying_a_file_object_equals_the_cli(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes("\ufeffhouse\r\nmaison\nHaus\r\ncasa\n".encode("utf-8"))
    model = bundled_classifier()
    with open(path, encoding="utf-8", newline="") as f:  # newline="": the \r\n reach classify
        python = list(model.classify(f))
    with open(path, encoding="utf-8") as f:
        python_universal = list(model.classify(f))
    clean = list(model.classify(["house", "maison", "Haus", "casa"]))
    assert [r.label for r in python] == [r.label for r in clean] == ["en", "fr", "de", "es"]
    assert [r.label for r in python_universal] == ["en", "fr", "de", "es"]
    for a, b in zip(python, clean):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
    out = fastrnn_cli("classify", path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["house", "maison", "Haus", "casa"]
    assert [r["label"] for r in rows] == ["en", "fr", "de", "es"]
    for row, r in zip(rows, python):
        assert row["probabilities"] == {k: round(float(v), 6) for k, v in zip(row["probabilities"], r.probabilities)}


# -- 2. numba is an extra; the default path never imports it ----------------------------------------

def test_numba_is_an_extra_that_the_test_extra_installs():
    project = pyproject()["project"]
    assert not any(d.lower().startswith("numba") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("numba") for d in extras["numba"])
    assert any(d.startswith("numba") for d in extras["test"]), "CI must test the numba backend"
    assert "numba" in fastrnn.available_backends()  # installed here by the test extra


def test_default_path_imports_no_numba():
    code = """
import sys, numpy as np, fastrnn
from fastrnn.generate import bundled_model
from fastrnn.classify import bundled_classifier
print(fastrnn.available_backends())
bundled_model().generate("def ", max_new_tokens=5, seed=1)
list(bundled_classifier().classify(["house"]))
lstm = fastrnn.Model([fastrnn.Recurrent(cell="lstm", hidden_size=3, directions=[fastrnn.DirectionWeights(
    w_ih=np.ones((12, 2), np.float32), w_hh=np.ones((12, 3), np.float32))])])
lstm.predict(np.ones((1, 4, 2), np.float32))
assert "numba" not in sys.modules and "llvmlite" not in sys.modules, sorted(m for m in sys.modules if "numba" in m)
print("ok")
"""
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_runs_without_numba_installed():
    code = """
import sys
sys.modules["numba"] = None  # as if numba were not installed
import numpy as np, fastrnn
assert "numba" not in fastrnn.available_backends(), fastrnn.available_backends()
from fastrnn.generate import bundled_model
assert len(bundled_model().generate("def ", max_new_tokens=5, seed=1)) == 5
try:
    fastrnn.set_backend("numba")
except RuntimeError as exc:
    print(exc)
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "not available" in out.stdout and 'pip install ".[numba]"' in out.stdout


# -- 3. one set of generation defaults, a real signature --------------------------------------------

def test_python_and_cli_give_the_same_text_with_their_defaults():
    out = fastrnn_cli("generate", "--prompt", "def ", "--seed", "1", "--no-stream")
    assert out.returncode == 0, out.stderr
    text = bundled_model().generate("def ", seed=1)
    assert len(text) == GENERATION_DEFAULTS["max_new_tokens"] == 200
    assert out.stdout.decode() == "def " + text + "\n"
    assert text == bundled_model().generate("def ", seed=1, temperature=0.8, max_new_tokens=200)
    assert text != bundled_model().generate("def ", seed=1, temperature=1.0, max_new_tokens=200)


def test_model_metadata_recommends_its_own_defaults(tmp_path):
    model = char_lm(vocabulary="abcdef")
    model.metadata["generation"] = {"temperature": 0, "max_new_tokens": 7}
    greedy = model.generate("ab", temperature=0, max_new_tokens=7, seed=3)
    assert model.generate("ab", seed=3) == greedy and len(greedy) == 7
    assert model.session(seed=3).feed("ab").generate() == greedy
    sampled = model.generate("ab", temperature=1.0, seed=3)  # an argument overrides the model's value
    assert len(sampled) == 7
    fastrnn.save(model, tmp_path / "lm.safetensors")  # the recommendation travels with the file
    out = fastrnn_cli("generate", "--model", tmp_path / "lm.safetensors", "--prompt", "ab", "--no-stream")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == "ab" + greedy + "\n"
    model.metadata["generation"] = {"temperature": -1}
    with pytest.raises(ValueError, match="metadata 'generation'"):
        model.generate("ab")
    model.metadata["generation"] = {"temprature": 0.5}
    with pytest.raises(ValueError, match="metadata 'generation'"):
        model.generate("ab")


def test_model_methods_have_the_real_signatures():
    from fastrnn.classify import classify
    from fastrnn.generate import Session, generate

    def params(f, skip):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values() if p.name not in skip]

    assert params(fastrnn.Model.generate, {"self"}) == params(generate, {"model"})
    assert params(fastrnn.Model.classify, {"self"}) == params(classify, {"model"})
    assert params(fastrnn.Model.session, {"self"}) == params(Session.__init__, {"self", "model"})
    for f in (fastrnn.Model.generate, fastrnn.Model.classify, fastrnn.Model.session):
        assert not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(f).parameters.values())


# -- 4. one-line errors, no leftover temporary file --------------------------------------------------

def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "dir").mkdir()
    assert_one_line_error(fastrnn_cli("classify", tmp_path / "dir"), "dir")
    model = char_lm(vocabulary="abcdef")
    fastrnn.save(model, tmp_path / "in.safetensors")
    (tmp_path / "out.safetensors").mkdir()  # a directory where the output should go
    assert_one_line_error(fastrnn_cli("convert", "in.safetensors", "out.safetensors", cwd=tmp_path), "directory")
    assert_one_line_error(fastrnn_cli("convert", "in.safetensors", "dir", cwd=tmp_path), ".safetensors")
    assert_one_line_error(fastrnn_cli("--backend", "cython", "summary", "missing.safetensors", cwd=tmp_path),
                          "missing.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["dir", "in.safetensors", "out.safetensors"]  # no .tmp-<pid>
    assert os.listdir(tmp_path / "out.safetensors") == []


def test_failed_save_removes_its_temporary_file(tmp_path, monkeypatch):
    model = char_lm(vocabulary="abcdef")
    with pytest.raises(IsADirectoryError):
        fastrnn.save(model, tmp_path)
    from fastrnn.formats import safetensors

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        fastrnn.save(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("package, name, hint", [("h5py", "x.keras", "pip install h5py"),
                                                  ("h5py", "x.h5", "pip install h5py"),
                                                  ("onnx", "x.onnx", "pip install onnx")])
def test_missing_optional_package_is_one_line_with_the_install_hint(tmp_path, package, name, hint):
    import zipfile

    path = tmp_path / name
    if name.endswith(".keras"):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
            z.writestr("metadata.json", "{}")
            z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    elif name.endswith(".h5"):
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    else:
        path.write_bytes(b"\x08\x07" + b"\0" * 32)
    code = (f"import sys; sys.modules[{package!r}] = None\n"
            "from fastrnn.cli import main\n"
            f"sys.exit(main(['summary', {str(path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_one_line_error(out, hint, f'".[{"keras" if package == "h5py" else "onnx"}]"')


# -- 5. install hints that work ---------------------------------------------------------------------

def test_every_install_hint_names_an_existing_extra_or_a_package():
    extras = set(pyproject()["project"]["optional-dependencies"])
    files = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "kernels", "README.md")]
    files += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    for top in ("fastrnn", "bench", "tools", "kernels"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(dirpath, n) for n in names if n.endswith(".py")]
    hints = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert not re.search(r"""pip install ['"]?fastrnn\[""", text), \
            f"{path}: 'pip install fastrnn[extra]' is not installable from a checkout"
        for extra in re.findall(r"""\.\[([a-z0-9_-]+)\]""", text):
            hints += 1
            assert extra in extras, f"{path}: .[{extra}] is not an extra of pyproject.toml"
    assert hints >= 5


# -- 6. from_torch(vocabulary=...) accepts what a user has ------------------------------------------

@pytest.mark.parametrize("vocabulary", [list("abcdef"), "abcdef", {c: i for i, c in enumerate("abcdef")},
                                        tuple("abcdef")], ids=["list", "str", "dict", "tuple"])
def test_from_torch_vocabulary_list_str_dict(vocabulary):
    want = char_lm(fastrnn.Vocabulary(list("abcdef"))).generate("abc", max_new_tokens=10, seed=2)
    model = char_lm(vocabulary)
    assert isinstance(model.vocabulary, fastrnn.Vocabulary) and model.vocabulary.tokens == list("abcdef")
    assert model.generate("abc", max_new_tokens=10, seed=2) == want


def test_from_state_dict_vocabulary_list_and_bad_vocabularies():
    from fastrnn.formats.torch import from_state_dict

    torch.manual_seed(0)
    net = CharNet().eval()
    params = {k: v.numpy() for k, v in net.state_dict().items()}
    model = from_state_dict(params, "lstm", vocabulary=["ab", "cd", "ef", "gh", "ij", "kl"])
    assert model.vocabulary.level == "word" and model.vocabulary.encode("cd ab") == [1, 0]
    with pytest.raises(ValueError, match="0..n-1"):
        char_lm({"a": 0, "b": 2})
    with pytest.raises(TypeError, match="vocabulary must be"):
        char_lm(42)


# -- 7. convert --vocab applies to every source -----------------------------------------------------

def test_convert_vocab_applies_to_a_native_or_keras_source(tmp_path):
    model = char_lm()  # no vocabulary
    fastrnn.save(model, tmp_path / "plain.safetensors")
    (tmp_path / "v.txt").write_text("가\nb\nc\nd\ne\nf\n", encoding="utf-8")
    out = fastrnn_cli("convert", "plain.safetensors", "with.safetensors", "--vocab", "v.txt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert fastrnn.load(tmp_path / "with.safetensors").vocabulary.tokens == ["가", "b", "c", "d", "e", "f"]
    (tmp_path / "long.txt").write_text("\n".join("abcdefgh"), encoding="utf-8")
    assert_one_line_error(fastrnn_cli("convert", "plain.safetensors", "x.safetensors", "--vocab", "long.txt",
                                      cwd=tmp_path), "8 tokens")
    features = fastrnn.Model([random_recurrent(np.random.default_rng(0), "gru")])
    fastrnn.save(features, tmp_path / "features.safetensors")
    # a model without an Embedding takes token i as a one-hot vector: the vocabulary must fit its features
    assert_one_line_error(fastrnn_cli("convert", "features.safetensors", "x.safetensors", "--vocab", "v.txt",
                                      cwd=tmp_path), "5 features, so a token cannot be fed as a one-hot vector")


# -- 8. the CLI validates before it prints ----------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [(["-n", "-5"], "--max-new-tokens"),  # the option, not the parameter
                                            (["--prompt", "abz"], "vocabulary"),
                                            (["--stop", ""], "empty stop"),
                                            (["--temperature", "-1"], "temperature"),
                                            (["--top-p", "2"], "--top-p"),
                                            (["--threads", "0"], "thread")])
@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_generate_prints_nothing_before_an_argument_error(tmp_path, args, fragment, stream):
    fastrnn.save(char_lm(vocabulary="abcdef"), tmp_path / "lm.safetensors")  # no unknown id: "z" is an error
    assert_one_line_error(fastrnn_cli("generate", "--model", "lm.safetensors", stream, *args, cwd=tmp_path),
                          fragment)


def test_generate_batch_checks_arguments_before_reading(tmp_path):
    assert_one_line_error(fastrnn_cli("generate", "--batch", "-", "-n", "-5", stdin=b"def \n"), "--max-new-tokens")


# -- 9. ONNX files with external data: the error says what to do ------------------------------------

def test_external_data_error_says_how_to_export(tmp_path):
    import onnx

    gru = torch.nn.GRU(3, 4).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(gru, (torch.zeros(2, 1, 3),), str(path), dynamo=False, input_names=["x"])
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, size_threshold=0,
                    location="m.onnx.data")
    # from its folder it loads (issue 13); from bytes there is no folder: the error says what to do
    from fastrnn.onnx import InferenceSession

    x = np.random.default_rng(0).standard_normal((2, 1, 3)).astype(np.float32)
    with torch.no_grad():
        want = gru(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(InferenceSession(path).run(None, {"x": x})[0][:, 0], want[:, 0], atol=1e-5)
    with pytest.raises(fastrnn.ModelFormatError, match="external_data=False"):
        InferenceSession(path.read_bytes())


# -- 10. the bundled identifier says "unknown" for text outside its vocabulary ----------------------

def test_bundled_identifier_answers_unknown_outside_its_vocabulary():
    model = bundled_classifier()
    texts = ["안녕하세요", "日本語", "   ", "", "Привет", "house", "hello 안녕", "maison\n"]
    results = list(model.classify(texts))
    assert [r.label for r in results[:5]] == ["unknown"] * 5
    assert all(r.index is None and r.unknown_fraction == 1.0 for r in results[:5])
    assert results[5].label == "en" and results[5].unknown_fraction == 0.0 and results[5].index == 0
    assert results[6].unknown_fraction == pytest.approx(3 / 8) and results[6].label != "unknown"
    assert results[7].label == "fr" and results[7].unknown_fraction == 0.0
    assert model.metadata["unknown_threshold"] == BUNDLED_UNKNOWN_THRESHOLD == 0.5
    # the probabilities are still the network's; the threshold can be switched off
    off = list(model.classify(texts[:2], unknown_threshold=1.0))
    assert all(r.label in model.metadata["labels"] for r in off)
    np.testing.assert_array_equal(off[0].probabilities, results[0].probabilities)


def test_unknown_fraction_and_threshold_on_any_model():
    from test_classify import VOCAB, TorchClassifier

    model = fastrnn.from_torch(TorchClassifier(), return_sequences=False, activation="softmax", vocabulary=VOCAB)
    r = list(model.classify(["ab??", "????", [0, 0, 1, 2], "ab"]))
    assert [x.unknown_fraction for x in r] == [0.5, 1.0, 0.5, 0.0]
    assert "unknown" not in [x.label for x in r]  # no threshold in this model's metadata
    r = list(model.classify(["ab??", "????", "abc?"], unknown_threshold=0.4))
    assert [x.label == "unknown" for x in r] == [True, True, False]
    model.metadata["unknown_threshold"] = 0.9
    assert [x.label == "unknown" for x in model.classify(["ab??", "????"])] == [False, True]
    with pytest.raises(ValueError, match="unknown_threshold"):
        model.classify(["a"], unknown_threshold=2)
    feats = fastrnn.Model([random_recurrent(np.random.default_rng(0), "gru", return_sequences=False),
                           fastrnn.Dense(np.ones((2, 7), np.float32), None, "softmax")])
    assert next(iter(feats.classify([np.ones((3, 5), np.float32)]))).unknown_fraction == 0.0


def test_cli_reports_the_unknown_fraction():
    out = fastrnn_cli("classify", stdin="house\n日本語\n".encode())
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [(r["label"], r["unknown_fraction"]) for r in rows] == [("en", 0.0), ("unknown", 1.0)]


# -- 11. --errors strict|replace|skip ------------------------------------------------------------

def test_classify_errors_policy(tmp_path):
    data = b"house\nmai\xffson\n\xfe\nmaison\n"
    assert_one_line_error(fastrnn_cli("classify", stdin=data), "line 2 is not valid UTF-8", "--errors")
    out = fastrnn_cli("classify", "--errors", "replace", stdin=data)
    assert out.returncode == 0 and out.stderr == b""
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["house", "mai\ufffdson", "\ufffd", "maison"]
    assert rows[2]["label"] == "unknown"
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    out = fastrnn_cli("classify", "--errors", "skip", path)
    assert out.returncode == 0
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["house", "maison"]
    err = out.stderr.decode().splitlines()
    assert len(err) == 2 and "skipped line 2 of" in err[0] and "skipped line 3 of" in err[1]


def test_generate_batch_errors_policy():
    data = b"def \n\xffx\nclass \n"
    assert_one_line_error(fastrnn_cli("generate", "--batch", "-", "-n", "3", stdin=data), "line 2")
    out = fastrnn_cli("generate", "--batch", "-", "-n", "3", "--seed", "1", "--errors", "skip", stdin=data)
    assert out.returncode == 0
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["prompt"] for r in rows] == ["def ", "class "]
    assert rows[0]["text"] == bundled_model().generate("def ", max_new_tokens=3, seed=1)
    assert "skipped line 2" in out.stderr.decode()
    out = fastrnn_cli("generate", "--batch", "-", "-n", "3", "--seed", "1", "--errors", "replace",
                      stdin=b"\xef\xbb\xbfdef \r\n\xffx\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["prompt"] for line in out.stdout.decode().splitlines()] == ["def ", "\ufffdx"]


# -- 12. --version, help for every option, README synopses, backend repr, output suffix --------------

def test_version():
    out = fastrnn_cli("--version")
    assert out.returncode == 0 and out.stdout.decode().strip() == f"fastrnn {fastrnn.__version__}"
    assert fastrnn.__version__ == pyproject()["project"]["version"]


def _subcommands():
    import argparse

    from fastrnn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_option_has_help():
    parser, commands = _subcommands()
    for name, p in [("fastrnn", parser)] + list(commands.items()):
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        assert "--help" in p.format_help()  # every help string formats (no stray %)


def test_readme_synopses_list_every_option():
    readme = ""  # the README and the docs/ pages it links (the synopses live in docs/cli.md & co.)
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path, encoding="utf-8") as f:
            readme += f.read() + "\n"
    lines = []  # the lines of the documentation's plain (no language) code blocks
    fence = None
    for line in readme.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "":
            lines.append(line)
    parser, commands = _subcommands()
    synopses = {}
    for i, line in enumerate(lines):  # a synopsis: "fastrnn NAME [...]" and its indented continuation lines
        m = re.match(r"fastrnn ([\w-]+) (?!\.\.\.)", line)
        if m:
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            block = "\n".join(lines[i:j])
            if block.count("[") >= synopses.get(m.group(1), "").count("["):  # the synopsis, not an example
                synopses[m.group(1)] = block
    synopses["fastrnn"] = next(line for line in lines if line.startswith("fastrnn ["))
    for name, p in [("fastrnn", parser)] + list(commands.items()):
        synopsis = synopses.get(name)
        assert synopsis is not None, f"no synopsis of `fastrnn {name}` in the README"
        for action in p._actions:
            shown = [o for o in action.option_strings if re.search(re.escape(o) + r"(?![\w-])", synopsis)]
            if action.option_strings and "-h" not in action.option_strings:
                assert shown, f"README synopsis of `fastrnn {name}` lacks {action.option_strings}"


def test_backend_repr_names_it():
    for name in fastrnn.available_backends():
        text = repr(fastrnn.get_backend(name))
        assert repr(name) in text and "object at" not in text
    assert "object at" not in repr(fastrnn.get_backend())


@pytest.mark.parametrize("dst", ["out.onnx", "out.keras", "out.pt", "out"])
def test_convert_refuses_an_output_suffix_it_does_not_write(tmp_path, dst):
    fastrnn.save(char_lm(), tmp_path / "in.safetensors")
    assert_one_line_error(fastrnn_cli("convert", "in.safetensors", dst, cwd=tmp_path), ".safetensors")
    assert not (tmp_path / dst).exists()


# -- 13. bench/quantize_accuracy.py without the word lists -----------------------------------------

def test_quantize_accuracy_skips_the_classifier_without_word_lists(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("quantize_accuracy", os.path.join(ROOT, "bench",
                                                                                     "quantize_accuracy.py"))
    qa = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the source tree first: undone after
    spec.loader.exec_module(qa)
    tl = qa.tool("train_langid")
    tl.DICT_DIR = str(tmp_path)  # an empty directory: no word list installed
    monkeypatch.setattr(qa, "tool", lambda name: tl)
    assert qa.classifier() is False
    out = capsys.readouterr().out
    assert "skipped" in out and "apt-get install wamerican" in out and "wswedish" in out


# -- 14. packaging: SPDX license, no generated C in the wheel or the sdist --------------------------

GENERATED_C = {"_cykernels.c", "_cygenerate.c", "_cyint8.c"}
HAND_WRITTEN = {"rnn_core.c", "generate_core.c", "rnn_split.c", "rnn_core.h", "generate_core.h", "rnn_split.h",
                "spin_barrier.h", "_cykernels.pyx", "_cygenerate.pyx", "int8_core.c", "int8_core.h", "_cyint8.pyx",
                "cpu_features.h", "rnn_core.pxi", "int8_split.c", "int8_split.h", "split_context.pxi"}


def test_license_is_an_spdx_string():
    assert pyproject()["project"]["license"] == "MIT"


def test_installed_package_ships_sources_not_generated_c():
    import fastrnn.kernels

    files = set(os.listdir(os.path.dirname(fastrnn.kernels.__file__)))
    assert HAND_WRITTEN <= files
    assert not GENERATED_C & files


def test_sdist_ships_sources_not_generated_c(tmp_path):
    import tarfile

    out = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist",
                          "--dist-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (sdist,) = [n for n in os.listdir(tmp_path) if n.endswith(".tar.gz")]
    with tarfile.open(tmp_path / sdist) as tar:
        names = {os.path.basename(n) for n in tar.getnames() if "/kernels/" in n}
    assert HAND_WRITTEN <= names
    assert not GENERATED_C & names


# -- 15. no warnings from fastrnn's own modules --------------------------------------------------

def test_reference_gives_inf_and_nan_without_warning_like_the_kernels():
    # a GRU whose exponential gates make the state overflow: valid input, non-finite result
    rng = np.random.default_rng(5)
    layer = random_recurrent(rng, "gru", activations=("exponential", "tanh"), scale=0.3)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    model = fastrnn.Model([layer])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = model.predict(x, backend="numpy")
    assert not np.isfinite(want).all()
    for backend in fastrnn.available_backends():
        got = model.predict(x, backend=backend)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-4, atol=1e-4)


def test_warnings_from_fastrnn_modules_fail_the_tests():
    with pytest.raises(UserWarning):
        warnings.warn_explicit("from fastrnn", UserWarning, "reference.py", 1, module="fastrnn.reference")
    with pytest.raises(RuntimeWarning):
        warnings.warn_explicit("from fastrnn", RuntimeWarning, "x.py", 1, module="fastrnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("from elsewhere", UserWarning, "k.py", 1, module="keras.src.x")
    assert len(caught) == 1
