"""Paired bootstrap of AUROC differences (ood_core.evaluation.paired, ood_core.reporting.paired_table) on tiny inputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood_core.evaluation import metrics
from ood_core.evaluation.paired import (
    paired_auroc_diff,
    paired_mean_auroc_diff,
    resample_rows,
    resampled_aurocs,
    summarize,
)
from ood_core.reporting.paired_table import paired_markdown, paired_rows, resolve_pairs, top_per_family


def _auc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(s_id.size), np.zeros(s_ood.size)], np.r_[s_id, s_ood]))


def _brute_force(id_a, ood_a, id_b, ood_b, n, seed):
    """Mean-over-sets AUROC difference per resample, one resample at a time with sklearn."""
    sizes = [id_a[0].size, *(o.size for o in ood_a)]
    out = []
    for k in range(n):
        ii, *jj = resample_rows(sizes, k, seed)
        a = np.mean([_auc(i[ii], o[j]) for i, o, j in zip(id_a, ood_a, jj)])
        b = np.mean([_auc(i[ii], o[j]) for i, o, j in zip(id_b, ood_b, jj)])
        out.append(a - b)
    return np.array(out)


@pytest.fixture
def two_sets():
    rng = np.random.default_rng(0)
    n_id, n1, n2 = 23, 17, 11
    # integer scores: ties inside and across ID / OOD
    id_a = [rng.integers(0, 6, n_id).astype(float), rng.integers(0, 6, n_id).astype(float)]
    ood_a = [rng.integers(-2, 4, n1).astype(float), rng.integers(-3, 3, n2).astype(float)]
    id_b = [rng.normal(size=n_id), rng.normal(size=n_id)]
    ood_b = [rng.normal(-0.5, size=n1), rng.normal(-1.0, size=n2)]
    return id_a, ood_a, id_b, ood_b


def test_resampled_aurocs_equal_sklearn_per_resample(two_sets):
    id_a, ood_a, _, _ = two_sets
    n, seed = 37, 5
    got = resampled_aurocs(id_a, ood_a, n, seed)
    sizes = [id_a[0].size, *(o.size for o in ood_a)]
    for k in range(n):
        ii, *jj = resample_rows(sizes, k, seed)
        want = [_auc(i[ii], o[j]) for i, o, j in zip(id_a, ood_a, jj)]
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-12)


def test_resampled_aurocs_do_not_depend_on_the_chunk_width(two_sets, monkeypatch):
    id_a, ood_a, _, _ = two_sets
    whole = resampled_aurocs(id_a, ood_a, 20, 3)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 30)  # one or two resamples per block
    np.testing.assert_array_equal(resampled_aurocs(id_a, ood_a, 20, 3), whole)


def test_paired_mean_diff_equals_a_brute_force_loop(two_sets):
    id_a, ood_a, id_b, ood_b = two_sets
    n, seed = 41, 2
    d = paired_mean_auroc_diff(id_a, ood_a, id_b, ood_b, n=n, seed=seed)
    loop = _brute_force(id_a, ood_a, id_b, ood_b, n, seed)
    point = np.mean([_auc(i, o) for i, o in zip(id_a, ood_a)]) - np.mean([_auc(i, o) for i, o in zip(id_b, ood_b)])
    assert d.diff == pytest.approx(point, abs=1e-12)
    assert d.mean == pytest.approx(loop.mean(), abs=1e-12)
    lo, hi = np.percentile(loop, [2.5, 97.5])
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert d.sign_flip == pytest.approx(np.mean(np.sign(loop) != np.sign(point)))
    assert d.n == n


def test_one_set_diff_is_the_one_set_case_of_the_mean(two_sets):
    id_a, ood_a, id_b, ood_b = two_sets
    one = paired_auroc_diff(id_a[0], ood_a[0], id_b[0], ood_b[0], n=30, seed=1)
    loop = _brute_force(id_a[:1], ood_a[:1], id_b[:1], ood_b[:1], 30, 1)
    assert one.mean == pytest.approx(loop.mean(), abs=1e-12)


def test_ci_excludes_zero_for_a_clearly_better_method():
    rng = np.random.default_rng(1)
    y_id, y_ood = rng.normal(size=300), rng.normal(size=300)
    good = (y_id + 2.0, y_ood - 2.0)  # separates well
    weak = (y_id + rng.normal(size=300), y_ood + rng.normal(size=300))  # near chance
    d = paired_auroc_diff(good[0], good[1], weak[0], weak[1], n=200, seed=0)
    assert d.diff > 0.3 and d.ci_low > 0 and d.sign_flip == 0.0


def test_ci_includes_zero_for_two_equally_good_methods():
    # B = A's scores shuffled among the ID rows and among the OOD rows: the same AUROC on all rows,
    # but on each resample the rows drawn twice differ, so the differences scatter around 0
    rng = np.random.default_rng(2)
    a_id, a_ood = rng.normal(0.5, size=200), rng.normal(-0.5, size=200)
    b_id, b_ood = rng.permutation(a_id), rng.permutation(a_ood)
    d = paired_auroc_diff(a_id, a_ood, b_id, b_ood, n=200, seed=0)
    assert d.diff == 0.0
    assert d.ci_low < 0 < d.ci_high
    assert d.sign_flip > 0.9  # every resample that differs at all has "the other sign" than 0


def test_identical_methods_give_zero_everywhere():
    rng = np.random.default_rng(3)
    s_id, s_ood = rng.normal(size=50), rng.normal(size=40)
    d = paired_auroc_diff(s_id, s_ood, s_id.copy(), s_ood.copy(), n=20)
    assert (d.diff, d.mean, d.ci_low, d.ci_high, d.sign_flip) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_bad_inputs_fail_with_a_message():
    a = np.arange(5.0)
    with pytest.raises(ValueError, match="same rows"):
        paired_mean_auroc_diff([a, a[:4]], [a, a], [a, a], [a, a], n=10)
    with pytest.raises(ValueError, match="OOD rows"):
        paired_auroc_diff(a, a, a, a[:3], n=10)
    with pytest.raises(ValueError, match="n >= 2"):
        paired_auroc_diff(a, a, a, a, n=1)
    with pytest.raises(ValueError, match="non-finite"):
        paired_auroc_diff(np.r_[a, np.nan], a, np.r_[a, 0.0], a, n=10)
    with pytest.raises(ValueError, match="shapes differ"):
        summarize([0.5], [0.5, 0.6], np.zeros((3, 1)), np.zeros((3, 2)))


# ---------------------------------------------------------------------------------- paired.csv
def _rows(values: dict[str, tuple[str, float, float]]) -> list[dict]:
    """Metric rows: method -> (family, AUROC on the near set, AUROC on the far sets)."""
    out = []
    for m, (fam, near, far) in values.items():
        out.append({"method": m, "family": fam, "ood_set": "tin", "group": "near", "auroc": near})
        for s in ("mnist", "noise"):
            out.append({"method": m, "family": fam, "ood_set": s, "group": "far", "auroc": far})
    return out


def test_top_per_family_and_pairs():
    rows = _rows(
        {
            "msp": ("forward", 0.85, 0.90),
            "knn": ("forward", 0.90, 0.93),
            "gradnorm": ("gradient", 0.55, 0.60),
            "grodin_g": ("gradient", 0.91, 0.94),
            "lowdim_knn": ("lowdim", 0.88, 0.90),
        }
    )
    assert top_per_family(rows) == ["grodin_g", "knn", "lowdim_knn"]
    assert resolve_pairs(None, rows) == [("grodin_g", "knn"), ("grodin_g", "lowdim_knn"), ("knn", "lowdim_knn")]
    # a pool is ordered better-first; an explicit pair keeps its order; duplicates dropped
    assert resolve_pairs(["msp", "knn", ["msp", "knn"], ["knn", "msp"]], rows) == [("knn", "msp"), ("msp", "knn")]
    with pytest.raises(ValueError, match="method name or a pair"):
        resolve_pairs([["a", "b", "c"]], rows)


def _stored_scores(rng):
    """Scores as the benchmark stores them: OOD file {method: scores}; ID file <m>__vs__<set> / <m>."""
    n_id, sizes = 40, {"tin": 30, "mnist": 25, "noise": 20, "blur": 15}
    groups = {"tin": "near", "mnist": "far", "noise": "far", "blur": "covariate"}
    ids = {"a": rng.normal(1.0, size=n_id), "b": rng.normal(0.5, size=n_id)}
    scores: dict[str, dict[str, np.ndarray]] = {"id": {}, **{s: {} for s in sizes}}
    for m, shift in (("a", 0.0), ("b", 0.3)):
        for s, n in sizes.items():
            scores[s][m] = rng.normal(shift, size=n)
            scores["id"][f"{m}__vs__{s}"] = ids[m] + (0.1 if s == "mnist" else 0.0)  # parameters per set
    scores["id"]["a"] = ids["a"]
    return scores, groups


def test_paired_rows_equal_the_direct_paired_difference(tmp_path):
    scores, groups = _stored_scores(np.random.default_rng(4))
    rows = paired_rows(scores, "id", groups, [("a", "b")], n=30, seed=7, protocol="per_ood_val")
    assert [(r["group"], r["sets"]) for r in rows] == [("near", "tin"), ("far", "mnist;noise")]
    sets = ["tin", "mnist", "noise"]  # the covariate set is in no group: not drawn
    ids_a = [scores["id"][f"a__vs__{s}"] for s in sets]
    ids_b = [scores["id"][f"b__vs__{s}"] for s in sets]
    oods_a, oods_b = [scores[s]["a"] for s in sets], [scores[s]["b"] for s in sets]
    loop = _brute_force(ids_a, oods_a, ids_b, oods_b, 30, 7)  # same draws: all three sets drawn
    boot_a, boot_b = resampled_aurocs(ids_a, oods_a, 30, 7), resampled_aurocs(ids_b, oods_b, 30, 7)
    far = summarize(
        [_auc(ids_a[j], oods_a[j]) for j in (1, 2)],
        [_auc(ids_b[j], oods_b[j]) for j in (1, 2)],
        boot_a[:, 1:],
        boot_b[:, 1:],
    )
    r = rows[1]
    assert (r["diff"], r["ci_low"], r["ci_high"], r["sign_flip"]) == (far.diff, far.ci_low, far.ci_high, far.sign_flip)
    near_d = boot_a[:, 0] - boot_b[:, 0]
    assert rows[0]["boot_mean"] == pytest.approx(near_d.mean(), abs=1e-12)
    assert loop.shape == (30,) and rows[0]["n_id"] == 40 and rows[0]["bootstrap_n"] == 30

    from ood_core.reporting.paired_table import COLUMNS
    from ood_core.reporting.table_csv import write_csv

    path = write_csv(rows, tmp_path / "paired.csv", COLUMNS)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert [b["method_a"] for b in back] == ["a", "a"] and float(back[1]["diff"]) == r["diff"]
    md = paired_markdown(rows, "demo")
    assert "per_ood_val" in md and "30 resamples" in md and "far = mnist, noise" in md


def test_paired_rows_leave_out_a_method_without_scores():
    scores, groups = _stored_scores(np.random.default_rng(5))
    assert paired_rows(scores, "id", groups, [("a", "zzz")], n=10) == []
    assert "No pair" in paired_markdown([])
