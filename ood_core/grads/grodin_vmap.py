"""``method="vmap"`` of the ODIN / GRODIN grid (``grodin.grodin_grid``): any model (LayerNorm,
GroupNorm, shared or functionally used parameters), at the cost of materialised per-sample gradients.

Same quantities and the same float64 logit arithmetic as the hooks path. Per chunk:
  * one forward at x (x a leaf requiring grad); per active T with an eps > 0 cell, the ODIN sign
    sign(grad_x sum_i <delta_i, f_i(x)>), delta = ce_pred_delta(T) of the float64 logits, from one
    ordinary autograd backward (samples are independent in eval mode);
  * eps = 0 cells: S = max softmax(f(x)/T) and SG = ||grad_theta CE(f(x)/T, yhat)||^2 from
    ``per_sample_sq_norms(..., method="vmap")`` with the same delta on float64 logits;
  * eps > 0 cells: x~ = ``apply_sign_step`` and the same two values at x~.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ood_core.grads.deltas import DeltaFn, ce_pred_delta
from ood_core.grads.per_sample import per_sample_sq_norms
from ood_core.grads.perturb import apply_sign_step, single_element_sign
from ood_core.grads.runtime import autocast, eval_mode, model_device_dtype
from ood_core.grads.selection import ParamSpec

__all__ = ["grid_cells_vmap"]


def _ce_pred_delta_float64(T: float) -> DeltaFn:
    """``ce_pred_delta(T)`` of the float64 logits, as the hooks path computes it (near S = 1 the
    difference softmax - onehot cancels: float32 lost 3e-3 relative precision)."""
    delta = ce_pred_delta(T)
    return lambda logits: delta(logits.detach().double())


def grid_cells_vmap(
    model: nn.Module,
    x: torch.Tensor,
    Ts: list[float],
    epss: list[float],
    zero_at: list[np.ndarray],
    pert_at: list[np.ndarray],
    odin_s: np.ndarray,
    sqn: np.ndarray,
    iodin_s: np.ndarray | None,
    *,
    chunk: int,
    space: str,
    std: Sequence[float] | torch.Tensor | None,
    params: ParamSpec,
    amp_dtype: torch.dtype | None,
) -> None:
    """Fills ``odin_s[e, t]``, ``sqn[e, t]`` and ``iodin_s[e, t]`` when given ((nE, nT, N) arrays) for the eps = 0 cells ``zero_at[t]``
    and the eps > 0 cells ``pert_at[t]`` of every T (indices into ``epss``), as ``grodin_grid`` does.
    ``chunk`` samples per forward; at most min(chunk, 32) samples' gradients are materialised at
    once (``per_sample_sq_norms``'s vmap default)."""
    dev, pdt = model_device_dtype(model)
    active = [t for t in range(len(Ts)) if zero_at[t].size or pert_at[t].size]
    sign_ts = [t for t in active if pert_at[t].size]
    deltas = {t: _ce_pred_delta_float64(Ts[t]) for t in active}

    def sq_norms(xs: torch.Tensor, t: int) -> tuple[torch.Tensor, np.ndarray]:
        """(float64 logits at xs, per-sample squared norms at temperature Ts[t])."""
        lg, sq = per_sample_sq_norms(model, xs, deltas[t], params=params, method="vmap", amp_dtype=amp_dtype)
        return lg.double(), sq.cpu().numpy()

    def max_softmax(z: torch.Tensor, t: int) -> np.ndarray:
        return torch.softmax(z / Ts[t], dim=1).amax(1).cpu().numpy()

    with eval_mode(model):
        for s in range(0, x.shape[0], chunk):
            sl = slice(s, min(x.shape[0], s + chunk))
            xc = x[sl].to(device=dev, dtype=pdt)
            # one forward at x: the logits of the eps = 0 cells and the input-gradient signs
            xg = xc.detach().requires_grad_(bool(sign_ts))
            with torch.set_grad_enabled(bool(sign_ts)), autocast(dev, amp_dtype):
                logits = model(xg)
            z = logits.detach().double()
            signs: dict[int, torch.Tensor] = {}
            one_element: dict[int, torch.Tensor] = {}  # iODIN's sign, per T
            for t in sign_ts:
                delta = ce_pred_delta(Ts[t])(z)
                loss = (logits.to(delta.dtype) * delta).sum()
                (gx,) = torch.autograd.grad(loss, xg, retain_graph=t != sign_ts[-1])
                signs[t] = gx.sign().to(torch.int8)
                if iodin_s is not None:
                    one_element[t] = single_element_sign(signs[t], gx)
            del logits
            for t in active:
                if zero_at[t].size:
                    _, sq = sq_norms(xc, t)
                    S = max_softmax(z, t)
                    for e in zero_at[t]:
                        odin_s[e, t, sl] = S
                        sqn[e, t, sl] = sq
                        if iodin_s is not None:
                            iodin_s[e, t, sl] = S
            # perturbed inputs: the vmap pass per selected (eps != 0, T)
            for t in sign_ts:
                for e in pert_at[t]:
                    xt = apply_sign_step(xc, signs[t], epss[e], space=space, std=std)
                    zt, sq = sq_norms(xt, t)
                    odin_s[e, t, sl] = max_softmax(zt, t)
                    sqn[e, t, sl] = sq
                    if iodin_s is not None:
                        xi = apply_sign_step(xc, one_element[t], epss[e], space=space, std=std)
                        with torch.no_grad(), autocast(dev, amp_dtype):
                            zi = model(xi).double()
                        iodin_s[e, t, sl] = max_softmax(zi, t)
