"""The vocabulary in C: a table from code points to token ids, built from fastrnn.vocab's own rules.

A character vocabulary turns text into ids one code point at a time (``Vocabulary.split`` is
``list(text)`` after lower-casing and stripping), so the C can apply it per code point: for each
code point whose ids are not simply "unknown", the table holds the ids that
``vocabulary.encode(chr(cp))`` gives (none for a stripped character, several when lower-casing
makes several characters, e.g. U+0130). The table is computed here with Python's own str.lower,
so the C agrees with fastrnn on every code point. One rule of str.lower depends on context: a
Greek capital sigma becomes final sigma at the end of a word; a lower-casing vocabulary that holds
sigma cannot be encoded per code point and gets no C encoder (the reason is given).
Word vocabularies (splitting on separators and filters) are not encoded in C: their models take
token ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

UNKNOWN = -1  # an id the table gives for a piece with no id and no unknown token: an error


@dataclass
class CodeTable:
    """Sorted code points with, for each, its ids: ``ids[start[i]:start[i + 1]]``."""

    code_points: list
    start: list
    ids: list
    unknown: int  # the id of a code point not in the table: unk, or UNKNOWN (error), or -2 (dropped)


def encoder_problem(vocab) -> Optional[str]:
    """Why ``vocab`` cannot be encoded per code point in C (a sentence), or None."""
    if vocab is None:
        return "the model has no vocabulary"
    if vocab.level != "char":
        return (f"its vocabulary is {vocab.level}-level (words split by its separator and filters); the C takes "
                "token ids for it (NAME_step, NAME_generate), and text for character vocabularies only")
    if vocab.lowercase and ("\u03c3" in vocab.index or "\u03c2" in vocab.index):
        return ("its vocabulary lower-cases text and holds Greek sigma, whose lower case depends on the next "
                "character (str.lower's final-sigma rule), which a per-character table cannot reproduce")
    return None


def _piece_id(vocab, piece):
    i = vocab.index.get(piece)
    if i is not None:
        return i
    if vocab.drop_unknown:
        return None
    return UNKNOWN if vocab.unk is None else vocab.unk


def code_table(vocab) -> CodeTable:
    """The per-code-point table of a character vocabulary (see the module doc)."""
    unknown = -2 if vocab.drop_unknown else (UNKNOWN if vocab.unk is None else vocab.unk)
    candidates = {ord(t) for t in vocab.tokens if len(t) == 1}
    candidates |= {ord(c) for c in vocab.strip}
    if vocab.lowercase_ascii:
        candidates |= set(range(ord("A"), ord("Z") + 1))
    if vocab.lowercase:
        candidates |= {cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and chr(cp).lower() != chr(cp)}
    code_points, start, ids = [], [0], []
    for cp in sorted(candidates):
        pieces = vocab.split(chr(cp))
        row = [i for i in (_piece_id(vocab, p) for p in pieces) if i is not None]
        if row == [unknown] and unknown >= 0 or (not row and unknown == -2 and pieces):
            continue  # what a code point outside the table gives anyway
        if row == [UNKNOWN]:
            continue
        code_points.append(cp)
        ids.extend(row)
        start.append(len(ids))
    return CodeTable(code_points, start, ids, unknown)
