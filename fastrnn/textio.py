"""Text inputs, read the same way from Python and from the command line.

A text to classify is cleaned by ``clean_text``: a leading byte-order mark (U+FEFF) and one
trailing line ending (``\\r\\n``, ``\\n`` or ``\\r``) are removed, nothing else (inner whitespace
and case are the vocabulary's business). So iterating a file object in Python,
``model.classify(open(path, encoding="utf-8"))``, gives the same results as
``fastrnn classify path``, whose lines are read by ``LineReader``.

``LineReader`` reads the lines of a binary stream as UTF-8, or in another ``encoding`` (the
command line's ``--encoding``: cp949 / euc-kr for Korean files from Windows, utf-16 with its
byte-order mark, ...). What happens to a line that is not valid in that encoding is chosen by
``errors`` (the command line's ``--errors``):
- ``strict`` (default): stop with a ValueError naming the line number;
- ``replace``: decode it with U+FFFD for each bad byte sequence (for the bundled language
  identifier U+FFFD is the unknown character);
- ``skip``: leave the line out (no output line for it) and report it on ``report`` (stderr)
  with its line number.
Lines end at "\n" (a "\r\n" or "\r" before it is removed by clean_text). In UTF-16 and UTF-32
a line cannot be found before its bytes are decoded: the stream is decoded as a whole (an error
still names its line) and ``skip`` is refused.
"""
from __future__ import annotations

import codecs
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


def check_encoding(encoding: str) -> str:
    """``encoding``'s codec name (ValueError for a name Python does not know, or not a text codec)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"unknown encoding {encoding!r} (e.g. utf-8, cp949, euc-kr, utf-16, latin-1)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{encoding!r} is not a text encoding")
    return info.name


def _whole_stream(codec):
    """UTF-16 / UTF-32: "\n" is not one byte, so lines are found after decoding."""
    return codec.startswith(("utf-16", "utf-32"))


class LineReader:
    """The lines of a binary stream as cleaned text (``clean_text``), decoded as ``encoding``
    (default UTF-8) with the policy ``errors`` for invalid lines (see module doc). Counts the bytes
    read (for a progress bar), the lines read and the lines skipped. ``command`` names the program
    in skip reports."""

    def __init__(self, raw, name, errors="strict", report=None, command="fastrnn", encoding="utf-8"):
        self.raw = raw
        self.name = name
        self.errors = check_errors(errors)
        self.codec = check_encoding(encoding)
        self.encoding = "UTF-8" if self.codec == "utf-8" else encoding
        if self.errors == "skip" and _whole_stream(self.codec):
            raise ValueError(f"--errors skip cannot find the lines of a {encoding} file before decoding them: "
                             "use --errors replace (or strict)")
        self.report = report
        self.command = command
        self.bytes = 0
        self.count = 0
        self.skipped = 0

    def _advice(self):
        hint = "--errors replace or --errors skip goes on past such lines"
        if self.codec == "utf-8":
            hint += "; --encoding ENC reads a file in another encoding (e.g. cp949, utf-16)"
        return hint

    def __iter__(self):
        if _whole_stream(self.codec):
            yield from self._decoded_lines()
            return
        for line in self.raw:
            self.bytes += len(line)
            self.count += 1
            try:
                text = line.decode(self.codec)
            except UnicodeDecodeError as exc:
                where = f"{exc.reason} at byte {exc.start}"
                if self.errors == "replace":
                    text = line.decode(self.codec, errors="replace")
                elif self.errors == "skip":
                    self.skipped += 1
                    report = self.report if self.report is not None else sys.stderr
                    report.write(f"{self.command}: skipped line {self.count} of {self.name}: "
                                 f"not valid {self.encoding} ({where})\n")
                    continue
                else:
                    raise ValueError(f"{self.name}: line {self.count} is not valid {self.encoding} ({where}); "
                                     f"{self._advice()}") from None
            yield clean_text(text)

    def _decoded_lines(self):
        decoder = codecs.getincrementaldecoder(self.codec)(errors=self.errors)
        pending = ""
        while True:
            chunk = self.raw.read(1 << 16)
            state = decoder.getstate()  # (bytes held back, byte-order flag)
            try:
                text = pending + decoder.decode(chunk or b"", final=not chunk)
            except UnicodeDecodeError as exc:  # the lines before the bad bytes first, then the error
                good = codecs.getincrementaldecoder(self.codec)()
                good.setstate(state)  # the same byte order as the stream's mark
                lines = (pending + good.decode(chunk[:max(0, exc.start - len(state[0]))])).split("\n")
                for line in lines[:-1]:
                    self.count += 1
                    yield clean_text(line)
                raise ValueError(f"{self.name}: line {self.count + 1} is not valid {self.encoding} ({exc.reason}); "
                                 f"{self._advice()}") from None
            self.bytes += len(chunk)
            lines = text.split("\n")
            pending = lines.pop()
            for line in lines:
                self.count += 1
                yield clean_text(line)
            if not chunk:
                break
        if pending:
            self.count += 1
            yield clean_text(pending)
