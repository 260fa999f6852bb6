"""Low-dimensional gradient scores (Wu et al. 2023) and the forward+backward ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ood_core import scores as S
from ood_core.scores.lowdim import train_probe
from ood_core.scores.memo import Memo

C, D, K, N_TRAIN = 3, 5, 4, 90


@pytest.fixture(scope="module")
def data():
    r = np.random.default_rng(0)
    centres = r.normal(size=(C, K)) * 6
    y = np.repeat(np.arange(C), N_TRAIN // C)
    G = centres[y] + r.normal(size=(N_TRAIN, K))
    W, b = r.normal(size=(C, D)), r.normal(size=C)
    h = np.abs(r.normal(size=(N_TRAIN, D)))
    train = {"lowdim_pca": G.astype(np.float32), "y": y, "h": h, "logits": h @ W.T + b, "W": W, "b": b}
    ht = np.abs(r.normal(size=(12, D))) * 1.5
    test = {
        "lowdim_pca": (r.normal(size=(12, K)) * 3).astype(np.float32),
        "h": ht,
        "logits": ht @ W.T + b,
        "W": W,
        "b": b,
    }
    return train, test


def test_lowdim_knn_vs_sklearn(data):
    from sklearn.neighbors import NearestNeighbors

    train, test = data
    for k in (1, 5, 17):
        st = S.fit("lowdim_knn", train, k=k)
        Z = train["lowdim_pca"].astype(float)
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
        Q = test["lowdim_pca"].astype(float)
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        dist, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Z).kneighbors(Q)
        assert np.allclose(S.compute("lowdim_knn", test, st, k=k), -dist[:, -1], rtol=1e-9, atol=1e-12)


def test_lowdim_missing_subspace_is_clear(data):
    train, test = data
    with pytest.raises(KeyError, match="lowdim_classmean.*present: \\['lowdim_pca'\\]"):
        S.fit("lowdim_knn", train, subspace="classmean")


def test_probe_deterministic(data):
    train, test = data
    s1 = S.compute("lowdim_energy", test, S.fit("lowdim_energy", train))
    memo = Memo()
    st2 = S.fit("lowdim_energy", train, memo=memo)
    s2 = S.compute("lowdim_energy", test, st2)
    assert np.array_equal(s1, s2)  # bit-identical on retraining
    # memoised: a second fit with the same data + hyper-parameters and memo reuses the same probe object
    assert S.fit("lowdim_msp", train, memo=memo)["probe"] is st2["probe"]
    assert S.fit("lowdim_msp", train)["probe"] is not st2["probe"]  # no memo, no hidden cache: trained anew
    # a different seed gives a different probe (the test could fail)
    s3 = S.compute("lowdim_energy", test, S.fit("lowdim_energy", train, probe_seed=1), probe_seed=1)
    assert not np.array_equal(s1, s3)


def test_probe_learns(data):
    train, _ = data
    probe = S.fit("lowdim_msp", train)["probe"]
    acc = (probe.logits(train["lowdim_pca"]).argmax(1) == train["y"]).mean()
    assert acc > 0.9


def _torch_probe(probe):
    bn = torch.nn.BatchNorm1d(K).double().eval()
    lin = torch.nn.Linear(K, C).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.as_tensor(probe.bn_mean))
        bn.running_var.copy_(torch.as_tensor(probe.bn_var))
        bn.weight.copy_(torch.as_tensor(probe.bn_weight))
        bn.bias.copy_(torch.as_tensor(probe.bn_bias))
        lin.weight.copy_(torch.as_tensor(probe.weight))
        lin.bias.copy_(torch.as_tensor(probe.bias))
    return bn, lin


def test_probe_scores_vs_torch(data):
    train, test = data
    st = S.fit("lowdim_odin", train)
    bn, lin = _torch_probe(st["probe"])
    z = torch.as_tensor(test["lowdim_pca"], dtype=torch.float64).requires_grad_(True)
    f = lin(bn(z))
    assert np.allclose(S.compute("lowdim_energy", test, st), torch.logsumexp(f, 1).detach().numpy(), rtol=1e-10)
    assert np.allclose(S.compute("lowdim_msp", test, st), F.softmax(f, 1).max(1).values.detach().numpy(), rtol=1e-10)
    # ODIN on the probe input, T=100, eps=50 (autograd gradient of CE at yhat)
    T, eps = 100.0, 50.0
    loss = F.cross_entropy(f / T, f.argmax(1), reduction="sum")
    (gz,) = torch.autograd.grad(loss, z)
    with torch.no_grad():
        odin = F.softmax(lin(bn(z - eps * gz.sign())) / T, 1).max(1).values.numpy()
    assert np.allclose(S.compute("lowdim_odin", test, st), odin, rtol=1e-10)
    # GradNorm: KL(u || softmax) gradient of the probe's Linear weight, L1, per sample
    brute = []
    for i in range(len(z)):
        fi = lin(bn(z[i : i + 1].detach()))[0]
        kl = -(F.log_softmax(fi, 0)).mean()
        (gW,) = torch.autograd.grad(kl, lin.weight)
        brute.append(gW.abs().sum().item())
    assert np.allclose(S.compute("lowdim_gradnorm", test, st), brute, rtol=1e-8)


def test_lowdim_react_threshold_from_training_only(data):
    train, test = data
    st = S.fit("lowdim_react", train, percentile=90.0)
    assert st["c"] == np.percentile(train["lowdim_pca"].astype(float).ravel(), 90.0)
    s = S.compute("lowdim_react", test, st)
    # changing the other test samples changes neither the threshold nor a sample's score
    other = {**test, "lowdim_pca": np.concatenate([test["lowdim_pca"][:5], 100 * test["lowdim_pca"][5:]])}
    s_other = S.compute("lowdim_react", other, st)
    assert np.array_equal(s[:5], s_other[:5])
    assert st["c"] == S.fit("lowdim_react", train, percentile=90.0)["c"]
    # and the score is the probe energy of the clipped input
    z = np.minimum(test["lowdim_pca"].astype(float), st["c"])
    from scipy.special import logsumexp

    assert np.allclose(s, logsumexp(st["probe"].logits(z), axis=1), rtol=1e-12)
    # a different training set moves the threshold
    shifted = {**train, "lowdim_pca": train["lowdim_pca"] + 1.0}
    assert S.fit("lowdim_react", shifted)["c"] != st["c"]


@pytest.mark.parametrize("a", [1.0, 0.25])
def test_ensemble_is_sum_of_parts(data, a):
    train, test = data
    st = S.fit("lowdim_knn_react", train, a=a)
    knn = S.compute("lowdim_knn", test, S.fit("lowdim_knn", train, k=5), k=5)
    react = S.compute("react", test, S.fit("react", train, percentile=90.0), percentile=90.0)
    assert np.allclose(S.compute("lowdim_knn_react", test, st, a=a), a * knn + react, rtol=1e-13)


def _sklearn_kth_distance(train, test, k):
    """Distance of each L2-normalised test G_low to its k-th nearest L2-normalised training G_low."""
    from sklearn.neighbors import NearestNeighbors

    Z = train["lowdim_pca"].astype(float)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    Q = test["lowdim_pca"].astype(float)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    dist, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Z).kneighbors(Q)
    return dist[:, -1]


def test_lowdim_knn_published_is_k5(data):
    train, test = data
    spec = S.get("lowdim_knn_published")
    assert spec.grid == {} and "k" not in spec.defaults and spec.family == "lowdim"
    st = S.fit("lowdim_knn_published", train)
    s = S.compute("lowdim_knn_published", test, st)
    assert np.allclose(s, -_sklearn_kth_distance(train, test, 5), rtol=1e-10, atol=1e-10)
    # exactly ours at k = 5 (same helper, same bank and normalisation) ...
    assert np.array_equal(s, S.compute("lowdim_knn", test, S.fit("lowdim_knn", train), k=5))
    # ... and not ours at another k (the test could fail)
    assert not np.allclose(s, S.compute("lowdim_knn", test, S.fit("lowdim_knn", train), k=1))


def test_lowdim_knn_react_published_formula(data):
    from scipy.special import logsumexp

    train, test = data
    spec = S.get("lowdim_knn_react_published")
    assert spec.grid == {} and "a" not in spec.defaults and "k" not in spec.defaults
    st = S.fit("lowdim_knn_react_published", train)
    s = S.compute("lowdim_knn_react_published", test, st)
    # Wu et al.: 1 * (-(5-th NN distance)^2 on normalised G_low) + logsumexp(W min(h, c) + b), c = p90 of train h
    c = np.percentile(train["h"].ravel(), 90.0)
    react = logsumexp(np.minimum(test["h"], c) @ test["W"].T + test["b"], axis=1)
    ref = -(_sklearn_kth_distance(train, test, 5) ** 2) + react
    assert np.allclose(s, ref, rtol=1e-10, atol=1e-10)
    # the squared distance is what differs from ours at a = 1, k = 5 (plain distance)
    ours = S.compute("lowdim_knn_react", test, S.fit("lowdim_knn_react", train), a=1.0, k=5)
    assert not np.allclose(s, ours)


def test_lowdim_mahalanobis_matches_forward(data):
    train, test = data
    st = S.fit("lowdim_mahalanobis", train)
    fwd_train = {"h": train["lowdim_pca"], "y": train["y"]}
    ref = S.compute("mahalanobis", {"h": test["lowdim_pca"]}, S.fit("mahalanobis", fwd_train))
    assert np.allclose(S.compute("lowdim_mahalanobis", test, st), ref, rtol=1e-12)


def test_probe_rejects_bad_labels(data):
    train, _ = data
    with pytest.raises(ValueError, match="labels"):
        train_probe(train["lowdim_pca"], -np.ones(N_TRAIN, int), C)
