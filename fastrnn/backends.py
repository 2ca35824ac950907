"""Kernel backends: one interface, three implementations.

- ``numpy``:  fastrnn.reference, the plain spec (slow, obviously correct).
- ``cython``: fastrnn.kernels._cykernels, ahead-of-time compiled C (the default when built).
- ``numba``:  fastrnn.kernels.numba_kernels, JIT (used when the extension is not built);
  imported lazily, so the default path never triggers JIT compilation.

A backend runs whole layers: ``backend.recurrent(layer, x, lengths, state) -> (y, state)``.
Inputs reaching a backend have been validated by fastrnn.model (dtype float32, shapes, lengths
in range); backends only compute. The compiled backends share the code below: the input
projection of the time steps is one packed matmul, then one kernel call per direction and block
of rows runs the time loop with the GIL released; long sequences do both in chunks of time steps.

The backend is chosen by ``fastrnn.set_backend(name)``, else the ``FASTRNN_BACKEND`` environment
variable, else the first available of cython, numba, numpy.

Batch invariance: in the compiled backends every matmul (input projections, Dense and Conv1D
layers, attention's products, the recurrent steps) goes through the kernels' packed matmul,
whose outputs are each one FMA chain over k. A row's result is therefore bitwise identical
whatever else is in the batch and however the rows are split across threads (BLAS does not
promise that: its gemv path for one row and its gemm edge kernels round differently).
Classification relies on it: bucketed batches give exactly the results of running each input
alone.

Threads: a compiled backend computes on at most ``threads`` threads, its own. No NumPy product
(OpenBLAS, multi-threaded, whose pool threads keep spinning after a product) runs on its paths:
the layers with products (Dense, Conv1D, Attention) have a method here; the other layers run
their NumPy definition, which has none.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import threading

import numpy as np

from . import pool, reference
from .layers import Attention, Conv1D, Dense, Recurrent
from .layers.conv import conv_activation, conv_matrix, conv_windows

f32 = np.float32
BACKEND_NAMES = ("cython", "numba", "numpy")
_KERNEL_MODULES = {"cython": "fastrnn.kernels._cykernels", "numba": "fastrnn.kernels.numba_kernels"}


# -- threads ---------------------------------------------------------------------------------
# Compiled backends split independent work (the two directions of a layer, blocks of batch rows)
# across fastrnn's worker threads (fastrnn/pool.py); each kernel call releases the GIL. Every
# row's result is bitwise identical however the batch is split, so results never depend on the
# thread count. Idle workers block: no thread spins after a call returns.
_num_threads = None
MIN_ROWS_PER_TASK = 4
MIN_SPLIT_HIDDEN = 128  # batch 1: split the hidden units across threads from this size on
MAX_FOLDED_TABLE_BYTES = 96 * 1024 * 1024  # per direction
# Long calls run in chunks of time steps (the state carried from one to the next), so that
# Ctrl-C is seen between chunks: about this many multiply-adds per chunk (about 10 ms of float32
# on an AVX-512 core, 2-4 ms of int8; 0.1-0.3 s in plain C). A call whose work is under
# WHOLE_CALL_MACS (about 80 ms) and whose input projection fits in one block runs as one kernel
# call: chunks cost a Python round trip, a copy of their projection and of their output each,
# which at one step per chunk (batch 64, LSTM(512): 67M multiply-adds a step) took a third of an
# int8 call and kept the second thread from helping.
CHUNK_MACS = 1 << 29
WHOLE_CALL_MACS = 8 * CHUNK_MACS
# The input projection of a long call is computed a block of chunks at a time: at most this many
# bytes and multiply-adds per block (about 4 chunks' work); a chunk's projection is at most half
# a block. A call run whole holds its projection up to WHOLE_CALL_BYTES.
PROJECTION_BYTES = 8 * 1024 * 1024
PROJECTION_MACS = 4 * CHUNK_MACS
WHOLE_CALL_BYTES = 4 * PROJECTION_BYTES


def _default_threads():
    env = os.environ.get("FASTRNN_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FASTRNN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n >= 1:
            return n
        raise ValueError(f"FASTRNN_NUM_THREADS must be a positive integer, got {env!r}")
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Threads used by compiled backends from now on (default: all cores, or FASTRNN_NUM_THREADS)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    _num_threads = int(n)


def get_num_threads():
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads


def check_threads(threads):
    """``threads`` argument of the API: None = the process setting; else a positive integer."""
    if threads is None:
        return get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


run_tasks = pool.run_tasks


def chunk_steps(rows, macs_per_row_step, steps, floats_per_row_step=0):
    """Time steps per chunk for ``rows`` rows costing ``macs_per_row_step`` each, over ``steps``
    steps: all of them in one call when the whole call is short (under WHOLE_CALL_MACS) and its
    input projection (``floats_per_row_step`` floats a row and step) is at most
    WHOLE_CALL_BYTES, so that ordinary calls pay nothing for the chunking; else about
    CHUNK_MACS of work per chunk, and a projection of at most half a block (PROJECTION_BYTES)."""
    row_step_bytes = 4 * rows * floats_per_row_step
    if rows * macs_per_row_step * steps < WHOLE_CALL_MACS and row_step_bytes * steps <= WHOLE_CALL_BYTES:
        return max(1, steps)
    return max(1, min(CHUNK_MACS // max(1, rows * macs_per_row_step),
                      PROJECTION_BYTES // 2 // max(1, row_step_bytes)))


def time_chunks(T, steps, backward):
    """[(t0, t1)] covering 0..T in chunks of ``steps``, last first when ``backward``: a reverse
    scan of row b starts at its own last step, so later chunks come first."""
    chunks = [(t0, min(T, t0 + steps)) for t0 in range(0, T, steps)]
    return chunks[::-1] if backward else chunks


def split_rows(batch, parts):
    """Row blocks [(start, stop)] for ``parts`` workers, at least MIN_ROWS_PER_TASK rows each."""
    parts = max(1, min(parts, batch // MIN_ROWS_PER_TASK))
    edges = np.linspace(0, batch, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class NumpyBackend:
    """The reference implementation, used as a backend."""

    name = "numpy"

    def __repr__(self):
        return "<fastrnn backend 'numpy': the NumPy reference>"

    def can_fold_embedding(self, embedding, layer):
        return False

    def recurrent(self, layer: Recurrent, x, lengths, state, threads=1, tokens=None):
        return reference.recurrent(layer, x, lengths, state)

    def dense(self, layer: Dense, x, threads=1):
        return reference.dense(layer, x)

    def conv1d(self, layer: Conv1D, x, threads=1):
        return reference.conv1d(layer, x)

    def attention(self, layer: Attention, inputs, lengths, threads=1):
        """``lengths``: the inputs' masks (query, value, ...), each None, (B,) or (B, T)."""
        return reference.attention(layer, inputs, lengths[0], lengths[1])


class CompiledBackend:
    """Drives a kernel module that implements the contract in kernels/README.md."""

    def __init__(self, name, module):
        self.name = name
        self.kernels = module
        self._lock = threading.Lock()

    def __repr__(self):
        return f"<fastrnn backend {self.name!r}: compiled kernels {self.kernels.__name__}>"

    # -- weight packing (once per layer and backend, cached on the weights object) --------
    def packed(self, layer: Recurrent, d: int):
        w = layer.directions[d]
        cache = w.__dict__.setdefault("_packed", {})
        entry = cache.get(self.name)
        if entry is None:
            with self._lock:
                entry = cache.get(self.name)
                if entry is None:
                    entry = self._pack(layer, w)
                    cache[self.name] = entry
        return entry

    def pack_matrix(self, a, int8=None):
        """A weight matrix a (N, K) in the kernels' packed form. ``int8``: its exact int8 form
        (fastrnn.layers.Int8Weights, or None), which only the int8 engine reads."""
        return self.kernels.pack_weight(np.ascontiguousarray(a))

    def _pack(self, layer, w):
        G, H = layer.gates, layer.hidden_size
        pack = self.pack_matrix
        b_ih = np.zeros(G * H, f32) if w.b_ih is None else w.b_ih
        b_hh = np.zeros(G * H, f32) if w.b_hh is None else w.b_hh
        entry = {"w_ih": pack(w.w_ih, w.int8_of("w_ih"))}  # (G*H <- I): xproj = x @ W_ih.T + bias, or the folded table
        if layer.cell == "gru":
            # b_hr, b_hz fold into the projection; b_hn stays inside the reset product
            exact = w.int8_of("w_hh")
            entry["bias"] = (b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H, f32)])).astype(f32)
            entry["w_hh_rz"] = pack(w.w_hh[: 2 * H], None if exact is None else exact[: 2 * H])
            entry["w_hh_n"] = pack(w.w_hh[2 * H:], None if exact is None else exact[2 * H:])
            entry["b_hn"] = np.ascontiguousarray(b_hh[2 * H:])
        else:
            entry["bias"] = (b_ih + b_hh).astype(f32)
            entry["w_hh"] = pack(w.w_hh, w.int8_of("w_hh"))
            entry["w_hr"] = None if w.w_hr is None else pack(w.w_hr, w.int8_of("w_hr"))
            entry["peephole"] = w.peephole
        return entry

    def matmul(self, x, packed, n_out, bias, threads=1):
        """x (M, K) @ W.T + bias -> (M, N = n_out) float32, W (N, K) packed by this backend;
        row blocks of x run on the thread pool. Batch-invariant (see the module doc)."""
        M = x.shape[0]
        out = np.empty((M, n_out), f32)
        out[:] = 0.0 if bias is None else bias
        x = np.ascontiguousarray(x, dtype=f32)
        k = self.kernels
        # a long product (a Dense layer over every step of a long batch) runs in blocks of rows of
        # about PROJECTION_MACS each, so that Python sees Ctrl-C between them
        step = max(1, M) if M * x.shape[1] * n_out <= 4 * PROJECTION_MACS else max(
            64 * threads, PROJECTION_MACS // max(1, x.shape[1] * n_out))
        for r0 in range(0, M, step):
            r1 = min(M, r0 + step)
            rows = [(r0 + a, r0 + b) for a, b in split_rows(r1 - r0, threads if r1 - r0 >= 64 * threads else 1)]
            run_tasks([(lambda a=a, b=b: k.matmul_packed(x[a:b], packed, out[a:b])) for a, b in rows], threads)
        return out

    def layer_matrix(self, layer, matrix, int8=None):
        """The packed form of a layer's fixed weight matrix (N, K), made once per layer and backend
        and cached on the layer; ``matrix``: a function returning it (called the first time only)."""
        cache = layer.__dict__.setdefault("_packed", {})
        packed = cache.get(self.name)
        if packed is None:
            packed = cache[self.name] = self.pack_matrix(matrix(), int8)
        return packed

    def dense(self, layer: Dense, x, threads=1):
        """Dense on (..., in) through the packed matmul; then the activation (element-wise, or
        a per-row softmax) as in the reference."""
        packed = self.layer_matrix(layer, lambda: layer.weight, layer.int8)
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), packed, layer.output_size, layer.bias, threads)
        y = y.reshape(shape[:-1] + (layer.output_size,))
        return reference.dense_activation(layer, y)

    def conv1d(self, layer: Conv1D, x, threads=1):
        """Conv1D as the reference computes it (the windows gathered, then one product), the
        product through the packed matmul with the filters packed once."""
        packed = self.layer_matrix(layer, lambda: conv_matrix(layer))
        windows = conv_windows(layer, x)  # (B, T', k*C)
        B, T_out, KC = windows.shape
        y = self.matmul(windows.reshape(B * T_out, KC), packed, layer.filters, layer.bias, threads)
        return conv_activation(layer, y.reshape(B, T_out, layer.filters))

    def attention(self, layer: Attention, inputs, lengths, threads=1):
        """The reference's attention with its two products (q k^T, weights v) through
        ``batch_products``."""
        return reference.attention(layer, inputs, lengths[0], lengths[1],
                                   products=lambda a, b: self.batch_products(a, b, threads))

    def batch_products(self, a, b, threads=1):
        """a (B, M, K), b (B, N, K) -> a[i] @ b[i].T for each i, (B, M, N) float32, through the
        packed matmul: b (activations, not weights) is packed for this call.

        Why this and not np.einsum (NumPy's own loops, single-threaded like this) or a kernel of
        its own: packing b[i] copies N*K floats against M*N*K multiply-adds, plus a few
        microseconds of calls per item. Measured on one thread (python -m bench.attention_products,
        on a loaded 2-core machine), for B 1-64, T 50-300, d 64-256: 0.4-1.3x the time of
        OpenBLAS on one thread from B x T ~ 1000 up, 3-3.5x at the smallest shapes (B 1-8, T 50:
        0.03-0.2 ms for both products); einsum 1.3-9.5x (its float32 loops do not block for the
        FMA units). Items (or, for fewer items than threads, blocks of rows of one) run on the
        thread pool; each output is one FMA chain, whatever the split."""
        a = np.ascontiguousarray(a, dtype=f32)
        B, M, _ = a.shape
        N = b.shape[1]
        out = np.zeros((B, M, N), f32)
        if out.size == 0:
            return out
        k = self.kernels

        def item(i):  # (packing releases the GIL too)
            k.matmul_packed(a[i], k.pack_weight(np.ascontiguousarray(b[i], dtype=f32)), out[i])

        if threads <= 1:
            for i in range(B):
                item(i)
            return out
        if B >= threads or M < 64 * threads:
            run_tasks([(lambda i=i: item(i)) for i in range(B)], threads)
            return out
        # fewer items than threads: each item's rows in blocks, its right operand packed once
        packs = [k.pack_weight(np.ascontiguousarray(b[i], dtype=f32)) for i in range(B)]
        run_tasks([(lambda i=i, r0=r0, r1=r1: k.matmul_packed(a[i, r0:r1], packs[i], out[i, r0:r1]))
                   for i in range(B) for r0, r1 in split_rows(M, max(1, threads // B))], threads)
        return out

    def can_fold_embedding(self, embedding, layer):
        """Fold Embedding -> first layer's input projection into one lookup table per direction,
        table[v] = W_ih @ E[v] + bias (computed once, cached with the packed weights), when the
        table stays small."""
        return embedding.vocab_size * layer.gates * layer.hidden_size * 4 <= MAX_FOLDED_TABLE_BYTES

    def folded_table(self, layer, d, embedding, threads=1):
        p = self.packed(layer, d)
        table = p.get("table")
        if table is None or p.get("table_for") is not embedding.weight:
            # the same packed matmul as an unfolded input projection, so folding changes no bit
            # (and no BLAS call leaves its threads spinning after predict returns)
            table = self.matmul(embedding.weight, p["w_ih"], layer.gates * layer.hidden_size, p["bias"], threads)
            table.flags.writeable = False
            p["table"], p["table_for"] = table, embedding.weight
        return table

    @staticmethod
    def cell_options(layer: Recurrent):
        acts = list(layer.activations) + [layer.activations[-1]] * (3 - len(layer.activations))
        codes = np.array([a.code for a in acts], np.int32)
        params = np.array([[a.alpha, a.beta] for a in acts], f32)
        clip = float("inf") if layer.clip is None else float(layer.clip)
        return (codes, params, clip, int(layer.input_forget), int(layer.linear_before_reset))

    # -- one layer ---------------------------------------------------------------------------
    def recurrent(self, layer: Recurrent, x, lengths, state, threads=1, tokens=None):
        """tokens: (Embedding, ids (B, T)) when x is token ids of an embedding folded into this layer.

        A long call runs in chunks of time steps (chunk_steps), the state carried from one to the
        next, and its input projection in blocks of a few chunks (_Projection): Python sees Ctrl-C
        between chunks, and the projection never holds more than a block (not B x T x G*H
        floats). The matmul rows and the kernel steps are those of one call: the same bits."""
        B, T = x.shape[:2]
        D, Ho, H, G = layer.num_directions, layer.output_size_per_direction, layer.hidden_size, layer.gates
        lengths = np.full(B, T, np.int64) if lengths is None else np.ascontiguousarray(lengths, np.int64)
        if state is None:
            h_all = np.zeros((D, B, Ho), f32)
            c_all = np.zeros((D, B, H), f32) if layer.cell == "lstm" else None
        elif layer.cell == "lstm":
            h_all, c_all = (np.array(s, dtype=f32, order="C") for s in state)  # copies: INOUT
        else:
            h_all, c_all = np.array(state, dtype=f32, order="C"), None
        cell = self.cell_options(layer)
        y = np.empty((B, T, D * Ho), f32)
        token_ids = None if tokens is None else np.ascontiguousarray(tokens[1], np.int64)
        packs = [self.packed(layer, d) for d in range(D)]
        backwards = [int(d == 1 or layer.reverse or layer.go_backwards) for d in range(D)]
        parts = self._split_parts(layer, B, T, threads)
        # (with a folded table the projection is counted too: the batch-1 split takes it from the
        # table in blocks, and Numba's kernels gather it)
        steps = chunk_steps(B, G * H * Ho, T, G * H)
        if tokens is not None:
            tables = [self.folded_table(layer, d, tokens[0], threads) for d in range(D)]
            projections = [_Projection(lambda t0, t1, d=d: tables[d][token_ids[:, t0:t1]], T, steps, B, G * H)
                           for d in range(D)] if parts > 1 else None
        else:
            tables = None
            x2 = x.reshape(B * T, x.shape[2])

            def project(t0, t1, d):
                rows = x2 if (t0, t1) == (0, T) else np.ascontiguousarray(x[:, t0:t1]).reshape(-1, x.shape[2])
                return self.matmul(rows, packs[d]["w_ih"], G * H, packs[d]["bias"], threads).reshape(B, t1 - t0, G * H)
            projections = [_Projection(lambda t0, t1, d=d: project(t0, t1, d), T, steps, B, G * H, x.shape[2])
                           for d in range(D)]
        if parts > 1:  # batch 1, one direction: the hidden units across threads
            self._run_split(layer, packs[0], projections[0], lengths, backwards[0], h_all[0],
                            None if c_all is None else c_all[0], y, cell, parts, steps)
        else:
            blocks = split_rows(B, max(1, threads // D))
            chunks = [time_chunks(T, steps, backwards[d]) for d in range(D)]
            for k in range(len(chunks[0])):
                tasks = []
                for d in range(D):
                    t0, t1 = chunks[d][k]
                    whole = (t0, t1) == (0, T)
                    xp = xb = task = None  # (a view of the block before would keep it alive)
                    if tables is None:
                        xp, ids = projections[d].chunk(t0, t1), None
                    else:  # the folded table is read in place by the kernel (tokens=ids)
                        xp, ids = tables[d], token_ids if whole else np.ascontiguousarray(token_ids[:, t0:t1])
                    local = lengths if whole else np.clip(lengths - t0, 0, t1 - t0).astype(np.int64)
                    for b0, b1 in blocks:
                        xb, ib = (xp, ids[b0:b1]) if tables is not None else (xp[b0:b1], None)
                        yc, offset = (y[b0:b1], d * Ho) if whole else (np.empty((b1 - b0, t1 - t0, Ho), f32), 0)
                        task = self._task(layer, packs[d], xb, ib, local[b0:b1], backwards[d], h_all[d, b0:b1],
                                          None if c_all is None else c_all[d, b0:b1], yc, offset, cell)
                        tasks.append(task if whole else _Into(task, yc, y, b0, b1, t0, t1, d * Ho))
                run_tasks(tasks, threads)
        new_state = (h_all, c_all) if layer.cell == "lstm" else h_all
        return finish_recurrent(layer, y, h_all, lengths), new_state

    min_split_hidden = MIN_SPLIT_HIDDEN  # the int8 engine (fastrnn/quantize.py) has its own

    def _split_parts(self, layer, B, T, threads):
        """Threads for a batch-1 call split over the hidden units (kernels/rnn_split.h; the
        kernels object provides SplitContext and split_sequence), or 1."""
        H = layer.hidden_size
        if (B != 1 or T == 0 or threads < 2 or layer.num_directions != 1 or layer.proj_size
                or H < self.min_split_hidden or H % 16 or not hasattr(self.kernels, "split_sequence")):
            return 1
        return min(threads, H // 16)

    def _run_split(self, layer, p, projection, lengths, backward, h, c, y, cell, parts, steps):
        """Batch 1, one direction: chunks of ``steps`` time steps (``projection``: their input
        projection), each on a gang of up to ``parts`` threads that each own a slice of the hidden
        units and meet at a barrier after every step (kernels/rnn_split.h). A chunk gets one thread
        when no worker is idle; when the parts mostly waited for each other (another process busy
        on a core) the kernel returns early, the chunk is finished on one thread, and
        fastrnn/pool.py's SplitVerdict decides whether the next gangs get one part for a while.
        The int8 engine runs this driver too: its kernels object has the same SplitContext and
        split_sequence (kernels/int8_split.h), its _task the same ``run``."""
        k = self.kernels
        T = y.shape[1]
        Ho = layer.output_size_per_direction
        length = int(lengths[0])
        if layer.cell == "gru":
            args = ("gru", p["w_hh_rz"], p["w_hh_n"], p["b_hn"], None)
        else:
            args = (layer.cell, p["w_hh"], None, None, p["peephole"] if layer.cell == "lstm" else None)
        one = self._task(layer, p, None, None, None, backward, h, c, None, 0, cell)
        for t0, t1 in time_chunks(T, steps, backward):
            n = min(max(length - t0, 0), t1 - t0)  # steps of this chunk
            if n == 0:
                y[:, t0:t1] = 0.0
                continue
            xc = projection.chunk(t0, t1)
            yc = y if (t0, t1) == (0, T) else np.empty((1, t1 - t0, Ho), f32)
            local = np.array([n], np.int64)
            with pool.Gang(parts) as gang:
                if gang.size == 1:
                    one.run(xc, None, local, yc)
                else:
                    ctx = k.SplitContext(gang.size, h)
                    done = [0] * gang.size

                    def part(i):
                        done[i] = k.split_sequence(ctx, i, args[0], xc, *args[1:4], args[4], local, backward, h,
                                                   c, yc, 0, cell)
                    gang.run([lambda i=i: part(i) for i in range(gang.size)], ctx.abort)
                    gang.report(ctx.degraded)
                    if done[0] < n:  # the rest of the chunk on this thread
                        rest = n - done[0]
                        a, b = (0, rest) if backward else (done[0], n)
                        ys = np.empty((1, rest, Ho), f32)
                        one.run(np.ascontiguousarray(xc[:, a:b]), None, np.array([rest], np.int64), ys)
                        yc[:, a:b] = ys
            if yc is not y:
                y[:, t0:t1] = yc
            xc = None  # a view of the projection block: let the block go when the next one comes

    def _task(self, layer, p, xproj, token_ids, lengths, backward, h, c, y, y_offset, cell):
        """One kernel call over a block of rows of one direction (row slices stay C-contiguous),
        as a task for run_tasks. ``xproj`` is the (b, T, G*H) block, or with ``token_ids`` (b, T)
        the folded table (T: the steps of one chunk of a long call)."""
        return _SequenceTask(self.kernels, layer, p, xproj, token_ids, lengths, backward, h, c, y, y_offset, cell)


class _Projection:
    """The input projection of one direction, ``project(t0, t1)`` -> (B, t1 - t0, G*H), computed in
    blocks of whole chunks of time steps as the chunks ask for them (in either order): one matmul
    call per block keeps its rows and threads busy, and a block holds at most PROJECTION_BYTES
    (and PROJECTION_MACS of work, so Ctrl-C is not kept waiting by a wide input)."""

    def __init__(self, project, T, steps, B, GH, n_in=0):
        self.project, self.T = project, T
        per_step = max(1, B * GH)
        chunks = max(1, min(PROJECTION_BYTES // (4 * per_step * steps), PROJECTION_MACS // (per_step * n_in * steps)
                            if n_in else PROJECTION_BYTES))
        self.block = steps * chunks  # time steps per block
        self.span, self.value = None, None

    def chunk(self, t0, t1):
        """Steps t0..t1 (inside one block): C-contiguous."""
        if (t0, t1) == (0, self.T):
            return self.project(0, self.T)
        b0 = t0 - t0 % self.block
        if self.span != b0:
            self.span, self.value = None, None  # (the block before is let go first)
            self.span, self.value = b0, self.project(b0, min(self.T, b0 + self.block))
        return np.ascontiguousarray(self.value[:, t0 - b0:t1 - b0])


class _Into:
    """A kernel task over one chunk of time steps writing into its own (b, n, H_out) buffer, then
    copying it into the layer's output rows b0..b1, steps t0..t1, from column ``offset``."""

    def __init__(self, task, yc, y, b0, b1, t0, t1, offset):
        self.task, self.yc, self.y = task, yc, y
        self.where = (slice(b0, b1), slice(t0, t1), slice(offset, offset + yc.shape[2]))

    def __call__(self):
        self.task()
        self.y[self.where] = self.yc


class _SequenceTask:
    """A recurrent kernel call over rows of one direction; ``h`` and ``c`` are INOUT, so a
    sequence runs as several calls over consecutive chunks of time steps."""

    def __init__(self, kernels, layer, p, xproj, token_ids, lengths, backward, h, c, y, y_offset, cell):
        self.k, self.layer, self.p, self.cell = kernels, layer, p, cell
        self.xproj, self.token_ids, self.lengths, self.backward = xproj, token_ids, lengths, backward
        self.h, self.c, self.y, self.y_offset = h, c, y, y_offset

    def run(self, xproj, token_ids, lengths, y, y_offset=0):
        """The kernel over all of ``xproj`` (or the table with ``token_ids``) into ``y``."""
        k, p, layer = self.k, self.p, self.layer
        if layer.cell == "lstm":
            k.lstm_sequence(xproj, p["w_hh"], p["w_hr"], p["peephole"], lengths, self.backward, self.h, self.c, y,
                            y_offset, self.cell, tokens=token_ids)
        elif layer.cell == "gru":
            k.gru_sequence(xproj, p["w_hh_rz"], p["w_hh_n"], p["b_hn"], lengths, self.backward, self.h, y,
                           y_offset, self.cell, tokens=token_ids)
        else:
            k.rnn_sequence(xproj, p["w_hh"], lengths, self.backward, self.h, y, y_offset, self.cell,
                           tokens=token_ids)

    def __call__(self):
        """The whole of this task's steps (CompiledBackend.recurrent has cut a long call into chunks)."""
        self.run(self.xproj, self.token_ids, self.lengths, self.y, self.y_offset)


def finish_recurrent(layer: Recurrent, y, h_all, lengths):
    """From the per-direction outputs y (B, T, D*H_out) and final states h_all (D, B, H_out) to
    the layer's output: go_backwards order, 'hold' padding, last state, merge."""
    B, T = y.shape[:2]
    Ho = layer.output_size_per_direction
    if layer.return_sequences:
        if layer.go_backwards:
            y = np.ascontiguousarray(y[:, ::-1])
        elif layer.masked_output == "hold" and not (layer.reverse or layer.bidirectional):
            for b in np.nonzero((lengths > 0) & (lengths < T))[0]:
                y[b, lengths[b]:] = y[b, lengths[b] - 1]
        if not layer.bidirectional or layer.merge_mode == "concat":
            return y
        outs = [y[..., :Ho], y[..., Ho:]]
    else:
        if not layer.bidirectional:
            return np.ascontiguousarray(h_all[0])
        outs = [h_all[0], h_all[1]]
        if layer.merge_mode == "concat":
            return np.concatenate(outs, axis=-1)
    if layer.merge_mode == "sum":
        return outs[0] + outs[1]
    if layer.merge_mode == "mul":
        return outs[0] * outs[1]
    return ((outs[0] + outs[1]) / 2).astype(f32)


# -- selection -------------------------------------------------------------------------------
_instances = {}
_current = None
_import_errors = {}


def _new_locks_after_fork():
    """A lock held by a thread of the parent at fork time would stay held forever in the child."""
    for backend in _instances.values():
        if isinstance(backend, CompiledBackend):
            backend._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def _load(name):
    if name in _instances:
        return _instances[name]
    if name == "numpy":
        backend = NumpyBackend()
    elif name in _KERNEL_MODULES:
        try:
            module = importlib.import_module(_KERNEL_MODULES[name])
        except ImportError as exc:  # extension not built / numba missing
            _import_errors[name] = exc
            return None
        backend = CompiledBackend(name, module)
    else:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")
    _instances[name] = backend
    return backend


def _is_available(name):
    if name in _instances:
        return True
    if name == "numpy":
        return True
    if name == "numba":
        # No import of numba here: listing backends must not pay numba's start-up cost.
        try:
            return (importlib.util.find_spec("numba") is not None
                    and importlib.util.find_spec(_KERNEL_MODULES["numba"]) is not None)
        except (ImportError, ValueError):
            return False
    return _load(name) is not None


def _unavailable(name):
    """Why backend ``name`` cannot run here, and how to get it."""
    hint = {"numba": ' (Numba is an optional extra: pip install numba, or pip install ".[numba]" in a fastrnn '
                     'checkout)',
            "cython": " (the compiled extension is not built: reinstall fastrnn with a C compiler)"}.get(name, "")
    return f"backend {name!r} is not available here: {_import_errors.get(name)}{hint}"


def available_backends():
    """Names of the backends that can run here, fastest first."""
    return [n for n in BACKEND_NAMES if _is_available(n)]


def set_backend(name):
    """Use backend ``name`` ("cython", "numba" or "numpy") from now on, process-wide."""
    global _current
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")
    backend = _load(name)
    if backend is None:
        raise RuntimeError(_unavailable(name))
    _current = backend


def get_backend(name=None):
    """The backend object for ``name``, or the current one (FASTRNN_BACKEND, else the fastest)."""
    global _current
    if name is not None:
        backend = _load(name)
        if backend is None:
            raise RuntimeError(_unavailable(name))
        return backend
    if _current is None:
        env = os.environ.get("FASTRNN_BACKEND")
        if env:
            set_backend(env.strip().lower())
        else:
            for n in BACKEND_NAMES:
                backend = _load(n)
                if backend is not None:
                    _current = backend
                    break
    return _current
