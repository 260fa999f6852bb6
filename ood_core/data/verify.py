"""Size + sha256 checks of data files, cached in a JSON stamp keyed by (path, size, mtime)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Mapping

from ood_core.cache import sha256_file, write_json
from ood_core.data.base import PathLike, fail

# shared/data (see its MANIFEST.md): file -> (size in bytes, sha256)
SHARED_DATA_MANIFEST: dict[str, tuple[int, str]] = {
    "cifar10_train.npz": (140698128, "6af2c99ab81cfd0517ab15c9666caf1b0c5cfbb2ac2db4e64c1800acb4990758"),
    "cifar10_test.npz": (28174001, "49049eca2a7619e64b6de73e604e117949c7f4c7d97fea42c4ca31a39e9e8cbf"),
    "tinyimagenet_val_resize32.npz": (28601006, "a0bccdc39e38bd859183d842d3a7b066aaaedda5fe71102d04ebed25fe005b52"),
    "dtd_partial10cls_resize32.npz": (3080370, "8937d87bf48afbcfe7f18f92ffd44bb12608e435e495bead7eda9aaec4228f32"),
    "mnist_test.npz": (1641608, "fe03ede69adf7bb5408464916ac4f1d4cd475510fdfb08add4409b34f0a435ec"),
}

# A file modified less than this long before it was hashed may change again within the same
# mtime tick, so its result is not cached (git's "racily clean" rule).
RACY_SECONDS = 2.0


def shared_data_dir() -> Path:
    """``$OOD_SHARED_DATA`` if set, else ``shared/data`` beside the repository."""
    env = os.environ.get("OOD_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def default_stamp_path() -> Path:
    """``$OOD_VERIFY_STAMP`` if set, else ``~/.cache/ood_core/verified_files.json``."""
    env = os.environ.get("OOD_VERIFY_STAMP")
    return Path(env) if env else Path.home() / ".cache" / "ood_core" / "verified_files.json"


def read_sha256_list(path: PathLike) -> dict[str, tuple[int | None, str]]:
    """Parse ``sha256sum`` output (``<hex>  <file>`` per line; '#' comments) -> {file: (None, hex)}."""
    out: dict[str, tuple[int | None, str]] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, fname = line.partition(" ")
        out[fname.strip().lstrip("*")] = (None, digest.lower())
    return out


def _load_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_stamp(path: Path, stamp: dict) -> None:
    try:
        write_json(path, stamp)
    except OSError as e:  # a read-only cache must not stop a run
        warnings.warn(f"verify_files: could not write stamp {path}: {e}")


def verify_files(
    manifest: Mapping[str, tuple[int | None, str]] | PathLike,
    root: PathLike,
    *,
    stamp: PathLike | None = None,
) -> list[Path]:
    """Check size and sha256 of every file of ``manifest`` under ``root``; return the paths.

    ``manifest``: {relative path: (size or None, sha256)} or the path of a sha256 list. A file
    whose (path, size, mtime) matches an entry of the JSON ``stamp`` with the same sha256 is not
    re-hashed. Raises ``DatasetError`` naming the file, expected and actual value on mismatch.
    """
    entries = read_sha256_list(manifest) if isinstance(manifest, (str, Path)) else dict(manifest)
    stamp_path = Path(stamp) if stamp is not None else default_stamp_path()
    cache = _load_stamp(stamp_path)
    changed = False
    paths = []
    for rel, (size, digest) in sorted(entries.items()):
        p = (Path(root) / rel).resolve()
        if not p.is_file():
            raise fail(rel, p, f"file not found; expected {size if size is not None else '?'} bytes, sha256 {digest}")
        st = p.stat()
        if size is not None and st.st_size != size:
            raise fail(rel, p, f"size mismatch: expected {size} bytes, got {st.st_size}")
        key = str(p)
        hit = cache.get(key)
        if (
            hit
            and hit.get("size") == st.st_size
            and hit.get("mtime_ns") == st.st_mtime_ns
            and hit.get("sha256") == digest
        ):
            paths.append(p)
            continue
        actual = sha256_file(p)
        if actual != digest.lower():
            raise fail(rel, p, f"sha256 mismatch: expected {digest}, got {actual}")
        if time.time() - st.st_mtime >= RACY_SECONDS:
            cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual}
            changed = True
        paths.append(p)
    if changed:
        _save_stamp(stamp_path, cache)
    return paths
