"""Benchmarks: a thin dispatcher over benchmarks/*.py.

    python scripts/benchmark.py sample --config configs/tiny/inference/sample_t2v.yaml \
        --warmup-count 1 --eval-count 2 --benchmark-save-path outputs/bench_sample.json
    python scripts/benchmark.py vae|vae_graphs|stdit|train|hunyuan_vae|precision|mmdit|mmdit_sp ...   (see each module's docstring)
"""
from __future__ import annotations

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

KINDS = ("sample", "vae", "vae_graphs", "stdit", "train", "hunyuan_vae", "precision", "mmdit", "mmdit_sp")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in KINDS:
        print(f"usage: scripts/benchmark.py {{{'|'.join(KINDS)}}} [options]   (--help after the kind for its options)",
              file=sys.stderr)
        return 2
    kind, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(f"benchmarks.{kind}")
    except ModuleNotFoundError as err:
        print(f"error: benchmarks/{kind}.py is not available ({err})", file=sys.stderr)
        return 1
    from opensora.utils.cli import script_main

    result = script_main(module.run)(rest)
    # a run returns its report (a dict) or an exit code; sys.exit(dict) would print it again and exit 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    from opensora.utils.cli import install_signal_handlers

    install_signal_handlers()
    sys.exit(main())
