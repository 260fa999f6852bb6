"""README result tables are generated from metrics.csv (analysis/readme_tables.py), never by hand."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from analysis import readme_tables as rt
from ood_core.reporting.table_csv import read_metrics_csv, write_metrics_csv

REPO = Path(__file__).resolve().parents[1]


def _row(method: str, family: str, ood_set: str, group: str, auroc: float, fpr95: float) -> dict:
    return {
        "method": method,
        "family": family,
        "ood_set": ood_set,
        "group": group,
        "auroc": auroc,
        "auroc_std": 0.01,
        "fpr95": fpr95,
        "fpr95_ood_pos": fpr95,
        "hyperparams": {},
        "protocol": "p",
        "n_id": 10,
        "n_ood": 10,
        "id_accuracy": 0.9,
        "model": "m",
    }


ROWS = [
    _row("msp", "forward", "a", "near", 0.80, 0.50),
    _row("msp", "forward", "b", "far", 0.90, 0.30),
    _row("msp", "forward", "c", "far", 0.70, 0.40),
    _row("energy", "forward", "a", "near", 0.60, 0.20),
    _row("energy", "forward", "b", "far", 0.95, 0.60),
    _row("energy", "forward", "c", "far", 0.95, 0.70),
]


def test_results_table_averages_bold_and_order():
    md = rt.results_table(ROWS, ["energy", "msp"]).splitlines()
    assert md[0] == "| family | method | AUROC avg | FPR95 avg | near | far |"
    # energy: AUROC avg (60+95+95)/3 = 83.3, FPR95 avg (20+60+70)/3 = 50.0, near 60.0, far 95.0
    assert md[2] == "| Forward (features / logits) | Energy | **83.3** | 50.0 | 60.0 | **95.0** |"
    # msp: AUROC (80+90+70)/3 = 80.0, FPR95 (50+30+40)/3 = 40.0 (lowest: bold), near 80.0 (best), far 80.0
    assert md[3] == "| Forward (features / logits) | MSP | 80.0 | **40.0** | **80.0** | 80.0 |"
    assert len(md) == 4


def test_results_table_rejects_unknown_method():
    with pytest.raises(KeyError, match="nomethod"):
        rt.results_table(ROWS, ["msp", "nomethod"])


def test_render_replaces_only_blocks_with_a_csv(tmp_path):
    (tmp_path / "p1").mkdir()
    write_metrics_csv(ROWS, tmp_path / "p1" / "metrics.csv")
    text = (
        "intro\n<!-- results-table: profile=p1 methods=msp -->\nOLDBODY\n<!-- /results-table -->\nmid\n"
        "<!-- results-table: profile=absent -->\nkept\n<!-- /results-table -->\nend\n"
    )
    new, skipped = rt.render(text, tmp_path)
    assert skipped == ["absent"]
    assert "OLDBODY" not in new and "| MSP | **80.0** |" in new
    assert (
        "kept" in new
        and new.startswith("intro\n")
        and new.endswith("mid\n<!-- results-table: profile=absent -->\nkept\n<!-- /results-table -->\nend\n")
    )
    assert rt.render(new, tmp_path)[0] == new  # idempotent


def test_check_fails_on_a_stale_table(tmp_path, capsys):
    (tmp_path / "p1").mkdir()
    write_metrics_csv(ROWS, tmp_path / "p1" / "metrics.csv")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results-table: profile=p1 -->\nstale\n<!-- /results-table -->\n")
    assert rt.main(["--check", "--readme", str(readme), "--figures", str(tmp_path)]) == 1
    assert "differs" in capsys.readouterr().err
    assert rt.main(["--readme", str(readme), "--figures", str(tmp_path)]) == 0
    assert rt.main(["--check", "--readme", str(readme), "--figures", str(tmp_path)]) == 0


def test_bad_marker_is_one_clear_error():
    with pytest.raises(ValueError, match="profile="):
        rt.parse_args("methods=msp")
    with pytest.raises(ValueError, match="expected"):
        rt.parse_args("profile=x colour=red")


def test_readme_tables_match_committed_metrics():
    """Every README table whose metrics.csv is committed (tracked by git) is what the code generates."""
    tracked = subprocess.run(
        ["git", "ls-files", "figures/*/metrics.csv"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    text = (REPO / "README.md").read_text()
    profiles = [rt.parse_args(m.group("args"))["profile"] for m in rt.BLOCK.finditer(text)]
    assert "demo" in profiles and "cifar10" in profiles
    for rel in tracked:
        prof = Path(rel).parent.name
        if prof not in profiles:
            continue
        block = next(m for m in rt.BLOCK.finditer(text) if rt.parse_args(m.group("args"))["profile"] == prof)
        methods = [x for x in rt.parse_args(block.group("args")).get("methods", "").split(",") if x] or None
        assert block.group("body") == rt.results_table(read_metrics_csv(REPO / rel), methods), (
            f"README's {prof} table is stale: run `python -m analysis.readme_tables`"
        )
