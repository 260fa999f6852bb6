"""paired.csv / paired.md: paired bootstrap differences of the near and far AUROC averages.

For each pair (A, B) and each group g of OOD sets (near, far):
D = mean_{s in g} AUROC_A(s) - mean_{s in g} AUROC_B(s), with its percentile interval and sign-flip
fraction over the same resamples for every method (:mod:`ood_core.evaluation.paired`). Pairs: the profile's
``benchmark.paired`` (method names: every pair among them; [a, b]: that pair, as a - b), else the best
method of each family by the mean of its near and far averages, every pair of those, the better one
first. Values in the CSV are fractions (as metrics.csv), code names; the markdown shows points and
display names.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from ood_core.analysis_cache import SCORES_META_KEYS, AnalysisCache
from ood_core.evaluation import metrics
from ood_core.evaluation.paired import LEVEL, method_scores, resampled_aurocs, summarize
from ood_core.reporting.table_render import markdown_grid
from ood_core.reporting.tables import summary
from ood_core.scores.registry import display_name

log = logging.getLogger("ood_core.reporting.paired_table")

GROUPS = ("near", "far")
COLUMNS = [
    "method_a",
    "method_b",
    "group",
    "sets",
    "auroc_a",
    "auroc_b",
    "diff",
    "boot_mean",
    "ci_low",
    "ci_high",
    "sign_flip",
    "bootstrap_n",
    "level",
    "n_id",
    "protocol",
]


def group_score(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Method -> mean over the near and far groups of its group-mean AUROC (percent), from the metric
    rows (:func:`ood_core.reporting.tables.summary`); methods without a near or far average are left out."""
    _, body = summary(rows, "auroc")
    out = {}
    for e in body:
        got = [e.get(f"{g} avg") for g in GROUPS if f"{g} avg" in e]
        vals = [float(v) for v in got if v is not None]
        if vals and len(vals) == len(got):
            out[e["method"]] = sum(vals) / len(vals)
    return out


def top_per_family(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The best method of each family by :func:`group_score`, best first."""
    score = group_score(rows)
    family = {r["method"]: r["family"] for r in rows}
    best: dict[str, str] = {}
    for m, v in score.items():
        f = family[m]
        if f not in best or v > score[best[f]]:
            best[f] = m
    return sorted(best.values(), key=lambda m: -score[m])


def resolve_pairs(spec: Sequence[Any] | None, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The pairs of ``benchmark.paired`` (None: every pair of :func:`top_per_family`). A name in the
    list joins a pool whose every pair is taken, better first by :func:`group_score`; a two-name
    list [a, b] is the pair a - b as given."""
    score = group_score(rows)
    if spec is None:
        return list(itertools.combinations(top_per_family(rows), 2))
    pool, pairs = [], []
    for item in spec:
        if isinstance(item, str):
            pool.append(item)
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(f"benchmark.paired: each entry is a method name or a pair [a, b], got {item!r}")
    pool = sorted(dict.fromkeys(pool), key=lambda m: -score.get(m, -np.inf))
    return list(dict.fromkeys([*itertools.combinations(pool, 2), *pairs]))


def _size(scores: Mapping[str, Mapping[str, np.ndarray]], name: str) -> int | None:
    """Test rows of set ``name``: the length of any score stored for it (None: none stored)."""
    arr = next((v for k, v in scores.get(name, {}).items() if k not in SCORES_META_KEYS), None)
    return None if arr is None else int(np.size(arr))


def paired_rows(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    id_name: str,
    groups: Mapping[str, str],
    pairs: Sequence[tuple[str, str]],
    *,
    n: int,
    seed: int = 0,
    level: float = LEVEL,
    protocol: str = "",
) -> list[dict[str, Any]]:
    """One row per (pair, group) with sets of that group scored by both methods (columns
    :data:`COLUMNS`). ``scores``: set -> {key: test scores} as the benchmark stores them; ``groups``:
    OOD set -> group. Every method's resampled AUROCs are computed once, on the same draws."""
    n_id = _size(scores, id_name)
    sets = [s for s, g in groups.items() if g in GROUPS and _size(scores, s) is not None]
    if not sets or not pairs or n_id is None:
        return []
    sizes = [n_id, *(int(_size(scores, s) or 0) for s in sets)]
    boot: dict[str, np.ndarray] = {}
    point: dict[str, list[float | None]] = {}
    for m in dict.fromkeys(x for p in pairs for x in p):
        ids, oods = method_scores(scores, id_name, sets, m)
        if all(o is None for o in oods):
            log.warning("paired: no stored test scores of %s; its pairs are left out", m)
            continue
        boot[m] = resampled_aurocs(ids, oods, n, seed, sizes=sizes)
        point[m] = [None if o is None else metrics.auroc(i, o) for i, o in zip(ids, oods)]
    out = []
    for a, b in pairs:
        if a not in boot or b not in boot:
            continue
        for g in GROUPS:
            cols = [
                j for j, s in enumerate(sets) if groups[s] == g and point[a][j] is not None and point[b][j] is not None
            ]
            if not cols:
                continue
            pa = [float(point[a][j]) for j in cols]  # type: ignore[arg-type]
            pb = [float(point[b][j]) for j in cols]  # type: ignore[arg-type]
            d = summarize(pa, pb, boot[a][:, cols], boot[b][:, cols], level)
            out.append(
                {
                    "method_a": a,
                    "method_b": b,
                    "group": g,
                    "sets": ";".join(sets[j] for j in cols),
                    "auroc_a": float(np.mean(pa)),
                    "auroc_b": float(np.mean(pb)),
                    "diff": d.diff,
                    "boot_mean": d.mean,
                    "ci_low": d.ci_low,
                    "ci_high": d.ci_high,
                    "sign_flip": d.sign_flip,
                    "bootstrap_n": d.n,
                    "level": level,
                    "n_id": sizes[0],
                    "protocol": protocol,
                }
            )
    return out


def paired_markdown(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """paired.md: A − B in AUROC points with the percentile interval and the sign-flip fraction; one
    section per protocol when ``rows`` hold several (in row order)."""
    head = [f"# Paired bootstrap of AUROC differences{': ' + title if title else ''}", ""]
    if not rows:
        return "\n".join([*head, "No pair was computed.", ""])
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["protocol"]), []).append(r)
    if len(by) == 1:
        return "\n".join([*head, *_paired_section(rows)])
    return "\n".join(
        [*head, *(line for p, g in by.items() for line in [f"## Protocol `{p}`", "", *_paired_section(g)])]
    )


def _paired_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The caption and table of paired.md for the rows of one protocol."""
    head: list[str] = []
    r0 = rows[0]
    sets = {r["group"]: r["sets"].replace(";", ", ") for r in rows}
    head += [
        f"Protocol: {r0['protocol'] or '?'}; {r0['bootstrap_n']} resamples of the ID test rows "
        f"(n = {r0['n_id']}) and of each OOD set's test rows, the same resamples for both methods; "
        f"{100 * r0['level']:g} % percentile interval; sign flips = share of resamples where A − B has "
        "the other sign. Group value = mean of the per-set AUROCs: "
        + "; ".join(f"{g} = {s}" for g, s in sets.items())
        + ".",
        "",
    ]
    body = []
    for r in rows:
        excl = r["ci_low"] > 0 or r["ci_high"] < 0
        body.append(
            [
                display_name(r["method_a"]),
                display_name(r["method_b"]),
                r["group"],
                f"{100 * r['auroc_a']:.2f}",
                f"{100 * r['auroc_b']:.2f}",
                f"{100 * r['diff']:+.2f}",
                f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]",
                f"{r['sign_flip']:.3f}",
                "yes" if excl else "no",
            ]
        )
    grid = markdown_grid(["A", "B", "group", "AUROC A", "AUROC B", "A − B", "CI", "sign flips", "CI excludes 0"], body)
    return [*head, grid, ""]


def paired_from_cache(
    cache: AnalysisCache, pairs: Sequence[tuple[str, str]], *, n: int, seed: int = 0, level: float = LEVEL
) -> list[dict[str, Any]]:
    """:func:`paired_rows` from the scores an analysis directory stores (``scores/<set>.npz``; another
    protocol's with ``AnalysisCache(..., scores_of=protocol)``), after the fact; the protocol is the
    one recorded there. The draws equal the benchmark's for the same
    ``n`` and ``seed`` (same sets, same sizes), so the rows equal its paired.csv rows."""
    names = [cache.id_name, *cache.ood_names]
    scores = {s: cache.scores(s) for s in names if cache.has_scores(s)}
    protos = {cache.scores_protocol(s) for s in scores}
    if len(protos) > 1:
        raise ValueError(f"{cache.scores_dir}: files written under different protocols {sorted(map(str, protos))}")
    protocol = next(iter(protos), None) or ""
    return paired_rows(scores, cache.id_name, cache.groups, pairs, n=n, seed=seed, level=level, protocol=protocol)
