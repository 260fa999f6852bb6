"""Where the extraction orchestrator (:func:`ood_core.extraction.orchestrator.extract_sets`) keeps what it computes.

* :class:`MemoryStore`: every set's arrays in memory, nothing reused between calls (the Python API).
* :class:`DiskStore`: the analysis cache of the pipeline (layout in ``ood_core/analysis_cache.py``):
  ``arrays/<set>.npz`` and ``lowdim/<subspace>.pt``, each stamped with the key of what it was made
  from and reused when the key matches, and ``parts/<tag>.rank<r>of<w>.npz``, one rank's finished
  shard under torchrun, kept until its set is joined so that a killed launch continues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ood_core.analysis_cache import arrays_file
from ood_core.cache import atomic_path, cached_npz, load_npz, save_npz, zip_problem

Arrays = dict[str, np.ndarray]


class ExtractStore(Protocol):
    """What the orchestrator reads and writes; ``key`` identifies what an entry was made from."""

    def load(self, name: str, key: str) -> Arrays | None:
        """Set ``name``'s stored arrays when stored under ``key``, else None."""
        ...

    def save(self, name: str, key: str, arrays: Arrays) -> None: ...

    def get(self, name: str) -> Arrays:
        """Set ``name``'s arrays (saved or loaded before)."""
        ...

    def load_subspace(self, name: str, key: str) -> dict[str, Any] | None:
        """``{"V", "mean", "scale"}`` (CPU tensors; whitening absent when none) stored under ``key``."""
        ...

    def save_subspace(self, name: str, key: str, blob: dict[str, Any]) -> None: ...

    def has_subspace(self, name: str, key: str) -> bool:
        """True when :meth:`load_subspace` would return the subspace (its tensors not read)."""
        ...

    def load_part(self, tag: str, key: str) -> Arrays | None: ...

    def save_part(self, tag: str, key: str, arrays: Arrays) -> None: ...

    def get_part(self, tag: str) -> Arrays: ...

    def remove_parts(self, name: str) -> None:
        """Drop every part of set ``name`` (once its joined arrays are saved)."""
        ...

    def subspace_checkpoint(self, name: str, key: str) -> PassCheckpoint | None:
        """Where subspace ``name``'s fit keeps its finished passes (None: nowhere)."""
        ...


class MemoryStore:
    """Arrays in memory; subspaces are fitted anew on every call."""

    def __init__(self) -> None:
        self.arrays: dict[str, Arrays] = {}
        self._keys: dict[str, str] = {}
        self._parts: dict[str, tuple[str, Arrays]] = {}

    def load(self, name: str, key: str) -> Arrays | None:
        return self.arrays[name] if self._keys.get(name) == key else None

    def save(self, name: str, key: str, arrays: Arrays) -> None:
        self.arrays[name], self._keys[name] = arrays, key

    def get(self, name: str) -> Arrays:
        return self.arrays[name]

    def load_subspace(self, name: str, key: str) -> dict[str, Any] | None:
        return None

    def save_subspace(self, name: str, key: str, blob: dict[str, Any]) -> None:
        pass

    def has_subspace(self, name: str, key: str) -> bool:
        return False

    def load_part(self, tag: str, key: str) -> Arrays | None:
        kept = self._parts.get(tag)
        return kept[1] if kept is not None and kept[0] == key else None

    def save_part(self, tag: str, key: str, arrays: Arrays) -> None:
        self._parts[tag] = (key, arrays)

    def get_part(self, tag: str) -> Arrays:
        return self._parts[tag][1]

    def remove_parts(self, name: str) -> None:
        for tag in [t for t in self._parts if t.split(".")[0] == name]:
            del self._parts[tag]

    def subspace_checkpoint(self, name: str, key: str) -> PassCheckpoint | None:
        return None


class DiskStore:
    """The analysis cache under ``analysis_dir`` (subspaces in ``lowdim_dir``); ``force`` ignores what
    is stored; ``log`` receives one line per set reused, or recomputed because its file changed."""

    def __init__(
        self, analysis_dir: Path, lowdim_dir: Path, *, force: bool = False, log: Callable[[str], None] = print
    ) -> None:
        self.root, self.lowdim_dir, self.force, self.log = Path(analysis_dir), Path(lowdim_dir), force, log

    @property
    def parts_dir(self) -> Path:
        return self.root / "parts"

    def load(self, name: str, key: str) -> Arrays | None:
        if self.force:
            return None
        arrays, why = cached_npz(arrays_file(self.root, name), key)
        if arrays is not None:
            self.log(f"cached: {name}")
        else:
            line = recompute_line(name, why, finished=(self.root / "meta.json").is_file())
            if line:
                self.log(line)
        return arrays

    def save(self, name: str, key: str, arrays: Arrays) -> None:
        save_npz(arrays_file(self.root, name), arrays, key=key)

    def get(self, name: str) -> Arrays:
        return load_npz(arrays_file(self.root, name))

    def _subspace_file(self, name: str) -> Path:
        return self.lowdim_dir / f"{name}.pt"

    def load_subspace(self, name: str, key: str) -> dict[str, Any] | None:
        path = self._subspace_file(name)
        if self.force:
            return None
        blob, damage = read_keyed(path, key)
        if damage:
            self.log(f"recomputing subspace '{name}': lowdim/{path.name} is damaged ({damage})")
        return blob

    def has_subspace(self, name: str, key: str) -> bool:
        path = self._subspace_file(name)
        if self.force or not path.is_file():
            return False
        try:  # memory-mapped: the key is read, not V (a damaged file is found by load_subspace)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("key") == key
        except Exception:  # unreadable: load_subspace fits it again
            return False

    def save_subspace(self, name: str, key: str, blob: dict[str, Any]) -> None:
        write_keyed(self._subspace_file(name), key, blob)

    def _part_file(self, tag: str) -> Path:
        return self.parts_dir / f"{tag}.npz"

    def load_part(self, tag: str, key: str) -> Arrays | None:
        return cached_npz(self._part_file(tag), key)[0]

    def save_part(self, tag: str, key: str, arrays: Arrays) -> None:
        save_npz(self._part_file(tag), arrays, key=key)

    def get_part(self, tag: str) -> Arrays:
        return load_npz(self._part_file(tag))

    def remove_parts(self, name: str) -> None:
        for p in self.parts_dir.glob(f"{name}.*.rank*of*.npz"):
            p.unlink(missing_ok=True)

    def subspace_checkpoint(self, name: str, key: str) -> PassCheckpoint | None:
        path = self.lowdim_dir / f"{name}.partial.pt"
        if self.force:
            path.unlink(missing_ok=True)
        return PassCheckpoint(path, key, log=self.log)


class PassCheckpoint:
    """A fit's finished passes in one file (``torch.save`` of a dict, written atomically), valid
    under ``key`` only: an interrupted fit reruns from its last saved pass. A missing, damaged or
    other-key file is an empty state (a damaged one is reported)."""

    def __init__(self, path: Path, key: str, *, log: Callable[[str], None] = print) -> None:
        self.path, self.key, self.log = Path(path), key, log
        self.state: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        state, damage = read_keyed(self.path, self.key)
        if damage:
            self.log(f"ignoring {self.path.name}: damaged ({damage}); the fit starts over")
        if not state:
            return {}
        self.log(f"resuming from {self.path.name}: {', '.join(sorted(state))} kept")
        return state

    def update(self, **values: Any) -> None:
        """Merge ``values`` into the state and save it."""
        self.state.update(values)
        write_keyed(self.path, self.key, self.state)

    def clear(self) -> None:
        """The fit is done (and stored): drop the file."""
        self.state = {}
        self.path.unlink(missing_ok=True)


def read_keyed(path: Path, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the dict ``torch.save``d at ``path`` without its ``key`` entry, when stored under ``key``,
    else None; what is damaged in the file, else None). A missing file is neither."""
    damage = zip_problem(path)
    if damage == "missing":
        return None, None
    if damage is not None:
        return None, damage
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("key") != key:
        return None, None
    return {k: v for k, v in blob.items() if k != "key"}, None


def write_keyed(path: Path, key: str, blob: dict[str, Any]) -> None:
    """``blob`` with its ``key`` into ``path`` by ``torch.save``, written atomically."""
    with atomic_path(path, ".pt") as tmp:
        torch.save({**blob, "key": key}, tmp)


def recompute_line(name: str, why: str, finished: bool) -> str | None:
    """The line saying why set ``name`` is extracted though ``arrays/<name>.npz`` was looked for
    (``why``: from ``cached_npz``); None on a first run (no ``meta.json`` yet)."""
    if not why or (why == "is missing" and not finished):
        return None
    verb = "computing" if why == "is missing" else "recomputing"
    return f"{verb} {name}: arrays/{name}.npz {why}"
