"""Mean ± std over training seeds of the benchmark's metrics (several metrics.csv of one profile).

Each run is the metrics.csv of one training seed (``ood_core.reporting.table_csv``). Per (protocol, method,
OOD set) and per metric x in :data:`METRICS` over the seeds k = 1..n that have the row:

    mean = (1/n) sum_k x_k,   std = sqrt(sum_k (x_k - mean)^2 / (n - 1))   (sample std; none for n = 1)

The near / far averages are taken per seed first (mean of the seed's per-set values over the group's
sets, as OpenOOD averages per checkpoint), then over the seeds; a seed lacking one of the group's sets
(as present in any seed) gives no average. ``n_seeds`` says how many seeds each row has.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ood_core.reporting.table_csv import read_metrics_csv
from ood_core.reporting.table_render import Table, markdown
from ood_core.reporting.tables import GROUP_ORDER, _family_order, _ordered_unique
from ood_core.scores.registry import display_name, family_display

METRICS = ("auroc", "fpr95", "fpr95_ood_pos")
REQUIRED = ("method", "family", "ood_set", "group", "protocol", *METRICS)
_TITLES = {
    "auroc": ("AUROC (%, higher is better)", "max"),
    "fpr95": ("FPR95 (%, lower is better; ID-positive: OOD accepted at 95 % ID recall)", "min"),
    "fpr95_ood_pos": ("FPR95 OpenOOD v1.5 convention (%, lower is better; ID flagged at 95 % OOD recall)", "min"),
}


class SeedsInputError(ValueError):
    """A run's metrics.csv is missing or cannot be used; the message is one line naming the file."""


def metrics_path(run: str | Path) -> Path:
    """The metrics.csv of a run: the path itself when it is a file name ending in .csv, else
    ``<run>/metrics.csv``."""
    p = Path(run)
    return p if p.suffix == ".csv" else p / "metrics.csv"


def read_run(run: str | Path) -> list[dict[str, Any]]:
    """The metric rows of one run, checked: the file exists, has the columns :data:`REQUIRED`, its
    numbers parse, and it holds each (protocol, method, set) once."""
    path = metrics_path(run)
    if not path.is_file():
        raise SeedsInputError(f"{path}: file not found (a run directory holds the benchmark's metrics.csv)")
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise SeedsInputError(f"{path}: not a metrics.csv: no column(s) {', '.join(missing)}")
        rows = read_metrics_csv(path)
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        if isinstance(e, SeedsInputError):
            raise
        raise SeedsInputError(f"{path}: malformed ({' '.join(str(e).split())})") from None
    if not rows:
        raise SeedsInputError(f"{path}: no metric rows")
    seen: set[tuple[str, str, str]] = set()
    for i, r in enumerate(rows, start=2):
        key = (str(r.get("protocol")), str(r["method"]), str(r["ood_set"]))
        if key in seen:
            raise SeedsInputError(f"{path}: line {i}: a second row for {key[1]} on {key[2]} ({key[0]})")
        seen.add(key)
        if r.get("auroc") is None or not math.isfinite(r["auroc"]):
            raise SeedsInputError(f"{path}: line {i}: no AUROC for {key[1]} on {key[2]}")
    return rows


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """A label per run: its directory's name (the file's folder for a .csv), made unique by the path."""
    names = [metrics_path(r).parent.name or str(r) for r in runs]
    return [n if names.count(n) == 1 else str(metrics_path(r).parent) for n, r in zip(names, runs)]


def _stats(values: Mapping[str, float | None]) -> tuple[float | None, float | None, dict[str, float]]:
    vals = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not vals:
        return None, None, {}
    xs = list(vals.values())
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return mean, std, vals


def aggregate(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (protocol, method, set) and per (protocol, method, ``<group> avg``) over the runs
    (label -> metric rows): ``n_seeds``, ``seeds``, and per metric ``<m>_mean``, ``<m>_std`` (None
    below two seeds) and ``<m>_per_seed`` {label: value}."""
    all_rows = [dict(r, _seed=lab) for lab, rows in runs.items() for r in rows]
    out = []
    for proto in _ordered_unique(str(r.get("protocol")) for r in all_rows):
        rows = [r for r in all_rows if str(r.get("protocol")) == proto]
        group_of = {r["ood_set"]: r.get("group") or "other" for r in rows}
        sets = _ordered_unique(r["ood_set"] for r in rows)
        groups = [g for g in GROUP_ORDER if g in group_of.values()]
        for fam in _family_order(rows):
            for m in _ordered_unique(r["method"] for r in rows if r["family"] == fam):
                mine = [r for r in rows if r["method"] == m]
                cells = {(r["_seed"], r["ood_set"]): r for r in mine}
                for s in sets:
                    per = {lab: cells[(lab, s)] for lab in runs if (lab, s) in cells}
                    if per:
                        out.append(_row(proto, m, fam, s, group_of[s], per))
                for g in groups:
                    gsets = [s for s in sets if group_of[s] == g]
                    per = {}
                    for lab in runs:
                        if all((lab, s) in cells for s in gsets):
                            per[lab] = {k: _mean_or_none([cells[(lab, s)].get(k) for s in gsets]) for k in METRICS}
                    if per:
                        out.append(_row(proto, m, fam, f"{g} avg", g, per))
    return out


def _mean_or_none(xs: Sequence[float | None]) -> float | None:
    return None if any(x is None for x in xs) else sum(xs) / len(xs)  # type: ignore[arg-type]


def _row(proto: str, method: str, family: str, ood_set: str, group: str, per: Mapping[str, Mapping[str, Any]]) -> dict:
    row: dict[str, Any] = {
        "protocol": proto,
        "method": method,
        "family": family,
        "ood_set": ood_set,
        "group": group,
        "n_seeds": len(per),
        "seeds": ";".join(per),
    }
    for k in METRICS:
        mean, std, vals = _stats({lab: r.get(k) for lab, r in per.items()})
        row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_per_seed"] = mean, std, vals
    first = next(iter(per.values()))
    for k in ("n_id", "n_ood"):
        counts = {r.get(k) for r in per.values()}
        row[k] = first.get(k) if len(counts) == 1 else None  # None when the seeds' row counts differ
    return row


COLUMNS = [
    "protocol",
    "method",
    "family",
    "ood_set",
    "group",
    "n_seeds",
    "seeds",
    *(f"{k}_{part}" for k in METRICS for part in ("mean", "std", "per_seed")),
    "n_id",
    "n_ood",
]


def _table(rows: Sequence[Mapping[str, Any]], metric: str) -> Table:
    columns = _ordered_unique(r["ood_set"] for r in rows if not r["ood_set"].endswith(" avg"))
    columns += _ordered_unique(r["ood_set"] for r in rows if r["ood_set"].endswith(" avg"))
    labels, values, stds, fams = [], [], [], []
    prev = None
    for m in _ordered_unique(r["method"] for r in rows):
        mine = {r["ood_set"]: r for r in rows if r["method"] == m}
        fam = next(iter(mine.values()))["family"]
        counts = sorted({r["n_seeds"] for r in mine.values()})
        seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        labels.append([family_display(fam) if fam != prev else "", display_name(m), seeds])
        prev = fam
        cell = [mine.get(c) for c in columns]
        values.append([None if r is None or r[f"{metric}_mean"] is None else 100 * r[f"{metric}_mean"] for r in cell])
        stds.append([None if r is None or r[f"{metric}_std"] is None else 100 * r[f"{metric}_std"] for r in cell])
        fams.append(fam)
    return Table(["family", "method", "seeds"], columns, labels, values, stds, best=_TITLES[metric][1], groups=fams)


def seeds_markdown(rows: Sequence[Mapping[str, Any]], labels: Sequence[str], title: str = "") -> str:
    """seeds_metrics.md: per protocol, one table per metric of mean ± std over the seeds."""
    n = len(labels)
    if n == 1:
        spread = f"One seed ({labels[0]}): the values of that seed; no std across seeds exists."
    else:
        spread = (
            f"Mean ± std over {n} seeds ({', '.join(labels)}); std = sample std (n − 1) across seeds; "
            "the seeds column says how many seeds a row has (a cell of one seed has no ±)."
        )
    avg = "per seed the mean over the group's sets" + (", then mean ± std over the seeds" if n > 1 else "")
    out = [f"# Metrics over training seeds{': ' + title if title else ''}", "", spread, ""]
    out += [f"Near / far avg: {avg}. Methods by display name; seeds_metrics.csv holds the code names.", ""]
    for proto in _ordered_unique(r["protocol"] for r in rows):
        mine = [r for r in rows if r["protocol"] == proto]
        groups = {
            g: _ordered_unique(r["ood_set"] for r in mine if r["group"] == g and r["ood_set"] != f"{g} avg")
            for g in GROUP_ORDER
        }
        sets = "; ".join(f"{g} avg = mean({', '.join(ss)})" for g, ss in groups.items() if ss)
        out += [f"## Protocol: {proto}", "", *([sets, ""] if sets else [])]
        for metric in METRICS:
            out += [f"### {_TITLES[metric][0]}", "", markdown(_table(mine, metric)), ""]
    return "\n".join(out)
