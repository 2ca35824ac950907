"""The ``fastrnn`` command line.

    fastrnn summary MODEL
    fastrnn convert SRC DST [--cell lstm|gru|rnn_tanh|rnn_relu] [--architecture FILE] [--by-name]
                            [--last] [--activation A] [--vocab FILE | --vocab-chars CHARS] [--labels NAMES]
                            [--quantize float16|int8] [--tokenizer FILE] [--padding S] [--truncating S] [--maxlen N]
                            [--custom-layers MODULE.py]
    fastrnn generate ...     (fastrnn/generate/cli.py adds it)
    fastrnn classify ...     (fastrnn/classify/cli.py adds it)
    fastrnn export-c ...     (fastrnn/cexport/cli.py adds it)
    fastrnn serve ...        (fastrnn/serve/cli.py adds it; Starlette and uvicorn, the serve extra, are
                              imported only when it runs)

Each feature module that owns a subcommand exposes ``add_cli(subparsers)``; the subparser's
``func`` default receives the parsed arguments and returns the exit code.
"""
from __future__ import annotations

import argparse
import json
import importlib
import os
import sys
import warnings

from .errors import ModelFormatError

# Feature modules that contribute subcommands (imported lazily only to build the parser).
FEATURE_MODULES = ("fastrnn.generate", "fastrnn.classify", "fastrnn.cexport.cli", "fastrnn.serve")


def _ensure_utf8_stdio():
    """Hangul prompts and outputs must survive a C/POSIX locale terminal or a pipe."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            try:
                stream.reconfigure(encoding="utf-8", errors="replace")
            except (ValueError, OSError):  # pragma: no cover - detached streams
                pass
    if hasattr(sys.stdin, "reconfigure") and (sys.stdin.encoding or "").lower().replace("-", "") != "utf8":
        try:
            sys.stdin.reconfigure(encoding="utf-8", errors="replace")
        except (ValueError, OSError):  # pragma: no cover
            pass


def cmd_summary(args):
    from . import load

    model = load(args.model, custom_layers=load_custom_layers(args.custom_layers))
    model.summary()
    return 0


UNKNOWN_TOKENS = ("<unk>", "<UNK>", "[UNK]", "<OOV>", "<oov>")  # recognised in a --vocab file


def _read_vocab(path, level, unk=None):
    """A vocabulary file: one token per line (UTF-8, a BOM and CR line endings allowed). Its unknown
    token (the id of every symbol outside it) is ``unk`` if given (``--unk``), else the line that
    reads one of UNKNOWN_TOKENS, else none."""
    from .vocab import Vocabulary

    with open(path, encoding="utf-8-sig") as f:
        tokens = f.read().split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # trailing newline
    tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
    if not tokens:
        raise ValueError(f"--vocab {path}: the file holds no tokens")
    if unk is not None:
        if unk not in tokens:
            raise ValueError(f"--unk {unk!r} is not a line of --vocab {path}: add it to the file (its line number "
                             "minus one is its id)")
        unk_id = tokens.index(unk)
    else:
        found = [t for t in UNKNOWN_TOKENS if t in tokens]
        if len(found) > 1:
            raise ValueError(f"--vocab {path} has several unknown tokens ({', '.join(found)}): choose one with --unk")
        unk_id = tokens.index(found[0]) if found else None
    return Vocabulary(tokens, level=level, unk=unk_id)


def _chars_vocab(text):
    """--vocab-chars STRING: its characters in order, character i = id i."""
    from .vocab import as_vocabulary

    if text == "":
        raise ValueError("--vocab-chars: give the characters of the vocabulary in id order, e.g. --vocab-chars helo")
    if len(set(text)) != len(text):
        dup = next(c for i, c in enumerate(text) if c in text[:i])
        raise ValueError(f"--vocab-chars: the character {dup!r} appears twice; each character is one id")
    return as_vocabulary(text)


def _attach_vocab(model, vocab, src, args):
    """--vocab / --vocab-chars on a loaded model: token ids for a model that starts with an
    Embedding, one-hot vectors for a model that takes feature vectors (token i = a 1 at
    feature i), as Model.vocabulary checks."""
    given = f"--vocab {args.vocab}" if args.vocab else "--vocab-chars"
    if len(model.inputs) != 1:
        raise ValueError(f"{given}: {src} has {len(model.inputs)} inputs {model.input_names}; a vocabulary "
                         "describes the one input of a text model")
    if not model.takes_tokens and len(model.inputs[0].shape) != 2:
        raise ValueError(f"{given}: {src} takes inputs of shape {(None,) + tuple(model.inputs[0].shape)}, neither "
                         "token ids (batch, time) nor one-hot vectors (batch, time, features)")
    try:
        model.vocabulary = vocab
    except ValueError as exc:
        raise ValueError(f"{given}: {exc}") from None


def _read_labels(value):
    """--labels: a file with one label per line (UTF-8), or the labels separated by commas."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8-sig") as f:
            labels = [line.rstrip("\r\n") for line in f]
        while labels and labels[-1] == "":
            labels.pop()
        where = f"--labels {value}"
    else:
        labels = value.split(",")
        where = "--labels"
    labels = [x.strip() for x in labels]
    if not labels or any(x == "" for x in labels):
        raise ValueError(f"{where}: give one non-empty name per class, e.g. --labels 부정,긍정 (or a file, one "
                         "name per line)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: the label names {labels} repeat a name")
    return labels


def _attach_labels(model, labels, given):
    """Store the class names (metadata "labels") once the model is known to classify into that many."""
    from .classify.classifier import class_count

    n = class_count(model)  # ValueError saying why this model is not a classifier
    if len(labels) != n:
        hint = (" (one sigmoid unit gives two classes, [1 - p, p]: name the class of p second, e.g. "
                "--labels 부정,긍정)" if n == 2 and model.output_size == 1 else "")
        raise ValueError(f"--labels {given}: {len(labels)} names for a model with {n} classes{hint}")
    model.metadata["labels"] = labels


def cmd_convert(args):
    from . import load, save

    src = args.src
    if not args.dst.lower().endswith(".safetensors"):
        raise ValueError(f"convert writes fastrnn's native format only: name the output *.safetensors "
                         f"(got {args.dst!r})")
    if args.vocab and args.vocab_chars is not None:
        raise ValueError("--vocab and --vocab-chars both give the vocabulary: pass one of them")
    if args.unk is not None and not args.vocab:
        raise ValueError("--unk names the unknown token of a --vocab file: give --vocab FILE too")
    if args.vocab:
        vocab = _read_vocab(args.vocab, args.vocab_level, args.unk)
    elif args.vocab_chars is not None:
        vocab = _chars_vocab(args.vocab_chars)
    else:
        vocab = None
    labels = _read_labels(args.labels) if args.labels is not None else None
    from . import _sniff

    if os.path.isfile(src) and _sniff(src) == "torch":  # by content: weights, model.bin, .ckpt, .model ...
        from .formats.torch import read_state_dict
        from .formats.torch_spec import check_finite_params, from_architecture, infer_architecture

        if not args.cell and not args.architecture:
            raise ValueError("a PyTorch state_dict holds no architecture: give --cell lstm|gru|rnn_tanh|rnn_relu "
                             "(the chain [Embedding] -> RNN modules -> [Linear]) or --architecture spec.json")
        params = check_finite_params(read_state_dict(src), src)
        if args.architecture:
            spec = args.architecture
        else:
            spec = infer_architecture(params, args.cell, return_sequences=not args.last, activation=args.activation,
                                      source=src)
            print("fastrnn: the state_dict says nothing of parameter-free modules (Tanh, LogSoftmax, ...); assumed "
                  "this architecture (edit it and pass it with --architecture FILE if the network differs):\n"
                  + json.dumps(spec, indent=1), file=sys.stderr)
        model = from_architecture(params, spec, vocabulary=vocab, name=os.path.splitext(os.path.basename(src))[0],
                                  source=src)
    else:
        if args.architecture:  # a Keras weights-only HDF5 file + its model.to_json() (else a clear error)
            model = load(src, custom_layers=load_custom_layers(args.custom_layers), architecture=args.architecture,
                         by_name=args.by_name)
        else:
            if args.by_name:
                raise ValueError("--by-name goes with --architecture (a Keras weights-only .h5 file)")
            model = load(src, custom_layers=load_custom_layers(args.custom_layers))
        if vocab is not None:  # --vocab applies to every source (it replaces a stored vocabulary)
            _attach_vocab(model, vocab, src, args)
    if args.tokenizer:
        if vocab is not None:
            raise ValueError("--tokenizer and --vocab both give the vocabulary: pass one of them")
        import warnings

        from .errors import PaddingLengthWarning
        from .formats.tokenizers import attach_tokenizer, check_maxlen

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PaddingLengthWarning)
            attach_tokenizer(model, args.tokenizer, padding=args.padding, truncating=args.truncating,
                             maxlen=check_maxlen(args.maxlen, "--maxlen"))
        for w in caught:  # one line on stderr (the others go on as Python would show them)
            if issubclass(w.category, PaddingLengthWarning):
                print(f"fastrnn convert: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if labels is not None:
        _attach_labels(model, labels, args.labels)
    save(model, args.dst, quantize=args.quantize)
    stored = args.quantize or (model.metadata or {}).get("quantized")  # an int8 source (onnxruntime) stays int8
    kind = f", weight matrices stored as {stored}" if stored in ("float16", "int8") else ""
    print(f"wrote {args.dst}: {len(model.layers)} layers, {model.count_params():,} parameters{kind}")
    return 0


CUSTOM_LAYERS_HELP = ("a Python file of your own defining the factories of the model's custom layers and "
                      "activation functions: a dict CUSTOM_LAYERS = {name: factory}, or else every public "
                      "function of the file, by its name (see fastrnn.layers.custom). The file is run: pass only "
                      "your own code; nothing in the model file is ever run")


def load_custom_layers(path):
    """{name: factory} from the user's Python file (``--custom-layers``): its dict
    ``CUSTOM_LAYERS`` if it defines one, else its public functions by name."""
    if path is None:
        return None
    import importlib.util
    import inspect

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--custom-layers: no such file {path}")
    spec = importlib.util.spec_from_file_location("fastrnn_custom_layers", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--custom-layers: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the user's own file, passed explicitly
    table = getattr(module, "CUSTOM_LAYERS", None)
    if table is None:
        table = {name: obj for name, obj in vars(module).items()
                 if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__}
    if not isinstance(table, dict) or not all(isinstance(k, str) and callable(v) for k, v in table.items()):
        raise ValueError(f"--custom-layers: CUSTOM_LAYERS in {path} must be a dict {{name: factory function}}")
    return table


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(prog="fastrnn", description="Fast CPU inference for RNN, LSTM and GRU models.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    parser.add_argument("--backend", choices=["cython", "numba", "numpy"], help="kernel backend (default: fastest available)")
    sub = parser.add_subparsers(dest="command", required=True,
                                help="what to do (`fastrnn COMMAND --help` lists its options)")

    p = sub.add_parser("summary", help="print a model's layers, output shapes and parameter counts")
    p.add_argument("model", help="model file (.safetensors, .keras, .h5, .onnx)")
    p.add_argument("--custom-layers", metavar="MODULE.py", help=CUSTOM_LAYERS_HELP)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("convert", help="convert a model to fastrnn's native .safetensors file")
    p.add_argument("src", help="native file, .keras/.h5, .onnx, a PyTorch state_dict (.pt/.pth), or a Keras "
                                "weights-only .h5 with --architecture model.json")
    p.add_argument("dst", help="output file, *.safetensors (fastrnn's native format; other suffixes are refused)")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"],
                   help="cell type of the RNN modules in a PyTorch state_dict")
    p.add_argument("--architecture", metavar="FILE",
                   help="for a file holding weights only. PyTorch state_dict: the network as fastrnn's architecture "
                        "JSON (modules in order, with Tanh, LogSoftmax, ...; see docs/loading.md 'PyTorch weight files'); "
                        "replaces --cell. Keras weights-only .h5 (save_weights): the model.json of "
                        "model.to_json() (Keras 1, 2 or 3); weights matched to layers in order, as Keras 2's "
                        "load_weights")
    p.add_argument("--by-name", action="store_true",
                   help="--architecture with a Keras .h5: match weight groups to layers by name (Keras 2's "
                        "load_weights(by_name=True)) instead of in order")
    p.add_argument("--last", action="store_true",
                   help="state_dict: apply the final Linear to the last state (classifier) instead of every step")
    p.add_argument("--activation", default="linear", help="activation after the final Linear (e.g. softmax)")
    p.add_argument("--vocab", help="vocabulary file, one token per line (UTF-8), token i = id i; stored with the "
                                   "model for any source (replaces a vocabulary the source has); for a model "
                                   "without an Embedding token i is the one-hot input vector with a 1 at feature i")
    p.add_argument("--vocab-level", choices=["char", "word"], default="char",
                   help="--vocab: the tokens are characters (default) or whitespace-separated words")
    p.add_argument("--unk", metavar="TOKEN",
                   help="--vocab: the file's unknown token, the id of every symbol outside the vocabulary (default: "
                        "a line reading <unk>, <UNK>, [UNK], <OOV> or <oov>, if the file has one; else none, and "
                        "text with such a symbol is refused)")
    p.add_argument("--vocab-chars", metavar="CHARS",
                   help="the vocabulary as a string of characters in id order (e.g. helo: h = 0, e = 1, ...), "
                        "instead of a --vocab file. For a model without an Embedding (one-hot input) token i is fed "
                        "as the vector with a 1 at feature i")
    p.add_argument("--labels", metavar="NAMES",
                   help="class names stored with a classifier, so classify prints them: comma-separated "
                        "(--labels 부정,긍정) or a file with one name per line. One sigmoid unit is two classes "
                        "[1 - p, p]: the second name is the class of p")
    p.add_argument("--tokenizer", help="the Keras Tokenizer.to_json() file the model was trained with: stored as "
                                       "its vocabulary, so classify reads raw text as Keras's texts_to_sequences did")
    p.add_argument("--padding", choices=["pre", "post"], default="pre",
                   help="--tokenizer: pad_sequences' padding side in training (default pre, Keras's default)")
    p.add_argument("--truncating", choices=["pre", "post"], default="pre",
                   help="--tokenizer: pad_sequences' truncating side in training (default pre)")
    p.add_argument("--maxlen", type=int, help="--tokenizer: pad_sequences' maxlen in training (texts are cut to it; "
                                              "a model without a mask also sees the padding zeros); default: the "
                                              "model's fixed input length, if it has one")
    p.add_argument("--quantize", choices=["float16", "int8"],
                   help="store the weight matrices as float16 or as int8 with per-row scales (2x / 4x "
                        "smaller); the loaded model computes with them (int8: int8 products in predict, classify "
                        "and generate)")
    p.add_argument("--custom-layers", metavar="MODULE.py", help=CUSTOM_LAYERS_HELP)
    p.set_defaults(func=cmd_convert)

    for name in FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
    return parser


def main(argv=None):
    _ensure_utf8_stdio()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.backend:
            from . import set_backend

            set_backend(args.backend)
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command, getattr(args, "model", None))
            return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:  # every error is one line and exit code 2 (FASTRNN_DEBUG=1: the traceback)
        if os.environ.get("FASTRNN_DEBUG"):
            raise
        print(f"fastrnn {args.command}: error: {error_message(exc, getattr(args, 'model', None))}",
              file=sys.stderr)
        return 2


# The Python API's advice, said with the command line's options (issue 26.6): (pattern, advice).
# ``{model}`` is the --model file. tests/test_first_hour2.py checks every pattern still meets the
# message fastrnn raises.
CLI_ADVICE = [
    (r"pass token ids instead \(lists of ints\)",
     "store a vocabulary with the model: fastrnn convert {model} OUT.safetensors --vocab VOCAB.txt (one token "
     "per line) or --tokenizer tokenizer.json (a Keras Tokenizer), then use --model OUT.safetensors"),
    (r"and the vocabulary has no unknown-token id",
     "and the vocabulary has no unknown token: store one that has: fastrnn convert {model} OUT.safetensors "
     "--vocab VOCAB.txt with a line <unk> (or [UNK], <OOV>) in VOCAB.txt, or --unk TOKEN naming its token"),
    (r"Use model\.predict for per-step outputs or model\.generate for text",
     "Use fastrnn generate --model {model} for text"),
    (r"call model\.predict with all the inputs", "the command line reads one input per line; in Python, call "
                                                 "model.predict with all the inputs"),
    (r"pass custom_layers=\{'([^']*)': factory\}",
     r"pass --custom-layers MODULE.py, a file of yours defining \1 (docs/loading.md)"),
    (r"pass custom_layers=\)?", "pass --custom-layers MODULE.py)"),
    (r"load it without architecture=", "convert it without --architecture"),
    (r"set model\.vocabulary \(e\.g\. \"helo\"\)",
     "store its characters with it: fastrnn convert {model} OUT.safetensors --vocab-chars CHARS (e.g. helo)"),
    # a parameter of the Python API named in a message: its option
    (r"^(temperature|top_k|top_p|repetition_penalty|threads|batch_size|max_length|max_new_tokens) must",
     lambda m: f"--{m.group(1).replace('_', '-')} must"),
]


def _one_line_warning(command, model):
    """Warnings as one line on stderr, "fastrnn COMMAND: warning: ...", without the Python source
    line Python's default display adds (a command-line user has no use for it)."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(cli_advice(str(message), model).split())
        sys.stderr.write(f"fastrnn {command}: warning: {text}\n")

    return show


def cli_advice(text, model=None):
    """``text`` with the Python API's advice replaced by the command line's (CLI_ADVICE)."""
    import re

    for pattern, advice in CLI_ADVICE:
        text = re.sub(pattern, advice if callable(advice) else advice.replace("{model}", model or "MODEL"), text)
    return text


def error_message(exc, model=None) -> str:
    """One line saying what went wrong: the message of the errors fastrnn raises on purpose (its
    advice in command-line terms, ``model``: the --model file), the OS's words and the file name
    for OSError, the exception's type as well for anything else."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, (ModelFormatError, ValueError, IndexError, ImportError, RuntimeError, OSError)):
        text = cli_advice(str(exc), model)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
