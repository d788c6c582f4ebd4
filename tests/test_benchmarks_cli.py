"""Every benchmark kind runs through the dispatcher ``scripts/benchmark.py <kind>`` (its ``--help`` at least)."""
import subprocess
import sys

import pytest

from scripts.benchmark import KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_benchmark_kind_help(kind):
    proc = subprocess.run([sys.executable, "scripts/benchmark.py", kind, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
