"""Logit gradients ``delta = dL/df`` (N, C) of the per-sample losses the gradient scores use.

A ``DeltaFn`` maps logits f to delta; the engines then compute dL_i/dtheta = J_i^T delta_i.

* ``ce_pred_delta(T)``: CE(f/T, argmax f) -> (softmax(f/T) - onehot(yhat)) / T   (GRODIN, ODIN)
* ``energy_delta``:     logsumexp(f)      -> softmax(f)                           (Wu et al.)
* ``kl_uniform_delta``: KL(u || softmax f) -> softmax(f) - 1/C                    (GradNorm)

Half-precision logits are upcast to float32 first.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ood_core.grads.runtime import upcast

__all__ = ["DeltaFn", "ce_pred_delta", "energy_delta", "kl_uniform_delta"]

DeltaFn = Callable[[torch.Tensor], torch.Tensor]


def kl_uniform_delta(logits: torch.Tensor) -> torch.Tensor:
    """d KL(u || softmax f) / df = softmax(f) - 1/C (GradNorm's loss, T = 1)."""
    z = upcast(logits)
    return torch.softmax(z, dim=-1) - 1.0 / z.shape[-1]


def energy_delta(logits: torch.Tensor) -> torch.Tensor:
    """d logsumexp(f) / df = softmax(f) (Wu et al.'s energy gradient)."""
    return torch.softmax(upcast(logits), dim=-1)


def ce_pred_delta(T: float = 1.0) -> DeltaFn:
    """delta_fn of CE(f/T, argmax f): (softmax(f/T) - onehot(yhat)) / T (GRODIN / ODIN loss)."""
    T = float(T)
    if T <= 0:
        raise ValueError(f"temperature must be > 0, got {T}")

    def delta(logits: torch.Tensor) -> torch.Tensor:
        z = upcast(logits)
        p = torch.softmax(z / T, dim=-1)
        onehot = F.one_hot(z.argmax(dim=-1), z.shape[-1]).to(p.dtype)
        return (p - onehot) / T

    delta.__name__ = f"ce_pred_delta(T={T:g})"
    return delta
