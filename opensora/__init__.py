"""Open-Sora (hpcaitech) 1.0 / 1.1 / 1.2 on MindSpore."""

__version__ = "0.1.0"
