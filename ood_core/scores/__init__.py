"""OOD scores: one module per family, one registry (see registry.py).

Importing this package registers every score (forward, gradient, decomposition, lowdim, ensemble).
"""
from .registry import ScoreSpec, compute, display_name, family_display, fit, get, names, register  # noqa: F401
from . import forward, lastlayer, grodin, decomposition, lowdim  # noqa: F401,E402  (registers scores)
