"""Gradient-based OOD detection, reproduced: the study's library.

The Python API (README, "Use it on your own model"): ``ood_core.evaluate`` (every method on a model
and data, tuned and scored as the study does; :func:`ood_core.api.evaluation.evaluate`) and ``ood_core.Detector``
(one method: fit, then score; :class:`ood_core.api.detector.Detector`). Both are imported on first use
(PEP 562), so ``import ood_core`` imports nothing else, and a module of the package that imports it
does not depend on the API's modules.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Detector", "evaluate"]
_LAZY = {"evaluate": "ood_core.api.evaluation", "Detector": "ood_core.api.detector"}  # name -> the module defining it


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ood_core' has no attribute {name!r}")
