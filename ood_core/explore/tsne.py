"""t-SNE of penultimate features vs low-dimensional gradients (Wu et al., Fig. 2; notebook 01).

The same sampled rows are embedded twice, once from ``h`` and once from ``lowdim_<subspace>``; each view
is standardised per dimension before openTSNE (PCA initialisation, fixed ``random_state``).
"""

from __future__ import annotations

import numpy as np

from .. import style
from ..analysis_cache import AnalysisCache
from .session import note

OOD_MARKERS = ["x", "+", "1", "^", "s", "D", "v", "*"]  # one marker per OOD set (all grey)


def sample_rows(cache: AnalysisCache, rng: np.random.Generator, n_points: int) -> list[tuple[str, np.ndarray]]:
    """[(set, sorted row indices)]: up to ``n_points`` rows of the ID test set, then up to
    ``n_points // n_ood`` (at least 1) rows of each OOD set, drawn without replacement in that order."""

    def take(n_total: int, k: int) -> np.ndarray:
        return np.sort(rng.choice(n_total, size=min(k, n_total), replace=False))

    picks = [(cache.id_name, take(len(cache.arrays(cache.id_name)["h"]), n_points))]
    per_ood = max(1, n_points // max(1, len(cache.ood_names)))
    for o in cache.ood_names:
        picks.append((o, take(len(cache.arrays(o)["h"]), per_ood)))
    return picks


def views(cache: AnalysisCache, picks: list[tuple[str, np.ndarray]], subspace: str) -> dict[str, np.ndarray]:
    """{panel title: (n, dim) float64} of the sampled rows: the features ``h`` and, when every set has
    it, ``lowdim_<subspace>`` (else a skip note and the feature view only)."""
    out = {"penultimate features $h$": np.concatenate([cache.arrays(n)["h"][i] for n, i in picks]).astype(np.float64)}
    key = f"lowdim_{subspace}"
    if not all(cache.has(n, key) for n, _ in picks):
        note(
            f"'{key}' missing for some set (subspaces with arrays: {cache.lowdim_subspaces()}); "
            "showing the feature panel only"
        )
        return out
    G = np.concatenate([cache.arrays(n)[key][i] for n, i in picks]).astype(np.float64)
    out[f"low-dim gradients $G_{{low}}$ ({subspace}, K={G.shape[1]})"] = G
    return out


def roles(picks: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """The set name of every sampled row, in the order of :func:`views`."""
    return np.concatenate([[n] * len(i) for n, i in picks])


def capped_perplexity(perplexity: float, n: int) -> float:
    """openTSNE needs perplexity < (n - 1) / 3: the requested value, capped at (n - 1) / 3 - 1 (>= 2)."""
    return float(min(perplexity, max(2.0, (n - 1) / 3.0 - 1)))


def standardise(X: np.ndarray) -> np.ndarray:
    """Per-dimension z-score (a constant dimension becomes 0)."""
    return (X - X.mean(0)) / (X.std(0) + 1e-8)


def embed(
    X: np.ndarray, *, perplexity: float, n_iter: int, early_exaggeration_iter: int, seed: int, n_jobs: int = 1
) -> np.ndarray:
    """2-D openTSNE embedding of the standardised ``X`` (PCA initialisation, ``random_state=seed``)."""
    from openTSNE import TSNE

    X = standardise(np.asarray(X, np.float64))
    tsne = TSNE(
        n_components=2,
        perplexity=capped_perplexity(perplexity, len(X)),
        n_iter=n_iter,
        early_exaggeration_iter=early_exaggeration_iter,
        initialization="pca",
        random_state=seed,
        n_jobs=n_jobs,
        verbose=False,
    )
    return np.asarray(tsne.fit(X))


def plot_tsne(emb: dict[str, np.ndarray], role: np.ndarray, y_id: np.ndarray, cache: AnalysisCache):
    """One panel per view: OOD rows grey (one marker per set), ID rows coloured by class."""
    import matplotlib.pyplot as plt

    meta, ID = cache.meta, cache.id_name
    cls_colors = style.class_colors(int(meta["num_classes"]))
    width = style.TEXT_WIDTH if len(emb) > 1 else style.COLUMN_WIDTH
    fig, axes = plt.subplots(1, len(emb), figsize=(width, style.COLUMN_WIDTH * 0.95), squeeze=False)
    for ax, (title, E) in zip(axes[0], emb.items()):
        for j, o in enumerate(cache.ood_names):
            m = role == o
            ax.scatter(
                E[m, 0],
                E[m, 1],
                s=4,
                c=style.OOD_COLOR,
                marker=OOD_MARKERS[j % len(OOD_MARKERS)],
                linewidths=0.5,
                alpha=0.7,
                label=f"OOD: {o}",
                rasterized=True,
            )
        Eid = E[role == ID]
        for c in np.unique(y_id):
            mc = y_id == c
            name = cache.class_names[c] if c < len(cache.class_names) else str(c)
            ax.scatter(
                Eid[mc, 0],
                Eid[mc, 1],
                s=4,
                color=cls_colors[c % len(cls_colors)],
                linewidths=0,
                alpha=0.85,
                label=name if len(cls_colors) <= 10 else None,
                rasterized=True,
            )
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ("left", "bottom"):
            ax.spines[s].set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", markerscale=2.5, handletextpad=0.2)
    fig.suptitle(f"t-SNE of ID test ({ID}, by class) and OOD (grey) — {meta.get('model', '')}")
    return fig
