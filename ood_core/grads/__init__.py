"""Per-sample gradient engine (hooks + vmap fallback), ODIN/GRODIN grid, low-dimensional gradients."""
from .grodin import grodin_grid, kl_allweights_sqnorm
from .lowdim import (
    class_mean_subspace,
    gradient_stats,
    iter_whitened_grads,
    last_block_prefixes,
    pca_subspace,
    project,
    resolve_params,
    whiten,
)
from .per_sample import (
    HookEngine,
    UnsupportedModuleError,
    ce_pred_delta,
    energy_delta,
    kl_uniform_delta,
    per_sample_grads_flat,
    per_sample_sq_norms,
    select_param_names,
)
from .perturb import apply_sign_step, input_grad_sign, odin_perturb

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
