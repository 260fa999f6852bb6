"""The one reader of an analysis directory (notebooks, benchmark, costs, ``analysis.score``), and
the writer of its scores.

Layout (written by the pipeline stages, see docs/architecture.md)::

    <analysis_dir>/meta.json           profile, model, class names, dataset roles, grids   (extract stage)
    <analysis_dir>/arrays/<name>.npz   h, logits, y, odin_*, grodin_sqnorm, kl_allw_sqnorm,
                                       lowdim_<subspace>                                     (extract stage)
    <analysis_dir>/head.npz            W (C, D), b (C,)                                      (extract stage)
    <analysis_dir>/splits.npz          <name>__val, <name>__test index arrays                (extract stage)
    <analysis_dir>/timings.csv         method, seconds_per_1000, device, batch_size         (extract stage)
    <analysis_dir>/scores/<name>.npz   one key per method: test-part scores (float64), higher = ID; (benchmark)
                                       ``_test_idx`` = the rows of arrays/<name>.npz scored; in the ID
                                       file ``<method>__vs__<ood>`` where parameters differ per OOD set;
                                       ``_protocol`` = the tuning protocol they were scored under (the
                                       headline protocol; ``benchmark.protocol``)
    <analysis_dir>/scores/<protocol>/<name>.npz   the same under each other protocol reported
                                       (``benchmark.protocols``; read with ``AnalysisCache(..., scores_of=protocol)``)

meta.json's roles: ``train``, ``id_test``, ``ood`` {name: group} and, when the profile has validation
sets, ``validation`` {``id``: the ID validation set, ``ood``: [OOD validation sets]} (tuning only).

    cache = AnalysisCache("../cache/demo/analysis")
    h = cache.arrays(cache.meta["id_test"])["h"]
    for name in cache.ood_names: ...
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ood_core.cache import DamagedFileError, load_npz, save_npz
from ood_core.extraction.grid import GRID_AXIS_KEYS, GRID_VALUE_KEYS
from ood_core.reporting.table_render import markdown_grid

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
TEST_IDX_KEY = "_test_idx"  # in scores/<name>.npz: the rows of arrays/<name>.npz that were scored
PROTOCOL_KEY = "_protocol"  # in scores/<name>.npz: the tuning protocol the scores were made under
SCORES_META_KEYS = (TEST_IDX_KEY, PROTOCOL_KEY)  # the members of scores/<name>.npz that are not scores


def arrays_file(analysis_dir: Path, name: str) -> Path:
    """``<analysis_dir>/arrays/<name>.npz``: dataset ``name``'s extracted arrays."""
    return Path(analysis_dir) / "arrays" / f"{name}.npz"


class AnalysisCacheError(ValueError):
    """A file of the analysis directory is there but fails a check; the message is one line naming
    the file, the dataset and what was expected."""


class MissingSplitError(AnalysisCacheError, KeyError):
    """splits.npz has no validation/test part for a dataset (a KeyError too, for callers that look up)."""

    __str__ = ValueError.__str__  # the plain message, not KeyError's quoted repr


def _missing(path: Path, what: str) -> FileNotFoundError:
    producer = PRODUCERS.get(what, "an earlier pipeline stage")
    return FileNotFoundError(f"{path} not found; it is produced by {producer}. Run that stage first.")


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an npz (the cache-key field left out, every member's CRC checked); a missing
    file names its producer, a damaged one (AnalysisCacheError) the command that rebuilds it."""
    if not path.is_file():
        raise _missing(path, what)
    try:
        return load_npz(path)
    except DamagedFileError as e:
        producer = PRODUCERS.get(what, "the pipeline stage that wrote it")
        raise AnalysisCacheError(f"{e}; rebuild it by rerunning {producer}, or ./run_all.sh") from None


class AnalysisCache:
    """Memoised reader of one analysis directory: meta, arrays, head, validated splits, scores,
    timings; and the writer of its ``scores/<name>.npz`` (atomic, ``cache.save_npz``).

    ``arrays_dir`` / ``head_file`` point the reader at arrays kept elsewhere (``analysis.score``);
    ``scores_of`` reads and writes the scores of another protocol than the headline (``scores/<protocol>/``)."""

    def __init__(
        self,
        analysis_dir: str | Path,
        *,
        arrays_dir: str | Path | None = None,
        head_file: str | Path | None = None,
        scores_of: str | None = None,
    ):
        self.root = Path(analysis_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"analysis directory {self.root.resolve()} does not exist; it is produced by "
                f"{PRODUCERS['arrays']} (then the score stage). Run the pipeline for this profile first."
            )
        self.arrays_dir = Path(arrays_dir) if arrays_dir is not None else self.root / "arrays"
        self.head_file = Path(head_file) if head_file is not None else self.root / "head.npz"
        self.scores_dir = self.root / "scores" / (scores_of or "")  # None: the headline protocol's scores
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._scores: dict[str, dict[str, np.ndarray]] = {}
        self._split: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:
        return f"AnalysisCache({str(self.root)!r})"

    # ---- metadata -------------------------------------------------------------------------------
    @cached_property
    def meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        if not path.is_file():
            raise _missing(path, "meta.json")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise AnalysisCacheError(f"{path}: not valid JSON ({e}); rerun {PRODUCERS['meta.json']}") from None

    def meta_field(self, key: str) -> Any:
        """A required field of meta.json (a one-line error naming the file when absent)."""
        if key not in self.meta:
            raise AnalysisCacheError(
                f"{self.root / 'meta.json'} has no '{key}' (keys: {sorted(self.meta)}); rerun {PRODUCERS['meta.json']}"
            )
        return self.meta[key]

    @property
    def train_name(self) -> str:
        return self.meta_field("train")

    @property
    def id_name(self) -> str:
        return self.meta_field("id_test")

    @property
    def ood_names(self) -> list[str]:
        """OOD set names in meta order."""
        return list(self.meta.get("ood", {}))

    @property
    def id_val_name(self) -> str | None:
        """The ID validation set (tuning only; None when the profile has no validation sets)."""
        return (self.meta.get("validation") or {}).get("id")

    @property
    def val_ood_names(self) -> list[str]:
        """The OOD validation sets (tuning only, protocol ``openood``), in meta order."""
        return list((self.meta.get("validation") or {}).get("ood", []))

    @property
    def groups(self) -> dict[str, str]:
        """{OOD set: 'near' / 'far'} in meta order."""
        return dict(self.meta.get("ood", {}))

    def group(self, name: str) -> str:
        """'near' / 'far' group of an OOD set ('id' for the ID sets)."""
        return self.meta.get("ood", {}).get(name, "id")

    @property
    def class_names(self) -> list[str] | None:
        """``meta['class_names']``, None when the extract stage had none."""
        names = self.meta.get("class_names")
        return list(names) if names else None

    @property
    def id_dataset(self) -> str:
        """The ID dataset's family (cifar10, cifar100, imagenet, svhn, mnist, ...): ``meta['id_dataset']``,
        else guessed from the training set's name (matches ``reference.REFERENCE``'s id_dataset)."""
        if self.meta.get("id_dataset"):
            return str(self.meta["id_dataset"]).lower()
        raw = "".join(ch for ch in str(self.meta.get("train", "")).lower() if ch.isalnum())
        for known in ("cifar100", "cifar10", "imagenet", "svhn", "mnist"):
            if raw.startswith(known):
                return known
        return raw

    # ---- arrays ---------------------------------------------------------------------------------
    def arrays_path(self, name: str) -> Path:
        return self.arrays_dir / f"{name}.npz"

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """All cached arrays of dataset ``name`` (dict key -> array), loaded once."""
        if name not in self._arrays:
            self._arrays[name] = _read_npz(self.arrays_path(name), "arrays")
        return self._arrays[name]

    def has(self, name: str, key: str) -> bool:
        """True if dataset ``name`` has array ``key`` (False also when the file is missing)."""
        try:
            return key in self.arrays(name)
        except FileNotFoundError:
            return False

    def n_rows(self, name: str) -> int:
        """Number of rows (images) of ``arrays/<name>.npz``."""
        arr = self.arrays(name)
        ref = next((k for k in ("y", "logits", "h") if k in arr), None)
        if ref is None:
            raise AnalysisCacheError(f"{self.arrays_path(name)} has none of y / logits / h (keys: {sorted(arr)})")
        return int(arr[ref].shape[0])

    def lowdim_subspaces(self, name: str | None = None) -> list[str]:
        """Subspaces with a ``lowdim_<subspace>`` array (for ``name``, default the ID test set)."""
        name = name or self.id_name
        try:
            keys = self.arrays(name)
        except FileNotFoundError:
            return []
        return [k[len("lowdim_") :] for k in keys if k.startswith("lowdim_")]

    def head(self) -> dict[str, np.ndarray]:
        """{'W': (C, D), 'b': (C,)} of the linear head."""
        if not hasattr(self, "_head"):
            head = _read_npz(self.head_file, "head.npz")
            missing = [k for k in ("W", "b") if k not in head]
            if missing:
                raise AnalysisCacheError(f"{self.head_file} lacks {missing} (keys: {sorted(head)})")
            self._head = head
        return self._head

    def has_head(self) -> bool:
        return self.head_file.is_file()

    def inputs(self, name: str) -> dict[str, np.ndarray]:
        """What a score function receives for dataset ``name``: its arrays plus the head's W and b."""
        head = self.head()
        return {**self.arrays(name), "W": head["W"], "b": head["b"]}

    # ---- splits ---------------------------------------------------------------------------------
    def splits(self) -> dict[str, np.ndarray]:
        """splits.npz as stored: ``<name>__val`` / ``<name>__test`` index arrays (unchecked)."""
        if not hasattr(self, "_splits"):
            self._splits = _read_npz(self.root / "splits.npz", "splits.npz")
        return self._splits

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(val_idx, test_idx) of dataset ``name``: 1-D integer arrays, disjoint, and (when
        arrays/<name>.npz exists) inside its rows. A failed check raises :class:`AnalysisCacheError`
        (:class:`MissingSplitError` for an absent part) naming splits.npz."""
        if name not in self._split:
            self._split[name] = self._checked_split(name)
        return self._split[name]

    def _checked_split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.root / "splits.npz"
        sp = self.splits()
        kv, kt = f"{name}__val", f"{name}__test"
        if kv not in sp or kt not in sp:
            raise MissingSplitError(
                f"{path} has no split for '{name}' (needs '{kv}' and '{kt}'; "
                f"keys: {sorted(sp)}); rerun {PRODUCERS['splits.npz']}"
            )
        parts = {}
        for part, key in (("val", kv), ("test", kt)):
            a = sp[key]
            if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
                raise AnalysisCacheError(f"{path}: '{key}' must be a 1-D integer index array, got {a.dtype} {a.shape}")
            parts[part] = a.astype(np.int64, copy=False)
        both = np.intersect1d(parts["val"], parts["test"])
        if both.size:
            raise AnalysisCacheError(
                f"{path}: the val and test parts of '{name}' overlap in {both.size} "
                f"index(es) (first: {both[:5].tolist()})"
            )
        if self.arrays_path(name).is_file():
            n = self.n_rows(name)
            for part, a in parts.items():
                if a.size and (a.min() < 0 or a.max() >= n):
                    raise AnalysisCacheError(
                        f"{path}: '{name}__{part}' has indices outside [0, {n}) ({self.arrays_path(name)} has {n} rows)"
                    )
        return parts["val"], parts["test"]

    def test_index(self, name: str) -> np.ndarray | None:
        """Rows of ``arrays/<name>.npz`` in the test part: the scores' ``_test_idx`` when stored
        (that is the order of the stored scores), else ``splits.npz``; None when neither exists."""
        if self.has_scores(name):
            raw = self._raw_scores(name)
            if TEST_IDX_KEY in raw:
                return raw[TEST_IDX_KEY]
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

    # ---- scores ---------------------------------------------------------------------------------
    def scores_path(self, name: str) -> Path:
        return self.scores_dir / f"{name}.npz"

    def _raw_scores(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._scores:
            self._scores[name] = _read_npz(self.scores_path(name), "scores")
        return self._scores[name]

    def scores(self, name: str) -> dict[str, np.ndarray]:
        """{method: test-part scores} of dataset ``name`` (higher = more in-distribution).

        The file's own fields (``_test_idx``, ``_protocol``) are left out; in the ID file a method tuned
        per OOD set appears as ``<method>__vs__<ood>`` (see :meth:`score`)."""
        return {k: v for k, v in self._raw_scores(name).items() if k not in SCORES_META_KEYS}

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
        return self.scores_path(name).is_file()

    def scores_protocol(self, name: str) -> str | None:
        """The tuning protocol ``scores/<name>.npz`` was written under (None: not recorded)."""
        p = self._raw_scores(name).get(PROTOCOL_KEY)
        return None if p is None else str(p)

    def write_scores(self, name: str, scores: Mapping[str, np.ndarray], protocol: str | None = None) -> Path:
        """Atomically write ``scores/<name>.npz``: ``{method: test-part scores}`` as given (float64 as
        scored) plus ``_test_idx`` = the split's test part (the rows they score, in that order) and
        ``_protocol`` when given."""
        payload = {TEST_IDX_KEY: self.split(name)[1], **scores}
        if protocol is not None:
            payload[PROTOCOL_KEY] = np.array(protocol)
        self._scores.pop(name, None)
        return save_npz(self.scores_path(name), payload, compress=False)

    # ---- csv side files -------------------------------------------------------------------------
    def timings_path(self) -> Path:
        return self.root / "timings.csv"

    def timings(self) -> dict[str, dict[str, str]]:
        """timings.csv as {component: row} (row: method, seconds_per_1000, device, batch_size, ... as text)."""
        path = self.timings_path()
        if not path.is_file():
            raise _missing(path, "timings.csv")
        with open(path, newline="") as f:
            return {r["method"]: r for r in csv.DictReader(f)}


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
    rows = [([str(idx)] if index else []) + [fmt(v) for v in row.tolist()] for idx, row in df.iterrows()]
    return markdown_grid(cols, rows) + "\n"
