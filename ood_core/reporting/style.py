"""One shared matplotlib/seaborn style for every figure of the study.

Sizes target a two-column paper: a single-column figure is ``COLUMN_WIDTH`` inches wide, a
figure spanning both columns ``TEXT_WIDTH``. Fonts are ~8 pt so that figures are legible at 100 %.

    from ood_core.reporting import style
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
smallest group drawn last, all semi-transparent, so that none hides another), :func:`legend_outside`.
Names: :func:`display` is the one mapping from code names (sets, datasets, models, arrays, subspaces,
devices; methods through their registered display names, ``ood_core.scores.display_name``) to what a
figure shows; :func:`code_names_in` lists the texts of a figure that still show a code name.
Every figure is written with the numbers it shows: ``savefig(fig, fig_dir, name, numbers=df)`` ->
``name.png``, ``name.pdf``, ``name.csv``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np

from ood_core.cache import atomic_path
from ood_core.cache import write_text as _write_text

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
CONTEXT_COLOR = "0.82"  # points shown only as context (the other role in a t-SNE panel)
# classes of the ID set: the colorblind palette with its grey replaced by black, so that no class
# shares the grey of pooled OOD data
CLASS_PALETTE = [c if c != "#949494" else "#000000" for c in PALETTE]
# individual OOD sets: Paul Tol's colour-blind-safe "muted" qualitative palette (no ID blue, no grey),
# each set also with its own marker and line style, so that sets stay apart where colours are close
OOD_PALETTE = ["#CC6677", "#117733", "#DDCC77", "#332288", "#AA4499", "#44AA99", "#999933", "#882255", "#E69F00"]
OOD_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<"]
OOD_LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2)), "-"]
_OOD_CYCLE = OOD_PALETTE
# families of methods (compute-cost bars): clearly different hues, none the ID blue
FAMILY_COLORS = ["#de8f05", "#029e73", "#cc78bc", "#56b4e9", "#ca9161", "#949494"]
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
    """Stable colour per OOD set name (in the given order), cycling through :data:`OOD_PALETTE`."""
    return {n: _OOD_CYCLE[i % len(_OOD_CYCLE)] for i, n in enumerate(names)}


def ood_styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{OOD set: {color, marker, linestyle}} in the given order: colour, marker and line style all
    change from one set to the next, so two sets never look alike even where their curves coincide."""
    colors = ood_colors(names)
    return {
        n: {
            "color": c,
            "marker": OOD_MARKERS[i % len(OOD_MARKERS)],
            "linestyle": OOD_LINESTYLES[i % len(OOD_LINESTYLES)],
        }
        for i, (n, c) in enumerate(colors.items())
    }


def class_colors(num_classes: int) -> list:
    """One colour per class: :data:`CLASS_PALETTE` up to 10 classes (no grey), else a continuous map."""
    if num_classes <= len(CLASS_PALETTE):
        return CLASS_PALETTE[:num_classes]
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


def scatter_groups(
    ax,
    x,
    y,
    groups: Mapping[str, tuple[np.ndarray, str]],
    alpha: float = 0.5,
    hollow: Iterable[str] = (),
    last: str | None = None,
    **kw,
) -> list:
    """Scatter each group (label -> (boolean mask, colour)) semi-transparently, the largest group
    first and the smallest last (on top), so a small group (ID test beside several OOD sets) is not
    buried under a large one. Groups named in ``hollow`` are drawn as open rings, so that the points
    under them stay visible; ``last`` names a group drawn on top regardless of size. Returns one opaque legend handle per group, in the given order:
    ``ax.legend(handles=...)``."""
    from matplotlib.lines import Line2D

    x, y, hollow = np.asarray(x), np.asarray(y), set(hollow)
    order = sorted(groups.items(), key=lambda g: -int(np.sum(g[1][0])))
    if last is not None:  # this group on top instead (small dots inside the larger rings of another)
        order = [g for g in order if g[0] != last] + [g for g in order if g[0] == last]
    for label, (m, c) in order:
        if label in hollow:
            ring = {**kw, "s": 3 * kw.get("s", 4)}  # rings larger than the dots they may surround
            ax.scatter(x[m], y[m], facecolors="none", edgecolors=c, alpha=min(1.0, alpha + 0.2), linewidths=0.5, **ring)
        else:
            ax.scatter(x[m], y[m], color=c, alpha=alpha, linewidths=0, **kw)
    return [
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=4,
            color=c,
            markerfacecolor="none" if label in hollow else c,
            label=label,
        )
        for label, (_, c) in groups.items()
    ]


def legend_outside(fig, handles=None, labels=None, where: str = "right", **kw):
    """One figure legend outside every axes (``where``: 'right' or 'top'), never over data."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    if not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):  # 'outside' needs it
        fig.set_layout_engine("constrained")
    if handles is None:
        handles, labels = fig.axes[0].get_legend_handles_labels()
    loc = {"right": "outside right center", "top": "outside upper center", "bottom": "outside lower center"}[where]
    if where != "right":
        kw.setdefault("ncol", max(1, min(len(handles), 4)))
    return fig.legend(handles, labels, loc=loc, **kw)


# --------------------------------------------------------------------------------------- display names
# One source of truth for what figures call datasets, sets, models, cached arrays, subspaces and devices
# (methods: their registered display names, :func:`ood_core.scores.display_name`). Unknown names are
# shown with underscores as spaces, so that no code name reaches a figure.
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
    "mnist": "MNIST",
    "fashionmnist": "Fashion-MNIST",
    "imagenet": "ImageNet",
    "tinyimagenet": "Tiny ImageNet",
    "dtd": "Textures (DTD)",
    "dtd10": "Textures (DTD, 10 classes)",
    "places365": "Places365",
    "lsun": "LSUN",
    "isun": "iSUN",
    "gaussian_noise": "Gaussian noise",
    "uniform_noise": "Uniform noise",
}
ROLE_NAMES = {
    "id_test": "ID test",
    "train": "training set",
    "id_val": "ID validation",
    "val_tin": "Tiny ImageNet validation",
}
MODEL_NAMES = {
    "resnet18_cifar": "ResNet-18",
    "wrn28_10": "WRN-28-10",
    "small_cnn": "small CNN",
    "resnet50_tv": "ResNet-50 (torchvision)",
}
ARRAY_NAMES = {
    "h": "penultimate features h",
    "logits": "logits",
    "y": "labels",
    "kl_allw_sqnorm": "‖∇KL(u‖p)‖² (all weights)",
    "grodin_sqnorm": "‖∇CE‖² (all weights)",
    "odin_s": "perturbed max softmax S",
    "odin_T": "temperature T",
    "odin_eps": "perturbation ε",
}
SUBSPACE_NAMES = {
    "pca": "PCA",
    "avg": "class means",
    "class_mean": "class means",
    "pca_last_block": "PCA of the last block",
}
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU"}
DISPLAY_NAMES: dict[str, str] = {
    **DATASET_NAMES,
    **ROLE_NAMES,
    **MODEL_NAMES,
    **ARRAY_NAMES,
    **DEVICE_NAMES,
    **{f"lowdim_{k}": f"low-dim gradients ({v})" for k, v in SUBSPACE_NAMES.items()},
}
_CORRUPTED = re.compile(r"^(?P<base>[a-z0-9]+?)c_(?P<kind>[a-z_]+?)(?P<sev>\d)$")


def display(name: str, kind: str = "") -> str:
    """What a figure calls ``name``: a dataset / set / model / array / device from the tables above, a
    corrupted set ``<dataset>c_<corruption><severity>`` as 'CIFAR-10-C <corruption> (sev. s)', a
    subspace (``kind='subspace'``), a registered method (its display name), else the name with spaces."""
    name = str(name)
    if kind == "subspace" and name in SUBSPACE_NAMES:
        return SUBSPACE_NAMES[name]
    if name in DISPLAY_NAMES:
        return DISPLAY_NAMES[name]
    head, sep, rest = name.replace(":", " ", 1).partition(" ")
    if sep and head in DEVICE_NAMES:  # 'cpu (synthetic)', 'cuda:0'
        return f"{DEVICE_NAMES[head]} {rest}"
    m = _CORRUPTED.match(name)
    if m and m["base"] in DATASET_NAMES:
        kind = m["kind"].replace("_", " ").replace("gaussian", "Gaussian")
        return f"{DATASET_NAMES[m['base']]}-C {kind} (sev. {m['sev']})"
    from ood_core.scores import display_name  # a method (lazy: importing the style stays light)

    shown = display_name(name)
    return shown if shown != name else name.replace("_", " ")


def set_name(name: str, id_name: str = "", id_dataset: str = "") -> str:
    """A set's name in figures: the ID test set as '<dataset> test (ID)', others by :func:`display`."""
    if name == id_name:
        return f"{DATASET_NAMES[id_dataset]} test (ID)" if id_dataset in DATASET_NAMES else "ID test"
    return display(name)


# method code names that are also plain words of a caption ("log scale", "energy"): not flagged
PLAIN_WORDS = {"scale", "energy", "react", "dice", "gen"}


def code_names(cache) -> set[str]:
    """Names a figure of ``cache`` must never show verbatim: its sets, model, array keys, subspaces,
    device and every registered method whose display name differs (code names equal to their display
    name, such as 'logits', and names shorter than 3 characters, such as 'h', are left out)."""
    from ood_core.scores.registry import names as method_names

    meta = cache.meta
    names = {cache.id_name, *cache.ood_names, str(meta.get("train", "")), str(meta.get("model", ""))}
    names |= {str(meta.get("device", "")), *map(str, meta.get("lowdim_subspaces", []))}
    for n in [cache.id_name, *cache.ood_names]:
        names |= set(cache.arrays(n).keys())
    names |= set(method_names()) - PLAIN_WORDS
    names |= set(DISPLAY_NAMES)
    return {n for n in names if len(n) >= 3 and display(n) != n}


def figure_texts(fig) -> list[str]:
    """Every non-empty visible text of ``fig``: titles, axis labels, tick labels, legends, annotations."""
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


_SNAKE = re.compile(r"\b[A-Za-z0-9]+_[A-Za-z0-9_]*[A-Za-z0-9]\b")  # a snake_case word


def code_names_in(fig, codes: Iterable[str]) -> list[str]:
    """The texts of ``fig`` that show a code name: one of ``codes`` as a whole word (case-sensitive),
    or any snake_case word outside mathtext."""
    pats = [re.compile(rf"(?<![A-Za-z0-9_]){re.escape(c)}(?![A-Za-z0-9_])") for c in sorted(codes)]
    bad = []
    for t in figure_texts(fig):
        plain = re.sub(r"\$[^$]*\$", " ", t)  # mathtext ($G_{low}$) may hold underscores
        if _SNAKE.search(plain) or any(p.search(plain) for p in pats):
            bad.append(t)
    return bad


def _atomic_save(fig, path: Path, **kw) -> None:
    fmt = path.suffix.lstrip(".")
    if fmt == "pdf":  # no creation date: re-running a notebook leaves unchanged figures byte-identical
        kw.setdefault("metadata", {"CreationDate": None})
    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, format=fmt, **kw)


def savefig(fig, fig_dir, name: str, formats: tuple[str, ...] = ("png", "pdf"), *, numbers=None, **kw) -> list[Path]:
    """Write ``fig`` to ``<fig_dir>/<name>.{png,pdf}`` atomically (temp file then os.replace) and, given
    ``numbers`` (a DataFrame of what the figure shows), ``<fig_dir>/<name>.csv`` beside them: the one
    place that writes a figure and its numbers.

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
    if numbers is not None:
        out.append(write_text(fig_dir, f"{name}.csv", numbers.to_csv(index=False)))
    return out


def write_text(fig_dir, name: str, text: str) -> Path:
    """Atomically write a small text artefact (e.g. a Markdown table) next to the figures."""
    return _write_text(Path(fig_dir) / name, text)
