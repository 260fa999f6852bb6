"""Generated OOD sets of pure noise (seeded), from the ODIN paper: Liang, Li & Srikant,
"Enhancing the reliability of out-of-distribution image detection in neural networks", ICLR 2018
(Sec. 4.1: 10,000 images each)."""

from __future__ import annotations

import numpy as np

from ood_core.data.base import ImageSet, PathLike, register_loader


def _to_uint8(v: np.ndarray) -> np.ndarray:
    return np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


@register_loader("gaussian_noise_images")
def gaussian_noise_images(
    root: PathLike | None = None, *, n: int = 10000, size: int = 32, channels: int = 3, seed: int = 0
) -> ImageSet:
    """ODIN's Gaussian set: every value i.i.d. N(0.5, 1) (unit variance), clipped to [0, 1],
    then quantised to uint8 (round(v * 255)). Labels are -1. ``root`` is ignored."""
    rng = np.random.default_rng(seed)
    x = _to_uint8(0.5 + rng.standard_normal((n, size, size, channels), dtype=np.float32))
    return ImageSet("gaussian_noise_images", x, np.full(n, -1, dtype=np.int64), None, f"generated(seed={seed})")


@register_loader("uniform_noise_images")
def uniform_noise_images(
    root: PathLike | None = None, *, n: int = 10000, size: int = 32, channels: int = 3, seed: int = 0
) -> ImageSet:
    """ODIN's uniform set: every value i.i.d. U[0, 1], quantised to uint8 (round(v * 255)).
    Labels are -1. ``root`` is ignored."""
    rng = np.random.default_rng(seed)
    x = _to_uint8(rng.random((n, size, size, channels), dtype=np.float32))
    return ImageSet("uniform_noise_images", x, np.full(n, -1, dtype=np.int64), None, f"generated(seed={seed})")
