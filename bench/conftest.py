"""pytest-benchmark configuration for the kernel regression suite (bench/test_bench_kernels.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
