"""All-weights gradient scores vs their last-layer closed forms (Igoe et al.; notebook 04, part 3).

Two comparisons on the test parts, each between two registered scores (higher = more ID for both):

* GradNorm: ``gradnorm_allweights`` (sqrt of the cached all-weights ||grad KL(u || p)||^2) vs the
  last-layer ``gradnorm`` at T = 1 (||h||_1 ||p - u||_1).
* GRODIN SG: ``grodin_sg`` at (eps, T) = (0, 1) (cached all-weights ||grad CE(f, yhat)||^2, negated) vs
  ``grodin_sg_lastlayer`` at T = 1 (-||p - e_yhat||^2 (||h||^2 + 1)).

Agreement is the Spearman rank correlation over all test samples pooled, and the AUROC of each score
per OOD set (:func:`ood_core.evaluation.metrics.auroc`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ood_core.analysis_cache import AnalysisCache
from ood_core.evaluation import metrics
from ood_core.explore.factorisation import subsample
from ood_core.explore.session import note, set_label
from ood_core.extraction.grid import GridPointUnavailable
from ood_core.reporting import style
from ood_core.scores import registry


@dataclass
class Comparison:
    """One all-weights score and its last-layer closed form, per set (test parts)."""

    title: str
    deep: dict[str, np.ndarray]
    last: dict[str, np.ndarray]
    deep_label: str
    last_label: str

    def pooled(self, sets: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(last, deep) over ``sets`` concatenated."""
        return np.concatenate([self.last[n] for n in sets]), np.concatenate([self.deep[n] for n in sets])

    def spearman(self, sets: list[str]) -> float:
        from scipy.stats import spearmanr

        return float(spearmanr(*self.pooled(sets))[0])


def _scores(cache: AnalysisCache, method: str, **params: float) -> dict[str, np.ndarray]:
    arrays = {n: cache.test_arrays(n) for n in [cache.id_name, *cache.ood_names]}
    return {n: registry.compute(method, a, **params) for n, a in arrays.items()}


def comparisons(cache: AnalysisCache) -> list[Comparison]:
    """The GradNorm and GRODIN comparisons whose cached arrays exist (a skip note for the others)."""
    sets = [cache.id_name, *cache.ood_names]
    out = []
    if all(cache.has(n, "kl_allw_sqnorm") for n in sets):
        out.append(
            Comparison(
                "GradNorm: all-weights √‖∇KL(u‖p)‖² vs last-layer ‖h‖₁‖p−u‖₁",
                _scores(cache, "gradnorm_allweights"),
                _scores(cache, "gradnorm", T=1.0),
                "all-weights √‖∇KL‖²",
                "last-layer GradNorm",
            )
        )
    else:
        note("kl_allw_sqnorm missing; skipping the GradNorm all-weights panel")
    if not all(cache.has(n, "grodin_sqnorm") for n in sets):
        note("grodin_sqnorm missing; skipping the GRODIN all-weights panel")
        return out
    a0 = cache.arrays(cache.id_name)
    if not (np.isclose(a0["odin_eps"], 0.0).any() and np.isclose(a0["odin_T"], 1.0).any()):
        note("grid has no (eps=0, T=1) point; skipping the GRODIN all-weights panel")
        return out
    try:
        deep = _scores(cache, "grodin_sg", eps=0.0, T=1.0)
    except GridPointUnavailable as exc:
        note(f"(eps=0, T=1) not computed on the test rows ({exc}); skipping the GRODIN all-weights panel")
        return out
    last = _scores(cache, "grodin_sg_lastlayer", T=1.0)
    out.append(
        Comparison(
            "GRODIN SG (ε = 0, T = 1): all weights vs last-layer ‖p−e(ŷ)‖²(‖h‖²+1)",
            deep,
            last,
            "−all-weights SG",
            "−last-layer SG",
        )
    )
    return out


def table(comps: list[Comparison], cache: AnalysisCache) -> pd.DataFrame:
    """Per comparison and OOD set: the pooled Spearman rho and both AUROCs."""
    sets, ID = [cache.id_name, *cache.ood_names], cache.id_name
    rows = []
    for c in comps:
        rho = c.spearman(sets)
        for o in cache.ood_names:
            rows.append(
                {
                    "comparison": c.title,
                    "ood_set": o,
                    "spearman": rho,
                    "auroc_all_weights": metrics.auroc(c.deep[ID], c.deep[o]),
                    "auroc_last_layer": metrics.auroc(c.last[ID], c.last[o]),
                }
            )
    return pd.DataFrame(rows)


def plot(comps: list[Comparison], cache: AnalysisCache, rng: np.random.Generator, max_scatter: int = 3000):
    """One row per comparison: ranks of the two scores (left; ID as open rings over the OOD points),
    AUROC per OOD set as horizontal bars with their values (right); one legend above the panels."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sets, ID, OOD = [cache.id_name, *cache.ood_names], cache.id_name, cache.ood_names
    fig, axes = plt.subplots(
        len(comps),
        2,
        figsize=(style.TEXT_WIDTH, 0.4 + (1.4 + 0.22 * len(OOD)) * len(comps)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1.25]},
    )
    handles: list = []
    colors = {"all weights": style.PALETTE[1], "last layer (closed form)": style.PALETTE[2]}
    for row, c in zip(axes, comps):
        ax = row[0]
        xs, ys = c.pooled(sets)
        rx, ry = pd.Series(xs).rank(pct=True).to_numpy(), pd.Series(ys).rank(pct=True).to_numpy()
        io = np.concatenate([np.full(len(c.last[n]), n != ID) for n in sets])
        idx = subsample(rng, len(xs), max_scatter)
        handles = style.scatter_groups(
            ax,
            rx[idx],
            ry[idx],
            {"ID test": (~io[idx], style.ID_COLOR), "OOD test": (io[idx], style.OOD_COLOR)},
            hollow=("ID test",),
            s=4,
            rasterized=True,
        )
        ax.set_xlabel(f"rank of {c.last_label}")
        ax.set_ylabel(f"rank of {c.deep_label}")
        ax.set_title(f"Spearman ρ = {c.spearman(sets):.3f}")
        ax = row[1]
        ypos, h = np.arange(len(OOD))[::-1], 0.4  # the first OOD set on top
        a_deep = [metrics.auroc(c.deep[ID], c.deep[o]) for o in OOD]
        a_last = [metrics.auroc(c.last[ID], c.last[o]) for o in OOD]
        for vals, off, col in (
            (a_deep, h / 2, colors["all weights"]),
            (a_last, -h / 2, colors["last layer (closed form)"]),
        ):
            bars = ax.barh(ypos + off, vals, h, color=col)
            ax.bar_label(bars, fmt="%.2f", padding=1.5, fontsize=5.5)
        ax.axvline(0.5, color="0.4", linewidth=0.6, linestyle=":")
        ax.set_yticks(ypos, [f"{set_label(cache, o)} ({cache.group(o)})" for o in OOD], fontsize=6)
        ax.set_xlim(0, 1.12)
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_xlabel("AUROC (0.5 = chance)")
        ax.set_title(c.title.replace(": ", ":\n", 1))
    handles += [Patch(color=col, label=lab) for lab, col in colors.items()]
    style.legend_outside(fig, handles, [h.get_label() for h in handles], where="top", ncol=4)
    return fig
