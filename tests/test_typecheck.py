"""The committed type-checking configuration holds: `mypy` passes (settings: [tool.mypy] in pyproject.toml)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (a test dependency: pip install -e .[test])"
)
def test_mypy():
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, f"mypy failed (run `mypy` from the repository root):\n{(r.stdout + r.stderr)[-6000:]}"
