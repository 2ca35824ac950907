"""The command line: ``fastrnn classify``."""
from __future__ import annotations

import json
import os
import sys
import time
import warnings

from ..bundled import bundled_classifier
from ..errors import InputError, InputTooLongWarning
from ..textio import ERRORS, LineReader
from .classifier import DEFAULT_BATCH_SIZE, classify, labels_of


class Progress:
    """A one-line progress bar on a terminal stream: lines, rate, and percent of the file's bytes
    when its size is known. Redrawn at most 10 times a second; nothing is printed when the
    stream is not a terminal (pipes, CI logs)."""

    def __init__(self, stream, total_bytes=None, enabled=None):
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.total = total_bytes
        self.start = time.monotonic()
        self.last = 0.0
        self.lines = 0
        self.done_bytes = 0

    def update(self, lines, done_bytes=None, force=False):
        self.lines = lines
        if done_bytes is not None:
            self.done_bytes = done_bytes
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = lines / elapsed
        if self.total:
            frac = min(1.0, self.done_bytes / self.total)
            width = 30
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r[{bar}] {100 * frac:5.1f}% {lines:,} lines {rate:,.0f}/s"
        else:
            text = f"\r{lines:,} lines {rate:,.0f}/s {elapsed:,.0f}s"
        self.stream.write(text)
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.update(self.lines, force=True)
            self.stream.write("\n")
            self.stream.flush()


def add_cli(subparsers):
    import argparse

    p = subparsers.add_parser(
        "classify", help="label every line of a file or stdin (default: the bundled language identifier)",
        description="Classify one input per line (UTF-8), writing one output line per input in the same "
                    "order. Without --model the bundled language-identification GRU is used.")
    p.add_argument("file", nargs="?", default="-", help="input file, one text per line ('-' = stdin, the default)")
    p.add_argument("--model", help="classifier model file (.safetensors, .keras, .h5, .onnx)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl",
                   help="jsonl: {\"text\", \"label\", \"probabilities\": {label: p}} per line (default); "
                        "csv: a header, then text,label,one column per class")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows run together (default 64)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--max-length", type=int, default=None,
                   help="use only the first N tokens of each line (default 10000; longer lines are cut, with a warning)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--errors", choices=ERRORS, default="strict",
                   help="a line that is not UTF-8: strict = stop with an error naming it (default), replace = "
                        "decode it with U+FFFD for bad bytes, skip = leave it out and report its line number on stderr")
    p.add_argument("--encoding", default="utf-8",
                   help="the input's text encoding (default utf-8; e.g. cp949 or euc-kr for Korean files from "
                        "Windows, utf-16 with its byte-order mark)")
    from ..dask import add_cli_options  # --dask, --partition-size (issue 16; Dask imported only when used)

    add_cli_options(p, "lines")
    p.set_defaults(func=cmd_classify)


def cmd_classify(args):
    import csv

    from .. import load

    model = load(args.model) if args.model else bundled_classifier()
    labels = labels_of(model)  # checks it is a classifier before any input is read
    if args.file == "-":
        raw, name, total = sys.stdin.buffer, "<stdin>", None
    else:
        raw = open(args.file, "rb")
        name = args.file
        try:
            total = os.fstat(raw.fileno()).st_size or None
        except OSError:
            total = None
    try:
        reader = LineReader(raw, name, errors=args.errors, command="fastrnn classify",
                            encoding=getattr(args, "encoding", "utf-8"))
    except ValueError:
        if raw is not sys.stdin.buffer:
            raw.close()
        raise
    progress = Progress(sys.stderr, total, enabled=args.progress)
    out = sys.stdout
    writer = None
    if args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["text", "label"] + [str(x) for x in labels] + ["unknown_fraction"])
    texts = _remember(reader, lambda: reader.count)
    try:
        results = classify(model, texts, batch_size=args.batch_size, threads=args.threads, max_length=args.max_length)
        if getattr(args, "dask", None):  # the same results, in order, from a Dask cluster (issue 16)
            from ..dask import cli_classify

            results = cli_classify(args, texts)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(name, texts, args.model)
            for n, r in _numbered(results, name, texts, args.model):
                text = texts.pop()
                p = r.probabilities
                if writer is not None:
                    writer.writerow([text, r.label] + [f"{v:.6g}" for v in p.tolist()] + [f"{r.unknown_fraction:.6g}"])
                else:
                    out.write(json.dumps({"text": text, "label": r.label,
                                          "probabilities": {str(k): round(float(v), 6) for k, v in zip(labels, p.tolist())},
                                          "unknown_fraction": round(r.unknown_fraction, 6)},
                                         ensure_ascii=False) + "\n")
                progress.update(n, reader.bytes)
        out.flush()
    finally:
        progress.close()
        if raw is not sys.stdin.buffer:
            raw.close()
    return 0


class _remember:
    """Pass items through while keeping those not yet consumed by the caller's output loop (the
    classifier reads a window ahead), with their line numbers (``line()``: the number of the item
    just read); memory is bounded by that window."""

    def __init__(self, iterable, line=None):
        from collections import deque

        self.it = iter(iterable)
        self.pending = deque()
        self.lines = deque()
        self.line = line
        self.popped = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.pending.append(item)
        self.lines.append(self.line() if self.line else self.popped + len(self.pending))
        return item

    def pop(self):
        self.popped += 1
        self.lines.popleft()
        return self.pending.popleft()

    def line_of(self, position):
        """The line number of the input at 0-based ``position`` (one not yet written out)."""
        k = position - self.popped
        return self.lines[k] if 0 <= k < len(self.lines) else position + 1


def _numbered(results, name, texts, model):
    """enumerate(results, 1), an input the model cannot read reported by its line number, with
    what was written before it (results are written in input order as they come)."""
    n = 0
    try:
        for r in results:
            n += 1
            yield n, r
    except InputError as exc:
        from ..cli import cli_advice  # here: `import fastrnn` loads this module, fastrnn.cli must come after

        where = f"{name} line {texts.line_of(exc.position)}"
        written = f" (the first {n} results were written before it)" if n else " (no result was written)"
        raise ValueError(f"{where}: {cli_advice(exc.reason, model)}{written}") from None


def _show_warning(name, texts, model):
    """Warnings on stderr as one line: "fastrnn classify: warning: ...", input positions as line
    numbers, no Python source line."""

    def show(message, category, filename, lineno, file=None, line=None):
        from ..cli import cli_advice

        if isinstance(message, InputTooLongWarning):
            text = (f"{name} line {texts.line_of(message.position)} is longer than --max-length "
                    f"{message.max_length}: only its {'last' if message.from_end else 'first'} {message.max_length} "
                    "tokens are classified (pass a larger --max-length for more)")
        else:
            text = cli_advice(str(message), model)
        sys.stderr.write(f"fastrnn classify: warning: {text}\n")

    return show
