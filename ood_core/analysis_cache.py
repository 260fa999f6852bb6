"""Read-only view of one analysis directory, the only input of the notebooks.

Layout (written by the pipeline stages, see docs/architecture.md)::

    <analysis_dir>/meta.json           profile, model, class names, dataset roles, grids   (extract stage)
    <analysis_dir>/arrays/<name>.npz   h, logits, y, odin_*, grodin_sqnorm, kl_allw_sqnorm,
                                       lowdim_<subspace>                                     (extract stage)
    <analysis_dir>/head.npz            W (C, D), b (C,)                                      (extract stage)
    <analysis_dir>/splits.npz          <name>__val, <name>__test index arrays                (extract stage)
    <analysis_dir>/timings.csv         method, seconds_per_1000, device, batch_size         (extract stage)
    <analysis_dir>/scores/<name>.npz   one key per method: test-part scores (float64), higher = ID; (benchmark)
                                       ``_test_idx`` = the rows of arrays/<name>.npz scored; in the ID
                                       file ``<method>__vs__<ood>`` where parameters differ per OOD set

    cache = AnalysisCache("../cache/demo/analysis")
    h = cache.arrays(cache.meta["id_test"])["h"]
    for name in cache.ood_names: ...
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .grid import GRID_AXIS_KEYS, GRID_VALUE_KEYS

# which pipeline stage writes which file (used in error messages)
PRODUCERS = {
    "meta.json": "the extract stage (python -m analysis.extract)",
    "arrays": "the extract stage (python -m analysis.extract)",
    "head.npz": "the extract stage (python -m analysis.extract)",
    "splits.npz": "the extract stage (python -m analysis.extract)",
    "scores": "the benchmark stage (python -m analysis.benchmark)",
    "timings.csv": "the extract stage (python -m analysis.extract)",
    "metrics.csv": "the benchmark stage (python -m analysis.benchmark)",
}


def _missing(path: Path, what: str) -> FileNotFoundError:
    producer = PRODUCERS.get(what, "an earlier pipeline stage")
    return FileNotFoundError(f"{path} not found; it is produced by {producer}. Run that stage first.")


class AnalysisCache:
    """Lazy, memoised loader of the arrays, head, splits and scores of one analysis directory."""

    def __init__(self, analysis_dir: str | Path):
        self.root = Path(analysis_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"analysis directory {self.root.resolve()} does not exist; it is produced by "
                f"{PRODUCERS['arrays']} (then the score stage). Run the pipeline for this profile first."
            )
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._scores: dict[str, dict[str, np.ndarray]] = {}

    def __repr__(self) -> str:
        return f"AnalysisCache({str(self.root)!r})"

    # ---- metadata -------------------------------------------------------------------------------
    @cached_property
    def meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        if not path.is_file():
            raise _missing(path, "meta.json")
        return json.loads(path.read_text())

    @property
    def train_name(self) -> str:
        return self.meta["train"]

    @property
    def id_name(self) -> str:
        return self.meta["id_test"]

    @property
    def ood_names(self) -> list[str]:
        """OOD set names in meta order."""
        return list(self.meta.get("ood", {}))

    def group(self, name: str) -> str:
        """'near' / 'far' group of an OOD set ('id' for the ID sets)."""
        return self.meta.get("ood", {}).get(name, "id")

    @property
    def class_names(self) -> list[str]:
        c = int(self.meta.get("num_classes", 0))
        return list(self.meta.get("class_names") or [str(i) for i in range(c)])

    # ---- arrays ---------------------------------------------------------------------------------
    def _npz(self, path: Path, what: str) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise _missing(path, what)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """All cached arrays of dataset ``name`` (dict key -> array), loaded once."""
        if name not in self._arrays:
            self._arrays[name] = self._npz(self.root / "arrays" / f"{name}.npz", "arrays")
        return self._arrays[name]

    def has(self, name: str, key: str) -> bool:
        """True if dataset ``name`` has array ``key`` (False also when the file is missing)."""
        try:
            return key in self.arrays(name)
        except FileNotFoundError:
            return False

    def lowdim_subspaces(self, name: str | None = None) -> list[str]:
        """Subspaces with a ``lowdim_<subspace>`` array (for ``name``, default the ID test set)."""
        name = name or self.id_name
        try:
            keys = self.arrays(name)
        except FileNotFoundError:
            return []
        return [k[len("lowdim_"):] for k in keys if k.startswith("lowdim_")]

    def head(self) -> dict[str, np.ndarray]:
        """{'W': (C, D), 'b': (C,)} of the linear head."""
        if not hasattr(self, "_head"):
            self._head = self._npz(self.root / "head.npz", "head.npz")
        return self._head

    def splits(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "_splits"):
            self._splits = self._npz(self.root / "splits.npz", "splits.npz")
        return self._splits

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(val_idx, test_idx) of dataset ``name``."""
        sp = self.splits()
        kv, kt = f"{name}__val", f"{name}__test"
        if kv not in sp or kt not in sp:
            raise KeyError(f"splits.npz has no split for '{name}' (keys: {sorted(sp)})")
        return sp[kv], sp[kt]

    def test_index(self, name: str) -> np.ndarray | None:
        """Rows of ``arrays/<name>.npz`` in the test part: the scores' ``_test_idx`` when stored
        (that is the order of the stored scores), else ``splits.npz``; None when neither exists."""
        if self.has_scores(name):
            raw = self._raw_scores(name)
            if "_test_idx" in raw:
                return raw["_test_idx"]
        try:
            return self.split(name)[1]
        except (FileNotFoundError, KeyError):
            return None

    def test_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Per-sample arrays of ``name`` restricted to its test part (grid arrays indexed on N),
        in the order of the stored scores. All rows when there is no split."""
        arr = self.arrays(name)
        idx = self.test_index(name)
        if idx is None:
            return dict(arr)
        ref = next((k for k in ("y", "logits", "h") if k in arr), None)
        n = arr[ref].shape[0] if ref else len(idx)
        out = {}
        for k, v in arr.items():
            if k in GRID_AXIS_KEYS:
                out[k] = v
            elif v.ndim >= 1 and v.shape[-1] == n and k in GRID_VALUE_KEYS:
                out[k] = v[..., idx]
            elif v.ndim >= 1 and v.shape[0] == n:
                out[k] = v[idx]
            else:
                out[k] = v
        return out

    def _raw_scores(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._scores:
            self._scores[name] = self._npz(self.root / "scores" / f"{name}.npz", "scores")
        return self._scores[name]

    def scores(self, name: str) -> dict[str, np.ndarray]:
        """{method: test-part scores} of dataset ``name`` (higher = more in-distribution).

        Private keys (``_test_idx``) are left out; in the ID file a method tuned per OOD set appears
        as ``<method>__vs__<ood>`` (see :meth:`score`)."""
        return {k: v for k, v in self._raw_scores(name).items() if not k.startswith("_")}

    def score(self, name: str, method: str, ood: str | None = None) -> np.ndarray | None:
        """Stored test-part scores of ``method`` on ``name``; for the ID set, ``<method>__vs__<ood>``
        is used when the plain key is absent (``ood`` = None: the first OOD set that has one).
        None when not stored."""
        if not self.has_scores(name):
            return None
        sc = self.scores(name)
        if method in sc:
            return sc[method]
        cands = [f"{method}__vs__{o}" for o in ([ood] if ood else self.ood_names)]
        return next((sc[k] for k in cands if k in sc), None)

    def has_scores(self, name: str) -> bool:
        return (self.root / "scores" / f"{name}.npz").is_file()

    # ---- csv side files -------------------------------------------------------------------------
    def timings_path(self) -> Path:
        return self.root / "timings.csv"


def read_csv(path: str | Path, what: str | None = None):
    """Read a CSV with pandas; a missing file raises FileNotFoundError naming its producing stage."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what or path.name)
    import pandas as pd

    return pd.read_csv(path)


def to_markdown(df, floatfmt: str = ".3f", index: bool = True) -> str:
    """A pandas DataFrame as a GitHub Markdown table (no ``tabulate`` dependency)."""
    import pandas as pd

    def fmt(v) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v)

    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        cells = ([str(idx)] if index else []) + [fmt(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
