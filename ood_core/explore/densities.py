"""Per-dimension densities of low-dimensional gradients and one ID vs one OOD sample (Wu et al.,
Figs. 3-4; notebook 02).

Top-dimension rule: each dimension of ``lowdim_<subspace>`` is scored by its one-dimensional AUROC
(ID vs all OOD sets pooled, :func:`ood_core.evaluation.metrics.auroc`) on the validation parts; the ``n_top`` with
the largest |AUROC - 0.5| are plotted on the test parts. AUROC < 0.5 means *inverted*: ID values tend
to be lower than OOD ones.

Single-sample rule: the OOD partner of an ID test sample is the OOD test sample whose feature vector
``h`` has the largest cosine similarity to it (unless an index is given).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ood_core.analysis_cache import AnalysisCache
from ood_core.evaluation import metrics
from ood_core.explore.session import note, part_rows, set_label
from ood_core.reporting import style


def lowdim_arrays(cache: AnalysisCache, subspace: str) -> dict[str, np.ndarray] | None:
    """{set: (N, K) float64 ``lowdim_<subspace>``} for the ID test set and every OOD set; None (with a
    skip note) when a set lacks it."""
    key = f"lowdim_{subspace}"
    sets = [cache.id_name, *cache.ood_names]
    if not all(cache.has(n, key) for n in sets):
        note(f"'{key}' missing (subspaces with arrays: {cache.lowdim_subspaces()}); nothing to plot")
        return None
    return {n: cache.arrays(n)[key].astype(np.float64) for n in sets}


def valid_dims(dims: list[int], K: int) -> list[int]:
    """The requested dimensions that exist (0 <= d < K), in the given order; a note names the others."""
    kept = [int(d) for d in dims if 0 <= d < K]
    if len(kept) < len(dims):
        note(f"dims {sorted(set(dims) - set(kept))} out of range (K={K}); dropped")
    return kept


def dimension_aurocs(z_id: np.ndarray, z_ood: np.ndarray) -> np.ndarray:
    """AUROC of every column, ID = positive, the value itself as the score."""
    return np.array([metrics.auroc(z_id[:, d], z_ood[:, d]) for d in range(z_id.shape[1])])


def _pooled(cache: AnalysisCache, Z: dict[str, np.ndarray], which: str) -> tuple[np.ndarray, np.ndarray]:
    zi = Z[cache.id_name][part_rows(cache, cache.id_name, which)]
    zo = np.concatenate([Z[o][part_rows(cache, o, which)] for o in cache.ood_names])
    return zi, zo


def top_dimensions(cache: AnalysisCache, Z: dict[str, np.ndarray], n_top: int) -> pd.DataFrame:
    """The ``n_top`` dimensions with the largest validation |AUROC - 0.5| (ties: lower dimension first),
    with columns dim, auroc_val, auroc_test, inverted (auroc_val < 0.5)."""
    val = dimension_aurocs(*_pooled(cache, Z, "val"))
    top = [int(d) for d in np.argsort(-np.abs(val - 0.5), kind="stable")[: min(n_top, len(val))]]
    zi, zo = _pooled(cache, Z, "test")
    test = [metrics.auroc(zi[:, d], zo[:, d]) for d in top]
    return pd.DataFrame({"dim": top, "auroc_val": val[top], "auroc_test": test, "inverted": val[top] < 0.5})


def top_titles(top: pd.DataFrame) -> tuple[dict[int, str], str]:
    """Panel titles (validation / test AUROC, 'inverted') and the caption line of the top-dimension figure."""
    titles = {
        int(r.dim): f"AUROC val {r.auroc_val:.2f}\ntest {r.auroc_test:.2f}"
        + ("\ninverted (ID < OOD)" if r.inverted else "")
        for r in top.itertuples()
    }
    n_inv = int(top["inverted"].sum())
    caption = f"Top {len(top)} dims by |AUROC − 0.5| (validation; ID vs all OOD)" + (
        f"; {n_inv} inverted: AUROC < 0.5, ID values lower than OOD" if n_inv else "; none inverted"
    )
    return titles, caption


def density_curves(cache: AnalysisCache, Z: dict[str, np.ndarray], dims: list[int], *, bw_adjust: float = 1.0):
    """The plotted densities: per dimension and set (ID test first, then the OOD sets), a Gaussian KDE
    (Scott's bandwidth x ``bw_adjust``) of the test part on 200 points over the 0.5-99.5 percentile
    range of the pooled values padded by 10 %; a constant set is one point of density NaN at its value. Columns dim, set, x, density."""
    from scipy.stats import gaussian_kde

    sets = [cache.id_name, *cache.ood_names]
    rows = []
    for d in dims:
        xs = {n: Z[n][part_rows(cache, n, "test"), d] for n in sets}
        pooled = np.concatenate(list(xs.values()))
        lo, hi = np.percentile(pooled, [0.5, 99.5])  # the bulk: a few outliers do not flatten the curves
        pad = 0.1 * (hi - lo) + 1e-12
        grid = np.linspace(lo - pad, hi + pad, 200)
        for n, x in xs.items():
            if np.std(x) > 0:
                kde = gaussian_kde(x)
                kde.set_bandwidth(kde.scotts_factor() * bw_adjust)
                rows.append(pd.DataFrame({"dim": d, "set": n, "x": grid, "density": kde(grid)}))
            else:
                rows.append(pd.DataFrame({"dim": [d], "set": [n], "x": [float(x[0])], "density": [np.nan]}))
    return pd.concat(rows, ignore_index=True)


def plot_density_panels(
    cache: AnalysisCache,
    curves: pd.DataFrame,
    dims: list[int],
    *,
    titles: dict[int, str] | None = None,
    caption: str | None = None,
):
    """One panel per dimension (:func:`density_curves`): ID test filled blue, each OOD test set a line
    in its own colour and line style (:func:`ood_core.reporting.style.ood_styles`); one legend right of the panels."""
    import matplotlib.pyplot as plt

    ID, styles = cache.id_name, style.ood_styles(cache.ood_names)
    ncol = min(len(dims), 3)
    nrow = int(np.ceil(len(dims) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(style.TEXT_WIDTH, 1.7 * nrow + 0.4), squeeze=False)
    for ax in axes.flat[len(dims) :]:
        ax.set_visible(False)
    for ax, d in zip(axes.flat, dims):
        cd = curves[curves["dim"] == d]
        for n in [ID, *cache.ood_names]:
            c = cd[cd["set"] == n]
            label = set_label(cache, n)
            if n == ID:
                kw: dict = dict(color=style.ID_COLOR, linestyle="-")
            else:
                kw = dict(color=styles[n]["color"], linestyle=styles[n]["linestyle"])
            if c["density"].isna().all():  # a constant set: a vertical line at its value
                ax.axvline(float(c["x"].iloc[0]), label=label, linewidth=1.0, **kw)
                continue
            ax.plot(c["x"], c["density"], label=label, linewidth=1.4 if n == ID else 1.1, zorder=3, **kw)
            if n == ID:
                ax.fill_between(c["x"], c["density"], color=style.ID_COLOR, alpha=0.2, linewidth=0, zorder=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"$G_{{low}}$ dim {d}")
        ax.set_ylabel("density" if ax in axes[:, 0] else "")
        if titles:
            ax.set_title(titles[d])
    handles, labels = axes.flat[0].get_legend_handles_labels()
    style.legend_outside(fig, handles, labels, where="right", handlelength=2.6)
    if caption:  # a caption line under the panels
        fig.supxlabel(caption, fontsize=style.FONT_SIZE - 1)
    return fig


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity of ``b`` to ``a`` (``a`` one vector or a row matrix; 1e-12 guards zero norms)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a @ b / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b) + 1e-12)


@dataclass
class SamplePair:
    """One ID test sample and its OOD partner: row indices, features ``h`` and gradients ``g``."""

    ood_set: str
    id_row: int
    ood_row: int
    h_id: np.ndarray
    h_ood: np.ndarray
    g_id: np.ndarray
    g_ood: np.ndarray

    @property
    def cos_h(self) -> float:
        return float(cosine(self.h_id, self.h_ood))

    @property
    def cos_g(self) -> float:
        return float(cosine(self.g_id, self.g_ood))


def sample_pair(
    cache: AnalysisCache, Z: dict[str, np.ndarray], *, id_sample: int = 0, ood_set: str = "", ood_sample: int = -1
) -> SamplePair:
    """Test sample ``id_sample`` of the ID set and, in the test part of ``ood_set`` (empty: the first OOD
    set), sample ``ood_sample`` or (when < 0) the one with the most cosine-similar features."""
    ID, o = cache.id_name, ood_set or cache.ood_names[0]
    ti, to = part_rows(cache, ID, "test"), part_rows(cache, o, "test")
    i = int(ti[min(id_sample, len(ti) - 1)])
    h_id = cache.arrays(ID)["h"][i].astype(np.float64)
    if ood_sample >= 0:
        j = int(to[min(ood_sample, len(to) - 1)])
    else:
        j = int(to[int(np.argmax(cosine(cache.arrays(o)["h"][to], h_id)))])
    h_ood = cache.arrays(o)["h"][j].astype(np.float64)
    return SamplePair(o, i, j, h_id, h_ood, Z[ID][i], Z[o][j])


def pair_table(pair: SamplePair) -> pd.DataFrame:
    """The plotted profiles: one row per (representation, dimension) with the ID and the OOD value."""
    return pd.concat(
        [
            pd.DataFrame({"profile": "h", "dim": np.arange(len(pair.h_id)), "id": pair.h_id, "ood": pair.h_ood}),
            pd.DataFrame({"profile": "G_low", "dim": np.arange(len(pair.g_id)), "id": pair.g_id, "ood": pair.g_ood}),
        ],
        ignore_index=True,
    ).assign(id_row=pair.id_row, ood_set=pair.ood_set, ood_row=pair.ood_row)


def plot_sample_pair(cache: AnalysisCache, pair: SamplePair):
    """Feature profile and gradient profile of the pair, with their cosine similarities; the legend
    above the panels."""
    import matplotlib.pyplot as plt

    ID, st = cache.id_name, style.ood_styles(cache.ood_names)[pair.ood_set]
    fig, axes = plt.subplots(1, 2, figsize=(style.TEXT_WIDTH, 2.1))
    panels = [(pair.h_id, pair.h_ood, "feature $h$", pair.cos_h), (pair.g_id, pair.g_ood, "$G_{low}$", pair.cos_g)]
    for ax, (a, b, lab, c) in zip(axes, panels):
        x = np.arange(len(a))
        kw = dict(linewidth=0.8) if len(a) > 64 else dict(linewidth=0.8, marker="o", markersize=2.5)
        ax.plot(x, a, color=style.ID_COLOR, label=f"ID: {set_label(cache, ID)}, sample {pair.id_row}", **kw)
        ax.plot(
            x,
            b,
            color=st["color"],
            linestyle="--",
            label=f"OOD: {set_label(cache, pair.ood_set)}, sample {pair.ood_row}",
            **kw,
        )
        ax.set_xlabel(f"{lab} dimension")
        ax.set_title(f"{lab} profile, cosine(ID, OOD) = {c:.2f}")
    axes[0].set_ylabel("value")
    handles, labels = axes[0].get_legend_handles_labels()
    style.legend_outside(fig, handles, labels, where="top", ncol=2)
    return fig
