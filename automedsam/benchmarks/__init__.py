"""Benchmarks run by hand on real data (not tests); their printed figures go to documentation/benchmarks.md."""
