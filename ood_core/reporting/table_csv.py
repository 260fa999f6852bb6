"""CSV I/O of the benchmark's tables: lists of dicts <-> CSV files (csv module, no pandas).

A *metric row* is a plain dict with the columns of :data:`METRIC_COLUMNS`, one per (method, OOD set).
Metric values are fractions in [0, 1]; ``fpr95`` is the seed papers' ID-positive FPR95
(``metrics.fpr95_id_pos``), ``fpr95_ood_pos`` the OpenOOD v1.5 one; ``aupr_*_ap`` are average
precision, ``aupr_*_trapz`` the trapezoid rule of OpenOOD / pytorch-ood (see ``ood_core.evaluation.metrics``).
CSVs hold the methods' code names. Files are written atomically (``cache.atomic_path``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ood_core.cache import atomic_path

METRIC_COLUMNS = [
    "method",
    "family",
    "ood_set",
    "group",
    "auroc",
    "auroc_std",
    "fpr95",
    "fpr95_ood_pos",
    "aupr_in_ap",
    "aupr_out_ap",
    "aupr_in_trapz",
    "aupr_out_trapz",
    "hyperparams",
    "protocol",
    "n_id",
    "n_ood",
    "id_accuracy",
    "model",
]
_FLOAT_COLS = {
    "auroc",
    "auroc_std",
    "fpr95",
    "fpr95_ood_pos",
    "aupr_in_ap",
    "aupr_out_ap",
    "aupr_in_trapz",
    "aupr_out_trapz",
    "id_accuracy",
    "aupr_in",
    "aupr_out",
}  # the last two: average precision, in metrics.csv files written before
_INT_COLS = {"n_id", "n_ood"}


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy values: scalars -> Python numbers, arrays -> lists."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _cell(v: Any) -> Any:
    """A value as written in a CSV cell: None -> empty, dict/list -> JSON, float -> repr."""
    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=json_default)
    if isinstance(v, float):
        return repr(v)
    if hasattr(v, "item"):  # numpy scalar
        return _cell(v.item())
    return v


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Write a list of dicts (columns: ``columns``, else every key in order of first appearance)."""
    path = Path(path)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})
    return path


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """metrics.csv: the metric rows under :data:`METRIC_COLUMNS`."""
    return write_csv(rows, path, METRIC_COLUMNS)


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Inverse of :func:`write_metrics_csv` (floats, ints and the hyperparams dict restored)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                elif k in _FLOAT_COLS:
                    row[k] = float(v)
                elif k in _INT_COLS:
                    row[k] = int(v)
                elif k == "hyperparams":
                    row[k] = json.loads(v)
                else:
                    row[k] = v
            out.append(row)
    return out


def metrics_frame(rows: Sequence[Mapping[str, Any]]):
    """The metric rows as a pandas DataFrame with the columns and cells of metrics.csv (hyperparams as
    the same JSON text; numbers unrounded): ``pandas.read_csv("metrics.csv")`` gives the same frame."""
    import pandas as pd

    def cell(v: Any) -> Any:
        return json.dumps(v, sort_keys=True, default=json_default) if isinstance(v, (dict, list, tuple)) else v

    return pd.DataFrame([{c: cell(r.get(c)) for c in METRIC_COLUMNS} for r in rows], columns=METRIC_COLUMNS)
