"""Figures of the benchmark's sweeps, costs and metrics (notebook 05).

* ODIN / GRODIN (``sweep_odin.csv``): AUROC vs eps at the chosen T and vs T at the chosen eps, where the
  chosen cell of a method and OOD set is the one the benchmark's GRODIN ablation calls ``both``
  (:func:`ood_core.grid_selection.choose_settings` on the set's own validation AUROCs, ties to the
  first cell in grid order; under the ``per_ood_val`` protocol the cell of ``metrics.csv``).
* KNN / ReAct / RG (``sweep_knn.csv``, ``sweep_react.csv``): test AUROC vs one parameter.
* Compute cost (``method_costs.csv``, else the extraction's ``timings.csv``): seconds per 1,000 images.
* Heatmap (``metrics.csv``): method x OOD set on a diverging scale centred at chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import style
from ..analysis_cache import AnalysisCache
from ..grid_selection import choose_settings
from ..scores import display_name, family_display
from ..scores.registry import FAMILIES
from .metric_tables import families
from .session import load_table, note, ood_order


def sweep_column(sw: pd.DataFrame) -> str:
    """'auroc_test', or 'auroc_val' (with a note) when some cells were searched on validation rows only."""
    if sw["auroc_test"].notna().all():
        return "auroc_test"
    note("the eps x T grid was searched on validation rows only; the sweep shows validation AUROC")
    return "auroc_val"


def odin_choices(sw: pd.DataFrame, methods: list[str], ood_names: list[str]) -> pd.DataFrame:
    """The chosen cell per (method, OOD set) of ``sweep_odin.csv`` (module docstring): columns method,
    ood_set, T, eps, auroc_val, auroc_test."""
    rows = []
    for m in methods:
        d = sw[sw["method"] == m]
        for o in ood_order(d["ood_set"], ood_names):
            do = d[d["ood_set"] == o]
            table = [({"eps": r.eps, "T": r.T}, r.auroc_val) for r in do.itertuples()]
            best = choose_settings(table)["both"]
            hit = do[np.isclose(do["eps"], best["eps"]) & np.isclose(do["T"], best["T"])].iloc[0]
            rows.append(
                {
                    "method": m,
                    "ood_set": o,
                    "T": hit["T"],
                    "eps": hit["eps"],
                    "auroc_val": hit["auroc_val"],
                    "auroc_test": hit["auroc_test"],
                }
            )
    return pd.DataFrame(rows, columns=["method", "ood_set", "T", "eps", "auroc_val", "auroc_test"])


def plot_odin_sweep(sw: pd.DataFrame, chosen: pd.DataFrame, cache: AnalysisCache, ycol: str = "auroc_test"):
    """Top row: AUROC vs eps at the chosen T; bottom row: AUROC vs T at the chosen eps; one column per
    method, one line per OOD set, a star at the chosen cell."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(chosen["method"]))
    colors = style.ood_colors(cache.ood_names)
    fig, axes = plt.subplots(2, len(methods), figsize=(style.TEXT_WIDTH, 3.6), squeeze=False, sharey=True)
    for j, m in enumerate(methods):
        d = sw[sw["method"] == m]
        for best in chosen[chosen["method"] == m].itertuples():
            do, col = d[d["ood_set"] == best.ood_set], colors.get(best.ood_set, "k")
            a = do[np.isclose(do["T"], best.T)].sort_values("eps")
            axes[0, j].plot(a["eps"], a[ycol], marker="o", markersize=2, color=col, label=best.ood_set)
            b = do[np.isclose(do["eps"], best.eps)].sort_values("T")
            axes[1, j].plot(b["T"], b[ycol], marker="o", markersize=2, color=col, label=best.ood_set)
            for ax, x in ((axes[0, j], best.eps), (axes[1, j], best.T)):  # the chosen cell
                ax.plot(
                    [x],
                    [getattr(best, ycol)],
                    marker="*",
                    markersize=6,
                    color=col,
                    markeredgecolor="k",
                    markeredgewidth=0.3,
                    linestyle="none",
                )
        axes[0, j].set_title(display_name(m))
        axes[0, j].set_xlabel("ε (at the val-best T)")
        axes[1, j].set_xlabel("T (at the val-best ε)")
        if d["T"].min() > 0 and d["T"].max() / d["T"].min() > 20:
            axes[1, j].set_xscale("log")
    ylab = "test AUROC" if ycol == "auroc_test" else "validation AUROC"
    axes[0, 0].set_ylabel(ylab)
    axes[1, 0].set_ylabel(ylab)
    h, lab = axes[0, 0].get_legend_handles_labels()
    fig.legend(h, lab, loc="outside right center", title="OOD set (★ = val-best)")
    return fig


def plot_param_sweep(
    df: pd.DataFrame,
    x: str,
    methods: list[str],
    cache: AnalysisCache,
    *,
    xlabel: str,
    subtitles: dict[str, str] | None = None,
    label_groups: bool = False,
):
    """Test AUROC vs parameter ``x``: one panel per method, one line per OOD set (log x for > 20x ranges)."""
    import matplotlib.pyplot as plt

    colors = style.ood_colors(cache.ood_names)
    width = style.TEXT_WIDTH if len(methods) > 1 else style.COLUMN_WIDTH
    fig, axes = plt.subplots(1, len(methods), figsize=(width, 2.0), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        dm = df[df["method"] == m]
        for o in ood_order(dm["ood_set"], cache.ood_names):
            d = dm[dm["ood_set"] == o].sort_values(x)
            ax.plot(
                d[x],
                d["auroc_test"],
                marker="o",
                markersize=2.5,
                color=colors.get(o, "k"),
                label=f"{o} ({cache.group(o)})" if label_groups else o,
            )
        if dm[x].min() > 0 and dm[x].max() / dm[x].min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        sub = (subtitles or {}).get(m)
        ax.set_title(display_name(m) + (f" ({sub})" if sub else ""))
    axes[0, 0].set_ylabel("test AUROC")
    axes[0, 0].legend()
    return fig


def cost_table(fig_dir: str | Path, cache: AnalysisCache) -> pd.DataFrame | None:
    """Per-method costs (``method_costs.csv``: extraction components + scoring), else the extraction's
    ``timings.csv``; None (with a note) when neither exists."""
    path = Path(fig_dir) / "method_costs.csv"
    return load_table(path if path.is_file() else cache.timings_path())


def plot_compute_cost(tm: pd.DataFrame, family_of: dict[str, str]):
    """Horizontal bars of seconds per 1,000 images (mean per method, log scale), coloured by family."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t = tm.groupby("method", as_index=False)["seconds_per_1000"].mean().sort_values("seconds_per_1000")
    devices = ", ".join(sorted(set(map(str, tm["device"])))) if "device" in tm else "?"
    bs = ", ".join(sorted(set(map(str, tm["batch_size"])))) if "batch_size" in tm else "?"
    present = {family_of[m] for m in t["method"] if m in family_of}
    fams = [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))
    fam_col = {f: style.PALETTE[(i + 1) % len(style.PALETTE)] for i, f in enumerate(fams)}
    fig, ax = plt.subplots(figsize=(style.COLUMN_WIDTH, 0.6 + 0.16 * len(t)))
    ax.barh(
        [display_name(m) for m in t["method"]],
        t["seconds_per_1000"],
        color=[fam_col.get(family_of.get(m, ""), style.ID_COLOR) for m in t["method"]],
    )
    ax.set_xscale("log")
    style.label_log_axis(ax.xaxis, t["seconds_per_1000"].min(), t["seconds_per_1000"].max())
    ax.set_xlabel("seconds per 1,000 images (log scale)")
    ax.set_title(f"Compute cost on {devices} (batch {bs})")
    if fam_col:
        fig.legend(
            handles=[Patch(color=c, label=family_display(f)) for f, c in fam_col.items()],
            loc="outside lower center",
            ncol=2,
            fontsize=6,
        )
    return fig


def plot_heatmap(tab: pd.DataFrame, mdf: pd.DataFrame, cache: AnalysisCache, metric: str = "auroc"):
    """``tab`` (:func:`ood_core.explore.metric_tables.heatmap_table`) in %, rows by display name and
    labelled by family, OOD sets labelled by group, a line before the mean column."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fam = families(mdf)
    cols = [f"{c}\n({cache.group(c)})" if c in cache.ood_names else c for c in tab.columns]
    vals = 100 * tab.set_axis([display_name(m) for m in tab.index], axis=0).set_axis(cols, axis=1)
    if metric == "auroc":  # diverging at chance, covering the data's range on both sides
        vmin, vmax = style.diverging_range(vals.to_numpy(), 50.0)
        scale = dict(cmap=style.DIVERGING_CMAP, center=50.0, vmin=vmin, vmax=vmax)
        cbar_label = "AUROC (%), 50 = chance"
    else:
        scale, cbar_label = dict(cmap="viridis"), f"{metric} (%)"
    fig, ax = plt.subplots(figsize=(min(style.TEXT_WIDTH, 2.6 + 0.75 * tab.shape[1]), 1.0 + 0.2 * len(tab)))
    sns.heatmap(
        vals,
        annot=True,
        fmt=".1f",
        ax=ax,
        annot_kws={"fontsize": 6},
        linewidths=0.3,
        linecolor="white",
        cbar_kws={"label": cbar_label, "location": "bottom", "shrink": 0.6, "aspect": 40, "pad": 0.01},
        **scale,
    )
    style.label_row_groups(
        ax, [fam.get(m, "other") for m in tab.index], names={f: family_display(f) for f in set(fam.values())}
    )
    ax.axvline(tab.shape[1] - 1, color="k", linewidth=1.2)  # OOD sets | their mean
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title(f"{metric.upper()} (%), ID = {cache.id_name}, model = {cache.meta.get('model')}")
    if max(len(str(c)) for c in cols) * tab.shape[1] > 60:
        ax.tick_params(axis="x", rotation=30)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    else:
        ax.tick_params(axis="x", rotation=0)
    return fig
