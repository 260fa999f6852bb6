"""Activation-gradient scores (NAC-UE, GAIA-Z, GAIA-A, GROOD): each against its formula written out
in numpy on tiny inputs; NAC-UE against pytorch-ood 0.4.0's ``NACUE`` on the same model and data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ood_core.scores as S
from ood_core.scores import activation_grad as AG

pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(f):
    e = np.exp(f - f.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _arrays(seed=0, n=40, C=3, D=5, stages=True):
    rng = np.random.default_rng(seed)
    h = np.abs(rng.normal(size=(n, D)))
    W, b = rng.normal(size=(C, D)), rng.normal(size=C)
    a = {"h": h, "logits": h @ W.T + b, "W": W, "b": b, "y": np.arange(n) % C}
    if stages:
        a.update({"nac_layer1": rng.normal(size=(n, 2)) * 300, "nac_layer2": rng.normal(size=(n, 3)) * 900})
        a["nac_layer3"] = rng.normal(size=(n, 4)) * 0.003
    return a


# --------------------------------------------------------------------------- NAC-UE
def test_nac_edges_are_the_authors():
    """M thresholds: log_1000(linspace(1, sqrt(1000), M/2)) mirrored at 0.5, last one + 0.01, then 1.2."""
    M = 10
    x = [np.log(v) / np.log(1000) for v in np.linspace(1, 1000**0.5, 5)]  # 0 .. 0.5
    want = x[:-1] + [1 - v for v in reversed(x)]
    want[-1] += 0.01
    want.append(1.2)
    np.testing.assert_allclose(AG.nac_edges(M), want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="even"):
        AG.nac_edges(9)


def _nac_formula(states_train, states_test, edges, O):
    """Written out: count the training states per neuron in [e_i, e_{i+1}); coverage min(count / O, 1);
    a test state scores its bin's coverage; mean over neurons."""
    n_bins, D = len(edges) - 1, states_train.shape[1]
    cov = np.zeros((n_bins, D))
    for d in range(D):
        for i in range(n_bins):
            inside = (states_train[:, d] >= edges[i]) & (states_train[:, d] < edges[i + 1])
            cov[i, d] = min(inside.sum() / O, 1.0)
    out = np.zeros(len(states_test))
    for r, s in enumerate(states_test):
        for d in range(D):
            i = next(i for i in range(n_bins) if edges[i] <= s[d] < edges[i + 1])
            out[r] += cov[i, d] / D
    return out


@pytest.mark.parametrize("O,M,alpha", [(50, 50, 100.0), (2, 6, 3.0), (1, 10, 0.5)])
def test_nac_ue_formula(O, M, alpha):
    tr, te = _arrays(0), _arrays(1, n=12)

    def states(a):  # sigmoid(alpha * h * dKL(u || p)/dh), dKL/dh = W^T (p - 1/C)
        q = a["h"] * ((_softmax(a["logits"]) - 1 / 3) @ a["W"])
        return 1 / (1 + np.exp(-alpha * q))

    st = S.fit("nac_ue", tr, O=O, M=M, alpha=alpha)
    got = S.compute("nac_ue", te, st, O=O, M=M, alpha=alpha)
    want = _nac_formula(states(tr), states(te), AG.nac_edges(M), O)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="fitted"):
        S.compute("nac_ue", te, st, O=O + 1, M=M, alpha=alpha)


def test_nac_ue_stages_is_the_mean_over_layers():
    tr, te = _arrays(2), _arrays(3, n=9)
    st = S.fit("nac_ue_stages", tr)
    got = S.compute("nac_ue_stages", te, st)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    per_layer = [S.compute("nac_ue", te, S.fit("nac_ue", tr))]
    for name, (O, M, alpha) in AG.NAC_STAGE_SETTINGS.items():
        per_layer.append(
            _nac_formula(sig(alpha * tr[f"nac_{name}"]), sig(alpha * te[f"nac_{name}"]), AG.nac_edges(M), O)
        )
    np.testing.assert_allclose(got, np.mean(per_layer, axis=0), rtol=1e-12)


def test_nac_fit_rows_class_balanced():
    y = np.repeat(np.arange(4), [30, 30, 30, 5])
    rows = AG.fit_rows(y, 40)
    assert np.bincount(y[rows]).tolist() == [10, 10, 10, 5]
    assert np.array_equal(rows, AG.fit_rows(y, 40)) and np.all(np.diff(rows) > 0)
    assert len(AG.fit_rows(y, 1000)) == len(y)
    tr = _arrays(4, n=60)
    assert AG.nac_tables(tr, 50, 50, 100.0, (), n_fit=30)["n_fit"] == 30


class _PooledNet(torch.nn.Module):
    """conv -> ReLU -> global average pool (module ``pool``, output = h) -> linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 6, 3, padding=1)
        self.pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(6, 3)

    def features(self, x):
        return self.pool(torch.relu(self.conv(x)))

    def forward(self, x):
        return self.head(self.features(x))


def _geometric_edges(m: int, eps: float = 1e-6) -> np.ndarray:
    """pytorch-ood 0.4.0's NACUE bin edges (``_bin_indices_geometric``), built as it builds them."""
    left = torch.logspace(np.log10(eps), np.log10(0.5), steps=m // 2 + 1)
    return torch.cat([left, (1.0 - left.flip(0))[1:]]).double().numpy()


@pytest.mark.parametrize("alpha,o_star", [(1.0, 3), (20.0, 1)])
def test_nac_ue_matches_pytorch_ood(alpha, o_star):
    """Same model, data, alpha and O on the pooled penultimate layer (where pytorch-ood's pooling of
    z * dKL/dz equals the authors' product of pooled z and dKL/dz). Conventions that differ, converted:
    pytorch-ood's M = 50 geometric bins on [1e-6, 1 - 1e-6], closed on the right and clamped (ours:
    the authors' edges; the test hands ours pytorch-ood's edges; interior ties have probability 0),
    and its sign (it returns -score, larger = OOD). Its KL adds 1e-12 inside the log (a change
    far below float32 rounding of the states here)."""
    pytest.importorskip("pytorch_ood")
    from pytorch_ood.detector import NACUE

    net = _PooledNet().eval()
    g = torch.Generator().manual_seed(1)
    x_tr, x_te = torch.randn(64, 2, 5, 5, generator=g), torch.randn(16, 2, 5, 5, generator=g) * 1.5
    det = NACUE(net, layers=[net.pool], m_bins=50, alpha=alpha, o_star=o_star)
    det.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr), batch_size=20))
    theirs = det.predict(x_te).double().numpy()

    def arrays(x):
        with torch.no_grad():
            h = net.features(x)
            return {"h": h.numpy(), "logits": net.head(h).numpy(), "W": net.head.weight.detach().numpy()}

    edges = _geometric_edges(50)
    q_tr, q_te = AG.penultimate_products(arrays(x_tr)), AG.penultimate_products(arrays(x_te))
    table = AG.nac_coverage_table(AG.nac_states(q_tr, alpha), edges, o_star)
    ours = AG.nac_layer_score(AG.nac_states(q_te, alpha), table, edges)
    assert np.ptp(ours) > 0.05  # the comparison is not between constants
    np.testing.assert_allclose(ours, -theirs, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- GAIA
def test_gaia_scores_negate_the_cached_abnormality():
    """The authors' score is the abnormality (larger = OOD), negated; the abnormality itself is checked
    against a per-sample float64 loop written out in numpy in test_grads_activations.py."""
    a = {"gaia_z": np.array([0.2, 0.5]), "gaia_a": np.array([3.0, 1.0])}
    np.testing.assert_array_equal(S.compute("gaia_z", a), [-0.2, -0.5])
    np.testing.assert_array_equal(S.compute("gaia_a", a), [-3.0, -1.0])


# --------------------------------------------------------------------------- GROOD
def _grood_formula(tr, te, k):
    """Written out per sample: prototypes, OOD prototype = their mean, CE(-distances, yhat) gradient
    w.r.t. the OOD prototype = q_ood (h - p_ood) / ||h - p_ood||; bank: correctly classified rows;
    score = -(squared distance to the k-th nearest bank gradient)."""
    C = tr["logits"].shape[1]
    P = np.array([tr["h"][tr["y"] == c].mean(0) for c in range(C)])
    p0 = P.mean(0)

    def grad(h):
        d = np.array([np.linalg.norm(h - p) for p in [*P, p0]])
        q = np.exp(-d) / np.exp(-d).sum()
        return q[-1] * (h - p0) / d[-1]

    right = tr["logits"].argmax(1) == tr["y"]
    bank = np.array([grad(h) for h in tr["h"][right]])
    out = []
    for h in te["h"]:
        d2 = np.sort(((bank - grad(h)) ** 2).sum(1))
        out.append(-d2[k - 1])
    return np.array(out), np.array([np.linalg.norm(h - p0) for h in te["h"]])


@pytest.mark.parametrize("k", [1, 3])
def test_grood_formula(k):
    tr, te = _arrays(5, n=30, stages=False), _arrays(6, n=8, stages=False)
    want, want_nog = _grood_formula(tr, te, k)
    np.testing.assert_allclose(S.compute("grood", te, S.fit("grood", tr), k=k), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        S.compute("grood_no_gradients", te, S.fit("grood_no_gradients", tr)), want_nog, rtol=1e-12
    )


def test_grood_gradient_is_autograd_of_the_prototype_loss():
    """The closed form equals torch autograd of CE(-||h - P||, yhat) w.r.t. the OOD prototype."""
    tr, te = _arrays(7, n=30, stages=False), _arrays(8, n=6, stages=False)
    st = S.fit("grood", tr)
    P = torch.tensor(np.vstack([st["prototypes"], st["ood_prototype"]]), requires_grad=True)
    h = torch.tensor(te["h"])
    yhat = torch.tensor(te["logits"].argmax(1))
    for i in range(len(h)):
        ce = torch.nn.functional.cross_entropy(-torch.linalg.norm(h[i] - P, dim=1)[None], yhat[i : i + 1])
        (g,) = torch.autograd.grad(ce, P)
        np.testing.assert_allclose(AG.grood_gradients(te["h"][i : i + 1], st)[0], g[-1].numpy(), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- registry
def test_registry_entries():
    assert S.names("activation_gradient") == [
        "nac_ue",
        "nac_ue_stages",
        "gaia_z",
        "gaia_a",
        "grood",
        "grood_no_gradients",
    ]
    assert S.family_display("activation_gradient") == "Activation gradient"
    for n in S.names("activation_gradient"):
        spec = S.get(n)
        assert spec.display and spec.paper and "Deviation" in spec.doc, n
        assert set(spec.grid) <= set(spec.defaults), n
    assert S.get("nac_ue").defaults == {"O": 50, "M": 50, "alpha": 100.0}
    assert S.get("grood").defaults == {"k": 1}
