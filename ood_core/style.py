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
colours from :func:`ood_colors` (same set -> same colour in every notebook).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import matplotlib

from .cache import atomic_path
from .cache import write_text as _write_text

COLUMN_WIDTH = 3.25  # inches, one column of a two-column paper
TEXT_WIDTH = 6.75  # inches, full text width
FONT_SIZE = 8
DPI = 200

# seaborn "colorblind" palette (hard-coded so that importing this module needs no seaborn)
PALETTE = [
    "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc",
    "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9",
]
ID_COLOR = PALETTE[0]
OOD_COLOR = "0.6"
# OOD sets are drawn from the palette minus the ID colour and the grey
_OOD_CYCLE = [c for c in PALETTE[1:] if c != "#949494"]

RC = {
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
