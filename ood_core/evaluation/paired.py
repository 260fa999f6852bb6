"""Paired bootstrap of AUROC differences between methods scored on the same test rows.

Methods A and B scored on the same ID test rows and the same rows of each OOD set are compared on the
same resamples. Resample k draws, with replacement and sizes kept, n_id ID rows and n_s rows of
every OOD set s (stratified: ID apart, each set apart; one ID draw shared by all sets, since they
share the ID test rows), from a generator seeded by (seed, k): every method sees the same rows in
resample k, whatever else is computed. On a group of sets G (one set, or the near / far sets)

    D = mean_{s in G} AUROC_A(s) - mean_{s in G} AUROC_B(s)

is computed on all rows (``diff``) and on every resample (D_k); the 95 % interval is the 2.5 and
97.5 percentiles of D_k, and ``sign_flip`` = #{k: sign(D_k) != sign(D)} / n (a D_k of 0 counts).
AUROC per resample: :func:`ood_core.evaluation.metrics.resampled_auroc` (exact, vectorised over rows).

:func:`resampled_aurocs` gives one method's (resample x set) AUROC matrix; methods computed with the
same seed, n and set sizes are paired, so a table of many pairs computes each method once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ood_core.evaluation import metrics

LEVEL = 0.95


def resample_rows(sizes: Sequence[int], k: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of resample ``k``: for each size n, n draws from range(n) with replacement
    (generator ``default_rng([seed, k])``, drawn in the order of ``sizes``)."""
    rng = np.random.default_rng([seed, k])
    return [rng.integers(0, n, size=n) for n in sizes]


def _check_sizes(id_scores: Sequence[np.ndarray | None], ood_scores: Sequence[np.ndarray | None]) -> int:
    if len(id_scores) != len(ood_scores) or not id_scores:
        raise ValueError(f"need one ID and one OOD score vector per set, got {len(id_scores)} and {len(ood_scores)}")
    n_id = {a.size for a in id_scores if a is not None}
    if len(n_id) > 1:
        raise ValueError(f"the ID scores of all sets must score the same rows, got lengths {sorted(n_id)}")
    return n_id.pop() if n_id else 0


def resampled_aurocs(
    id_scores: Sequence[Any], ood_scores: Sequence[Any], n: int, seed: int = 0, sizes: Sequence[int] | None = None
) -> np.ndarray:
    """AUROC of every (resample k, set s): shape (n, S). Set s compares ``id_scores[s]`` (the ID test
    rows scored at that set's parameters; the same rows for every s) with ``ood_scores[s]``; a pair
    given as None is not computed (NaN column) but keeps its place in the draws. ``sizes`` = [n_id,
    n_1, ..., n_S] fixes the draws when every set of a method is None (default: from the scores)."""
    if n < 2:
        raise ValueError(f"bootstrap needs n >= 2 resamples, got {n}")
    ids = [None if a is None else metrics._check(a, "ID") for a in id_scores]
    oods = [None if b is None else metrics._check(b, "OOD") for b in ood_scores]
    n_id = _check_sizes(ids, oods)
    if sizes is None:
        if any(b is None for b in oods):
            raise ValueError("give sizes when a set's scores are None (the draws depend on every set's size)")
        sizes = [n_id, *(b.size for b in oods if b is not None)]
    sizes = [int(x) for x in sizes]
    if len(sizes) != len(oods) + 1 or (n_id and sizes[0] != n_id):
        raise ValueError(f"sizes {sizes} do not match {n_id} ID rows and {len(oods)} sets")
    for s, b in enumerate(oods):
        if b is not None and b.size != sizes[s + 1]:
            raise ValueError(f"set {s}: {b.size} OOD scores, sizes says {sizes[s + 1]}")
    out = np.full((n, len(oods)), np.nan)
    width = max(1, metrics.CHUNK_ELEMENTS // max(sizes))
    for start in range(0, n, width):
        ks = range(start, min(n, start + width))
        draws = [resample_rows(sizes, k, seed) for k in ks]
        ii = np.stack([d[0] for d in draws])
        for s, (a, b) in enumerate(zip(ids, oods)):
            if a is not None and b is not None:
                jj = np.stack([d[s + 1] for d in draws])
                out[start : ks.stop, s] = metrics.resampled_auroc(a, b, ii, jj)
    return out


@dataclass(frozen=True)
class PairedDiff:
    """A - B on a group of sets: ``diff`` on all rows, ``mean`` over resamples, the percentile
    interval [ci_low, ci_high] at ``level``, ``sign_flip`` (see the module docstring), ``n`` resamples."""

    diff: float
    mean: float
    ci_low: float
    ci_high: float
    sign_flip: float
    n: int
    level: float = LEVEL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    point_a: Sequence[float], point_b: Sequence[float], boot_a: np.ndarray, boot_b: np.ndarray, level: float = LEVEL
) -> PairedDiff:
    """:class:`PairedDiff` of the group means: ``point_*`` the per-set AUROCs on all rows, ``boot_*``
    the (n, S) resampled AUROCs of the same sets on the same resamples."""
    ba, bb = np.atleast_2d(np.asarray(boot_a, float)), np.atleast_2d(np.asarray(boot_b, float))
    if ba.shape != bb.shape or ba.shape[1] != len(point_a) or len(point_a) != len(point_b):
        raise ValueError(f"shapes differ: boot {ba.shape} vs {bb.shape}, points {len(point_a)} vs {len(point_b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = ba.mean(axis=1) - bb.mean(axis=1)
    diff = float(np.mean(point_a) - np.mean(point_b))
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    flip = float(np.mean(np.sign(d) != np.sign(diff)))
    return PairedDiff(diff, float(d.mean()), float(lo), float(hi), flip, int(d.size), level)


def paired_mean_auroc_diff(
    id_a: Sequence[Any],
    ood_a: Sequence[Any],
    id_b: Sequence[Any],
    ood_b: Sequence[Any],
    n: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDiff:
    """A - B on the mean AUROC over sets: ``id_a[s]`` / ``ood_a[s]`` are A's ID and OOD test scores for
    set s (ID rows identical across sets and methods; set s's rows identical for A and B)."""
    for s, (x, y) in enumerate(zip(ood_a, ood_b)):
        if np.size(x) != np.size(y):
            raise ValueError(f"set {s}: A scores {np.size(x)} OOD rows, B {np.size(y)}; pair them on the same rows")
    boot_a = resampled_aurocs(id_a, ood_a, n, seed)
    boot_b = resampled_aurocs(id_b, ood_b, n, seed)
    point_a = [metrics.auroc(x, y) for x, y in zip(id_a, ood_a)]
    point_b = [metrics.auroc(x, y) for x, y in zip(id_b, ood_b)]
    return summarize(point_a, point_b, boot_a, boot_b, level)


def paired_auroc_diff(
    id_a: Any, ood_a: Any, id_b: Any, ood_b: Any, n: int = 1000, seed: int = 0, level: float = LEVEL
) -> PairedDiff:
    """AUROC(A) - AUROC(B) on one OOD set (see :func:`paired_mean_auroc_diff`)."""
    return paired_mean_auroc_diff([id_a], [ood_a], [id_b], [ood_b], n, seed, level)


# ------------------------------------------------------------------- the benchmark's stored scores
def method_scores(
    scores: Mapping[str, Mapping[str, np.ndarray]], id_name: str, sets: Sequence[str], method: str
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """(ID, OOD) test scores of ``method`` per set from the benchmark's score dicts (``scores/<set>.npz``:
    the OOD file's ``<method>``, the ID file's ``<method>__vs__<set>``, else ``<method>``); None where
    absent."""
    id_sc = scores.get(id_name, {})
    ids, oods = [], []
    for s in sets:
        o = scores.get(s, {}).get(method)
        i = id_sc.get(f"{method}__vs__{s}", id_sc.get(method))
        ids.append(None if o is None or i is None else i)
        oods.append(None if o is None or i is None else o)
    return ids, oods
