"""ood_core.grads.main_pass against the separate passes and a brute-force float64 autograd loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_grads import MODELS, _build, _energy_loss, _kl_loss, _loop_grads, _rel

from ood_core.grads import kl_allweights_sqnorm, project, resolve_params
from ood_core.grads.lowdim import fold_whitening
from ood_core.grads.main_pass import FoldedBasis, main_pass

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-6


def _basis(model, params, k, seed):
    gen = torch.Generator().manual_seed(seed)
    P = sum(dict(model.named_parameters())[n].numel() for n in resolve_params(model, params))
    V = torch.randn(P, k, generator=gen, dtype=torch.float64)
    stats = (
        torch.randn(P, generator=gen, dtype=torch.float64),
        0.5 + torch.rand(P, generator=gen, dtype=torch.float64),
    )
    return V, stats


def _subset(model):
    """The last two parameter tensors of the model (a stand-in for 'last block'), as names."""
    return [n for n, _ in model.named_parameters()][-3:]


@pytest.mark.parametrize("name", MODELS)
def test_main_pass_matches_loop(name):
    model, x = _build(name)
    sub = _subset(model)
    V_all, st_all = _basis(model, "all", 3, 1)
    V_sub, st_sub = _basis(model, sub, 2, 2)
    bases = [
        FoldedBasis("all", "all", *fold_whitening(V_all, st_all)),
        FoldedBasis("sub", sub, *fold_whitening(V_sub, st_sub)),
        FoldedBasis("raw", sub, V_sub, None),
    ]
    res = main_pass(model, x, kl_params="all", bases=bases, chunk=3)
    with torch.no_grad():
        h = model.features(x)
        logits = model.head(h)
    assert _rel(res.h, h) < RTOL and _rel(res.logits, logits) < RTOL
    g_kl = _loop_grads(model, x, _kl_loss)
    assert _rel(res.kl_sqnorm, g_kl.pow(2).sum(1)) < RTOL
    g_e = _loop_grads(model, x, _energy_loss)
    want_all = ((g_e - st_all[0]) * st_all[1]) @ V_all
    assert _rel(res.projections["all"], want_all) < RTOL
    g_sub = _loop_grads(model, x, _energy_loss, names=sub)
    assert _rel(res.projections["sub"], ((g_sub - st_sub[0]) * st_sub[1]) @ V_sub) < RTOL
    assert _rel(res.projections["raw"], g_sub @ V_sub) < RTOL
    assert set(res.seconds) == {
        "forward",
        "kl_backward",
        "energy_backward",
        "project_all",
        "project_sub",
        "project_raw",
    }


@pytest.mark.parametrize("name", MODELS)
def test_main_pass_equals_separate_passes(name):
    """The fused pass gives what kl_allweights_sqnorm and project give one after the other."""
    model, x = _build(name)
    V, st = _basis(model, "all", 4, 3)
    res = main_pass(model, x, bases=[FoldedBasis("pca", "all", *fold_whitening(V, st))], chunk=4)
    np.testing.assert_allclose(res.kl_sqnorm, kl_allweights_sqnorm(model, x), rtol=1e-5)
    np.testing.assert_allclose(res.projections["pca"], project(model, [x], V, st, "all", chunk=4), rtol=1e-5, atol=1e-6)


def test_main_pass_without_kl_uses_the_bases_parameters():
    model, x = _build("small_cnn")
    sub = _subset(model)
    V, st = _basis(model, sub, 2, 4)
    res = main_pass(model, x, kl_params=None, bases=[FoldedBasis("sub", sub, *fold_whitening(V, st))])
    assert res.kl_sqnorm is None
    g = _loop_grads(model, x, _energy_loss, names=sub)
    assert _rel(res.projections["sub"], ((g - st[0]) * st[1]) @ V) < RTOL


def test_main_pass_bad_basis_rows_named():
    model, x = _build("small_cnn")
    with pytest.raises(ValueError, match="basis 'b' has 5 rows"):
        main_pass(model, x, bases=[FoldedBasis("b", "all", torch.zeros(5, 2, dtype=torch.float64), None)])


# --------------------------------------------------------------------------------------------------
# the subspace fit's orthonormalisation and random start


@pytest.mark.parametrize("dtype, cond", [(torch.float32, 1e3), (torch.float32, 1e6), (torch.float64, 1e12)])
def test_orthonormalize_matches_qr_on_ill_conditioned_input(dtype, cond, monkeypatch):
    from ood_core.grads import lowdim

    monkeypatch.setattr(lowdim, "ORTH_BLOCK_ROWS", 97)  # several blocks, a ragged last one
    gen = torch.Generator().manual_seed(0)
    m, l = 1000, 12
    u = torch.linalg.qr(torch.randn(m, l, generator=gen, dtype=torch.float64))[0]
    w = torch.linalg.qr(torch.randn(l, l, generator=gen, dtype=torch.float64))[0]
    a = (u * torch.logspace(0, -np.log10(cond), l, dtype=torch.float64)) @ w.T
    a = a.to(dtype)
    q = lowdim.orthonormalize(a)
    ref = torch.linalg.qr(a.double())[0]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    eye = torch.eye(l, dtype=torch.float64)
    assert float((q.double().T @ q.double() - eye).abs().max()) < tol
    # the same span: the projectors agree
    assert float((q.double() @ q.double().T - ref @ ref.T).abs().max()) < (10 * tol if cond < 1e5 else 1e-2)


def test_orthonormalize_falls_back_to_qr_when_rank_deficient():
    from ood_core.grads.lowdim import orthonormalize

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    a[:, 5] = a[:, 0]  # rank 5
    q = orthonormalize(a)
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-10)


def test_random_start_is_one_draw_in_blocks(monkeypatch):
    from ood_core.grads import lowdim

    monkeypatch.setattr(lowdim, "ORTH_BLOCK_ROWS", 40)
    for dtype in (torch.float32, torch.float64):
        got = lowdim._random_start(203, 7, 5, dtype, torch.device("cpu"))
        assert torch.equal(got, torch.randn(203, 7, generator=torch.Generator().manual_seed(5), dtype=dtype))


def test_pca_subspace_float32_route_matches_float64():
    """The float32 PCA fit (Gram-based final SVD, Cholesky-QR2) spans the float64 fit's subspace."""
    from ood_core.grads import pca_subspace

    model, x = _build("small_cnn")
    V64 = pca_subspace(model, lambda: [x], 3, n_iter=4, seed=0)
    m32 = model.float()
    V32 = pca_subspace(m32, lambda: [x.float()], 3, n_iter=4, seed=0)
    assert V32.dtype == torch.float32
    np.testing.assert_allclose(V32.double().T @ V32.double(), np.eye(3), atol=1e-4)
    np.testing.assert_allclose(V32.double() @ V32.double().T, V64 @ V64.T, atol=1e-3)


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_orthonormalize_returns_r_with_a_equal_qr(rank_deficient):
    from ood_core.grads.lowdim import orthonormalize

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    if rank_deficient:
        a[:, 4] = a[:, 1]
    keep = a.clone()
    q, r = orthonormalize(a, overwrite=True, return_r=True)
    assert q.data_ptr() == a.data_ptr() or rank_deficient  # worked in a's memory
    np.testing.assert_allclose(q @ r, keep, atol=1e-10)
    assert torch.equal(r, torch.triu(r))
