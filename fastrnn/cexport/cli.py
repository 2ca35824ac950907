"""The command line: ``fastrnn export-c MODEL OUT_DIR [--name NAME] [--weights float32|int8] [--example]``."""
from __future__ import annotations

import os

from ..bundled import BUNDLED_CLASSIFIER, BUNDLED_MODEL

# MODEL may name a bundled model instead of a file (when no such file exists)
BUNDLED = {"char_lstm": BUNDLED_MODEL, "langid": BUNDLED_CLASSIFIER}


def add_cli(subparsers):
    p = subparsers.add_parser(
        "export-c", help="write a model as dependency-free C99 (NAME.h, NAME.c, optional main.c)",
        description="Write MODEL as C99 source: NAME.h (sizes, the state struct, the API) and NAME.c (the weights as "
                    "static const arrays, no dynamic memory, only <math.h>). Build an example program with "
                    "`cc -O2 OUT_DIR/*.c -lm -o NAME`.")
    p.add_argument("model", help="model file (.safetensors, .keras, .h5, .onnx), or char_lstm / langid for the "
                                 "models bundled with fastrnn")
    p.add_argument("out_dir", help="directory to write to (created if missing)")
    p.add_argument("--name", help="C identifier prefixing the files and functions (default: the model's name)")
    p.add_argument("--weights", choices=["float32", "int8"], default=None,
                   help="float32: the model's values; int8: fastrnn's int8 rule (one scale per output row) and "
                        "int8 products, as model.quantize('int8') computes (default: the model's own kind)")
    p.add_argument("--example", action="store_true",
                   help="also write main.c: `./NAME PROMPT N` continues a prompt (character models), or each "
                        "stdin line gets `label<TAB>probabilities` (classifiers)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="longest sequence NAME_predict takes for a model with a layer running backward in time "
                        "(default: the model's fixed input length, else 256)")
    p.set_defaults(func=cmd_export_c)


def load_model(spec):
    """A model file, or the name of a bundled model (char_lstm, langid) when no such file exists."""
    from .. import load
    from ..bundled import bundled_classifier, bundled_model

    path = BUNDLED.get(spec, spec) if not os.path.exists(spec) else spec
    if os.path.exists(path) and os.path.samefile(path, BUNDLED_CLASSIFIER):
        return bundled_classifier()  # with its unknown threshold, as `fastrnn classify` uses it
    if os.path.exists(path) and os.path.samefile(path, BUNDLED_MODEL):
        return bundled_model()
    return load(path)


def cmd_export_c(args):
    from .export import export_c

    model = load_model(args.model)
    paths = export_c(model, args.out_dir, name=args.name, weights=args.weights, example=args.example,
                     max_steps=args.max_steps)
    sizes = ", ".join(f"{os.path.basename(p)} ({os.path.getsize(p) / 1e6:.1f} MB)" for p in paths)
    name = os.path.splitext(os.path.basename(paths[0]))[0]
    print(f"wrote {sizes} in {args.out_dir}")
    if args.example:
        print(f"build: cc -O2 {os.path.join(args.out_dir, '*.c')} -lm -o {name}")
    return 0
