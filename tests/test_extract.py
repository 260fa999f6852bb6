"""ood_core.extraction.arrays.extract_arrays: the hooks path (one main pass per chunk) gives the arrays of the
vmap path (a forward, then one gradient pass per quantity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core.api.inputs import as_source
from ood_core.config import DEFAULTS
from ood_core.extraction.arrays import Subspace, extract_arrays
from ood_core.grads.lowdim import last_block_prefixes, resolve_params
from ood_core.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hooks_main_pass_equals_vmap_separate_passes():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=4, in_channels=1, width=4).eval()
    x = torch.randn(11, 1, 8, 8)
    gen = torch.Generator().manual_seed(1)
    subs = []
    for name, params, k in (("pca", "all", 3), ("avg", "all", 2), ("pca_last_block", last_block_prefixes(model), 2)):
        P = sum(dict(model.named_parameters())[n].numel() for n in resolve_params(model, params))
        stats = (torch.randn(P, generator=gen), torch.rand(P, generator=gen) + 0.5)
        subs.append(Subspace(name, torch.randn(P, k, generator=gen), stats, params))
    subs[1].stats = subs[0].stats  # the same whitening: one group with "pca"
    cfg = {**DEFAULTS["extract"], "batch_size": 5, "grad_chunk": 3, "kl_allweights": True}
    src = as_source(x, name="x")
    kw = dict(subspaces=subs, lowdim_chunk=3, is_ood=True, with_grodin=False)
    hooks = extract_arrays(model, src, cfg, torch.device("cpu"), grad_method="hooks", **kw)
    vmap = extract_arrays(model, src, cfg, torch.device("cpu"), grad_method="vmap", **kw)
    assert set(hooks.arrays) == set(vmap.arrays)
    for key in hooks.arrays:
        np.testing.assert_allclose(hooks.arrays[key], vmap.arrays[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert {"forward", "kl_allweights", "lowdim_pca", "lowdim_avg", "lowdim_pca_last_block"} <= set(hooks.seconds)
