"""What the C export understands: a model's optimized graph read as a chain of stages, or a
refusal naming the node and the layer.

A chain (one input, one output, each node reading the previous one's only output) of:

- Embedding (first; ``mask_zero`` makes id 0 a padded step) or Masking (first, on features);
  without either, the model reads feature vectors (a one-hot model among them);
- recurrent layers: RNN / LSTM / GRU, any activations of fastrnn.activations, clip, LSTM
  projection, peepholes and coupled input-forget gate, GRU with either reset variant,
  bidirectional (concat / sum / mul / ave), reverse and go_backwards, returning sequences or
  their final state; masked steps zero or hold the output as fastrnn.layers.recurrent says;
- Dense (linear, softmax, log_softmax or an element-wise activation), Activation (element-wise,
  GELU, softmax / log_softmax over the features), LayerNormalization, BatchNormalization;
- Select of the last time step (``out[:, -1]``).

The graph is the execution plan's (fastrnn.graph.optimize: Dropout and identities gone, a Dense
followed by its activation fused), so a model exports as it runs. A chain whose recurrent layers
all run forward in time is *causal*: the C reads it one step at a time (``NAME_step``); one with
a bidirectional, reverse or go_backwards layer is read whole (``NAME_predict`` only, over at most
``NAME_MAX_STEPS`` steps held in the state struct).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..activations import ACTIVATION_CODES
from ..graph import ref_str, type_name
from ..layers import (Activation, BatchNormalization, Dense, Embedding, LayerNormalization, Masking, Recurrent,
                      Select)

#: element-wise functions of an Activation layer the C implements (fastrnn.activations + GELU)
ELEMENTWISE = tuple(ACTIVATION_CODES) + ("gelu", "gelu_tanh")
SUPPORTED = ("Embedding (first), Masking (first), SimpleRNN / LSTM / GRU (one or two directions), Dense, "
             "Activation (element-wise, GELU, softmax / log_softmax over the features), LayerNormalization, "
             "BatchNormalization, Select of the last time step")


class ExportError(ValueError):
    """The model (or one of its nodes) cannot be written as C: the message names the node,
    its layer and what to do."""


def refuse(node, why):
    return ExportError(f"export-c: node {node.name!r} ({type_name(node.layer)}) {why}")


@dataclass
class Stage:
    """One node of the chain as the C runs it. ``sequence``: its input has a time axis.
    ``in_size`` / ``out_size``: features per step (or of the vector) in and out."""

    index: int
    node: object
    kind: str  # embedding | masking | recurrent | dense | activation | layer_norm | batch_norm | select
    in_size: int
    out_size: int
    sequence: bool
    reduces: bool = False  # the time axis ends here (recurrent final state, Select)
    state_offset: int = 0  # recurrent: where its directions' h (and c) start in the state vector

    @property
    def layer(self):
        return self.node.layer

    @property
    def name(self):
        return self.node.name


@dataclass
class Chain:
    """A model read as stages (see the module doc)."""

    stages: list
    takes_tokens: bool
    input_size: int  # features per step; for token models the number of embedding rows
    output_size: int
    output_per_step: bool  # the output keeps the time axis (one output vector per step)
    causal: bool  # every recurrent layer runs forward in time: NAME_step exists
    state_size: int  # floats of recurrent state
    mask: Optional[str] = None  # "zero_id" (Embedding mask_zero) | "value" (Masking) | None
    mask_value: float = 0.0
    fixed_steps: Optional[int] = None  # the model's input declares this many steps

    @property
    def reducer(self):
        return next((s for s in self.stages if s.reduces), None)


def read_chain(model) -> Chain:
    """The chain of ``model``'s execution graph, or ExportError naming what cannot be exported."""
    g = model.plan().graph
    if len(g.inputs) != 1:
        raise ExportError(f"export-c: model {model.name!r} has {len(g.inputs)} inputs {model.input_names}; the C "
                          "export runs chains of layers with one input")
    if len(g.outputs) != 1:
        raise ExportError(f"export-c: model {model.name!r} has {len(g.outputs)} outputs {model.output_names}; the C "
                          "export runs chains of layers with one output")
    inp = g.inputs[0]
    prev = (inp.name, 0)
    for node in g.nodes:
        if node.inputs != [prev]:
            reads = ", ".join(ref_str(r) for r in node.inputs)
            raise refuse(node, f"reads {reads}: the C export runs chains of layers, each reading the previous "
                               f"one's only output ({ref_str(prev)} here)")
        if g.num_outputs[node.name] != 1:
            raise refuse(node, "returns its states as extra outputs (return_state): the C export runs chains, "
                               "each layer with one output")
        prev = (node.name, 0)
    if g.outputs[0] != prev:
        raise ExportError(f"export-c: the model's output {ref_str(g.outputs[0])!r} is not its last node "
                          f"{prev[0]!r}; the C export runs chains")

    takes_tokens = inp.dtype == "int64"
    if takes_tokens:
        if len(inp.shape) != 1:
            raise ExportError(f"export-c: input {inp.name!r} holds token ids of shape {inp.shape}; the C export reads "
                              "one id per time step (shape (time,))")
        fixed_steps = inp.shape[0]
    else:
        if len(inp.shape) != 2 or inp.shape[1] is None:
            raise ExportError(f"export-c: input {inp.name!r} has shape {inp.shape}; the C export reads a sequence of "
                              "feature vectors of a fixed size (shape (time, features))")
        fixed_steps = inp.shape[0]

    stages, state_size, mask, mask_value = [], 0, None, 0.0
    sequence = True
    size = None if takes_tokens else inp.shape[1]
    input_size = size
    for i, node in enumerate(g.nodes):
        layer = node.layer
        out_shape = g.shapes[(node.name, 0)]
        out_size = out_shape[-1] if out_shape else None
        if out_size is None:
            raise refuse(node, f"has output shape {out_shape}: the C export needs a fixed number of features")
        if isinstance(layer, Embedding):
            if i != 0:
                raise refuse(node, "is not the first layer: an Embedding reads the token ids of the input")
            stage = Stage(i, node, "embedding", layer.vocab_size, layer.output_size, True)
            input_size = layer.vocab_size
            if layer.mask_zero:
                mask = "zero_id"
        elif isinstance(layer, Masking):
            if i != 0:
                raise refuse(node, "is not the first layer: the C export masks the model's input only")
            stage = Stage(i, node, "masking", size, size, True)
            mask, mask_value = "value", float(layer.mask_value)
        elif isinstance(layer, Recurrent):
            if not sequence:
                raise refuse(node, "reads a vector without a time axis")
            if len(node.inputs) != 1:
                raise refuse(node, "takes its initial state from other nodes; the C export keeps each recurrent "
                                   "layer's state in the state struct")
            for act in layer.activations:
                if act.name not in ACTIVATION_CODES:  # pragma: no cover - Recurrent only takes these
                    raise refuse(node, f"uses the activation {act.name!r}, which the C export does not implement")
            stage = Stage(i, node, "recurrent", layer.input_size, layer.output_size, True,
                          reduces=not layer.return_sequences, state_offset=state_size)
            state_size += sum(layer.state_sizes())
        elif isinstance(layer, Dense):
            if layer.activation not in ("linear", "softmax", "log_softmax") + tuple(ACTIVATION_CODES):
                raise refuse(node, f"has the activation {layer.activation!r}, which the C export does not implement")
            stage = Stage(i, node, "dense", layer.input_size, layer.output_size, sequence)
        elif isinstance(layer, Activation):
            if layer.custom:
                raise refuse(node, f"is the custom function {layer.function!r} (Python code): it cannot be "
                                   "written as C; supported: " + SUPPORTED)
            if layer.function in ("softmax", "log_softmax"):
                rank = len(out_shape) + 1  # batch included
                if layer.axis not in (-1, rank - 1):
                    raise refuse(node, f"takes {layer.function} over axis {layer.axis}; the C export computes it "
                                       "over the features (the last axis) only")
            elif layer.function not in ELEMENTWISE:  # pragma: no cover - identity is removed by the passes
                raise refuse(node, f"computes {layer.function!r}, which the C export does not implement")
            stage = Stage(i, node, "activation", size, size, sequence)
        elif isinstance(layer, LayerNormalization):
            stage = Stage(i, node, "layer_norm", layer.size, layer.size, sequence)
        elif isinstance(layer, BatchNormalization):
            stage = Stage(i, node, "batch_norm", layer.size, layer.size, sequence)
        elif isinstance(layer, Select):
            in_shape = g.shapes[node.inputs[0]]
            axis = layer.axis % (len(in_shape) + 1)
            if not sequence or len(in_shape) != 2 or axis != 1 or layer.index != -1:
                raise refuse(node, f"selects index {layer.index} of axis {layer.axis} of a tensor of shape "
                                   f"{in_shape}; the C export selects the last time step only (out[:, -1])")
            stage = Stage(i, node, "select", size, size, True, reduces=True)
        else:
            raise refuse(node, "is not a layer the C export implements; supported: " + SUPPORTED)
        if stage.kind != "embedding" and size is not None and stage.in_size != size:  # pragma: no cover
            raise refuse(node, f"reads {size} features but expects {stage.in_size}")
        if stage.reduces and not sequence:  # pragma: no cover - graph shapes forbid it
            raise refuse(node, "reduces a tensor that has no time axis")
        stages.append(stage)
        if stage.reduces:
            sequence = False
        size = out_size
    rec = [s for s in stages if s.kind == "recurrent"]
    causal = all(s.layer.per_step for s in rec)
    return Chain(stages=stages, takes_tokens=takes_tokens, input_size=input_size, output_size=size,
                 output_per_step=sequence, causal=causal, state_size=state_size, mask=mask, mask_value=mask_value,
                 fixed_steps=fixed_steps)
