"""Mean ± std over training seeds (ood_core.evaluation.seeds, analysis.seeds) on tiny fake metrics.csv files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from analysis.seeds import main, write_seeds_tables
from ood_core.evaluation.seeds import SeedsInputError, aggregate, read_run, run_labels
from ood_core.reporting.table_csv import write_metrics_csv

SETS = {"tinyimagenet": "near", "mnist": "far", "dtd10": "far"}
METHODS = {"knn": "forward", "grodin_g": "gradient"}


def _rows(seed: int, *, drop: tuple[str, str] | None = None) -> list[dict]:
    out = []
    for m, fam in METHODS.items():
        for j, (s, g) in enumerate(SETS.items()):
            if (m, s) == drop:
                continue
            au = 0.80 + 0.01 * seed + 0.02 * j + (0.05 if m == "grodin_g" else 0.0)
            out.append(
                {
                    "method": m,
                    "family": fam,
                    "ood_set": s,
                    "group": g,
                    "auroc": au,
                    "fpr95": 1 - au,
                    "fpr95_ood_pos": 1.1 - au,
                    "protocol": "openood",
                    "n_id": 9000,
                    "n_ood": 100 + j,
                    "hyperparams": {},
                }
            )
    return out


def _runs(tmp_path: Path, n: int, **kw) -> list[Path]:
    dirs = []
    for k in range(n):
        d = tmp_path / f"cifar10_s{k}"
        d.mkdir()
        write_metrics_csv(_rows(k, **(kw if k == n - 1 else {})), d / "metrics.csv")
        dirs.append(d)
    return dirs


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mean_std_and_group_averages_over_three_seeds(tmp_path):
    runs = _runs(tmp_path, 3)
    csv_path, md_path = write_seeds_tables(runs, tmp_path / "out", "cifar10")
    rows = {(r["method"], r["ood_set"]): r for r in _read(csv_path)}
    r = rows[("knn", "mnist")]
    vals = [0.82, 0.83, 0.84]
    assert r["n_seeds"] == "3" and r["seeds"] == "cifar10_s0;cifar10_s1;cifar10_s2"
    assert float(r["auroc_mean"]) == pytest.approx(0.83)
    assert float(r["auroc_std"]) == pytest.approx(0.01)  # sample std (n - 1)
    assert json.loads(r["auroc_per_seed"]) == pytest.approx(dict(zip(["cifar10_s0", "cifar10_s1", "cifar10_s2"], vals)))
    assert float(r["fpr95_mean"]) == pytest.approx(0.17) and r["n_id"] == "9000"
    far = rows[("grodin_g", "far avg")]  # per seed mean(mnist, dtd10), then over seeds
    per_seed = [0.80 + 0.01 * k + 0.05 + (0.02 + 0.04) / 2 for k in range(3)]
    assert float(far["auroc_mean"]) == pytest.approx(sum(per_seed) / 3)
    assert float(far["auroc_std"]) == pytest.approx(0.01) and far["group"] == "far"
    md = md_path.read_text()
    assert "Mean ± std over 3 seeds" in md and "## Protocol: openood" in md
    assert "GRODIN G" in md and "KNN" in md and "grodin_g" not in md  # display names
    assert "83.00 ±1.00" in md


def test_one_seed_says_so_and_prints_no_std(tmp_path):
    runs = _runs(tmp_path, 1)
    csv_path, md_path = write_seeds_tables(runs, tmp_path / "out")
    rows = _read(csv_path)
    assert all(r["n_seeds"] == "1" and r["auroc_std"] == "" for r in rows)
    md = md_path.read_text()
    assert "One seed (cifar10_s0)" in md and "no std" in md and "±" not in md.split("\n", 3)[3]


def test_a_seed_without_a_set_counts_fewer_seeds_there_and_in_its_group(tmp_path):
    runs = _runs(tmp_path, 3, drop=("knn", "dtd10"))
    csv_path, md_path = write_seeds_tables(runs, tmp_path / "out")
    rows = {(r["method"], r["ood_set"]): r for r in _read(csv_path)}
    assert rows[("knn", "dtd10")]["n_seeds"] == "2" and rows[("knn", "mnist")]["n_seeds"] == "3"
    assert rows[("knn", "far avg")]["n_seeds"] == "2"  # the third seed's far average misses dtd10
    assert rows[("knn", "near avg")]["n_seeds"] == "3"
    assert "| KNN | 2–3 |" in md_path.read_text()


def test_protocols_are_kept_apart():
    a = _rows(0)
    b = [dict(r, protocol="per_ood_val", auroc=r["auroc"] + 0.1) for r in _rows(0)]
    out = aggregate({"s0": a + b})
    assert {r["protocol"] for r in out} == {"openood", "per_ood_val"}
    assert all(r["n_seeds"] == 1 and r["auroc_std"] is None for r in out)


def test_labels_are_the_run_folders_made_unique(tmp_path):
    assert run_labels([tmp_path / "a", tmp_path / "b" / "metrics.csv"]) == ["a", "b"]
    assert run_labels([tmp_path / "x" / "run", tmp_path / "y" / "run"]) == [
        str(tmp_path / "x" / "run"),
        str(tmp_path / "y" / "run"),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("method,family,ood_set\nknn,forward,mnist\n", "no column(s) group, protocol, auroc"),
        ("method,family,ood_set,group,protocol,auroc,fpr95,fpr95_ood_pos\n", "no metric rows"),
        (
            "method,family,ood_set,group,protocol,auroc,fpr95,fpr95_ood_pos\nknn,forward,mnist,far,p,abc,0.1,0.1\n",
            "malformed",
        ),
        (
            "method,family,ood_set,group,protocol,auroc,fpr95,fpr95_ood_pos\n"
            "knn,forward,mnist,far,p,0.9,0.1,0.1\nknn,forward,mnist,far,p,0.8,0.1,0.1\n",
            "line 3: a second row for knn on mnist",
        ),
        (
            "method,family,ood_set,group,protocol,auroc,fpr95,fpr95_ood_pos\nknn,forward,mnist,far,p,,0.1,0.1\n",
            "no AUROC",
        ),
    ],
)
def test_bad_inputs_are_one_line_naming_the_file(tmp_path, content, message):
    d = tmp_path / "run"
    d.mkdir()
    if content is not None:
        (d / "metrics.csv").write_text(content)
    with pytest.raises(SeedsInputError) as e:
        read_run(d)
    assert str(d / "metrics.csv") in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_cli_writes_both_files_and_exits_with_one_line_on_a_missing_run(tmp_path, capsys):
    runs = _runs(tmp_path, 2)
    out = tmp_path / "out"
    assert main(["--runs", *map(str, runs), "--out", str(out)]) == out / "seeds_metrics.csv"
    assert (out / "seeds_metrics.md").is_file()
    with pytest.raises(SystemExit) as e:
        main(["--runs", str(runs[0]), str(tmp_path / "nope"), "--out", str(out)])
    assert str(tmp_path / "nope" / "metrics.csv") in str(e.value.code) and "file not found" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["--runs", str(runs[0])])
    assert "--out" in str(e.value.code)


def test_profile_key_lists_the_runs(tmp_path):
    import yaml

    from ood_core.config import CONFIG_DIR

    runs = _runs(tmp_path, 2)
    cfg = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    cfg["seeds"] = {"runs": [str(r) for r in runs]}
    prof = tmp_path / "mine.yaml"
    prof.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["--profile", str(prof), "--out", str(out)]) == out / "seeds_metrics.csv"
    assert "# Metrics over training seeds: mine" in (out / "seeds_metrics.md").read_text()
    cfg["seeds"] = {"runs": []}
    prof.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match="seeds.runs lists no run"):
        main(["--profile", str(prof), "--out", str(out)])
