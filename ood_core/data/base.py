"""Core types of the data package: ``ImageSet``, ``DatasetError`` and the loader registry.

A loader is ``fn(root, **options) -> ImageSet``; it is registered under one or more kinds with
``@register_loader("kind")`` and called through ``load_dataset(kind, root, **options)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

PathLike = str | Path


class DatasetError(ValueError):
    """A data set could not be loaded or failed a check. The message is one line naming the data
    set, the path and what was expected."""


def fail(name: str, path: PathLike | None, what: str) -> DatasetError:
    """Build a one-line ``DatasetError``: ``dataset 'name' (path): what``."""
    where = f" ({path})" if path not in (None, "") else ""
    return DatasetError(f"dataset '{name}'{where}: {what}".replace("\n", " "))


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images kept as uint8 ``(N, H, W, C)`` with C in {1, 3}; labels int64 ``(N,)``.

    A ``(N, H, W)`` array is accepted and stored as ``(N, H, W, 1)``. Label -1 means "no class"
    (generated OOD sets). ``source`` records where the set came from (used in error messages).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        name, src = self.name, self.source
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise fail(name, src, f"images must be uint8, got {got}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise fail(name, src, f"images must be NxHxW or NxHxWx{{1,3}}, got shape {tuple(self.images.shape)}")
        y = np.asarray(y)
        if y.ndim != 1:
            raise fail(name, src, f"labels must be 1-D, got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise fail(name, src, f"labels must be integers, got {y.dtype}")
        if len(x) != len(y):
            raise fail(name, src, f"x and y lengths differ: {len(x)} images vs {len(y)} labels")
        if len(x) == 0:
            raise fail(name, src, "empty set: expected at least one image")
        y = y.astype(np.int64, copy=False)
        if y.min() < -1:
            raise fail(name, src, f"labels must be >= -1 (-1 = no class), got min {y.min()}")
        if self.class_names is not None and y.max() >= len(self.class_names):
            raise fail(name, src, f"label {y.max()} out of range for {len(self.class_names)} class names")
        object.__setattr__(self, "images", x)
        object.__setattr__(self, "labels", y)
        if self.class_names is not None:
            object.__setattr__(self, "class_names", [str(c) for c in self.class_names])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def take(self, idx: np.ndarray, name: str | None = None) -> ImageSet:
        """Subset by indices (a copy)."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(name or self.name, self.images[idx], self.labels[idx], self.class_names, self.source)

    def rows(self, start: int, stop: int) -> ImageSet:
        """Rows ``start:stop`` as a view (no copy). The view keeps the arrays' memory layout, and a
        batch of it is bit-identical to the same batch of the whole set. A copy can differ: torch
        may pick another conv kernel for a 1-channel batch whose strides differ."""
        return ImageSet(self.name, self.images[start:stop], self.labels[start:stop], self.class_names, self.source)

    def check_labels(self, num_classes: int) -> ImageSet:
        """Raise ``DatasetError`` unless every label is in ``0..num_classes-1``."""
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi >= num_classes:
            bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
            raise fail(
                self.name,
                self.source,
                f"labels must be in 0..{num_classes - 1}, got range {lo}..{hi} "
                f"(label {int(self.labels[bad[0]])} at row {int(bad[0])}; {bad.size} row(s) outside; "
                f"check the model's num_classes)",
            )
        return self


Loader = Callable[..., ImageSet]
DATASETS: dict[str, Loader] = {}


def register_loader(*kinds: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader to ``DATASETS`` under each of ``kinds``."""

    def deco(fn: Loader) -> Loader:
        for kind in kinds:
            if kind in DATASETS:
                raise ValueError(f"dataset kind '{kind}' is registered twice")
            DATASETS[kind] = fn
        return fn

    return deco


def check_options(kind: str, name: str, root: PathLike | None, options: dict[str, Any]) -> None:
    """Raise a one-line ``DatasetError`` if the loader of ``kind`` does not take ``options``."""
    loader = DATASETS[kind]
    try:
        inspect.signature(loader).bind(root, **options)
    except TypeError as e:
        takes = [p for p in inspect.signature(loader).parameters if p != "root"]
        raise fail(name, root, f"kind '{kind}': {e} (it takes: {', '.join(takes)})") from None


def load_dataset(
    kind: str,
    root: PathLike | None = None,
    *,
    num_classes: int | None = None,
    name: str | None = None,
    subset: int | None = None,
    subset_seed: int = 0,
    **options: Any,
) -> ImageSet:
    """Load a data set by registry kind (see ``DATASETS``).

    Common options: ``num_classes`` (labels must lie in 0..num_classes-1), ``name`` (rename),
    ``subset`` (a seeded random subset of that many rows, in sorted index order; rows of many
    files are sorted by class, so "the first k" would be biased). Other options go to the loader.
    """
    if kind not in DATASETS:
        raise KeyError(f"unknown dataset kind '{kind}'; known kinds: {', '.join(sorted(DATASETS))}")
    check_options(kind, name or kind, root, options)
    s = DATASETS[kind](root, **options)
    if name is not None:
        s = ImageSet(name, s.images, s.labels, s.class_names, s.source)
    if subset is not None:
        if not 0 < subset <= len(s):
            raise fail(s.name, s.source, f"subset must be in 1..{len(s)}, got {subset}")
        idx = np.sort(np.random.default_rng(subset_seed).choice(len(s), subset, replace=False))
        s = s.take(idx)
    if num_classes is not None:
        s.check_labels(num_classes)
    return s


def require_dir(name: str, root: PathLike | None, expected: str) -> Path:
    """Return ``root`` as a Path, or raise ``DatasetError`` if it is None or not a directory."""
    if root is None:
        raise fail(name, None, f"root is required; expected {expected}")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise fail(name, p, f"root not found; expected {expected}")
    return p
