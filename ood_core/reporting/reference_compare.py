"""Our numbers beside the published ones of :mod:`ood_core.reporting.reference` (reference.md).

Each published entry for the same ID dataset whose OOD set maps to ours (``reference.SET_MAP``) is
paired with our value on the mapped set(s) (their mean, in percent) and the gap ``ours - theirs``;
AUROC gaps above :data:`GAP_THRESHOLD` points are listed with what differs between the two setups.
:func:`openood_rank_correlation`: Spearman's rho of our method ranking vs OpenOOD v1.5's leaderboard
(its values from :mod:`ood_core.reporting.reference`, ours on the mapped sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ood_core.cache import write_text
from ood_core.reporting import reference as ref
from ood_core.reporting.table_render import DASH, fmt_number, markdown_grid
from ood_core.scores.registry import display_name

GAP_THRESHOLD = 2.0  # AUROC points
_COLUMN_OF = {"auroc": "auroc", "fpr95_id_pos": "fpr95", "fpr95_ood_pos": "fpr95_ood_pos"}  # metric -> metrics.csv


def _our_value(rows: Sequence[Mapping[str, Any]], method: str, sets: list[str], metric: str) -> float | None:
    """Mean of our ``metric`` (percent) of ``method`` over ``sets``; None when one is missing."""
    col = _COLUMN_OF[metric]
    vals = []
    for s in sets:
        v = next((r.get(col) for r in rows if r["method"] == method and r["ood_set"] == s), None)
        if v is None:
            return None
        vals.append(100.0 * v)
    return sum(vals) / len(vals) if vals else None


def reference_comparison(
    rows: Sequence[Mapping[str, Any]], id_dataset: str, refs: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Our numbers beside every published number for the same ID dataset whose OOD set maps to ours
    (see ``reference.SET_MAP``); ``ours`` is None when we did not run the method."""
    refs = ref.REFERENCE if refs is None else refs
    available = list(dict.fromkeys(r["ood_set"] for r in rows))
    out = []
    for e in refs:
        if e["id_dataset"] != id_dataset or e["metric"] not in _COLUMN_OF or e["value"] is None:
            continue
        mapped = ref.our_sets_for(e["ood_set"], available)
        if not mapped:
            continue
        our_sets = [m[0] for m in mapped]
        comps = {m[1] for m in mapped}
        comp = "not comparable" if "not comparable" in comps else ("partial" if "partial" in comps else "comparable")
        ours = _our_value(rows, e["method"], our_sets, e["metric"])
        out.append(
            {
                **e,
                "our_sets": our_sets,
                "comparability": comp,
                "set_note": "; ".join(m[2] for m in mapped),
                "ours": ours,
                "gap": None if ours is None else ours - e["value"],
            }
        )
    return out


def _differs_line(c: Mapping[str, Any], model: str, protocol: str, preprocessing: str) -> str:
    parts = [
        f"model weights/training (theirs: {c['model']}; ours: {model}; checkpoints not shared)",
        f"OOD image lists/subsets ({c['comparability']}: {c['set_note']})",
        f"preprocessing (theirs: {c.get('preprocessing') or 'not recorded'}; ours: {preprocessing})",
        f"protocol (theirs: {c.get('protocol') or 'unknown'}; ours: {protocol})",
    ]
    return "; ".join(parts)


def reference_markdown(
    rows: Sequence[Mapping[str, Any]],
    *,
    id_dataset: str,
    model: str,
    protocol: str,
    preprocessing: str = "see the profile config",
    refs: Sequence[Mapping[str, Any]] | None = None,
    cuts: Sequence[str] = (),
) -> str:
    """reference.md: the cuts of this run (``ood_core.evaluation.cuts``), the comparison table, the AUROC gaps
    above the threshold, the set mapping."""
    comp = reference_comparison(rows, id_dataset, refs)
    lines = [
        f"# Our numbers beside published ones (ID: {id_dataset}, model: {model}, protocol: {protocol})",
        "",
        "Source tags: " + "; ".join(f"**{k}** {v}" for k, v in ref.TAG_MEANING.items()) + ".",
        "Every published value was read in the source it names; none is quoted from memory.",
        "",
        "Values in %. gap = ours − theirs. FPR95 rows use the convention named in the metric column.",
        "",
    ]
    if not comp:
        lines += [f"No published number maps to our OOD sets for ID dataset '{id_dataset}'.", ""]
    else:
        body = []
        for c in comp:
            ours = fmt_number(c["ours"]) if c["ours"] is not None else "not run"
            gap = f"{c['gap']:+.2f}" if c["gap"] is not None else DASH
            body.append(
                [
                    c["source"],
                    c["tag"],
                    display_name(c["method"]),
                    c["ood_set"],
                    ", ".join(c["our_sets"]),
                    c["metric"],
                    fmt_number(c["value"]),
                    ours,
                    gap,
                    c["comparability"],
                ]
            )
        lines += [
            markdown_grid(
                [
                    "source",
                    "tag",
                    "method",
                    "their set",
                    "our set(s)",
                    "metric",
                    "theirs",
                    "ours",
                    "gap",
                    "comparability",
                ],
                body,
            ),
            "",
        ]
        gaps = [c for c in comp if c["metric"] == "auroc" and c["gap"] is not None and abs(c["gap"]) > GAP_THRESHOLD]
        lines += [f"## AUROC gaps larger than {GAP_THRESHOLD:g} points", ""]
        if not gaps:
            lines.append("None.")
        for c in gaps:
            lines.append(
                f"- Gap {c['gap']:+.2f} pts, {display_name(c['method'])} on {c['ood_set']} vs {c['source']} "
                f"{c['tag']}: differs in {_differs_line(c, model, protocol, preprocessing)}."
            )
        lines.append("")
    lines += rank_correlation_lines(rows, id_dataset)
    if cuts:
        lines += ["## Cuts of this run (what the full study does differently)", ""]
        lines += [f"- {c}" for c in cuts] + [""]
    lines += ["## Set mapping", ""]
    for ours, maps in ref.SET_MAP.items():
        for theirs, compb, note in maps:
            lines.append(f"- `{ours}` ~ {theirs}: {compb} — {note}")
    lines += ["- " + ref.ABSENT_NOTE, ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho between our AUROC and a published one over the methods both have: rho = the
    Pearson correlation of the two rankings (average ranks for ties); None below 3 methods or when
    one side is constant. ``ours`` / ``theirs``: method -> value (percent) in the compared order."""

    group: str
    rho: float | None
    ours: dict[str, float]
    theirs: dict[str, float]

    @property
    def n(self) -> int:
        return len(self.ours)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the average ranks of ``x`` and ``y``."""
    from scipy.stats import rankdata

    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def openood_rank_correlation(
    rows: Sequence[Mapping[str, Any]], group: str, id_dataset: str = "cifar10"
) -> RankCorrelation:
    """Spearman's rho of our AUROC ranking vs OpenOOD v1.5's leaderboard (``reference.OPENOOD``) on
    ``group`` ``near`` / ``far`` (ours on the sets ``reference.SET_MAP`` maps there, as reference.md
    compares them) or ``mean`` (each side's (near + far) / 2), over the methods both have."""
    if group not in ("near", "far", "mean"):
        raise ValueError(f"group must be near, far or mean, got {group!r}")
    per: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for g in ("near", "far"):
        refs = ref.entries(source=ref.OPENOOD, id_dataset=id_dataset, metric="auroc", ood_set=g)
        comp = [c for c in reference_comparison(rows, id_dataset, refs) if c["ours"] is not None]
        per[g] = ({c["method"]: c["ours"] for c in comp}, {c["method"]: c["value"] for c in comp})
    if group == "mean":
        both = [m for m in per["near"][0] if m in per["far"][0]]
        ours = {m: (per["near"][0][m] + per["far"][0][m]) / 2 for m in both}
        theirs = {m: (per["near"][1][m] + per["far"][1][m]) / 2 for m in both}
    else:
        ours, theirs = per[group]
    methods = sorted(ours, key=lambda m: -theirs[m])
    ours, theirs = {m: ours[m] for m in methods}, {m: theirs[m] for m in methods}
    return RankCorrelation(group, spearman(list(ours.values()), list(theirs.values())), ours, theirs)


def rank_correlation_lines(rows: Sequence[Mapping[str, Any]], id_dataset: str) -> list[str]:
    """reference.md's section on :func:`openood_rank_correlation` (empty when no method is shared)."""
    out = []
    for g in ("near", "far", "mean"):
        rc = openood_rank_correlation(rows, g, id_dataset)
        if rc.n == 0:
            continue
        rho = "undefined (fewer than 3 methods or a constant side)" if rc.rho is None else f"{rc.rho:+.2f}"
        names = ", ".join(display_name(m) for m in rc.ours)
        out.append(f"- {g}: Spearman ρ = {rho} over {rc.n} methods ({names}; OpenOOD's order)")
    if not out:
        return []
    head = [
        f"## Rank correlation with {ref.OPENOOD}",
        "",
        "Our AUROC ranking vs OpenOOD's on the methods both have; ours on the sets the set mapping below "
        "assigns to near / far (not OpenOOD's full groups), mean = (near + far) / 2 on each side.",
        "",
    ]
    return [*head, *out, ""]


def write_reference_md(rows: Sequence[Mapping[str, Any]], path: Path, **kw: Any) -> Path:
    """Write :func:`reference_markdown` (keyword arguments as there) to ``path``."""
    return write_text(Path(path), reference_markdown(rows, **kw))
