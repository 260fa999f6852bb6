"""Fit one of Wu et al.'s low-dimensional gradient subspaces from the training data.

A subspace spec (a profile's ``lowdim.subspaces.<name>``) is ``{kind: pca | class_mean, k, n_iter,
params}``; the shared settings (``lowdim`` section: ``params``, ``normalisation``, ``n_samples``,
``batch_size``, ``chunk``) come beside it. Whitening (``normalisation: nfk``) uses per-coordinate
mean and 1/std of the training gradients (:func:`ood_core.grads.lowdim.gradient_stats`); subspaces
over the same parameters share one statistics pass through ``stats_memo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ood_core.config import ConfigError
from ood_core.data.sources import BatchSource
from ood_core.extraction.arrays import Subspace
from ood_core.extraction.distributed import Ranks
from ood_core.grads.runtime import exact_float32

if TYPE_CHECKING:
    from ood_core.extraction.store import PassCheckpoint

SUBSPACE_KINDS = ("pca", "class_mean")
SUBSPACE_KEYS = ("kind", "k", "n_iter", "params")
NORMALISATIONS = ("nfk", "none")


def check_subspace_spec(name: str, spec: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` (one line naming ``lowdim.subspaces.<name>``) for an unusable spec."""
    unknown = set(spec) - set(SUBSPACE_KEYS)
    if unknown:
        raise ConfigError(
            f"lowdim.subspaces.{name}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(SUBSPACE_KEYS)}"
        )
    if spec.get("kind") not in SUBSPACE_KINDS:
        raise ConfigError(f"lowdim.subspaces.{name}.kind must be 'pca' or 'class_mean', got {spec.get('kind')!r}")


def subspace_params(spec: Mapping[str, Any], lowdim: Mapping[str, Any]) -> Any:
    """The parameter selection of a subspace: its own ``params`` ("which layers" ablation), else the section's."""
    return spec.get("params", lowdim["params"])


@exact_float32()
def fit_subspace(
    model: torch.nn.Module,
    train: BatchSource,
    name: str,
    spec: Mapping[str, Any],
    lowdim: Mapping[str, Any],
    *,
    num_classes: int,
    seed: int,
    device: torch.device,
    stats_memo: dict[str, Any] | None = None,
    ranks: Ranks = Ranks(),
    grad_method: str = "hooks",
    checkpoint: PassCheckpoint | None = None,
) -> Subspace:
    """Subspace ``name`` of ``spec`` fitted on ``train`` (every rank streams its shard of whole batches).

    ``lowdim`` is the profile's ``lowdim`` section; ``n_samples`` there keeps a seeded random subset
    of the training rows (``seed``). ``grad_method``: ``"hooks"`` or ``"vmap"`` (any layer type).
    ``checkpoint`` keeps the finished passes (whitening statistics, the PCA's power iterations), so
    an interrupted fit resumes after the last one. Returns V (P, K) with the whitening statistics it
    was fitted with."""
    from ood_core.grads.lowdim import class_mean_subspace, gradient_stats, pca_subspace

    check_subspace_spec(name, spec)
    norm = lowdim["normalisation"]
    if norm not in NORMALISATIONS:
        raise ConfigError(f"lowdim.normalisation must be 'nfk' or 'none', got {norm!r}")
    params = subspace_params(spec, lowdim)
    memo = {} if stats_memo is None else stats_memo
    if lowdim["n_samples"]:
        rng = np.random.default_rng(seed)
        train = train.take(np.sort(rng.choice(len(train), int(lowdim["n_samples"]), replace=False)))
    bs, chunk = int(lowdim["batch_size"]), int(lowdim["chunk"])
    shard: BatchSource | None = train
    if ranks.is_distributed:  # a contiguous block of whole batches, as a view (same layout as one process's)
        pos = ranks.batch_shard(len(train), bs)
        shard = train.rows(int(pos[0]), int(pos[-1]) + 1) if len(pos) else None  # None: no rows on this rank

    def batches():  # (x, y) batches; the lowdim functions take x, and y where they need labels
        if shard is None:
            return iter(())
        it = shard.batches(bs, device)
        return tqdm(it, total=-(-len(shard) // bs), desc=f"subspace {name}: pass", unit="batch", leave=False)

    if norm == "none":
        stats = None
    elif repr(params) in memo:  # the same parameters' whitening statistics: one pass serves all
        stats = memo[repr(params)]
    elif checkpoint is not None and "stats_mean" in checkpoint.state:
        kept = checkpoint.state
        stats = memo[repr(params)] = (kept["stats_mean"].to(device), kept["stats_scale"].to(device))
    else:
        stats = memo[repr(params)] = gradient_stats(
            model, batches(), params, chunk=chunk, method=grad_method, ranks=ranks
        )
        if checkpoint is not None:
            checkpoint.update(stats_mean=stats[0].cpu(), stats_scale=stats[1].cpu())
    if spec["kind"] == "pca":
        k, n_iter = int(spec["k"]), int(spec.get("n_iter", 10))
        V = pca_subspace(
            model,
            batches,
            k,
            n_iter,
            stats,
            seed,
            params,
            chunk=chunk,
            method=grad_method,
            ranks=ranks,
            resume=checkpoint,
        )
    else:
        V = class_mean_subspace(
            model, batches(), num_classes, stats, params, chunk=chunk, method=grad_method, ranks=ranks
        )
    return Subspace(name, V, stats, params)
