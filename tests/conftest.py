"""Shared pytest setup: repo root on sys.path, float64-friendly torch defaults, shared-data locator."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_data_dir() -> Path | None:
    env = os.environ.get("OOD_SHARED_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    p = shared_data_dir()
    if p is None:
        pytest.skip("../shared/data not found (set OOD_SHARED_DATA to its path to run this test)")
    return p
