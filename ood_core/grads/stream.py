"""Per-sample gradients streamed over a data iterator, in (chunk, P) blocks (the low-dimensional
gradients' input, ``lowdim.py``).

``batches`` yields normalized x tensors, or (x, y, ...) tuples whose first item is x. Head-only
parameter sets use the closed form d l / dW = delta h^T, d l / db = delta (forward only, any
model with ``features`` + a Linear ``head``); other sets use ``method`` = "hooks" (the hooks
engine, one reused buffer) or "vmap" (torch.func, any model; ``per_sample_grads_flat``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, TypeGuard

import torch
import torch.nn as nn

from ood_core.grads.deltas import DeltaFn
from ood_core.grads.hooks import HookEngine
from ood_core.grads.per_sample import check_method, per_sample_grads_flat
from ood_core.grads.runtime import eval_mode, model_device_dtype

if TYPE_CHECKING:
    from ood_core.models import OODModel

__all__ = ["HEAD_NAMES", "gradient_buffer", "head_grads_closed_form", "iter_raw_grads", "num_selected_params"]

HEAD_NAMES = ("head.weight", "head.bias")


def _first(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def _head_only(model: nn.Module, names: list[str]) -> TypeGuard[OODModel]:
    """True when the selected parameters are the linear head's (the closed form applies): then
    ``model`` has the shape of an ``OODModel`` (``features`` and a linear ``head``)."""
    return (
        bool(names)
        and set(names) <= set(HEAD_NAMES)
        and isinstance(getattr(model, "head", None), nn.Linear)
        and callable(getattr(model, "features", None))
    )


def head_grads_closed_form(model: OODModel, x: torch.Tensor, names: list[str], delta_fn: DeltaFn) -> torch.Tensor:
    """Per-sample gradients over the head only, from one forward and no backward:
    d l / dW = delta h^T, d l / db = delta, with delta = d l / d logits (``delta_fn``) and h the
    penultimate features; columns in ``named_parameters()`` order, as ``HookEngine.grads_flat``."""
    with torch.no_grad(), eval_mode(model):
        h = model.features(x)
        delta = delta_fn(model.head(h))
        h = h.to(delta.dtype)
        cols = {"head.weight": (delta[:, :, None] * h[:, None, :]).reshape(x.shape[0], -1), "head.bias": delta}
        return torch.cat([cols[n] for n in names], dim=1)


def num_selected_params(model: nn.Module, names: list[str], method: str = "hooks") -> int:
    """P, the number of entries of the parameters ``names``. ``method="hooks"`` builds the hooks
    engine's plan for it, so a model the engine cannot handle raises UnsupportedModuleError here."""
    check_method(method)
    if method == "hooks":
        return HookEngine(model, names).num_params
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    return int(sum(sizes[n] for n in names))


def gradient_buffer(workspace: dict, rows: int, P: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (>= rows, P) per-sample gradient buffer kept in ``workspace["grads"]``, replaced only when
    it is too small or of another shape / dtype (a multi-GB tensor is page-faulted once)."""
    buf = workspace.get("grads")
    if buf is None or buf.dtype != dtype or buf.shape[0] < rows or buf.shape[1] != P:
        workspace.pop("grads", None)
        buf = workspace["grads"] = torch.empty(rows, P, dtype=dtype, device=device)
    return buf


def _chunks(batches: Iterable, chunk: int, model: nn.Module, with_labels: bool) -> Iterator:
    """(x chunk on the model's device and dtype, its labels on the device or None), in data order."""
    dev, pdt = model_device_dtype(model)
    for item in batches:
        x = _first(item)
        y = item[1] if with_labels else None
        for s in range(0, x.shape[0], chunk):
            xc = x[s : s + chunk].to(device=dev, dtype=pdt)
            yield xc, (None if y is None else torch.as_tensor(y[s : s + chunk]).to(dev))


def iter_raw_grads(
    model: nn.Module,
    batches: Iterable,
    names: list[str],
    delta_fn: DeltaFn,
    chunk: int,
    with_labels: bool = False,
    *,
    method: str = "hooks",
    workspace: dict | None = None,
) -> Iterator:
    """Yields (G (n, P) on the model device, labels or None) for consecutive chunks of samples.
    Head-only parameter sets use the closed form (forward only); others the hooks engine, whose G
    is a view of one reused buffer: valid until the next chunk is asked for (consume, don't keep),
    or with ``method="vmap"`` torch.func (a fresh G per chunk). ``workspace``: a dict kept by a caller
    that streams several passes (a PCA fit): the buffer is allocated (and page-faulted) once."""
    check_method(method)
    if _head_only(model, names):
        for xc, yc in _chunks(batches, chunk, model, with_labels):
            yield head_grads_closed_form(model, xc, names, delta_fn), yc
        return
    if method == "vmap":
        for xc, yc in _chunks(batches, chunk, model, with_labels):
            _, g = per_sample_grads_flat(model, xc, delta_fn, params=names, method="vmap", chunk=chunk)
            yield g, yc
        return
    eng = HookEngine(model, names)
    ws = {} if workspace is None else workspace  # one (chunk, P) buffer for every chunk: a fresh
    with eng:  # multi-GB tensor per chunk costs more in page faults than the products
        for xc, yc in _chunks(batches, chunk, model, with_labels):
            lg = eng.forward(xc)
            delta = delta_fn(lg.detach())
            buf = gradient_buffer(ws, chunk, eng.num_params, delta.dtype, xc.device)
            yield eng.grads_flat(delta, out=buf[: xc.shape[0]]), yc
