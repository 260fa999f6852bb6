"""OOD scores: one module per family (the forward family in two: forward, forward_recent), one registry
(see registry.py).

Importing this package registers every score (forward, gradient, activation gradient, decomposition,
lowdim, ensemble).
"""

# isort: off
from ood_core.scores import forward, forward_recent, lastlayer, grodin, activation_grad, decomposition, lowdim  # noqa: F401,E402  (registers scores, in this order)

# isort: on
from ood_core.scores.memo import Memo  # noqa: F401
from ood_core.scores.registry import (  # noqa: F401
    ScoreSpec,
    Sweep,
    compute,
    display_name,
    family_display,
    fit,
    get,
    names,
    register,
    temporary_scores,
)
