"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).
The demo profile uses digits 0-4 as ID and 5-9 as OOD."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ood_core.data.base import ImageSet, PathLike, fail, register_loader

TEST_SIZE = 0.3
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (1797,8,8), y int64, train idx, test idx); read-only, computed once per process."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    d = sk_load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    out = (x, y, np.sort(tr), np.sort(te))
    for a in out:
        a.setflags(write=False)
    return out


@register_loader("digits")
def load_digits(
    root: PathLike | None = None,
    *,
    classes: Sequence[int] | None = None,
    split: str = "all",
) -> ImageSet:
    """8x8 digits, values 0..16 -> uint8 0..255 (round(v * 255 / 16)), 1 channel.

    ``split``: 'train' | 'test' | 'all'; a fixed stratified split of the full set
    (``train_test_split(test_size=0.3, random_state=0, stratify=y)``), made before class
    filtering so the same image is always on the same side. ``classes``: digits to keep; labels
    are re-indexed 0..len-1 in the given order. ``root`` is ignored.
    """
    name = "digits" if classes is None else f"digits{''.join(str(c) for c in classes)}"
    name = f"{name}_{split}"
    if split not in ("train", "test", "all"):
        raise fail(name, "sklearn", f"split must be 'train', 'test' or 'all', got '{split}'")
    x, y, tr, te = _digits_arrays()
    idx = {"all": np.arange(len(y)), "train": tr, "test": te}[split]
    names = [str(c) for c in range(10)]
    if classes is not None:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c <= 9]
        if bad or len(set(classes)) != len(classes):
            raise fail(name, "sklearn", f"classes must be distinct digits 0..9, got {classes}")
        lut = np.full(10, -1, dtype=np.int64)
        lut[classes] = np.arange(len(classes))
        idx = idx[lut[y[idx]] >= 0]
        y = lut[y]
        names = [str(c) for c in classes]
    return ImageSet(name, x[idx], y[idx], names, "sklearn.datasets.load_digits")
