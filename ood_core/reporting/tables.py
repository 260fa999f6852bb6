"""Metric rows -> metrics.csv / metrics.md / metrics.tex, and the ablation tables (.md / .tex / .csv).

Rows are the metric rows of :mod:`ood_core.reporting.table_csv` (fractions in [0, 1]); the rendered tables show
percent, each method's registered display name (``scores.registry.display_name``) and each family's
(``family_display``), while the CSVs keep the code names. Rendering: :mod:`ood_core.reporting.table_render`;
published numbers beside ours (reference.md): :mod:`ood_core.reporting.reference_compare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ood_core.cache import write_text
from ood_core.evaluation.tuning import base_protocol
from ood_core.extraction.grid_selection import SETTINGS as GRODIN_SETTINGS
from ood_core.reporting.table_csv import write_csv, write_metrics_csv
from ood_core.reporting.table_render import Table, latex, markdown
from ood_core.scores.registry import FAMILIES, display_name, family_display

GROUP_ORDER = ("near", "far")


# ------------------------------------------------------------------------------ summary tables
def _ordered_unique(xs: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(xs))


def _family_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = _ordered_unique(r["family"] for r in rows)
    return [f for f in FAMILIES if f in present] + [f for f in present if f not in FAMILIES]


def _mean(xs: list[float | None]) -> float | None:
    if not xs or any(x is None for x in xs):
        return None
    return sum(xs) / len(xs)  # type: ignore[arg-type]


def summary(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Wide table of ``metric`` in percent: one entry per method, columns = OOD sets, then one
    ``<group> avg`` per group (near, far, then others), then ``all avg``. An average is None when the
    method lacks a set of that group. Entries are ordered by family (FAMILIES order), then by first
    appearance; each has keys family, method, and the columns (for AUROC also ``<set>__std``)."""
    sets = _ordered_unique(r["ood_set"] for r in rows)
    group_of = {r["ood_set"]: r.get("group") or "other" for r in rows}
    present_groups = _ordered_unique(group_of[s] for s in sets)
    groups = [g for g in GROUP_ORDER if g in present_groups] + [g for g in present_groups if g not in GROUP_ORDER]
    columns = list(sets) + [f"{g} avg" for g in groups] + ["all avg"]
    body = []
    for fam in _family_order(rows):
        for m in _ordered_unique(r["method"] for r in rows if r["family"] == fam):
            vals = {r["ood_set"]: r.get(metric) for r in rows if r["method"] == m}
            entry: dict[str, Any] = {"family": fam, "method": m}
            for s in sets:
                v = vals.get(s)
                entry[s] = None if v is None else 100.0 * v
                if metric == "auroc":
                    sd = next((r.get("auroc_std") for r in rows if r["method"] == m and r["ood_set"] == s), None)
                    entry[f"{s}__std"] = None if sd is None else 100.0 * sd
            for g in groups:
                entry[f"{g} avg"] = _mean([entry[s] for s in sets if group_of[s] == g])
            entry["all avg"] = _mean([entry[s] for s in sets])
            body.append(entry)
    return columns, body


_METRIC_TITLES = {
    "auroc": ("AUROC (%, higher is better)", "max"),
    "fpr95": ("FPR95 (%, lower is better; ID-positive: OOD accepted at 95 % ID recall)", "min"),
    "fpr95_ood_pos": ("FPR95 OpenOOD v1.5 convention (%, lower is better; ID flagged at 95 % OOD recall)", "min"),
}

_NAMES_NOTE = (
    "Methods by display name; metrics.csv holds the code names (`python -m analysis.score --list` pairs them)."
)


def metric_table(rows: Sequence[Mapping[str, Any]], metric: str) -> Table:
    """The summary of ``metric`` as a renderable table: family (shown once per family), method, the
    OOD sets (± bootstrap std for AUROC) and the averages; best per column in bold."""
    columns, body = summary(rows, metric)
    labels, prev = [], None
    for e in body:
        labels.append([family_display(e["family"]) if e["family"] != prev else "", display_name(e["method"])])
        prev = e["family"]
    return Table(
        label_header=["family", "method"],
        columns=columns,
        labels=labels,
        values=[[e.get(c) for c in columns] for e in body],
        stds=[[e.get(f"{c}__std") for c in columns] for e in body],
        best=_METRIC_TITLES[metric][1],
        groups=[e["family"] for e in body],
        rule_before=sum(1 for c in columns if not c.endswith(" avg")),
    )


def _caption(info: Mapping[str, Any]) -> str:
    acc = info.get("id_accuracy")
    acc_s = "n/a" if acc is None else f"{100 * acc:.2f} %"
    parts = [f"model: {info.get('model', '?')}", f"ID test accuracy: {acc_s}", f"protocol: {info.get('protocol', '?')}"]
    if info.get("n_id") is not None:
        parts.append(f"ID test n = {info['n_id']}")
    if info.get("bootstrap_n"):
        parts.append(f"± = bootstrap std over {info['bootstrap_n']} resamples")
    return "; ".join(parts)


def _info_from_rows(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(info or {})
    if rows:
        r0 = rows[0]
        for k in ("model", "id_accuracy", "protocol", "n_id"):
            out.setdefault(k, r0.get(k))
        protos = {str(r.get("protocol")) for r in rows}
        if "protocol" not in (info or {}) and len(protos) > 1:
            out["protocol"] = "mixed: " + ", ".join(sorted(protos))
    return out


def by_protocol(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Metric rows grouped by their protocol (``tuning.base_protocol`` of the row's label), in row order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(base_protocol(str(r.get("protocol"))), []).append(r)
    return out


def _sections(
    rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any]
) -> list[tuple[str | None, str | None, list[Mapping[str, Any]], dict[str, Any]]]:
    """(protocol, its rows note, its rows, its caption facts) per protocol of ``rows``; one section
    without a protocol heading when there is one protocol."""
    groups = by_protocol(rows)
    notes = dict(info.get("protocol_notes") or {})
    if len(groups) <= 1:
        p = next(iter(groups), None)
        return [(None, notes.get(p) if p else None, list(rows), dict(info))]
    return [
        (p, notes.get(p), g, {**_info_from_rows(g, None), **{k: info[k] for k in ("bootstrap_n",) if k in info}})
        for p, g in groups.items()
    ]


def metrics_markdown(
    rows: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
    metric_list: Sequence[str] = ("auroc", "fpr95"),
) -> str:
    """metrics.md: a caption, then one table per metric of ``metric_list``; with rows of several
    protocols, one section per protocol (in row order: the headline first), each saying which rows
    it tuned and tested on (``info['protocol_notes']``)."""
    info = _info_from_rows(rows, info)
    sections = _sections(rows, info)
    if len(sections) > 1:
        names = ", ".join(str(p) for p, *_ in sections)
        info = {**info, "protocol": f"{names} (one section each; the first is the headline)"}
    out = [
        f"# OOD benchmark: {info.get('title', info.get('model', ''))}".rstrip(),
        "",
        _caption(info),
        "",
        _NAMES_NOTE,
        "",
    ]
    for protocol, note, prows, _ in sections:
        level = "##" if protocol is None else "###"
        if protocol is not None:
            out += [f"## Protocol `{protocol}`", ""]
        if note:
            out += [f"Rows: {note}.", ""]
        for metric in metric_list:
            out += [f"{level} {_METRIC_TITLES[metric][0]}", "", markdown(metric_table(prows, metric)), ""]
    return "\n".join(out)


def metrics_latex(
    rows: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
    metric_list: Sequence[str] = ("auroc", "fpr95"),
) -> str:
    """metrics.tex: one booktabs table per metric of ``metric_list`` (and per protocol of ``rows``)."""
    info = _info_from_rows(rows, info)
    out = ["% generated by ood_core.reporting.tables -- requires \\usepackage{booktabs}"]
    for protocol, note, prows, pinfo in _sections(rows, info):
        for metric in metric_list:
            table = metric_table(prows, metric)
            rows_s = f" Rows: {note}." if note else ""
            out += [
                latex(
                    table,
                    caption=f"{_METRIC_TITLES[metric][0]}. {_caption(pinfo)}.{rows_s}",
                    label=f"tab:{metric}" + (f"-{protocol}" if protocol else ""),
                    header=["Family", "Method", *table.columns],
                ),
                "",
            ]
    return "\n".join(out)


def write_metrics_tables(
    rows: Sequence[Mapping[str, Any]], out_dir: Path, info: Mapping[str, Any] | None = None
) -> list[Path]:
    """metrics.csv, metrics.md, metrics.tex in ``out_dir``."""
    out_dir = Path(out_dir)
    p_csv = write_metrics_csv(rows, out_dir / "metrics.csv")
    p_md = write_text(out_dir / "metrics.md", metrics_markdown(rows, info, ("auroc", "fpr95", "fpr95_ood_pos")))
    p_tex = write_text(out_dir / "metrics.tex", metrics_latex(rows, info))
    return [p_csv, p_md, p_tex]


# -------------------------------------------------------------------------------- generic tables
def pivot(
    long_rows: Sequence[Mapping[str, Any]],
    index: Sequence[str],
    column: str,
    value: str,
    scale: float = 100.0,
    add_mean: bool = True,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Long rows -> wide rows keyed by ``index``; one column per distinct ``column`` value (+ mean)."""
    cols = _ordered_unique(r[column] for r in long_rows)
    wide: dict[tuple, dict[str, Any]] = {}
    for r in long_rows:
        key = tuple(r[k] for k in index)
        e = wide.setdefault(key, {k: r[k] for k in index})
        v = r.get(value)
        e[str(r[column])] = None if v is None else scale * v
    columns = [str(c) for c in cols]
    if add_mean:
        for e in wide.values():
            e["mean"] = _mean([e.get(c) for c in columns])
        columns.append("mean")
    return columns, list(wide.values())


def write_table(
    body: Sequence[Mapping[str, Any]],
    index: Sequence[str],
    columns: Sequence[str],
    stem: Path,
    caption: str,
    bold: str | None = "max",
    csv_rows: Sequence[Mapping[str, Any]] | None = None,
    decimals: int = 2,
) -> list[Path]:
    """Write ``stem``.md/.tex/.csv for a wide table (index columns + numeric columns, best per column
    in bold). The CSV holds ``csv_rows`` (e.g. the long form with chosen hyper-parameters) if given."""
    stem = Path(stem)
    table = Table(
        label_header=list(index),
        columns=list(columns),
        labels=[[str(e[k]) for k in index] for e in body],
        values=[[e.get(c) for c in columns] for e in body],
        best=bold,
        decimals=decimals,
    )
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    write_text(paths[0], f"{caption}\n\n{markdown(table)}\n")
    write_text(paths[1], latex(table, caption=caption, label=f"tab:{stem.name.replace('_', '-')}") + "\n")
    if csv_rows is None:
        write_csv([dict(e) for e in body], paths[2], [*index, *columns])
    else:
        write_csv(csv_rows, paths[2])
    return paths


# ------------------------------------------------------------------------------------ ablations
GRODIN_SETTING_LABEL = {
    "vanilla": "vanilla (eps=0, T=1)",
    "only_eps": "only eps (T=1)",
    "only_T": "only T (eps=0)",
    "both": "eps and T",
}


def write_grodin_ablation(long_rows: Sequence[Mapping[str, Any]], out_dir: Path, note: str = "") -> list[Path]:
    """long rows: method (grodin_g / grodin_sg), setting (GRODIN_SETTINGS), ood_set, auroc (test),
    eps, T (the chosen values). Table: rows = method x setting, columns = OOD sets + mean."""
    order = {s: i for i, s in enumerate(GRODIN_SETTINGS)}
    rows = sorted(long_rows, key=lambda r: (r["method"], order.get(r["setting"], 99)))
    rows = [
        {**r, "method": display_name(r["method"]), "setting": GRODIN_SETTING_LABEL.get(r["setting"], r["setting"])}
        for r in rows
    ]
    columns, body = pivot(rows, ["method", "setting"], "ood_set", "auroc")
    cap = "GRODIN ablation: test AUROC (%) with eps and/or T tuned on validation parts" + (f" ({note})" if note else "")
    return write_table(body, ["method", "setting"], columns, Path(out_dir) / "ablation_grodin", cap, csv_rows=long_rows)


def write_sweep_ablation(long_rows: Sequence[Mapping[str, Any]], param: str, stem: Path, caption: str) -> list[Path]:
    """Generic one-parameter sweep table (rows = method x param value, columns = OOD sets + mean)."""
    index = ["method", param] if any("method" in r for r in long_rows) else [param]
    shown = [{**r, "method": display_name(r["method"])} if "method" in r else r for r in long_rows]
    columns, body = pivot(shown, index, "ood_set", "auroc_test")
    return write_table(body, index, columns, stem, caption, csv_rows=long_rows)
