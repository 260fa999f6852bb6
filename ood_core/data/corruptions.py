"""Common corruptions after Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019 (CIFAR-10-C, ``make_cifar_c.py``).

Re-implemented with numpy / scipy.ndimage / scikit-image (no OpenCV, no downloads), vectorised
over the batch, seeded with ``np.random.default_rng(seed)``. Like CIFAR-10-C, the float result in
[0, 255] is stored with ``np.uint8`` (truncation). Parameters per severity (1..5) are the CIFAR-10-C
constants:

| corruption     | parameter                         | s=1          | s=2          | s=3          | s=4          | s=5          |
|----------------|-----------------------------------|--------------|--------------|--------------|--------------|--------------|
| gaussian_noise | noise std                         | 0.04         | 0.06         | 0.08         | 0.09         | 0.10         |
| shot_noise     | Poisson rate                      | 500          | 250          | 100          | 75           | 50           |
| impulse_noise  | salt-and-pepper amount            | 0.01         | 0.02         | 0.03         | 0.05         | 0.07         |
| speckle_noise  | multiplicative noise std          | 0.06         | 0.10         | 0.12         | 0.16         | 0.20         |
| gaussian_blur  | sigma                             | 0.4          | 0.6          | 0.7          | 0.8          | 1.0          |
| glass_blur     | (sigma, max_delta, iterations)    | (0.05, 1, 1) | (0.25, 1, 1) | (0.4, 1, 1)  | (0.25, 1, 2) | (0.4, 1, 2)  |
| defocus_blur   | (disk radius, alias blur sigma)   | (0.3, 0.4)   | (0.4, 0.5)   | (0.5, 0.6)   | (1, 0.2)     | (1.5, 0.1)   |
| contrast       | contrast factor                   | 0.75         | 0.5          | 0.4          | 0.3          | 0.15         |
| brightness     | added HSV value                   | 0.05         | 0.1          | 0.15         | 0.2          | 0.3          |
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import ndimage

from ood_core.data.base import ImageSet, PathLike, fail, load_dataset, register_loader

CIFAR_C_PARAMS: dict[str, list[Any]] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.10, 0.12, 0.16, 0.20],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
}

Corruption = Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage ``gaussian(img, sigma, channel_axis=-1)`` on every image of an (N,H,W,C) batch."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)


def _gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(size=x.shape, scale=c)


def _shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x * c) / c


def _impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    from skimage.util import random_noise

    return random_noise(x, mode="s&p", amount=c, rng=rng)


def _speckle_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.normal(size=x.shape, scale=c)


def _gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return _blur(x, c)


def _glass_blur(x: np.ndarray, c: tuple[float, int, int], rng: np.random.Generator) -> np.ndarray:
    """Blur, locally shuffle pixels, blur again. As in ``make_cifar_c.py`` the shuffle scans
    positions bottom-right to top-left and does ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy
    views, which in effect only copies: ``x[h, w] = x[h + dy, w + dx]`` with dx, dy drawn from
    [-max_delta, max_delta - 1]. We reproduce that. With max_delta = 1 (all CIFAR severities) every
    read hits a position not yet written in that pass, so the pass is one vectorised gather over
    the batch; otherwise the scan loops over positions (never over samples)."""
    sigma, delta, iters = c
    y = (_blur(x, sigma) * 255).astype(np.uint8)
    for _ in range(iters):
        y = _glass_shuffle(y, delta, rng, sequential=delta != 1)
    return _blur(y / 255.0, sigma)


def _glass_shuffle(y: np.ndarray, delta: int, rng: np.random.Generator, sequential: bool) -> np.ndarray:
    """One shuffle pass over an (N,H,W,C) batch; offsets are drawn the same way on both paths."""
    n, h, w = y.shape[:3]
    hs, ws = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)
    d = rng.integers(-delta, delta, size=(2, len(hs), len(ws), n))  # (dx, dy) per position, sample
    rows = np.arange(n)
    if not sequential:
        src_h = hs[:, None, None] + d[1]
        src_w = ws[None, :, None] + d[0]
        out = y.copy()
        out[rows, hs[:, None, None], ws[None, :, None]] = y[rows, src_h, src_w]
        return out
    y = y.copy()
    for a, hh in enumerate(hs):
        for b, ww in enumerate(ws):
            y[rows, hh, ww] = y[rows, hh + d[1, a, b], ww + d[0, a, b]]
    return y


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """CIFAR-10-C's aliased disk kernel (17x17 for radius <= 8), blurred like
    ``cv2.GaussianBlur(ksize=3 or 5, sigmaX=alias_blur)`` and cropped to its non-zero support."""
    ksize = 3 if radius <= 8 else 5
    lim = 8 if radius <= 8 else int(np.ceil(radius))
    L = np.arange(-lim, lim + 1)
    X, Y = np.meshgrid(L, L)
    k = ((X**2 + Y**2) <= radius**2).astype(np.float64)
    k /= k.sum()
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g /= g.sum()
    k = ndimage.correlate1d(ndimage.correlate1d(k, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    nz = np.nonzero(k.sum(1))[0]
    r = max(lim - nz.min(), nz.max() - lim)
    return k[lim - r : lim + r + 1, lim - r : lim + r + 1]


def _defocus_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    k = _disk(*c)
    # cv2.filter2D = correlation with BORDER_REFLECT_101 = scipy's 'mirror'
    return ndimage.correlate(x, k[None, :, :, None], mode="mirror")


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def _brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """skimage ``hsv2rgb`` of (H, S, clip(V + c)) in closed form: with H and S fixed every channel
    is proportional to V = max channel, so rgb' = rgb * V' / V (a black pixel becomes grey c)."""
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + c, 0.0, 1.0)
    return np.where(v > 0, x * (v_new / np.where(v > 0, v, 1.0)), v_new)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "glass_blur": _glass_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
}


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply ``corruption`` at ``severity`` (1..5) to uint8 ``(N,H,W[,C])`` images -> uint8, same shape."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption '{corruption}'; known: {', '.join(sorted(CORRUPTIONS))}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"corruption severity must be 1..5, got {severity}")
    if images.dtype != np.uint8:
        raise ValueError(f"corrupt: images must be uint8, got {images.dtype}")
    x = images[..., None] if images.ndim == 3 else images
    rng = np.random.default_rng(seed)
    out = CORRUPTIONS[corruption](x / 255.0, CIFAR_C_PARAMS[corruption][severity - 1], rng)
    out = (np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out.reshape(images.shape)


@register_loader("corrupted")
def load_corrupted(
    root: PathLike | None = None,
    *,
    corruption: str,
    severity: int,
    seed: int = 0,
    base: ImageSet | None = None,
    base_kind: str | None = None,
    base_options: dict[str, Any] | None = None,
) -> ImageSet:
    """A corrupted copy of a base set: ``base=`` an ImageSet, or ``base_kind`` (+ ``base_options``)
    loaded from ``root``. Labels are kept; the name is ``<base>-<corruption>-s<severity>``."""
    if base is None:
        if base_kind is None:
            raise fail(f"corrupted-{corruption}", root, "expected base=<ImageSet> or base_kind=<dataset kind>")
        base = load_dataset(base_kind, root, **(base_options or {}))
    name = f"{base.name}-{corruption}-s{severity}"
    try:
        x = corrupt(base.images, corruption, severity, seed)
    except ValueError as e:
        raise fail(name, base.source, str(e)) from e
    return ImageSet(
        name, x, base.labels.copy(), base.class_names, f"{base.source} + {corruption}(s={severity}, seed={seed})"
    )
