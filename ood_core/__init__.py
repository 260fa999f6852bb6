"""Gradient-based OOD detection, reproduced: the study's library.

The Python API (README, "Use it on your own model"): ``ood_core.evaluate`` (every method on a model
and data, tuned and scored as the study does; :func:`ood_core.api.evaluate`) and ``ood_core.Detector``
(one method: fit, then score; :class:`ood_core.detector.Detector`). Both are imported on first use,
so ``import ood_core`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Detector", "evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from .api import evaluate

        return evaluate
    if name == "Detector":
        from .detector import Detector

        return Detector
    raise AttributeError(f"module 'ood_core' has no attribute {name!r}")
