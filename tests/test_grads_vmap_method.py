"""method="vmap" of the extraction's gradient passes (grodin_grid, kl_allweights_sqnorm, the low-dim
functions): equal to method="hooks" on a model the hooks engine handles (float32), equal to a float64
per-sample autograd loop, and running on LayerNorm / GroupNorm models the hooks engine refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_core.grads import (
    UnsupportedModuleError,
    class_mean_subspace,
    gradient_stats,
    grodin_grid,
    kl_allweights_sqnorm,
    pca_subspace,
    project,
)

STD = torch.tensor([0.5, 0.25])
TS, EPSS = [1.0, 10.0], [0.0, 0.01, 0.02]
# eps = 0 at T = 1 only; eps = 0.01 at T = 10 only (its sign without its eps = 0 cell); eps = 0.02 both
MASK = np.array([[True, False], [False, True], [True, True]])


pytestmark = pytest.mark.usefixtures("one_thread")


class ConvBNNet(nn.Module):
    """conv + BatchNorm + ReLU twice, average pooling, linear head: every layer has a hooks rule."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def features(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class NormNet(nn.Module):
    """GroupNorm and LayerNorm (no hooks rule: the hooks engine raises UnsupportedModuleError)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * 3 * 3, 5)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def features(self, x):
        h = torch.tanh(self.gn(self.conv(x)))
        return torch.tanh(self.ln(self.fc(h.flatten(1))))

    def forward(self, x):
        return self.head(self.features(x))


def _build(cls, dtype, n=6):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = cls()
    for m in model.modules():  # non-trivial normalisation statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    model = model.to(dtype).eval()
    x = torch.randn(n, 2, 6, 6, generator=gen).to(dtype)
    return model, x


def _close(a, b, rtol):
    """Elementwise |a - b| <= rtol |b| (NaN where b is NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    err = np.abs(a[ok] - b[ok]) / np.abs(b[ok])
    assert err.max(initial=0.0) <= rtol, err.max()


# --------------------------------------------------------------------------------------------------
# float64 brute force


def _loop_perturb(model, x, eps, T, std):
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        f = model(xi)
        (g,) = torch.autograd.grad(F.cross_entropy(f / T, f.argmax(1)), xi)
        step = g.sign() if std is None else g.sign() / std.to(x.dtype).view(1, -1, 1, 1)
        out.append((xi - eps * step).detach())
    return torch.cat(out)


def _loop_grads(model, x, loss_fn):
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(loss_fn(model(x[i : i + 1])[0]), params)
        rows.append(torch.cat([gi.reshape(-1) for gi in g]))
    return torch.stack(rows).detach()


def _ce_loss(T):
    return lambda f: F.cross_entropy((f / T)[None], f.argmax()[None])


def _kl_loss(f):
    return (-np.log(f.numel()) - torch.log_softmax(f, 0)).mean()


def _energy_loss(f):
    return torch.logsumexp(f, 0)


def _loop_grid(model, x, Ts, epss, std):
    """(odin_s, grodin_sqnorm), each (nE, nT, N) float64, one sample at a time."""
    S = np.zeros((len(epss), len(Ts), x.shape[0]))
    SG = np.zeros_like(S)
    for e, eps in enumerate(epss):
        for t, T in enumerate(Ts):
            xt = _loop_perturb(model, x, eps, T, std)
            S[e, t] = torch.softmax(model(xt).detach() / T, 1).amax(1).numpy()
            SG[e, t] = _loop_grads(model, xt, _ce_loss(T)).pow(2).sum(1).numpy()
    return S, SG


def _np_stats(G):
    mean = G.mean(0)
    sigma = np.sqrt(((G - mean) ** 2).mean(0))
    with np.errstate(divide="ignore"):
        scale = np.where(sigma > 0, 1.0 / sigma, np.inf)
    scale[~np.isfinite(scale)] = scale[np.isfinite(scale)].max()
    return mean, scale


# --------------------------------------------------------------------------------------------------
# vmap == hooks (float32, hooks-supported model)


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_grodin_grid_vmap_equals_hooks(space):
    model, x = _build(ConvBNNet, torch.float32)
    std = STD if space == "pixel" else None
    for points in (MASK, None):
        kw = dict(chunk=4, space=space, std=std, points=points)
        hooks = grodin_grid(model, x, TS, EPSS, method="hooks", **kw)
        vmap = grodin_grid(model, x, TS, EPSS, method="vmap", **kw)
        for key in ("odin_s", "grodin_sqnorm"):
            assert vmap[key].shape == (3, 2, x.shape[0]) and vmap[key].dtype == np.float32
            _close(vmap[key], hooks[key], 1e-5)
    assert np.isnan(vmap["odin_s"]).sum() == 0
    assert np.isnan(grodin_grid(model, x, TS, EPSS, points=MASK, method="vmap")["odin_s"][~MASK]).all()


def test_kl_allweights_vmap_equals_hooks():
    model, x = _build(ConvBNNet, torch.float32)
    hooks = kl_allweights_sqnorm(model, x, chunk=4)
    vmap = kl_allweights_sqnorm(model, x, chunk=4, method="vmap")
    assert vmap.dtype == np.float32 and vmap.shape == (x.shape[0],)
    _close(vmap, hooks, 1e-5)


def test_lowdim_vmap_equals_hooks():
    model, x = _build(ConvBNNet, torch.float32, n=10)
    y = torch.arange(10) % 3
    batches = [x[:7], x[7:]]
    stats = {m: gradient_stats(model, batches, chunk=4, method=m) for m in ("hooks", "vmap")}
    for h, v in zip(stats["hooks"], stats["vmap"]):
        assert v.dtype == torch.float32
        assert float((v - h).abs().max() / h.abs().max()) <= 1e-5
    V = {
        m: class_mean_subspace(model, [(x[:7], y[:7]), (x[7:], y[7:])], 3, stats["hooks"], chunk=4, method=m)
        for m in ("hooks", "vmap")
    }
    assert float((V["vmap"] - V["hooks"]).abs().max()) <= 1e-5
    proj = {m: project(model, batches, V["hooks"], stats["hooks"], chunk=3, method=m) for m in ("hooks", "vmap")}
    assert proj["vmap"].shape == (10, 3)
    assert np.abs(proj["vmap"] - proj["hooks"]).max() <= 1e-5 * np.abs(proj["hooks"]).max()


def test_unknown_method_raises():
    model, x = _build(ConvBNNet, torch.float32)
    with pytest.raises(ValueError, match="method must be"):
        grodin_grid(model, x, TS, EPSS, method="loop")
    with pytest.raises(ValueError, match="method must be"):
        kl_allweights_sqnorm(model, x, method="loop")
    with pytest.raises(ValueError, match="method must be"):
        gradient_stats(model, [x], method="loop")


# --------------------------------------------------------------------------------------------------
# vmap == float64 per-sample autograd loop


@pytest.mark.parametrize("cls,space", [(ConvBNNet, "pixel"), (NormNet, "normalized")])
def test_grodin_grid_vmap_matches_loop(cls, space):
    model, x = _build(cls, torch.float64, n=4)
    std = STD if space == "pixel" else None
    Ts, epss = [1.0, 7.0], [0.0, 0.02]
    res = grodin_grid(model, x, Ts, epss, chunk=3, space=space, std=std, method="vmap")
    S, SG = _loop_grid(model, x, Ts, epss, std)
    _close(res["odin_s"], S, 1e-6)  # float32 storage
    _close(res["grodin_sqnorm"], SG, 1e-6)


def test_norm_model_hooks_raise_vmap_matches_loop():
    model, x = _build(NormNet, torch.float64, n=12)
    y = torch.arange(12) % 3
    with pytest.raises(UnsupportedModuleError):
        grodin_grid(model, x, TS, EPSS)
    with pytest.raises(UnsupportedModuleError):
        kl_allweights_sqnorm(model, x)
    with pytest.raises(UnsupportedModuleError):
        gradient_stats(model, [x])
    _close(kl_allweights_sqnorm(model, x, chunk=5, method="vmap"), _loop_grads(model, x, _kl_loss).pow(2).sum(1), 1e-6)

    G = _loop_grads(model, x, _energy_loss).numpy()
    m_ref, s_ref = _np_stats(G)
    stats = gradient_stats(model, [x[:5], x[5:]], chunk=4, method="vmap")
    assert np.allclose(stats[0].numpy(), m_ref, rtol=1e-6, atol=1e-12 * np.abs(m_ref).max())
    assert np.allclose(stats[1].numpy(), s_ref, rtol=1e-6, atol=0)
    Gw = (G - m_ref) * s_ref
    V = class_mean_subspace(model, [(x, y)], 3, stats, chunk=5, method="vmap")
    ref = np.stack([Gw[y.numpy() == c].mean(0) for c in range(3)], 1)
    assert np.allclose(V.numpy(), ref / np.linalg.norm(ref, axis=0), rtol=1e-6, atol=1e-10)
    P = project(model, [x], V, stats, chunk=5, method="vmap")
    assert np.allclose(P, Gw @ V.numpy(), rtol=1e-5, atol=1e-5 * np.abs(Gw @ V.numpy()).max())
    # PCA: the top singular vector of the whitened gradients (a clear spectral gap at k = 1 asserted)
    _, s, vt = np.linalg.svd(Gw, full_matrices=False)
    assert s[0] / s[1] > 1.1
    v = pca_subspace(model, lambda: [x[:5], x[5:]], 1, n_iter=30, stats=stats, chunk=4, method="vmap")
    assert abs(abs(float(v[:, 0].numpy() @ vt[0])) - 1.0) <= 1e-6
