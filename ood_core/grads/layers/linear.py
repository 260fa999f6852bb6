"""Per-sample gradients of ``nn.Linear`` from its input a and output gradient g.

Input (N, Din) or (N, *, Din) (tokens t): dW_i = sum_t g_it^T a_it, db_i = sum_t g_it; for 2-D
inputs ||dW_i||^2 = ||g_i||^2 ||a_i||^2 (rank one), for token inputs via ``outer_sq_norms``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ood_core.grads.layers.outer import outer_bytes_per_sample, outer_sq_norms, sub_chunks
from ood_core.grads.runtime import compute_dtype

__all__ = ["LinearRule"]


class LinearRule:
    """``LayerRule`` of nn.Linear (every configuration is supported)."""

    types: tuple[type[nn.Module], ...] = (nn.Linear,)

    def check(self, mod: nn.Linear, label: str) -> None:
        return None

    def sq_norm(
        self, mod: nn.Linear, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, max_bytes: int
    ) -> torch.Tensor:
        dt = compute_dtype(g)
        n = g.shape[0]
        out = torch.zeros(n, dtype=dt, device=g.device)
        din, dout = mod.in_features, mod.out_features
        a3 = a.reshape(n, -1, din).to(dt)
        g3 = g.reshape(n, -1, dout).to(dt)
        if "weight" in local:
            if a3.shape[1] == 1:
                out += g3[:, 0].pow(2).sum(1) * a3[:, 0].pow(2).sum(1)
            else:
                L = a3.shape[1]
                bps = outer_bytes_per_sample(dout, din, L, torch.finfo(dt).bits // 8)
                for sl in sub_chunks(n, bps, max_bytes):
                    out[sl] += outer_sq_norms(g3[sl].transpose(1, 2), a3[sl].transpose(1, 2))
        if "bias" in local:
            out += g3.sum(1).pow(2).sum(1)
        return out

    def write_grads(
        self, mod: nn.Linear, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        dt = next(iter(views.values())).dtype
        n = g.shape[0]
        a3 = a.reshape(n, -1, mod.in_features).to(dt)
        g3 = g.reshape(n, -1, mod.out_features).to(dt)
        if "weight" in local:
            torch.bmm(g3.transpose(1, 2), a3, out=views["weight"])
        if "bias" in local:
            views["bias"].copy_(g3.sum(1))
