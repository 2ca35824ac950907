"""Recurrent layers (RNN, LSTM, GRU; one or two directions) in fastrnn's one internal layout,
with their NumPy reference (the spec of kernels/rnn_core.c, kernels/numba_kernels.py).

Every importer (PyTorch, Keras, ONNX, the native file) produces these dataclasses; the kernels only
ever see this layout. Weights are read-only float32 arrays in PyTorch's orientation
(``out = W @ in``) and PyTorch's gate order:

- LSTM gates ``i|f|g|o`` (G = 4), GRU gates ``r|z|n`` (G = 3), RNN one block (G = 1).
- ``H`` = hidden_size; ``H_out`` = proj_size if proj_size else H (only LSTM has a projection).

A layer holds weights only. Running state (h, c) is passed in and returned, never stored here.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..activations import Activation, apply_activation
from .base import Layer, check_int8, frozen_array
from .mask import step_mask

f32 = np.float32

CELL_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
DEFAULT_ACTIVATIONS = {
    "rnn": ("tanh",),
    "lstm": ("sigmoid", "tanh", "tanh"),  # f: gates i,f,o   g: cell input   h: on c'
    "gru": ("sigmoid", "tanh"),  # f: gates r,z   g: candidate n
}
MERGE_MODES = ("concat", "sum", "mul", "ave")


@dataclass
class DirectionWeights:
    """Weights of one direction of a recurrent layer (PyTorch layout and gate order).

    w_ih (G*H, I); w_hh (G*H, H_out); b_ih, b_hh (G*H,) or None (absent, not counted as
    parameters: Keras has a single bias); w_hr (P, H) LSTM projection or None;
    peephole (3, H) LSTM peepholes, rows i|f|o, or None.
    int8: {"w_ih" | "w_hh" | "w_hr": Int8Weights}, the exact int8 forms of those matrices the
    source file gave (onnxruntime's integers, in this layout's gate order), or None.
    """

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: Optional[np.ndarray] = None
    b_hh: Optional[np.ndarray] = None
    w_hr: Optional[np.ndarray] = None
    peephole: Optional[np.ndarray] = None
    int8: Optional[dict] = field(default=None, compare=False)

    FIELDS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "peephole")
    MATRICES = ("w_ih", "w_hh", "w_hr")  # the fields an int8 form may stand for

    def arrays(self):
        return {k: getattr(self, k) for k in self.FIELDS if getattr(self, k) is not None}

    def int8_of(self, name):
        """The Int8Weights of matrix ``name`` ("w_ih", "w_hh", "w_hr"), or None."""
        return (self.int8 or {}).get(name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_packed", None)  # backend caches: rebuilt on first use
        return state


@dataclass(repr=False)
class Recurrent(Layer):
    """One recurrent layer (one or two directions) in the internal layout.

    cell: "rnn" | "lstm" | "gru".
    activations: (f,) for rnn; (f, g, h) for lstm (gates, cell input, output); (f, g) for gru.
    reverse: a single direction that runs from each row's last valid step back to step 0 and
        writes each output at its own time position (PyTorch/ONNX backward direction).
    go_backwards: like reverse, but the output sequence is returned in processing order
        (Keras go_backwards; output[t] is the t-th step of the reversed scan).
    return_sequences: True -> (B, T, F) outputs; False -> the final state (B, F) of each
        direction (forward: at the row's last valid step; backward: after step 0), merged.
    merge_mode: how a bidirectional layer merges [forward, backward]: concat | sum | mul | ave.
    masked_output: what a returned sequence holds at masked steps: "zero" (PyTorch, ONNX, Keras
        inside Bidirectional) or "hold" (repeat the previous output of the scan, 0 before the
        first real step: Keras's zero_output_for_mask=False).
    clip: ONNX cell clip (None = no clipping); input_forget: ONNX LSTM coupled input/forget gate.
    linear_before_reset: GRU only. True: n = g(W_in x + b_in + r*(W_hn h + b_hn)) (PyTorch,
        Keras reset_after=True, ONNX linear_before_reset=1). False: n = g(W_in x + b_in +
        W_hn (r*h) + b_hn) (Keras reset_after=False, ONNX default).
    return_state: in a graph, the node also outputs the final states, Keras's order: for each
        direction h (B, H_out), then c (B, H) for an LSTM. Its node may take initial states as
        extra inputs in the same order (Keras ``initial_state=[h, c]``).
    use_mask: False runs every step whatever the mask of the input, which still goes on with a
        returned sequence (Keras 3 calls a layer given initial_state tensors without its input's
        mask).
    """

    cell: str
    hidden_size: int
    directions: list
    proj_size: int = 0
    activations: tuple = ()
    reverse: bool = False
    go_backwards: bool = False
    return_sequences: bool = True
    merge_mode: str = "concat"
    masked_output: str = "zero"
    clip: Optional[float] = None
    input_forget: bool = False
    linear_before_reset: bool = True
    name: str = "recurrent"
    return_state: bool = False
    use_mask: bool = True

    kind = "recurrent"
    num_inputs = None  # x, then optionally the initial states (see return_state)

    def __post_init__(self):
        if self.cell not in CELL_GATES:
            raise ValueError(f"cell must be one of {list(CELL_GATES)}, got {self.cell!r}")
        if not self.activations:
            self.activations = DEFAULT_ACTIVATIONS[self.cell]
        self.activations = tuple(Activation.of(a) for a in self.activations)
        if len(self.activations) != len(DEFAULT_ACTIVATIONS[self.cell]):
            raise ValueError(
                f"{self.cell} takes {len(DEFAULT_ACTIVATIONS[self.cell])} activations, got {len(self.activations)}"
            )
        if len(self.directions) not in (1, 2):
            raise ValueError("a recurrent layer has 1 or 2 directions")
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {self.merge_mode!r}")
        if self.masked_output not in ("zero", "hold"):
            raise ValueError("masked_output must be 'zero' or 'hold'")
        if self.bidirectional and (self.reverse or self.go_backwards):
            raise ValueError("reverse/go_backwards apply to single-direction layers only")
        if self.proj_size and self.cell != "lstm":
            raise ValueError("proj_size is only defined for LSTM")
        self.hidden_size = int(self.hidden_size)
        self.proj_size = int(self.proj_size or 0)
        G, H, Ho = self.gates, self.hidden_size, self.output_size_per_direction
        in_size = None
        for d, w in enumerate(self.directions):
            if isinstance(w, dict):
                w = DirectionWeights(**w)
                self.directions[d] = w
            p = f"{self.name}.directions[{d}]"
            w.w_ih = frozen_array(w.w_ih, name=f"{p}.w_ih")
            if w.w_ih.ndim != 2 or w.w_ih.shape[0] != G * H:
                raise ValueError(f"{p}.w_ih has shape {w.w_ih.shape}, expected ({G * H}, input_size)")
            in_size = w.w_ih.shape[1] if in_size is None else in_size
            w.w_ih = frozen_array(w.w_ih, (G * H, in_size), f"{p}.w_ih")
            w.w_hh = frozen_array(w.w_hh, (G * H, Ho), f"{p}.w_hh")
            if w.b_ih is not None:
                w.b_ih = frozen_array(w.b_ih, (G * H,), f"{p}.b_ih")
            if w.b_hh is not None:
                w.b_hh = frozen_array(w.b_hh, (G * H,), f"{p}.b_hh")
            if self.proj_size:
                if w.w_hr is None:
                    raise ValueError(f"{p}.w_hr is required when proj_size > 0")
                w.w_hr = frozen_array(w.w_hr, (self.proj_size, H), f"{p}.w_hr")
            elif w.w_hr is not None:
                raise ValueError(f"{p}.w_hr given but proj_size is 0")
            if w.peephole is not None:
                if self.cell != "lstm":
                    raise ValueError("peepholes are only defined for LSTM")
                w.peephole = frozen_array(w.peephole, (3, H), f"{p}.peephole")
            if w.int8:
                unknown = sorted(set(w.int8) - set(DirectionWeights.MATRICES))
                if unknown:
                    raise ValueError(f"{p}.int8 names {unknown}; int8 forms are for {DirectionWeights.MATRICES}")
                w.int8 = {f: check_int8(form, getattr(w, f), f"{p}.{f}") for f, form in w.int8.items()
                          if form is not None} or None
        self.input_size = int(in_size)

    @property
    def gates(self) -> int:
        return CELL_GATES[self.cell]

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    @property
    def bidirectional(self) -> bool:
        return len(self.directions) == 2

    @property
    def output_size_per_direction(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def output_size(self) -> int:
        per = self.output_size_per_direction
        return per * 2 if (self.bidirectional and self.merge_mode == "concat") else per

    @property
    def per_step(self):
        """Causal in time: usable step by step in generation (forward direction only)."""
        return not (self.bidirectional or self.reverse or self.go_backwards)

    def state_sizes(self):
        """Sizes of the state tensors a graph node passes in/out, Keras's order: per direction h
        (H_out), then c (H) for an LSTM."""
        per = [self.output_size_per_direction] + ([self.hidden_size] if self.cell == "lstm" else [])
        return per * self.num_directions

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != 2:
            raise ValueError(f"{self.name} ({self.type_name()}) needs a sequence (time, features), gets "
                             f"{len(shape)} axes {shape}")
        if shape[1] is not None and shape[1] != self.input_size:
            raise ValueError(f"{self.name} ({self.type_name()}) expects {self.input_size} features, gets {shape[1]}")
        n_states = len(shapes) - 1
        if n_states and n_states != len(self.state_sizes()):
            raise ValueError(f"{self.name}: {n_states} initial-state inputs, expected {len(self.state_sizes())} "
                             f"(per direction h{', c' if self.cell == 'lstm' else ''})")
        main = (shape[0], self.output_size) if self.return_sequences else (self.output_size,)
        if not self.return_state:
            return main
        return [main] + [(n,) for n in self.state_sizes()]

    def output_lengths(self, lengths, shapes):
        keep = lengths[0] if self.return_sequences else None
        return [keep] + [None] * len(self.state_sizes()) if self.return_state else keep

    def type_name(self):
        base = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[self.cell]
        return f"Bidirectional({base})" if self.bidirectional else base

    def states_from_inputs(self, inputs, batch):
        """Initial-state input tensors (Keras order) -> the state of ``recurrent``: h (D, B, H_out) or (h, c)."""
        if len(inputs) <= 1:
            return None
        D = self.num_directions
        per = 2 if self.cell == "lstm" else 1
        parts = [np.ascontiguousarray(np.asarray(a, dtype=f32)) for a in inputs[1:]]
        h = np.stack([parts[d * per] for d in range(D)])
        if self.cell == "lstm":
            return h, np.stack([parts[d * per + 1] for d in range(D)])
        return h

    def states_to_outputs(self, state):
        """The final state of ``recurrent`` -> the return_state outputs (Keras order)."""
        h, c = state if self.cell == "lstm" else (state, None)
        out = []
        for d in range(self.num_directions):
            out.append(h[d])
            if c is not None:
                out.append(c[d])
        return out

    def call(self, inputs, lengths=None):
        x = inputs[0]
        y, state = recurrent(self, x, None if lengths is None or not self.use_mask else lengths[0],
                             self.states_from_inputs(inputs, x.shape[0]))
        return [y] + self.states_to_outputs(state) if self.return_state else y

    def count_params(self) -> int:
        return int(sum(a.size for w in self.directions for a in w.arrays().values()))

    def state_shapes(self, batch: int):
        """Shapes of this layer's state: [(D, B, H_out)] or, for LSTM, [(D, B, H_out), (D, B, H)]."""
        D = self.num_directions
        shapes = [(D, batch, self.output_size_per_direction)]
        if self.cell == "lstm":
            shapes.append((D, batch, self.hidden_size))
        return shapes

    def arrays(self):
        out = {}
        for d, w in enumerate(self.directions):
            for k, v in w.arrays().items():
                out[f"d{d}.{k}"] = v
        return out

    def config(self):
        return {
            "cell": self.cell,
            "hidden_size": self.hidden_size,
            "num_directions": self.num_directions,
            "proj_size": self.proj_size,
            "activations": [a.to_json() for a in self.activations],
            "reverse": self.reverse,
            "go_backwards": self.go_backwards,
            "return_sequences": self.return_sequences,
            "merge_mode": self.merge_mode,
            "masked_output": self.masked_output,
            "clip": self.clip,
            "input_forget": self.input_forget,
            "linear_before_reset": self.linear_before_reset,
            "return_state": self.return_state,
            "use_mask": self.use_mask,
        }

    def int8_forms(self):
        return {f"d{d}.{f}": form for d, w in enumerate(self.directions) for f, form in (w.int8 or {}).items()}

    def set_int8_forms(self, forms):
        for d, w in enumerate(self.directions):
            found = {f: check_int8(forms[f"d{d}.{f}"], getattr(w, f), f"{self.name}.d{d}.{f}")
                     for f in DirectionWeights.MATRICES if forms.get(f"d{d}.{f}") is not None}
            w.int8 = found or None

    @classmethod
    def from_config(cls, name, config, arrays):
        D = config.int("num_directions", minimum=1)
        if D not in (1, 2):
            raise ValueError(f"{name}: num_directions must be 1 or 2, got {D}")
        dirs = []
        for d in range(D):
            for f in ("w_ih", "w_hh"):
                if arrays.get(f"d{d}.{f}") is None:
                    raise ValueError(f"{name}: missing tensor for 'd{d}.{f}'")
            dirs.append(DirectionWeights(**{f: arrays.get(f"d{d}.{f}") for f in DirectionWeights.FIELDS}))
        clip = config.number("clip", None, allow_none=True)
        if clip is not None and clip <= 0:
            raise ValueError(f"{name}: clip must be > 0 or null, got {clip}")
        return cls(
            cell=config.str("cell", None, choices=tuple(CELL_GATES)), hidden_size=config.int("hidden_size", minimum=1),
            directions=dirs, proj_size=config.int("proj_size", 0),
            activations=read_activations(config.raw("activations", []), name),
            reverse=config.bool("reverse", False), go_backwards=config.bool("go_backwards", False),
            return_sequences=config.bool("return_sequences", True),
            merge_mode=config.str("merge_mode", "concat"), masked_output=config.str("masked_output", "zero"),
            clip=clip, input_forget=config.bool("input_forget", False),
            linear_before_reset=config.bool("linear_before_reset", True), name=name,
            return_state=config.bool("return_state", False), use_mask=config.bool("use_mask", True))


def read_activations(value, where):
    """[[name, alpha, beta], ...] (as written by save) or [name, ...]; alpha/beta finite."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: 'activations' must be a list, got {value!r:.60}")
    out = []
    for a in value:
        if isinstance(a, str):
            out.append(a)
        elif (isinstance(a, list) and len(a) == 3 and isinstance(a[0], str)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in a[1:])):
            out.append(tuple(a))
        else:
            raise ValueError(f"{where}: activation {a!r:.60} is not a name or [name, alpha, beta] "
                             "with finite alpha and beta")
    return tuple(out)


# -- the NumPy reference: the specification the compiled kernels must match ---------------------

def _clip(x, clip):
    return x if clip is None else np.clip(x, -clip, clip)


# A network whose state grows without bound (e.g. GRU gates with the exponential activation) gives
# inf and then nan here exactly as the kernels' IEEE arithmetic does; that is the result, not a
# fault of the reference, so NumPy's overflow / invalid-value warnings are off for the cell math.
@np.errstate(over="ignore", invalid="ignore")
def cell_step(layer: Recurrent, w, x_t, h, c):
    """One step of one direction for a batch. x_t (B, I), h (B, H_out), c (B, H) or None.

    Returns (h', c'). The cell math, exactly as in kernels/README.md."""
    H = layer.hidden_size
    zero = np.zeros(layer.gates * H, f32)
    b_ih = zero if w.b_ih is None else w.b_ih
    b_hh = zero if w.b_hh is None else w.b_hh
    xw = x_t @ w.w_ih.T + b_ih  # (B, G*H)
    hw = h @ w.w_hh.T + b_hh  # (B, G*H)
    act = layer.activations
    clip = layer.clip

    if layer.cell == "rnn":
        # h' = f(W_ih x + b_ih + W_hh h + b_hh)
        return apply_activation(act[0], _clip(xw + hw, clip)), None

    if layer.cell == "lstm":
        a = xw + hw
        a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))
        p = np.zeros((3, H), f32) if w.peephole is None else w.peephole  # rows i|f|o
        i = apply_activation(act[0], _clip(a_i + p[0] * c, clip))
        if layer.input_forget:
            f = (1 - i).astype(f32)
        else:
            f = apply_activation(act[0], _clip(a_f + p[1] * c, clip))
        g = apply_activation(act[1], _clip(a_g, clip))
        c_new = f * c + i * g  # c' = f*c + i*g
        o = apply_activation(act[0], _clip(a_o + p[2] * c_new, clip))
        m = o * apply_activation(act[2], c_new)  # m = o * h(c')
        h_new = m @ w.w_hr.T if w.w_hr is not None else m  # projection: h' = W_hr m
        return h_new.astype(f32), c_new.astype(f32)

    # GRU
    x_r, x_z, x_n = (xw[:, k * H:(k + 1) * H] for k in range(3))
    h_r, h_z, h_n = (hw[:, k * H:(k + 1) * H] for k in range(3))
    r = apply_activation(act[0], _clip(x_r + h_r, clip))
    z = apply_activation(act[0], _clip(x_z + h_z, clip))
    if layer.linear_before_reset:
        # n = g(W_in x + b_in + r * (W_hn h + b_hn))
        n = apply_activation(act[1], _clip(x_n + r * h_n, clip))
    else:
        # n = g(W_in x + b_in + W_hn (r * h) + b_hn)
        w_hn = w.w_hh[2 * H:3 * H]
        b_hn = b_hh[2 * H:3 * H]
        n = apply_activation(act[1], _clip(x_n + (r * h) @ w_hn.T + b_hn, clip))
    return ((1 - z) * n + z * h).astype(f32), None  # h' = (1 - z) n + z h


def run_direction(layer: Recurrent, w, x, lengths, backward, h0, c0):
    """Scan one direction. x (B, T, I); lengths: (B,) valid steps per row, or a bool (B, T) mask
    (fastrnn.layers.mask); backward: from the last step down to 0. A masked step leaves the state
    alone. Returns y (B, T, H_out) with outputs at their own time positions and 0 at masked
    steps, and the final (h, c) (the state after each row's last processed step)."""
    B, T, _ = x.shape
    valid_steps = step_mask(lengths, T)
    h, c = h0.astype(f32), None if c0 is None else c0.astype(f32)
    y = np.zeros((B, T, layer.output_size_per_direction), f32)
    steps = range(T - 1, -1, -1) if backward else range(T)
    for t in steps:
        valid = valid_steps[:, t, None]  # masked steps leave the state alone
        h_new, c_new = cell_step(layer, w, x[:, t], h, c)
        h = np.where(valid, h_new, h)
        if c is not None:
            c = np.where(valid, c_new, c)
        y[:, t] = np.where(valid, h_new, 0)
    return y, h, c


def holds_output(layer: Recurrent) -> bool:
    """Keras (zero_output_for_mask=False): a returned sequence repeats, at a masked step, the
    output of the step before it in scan order (0 before the first real step)."""
    return layer.masked_output == "hold" and not (layer.reverse or layer.bidirectional)


def recurrent(layer: Recurrent, x, lengths=None, state=None):
    """x (B, T, I) -> (y, state). ``lengths``: (B,) valid steps per row, or a bool (B, T) mask
    (True = a real step, anywhere in the row), or None (all steps).

    y: (B, T, F) if return_sequences else (B, F), F = layer.output_size.
    state: h (D, B, H_out) for rnn/gru, (h, c) with c (D, B, H) for lstm; None = zeros."""
    B, T, _ = x.shape
    D, Ho, H = layer.num_directions, layer.output_size_per_direction, layer.hidden_size
    mask = np.ones((B, T), bool) if lengths is None else step_mask(np.asarray(lengths), T)
    if state is None:
        h0 = np.zeros((D, B, Ho), f32)
        c0 = np.zeros((D, B, H), f32) if layer.cell == "lstm" else None
    elif layer.cell == "lstm":
        h0, c0 = state
    else:
        h0, c0 = state, None

    ys, hs, cs = [], [], []
    for d, w in enumerate(layer.directions):
        backward = d == 1 or layer.reverse or layer.go_backwards
        y, h, c = run_direction(layer, w, x, mask, backward, h0[d], None if c0 is None else c0[d])
        scan_mask = mask
        if layer.go_backwards:
            y, scan_mask = y[:, ::-1], mask[:, ::-1]  # Keras: output[t] is the t-th step of the reversed scan
        if holds_output(layer):
            for t in range(1, T):  # Keras: a masked step repeats the previous output of the scan
                y[:, t] = np.where(scan_mask[:, t, None], y[:, t], y[:, t - 1])
        ys.append(y)
        hs.append(h)
        cs.append(c)

    outs = ys if layer.return_sequences else hs
    if D == 1:
        out = outs[0]
    elif layer.merge_mode == "concat":
        out = np.concatenate(outs, axis=-1)
    elif layer.merge_mode == "sum":
        out = outs[0] + outs[1]
    elif layer.merge_mode == "mul":
        out = outs[0] * outs[1]
    else:  # ave
        out = (outs[0] + outs[1]) / 2
    h_n = np.stack(hs)
    new_state = (h_n, np.stack(cs)) if layer.cell == "lstm" else h_n
    return np.ascontiguousarray(out, dtype=f32), new_state


def expand_compacted(layer: Recurrent, y, mask):
    """The sequence output of a run over compacted rows -> the output of the masked run.

    ``mask`` bool (B, T); ``y`` (B, T, F) is what the layer returned (return_sequences) for the
    rows with their real steps packed to the left (fastrnn.layers.mask.compact) and lengths =
    the real-step counts. Since a masked step leaves the state unchanged, the k-th output of
    the packed run is the output at the k-th real step of the masked run; this puts each one
    back at its position and fills the masked steps as ``recurrent`` does (0, or the previous
    output of the scan for 'hold' layers). Equal to ``recurrent(layer, x, mask)``."""
    B, T = mask.shape
    if T == 0:
        return y
    scan_mask = mask[:, ::-1] if layer.go_backwards else mask
    done = np.cumsum(scan_mask, axis=1)  # real steps scanned so far, at each output position
    if layer.go_backwards:
        # the packed run's j-th step of the reversed scan is at T - count + j (outputs in scan order)
        source = T - done[:, -1:] + done - 1
    else:
        source = done - 1  # the packed run writes real step k at position k
    out = np.take_along_axis(y, np.clip(source, 0, T - 1)[:, :, None], axis=1)
    keep = done > 0 if holds_output(layer) else scan_mask
    out[~keep] = 0.0
    return out
