"""The command line: ``fastrnn generate``."""
from __future__ import annotations

import json
import sys

from ..bundled import bundled_model
from ..textio import ERRORS
from .decode import generate
from .options import GENERATION_DEFAULTS
from .plan import WEIGHT_KINDS
from .run import check_arguments


def add_cli(subparsers):
    import argparse

    p = subparsers.add_parser(
        "generate", help="sample text from a character/word language model (default: the bundled model)",
        description="Sample text from a language model. Without --model the bundled character LSTM "
                    "(trained on the CPython standard library) is used. The output is the prompt "
                    "followed by the generated text.")
    p.add_argument("--model", help="model file (.safetensors, .keras, .h5, .onnx); default: the bundled model")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    # defaults None: the model's recommended values (metadata "generation"), else GENERATION_DEFAULTS,
    # exactly as in Python's generate()
    p.add_argument("-n", "--max-new-tokens", type=int, default=None,
                   help=f"tokens to generate (default {GENERATION_DEFAULTS['max_new_tokens']}, or the model's "
                        "recommended count)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"0 = greedy (default {GENERATION_DEFAULTS['temperature']}, or the model's recommended value)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample only from the K most likely tokens (ties kept); 0 = off (default: off)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only from the most likely tokens whose probabilities add up to P (the one "
                        "crossing P kept); 1 = off (default: off)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="CTRL-style penalty > 0 on every token already in the prompt or output (e.g. 1.2); "
                        "1 = off (default: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed (every prompt of --batch uses it)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable; not printed)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they are produced (default: when stdout is a terminal)")
    p.add_argument("--weights", choices=WEIGHT_KINDS + ("auto",), default=None,
                   help="int8 / float16 store the weights read at every step in a quarter / half of the bytes, "
                        "with slightly different logits; int8 is faster at batch 1, float16 only where the "
                        "weights do not fit in cache ('auto' measures float16 against float32 here) "
                        "(default: float32, or the kind the model file was quantized to by "
                        "`fastrnn convert --quantize`)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for a --batch of prompts (default: all cores; results do not depend on it)")
    p.add_argument("--batch", metavar="FILE",
                   help="one prompt per line ('-' = stdin); writes one JSON object per line, in order: "
                        '{"prompt": ..., "text": ...}')
    p.add_argument("--errors", choices=ERRORS, default="strict",
                   help="--batch: a line that is not UTF-8: strict = stop with an error naming it (default), "
                        "replace = decode it with U+FFFD for bad bytes, skip = leave it out and report its line "
                        "number on stderr")
    p.add_argument("--encoding", default="utf-8",
                   help="--batch: the file's text encoding (default utf-8; e.g. cp949 or euc-kr for Korean files "
                        "from Windows, utf-16 with its byte-order mark)")
    from ..dask import add_cli_options  # --dask, --partition-size for --batch (issue 16)

    add_cli_options(p, "prompts of --batch")
    p.set_defaults(func=cmd_generate)


class _quiet:
    """A report stream that drops what it is told (the first, checking pass of --batch: the second
    pass reports the skipped lines)."""

    def write(self, text):
        pass


def cmd_generate(args):
    import secrets  # when used: `import fastrnn` loads this module

    from .. import load

    if args.batch and (args.prompt is not None or args.stream):
        raise ValueError(f"{'--prompt' if args.prompt is not None else '--stream'} and --batch do not go together: "
                         "the prompts of --batch are the lines of its file, each printed whole as one JSON line")
    encoding = getattr(args, "encoding", "utf-8")
    if encoding != "utf-8" and not args.batch:
        raise ValueError("--encoding is the encoding of the --batch file (--prompt is already text)")
    model = load(args.model) if args.model else bundled_model()
    if model.vocabulary is None:
        raise ValueError("this model has no vocabulary, so the command line cannot read or print text: store one "
                         f"with it: fastrnn convert {args.model} OUT.safetensors --vocab VOCAB.txt (one token per "
                         "line) or --tokenizer tokenizer.json (a Keras Tokenizer), then use --model OUT.safetensors")
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, weights=args.weights,
              threads=args.threads)
    check_arguments(model, **kw)  # every argument is checked before anything is printed
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    out = sys.stdout
    if getattr(args, "dask", None):  # --batch: the same output from a Dask cluster (issue 16)
        from ..dask import cmd_generate_batch

        return cmd_generate_batch(args, seed, kw)
    if args.batch:
        from ..textio import LineReader

        if args.batch != "-":  # a file can be read twice: every line is checked before anything is printed
            with open(args.batch, "rb") as first_pass:
                reader = LineReader(first_pass, args.batch, errors=args.errors, command="fastrnn generate",
                                    encoding=encoding, report=_quiet())
                for line in reader:
                    if line == "":
                        continue  # skipped, and said, on the second pass
                    try:
                        model.vocabulary.encode(line)
                    except ValueError as exc:
                        raise ValueError(f"{args.batch}: line {reader.count}: {exc}") from None
        raw = sys.stdin.buffer if args.batch == "-" else open(args.batch, "rb")
        name = "<stdin>" if args.batch == "-" else args.batch
        try:
            # read lazily (memory stays flat on long files); line endings and a BOM removed as for classify
            reader = LineReader(raw, name, errors=args.errors, command="fastrnn generate", encoding=encoding)
            lines = iter(reader)
            while True:
                prompts = []
                for line in lines:  # up to 256 rows decoded together
                    if line == "":  # a blank line (one at the end of a file, say) is no prompt
                        sys.stderr.write(f"fastrnn generate: skipped line {reader.count} of {name}: empty\n")
                        continue
                    prompts.append(line)
                    if len(prompts) == 256:
                        break
                if not prompts:
                    break
                texts = generate(model, prompts, seed=seed, **kw)
                for prompt, text in zip(prompts, texts):
                    out.write(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) + "\n")
            out.flush()
        finally:
            if raw is not sys.stdin.buffer:
                raw.close()
        return 0
    prompt = "\n" if args.prompt is None else args.prompt
    stream = args.stream if args.stream is not None else out.isatty()
    # generate() validates the prompt (vocabulary) before returning, so nothing is printed on an error
    result = generate(model, prompt, seed=seed, stream=stream, **kw)
    out.write(prompt)
    if stream:
        out.flush()
        for piece in result:
            out.write(piece)
            out.flush()
    else:
        out.write(result)
    out.write("\n")
    out.flush()
    return 0
