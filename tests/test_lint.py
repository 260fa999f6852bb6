"""The committed style configuration holds: `ruff check` and `ruff format --check` pass (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args):
    r = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)
    assert "No module named ruff" not in r.stderr, "ruff is a test dependency: pip install -e .[test]"
    assert r.returncode == 0, f"ruff {' '.join(args)} failed (run `ruff {args[0]} .` to fix):\n{r.stdout[-3000:]}"
