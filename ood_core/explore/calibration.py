"""Calibration of the ID test set across temperatures (notebook 03, beside GRODIN's T grid).

Confidence = max softmax(f / T) (:func:`ood_core.scores.decomposition.V_msp`). Reliability: the
confidences fall into ``n_bins`` equal-width bins on [1/C, 1]; per non-empty bin b the mean confidence
conf_b and the accuracy acc_b. Expected calibration error (Guo et al. 2017):
ECE = sum_b (n_b / n) |acc_b - conf_b|.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ood_core.analysis_cache import AnalysisCache
from ood_core.explore.session import note
from ood_core.extraction.grid import grid_axes
from ood_core.reporting import style
from ood_core.scores.decomposition import V_msp


def reliability(conf: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """One row per non-empty bin of ``edges`` (a value on an inner edge goes to the upper bin; values
    outside [edges[0], edges[-1]] to the first / last bin): bin, confidence (mean), accuracy, fraction,
    count (images in the bin)."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    n_bins = len(edges) - 1
    which = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    rows = [
        {
            "bin": b,
            "confidence": conf[which == b].mean(),
            "accuracy": correct[which == b].mean(),
            "fraction": float((which == b).mean()),
            "count": int((which == b).sum()),
        }
        for b in range(n_bins)
        if (which == b).any()
    ]
    return pd.DataFrame(rows, columns=["bin", "confidence", "accuracy", "fraction", "count"])


def ece(bins: pd.DataFrame) -> float:
    """sum_b fraction_b |accuracy_b - confidence_b| over the rows of :func:`reliability`."""
    return float((bins["fraction"] * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def id_logits(cache: AnalysisCache) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(logits, labels, temperatures) of the ID test set: the cached grid's ``odin_T`` (else meta's grid,
    else [1]). None (with a skip note) without logits or labels."""
    a = cache.arrays(cache.id_name)
    if "logits" not in a or "y" not in a or (a["y"] < 0).all():
        note("ID logits / labels missing; skipping the calibration figure")
        return None
    temps = grid_axes(a, cache.meta)[1] or [1.0]
    return a["logits"].astype(np.float64), a["y"], np.asarray(temps, np.float64)


def curves(logits: np.ndarray, y: np.ndarray, temps: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability bins of every temperature (columns T, bin, confidence, accuracy, fraction, count, ece) on
    ``n_bins`` equal-width bins over [1/C, 1]."""
    correct = logits.argmax(1) == y
    edges = np.linspace(1.0 / logits.shape[1], 1.0, n_bins + 1)
    parts = []
    for t in temps:
        b = reliability(V_msp(logits, float(t)), correct, edges)
        parts.append(b.assign(T=float(t), ece=ece(b)))
    return pd.concat(parts, ignore_index=True)[["T", "bin", "confidence", "accuracy", "fraction", "count", "ece"]]


def ece_by_temperature(bins: pd.DataFrame) -> pd.DataFrame:
    """(T, ece) per temperature, in the order of :func:`curves`."""
    return bins.drop_duplicates("T")[["T", "ece"]].reset_index(drop=True)


def accuracy(bins: pd.DataFrame) -> float:
    """Top-1 accuracy of the ID test set: sum_b fraction_b accuracy_b at any one T (argmax ignores T)."""
    first = bins[bins["T"] == bins["T"].iloc[0]]
    return float((first["fraction"] * first["accuracy"]).sum())


T_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def plot_calibration(bins: pd.DataFrame, *, id_name: str, num_classes: int):
    """Left, top: reliability curves, one series per T (own colour, marker and line style; ECE in the
    legend), against confidence - 1/C on a log axis, so that the high temperatures, whose confidences
    all sit just above 1/C, stay apart instead of piling up at 1/C; marker area grows with the bin's
    count. Left, bottom: the images per bin. Right: ECE vs T."""
    import matplotlib.pyplot as plt

    per_T = ece_by_temperature(bins)
    temps = per_T["T"].to_numpy()
    cmap = plt.get_cmap("viridis")
    lo = 1.0 / num_classes
    fig = plt.figure(figsize=(style.TEXT_WIDTH, 3.2))
    gs = fig.add_gridspec(2, 2, width_ratios=[1.5, 1], height_ratios=[2.2, 1])
    ax, axn, axe = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[:, 1])
    axn.sharex(ax)
    x_of = lambda c: np.maximum(np.asarray(c, np.float64) - lo, 1e-9)  # noqa: E731
    gap = x_of(bins["confidence"])
    xs = np.geomspace(max(gap.min() / 2, 1e-9), 1 - lo, 200)
    ax.plot(xs, xs + lo, color="0.5", linestyle="--", linewidth=0.8, label="perfect calibration")
    n_max = max(1, int(bins["count"].max()))
    for k, (t, e) in enumerate(per_T.itertuples(index=False)):
        b = bins[bins["T"] == t]
        col = cmap(0.9 * k / max(1, len(temps) - 1))
        mk, ls = T_MARKERS[k % len(T_MARKERS)], style.OOD_LINESTYLES[k % len(style.OOD_LINESTYLES)]
        ax.plot(x_of(b["confidence"]), b["accuracy"], color=col, linestyle=ls, linewidth=0.9, zorder=2)
        ax.scatter(
            x_of(b["confidence"]),
            b["accuracy"],
            s=6 + 60 * b["count"] / n_max,
            marker=mk,
            color=col,
            edgecolors="k",
            linewidths=0.3,
            zorder=3,
            label=f"T = {t:g} (ECE {e:.3f})",
        )
        axn.plot(x_of(b["confidence"]), b["count"], color=col, linestyle=ls, marker=mk, markersize=3, linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Reliability, {id_name} (accuracy {accuracy(bins):.3f})")
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6, title="marker area ∝ images in bin")
    axn.set_yscale("log")
    axn.set_ylabel("images per bin")
    axn.set_xlabel(f"confidence − 1/C (max softmax at T minus {lo:g}, log scale)")
    axe.plot(temps, per_T["ece"], marker="o", color=style.ID_COLOR)
    if len(temps) > 1 and temps.min() > 0 and temps.max() / temps.min() > 20:
        axe.set_xscale("log")
    axe.set_xlabel("temperature T")
    axe.set_ylabel("ECE")
    axe.set_title("Expected calibration error vs T")
    return fig
