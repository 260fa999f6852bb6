"""OOD detection metrics over score vectors with **higher = more in-distribution**.

Every function takes ``s_id`` (scores of in-distribution samples) and ``s_ood`` (scores of OOD
samples). AUROC is label-agnostic; the others are not, so the convention is in the name:

* ``auroc``         ID = positive class (label 1), score as is (sklearn ``roc_auc_score``).
* ``aupr_in_ap``    area under the precision-recall curve, ID positive, score as is, by **average
                    precision** (step rule: sum_k (R_k - R_{k-1}) P_k; sklearn ``average_precision_score``).
* ``aupr_out_ap``   the same with OOD positive and the score negated.
* ``aupr_in_trapz`` / ``aupr_out_trapz``  the same curves by the **trapezoid rule** from (R, P) = (0, 1)
                    (sklearn ``auc(recall, precision)`` of ``precision_recall_curve``: OpenOOD v1.5's and
                    pytorch-ood's AUPR-In / AUPR-Out). The two rules differ most on tied scores (e.g.
                    all scores equal: AP = n_pos / n, trapezoid = (1 + n_pos / n) / 2).
* ``fpr95_id_pos``  seed papers (GradNorm / ReAct / KNN / GRODIN / Wu et al.): fraction of **OOD**
                    accepted as ID at the threshold that keeps ~95 % of **ID** (see the function).
* ``fpr95_ood_pos`` OpenOOD v1.5 / pytorch-ood: fraction of **ID** flagged OOD at the first threshold
                    that catches >= 95 % of **OOD**.

Values are fractions in [0, 1]; tables multiply by 100.

Invalid input (empty, non-1-D, NaN or inf) raises ``ValueError`` naming the side (ID / OOD) and the
number of bad values -- never a silent 0.5.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

Metric = Callable[[np.ndarray, np.ndarray], float]

RECALL_LEVEL = 0.95


# ------------------------------------------------------------------------------------ validation
def _check(s: np.ndarray, side: str) -> np.ndarray:
    """Return ``s`` as a 1-D float64 array or raise ``ValueError`` naming ``side``."""
    a = np.asarray(s)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{side} scores must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"{side} scores must be a 1-D vector, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{side} scores are empty (0 samples); cannot compute an OOD metric")
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise ValueError(
            f"{side} scores contain {int(bad.sum())} non-finite value(s) of {a.size} "
            f"({n_nan} NaN, {n_inf} inf); fix the score instead of evaluating it"
        )
    return a


def _pair(s_id, s_ood) -> tuple[np.ndarray, np.ndarray]:
    return _check(s_id, "ID"), _check(s_ood, "OOD")


def _labels_scores(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(s_id.size, dtype=np.int8), np.zeros(s_ood.size, dtype=np.int8)]
    return y, np.r_[s_id, s_ood]


# ---------------------------------------------------------------------------------- the metrics
def auroc(s_id, s_ood) -> float:
    """Area under the ROC curve, ID = positive (ties count 1/2)."""
    a, b = _pair(s_id, s_ood)
    y, s = _labels_scores(a, b)
    return float(roc_auc_score(y, s))


def _precision_recall(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall R_k = tp_k / n_pos and precision P_k = tp_k / (tp_k + fp_k) at every distinct score,
    descending (see :func:`_operating_points`; tp_k + fp_k >= 1 since the threshold is a score)."""
    _, tp, fp = _operating_points(pos, neg)
    return tp / pos.size, tp / (tp + fp)


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step rule: AP = sum_k (R_k - R_{k-1}) P_k, R_0 = 0 (= sklearn ``average_precision_score``)."""
    r, p = _precision_recall(pos, neg)
    return float(np.sum(np.diff(r, prepend=0.0) * p))


def pr_auc_trapz(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoid rule: sum_k (R_k - R_{k-1}) (P_k + P_{k-1}) / 2 from (R_0, P_0) = (0, 1)
    (= sklearn ``auc(recall, precision)`` of ``precision_recall_curve``, as OpenOOD / pytorch-ood)."""
    r, p = _precision_recall(pos, neg)
    r, p = np.r_[0.0, r], np.r_[1.0, p]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2))


def aupr_in_ap(s_id, s_ood) -> float:
    """AUPR-In by average precision: ID positive, score as is."""
    a, b = _pair(s_id, s_ood)
    return average_precision(a, b)


def aupr_out_ap(s_id, s_ood) -> float:
    """AUPR-Out by average precision: OOD positive, score negated."""
    a, b = _pair(s_id, s_ood)
    return average_precision(-b, -a)


def aupr_in_trapz(s_id, s_ood) -> float:
    """AUPR-In by the trapezoid rule (OpenOOD / pytorch-ood): ID positive, score as is."""
    a, b = _pair(s_id, s_ood)
    return pr_auc_trapz(a, b)


def aupr_out_trapz(s_id, s_ood) -> float:
    """AUPR-Out by the trapezoid rule (OpenOOD / pytorch-ood): OOD positive, score negated."""
    a, b = _pair(s_id, s_ood)
    return pr_auc_trapz(-b, -a)


def _operating_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds t = every distinct score value, descending, with
    tp(t) = #{pos >= t} and fp(t) = #{neg >= t} (a sample tied with t counts as accepted)."""
    t = np.unique(np.r_[pos, neg])[::-1]
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    tp = pos.size - np.searchsorted(pos_sorted, t, side="left")
    fp = neg.size - np.searchsorted(neg_sorted, t, side="left")
    return t, tp, fp


def fpr_at_recall(pos, neg, recall_level: float = RECALL_LEVEL, rule: str = "nearest") -> float:
    """FPR of the negatives at the operating point where the positives' recall is ``recall_level``.

    Scores: higher = more positive. Operating points are the distinct score values t, from the highest
    down to the lowest positive score (the first point of full recall); at t a sample with score >= t
    is accepted, so a negative tied with t counts as a false positive.

    Several thresholds can give the same recall (those between two consecutive positive scores); the
    rules differ in which one they take:

    rule="nearest" (default; identical to ``fpr_and_fdr_at_recall`` of gradnorm_ood / Hendrycks et al.,
        used by GradNorm, ReAct, KNN): the point whose recall tp/n_pos is *closest* to the level
        (|recall - level| in float64, as the reference); among equal distances the LOWEST threshold
        (conservative: the largest FPR). So FPR = fraction of negatives scoring above the highest
        rejected positive. The recall may sit slightly *below* the level when no point hits it, e.g.
        n_pos = 10 picks recall 0.9 over 1.0 because float64 |0.9 - 0.95| < |1.0 - 0.95|.
    rule="at_least": the smallest achievable recall >= level, and among its thresholds the lowest
        (conservative, never below the level).
    rule="roc_first": the first point of ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``
        with tpr >= level, i.e. the HIGHEST threshold reaching the level (OpenOOD / pytorch-ood).
    """
    p = np.asarray(pos, dtype=np.float64)
    n = np.asarray(neg, dtype=np.float64)
    t, tp, fp = _operating_points(p, n)
    recall = tp / tp[-1]
    last = int(np.searchsorted(tp, tp[-1]))  # first point with full recall (tp is non-decreasing)
    if rule == "nearest":
        dist = np.abs(recall[: last + 1] - recall_level)
        cut = last - int(np.argmin(dist[::-1]))  # scan from the low-threshold end, first minimum
    elif rule == "at_least":
        r = recall[: last + 1]
        target = r[r >= recall_level].min()
        cut = int(np.flatnonzero(r == target)[-1])
    elif rule == "roc_first":
        cut = int(np.argmax(recall >= recall_level))
    else:
        raise ValueError(f"rule must be 'nearest', 'at_least' or 'roc_first', got {rule!r}")
    return float(fp[cut] / n.size)


def fpr95_id_pos(s_id, s_ood, recall_level: float = RECALL_LEVEL, rule: str = "nearest") -> float:
    """Seed-paper FPR95: fraction of OOD samples accepted (score >= t) at the operating point t that
    keeps ~95 % of ID samples (ID recall). Default rule = gradnorm_ood ``fpr_and_fdr_at_recall``:
    with no ID/OOD ties this is the fraction of OOD scoring above the highest rejected ID score.
    See :func:`fpr_at_recall` for the exact threshold and tie handling."""
    a, b = _pair(s_id, s_ood)
    return fpr_at_recall(a, b, recall_level, rule)


def fpr95_ood_pos(s_id, s_ood, recall_level: float = RECALL_LEVEL) -> float:
    """OpenOOD v1.5 / pytorch-ood FPR95: OOD is the positive class scored by -s; the threshold is the
    first operating point (from the most OOD-looking end) whose OOD recall is >= 95 %, and the value
    is the fraction of ID samples with -s >= that threshold (ID tied with it count as flagged).

    Equals ``fpr[argmax(tpr >= 0.95)]`` of ``sklearn.metrics.roc_curve(ood_label, -s,
    drop_intermediate=False)``; OpenOOD calls roc_curve with drop_intermediate=True, which can only
    differ when the crossing point lies on a dropped collinear diagonal run (rare, measure-zero for
    continuous scores)."""
    a, b = _pair(s_id, s_ood)
    return fpr_at_recall(-b, -a, recall_level, rule="roc_first")


METRICS: dict[str, Metric] = {
    "auroc": auroc,
    "aupr_in_ap": aupr_in_ap,
    "aupr_out_ap": aupr_out_ap,
    "aupr_in_trapz": aupr_in_trapz,
    "aupr_out_trapz": aupr_out_trapz,
    "fpr95_id_pos": fpr95_id_pos,
    "fpr95_ood_pos": fpr95_ood_pos,
}


def evaluate(s_id, s_ood) -> dict[str, float]:
    """All metrics of one (ID, OOD) pair plus the sample counts."""
    a, b = _pair(s_id, s_ood)
    out: dict[str, float] = {k: f(a, b) for k, f in METRICS.items()}
    out["n_id"] = int(a.size)
    out["n_ood"] = int(b.size)
    return out


# ----------------------------------------------------------------------------------- bootstrap
def _resample_indices(n_id: int, n_ood: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_id, size=(n, n_id)), rng.integers(0, n_ood, size=(n, n_ood))


# index entries (resamples x rows) one pass of the vectorised AUROC works on: ~32 MB per int64 array
CHUNK_ELEMENTS = 1 << 22


def _resampled_auroc_block(a: np.ndarray, b: np.ndarray, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
    n, n1 = ii.shape
    n0 = b.size
    order = np.argsort(b, kind="stable")
    rank_of = np.empty(n0, dtype=np.int64)
    rank_of[order] = np.arange(n0)
    b_sorted = b[order]
    lo = np.searchsorted(b_sorted, a, side="left")  # OOD strictly below s_i: sorted positions < lo
    hi = np.searchsorted(b_sorted, a, side="right")
    # multiplicity of each OOD sample (in sorted order) in each resample, then cumulative counts
    flat = (rank_of[jj] + (np.arange(n) * n0)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n * n0).reshape(n, n0)
    cum = np.zeros((n, n0 + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    rows = np.arange(n)[:, None]
    less = cum[rows, lo[ii]]
    eq = cum[rows, hi[ii]] - less
    return (less + 0.5 * eq).sum(axis=1) / (n1 * jj.shape[1])


def resampled_auroc(a: np.ndarray, b: np.ndarray, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
    """Exact AUROC of every resample k (ID rows ``a[ii[k]]`` vs OOD rows ``b[jj[k]]``) without re-sorting:
    with c_j the multiplicity of OOD sample j in resample k,
    AUROC_k = sum over drawn ID i of (#drawn OOD < s_i + 1/2 #drawn OOD == s_i) / (n1 n0).
    ``a``, ``b``: checked 1-D float64 scores; ``ii`` (n, n1), ``jj`` (n, n0): row indices. Works on
    blocks of resamples (:data:`CHUNK_ELEMENTS`), so memory stays bounded for any n."""
    n = ii.shape[0]
    width = max(1, CHUNK_ELEMENTS // max(ii.shape[1], jj.shape[1], b.size, 1))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, width):
        stop = min(n, start + width)
        out[start:stop] = _resampled_auroc_block(a, b, ii[start:stop], jj[start:stop])
    return out


def bootstrap(metric: Metric | str, s_id, s_ood, n: int = 100, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1) of ``metric`` over ``n`` bootstrap resamples, ID and OOD
    resampled independently with replacement (sizes kept). Deterministic given ``seed``.
    AUROC uses an exact vectorised path; other metrics loop over the same resamples."""
    a, b = _pair(s_id, s_ood)
    if n < 2:
        raise ValueError(f"bootstrap needs n >= 2 resamples, got {n}")
    fn = METRICS[metric] if isinstance(metric, str) else metric
    ii, jj = _resample_indices(a.size, b.size, n, seed)
    if fn is auroc:
        vals = resampled_auroc(a, b, ii, jj)
    else:
        vals = np.array([fn(a[ii[k]], b[jj[k]]) for k in range(n)], dtype=np.float64)
    return float(vals.mean()), float(vals.std(ddof=1))
