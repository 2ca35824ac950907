"""Layers in fastrnn's one internal layout.

Every importer (PyTorch, Keras, ONNX, the native file) produces these dataclasses; the kernels only
ever see this layout. Weights are read-only float32 arrays in PyTorch's orientation
(``out = W @ in``) and PyTorch's gate order:

- LSTM gates ``i|f|g|o`` (G = 4), GRU gates ``r|z|n`` (G = 3), RNN one block (G = 1).
- ``H`` = hidden_size; ``H_out`` = proj_size if proj_size else H (only LSTM has a projection).

A layer holds weights only. Running state (h, c) is passed in and returned, never stored here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .activations import Activation

CELL_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
DEFAULT_ACTIVATIONS = {
    "rnn": ("tanh",),
    "lstm": ("sigmoid", "tanh", "tanh"),  # f: gates i,f,o   g: cell input   h: on c'
    "gru": ("sigmoid", "tanh"),  # f: gates r,z   g: candidate n
}
MERGE_MODES = ("concat", "sum", "mul", "ave")
DENSE_ACTIVATIONS = ("linear", "softmax", "sigmoid", "tanh", "relu")


def frozen_array(a, shape=None, name="array") -> np.ndarray:
    """float32 C-contiguous read-only view/copy of ``a``, checked against ``shape`` (None = any)."""
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    arr = arr.view()  # a view: never change the flags of the caller's array
    arr.flags.writeable = False
    return arr


@dataclass
class Embedding:
    """Token lookup: ids (B, T) -> (B, T, E). ``mask_zero``: id 0 is padding (Keras)."""

    weight: np.ndarray  # (V, E)
    mask_zero: bool = False
    name: str = "embedding"

    kind = "embedding"

    def __post_init__(self):
        self.weight = frozen_array(self.weight, name=f"{self.name}.weight")
        if self.weight.ndim != 2:
            raise ValueError(f"{self.name}.weight must be 2-D (vocab, dim), got {self.weight.shape}")

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def output_size(self) -> int:
        return self.weight.shape[1]

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_size,)

    def count_params(self) -> int:
        return int(self.weight.size)

    def arrays(self):
        return {"weight": self.weight}

    def config(self):
        return {"mask_zero": self.mask_zero}


@dataclass
class Masking:
    """Keras Masking: a step whose features all equal ``mask_value`` is padding."""

    mask_value: float = 0.0
    name: str = "masking"

    kind = "masking"

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def count_params(self) -> int:
        return 0

    def arrays(self):
        return {}

    def config(self):
        return {"mask_value": float(self.mask_value)}


@dataclass
class Dense:
    """Affine map on the last axis: y = act(x @ W.T + b). W (out, in), b (out,) or None."""

    weight: np.ndarray  # (out, in)
    bias: Optional[np.ndarray] = None  # (out,)
    activation: str = "linear"
    name: str = "dense"

    kind = "dense"

    def __post_init__(self):
        self.weight = frozen_array(self.weight, name=f"{self.name}.weight")
        if self.weight.ndim != 2:
            raise ValueError(f"{self.name}.weight must be 2-D (out, in), got {self.weight.shape}")
        if self.bias is not None:
            self.bias = frozen_array(self.bias, (self.weight.shape[0],), f"{self.name}.bias")
        if self.activation != "softmax":
            self.activation = Activation.of(self.activation).name if self.activation != "linear" else "linear"

    @property
    def input_size(self) -> int:
        return self.weight.shape[1]

    @property
    def output_size(self) -> int:
        return self.weight.shape[0]

    def output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_size,)

    def count_params(self) -> int:
        return int(self.weight.size + (0 if self.bias is None else self.bias.size))

    def arrays(self):
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def config(self):
        return {"activation": self.activation}


@dataclass
class DirectionWeights:
    """Weights of one direction of a recurrent layer (PyTorch layout and gate order).

    w_ih (G*H, I); w_hh (G*H, H_out); b_ih, b_hh (G*H,) or None (absent, not counted as
    parameters: Keras has a single bias); w_hr (P, H) LSTM projection or None;
    peephole (3, H) LSTM peepholes, rows i|f|o, or None.
    """

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: Optional[np.ndarray] = None
    b_hh: Optional[np.ndarray] = None
    w_hr: Optional[np.ndarray] = None
    peephole: Optional[np.ndarray] = None

    FIELDS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "peephole")

    def arrays(self):
        return {k: getattr(self, k) for k in self.FIELDS if getattr(self, k) is not None}


@dataclass
class Recurrent:
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
    masked_output: what a returned sequence holds at padded steps (t >= length): "zero"
        (PyTorch, ONNX, Keras inside Bidirectional) or "hold" (repeat the last valid output, Keras).
    clip: ONNX cell clip (None = no clipping); input_forget: ONNX LSTM coupled input/forget gate.
    linear_before_reset: GRU only. True: n = g(W_in x + b_in + r*(W_hn h + b_hn)) (PyTorch,
        Keras reset_after=True, ONNX linear_before_reset=1). False: n = g(W_in x + b_in +
        W_hn (r*h) + b_hn) (Keras reset_after=False, ONNX default).
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

    kind = "recurrent"

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

    def output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], self.output_size)
        return (self.output_size,)

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
        }


LAYER_TYPES = {cls.kind: cls for cls in (Embedding, Masking, Dense, Recurrent)}
