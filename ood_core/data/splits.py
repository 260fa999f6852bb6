"""Deterministic validation / test splits of an evaluation set (tuning uses only the val part)."""

from __future__ import annotations

import zlib

import numpy as np

from ood_core.data.base import fail


def split_indices(n: int, n_val: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (val_idx, test_idx): disjoint, sorted int64, covering range(n).

    ``n_val`` is a count (int) or a fraction of n (float in (0, 1)); the same (n, n_val, seed)
    always gives the same split. Raises ValueError unless 0 < n_val < n.
    """
    if isinstance(n_val, (float, np.floating)):
        if not 0.0 < n_val < 1.0:
            raise ValueError(f"split_indices: fractional n_val must be in (0, 1), got {n_val}")
        k = int(round(n_val * n))
    else:
        k = int(n_val)
    if k <= 0 or k >= n:
        raise ValueError(f"split_indices: need 0 < n_val < n, got n_val={n_val} ({k} samples) for n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:k]).astype(np.int64), np.sort(perm[k:]).astype(np.int64)


def assert_disjoint(val_idx: np.ndarray, test_idx: np.ndarray, name: str) -> None:
    """Raise ``DatasetError`` if the validation and test indices of ``name`` share any index."""
    common = np.intersect1d(np.asarray(val_idx), np.asarray(test_idx))
    if common.size:
        raise fail(
            name,
            None,
            f"validation and test indices overlap in {common.size} indices "
            f"(first: {common[:5].tolist()}); expected disjoint splits",
        )


def set_split(name: str, n: int, n_val: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The study's validation / test split of evaluation set ``name`` (``n`` rows): :func:`split_indices`
    with a permutation of its own per set name (``seed + crc32(name) % 10_000``)."""
    return split_indices(n, n_val, int(seed) + zlib.crc32(name.encode()) % 10_000)
