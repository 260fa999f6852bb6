"""Loaders for image trees: generic ``ImageFolder`` (``<root>/<class>/<img>``: TinyImageNet, LSUN,
iSUN, Places365, ImageNet val, ImageNet-O/A/R, DTD ``images/<class>/``) and ImageNet-C
(``<root>/<corruption>/<severity>/<class>/<img>``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ood_core.data.base import ImageSet, PathLike, fail, register_loader, require_dir

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _decode(path: Path, size: int, crop: int | None) -> np.ndarray:
    """Pillow -> RGB -> bilinear resize to size x size; or, with ``crop``, shorter side to ``size``
    then a centre crop of ``crop`` x ``crop`` (the usual ImageNet 256 -> 224 evaluation)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if crop is None:
            return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - crop) // 2, (h - crop) // 2
        return np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


def list_image_folder(root: Path, max_per_class: int | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, class names): class folders sorted, files sorted within each class."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        fs = sorted(p for p in (root / c).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        fs = fs[:max_per_class] if max_per_class is not None else fs
        files += fs
        labels += [i] * len(fs)
    return files, np.asarray(labels, dtype=np.int64), classes


@register_loader("image_folder")
def load_image_folder(
    root: PathLike | None,
    *,
    size: int = 32,
    crop: int | None = None,
    max_per_class: int | None = None,
    workers: int | None = None,
    name: str | None = None,
) -> ImageSet:
    """Generic ``<root>/<class>/<img>`` tree; every image -> RGB uint8 ``size x size`` (bilinear).
    Decoding runs on ``workers`` threads (Pillow releases the GIL); output order is deterministic."""
    name = name or (Path(root).name if root is not None else "image_folder")
    d = require_dir(name, root, "an ImageFolder tree <root>/<class>/<img>")
    files, labels, classes = list_image_folder(d, max_per_class)
    if not classes:
        raise fail(name, d, "wrong layout: no class folders; expected <root>/<class>/<img>")
    if not files:
        raise fail(
            name, d, f"empty set: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {len(classes)} class folders"
        )

    def one(p: Path) -> np.ndarray:
        try:
            return _decode(p, size, crop)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these on corrupt files
            raise fail(name, p, f"unreadable image file ({type(e).__name__}: {e})") from e

    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(n_workers) as ex:
        x = np.stack(list(ex.map(one, files)))
    return ImageSet(name, x, labels, classes, str(d))


@register_loader("imagenet_c")
def load_imagenet_c(
    root: PathLike | None,
    *,
    corruption: str,
    severity: int,
    size: int = 32,
    crop: int | None = None,
    max_per_class: int | None = None,
    workers: int | None = None,
) -> ImageSet:
    """ImageNet-C tree ``<root>/<corruption>/<severity>/<class>/<img>`` (Hendrycks & Dietterich, 2019)."""
    name = f"imagenet_c-{corruption}-s{severity}"
    d = require_dir(name, root, "<root>/<corruption>/<severity>/<class>/<img>")
    sub = d / corruption / str(severity)
    if not sub.is_dir():
        have = sorted(p.name for p in d.iterdir() if p.is_dir())
        raise fail(name, sub, f"wrong layout: missing <corruption>/<severity> folder; corruptions present: {have}")
    return load_image_folder(sub, size=size, crop=crop, max_per_class=max_per_class, workers=workers, name=name)
