"""ood_core.grads against brute-force per-sample loops (float64, CPU, tiny random models)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_core.grads import (
    UnsupportedModuleError,
    ce_pred_delta,
    class_mean_subspace,
    energy_delta,
    gradient_stats,
    grodin_grid,
    kl_allweights_sqnorm,
    kl_uniform_delta,
    last_block_prefixes,
    odin_perturb,
    pca_subspace,
    per_sample_grads_flat,
    per_sample_sq_norms,
    project,
    resolve_params,
)
from ood_core.grads.layers.outer import outer_sq_norms
from ood_core.models import ResNet18Cifar, SmallCNN

RTOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# tiny models


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen, dtype=torch.float64))
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen, dtype=torch.float64))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen, dtype=torch.float64))


class ConvLinNet(nn.Module):
    """Strided/dilated/reflect-padded convs with bias, a Linear on (N, L, D) tokens, and a head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, stride=2, padding=1, bias=True)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=2, dilation=2, padding_mode="reflect", bias=True)
        self.conv3 = nn.Conv2d(6, 16, 3, stride=2, padding=1, bias=True)  # L = 9: Gram route
        self.tok = nn.Linear(16, 7)
        self.head = nn.Linear(7, 3)

    def features(self, x):
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        h = torch.tanh(self.conv3(h))
        t = torch.tanh(self.tok(h.flatten(2).transpose(1, 2)))
        return t.mean(1)

    def forward(self, x):
        return self.head(self.features(x))


class MLPBN(nn.Module):
    """Linear -> BatchNorm1d -> ReLU(inplace) -> head; unit 0 is dead (zero-variance gradients)."""

    def __init__(self, din=12, hidden=8, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(din, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(hidden, classes)

    def features(self, x):
        return self.act(self.bn(self.fc1(x.flatten(1))))

    def forward(self, x):
        return self.head(self.features(x))


def _build(name: str):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "small_cnn":
        m, shape = SmallCNN(num_classes=4, in_channels=1, width=4), (1, 8, 8)
    elif name == "convlin":
        m, shape = ConvLinNet(), (2, 9, 9)
    elif name == "mlp_bn":
        m, shape = MLPBN(), (12,)
    else:
        raise KeyError(name)
    m = m.double()
    _randomize_bn(m, gen)
    if name == "mlp_bn":
        with torch.no_grad():
            m.fc1.bias[0] = -1e3  # dead ReLU unit
    m.eval()
    x = torch.randn(7, *shape, generator=gen, dtype=torch.float64)
    return m, x


MODELS = ["small_cnn", "convlin", "mlp_bn"]


# --------------------------------------------------------------------------------------------------
# brute-force references


def _ce_loss(T):
    return lambda f: F.cross_entropy((f / T)[None], f.argmax()[None])


def _kl_loss(f):
    logp = torch.log_softmax(f, 0)
    return (-np.log(f.numel()) - logp).mean()  # sum_c u_c (log u_c - log p_c)


def _energy_loss(f):
    return torch.logsumexp(f, 0)


LOSSES = {
    "ce_T1": (_ce_loss(1.0), ce_pred_delta(1.0)),
    "ce_T7": (_ce_loss(7.0), ce_pred_delta(7.0)),
    "kl": (_kl_loss, kl_uniform_delta),
    "energy": (_energy_loss, energy_delta),
}


def _loop_grads(model, x, loss_fn, names=None):
    params = dict(model.named_parameters())
    names = names or list(params)
    rows = []
    for i in range(x.shape[0]):
        f = model(x[i : i + 1])[0]
        g = torch.autograd.grad(loss_fn(f), [params[n] for n in names], allow_unused=True)
        rows.append(
            torch.cat([(gi if gi is not None else torch.zeros_like(params[n])).reshape(-1) for gi, n in zip(g, names)])
        )
    return torch.stack(rows).detach()


def _rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --------------------------------------------------------------------------------------------------
# per-sample engine


@pytest.mark.parametrize("method", ["hooks", "vmap"])
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("name", MODELS)
def test_sq_norms_match_loop(name, loss, method):
    model, x = _build(name)
    loss_fn, delta_fn = LOSSES[loss]
    ref = _loop_grads(model, x, loss_fn).pow(2).sum(1)
    logits, sq = per_sample_sq_norms(model, x, delta_fn, method=method, chunk=4)
    assert sq.shape == (x.shape[0],) and sq.dtype == torch.float64
    assert _rel(sq, ref) <= RTOL
    assert _rel(logits, model(x).detach()) <= 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_sq_norms_tiny_memory_budget(name):
    model, x = _build(name)
    ref = _loop_grads(model, x, _ce_loss(1.0)).pow(2).sum(1)
    _, sq = per_sample_sq_norms(model, x, ce_pred_delta(1.0), max_bytes=1)  # one sample per sub-chunk
    assert _rel(sq, ref) <= RTOL


def test_gram_and_materialize_routes_agree():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64)
    U = torch.randn(3, 4, 11, generator=gen, dtype=torch.float64)
    ref = torch.stack([(G[i] @ U[i].T).pow(2).sum() for i in range(3)])
    assert _rel(outer_sq_norms(G, U, "gram"), ref) <= 1e-12
    assert _rel(outer_sq_norms(G, U, "materialize"), ref) <= 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_head_closed_form(name):
    model, x = _build(name)
    for method in ("hooks", "vmap"):
        logits, sq = per_sample_sq_norms(model, x, ce_pred_delta(7.0), params="head", method=method)
        h = model.features(x).detach()
        delta = ce_pred_delta(7.0)(logits)
        closed = delta.pow(2).sum(1) * (h.pow(2).sum(1) + 1)
        assert _rel(sq, closed) <= RTOL


@pytest.mark.parametrize("name", MODELS)
def test_head_grads_closed_form_equal_hooks(name):
    """Wu et al.'s G over the head only: delta h^T and delta from one forward, no backward."""
    from ood_core.grads.lowdim import head_grads_closed_form

    model, x = _build(name)
    _, ref = per_sample_grads_flat(model, x, energy_delta, params="head", method="hooks")
    got = head_grads_closed_form(model, x, ["head.weight", "head.bias"], energy_delta)
    assert got.shape == ref.shape and _rel(got, ref) <= 1e-12
    _, ref_b = per_sample_grads_flat(model, x, energy_delta, params=["head.bias"], method="hooks")
    assert _rel(head_grads_closed_form(model, x, ["head.bias"], energy_delta), ref_b) <= 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_grads_flat_match_loop(name):
    model, x = _build(name)
    ref = _loop_grads(model, x, _energy_loss)
    for method in ("hooks", "vmap"):
        _, G = per_sample_grads_flat(model, x, energy_delta, method=method, chunk=3)
        assert G.shape == ref.shape
        assert _rel(G, ref) <= RTOL
    # a subset, in named_parameters order regardless of the order asked for
    names = [n for n, _ in model.named_parameters()]
    subset = ["head.bias", names[0]]
    want = [n for n in names if n in subset]
    _, Gs = per_sample_grads_flat(model, x, energy_delta, params=subset)
    assert _rel(Gs, _loop_grads(model, x, _energy_loss, want)) <= RTOL


def test_training_mode_restored_and_no_param_grads():
    model, x = _build("small_cnn")
    model.train()
    per_sample_sq_norms(model, x, energy_delta)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


class _LNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.fc(x))))


def test_unsupported_module_raises_named_error():
    torch.manual_seed(0)
    model = _LNNet().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(UnsupportedModuleError, match=r"'norm'.*LayerNorm.*vmap"):
        per_sample_sq_norms(model, x, energy_delta)
    # the vmap fallback handles it; restricting to supported modules works with hooks
    _, sq = per_sample_sq_norms(model, x, energy_delta, method="vmap")
    assert _rel(sq, _loop_grads(model, x, _energy_loss).pow(2).sum(1)) <= RTOL
    _, sqh = per_sample_sq_norms(model, x, energy_delta, params=["fc", "head"])
    ref = _loop_grads(model, x, _energy_loss, ["fc.weight", "fc.bias", "head.weight", "head.bias"])
    assert _rel(sqh, ref.pow(2).sum(1)) <= RTOL
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UnsupportedModuleError, match=r"'0'.*groups=2.*vmap"):
        per_sample_sq_norms(grouped, torch.randn(2, 4, 5, 5), energy_delta)


def test_last_block_prefixes():
    assert last_block_prefixes(ResNet18Cifar()) == ["layer4", "head"]
    model, _ = _build("small_cnn")
    names = resolve_params(model, "last_block")
    assert names == ["conv3.weight", "bn3.weight", "bn3.bias", "head.weight", "head.bias"]


# --------------------------------------------------------------------------------------------------
# ODIN / GRODIN


STD = torch.tensor([0.5, 0.25], dtype=torch.float64)


def _loop_perturb(model, x, eps, T, std=None):
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        f = model(xi)
        loss = F.cross_entropy(f / T, f.argmax(1))
        (g,) = torch.autograd.grad(loss, xi)
        step = g.sign() if std is None else g.sign() / std.view(1, -1, 1, 1)
        out.append((xi - eps * step).detach())
    return torch.cat(out)


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_odin_perturb_matches_loop(space):
    model, x = _build("convlin")
    std = STD if space == "pixel" else None
    xt = odin_perturb(model, x, 0.01, 7.0, space=space, std=std)
    assert _rel(xt, _loop_perturb(model, x, 0.01, 7.0, std)) <= 1e-12
    assert torch.equal(odin_perturb(model, x, 0.0, 7.0), x)


def test_grodin_grid_selected_points_match_full_grid():
    """``points`` computes exactly the selected cells (NaN elsewhere), bit-equal to the full grid:
    a perturbed cell whose eps = 0 cell is not selected still gets its sign from the same backward."""
    model, x = _build("small_cnn")
    x = x[:5]
    Ts, epss = [1.0, 7.0, 50.0], [0.0, 0.01, 0.02]
    full = grodin_grid(model, x, Ts, epss, chunk=2)
    mask = np.zeros((3, 3), bool)
    mask[2, 1] = True  # eps > 0 at T = 7 only (its eps = 0 cell not wanted)
    mask[0, 2] = True  # eps = 0 at T = 50 only
    part = grodin_grid(model, x, Ts, epss, chunk=2, points=mask)
    for key in ("odin_s", "grodin_sqnorm"):
        assert np.array_equal(part[key][mask], full[key][mask])
        assert np.isnan(part[key][~mask]).all()
    none = grodin_grid(model, x, Ts, epss, points=np.zeros((3, 3), bool))
    assert np.isnan(none["odin_s"]).all()
    with pytest.raises(ValueError, match="points must have shape"):
        grodin_grid(model, x, Ts, epss, points=np.ones((2, 3), bool))


def _loop_iodin(model, x, eps, T, std=None):
    """iODIN by hand, one sample at a time: the step on the element of largest |grad_x| only."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        f = model(xi)
        (g,) = torch.autograd.grad(F.cross_entropy(f / T, f.argmax(1)), xi)
        step = torch.zeros_like(g).flatten()
        j = int(g.abs().flatten().argmax())
        step[j] = g.flatten()[j].sign()
        step = step.view_as(g) if std is None else step.view_as(g) / std.view(1, -1, 1, 1)
        with torch.no_grad():
            out.append(torch.softmax(model(xi - eps * step) / T, 1).amax(1))
    return torch.cat(out).numpy()


@pytest.mark.parametrize("method", ["hooks", "vmap"])
@pytest.mark.parametrize("name,space", [("small_cnn", "normalized"), ("convlin", "pixel")])
def test_iodin_cells_match_loop(name, space, method):
    model, x = _build(name)
    x = x[:4]
    std = STD if space == "pixel" else None
    Ts, epss = [1.0, 7.0], [0.0, 0.02]
    res = grodin_grid(model, x, Ts, epss, chunk=3, space=space, std=std, iodin=True, method=method)
    assert np.array_equal(res["iodin_s"][0], res["odin_s"][0])  # eps = 0: no step, ODIN's value
    for t, T in enumerate(Ts):
        ref = _loop_iodin(model, x, epss[1], T, std)
        np.testing.assert_allclose(res["iodin_s"][1, t], ref, rtol=1e-6)
    assert not np.allclose(res["iodin_s"][1], res["odin_s"][1])  # one element differs from the full step
    assert "iodin_s" not in grodin_grid(model, x, Ts, epss, chunk=3, space=space, std=std, method=method)
    mask = np.zeros((2, 2), bool)
    mask[1, 0] = True
    part = grodin_grid(model, x, Ts, epss, chunk=3, space=space, std=std, iodin=True, method=method, points=mask)
    assert np.array_equal(part["iodin_s"][mask], res["iodin_s"][mask]) and np.isnan(part["iodin_s"][~mask]).all()


@pytest.mark.parametrize("name,space", [("small_cnn", "normalized"), ("convlin", "pixel")])
def test_grodin_grid_matches_loop(name, space):
    model, x = _build(name)
    x = x[:4]
    std = STD if space == "pixel" else None
    Ts, epss = [1.0, 7.0], [0.0, 0.02]
    res = grodin_grid(model, x, Ts, epss, chunk=3, space=space, std=std)
    assert res["odin_s"].shape == (2, 2, x.shape[0]) and res["odin_s"].dtype == np.float32
    assert res["grodin_sqnorm"].shape == (2, 2, x.shape[0]) and res["grodin_sqnorm"].dtype == np.float32
    params = list(model.parameters())
    for e, eps in enumerate(epss):
        for t, T in enumerate(Ts):
            xt = _loop_perturb(model, x, eps, T, std)
            S_ref, SG_ref, G_ref = [], [], []
            for i in range(x.shape[0]):
                f = model(xt[i : i + 1])[0]
                yhat = int(f.argmax())
                S_ref.append(float(torch.softmax(f.detach() / T, 0)[yhat]))
                dl = torch.autograd.grad(_ce_loss(T)(f), params, retain_graph=True)
                grad = torch.cat([g.reshape(-1) for g in dl])
                SG_ref.append(float(grad.pow(2).sum()))
                # GRODIN identity: grad = S * G, G = sum_{c != yhat} exp((f_c - f_yhat)/T) d(f_c - f_yhat)/T
                G = torch.zeros_like(grad)
                for c in range(f.numel()):
                    if c == yhat:
                        continue
                    gap = (f[c] - f[yhat]) / T
                    dg = torch.autograd.grad(gap, params, retain_graph=True)
                    G += torch.exp(gap.detach()) * torch.cat([g.reshape(-1) for g in dg])
                assert _rel(S_ref[-1] * G, grad) <= 1e-10
                G_ref.append(float(G.pow(2).sum()))
            S, SG = res["odin_s"][e, t], res["grodin_sqnorm"][e, t]
            assert np.allclose(S, S_ref, rtol=1e-6, atol=0)  # float32 storage
            assert np.allclose(SG, SG_ref, rtol=1e-6, atol=0)
            assert np.allclose(SG / S.astype(np.float64) ** 2, G_ref, rtol=1e-5, atol=0)


def test_kl_allweights_sqnorm():
    model, x = _build("small_cnn")
    out = kl_allweights_sqnorm(model, x, chunk=3)
    ref = _loop_grads(model, x, _kl_loss).pow(2).sum(1).numpy()
    assert out.dtype == np.float32 and np.allclose(out, ref, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------------
# low-dimensional gradients


def _batches(x, sizes):
    out, s = [], 0
    for n in sizes:
        out.append(x[s : s + n])
        s += n
    assert s == x.shape[0]
    return out


def _np_stats(G):
    G = G.numpy()
    mean = G.mean(0)
    sigma = np.sqrt(((G - mean) ** 2).mean(0))
    with np.errstate(divide="ignore"):
        scale = np.where(sigma > 0, 1.0 / sigma, np.inf)
    scale[~np.isfinite(scale)] = scale[np.isfinite(scale)].max()
    return mean, scale


@pytest.fixture(scope="module")
def lowdim_setup():
    torch.manual_seed(3)
    model, _ = _build("mlp_bn")
    x = torch.randn(40, 12, dtype=torch.float64)
    y = torch.arange(40) % 3
    G = _loop_grads(model, x, _energy_loss)
    return model, x, y, G


def test_gradient_stats_matches_numpy(lowdim_setup):
    model, x, _, G = lowdim_setup
    mean, scale = gradient_stats(model, _batches(x, [13, 5, 22]), chunk=4)
    m_ref, s_ref = _np_stats(G)
    assert np.sum(G.numpy().std(0) == 0) > 0  # the dead unit gives zero-variance coordinates
    assert _rel(mean, m_ref) <= RTOL and _rel(scale, s_ref) <= RTOL


def test_pca_subspace_matches_svd(lowdim_setup):
    from scipy.linalg import subspace_angles

    model, x, _, G = lowdim_setup
    stats = gradient_stats(model, [x])
    m_ref, s_ref = _np_stats(G)
    A = (G.numpy() - m_ref) * s_ref
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    k = int(np.argmax(s[:5] / s[1:6])) + 1  # largest spectral gap among k = 1..5
    assert s[k - 1] / s[k] > 1.1
    V = pca_subspace(model, lambda: _batches(x, [16, 24]), k, n_iter=30, stats=stats, seed=0, chunk=8)
    assert V.shape == (G.shape[1], k)
    assert _rel(V.T @ V, torch.eye(k, dtype=torch.float64)) <= 1e-10
    assert np.max(subspace_angles(V.numpy(), vt[:k].T)) < 1e-6


def test_class_mean_subspace_and_project(lowdim_setup):
    model, x, y, G = lowdim_setup
    stats = gradient_stats(model, [x])
    m_ref, s_ref = _np_stats(G)
    Gw = (G.numpy() - m_ref) * s_ref
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    V = class_mean_subspace(model, batches, 3, stats, chunk=6)
    ref = np.stack([Gw[y.numpy() == c].mean(0) for c in range(3)], 1)
    ref = ref / np.linalg.norm(ref, axis=0, keepdims=True)
    assert V.shape == (G.shape[1], 3)
    assert np.allclose(V.norm(dim=0).numpy(), 1.0, atol=1e-12)
    assert _rel(V, ref) <= RTOL
    Vb = class_mean_subspace(model, batches, 3, stats, classes=[2, 0])
    assert _rel(Vb, ref[:, [2, 0]]) <= RTOL
    P = project(model, _batches(x, [9, 31]), V, stats, chunk=5)
    assert P.shape == (40, 3) and P.dtype == np.float32
    assert np.allclose(P, Gw @ V.numpy(), rtol=1e-5, atol=1e-5 * np.abs(Gw @ V.numpy()).max())
    # normalisation "none" and a parameter subset
    Ph = project(model, [x], V[-(3 * 8 + 3) :, :], None, params="head")
    Gh = G.numpy()[:, -(3 * 8 + 3) :]
    assert np.allclose(Ph, Gh @ V[-(3 * 8 + 3) :, :].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["small_cnn", "convlin"])
@pytest.mark.parametrize("min_positions", [0, 10**9])
def test_grouped_conv_route_matches_loop(name, min_positions, monkeypatch):
    """Per-sample conv weight gradients by one grouped convolution backward (the CPU route for
    large-spatial layers) equal the per-sample autograd loop, for norms and materialised gradients;
    min_positions 0 forces it on every eligible conv, 10**9 forces unfold + bmm."""
    from ood_core.grads.layers import conv2d

    calls = []
    real = conv2d.weight_grads_grouped
    monkeypatch.setattr(conv2d, "GROUPED_MIN_POSITIONS", min_positions)
    monkeypatch.setattr(conv2d, "weight_grads_grouped", lambda *a: calls.append(1) or real(*a))
    model, x = _build(name)
    ref = _loop_grads(model, x, _energy_loss)
    _, sq = per_sample_sq_norms(model, x, energy_delta, chunk=4)
    _, G = per_sample_grads_flat(model, x, energy_delta, chunk=3)
    assert _rel(sq, ref.pow(2).sum(1)) <= RTOL and _rel(G, ref) <= RTOL
    assert bool(calls) == (min_positions == 0)


def test_grodin_grid_float32_model_keeps_precision_when_confident():
    """A float32 model with confident predictions (max softmax ~ 1 - 1e-5): the logit gradient
    softmax(f/T) - onehot is formed from float64 logits, so the all-weights norm matches the float64
    model's to float32 rounding; forming it in float32 was off by 5.7e-4 relative here."""
    model64, x = _build("small_cnn")
    with torch.no_grad():
        model64.head.weight.mul_(300.0)
    model32 = copy.deepcopy(model64).float()
    s = torch.softmax(model64(x).detach(), 1).amax(1)
    assert float(s.min()) > 0.999 and float(s.max()) < 1.0 - 1e-7  # confident, not saturated
    ref = grodin_grid(model64, x, [1.0], [0.0])["grodin_sqnorm"]
    got = grodin_grid(model32, x.float(), [1.0], [0.0])["grodin_sqnorm"]
    assert np.max(np.abs(got - ref) / np.abs(ref)) < 1e-4
