"""Metric rows -> metrics.csv / metrics.md / metrics.tex, ablation tables, reference.md.

A *metric row* is a plain dict with the columns of :data:`METRIC_COLUMNS`, one per
(method, OOD set). Metric values in rows and CSVs are fractions in [0, 1]; the Markdown / LaTeX tables
show percent. ``fpr95`` is the seed papers' ID-positive FPR95 (``metrics.fpr95_id_pos``),
``fpr95_ood_pos`` the OpenOOD v1.5 one; ``aupr_*_ap`` are average precision, ``aupr_*_trapz`` the
trapezoid rule of OpenOOD / pytorch-ood (see ``ood_core.metrics``). CSVs hold the methods' code names;
the rendered tables (.md / .tex) show each method's registered display name
(``scores.registry.display_name``) and each family's (``family_display``). No pandas: csv module +
lists of dicts.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import reference as ref
from .grid_selection import SETTINGS as GRODIN_SETTINGS
from .scores.registry import FAMILIES, display_name, family_display

METRIC_COLUMNS = [
    "method", "family", "ood_set", "group", "auroc", "auroc_std", "fpr95", "fpr95_ood_pos",
    "aupr_in_ap", "aupr_out_ap", "aupr_in_trapz", "aupr_out_trapz", "hyperparams", "protocol", "n_id", "n_ood",
    "id_accuracy", "model",
]
_FLOAT_COLS = {"auroc", "auroc_std", "fpr95", "fpr95_ood_pos", "aupr_in_ap", "aupr_out_ap", "aupr_in_trapz",
               "aupr_out_trapz", "id_accuracy",
               "aupr_in", "aupr_out"}  # the last two: average precision, in metrics.csv files written before
_INT_COLS = {"n_id", "n_ood"}
GROUP_ORDER = ("near", "far")
GAP_THRESHOLD = 2.0  # AUROC points


# ------------------------------------------------------------------------------------------ csv
def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Write a list of dicts; dict/list values are JSON-encoded, None -> empty cell."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})
    return path


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=_json_default)
    if isinstance(v, float):
        return repr(v)
    if hasattr(v, "item"):  # numpy scalar
        return _cell(v.item())
    return v


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
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


# ------------------------------------------------------------------------------ summary tables
def _ordered_unique(xs: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(xs))


def _family_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = _ordered_unique(r["family"] for r in rows)
    return [f for f in FAMILIES if f in present] + [f for f in present if f not in FAMILIES]


def summary(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Wide table of ``metric`` in percent: one entry per method, columns = OOD sets, then one
    ``<group> avg`` per group (near, far, then others), then ``all avg``. An average is None when the
    method lacks a set of that group. Entries are ordered by family (FAMILIES order), then by first
    appearance; each has keys family, method, and the columns."""
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


def _mean(xs: list[float | None]) -> float | None:
    if not xs or any(x is None for x in xs):
        return None
    return sum(xs) / len(xs)  # type: ignore[arg-type]


def best_per_column(body: Sequence[Mapping[str, Any]], columns: Sequence[str], mode: str,
                    decimals: int = 2) -> dict[str, set[int]]:
    """Row positions holding the best value of each column (compared at display precision, so
    displayed ties are all bold). mode: 'max' or 'min'."""
    out: dict[str, set[int]] = {}
    for c in columns:
        vals = [(i, round(e[c], decimals)) for i, e in enumerate(body) if e.get(c) is not None]
        if not vals:
            out[c] = set()
            continue
        best = (max if mode == "max" else min)(v for _, v in vals)
        out[c] = {i for i, v in vals if v == best}
    return out


def _fmt(v: float | None, decimals: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{decimals}f}"


def tex_escape(s: Any) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
                 ("±", r"$\pm$"), ("—", "--"), ("−", "-"),  # below: the display names' math signs
                 ("‖", r"\ensuremath{\|}"), ("×", r"\ensuremath{\times}"), ("₁", r"\ensuremath{_1}"),
                 ("₂", r"\ensuremath{_2}"), ("²", r"\ensuremath{^2}")):
        s = s.replace(a, b)
    return s


def _md_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(l) + " |" for l in lines]
    return "\n".join(out)


_METRIC_TITLES = {
    "auroc": ("AUROC (%, higher is better)", "max"),
    "fpr95": ("FPR95 (%, lower is better; ID-positive: OOD accepted at 95 % ID recall)", "min"),
    "fpr95_ood_pos": ("FPR95 OpenOOD v1.5 convention (%, lower is better; ID flagged at 95 % OOD recall)", "min"),
}


_NAMES_NOTE = ("Methods by display name; metrics.csv holds the code names "
               "(`python -m analysis.score --list` pairs them).")


def _caption(info: Mapping[str, Any]) -> str:
    acc = info.get("id_accuracy")
    acc_s = "n/a" if acc is None else f"{100 * acc:.2f} %"
    parts = [f"model: {info.get('model', '?')}", f"ID test accuracy: {acc_s}",
             f"protocol: {info.get('protocol', '?')}"]
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


def metrics_markdown(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None = None,
                     metric_list: Sequence[str] = ("auroc", "fpr95")) -> str:
    info = _info_from_rows(rows, info)
    out = [f"# OOD benchmark: {info.get('title', info.get('model', ''))}".rstrip(), "", _caption(info), "",
           _NAMES_NOTE, ""]
    for metric in metric_list:
        title, mode = _METRIC_TITLES[metric]
        columns, body = summary(rows, metric)
        bold = best_per_column(body, columns, mode)
        lines = []
        prev_fam = None
        for i, e in enumerate(body):
            cells = [family_display(e["family"]) if e["family"] != prev_fam else "", display_name(e["method"])]
            prev_fam = e["family"]
            for c in columns:
                s = _fmt(e.get(c))
                if i in bold[c]:
                    s = f"**{s}**"
                sd = e.get(f"{c}__std")
                if sd is not None:
                    s += f" ±{sd:.2f}"
                cells.append(s)
            lines.append(cells)
        out += [f"## {title}", "", _md_table(["family", "method", *columns], lines), ""]
    return "\n".join(out)


def metrics_latex(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None = None,
                  metric_list: Sequence[str] = ("auroc", "fpr95")) -> str:
    info = _info_from_rows(rows, info)
    out = ["% generated by ood_core.tables -- requires \\usepackage{booktabs}"]
    for metric in metric_list:
        title, mode = _METRIC_TITLES[metric]
        columns, body = summary(rows, metric)
        bold = best_per_column(body, columns, mode)
        n_sets = sum(1 for c in columns if not c.endswith(" avg"))
        spec = "ll" + "r" * n_sets + "|" + "r" * (len(columns) - n_sets)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                rf"\caption{{{tex_escape(title)}. {tex_escape(_caption(info))}.}}",
                rf"\label{{tab:{metric}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(["Family", "Method", *(tex_escape(c) for c in columns)]) + r" \\", r"\midrule"]
        prev_fam = None
        for i, e in enumerate(body):
            if prev_fam is not None and e["family"] != prev_fam:
                out.append(r"\midrule")
            cells = [tex_escape(family_display(e["family"])) if e["family"] != prev_fam else "",
                     tex_escape(display_name(e["method"]))]
            prev_fam = e["family"]
            for c in columns:
                s = _fmt(e.get(c)).replace("—", "--")
                if i in bold[c]:
                    s = rf"\textbf{{{s}}}"
                sd = e.get(f"{c}__std")
                if sd is not None:
                    s += rf"\,{{\scriptsize$\pm${sd:.2f}}}"
                cells.append(s)
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def write_metrics_tables(rows: Sequence[Mapping[str, Any]], out_dir: Path,
                         info: Mapping[str, Any] | None = None) -> list[Path]:
    """metrics.csv, metrics.md, metrics.tex in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p_csv = write_metrics_csv(rows, out_dir / "metrics.csv")
    p_md = out_dir / "metrics.md"
    p_md.write_text(metrics_markdown(rows, info, ("auroc", "fpr95", "fpr95_ood_pos")))
    p_tex = out_dir / "metrics.tex"
    p_tex.write_text(metrics_latex(rows, info))
    return [p_csv, p_md, p_tex]


# -------------------------------------------------------------------------------- generic tables
def pivot(long_rows: Sequence[Mapping[str, Any]], index: Sequence[str], column: str, value: str,
          scale: float = 100.0, add_mean: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
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


def write_table(body: Sequence[Mapping[str, Any]], index: Sequence[str], columns: Sequence[str], stem: Path,
                caption: str, bold: str | None = "max", csv_rows: Sequence[Mapping[str, Any]] | None = None,
                decimals: int = 2) -> list[Path]:
    """Write ``stem``.md/.tex/.csv for a wide table (index columns + numeric columns, best per column
    in bold). The CSV holds ``csv_rows`` (e.g. the long form with chosen hyper-parameters) if given."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    best = best_per_column(body, columns, bold, decimals) if bold else {c: set() for c in columns}

    def cell(i: int, e: Mapping[str, Any], c: str, tex: bool) -> str:
        s = _fmt(e.get(c), decimals)
        if tex:
            s = s.replace("—", "--")
        if i in best[c]:
            s = rf"\textbf{{{s}}}" if tex else f"**{s}**"
        return s

    md_lines = [[str(e[k]) for k in index] + [cell(i, e, c, False) for c in columns] for i, e in enumerate(body)]
    md = f"{caption}\n\n" + _md_table([*index, *columns], md_lines) + "\n"
    tex = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex_escape(caption)}}}",
           rf"\label{{tab:{stem.name.replace('_', '-')}}}",
           rf"\begin{{tabular}}{{{'l' * len(index)}{'r' * len(columns)}}}", r"\toprule",
           " & ".join(tex_escape(c) for c in [*index, *columns]) + r" \\", r"\midrule"]
    for i, e in enumerate(body):
        tex.append(" & ".join([tex_escape(e[k]) for k in index] + [cell(i, e, c, True) for c in columns]) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(md)
    paths[1].write_text("\n".join(tex))
    if csv_rows is None:
        csv_rows = [dict(e) for e in body]
        write_csv(csv_rows, paths[2], [*index, *columns])
    else:
        write_csv(csv_rows, paths[2])
    return paths


# ------------------------------------------------------------------------------------ ablations
GRODIN_SETTING_LABEL = {"vanilla": "vanilla (eps=0, T=1)", "only_eps": "only eps (T=1)",
                        "only_T": "only T (eps=0)", "both": "eps and T"}


def write_grodin_ablation(long_rows: Sequence[Mapping[str, Any]], out_dir: Path, note: str = "") -> list[Path]:
    """long rows: method (grodin_g / grodin_sg), setting (GRODIN_SETTINGS), ood_set, auroc (test),
    eps, T (the chosen values). Table: rows = method x setting, columns = OOD sets + mean."""
    order = {s: i for i, s in enumerate(GRODIN_SETTINGS)}
    rows = sorted(long_rows, key=lambda r: (r["method"], order.get(r["setting"], 99)))
    rows = [{**r, "method": display_name(r["method"]), "setting": GRODIN_SETTING_LABEL.get(r["setting"], r["setting"])}
            for r in rows]
    columns, body = pivot(rows, ["method", "setting"], "ood_set", "auroc")
    cap = "GRODIN ablation: test AUROC (%) with eps and/or T tuned on validation parts" + (f" ({note})" if note else "")
    return write_table(body, ["method", "setting"], columns, Path(out_dir) / "ablation_grodin", cap,
                       csv_rows=long_rows)


def write_sweep_ablation(long_rows: Sequence[Mapping[str, Any]], param: str, stem: Path, caption: str) -> list[Path]:
    """Generic one-parameter sweep table (rows = method x param value, columns = OOD sets + mean)."""
    index = ["method", param] if any("method" in r for r in long_rows) else [param]
    shown = [{**r, "method": display_name(r["method"])} if "method" in r else r for r in long_rows]
    columns, body = pivot(shown, index, "ood_set", "auroc_test")
    return write_table(body, index, columns, stem, caption, csv_rows=long_rows)


# ------------------------------------------------------------------------------- reference.md
def _our_value(rows: Sequence[Mapping[str, Any]], method: str, sets: list[str], metric: str) -> float | None:
    col = {"auroc": "auroc", "fpr95_id_pos": "fpr95", "fpr95_ood_pos": "fpr95_ood_pos"}[metric]
    vals = []
    for s in sets:
        v = next((r.get(col) for r in rows if r["method"] == method and r["ood_set"] == s), None)
        if v is None:
            return None
        vals.append(100.0 * v)
    return sum(vals) / len(vals) if vals else None


def reference_comparison(rows: Sequence[Mapping[str, Any]], id_dataset: str,
                         refs: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Our numbers beside every published number for the same ID dataset whose OOD set maps to ours
    (see ``reference.SET_MAP``); ``ours`` is None when we did not run the method."""
    refs = ref.REFERENCE if refs is None else refs
    available = _ordered_unique(r["ood_set"] for r in rows)
    out = []
    for e in refs:
        if e["id_dataset"] != id_dataset or e["metric"] not in ("auroc", "fpr95_id_pos", "fpr95_ood_pos"):
            continue
        if e["value"] is None:
            continue
        mapped = ref.our_sets_for(e["ood_set"], available)
        if not mapped:
            continue
        our_sets = [m[0] for m in mapped]
        comps = {m[1] for m in mapped}
        comp = "not comparable" if "not comparable" in comps else ("partial" if "partial" in comps else "comparable")
        ours = _our_value(rows, e["method"], our_sets, e["metric"])
        out.append({**e, "our_sets": our_sets, "comparability": comp, "set_note": "; ".join(m[2] for m in mapped),
                    "ours": ours, "gap": None if ours is None else ours - e["value"]})
    return out


def _differs_line(c: Mapping[str, Any], model: str, protocol: str, preprocessing: str) -> str:
    parts = [
        f"model weights/training (theirs: {c['model']}; ours: {model}; checkpoints not shared)",
        f"OOD image lists/subsets ({c['comparability']}: {c['set_note']})",
        f"preprocessing (theirs: {c.get('preprocessing') or 'not recorded'}; ours: {preprocessing})",
        f"protocol (theirs: {c.get('protocol') or 'unknown'}; ours: {protocol})",
    ]
    if c["tag"] == "[mem]":
        parts.append("and the published value itself is [mem], unverified")
    return "; ".join(parts)


def reference_markdown(rows: Sequence[Mapping[str, Any]], *, id_dataset: str, model: str, protocol: str,
                       preprocessing: str = "see the profile config",
                       refs: Sequence[Mapping[str, Any]] | None = None) -> str:
    comp = reference_comparison(rows, id_dataset, refs)
    lines = [
        f"# Our numbers beside published ones (ID: {id_dataset}, model: {model}, protocol: {protocol})",
        "",
        "Source tags: " + "; ".join(f"**{k}** {v}" for k, v in ref.TAG_MEANING.items()) + ".",
        "**[mem] numbers are unverified recollections of the papers: do not quote them, or our gaps to them, "
        "before checking the original tables.**",
        "",
        "Values in %. gap = ours − theirs. FPR95 rows use the convention named in the metric column.",
        "",
    ]
    if not comp:
        lines += [f"No published number maps to our OOD sets for ID dataset '{id_dataset}'.", ""]
    else:
        body = []
        for c in comp:
            body.append([c["source"], c["tag"], display_name(c["method"]), c["ood_set"], ", ".join(c["our_sets"]),
                         c["metric"], _fmt(c["value"]), _fmt(c["ours"]) if c["ours"] is not None else "not run",
                         f"{c['gap']:+.2f}" if c["gap"] is not None else "—", c["comparability"]])
        lines += [_md_table(["source", "tag", "method", "their set", "our set(s)", "metric", "theirs", "ours",
                             "gap", "comparability"], body), ""]
        gaps = [c for c in comp if c["metric"] == "auroc" and c["gap"] is not None and abs(c["gap"]) > GAP_THRESHOLD]
        lines += [f"## AUROC gaps larger than {GAP_THRESHOLD:g} points", ""]
        if not gaps:
            lines.append("None.")
        for c in gaps:
            lines.append(f"- Gap {c['gap']:+.2f} pts, {display_name(c['method'])} on {c['ood_set']} vs {c['source']} "
                         f"{c['tag']}: differs in {_differs_line(c, model, protocol, preprocessing)}.")
        lines.append("")
    lines += ["## Set mapping", ""]
    for ours, maps in ref.SET_MAP.items():
        for theirs, compb, note in maps:
            lines.append(f"- `{ours}` ~ {theirs}: {compb} — {note}")
    lines += ["- " + ref.ABSENT_NOTE, ""]
    return "\n".join(lines)


def write_reference_md(rows: Sequence[Mapping[str, Any]], path: Path, **kw: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reference_markdown(rows, **kw))
    return path
