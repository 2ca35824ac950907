"""Vocabulary / tokenizer stored with a model: text <-> token ids.

Recorded in the model file's metadata as JSON, so loading runs no code:
``{"level": "char" | "word", "tokens": [...], "unk": id or null, "pad": id or null,
"lowercase": bool}``, plus, for tokenizers imported from Keras (fastrnn.formats.tokenizers),
``"filters"`` (characters turned into the separator before splitting), ``"separator"`` (words
are split on it, empty pieces dropped; null = any whitespace) and ``"drop_unknown"`` (unknown
pieces are left out, as Keras's Tokenizer does without an oov_token). Keras 3's TextVectorization
(fastrnn.formats.text_vectorization) adds ``"lowercase_ascii"`` (only A-Z are lower-cased, as
TensorFlow's ``tf.strings.lower``), ``"strip"`` (characters deleted before splitting) and
``"splitter"`` (``"ascii_whitespace"``: words are split on runs of the six ASCII whitespace
characters only, as ``tf.strings.split``; ``"whole"``: the whole text is one token, even when
empty). Each key is written only when it differs from its default, so files without them read
as before. Characters are Unicode code points (a Hangul vocabulary of thousands of syllables works
the same as ASCII).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ASCII_WHITESPACE = " \t\n\v\f\r"  # what TensorFlow's tf.strings.split splits on (no Unicode spaces)
SPLITTERS = (None, "ascii_whitespace", "whole")


@dataclass
class Vocabulary:
    tokens: list
    level: str = "char"
    unk: Optional[int] = None
    pad: Optional[int] = None
    lowercase: bool = False
    filters: str = ""
    separator: Optional[str] = None
    drop_unknown: bool = False
    lowercase_ascii: bool = False
    strip: str = ""
    splitter: Optional[str] = None

    def __post_init__(self):
        if self.level not in ("char", "word"):
            raise ValueError(f"vocabulary level must be 'char' or 'word', got {self.level!r}")
        self.tokens = [str(t) for t in self.tokens]
        self.index = {}
        for i, t in enumerate(self.tokens):
            self.index.setdefault(t, i)
        for name in ("unk", "pad"):
            v = getattr(self, name)
            if v is not None and not (0 <= int(v) < len(self.tokens)):
                raise ValueError(f"vocabulary {name} id {v} is outside 0..{len(self.tokens) - 1}")
        if not isinstance(self.filters, str) or (self.separator is not None and (
                not isinstance(self.separator, str) or self.separator == "")):
            raise ValueError("vocabulary filters must be a string and separator a non-empty string or None")
        self._filter_map = {ord(c): self.separator or " " for c in self.filters} if self.filters else None
        if not isinstance(self.strip, str) or self.splitter not in SPLITTERS or (
                self.splitter is not None and (self.level != "word" or self.filters or self.separator is not None)):
            raise ValueError(f"vocabulary strip must be a string and splitter one of {SPLITTERS} (a word-level "
                             "splitter, without filters or separator)")
        # in one str.translate: A-Z lower-cased, then ``strip`` deleted, then (ASCII-whitespace
        # splitting) the ASCII whitespace turned into spaces
        upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if self.lowercase_ascii else ""
        spaces = ASCII_WHITESPACE if self.splitter == "ascii_whitespace" else ""
        table = {}
        for c in set(self.strip) | set(upper) | set(spaces):
            x = c.lower() if c in upper else c
            if x in self.strip:
                table[ord(c)] = None
            elif x in spaces:
                table[ord(c)] = " "
            elif x != c:
                table[ord(c)] = x
        self._standardize_map = table or None

    def __len__(self):
        return len(self.tokens)

    def split(self, text: str):
        if self.lowercase:
            text = text.lower()
        if self._standardize_map:
            text = text.translate(self._standardize_map)
        if self.level == "char":
            return list(text)  # Keras's char_level Tokenizer applies no filters either
        if self.splitter == "whole":
            return [text]
        if self.splitter == "ascii_whitespace":
            return [w for w in text.split(" ") if w]
        if self._filter_map:
            text = text.translate(self._filter_map)
        if self.separator is None:
            return text.split()
        return [w for w in text.split(self.separator) if w]

    def encode(self, text: str) -> list:
        """Text -> ids. Unknown symbols map to ``unk``; without one they raise ValueError."""
        return self._ids(self.split(text))

    # windows of text tokenized at a time by encode_bounded (a test makes it tiny)
    WINDOW_CHARS = 1 << 16

    def encode_bounded(self, text: str, limit: int, from_end: bool = False):
        """``(ids, longer)``: the first ``limit`` ids of ``encode(text)`` (the last ``limit`` with
        ``from_end``), and whether the text has more. Equal to cutting ``encode(text)``, but the
        text is tokenized in windows of about WINDOW_CHARS characters, cut where a piece must end
        (a separator, or, for lower-cased text, whitespace: the context Python's lower() reads),
        and only until ``limit`` ids are found: a giant line costs memory for ``limit`` tokens,
        not for all of its words."""
        boundary = self._boundary()
        n = len(text)
        if boundary is None or n <= self.WINDOW_CHARS:
            ids = self.encode(text)
            longer = len(ids) > limit
            return (ids[len(ids) - limit:] if from_end else ids[:limit]) if longer else ids, longer
        chunks, count = [], 0
        pos = n if from_end else 0
        while (pos > 0 if from_end else pos < n) and count <= limit:
            if from_end:
                cut = _cut_before(text, boundary, pos - self.WINDOW_CHARS) if pos > self.WINDOW_CHARS else 0
                ids = self.encode(text[cut:pos])
            else:
                cut = _cut_after(text, boundary, pos + self.WINDOW_CHARS) if pos + self.WINDOW_CHARS < n else n
                ids = self.encode(text[pos:cut])
            chunks.append(ids)
            count += len(ids)
            pos = cut
        if from_end:
            chunks.reverse()
        ids = [i for chunk in chunks for i in chunk]
        longer = count > limit
        return (ids[len(ids) - limit:] if from_end else ids[:limit]) if longer else ids, longer

    def _boundary(self):
        """A compiled character class of the characters after which a piece always ends and the
        text before and after tokenizes on its own; None when there is none (one piece per text,
        a separator of several characters)."""
        if "_boundary_re" in self.__dict__:
            return self._boundary_re
        import re

        if self.level == "char":
            candidates = None if not self.lowercase else set(ASCII_WHITESPACE + " \u3000\u00a0")
        elif self.splitter == "whole" or (self.separator is not None and len(self.separator) != 1):
            candidates = set()
        else:
            candidates = set(ASCII_WHITESPACE + "\u3000\u00a0\u2028\u2029\x1c\x1d\x1e\x1f\x85")
            candidates |= set(self.filters) | set(self.separator or "")
        if candidates is None:  # characters, not lower-cased: every position is a boundary
            self._boundary_re = re.compile(r"(?s:.)")
            return self._boundary_re
        good = []
        for c in sorted(candidates):
            if self.lowercase and not c.isspace():  # whitespace ends the context of a final sigma
                continue
            out = c.lower() if self.lowercase else c
            if self._standardize_map:
                out = out.translate(self._standardize_map)
            if self.level == "word" and self._filter_map:
                out = out.translate(self._filter_map)
            if self.level == "char":
                ok = len(out) == 1
            elif self.splitter == "ascii_whitespace":
                ok = out == " "
            elif self.separator is None:
                ok = out != "" and out.isspace()
            else:
                ok = out != "" and set(out) == {self.separator}
            if ok:
                good.append(c)
        self._boundary_re = re.compile("[" + "".join(re.escape(c) for c in good) + "]") if good else None
        return self._boundary_re

    def _ids(self, pieces) -> list:
        ids = []
        for piece in pieces:
            i = self.index.get(piece)
            if i is None:
                if self.drop_unknown:
                    continue
                if self.unk is None:
                    raise ValueError(
                        f"{piece!r} is not in the model's vocabulary ({len(self.tokens)} tokens) "
                        "and the vocabulary has no unknown-token id"
                    )
                i = self.unk
            ids.append(i)
        return ids

    def decode(self, ids) -> str:
        sep = "" if self.level == "char" else " "
        return sep.join(self.tokens[int(i)] for i in ids)

    def to_json(self):
        out = {"level": self.level, "tokens": self.tokens, "unk": self.unk, "pad": self.pad,
               "lowercase": self.lowercase}
        if self.filters or self.separator is not None or self.drop_unknown:
            out.update(filters=self.filters, separator=self.separator, drop_unknown=self.drop_unknown)
        if self.lowercase_ascii:
            out["lowercase_ascii"] = True
        if self.strip:
            out["strip"] = self.strip
        if self.splitter is not None:
            out["splitter"] = self.splitter
        return out

    @classmethod
    def from_json(cls, d):
        return cls(tokens=d["tokens"], level=d.get("level", "char"), unk=d.get("unk"), pad=d.get("pad"),
                   lowercase=bool(d.get("lowercase", False)), filters=d.get("filters", ""),
                   separator=d.get("separator"), drop_unknown=bool(d.get("drop_unknown", False)),
                   lowercase_ascii=bool(d.get("lowercase_ascii", False)), strip=d.get("strip", ""),
                   splitter=d.get("splitter"))


def _cut_after(text, boundary, pos):
    """Just after the first boundary character at or after ``pos`` (the end of the text when there
    is none): the end of a window that starts where the previous window ended."""
    m = boundary.search(text, pos)
    return len(text) if m is None else m.end()


def _cut_before(text, boundary, pos):
    """Just after the last boundary character before ``pos`` (0 when there is none): the start
    of a window that ends where the previous window began."""
    step = 1 << 12
    while pos > 0:
        start = max(0, pos - step)
        last = None
        for m in boundary.finditer(text, start, pos):
            last = m
        if last is not None:
            return last.end()
        pos, step = start, step * 2
    return 0


def as_vocabulary(value) -> Optional[Vocabulary]:
    """What ``vocabulary=`` accepts (from_torch, from_state_dict) -> a Vocabulary or None.

    - a Vocabulary: as is;
    - a list or tuple of tokens: token i has id i (character level when every token is one
      character, word level otherwise), no unknown id;
    - a str: its characters, in order (character level);
    - a dict {token: id} with the ids 0..n-1, or a dict as written by Vocabulary.to_json().
    Build a Vocabulary yourself for anything else (unk, lowercase, level)."""
    if value is None or isinstance(value, Vocabulary):
        return value
    if isinstance(value, str):
        return Vocabulary(list(value), level="char")
    if isinstance(value, dict):
        if "tokens" in value and isinstance(value["tokens"], (list, tuple)):
            return Vocabulary.from_json(value)
        ids = list(value.values())
        if (not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
                or sorted(ids) != list(range(len(value)))):
            raise ValueError("a vocabulary dict must map each token to its id, the ids being 0..n-1 "
                             "(or be a Vocabulary.to_json() dict)")
        tokens = [t for t, _ in sorted(value.items(), key=lambda kv: kv[1])]
    elif isinstance(value, (list, tuple)):
        tokens = list(value)
    else:
        raise TypeError(f"vocabulary must be a fastrnn.Vocabulary, a list of tokens, a str of characters or a "
                        f"dict {{token: id}}, got {type(value).__name__}")
    tokens = [str(t) for t in tokens]
    level = "char" if all(len(t) == 1 for t in tokens) else "word"
    return Vocabulary(tokens, level=level)
