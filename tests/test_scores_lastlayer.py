"""Last-layer gradient scores: closed forms vs brute-force per-sample torch.autograd.

A small float64 network (2-layer ReLU MLP -> h, nn.Linear head; C=7, D=12, N=9). For every sample
the defining loss is back-propagated to the head and the norm taken directly; the registered
closed forms must agree to <= 1e-6 relative error at T in {1, 3.7}.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ood_core import scores as S
from ood_core.scores.decomposition import exgrad_factors, gradnorm_factors

C, D, N, D_IN = 7, 12, 9, 5
TEMPS = [1.0, 3.7]
RTOL = 1e-6


@pytest.fixture(scope="module")
def net():
    g = torch.Generator().manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Linear(D_IN, 16), torch.nn.ReLU(), torch.nn.Linear(16, D), torch.nn.ReLU()
    ).double()
    head = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        for p in list(body.parameters()) + list(head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(N, D_IN, generator=g, dtype=torch.float64) * 0.7
    with torch.no_grad():
        h = body(x)
        f = head(h)
    arrays = {
        "h": h.numpy(),
        "logits": f.numpy(),
        "W": head.weight.detach().numpy().copy(),
        "b": head.bias.detach().numpy().copy(),
    }
    return body, head, x, arrays


def _head_grads(head, h_i, loss_fn, with_bias=True):
    """Gradient of loss_fn(logits) of one sample w.r.t. head weight (and bias)."""
    f = head(h_i[None])[0]
    params = [head.weight, head.bias] if with_bias else [head.weight]
    return torch.autograd.grad(loss_fn(f), params)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


def test_gradnorm_last_l2_vs_autograd(net):
    """The head-only (W and b) L2 norm of the KL-to-uniform gradient, as gradnorm_allweights takes it
    over every layer."""
    body, head, x, arrays = net
    h = torch.as_tensor(arrays["h"])
    u = torch.full((C,), 1.0 / C, dtype=torch.float64)
    kl = lambda f: (u * (u.log() - F.log_softmax(f, 0))).sum()  # noqa: E731
    brute = []
    for i in range(N):
        gW, gb = _head_grads(head, h[i], kl)
        brute.append(float(torch.sqrt(gW.pow(2).sum() + gb.pow(2).sum())))
    assert _rel(S.compute("gradnorm_last_l2", arrays), brute) <= RTOL


@pytest.mark.parametrize("T", TEMPS)
def test_gradnorm_vs_autograd(net, T):
    body, head, x, arrays = net
    h = torch.as_tensor(arrays["h"])
    u = torch.full((C,), 1.0 / C, dtype=torch.float64)
    brute, ones_ce = [], []
    for i in range(N):
        kl = lambda f: (u * (u.log() - F.log_softmax(f / T, 0))).sum()  # noqa: E731  KL(u || softmax(f/T))
        (gW,) = _head_grads(head, h[i], kl, with_bias=False)
        brute.append(gW.abs().sum().item())
        ce_all_ones = lambda f: -F.log_softmax(f / T, 0).sum()  # noqa: E731  reference-code target
        (gW1,) = _head_grads(head, h[i], ce_all_ones, with_bias=False)
        ones_ce.append(gW1.abs().sum().item())
    s = S.compute("gradnorm", arrays, T=T)
    assert _rel(s, brute) <= RTOL
    assert _rel(np.asarray(ones_ce), C * s) <= RTOL  # all-ones CE target = C x GradNorm


def test_gradnorm_closed_form_identity(net):
    _, _, _, arrays = net
    h, f = arrays["h"], arrays["logits"]
    p = np.exp(f - f.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    direct = np.abs(h).sum(1) * np.abs(p - 1.0 / C).sum(1)
    assert _rel(S.compute("gradnorm", arrays), direct) <= 1e-12


@pytest.mark.parametrize("T", TEMPS)
def test_gradnorm_factors_product(net, T):
    _, _, _, arrays = net
    n, v = gradnorm_factors(arrays["h"], arrays["logits"], T=T)
    assert _rel(n * v, S.compute("gradnorm", arrays, T=T)) <= 1e-12
    assert _rel(n, np.abs(arrays["h"]).sum(1)) <= 1e-12


def test_exgrad_vs_autograd(net):
    body, head, x, arrays = net
    h = torch.as_tensor(arrays["h"])
    brute = []
    for i in range(N):
        with torch.no_grad():
            p = F.softmax(head(h[i][None])[0], 0)
        total = 0.0
        for y in range(C):
            gW, gb = _head_grads(head, h[i], lambda f: F.log_softmax(f, 0)[y])
            total += p[y].item() * ((gW**2).sum() + (gb**2).sum()).item()
        brute.append(total)
    s = S.compute("exgrad", arrays)
    assert _rel(-s, brute) <= RTOL  # registered score is the negated expectation
    n, v = exgrad_factors(arrays["h"], arrays["logits"])
    assert _rel(n * v, brute) <= RTOL
    assert _rel(n, (arrays["h"] ** 2).sum(1) + 1.0) <= 1e-12
    p = np.exp(arrays["logits"] - arrays["logits"].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert _rel(v, 1.0 - (p**2).sum(1)) <= 1e-10  # 1 - ||p||^2 factorisation


def test_norm_exp_grad_sibling_is_zero(net):
    """||E_{y~p} grad log p_y||^2 == 0 because E_{y~p} e_y = p."""
    _, head, _, arrays = net
    h = torch.as_tensor(arrays["h"])
    for i in range(N):
        with torch.no_grad():
            p = F.softmax(head(h[i][None])[0], 0)
        gW, gb = _head_grads(head, h[i], lambda f: (p * F.log_softmax(f, 0)).sum())
        one_term = _head_grads(head, h[i], lambda f: F.log_softmax(f, 0)[0])[0]
        assert (gW.norm() ** 2 + gb.norm() ** 2).item() <= 1e-20 * max(1.0, one_term.norm().item() ** 2)


def _grodin_brute(head, h, T):
    sg, g2, split_err = [], [], []
    for i in range(N):
        f0 = head(h[i][None])[0].detach()
        yhat = int(f0.argmax())
        gW, gb = _head_grads(head, h[i], lambda f: F.cross_entropy((f / T)[None], torch.tensor([yhat])))
        grad = torch.cat([gW.ravel(), gb])
        sg.append((grad**2).sum().item())
        # G = -sum_{c != yhat} exp((f_c - f_yhat)/T) d((f_c - f_yhat)/T)/dtheta  (weights detached)
        w = torch.exp((f0 - f0[yhat]) / T)
        w[yhat] = 0.0
        GW, Gb = _head_grads(head, h[i], lambda f: -(w * (f - f[yhat]) / T).sum())
        G = torch.cat([GW.ravel(), Gb])
        g2.append((G**2).sum().item())
        S_ = F.softmax(f0 / T, 0)[yhat]
        # CE gradient = -S * G (GRODIN's S*G is the gradient of log p_yhat; norms are identical)
        split_err.append(((grad + S_ * G).norm() / grad.norm()).item())
    return np.array(sg), np.array(g2), np.array(split_err)


@pytest.mark.parametrize("T", TEMPS)
def test_grodin_lastlayer_vs_autograd(net, T):
    _, head, _, arrays = net
    sg, g2, split_err = _grodin_brute(head, torch.as_tensor(arrays["h"]), T)
    assert _rel(-S.compute("grodin_sg_lastlayer", arrays, T=T), sg) <= RTOL
    assert _rel(-S.compute("grodin_g_lastlayer", arrays, T=T), g2) <= RTOL
    assert split_err.max() <= 1e-10
    # G = SG / S^2
    f = arrays["logits"] / T
    p = np.exp(f - f.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert (
        _rel(
            S.compute("grodin_g_lastlayer", arrays, T=T), S.compute("grodin_sg_lastlayer", arrays, T=T) / p.max(1) ** 2
        )
        <= 1e-10
    )


def test_grodin_lastlayer_huge_gap_finite():
    arrays = {"h": np.ones((2, 3)), "logits": np.array([[1e4, -1e4, 0.0], [5.0, 5.0, 5.0]])}
    sg = S.compute("grodin_sg_lastlayer", arrays)
    g = S.compute("grodin_g_lastlayer", arrays)
    assert sg[0] == 0.0 and g[0] == 0.0  # exact one-hot: zero gradient, no NaN
    # all-equal logits: p = u, ||p - e||^2 = (1 - 1/3)^2 + 2/9 = 2/3; (||h||^2 + 1) = 4
    assert np.isclose(sg[1], -2 / 3 * 4) and np.isclose(g[1], -2 / 3 * 4 * 9)


@pytest.mark.parametrize("clipped", [True, False])
@pytest.mark.parametrize("pct", [50.0, 90.0])
def test_rg_formula(net, clipped, pct):
    from scipy.special import logsumexp

    _, _, _, arrays = net
    train = {**arrays, "y": np.zeros(N, int)}
    state = S.fit("rg", train, percentile=pct)
    c = np.percentile(arrays["h"].ravel(), pct)
    assert state["c"] == pytest.approx(c, rel=1e-15)
    hc = np.minimum(arrays["h"], c)
    f = hc @ arrays["W"].T + arrays["b"] if clipped else arrays["h"] @ arrays["W"].T + arrays["b"]
    expected = np.abs(hc).sum(1) * logsumexp(f, axis=1)
    got = S.compute("rg", arrays, state, percentile=pct, clipped_logits=clipped)
    assert _rel(got, expected) <= 1e-10
    with pytest.raises(ValueError, match="fitted with percentile"):
        S.compute("rg", arrays, state, percentile=pct + 1)


def _cached(nE=3, nT=4, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "odin_eps": np.round(np.linspace(0, 0.004, 21), 10)[:nE],
        "odin_T": np.array([1.0, 2.0, 5.0, 10.0][:nT]),
        "odin_s": rng.uniform(0.2, 1.0, (nE, nT, n)).astype(np.float32),
        "grodin_sqnorm": rng.uniform(0.0, 50.0, (nE, nT, n)).astype(np.float32),
        "kl_allw_sqnorm": rng.uniform(0.0, 9.0, n).astype(np.float32),
    }


def test_grodin_cached_scores():
    a = _cached()
    eps, T = 0.0004, 5.0  # indices 2, 2
    s = a["odin_s"][2, 2].astype(float)
    sq = a["grodin_sqnorm"][2, 2].astype(float)
    assert np.array_equal(S.compute("grodin_s", a, eps=eps, T=T), s)
    assert np.array_equal(S.compute("grodin_sg", a, eps=eps, T=T), -sq)
    assert np.allclose(S.compute("grodin_g", a, eps=eps, T=T), -sq / s**2, rtol=1e-14)
    assert np.array_equal(S.compute("grodin_s", a), a["odin_s"][0, 0].astype(float))  # defaults eps=0, T=1
    with pytest.raises(ValueError, match="not on the cached grid"):
        S.compute("grodin_sg", a, eps=0.0003, T=T)
    with pytest.raises(ValueError, match="not on the cached grid"):
        S.compute("grodin_g", a, eps=eps, T=3.0)


def test_gradnorm_allweights_orientation():
    a = _cached()
    s = S.compute("gradnorm_allweights", a)
    assert np.allclose(s, np.sqrt(a["kl_allw_sqnorm"].astype(float)))
    assert np.all(s >= 0)
