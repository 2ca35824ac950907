"""Keras 3's ``TextVectorization`` as the first layer of a ``.keras`` model -> the model's vocabulary.

A Keras 3 text classifier often starts with ``TextVectorization`` (raw strings in, token ids out).
fastrnn does not run that layer: it turns it into the model's Vocabulary (fastrnn.vocab) plus the
padding it did (metadata ``"text_input"``, see fastrnn.formats.tokenizers), so ``classify`` on raw
text feeds the Embedding exactly the ids Keras did. TensorFlow is not needed.

What Keras 3 does (keras/src/layers/preprocessing/text_vectorization.py and index_lookup.py, on
TensorFlow's string ops; checked against TensorFlow 2.21 + Keras 3.15 by tests/fixtures/textvec):
- standardize "lower": ``tf.strings.lower`` without an encoding, which lower-cases A-Z only ("Ä",
  "İ", full-width "Ａ" stay as they are; Hangul has no case); "strip_punctuation": the regex
  ``[!"#$%&()\\*\\+,-\\./:;<=>?@\\[\\\\\\]^_`{|}~\\']`` replaced by "": exactly the 32 ASCII punctuation
  characters are deleted (not turned into spaces: "좋아요!!재밌어" is one word), other punctuation
  ("…", "“", "！", "。") stays; "lower_and_strip_punctuation" (the default): both, in that order.
- split "whitespace": ``tf.strings.split``: runs of the six ASCII whitespace characters
  " \\t\\n\\v\\f\\r" (U+3000 and NBSP are not spaces to it), no empty words; "character": one token
  per code point, spaces included; None: the whole standardized text is one token.
- ids: "" (the mask token) is 0, the vocabulary's tokens from 2 on, anything else "[UNK]" = 1
  (an empty whole text is "" = 0).
- ``output_sequence_length`` L: ids cut to the first L and padded with 0 at the end ("post");
  None: no padding for one text (fastrnn runs each text at its own length).
The vocabulary is in the archive's ``assets/layers/<key>/vocabulary.txt`` (written by
``save_assets``: one token a line, starting with "" and "[UNK]"; read back the way Keras's
``load_assets`` reads it) or, when it was passed to the constructor, in config.json's
``"vocabulary"`` (with or without the two special tokens first, as Keras accepts).
"""
from __future__ import annotations

import os

from ..errors import ModelFormatError, UnsupportedLayerError
from ..vocab import Vocabulary

MASK_TOKEN, OOV_TOKEN = "", "[UNK]"  # ids 0 and 1 (StringLookup's mask_token and oov_token in TextVectorization)
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # what Keras's strip_punctuation regex deletes
STANDARDIZE = {  # Keras option -> (A-Z lower-cased, characters deleted)
    "lower_and_strip_punctuation": (True, PUNCTUATION), "lower": (True, ""), "strip_punctuation": (False, PUNCTUATION),
    None: (False, ""),
}
SPLIT = {"whitespace": ("word", "ascii_whitespace"), "character": ("char", None), None: ("word", "whole")}
MAX_VOCABULARY_BYTES = 256 * 1024 * 1024
ASSET_NAME = "vocabulary.txt"


# -- the archive's assets ------------------------------------------------------------------
def zip_assets(zf, path, read_member) -> dict:
    """The vocabulary files of a .keras archive: {path under assets/: bytes}. ``read_member``
    is the Keras reader's size-checked member read."""
    out = {}
    for name in zf.namelist():
        if name.startswith("assets/") and name.endswith("/" + ASSET_NAME):
            out[name[len("assets/"):]] = read_member(zf, name, path)
    return out


def dir_assets(path) -> dict:
    """The vocabulary files of an unzipped .keras directory (links are not followed)."""
    root = os.path.join(path, "assets")
    out = {}
    if not os.path.isdir(root) or os.path.islink(root):
        return out
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        if ASSET_NAME in files:
            full = os.path.join(folder, ASSET_NAME)
            if os.path.islink(full) or os.path.getsize(full) > MAX_VOCABULARY_BYTES:
                raise ModelFormatError(f"{full}: a link or larger than {MAX_VOCABULARY_BYTES} bytes", path)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root).replace(os.sep, "/")] = f.read()
    return out


def _asset(assets, key, nested):
    """The bytes of layer ``key``'s vocabulary asset, or None. Keras writes it twice, for the
    layer and for its inner StringLookup (``_lookup_layer``), the same list."""
    for tail in (f"layers/{key}/{ASSET_NAME}", f"layers/{key}/_lookup_layer/{ASSET_NAME}"):
        if not nested and tail in assets:
            return assets[tail]
        found = [p for p in assets if p.endswith("/" + tail)] if nested else []
        if len(found) == 1:
            return assets[found[0]]
    return None


# -- the layer -------------------------------------------------------------------------------
def _function_name(spec):
    if isinstance(spec, dict):
        inner = spec.get("config")
        return str(inner if isinstance(inner, str) else spec.get("registered_name") or spec.get("class_name"))
    return repr(spec)


def _unsupported_options(cfg):
    """Every option fastrnn does not reproduce, each with what it reads instead."""
    out = []
    std, split = cfg.get("standardize", "lower_and_strip_punctuation"), cfg.get("split", "whitespace")
    if not (std is None or (isinstance(std, str) and std in STANDARDIZE)):
        out.append(f"standardize={_function_name(std)} (a user-defined function: fastrnn reads "
                   "'lower_and_strip_punctuation', 'lower', 'strip_punctuation' or None)")
    if not (split is None or (isinstance(split, str) and split in SPLIT)):
        out.append(f"split={_function_name(split)} (a user-defined function: fastrnn reads 'whitespace', "
                   "'character' or None)")
    if cfg.get("ngrams") is not None:
        out.append(f"ngrams={cfg['ngrams']!r} (fastrnn reads ngrams=None: single tokens)")
    if cfg.get("output_mode", "int") != "int":
        out.append(f"output_mode={cfg['output_mode']!r} (fastrnn reads output_mode='int': token ids for an "
                   "Embedding)")
    length = cfg.get("output_sequence_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        out.append(f"output_sequence_length={length!r} (fastrnn reads a positive integer or None)")
    for flag in ("ragged", "sparse"):
        if cfg.get(flag):
            out.append(f"{flag}=True (fastrnn reads dense int output)")
    if cfg.get("idf_weights") is not None:
        out.append("idf_weights (TF-IDF output)")
    encoding = cfg.get("encoding", "utf-8")
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        out.append(f"encoding={encoding!r} (fastrnn reads 'utf-8')")
    if isinstance(cfg.get("vocabulary"), str):
        out.append(f"vocabulary={cfg['vocabulary']!r} (a file outside the archive; save the model after "
                   "set_vocabulary(list) or adapt() so the vocabulary is inside it)")
    return out


def _keras_vocabulary(lines, ctx, e):
    """Keras's set_vocabulary: the special tokens are dropped when the list starts with them;
    the tokens then get ids 2, 3, ..."""
    if not isinstance(lines, list) or not all(isinstance(t, str) for t in lines):
        raise ctx.error(e, "the vocabulary is not a list of strings")
    tokens = lines[2:] if lines[:2] == [MASK_TOKEN, OOV_TOKEN] else lines
    if not tokens:
        raise ctx.error(e, "the vocabulary is empty")
    seen, repeated = set(), []
    for t in tokens:
        if t in seen:
            repeated.append(t)
        seen.add(t)
    if repeated:
        raise ctx.error(e, f"the vocabulary repeats tokens {sorted(set(repeated))[:5]} (Keras refuses it too)")
    if MASK_TOKEN in seen:
        raise ctx.error(e, "the vocabulary holds the mask token '' after its start (Keras refuses it too)")
    return [MASK_TOKEN, OOV_TOKEN] + tokens


def _read_vocabulary(ctx, e, cfg, weights, prefix):
    given = cfg.get("vocabulary")
    if given is not None:
        return _keras_vocabulary(given, ctx, e)
    key = getattr(weights, "by_position", {}).get(e["name"])
    raw = _asset(getattr(ctx, "assets", None) or {}, key, nested=bool(prefix)) if key else None
    if raw is None:
        raise ctx.error(e, "its vocabulary is neither in its config nor in the archive's assets/ "
                           f"(expected assets/layers/{key or '<layer>'}/{ASSET_NAME}; fastrnn reads it from a Keras 3 "
                           ".keras file: save the model with model.save('model.keras'))")
    if len(raw) > MAX_VOCABULARY_BYTES:
        raise ctx.error(e, f"the vocabulary asset is larger than {MAX_VOCABULARY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ctx.error(e, f"the vocabulary asset is not UTF-8: {exc}") from None
    lines = text.splitlines()  # load_assets: open(...).read().splitlines(), trailing empty lines dropped
    while lines and lines[-1] == "":
        lines.pop()
    return _keras_vocabulary(lines, ctx, e)


def vectorize_input(b, e, weights, ins, prefix):
    """The hook of fastrnn.formats.keras for a TextVectorization layer called on ``ins``: the
    model's string input becomes its token-id input, the layer's vocabulary is kept on the
    builder ``b`` for ``model_vocabulary``; returns the layer's output refs (its input's)."""
    ctx, cfg = b.ctx, e["config"]
    problems = _unsupported_options(cfg)
    if problems:
        raise ctx.unsupported(e, "fastrnn does not reproduce its options " + "; ".join(problems))
    if getattr(b, "text_vectorization", None) is not None:
        raise ctx.unsupported(e, "the model has a second TextVectorization layer "
                                 f"({b.text_vectorization['name']!r} is the first); fastrnn keeps one vocabulary "
                                 "per model")
    graph_input = next((i for i in b.inputs if len(ins) == 1 and i.name == ins[0][0]), None)
    if graph_input is None:
        raise ctx.unsupported(e, "fastrnn reads a TextVectorization only as the first layer, applied to the "
                                 "model's string input (it becomes the model's tokenizer)")
    if graph_input.shape not in ((1,), ()):
        raise ctx.unsupported(e, f"its input has shape {graph_input.shape}; fastrnn reads one string per example "
                                 "(keras.Input(shape=(1,), dtype='string') or shape=())")
    tokens = _read_vocabulary(ctx, e, cfg, weights, prefix)
    max_tokens, size = cfg.get("max_tokens"), cfg.get("vocabulary_size")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and len(tokens) > max_tokens:
        raise ctx.error(e, f"the vocabulary has {len(tokens)} tokens, more than max_tokens={max_tokens}")
    if isinstance(size, int) and not isinstance(size, bool) and size != len(tokens):
        raise ctx.error(e, f"the vocabulary has {len(tokens)} tokens but the config says vocabulary_size={size}")
    lower, strip = STANDARDIZE[cfg.get("standardize", "lower_and_strip_punctuation")]
    level, splitter = SPLIT[cfg.get("split", "whitespace")]
    vocabulary = Vocabulary(tokens, level=level, unk=1, pad=0, lowercase_ascii=lower, strip=strip,
                            splitter=splitter)
    graph_input.shape, graph_input.dtype = (None,), "int64"  # token ids, one text at its own length
    b.text_vectorization = {"name": e["name"], "vocabulary": vocabulary,
                            "maxlen": cfg.get("output_sequence_length")}
    return [ins[0]]


def model_vocabulary(b, metadata):
    """After the graph is built: the TextVectorization's vocabulary (or None), its padding in
    ``metadata["text_input"]``."""
    tv = getattr(b, "text_vectorization", None)
    if tv is None:
        return None
    if tv["maxlen"] is not None:
        metadata["text_input"] = {"padding": "post", "truncating": "post", "maxlen": tv["maxlen"]}
    return tv["vocabulary"]
