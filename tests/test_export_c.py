"""Export to C (issue 29): the generated C99 compiled with the system compiler
(``-std=c99 -Wall -Wextra -Werror -pedantic -O2``) against Model.predict, Model.generate and
Model.classify, for the bundled models and for models written in the tests by real Keras 3
(KERAS_BACKEND=torch) and PyTorch.

Tolerances (float32): the C sums each product in another order than the compiled kernels and has
its own expf / tanhf, so outputs are within 1e-5 (plus 1e-5 relative, for logits of 10 and more)
of Model.predict. int8: the exported integers are fastrnn's int8 rule bit for bit, the C
quantizes activation rows to the same integers as fastrnn.quantize.quantize_rows, and outputs
are within 1e-6 (plus 1e-6 relative) of fastrnn's int8 NumPy reference (``backend="numpy"``).

Cross builds: the bundled character model for a Cortex-M4 (arm-none-eabi-gcc, newlib) in float32
and int8, linked with a minimal main (sizes printed, as in docs/running-without-python.md), and
an aarch64 Linux build run under qemu-aarch64, whose outputs equal the x86 build's within 1e-5.
CI installs the compilers and qemu with apt (.ci/run); outside CI a missing tool skips its tests.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close, in_ci, require
from fastrnn.cexport import ExportError
from fastrnn.layers import Activation, BatchNormalization, Conv1D, Dense, Embedding, Recurrent, Select
from fastrnn.quantize import quantize_int8, quantize_rows
from helpers import random_recurrent

FLOAT = dict(atol=1e-5, rtol=1e-5)  # float32 C against Model.predict
INT8 = dict(atol=1e-6, rtol=1e-6)  # int8 C against fastrnn's int8 reference
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os"]
QEMU_AARCH64 = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


def tool(name):
    """A command-line tool the tests need: a skip outside CI, a failure in CI (.ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        if in_ci():
            pytest.fail(f"{name} is not installed (.ci/run installs it with apt)")
        pytest.skip(f"{name} is not installed")
    return path


def compile_c(sources, out, cc="cc", flags=CFLAGS, extra=()):
    tool(cc)
    cmd = [cc, *flags, *map(str, sources), "-o", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    return out


# -- a harness program for any exported model --------------------------------------------------
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "$n.h"

static $n_state s;

/* stdin: int32 mode (0 predict, 1 step by step), int32 steps, int32 has_state, [state floats],
   inputs (int32 ids or float features); stdout: int32 rc, outputs, final state */
int main(void)
{
    int32_t head[3], rc = 0;
    long n_in, n_out, t;
    float *out;
    void *in;
    if (fread(head, sizeof head, 1, stdin) != 1)
        return 3;
    $n_reset(&s);
    if (head[2] && fread(s.state, sizeof s.state, 1, stdin) != 1)
        return 3;
    n_in = (long)head[1] * ($N_TAKES_TOKENS ? 1 : $N_INPUT_SIZE);
    n_out = (head[0] == 1 || $N_OUTPUT_PER_STEP) ? (long)head[1] * $N_OUTPUT_SIZE : $N_OUTPUT_SIZE;
    in = malloc((size_t)(n_in + 1) * 4);
    out = calloc((size_t)(n_out + 1), sizeof *out);
    if (!in || !out || fread(in, 4, (size_t)n_in, stdin) != (size_t)n_in)
        return 3;
    if (head[0] == 0) {
        rc = $n_predict(&s, in, head[1], out);
    } else {
#if $N_CAN_STEP
        for (t = 0; t < head[1] && rc == 0; t++)
#if $N_TAKES_TOKENS
            rc = $n_step(&s, ((int32_t *)in)[t], out + t * $N_OUTPUT_SIZE);
#else
            rc = $n_step(&s, (float *)in + t * $N_INPUT_SIZE, out + t * $N_OUTPUT_SIZE);
#endif
#else
        rc = 99;
        (void)t;
#endif
    }
    fwrite(&rc, sizeof rc, 1, stdout);
    fwrite(out, sizeof *out, (size_t)n_out, stdout);
    fwrite(s.state, sizeof s.state, 1, stdout);
    return 0;
}
"""


class Exported:
    """A model exported to a directory, compiled with the harness (and main.c when written)."""

    def __init__(self, model, directory, name, weights=None, example=False, cc="cc", runner=(), flags=CFLAGS,
                 **kw):
        self.model, self.name, self.runner = model, name, list(runner)
        self.paths = fastrnn.export_c(model, str(directory), name=name, weights=weights, example=example, **kw)
        self.dir = directory
        self.header = (directory / f"{name}.h").read_text()
        self.state_size = int(re.search(rf"#define {name.upper()}_STATE_SIZE (\d+)", self.header).group(1))
        self.takes_tokens = f"{name.upper()}_TAKES_TOKENS 1" in self.header
        self.per_step = f"{name.upper()}_OUTPUT_PER_STEP 1" in self.header
        self.output_size = int(re.search(rf"#define {name.upper()}_OUTPUT_SIZE (\d+)", self.header).group(1))
        obj = directory / f"{name}.o"
        compile_c([directory / f"{name}.c"], obj, cc, flags, extra=("-c",))
        harness = directory / "harness.c"
        harness.write_text(HARNESS.replace("$N_", name.upper() + "_").replace("$n", name))
        self.harness = compile_c([harness, obj], directory / "harness", cc, flags, extra=("-lm",))
        self.main = None
        if example:
            self.main = compile_c([directory / "main.c", obj], directory / name, cc, flags, extra=("-lm",))

    def run(self, x, mode=0, state=None):
        """(rc, outputs, final state) of one sequence x: ids (T,) or features (T, F)."""
        x = np.asarray(x)
        T = x.shape[0]
        data = struct.pack("3i", mode, T, state is not None)
        if state is not None:
            data += np.asarray(state, np.float32).tobytes()
        data += (x.astype(np.int32) if self.takes_tokens else x.astype(np.float32)).tobytes()
        res = subprocess.run(self.runner + [str(self.harness)], input=data, capture_output=True, check=True)
        raw = res.stdout
        rc = struct.unpack("i", raw[:4])[0]
        values = np.frombuffer(raw[4:], np.float32)
        n_state = max(self.state_size, 1)
        out, st = values[:-n_state], values[-n_state:][: self.state_size]
        if mode == 1 or self.per_step:
            out = out.reshape(T, self.output_size)
        return rc, out, st


def flat_state(model, states):
    """Model.predict's states (one entry per recurrent node) -> the C's state vector."""
    parts = []
    for layer, st in zip(model.recurrent_layers, states):
        h, c = st if layer.cell == "lstm" else (st, None)
        for d in range(layer.num_directions):
            parts.append(h[d, 0])
            if c is not None:
                parts.append(c[d, 0])
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def split_state(model, flat):
    """The C's state vector -> Model.predict's initial_state."""
    out, at = [], 0
    for layer in model.recurrent_layers:
        D, Ho, H = layer.num_directions, layer.output_size_per_direction, layer.hidden_size
        hs, cs = [], []
        for _ in range(D):
            hs.append(flat[at:at + Ho])
            at += Ho
            if layer.cell == "lstm":
                cs.append(flat[at:at + H])
                at += H
        h = np.stack(hs)[:, None].astype(np.float32)
        out.append((h, np.stack(cs)[:, None].astype(np.float32)) if layer.cell == "lstm" else h)
    return out


def check_predict(ex, model, x, tol=FLOAT, backend=None, state=None, what=""):
    """The C's predict of one sequence against Model.predict: outputs and final states."""
    rc, out, st = ex.run(x, state=state)
    assert rc == 0, f"{what}: the C returned {rc}"
    init = None if state is None else split_state(model, np.asarray(state, np.float32))
    ref, states = model.predict(np.asarray(x)[None], initial_state=init, return_state=True, backend=backend)
    assert_close(out, ref[0], what=f"{what} outputs", **tol)
    assert_close(st, flat_state(model, states), what=f"{what} states", **tol)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tool("cc")
    return tmp_path_factory.mktemp("export_c")


# -- the bundled models --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def char_model():
    return fastrnn.generate.bundled_model()


@pytest.fixture(scope="module")
def char_f32(workdir, char_model):
    return Exported(char_model, workdir / "char_f32", "char_lstm", example=True)


@pytest.fixture(scope="module")
def char_i8(workdir, char_model):
    return Exported(char_model, workdir / "char_i8", "char_lstm", weights="int8")


@pytest.fixture(scope="module")
def langid():
    return fastrnn.classify.bundled_classifier()


@pytest.fixture(scope="module")
def langid_f32(workdir, langid):
    return Exported(langid, workdir / "langid_f32", "langid", example=True)


CODE = ("def main(argv=None):\n    parser = argparse.ArgumentParser(prog='x')\n    for name in sorted(items):\n"
        "        if name.startswith('_'):\n            continue\n        print(name, file=sys.stderr)\n")


def test_bundled_char_model_float32_matches_predict(char_f32, char_model):
    ids = np.array(char_model.vocabulary.encode(CODE), np.int64)
    out = check_predict(char_f32, char_model, ids, what="char_lstm float32")
    # step by step: the same numbers as one predict call
    rc, steps, _ = char_f32.run(ids[:40], mode=1)
    assert rc == 0
    np.testing.assert_array_equal(steps, out[:40])
    # from a given state (the struct's state is predict's initial_state)
    _, states = char_model.predict(ids[None, :30], return_state=True)
    check_predict(char_f32, char_model, ids[30:60], state=flat_state(char_model, states), what="from a state")


def test_bundled_char_model_greedy_text_is_generates(char_f32, char_model):
    for prompt, n in (("def ", 160), ("class Foo(", 80), ("é", 40)):  # é is not in the vocabulary: its unk id
        res = subprocess.run([str(char_f32.main), prompt, str(n)], capture_output=True, check=True)
        expected = prompt + char_model.generate(prompt, max_new_tokens=n, temperature=0) + "\n"
        assert res.stdout.decode("utf-8") == expected, prompt


def test_bundled_char_model_sampling_draws_as_generate(char_f32, char_model):
    """SplitMix64 and the inverse CDF of fastrnn.generate.sampling: the same seed, the same text."""
    for seed, temperature in ((7, 0.8), (2 ** 64 - 5, 1.3)):
        res = subprocess.run([str(char_f32.main), "--temperature", str(temperature), "--seed", str(seed), "import ",
                              "120"], capture_output=True, check=True)
        expected = "import " + char_model.generate("import ", 120, temperature=temperature, seed=seed) + "\n"
        assert res.stdout.decode() == expected


def test_example_program_refuses_bad_arguments(char_f32):
    for args in ([], ["def "], ["def ", "x"], ["--temperature", "-1", "a", "3"]):
        res = subprocess.run([str(char_f32.main), *args], capture_output=True)
        assert res.returncode == 2 and b"usage" in res.stderr, args


# the C library functions <math.h> declares (float and double spellings) that an export may call
MATH_H = {f + suffix for f in ("exp", "expm1", "log", "log1p", "tanh", "sqrt", "fabs", "floor", "ceil", "pow",
                               "erf", "fmax", "fmin", "round", "lrint") for suffix in ("", "f")}


@pytest.mark.parametrize("which", ["char_f32", "char_i8", "langid_f32"])
def test_model_source_needs_only_math_h_and_no_dynamic_memory(which, request):
    """NAME.c and NAME.h include <math.h> and <stdint.h> only, allocate nothing and keep no mutable
    file-scope data (the state is the caller's struct); the compiled object calls nothing outside
    <math.h> (its undefined symbols, read with nm)."""
    exported = request.getfixturevalue(which)
    name = exported.name
    for path in (exported.dir / f"{name}.c", exported.dir / f"{name}.h"):
        text = path.read_text()
        includes = set(re.findall(r"^\s*#\s*include\s*(\S+)", text, re.M))
        assert includes <= {"<math.h>", "<stdint.h>", f'"{name}.h"'}, (path.name, includes)
        assert not re.search(r"\b(malloc|calloc|realloc|free|alloca)\s*\(", text), path.name
        mutable = re.findall(r"^static\s+(?!const\b)[^(=;]*\[[^(]*[;=]", text, re.M)
        assert not mutable, (path.name, mutable[:3])
    tool("nm")
    undefined = subprocess.run(["nm", "-u", str(exported.dir / f"{name}.o")], capture_output=True, text=True,
                               check=True).stdout.split()
    called = {sym for sym in undefined if sym != "U"}
    assert called <= MATH_H, called - MATH_H


def test_bundled_char_model_int8_integers_are_fastrnns(char_i8, char_model, workdir):
    """Every weight matrix in the C is fastrnn's int8 rule (q and scale, bit for bit), and the C
    quantizes activation rows to the integers of fastrnn.quantize.quantize_rows."""
    source = (char_i8.dir / "char_lstm.c").read_text()
    q_model = char_model.quantize("int8")
    layers = {n.name: n.layer for n in q_model.plan().graph.nodes}
    emb, l0, l1, fc = layers["embedding"], layers["lstm_l0"], layers["lstm_l1"], layers["fc"]
    expected = {"n0": (emb.weight, False), "n1_d0_w_ih": (l0.directions[0].w_ih, True),
                "n1_d0_w_hh": (l0.directions[0].w_hh, True), "n2_d0_w_ih": (l1.directions[0].w_ih, True),
                "n2_d0_w_hh": (l1.directions[0].w_hh, True), "n3_w": (fc.weight, True)}
    declared = re.findall(r"static const int8_t char_lstm_(\w+)_q\[", source)
    assert sorted(declared) == sorted(expected)
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((6, 256)) * rng.uniform(0.01, 30, (6, 1))).astype(np.float32)
    rows[0] = 0.0  # all zeros: scale 1
    rows[1, :] = 3.0  # every value at the maximum
    rows[2, 0] = 127.0  # scale 1: every x * (1 / xs) = k + 0.5 exactly, rounded half to even
    rows[2, 1:] = np.float32(0.5) + np.arange(255, dtype=np.float32) % 120
    dumps = "\n".join(f"    fwrite(char_lstm_{k}_q, 1, sizeof char_lstm_{k}_q, stdout);\n"
                      f"    fwrite(char_lstm_{k}_scale, 1, sizeof char_lstm_{k}_scale, stdout);" for k in expected)
    probe = char_i8.dir / "probe.c"
    probe.write_text(
        '#include <stdio.h>\n#include "char_lstm.c"\n\nint main(void)\n{\n    float x[256], xs;\n    int8_t xq[256];\n'
        f"{dumps}\n"
        "    while (fread(x, sizeof x, 1, stdin) == 1) {\n        xs = char_lstm_quantize_row(x, 256, xq);\n"
        "        fwrite(&xs, sizeof xs, 1, stdout);\n        fwrite(xq, 1, sizeof xq, stdout);\n    }\n    return 0;\n}\n")
    binary = compile_c([probe], char_i8.dir / "probe", extra=("-lm",))
    raw = subprocess.run([str(binary)], input=rows.tobytes(), capture_output=True, check=True).stdout
    at = 0
    for k, (w, transposed) in expected.items():
        q, scale = quantize_int8(w)
        n = q.size
        got_q = np.frombuffer(raw[at:at + n], np.int8)
        at += n
        got_s = np.frombuffer(raw[at:at + 4 * scale.size], np.float32)
        at += 4 * scale.size
        np.testing.assert_array_equal(got_q, (q.T if transposed else q).reshape(-1), err_msg=k)
        np.testing.assert_array_equal(got_s, scale, err_msg=k)
    xq, xs = quantize_rows(rows)
    for r in range(rows.shape[0]):
        got_xs = np.frombuffer(raw[at:at + 4], np.float32)[0]
        got_xq = np.frombuffer(raw[at + 4:at + 260], np.int8)
        at += 260
        assert got_xs == xs[r]
        np.testing.assert_array_equal(got_xq, xq[r], err_msg=f"row {r}")
    assert at == len(raw)


def test_bundled_char_model_int8_matches_int8_reference(char_i8, char_model):
    q = char_model.quantize("int8")
    ids = np.array(char_model.vocabulary.encode(CODE), np.int64)
    check_predict(char_i8, q, ids[:120], tol=INT8, backend="numpy", what="char_lstm int8")
    # an int8 model (an int8 file) exports as int8 by default; float32 C would not be what it computes
    assert fastrnn.cexport.export.resolve_weights(q, None) == "int8"
    with pytest.raises(ExportError, match="int8 products"):
        fastrnn.export_c(q, str(char_i8.dir / "refused"), weights="float32")


LINES = ["house", "maison", "Haus", "casa", "ÉCOLE", "Straße", "한국어 문장", "", "   ", "zzzz", "naïve café",
         "\ufeffbom at the start", "ends with a carriage return\r", "x" * 10_050]


def test_bundled_classifier_example_is_classify(langid_f32, langid):
    text = "\n".join(LINES) + "\n"
    res = subprocess.run([str(langid_f32.main)], input=text.encode("utf-8"), capture_output=True, check=True)
    got = [line.split("\t") for line in res.stdout.decode("utf-8").split("\n")[:-1]]
    assert len(got) == len(LINES)
    assert b"longer than max_length=10000" in res.stderr  # the warning of fastrnn classify, for the last line
    with pytest.warns(UserWarning, match="max_length"):
        expected = list(langid.classify([line + "\n" for line in LINES]))
    for row, r, line in zip(got, expected, LINES):
        assert row[0] == r.label, line
        assert_close(np.array(row[1:], np.float32), r.probabilities, atol=1e-5, rtol=1e-5, what=line)
    assert [row[0] for row in got[6:8]] == ["unknown", "unknown"]  # Korean, empty


def test_bundled_classifier_predict_and_int8(langid_f32, langid, workdir):
    ids = np.array(langid.vocabulary.encode("anticonstitutionnellement"), np.int64)
    check_predict(langid_f32, langid, ids, what="langid float32")
    rc, steps, _ = langid_f32.run(ids, mode=1)  # a classifier's step gives the output as if the text ended there
    assert rc == 0
    for t in (0, 5, len(ids) - 1):
        assert_close(steps[t], langid.predict(ids[None, :t + 1])[0], what=f"step {t}", **FLOAT)
    q = langid.quantize("int8")
    ex = Exported(langid, workdir / "langid_i8", "langid", weights="int8")
    check_predict(ex, q, ids, tol=INT8, backend="numpy", what="langid int8")


# -- models written by Keras 3 and PyTorch in the tests ------------------------------------------
def randomize_keras(model, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    out = []
    for w in model.weights:
        a = rng.standard_normal(w.shape) * scale
        if "variance" in w.path:
            a = np.abs(a) + 0.5
        out.append(a.astype(np.float32))
    model.set_weights(out)
    return model


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    """Keras 3 files: (name, fastrnn model, keras model), loaded by fastrnn from the .keras file."""
    keras = require("keras")
    if keras.backend.backend() != "torch":  # pragma: no cover
        pytest.skip("these tests need KERAS_BACKEND=torch")
    L = keras.layers
    d = tmp_path_factory.mktemp("keras")
    built = {}
    # ids with padding (mask_zero) -> GRU (reset_after=False) -> LayerNorm -> LSTM final state -> softmax
    built["k_classifier"] = keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(20, 8, mask_zero=True),
        L.GRU(12, reset_after=False, return_sequences=True), L.LayerNormalization(),
        L.LSTM(10), L.Dense(4, activation="softmax")])
    # features with Masking -> bidirectional LSTM (sum) -> Dense(tanh) -> bidirectional GRU (concat, final)
    built["k_bidirectional"] = keras.Sequential([
        keras.Input((None, 3)), L.Masking(0.0), L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="sum"),
        L.Dense(5, activation="tanh"), L.Bidirectional(L.GRU(4)), L.Dense(2)])
    # go_backwards SimpleRNN (relu) -> ave-merged bidirectional SimpleRNN -> per-step sigmoid
    built["k_backwards"] = keras.Sequential([
        keras.Input((None, 4)), L.SimpleRNN(7, activation="relu", go_backwards=True, return_sequences=True),
        L.Bidirectional(L.SimpleRNN(5, return_sequences=True), merge_mode="ave"), L.Dense(3, activation="sigmoid")])
    # a character model with a GRU (reset_after=True) and LSTM, logits per step
    built["k_char"] = keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(30, 6), L.GRU(16, return_sequences=True),
        L.LSTM(12, return_sequences=True), L.Dense(30)])
    out = {}
    for i, (name, km) in enumerate(built.items()):
        randomize_keras(km, seed=i)
        path = d / f"{name}.keras"
        km.save(str(path))
        model = fastrnn.load(str(path))
        model.name = name
        out[name] = (model, km)
    vocab = fastrnn.Vocabulary([chr(ord("a") + i) for i in range(26)] + [" ", ".", "\n", "?"])
    out["k_char"][0].vocabulary = vocab
    return out


@pytest.fixture(scope="module")
def keras_exported(keras_models, workdir):
    return {name: Exported(m, workdir / name, name) for name, (m, _) in keras_models.items()}


def test_keras_models_match_predict_and_keras(keras_models, keras_exported):
    rng = np.random.default_rng(5)
    import keras

    for name, (model, km) in keras_models.items():
        ex = keras_exported[name]
        if model.takes_tokens:
            x = rng.integers(1, model.input_size, 17)
        else:
            x = rng.standard_normal((17, model.input_size)).astype(np.float32)
        out = check_predict(ex, model, x, what=name)
        expected = keras.ops.convert_to_numpy(km(x[None].astype(np.int32 if model.takes_tokens else np.float32)))[0]
        assert_close(out, expected, atol=FRAMEWORK_ATOL, rtol=FRAMEWORK_RTOL, what=f"{name} vs Keras")


def test_keras_masks_padding_as_predict(keras_models, keras_exported):
    """Trailing padding (id 0, or a step of mask values) is skipped as Model.predict (and Keras) skip
    it; padding before the end, which Model.predict runs as Keras does (masks anywhere), is refused
    by the exported C with NAME_ERR_MASK (right padding only there): an error, never other numbers."""
    rng = np.random.default_rng(6)
    model, km = keras_models["k_classifier"]
    ex = keras_exported["k_classifier"]
    ids = rng.integers(1, 20, 12)
    padded = np.concatenate([ids, np.zeros(5, np.int64)])
    out = check_predict(ex, model, padded, what="padded ids")
    assert_close(out, model.predict(ids[None])[0], what="padded = unpadded", **FLOAT)
    rc, steps, _ = ex.run(padded, mode=1)  # streaming: a padded step leaves the state alone
    assert rc == 0 and np.array_equal(steps[-1], steps[len(ids) - 1])
    hole = padded.copy()
    hole[3] = 0
    assert ex.run(hole)[0] == -2  # NAME_ERR_MASK
    assert_close(model.predict(hole[None])[0], km.predict(hole[None], verbose=0)[0], atol=1e-4, rtol=1e-4,
                 what="a gap: fastrnn as Keras")
    assert ex.run(np.array([3, 20]))[0] == -1  # NAME_ERR_TOKEN: id 20 of a 20-row table
    with pytest.raises(IndexError):
        model.predict(np.array([[3, 20]]))
    # features: Masking(0.0) before a bidirectional layer (whole sequences)
    model, km = keras_models["k_bidirectional"]
    ex = keras_exported["k_bidirectional"]
    x = rng.standard_normal((9, 3)).astype(np.float32)
    padded = np.concatenate([x, np.zeros((4, 3), np.float32)])
    out = check_predict(ex, model, padded, what="masked features")
    assert_close(out, model.predict(x[None])[0], what="masked = unmasked", **FLOAT)


def test_keras_char_model_generates_as_generate(keras_models, workdir):
    model, _ = keras_models["k_char"]
    ex = Exported(model, workdir / "k_char_example", "k_char", example=True)
    for prompt in ("hello world", "why?"):
        res = subprocess.run([str(ex.main), prompt, "60"], capture_output=True, check=True)
        assert res.stdout.decode() == prompt + model.generate(prompt, 60, temperature=0) + "\n"
    res = subprocess.run([str(ex.main), "HELLO", "5"], capture_output=True)
    assert res.returncode == 2 and b"no id" in res.stderr  # upper case is not in this vocabulary (no unk id)


@pytest.fixture(scope="module")
def torch_models():
    torch = require("torch")
    nn = torch.nn
    torch.manual_seed(0)
    out = {}

    class ProjLSTM(nn.Module):  # Embedding -> 2-layer LSTM with a projection -> Linear
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 10)
            self.lstm = nn.LSTM(10, 24, num_layers=2, proj_size=8, batch_first=True)
            self.fc = nn.Linear(8, 40)

    class TanhGRU(nn.Module):  # a Tanh and a LayerNorm between the GRU and the Linear: step-by-step generation
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 12)
            self.gru = nn.GRU(12, 20, batch_first=True)
            self.act = nn.Tanh()
            self.norm = nn.LayerNorm(20)
            self.fc = nn.Linear(20, 40)
            self.out = nn.LogSoftmax(dim=-1)

    class BiClassifier(nn.Module):  # bidirectional LSTM, final states concatenated -> Linear
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 8)
            self.lstm = nn.LSTM(8, 9, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(18, 3)

    vocab = [chr(0xAC00 + i * 7) for i in range(38)] + [" ", "."]  # Hangul syllables, a space, a full stop
    for name, module, kw in (("t_proj", ProjLSTM(), {}), ("t_tanh", TanhGRU(), {}),
                             ("t_bi", BiClassifier(), {"return_sequences": False, "activation": "softmax"})):
        model = fastrnn.from_torch(module.eval(), vocabulary=vocab, name=name, **kw)
        out[name] = (model, module)
    # one-hot input: no Embedding, the LSTM reads one-hot vectors of the vocabulary
    onehot = nn.LSTM(40, 16, batch_first=True)
    head = nn.Linear(16, 40)
    out["t_onehot"] = (fastrnn.from_torch(nn.Sequential(onehot, head).eval(), vocabulary=vocab, name="t_onehot"), None)
    return out


@pytest.fixture(scope="module")
def torch_exported(torch_models, workdir):
    return {name: Exported(m, workdir / name, name, example=name != "t_bi") for name, (m, _) in torch_models.items()}


def test_torch_models_match_predict(torch_models, torch_exported):
    torch = require("torch")
    rng = np.random.default_rng(7)
    for name, (model, module) in torch_models.items():
        ex = torch_exported[name]
        if model.takes_tokens:
            x = rng.integers(0, model.input_size, 23)
        else:
            x = np.eye(40, dtype=np.float32)[rng.integers(0, 40, 23)]
        out = check_predict(ex, model, x, what=name)
        if name == "t_proj":  # and the framework itself
            with torch.no_grad():
                y, _ = module.lstm(module.emb(torch.tensor(x[None])))
                expected = module.fc(y).numpy()[0]
            assert_close(out, expected, atol=FRAMEWORK_ATOL, rtol=FRAMEWORK_RTOL, what="t_proj vs torch")


def test_torch_hangul_models_generate_as_generate(torch_models, torch_exported):
    """Hangul prompts through argv (UTF-8) and out again; the projected LSTM (compiled chain), the
    Tanh + LayerNorm graph (fastrnn's step-by-step generation) and the one-hot model."""
    for name in ("t_proj", "t_tanh", "t_onehot"):
        model, _ = torch_models[name]
        ex = torch_exported[name]
        vocab = model.vocabulary.tokens
        for prompt in (vocab[0] + vocab[3] + " " + vocab[10] + ".", vocab[5]):
            res = subprocess.run([str(ex.main), prompt, "40"], capture_output=True, check=True)
            expected = prompt + model.generate(prompt, 40, temperature=0) + "\n"
            assert res.stdout.decode("utf-8") == expected, name
        res = subprocess.run([str(ex.main), "--temperature", "1.0", "--seed", "11", vocab[1], "40"],
                             capture_output=True, check=True)
        expected = vocab[1] + model.generate(vocab[1], 40, temperature=1.0, seed=11) + "\n"
        assert res.stdout.decode("utf-8") == expected, name


def test_bidirectional_sequence_limit(torch_models, torch_exported, workdir):
    model, _ = torch_models["t_bi"]
    ex = torch_exported["t_bi"]
    assert "t_bi_step" not in ex.header and "#define T_BI_MAX_STEPS 256" in ex.header
    rc, _, _ = ex.run(np.ones(257, np.int64))
    assert rc == -3  # NAME_ERR_STEPS: more steps than NAME_MAX_STEPS
    short = Exported(model, workdir / "t_bi_short", "t_bi", max_steps=5)
    check_predict(short, model, np.array([1, 2, 3, 4, 5]), what="max_steps=5")
    assert short.run(np.ones(6, np.int64))[0] == -3


# -- layers built in fastrnn's internal layout: peepholes, clip, activations, Select ---------------
def test_internal_layers_peepholes_clip_activations(workdir):
    rng = np.random.default_rng(8)
    lstm = random_recurrent(rng, "lstm", input_size=5, hidden_size=9, peephole=True, clip=1.5, name="peep",
                            activations=("hard_sigmoid", "softsign", "elu"))
    coupled = random_recurrent(rng, "lstm", input_size=9, hidden_size=6, input_forget=True, bias=False,
                               name="coupled", activations=(("scaled_tanh", 0.8, 1.2), "tanh", "swish"))
    rnn = random_recurrent(rng, "rnn", input_size=6, hidden_size=7, name="rnn",
                           activations=(("leaky_relu", 0.1, 0.0),))
    gru = random_recurrent(rng, "gru", input_size=7, hidden_size=8, linear_before_reset=False, name="gru",
                           activations=("sigmoid", "softplus"))
    bn = BatchNormalization(rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32),
                            rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32),
                            name="bn")
    layers = [lstm, coupled, rnn, gru, bn, Activation("gelu", name="gelu"),
              Dense(rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal(6).astype(np.float32),
                    "selu", name="d1"),
              Activation("thresholded_relu", alpha=0.1, name="thr"), Select(axis=1, index=-1, name="last"),
              Dense(rng.standard_normal((3, 6)).astype(np.float32), None, "log_softmax", name="d2")]
    model = fastrnn.Model(layers, name="internal")
    ex = Exported(model, workdir / "internal", "internal")
    x = rng.standard_normal((11, 5)).astype(np.float32) * 2
    check_predict(ex, model, x, what="internal")
    state = rng.standard_normal(ex.state_size).astype(np.float32) * 0.5
    check_predict(ex, model, x, state=state, what="internal from a state")
    rc, steps, _ = ex.run(x, mode=1)
    assert rc == 0
    assert_close(steps[4], model.predict(x[None, :5])[0], what="select: output as if ended at step 5", **FLOAT)
    q = model.quantize("int8")
    exq = Exported(model, workdir / "internal_i8", "internal", weights="int8")
    check_predict(exq, q, x, tol=INT8, backend="numpy", what="internal int8")


def test_internal_layers_backward_in_time(workdir):
    """Whole-sequence layers: a reverse RNN (the ONNX backward direction), a bidirectional LSTM with
    a projection merged by mul, a bidirectional GRU's final states averaged; float32 and int8."""
    rng = np.random.default_rng(11)
    layers = [random_recurrent(rng, "rnn", input_size=4, hidden_size=6, reverse=True, name="rev"),
              random_recurrent(rng, "lstm", input_size=6, hidden_size=7, proj_size=3, bidirectional=True,
                               merge_mode="mul", name="bi_proj"),
              random_recurrent(rng, "gru", input_size=3, hidden_size=5, bidirectional=True, merge_mode="ave",
                               return_sequences=False, name="bi_gru"),
              Dense(rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal(2).astype(np.float32),
                    "softmax", name="head")]
    model = fastrnn.Model(layers, name="backward")
    ex = Exported(model, workdir / "backward", "backward")
    x = rng.standard_normal((10, 4)).astype(np.float32)
    check_predict(ex, model, x, what="backward in time")
    check_predict(ex, model, x, state=rng.standard_normal(ex.state_size).astype(np.float32) * 0.5,
                  what="backward in time, from a state")
    assert ex.run(x, mode=1)[0] == 99  # the harness: this model has no step (NAME_CAN_STEP 0)
    exq = Exported(model, workdir / "backward_i8", "backward", weights="int8")
    check_predict(exq, model.quantize("int8"), x, tol=INT8, backend="numpy", what="backward in time, int8")


def test_masking_features_step_by_step(workdir):
    """A Masking layer on features in a causal chain: a step whose features are all the mask value
    leaves the state alone in step and predict; Keras's "hold" output repeats the last valid one."""
    rng = np.random.default_rng(12)
    lstm = random_recurrent(rng, "lstm", input_size=3, hidden_size=5, masked_output="hold", name="lstm")
    model = fastrnn.Model([fastrnn.Masking(0.5, name="mask"), lstm,
                           Dense(rng.standard_normal((2, 5)).astype(np.float32), None, "tanh", name="out")],
                          name="masked")
    ex = Exported(model, workdir / "masked", "masked")
    x = rng.standard_normal((8, 3)).astype(np.float32)
    padded = np.concatenate([x, np.full((3, 3), 0.5, np.float32)])
    out = check_predict(ex, model, padded, what="masked features")
    rc, steps, _ = ex.run(padded, mode=1)
    assert rc == 0
    np.testing.assert_array_equal(steps, out)
    assert_close(out[8:], np.repeat(out[7:8], 3, axis=0), what="hold", **FLOAT)
    hole = padded.copy()
    hole[2] = 0.5
    assert ex.run(hole)[0] == -2


def test_two_models_link_into_one_program(workdir, keras_exported, torch_exported):
    """Every symbol is prefixed by NAME: two exported models build into one program."""
    a, b = keras_exported["k_char"], torch_exported["t_proj"]
    main = workdir / "two.c"
    main.write_text('#include "k_char/k_char.h"\n#include "t_proj/t_proj.h"\n\nstatic k_char_state a;\n'
                    "static t_proj_state b;\n\nint main(void)\n{\n    float ya[K_CHAR_OUTPUT_SIZE], yb[T_PROJ_OUTPUT_SIZE];\n"
                    "    k_char_reset(&a);\n    t_proj_reset(&b);\n"
                    "    return k_char_step(&a, 1, ya) || t_proj_step(&b, 1, yb) || !(ya[0] == ya[0] && yb[0] == yb[0]);\n}\n")
    binary = compile_c([main, a.dir / "k_char.o", b.dir / "t_proj.o"], workdir / "two", extra=("-lm",))
    assert subprocess.run([str(binary)]).returncode == 0


# -- refusals --------------------------------------------------------------------------------------
def test_refusals_name_the_node_and_layer(tmp_path):
    rng = np.random.default_rng(9)
    rec = random_recurrent(rng, "gru", input_size=4, hidden_size=5, name="gru")
    conv = Conv1D(rng.standard_normal((4, 4, 3)).astype(np.float32), None, name="conv")
    with pytest.raises(ExportError, match=r"node 'conv' \(Conv1D\) is not a layer the C export implements"):
        fastrnn.export_c(fastrnn.Model([conv, rec]), str(tmp_path))
    custom = Activation("mine", name="act", custom=True, fn=lambda x: x * 2)
    with pytest.raises(ExportError, match=r"node 'act' \(Activation\(mine\)\) is the custom function 'mine'"):
        fastrnn.export_c(fastrnn.Model([rec, custom]), str(tmp_path))
    emb = Embedding(rng.standard_normal((10, 4)).astype(np.float32), name="emb")
    state_graph = fastrnn.Graph(
        [fastrnn.Input("ids", (None,), "int64")],
        [fastrnn.Node("emb", emb, ["ids"]),
         fastrnn.Node("gru", Recurrent(cell="gru", hidden_size=5, directions=[rec.directions[0]], name="gru",
                                       return_state=True), ["emb"])],
        [("gru", 0)])
    with pytest.raises(ExportError, match=r"node 'gru' \(GRU\) returns its states"):
        fastrnn.export_c(fastrnn.Model(graph=state_graph), str(tmp_path))
    two = fastrnn.Graph([fastrnn.Input("a", (None, 4)), fastrnn.Input("b", (None, 4))],
                        [fastrnn.Node("cat", fastrnn.Concatenate(name="cat"), ["a", "b"])], ["cat"])
    with pytest.raises(ExportError, match="2 inputs"):
        fastrnn.export_c(fastrnn.Model(graph=two), str(tmp_path))
    with pytest.raises(ExportError, match=r"node 'sel' \(Select\) selects index 0"):
        fastrnn.export_c(fastrnn.Model([rec, Select(axis=1, index=0, name="sel")]), str(tmp_path))
    with pytest.raises(ValueError, match="C identifier"):
        fastrnn.export_c(fastrnn.Model([rec]), str(tmp_path), name="2fast")
    with pytest.raises(ExportError, match="bfloat16"):
        fastrnn.export_c(fastrnn.Model([rec]).quantize("bfloat16"), str(tmp_path))
    with pytest.raises(ExportError, match="example program"):  # no vocabulary: nothing to read text with
        fastrnn.export_c(fastrnn.Model([rec]), str(tmp_path), example=True)
    assert not list(tmp_path.iterdir())  # nothing is written when the model is refused


def test_cli_export_c(tmp_path, monkeypatch):
    from fastrnn import cli

    assert cli.main(["export-c", "langid", str(tmp_path / "out"), "--weights", "int8", "--name", "lid"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["lid.c", "lid.h"]
    assert "int8" in (tmp_path / "out" / "lid.h").read_text()
    assert cli.main(["export-c", "langid", str(tmp_path / "bad"), "--name", "2x"]) == 2
    res = subprocess.run([sys.executable, "-m", "fastrnn.cli", "export-c", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--example" in res.stdout


# -- cross builds -------------------------------------------------------------------------------------
M4_MAIN = r"""
#include "char_lstm.h"

static char_lstm_state state;

int main(void)
{
    float out[CHAR_LSTM_OUTPUT_SIZE];
    int32_t ids[8] = {3};
    uint64_t rng = 1;
    char_lstm_reset(&state);
    char_lstm_step(&state, 5, out);
    return char_lstm_generate(&state, ids, 1, 8, 0.0, &rng, ids) + (int)out[0];
}
"""


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_cortex_m4_build_and_sizes(char_model, tmp_path, weights):
    """The bundled character model links for a Cortex-M4 (newlib, no OS); flash and RAM printed."""
    gcc = tool("arm-none-eabi-gcc")
    size = tool("arm-none-eabi-size")
    fastrnn.export_c(char_model, str(tmp_path), name="char_lstm", weights=weights)
    (tmp_path / "m4.c").write_text(M4_MAIN)
    elf = compile_c([tmp_path / "char_lstm.c", tmp_path / "m4.c"], tmp_path / "m4.elf", gcc,
                    flags=["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", *M4_FLAGS],
                    extra=("-specs=nosys.specs", "-lm"))
    out = subprocess.run([size, str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = map(int, out.splitlines()[1].split()[:3])
    n = char_model.count_params()
    weight_bytes = 4 * n if weights == "float32" else n  # the matrices dominate (int8: 1 byte each)
    assert weight_bytes < text < weight_bytes * 1.1 + 200_000
    state_bytes = int(re.search(r"state\[(\d+)\]", (tmp_path / "char_lstm.h").read_text()).group(1)) * 4
    assert bss >= state_bytes
    print(f"\nCortex-M4 {weights}: flash {text + data:,} bytes (text {text:,}, data {data:,}), "
          f"RAM {data + bss:,} bytes (bss {bss:,})")


def test_aarch64_build_under_qemu_equals_x86(char_f32, char_model, langid_f32, langid, keras_models, workdir):
    """An aarch64 Linux build of the exported models, run under qemu-user: outputs as on x86 within 1e-5
    and the same greedy text."""
    tool("aarch64-linux-gnu-gcc")
    tool("qemu-aarch64")
    rng = np.random.default_rng(10)
    ids = np.array(char_model.vocabulary.encode(CODE[:80]), np.int64)
    cases = [(char_f32, char_model, ids, True), (langid_f32, langid, np.array(langid.vocabulary.encode("bonjour")),
                                                 True)]
    km, _ = keras_models["k_bidirectional"]
    cases.append((Exported(km, workdir / "k_bi_x86", "k_bi"), km, rng.standard_normal((7, 3)), False))
    for ex, model, x, example in cases:
        arm = Exported(model, workdir / f"{ex.name}_{'aarch64'}", ex.name, cc="aarch64-linux-gnu-gcc",
                       runner=QEMU_AARCH64, example=example)
        rc_x86, out_x86, st_x86 = ex.run(x)
        rc_arm, out_arm, st_arm = arm.run(x)
        assert rc_x86 == rc_arm == 0
        assert_close(out_arm, out_x86, what=f"{ex.name}: aarch64 vs x86", **FLOAT)
        assert_close(st_arm, st_x86, what=f"{ex.name}: aarch64 vs x86 states", **FLOAT)
        if ex.name == "char_lstm":
            res = subprocess.run(QEMU_AARCH64 + [str(arm.main), "def ", "60"], capture_output=True, check=True)
            assert res.stdout.decode() == "def " + model.generate("def ", 60, temperature=0) + "\n"
