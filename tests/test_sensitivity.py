"""The sensitivity stage on a tiny digits profile with validation sets: a grid variant (2 x 2 -> 3 x 2)
and a subspace variant (K 2 -> 3) beside the baseline; outputs and their rows, no test set loaded, a
rerun served from the cache, and a profile without validation sets failing in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from ood_core.cache import load_npz
from ood_core.scores import registry

pytestmark = pytest.mark.usefixtures("one_thread")

VAL_SETS = {"train", "id_val", "val_digits"}


def tiny_profile(path: Path, validation: bool = True) -> Path:
    """The test_pipeline tiny profile (2 x 2 grid, 2 epochs) with a K = 2 PCA subspace and, optionally,
    validation sets from the digits' training split."""
    from tests.test_pipeline import tiny_profile as base

    prof = base(path, kl_allweights=False, activation_grads=False)
    cfg = yaml.safe_load(prof.read_text())
    cfg["lowdim"]["subspaces"] = {"pca": {"kind": "pca", "k": 2, "n_iter": 1}, "avg": {"kind": "class_mean"}}
    cfg["benchmark"]["bootstrap"] = 10
    if validation:
        cfg["data"]["validation"] = {
            "id": {"kind": "digits", "classes": [0, 1, 2, 3, 4], "split": "train", "rows": 120},
            "ood": {"val_digits": {"kind": "digits", "classes": [5, 6, 7, 8, 9], "split": "train", "rows": 100}},
        }
    prof.write_text(yaml.safe_dump(cfg))
    return prof


@pytest.fixture
def tiny_variants(monkeypatch):
    from analysis import sensitivity
    from analysis.sensitivity import Variant

    table = {
        "grid_wide": Variant("grid", {"extract.odin_T": [1, 10, 100]}),
        "k3": Variant("k", {"lowdim.subspaces.pca.k": 3}),
    }
    monkeypatch.setattr(sensitivity, "VARIANTS", table)
    return table


def stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".npz", ".pt")}


def test_variants_measured_on_validation_rows_only_and_cached(tmp_path, monkeypatch, capsys, tiny_variants):
    from analysis import extract, sensitivity, train
    from tests.test_pipeline import stage_args

    args = stage_args(tiny_profile(tmp_path), tmp_path)
    train.main(args)
    loaded: list[str] = []
    load_named = extract.load_named

    def spy(ctx, name, memo=None):
        loaded.append(name)
        return load_named(ctx, name, memo)

    monkeypatch.setattr(extract, "load_named", spy)
    sensitivity.main([*args, "--variants", "grid,k"])
    out = capsys.readouterr().out
    assert set(loaded) == VAL_SETS, f"only the training and validation sets are read, got {sorted(set(loaded))}"
    plan = out.split("[sensitivity] variant baseline")[0]  # what each variant computes, before any pass
    assert [plan.count(f"[sensitivity] {name} (") for name in ("baseline", "grid_wide", "k3")] == [2, 1, 1]

    root = tmp_path / "cache" / "sensitivity"
    stores = ("baseline_grid", "baseline_lowdim", "grid_wide", "k3")
    for store in stores:
        assert {p.stem for p in (root / store / "arrays").glob("*.npz")} == VAL_SETS
    base_grid, base_lowdim, grid, k3 = (load_npz(root / v / "arrays" / "id_val.npz") for v in stores)
    assert base_grid["odin_s"].shape[:2] == (2, 2) and grid["odin_s"].shape[:2] == (2, 3)
    assert base_lowdim["lowdim_pca"].shape[1] == 2 and k3["lowdim_pca"].shape[1] == 3
    for grid_arrays, lowdim_arrays in ((base_grid, base_lowdim), (grid, k3)):  # each computes what its cut reads
        assert "lowdim_pca" not in grid_arrays and "odin_s" not in lowdim_arrays

    with open(tmp_path / "fig" / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    grid_methods = registry.names(uses_grid=True)
    lowdim = [m for m in registry.names() if "lowdim_{subspace}" in registry.get(m).needs]
    assert set(registry.names(family="lowdim")) <= set(lowdim) and "lowdim_knn_react_published" in lowdim
    by = {v: [r["method"] for r in rows if r["variant"] == v] for v in ("baseline", "grid_wide", "k3")}
    assert by == {"baseline": grid_methods + lowdim, "grid_wide": grid_methods, "k3": lowdim}
    assert {r["ood_set"] for r in rows} == {"val_digits"}
    for r in rows:
        assert 0.0 <= float(r["auroc"]) <= 1.0 and r["display"] == registry.display_name(r["method"])
        assert (r["n_tune_id"], r["n_eval_id"], r["n_tune_ood"], r["n_eval_ood"]) == ("60", "60", "50", "50")
        if r["variant"] == "baseline":
            assert r["diff_vs_baseline"] == ""
        else:
            lo, d, hi = float(r["ci_low"]), float(r["diff_vs_baseline"]), float(r["ci_high"])
            assert lo <= hi and np.isfinite(d)
    odin = next(r for r in rows if r["variant"] == "grid_wide" and r["method"] == "odin")
    assert set(yaml.safe_load(odin["params"])) == {"T", "eps"}
    md = (tmp_path / "fig" / "sensitivity.md").read_text()
    assert "## ODIN / GRODIN grid: 2 T x 2 eps vs 3 T x 2 eps" in md and "K = 2 vs K = 3" in md
    assert "| GRODIN G |" in md and "| Low-dim KNN |" in md
    assert list((tmp_path / "cache" / "runs").glob("*-sensitivity.json"))

    before, table = stamps(root), (tmp_path / "fig" / "sensitivity.csv").read_bytes()
    loaded.clear()
    sensitivity.main([*args, "--variants", "grid,k"])
    out = capsys.readouterr().out
    assert stamps(root) == before, "a rerun reuses every cached set and subspace"
    assert out.count("nothing to compute: every set is cached") == 4
    assert not loaded, "a rerun loads no data"
    assert (tmp_path / "fig" / "sensitivity.csv").read_bytes() == table

    sensitivity.main([*args, "--variants", "k"])  # one cut alone: its baseline and variant reused
    assert stamps(root) == before and not loaded
    with open(tmp_path / "fig" / "sensitivity.csv") as f:
        assert {r["variant"] for r in csv.DictReader(f)} == {"baseline", "k3"}


def test_profile_without_validation_sets_fails_in_one_line(tmp_path, capsys):
    from analysis import sensitivity
    from analysis.common import main_guard
    from tests.test_pipeline import stage_args

    args = stage_args(tiny_profile(tmp_path, validation=False), tmp_path)
    with pytest.raises(SystemExit) as e:
        main_guard(sensitivity.main, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: profile 'tiny' has no validation sets")


def test_variants_option_names_cuts():
    from analysis.sensitivity import CUTS, parse_cuts

    assert parse_cuts(None) == list(CUTS) and parse_cuts("k,grid") == ["grid", "k"]
    with pytest.raises(SystemExit, match="comma-separated list of grid, k, n_iter, fit_rows"):
        parse_cuts("grid,K")
