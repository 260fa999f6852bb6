"""ood_core.evaluation.metrics: hand-computed cases, sklearn cross-checks, bootstrap, input validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from ood_core.evaluation import metrics as M


# --------------------------------------------------------------------------- hand-computed cases
def test_perfect_separation():
    s_id = np.array([5.0, 6.0, 7.0, 8.0])
    s_ood = np.array([0.0, 1.0, 2.0])
    ev = M.evaluate(s_id, s_ood)
    assert ev["auroc"] == 1.0
    assert ev["fpr95_id_pos"] == 0.0
    assert ev["fpr95_ood_pos"] == 0.0
    assert ev["aupr_in_ap"] == ev["aupr_out_ap"] == ev["aupr_in_trapz"] == ev["aupr_out_trapz"] == 1.0
    assert (ev["n_id"], ev["n_ood"]) == (4, 3)


def test_reversed_separation_is_worst_not_flipped():
    ev = M.evaluate(np.array([0.0, 1.0]), np.array([5.0, 6.0]))
    assert ev["auroc"] == 0.0
    assert ev["fpr95_id_pos"] == 1.0 and ev["fpr95_ood_pos"] == 1.0


def test_identical_distributions_give_half():
    s = np.linspace(0, 1, 50)
    assert M.auroc(s, s.copy()) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20000), rng.normal(size=20000)
    assert abs(M.auroc(a, b) - 0.5) < 0.01


def test_fpr95_id_pos_ties_by_hand():
    # ID: 0, 1, 2, ..., 19 (n=20). Keeping 95 % of ID = 19 samples: every threshold t in (0, 1] keeps
    # exactly {1..19}. OOD: [1, 1, 0, 0.5, 5].
    # gradnorm_ood ('nearest') and 'at_least' take the LOWEST such t (just above the rejected ID 0):
    #   OOD > 0 are {1, 1, 0.5, 5} -> 4/5 = 0.8 (conservative).
    # sklearn's first ROC point ('roc_first') takes t = 1: OOD >= 1 are {1, 1, 5} -> 3/5 = 0.6; the two
    #   OOD tied with t = 1 still count as accepted (a strict '>' would give 1/5).
    s_id = np.arange(20, dtype=float)
    s_ood = np.array([1.0, 1.0, 0.0, 0.5, 5.0])
    assert M.fpr95_id_pos(s_id, s_ood) == pytest.approx(0.8)
    assert M.fpr95_id_pos(s_id, s_ood, rule="at_least") == pytest.approx(0.8)
    assert M.fpr95_id_pos(s_id, s_ood, rule="roc_first") == pytest.approx(0.6)


def test_fpr95_id_pos_tied_id_group_by_hand():
    # ID: 1..8 and two tied at 0.5 (n=10). Operating points: t=8..1 give recall .1...8, t=0.5 gives 1.0.
    # Nearest to .95 is recall 1.0 at t=0.5; OOD [0.5, 0.2, 0.1, 3.5] with score >= 0.5: {0.5, 3.5}
    # -> FPR = 2/4 = 0.5 under both rules.
    s_id = np.array([1, 2, 3, 4, 5, 6, 7, 8, 0.5, 0.5])
    s_ood = np.array([0.5, 0.2, 0.1, 3.5])
    assert M.fpr95_id_pos(s_id, s_ood) == 0.5
    assert M.fpr95_id_pos(s_id, s_ood, rule="at_least") == 0.5
    assert M.fpr95_id_pos(s_id, s_ood, rule="roc_first") == 0.5


def test_fpr95_id_pos_nearest_can_sit_below_95_like_gradnorm_ood():
    # ID 1..10: recall 0.9 for t in (1, 2] and 1.0 at t = 1. In float64 |0.9-0.95| = 0.04999.. <
    # |1.0-0.95| = 0.05000.., so the reference (gradnorm_ood fpr_and_fdr_at_recall) settles for recall
    # 0.9, at its lowest threshold (just above the rejected ID 1): OOD [1.5, 1.0, 0.0, 3.0] accepted
    # are {1.5, 3.0} -> 0.5. 'at_least' needs recall 1.0, t = 1: {1.5, 1.0, 3.0} -> 0.75.
    s_id = np.arange(1, 11, dtype=float)
    s_ood = np.array([1.5, 1.0, 0.0, 3.0])
    assert M.fpr95_id_pos(s_id, s_ood) == 0.5
    assert M.fpr95_id_pos(s_id, s_ood, rule="at_least") == 0.75


def test_fpr95_ood_pos_ties_by_hand():
    # OOD positive, scored by -s. OOD: 0, 1, ..., 18 and 30 (n=20): catching 95 % (19) of OOD needs
    # "flag iff s <= 18". ID [18, 18.5, 25, 26, 10]: flagged are {18 (tied -> flagged), 10} -> 2/5 = 0.4.
    s_ood = np.r_[np.arange(19, dtype=float), 30.0]
    s_id = np.array([18.0, 18.5, 25.0, 26.0, 10.0])
    assert M.fpr95_ood_pos(s_id, s_ood) == pytest.approx(0.4)


def test_aupr_in_out_use_opposite_positives():
    s_id = np.array([0.9, 0.8, 0.3])
    s_ood = np.array([0.7, 0.1])
    # AUPR-In (ID positive, ranked by s desc: .9 I, .8 I, .7 O, .3 I, .1 O): AP = (1 + 1 + 3/4)/3
    assert M.aupr_in_ap(s_id, s_ood) == pytest.approx((1 + 1 + 0.75) / 3)
    # AUPR-Out (OOD positive, ranked by -s desc: .1 O, .3 I, .7 O, ...): AP = (1 + 2/3)/2
    assert M.aupr_out_ap(s_id, s_ood) == pytest.approx((1 + 2 / 3) / 2)


def test_aupr_average_precision_vs_trapezoid_on_ties_by_hand():
    # ID [2, 1, 1], OOD [1, 0]. AUPR-In (ID positive, s as is), thresholds 2, 1, 0:
    #   (R, P) = (1/3, 1), (1, 3/4), (1, 3/5).
    #   AP    = 1/3 * 1 + 2/3 * 3/4                      = 5/6
    #   trapz = 1/3 * (1 + 1)/2 + 2/3 * (1 + 3/4)/2 + 0  = 11/12   (from (R, P) = (0, 1))
    # AUPR-Out (OOD positive, -s), thresholds 0, -1, -2: (R, P) = (1/2, 1), (1, 1/2), (1, 2/5).
    #   AP    = 1/2 * 1 + 1/2 * 1/2                      = 3/4
    #   trapz = 1/2 * 1 + 1/2 * (1 + 1/2)/2              = 7/8
    s_id, s_ood = np.array([2.0, 1.0, 1.0]), np.array([1.0, 0.0])
    assert M.aupr_in_ap(s_id, s_ood) == pytest.approx(5 / 6)
    assert M.aupr_in_trapz(s_id, s_ood) == pytest.approx(11 / 12)
    assert M.aupr_out_ap(s_id, s_ood) == pytest.approx(3 / 4)
    assert M.aupr_out_trapz(s_id, s_ood) == pytest.approx(7 / 8)
    # all scores tied: AP = the positives' share, trapezoid = (1 + share) / 2
    assert M.aupr_in_ap(np.ones(3), np.ones(2)) == pytest.approx(3 / 5)
    assert M.aupr_in_trapz(np.ones(3), np.ones(2)) == pytest.approx(4 / 5)
    ev = M.evaluate(s_id, s_ood)
    assert {"aupr_in_ap", "aupr_out_ap", "aupr_in_trapz", "aupr_out_trapz"} <= set(ev)
    assert not {"aupr_in", "aupr_out"} & set(ev)  # every AUPR key names its convention


# -------------------------------------------------------------------------------- cross-checks
def _reference_fpr_at_recall(pos, neg, level=0.95):
    """Straightforward restatement of gradnorm_ood's fpr_and_fdr_at_recall (not its code): walk the
    distinct thresholds from high to low until full recall, keep the point closest to ``level``
    scanning from the low-threshold end (first minimum wins)."""
    thresholds = sorted(set(np.r_[pos, neg].tolist()), reverse=True)
    pts = []
    for t in thresholds:
        tp = float(np.sum(pos >= t))
        pts.append((tp, float(np.sum(neg >= t))))
        if tp == len(pos):
            break
    best = None
    for tp, fp in reversed(pts):
        d = abs(tp / len(pos) - level)
        if best is None or d < best[0]:
            best = (d, fp)
    return best[1] / len(neg)


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn_and_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n1, n0 = rng.integers(20, 300, size=2)
    # integer-valued scores create many ties between and within the two sides
    s_id = rng.integers(0, 30, size=n1).astype(float) + (seed % 2) * rng.normal(size=n1)
    s_ood = rng.integers(-5, 22, size=n0).astype(float)
    y = np.r_[np.ones(n1), np.zeros(n0)]
    s = np.r_[s_id, s_ood]

    # AUROC = Mann-Whitney U with ties counted 1/2
    diff = s_id[:, None] - s_ood[None, :]
    assert M.auroc(s_id, s_ood) == pytest.approx(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (n1 * n0))

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert M.fpr95_id_pos(s_id, s_ood, rule="roc_first") == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    assert M.fpr95_id_pos(s_id, s_ood) == pytest.approx(_reference_fpr_at_recall(s_id, s_ood))
    # 'at_least' by brute force: smallest recall >= .95 over thresholds down to min(ID), then max FPR
    ts = [t for t in np.unique(s) if t >= s_id.min()]
    rec = np.array([np.mean(s_id >= t) for t in ts])
    fp = np.array([np.mean(s_ood >= t) for t in ts])
    target = rec[rec >= 0.95].min()
    assert M.fpr95_id_pos(s_id, s_ood, rule="at_least") == pytest.approx(fp[rec == target].max())

    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert M.fpr95_ood_pos(s_id, s_ood) == pytest.approx(fpr_o[np.argmax(tpr_o >= 0.95)])

    # AUPR: sklearn's average precision, and OpenOOD's auc(recall, precision) of precision_recall_curve
    assert M.aupr_in_ap(s_id, s_ood) == pytest.approx(average_precision_score(y, s))
    assert M.aupr_out_ap(s_id, s_ood) == pytest.approx(average_precision_score(1 - y, -s))
    p_in, r_in, _ = precision_recall_curve(y, s)
    p_out, r_out, _ = precision_recall_curve(1 - y, -s)
    assert M.aupr_in_trapz(s_id, s_ood) == pytest.approx(auc(r_in, p_in))
    assert M.aupr_out_trapz(s_id, s_ood) == pytest.approx(auc(r_out, p_out))


# ----------------------------------------------------------------------------------- bootstrap
def test_bootstrap_deterministic_and_spread():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    m1, s1 = M.bootstrap(M.auroc, a, b, n=50, seed=3)
    m2, s2 = M.bootstrap(M.auroc, a, b, n=50, seed=3)
    m3, _ = M.bootstrap(M.auroc, a, b, n=50, seed=4)
    assert (m1, s1) == (m2, s2)
    assert m1 != m3
    assert s1 > 0
    assert abs(m1 - M.auroc(a, b)) < 3 * s1


def test_bootstrap_vectorised_auroc_equals_loop():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 10, 80).astype(float)  # ties
    b = rng.integers(0, 8, 60).astype(float)
    fast = M.bootstrap(M.auroc, a, b, n=30, seed=0)
    slow = M.bootstrap(lambda x, y: M.auroc(x, y), a, b, n=30, seed=0)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_other_metric_by_name():
    rng = np.random.default_rng(3)
    mean, std = M.bootstrap("fpr95_id_pos", rng.normal(1, 1, 100), rng.normal(0, 1, 100), n=20, seed=0)
    assert 0 <= mean <= 1 and std > 0


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "fn",
    [
        M.auroc,
        M.aupr_in_ap,
        M.aupr_out_ap,
        M.aupr_in_trapz,
        M.aupr_out_trapz,
        M.fpr95_id_pos,
        M.fpr95_ood_pos,
        M.evaluate,
    ],
)
def test_nan_in_ood_named(fn):
    with pytest.raises(ValueError, match=r"OOD scores contain 2 non-finite value\(s\) of 4 \(2 NaN, 0 inf\)"):
        fn(np.array([1.0, 2.0]), np.array([np.nan, 0.0, np.nan, 1.0]))


def test_inf_in_id_named():
    with pytest.raises(ValueError, match=r"ID scores contain 1 non-finite value\(s\) of 3 \(0 NaN, 1 inf\)"):
        M.auroc(np.array([1.0, np.inf, 2.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="ID scores contain 1 non-finite"):
        M.bootstrap(M.auroc, np.array([1.0, -np.inf]), np.array([0.0, 1.0]), n=5)


def test_empty_named():
    with pytest.raises(ValueError, match="ID scores are empty"):
        M.auroc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="OOD scores are empty"):
        M.fpr95_id_pos(np.array([1.0]), [])


def test_bad_shape():
    with pytest.raises(ValueError, match="ID scores must be a 1-D vector"):
        M.auroc(np.ones((3, 2)), np.ones(3))
