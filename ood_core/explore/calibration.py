"""Calibration of the ID test set across temperatures (notebook 03, beside GRODIN's T grid).

Confidence = max softmax(f / T) (:func:`ood_core.scores.decomposition.V_msp`). Reliability: the
confidences fall into ``n_bins`` equal-width bins on [1/C, 1]; per non-empty bin b the mean confidence
conf_b and the accuracy acc_b. Expected calibration error (Guo et al. 2017):
ECE = sum_b (n_b / n) |acc_b - conf_b|.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import style
from ..analysis_cache import AnalysisCache
from ..grid import grid_axes
from ..scores.decomposition import V_msp
from .session import note


def reliability(conf: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """One row per non-empty bin of ``edges`` (a value on an inner edge goes to the upper bin; values
    outside [edges[0], edges[-1]] to the first / last bin): bin, confidence (mean), accuracy, fraction."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    n_bins = len(edges) - 1
    which = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    rows = [
        {
            "bin": b,
            "confidence": conf[which == b].mean(),
            "accuracy": correct[which == b].mean(),
            "fraction": float((which == b).mean()),
        }
        for b in range(n_bins)
        if (which == b).any()
    ]
    return pd.DataFrame(rows, columns=["bin", "confidence", "accuracy", "fraction"])


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
    """Reliability bins of every temperature (columns T, bin, confidence, accuracy, fraction, ece) on
    ``n_bins`` equal-width bins over [1/C, 1]."""
    correct = logits.argmax(1) == y
    edges = np.linspace(1.0 / logits.shape[1], 1.0, n_bins + 1)
    parts = []
    for t in temps:
        b = reliability(V_msp(logits, float(t)), correct, edges)
        parts.append(b.assign(T=float(t), ece=ece(b)))
    return pd.concat(parts, ignore_index=True)[["T", "bin", "confidence", "accuracy", "fraction", "ece"]]


def ece_by_temperature(bins: pd.DataFrame) -> pd.DataFrame:
    """(T, ece) per temperature, in the order of :func:`curves`."""
    return bins.drop_duplicates("T")[["T", "ece"]].reset_index(drop=True)


def accuracy(bins: pd.DataFrame) -> float:
    """Top-1 accuracy of the ID test set: sum_b fraction_b accuracy_b at any one T (argmax ignores T)."""
    first = bins[bins["T"] == bins["T"].iloc[0]]
    return float((first["fraction"] * first["accuracy"]).sum())


def plot_calibration(bins: pd.DataFrame, *, id_name: str, num_classes: int):
    """Left: reliability curves, one per T (ECE in the legend); right: ECE vs T."""
    import matplotlib.pyplot as plt

    per_T = ece_by_temperature(bins)
    temps = per_T["T"].to_numpy()
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(style.TEXT_WIDTH, 2.3), gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    lo = 1.0 / num_classes
    ax.plot([lo, 1], [lo, 1], color="0.6", linestyle="--", linewidth=0.8, label="perfect")
    for k, (t, e) in enumerate(per_T.itertuples(index=False)):
        b = bins[bins["T"] == t]
        ax.plot(
            b["confidence"],
            b["accuracy"],
            marker="o",
            markersize=2.5,
            color=cmap(k / max(1, len(temps) - 1)),
            label=f"T={t:g} (ECE {e:.3f})",
        )
    ax.set_xlabel("confidence (max softmax at T)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability, {id_name} (accuracy {accuracy(bins):.3f})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)
    ax = axes[1]
    ax.plot(temps, per_T["ece"], marker="o", color=style.ID_COLOR)
    if len(temps) > 1 and temps.min() > 0 and temps.max() / temps.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("ECE")
    ax.set_title("Expected calibration error vs T")
    return fig
