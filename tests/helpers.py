"""Random layers and models for tests, built directly in fastrnn's internal layout."""
import numpy as np

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
