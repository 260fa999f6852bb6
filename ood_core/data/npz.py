"""``npz`` loader: archives with uint8 ``x`` (N,H,W,3) or (N,H,W) and integer ``y``
(the format of ``shared/data/*.npz``; optional ``classes`` holds the class names)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ood_core.data.base import DatasetError, ImageSet, PathLike, fail, register_loader


@register_loader("npz")
def load_npz(
    root: PathLike | None,
    *,
    file: str | None = None,
    x_key: str = "x",
    y_key: str = "y",
) -> ImageSet:
    """Load ``root`` (an .npz file) or ``root/file``; loaded with ``allow_pickle=False``."""
    if root is None:
        raise fail("npz", None, "root is required; expected an .npz file or a directory plus file=")
    path = Path(root).expanduser() / file if file else Path(root).expanduser()
    name = path.name.removesuffix(".npz")
    if not path.is_file():
        raise fail(name, path, "file not found; expected an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (x_key, y_key) if k not in z.files]
            if missing:
                raise fail(
                    name, path, f"missing array(s) {missing}; expected keys '{x_key}' and '{y_key}', found {z.files}"
                )
            x, y = z[x_key], z[y_key]
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise fail(name, path, f"unreadable file ({type(e).__name__}: {e})") from e
    return ImageSet(name, x, y, classes, str(path))
