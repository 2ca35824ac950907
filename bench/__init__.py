"""Benchmarks (never run in CI). See README "Performance" for the workflow."""
