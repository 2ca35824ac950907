"""Vocabulary / tokenizer stored with a model: text <-> token ids.

Recorded in the model file's metadata as JSON, so loading runs no code:
``{"level": "char" | "word", "tokens": [...], "unk": id or null, "pad": id or null,
"lowercase": bool}``. Characters are Unicode code points (a Hangul vocabulary of thousands of
syllables works the same as ASCII).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Vocabulary:
    tokens: list
    level: str = "char"
    unk: Optional[int] = None
    pad: Optional[int] = None
    lowercase: bool = False

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

    def __len__(self):
        return len(self.tokens)

    def split(self, text: str):
        if self.lowercase:
            text = text.lower()
        return list(text) if self.level == "char" else text.split()

    def encode(self, text: str) -> list:
        """Text -> ids. Unknown symbols map to ``unk``; without one they raise ValueError."""
        ids = []
        for piece in self.split(text):
            i = self.index.get(piece)
            if i is None:
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
        return {"level": self.level, "tokens": self.tokens, "unk": self.unk, "pad": self.pad,
                "lowercase": self.lowercase}

    @classmethod
    def from_json(cls, d):
        return cls(tokens=d["tokens"], level=d.get("level", "char"), unk=d.get("unk"), pad=d.get("pad"),
                   lowercase=bool(d.get("lowercase", False)))


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
