"""The README's result tables, generated from a profile's ``metrics.csv`` (never copied by hand).

A table lives in README.md between two marker lines::

    <!-- results-table: profile=cifar10 methods=msp,energy,grodin_g -->
    ...generated Markdown...
    <!-- /results-table -->

``methods`` (optional; default: every method of the CSV) picks and orders the rows by their code
names. Each row: family, display name, AUROC averaged over all OOD sets, FPR95 (ID-positive
convention) averaged likewise, and the AUROC average of each OOD group (near, far, ...); all in %,
the best of each column in bold. The averages are ``ood_core.reporting.tables.summary``'s, i.e. the
``all avg`` / ``<group> avg`` columns of ``metrics.md``.

    python -m analysis.readme_tables            # rewrite the tables whose metrics.csv exists
    python -m analysis.readme_tables --check    # exit 1 if a table differs from its metrics.csv
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ood_core import scores  # noqa: F401  (registers every score, so display names resolve)
from ood_core.cache import write_text
from ood_core.reporting import tables
from ood_core.reporting.table_csv import read_metrics_csv
from ood_core.reporting.table_render import best_rows
from ood_core.scores import registry

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- results-table: (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results-table -->)", re.S)


def parse_args(args: str) -> dict[str, str]:
    """``profile=cifar10 methods=a,b`` -> {'profile': 'cifar10', 'methods': 'a,b'}."""
    out = {}
    for tok in args.split():
        key, sep, val = tok.partition("=")
        if not sep or key not in ("profile", "methods"):
            raise ValueError(f"README results-table marker: expected 'profile=NAME [methods=a,b]', got '{args}'")
        out[key] = val
    if "profile" not in out:
        raise ValueError(f"README results-table marker: 'profile=' missing in '{args}'")
    return out


def results_table(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None = None) -> str:
    """Markdown summary table of ``metrics.csv`` rows (see the module docstring)."""
    _, auroc = tables.summary(rows, "auroc")
    _, fpr = tables.summary(rows, "fpr95")
    groups = [c for c in next(iter(auroc), {}) if c.endswith(" avg") and c != "all avg"]
    fpr_of = {e["method"]: e["all avg"] for e in fpr}
    order = list(methods) if methods else [e["method"] for e in auroc]
    by_method = {e["method"]: e for e in auroc}
    missing = [m for m in order if m not in by_method]
    if missing:
        raise KeyError(f"README results-table: method(s) {missing} not in metrics.csv (has {sorted(by_method)})")
    body = [{**by_method[m], "fpr95 avg": fpr_of[m]} for m in order]
    best = {c: best_rows([e[c] for e in body], "max", decimals=1) for c in ["all avg", *groups]}
    best["fpr95 avg"] = best_rows([e["fpr95 avg"] for e in body], "min", decimals=1)

    def cell(i: int, col: str) -> str:
        v = body[i][col]
        s = "—" if v is None else f"{v:.1f}"
        return f"**{s}**" if i in best[col] else s

    header = ["family", "method", "AUROC avg", "FPR95 avg", *[g.replace(" avg", "") for g in groups]]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for i, e in enumerate(body):
        cells = [
            registry.family_display(e["family"]),
            registry.display_name(e["method"]),
            cell(i, "all avg"),
            cell(i, "fpr95 avg"),
            *[cell(i, g) for g in groups],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(readme_text: str, figures_root: Path) -> tuple[str, list[str]]:
    """README text with every table whose ``figures/<profile>/metrics.csv`` exists regenerated;
    also the profiles skipped for want of a metrics.csv."""
    skipped: list[str] = []

    def replace(m: re.Match[str]) -> str:
        args = parse_args(m.group("args"))
        csv = figures_root / args["profile"] / "metrics.csv"
        if not csv.is_file():
            skipped.append(args["profile"])
            return m.group(0)
        methods = [x for x in args.get("methods", "").split(",") if x] or None
        return m.group(1) + results_table(read_metrics_csv(csv), methods) + m.group(4)

    return BLOCK.sub(replace, readme_text), skipped


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.readme_tables", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if a table is stale")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--figures", type=Path, default=REPO / "figures", help="folder holding <profile>/metrics.csv")
    a = p.parse_args(argv)
    text = a.readme.read_text()
    new, skipped = render(text, a.figures)
    for prof in skipped:
        print(f"[readme_tables] {a.figures / prof / 'metrics.csv'} absent: its table left as it is")
    if a.check:
        if new != text:
            print(
                f"error: {a.readme}: a results table differs from its metrics.csv; "
                "run `python -m analysis.readme_tables` to regenerate it",
                file=sys.stderr,
            )
            return 1
        print("[readme_tables] README tables match their metrics.csv")
        return 0
    if new != text:
        write_text(a.readme, new)
        print(f"[readme_tables] rewrote the results tables in {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
