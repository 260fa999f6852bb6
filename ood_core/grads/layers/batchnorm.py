"""Per-sample gradients of ``nn.BatchNorm1d/2d`` in eval mode (running statistics).

x_hat = (x - mu) / sqrt(var + eps); dgamma_i = sum_spatial g_i * x_hat_i, dbeta_i = sum_spatial g_i.
Without running statistics samples are not independent, and the rule refuses the module.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ood_core.grads.layers.base import UnsupportedModuleError
from ood_core.grads.runtime import compute_dtype

__all__ = ["BatchNormRule"]

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d  # the module types the rule serves


def _xhat(mod: BatchNorm, a: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """(n, C, spatial) normalised input (x - running_mean) / sqrt(running_var + eps)."""
    running_mean, running_var = mod.running_mean, mod.running_var
    assert running_mean is not None and running_var is not None  # BatchNormRule.check refused the module
    n, c = a.shape[0], a.shape[1]
    a = a.reshape(n, c, -1).to(dt)
    mean = running_mean.to(dt).view(1, c, 1)
    var = running_var.to(dt).view(1, c, 1)
    return (a - mean) / torch.sqrt(var + mod.eps)


class BatchNormRule:
    """``LayerRule`` of nn.BatchNorm1d / nn.BatchNorm2d with running statistics."""

    types: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)

    def check(self, mod: BatchNorm, label: str) -> None:
        if mod.running_mean is None or mod.running_var is None:
            raise UnsupportedModuleError(
                f"{label} has no running statistics (track_running_stats=False), so samples are not "
                "independent in eval mode. Use method='vmap' only if that is intended."
            )

    def sq_norm(
        self, mod: BatchNorm, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, max_bytes: int
    ) -> torch.Tensor:
        dt = compute_dtype(g)
        n = g.shape[0]
        out = torch.zeros(n, dtype=dt, device=g.device)
        c = g.shape[1]
        g3 = g.reshape(n, c, -1).to(dt)
        if "weight" in local:
            out += (g3 * _xhat(mod, a, dt)).sum(2).pow(2).sum(1)
        if "bias" in local:
            out += g3.sum(2).pow(2).sum(1)
        return out

    def write_grads(
        self, mod: BatchNorm, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        dt = next(iter(views.values())).dtype
        n = g.shape[0]
        g3 = g.reshape(n, g.shape[1], -1).to(dt)
        if "weight" in local:
            views["weight"].copy_((g3 * _xhat(mod, a, dt)).sum(2))
        if "bias" in local:
            views["bias"].copy_(g3.sum(2))
