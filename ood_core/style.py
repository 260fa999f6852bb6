"""One shared matplotlib/seaborn style for every figure of the study.

Sizes target a two-column paper: a single-column figure is ``COLUMN_WIDTH`` inches wide, a
figure spanning both columns ``TEXT_WIDTH``. Fonts are ~8 pt so that figures are legible at 100 %.

    from ood_core import style
    style.apply()
    fig, ax = plt.subplots(figsize=style.figsize(1, 1))
    ...
    style.savefig(fig, fig_dir, "my_figure")   # -> my_figure.png + my_figure.pdf, atomically

Colours: in-distribution data is always ``ID_COLOR`` (first colour of the seaborn colorblind
palette); OOD data pooled together is ``OOD_COLOR`` (mid grey); individual OOD sets get stable
colours from :func:`ood_colors` (same set -> same colour in every notebook). Scores against chance
(AUROC) use the diverging ``DIVERGING_CMAP`` centred at chance over :func:`diverging_range`.

Figure conventions shared by the notebooks: :func:`label_log_axis` (readable log-axis labels),
:func:`label_row_groups` (group names beside the rows of a heatmap), :func:`scatter_groups` (the
smallest group drawn last, all semi-transparent, so that none hides another). Methods are shown by
their registered display names (``ood_core.scores.display_name``), never their code names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np

from .cache import atomic_path
from .cache import write_text as _write_text

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

COLUMN_WIDTH = 3.25  # inches, one column of a two-column paper
TEXT_WIDTH = 6.75  # inches, full text width
FONT_SIZE = 8
DPI = 200

# seaborn "colorblind" palette (hard-coded so that importing this module needs no seaborn)
PALETTE = [
    "#0173b2",
    "#de8f05",
    "#029e73",
    "#d55e00",
    "#cc78bc",
    "#ca9161",
    "#fbafe4",
    "#949494",
    "#ece133",
    "#56b4e9",
]
ID_COLOR = PALETTE[0]
OOD_COLOR = "0.6"
# OOD sets are drawn from the palette minus the ID colour and the grey
_OOD_CYCLE = [c for c in PALETTE[1:] if c != "#949494"]
DIVERGING_CMAP = "RdBu"  # red below chance, white at chance, blue above

RC: dict[RcKeyType, Any] = {  # keys: matplotlib's rcParams names (checked by mypy)
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
    "legend.fontsize": FONT_SIZE - 1,
    "legend.title_fontsize": FONT_SIZE - 1,
    "figure.titlesize": FONT_SIZE + 1,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "legend.frameon": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "figure.figsize": (COLUMN_WIDTH, COLUMN_WIDTH * 0.75),
    "figure.constrained_layout.use": True,
    "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    "ps.fonttype": 42,
    "image.cmap": "viridis",
}


def apply() -> None:
    """Set the study's matplotlib (and, if installed, seaborn) style globally."""
    from cycler import cycler

    try:
        import seaborn as sns

        sns.set_theme(context="paper", style="ticks", palette="colorblind", rc=RC)
    except ImportError:  # pragma: no cover - seaborn is a hard dependency, but stay usable
        pass
    matplotlib.rcParams.update(RC)
    matplotlib.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)


def figsize(cols: float = 1.0, aspect: float = 0.75) -> tuple[float, float]:
    """(width, height) in inches: ``cols`` = 1 -> one column, 2 -> full text width."""
    width = COLUMN_WIDTH if cols <= 1 else TEXT_WIDTH if cols >= 2 else min(TEXT_WIDTH, COLUMN_WIDTH * cols)
    return (width, width * aspect)


def ood_colors(names: Iterable[str]) -> dict[str, str]:
    """Stable colour per OOD set name (in the given order), cycling through the palette."""
    return {n: _OOD_CYCLE[i % len(_OOD_CYCLE)] for i, n in enumerate(names)}


def class_colors(num_classes: int) -> list:
    """One colour per class: the colorblind palette up to 10 classes, else a continuous map."""
    if num_classes <= len(PALETTE):
        return PALETTE[:num_classes]
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("turbo")
    return [cmap(i / max(1, num_classes - 1)) for i in range(num_classes)]


def diverging_range(values, center: float, min_half_width: float = 1.0) -> tuple[float, float]:
    """(center - w, center + w) with w = max(|v - center|) over the finite values (at least
    ``min_half_width``): a diverging scale centred at ``center`` covering the data on both sides."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    w = max(float(np.abs(v - center).max()) if v.size else 0.0, float(min_half_width))
    return center - w, center + w


def label_log_axis(axis, lo: float, hi: float, max_labels: int = 8) -> None:
    """Tick labels on a log-scaled ``axis`` (``ax.xaxis`` / ``ax.yaxis``) whose data span [lo, hi]:
    at 1, 10, 100, ... for >= 3 decades (every k-th decade, at most ``max_labels``), 1-2-5 steps for
    >= 0.5 decade, else every 1..9 step. The limits widen to the labelled values just below lo
    (strictly: a bar of length lo stays visible) and at or above hi, so >= 2 labels show; labels are
    plain numbers (0.02, 5, 300)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = float(lo), float(hi)
    if not (0 < lo <= hi):
        raise ValueError(f"label_log_axis needs 0 < lo <= hi, got lo={lo}, hi={hi}")
    decades = np.log10(hi / lo)
    subs = (1.0,) if decades >= 3 else (1.0, 2.0, 5.0) if decades >= 0.5 else tuple(range(1, 10))
    exps = np.arange(np.floor(np.log10(lo)) - 1, np.ceil(np.log10(hi)) + 2)
    ticks = np.array(sorted(m * 10.0**e for e in exps for m in subs))
    lim_lo, lim_hi = ticks[ticks < lo * (1 - 1e-9)][-1], ticks[ticks >= hi * (1 - 1e-9)][0]
    shown = ticks[(ticks >= lim_lo) & (ticks <= lim_hi)]
    axis.set_major_locator(FixedLocator(shown[:: -(-len(shown) // max_labels)]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    set_lim = axis.axes.set_xlim if axis is axis.axes.xaxis else axis.axes.set_ylim
    set_lim(lim_lo, lim_hi)


def label_row_groups(
    ax, groups: Sequence[str], names: Mapping[str, str] | None = None, color: str = "k"
) -> list[tuple[str, int, int]]:
    """Mark runs of equal ``groups`` (one entry per heatmap row, top to bottom; row i spans
    y in [i, i + 1]) with a line between runs and the run's name (``names[group]``, else the group)
    right of the axes. Returns the runs as (group, first row, last row + 1)."""
    from matplotlib.transforms import blended_transform_factory

    runs: list[tuple[str, int, int]] = []
    for i, g in enumerate(groups):
        if runs and runs[-1][0] == g:
            runs[-1] = (g, runs[-1][1], i + 1)
        else:
            runs.append((g, i, i + 1))
    tr = blended_transform_factory(ax.transAxes, ax.transData)
    for k, (g, a, b) in enumerate(runs):
        if k:
            ax.axhline(a, color=color, linewidth=1.2)
        ax.plot([1.015, 1.015], [a + 0.15, b - 0.15], color=color, linewidth=0.8, transform=tr, clip_on=False)
        ax.text(
            1.03,
            (a + b) / 2,
            (names or {}).get(g, g),
            transform=tr,
            ha="left",
            va="center",
            fontsize=FONT_SIZE - 1,
            clip_on=False,
        )
    return runs


def scatter_groups(ax, x, y, groups: Mapping[str, tuple[np.ndarray, str]], alpha: float = 0.5, **kw) -> list:
    """Scatter each group (label -> (boolean mask, colour)) semi-transparently, the largest group
    first and the smallest last (on top), so a small group (ID test beside several OOD sets) is not
    buried under a large one. Returns one opaque legend handle per group, in the given order:
    ``ax.legend(handles=...)``."""
    from matplotlib.lines import Line2D

    x, y = np.asarray(x), np.asarray(y)
    for m, c in sorted(groups.values(), key=lambda g: -int(np.sum(g[0]))):
        ax.scatter(x[m], y[m], color=c, alpha=alpha, linewidths=0, **kw)
    return [
        Line2D([], [], linestyle="none", marker="o", markersize=4, color=c, label=label)
        for label, (_, c) in groups.items()
    ]


def _atomic_save(fig, path: Path, **kw) -> None:
    fmt = path.suffix.lstrip(".")
    if fmt == "pdf":  # no creation date: re-running a notebook leaves unchanged figures byte-identical
        kw.setdefault("metadata", {"CreationDate": None})
    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, format=fmt, **kw)


def savefig(fig, fig_dir, name: str, formats: tuple[str, ...] = ("png", "pdf"), **kw) -> list[Path]:
    """Write ``fig`` to ``<fig_dir>/<name>.{png,pdf}`` atomically (temp file then os.replace).

    Returns the written paths. ``name`` must not carry an extension.
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    name = Path(name).stem if Path(name).suffix in {".png", ".pdf"} else name
    kw.setdefault("dpi", DPI)
    out = []
    for fmt in formats:
        path = fig_dir / f"{name}.{fmt}"
        _atomic_save(fig, path, **kw)
        out.append(path)
    return out


def write_text(fig_dir, name: str, text: str) -> Path:
    """Atomically write a small text artefact (e.g. a Markdown table) next to the figures."""
    return _write_text(Path(fig_dir) / name, text)
