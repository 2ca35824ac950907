"""C99 source text: literals, arrays, identifiers.

Every float is written with 9 significant digits, which reads back as the same float32 bits
(``float(f"{x:.9g}") == x`` for every float32 x), so the weights in the C are exactly the model's.
Strings are written with octal escapes for every byte outside printable ASCII (a hexadecimal
escape would swallow the hex digits that follow it) and with ``?`` escaped (C99 trigraphs).
"""
from __future__ import annotations

import keyword
import re

import numpy as np

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary main".split())
PER_LINE = 8


def c_float(x) -> str:
    """A float32 value as a C float literal that reads back as the same bits."""
    x = float(np.float32(x))
    if x != x:
        return "NAN"
    if x in (float("inf"), float("-inf")):
        return "INFINITY" if x > 0 else "-INFINITY"
    s = "%.9g" % x
    if "." not in s and "e" not in s:
        s += "."
    return s + "f"


def c_double(x) -> str:
    """A float64 value as a C double literal (17 significant digits: the same bits)."""
    s = "%.17g" % float(x)
    if "." not in s and "e" not in s:
        s += "."
    return s


def c_string(text: str) -> str:
    """``text`` as a C string literal of its UTF-8 bytes."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if ch in "\\\"?":
            out.append("\\" + ch)
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """``text`` made safe inside a /* */ comment: ASCII, no comment delimiters."""
    safe = str(text).encode("ascii", "backslashreplace").decode("ascii")
    return safe.replace("*/", "* /").replace("/*", "/ *")


def identifier(name: str) -> str:
    """``name`` turned into a C identifier prefix (letters, digits, underscores)."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", str(name))
    if not s or s[0].isdigit():
        s = "m_" + s
    return s


def check_name(name: str) -> str:
    """The NAME of the exported files and functions: a C identifier, not a keyword."""
    if not isinstance(name, str) or not IDENTIFIER.match(name) or name in C_KEYWORDS or keyword.iskeyword(name):
        raise ValueError(f"export-c: the name {name!r} must be a C identifier (letters, digits and underscores, not "
                         "starting with a digit, not a C keyword): it prefixes every function and file, e.g. "
                         "--name my_model")
    return name


def array_body(values, kind) -> str:
    """The initializer of a flat array: ``kind`` "float" (float32 literals) or "int" (integers)."""
    flat = np.asarray(values).reshape(-1)
    if kind == "float":
        flat = flat.astype(np.float32)
        if np.all(np.isfinite(flat)):
            items = ["%.9g" % v for v in flat.tolist()]
            items = [s + ("f" if ("." in s or "e" in s) else ".f") for s in items]
        else:
            items = [c_float(v) for v in flat.tolist()]
    else:
        items = [str(int(v)) for v in flat.tolist()]
    lines = [", ".join(items[i:i + PER_LINE]) for i in range(0, len(items), PER_LINE)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if lines else "{0}"
