"""The context of one notebook run: the analysis cache, the figure folder, a seeded rng, what was written.

    nb = Session.open(analysis_dir, fig_dir, seed)
    print(nb.summary())
    nb.save(fig, "my_figure", numbers)   # -> fig_dir/my_figure.{png,pdf,csv}, remembered in nb.written
    print(nb.report())

A panel whose optional input is missing is skipped with :func:`note` (``[skip] ...``) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ood_core.analysis_cache import AnalysisCache, read_csv
from ood_core.reporting import style

PARTS = ("val", "test")


def note(msg: str) -> None:
    """Print why a panel is skipped (a missing optional array or file) instead of failing."""
    print(f"[skip] {msg}")


def part_rows(cache: AnalysisCache, name: str, which: str) -> np.ndarray:
    """Rows of dataset ``name`` in its ``which`` ('val' / 'test') part of ``splits.npz``; all rows when
    the cache has no split for it."""
    if which not in PARTS:
        raise ValueError(f"which must be one of {PARTS}, got {which!r}")
    try:
        val, test = cache.split(name)
    except (FileNotFoundError, KeyError):
        return np.arange(len(cache.arrays(name)["y"]))
    return val if which == "val" else test


def set_label(cache: AnalysisCache, name: str) -> str:
    """A set's name in figures (:func:`ood_core.reporting.style.set_name`): the ID test set as 'CIFAR-10 test (ID)'."""
    return style.set_name(name, cache.id_name, cache.id_dataset)


def model_label(cache: AnalysisCache) -> str:
    """The model's name in figures (:func:`ood_core.reporting.style.display`)."""
    return style.display(str(cache.meta.get("model", "")))


def ood_order(names: Iterable[str], ood_names: list[str]) -> list[str]:
    """``names`` without duplicates: the cache's OOD sets in meta order first, then any others sorted."""
    names = list(dict.fromkeys(names))
    return [o for o in ood_names if o in names] + sorted(set(names) - set(ood_names))


def load_table(path: str | Path):
    """A CSV the benchmark wrote as a DataFrame; None (with a skip note) when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        note(f"{path} missing; skipping its figure")
        return None
    df = read_csv(path, path.name)
    if df.empty:
        note(f"{path} is empty; skipping its figure")
        return None
    return df


@dataclass
class Session:
    """One notebook's view of a profile: ``cache`` (read-only), ``fig_dir`` (tables in, figures out),
    ``rng`` (seeded), ``written`` (the files saved so far)."""

    cache: AnalysisCache
    fig_dir: Path
    rng: np.random.Generator
    written: list[Path] = field(default_factory=list)

    @classmethod
    def open(cls, analysis_dir: str | Path, fig_dir: str | Path, seed: int = 0) -> "Session":
        fig_dir = Path(fig_dir)
        fig_dir.mkdir(parents=True, exist_ok=True)
        return cls(AnalysisCache(analysis_dir), fig_dir, np.random.default_rng(seed))

    @property
    def meta(self) -> dict[str, Any]:
        return self.cache.meta

    @property
    def id_name(self) -> str:
        return self.cache.id_name

    @property
    def ood_names(self) -> list[str]:
        return self.cache.ood_names

    @property
    def ood_colors(self) -> dict[str, str]:
        return style.ood_colors(self.ood_names)

    def label(self, name: str) -> str:
        """A set's name in figures (:func:`set_label`)."""
        return set_label(self.cache, name)

    def part(self, name: str, which: str) -> np.ndarray:
        """:func:`part_rows` of this cache."""
        return part_rows(self.cache, name, which)

    def summary(self) -> str:
        """One line: profile, model, ID set, OOD sets, ID accuracy."""
        m = self.meta
        return (
            f"profile={m.get('profile')!r} model={m.get('model')!r} ID={self.id_name!r} OOD={self.ood_names} "
            f"ID accuracy={m.get('id_accuracy', float('nan')):.4f}"
        )

    def save(self, fig, stem: str, numbers) -> list[Path]:
        """``style.savefig`` into ``fig_dir``: PNG + PDF and ``numbers`` (a DataFrame of what the figure
        shows) as ``<stem>.csv``, remembered in ``written``. A text of the figure that still shows a code
        name (:func:`ood_core.reporting.style.code_names_in`) is printed as a warning."""
        bad = style.code_names_in(fig, style.code_names(self.cache))
        if bad:
            print(f"[style] warning: {stem} shows code names in {bad}")
        paths = style.savefig(fig, self.fig_dir, stem, numbers=numbers)
        self.written += paths
        return paths

    def save_text(self, name: str, text: str) -> Path:
        """A small text artefact (Markdown table) beside the figures."""
        path = style.write_text(self.fig_dir, name, text)
        self.written.append(path)
        return path

    def save_numbers(self, name: str, df) -> Path:
        """The numbers a figure shows, as ``<name>.csv`` beside it (what tests compare to the library)."""
        return self.save_text(f"{name}.csv", df.to_csv(index=False))

    def report(self) -> str:
        """The files this session wrote, one per line."""
        return "\n".join(["figures written:", *(f"   {p}" for p in self.written)])
