"""Turn a profile's dataset specs into ``ImageSet``s.

A spec is ``{kind: ..., <loader options>}`` plus five keys handled here: ``path`` (relative to the
data root, becomes the loader's root), ``group`` (near / far / covariate: used by the tables only),
``base`` (for ``kind: corrupted``: the name of another configured set, usually ``id_test``), ``rows``
(keep a seeded random subset of that many images, in their original order: a named cut of a CPU-sized
profile; the subset depends on the profile's ``seed`` and the set's name only) and ``openood_split``
(keep the rows of one of OpenOOD v1.5's CIFAR-10 benchmark lists, e.g. ``test_cifar10``, ``val_cifar10``,
``test_tin``, ``val_tin``, ``test_mnist``, in list order, found by file name or official order: see
``ood_core.data.openood_splits``). ``rows`` and ``openood_split`` exclude each other.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ood_core.cache import hash_config
from ood_core.config import ConfigError, check_row_selection, validation_sets
from ood_core.data import SHARED_DATA_MANIFEST, DatasetError, ImageSet, load_dataset, openood_splits, verify_files
from ood_core.data.base import fail

from .common import Context

TABLE_ONLY_KEYS = ("group",)


def all_specs(cfg: dict) -> dict[str, dict]:
    """Every dataset of the profile by name: ``train``, ``id_test``, each OOD set, then the
    validation sets (``id_val`` and each OOD validation set) when the profile has them."""
    d = cfg["data"]
    return {"train": d["train"], "id_test": d["id_test"], **d["ood"], **validation_sets(cfg)}


def spec_key(cfg: dict, name: str) -> str:
    """A hash identifying the images of dataset ``name`` (spec + base's spec + preprocessing)."""
    specs = all_specs(cfg)
    spec = {k: v for k, v in specs[name].items() if k not in TABLE_ONLY_KEYS}
    base = spec.get("base")
    return hash_config(spec, specs[base] if base in specs else None, cfg["data"]["preprocessing"])


def load_named(ctx: Context, name: str, _memo: dict[str, ImageSet] | None = None) -> ImageSet:
    """Load dataset ``name`` of the profile (resolving ``path`` and ``base``)."""
    memo = _memo if _memo is not None else {}
    if name in memo:
        return memo[name]
    specs = all_specs(ctx.cfg)
    if name not in specs:
        raise KeyError(f"profile '{ctx.profile}' has no dataset '{name}'; it has {', '.join(specs)}")
    opts: dict[str, Any] = {k: v for k, v in specs[name].items() if k not in TABLE_ONLY_KEYS}
    kind = opts.pop("kind")
    root: Path | None = ctx.data_root
    if "path" in opts:
        p = Path(opts.pop("path")).expanduser()
        root = p if p.is_absolute() else ctx.data_root / p
    if kind == "npz" and ctx.cfg["data"]["verify_manifest"] and root is not None and root.name in SHARED_DATA_MANIFEST:
        # size + sha256 against the manifest; the result is cached per (path, size, mtime)
        verify_files({root.name: SHARED_DATA_MANIFEST[root.name]}, root.parent)
    if "base" in opts:
        opts["base"] = load_named(ctx, opts.pop("base"), memo)
    check_row_selection(opts, f"data.{name}")
    rows, openood = opts.pop("rows", None), opts.pop("openood_split", None)
    ds = load_dataset(kind, root, name=name, **opts)
    if rows is not None:
        ds = ds.take(subsample_rows(len(ds), rows, int(ctx.cfg["seed"]), name, f"data.{name}.rows"))
    if openood is not None:
        try:
            ds = openood_splits.select(kind, root, opts, ds, openood)
        except DatasetError as e:
            raise fail(name, root, str(e)) from None
    memo[name] = ds
    return ds


def subsample_rows(n: int, rows: Any, seed: int, name: str, option: str) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``rows`` of ``n`` images (all of them if
    ``rows >= n``); the same (seed, name) always gives the same subset."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
        raise ConfigError(f"{option} must be a positive integer, got {rows!r}")
    if rows >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(n, rows, replace=False))
