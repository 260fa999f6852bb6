"""Figures of the benchmark's sweeps, costs and metrics (notebook 05).

* ODIN / GRODIN (``sweep_odin.csv``): AUROC vs eps at the chosen T and vs T at the chosen eps, where the
  chosen cell of a method and OOD set is the one the benchmark's GRODIN ablation calls ``both``
  (:func:`ood_core.extraction.grid_selection.choose_settings` on the set's own validation AUROCs, ties to the
  first cell in grid order; under the ``per_ood_val`` protocol the cell of ``metrics.csv``).
* KNN / ReAct / RG (``sweep_knn.csv``, ``sweep_react.csv``): test AUROC vs one parameter.
* Compute cost (``method_costs.csv``, else the extraction's ``timings.csv``): seconds per 1,000 images.
* Heatmap (``metrics.csv``): method x OOD set on a diverging scale centred at chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ood_core.analysis_cache import AnalysisCache
from ood_core.explore.metric_tables import families
from ood_core.explore.session import load_table, model_label, note, ood_order, set_label
from ood_core.extraction.grid_selection import choose_settings
from ood_core.reporting import style
from ood_core.scores import display_name, family_display
from ood_core.scores.registry import FAMILIES


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
    styles = style.ood_styles(cache.ood_names)
    fig, axes = plt.subplots(2, len(methods), figsize=(style.TEXT_WIDTH, 3.8), squeeze=False, sharey=True)
    for j, m in enumerate(methods):
        d = sw[sw["method"] == m]
        for best in chosen[chosen["method"] == m].itertuples():
            do = d[d["ood_set"] == best.ood_set]
            st = styles.get(best.ood_set, {"color": "k", "marker": "o", "linestyle": "-"})
            line = dict(color=st["color"], linestyle=st["linestyle"], marker=st["marker"], markersize=3, linewidth=1.0)
            label = set_label(cache, best.ood_set)
            a = do[np.isclose(do["T"], best.T)].sort_values("eps")
            axes[0, j].plot(a["eps"], a[ycol], label=label, **line)
            b = do[np.isclose(do["eps"], best.eps)].sort_values("T")
            axes[1, j].plot(b["T"], b[ycol], label=label, **line)
            for ax, x in ((axes[0, j], best.eps), (axes[1, j], best.T)):  # the chosen cell
                ax.plot(
                    [x],
                    [getattr(best, ycol)],
                    marker="*",
                    markersize=7,
                    color=st["color"],
                    markeredgecolor="k",
                    markeredgewidth=0.3,
                    linestyle="none",
                    zorder=4,
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
    style.legend_outside(fig, h, lab, where="right", title="OOD set (★ = val-best)", handlelength=2.6)
    return fig


def sweep_table(df: pd.DataFrame, x: str, methods: list[str]) -> pd.DataFrame:
    """The plotted rows of a parameter sweep: method, ood_set, ``x``, auroc_test (in plot order)."""
    d = df[df["method"].isin(methods)]
    return d[["method", "ood_set", x, "auroc_test"]].sort_values(["method", "ood_set", x]).reset_index(drop=True)


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

    styles = style.ood_styles(cache.ood_names)
    width = style.TEXT_WIDTH if len(methods) > 1 else style.COLUMN_WIDTH * 1.8
    fig, axes = plt.subplots(1, len(methods), figsize=(width, 2.2), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        dm = df[df["method"] == m]
        for o in ood_order(dm["ood_set"], cache.ood_names):
            d = dm[dm["ood_set"] == o].sort_values(x)
            st = styles.get(o, {"color": "k", "marker": "o", "linestyle": "-"})
            ax.plot(
                d[x],
                d["auroc_test"],
                marker=st["marker"],
                linestyle=st["linestyle"],
                markersize=3,
                color=st["color"],
                label=f"{set_label(cache, o)} ({cache.group(o)})" if label_groups else set_label(cache, o),
            )
        if dm[x].min() > 0 and dm[x].max() / dm[x].min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        sub = (subtitles or {}).get(m)
        ax.set_title(display_name(m) + (f" ({sub})" if sub else ""))
    axes[0, 0].set_ylabel("test AUROC")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    style.legend_outside(fig, handles, labels, where="right", handlelength=2.6)
    return fig


def cost_table(fig_dir: str | Path, cache: AnalysisCache) -> pd.DataFrame | None:
    """Per-method costs (``method_costs.csv``: extraction components + scoring), else the extraction's
    ``timings.csv``; None (with a note) when neither exists."""
    path = Path(fig_dir) / "method_costs.csv"
    return load_table(path if path.is_file() else cache.timings_path())


def cost_summary(tm: pd.DataFrame, family_of: dict[str, str]) -> pd.DataFrame:
    """What the compute-cost figure shows: per method the mean seconds per 1,000 images, its display
    name and family, cheapest first."""
    t = tm.groupby("method", as_index=False)["seconds_per_1000"].mean().sort_values("seconds_per_1000")
    t["display"] = [style.display(m) for m in t["method"]]  # registered methods, else extraction parts
    t["family"] = [family_of.get(m, "") for m in t["method"]]
    return t.reset_index(drop=True)[["method", "display", "family", "seconds_per_1000"]]


def plot_compute_cost(tm: pd.DataFrame, family_of: dict[str, str]):
    """Horizontal bars of seconds per 1,000 images (mean per method) on a linear axis starting at 0, so
    that bar lengths compare as ratios, each bar with its value; coloured by family."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t = cost_summary(tm, family_of)
    devices = ", ".join(sorted({style.display(str(d)) for d in tm["device"]})) if "device" in tm else "?"
    bs = ", ".join(sorted(set(map(str, tm["batch_size"])))) if "batch_size" in tm else "?"
    present = {f for f in t["family"] if f}
    fams = [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))
    fam_col = {f: style.FAMILY_COLORS[i % len(style.FAMILY_COLORS)] for i, f in enumerate(fams)}
    fig, ax = plt.subplots(figsize=(style.COLUMN_WIDTH * 1.2, 0.9 + 0.16 * len(t)))
    bars = ax.barh(t["display"], t["seconds_per_1000"], color=[fam_col.get(f, "0.5") for f in t["family"]])
    ax.bar_label(bars, fmt="%.3g", padding=2, fontsize=6)
    ax.set_xlim(0, 1.15 * float(t["seconds_per_1000"].max()))
    ax.set_ylim(-0.6, len(t) - 0.4)
    ax.set_xlabel("seconds per 1,000 images")
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
    cols = [f"{set_label(cache, c)}\n({cache.group(c)})" if c in cache.ood_names else c for c in tab.columns]
    vals = 100 * tab.set_axis([style.display(m) for m in tab.index], axis=0).set_axis(cols, axis=1)
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
    ax.set_title(f"{metric.upper()} (%), ID = {set_label(cache, cache.id_name)}, model = {model_label(cache)}")
    # vertical column labels: a column is wider than two lines of text, so neighbours never overlap
    long = max(len(str(c)) for c in cols) * tab.shape[1] > 60
    ax.tick_params(axis="x", rotation=90 if long else 0)
    plt.setp(ax.get_xticklabels(), ha="center", va="top", fontsize=6 if long else style.FONT_SIZE - 1)
    return fig
