"""fastrnn.Model: an ordered list of layers, an optional vocabulary and metadata.

All validation of user input happens here; backends and kernels only compute.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import reference
from .backends import check_threads, get_backend
from .layers import Dense, Embedding, Masking, Recurrent
from .vocab import Vocabulary

f32 = np.float32


class Model:
    """A network of Embedding / Masking / Recurrent / Dense layers, run batch-major.

    Parameters
    ----------
    layers : list of layers from fastrnn.layers, in order.
    vocabulary : fastrnn.vocab.Vocabulary or None (text <-> ids for generation/classification).
    metadata : dict of JSON-serialisable values (source framework, labels, ...).
    input_shape : the per-example input shape without the batch, e.g. (T, F) or (T,) for token
        ids; None entries are free. Used by summary() only.
    """

    def __init__(self, layers, vocabulary=None, metadata=None, name="model", input_shape=None):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("a Model needs at least one layer")
        self.vocabulary = vocabulary
        self.metadata = dict(metadata or {})
        self.name = name
        self._check_chain()
        if input_shape is None:
            input_shape = (None,) if self.takes_tokens else (None, self.input_size)
        self.input_shape = tuple(input_shape)

    # -- structure -------------------------------------------------------------------------
    def _check_chain(self):
        """Each layer's input size must equal the previous layer's output size."""
        size, has_time = None, True
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Embedding):
                if i != 0:
                    raise ValueError(f"layer {i} ({layer.name}): an Embedding must be the first layer")
                size = layer.output_size
            elif isinstance(layer, Masking):
                continue
            elif isinstance(layer, Recurrent):
                if not has_time:
                    raise ValueError(
                        f"layer {i} ({layer.name}) needs a sequence but the layer before returns its last state only"
                    )
                if size is not None and layer.input_size != size:
                    raise ValueError(f"layer {i} ({layer.name}) expects {layer.input_size} features, gets {size}")
                size = layer.output_size
                has_time = layer.return_sequences
            elif isinstance(layer, Dense):
                if size is not None and layer.input_size != size:
                    raise ValueError(f"layer {i} ({layer.name}) expects {layer.input_size} features, gets {size}")
                size = layer.output_size
            else:
                raise TypeError(f"layer {i}: unsupported layer object {type(layer).__name__}")
        if self.vocabulary is not None and self.takes_tokens and len(self.vocabulary) > self.layers[0].vocab_size:
            raise ValueError(
                f"vocabulary has {len(self.vocabulary)} tokens but the embedding only {self.layers[0].vocab_size} rows"
            )

    @property
    def takes_tokens(self) -> bool:
        return isinstance(self.layers[0], Embedding)

    @property
    def input_size(self) -> int:
        """Number of input features (the vocabulary size for token models)."""
        for layer in self.layers:
            if isinstance(layer, Embedding):
                return layer.vocab_size
            if isinstance(layer, (Recurrent, Dense)):
                return layer.input_size
        raise ValueError("model has no layer with an input size")

    @property
    def recurrent_layers(self):
        return [layer for layer in self.layers if isinstance(layer, Recurrent)]

    @property
    def output_size(self) -> int:
        for layer in reversed(self.layers):
            if not isinstance(layer, Masking):
                return layer.output_size
        raise ValueError("model has no layer with an output size")

    def count_params(self) -> int:
        return int(sum(layer.count_params() for layer in self.layers))

    def layer_type_name(self, layer) -> str:
        if isinstance(layer, Recurrent):
            base = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[layer.cell]
            return f"Bidirectional({base})" if layer.bidirectional else base
        return type(layer).__name__

    def summary(self, print_fn=print) -> str:
        """Print (and return) a Keras-style table: layer, output shape, parameters."""
        rows = []
        shape = tuple(self.input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shown = "(" + ", ".join(["None"] + ["None" if s is None else str(s) for s in shape]) + ")"
            rows.append((f"{layer.name} ({self.layer_type_name(layer)})", shown, f"{layer.count_params():,}"))
        w0 = max(28, max(len(r[0]) for r in rows) + 2)
        w1 = max(26, max(len(r[1]) for r in rows) + 2)
        width = w0 + w1 + 12
        lines = [f'Model: "{self.name}"', "_" * width, f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}Param #",
                 "=" * width]
        for i, r in enumerate(rows):
            lines.append(f"{r[0]:<{w0}}{r[1]:<{w1}}{r[2]}")
            lines.append("_" * width if i < len(rows) - 1 else "=" * width)
        lines.append(f"Total params: {self.count_params():,}")
        if self.vocabulary is not None:
            lines.append(f"Vocabulary: {len(self.vocabulary)} {self.vocabulary.level} tokens")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self):
        kinds = ", ".join(f"{layer.name}:{self.layer_type_name(layer)}" for layer in self.layers)
        return f"<fastrnn.Model {self.name!r} [{kinds}] params={self.count_params():,}>"

    # -- input validation ------------------------------------------------------------------
    def _check_inputs(self, x, lengths):
        """x -> C-contiguous int64 ids (B, T) or float32 features (B, T, F); lengths -> int64 (B,)
        or None. Every error names the argument and says what was expected."""
        x = _as_array(x, "x")
        if self.takes_tokens:
            if x.ndim != 2:
                hint = " - wrap one sequence as [ids]" if x.ndim == 1 else ""
                raise ValueError(f"x: token ids must be 2-D (batch, time); got shape {x.shape}{hint}")
            if x.size == 0 and x.dtype == np.float64:
                x = x.astype(np.int64)  # np.zeros((0, T)) and [] default to float64
            if not _is_integer(x.dtype):
                raise ValueError(f"x: token ids must have an integer dtype, got {x.dtype}")
            V = self.layers[0].vocab_size
            if x.size:
                low, high = x.min(), x.max()
                if low < 0 or high >= V:
                    bad = low if low < 0 else high
                    raise IndexError(f"x: token id {bad} is out of range for a vocabulary of {V} (valid: 0..{V - 1})")
            x = np.ascontiguousarray(x, dtype=np.int64)
        else:
            if x.ndim != 3:
                raise ValueError(f"x: features must be 3-D (batch, time, features); got shape {x.shape}")
            if not (_is_integer(x.dtype) or np.issubdtype(x.dtype, np.floating)):
                raise ValueError(f"x: features must be real numbers, got dtype {x.dtype}")
            if x.shape[2] != self.input_size:
                raise ValueError(f"x has {x.shape[2]} features, the model expects {self.input_size}")
            x = np.ascontiguousarray(x, dtype=f32)
        B, T = x.shape[:2]
        if lengths is not None:
            lengths = _as_array(lengths, "lengths")
            if lengths.ndim != 1 or lengths.shape[0] != B:
                raise ValueError(f"lengths must have shape ({B},) - one per batch row; got shape {lengths.shape}")
            if np.issubdtype(lengths.dtype, np.floating):
                if not np.all(np.isfinite(lengths) & (lengths == np.floor(lengths))):
                    raise ValueError(f"lengths must be whole numbers of steps; got {lengths}")
            elif not _is_integer(lengths.dtype):
                raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
            if lengths.size and (lengths.min() < 0 or lengths.max() > T):
                raise ValueError(
                    f"lengths must be within 0..{T} (the sequence length); got {lengths.min()}..{lengths.max()}")
            lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        return x, lengths

    def _check_states(self, initial_state, batch):
        """initial_state -> one entry per recurrent layer: None, h (D, B, H_out) float32, or for
        LSTM a tuple (h, c). A (B, size) array is accepted for a one-direction layer."""
        rec = self.recurrent_layers
        if initial_state is None:
            return [None] * len(rec)
        if isinstance(initial_state, np.ndarray) or (
            len(rec) == 1 and rec[0].cell == "lstm" and isinstance(initial_state, tuple)
            and len(initial_state) == 2 and isinstance(initial_state[0], np.ndarray)
        ):
            initial_state = [initial_state]  # the bare state of a one-layer model
        if not isinstance(initial_state, (list, tuple)):
            raise ValueError(f"initial_state must be a list with one entry per recurrent layer ({len(rec)}), "
                             f"got {type(initial_state).__name__}")
        if len(initial_state) != len(rec):
            raise ValueError(
                f"initial_state needs one entry per recurrent layer ({len(rec)}), got {len(initial_state)}"
            )
        out = []
        for i, (layer, st) in enumerate(zip(rec, initial_state)):
            if st is None:
                out.append(None)
                continue
            where = f"initial_state[{i}] ({layer.name})"
            if layer.cell == "lstm":
                if not (isinstance(st, (tuple, list)) and len(st) == 2):
                    raise ValueError(f"{where}: an LSTM state is a pair (h, c) given as a tuple; got "
                                     f"{type(st).__name__}" + (f" of length {len(st)}" if hasattr(st, "__len__") else ""))
                parts = st
            else:
                parts = [st]
            arrs = []
            for name, part, shape in zip(("h", "c"), parts, layer.state_shapes(batch)):
                try:
                    a = np.asarray(part, dtype=f32)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{where}: {name} must be an array of numbers ({exc})") from None
                if a.ndim == 2 and shape[0] == 1:
                    a = a[None]
                if a.shape != shape:
                    raise ValueError(f"{where}: {name} has shape {a.shape}, expected {shape} "
                                     "(directions, batch, size)")
                arrs.append(np.ascontiguousarray(a))
            out.append(tuple(arrs) if layer.cell == "lstm" else arrs[0])
        return out

    # -- running -----------------------------------------------------------------------------
    def predict(self, x, lengths=None, initial_state=None, return_state=False, backend=None, threads=None):
        """Run the model on a batch.

        x : int array (B, T) of token ids when the first layer is an Embedding, else float
            array (B, T, F). Any layout/dtype convertible to that; it is never modified.
        lengths : optional int array (B,) of valid steps per row (right padding). Padded steps
            leave the state alone; backward directions start at each row's last valid step.
        initial_state : optional list, one entry per recurrent layer (None = zeros): an array
            h (D, B, H_out) for RNN/GRU or a pair (h, c) for LSTM, D = 1 or 2 directions.
        return_state : also return the final states in the same structure.
        backend : "cython" | "numba" | "numpy" for this call (default: the current backend).
        threads : threads for this call (default: fastrnn.set_num_threads / FASTRNN_NUM_THREADS /
            all cores). Results are identical for any thread count.

        Returns (B, T, F') for sequence outputs or (B, F') when the last recurrent layer returns
        its final state; with return_state=True, (outputs, states).
        """
        x, lengths = self._check_inputs(x, lengths)
        B = x.shape[0]
        states_in = self._check_states(initial_state, B)
        be = get_backend(backend)
        threads = check_threads(threads)
        h = x
        states_out = []
        r = 0
        tokens = None  # (Embedding, ids) when the embedding is folded into the next layer
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Embedding):
                if layer.mask_zero and lengths is None:
                    lengths = lengths_from_mask(h != 0, "token id 0 (mask_zero)")
                following = self.layers[i + 1] if i + 1 < len(self.layers) else None
                if isinstance(following, Recurrent) and be.can_fold_embedding(layer, following):
                    tokens = (layer, h)  # h stays the ids: the recurrent layer looks up its projection
                    continue
                h = reference.embedding(layer, h)
            elif isinstance(layer, Masking):
                if lengths is None:
                    lengths = lengths_from_mask(np.any(h != layer.mask_value, axis=-1), "Masking")
            elif isinstance(layer, Recurrent):
                if B == 0:
                    h, st = _empty_recurrent(layer, h)
                else:
                    h, st = be.recurrent(layer, h, lengths, states_in[r], threads=threads, tokens=tokens)
                tokens = None
                states_out.append(st)
                r += 1
                if not layer.return_sequences:
                    lengths = None
            else:
                h = be.dense(layer, h, threads=threads)
        return (h, states_out) if return_state else h


    # -- features implemented in their own modules ----------------------------------------
    def generate(self, prompt, **kwargs):
        """Sample a continuation of ``prompt``; see fastrnn.generate.generate."""
        from .generate import generate

        return generate(self, prompt, **kwargs)

    def classify(self, inputs, **kwargs):
        """Label every input (texts, id sequences or feature arrays), lazily and in input order,
        with length-bucketed batches; see fastrnn.classify.classify."""
        from .classify import classify

        return classify(self, inputs, **kwargs)

    def session(self, **kwargs):
        """A stateful token-by-token session; see fastrnn.generate.Session."""
        from .generate import Session

        return Session(self, **kwargs)


def _as_array(value, name):
    """np.asarray(value), with an error naming the argument (ragged lists, odd objects)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} cannot be read as an array: {exc}") from None


def _is_integer(dtype):
    return np.issubdtype(dtype, np.integer)  # bool is not an integer dtype in NumPy


def lengths_from_mask(mask, what):
    """Per-row lengths from a (B, T) validity mask that must be right-padded."""
    mask = np.asarray(mask, bool)
    T = mask.shape[1]
    lengths = np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0).astype(np.int64)
    if not np.array_equal(mask, np.arange(T)[None, :] < lengths[:, None]):
        raise ValueError(
            f"{what}: masked steps must be at the end of each row (right padding); "
            "fastrnn does not support masked steps in the middle of a sequence"
        )
    return lengths


def _empty_recurrent(layer, x):
    T = x.shape[1]
    F = layer.output_size
    out = np.zeros((0, T, F) if layer.return_sequences else (0, F), f32)
    shapes = layer.state_shapes(0)
    st = tuple(np.zeros(s, f32) for s in shapes)
    return out, (st if layer.cell == "lstm" else st[0])
