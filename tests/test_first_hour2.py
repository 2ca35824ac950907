"""Issue 26: the first hour, round two (what a new user hit on a fresh clone). One section per item
of the issue; item 1 (ONNX files from PyTorch's default dynamo exporter) is tested where every
exported model is, over both exporters: tests/test_onnx*.py. The documentation's own examples
run in tests/test_readme.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastrnn
from helpers import default_sigint
from test_first_hour import ROOT, assert_one_line_error, fastrnn_cli, pyproject


class WordClassifier(torch.nn.Module):
    def __init__(self, vocab, classes=2):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 8)
        self.rnn = torch.nn.GRU(8, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, classes)


WORDS = ["<pad>", "<OOV>", "영화", "정말", "재밌어요", "시간", "낭비"]


def word_classifier(unk=1, maxlen=30, seed=0):
    """A Keras-style text classifier: word ids with an out-of-vocabulary id, padded to maxlen."""
    torch.manual_seed(seed)
    model = fastrnn.from_torch(WordClassifier(len(WORDS)).eval(), return_sequences=False, activation="softmax",
                               vocabulary=fastrnn.Vocabulary(WORDS, level="word", unk=unk))
    if maxlen:
        model.metadata["text_input"] = {"padding": "pre", "truncating": "pre", "maxlen": maxlen}
    return model


# -- 2. unknown_fraction counts the text's tokens, not the padding to maxlen -------------------------

def test_unknown_fraction_divides_by_the_texts_tokens_not_maxlen():
    model = word_classifier()
    texts = ["영화 정말 재밌어요 전혀", "전혀 아니 별로", "영화 시간 낭비", ""]
    r = list(model.classify(texts, unknown_threshold=0.5))
    assert [x.unknown_fraction for x in r] == [0.25, 1.0, 0.0, 1.0]
    assert [x.label == "unknown" for x in r] == [False, True, False, True]
    # the same fractions without maxlen: padding never counted
    plain = list(word_classifier(maxlen=None).classify(texts))
    assert [x.unknown_fraction for x in plain] == [x.unknown_fraction for x in r]
    # token ids given directly: their own length too
    assert next(iter(model.classify([[2, 1, 1, 3]]))).unknown_fraction == 0.5


# -- 3. a --vocab file declares its unknown token; an error names the line and what was written -----

def write_lines(path, lines, encoding="utf-8"):
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


@pytest.mark.parametrize("unk_line", ["<unk>", "[UNK]", "<OOV>"])
def test_vocab_file_declares_its_unknown_token(tmp_path, unk_line):
    fastrnn.save(word_classifier(unk=None), tmp_path / "m.safetensors")
    vocab = write_lines(tmp_path / "vocab.txt", ["<pad>", unk_line] + WORDS[2:])
    out = fastrnn_cli("convert", "m.safetensors", "u.safetensors", "--vocab", vocab, "--vocab-level", "word",
                      cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = fastrnn.load(tmp_path / "u.safetensors")
    assert model.vocabulary.unk == 1
    r = next(iter(model.classify(["영화 전혀"])))
    assert r.unknown_fraction == 0.5


def test_unk_option_and_its_errors(tmp_path):
    fastrnn.save(word_classifier(unk=None), tmp_path / "m.safetensors")
    vocab = write_lines(tmp_path / "vocab.txt", ["<pad>", "??"] + WORDS[2:])
    out = fastrnn_cli("convert", "m.safetensors", "u.safetensors", "--vocab", vocab, "--vocab-level", "word",
                      "--unk", "??", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert fastrnn.load(tmp_path / "u.safetensors").vocabulary.unk == 1
    assert_one_line_error(fastrnn_cli("convert", "m.safetensors", "v.safetensors", "--vocab", vocab, "--unk", "<unk>",
                                      cwd=tmp_path), "--unk '<unk>' is not a line of --vocab")
    both = write_lines(tmp_path / "both.txt", ["<unk>", "[UNK]"] + WORDS[2:])
    assert_one_line_error(fastrnn_cli("convert", "m.safetensors", "v.safetensors", "--vocab", both, cwd=tmp_path),
                          "several unknown tokens", "--unk")
    assert_one_line_error(fastrnn_cli("convert", "m.safetensors", "v.safetensors", "--unk", "x", cwd=tmp_path),
                          "--vocab")
    assert not (tmp_path / "v.safetensors").exists()


def test_an_unknown_word_names_its_line_and_what_was_written(tmp_path):
    """3,011 lines, an unseen word on line 3001: the first two windows' results (2,048) are out;
    the error names the line, the CLI fix and how many results were written."""
    fastrnn.save(word_classifier(unk=None), tmp_path / "m.safetensors")
    write_lines(tmp_path / "in.txt", ["영화 정말"] * 3000 + ["영화 전혀"] + ["시간"] * 10)
    out = fastrnn_cli("classify", "in.txt", "--model", "m.safetensors", cwd=tmp_path)
    err = out.stderr.decode()
    assert out.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "in.txt line 3001: '전혀' is not in the model's vocabulary" in err
    assert "fastrnn convert m.safetensors OUT.safetensors --vocab VOCAB.txt with a line <unk>" in err
    assert "the first 2048 results were written before it" in err
    assert len(out.stdout.decode().splitlines()) == 2048
    # with --errors skip, line numbers still count the file's lines
    data = "영화\n".encode() + b"\xff\n" + "전혀\n".encode()
    out = fastrnn_cli("classify", "-", "--model", "m.safetensors", "--errors", "skip", cwd=tmp_path, stdin=data)
    assert "<stdin> line 3: '전혀'" in out.stderr.decode() and "no result was written" in out.stderr.decode()
    # Python: the input's 0-based index
    with pytest.raises(fastrnn.errors.InputError, match=r"input 1: '전혀' is not") as info:
        list(fastrnn.load(tmp_path / "m.safetensors").classify(["영화", "전혀"]))
    assert info.value.position == 1


# -- 4. a source tree without the compiled kernels says so, once --------------------------------------

NO_EDITABLE_FINDER = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                      "if not getattr(f, '__module__', '').startswith('__editable__')]; ")


def test_a_source_tree_without_kernels_warns_at_import(tmp_path):
    import shutil

    shutil.copytree(os.path.join(ROOT, "fastrnn"), tmp_path / "fastrnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"}
    code = NO_EDITABLE_FINDER + "import fastrnn, fastrnn.cli; print(fastrnn.get_backend().name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() in (["numpy"], ["numba"])
    assert out.stderr.count("KernelsMissingWarning") == 1, out.stderr  # once
    assert f"imported from {tmp_path / 'fastrnn'}" in out.stderr and "pip install ." in out.stderr
    assert "Traceback" not in out.stderr and "warnings.warn" not in out.stderr  # no source line shown
    # a backend chosen on purpose (the checked-kernels CI script): silent, even with warnings as errors
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(env, FASTRNN_BACKEND="numpy"), timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["numpy"] and out.stderr == "", out.stderr


def test_the_installed_package_does_not_warn():
    out = subprocess.run([sys.executable, "-W", "error", "-c", "import fastrnn; print(fastrnn.get_backend().name)"],
                         capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"})
    assert out.returncode == 0 and out.stdout.split() == ["cython"], out.stderr


# -- 6. every CLI error names the command-line fix -----------------------------------------------------

def test_cli_errors_give_command_line_advice(tmp_path):
    from fastrnn.cli import CLI_ADVICE, cli_advice

    # a classifier without a vocabulary given text
    torch.manual_seed(0)
    bare = fastrnn.from_torch(WordClassifier(len(WORDS)).eval(), return_sequences=False, activation="softmax")
    fastrnn.save(bare, tmp_path / "bare.safetensors")
    write_lines(tmp_path / "kr.txt", ["영화 정말"])
    out = fastrnn_cli("classify", "kr.txt", "--model", "bare.safetensors", cwd=tmp_path)
    assert_one_line_error(out, "kr.txt line 1", "fastrnn convert bare.safetensors OUT.safetensors --vocab VOCAB.txt",
                          "--tokenizer")
    assert "lists of ints" not in out.stderr.decode()
    # a language model given to classify: fastrnn generate, not model.predict
    torch.manual_seed(1)
    lm = fastrnn.from_torch(WordClassifier(len(WORDS)).eval(), vocabulary=WORDS)
    fastrnn.save(lm, tmp_path / "lm.safetensors")
    out = fastrnn_cli("classify", "kr.txt", "--model", "lm.safetensors", cwd=tmp_path)
    assert_one_line_error(out, "fastrnn generate --model lm.safetensors")
    assert "model.predict" not in out.stderr.decode()
    # generate without a vocabulary: convert --vocab / --tokenizer
    assert_one_line_error(fastrnn_cli("generate", "--model", "bare.safetensors", cwd=tmp_path),
                          "fastrnn convert bare.safetensors OUT.safetensors --vocab", "--tokenizer")
    # a Python parameter named in a message: its option
    assert_one_line_error(fastrnn_cli("generate", "--top-k", "-1"), "--top-k must be")
    assert_one_line_error(fastrnn_cli("classify", "--batch-size", "0", stdin=b"a\n"), "--batch-size must be")
    # every pattern still meets a message fastrnn raises (the table cannot rot silently)
    sources = ""
    for folder, _, files in os.walk(os.path.join(ROOT, "fastrnn")):
        for f in files:
            if f.endswith(".py") and f != "cli.py":
                with open(os.path.join(folder, f), encoding="utf-8") as fh:
                    sources += fh.read()
    import re
    samples = {r"pass custom_layers=\{'([^']*)': factory\}": "pass custom_layers={'Foo': factory}",
               r"pass custom_layers=(?=\))": "pass custom_layers=)"}
    for pattern, _ in CLI_ADVICE:
        probe = samples.get(pattern) or re.sub(r"\\(.)", r"\1", pattern.strip("^").split("(?=")[0])
        probe = probe.replace("(temperature|top_k|top_p|repetition_penalty|threads|batch_size|max_length|"
                              "max_new_tokens) must", "threads must")
        assert cli_advice(probe, "m.keras") != probe, pattern
    for fragment in ("pass token ids instead (lists of ints)", "and the vocabulary has no unknown-token id",
                     "Use model.predict for per-step outputs or model.generate for text",
                     "call model.predict with all the inputs", "load it without architecture=",
                     "pass custom_layers="):
        assert fragment in sources, fragment
    assert "pass --custom-layers MODULE.py, a file of yours defining Foo" in cli_advice(
        "layer x: needs a factory (pass custom_layers={'Foo': factory})")


# -- 7. a text file given as a model ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["words.txt", "words", "notes.md"])
def test_a_text_file_is_not_a_model_file(tmp_path, name):
    write_lines(tmp_path / name, ["house", "maison", "집"])
    out = fastrnn_cli("summary", name, cwd=tmp_path)
    assert_one_line_error(out, f"{name}: not a model file (it starts like text", ".safetensors", ".keras", ".onnx",
                          "state_dict")
    assert "header claims" not in out.stderr.decode()
    with pytest.raises(fastrnn.ModelFormatError, match="not a model file"):
        fastrnn.load(tmp_path / name)
    # a damaged .safetensors still gets the native reader's precise message
    (tmp_path / "bad.safetensors").write_bytes(b"house\nmaison\n" * 4)
    with pytest.raises(fastrnn.ModelFormatError, match="header claims"):
        fastrnn.load(tmp_path / "bad.safetensors")


# -- 8. messages: warnings without a source line, 1-based lines; no temporary names; ragged rows -------

def test_max_length_warning_is_one_line_naming_the_line(tmp_path):
    write_lines(tmp_path / "in.txt", ["house", "maison " * 40, "Haus"])
    out = fastrnn_cli("classify", "in.txt", "--max-length", "20", cwd=tmp_path)
    assert out.returncode == 0
    err = out.stderr.decode()
    assert err == ("fastrnn classify: warning: in.txt line 2 is longer than --max-length 20: only its first 20 "
                   "tokens are classified (pass a larger --max-length for more)\n")
    from fastrnn.classify import bundled_classifier

    with pytest.warns(fastrnn.errors.InputTooLongWarning, match=r"input 1 \(counting from 0\)") as caught:
        list(bundled_classifier().classify(["house", "maison " * 40], max_length=20))
    assert caught[0].message.position == 1 and caught[0].filename == __file__  # the caller's line


def test_convert_into_a_missing_folder_names_the_folder(tmp_path):
    fastrnn.save(word_classifier(), tmp_path / "m.safetensors")
    out = fastrnn_cli("convert", "m.safetensors", "nothere/out.safetensors", cwd=tmp_path)
    assert_one_line_error(out, "no such folder", "nothere")
    assert ".tmp-" not in out.stderr.decode() and ".check-" not in out.stderr.decode()
    with pytest.raises(FileNotFoundError, match="no such folder") as info:
        fastrnn.save(word_classifier(), tmp_path / "nothere" / "out.safetensors")
    assert info.value.filename == str(tmp_path / "nothere")
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_predict_on_ragged_rows_says_to_pad_and_pass_lengths():
    model = word_classifier()
    with pytest.raises(ValueError, match=r"rows have different lengths; pad them .* lengths="):
        model.predict([[2, 3, 4], [2, 3]])
    padded = np.array([[2, 3, 4], [2, 3, 0]])
    y = model.predict(padded, lengths=[3, 2])
    np.testing.assert_allclose(y[1], model.predict(np.array([[2, 3]]))[0], rtol=1e-6, atol=1e-6)


# -- 9. the smaller items ------------------------------------------------------------------------------

def test_save_refuses_the_names_of_formats_it_does_not_write(tmp_path):
    model = word_classifier()
    for name in ("x.onnx", "x.keras", "x.h5", "x.pt", "X.ONNX"):
        with pytest.raises(ValueError, match=r"not (ONNX|Keras|Keras HDF5|PyTorch): name the file \*\.safetensors"):
            fastrnn.save(model, tmp_path / name)
    assert os.listdir(tmp_path) == []
    fastrnn.save(model, tmp_path / "x.model")  # any other name: the content tells the format
    assert fastrnn.load(tmp_path / "x.model").count_params() == model.count_params()


def test_summary_of_a_quantized_file_says_so(tmp_path):
    fastrnn.save(word_classifier(), tmp_path / "m.safetensors")
    for kind in ("int8", "float16"):
        assert fastrnn_cli("convert", "m.safetensors", f"{kind}.safetensors", "--quantize", kind,
                           cwd=tmp_path).returncode == 0
        out = fastrnn_cli("summary", f"{kind}.safetensors", cwd=tmp_path)
        assert out.returncode == 0 and f"Weights: {kind} (weight matrices" in out.stdout.decode()
    assert "Weights:" not in fastrnn_cli("summary", "m.safetensors", cwd=tmp_path).stdout.decode()


def test_prompt_or_stream_with_batch_is_an_error(tmp_path):
    write_lines(tmp_path / "p.txt", ["def "])
    for extra in (["--prompt", "x"], ["--stream"]):
        assert_one_line_error(fastrnn_cli("generate", "--batch", "p.txt", *extra, cwd=tmp_path),
                              extra[0], "do not go together")
    out = fastrnn_cli("generate", "--batch", "p.txt", "--no-stream", "-n", "2", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_blank_lines_of_a_batch_file_are_skipped_not_fatal(tmp_path):
    from fastrnn.generate import bundled_model

    write_lines(tmp_path / "p.txt", ["def ", "", "class ", ""])
    for source, stdin in (("p.txt", None), ("-", (tmp_path / "p.txt").read_bytes())):
        out = fastrnn_cli("generate", "--batch", source, "-n", "3", "--seed", "1", cwd=tmp_path, stdin=stdin)
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
        assert [r["prompt"] for r in rows] == ["def ", "class "]
        assert rows[1]["text"] == bundled_model().generate("class ", max_new_tokens=3, seed=1)
        name = "p.txt" if source == "p.txt" else "<stdin>"
        assert out.stderr.decode().splitlines() == [f"fastrnn generate: skipped line 2 of {name}: empty",
                                                    f"fastrnn generate: skipped line 4 of {name}: empty"]


KOREAN = ["영화 정말 재밌어요", "시간 낭비", "house"]


@pytest.mark.parametrize("encoding", ["cp949", "euc-kr", "utf-16", "utf-16-le", "utf-8"])
def test_encoding_option_reads_korean_files(tmp_path, encoding):
    model = word_classifier()
    fastrnn.save(model, tmp_path / "m.safetensors")
    (tmp_path / "in.txt").write_bytes(("\r\n".join(KOREAN) + "\r\n").encode(encoding))  # Windows line ends
    out = fastrnn_cli("classify", "in.txt", "--model", "m.safetensors", "--encoding", encoding, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == KOREAN
    want = list(model.classify(KOREAN))
    assert [r["label"] for r in rows] == [w.label for w in want]
    # generate --batch reads the same way (the bundled character model)
    (tmp_path / "p.txt").write_bytes("def \nclass \n".encode(encoding))
    out = fastrnn_cli("generate", "--batch", "p.txt", "--encoding", encoding, "-n", "2", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["prompt"] for line in out.stdout.decode().splitlines()] == ["def ", "class "]


def test_a_cp949_file_read_as_utf8_points_to_encoding(tmp_path):
    (tmp_path / "in.txt").write_bytes("영화\n".encode("cp949"))
    assert_one_line_error(fastrnn_cli("classify", "in.txt", cwd=tmp_path), "line 1 is not valid UTF-8",
                          "--encoding ENC", "cp949")
    assert_one_line_error(fastrnn_cli("classify", "in.txt", "--encoding", "klingon", cwd=tmp_path),
                          "unknown encoding 'klingon'")
    assert_one_line_error(fastrnn_cli("classify", "in.txt", "--encoding", "utf-16", "--errors", "skip", cwd=tmp_path),
                          "--errors skip", "--errors replace")
    (tmp_path / "bad16.txt").write_bytes("ab\ncd\n".encode("utf-16-le") + b"\x00\xdc")  # a lone low surrogate
    assert_one_line_error(fastrnn_cli("classify", "bad16.txt", "--encoding", "utf-16-le", cwd=tmp_path),
                          "line 3 is not valid utf-16-le")
    assert_one_line_error(fastrnn_cli("generate", "--encoding", "cp949", "--prompt", "x"), "--encoding", "--batch")


def _synopses():
    import glob
    import re

    text = ""
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path, encoding="utf-8") as f:
            text += f.read() + "\n"
    return text, re


def _command_synopses(text, re):
    """{command: its synopsis} from the documentation's plain code blocks (the block that starts
    "fastrnn COMMAND [" and its indented lines; of several, the one with the most options)."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "":
            lines.append(line)
    found = {"fastrnn": next(line for line in lines if line.startswith("fastrnn ["))}
    for i, line in enumerate(lines):
        m = re.match(r"fastrnn ([\w-]+) ", line)
        if m:
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            block = "\n".join(lines[i:j])
            if block.count("[") > found.get(m.group(1), "").count("["):
                found[m.group(1)] = block
    return found


def test_synopses_list_every_choice_of_an_option():
    """`--weights auto` was missing from the generate synopsis: where a command's synopsis lists
    the choices of an option, it lists all of them (a metavar such as LEVEL, explained in the
    text, is fine)."""
    from test_first_hour import _subcommands

    text, re = _synopses()
    synopses = _command_synopses(text, re)
    parser, commands = _subcommands()
    checked = []
    for name, p in [("fastrnn", parser)] + list(commands.items()):
        for action in p._actions:
            if not action.choices or not action.option_strings:
                continue
            option = action.option_strings[-1]
            shown = [s for s in re.findall(re.escape(option) + r" ([\w|.-]+)\]", synopses[name]) if "|" in s]
            assert all(set(map(str, action.choices)) <= set(s.split("|")) for s in shown), \
                f"fastrnn {name} {option}: the synopsis lacks some of {list(action.choices)} (found {shown})"
            checked += [f"{name} {option}"] * bool(shown)
    assert {"generate --weights", "classify --errors", "convert --quantize"} <= set(checked)


BENCH_ENV = {k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"}


def test_bench_compare_help_and_plot_without_matplotlib():
    out = subprocess.run([sys.executable, "-m", "bench.compare", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env=BENCH_ENV)
    assert out.returncode == 0, out.stderr
    assert "../" not in out.stdout and "shared/" not in out.stdout and "bench/models.py" in out.stdout
    assert "--plot PNG" in out.stdout and "matplotlib" in out.stdout
    code = ("import sys; sys.modules['matplotlib'] = None; from bench.compare import main; "
            "sys.exit(main(['--plot', 'x.png', '-w', 'startup', '-r', '1']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=BENCH_ENV)
    assert out.returncode == 2 and "--plot needs matplotlib" in out.stderr, out.stderr
    assert "CPU:" not in out.stdout  # refused before the run started
    assert not os.path.exists(os.path.join(ROOT, "x.png"))
    extras = pyproject()["project"]["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["bench"])


def test_bench_dask_says_how_long_documents_lines_and_cleans_up(tmp_path):
    import signal
    import time

    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_dask.py"), "--help"],
                         capture_output=True, text=True, timeout=300, env=BENCH_ENV)
    assert out.returncode == 0, out.stderr
    assert "--lines LINES" in out.stdout and "minutes" in out.stdout and "Ctrl-C" in out.stdout
    text, _ = _synopses()
    assert "bench_dask.py --lines 100000 --repeats 1 --skip-cli" in text and "20-30" in text
    # Ctrl-C while it writes its corpus (no cluster started yet): the corpus folder goes away
    env = dict(BENCH_ENV, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "bench_dask.py"), "--lines", "5000000",
                             "--repeats", "1", "--skip-cli"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, preexec_fn=default_sigint)
    try:
        for line in proc.stdout:  # wait until the corpus is being written
            if line.startswith("writing the corpus"):
                break
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fastrnn-bench-dask-")]
        # Ctrl-C, again if need be: Python loses a KeyboardInterrupt raised inside a finalizer (a
        # __del__ run by the garbage collector), as a user who presses it twice would see
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        err = proc.communicate(timeout=10)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted: the generated corpus is removed" in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.name.startswith("fastrnn-bench-dask-") for p in tmp_path.iterdir()):
        time.sleep(0.1)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("fastrnn-bench-dask-")]


def test_other_libraries_deprecations_are_filtered_fastrnns_warnings_fail():
    import warnings

    filters = pyproject()["tool"]["pytest"]["ini_options"]["filterwarnings"]
    assert filters[-1] == "error::Warning:fastrnn(\\..*)?"  # the last matching line wins: fastrnn's stay errors
    assert "ignore::DeprecationWarning" in filters
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("old API", DeprecationWarning, "k.py", 1, module="keras.src.x")
        warnings.warn_explicit("old API", FutureWarning, "t.py", 1, module="torch.onnx")
    assert caught == []
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="fastrnn.formats.x")


# -- 1 / 5. the extras: onnxscript for the exporter, keras for the Keras examples, no unpinned torch --

def test_extras_install_what_the_examples_import():
    from importlib.metadata import PackageNotFoundError, requires

    extras = pyproject()["project"]["optional-dependencies"]
    names = {k: {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in v} for k, v in extras.items()}
    assert {"h5py", "keras"} <= names["keras"]
    assert {"onnx", "onnxscript"} <= names["onnx"] and "onnxscript" in names["test"]
    assert "matplotlib" in names["bench"]
    # every torch requirement of every extra is the pin; onnxscript and keras do not pull torch in
    assert all(d == "torch==2.13.0" for v in extras.values() for d in v if d.lower().startswith("torch"))
    for package in ("onnxscript", "onnx_ir", "keras"):
        try:
            needs = requires(package) or []
        except PackageNotFoundError:  # pragma: no cover - the test extra installs them
            pytest.fail(f"{package} is not installed: pip install \".[test]\"")
        assert not [r for r in needs if r.lower().startswith("torch")], (package, needs)


def test_torch_pin_accepts_the_cpu_build_and_the_docs_say_how_to_get_it():
    from packaging.specifiers import SpecifierSet

    assert "2.13.0+cpu" in SpecifierSet("==2.13.0")  # the CPU index's wheel satisfies the extras' pin
    with open(os.path.join(ROOT, "docs", "loading.md"), encoding="utf-8") as f:
        text = f.read()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text


def test_a_second_build_reuses_the_generated_c(tmp_path):
    """pip builds every `pip install ".[extra]"` in a fresh environment whose Cython include files
    are newer than the C generated last time: setup.py keeps that C while the .pyx files, Cython,
    NumPy and the directives are the same, so nothing is compiled again; a changed .pyx is
    cythonized again, and every extension depends on the C headers."""
    import shutil

    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    shutil.copytree(os.path.join(ROOT, "kernels"), tmp_path / "kernels",
                    ignore=shutil.ignore_patterns("*.so", "_cy*.c", ".cython-stamp.json", "__pycache__"))
    capture = ("import json, setuptools; setuptools.setup = lambda **kw: print(json.dumps("
               "[[e.name, e.sources, e.depends] for e in kw['ext_modules']])); exec(open('setup.py').read())")

    def extensions():
        out = subprocess.run([sys.executable, "-c", capture], capture_output=True, text=True, cwd=tmp_path,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = extensions()  # no generated C yet: Cython writes it
    assert all("kernels/rnn_core.h" in depends for _, _, depends in first)
    generated = sorted(tmp_path.glob("kernels/_cy*.c"))
    assert len(generated) == 3 and (tmp_path / "kernels" / ".cython-stamp.json").exists()
    # as in pip's fresh build environment: Cython's own include files (libc/*.pxd) newer than the C
    old = 1_000_000_000 * 10**9  # 2001
    sources = [p for pattern in ("*.pyx", "*.pxi", "*.pxd") for p in tmp_path.glob("kernels/" + pattern)]
    assert any(p.suffix == ".pxi" for p in sources)  # rnn_core.pxi: included by every .pyx
    for p in sources:  # the .pyx files and what they include, all older than the C
        os.utime(p, ns=(old, old))
    for p in generated:
        os.utime(p, ns=(old + 10**9, old + 10**9))
    times = [p.stat().st_mtime_ns for p in generated]
    again = extensions()  # the same inputs: that C is compiled as it is, nothing regenerated
    assert [p.stat().st_mtime_ns for p in generated] == times
    assert all(any(s.endswith(".c") and "/_cy" in s for s in sources) for _, sources, _ in again)
    assert all("kernels/rnn_core.h" in depends for _, _, depends in again)
    pyx = tmp_path / "kernels" / "_cyint8.pyx"
    os.utime(pyx, ns=(pyx.stat().st_atime_ns, max(times) + 10**9))  # an edited .pyx
    extensions()
    assert all(p.stat().st_mtime_ns > t for p, t in zip(generated, times))  # cythonized again
    times = [p.stat().st_mtime_ns for p in generated]
    pxi = tmp_path / "kernels" / "rnn_core.pxi"
    os.utime(pxi, ns=(pxi.stat().st_atime_ns, max(times) + 10**9))  # an edited include file alone
    extensions()
    assert all(p.stat().st_mtime_ns > t for p, t in zip(generated, times))  # cythonized again
