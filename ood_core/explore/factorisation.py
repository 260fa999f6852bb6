"""Igoe et al.: last-layer gradient scores = feature term x output term (notebook 04, parts 1-2).

Igoe, Chung, Char, Schneider 2022, "How useful are gradients for OOD detection really?":
GradNorm = ||h||_1 * ||p_T - u||_1 / T and ExGrad = (||h||^2 + 1)(1 - ||p||^2)
(:func:`ood_core.scores.decomposition.gradnorm_factors` / ``exgrad_factors``). The factor products,
recomputed from the cached (h, logits), are compared with the scores the pipeline stored; a stored
score may differ by a constant convention factor (sign, C, 1/T), estimated as the median ratio.

The output terms on the 3-class probability simplex (their Fig. 1) use the registered output terms
``V_*`` of the same module, evaluated at logits log p.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ood_core.analysis_cache import AnalysisCache
from ood_core.explore.session import note, set_label
from ood_core.reporting import style
from ood_core.scores import registry
from ood_core.scores._common import softmax
from ood_core.scores.decomposition import V_l1u, V_msp, V_sqnorm, exgrad_factors, gradnorm_factors

SCORES = ("GradNorm", "ExGrad")
TERMS = {"GradNorm": "‖h‖₁·‖p−u‖₁", "ExGrad": "(‖h‖²+1)(1−‖p‖²)"}
TINY = 1e-12


def recomputed(arrays: dict[str, np.ndarray], T: float = 1.0) -> dict[str, np.ndarray]:
    """{'GradNorm': N * V at temperature T, 'ExGrad': N * V} from the cached h and logits."""
    h, f = arrays["h"], arrays["logits"]
    return {"GradNorm": np.prod(gradnorm_factors(h, f, T), axis=0), "ExGrad": np.prod(exgrad_factors(h, f), axis=0)}


def stored_score(cache: AnalysisCache, name: str, key: str, arrays: dict[str, np.ndarray]):
    """(scores, source): the pipeline's ``scores/<name>.npz``, else computed by the registry, else
    (None, None) with a skip note."""
    s = cache.score(name, key)
    if s is not None:
        return np.asarray(s, np.float64), f"scores/{name}.npz"
    try:
        return registry.compute(key, {**arrays, **cache.head()}), "registry"
    except Exception as exc:  # score not registered / arrays missing
        note(f"no stored '{key}' for {name} and the registry could not compute it ({exc!r})")
        return None, None


def convention_fit(r: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """stored ~ c * recomputed: c = median of s / r over |r| > 1e-12, and the relative errors
    |s - c r| / max(|s|, 1e-12) (max and median)."""
    ok = np.abs(r) > TINY
    c = float(np.median(s[ok] / r[ok]))
    rel = np.abs(s - c * r) / np.maximum(np.abs(s), TINY)
    return {"c": c, "max_rel": float(rel.max()), "median_rel": float(np.median(rel))}


def check(cache: AnalysisCache, *, T: float = 1.0, keys: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """{score: {r, s, is_ood, c, max_rel, median_rel}} over the test parts of every set, for each of
    GradNorm / ExGrad that is stored (``keys``: score -> method name, default gradnorm / exgrad)."""
    keys = keys or {"GradNorm": "gradnorm", "ExGrad": "exgrad"}
    pairs: dict[str, list[tuple]] = {k: [] for k in keys}
    for n in [cache.id_name, *cache.ood_names]:
        a = cache.test_arrays(n)
        rec = recomputed(a, T)
        for label, key in keys.items():
            s, _ = stored_score(cache, n, key, a)
            if s is None:
                continue
            if len(s) != len(rec[label]):
                note(f"{label} of {n}: stored length {len(s)} != test part {len(rec[label])}")
                continue
            pairs[label].append((rec[label], s, np.full(len(s), n != cache.id_name)))
    out = {}
    for label, got in pairs.items():
        if got:
            r, s, is_ood = (np.concatenate(x) for x in zip(*got))
            out[label] = {"r": r, "s": s, "is_ood": is_ood, **convention_fit(r, s)}
    return out


def summary(fact: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per score: the constant c, max / median relative error, number of samples."""
    return pd.DataFrame(
        [
            {"score": k, "c": v["c"], "max_rel": v["max_rel"], "median_rel": v["median_rel"], "n": len(v["r"])}
            for k, v in fact.items()
        ]
    )


def subsample(rng: np.random.Generator, n: int, max_n: int) -> np.ndarray:
    """All of range(n), or ``max_n`` of them drawn without replacement (sorted)."""
    return np.arange(n) if n <= max_n else np.sort(rng.choice(n, max_n, replace=False))


def plot_check(fact: dict[str, dict[str, Any]], rng: np.random.Generator, max_scatter: int = 3000):
    """|stored| vs |c * recomputed| on log axes, one panel per score, with y = x."""
    import matplotlib.pyplot as plt

    width = style.TEXT_WIDTH if len(fact) > 1 else style.COLUMN_WIDTH
    fig, axes = plt.subplots(1, len(fact), figsize=(width, 2.5), squeeze=False)
    for ax, (label, v) in zip(axes[0], fact.items()):
        x, y = np.abs(v["c"] * v["r"]), np.abs(v["s"])
        idx = subsample(rng, len(x), max_scatter)
        io = v["is_ood"][idx]
        handles = style.scatter_groups(
            ax,
            x[idx],
            y[idx],
            {"ID test": (~io, style.ID_COLOR), "OOD test": (io, style.OOD_COLOR)},
            hollow=("ID test",),  # ID as open rings, OOD as small dots on top: on the shared diagonal
            last="OOD test",  # a dot inside a ring stays visible, and a ring around a dot too
            s=4,
            rasterized=True,
            zorder=2,
        )
        lo, hi = max(min(x.min(), y.min()), TINY), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.5, linestyle="--", zorder=1)  # y = x, under the points
        ax.set_xscale("log")
        ax.set_yscale("log")
        style.label_log_axis(ax.xaxis, lo, hi)
        style.label_log_axis(ax.yaxis, lo, hi)
        ax.set_xlabel(f"|c · {TERMS.get(label, label)}|  (recomputed)")
        ax.set_ylabel(f"|stored {label}|")
        ax.set_title(label)
        ax.text(
            0.03,
            0.97,
            f"c = {v['c']:.4g}\nmax rel. err = {v['max_rel']:.1e}",
            transform=ax.transAxes,
            va="top",
            ha="left",
            bbox=dict(boxstyle="round", fc="white", ec="0.8", lw=0.5),
        )
        ax.legend(handles=handles, loc="lower right")
    return fig


# ------------------------------------------------------------------------------ the 3-class simplex
CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # e_1, e_2, e_3 in the plane
CORNER_LABEL_OFFSETS = [(-0.02, -0.05), (0.02, -0.05), (0.08, -0.03)]


def simplex_grid(resolution: int) -> np.ndarray:
    """(n, 3) barycentric grid p = (i, j, r - i - j) / r over the 3-class simplex, r = ``resolution``."""
    r = int(resolution)
    ii, jj = np.meshgrid(np.arange(r + 1), np.arange(r + 1), indexing="ij")
    m = ii + jj <= r
    return np.stack([ii[m], jj[m], r - ii[m] - jj[m]], 1) / r


def output_terms(P: np.ndarray) -> dict[str, np.ndarray]:
    """{title: value per row of P}: ExGrad's 1 - ||p||^2, MSP's max p, GradNorm's ||p - u||_1 (the
    registered V terms at logits log p; p = 0 gives logit -inf, i.e. probability 0)."""
    with np.errstate(divide="ignore"):
        f = np.log(np.asarray(P, np.float64))
    return {
        "ExGrad output term  $1-\\|p\\|_2^2$": 1 - V_sqnorm(f),
        "MSP  $\\max_k p_k$": V_msp(f),
        "GradNorm output term  $\\|p-u\\|_1$": V_l1u(f),
    }


def plot_simplex(terms: dict[str, np.ndarray], P: np.ndarray, overlay: dict[str, tuple[np.ndarray, str]] | None = None):
    """One simplex per output term (colour + contours); ``overlay``: label -> (probabilities (n, 3), colour)."""
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri

    XY = P @ CORNERS
    tri = mtri.Triangulation(XY[:, 0], XY[:, 1])
    fig, axes = plt.subplots(1, len(terms), figsize=(style.TEXT_WIDTH, 2.25))
    for ax, (title, val) in zip(np.atleast_1d(axes), terms.items()):
        tpc = ax.tripcolor(tri, val, shading="gouraud", cmap="viridis", rasterized=True)
        ax.tricontour(tri, val, levels=6, colors="w", linewidths=0.4)
        for pp, col in (overlay or {}).values():  # the model's own test points
            q = pp @ CORNERS
            ax.scatter(q[:, 0], q[:, 1], s=1.5, color=col, linewidths=0, alpha=0.8)
        ax.plot(*np.r_[CORNERS, CORNERS[:1]].T, color="k", linewidth=0.6)
        for (cx, cy), lab, (dx, dy) in zip(CORNERS, ["$e_1$", "$e_2$", "$e_3$"], CORNER_LABEL_OFFSETS):
            ax.text(cx + dx, cy + dy, lab, ha="center", va="center")
        ax.set_title(title)
        ax.set_xlim(-0.08, 1.08)
        ax.set_ylim(-0.1, np.sqrt(3) / 2 + 0.03)
        ax.set_aspect("equal")
        ax.axis("off")
        fig.colorbar(tpc, ax=ax, orientation="horizontal", fraction=0.06, pad=0.02, shrink=0.8)
    return fig


SIMPLEX_CSV_RESOLUTION = 30  # grid points per edge in the figure's CSV (the picture uses a finer grid)


def simplex_table(resolution: int = SIMPLEX_CSV_RESOLUTION) -> pd.DataFrame:
    """The plotted output terms on a coarser grid (:func:`simplex_grid` at ``resolution``; the figure's
    finer grid would make a megabyte of CSV): one row per point (p1, p2, p3) with every term."""
    P = simplex_grid(resolution)
    df = pd.DataFrame(P, columns=["p1", "p2", "p3"])
    for title, v in output_terms(P).items():
        df[title] = v
    return df


def simplex_title(cache: AnalysisCache, overlay) -> str:
    """The suptitle of the simplex figure: what the dots are (only when the model's points are drawn)."""
    if not overlay:
        return ""
    return f"dots: {set_label(cache, cache.id_name)} (blue) and OOD test sets (grey), softmax outputs of the model"


def model_points(cache: AnalysisCache) -> dict[str, tuple[np.ndarray, str]] | None:
    """For a 3-class model: {set: (softmax of its test logits, colour)}, ID blue and OOD grey; None for
    other class counts."""
    if int(cache.meta["num_classes"]) != 3:
        return None
    sets = [(cache.id_name, style.ID_COLOR), *[(o, style.OOD_COLOR) for o in cache.ood_names]]
    return {n: (softmax(cache.test_arrays(n)["logits"]), col) for n, col in sets}
