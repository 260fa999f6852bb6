"""ASH-P/B/S, SCALE, GEN, fDBD, DICE, RMDS, NNGuide (ood_core/scores/forward_recent.py):
(a) each score against its formula written out independently in plain numpy (per-sample loops);
(b) each score against pytorch-ood 0.4.0's detector on the same features / logits (pytorch-ood's
scores are higher = more OOD, so ours are compared with -theirs, or with the stated relation where a
convention differs)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from ood_core import scores as S
from ood_core.scores import forward_recent as FR
from ood_core.scores.memo import Memo

pytestmark = pytest.mark.usefixtures("one_thread")

N, D, C, N_TRAIN = 7, 6, 4, 40


def _f32(a):
    """Values representable in float32, so pytorch-ood's internal float32 casts lose nothing."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _arrays(h, W, b, y=None):
    a = {"h": h, "logits": h @ W.T + b, "W": W, "b": b}
    if y is not None:
        a["y"] = y
    return a


def _setup(seed=0, d=D, c=C, n=N, n_train=N_TRAIN):
    """Tiny head, training set (every class present) and test set; h > 0 without ties (as pooled ReLU
    features, minus the exact zeros that make top-k ties)."""
    r = np.random.default_rng(seed)
    W, b = _f32(r.normal(size=(c, d))), _f32(r.normal(size=c))
    h_train = _f32(np.abs(r.normal(size=(n_train, d))) + 0.01)
    y = np.argmax(h_train @ W.T + b, axis=1)
    y[:c] = np.arange(c)
    h = _f32(np.abs(r.normal(size=(n, d))) + 0.01)
    return _arrays(h_train, W, b, y), _arrays(h, W, b)


def _energy(x, W, b):
    return logsumexp(x @ W.T + b, axis=1)


def _kept(row, p):
    """Indices of the k largest entries of one row, k = D - round(D p / 100) (written out)."""
    k = len(row) - int(np.round(len(row) * p / 100.0))
    return list(np.argsort(row)[::-1][:k])


# --------------------------------------------------------------------------- (a) plain numpy formulas
@pytest.mark.parametrize("p", [50.0, 65.0, 75.0, 90.0])
def test_ash_and_scale_formulas(p):
    _, te = _setup()
    h, W, b = te["h"], te["W"], te["b"]
    want = {k: np.empty(N) for k in ("ash_p", "ash_b", "ash_s", "scale")}
    for i, row in enumerate(h):
        keep = _kept(row, p)
        pruned = np.zeros(D)
        pruned[keep] = row[keep]
        binar = np.zeros(D)
        binar[keep] = row.sum() / len(keep)
        factor = np.exp(row.sum() / pruned.sum())
        for name, x in (("ash_p", pruned), ("ash_b", binar), ("ash_s", pruned * factor), ("scale", row * factor)):
            want[name][i] = logsumexp(W @ x + b)
    for name, w in want.items():
        np.testing.assert_allclose(S.compute(name, te, percentile=p), w, rtol=1e-10, atol=0, err_msg=name)


def test_ash_percentile_keeping_nothing_keeps_the_largest():
    _, te = _setup()
    assert FR.n_kept(6, 90.0) == 1 and FR.n_kept(6, 75.0) == 2  # 4.5 rounds half to even, as the authors'
    assert FR.n_kept(6, 95.0) == 1  # the authors' k = 6 - round(5.7) = 0: one kept instead
    np.testing.assert_array_equal(FR.top_mask(te["h"], 95.0), FR.top_mask(te["h"], 90.0))
    assert np.all(np.isfinite(S.compute("ash_s", te, percentile=95.0)))


def test_ash_zero_features_and_ties():
    _, te = _setup()
    z = {**te, "h": np.zeros((2, D))}
    for name in ("ash_p", "ash_b", "ash_s", "scale"):  # all-zero h: logits = b (ASH-S/SCALE factor e, not NaN)
        np.testing.assert_allclose(S.compute(name, z), logsumexp(te["b"]) * np.ones(2), rtol=1e-12)
    tie = {
        **te,
        "h": np.array([[0.0, 0.0, 3.0, 0.0, 0.0, 0.0]]),
    }  # p = 75 keeps 2: index 2 and, of the tied zeros, index 0
    np.testing.assert_allclose(
        S.compute("ash_b", tie, percentile=75.0), logsumexp(te["W"][:, [0, 2]].sum(1) * 1.5 + te["b"]), rtol=1e-12
    )


@pytest.mark.parametrize("gamma,M", [(0.1, 100), (0.1, 2), (1.0, 1), (2.0, 3)])
def test_gen_formula(gamma, M):
    _, te = _setup()
    want = np.empty(N)
    for i, row in enumerate(te["logits"]):
        p = np.sort(np.exp(row) / np.exp(row).sum())[::-1][: min(M, C)]
        want[i] = -sum(pj**gamma * (1 - pj) ** gamma for pj in p)
    np.testing.assert_allclose(S.compute("gen", te, gamma=gamma, M=M), want, rtol=1e-10, atol=0)


def test_gen_near_certain_top_class_keeps_its_term():
    """1 - p_top computed without cancellation: with logits (40, 0, 0, 0), 1 - p_top = 1.3e-17 rounds to 0
    in float64 if done as 1 - p; the exact factor (1.3e-17) ** 0.1 = 0.02 is kept."""
    a = {"logits": np.array([[40.0, 0.0, 0.0, 0.0]])}
    others = 3 * np.exp(-40.0) / (1 + 3 * np.exp(-40.0))
    p_other = np.exp(-40.0) / (1 + 3 * np.exp(-40.0))
    want = -(((1 - others) * others) ** 0.1 + 3 * (p_other * (1 - p_other)) ** 0.1)
    np.testing.assert_allclose(S.compute("gen", a), want, rtol=1e-12)


def test_fdbd_formula():
    tr, te = _setup()
    mu = tr["h"].mean(axis=0)
    want = np.empty(N)
    for i, (x, f) in enumerate(zip(te["h"], te["logits"])):
        c_hat = int(np.argmax(f))
        dists = [abs(f[c_hat] - f[c]) / np.linalg.norm(te["W"][c_hat] - te["W"][c]) for c in range(C) if c != c_hat]
        want[i] = np.mean(dists) / np.linalg.norm(x - mu)
    st = S.fit("fdbd", tr)
    np.testing.assert_allclose(S.compute("fdbd", te, st), want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_dice_formula(p):
    tr, te = _setup()
    mean = tr["h"].mean(axis=0)
    contrib = np.array([[mean[d] * tr["W"][c, d] for d in range(D)] for c in range(C)])
    thresh = np.percentile(contrib.ravel(), p)
    Wm = np.array([[tr["W"][c, d] if contrib[c, d] > thresh else 0.0 for d in range(D)] for c in range(C)])
    assert abs((Wm != 0).sum() - C * D * (100 - p) / 100) <= 1  # keeps the top (100 - p) %
    st = S.fit("dice", tr, p=p)
    np.testing.assert_allclose(S.compute("dice", te, st, p=p), _energy(te["h"], Wm, te["b"]), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="fitted with p="):
        S.compute("dice", te, st, p=p + 1)


def test_rmds_formula():
    tr, te = _setup()
    h, y = tr["h"], tr["y"]
    mus = [h[y == c].mean(axis=0) for c in range(C)]
    within = sum(np.outer(x - mus[c], x - mus[c]) for x, c in zip(h, y)) / len(h)
    P, P0 = np.linalg.inv(within), np.linalg.inv(np.cov(h.T, bias=True))  # full rank here: inv = pinv
    mu0 = h.mean(axis=0)
    want = np.empty(N)
    for i, x in enumerate(te["h"]):
        md0 = (x - mu0) @ P0 @ (x - mu0)
        want[i] = -min((x - mu) @ P @ (x - mu) - md0 for mu in mus)
    np.testing.assert_allclose(S.compute("rmds", te, S.fit("rmds", tr)), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_nnguide_formula(k):
    tr, te = _setup()
    bank = [x / np.linalg.norm(x) * logsumexp(f) for x, f in zip(tr["h"], tr["logits"])]
    want = np.empty(N)
    for i, (x, f) in enumerate(zip(te["h"], te["logits"])):
        sims = sorted((x / np.linalg.norm(x) @ v for v in bank), reverse=True)[: min(k, N_TRAIN)]
        want[i] = np.mean(sims) * logsumexp(f)
    st = S.fit("nnguide", tr)
    np.testing.assert_allclose(S.compute("nnguide", te, st, k=k), want, rtol=1e-10, atol=1e-14)
    no_memo = {**st, "tables": None}
    np.testing.assert_allclose(S.compute("nnguide", te, no_memo, k=k), want, rtol=1e-10, atol=1e-14)


def test_nnguide_memo_one_search_per_query_set():
    tr, te = _setup()
    memo = Memo()
    st = S.fit("nnguide", tr, memo=memo)
    first = S.compute("nnguide", te, st, k=5)
    assert len(memo) == 1
    S.compute("nnguide", te, st, k=20)
    assert len(memo) == 1  # the k grid reads one table
    np.testing.assert_array_equal(S.compute("nnguide", te, st, k=5), first)


def test_registry_entries():
    expected = {
        "ash_p": ("ASH-P", {"percentile": 90.0}),
        "ash_b": ("ASH-B", {"percentile": 90.0}),
        "ash_s": ("ASH-S", {"percentile": 90.0}),
        "scale": ("SCALE", {"percentile": 85.0}),
        "gen": ("GEN", {"gamma": 0.1, "M": 100}),
        "fdbd": ("fDBD", {}),
        "dice": ("DICE", {"p": 90.0}),
        "rmds": ("RMDS", {}),
        "nnguide": ("NNGuide", {"k": 100}),
    }
    for name, (display, defaults) in expected.items():
        spec = S.get(name)
        assert spec.family == "forward" and spec.display == display and spec.defaults == defaults, name
        assert spec.paper and "eviation" in spec.doc, name
        assert (spec.fit is not None) == (name in ("fdbd", "dice", "rmds", "nnguide")), name
    assert S.get("ash_b").grid == {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0]}


# --------------------------------------------------------------------------- (b) pytorch-ood 0.4.0
def _torch(a):
    import torch

    return torch.as_tensor(np.asarray(a))


def _linear(W, b, dtype):
    import torch

    lin = torch.nn.Linear(W.shape[1], W.shape[0]).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(_torch(W))
        lin.bias.copy_(_torch(b))
    return lin


@pytest.mark.parametrize("p", FR.SHAPING_PERCENTILE_GRID)
def test_ash_scale_match_pytorch_ood(p):
    """pytorch-ood's ASH / SCALE on h viewed as (N, D, 1, 1) feature maps, energy score; percentile as a
    fraction there. Same formula: ours = -theirs (float64 both)."""
    pytest.importorskip("pytorch_ood")
    import torch
    from pytorch_ood.detector import ASH, SCALE

    _, te = _setup(d=32)  # D = 32 keeps k >= 2 on the whole grid
    head = _linear(te["W"], te["b"], torch.float64)
    maps = _torch(te["h"]).view(N, 32, 1, 1)

    def head_fn(x):
        return head(x.flatten(1))

    for variant in ("ash-p", "ash-b", "ash-s"):
        theirs = ASH(backbone=None, head=head_fn, variant=variant, percentile=p / 100).predict_feature_maps(maps)
        ours = S.compute(variant.replace("-", "_"), te, percentile=p)
        np.testing.assert_allclose(ours, -theirs.numpy(), rtol=1e-12, atol=1e-12, err_msg=variant)
    theirs = SCALE(backbone=None, head=head_fn, percentile=p / 100).predict_feature_maps(maps)
    np.testing.assert_allclose(S.compute("scale", te, percentile=p), -theirs.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma,M", [(0.1, None), (0.1, 2), (2.0, 3)])
def test_gen_relation_to_pytorch_ood(gamma, M):
    """Convention difference: pytorch-ood's GEN averages the top-M terms (ours and the authors' code sum
    them) and clamps p to [1e-7, 1 - 1e-7] (inactive here). Relation: ours = -min(M, C) * theirs."""
    pytest.importorskip("pytorch_ood")
    from pytorch_ood.detector import GEN

    _, te = _setup()
    p = softmax(te["logits"], axis=1)
    assert p.min() > 1e-7 and p.max() < 1 - 1e-7  # the clamp does nothing on these logits
    theirs = GEN.score(_torch(te["logits"]), gamma=gamma, M=M).numpy()
    m = C if M is None else min(M, C)
    ours = S.compute("gen", te, gamma=gamma, M=100 if M is None else M)
    np.testing.assert_allclose(ours, -m * theirs, rtol=1e-12, atol=0)


def test_fdbd_matches_pytorch_ood():
    """Same formula (mean over the non-predicted classes, as the paper); pytorch-ood computes in float32,
    so equality to float32 rounding. (The authors' code and OpenOOD sum instead: a factor C - 1.)"""
    pytest.importorskip("pytorch_ood")
    import torch
    from pytorch_ood.detector import fDBD

    tr, te = _setup()
    det = fDBD(encoder=None, head=_linear(te["W"], te["b"], torch.float32)).fit_features(_torch(tr["h"]))
    theirs = det.predict_features(_torch(te["h"]).float()).numpy()
    ours = S.compute("fdbd", te, S.fit("fdbd", tr))
    np.testing.assert_allclose(ours, -theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_dice_matches_pytorch_ood(p):
    """Same formula (mask from torch.quantile = np.percentile, linear interpolation); p as a fraction
    there. ours = -theirs (their mask in float32 on float32-exact inputs, scoring in float64)."""
    pytest.importorskip("pytorch_ood")
    from pytorch_ood.detector import DICE

    tr, te = _setup()
    det = DICE(encoder=None, w=_torch(te["W"]), b=_torch(te["b"]), p=p / 100)
    det.fit_features(_torch(tr["h"]), _torch(tr["y"]))
    theirs = det.predict_features(_torch(te["h"])).numpy()
    st = S.fit("dice", tr, p=p)
    assert np.array_equal(st["mask"], det.masked_w.numpy() != 0)
    np.testing.assert_allclose(S.compute("dice", te, st, p=p), -theirs, rtol=1e-12, atol=1e-12)


def test_rmds_relation_to_pytorch_ood():
    """Convention difference: pytorch-ood's RMD inverts unnormalised scatter matrices (sum over the
    training rows, not the mean) plus 1e-6 I, for the class-conditional and the background Gaussian
    alike, so its distances are 1/N_train of the covariance-based ones (OpenOOD's, the paper's, ours) up
    to that ridge. Relation: ours = -N_train * theirs (to ~1e-6 relative: the ridge)."""
    pytest.importorskip("pytorch_ood")
    import torch
    from pytorch_ood.detector import RMD

    tr, te = _setup()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its buffers (torch.zeros / eye) follow the default dtype
    try:
        det = RMD(encoder=None).fit_features(_torch(tr["h"]), _torch(tr["y"]))
        theirs = det.predict_features(_torch(te["h"])).numpy()
    finally:
        torch.set_default_dtype(old)
    ours = S.compute("rmds", te, S.fit("rmds", tr))
    np.testing.assert_allclose(ours, -N_TRAIN * theirs, rtol=1e-5, atol=1e-5 * np.abs(ours).max())


@pytest.mark.parametrize("k", [1, 5, 40])
def test_nnguide_matches_pytorch_ood(k):
    """Same formula (bank = normalised training features times their energy, top-k inner products,
    times the sample's energy); pytorch-ood works in float32: equality to float32 rounding."""
    pytest.importorskip("pytorch_ood")
    import torch
    from pytorch_ood.detector import NNGuide

    tr, te = _setup()
    det = NNGuide(encoder=None, head=_linear(te["W"], te["b"], torch.float32), k=k)
    det.fit_features(_torch(tr["h"]), _torch(tr["y"]))
    theirs = det.predict_features(_torch(te["h"]).float()).numpy()
    ours = S.compute("nnguide", te, S.fit("nnguide", tr), k=k)
    np.testing.assert_allclose(ours, -theirs, rtol=1e-6, atol=1e-6 * np.abs(ours).max())
