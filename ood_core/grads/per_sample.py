"""Batched per-sample parameter gradients (no per-sample Python loop): the public entry points.

The per-sample loss L_i is given by its logit gradient ``delta_i = dL_i/df_i`` (N, C), produced by
a ``delta_fn(logits) -> delta`` (``deltas.py``) that is called inside, so callers need not run the
forward pass. ``method="hooks"`` (default) runs the hooks engine (``hooks.py``: one batched
backward, per-layer rules in ``layers/`` for Linear, Conv2d with groups = 1, BatchNorm1d/2d in eval
mode); ``method="vmap"`` the torch.func reference (``vmap.py``), which handles any model. The
parameters covered are chosen by ``params`` (``selection.py``); flat gradients follow
``model.named_parameters()`` order.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ood_core.grads.deltas import DeltaFn
from ood_core.grads.hooks import DEFAULT_MAX_BYTES, HookEngine, run_chunks
from ood_core.grads.runtime import model_device_dtype
from ood_core.grads.selection import ParamSpec, select_param_names
from ood_core.grads.vmap import VMAP_DEFAULT_CHUNK, vmap_grads_flat, vmap_sq_norms

__all__ = ["METHODS", "check_method", "per_sample_grads_flat", "per_sample_sq_norms"]

METHODS = ("hooks", "vmap")


def check_method(method: str) -> None:
    """Raises ValueError unless ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise ValueError(f"method must be 'hooks' or 'vmap', got {method!r}")


def _chunk_for(method: str, n: int, chunk: int | None) -> int:
    """Samples per forward/backward: ``chunk``, or all n (hooks) / VMAP_DEFAULT_CHUNK (vmap) for None."""
    check_method(method)
    if method == "vmap" and chunk is None:
        chunk = VMAP_DEFAULT_CHUNK
    return n if chunk is None or chunk <= 0 else int(chunk)


def per_sample_sq_norms(
    model: nn.Module,
    x: torch.Tensor,
    delta_fn: DeltaFn,
    *,
    params: ParamSpec = "all",
    method: str = "hooks",
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ||dL_i/dtheta||^2 over the selected parameters, L_i defined by ``delta_fn``.

    Returns ``(logits (N, C), sq_norm (N,))``, both detached; ``sq_norm`` is accumulated in float64
    and returned in float64 for float64 models, float32 otherwise. ``chunk`` = samples per
    forward/backward (None: all for hooks, 32 for vmap); ``max_bytes`` bounds the per-layer working
    memory (hooks); ``amp_dtype`` (e.g. torch.bfloat16) runs the forward under autocast and the norm
    arithmetic in float32.
    """
    chunk = _chunk_for(method, x.shape[0], chunk)
    _, pdt = model_device_dtype(model)
    out_dt = torch.float64 if pdt == torch.float64 else torch.float32
    if method == "vmap":
        logits, sq = vmap_sq_norms(
            model, x, delta_fn, select_param_names(model, params), chunk=chunk, amp_dtype=amp_dtype
        )
    else:
        logits, sq = run_chunks(
            HookEngine(model, params, max_bytes=max_bytes), x, delta_fn, chunk, amp_dtype, HookEngine.sq_norms
        )
    return logits, sq.to(out_dt)


def per_sample_grads_flat(
    model: nn.Module,
    x: torch.Tensor,
    delta_fn: DeltaFn,
    *,
    params: ParamSpec = "all",
    method: str = "hooks",
    chunk: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialised per-sample gradients ``(logits (N, C), G (N, P))``; columns follow
    ``model.named_parameters()`` restricted to ``params``. Memory is N x P: call it on chunks that
    fit (or use ``HookEngine.grads_flat`` with a reused buffer)."""
    chunk = _chunk_for(method, x.shape[0], chunk)
    if method == "vmap":
        return vmap_grads_flat(model, x, delta_fn, select_param_names(model, params), chunk=chunk, amp_dtype=amp_dtype)
    return run_chunks(HookEngine(model, params), x, delta_fn, chunk, amp_dtype, HookEngine.grads_flat)
