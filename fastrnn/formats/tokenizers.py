"""The tokenizer that came with a model: Keras's ``Tokenizer.to_json()`` (+ ``pad_sequences``).

Keras 2 text models (the Naver review classifiers of the lecture notes among them) are trained on
``Tokenizer.texts_to_sequences`` then ``pad_sequences``; the tokenizer is shipped beside the model
as ``tokenizer.json``. ``read_keras_tokenizer`` turns it into a fastrnn Vocabulary that gives the
same ids, and ``attach_tokenizer`` stores it in a Model with the padding the model was trained
with, so ``classify`` on raw text feeds the model exactly what Keras did.

Keras's rules (keras/preprocessing/text.py of Keras 2, reproduced here as data):
- word level: lower-case (``lower``), every character of ``filters`` becomes ``split``, split on
  ``split``, empty pieces dropped; char level: lower-case only, one piece per character;
- ids come from ``word_index`` (1-based, 0 is padding); with ``num_words`` only ids below it are
  kept; a word not kept becomes ``oov_token``'s id when there is one, else it is dropped.
- ``pad_sequences(maxlen, padding="pre", truncating="pre")`` (Keras's defaults) cut and pad at the
  front. A model with a mask (Embedding(mask_zero=True) or Masking) skips the padding whatever its
  side, which fastrnn reproduces by running each text at its own length; a model without one
  sees the zeros, so fastrnn pads to ``maxlen`` on the same side (recorded in the model's
  metadata as ``"text_input": {"padding", "truncating", "maxlen"}``). Without ``maxlen`` the
  model's fixed input length is taken; a model with neither a mask nor a fixed length gets a
  PaddingLengthWarning (its results depend on the padding length of its training).
"""
from __future__ import annotations

import json
import os
import warnings

from ..classify.classifier import MAX_MAXLEN, check_maxlen  # noqa: F401  (the bound, re-exported)
from ..errors import ModelFormatError, PaddingLengthWarning
from ..layers import Embedding, Masking
from ..vocab import Vocabulary

MAX_TOKENIZER_BYTES = 256 * 1024 * 1024
SIDES = ("pre", "post")
PAD_TOKEN = ""  # id 0: Keras's padding; splitting never yields an empty piece, so it never matches


def _load_json(source, what):
    if isinstance(source, dict):
        return source, "<dict>"
    if isinstance(source, (str, os.PathLike)) and os.path.exists(os.fspath(source)):
        path = os.fspath(source)
        if os.path.getsize(path) > MAX_TOKENIZER_BYTES:
            raise ModelFormatError(f"{what} is larger than {MAX_TOKENIZER_BYTES} bytes", path)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return json.loads(raw.decode("utf-8-sig")), path
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelFormatError(f"{what} is not valid JSON: {exc}", path) from None
    if isinstance(source, str) and source.lstrip().startswith("{"):
        try:
            return json.loads(source), "<string>"
        except (ValueError, RecursionError) as exc:
            raise ModelFormatError(f"{what} is not valid JSON: {exc}", "<string>") from None
    raise FileNotFoundError(f"{what}: no such file: {source!r}")


def read_keras_tokenizer(source) -> Vocabulary:
    """A Keras ``Tokenizer.to_json()`` (a path, a JSON string or the parsed dict) -> Vocabulary."""
    obj, where = _load_json(source, "tokenizer")
    if not isinstance(obj, dict) or obj.get("class_name") != "Tokenizer" or not isinstance(obj.get("config"), dict):
        raise ModelFormatError("not a Keras Tokenizer JSON (expected {'class_name': 'Tokenizer', 'config': {...}}, "
                               "as written by Tokenizer.to_json())", where)
    cfg = obj["config"]

    def field(name, kinds, default=None):
        v = cfg.get(name, default)
        if v is not None and not isinstance(v, kinds):
            raise ModelFormatError(f"tokenizer config {name!r} has an unexpected type {type(v).__name__}", where)
        return v

    word_index = cfg.get("word_index")
    if isinstance(word_index, str):  # to_json stores it as a JSON string inside the JSON
        try:
            word_index = json.loads(word_index)
        except ValueError as exc:
            raise ModelFormatError(f"tokenizer word_index is not valid JSON: {exc}", where) from None
    if not isinstance(word_index, dict) or not all(
            isinstance(w, str) and isinstance(i, int) and not isinstance(i, bool) and i >= 1
            for w, i in word_index.items()):
        raise ModelFormatError("tokenizer word_index must map words to ids >= 1", where)
    num_words = field("num_words", int)
    oov = field("oov_token", str)
    lower = field("lower", bool, True)
    char_level = field("char_level", bool, False)
    filters = field("filters", str, '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n')
    split = field("split", str, " ")
    if split == "":
        raise ModelFormatError("tokenizer split must not be empty", where)
    top = max(word_index.values(), default=0)
    size = top + 1 if not num_words else min(top + 1, max(num_words, 1))
    if size > 50_000_000:
        raise ModelFormatError(f"tokenizer has {size} ids: beyond the limit of 50,000,000", where)
    tokens = [None] * size
    tokens[0] = PAD_TOKEN
    for w, i in word_index.items():
        if i < size:
            if tokens[i] is not None:
                raise ModelFormatError(f"tokenizer word_index gives id {i} to two words", where)
            tokens[i] = w
    for i, t in enumerate(tokens):
        if t is None:  # a gap (never written by Keras): a token no text can produce
            tokens[i] = PAD_TOKEN
    unk = None
    if oov is not None:
        unk = word_index.get(oov)
        if unk is None or unk >= size:
            raise ModelFormatError(f"tokenizer oov_token {oov!r} has no id below num_words", where)
    return Vocabulary(tokens, level="char" if char_level else "word", unk=unk, pad=0, lowercase=lower,
                      filters="" if char_level else filters, separator=None if char_level else split,
                      drop_unknown=oov is None)


def attach_tokenizer(model, source, padding="pre", truncating="pre", maxlen=None):
    """Store the Keras tokenizer ``source`` in ``model`` (in place; returned) with the
    ``pad_sequences`` options the model was trained with.

    Without ``maxlen``: the length of the model's input when it is fixed (``Input((20,))``);
    else, for a model without a mask (whose results depend on the padding it sees), a
    PaddingLengthWarning saying how to give it. ``maxlen`` is at most MAX_MAXLEN."""
    if padding not in SIDES or truncating not in SIDES:
        raise ValueError(f"padding and truncating must be 'pre' or 'post' (pad_sequences), got {padding!r}, "
                         f"{truncating!r}")
    maxlen = check_maxlen(maxlen)
    vocab = read_keras_tokenizer(source)
    if not model.takes_tokens:
        raise ValueError("the model does not take token ids, so a tokenizer does not apply to it")
    rows = model.input_size
    if len(vocab) > rows:
        # Keras's Embedding(num_words) may be smaller than word_index: ids beyond it never occur
        # with num_words set; without it, a text could produce an id the model cannot look up.
        raise ValueError(f"the tokenizer gives ids up to {len(vocab) - 1} but the model's embedding has {rows} "
                         "rows (was the Tokenizer made with num_words=...? pass the same tokenizer file)")
    fixed = fixed_length(model)
    if maxlen is None and fixed is not None:
        maxlen = check_maxlen(fixed, f"the model's input length {fixed}: maxlen")
    elif maxlen is not None and fixed is not None and maxlen != fixed:
        raise ValueError(f"maxlen={maxlen}, but the model's input has a fixed length of {fixed} steps: pad_sequences "
                         f"in training must have used maxlen={fixed} (or leave maxlen out)")
    elif maxlen is None and not has_mask(model):
        warnings.warn(
            "the tokenizer is attached without maxlen, and this model has no mask and no fixed input length: its "
            "results depend on the padding length used in training (pad_sequences' maxlen), and texts will be "
            "classified unpadded. Give that length: maxlen=N in Python (fastrnn.load(..., tokenizer=..., "
            "maxlen=N)), --maxlen N on the command line", PaddingLengthWarning, stacklevel=3)
    model.vocabulary = vocab
    model.metadata["text_input"] = {"padding": padding, "truncating": truncating, "maxlen": maxlen}
    return model


def fixed_length(model):
    """The fixed time length of a one-input token model (Keras ``Input((20,))``), or None."""
    shape = model.graph.inputs[0].shape
    return shape[0] if len(shape) == 1 and shape[0] is not None else None


def has_mask(model) -> bool:
    """True when the model masks padding (Embedding(mask_zero=True) or Masking)."""
    return any(isinstance(layer, Masking) or (isinstance(layer, Embedding) and layer.mask_zero)
               for layer in model.layers)
