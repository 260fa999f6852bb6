"""Spearman's rho of our AUROC ranking vs OpenOOD v1.5's (ood_core.reporting.reference_compare) on tiny rows."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from ood_core.reporting import reference as ref
from ood_core.reporting.reference_compare import openood_rank_correlation, reference_markdown, spearman

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published"
LEADERBOARD = PUBLISHED / "openood_leaderboard_f969dfa_results_cifar10.csv"
# OpenOOD's postprocessor names -> our registry names (the methods reference.py quotes)
OPENOOD_NAME = {
    "MSP": "msp",
    "MLS": "maxlogit",
    "EBO": "energy",
    "ODIN": "odin",
    "GradNorm": "gradnorm",
    "ReAct": "react",
    "MDS": "mahalanobis",
    "KNN": "knn",
    "VIM": "vim",
    "RMDS": "rmds",
    "DICE": "dice",
    "ASH": "ash_b",
    "GEN": "gen",
    "SCALE": "scale",
    "NAC": "nac_ue",
    "fDBD": "fdbd",
}


def _rows(values: dict[str, tuple[float, float, float]]) -> list[dict]:
    """Metric rows: method -> AUROC (fractions) on tinyimagenet (near), mnist, dtd10 (far)."""
    out = []
    for m, vals in values.items():
        for s, g, v in zip(("tinyimagenet", "mnist", "dtd10"), ("near", "far", "far"), vals):
            out.append({"method": m, "family": "forward", "ood_set": s, "group": g, "auroc": v})
    return out


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 4, 9).astype(float), rng.normal(size=9)
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1.0, 2.0], [2.0, 1.0]) is None  # fewer than 3
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant side


def test_rank_correlation_over_the_shared_methods():
    rows = _rows(
        {
            "msp": (0.88, 0.90, 0.92),
            "knn": (0.91, 0.95, 0.93),
            "vim": (0.90, 0.97, 0.96),
            "gradnorm": (0.60, 0.50, 0.70),
            "energy": (0.87, 0.91, 0.90),
            "grodin_g": (0.95, 0.99, 0.99),  # not on OpenOOD's leaderboard: left out
        }
    )
    theirs = {
        e["method"]: e["value"]
        for e in ref.entries(source=ref.OPENOOD, metric="auroc", ood_set="far", id_dataset="cifar10")
    }
    rc = openood_rank_correlation(rows, "far")
    assert set(rc.ours) == {"msp", "knn", "vim", "gradnorm", "energy"} and rc.n == 5
    assert rc.ours["knn"] == pytest.approx(94.0)  # mean of mnist and dtd10, the sets mapped to "far"
    assert rc.theirs == {m: theirs[m] for m in rc.ours}
    assert list(rc.theirs) == sorted(rc.theirs, key=lambda m: -rc.theirs[m])  # OpenOOD's order
    assert rc.rho == pytest.approx(spearmanr(list(rc.ours.values()), list(rc.theirs.values())).statistic)
    near = openood_rank_correlation(rows, "near")
    assert near.ours["vim"] == pytest.approx(90.0)
    mean = openood_rank_correlation(rows, "mean")
    assert mean.ours["msp"] == pytest.approx((88.0 + 91.0) / 2)
    with pytest.raises(ValueError, match="near, far or mean"):
        openood_rank_correlation(rows, "all")
    md = reference_markdown(rows, id_dataset="cifar10", model="m", protocol="p")
    assert re.search(r"- far: Spearman ρ = [+-]\d\.\d\d over 5 methods \(ViM, KNN", md)


def test_no_shared_method_gives_no_section():
    rows = _rows({"grodin_g": (0.9, 0.9, 0.9)})
    assert openood_rank_correlation(rows, "near").n == 0
    assert "Rank correlation" not in reference_markdown(rows, id_dataset="cifar10", model="m", protocol="p")


@pytest.mark.skipif(not LEADERBOARD.is_file(), reason="the published OpenOOD leaderboard copy is not here")
def test_openood_values_are_the_leaderboard_csv():
    """Every OpenOOD v1.5 value reference.py quotes (and so the rank correlation uses) is the
    leaderboard's (branch leaderboard @ f969dfa, results/cifar10.csv, cross-entropy rows), std included."""
    with open(LEADERBOARD, newline="") as f:
        board = {r["Postprocessor"]: r for r in csv.DictReader(f) if r["Training"] == "CrossEntropy"}
    quoted = ref.entries(source=ref.OPENOOD, metric="auroc", id_dataset="cifar10")
    assert len(quoted) == 2 * len(OPENOOD_NAME)
    for e in quoted:
        name = next(k for k, v in OPENOOD_NAME.items() if v == e["method"])
        cell = board[name]["Near-OOD_AUROC" if e["ood_set"] == "near" else "Far-OOD_AUROC"]
        mean, std = (float(x) for x in cell.split("±"))
        assert e["value"] == mean, (e["method"], e["ood_set"], cell)
        spread = "one checkpoint" if name == "fDBD" else f"+-{std:g} over 3 checkpoints"
        assert e["note"].startswith(spread), (e["note"], cell)
