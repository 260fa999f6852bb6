"""Last-layer gradient scores in closed form (no autograd), from (h, logits) or (h, W, b).

For a linear head f = W h + b and a loss L(f) with logit-gradient delta = dL/df, the per-sample
gradients are dL/dW = delta h^T and dL/db = delta, hence
    ||dL/dW||_1 = ||delta||_1 ||h||_1,   ||dL/d[W, b]||_F^2 = ||delta||_2^2 (||h||_2^2 + 1).
tests/test_scores_lastlayer.py checks every closed form here against torch.autograd.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_core.scores._common import (
    ODIN_T_GRID,
    PERCENTILE_GRID,
    as_2d,
    check_fitted_param,
    logsumexp,
    one_minus_p,
    rel_to_top,
    require_state,
    softmax,
    sq_dist_to_onehot_top,
)
from ood_core.scores.forward import fit_react, react_logits
from ood_core.scores.registry import Arrays, Sweep, register


@register(
    "gradnorm",
    family="gradient",
    display="GradNorm",
    needs=("h", "logits"),
    paper="Huang, Geng, Li, NeurIPS 2021",
)
def gradnorm(arrays: Arrays, state: Any = None, *, T: float = 1.0) -> np.ndarray:
    """GradNorm: s = ||d KL(u || softmax(f/T)) / dW||_1 = (1/T) ||h||_1 ||p_T - u||_1
    (Huang, Geng, Li 2021, "On the importance of gradients for detecting distributional shifts in
    the wild"); head weight W only (no bias), entrywise L1, u = uniform, higher = ID.

    The reference code (gradnorm_ood, copied by OpenOOD) back-propagates CE against an all-ones
    target, -sum_c log p_c, whose logit-gradient is C (p - u)/T: it multiplies this score by C,
    a constant (monotone) factor that changes no metric.
    """
    h = as_2d(arrays["h"], "h")
    p = softmax(arrays["logits"], T)
    C = p.shape[1]
    return np.abs(h).sum(axis=1) * np.abs(p - 1.0 / C).sum(axis=1) / float(T)


@register(
    "gradnorm_last_l2",
    family="gradient",
    display="GradNorm (last layer, L2)",
    needs=("h", "logits"),
    paper="Huang, Geng, Li, NeurIPS 2021 (control row: GradNorm (all weights, L2) over the head only)",
)
def gradnorm_last_l2(arrays: Arrays, state: Any = None) -> np.ndarray:
    """The L2 norm of the KL-to-uniform gradient over the head's weight AND bias:
    s = ||d KL(u || softmax f) / d(W, b)||_2 = ||p - u||_2 sqrt(||h||_2^2 + 1), higher = ID.
    "GradNorm (all weights, L2)" restricted to the last layer: the same loss, norm and orientation,
    so the two rows differ only in the layers (GradNorm itself differs from this in the norm, L1,
    and leaves out the bias)."""
    h = as_2d(arrays["h"], "h")
    p = softmax(arrays["logits"])
    C = p.shape[1]
    return np.linalg.norm(p - 1.0 / C, axis=1) * np.sqrt((h * h).sum(axis=1) + 1.0)


@register(
    "exgrad", family="gradient", display="ExGrad", needs=("h", "logits"), paper="Igoe, Chung, Char, Schneider 2022"
)
def exgrad(arrays: Arrays, state: Any = None) -> np.ndarray:
    """ExGrad (negated): s = -(||h||_2^2 + 1) (1 - ||p||_2^2), the expected squared gradient norm
    E_{y~p} ||grad_{W,b} log p_y||_2^2 of the last layer's weight AND bias with the label drawn
    from the model's own prediction (Igoe, Chung, Char, Schneider 2022, "How useful are gradients
    for OOD detection really?"); 1 - ||p||^2 = sum_k p_k (1 - p_k), computed without cancellation.

    Orientation is OUR choice: the paper's quantity is large for flat p (OOD-like) while its
    feature factor is large for ID; we negate it (large expected gradient = OOD).
    """
    h = as_2d(arrays["h"], "h")
    p = softmax(arrays["logits"])
    out_term = (p * one_minus_p(arrays["logits"])).sum(axis=1)
    return -((h * h).sum(axis=1) + 1.0) * out_term


@register(
    "rg",
    family="gradient",
    display="RG (Reactivate GradNorm)",
    grid={"percentile": PERCENTILE_GRID},
    needs=("h", "W", "b"),
    fit=fit_react,
    paper="Reactivate GradNorm, ICLR 2023 submission",
    sweeps=[
        Sweep(
            ("percentile",),
            ablation="rg_percentile",
            caption="RG: test AUROC (%) vs clipping percentile (other parameters at defaults)",
        )
    ],
)
def rg(arrays: Arrays, state: Any = None, *, percentile: float = 90.0, clipped_logits: bool = True) -> np.ndarray:
    """RG (Reactivate GradNorm, ICLR 2023 submission): s = ||min(h, c)||_1 * logsumexp(f~),
    c the ReAct threshold (p-th percentile of all training activations, default 90) and
    f~ = W min(h, c) + b (``clipped_logits=True``, ReAct-style) or the raw logits W h + b
    (``clipped_logits=False``). No public code exists; when logsumexp < 0 the product flips
    sign -- kept as the paper's formula, not guarded."""
    st = require_state("rg", state)
    check_fitted_param("rg", st, "percentile", float(percentile))
    h = as_2d(arrays["h"], "h")
    hc = np.minimum(h, st["c"])
    if clipped_logits:
        f = react_logits(h, arrays["W"], arrays["b"], st["c"])
    else:
        f = h @ np.asarray(arrays["W"], np.float64).T + np.asarray(arrays["b"], np.float64)
    return np.abs(hc).sum(axis=1) * logsumexp(f, axis=1)


@register(
    "grodin_sg_lastlayer",
    family="gradient",
    display="GRODIN SG (last layer)",
    grid={"T": ODIN_T_GRID},
    needs=("h", "logits"),
    paper="GRODIN, ICLR 2022 submission",
)
def grodin_sg_lastlayer(arrays: Arrays, state: Any = None, *, T: float = 1.0) -> np.ndarray:
    """GRODIN SG, last layer only: s = -||grad_{W,b} CE(f/T, yhat)||_2^2
    = -||p_T - e_yhat||_2^2 (||h||_2^2 + 1) / T^2 (GRODIN, ICLR 2022 submission, "Gradient-based
    OOD detection"); no input perturbation (eps = 0). Negated: large gradient = OOD."""
    h = as_2d(arrays["h"], "h")
    d2, _ = sq_dist_to_onehot_top(arrays["logits"], T)
    return -d2 * ((h * h).sum(axis=1) + 1.0) / float(T) ** 2


@register(
    "grodin_g_lastlayer",
    family="gradient",
    display="GRODIN G (last layer)",
    grid={"T": ODIN_T_GRID},
    needs=("h", "logits"),
    paper="GRODIN, ICLR 2022 submission",
)
def grodin_g_lastlayer(arrays: Arrays, state: Any = None, *, T: float = 1.0) -> np.ndarray:
    """GRODIN G, last layer only: grad = S * G with S = p_yhat, so s = -||G||^2 =
    -||p_T - e_yhat||^2 (||h||^2 + 1) / (T^2 p_yhat^2). Computed from r_c = exp((f_c - f_yhat)/T)
    (||p - e_yhat|| / p_yhat = ||(r, -sum r)||) so it stays exact for huge logit gaps."""
    h = as_2d(arrays["h"], "h")
    r, _ = rel_to_top(arrays["logits"], T)
    g2 = (r * r).sum(axis=1) + r.sum(axis=1) ** 2
    return -g2 * ((h * h).sum(axis=1) + 1.0) / float(T) ** 2
