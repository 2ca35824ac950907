"""Classification of many inputs: one label per text (or id sequence), lazily, in input order.

    model = fastrnn.load("sentiment.safetensors")       # any model whose output is per sequence
    for r in model.classify(open("reviews.txt", encoding="utf-8")):
        print(r.label, r.probabilities)

    fastrnn classify reviews.txt                          # the command line (fastrnn.classify.cli)

How a batch is formed (``classify``): inputs are read a window at a time (``window`` inputs,
default 16 batches), tokenized with the model's stored vocabulary, sorted by length inside the
window and cut into batches of at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens.
Each batch runs with exact per-row lengths, so padding costs nothing and changes nothing: with
the compiled backends a row's result is bitwise identical to running it alone (their matmuls sum
in the same order whatever the batch; tests/test_classify.py checks it). Results are then yielded in input order.
Memory is bounded by the window, whatever the number of inputs.

What counts as a classifier: a model whose last recurrent layer returns its final state (not a
sequence), followed by at least one Dense layer. Probabilities come from the last Dense layer:
softmax outputs as they are; a linear output is treated as logits and soft-maxed; a single
sigmoid unit gives two classes [1 - p, p]; several sigmoid units give independent per-class
probabilities (multi-label; ``label`` is then the most probable class). Label names are read
from the model's metadata ``"labels"`` (a list, one per class); without it labels are class ids.

ClassifierMixin gives fastrnn.Model its ``classify`` method; this module never imports
fastrnn.model (Model inherits the mixin, a layer above).
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np

from ..errors import InputError, InputTooLongWarning
from ..layers import Activation, Dense, Embedding, Masking
from ..textio import clean_text

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_TOKENS = 64 * 512  # padded tokens per batch: bounds the (B, T, ...) buffers
UNKNOWN_LABEL = "unknown"
DEFAULT_MAX_LENGTH = 10_000  # tokens per input used by classify (a giant line is cut, with a warning)


class Classification(NamedTuple):
    """One input's result. ``probabilities``: float32 (classes,), None when return_probs=False.

    ``unknown_fraction``: the fraction of the input's tokens that are the vocabulary's unknown
    token (for a text: characters / words the vocabulary does not have), 1.0 for an empty text
    or id sequence (nothing known), 0.0 for feature inputs. When it is above the classifier's
    unknown threshold, ``label`` is "unknown" and ``index`` None (``probabilities`` are still
    the model's)."""

    label: object  # the label name (str) from the model's metadata, or the class id (int)
    index: Optional[int]  # class id: position of ``label`` in ``labels``; None for "unknown"
    probabilities: Optional[np.ndarray]
    unknown_fraction: float = 0.0


def labels_of(model) -> list:
    """The class names stored with ``model`` (metadata "labels"), or the class ids 0..C-1."""
    n = class_count(model)
    labels = (model.metadata or {}).get("labels")
    if labels is None:
        return list(range(n))
    if not isinstance(labels, (list, tuple)) or len(labels) != n:
        raise ValueError(f"model metadata 'labels' must be a list of {n} class names, got {labels!r}")
    return [str(x) for x in labels]


class _Head:
    """What classify needs to know of a model's output: its size and how to read probabilities."""

    def __init__(self, size, activation):
        self.output_size, self.activation = size, activation


def check_classifier(model):
    """Raise ValueError saying why ``model`` cannot classify; return its output head (size and
    activation: softmax, sigmoid, linear logits or log_softmax)."""
    if not isinstance(model, ClassifierMixin):
        raise TypeError(f"expected a fastrnn.Model, got {type(model).__name__}")
    name = model.name
    if len(model.inputs) != 1:
        raise ValueError(f"model {name!r} has {len(model.inputs)} inputs {model.input_names}: classify reads one "
                         "text, id sequence or feature array per example; call model.predict with all the inputs")
    if len(model.graph.outputs) != 1:
        raise ValueError(f"model {name!r} has {len(model.graph.outputs)} outputs {model.output_names}: classify "
                         "needs one output of shape (batch, classes)")
    shape = model.output_shape
    if len(shape) != 1:
        rec = model.recurrent_layers
        if rec and rec[-1].return_sequences and len(shape) == 2:
            raise ValueError(
                f"model {name!r} is not a classifier: its last recurrent layer ({rec[-1].name}) returns a "
                "sequence, so the model gives one output per time step (a language or sequence-labelling "
                "model). Use model.predict for per-step outputs or model.generate for text; a classifier "
                "ends with a recurrent layer that returns its final state, then Dense layers.")
        raise ValueError(f"model {name!r} is not a classifier: its output has shape {(None,) + tuple(shape)}, "
                         "classify needs (batch, classes)")
    last = model.output_layer()
    if isinstance(last, Dense):
        activation = last.activation
    elif isinstance(last, Activation) and not last.custom and last.function in ("softmax", "log_softmax", "sigmoid"):
        activation = last.function
    else:
        activation = "linear"  # logits from any other layer (a merge, pooling, custom layer...)
    return _Head(shape[0], activation)


def class_count(model) -> int:
    last = check_classifier(model)
    n = last.output_size
    return 2 if (last.activation == "sigmoid" and n == 1) else n


def probabilities_from_output(out: np.ndarray, activation: str) -> np.ndarray:
    """The model's output (B, C) -> class probabilities (B, C') (see module doc)."""
    out = np.asarray(out, dtype=np.float32)
    if activation == "softmax":
        return out
    if activation == "log_softmax":
        return np.exp(out).astype(np.float32)
    if activation == "sigmoid":
        if out.shape[1] == 1:
            return np.concatenate([1.0 - out, out], axis=1)
        return out
    if activation == "linear":
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    raise ValueError(f"cannot read class probabilities from an output with activation {activation!r} "
                     "(expected softmax, log_softmax, sigmoid or linear logits)")


def unknown_threshold_of(model, threshold=None):
    """The threshold above which an input's unknown fraction gives the label "unknown":
    ``threshold`` if given, else the model's metadata "unknown_threshold", else None (off)."""
    if threshold is None:
        threshold = (model.metadata or {}).get("unknown_threshold")
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"unknown_threshold must be a number in [0, 1] (or None = off), got {threshold!r}")
    return float(threshold)


def _unknown_fraction(model, arr, padding_id=None) -> float:
    """Fraction of the unknown-token ids in an input's own tokens (see Classification): a text's
    ids before any padding to the model's maxlen (metadata "text_input"), which is not the text's;
    the padding id of a model with a mask (Embedding(mask_zero=True): id 0) is not a token and not
    counted."""
    if model.vocabulary is None and not model.takes_tokens:
        return 0.0
    if padding_id is not None:
        arr = arr[arr != padding_id]
    if arr.shape[0] == 0:
        return 1.0
    unk = model.vocabulary.unk if model.vocabulary is not None else None
    return 0.0 if unk is None else float(np.count_nonzero(arr == unk)) / arr.shape[0]


def _padding_id(model):
    """0 when the model's token ids are masked at id 0 (Embedding(mask_zero=True)), else None."""
    return 0 if any(isinstance(layer, Embedding) and layer.mask_zero for layer in model.layers) else None


def _encoder(model, max_length):
    """input -> (1-D array (ids (T,) int64, or features (T, F) float32) cut to max_length, its
    unknown fraction (counted before the padding to maxlen)).
    A text is cleaned first (textio.clean_text: BOM and trailing line ending removed), then cut
    to max_length tokens on the side the model's ``text_input`` truncates (the front by default,
    as pad_sequences does), then cut and padded as in training (``_text_input``). Padding ids
    are left in place: the model's mask skips them wherever they stand, as in ``predict``."""
    vocab = model.vocabulary
    takes_tokens = model.takes_tokens
    text_input = _text_input(model)
    keep_last = text_input is not None and text_input.truncating == "pre"  # pad_sequences keeps the end

    warned = []
    features = None if takes_tokens else model.input_size
    padding_id = _padding_id(model)

    def cut(arr, position, from_end, forced=False):
        """arr cut to max_length; ``from_end``: keep its last tokens (pad_sequences' truncating="pre")."""
        if max_length is None or not (arr.shape[0] > max_length or forced):
            return arr
        if not warned:
            import warnings

            warnings.warn(InputTooLongWarning(
                f"input {position} (counting from 0) is longer than max_length={max_length}: only its "
                f"{'last' if from_end else 'first'} {max_length} tokens are classified (pass a larger max_length "
                "for more)", position, max_length, from_end), stacklevel=4)
            warned.append(position)
        return arr[-max_length:] if from_end else arr[:max_length]

    def encode(item, position):
        if isinstance(item, str):
            item = clean_text(item)
            if not takes_tokens and vocab is None:
                raise ValueError("a text, but the model takes feature vectors and has no vocabulary; for a "
                                 "one-hot character model set model.vocabulary (e.g. \"helo\")")
            if vocab is None:
                raise ValueError("the model has no vocabulary stored with it, so it cannot read text: "
                                 "pass token ids instead (lists of ints)")
            # a giant line is tokenized only as far as the ids kept (vocab.encode_bounded): max_length of
            # them on the side kept, else pad_sequences' maxlen
            if max_length is not None:
                ids, longer = vocab.encode_bounded(item, max_length, from_end=keep_last)
            elif text_input is not None and text_input.maxlen is not None:
                ids, longer = vocab.encode_bounded(item, text_input.maxlen, from_end=keep_last)[0], False
            else:
                ids, longer = vocab.encode(item), False
            arr = cut(np.asarray(ids, dtype=np.int64), position, keep_last, longer)
            unknown = _unknown_fraction(model, arr)  # of the text's own tokens, before any padding to maxlen
            arr = arr if text_input is None else text_input(arr)  # padded after the cut: never only padding
            return (arr if takes_tokens else one_hot(arr, features)), unknown  # one-hot: token i, a 1 at feature i
        arr = np.asarray(item)
        if takes_tokens:
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"token ids must be a 1-D sequence of ints, got shape {arr.shape} dtype "
                                 f"{arr.dtype}")
            arr = cut(arr.astype(np.int64, copy=False), position, False)
            return arr, _unknown_fraction(model, arr, padding_id)
        if arr.ndim != 2:
            raise ValueError(f"features must be 2-D (time, features), got shape {arr.shape}")
        return cut(arr.astype(np.float32, copy=False), position, False), 0.0

    return encode


def one_hot(ids, size):
    """ids (T,) int -> (T, size) float32 one-hot rows (how a model without an Embedding reads
    text: token i of its vocabulary is the vector with a 1 at feature i)."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"token id {int(ids.max())} does not fit the model's {size} one-hot features")
    out = np.zeros((ids.shape[0], size), np.float32)
    out[np.arange(ids.shape[0]), ids] = 1.0
    return out


#: the largest pad_sequences ``maxlen`` a model's text input may name (texts are padded to it)
MAX_MAXLEN = 1_000_000


def check_maxlen(maxlen, where="maxlen"):
    """None or an int in 1..MAX_MAXLEN, else a ValueError naming ``where`` and the bound."""
    if maxlen is None:
        return None
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise ValueError(f"{where} must be a positive integer (pad_sequences' maxlen) or None, got {maxlen!r:.60}")
    if maxlen > MAX_MAXLEN:
        raise ValueError(f"{where}={maxlen} is beyond fastrnn's bound of {MAX_MAXLEN:,} steps (every text is "
                         f"padded to maxlen): give the maxlen of pad_sequences in training, at most {MAX_MAXLEN:,}")
    return int(maxlen)


class _TextInput:
    """The pad_sequences of the model's training as a function on one text's ids."""

    def __init__(self, padding, truncating, maxlen, masked):
        self.padding, self.truncating, self.maxlen, self.masked = padding, truncating, maxlen, masked

    def __call__(self, ids):
        maxlen = self.maxlen
        if maxlen is None:
            return ids
        if len(ids) > maxlen:
            ids = ids[-maxlen:] if self.truncating == "pre" else ids[:maxlen]
        if not self.masked and len(ids) < maxlen:  # the model saw the padding zeros: feed them too
            pad = np.zeros(maxlen - len(ids), np.int64)
            ids = np.concatenate([pad, ids] if self.padding == "pre" else [ids, pad])
        return ids


def _text_input(model):
    """The pad_sequences of the model's training (metadata "text_input", see
    fastrnn.formats.tokenizers) as a _TextInput, or None."""
    spec = (model.metadata or {}).get("text_input")
    if not spec:
        return None
    padding, truncating, maxlen = spec.get("padding", "pre"), spec.get("truncating", "pre"), spec.get("maxlen")
    if padding not in ("pre", "post") or truncating not in ("pre", "post") or not (
            maxlen is None or (isinstance(maxlen, int) and not isinstance(maxlen, bool) and maxlen >= 1)):
        raise ValueError(f"model metadata 'text_input' must hold padding/truncating 'pre' or 'post' and maxlen a "
                         f"positive integer or null, got {spec!r:.120}")
    check_maxlen(maxlen, "model metadata 'text_input' maxlen")
    masked = any(isinstance(layer, Masking) or (isinstance(layer, Embedding) and layer.mask_zero)
                 for layer in model.layers)
    return _TextInput(padding, truncating, maxlen, masked)


def _batches(order, lengths, batch_size, max_batch_tokens):
    """Cut ``order`` (indices sorted by length) into runs of <= batch_size rows whose padded size
    (rows x longest) stays <= max_batch_tokens (one row always fits)."""
    start = 0
    n = len(order)
    while start < n:
        stop = start + 1
        while stop < n and stop - start < batch_size and (stop - start + 1) * lengths[order[stop]] <= max_batch_tokens:
            stop += 1
        yield order[start:stop]
        start = stop


def classify(model, inputs: Iterable, batch_size: int = DEFAULT_BATCH_SIZE, return_probs: bool = True,
             window: Optional[int] = None, max_length: Optional[int] = None,
             max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, threads=None, backend=None,
             unknown_threshold: Optional[float] = None) -> Iterator[Classification]:
    """Classify every input of ``inputs``; yields one ``Classification`` per input, in input order.

    inputs : an iterable or generator of texts (str, tokenized with the model's vocabulary), of
        token-id sequences (models starting with an Embedding) or of (T, F) feature arrays.
        Read lazily, ``window`` inputs at a time. A text loses a leading byte-order mark and one
        trailing line ending first (so the lines of ``open(path, encoding="utf-8")`` classify as
        ``fastrnn classify path`` does).
    batch_size : rows run together (default 64).
    return_probs : include the class probabilities (float32 (C,)).
    window : inputs sorted by length together (default 16 * batch_size); memory is bounded by it.
    max_length : keep only the first max_length tokens (time steps) of each input (of a text
        whose model truncates at the front, its ``text_input`` from a Keras tokenizer: the last,
        as pad_sequences does; cut before the padding to maxlen); default DEFAULT_MAX_LENGTH
        (10,000), so that one giant line cannot need gigabytes. A warning names the first input
        that was cut. Pass a larger value to classify longer inputs.
    max_batch_tokens : upper bound of rows x padded length per batch (long inputs run in smaller
        batches), default 32768.
    threads, backend : as for Model.predict.
    unknown_threshold : an input whose unknown fraction (see Classification) is above it gets
        the label "unknown" (index None). Default: the model's metadata "unknown_threshold"
        (0.5 for the bundled language identifier), else off. 1.0 turns it off.

    An empty input is classified from the initial (zero) state. With the compiled backends the
    results are bitwise identical for any batch_size, window and thread count (the NumPy
    reference backend uses BLAS, whose rounding depends on the batch).
    """
    last = check_classifier(model)
    labels = labels_of(model)
    batch_size = _positive(batch_size, "batch_size")
    window = _positive(window if window is not None else 16 * batch_size, "window")
    max_batch_tokens = _positive(max_batch_tokens, "max_batch_tokens")
    max_length = _positive(DEFAULT_MAX_LENGTH if max_length is None else max_length, "max_length")
    threshold = unknown_threshold_of(model, unknown_threshold)
    if isinstance(inputs, (str, bytes)):
        raise TypeError("inputs must be an iterable of texts; wrap a single text as [text]")
    return _classify_iter(model, iter(inputs), last.activation, labels, batch_size, return_probs, window,
                          max_length, max_batch_tokens, threads, backend, threshold)


def _classify_iter(model, it, activation, labels, batch_size, return_probs, window, max_length,
                   max_batch_tokens, threads, backend, threshold=None):
    encode = _encoder(model, max_length)
    feature_shape = None if model.takes_tokens else (model.input_size,)
    position = 0
    while True:
        encoded = []
        for k, item in enumerate(itertools.islice(it, window)):
            try:
                encoded.append(encode(item, position + k))
            except ValueError as exc:  # this input cannot be read: say which one
                raise InputError(position + k, exc) from None
        if not encoded:
            return
        chunk = [arr for arr, _ in encoded]
        position += len(chunk)
        lengths = np.array([a.shape[0] for a in chunk], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        probs = np.empty((len(chunk), len(labels)), dtype=np.float32)
        for rows in _batches(order, lengths, batch_size, max_batch_tokens):
            T = max(1, int(lengths[rows[-1]]))
            if feature_shape is None:
                x = np.zeros((len(rows), T), dtype=np.int64)
            else:
                x = np.zeros((len(rows), T) + feature_shape, dtype=np.float32)
            for j, r in enumerate(rows):
                x[j, : lengths[r]] = chunk[r]
            out = model.predict(x, lengths=lengths[rows], threads=threads, backend=backend, batch_major=True)
            probs[rows] = probabilities_from_output(out, activation)
        best = np.argmax(probs, axis=1)
        for k in range(len(chunk)):
            i = int(best[k])
            unknown = encoded[k][1]
            p = probs[k].copy() if return_probs else None
            if threshold is not None and unknown > threshold:
                yield Classification(UNKNOWN_LABEL, None, p, unknown)
            else:
                yield Classification(labels[i], i, p, unknown)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class ClassifierMixin:
    """What fastrnn.Model gets from classification: ``classify``."""

    def classify(self, inputs, batch_size=64, return_probs=True, window=None, max_length=None,
                 max_batch_tokens=64 * 512, threads=None, backend=None, unknown_threshold=None):
        """Label every input (texts, id sequences or feature arrays), lazily and in input order,
        with length-bucketed batches; every parameter is documented in fastrnn.classify.classify."""
        return classify(self, inputs, batch_size=batch_size, return_probs=return_probs, window=window,
                        max_length=max_length, max_batch_tokens=max_batch_tokens, threads=threads,
                        backend=backend, unknown_threshold=unknown_threshold)
