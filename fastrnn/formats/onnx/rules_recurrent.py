"""Recurrent nodes: ONNX RNN / LSTM / GRU -> fastrnn Recurrent layers, with their glue.

The node conventions (gate orders, bias splits, activations, peepholes) are recurrent.py's; this
rule fits the node into the graph: the time-major layouts absorbed, zero initial states
(ConstantOfShape) dropped, initial-state tensors passed per direction, Y_h / Y_c read as
return_state outputs or, when only Y_h is used, as the layer's final-state output
(return_sequences=False). onnxruntime's DynamicQuantizeLSTM reuses it (rules_quantized.py).
"""
from __future__ import annotations

import numpy as np

from .recurrent import RECURRENT_OPS, layers_for_node
from .values import Const, RuleFamily, SeqLens, Tensor, Untranslatable, WrongBatchAxis, Zeros

RULES = RuleFamily("recurrent")


# tested by tests/test_onnx_graphs.py::test_every_cell_direction_and_peephole_against_onnxruntime
#       and tests/test_onnx.py::test_conformance_case (the onnx wheel's 18 cases),
# the glue by tests/test_onnx_graphs.py::test_rule_rnn_layout_glue_is_absorbed,
# the states by tests/test_onnx_graphs.py::test_rule_initial_states_and_sequence_lens
@RULES.rule("RNN", "LSTM", "GRU")
def recurrent(tr, node, ins):
    """RNN / LSTM / GRU -> Recurrent layers (recurrent.py reads the node's weights and attributes):
    the time-major layouts absorbed, zero initial states dropped, initial-state tensors passed per
    direction, Y (T, D, B, H) / Y_h / Y_c as views of the layers' batch-major outputs."""
    cell = RECURRENT_OPS[node.op_type]
    weights = {}
    for k in (1, 2, 3, 7):
        if k < len(ins) and ins[k] is not None:
            if not isinstance(ins[k], Const):
                raise Untranslatable(f"{node.where()}: weights computed at run time (input {k})")
            weights[node.inputs[k]] = ins[k].value
    layout = int(node.attrs.get("layout", 0))
    x = ins[0]
    if not isinstance(x, Tensor) or len(x.axes) != 3:
        raise Untranslatable(f"{node.where()}: X is not a 3-D tensor")
    b_pos = 1 if layout == 0 else 0
    x = tr.canonical(x, node.name)
    if x.axes[b_pos] != 0:
        raise WrongBatchAxis(f"{node.where()}: X's batch axis")
    steps = node.attrs.get("_unrolled_steps")  # an RNN rolled back from its T steps (unrolled.py)
    if steps is not None and tr.onnx_dims(x)[1 - b_pos] != steps:
        raise Untranslatable(f"{node.where()}: the exporter unrolled this RNN over {steps} steps, but the "
                             "length of its input is only known at run time")
    outs = [o if o and (tr.uses.get(o) or o in {i.name for i in tr.g.outputs}) else "" for o in node.outputs]
    need_y = len(outs) > 0 and bool(outs[0])
    need_h = len(outs) > 1 and bool(outs[1])
    need_c = len(outs) > 2 and bool(outs[2])
    try:
        parts = layers_for_node(node, weights, tr.g.source, return_sequences=need_y, name=node.name)
    except Exception as exc:  # noqa: BLE001 - ModelFormatError / UnsupportedLayerError: keep the reason
        raise Untranslatable(str(exc)) from None
    D = sum(p.num_directions for p in parts)
    H = parts[0].hidden_size
    lengths_in = ins[4] if len(ins) > 4 else None
    if lengths_in is not None:
        if not isinstance(lengths_in, SeqLens):
            raise Untranslatable(f"{node.where()}: sequence_lens computed inside the graph")
        if x.ref[0] not in {i.name for i in tr.model_inputs}:
            raise Untranslatable(f"{node.where()}: sequence_lens for an X that is not a graph input")
        prev = tr.lengths.get(x.ref[0])
        if prev is not None and prev != lengths_in.input_name:
            raise Untranslatable(f"{node.where()}: two sequence_lens for one input")
        tr.lengths[x.ref[0]] = lengths_in.input_name
    elif x.ref[0] in tr.lengths:
        raise Untranslatable(f"{node.where()}: reads an input with sequence_lens without them")
    # initial states: zeros are the default; tensors become per-direction inputs (B, H)
    states = []
    for k, name in ((5, "initial_h"), (6, "initial_c")):
        v = ins[k] if len(ins) > k else None
        if k == 6 and cell != "lstm":
            continue
        if v is None or (isinstance(v, Zeros) and v.fill == 0.0) or (
                isinstance(v, Const) and not np.any(v.value)):
            states.append(None)
        elif isinstance(v, Tensor):
            if len(v.axes) != 3:
                raise Untranslatable(f"{node.where()}: {name} is not 3-D")
            d_axis = 0 if layout == 0 else 1
            per = []
            for d in range(D):
                part = tr.plain(tr.take(node, v, d_axis, d, keep=False), f"{node.name}/{name}{d}")
                per.append(part.ref)
            states.append(per)
        else:
            raise Untranslatable(f"{node.where()}: {name} is a {v.__class__.__name__}")
    if any(s is not None for s in states) and any(s is None for s in states):
        raise Untranslatable(f"{node.where()}: initial_h and initial_c must both be given (or neither)")
    state_refs = [] if states[0] is None else states
    only_h = need_h and not need_y and not need_c and len(parts) == 1
    ys, hs, cs = [], [], []
    d0 = 0
    for p in parts:
        p.return_sequences = need_y
        p.return_state = not only_h and (need_h or need_c)
        extra = []
        for d in range(d0, d0 + p.num_directions):
            for s in state_refs:
                extra.append(s[d])
        d0 += p.num_directions
        refs = tr.add(p.name, p, [x.ref] + extra)
        if p.return_sequences:
            ys.append(refs[0])
        if only_h:
            hs.append(refs[0])
        elif p.return_state:
            per = 2 if cell == "lstm" else 1
            for d in range(p.num_directions):
                hs.append(refs[1 + d * per])
                if cell == "lstm":
                    cs.append(refs[2 + d * per])
    result = []

    def joined(refs, suffix):
        return refs[0] if len(refs) == 1 else tr.joined(f"{node.name}/{suffix}", refs)

    if need_y:
        y = joined(ys, "Y")
        axes = [1, 2, 0, 3] if layout == 0 else [0, 1, 2, 3]
        result.append(Tensor(y, tr.shapes[y], (D, H), axes, "float32"))
    else:
        result.append(None)
    state_axes = [1, 0, 2] if layout == 0 else [0, 1, 2]
    for want, refs, suffix in ((need_h, hs, "Y_h"), (need_c, cs, "Y_c")):
        if want:
            r = joined(refs, suffix)
            result.append(Tensor(r, tr.shapes[r], (D, H), state_axes, "float32"))
        else:
            result.append(None)
    return result[:len(node.outputs)]
