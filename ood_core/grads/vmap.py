"""Reference per-sample gradients by torch.func: ``functional_call`` + ``vmap(grad)``.

Handles any model (no per-layer rules), at the cost of materialising the (chunk, P) gradients;
``method="vmap"`` of the public functions and the cross-check of the hooks engine. The model is in
eval mode for the call. (vmap + autocast fails on CPU for BatchNorm models in torch 2.14: the
batching rule of batch_norm rejects bf16 inputs with float32 running statistics.)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ood_core.grads.deltas import DeltaFn
from ood_core.grads.runtime import autocast, eval_mode, model_device_dtype, upcast

__all__ = ["VMAP_DEFAULT_CHUNK", "vmap_grads_flat", "vmap_sq_norms"]

VMAP_DEFAULT_CHUNK = 32  # vmap materialises (chunk, P) gradients: samples per vmap call when chunk=None

Reduce = Callable[[dict[str, torch.Tensor], list[str], int], torch.Tensor]


def _sq_norms_of(g: dict[str, torch.Tensor], names: list[str], n: int) -> torch.Tensor:
    acc = torch.zeros(n, dtype=torch.float64, device=next(iter(g.values())).device)
    for name in names:
        acc += upcast(g[name]).reshape(n, -1).pow(2).sum(1).to(torch.float64)
    return acc


def _flat_of(g: dict[str, torch.Tensor], names: list[str], n: int) -> torch.Tensor:
    return torch.cat([upcast(g[name]).reshape(n, -1) for name in names], 1)


def _run(
    model: nn.Module,
    x: torch.Tensor,
    delta_fn: DeltaFn,
    names: list[str],
    chunk: int,
    amp_dtype: torch.dtype | None,
    reduce: Reduce,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), cat over chunks of reduce(per-sample grads {name: (n, *shape)}, names, n))``."""
    from torch.func import functional_call, grad, vmap

    dev, pdt = model_device_dtype(model)
    x = x.to(device=dev, dtype=pdt)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    sel = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in sel}

    def loss(sel_p, xi, di):
        with autocast(dev, amp_dtype):
            out = functional_call(model, ({**rest, **sel_p}, buffers), (xi.unsqueeze(0),))
        out = out.squeeze(0)
        return (out.to(di.dtype) * di).sum()

    per_sample_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    logits_all, res = [], []
    with eval_mode(model):
        for s in range(0, x.shape[0], chunk):
            xc = x[s : s + chunk]
            with torch.no_grad(), autocast(dev, amp_dtype):
                lg = model(xc)
            d = delta_fn(lg).detach()
            g = per_sample_grad(sel, xc, d)
            logits_all.append(upcast(lg))
            res.append(reduce(g, names, xc.shape[0]))
    return torch.cat(logits_all), torch.cat(res)


def vmap_sq_norms(
    model: nn.Module,
    x: torch.Tensor,
    delta_fn: DeltaFn,
    names: list[str],
    *,
    chunk: int = VMAP_DEFAULT_CHUNK,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), per-sample squared norm (N,) float64)`` over the parameters ``names``."""
    return _run(model, x, delta_fn, names, chunk, amp_dtype, _sq_norms_of)


def vmap_grads_flat(
    model: nn.Module,
    x: torch.Tensor,
    delta_fn: DeltaFn,
    names: list[str],
    *,
    chunk: int = VMAP_DEFAULT_CHUNK,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), per-sample gradients (N, P))``, columns in ``names`` order."""
    return _run(model, x, delta_fn, names, chunk, amp_dtype, _flat_of)
