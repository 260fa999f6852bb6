"""OOD scores: one module per family, one registry (see registry.py)."""
from .registry import ScoreSpec, compute, fit, get, names, register  # noqa: F401
