"""Gradients of a loss with respect to intermediate activations, per sample, for a whole batch.

The activations z of sample i enter only sample i's loss (eval mode: BatchNorm uses running
statistics), so d(sum_j L_j)/dz_i = dL_i/dz_i: one backward of the batch's summed loss gives every
sample's activation gradient. Forward hooks on named modules capture their outputs; one forward
serves every loss, one ``autograd.grad`` per loss reads the gradients, and each method's reduction
keeps only the small per-sample arrays its score reads:

* NAC-UE (Liu et al., ICLR 2024): per stage and channel c, q_c = (sum_hw z_c) * (sum_hw dKL/dz_c)
  with KL = KL(u || softmax f) (u uniform), the authors' spatial *sum* of the activation and of its
  gradient, multiplied after pooling. The state sigmoid(alpha * q) is formed at scoring time (alpha is
  a tuned parameter). The pooled penultimate layer needs no backward: dKL/dh = W^T (p - u).
* GAIA (Chen et al., NeurIPS 2023), two per-sample scalars, larger = more abnormal:
  GAIA-Z: mean over the channels of every BatchNorm2d output of (share of non-zero
  d max_k f_k / dz over the spatial positions)^2;
  GAIA-A: mean over the channels of the BatchNorm2d outputs in the last two stages of
  (mean_hw d sum_d h_d / dz_c)^2, divided by mean_c |mean_hw d sum_k log p_k / dz_c| at the last
  stage's output (the authors' "inner" over "output" component, squared).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_core.grads.runtime import eval_mode, upcast

if TYPE_CHECKING:
    from ood_core.models import OODModel

__all__ = [
    "GAIA_KEYS",
    "activation_arrays",
    "bn_modules",
    "nac_key",
    "stage_names",
]

GAIA_KEYS = ("gaia_z", "gaia_a")  # beside one nac_key(stage) per stage
_STAGE = re.compile(r"(^|\.)layer[1-4]$")


def nac_key(stage: str) -> str:
    """The cached array of one stage's NAC products: ``nac_<last name component>`` (``nac_layer3``)."""
    return f"nac_{stage.rsplit('.', 1)[-1]}"


def stage_names(model: nn.Module) -> list[str]:
    """The model's stages: modules named ``layer1`` .. ``layer4`` (ResNets; ``body.layer1`` in
    torchvision's), in registration order; empty for models without them."""
    return [n for n, _ in model.named_modules() if _STAGE.search(n)]


def bn_modules(model: nn.Module, under: Sequence[str] = ()) -> list[str]:
    """Names of the ``BatchNorm2d`` modules of ``model``, or of those inside the modules ``under``."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if under:
        names = [n for n in names if any(n.startswith(u + ".") for u in under)]
    return names


def _pool(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) spatial sum; (N, C) unchanged."""
    return t.flatten(2).sum(-1) if t.dim() > 2 else t


def _spatial_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).mean(-1) if t.dim() > 2 else t


def activation_arrays(
    model: OODModel,
    x: torch.Tensor,
    *,
    stages: Sequence[str] | None = None,
    nac: bool = True,
    gaia: bool = True,
    tiny: float = 1e-30,
) -> dict[str, torch.Tensor]:
    """Per-sample activation-gradient arrays of batch ``x`` (module docstring), detached, on x's device:
    ``nac_<stage>`` (N, C_stage) for every stage when ``nac``; ``gaia_z`` (N,) when ``gaia`` and the model
    has BatchNorm2d layers; ``gaia_a`` (N,) when ``gaia`` and it has two stages or more.

    ``model``: an ``OODModel`` (``features`` then ``head``); ``stages``: module names (default
    :func:`stage_names`). One forward; one backward per loss (KL for NAC, max logit for GAIA-Z, sum of
    log-probabilities and sum of h for GAIA-A); ``tiny`` floors GAIA-A's output component."""
    stages = list(stage_names(model) if stages is None else stages)
    mods = dict(model.named_modules())
    bns = bn_modules(model) if gaia else []
    inner = bn_modules(model, stages[-2:]) if gaia and len(stages) >= 2 else []
    watch = list(dict.fromkeys((stages if nac else []) + bns + inner + (stages[-1:] if inner else [])))
    out: dict[str, torch.Tensor] = {}
    if not watch:
        return out
    captured: dict[str, torch.Tensor] = {}
    handles = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: captured.__setitem__(n, o)) for n in watch]
    try:
        with eval_mode(model), torch.enable_grad():
            h = model.features(x.detach())
            logits = model.head(h)
            logp = F.log_softmax(upcast(logits), dim=1)
            losses = []  # (name, loss, tensors): one autograd.grad each
            if nac and stages:
                losses.append(("kl", -logp.mean(1).sum(), stages))
            if bns:
                losses.append(("max", logits.max(1).values.sum(), bns))
            if inner:
                losses.append(("logp", logp.sum(), stages[-1:]))
                losses.append(("h", h.sum(), inner))
            grads: dict[str, list[torch.Tensor]] = {}
            for i, (name, loss, names) in enumerate(losses):
                last = i == len(losses) - 1
                grads[name] = list(torch.autograd.grad(loss, [captured[n] for n in names], retain_graph=not last))
        with torch.no_grad():
            if nac and stages:
                for n, g in zip(stages, grads["kl"]):
                    out[nac_key(n)] = _pool(captured[n].detach()) * _pool(g)
            if bns:
                fracs = [_spatial_mean((g != 0).to(logp.dtype)) for g in grads["max"]]
                out["gaia_z"] = torch.cat(fracs, 1).pow(2).mean(1)
            if inner:
                outer = _spatial_mean(grads["logp"][0]).abs().mean(1).clamp_min(tiny)
                comp = torch.cat([_spatial_mean(g) for g in grads["h"]], 1).pow(2).mean(1)
                out["gaia_a"] = comp / outer
    finally:
        for hd in handles:
            hd.remove()
    return out
