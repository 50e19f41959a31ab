"""The reference never imports torch (issue #3's definition of done)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULES = [
    "reference",
    "reference.graphs",
    "reference.losses",
    "reference.power_iteration",
    "reference.gha",
    "reference.ema",
    "reference.metrics",
    "reference.train",
]


def test_reference_does_not_import_torch():
    code = f"import {', '.join(MODULES)}; import sys; assert 'torch' not in sys.modules, 'torch'"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
