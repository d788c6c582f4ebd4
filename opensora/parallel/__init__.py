"""Parallelism beyond data parallel: sequence parallel (``sequence.py``)."""
