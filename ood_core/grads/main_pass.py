"""The extraction's main gradient pass: one forward per chunk serves every per-sample quantity.

Per chunk of images, the hooks engine records each layer's input in ONE forward (which also gives
the penultimate features h and the logits), then runs

* one backward of the KL-to-uniform loss -> per-sample ||d KL(u || softmax f) / d theta||^2 over
  the engine's parameters (GradNorm's loss, T = 1; ``kl_uniform_delta``), and
* one backward of the energy logsumexp(f) -> per-sample gradients g (written once into a reused
  (chunk, P) buffer) -> g~ V = g (scale * V) - (mean * scale) V for every low-dim basis
  (Wu et al. 2023), a basis over a parameter subset (e.g. the last block) reading its columns.

The two losses have different logit gradients (softmax(f) - 1/C vs softmax(f)), so they need two
backward passes; everything else (forward, recorded inputs, the gradient buffer) is shared.
Equal, up to float rounding, to ``model.features`` / ``model.head``, ``kl_allweights_sqnorm`` and
``lowdim.project`` run one after the other (tests/test_grads_main_pass.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ood_core.grads.deltas import energy_delta, kl_uniform_delta
from ood_core.grads.hooks import DEFAULT_MAX_BYTES, HookEngine
from ood_core.grads.runtime import model_device_dtype, upcast
from ood_core.grads.selection import ParamSpec, resolve_params
from ood_core.grads.stream import gradient_buffer

__all__ = ["FoldedBasis", "MainPassResult", "main_pass"]


@dataclass
class FoldedBasis:
    """A low-dim basis with the whitening folded in (``lowdim.fold_whitening``): the projection of
    a raw gradient g over the parameters ``params`` is ``g @ Vs - shift``; ``Vs`` rows follow
    ``model.named_parameters()`` restricted to ``params``."""

    name: str
    params: ParamSpec
    Vs: torch.Tensor
    shift: torch.Tensor | None


@dataclass
class MainPassResult:
    """Arrays of one main pass (numpy, in the model's precision or higher; ``kl_sqnorm`` (float64)
    None when not asked for) and the seconds
    spent per component: ``forward``, ``kl_backward``, ``energy_backward``, ``project_<name>``."""

    h: np.ndarray
    logits: np.ndarray
    kl_sqnorm: np.ndarray | None
    projections: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)


def _segments(model: nn.Module, engine_names: list[str], basis_names: list[str]) -> list[tuple[int, int, int]]:
    """(engine column start, basis row start, length) runs mapping the basis' rows to the engine's
    flat gradient columns; adjacent parameters merge into one run (one matmul)."""
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    col = {}
    off = 0
    for n in engine_names:
        col[n] = off
        off += sizes[n]
    missing = [n for n in basis_names if n not in col]
    if missing:
        raise ValueError(f"basis parameters {missing[:3]} are not among the main pass' parameters")
    runs: list[list[int]] = []
    row = 0
    for n in basis_names:
        c, s = col[n], sizes[n]
        if runs and runs[-1][0] + runs[-1][2] == c and runs[-1][1] + runs[-1][2] == row:
            runs[-1][2] += s
        else:
            runs.append([c, row, s])
        row += s
    return [(a, b, c) for a, b, c in runs]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main_pass(
    model: nn.Module,
    x: torch.Tensor,
    *,
    kl_params: ParamSpec | None = "all",
    bases: Sequence[FoldedBasis] = (),
    chunk: int = 64,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workspace: dict | None = None,
) -> MainPassResult:
    """h, logits, the KL gradient's squared norms over ``kl_params`` (None: not computed) and the
    projections ``g~ V`` of the energy gradient on every basis of ``bases``, for the images ``x``,
    from one forward and at most two backward passes per ``chunk`` images. ``model`` must have a
    ``head`` module (its input is h). The projections' parameters must lie within ``kl_params``
    when both are given; without ``kl_params`` the engine covers the union of the bases'.
    ``workspace``: a dict the caller keeps across calls; the (chunk, P) gradient buffer lives in it,
    so a multi-GB buffer is allocated (and page-faulted) once per extraction, not once per call."""
    dev, pdt = model_device_dtype(model)
    basis_names = [resolve_params(model, b.params) for b in bases]
    if kl_params is not None:
        names = resolve_params(model, kl_params)
    else:
        union = set().union(*basis_names) if basis_names else set()
        names = [n for n, _ in model.named_parameters() if n in union]
    if not names:
        raise ValueError("main_pass: neither kl_params nor bases select any parameter")
    eng = HookEngine(model, names, max_bytes=max_bytes)
    runs = [_segments(model, eng.names, bn) for bn in basis_names]
    for b, bn in zip(bases, basis_names):
        P_b = sum(dict(model.named_parameters())[n].numel() for n in bn)
        if b.Vs.shape[0] != P_b:
            raise ValueError(f"basis '{b.name}' has {b.Vs.shape[0]} rows, its parameters number {P_b}")
    seconds = {"forward": 0.0, "kl_backward": 0.0, "energy_backward": 0.0}
    seconds.update({f"project_{b.name}": 0.0 for b in bases})
    hs: list[torch.Tensor] = []
    head_in: list[torch.Tensor] = []
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"main_pass: {type(model).__name__} has no 'head' module (its input is h)")
    handle = head.register_forward_hook(lambda mod, inp, out: head_in.append(inp[0].detach()))
    logits_all, kl_all = [], []
    proj_all: dict[str, list[np.ndarray]] = {b.name: [] for b in bases}
    ws = {} if workspace is None else workspace
    try:
        with eng:
            for s in range(0, x.shape[0], chunk):
                xc = x[s : s + chunk].to(device=dev, dtype=pdt)
                t = time.perf_counter()
                head_in.clear()
                lg = eng.forward(xc)
                hs.append(upcast(head_in[-1]).cpu())
                logits_all.append(upcast(lg.detach()).cpu())
                _sync(dev)
                seconds["forward"] += time.perf_counter() - t
                if kl_params is not None:
                    t = time.perf_counter()
                    sq = eng.sq_norms(kl_uniform_delta(lg.detach()), retain_graph=bool(bases))
                    kl_all.append(sq.cpu())
                    _sync(dev)
                    seconds["kl_backward"] += time.perf_counter() - t
                if not bases:
                    eng.logits = None  # frees the graph
                    continue
                t = time.perf_counter()
                delta = energy_delta(lg.detach())
                buf = gradient_buffer(ws, chunk, eng.num_params, delta.dtype, dev)
                g = eng.grads_flat(delta, out=buf[: xc.shape[0]])
                _sync(dev)
                seconds["energy_backward"] += time.perf_counter() - t
                for b, rr in zip(bases, runs):
                    t = time.perf_counter()
                    vs = b.Vs
                    z = torch.zeros(g.shape[0], vs.shape[1], dtype=vs.dtype, device=dev)
                    for c0, r0, n in rr:
                        z.addmm_(g[:, c0 : c0 + n].to(vs.dtype), vs[r0 : r0 + n])
                    if b.shift is not None:
                        z -= b.shift
                    proj_all[b.name].append(z.cpu().numpy())
                    seconds[f"project_{b.name}"] += time.perf_counter() - t
    finally:
        handle.remove()
    cat = lambda ts: torch.cat(ts).numpy() if ts else np.zeros((0,), np.float32)  # noqa: E731
    return MainPassResult(
        h=cat(hs),
        logits=cat(logits_all),
        kl_sqnorm=cat(kl_all) if kl_params is not None else None,
        projections={k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in proj_all.items()},
        seconds=seconds,
    )
