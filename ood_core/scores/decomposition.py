"""Igoe et al.'s non-gradient family s = N(h) * V(p) = ||h||_q^a * V(p).

Igoe, Chung, Char, Schneider 2022 ("How useful are gradients for OOD detection really?") show
that last-layer gradient scores factor into a feature-magnitude term and an output term, e.g.
GradNorm = ||h||_1 * ||p - u||_1 and ExGrad = (||h||^2 + 1) * (1 - ||p||^2), and that members of the
family without any backward pass match them. This module exposes the factors as pure functions and
registers the cross-product q in {1, 2} x V in {msp, l1u, sqnorm, energy, infogain} with exponent
``a`` (default 1). All V terms are oriented higher = more peaked = more in-distribution.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ood_core.scores._common import as_2d, log_softmax, logsumexp, one_minus_p, softmax
from ood_core.scores.registry import Arrays, register


# --------------------------------------------------------------------------- feature term N(h)
def feature_term(h: np.ndarray, q: float) -> np.ndarray:
    """N(h) = ||h||_q per row (q >= 1 or q = inf), float64."""
    h = as_2d(h, "h")
    q = float(q)
    if q == np.inf:
        return np.abs(h).max(axis=1)
    if q <= 0:
        raise ValueError(f"feature_term: q must be > 0, got {q}")
    if q == 1.0:
        return np.abs(h).sum(axis=1)
    if q == 2.0:
        return np.linalg.norm(h, axis=1)
    # scale by the max entry so large features do not overflow |h|^q
    m = np.abs(h).max(axis=1)
    safe = np.where(m > 0, m, 1.0)
    return m * ((np.abs(h) / safe[:, None]) ** q).sum(axis=1) ** (1.0 / q)


# --------------------------------------------------------------------------- output terms V(p)
def V_msp(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """V = max_k p_k."""
    return softmax(logits, T).max(axis=1)


def V_l1u(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """V = ||p - u||_1, u = uniform (GradNorm's output term; 0 at p = u)."""
    p = softmax(logits, T)
    return np.abs(p - 1.0 / p.shape[1]).sum(axis=1)


def V_sqnorm(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """V = ||p||_2^2 in [1/C, 1] (higher = peaked = ID; ExGrad's output term is 1 - this)."""
    p = softmax(logits, T)
    return (p * p).sum(axis=1)


def V_energy(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """V = T logsumexp(f / T) (negative free energy; may be negative, then the product flips)."""
    return float(T) * logsumexp(as_2d(logits, "logits") / float(T), axis=1)


def V_infogain(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """V = log C - H(p) >= 0 (information gain over the uniform prior; KL(p || u))."""
    lp = log_softmax(logits, T)
    H = -(np.exp(lp) * lp).sum(axis=1)
    return np.maximum(np.log(lp.shape[1]) - H, 0.0)


OUTPUT_TERMS: dict[str, Callable[..., np.ndarray]] = {
    "msp": V_msp,
    "l1u": V_l1u,
    "sqnorm": V_sqnorm,
    "energy": V_energy,
    "infogain": V_infogain,
}
# how the registered family members' display names write the two terms
_FEATURE_TERM_DISPLAY = {1: "‖h‖₁", 2: "‖h‖₂"}
_OUTPUT_TERM_DISPLAY = {"msp": "max p", "l1u": "‖p−u‖₁", "sqnorm": "‖p‖₂²", "energy": "Energy", "infogain": "InfoGain"}


# --------------------------------------------------------------------------- exact factor pairs
def gradnorm_factors(h: np.ndarray, logits: np.ndarray, T: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """GradNorm = N * V with N = ||h||_1 and V = ||p_T - u||_1 / T (the 1/T of the temperature
    goes with the output term); N * V equals the registered ``gradnorm``."""
    return feature_term(h, 1), V_l1u(logits, T) / float(T)


def exgrad_factors(h: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ExGrad = N * V with N = ||h||_2^2 + 1 (weight + bias) and V = 1 - ||p||_2^2
    (= sum_k p_k (1 - p_k), no cancellation). N * V = -(registered ``exgrad``), which is negated."""
    h = as_2d(h, "h")
    p = softmax(logits)
    return (h * h).sum(axis=1) + 1.0, (p * one_minus_p(logits)).sum(axis=1)


# --------------------------------------------------------------------------- registration
def _make(q: int, vname: str) -> Callable[..., np.ndarray]:
    V = OUTPUT_TERMS[vname]

    def score(arrays: Arrays, state: Any = None, *, a: float = 1.0) -> np.ndarray:
        return feature_term(arrays["h"], q) ** float(a) * V(arrays["logits"])

    score.__name__ = f"family_q{q}_{vname}"
    score.__doc__ = (
        f"Igoe et al. family member: s = ||h||_{q}^a * V_{vname}(p), V_{vname}: "
        f"{(V.__doc__ or '').strip().splitlines()[0].rstrip('.')} (Igoe, Chung, Char, Schneider 2022, "
        '"How useful are gradients for OOD detection really?"); a = 1 by default.'
    )
    return score


for _q in (1, 2):
    for _v in OUTPUT_TERMS:
        register(
            f"family_q{_q}_{_v}",
            family="decomposition",
            display=f"{_FEATURE_TERM_DISPLAY[_q]} × {_OUTPUT_TERM_DISPLAY[_v]}",
            grid={"a": [0.5, 1.0, 2.0]},
            needs=("h", "logits"),
            paper="Igoe, Chung, Char, Schneider 2022",
        )(_make(_q, _v))
del _q, _v
