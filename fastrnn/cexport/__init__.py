"""Export a model to dependency-free C99 (issue 29): ``fastrnn.export_c`` and ``fastrnn export-c``.

    fastrnn.export_c(model, "out", name="char_lstm", weights="int8", example=True)
    # out/char_lstm.h, out/char_lstm.c, out/main.c:  cc -O2 out/*.c -lm -o char_lstm

The package, by layer (each module imports only those listed before it):

- ctext.py    C literals, arrays and identifiers
- runtime.py  the fixed C: matrix-vector kernels (float32, int8), activations, sampler, UTF-8
- chain.py    the model's execution graph read as a chain of stages, or a refusal naming the node
- text.py     the vocabulary as a per-code-point table (fastrnn.vocab's rules, computed in Python)
- writer.py   NAME.h and NAME.c from a chain
- example.py  main.c: text generation or classification of stdin lines
- export.py   export_c: the checks, the choice of weights, the files
- cli.py      ``fastrnn export-c`` (a top layer: it loads model files)

It reads a Model (its graph, layers, vocabulary, metadata) and the plans of fastrnn.generate and
fastrnn.classify, and sits above fastrnn.model; nothing below imports it.
"""
from __future__ import annotations

from .chain import ExportError
from .export import export_c

__all__ = ["export_c", "ExportError"]
