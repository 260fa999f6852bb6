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

from ood_core.config import ConfigError
from ood_core.data.sources import BatchSource
from ood_core.extraction.arrays import Subspace
from ood_core.extraction.distributed import Ranks
from ood_core.grads.runtime import exact_float32
from ood_core.progress import StageProgress, end_pass, pass_display, subspace_passes

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
    progress: StageProgress | None = None,
) -> Subspace:
    """Subspace ``name`` of ``spec`` fitted on ``train`` (every rank streams its shard of whole batches).

    ``lowdim`` is the profile's ``lowdim`` section; ``n_samples`` there keeps a seeded random subset
    of the training rows (``seed``). ``grad_method``: ``"hooks"`` or ``"vmap"`` (any layer type).
    ``checkpoint`` keeps the finished passes (whitening statistics, the PCA's power iterations), so
    an interrupted fit resumes after the last one. ``progress`` counts the rows of every pass (None:
    a display of this fit alone). Returns V (P, K) with the whitening statistics it was fitted with."""
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

    needs_stats = norm != "none" and repr(params) not in memo
    kept = checkpoint.state if checkpoint is not None else {}
    resumed = 1 + 2 * int(kept["done"]) if spec["kind"] == "pca" and "q" in kept else 0  # passes kept
    to_run = subspace_passes(spec) + needs_stats - resumed - (needs_stats and "stats_mean" in kept)
    shown = pass_display(progress, f"subspace {name}", (len(shard) if shard is not None else 0) * to_run)
    done_passes = [resumed]

    def batches(label: str | None = None):  # (x, y) batches; the lowdim functions take x, and y where they need labels
        if label is None:
            done_passes[0] += 1
            label = fit_pass_label(spec, done_passes[0])
        shown.begin(f"subspace {name}: {label}")
        return iter(()) if shard is None else shown.counted(shard.batches(bs, device))

    if norm == "none":
        stats = None
    elif repr(params) in memo:  # the same parameters' whitening statistics: one pass serves all
        stats = memo[repr(params)]
    elif checkpoint is not None and "stats_mean" in checkpoint.state:
        kept = checkpoint.state
        stats = memo[repr(params)] = (kept["stats_mean"].to(device), kept["stats_scale"].to(device))
    else:
        stats = memo[repr(params)] = gradient_stats(
            model, batches("whitening statistics"), params, chunk=chunk, method=grad_method, ranks=ranks
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
    end_pass(shown, progress)
    return Subspace(name, V, stats, params)


def fit_pass_label(spec: Mapping[str, Any], i: int) -> str:
    """What pass ``i`` (1-based) of a subspace fit computes: a PCA's range pass, its power
    iterations (two passes each) and its final projection; a class-mean subspace's one pass."""
    n = subspace_passes(spec)
    if spec["kind"] != "pca":
        return f"pass {i}/{n}"
    if i == 1:
        return f"range pass 1/{n}"
    if i == n:
        return f"final projection {i}/{n}"
    it = int(spec.get("n_iter", 10))
    return f"power iteration {i // 2}/{it} ({'A^T Q' if i % 2 == 0 else 'A Z'}, pass {i}/{n})"
