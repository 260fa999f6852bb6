"""t-SNE of penultimate features vs low-dimensional gradients (Wu et al., Fig. 2; notebook 01).

The same sampled rows are embedded twice, once from ``h`` and once from ``lowdim_<subspace>``; each view
is standardised per dimension before openTSNE (PCA initialisation, fixed ``random_state``).
"""

from __future__ import annotations

import numpy as np

from ood_core.analysis_cache import AnalysisCache
from ood_core.explore.session import model_label, note, set_label
from ood_core.reporting import style


def class_names(cache: AnalysisCache) -> list[str]:
    """The ID classes' names: the cache's ``class_names``; else CIFAR-10's when the ID dataset is
    CIFAR-10 with 10 classes; else '0', '1', ..."""
    if cache.class_names:
        return cache.class_names
    from ood_core.data.openood_splits import CIFAR10_CLASSES

    c = int(cache.meta.get("num_classes", 0))
    if cache.meta.get("id_dataset") == "cifar10" and c == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return [str(i) for i in range(c)]


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
    out[f"low-dim gradients $G_{{low}}$ ({style.display(subspace, 'subspace')}, K={G.shape[1]})"] = G
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


def table(emb: dict[str, np.ndarray], role: np.ndarray, y_id: np.ndarray, cache: AnalysisCache):
    """The plotted points: one row per (view, sampled row) with set, class (ID rows; '' for OOD), x, y."""
    import pandas as pd

    names = class_names(cache)
    cls = np.full(len(role), "", dtype=object)
    cls[role == cache.id_name] = [names[c] if c < len(names) else str(c) for c in np.asarray(y_id, int)]
    return pd.concat(
        [pd.DataFrame({"view": v, "set": role, "class": cls, "x": E[:, 0], "y": E[:, 1]}) for v, E in emb.items()],
        ignore_index=True,
    )


def plot_tsne(emb: dict[str, np.ndarray], role: np.ndarray, y_id: np.ndarray, cache: AnalysisCache):
    """Two rows of panels, one column per view. Top: ID test rows coloured by class name (no class in
    grey), OOD rows as light-grey context. Bottom: each OOD set in its own colour and marker
    (:func:`ood_core.reporting.style.ood_styles`), ID rows as light-blue context. Legends outside the panels."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ID, names = cache.id_name, class_names(cache)
    cls_colors = style.class_colors(int(cache.meta["num_classes"]))
    styles = style.ood_styles(cache.ood_names)
    width = style.TEXT_WIDTH if len(emb) > 1 else style.COLUMN_WIDTH * 1.6
    fig, axes = plt.subplots(2, len(emb), figsize=(width, 2 * style.COLUMN_WIDTH * 0.85), squeeze=False)
    is_id, y_id = role == ID, np.asarray(y_id, int)
    dot = dict(s=3, linewidths=0, rasterized=True)
    for j, (title, E) in enumerate(emb.items()):
        top, bottom = axes[0, j], axes[1, j]
        top.scatter(E[~is_id, 0], E[~is_id, 1], color=style.CONTEXT_COLOR, alpha=0.6, **dot)
        Eid = E[is_id]
        for c in np.unique(y_id):
            mc = y_id == c
            top.scatter(Eid[mc, 0], Eid[mc, 1], color=cls_colors[c % len(cls_colors)], alpha=0.85, **dot)
        bottom.scatter(Eid[:, 0], Eid[:, 1], color=style.ID_COLOR, alpha=0.12, **dot)
        for o in cache.ood_names:
            m, st = role == o, styles[o]
            bottom.scatter(
                E[m, 0], E[m, 1], s=5, color=st["color"], marker=st["marker"], linewidths=0, alpha=0.75, rasterized=True
            )
        top.set_title(title)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ("left", "bottom"):
                ax.spines[sp].set_visible(False)
    axes[0, 0].set_ylabel(f"{set_label(cache, ID)} by class")
    axes[1, 0].set_ylabel("OOD test sets")

    def handle(color, label, marker="o", alpha=1.0):
        return Line2D([], [], linestyle="none", marker=marker, markersize=4, color=color, alpha=alpha, label=label)

    n_cls = len(cls_colors) if len(cls_colors) <= 10 else 0
    h_top = [handle(cls_colors[c], names[c] if c < len(names) else str(c)) for c in range(n_cls)]
    h_top.append(handle(style.CONTEXT_COLOR, "OOD (all sets)"))
    h_bot = [handle(styles[o]["color"], set_label(cache, o), styles[o]["marker"]) for o in cache.ood_names]
    h_bot.append(handle(style.ID_COLOR, "ID (all classes)", alpha=0.4))
    axes[0, -1].legend(handles=h_top, loc="center left", bbox_to_anchor=(1.02, 0.5), handletextpad=0.2)
    axes[1, -1].legend(handles=h_bot, loc="center left", bbox_to_anchor=(1.02, 0.5), handletextpad=0.2)
    fig.suptitle(f"t-SNE of {set_label(cache, ID)} and {len(cache.ood_names)} OOD sets, {model_label(cache)}")
    return fig
