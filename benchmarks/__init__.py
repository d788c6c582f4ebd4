"""Benchmarks (not tests): they print figures and write JSON reports; `scripts/benchmark.py` runs them."""
