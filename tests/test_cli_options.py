"""The effect of each command-line option on the output (issue 18): generate --top-k, --top-p,
--repetition-penalty, --stop, --weights, --threads, --stream/--no-stream; classify --max-length;
the global --backend; convert --last, --activation, --vocab-level, --quantize float16 / int8.

Outputs are compared with the Python API called with the same settings (itself tested against
the references in test_generate.py / test_classify.py) or with an independent computation.
Most commands run in a subprocess as a user runs them; where the effect is which setting reaches
the library (threads, streaming, backend), ``fastrnn.cli.main`` runs in-process with a spy.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
import fastrnn.cli
from conftest import FRAMEWORK_ATOL, assert_close
from fastrnn import generate as g
from fastrnn.generate import cli as generate_cli
from fastrnn.generate import run as generate_run
from fastrnn.classify import bundled_classifier
from fastrnn.formats import safetensors

N = 60  # tokens per generation: enough for sampling settings to show


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", *map(str, args)], capture_output=True, input=stdin,
                          timeout=300, encoding="utf-8", env=dict(os.environ, PYTHONIOENCODING="utf-8"))


def generated(res, prompt):
    """The text after the prompt of `fastrnn generate` (prompt + text + newline)."""
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(prompt) and res.stdout.endswith("\n"), res.stdout
    return res.stdout[len(prompt):-1]


@pytest.fixture(scope="module")
def char():
    return g.bundled_model()


@pytest.fixture(scope="module")
def greedy(char):
    return char.generate("def ", max_new_tokens=N, temperature=0)


# -- generate: sampling options ----------------------------------------------------------------
def test_top_k_1_is_greedy(char, greedy):
    text = generated(cli("generate", "--prompt", "def ", "-n", N, "--top-k", 1, "--seed", 5), "def ")
    assert text == greedy
    assert char.generate("def ", max_new_tokens=N, seed=5, temperature=0.8) != greedy, "seed 5 must sample"
    text = generated(cli("generate", "--prompt", "def ", "-n", N, "--top-k", 3, "--seed", 5), "def ")
    assert text == char.generate("def ", max_new_tokens=N, seed=5, temperature=0.8, top_k=3)


def test_top_p(char, greedy):
    # a tiny top-p keeps only the most likely token (the one that crosses p): greedy
    text = generated(cli("generate", "--prompt", "def ", "-n", N, "--top-p", 1e-6, "--seed", 5), "def ")
    assert text == greedy
    text = generated(cli("generate", "--prompt", "def ", "-n", N, "--top-p", 0.6, "--seed", 5), "def ")
    want = char.generate("def ", max_new_tokens=N, seed=5, temperature=0.8, top_p=0.6)
    assert text == want and want != char.generate("def ", max_new_tokens=N, seed=5, temperature=0.8)


def test_repetition_penalty(char, greedy):
    text = generated(cli("generate", "--prompt", "def ", "-n", N, "--temperature", 0, "--repetition-penalty", 1.8),
                     "def ")
    want = char.generate("def ", max_new_tokens=N, temperature=0, repetition_penalty=1.8)
    assert text == want and want != greedy


def test_stop_truncates_before_the_first_stop_string(greedy):
    stop = greedy[12:15]
    end = greedy.index(stop)
    text = generated(cli("generate", "--prompt", "def ", "-n", N, "--temperature", 0, "--stop", stop), "def ")
    assert text == greedy[:end], "generation ends at the first match; the stop text is not printed"
    # repeatable: the earliest match of any of them wins
    other = greedy[30:33]
    both = generated(cli("generate", "--prompt", "def ", "-n", N, "--temperature", 0, "--stop", other, "--stop", stop),
                     "def ")
    assert both == greedy[:min(end, greedy.index(other))]


def weights_model():
    """Vocabulary "abc"; after any input h = [1, 1] (tanh of a bias of 20); logits W @ h with
    rows a: 1.0, b: 0.995 + 0.004 = 0.999, c: 0.5 + (0.5 + 2^-12) = 1 + 2^-12.
    float32 picks c. float16 rounds 0.5 + 2^-12 to 0.5 (a tie, the first max: a) and b to
    0.99911. int8 (per-row scale 0.995 / 127) rounds 0.004 up to one step, 0.00783: b = 1.0028
    wins. So greedy text tells which weights ran."""
    emb = fastrnn.Embedding(np.zeros((3, 1), np.float32))
    rec = fastrnn.Recurrent(cell="rnn", hidden_size=2, directions=[fastrnn.DirectionWeights(
        w_ih=np.zeros((2, 1), np.float32), w_hh=np.zeros((2, 2), np.float32),
        b_ih=np.full(2, 20, np.float32), b_hh=np.zeros(2, np.float32))])
    w = np.array([[1.0, 0.0], [0.995, 0.004], [0.5, 0.5 + 2 ** -12]], np.float32)
    dense = fastrnn.Dense(w, np.zeros(3, np.float32))
    return fastrnn.Model([emb, rec, dense], vocabulary=fastrnn.Vocabulary(list("abc")))


@pytest.mark.parametrize("weights,want", [("float32", "ccccc"), ("float16", "aaaaa"), ("int8", "bbbbb")])
def test_weights(tmp_path, weights, want):
    model = weights_model()
    assert model.generate("a", max_new_tokens=5, temperature=0, weights=weights) == want
    fastrnn.save(model, tmp_path / "w.safetensors")
    res = cli("generate", "--model", tmp_path / "w.safetensors", "--prompt", "a", "-n", 5, "--temperature", 0,
              "--weights", weights)
    assert generated(res, "a") == want


# -- generate: threads and streaming (which settings reach the library) ---------------------------
@pytest.fixture
def spy_generate(monkeypatch):
    calls = []
    real = g.generate

    def spy(model, prompt, **kw):
        calls.append(kw)
        return real(model, prompt, **kw)

    monkeypatch.setattr(generate_cli, "generate", spy)  # the generate() that `fastrnn generate` calls
    return calls


def test_threads_reach_generation_and_change_nothing(tmp_path, spy_generate, capsys, char):
    prompts = ["def ", "class A", "import os", "x = ", "for i in", "return", "while ", "if not"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    outs = {}
    for threads in (1, 2):
        assert fastrnn.cli.main(["generate", "--batch", str(tmp_path / "p.txt"), "-n", "30", "--seed", "3",
                                 "--threads", str(threads)]) == 0
        outs[threads] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["threads"] for c in spy_generate] == [1, 2]
    assert outs[1] == outs[2]
    want = char.generate(prompts, max_new_tokens=30, seed=3, temperature=0.8)
    assert [r["text"] for r in outs[1]] == want


def test_stream_and_no_stream(spy_generate, capsys, char):
    want = "def " + char.generate("def ", max_new_tokens=N, seed=2, temperature=0.8) + "\n"
    for flag, streamed in (("--stream", True), ("--no-stream", False)):
        assert fastrnn.cli.main(["generate", "--prompt", "def ", "-n", str(N), "--seed", "2", flag]) == 0
        assert capsys.readouterr().out == want
        assert bool(spy_generate[-1].get("stream")) is streamed, flag
    res = cli("generate", "--prompt", "def ", "-n", N, "--seed", 2, "--no-stream")
    assert res.stdout == want


# -- classify --max-length -------------------------------------------------------------------------
def test_classify_max_length(tmp_path):
    lines = ["hausmaisonmaisonmaison", "casahousehousehouse", "maison"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = bundled_classifier()
    labels = model.metadata["labels"]
    for max_length in (4, None):
        args = ["classify", tmp_path / "in.txt"] + (["--max-length", max_length] if max_length else [])
        res = cli(*args)
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert [r["text"] for r in rows] == lines, "the whole line is echoed, only the model sees less"
        cut = [line[:max_length] if max_length else line for line in lines]
        want = [r.probabilities for r in model.classify(cut)]
        for row, p in zip(rows, want):
            assert_close([row["probabilities"][k] for k in labels], p, atol=1e-6)
        if max_length:
            assert [r["label"] for r in rows[:2]] == ["de", "es"]
        else:
            assert [r["label"] for r in rows[:2]] != ["de", "es"]


# -- the global --backend ------------------------------------------------------------------------
@pytest.mark.parametrize("name", fastrnn.available_backends())
def test_backend_option_runs_the_command_on_that_backend(name, tmp_path, monkeypatch, capsys):
    before = fastrnn.get_backend().name
    calls = {}
    for n in fastrnn.available_backends():
        be = fastrnn.get_backend(n)
        real = be.recurrent
        monkeypatch.setattr(be, "recurrent", lambda *a, _n=n, _real=real, **k: (calls.__setitem__(_n, calls.get(_n, 0) + 1),
                                                                              _real(*a, **k))[1])
    (tmp_path / "in.txt").write_text("house\nmaison\n", encoding="utf-8")
    try:
        assert fastrnn.cli.main(["--backend", name, "classify", str(tmp_path / "in.txt")]) == 0
        assert fastrnn.get_backend().name == name
    finally:
        fastrnn.set_backend(before)
    assert set(calls) == {name}
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = list(bundled_classifier().classify(["house", "maison"], backend=name))
    assert [r["label"] for r in rows] == [r.label for r in want]
    # generation too: the loop of that backend
    monkeypatch.setattr(generate_run, "get_engine", lambda backend=None, _real=g.get_engine: calls.setdefault(
        "engine", _real(backend)))  # the engine lookup of generate()'s sampling run
    try:
        assert fastrnn.cli.main(["--backend", name, "generate", "--prompt", "a", "-n", "3", "--seed", "1"]) == 0
    finally:
        fastrnn.set_backend(before)
    assert calls["engine"].name == name


# -- convert options ---------------------------------------------------------------------------------
class Net(nn.Module):
    """Embedding -> GRU -> Linear, saved as a state_dict."""

    def __init__(self, vocab=6, classes=4):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 5)
        self.gru = nn.GRU(5, 7, batch_first=True)
        self.fc = nn.Linear(7, classes)


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory):
    torch.manual_seed(0)
    net = Net().eval()
    folder = tmp_path_factory.mktemp("convert")
    torch.save(net.state_dict(), folder / "net.pt")
    (folder / "words.txt").write_text("\n".join(["<unk>", "the", "cat", "sat", "on", "mat"]) + "\n", encoding="utf-8")
    return net, folder


def convert(folder, *args):
    out = folder / "out.safetensors"
    assert fastrnn.cli.main(["convert", str(folder / "net.pt"), str(out), "--cell", "gru", *map(str, args)]) == 0
    return out


def torch_outputs(net, ids):
    with torch.no_grad():
        y, h = net.gru(net.embedding(torch.from_numpy(ids)))
        return net.fc(y).numpy(), net.fc(h[-1]).numpy()


def test_convert_last_and_activation(state_dict_file, capsys):
    net, folder = state_dict_file
    ids = np.random.default_rng(0).integers(0, 6, (3, 9))
    per_step, last = torch_outputs(net, ids)
    model = fastrnn.load(convert(folder))  # default: the Linear on every step, linear
    assert_close(model.predict(ids), per_step, FRAMEWORK_ATOL)
    model = fastrnn.load(convert(folder, "--last"))  # the Linear on the final state
    assert_close(model.predict(ids), last, FRAMEWORK_ATOL)
    model = fastrnn.load(convert(folder, "--last", "--activation", "softmax"))
    assert_close(model.predict(ids), torch.softmax(torch.from_numpy(last), 1).numpy(), FRAMEWORK_ATOL)
    model = fastrnn.load(convert(folder, "--activation", "sigmoid"))
    assert_close(model.predict(ids), 1 / (1 + np.exp(-per_step)), FRAMEWORK_ATOL)
    capsys.readouterr()


def test_convert_vocab_level(state_dict_file, capsys):
    net, folder = state_dict_file
    model = fastrnn.load(convert(folder, "--last", "--vocab", folder / "words.txt", "--vocab-level", "word"))
    assert model.vocabulary.level == "word" and model.vocabulary.tokens[1] == "the"
    (r,) = model.classify(["the cat sat on the mat"])
    _, last = torch_outputs(net, np.array([[1, 2, 3, 4, 1, 5]]))
    assert_close(r.probabilities, torch.softmax(torch.from_numpy(last[0]), 0).numpy(), FRAMEWORK_ATOL)
    char = fastrnn.load(convert(folder, "--last", "--vocab", folder / "words.txt"))  # default: char level
    assert char.vocabulary.level == "char"
    capsys.readouterr()


def stored_matrices(path):
    tensors, _ = safetensors.read(path, mmap=False)
    return {k: a for k, a in tensors.items() if a.ndim == 2}


def test_convert_quantize_float16_values(state_dict_file, capsys):
    net, folder = state_dict_file
    src = fastrnn.load(convert(folder))
    src_m = stored_matrices(folder / "out.safetensors")
    out = convert(folder, "--quantize", "float16")
    assert "float16" in capsys.readouterr().out
    q = stored_matrices(out)
    assert q.keys() == src_m.keys() and {a.dtype for a in q.values()} == {np.dtype(np.float16)}
    for k, a in src_m.items():
        np.testing.assert_array_equal(q[k], a.astype(np.float16), err_msg=k)  # round to nearest
    loaded = fastrnn.load(out)
    assert loaded.metadata["quantized"] == "float16" and loaded.count_params() == src.count_params()


def test_convert_quantize_int8_values(state_dict_file, capsys):
    net, folder = state_dict_file
    src_m = stored_matrices(convert(folder))
    out = convert(folder, "--quantize", "int8")
    assert "int8" in capsys.readouterr().out
    tensors, _ = safetensors.read(out, mmap=False)
    for k, a in src_m.items():
        q, scale = tensors[k], tensors[k + ".scale"]
        assert q.dtype == np.int8 and scale.dtype == np.float32
        # per row: scale = max |w| / 127, q = round(w / scale); within half a step of w
        np.testing.assert_allclose(scale, np.abs(a).max(axis=1) / 127, rtol=1e-6, err_msg=k)
        np.testing.assert_array_equal(q, np.rint(a / scale[:, None]).astype(np.int8), err_msg=k)
        assert np.all(np.abs(q * scale[:, None] - a) <= scale[:, None] / 2 * (1 + 1e-6)), k
    loaded = fastrnn.load(out)
    assert loaded.metadata["quantized"] == "int8"
