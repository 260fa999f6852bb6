"""All-weights gradient scores read from the cache: GRODIN S / G / SG and GradNorm (all weights).

GRODIN (ICLR 2022 submission, "Gradient-based OOD detection"): l(x) = CE(f(x~)/T, yhat) at the
ODIN-perturbed input x~, gradient over ALL network weights, decomposed as grad = S * G with
S = p_yhat = 1 / (1 + sum_{c != yhat} exp(f_c - f_yhat)) (= ODIN's score) and
G = -sum_{c != yhat} exp(f_c - f_yhat) d(f_c - f_yhat)/dtheta, so ||G||^2 = ||grad||^2 / S^2.
The extraction pass caches ``odin_s`` (= S) and ``grodin_sqnorm`` (= ||grad||^2) on the
(``odin_eps``, ``odin_T``) grid; (eps, T) must be grid values (no rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_core.scores._common import ODIN_EPS_GRID, ODIN_T_GRID, cached_slice, f64
from ood_core.scores.registry import Arrays, Sweep, register

_NEEDS = ("odin_s", "grodin_sqnorm", "odin_eps", "odin_T")
_GRID = {"eps": ODIN_EPS_GRID, "T": ODIN_T_GRID}
_PAPER = "GRODIN, ICLR 2022 submission"
_SWEEPS = [Sweep(("eps", "T"), ablation="grodin")]  # the eps x T sweep and the GRODIN ablation (§3.1)


@register(
    "grodin_s",
    family="gradient",
    display="GRODIN S",
    grid=_GRID,
    needs=("odin_s", "odin_eps", "odin_T"),
    paper=_PAPER,
)
def grodin_s(arrays: Arrays, state: Any = None, *, eps: float = 0.0, T: float = 1.0) -> np.ndarray:
    """GRODIN S: s = S = p_yhat(x~) = max softmax(f(x~)/T) (identical to ODIN at the same eps, T;
    registered separately with GRODIN's defaults eps = 0, T = 1)."""
    return cached_slice(arrays, "odin_s", eps, T)


@register(
    "grodin_sg",
    family="gradient",
    display="GRODIN SG",
    grid=_GRID,
    needs=_NEEDS,
    paper=_PAPER,
    sweeps=_SWEEPS,
)
def grodin_sg(arrays: Arrays, state: Any = None, *, eps: float = 0.0, T: float = 1.0) -> np.ndarray:
    """GRODIN SG: s = -||d/dtheta CE(f(x~)/T, yhat)||_2^2 over all weights (negated: a large
    gradient means OOD)."""
    return -cached_slice(arrays, "grodin_sqnorm", eps, T)


@register(
    "grodin_g",
    family="gradient",
    display="GRODIN G",
    grid=_GRID,
    needs=_NEEDS,
    paper=_PAPER,
    sweeps=_SWEEPS,
)
def grodin_g(arrays: Arrays, state: Any = None, *, eps: float = 0.0, T: float = 1.0) -> np.ndarray:
    """GRODIN G: s = -||G||_2^2 = -||grad||_2^2 / S^2 with S = odin_s (grad = S * G; S >= 1/C > 0)."""
    S = cached_slice(arrays, "odin_s", eps, T)
    return -cached_slice(arrays, "grodin_sqnorm", eps, T) / S**2


@register(
    "gradnorm_allweights",
    family="gradient",
    display="GradNorm (all weights, L2)",
    needs=("kl_allw_sqnorm",),
    paper="Huang, Geng, Li, NeurIPS 2021 (all-layers ablation)",
)
def gradnorm_allweights(arrays: Arrays, state: Any = None) -> np.ndarray:
    """GradNorm over ALL weights: s = +||d/dtheta KL(u || softmax f)||_2 = sqrt(kl_allw_sqnorm)
    (T = 1, eps = 0). Orientation follows GradNorm (Huang et al. 2021): the KL-to-uniform gradient
    is LARGE for ID inputs (confident p is far from u), so no negation (unlike GRODIN, whose CE at
    yhat is small for confident inputs). L2 rather than the paper's L1 norm: the cache stores the
    squared L2 norm of the all-weights gradient."""
    return np.sqrt(np.maximum(f64(arrays["kl_allw_sqnorm"]), 0.0))
