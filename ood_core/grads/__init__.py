"""Per-sample gradients and the scores built on them.

per_sample (public entry points) over deltas (dL/dlogits), selection (``params``), hooks (engine)
with layers/ (one rule per layer type) and vmap (torch.func reference); perturb (ODIN step),
grodin (ODIN/GRODIN grid; its method="vmap" in grodin_vmap), stream (per-sample gradients over a
data iterator) and lowdim (low-dimensional gradients)."""

from ood_core.grads.deltas import ce_pred_delta, energy_delta, kl_uniform_delta
from ood_core.grads.grodin import grodin_grid, kl_allweights_sqnorm
from ood_core.grads.hooks import HookEngine
from ood_core.grads.layers import UnsupportedModuleError
from ood_core.grads.lowdim import (
    class_mean_subspace,
    gradient_stats,
    iter_whitened_grads,
    last_block_prefixes,
    pca_subspace,
    project,
    resolve_params,
    whiten,
)
from ood_core.grads.per_sample import per_sample_grads_flat, per_sample_sq_norms
from ood_core.grads.perturb import apply_sign_step, input_grad_sign, odin_perturb
from ood_core.grads.selection import select_param_names

__all__ = [
    "HookEngine",
    "UnsupportedModuleError",
    "apply_sign_step",
    "ce_pred_delta",
    "class_mean_subspace",
    "energy_delta",
    "gradient_stats",
    "grodin_grid",
    "input_grad_sign",
    "iter_whitened_grads",
    "kl_allweights_sqnorm",
    "kl_uniform_delta",
    "last_block_prefixes",
    "odin_perturb",
    "pca_subspace",
    "per_sample_grads_flat",
    "per_sample_sq_norms",
    "project",
    "resolve_params",
    "select_param_names",
    "whiten",
]
