"""Random layers and models for tests, built directly in fastrnn's internal layout; ONNX files
written by either of PyTorch's exporters."""
import signal

import numpy as np
import pytest

from conftest import require
from fastrnn.layers import CELL_GATES, DirectionWeights, Recurrent


def random_recurrent(rng, cell="lstm", input_size=5, hidden_size=7, bidirectional=False, proj_size=0,
                     bias=True, peephole=False, scale=0.5, **options):
    G = CELL_GATES[cell]
    H, Ho = hidden_size, proj_size or hidden_size
    dirs = []
    for _ in range(2 if bidirectional else 1):
        def r(*shape):
            return (rng.standard_normal(shape) * scale).astype(np.float32)

        dirs.append(DirectionWeights(
            w_ih=r(G * H, input_size), w_hh=r(G * H, Ho),
            b_ih=r(G * H) if bias else None, b_hh=r(G * H) if bias else None,
            w_hr=r(proj_size, H) if proj_size else None,
            peephole=r(3, H) if peephole else None))
    return Recurrent(cell=cell, hidden_size=H, directions=dirs, proj_size=proj_size, **options)


def random_state(rng, layer, batch):
    parts = [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in layer.state_shapes(batch)]
    return tuple(parts) if layer.cell == "lstm" else parts[0]


# -- ONNX files written by PyTorch's two exporters ---------------------------------------------------

# torch.onnx.export(..., dynamo=False) is the TorchScript exporter; the default (dynamo=True) traces
# with torch.export and needs onnxscript. Tests of exported files run over both.
EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]


def export_onnx(module, args, path, input_names, output_names, dynamic=None, dynamo=False, opset=17):
    """torch.onnx.export with either exporter. ``dynamic``: {input name: {axis: size name}}, the
    TorchScript exporter's dynamic_axes; for the dynamo exporter the same names become
    torch.export.Dim (one Dim per name, shared between inputs), as a user would write
    ``dynamic_shapes``. The dynamo exporter fixes what torch.export specialises (the time axis of
    a bare nn.RNN / LSTM / GRU, ...): read the file's declared shapes with ``onnx_input_shape``."""
    import warnings

    import torch

    if dynamo:
        require("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic, opset_version=opset)
            return
        dims = {}
        shapes = tuple({axis: dims.setdefault(n, torch.export.Dim(n)) for axis, n in (dynamic or {}).get(i, {}).items()}
                       for i in input_names)
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
                          dynamic_shapes=shapes, verbose=False)


def onnx_input_shape(path, name, wanted):
    """``wanted`` with every size the ONNX file declares fixed for input ``name`` put in its place
    (the sizes a run of that file must use)."""
    import onnx

    info = next(i for i in onnx.load(str(path), load_external_data=False).graph.input if i.name == name)
    dims = info.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") else w for d, w in zip(dims, wanted))


def assert_runs_on_the_plan(session):
    """A fastrnn.onnx.InferenceSession that translated its graph to a Model (not the interpreter)."""
    assert session.model is not None and session.fallback_reason is None, session.fallback_reason


def default_sigint():
    """preexec_fn of a child process that gets SIGINT: SIGINT as a terminal gives it. A shell starts
    background jobs (``pytest ... &``, nohup, some CI runners) with SIGINT ignored, children inherit
    that, and a Python started so installs no KeyboardInterrupt handler: Ctrl-C tests would hang or
    see the call finish."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
