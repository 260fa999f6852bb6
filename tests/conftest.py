"""Shared pytest setup: repo root on sys.path, float64-friendly torch defaults, shared-data locator,
a check that every test module leaves the score registry as it found it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_data_dir() -> Path | None:
    from ood_core.data.verify import shared_data_dir as lookup

    p = lookup()
    return p if p.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    p = shared_data_dir()
    if p is None:
        pytest.skip("../shared/data not found (set OOD_SHARED_DATA to its path to run this test)")
    return p


@pytest.fixture(scope="module", autouse=True)
def score_registry_left_as_found():
    """A test module that registers stand-in scores removes them again (``registry.temporary_scores``),
    so no test depends on the order in which test files run."""
    from ood_core.scores import registry

    before = registry.names()
    yield
    left = sorted(set(registry.names()) ^ set(before))
    assert not left, f"this test module left the score registry changed: {left}; use registry.temporary_scores()"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny graphs: intra-op threading only adds spin-wait overhead (x50 on a loaded 2-core box).
    A module uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# Modules that run the pipeline stages, notebooks, installs or type checks end to end (subprocesses,
# minutes each): CI's full suite runs them, ``./run_tests.sh --quick`` leaves them out.
END_TO_END_MODULES = {
    "test_pipeline",
    "test_distributed",
    "test_notebooks",
    "test_cli_errors",
    "test_from_cache",
    "test_packaging",
    "test_readme_examples",
    "test_typecheck",
    "test_api",
}


def pytest_collection_modifyitems(config, items):
    """Marks every test of an ``END_TO_END_MODULES`` module ``e2e`` (``-m "not e2e"`` skips them)."""
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in END_TO_END_MODULES:
            item.add_marker(pytest.mark.e2e)


def toy_model() -> Any:
    """A plain torch classifier (conv, BN, pooling, linear head; 3 classes) in eval mode, seeded."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def toy_data(n: int, seed: int, shift: float = 0.0) -> tuple[Any, Any]:
    """n random 1 x 8 x 8 inputs (shifted by ``shift``) and labels 0..2, seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) + shift, torch.randint(0, 3, (n,), generator=g)
