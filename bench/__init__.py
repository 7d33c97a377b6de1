"""Benchmarks: side-by-side comparisons reported as ratios (see docs/benchmarks.md)."""
