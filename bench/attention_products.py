"""Attention's two products between activations (q k^T, weights v) three ways, one thread, medians
(issue 23: why CompiledBackend.batch_products packs the right operand per call):

    python -m bench.attention_products            # shapes of typical attention heads
    python -m bench.attention_products --quick    # two small shapes (a check that it runs)

- blas: NumPy's matmul on OpenBLAS, limited to one thread (OPENBLAS_NUM_THREADS=1 is set here
  before NumPy loads): what the NumPy reference runs, on one core;
- einsum: np.einsum without optimize (NumPy's own loops, single-threaded);
- packed: fastrnn's compiled backend (each b[i] packed, then the packed matmul), threads=1.
Times in ms; the ratios are to blas. Meaningless on a loaded machine.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy loads OpenBLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fastrnn.backends import CompiledBackend, get_backend  # noqa: E402

SHAPES = [(1, 50, 64), (8, 50, 64), (16, 100, 128), (64, 100, 128), (4, 300, 64), (32, 200, 256)]
QUICK = [(1, 20, 16), (4, 30, 32)]


def median_ms(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes only")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    be = get_backend()
    if not isinstance(be, CompiledBackend):
        raise SystemExit(f"needs a compiled backend, the current one is {be.name!r}")
    rng = np.random.default_rng(0)
    print(f"backend {be.name}; batch x time x dim; ms (ratio to blas)")
    for B, T, d in (QUICK if args.quick else SHAPES):
        q, k, v = (rng.standard_normal((B, T, d)).astype(np.float32) for _ in range(3))
        ways = {
            "blas": lambda: (q @ np.swapaxes(k, 1, 2)) @ v,
            "einsum": lambda: np.einsum("bqk,bkd->bqd", np.einsum("bqd,bkd->bqk", q, k, optimize=False), v,
                                        optimize=False),
            "packed": lambda: be.batch_products(be.batch_products(q, k), np.swapaxes(v, 1, 2)),
        }
        ref = ways["blas"]().astype(np.float64)
        for name, f in ways.items():
            err = np.abs(f() - ref).max() / max(1.0, np.abs(ref).max())
            assert err < 1e-4, (name, err)
        ms = {name: median_ms(f, args.repeats) for name, f in ways.items()}
        print(f"B{B} T{T} d{d}: " + ", ".join(f"{n} {t:.3f} ({t / ms['blas']:.2f}x)" for n, t in ms.items()))


if __name__ == "__main__":
    main()
