"""Forward scores vs direct numpy formulas, edge cases for every registered score, and the registry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from ood_core import scores as S
from ood_core.scores.registry import FAMILIES

RNG = np.random.default_rng(1)
C, D, K = 4, 6, 3


def _model(seed=0, scale=1.0):
    r = np.random.default_rng(seed)
    return r.normal(size=(C, D)) * scale, r.normal(size=C)


def _arrays(h, W, b, y=None, seed=0, lowdim=None):
    """A complete arrays mapping (every key any registered score may need)."""
    r = np.random.default_rng(seed)
    n = len(h)
    a = {
        "h": h,
        "logits": h @ W.T + b,
        "W": W,
        "b": b,
        "odin_eps": np.round(np.linspace(0, 0.004, 21), 10),
        "odin_T": np.array([1.0, 2, 5, 10, 20, 50, 100, 200, 500, 1000]),
        "odin_s": r.uniform(0.25, 1, (21, 10, n)).astype(np.float32),
        "grodin_sqnorm": r.uniform(0, 10, (21, 10, n)).astype(np.float32),
        "iodin_s": r.uniform(0.25, 1, (21, 10, n)).astype(np.float32),
        "kl_allw_sqnorm": r.uniform(0, 10, n).astype(np.float32),
        "lowdim_pca": r.normal(size=(n, K)) if lowdim is None else lowdim,
        "gaia_z": r.uniform(0, 1, n).astype(np.float32),
        "gaia_a": r.uniform(0, 10, n).astype(np.float32),
        **{f"nac_layer{i}": r.normal(size=(n, 2 * i)).astype(np.float32) for i in (1, 2, 3)},
    }
    if y is not None:
        a["y"] = y
    return a


@pytest.fixture(scope="module")
def train():
    W, b = _model()
    h = np.abs(RNG.normal(size=(60, D)))
    y = np.argmax(h @ W.T + b, axis=1)
    y[:C] = np.arange(C)  # every class present
    return _arrays(h, W, b, y=y, seed=5)


@pytest.fixture(scope="module")
def states(train):
    return {n: S.fit(n, train) for n in S.names()}


# --------------------------------------------------------------------------- direct formulas
LOGITS = np.array([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 3.0, 1.0], [-2.0, -2.0, -2.0, -2.0]])


def test_msp_maxlogit_energy_direct():
    a = {"logits": LOGITS}
    assert np.allclose(S.compute("msp", a), softmax(LOGITS, axis=1).max(1), rtol=1e-14)
    assert np.array_equal(S.compute("maxlogit", a), LOGITS.max(1))
    assert np.allclose(S.compute("energy", a), logsumexp(LOGITS, axis=1), rtol=1e-14)
    assert np.allclose(S.compute("energy", a, T=2.0), 2.0 * logsumexp(LOGITS / 2.0, axis=1), rtol=1e-14)


def test_ties():
    a = {"logits": np.array([[1.0, 1.0, 0.0]])}
    e = np.e
    assert S.compute("msp", a)[0] == pytest.approx(e / (2 * e + 1), rel=1e-14)
    assert S.compute("maxlogit", a)[0] == 1.0
    # tie in the argmax: GRODIN last layer must not depend on which top class is picked
    h = np.ones((1, 2))
    sg = S.compute("grodin_sg_lastlayer", {"h": h, "logits": a["logits"]})
    p = softmax(a["logits"][0])
    assert sg[0] == pytest.approx(-(((p - np.eye(3)[0]) ** 2).sum()) * 3, rel=1e-12)


def test_odin_reads_grid_slice():
    W, b = _model()
    a = _arrays(np.ones((5, D)), W, b)
    assert np.array_equal(S.compute("odin", a), a["odin_s"][0, 9].astype(float))  # T=1000, eps=0
    assert np.array_equal(S.compute("odin", a, T=20, eps=0.0014), a["odin_s"][7, 4].astype(float))
    assert np.array_equal(S.compute("iodin", a), a["iodin_s"][7, 9].astype(float))  # T=1000, eps=0.0014
    assert np.array_equal(S.compute("iodin", a, T=20, eps=0.0), a["iodin_s"][0, 4].astype(float))
    with pytest.raises(ValueError, match="not on the cached grid"):
        S.compute("odin", a, eps=0.0015)
    with pytest.raises(ValueError, match="not on the cached grid"):
        S.compute("odin", a, T=3)


def test_react_percentile_and_formula(train):
    for p in (85.0, 90.0, 99.0):
        st = S.fit("react", train, percentile=p)
        c = np.percentile(train["h"].ravel(), p)
        assert st["c"] == c
        test = _arrays(np.abs(RNG.normal(size=(7, D))) * 2, train["W"], train["b"])
        exp = logsumexp(np.minimum(test["h"], c) @ train["W"].T + train["b"], axis=1)
        assert np.allclose(S.compute("react", test, st, percentile=p), exp, rtol=1e-13)
    with pytest.raises(ValueError, match="needs training statistics"):
        S.compute("react", test)


def test_mahalanobis_vs_numpy(train, states):
    X, y = train["h"], train["y"]
    mus = np.stack([X[y == c].mean(0) for c in range(C)])
    cen = X - mus[y]
    P = np.linalg.inv(cen.T @ cen / len(X))
    test = _arrays(RNG.normal(size=(8, D)), train["W"], train["b"])
    d = test["h"][:, None, :] - mus[None]
    expected = (-np.einsum("ncd,de,nce->nc", d, P, d)).max(1)
    assert np.allclose(S.compute("mahalanobis", test, states["mahalanobis"]), expected, rtol=1e-9)
    # sklearn's EmpiricalCovariance gives the same precision
    from sklearn.covariance import EmpiricalCovariance

    assert np.allclose(states["mahalanobis"]["precision"], EmpiricalCovariance().fit(cen).precision_, rtol=1e-8)


@pytest.mark.parametrize("k", [1, 5, 60, 500])
def test_knn_vs_sklearn(train, states, k):
    from sklearn.neighbors import NearestNeighbors

    Z = train["h"] / np.linalg.norm(train["h"], axis=1, keepdims=True)
    test = _arrays(np.abs(RNG.normal(size=(11, D))), train["W"], train["b"])
    Q = test["h"] / np.linalg.norm(test["h"], axis=1, keepdims=True)
    kk = min(k, len(Z))  # k capped at n_train, with a warning
    dist, _ = NearestNeighbors(n_neighbors=kk, algorithm="brute").fit(Z).kneighbors(Q)
    if k > len(Z):
        with pytest.warns(UserWarning, match=f"k = {k} exceeds the {len(Z)} training rows"):
            got = S.compute("knn", test, states["knn"], k=k)
    else:
        got = S.compute("knn", test, states["knn"], k=k)
    assert np.allclose(got, -dist[:, -1], rtol=1e-9, atol=1e-12)


def test_knn_chunked_equals_unchunked(train):
    from ood_core.scores._common import kth_nn_distance

    Q = RNG.normal(size=(13, D))
    full = kth_nn_distance(Q, train["h"], 7)
    chunked = kth_nn_distance(Q, train["h"], 7, q_chunk=4, b_chunk=9)
    assert np.allclose(full, chunked, rtol=1e-12)


def test_knn_memo_gives_the_exact_kth_distance_for_every_k(train, monkeypatch):
    """knn_score memoises one sorted distance table per (query, bank) in the memo it is given; every k
    reads its column, equal to a fresh exact search, also when a later k exceeds the table (it is
    rebuilt deeper)."""
    from ood_core.scores import forward
    from ood_core.scores._common import kth_nn_distance, l2_normalize
    from ood_core.scores.memo import Memo

    monkeypatch.setattr(forward, "NN_TABLE_K", 3)
    tables = Memo()
    Q = RNG.normal(size=(11, D))
    bank = l2_normalize(train["h"])
    for k in (1, 3, 2, 6, 4, len(bank) + 5):
        kk = min(k, len(bank))
        assert np.array_equal(forward.knn_score(Q, bank, k, tables=tables), -kth_nn_distance(l2_normalize(Q), bank, kk))
        assert np.array_equal(forward.knn_score(Q, bank, k), -kth_nn_distance(l2_normalize(Q), bank, kk))  # no memo
    assert len(tables) == 1 and next(tables.values()).shape[1] == len(bank)


def test_memo_drops_least_recently_used_arrays_over_budget():
    from ood_core.scores.memo import Memo

    memo = Memo(budget_bytes=2 * 80)
    a, b, c = (np.zeros(10) for _ in range(3))  # 80 bytes each
    memo.put("probe", object())  # no arrays: never dropped
    memo.put("a", a), memo.put("b", b)
    assert memo.get("a") is a  # "b" is now the least recently used array
    memo.put("c", c)
    assert memo.get("b") is None and memo.get("a") is a and memo.get("c") is c and memo.get("probe") is not None
    assert memo.nbytes == 160


def test_vim_dim_D_minus_1_vs_eigh(train):
    W, b = train["W"], train["b"]
    st = S.fit("vim", train, dim=D - 1)
    o = -np.linalg.pinv(W) @ b
    X = train["h"] - o
    evals, evecs = np.linalg.eigh(X.T @ X / len(X))
    v = evecs[:, 0]  # smallest eigenvalue = the 1-dim residual space
    r_train = np.abs(X @ v)
    alpha = (train["logits"].max(1)).mean() / r_train.mean()
    test = _arrays(RNG.normal(size=(9, D)), W, b)
    r = np.abs((test["h"] - o) @ v)
    expected = logsumexp(test["logits"], axis=1) - alpha * r
    assert st["alpha"] == pytest.approx(alpha, rel=1e-10)
    assert np.allclose(S.compute("vim", test, st, dim=D - 1), expected, rtol=1e-9)
    # default dim rule: min(256, D // 2)
    assert S.fit("vim", train)["dim"] == D // 2


def test_vim_dim_at_or_above_D_is_not_applicable_and_tuning_skips_it(train):
    from ood_core.evaluation import tuning
    from ood_core.scores.registry import NotApplicable

    with pytest.raises(NotApplicable, match=f"dim = {D} leaves no residual of the D = {D} features"):
        S.fit("vim", train, dim=D)
    test = _arrays(RNG.normal(size=(9, D)), train["W"], train["b"])
    ood = _arrays(RNG.normal(size=(7, D)) * 3, train["W"], train["b"])
    fits = tuning.FitCache(train)
    best, table = tuning.select("vim", test, ood, fits.state_fn("vim"), {"dim": [2, D, 1000]})
    assert [p["dim"] for p, _ in table] == [2] and best == {"dim": 2}
    with pytest.raises(NotApplicable, match="no grid point applies"):
        tuning.select("vim", test, ood, fits.state_fn("vim"), {"dim": [D, 1000]})


# --------------------------------------------------------------------------- edge cases, every score
def _edge_cases():
    W, b = _model()
    Wbig, _ = _model(scale=1e4 / 3)
    cases = {
        "random": _arrays(np.abs(RNG.normal(size=(5, D))), W, b),
        "zero_features": _arrays(np.zeros((4, D)), W, b, lowdim=np.zeros((4, K))),
        "one_sample": _arrays(np.abs(RNG.normal(size=(1, D))), W, b),
        "equal_logits": _arrays(np.zeros((3, D)), W, np.full(C, 0.7)),
    }
    huge = _arrays(np.abs(RNG.normal(size=(4, D))), Wbig, b, lowdim=RNG.normal(size=(4, K)) * 1e4)
    huge["logits"] = np.array([[1e4, -1e4, 0, 0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, 1e4, 1e4], [1e4, 1e4, -1e4, 3]])
    cases["huge_logits"] = huge
    return cases


@pytest.mark.parametrize("case", list(_edge_cases()))
def test_every_score_finite_on_edge_cases(case, states):
    a = _edge_cases()[case]
    n = len(a["h"])
    for name in S.names():
        s = S.compute(name, a, states[name])  # compute() itself rejects non-finite output
        assert s.shape == (n,) and s.dtype == np.float64, name


def test_extreme_values():
    a = {"logits": np.array([[1e4, -1e4], [-1e4, 1e4], [-1e4, -1e4]]), "h": np.ones((3, 2))}
    assert np.allclose(S.compute("msp", a), [1.0, 1.0, 0.5])
    assert np.allclose(S.compute("energy", a), [1e4, 1e4, -1e4 + np.log(2)], rtol=1e-15)
    assert np.allclose(S.compute("gradnorm", a), [2 * 1.0, 2 * 1.0, 0.0])  # ||h||_1 * ||p - u||_1
    assert np.allclose(S.compute("exgrad", a), [0.0, 0.0, -3 * 0.5])


def test_all_equal_logits():
    a = {"logits": np.full((2, 5), 3.0), "h": np.array([[1.0, 2.0], [0.0, 0.0]])}
    assert np.allclose(S.compute("msp", a), 0.2)
    assert np.allclose(S.compute("energy", a), 3.0 + np.log(5), rtol=1e-15)
    assert np.allclose(S.compute("gradnorm", a), 0.0)
    assert np.allclose(S.compute("family_q1_infogain", a), 0.0, atol=1e-15)
    assert np.allclose(S.compute("family_q2_sqnorm", a), [np.sqrt(5) * 0.2, 0.0])


def test_knn_zero_feature_distance(states, train):
    a = _arrays(np.zeros((2, D)), train["W"], train["b"])
    assert np.allclose(S.compute("knn", a, states["knn"], k=1), -1.0)  # 0 vs unit vectors


def test_single_class_training_set(train):
    one = {**train, "y": np.zeros(len(train["h"]), int)}
    st = S.fit("mahalanobis", one)
    test = _arrays(RNG.normal(size=(3, D)), train["W"], train["b"])
    mu = train["h"].mean(0)
    P = np.linalg.pinv(np.cov(train["h"].T, bias=True))
    d = test["h"] - mu
    assert np.allclose(S.compute("mahalanobis", test, st), -np.einsum("nd,de,ne->n", d, P, d), rtol=1e-8)


def test_single_predicted_class_batch():
    logits = np.tile([5.0, 1.0, 0.0], (4, 1)) + np.arange(4)[:, None] * 0.1
    a = {"logits": logits, "h": np.ones((4, 2))}
    assert np.allclose(S.compute("msp", a), softmax(logits, axis=1)[:, 0])
    assert np.ptp(S.compute("msp", a)) < 1e-12  # shift-invariant


# --------------------------------------------------------------------------- decomposition
def test_decomposition_members(train):
    from ood_core.scores.decomposition import V_energy, V_infogain, V_l1u, V_msp, V_sqnorm, feature_term

    h, f = train["h"], train["logits"]
    p = softmax(f, axis=1)
    assert np.allclose(feature_term(h, 1), np.abs(h).sum(1))
    assert np.allclose(feature_term(h, 3), (np.abs(h) ** 3).sum(1) ** (1 / 3))
    assert np.allclose(V_msp(f), p.max(1))
    assert np.allclose(V_l1u(f), np.abs(p - 1 / C).sum(1))
    assert np.allclose(V_sqnorm(f), (p**2).sum(1))
    assert np.allclose(V_energy(f), logsumexp(f, axis=1))
    assert np.allclose(V_infogain(f), np.log(C) + (p * np.log(p)).sum(1))
    s = S.compute("family_q2_energy", {"h": h, "logits": f}, a=2.0)
    assert np.allclose(s, (h**2).sum(1) * logsumexp(f, axis=1))


# --------------------------------------------------------------------------- registry
def test_registry_covers_families():
    for fam in FAMILIES:
        assert S.names(fam), f"no score in family {fam}"
    expected = {
        "msp",
        "maxlogit",
        "energy",
        "odin",
        "react",
        "mahalanobis",
        "knn",
        "vim",
        "ash_p",
        "ash_b",
        "ash_s",
        "scale",
        "gen",
        "fdbd",
        "dice",
        "rmds",
        "nnguide",
        "gradnorm",
        "gradnorm_last_l2",
        "exgrad",
        "rg",
        "grodin_sg_lastlayer",
        "grodin_g_lastlayer",
        "grodin_s",
        "grodin_g",
        "grodin_sg",
        "gradnorm_allweights",
        "lowdim_knn",
        "lowdim_msp",
        "lowdim_energy",
        "lowdim_odin",
        "lowdim_react",
        "lowdim_gradnorm",
        "lowdim_mahalanobis",
        "lowdim_knn_react",
        "lowdim_knn_published",
        "lowdim_knn_react_published",
    }
    expected |= {f"family_q{q}_{v}" for q in (1, 2) for v in ("msp", "l1u", "sqnorm", "energy", "infogain")}
    assert expected <= set(S.names())
    for n in S.names():
        spec = S.get(n)
        assert spec.doc, f"{n} has no docstring"
        assert set(spec.grid) <= set(spec.defaults), n


def test_registry_errors():
    with pytest.raises(KeyError, match="known scores: .*msp"):
        S.get("no_such_score")
    with pytest.raises(TypeError, match="no parameter"):
        S.compute("energy", {"logits": LOGITS}, temperature=2)
    with pytest.raises(KeyError, match="needs arrays"):
        S.compute("react", {"logits": LOGITS})


# --------------------------------------------------------------------------- CLI
def test_cli_scores_npz(tmp_path, train, capsys):
    import json

    from analysis.score import main

    arr = tmp_path / "arrays"
    arr.mkdir()
    W, b = train["W"], train["b"]
    np.savez(tmp_path / "head.npz", W=W, b=b)
    np.savez(arr / "train.npz", **{k: v for k, v in train.items() if k not in ("W", "b")})
    test = _arrays(np.abs(RNG.normal(size=(7, D))), W, b)
    np.savez(arr / "ood.npz", **{k: v for k, v in test.items() if k not in ("W", "b")})
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "--arrays",
                str(arr),
                "--train",
                "train",
                "--eval",
                "ood",
                "train",
                "--scores",
                "msp",
                "energy",
                "react",
                "--set",
                "energy.T=2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    z = np.load(out)
    assert np.allclose(z["energy/ood"], 2 * logsumexp(test["logits"] / 2, axis=1))
    assert np.allclose(z["react/ood"], S.compute("react", test, S.fit("react", train)))
    assert json.loads(str(z["__meta__"]))["params"]["energy"] == {"T": 2}
    assert main(["--list"]) == 0 and "lowdim_knn_react" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no parameter 'tau'"):
        main(
            [
                "--arrays",
                str(arr),
                "--train",
                "train",
                "--eval",
                "ood",
                "--scores",
                "energy",
                "--set",
                "energy.tau=2",
                "--out",
                str(out),
            ]
        )
    # 'all' scores every score whose arrays exist (all of them here, W/b from ../head.npz)
    assert main(["--arrays", str(arr), "--train", "train", "--eval", "ood", "--out", str(out)]) == 0
    assert {f"{n}/ood" for n in S.names()} <= set(np.load(out).files)


def test_knn_bank_is_hashed_once_at_fit_not_per_scoring_call(train, monkeypatch):
    """Fitted KNN states carry the bank's fingerprint: scoring hashes only the queries, and the
    scores equal those of a state without the key (which hashes the bank itself)."""
    from ood_core.scores import forward

    state = S.fit("knn", train)
    assert state["bank_key"] == forward.fingerprint(state["bank"])
    Q = _arrays(RNG.normal(size=(7, D)), train["W"], train["b"])
    hashed_rows = []
    real = forward.fingerprint
    monkeypatch.setattr(forward, "fingerprint", lambda *a: hashed_rows.append(a[0].shape[0]) or real(*a))
    for k in (1, 5, 3):
        S.compute("knn", Q, state, k=k)
    assert hashed_rows == [7, 7, 7]
    without_key = {"bank": state["bank"]}
    assert np.array_equal(S.compute("knn", Q, without_key, k=3), S.compute("knn", Q, state, k=3))
