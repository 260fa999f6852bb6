"""ODIN / GRODIN over an (eps, T) grid, and the all-weights KL gradient norm.

For every (eps, T): x~ = ODIN-perturbed x (eps, T); S = max softmax(f(x~)/T) (= ODIN's score = GRODIN
S); SG = ||grad_theta CE(f(x~)/T, yhat(x~))||^2 over ALL trainable weights (GRODIN; loss at the label
predicted at x~). GRODIN's G score is SG / S^2 (grad = S * G; ood_core/scores/grodin.py). With
``iodin``: S_i = max softmax(f(x^)/T) at iODIN's x^, the same step on the one input element of largest
|grad_x| per sample (``perturb.single_element_sign``; = S at eps = 0).

The logit gradient softmax(f/T) - onehot(yhat) and S are computed from float64 logits: near
S = 1 the difference cancels, and in float32 it lost up to 3e-3 relative precision.
Cost per chunk: one forward at x serves every T (its backward for T gives both the input-gradient
sign used for the perturbation and the eps = 0 norms, retain_graph across T); then one forward +
one backward per (eps > 0, T) at x~, since x~ differs per (eps, T). That is ``method="hooks"`` (the
default); ``method="vmap"`` (any model, e.g. LayerNorm / GroupNorm) runs ``grodin_vmap.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ood_core.grads.deltas import ce_pred_delta, kl_uniform_delta
from ood_core.grads.grodin_vmap import grid_cells_vmap
from ood_core.grads.hooks import DEFAULT_MAX_BYTES, HookEngine
from ood_core.grads.per_sample import check_method, per_sample_sq_norms
from ood_core.grads.perturb import SPACES, apply_sign_step, single_element_sign
from ood_core.grads.runtime import model_device_dtype
from ood_core.grads.selection import ParamSpec

__all__ = ["grodin_grid", "kl_allweights_sqnorm"]


def grodin_grid(
    model: nn.Module,
    x: torch.Tensor,
    Ts: Sequence[float],
    epss: Sequence[float],
    *,
    chunk: int = 64,
    space: str = "normalized",
    std: Sequence[float] | torch.Tensor | None = None,
    params: ParamSpec = "all",
    max_bytes: int = DEFAULT_MAX_BYTES,
    amp_dtype: torch.dtype | None = None,
    points: np.ndarray | None = None,
    method: str = "hooks",
    iodin: bool = False,
) -> dict[str, np.ndarray]:
    """Returns ``{"odin_s": (nE, nT, N) float32, "grodin_sqnorm": (nE, nT, N) float32}``, and
    ``"iodin_s"`` (same shape) when ``iodin`` (one more forward per selected (eps > 0, T)).

    ``points`` (nE, nT) bool computes only those grid cells (the others are NaN); None = every cell.
    Work per chunk: one forward at x, one backward per T that has a selected cell, one forward +
    backward per selected (eps > 0, T). ``x`` may live on the CPU (moved chunk by chunk).
    ``method``: "hooks" or "vmap" (``per_sample.METHODS``; ``max_bytes`` applies to hooks only)."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    check_method(method)
    Ts = [float(t) for t in Ts]
    epss = [float(e) for e in epss]
    if any(t <= 0 for t in Ts):
        raise ValueError(f"temperatures must be > 0, got {Ts}")
    n, nT, nE = x.shape[0], len(Ts), len(epss)
    mask = np.ones((nE, nT), bool) if points is None else np.asarray(points, bool)
    if mask.shape != (nE, nT):
        raise ValueError(f"points must have shape (n_eps, n_T) = {(nE, nT)}, got {mask.shape}")
    dev, pdt = model_device_dtype(model)
    fill = np.nan if points is not None else 0.0
    odin_s = np.full((nE, nT, n), fill, np.float32)
    sqn = np.full((nE, nT, n), fill, np.float32)
    iod = np.full((nE, nT, n), fill, np.float32) if iodin else None
    is_zero = np.array([v == 0.0 for v in epss], bool)
    # per T: which eps = 0 cells and which eps > 0 cells are wanted
    zero_at = [np.flatnonzero(mask[:, t] & is_zero) for t in range(nT)]
    pert_at = [np.flatnonzero(mask[:, t] & ~is_zero) for t in range(nT)]
    active = [t for t in range(nT) if zero_at[t].size or pert_at[t].size]
    out = {"odin_s": odin_s, "grodin_sqnorm": sqn, **({"iodin_s": iod} if iod is not None else {})}
    if n == 0 or not active:
        return out
    if method == "vmap":
        grid_cells_vmap(
            model,
            x,
            Ts,
            epss,
            zero_at,
            pert_at,
            odin_s,
            sqn,
            iod,
            chunk=chunk,
            space=space,
            std=std,
            params=params,
            amp_dtype=amp_dtype,
        )
        return out
    eng = HookEngine(model, params, max_bytes=max_bytes)
    with eng:
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            xc = x[sl].to(device=dev, dtype=pdt)
            # one forward at x: the eps = 0 cells and the input-gradient signs of every active T
            logits = eng.forward(xc, amp_dtype=amp_dtype)
            z = logits.detach().double()  # softmax(z/T) - onehot cancels near 1: float64 (float32 lost 3e-3)
            signs: dict[int, torch.Tensor] = {}
            one_element: dict[int, torch.Tensor] = {}  # iODIN's sign, per T
            for t in active:
                T, need_sign = Ts[t], bool(pert_at[t].size)
                delta, retain = ce_pred_delta(T)(z), t != active[-1]
                if need_sign:
                    sq, gx = eng.sq_norms_and_input_grad(delta, retain_graph=retain)
                    signs[t] = gx.sign().to(torch.int8)
                    if iod is not None:
                        one_element[t] = single_element_sign(signs[t], gx)
                else:
                    sq = eng.sq_norms(delta, retain_graph=retain)
                if zero_at[t].size:
                    S = torch.softmax(z / T, dim=1).amax(1).cpu().numpy()
                    for e in zero_at[t]:
                        odin_s[e, t, sl] = S
                        sqn[e, t, sl] = sq.cpu().numpy()
                        if iod is not None:
                            iod[e, t, sl] = S
            eng.logits = None
            # perturbed inputs: one forward + backward per selected (eps != 0, T)
            for t in active:
                for e in pert_at[t]:
                    xt = apply_sign_step(xc, signs[t], epss[e], space=space, std=std)
                    lg = eng.forward(xt, amp_dtype=amp_dtype)
                    zt = lg.detach().double()
                    sq = eng.sq_norms(ce_pred_delta(Ts[t])(zt))
                    odin_s[e, t, sl] = torch.softmax(zt / Ts[t], dim=1).amax(1).cpu().numpy()
                    sqn[e, t, sl] = sq.cpu().numpy()
                    if iod is not None:
                        xi = apply_sign_step(xc, one_element[t], epss[e], space=space, std=std)
                        zi = eng.forward_unrecorded(xi, amp_dtype=amp_dtype).double()
                        iod[e, t, sl] = torch.softmax(zi / Ts[t], dim=1).amax(1).cpu().numpy()
    return out


def kl_allweights_sqnorm(
    model: nn.Module,
    x: torch.Tensor,
    *,
    chunk: int = 64,
    params: ParamSpec = "all",
    max_bytes: int = DEFAULT_MAX_BYTES,
    amp_dtype: torch.dtype | None = None,
    method: str = "hooks",
) -> np.ndarray:
    """(N,) float32: ||d/dtheta KL(u || softmax f(x))||^2 over all trainable weights (T = 1, eps = 0).
    ``method``: "hooks" or "vmap" (``per_sample.METHODS``; vmap: at most 32 samples' gradients at once)."""
    check_method(method)
    dev, pdt = model_device_dtype(model)
    out = []
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk].to(device=dev, dtype=pdt)
        _, sq = per_sample_sq_norms(
            model, xc, kl_uniform_delta, params=params, method=method, max_bytes=max_bytes, amp_dtype=amp_dtype
        )
        out.append(sq.cpu().numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)
