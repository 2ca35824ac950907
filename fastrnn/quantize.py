"""Reduced-precision models: ``model.quantize(kind)`` and the int8 engine behind it.

Kinds
-----
- ``"int8"``: every weight matrix (Embedding, W_ih, W_hh, W_hr, Dense; biases and peepholes stay
  float32) is rounded per output row: ``W[n] ~ scale[n] * q[n]``, ``scale[n] = max|W[n]| / 127``,
  ``q = rint(W / scale)`` in [-127, 127] (int8_rule below, the rule of int8 files too).
  ``predict``, ``classify`` and ``generate`` then compute with int8 weights directly: every
  product with these matrices quantizes its input rows on the fly (below) and sums integers.
  Conv1D filters are not rounded: Conv1D and attention's products (between activations)
  compute in float32, on the float kernels.
- ``"bfloat16"``: the matrices rounded to bfloat16 (to nearest even). predict and classify
  compute bfloat16 products: each input row rounded to bfloat16 too, products accumulated in
  float32 pairwise as AVX512_BF16's vdpbf16ps does (below; on CPUs without AVX-512 the same
  arithmetic in plain C, slowly). generate runs float32 on the rounded weights.
- ``"float16"``: the matrices rounded to half precision; predict and classify compute in float32
  with the rounded values; generate streams float16 weights (``weights="auto"`` keeps float16 only
  where it is measured faster than float32, fastrnn.generate).

The model returned holds the rounded values as float32 arrays (``scale * q`` exactly, the same
numbers a quantized file loads as) and ``metadata["quantized"] = kind``; the int8 engine
recovers ``q`` and ``scale`` from them bitwise (the rule is idempotent on its own output), so a
model quantized in memory, saved and loaded again gives the same results. Matrices quantized by
another tool (onnxruntime's int8 ONNX files) have scales the rule does not recover: their layers
carry the exact integers (``Dense.int8``, ``Embedding.int8``, ``DirectionWeights.int8``: a
fastrnn.layers.Int8Weights (q, scale), made by exact_int8 below) and every int8 consumer (the
engines' packing, int8 files, generation's int8 weights, ``quantize``) takes them through
``int8_rule(a, exact)``. They travel with the layers: copies, pickles and saved files keep them.

The int8 arithmetic (the spec; kernels/int8_core.h implements it in C)
-------------------------------------------------------------------
For ``out = x @ W.T`` with x (M, K) float32 and W as above:

    top[m] = max_k |x[m, k]|;  xs[m] = top[m] / 127 (1 where top is 0)            (float32)
    xq[m, k] = clip(rint(x[m, k] * (1 / xs[m])), -127, 127)                         (int8)
    acc[m, n] = sum_k xq[m, k] * q[n, k]                                             (exact int32)
    out[m, n] = out[m, n] + float32(acc[m, n]) * (xs[m] * scale[n])                 (float32)

bfloat16 (the spec of int8_core.h's bf16 form): x and W rounded to bfloat16, then for each output
``acc = 0; for each pair (2j, 2j+1): acc = acc + x[2j+1] W[n, 2j+1]; acc = acc + x[2j] W[n, 2j]``
(every product exact in float32, every add rounded), ``out = out + acc``.

For int8, activations are quantized dynamically per row: per batch row and step in the recurrences,
per row of x (every batch row and step) in the input projections, which run as one int8 GEMM
over all steps. The error of one product is bounded by the two rounding steps: for each k,
|x W - xq xs q scale| <= |x| scale/2 + |W| xs/2 (+ products of the halves).

How this differs from onnxruntime's DynamicQuantizeLSTM (``quantize_dynamic``): onnxruntime
quantizes weights per tensor or per column with a zero point and activations per tensor (one
scale and zero point for the whole X of a run, u8); fastrnn uses one scale per weight row and
one per activation row, symmetric (no zero point), so a row's result never depends on the other
rows of the batch.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import threading

import numpy as np

from . import reference
from .backends import MIN_SPLIT_HIDDEN, CompiledBackend, NumpyBackend, _SequenceTask
from .layers import Dense, DirectionWeights, Embedding, Int8Weights, Recurrent

f32 = np.float32
KINDS = ("int8", "float16", "bfloat16")
MIN_SPLIT_HIDDEN_INT8 = 2 * MIN_SPLIT_HIDDEN  # batch 1: split the hidden units from this size on


# -- rounding the weights ----------------------------------------------------------------------
def int8_rule(a, exact=None):
    """a (N, K) float32 -> (q int8 (N, K), scale float32 (N,)): a[n] ~ scale[n] * q[n], with
    scale = max |a[n]| / 127 (1 for an all-zero row) and q = round(a / scale). The rule of int8
    model files (fastrnn.formats.native.quantize_int8 is this function) and of generation's int8
    weights. ``exact``: the matrix's exact int8 form from its source file (an Int8Weights, the
    layer's ``int8``), returned instead of the rule's (int8 weights of other tools)."""
    if exact is not None:
        if not isinstance(exact, Int8Weights) or exact.shape != np.shape(a):
            raise ValueError(f"int8_rule: exact must be the Int8Weights of the matrix {np.shape(a)}, "
                             f"got {getattr(exact, 'shape', type(exact).__name__)}")
        return np.array(exact.q), np.array(exact.scale)
    top = np.abs(a).max(axis=1) if a.size else np.zeros(a.shape[0], np.float32)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_int8(a, exact=None):
    """a (N, K) float32 -> (q int8 (N, K), scale float32 (N,)), per row (the file format's rule,
    or ``exact``, the matrix's Int8Weights: see int8_rule)."""
    return int8_rule(np.ascontiguousarray(a, dtype=f32), exact)


# -- exact int8 forms from other tools -----------------------------------------------------------
# An int8 matrix made by another tool (onnxruntime's quantize_dynamic) is (q, scale) with a scale
# the rule above does not recover when a row's largest |q| is below 127 (a per-tensor scale).
# The model holds such a matrix as float32 scale * q like any int8 model, and its layer holds the
# exact integers beside it (an Int8Weights in ``Dense.int8``, ``Embedding.int8`` or
# ``DirectionWeights.int8[field]``); every place that turns float32 weights into int8 passes them
# to int8_rule. Rows slice with the matrix (the GRU's r|z and n blocks: ``form[rows]``).
def exact_int8(a, q, scale):
    """The Int8Weights recording that a (N, K) float32 is exactly scale[:, None] * q (q int8 in
    [-127, 127], scale > 0 float32 (N,)), for the layer holding ``a`` to keep; None when the rule
    finds these very integers (nothing to keep). Raises ValueError when a is not exactly that
    product."""
    a = np.asarray(a)
    q = np.ascontiguousarray(q, dtype=np.int8)
    scale = np.ascontiguousarray(scale, dtype=f32).reshape(-1)
    if a.dtype != f32 or a.ndim != 2 or q.shape != a.shape or scale.shape != a.shape[:1]:
        raise ValueError(f"exact_int8: shapes {a.shape} {q.shape} {scale.shape} do not fit")
    if q.size and (int(q.min()) < -127 or not np.all(scale > 0) or not np.all(np.isfinite(scale))):
        raise ValueError("exact_int8: q must be in [-127, 127] and scales positive and finite")
    back = (scale[:, None] * q.astype(f32)).astype(f32)
    if not np.array_equal(back.view(np.uint32), np.ascontiguousarray(a).view(np.uint32)):
        raise ValueError("exact_int8: the matrix is not scale * q")
    rq, rs = int8_rule(np.ascontiguousarray(a))
    if np.array_equal(rs, scale) and np.array_equal(rq, q):
        return None
    return Int8Weights(q, scale)


def int8_slice(form, rows):
    """The Int8Weights of some rows of a matrix (None stays None)."""
    return None if form is None else form[rows]


def round_bfloat16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32."""
    u = np.ascontiguousarray(a, dtype=f32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return r.view(f32)


def round_matrix(a, kind, name="weights", exact=None):
    """The float32 values the ``kind`` engine computes with for matrix ``a`` (N, K) (``exact``:
    its Int8Weights, the values of an int8 model quantized again)."""
    a = np.ascontiguousarray(a, dtype=f32)
    if kind == "int8":
        q, scale = quantize_int8(a, exact)
        return scale[:, None] * q.astype(f32)
    if kind == "float16":
        if a.size and float(np.abs(a).max()) > 65504.0:
            raise ValueError(f"{name} has weights beyond the float16 range (65504); use 'bfloat16' or 'int8'")
        return a.astype(np.float16).astype(f32)
    if kind == "bfloat16":
        return round_bfloat16(a)
    raise ValueError(f"quantize: kind must be one of {', '.join(KINDS)}, got {kind!r}")


def quantize(model, kind):
    """A copy of ``model`` whose weight matrices are rounded to ``kind`` ("int8", "float16" or
    "bfloat16") and which computes with them (see the module doc). ``model`` is not changed."""
    if kind not in KINDS:
        raise ValueError(f"quantize: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    from .graph import Graph, Node

    keep = kind == "int8"  # the exact int8 forms stay with int8 (the values do not change)
    rounded = {}  # id(layer) -> its copy with rounded matrices (a shared layer stays shared)
    for layer in model.layers:
        if isinstance(layer, (Embedding, Dense)):
            weight = round_matrix(layer.weight, kind, f"{layer.name}.weight", layer.int8)
            new = dataclasses.replace(layer, weight=weight, int8=layer.int8 if keep else None)
        elif isinstance(layer, Recurrent):
            dirs = [dataclasses.replace(w, **{f: round_matrix(getattr(w, f), kind, f"{layer.name}.{f}", w.int8_of(f))
                                              for f in DirectionWeights.MATRICES if getattr(w, f) is not None},
                                        int8=w.int8 if keep else None)
                    for w in layer.directions]
            new = dataclasses.replace(layer, directions=dirs)
        else:  # other layers compute in float32 as they are
            new = layer
        rounded[id(layer)] = new
    g = model.graph
    graph = Graph(g.inputs, [Node(n.name, rounded[id(n.layer)], n.inputs) for n in g.nodes], g.outputs)
    metadata = dict(model.metadata or {})
    metadata["quantized"] = kind
    return type(model)(vocabulary=model.vocabulary, metadata=metadata, name=model.name, graph=graph)



class QuantizeMixin:
    """What fastrnn.Model gets from this module: ``quantize``."""

    def quantize(self, kind):
        """A copy computing with reduced-precision weights: "int8" (per-row scales, int8
        products), "float16" or "bfloat16"; see fastrnn.quantize."""
        return quantize(self, kind)


# -- the spec: int8 products in NumPy -----------------------------------------------------------
def quantize_rows(x):
    """x (M, K) float32 -> (xq int8 (M, K), xs float32 (M,)): the per-row activation rule."""
    x = np.asarray(x, dtype=f32)
    top = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], f32)
    xs = np.where(top > 0, top / f32(127), f32(1)).astype(f32)
    inv = (f32(1) / xs).astype(f32)
    xq = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    return xq, xs


def int8_product(xq, xs, q, scale, out):
    """out (M, N) + float32(xq @ q.T) * (xs[:, None] * scale[None, :]), the spec of i8_matmul."""
    acc = xq.astype(np.int64) @ q.astype(np.int64).T
    return (out + acc.astype(f32) * (xs[:, None] * scale[None, :])).astype(f32)


class Int8Matrix:
    """W (N, K) as (q, scale), multiplied the int8 way: ``x @ W.T`` quantizes each row of x
    (x (..., K) -> (..., N)). Rows slice like an array. Lets reference.cell_step, written for
    float matrices, run the int8 arithmetic unchanged."""

    __array_ufunc__ = None  # x @ m.T must reach __rmatmul__, not NumPy's matmul

    def __init__(self, q, scale):
        self.q, self.scale = q, scale

    @classmethod
    def of(cls, a, exact=None):
        return None if a is None else cls(*quantize_int8(a, exact))

    def __getitem__(self, rows):
        return Int8Matrix(self.q[rows], self.scale[rows])

    @property
    def T(self):
        return _Transposed(self)

    def product(self, flat):
        """flat (M, K) float32 -> (M, N): each row quantized, then the int8 product."""
        xq, xs = quantize_rows(flat)
        return int8_product(xq, xs, self.q, self.scale, np.zeros((flat.shape[0], self.q.shape[0]), f32))


class _Transposed:
    """``m.T`` of an Int8Matrix / Bf16Matrix: ``x @ m.T`` flattens x to rows and calls m.product."""

    __array_ufunc__ = None

    def __init__(self, m):
        self.m = m

    def __rmatmul__(self, x):
        x = np.asarray(x, dtype=f32)
        out = self.m.product(x.reshape(-1, x.shape[-1]))
        return out.reshape(x.shape[:-1] + (out.shape[1],))


def bf16_product(x, w, out):
    """out (M, N) + the bfloat16 product of x (M, K) with w (N, K), vdpbf16ps's order."""
    x, w = round_bfloat16(x), round_bfloat16(w)
    if x.shape[1] % 2:
        x, w = np.pad(x, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
    acc = np.zeros(out.shape, f32)
    for j in range(0, x.shape[1], 2):
        acc = acc + np.outer(x[:, j + 1], w[:, j + 1]).astype(f32)
        acc = acc + np.outer(x[:, j], w[:, j]).astype(f32)
    return (out + acc).astype(f32)


class Bf16Matrix(Int8Matrix):
    """W (N, K) multiplied the bfloat16 way (bf16_product); rows slice like an array."""

    def __init__(self, w):
        self.w = w

    @classmethod
    def of(cls, a, exact=None):
        return None if a is None else cls(round_bfloat16(a))

    def __getitem__(self, rows):
        return Bf16Matrix(self.w[rows])

    def product(self, flat):
        """flat (M, K) float32 -> (M, N), the bfloat16 product."""
        return bf16_product(flat, self.w, np.zeros((flat.shape[0], self.w.shape[0]), f32))


class Int8ReferenceBackend(NumpyBackend):
    """The NumPy spec of the int8 (or bfloat16) engine: reference.recurrent / dense with every
    matrix product done as above (activations quantized / rounded per row and step)."""

    def __init__(self, kind="int8"):
        self.kind = kind
        self.name = f"numpy-{kind}"
        self.matrix = Int8Matrix if kind == "int8" else Bf16Matrix

    def _int8_layer(self, layer):
        cache = layer.__dict__.setdefault("_packed", {})
        proxy = cache.get(self.name)
        if proxy is None:
            of = self.matrix.of
            proxy = copy.copy(layer)  # the same cell, its matrices as Int8Matrix / Bf16Matrix
            proxy.directions = [DirectionWeights(of(w.w_ih, w.int8_of("w_ih")), of(w.w_hh, w.int8_of("w_hh")),
                                                 w.b_ih, w.b_hh, of(w.w_hr, w.int8_of("w_hr")), w.peephole)
                                for w in layer.directions]
            cache[self.name] = proxy
        return proxy

    def recurrent(self, layer, x, lengths, state, threads=1, tokens=None):
        return reference.recurrent(self._int8_layer(layer), x, lengths, state)

    def dense(self, layer, x, threads=1):
        y = x @ self.matrix.of(layer.weight, layer.int8).T
        if layer.bias is not None:
            y = y + layer.bias
        return reference.dense_activation(layer, y.astype(f32))


# -- the compiled int8 engine ------------------------------------------------------------------
class _Int8Kernels:
    """kernels/_cyint8 behind the names CompiledBackend calls (pack_weight, matmul_packed)."""

    def __init__(self, module, kind):
        self.module, self.kind = module, kind
        if hasattr(module, "split_sequence"):  # batch 1 over the hidden units (kernels/int8_split.h)
            self.SplitContext, self.split_sequence = module.SplitContext, module.split_sequence

    def pack_weight(self, w, exact=None):
        """w (N, K) float32 (``exact``: its Int8Weights, int8 only) -> the kernels' packed form."""
        if self.kind == "bfloat16":
            return self.module.pack_bf16(w)
        return self.module.pack_int8(*quantize_int8(w, exact))

    def matmul_packed(self, x, packed, out):
        self.module.matmul_int8(x, packed, out)


class Int8CompiledBackend(CompiledBackend):
    """CompiledBackend's driver (threads over directions and row blocks, the input projection in
    blocks of time steps, the folded embedding) with int8 products: kernels/int8_core.h.

    The layers whose weights ``quantize`` leaves in float32 (Conv1D) and attention's products
    between activations compute in float32, as the int8 reference (Int8ReferenceBackend) does,
    on ``float_backend``'s packed matmul: on this engine's threads, never on NumPy's BLAS."""

    def __init__(self, module, kind="int8", float_backend=None):
        super().__init__(f"cython-{kind}", _Int8Kernels(module, kind))
        self.float_backend = float_backend

    def conv1d(self, layer, x, threads=1):
        return self.float_backend.conv1d(layer, x, threads)

    def attention(self, layer, inputs, lengths, threads=1):
        return self.float_backend.attention(layer, inputs, lengths, threads)

    def pack_matrix(self, a, int8=None):
        return self.kernels.pack_weight(np.ascontiguousarray(a, dtype=f32), int8)

    def matmul(self, x, packed, n_out, bias, threads=1):
        """x (M, K) @ W.T + bias as the parent's, with the bias added in the kernel's epilogue
        (the output is written once, not filled with the bias first): the same bits."""
        from .backends import run_tasks, split_rows

        M = x.shape[0]
        out = np.empty((M, n_out), f32)
        x = np.ascontiguousarray(x, dtype=f32)
        bias = np.zeros(n_out, f32) if bias is None else np.ascontiguousarray(bias, dtype=f32)
        k = self.kernels.module
        tasks = [(lambda a=a, b=b: k.matmul_int8(x[a:b], packed, out[a:b], bias))
                 for a, b in split_rows(M, threads if M >= 64 * threads else 1)]
        run_tasks(tasks, threads)
        return out

    # Batch 1 splits the hidden units across threads as the float32 engine does (its driver,
    # CompiledBackend._run_split, with kernels/int8_split.c), from this size on: an int8 W_hh of
    # H = 256 is as many bytes as a float32 one of H = 128, the float32 engine's threshold.
    min_split_hidden = MIN_SPLIT_HIDDEN_INT8

    def _task(self, layer, p, xproj, token_ids, lengths, backward, h, c, y, y_offset, cell):
        return _Int8SequenceTask(self.kernels.module, layer, p, xproj, token_ids, lengths, backward, h, c, y,
                                 y_offset, cell)


class _Int8SequenceTask(_SequenceTask):
    """One int8 kernel call (kernels/_cyint8 sequence) over rows of one direction; ``run`` as the
    float32 task's (CompiledBackend._run_split finishes a stopped split chunk with it)."""

    def run(self, xproj, token_ids, lengths, y, y_offset=0):
        k, p = self.k, self.p
        if self.layer.cell == "gru":
            args = ("gru", xproj, p["w_hh_rz"], p["w_hh_n"], None, None, p["b_hn"])
        else:
            args = (self.layer.cell, xproj, p["w_hh"], None, p["w_hr"], p["peephole"], None)
        k.sequence(*args, lengths, self.backward, self.h, self.c, y, y_offset, self.cell, tokens=token_ids)


_engines = {}
_engines_lock = threading.Lock()


def _compiled_module():
    try:
        return importlib.import_module("fastrnn.kernels._cyint8")
    except ImportError:
        return None


ENGINE_KINDS = ("int8", "bfloat16")  # the kinds with their own products (float16: float32 engine)


def int8_backend(backend, kind="int8"):
    """The int8 (or bfloat16) engine for a float backend: the NumPy spec for "numpy", else the
    compiled one (the NumPy spec when the extension is not built), whose float32 layers run on
    ``backend``."""
    name = ("reference", kind) if backend.name == "numpy" else (backend.name, kind)
    with _engines_lock:
        engine = _engines.get(name)
        if engine is None:
            module = _compiled_module() if name[0] != "reference" else None
            engine = (Int8CompiledBackend(module, kind, backend) if module is not None
                      else Int8ReferenceBackend(kind))
            _engines[name] = engine
    return engine

