"""fastrnn.Model: a graph of layers (a chain at its simplest), an optional vocabulary and metadata.

All validation of user input happens here; backends and kernels only compute.
"""
from __future__ import annotations

import threading

import numpy as np

from .backends import check_threads, get_backend
from .classify.classifier import ClassifierMixin
from .generate.decode import GenerationMixin
from .graph import Plan, chain, ref_str, summary_rows, type_name
from .layers import LAYER_TYPES, Embedding, Recurrent
from .layers.embedding import lengths_from_mask  # noqa: F401  (public since 0.1)
from .quantize import QuantizeMixin, int8_backend
from .vocab import as_vocabulary

LAYER_CLASSES = tuple(LAYER_TYPES.values())

f32 = np.float32


class Model(GenerationMixin, ClassifierMixin, QuantizeMixin):
    """A network of layers: a graph with named inputs and outputs (fastrnn.graph), a chain being
    its simplest case, plus an optional vocabulary and metadata.

    Build it from a list of layers (a chain) or from a graph::

        fastrnn.Model([Embedding(...), Recurrent(...), Dense(...)], vocabulary=vocab)
        fastrnn.Model(graph=fastrnn.graph.Graph(inputs, nodes, outputs))

    Parameters
    ----------
    layers : list of layers from fastrnn.layers, in order (a chain); or None with ``graph``.
    vocabulary : text <-> ids for generation/classification: a fastrnn.Vocabulary, a str of
        characters, a list of tokens, a dict {token: id}, or None (see ``Model.vocabulary``).
    metadata : dict of JSON-serialisable values (source framework, labels, ...).
    name : the model's name.
    input_shape : a chain's per-example input shape without the batch, e.g. (T, F) or (T,) for
        token ids; None entries are free.
    graph : a fastrnn.graph.Graph (any number of inputs, outputs, shared layers).

    ``generate``, ``session``, ``classify`` and ``quantize`` come from the mixins of the modules
    that implement them (fastrnn.generate.decode, fastrnn.classify.classifier, fastrnn.quantize),
    which never import this module.
    """

    def __init__(self, layers=None, vocabulary=None, metadata=None, name="model", input_shape=None, *, graph=None):
        if graph is None:
            if layers is None:
                raise ValueError("a Model needs layers (a chain) or graph=")
            layers = list(layers)
            for i, layer in enumerate(layers):
                if not isinstance(layer, LAYER_CLASSES):
                    raise TypeError(f"layer {i}: unsupported layer object {type(layer).__name__}")
            graph = chain(layers, input_shape=None if input_shape is None else tuple(input_shape))
        elif layers is not None:
            raise ValueError("give a Model either layers (a chain) or graph=, not both")
        self.graph = graph
        self.metadata = dict(metadata or {})
        self.name = name
        self._plan = None
        self._plan_lock = threading.Lock()
        self.vocabulary = vocabulary

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocabulary(self):
        """The model's text <-> ids rule (a fastrnn.Vocabulary), or None.

        Set it with any of the forms ``vocabulary=`` takes everywhere (fastrnn.vocab.as_vocabulary):
        a Vocabulary, a str of characters (``"helo"``: 'h' is id 0), a list of tokens (id = position)
        or a dict {token: id}. Its size is checked against what the model reads: the rows of the
        embedding for token ids, the input's features for a one-hot model (token i = the vector
        with a 1 at position i)."""
        return self._vocabulary

    @vocabulary.setter
    def vocabulary(self, value):
        vocab = as_vocabulary(value)
        if vocab is not None and len(self.graph.inputs) == 1:
            if self.takes_tokens:
                readers = self._token_readers(0)
                rows = min(n.layer.vocab_size for n in readers) if readers else None
                if rows is not None and len(vocab) > rows:
                    raise ValueError(f"vocabulary has {len(vocab)} tokens but the embedding only {rows} rows")
            else:
                shape = self.graph.inputs[0].shape
                features = shape[-1] if shape else None
                if features is not None and len(vocab) > features:
                    raise ValueError(f"vocabulary has {len(vocab)} tokens but the model's input has {features} "
                                     "features, so a token cannot be fed as a one-hot vector")
        self._vocabulary = vocab

    # -- structure -------------------------------------------------------------------------
    @property
    def layers(self):
        """Each distinct layer once, in execution order (for a chain: the layers as given)."""
        return self.graph.layers

    @property
    def nodes(self):
        return self.graph.nodes

    @property
    def inputs(self):
        return self.graph.inputs

    @property
    def input_names(self):
        return [i.name for i in self.graph.inputs]

    @property
    def output_names(self):
        return [ref_str(r) for r in self.graph.outputs]

    def is_chain(self) -> bool:
        return self.graph.is_chain()

    def __getstate__(self):
        """What a copy or a pickle of the model keeps: the graph (its layers with their weights and
        exact int8 forms), vocabulary, metadata and name. The caches (execution plan, generation
        plans, measured defaults, the layers' packed weights) are rebuilt on first use."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plan = None
        self._plan_lock = threading.Lock()

    def plan(self) -> Plan:
        """The optimized execution plan (built once, on first use)."""
        if self._plan is None:
            with self._plan_lock:
                if self._plan is None:
                    self._plan = Plan(self.graph)
        return self._plan

    def _token_readers(self, i):
        name = self.graph.inputs[i].name
        return [n for n, _ in self.graph.consumers.get((name, 0), []) if isinstance(n.layer, Embedding)]

    def _single_input(self, what):
        if len(self.graph.inputs) != 1:
            raise ValueError(f"{what} is defined for a model with one input; this one has "
                             f"{len(self.graph.inputs)}: {self.input_names}")
        return self.graph.inputs[0]

    @property
    def takes_tokens(self) -> bool:
        """The (single) input is token ids."""
        return len(self.graph.inputs) == 1 and self.graph.inputs[0].dtype == "int64"

    @property
    def input_shape(self):
        return self._single_input("input_shape").shape

    @property
    def input_size(self) -> int:
        """Number of input features (the vocabulary size for token models)."""
        inp = self._single_input("input_size")
        if inp.dtype == "int64":
            readers = self._token_readers(0)
            if readers:
                return min(n.layer.vocab_size for n in readers)
        if inp.shape and inp.shape[-1] is not None:
            return inp.shape[-1]
        raise ValueError("model has no layer with an input size")

    @property
    def recurrent_nodes(self):
        return [n for n in self.graph.nodes if isinstance(n.layer, Recurrent)]

    @property
    def recurrent_layers(self):
        """The layer of every recurrent node, in execution order (one entry per state)."""
        return [n.layer for n in self.recurrent_nodes]

    @property
    def output_shape(self):
        if len(self.graph.outputs) != 1:
            raise ValueError(f"output_shape is defined for a model with one output; this one has "
                             f"{len(self.graph.outputs)}: {self.output_names}")
        return self.graph.shapes[self.graph.outputs[0]]

    @property
    def output_size(self) -> int:
        shape = self.output_shape
        if not shape or shape[-1] is None:
            raise ValueError("model has no layer with an output size")
        return shape[-1]

    def output_layer(self):
        """The layer that produces the (single) output, after the graph passes (e.g. a Dense
        with its softmax fused in)."""
        g = self.plan().graph
        if len(g.outputs) != 1:
            raise ValueError(f"model {self.name!r} has {len(g.outputs)} outputs")
        node = g.producer(g.outputs[0])
        return None if node is None else node.layer

    def count_params(self) -> int:
        return int(sum(layer.count_params() for layer in self.layers))

    def layer_type_name(self, layer) -> str:
        return type_name(layer)

    def summary(self, print_fn=print) -> str:
        """Print (and return) a Keras-style table: layer (type), output shape, parameters, and for
        a graph the "Connected to" column of Keras functional models."""
        rows = summary_rows(self.graph)
        graph_view = not self.is_chain()
        if not graph_view:
            rows = rows[1:]  # a chain shows its layers only, as Keras's Sequential summary
        cols = ["Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if graph_view else [])
        widths = [max(28, max(len(r[0]) for r in rows) + 2), max(26, max(len(r[1]) for r in rows) + 2),
                  max(12, max(len(r[2]) for r in rows) + 2)]
        if graph_view:
            widths.append(max(14, max(len(r[3]) for r in rows)))
        width = sum(widths)

        def line(cells):
            return "".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()

        lines = [f'Model: "{self.name}"', "_" * width, line(cols), "=" * width]
        for i, r in enumerate(rows):
            lines.append(line(r[:len(cols)]))
            lines.append("_" * width if i < len(rows) - 1 else "=" * width)
        lines.append(f"Total params: {self.count_params():,}")
        stored = (self.metadata or {}).get("quantized")
        if stored in ("int8", "float16"):  # fastrnn.quantize / convert --quantize / an onnxruntime int8 file
            lines.append(f"Weights: {stored} (weight matrices{' and products' if stored == 'int8' else ''} in "
                         f"{stored}, biases float32)")
        if self.vocabulary is not None:
            lines.append(f"Vocabulary: {len(self.vocabulary)} {self.vocabulary.level} tokens")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self):
        kinds = ", ".join(f"{n.name}:{type_name(n.layer)}" for n in self.graph.nodes)
        return f"<fastrnn.Model {self.name!r} [{kinds}] params={self.count_params():,}>"

    # -- input validation ------------------------------------------------------------------
    def _by_input(self, value, what, allow_none):
        """One entry per model input from an array (one-input models), a list/tuple in input
        order or a dict by input name."""
        names = self.input_names
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ValueError(f"{what}: unknown input name(s) {unknown}; the model's inputs are {names}")
            missing = [n for n in names if n not in value]
            if missing and not allow_none:
                raise ValueError(f"{what}: missing input(s) {missing}; the model's inputs are {names}")
            return [value.get(n) for n in names]
        if len(names) == 1:
            return [value]
        if isinstance(value, (list, tuple)) and len(value) == len(names):
            return list(value)
        if value is None and allow_none:
            return [None] * len(names)
        if allow_none and not isinstance(value, (list, tuple)):
            return [value] * len(names)  # one lengths array for every sequence input
        raise ValueError(f"{what}: this model has {len(names)} inputs {names}: pass a list in that order or a "
                         f"dict by name")

    def _check_input(self, i, x):
        """One input -> C-contiguous int64 ids or float32 features, shape checked."""
        inp = self.graph.inputs[i]
        where = "x" if len(self.graph.inputs) == 1 else f"x[{inp.name!r}]"
        x = _as_array(x, where)
        want = len(inp.shape) + 1
        if inp.dtype == "int64":
            if x.ndim != want:
                hint = " - wrap one sequence as [ids]" if x.ndim == want - 1 else ""
                raise ValueError(f"{where}: token ids must be {want}-D (batch, time); got shape {x.shape}{hint}")
            if x.size == 0 and x.dtype == np.float64:
                x = x.astype(np.int64)  # np.zeros((0, T)) and [] default to float64
            if not _is_integer(x.dtype):
                raise ValueError(f"{where}: token ids must have an integer dtype, got {x.dtype}")
            readers = self._token_readers(i)
            if readers and x.size:
                V = min(n.layer.vocab_size for n in readers)
                low, high = x.min(), x.max()
                if low < 0 or high >= V:
                    bad = low if low < 0 else high
                    raise IndexError(f"{where}: token id {bad} is out of range for a vocabulary of {V} "
                                     f"(valid: 0..{V - 1})")
            x = np.ascontiguousarray(x, dtype=np.int64)
        else:
            if x.ndim != want:
                names = "3-D (batch, time, features)" if want == 3 else f"{want}-D (batch first)"
                raise ValueError(f"{where}: features must be {names}; got shape {x.shape}")
            if not (_is_integer(x.dtype) or np.issubdtype(x.dtype, np.floating)):
                raise ValueError(f"{where}: features must be real numbers, got dtype {x.dtype}")
            for axis, size in enumerate(inp.shape[1:] if want == 3 else inp.shape, start=2 if want == 3 else 1):
                if size is not None and x.shape[axis] != size:
                    what = "features" if axis == want - 1 else f"entries on axis {axis}"
                    raise ValueError(f"{where} has {x.shape[axis]} {what}, the model expects {size}")
            x = np.ascontiguousarray(x, dtype=f32)
        return x

    def _check_lengths(self, lengths, x, where="lengths"):
        if lengths is None:
            return None
        if x.ndim < 2:
            raise ValueError(f"{where}: this input has no time axis to give lengths for")
        B, T = x.shape[:2]
        lengths = _as_array(lengths, where)
        if lengths.ndim != 1 or lengths.shape[0] != B:
            raise ValueError(f"{where} must have shape ({B},) - one per batch row; got shape {lengths.shape}")
        if np.issubdtype(lengths.dtype, np.floating):
            if not np.all(np.isfinite(lengths) & (lengths == np.floor(lengths))):
                raise ValueError(f"{where} must be whole numbers of steps; got {lengths}")
        elif not _is_integer(lengths.dtype):
            raise ValueError(f"{where} must be integers, got dtype {lengths.dtype}")
        if lengths.size and (lengths.min() < 0 or lengths.max() > T):
            raise ValueError(
                f"{where} must be within 0..{T} (the sequence length); got {lengths.min()}..{lengths.max()}")
        return np.ascontiguousarray(lengths, dtype=np.int64)

    def _check_inputs(self, x, lengths):
        """x -> one checked array per input; lengths -> one (B,) int64 array or None per input.
        Every error names the argument and says what was expected."""
        xs = [self._check_input(i, v) for i, v in enumerate(self._by_input(x, "x", allow_none=False))]
        batch = {a.shape[0] for a in xs}
        if len(batch) > 1:
            raise ValueError(f"x: every input needs the same batch size, got {[a.shape[0] for a in xs]}")
        ls = self._by_input(lengths, "lengths", allow_none=True)
        names = self.input_names
        out = []
        for i, (a, L) in enumerate(zip(xs, ls)):
            if L is not None and a.ndim < 2 and lengths is not None and not isinstance(lengths, (dict, list, tuple)):
                L = None  # one lengths array for a model whose other inputs are vectors
            out.append(self._check_lengths(L, a, "lengths" if len(names) == 1 else f"lengths[{names[i]!r}]"))
        return xs, out

    def _check_states(self, initial_state, batch):
        """initial_state -> one entry per recurrent node: None, h (D, B, H_out) float32, or for
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
    def predict(self, x, lengths=None, initial_state=None, return_state=False, backend=None, threads=None,
                batch_major=False):
        """Run the model on a batch.

        x : for a one-input model, int array (B, T) of token ids when the input feeds an
            Embedding, else float array (B, T, F) (or the input's declared shape). For several
            inputs: a list in input order or a dict by input name (``model.input_names``).
            Never modified.
        lengths : optional int array (B,) of valid steps per row (right padding), or a list /
            dict per input. Padded steps leave the state alone; backward directions start at
            each row's last valid step; masks then flow along the graph as Keras's do.
        initial_state : optional list, one entry per recurrent node (None = zeros): an array
            h (D, B, H_out) for RNN/GRU or a pair (h, c) for LSTM, D = 1 or 2 directions.
        return_state : also return the final states in the same structure.
        backend : "cython" | "numba" | "numpy" for this call (default: the current backend).
        threads : threads for this call (default: fastrnn.set_num_threads / FASTRNN_NUM_THREADS /
            all cores). Results are identical for any thread count.

        batch_major : x and the results are batch-major, with a batch axis, even for a model
            whose own inputs are time-major or unbatched (``metadata["batch_axes"]``, written by
            fastrnn.from_torch(module, example_inputs=...)); for tools that batch examples.

        Returns one array for a one-output model ((B, T, F') for sequence outputs, (B, F') when
        the last recurrent layer returns its final state), else a list in output order (a dict
        by output name when x was a dict); with return_state=True, (outputs, states).
        """
        axes = None if batch_major else _batch_axes(self)
        if axes is not None:  # inputs whose batch axis is elsewhere, or absent (metadata "batch_axes")
            x = _to_batch_major(self, x, axes[0])
            if lengths is not None and None in axes[0]:
                raise ValueError("lengths: this model takes one unbatched example (no batch axis), so it has no "
                                 "per-row lengths")
        xs, ls = self._check_inputs(x, lengths)
        _check_size_ranges(self, xs)
        B = xs[0].shape[0]
        states_in = self._check_states(initial_state, B)
        be = get_backend(backend)
        if self.metadata.get("quantized") in ("int8", "bfloat16"):  # their own products (fastrnn.quantize)
            be = int8_backend(be, self.metadata["quantized"])
        threads = check_threads(threads)
        outs, states_out = self.plan().run(xs, ls, states_in, be, threads)
        if axes is not None:
            outs = [y[0] if a is None else np.moveaxis(y, 0, a) for y, a in zip(outs, axes[1])]
        if len(outs) == 1:
            result = outs[0]
        elif isinstance(x, dict):
            result = dict(zip(self.output_names, outs))
        else:
            result = outs
        return (result, states_out) if return_state else result


def _batch_axes(model):
    """metadata["batch_axes"] = {"inputs": [...], "outputs": [...]}: where the caller's batch axis
    is in each input / output (an int; None = no batch axis: one example). Written by importers
    of models whose own tensors are not batch-first (fastrnn.formats.torch_export); None when
    every axis is 0 (nothing to move)."""
    spec = (model.metadata or {}).get("batch_axes")
    if not spec:
        return None
    ins, outs = spec.get("inputs"), spec.get("outputs")
    ok = (isinstance(ins, list) and isinstance(outs, list) and len(ins) == len(model.graph.inputs)
          and len(outs) == len(model.graph.outputs)
          and all(a is None or (isinstance(a, int) and not isinstance(a, bool) and a >= 0) for a in ins + outs))
    if not ok:
        raise ValueError(f"model {model.name!r}: metadata 'batch_axes' must list one axis (int >= 0 or null) per "
                         f"input and output, got {spec!r:.120}")
    if all(a == 0 for a in ins + outs):
        return None
    return ins, outs


def _check_size_ranges(model, xs):
    """metadata["size_ranges"] (fastrnn.formats.torch_export): the sizes a captured forward is valid
    for on its batch and time axes, {"input", "axis", "fastrnn_axis", "min", "max"} each (a bound
    None: open). An input outside them would run the branch the example took: refused."""
    for r in (model.metadata or {}).get("size_ranges") or ():
        try:
            i, k, lo, hi = r["input"], r["fastrnn_axis"], r.get("min"), r.get("max")
            n = xs[i].shape[k]
        except (TypeError, KeyError, IndexError):
            raise ValueError(f"model {model.name!r}: metadata 'size_ranges' entry {r!r:.120} does not fit the model's "
                             "inputs") from None
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            what = "batch" if k == 0 else "time" if k == 1 else f"axis {r.get('axis')}"
            valid = (f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"at most {hi}" if lo is None
                     else f"{lo} to {hi}")
            why = (f"fastrnn could not check how its forward uses that size ({r['probe_failed']}), so it keeps the "
                   "example's" if r.get("probe_failed") else "its forward depends on that size (a condition on "
                   "x.shape, or a reshape with it) and fastrnn runs what the example's size computed")
            raise ValueError(
                f"x: input {model.input_names[i]!r} has size {n} on axis {r.get('axis')} (its {what} axis), but model "
                f"{model.name!r} (captured by torch.export) is valid for sizes {valid} there: {why}; give an input of "
                "such a size, or capture the module again with an example of the size you need")


def _to_batch_major(model, x, axes):
    """The caller's inputs (their batch axis where ``axes`` says, or none) -> batch-major arrays,
    in the container the caller used."""
    values = model._by_input(x, "x", allow_none=False)
    moved = []
    for i, (v, a) in enumerate(zip(values, axes)):
        arr = _as_array(v, "x" if len(values) == 1 else f"x[{model.input_names[i]!r}]")
        if a is None:
            moved.append(arr[None])
        elif arr.ndim <= a:
            raise ValueError(f"x: input {model.input_names[i]!r} has its batch on axis {a}; got shape {arr.shape}")
        else:
            moved.append(np.moveaxis(arr, a, 0))
    if isinstance(x, dict):
        return dict(zip(model.input_names, moved))
    return moved if len(values) > 1 else moved[0]


def _as_array(value, name):
    """np.asarray(value), with an error naming the argument (ragged lists, odd objects)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        if "inhomogeneous" in str(exc) or "sequence" in str(exc):  # rows of different lengths
            raise ValueError(f"{name}: the rows have different lengths; pad them to the longest (zeros at the end) "
                             f"and pass each row's own length with lengths=, e.g. predict(padded, lengths=[5, 3])"
                             " - padded steps change nothing") from None
        raise ValueError(f"{name} cannot be read as an array: {exc}") from None


def _is_integer(dtype):
    return np.issubdtype(dtype, np.integer)  # bool is not an integer dtype in NumPy
