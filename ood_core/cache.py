"""Content-hash cache keys and atomic writes.

Nothing half-written is ever left under a final name: every writer goes to a temporary file in the
same directory and ``os.replace``-s it into place (atomic on POSIX). A stage's output records the key
of the inputs/config it was made from, and a later run reuses it only when the key matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

KEY_FIELD = "_cache_key"


def stable_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no whitespace) used for hashing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_config(*parts: Any) -> str:
    """sha256 over the canonical JSON of ``parts`` (first 16 hex digits)."""
    return hashlib.sha256(stable_json(list(parts)).encode()).hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz(path: Path, arrays: Mapping[str, np.ndarray], key: str | None = None, *, compress: bool = True) -> Path:
    """Atomically write an npz (compressed unless ``compress=False``); ``key`` (the cache key) is
    stored beside the arrays."""
    data = dict(arrays)
    if key is not None:
        data[KEY_FIELD] = np.array(key)
    with atomic_path(Path(path), ".npz") as tmp:
        with open(tmp, "wb") as f:
            # numpy's stubs type the keyword allow_pickle as bool, which **data (array names) never holds
            (np.savez_compressed if compress else np.savez)(f, **data)  # type: ignore[arg-type]
    return Path(path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an npz (no pickle), dropping the cache-key field."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != KEY_FIELD}


def npz_key(path: Path) -> str | None:
    """The cache key stored in an npz, or None if absent/unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z[KEY_FIELD]) if KEY_FIELD in z.files else None
    except Exception:
        return None


def write_json(path: Path, obj: Any) -> Path:
    """Atomically write pretty JSON."""
    with atomic_path(Path(path), ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Atomically write a text file."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)
    return Path(path)
