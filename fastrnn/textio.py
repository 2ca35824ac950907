"""Text inputs, read the same way from Python and from the command line.

A text to classify is cleaned by ``clean_text``: a leading byte-order mark (U+FEFF) and one
trailing line ending (``\\r\\n``, ``\\n`` or ``\\r``) are removed, nothing else (inner whitespace
and case are the vocabulary's business). So iterating a file object in Python,
``model.classify(open(path, encoding="utf-8"))``, gives the same results as
``fastrnn classify path``, whose lines are read by ``LineReader``.

``LineReader`` reads the lines of a binary stream as UTF-8. What happens to a line that is not
valid UTF-8 is chosen by ``errors`` (the command line's ``--errors``):
- ``strict`` (default): stop with a ValueError naming the line number;
- ``replace``: decode it with U+FFFD for each bad byte sequence (for the bundled language
  identifier U+FFFD is the unknown character);
- ``skip``: leave the line out (no output line for it) and report it on ``report`` (stderr)
  with its line number.
"""
from __future__ import annotations

import sys

ERRORS = ("strict", "replace", "skip")
BOM = "\ufeff"


def clean_text(text: str) -> str:
    """``text`` without a leading byte-order mark and one trailing line ending (see module doc)."""
    if text.startswith(BOM):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def check_errors(errors: str) -> str:
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    return errors


class LineReader:
    """The lines of a binary stream as cleaned text (``clean_text``), decoded as UTF-8 with the
    policy ``errors`` for invalid lines (see module doc). Counts the bytes read (for a progress
    bar), the lines read and the lines skipped. ``command`` names the program in skip reports."""

    def __init__(self, raw, name, errors="strict", report=None, command="fastrnn"):
        self.raw = raw
        self.name = name
        self.errors = check_errors(errors)
        self.report = report
        self.command = command
        self.bytes = 0
        self.count = 0
        self.skipped = 0

    def __iter__(self):
        for line in self.raw:
            self.bytes += len(line)
            self.count += 1
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f"{exc.reason} at byte {exc.start}"
                if self.errors == "replace":
                    text = line.decode("utf-8", errors="replace")
                elif self.errors == "skip":
                    self.skipped += 1
                    report = self.report if self.report is not None else sys.stderr
                    report.write(f"{self.command}: skipped line {self.count} of {self.name}: "
                                 f"not valid UTF-8 ({where})\n")
                    continue
                else:
                    raise ValueError(f"{self.name}: line {self.count} is not valid UTF-8 ({where}); "
                                     "--errors replace or --errors skip goes on past such lines") from None
            yield clean_text(text)
