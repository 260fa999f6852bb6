"""Turn a profile's dataset specs into ``ImageSet``s.

A spec is ``{kind: ..., <loader options>}`` plus three keys handled here: ``path`` (relative to the
data root, becomes the loader's root), ``group`` (near / far / covariate: used by the tables only)
and ``base`` (for ``kind: corrupted``: the name of another configured set, usually ``id_test``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ood_core.cache import hash_config
from ood_core.data import SHARED_DATA_MANIFEST, ImageSet, load_dataset, verify_files

from .common import Context

TABLE_ONLY_KEYS = ("group",)


def all_specs(cfg: dict) -> dict[str, dict]:
    """Every dataset of the profile by name: ``train``, ``id_test`` and each OOD set."""
    d = cfg["data"]
    return {"train": d["train"], "id_test": d["id_test"], **d["ood"]}


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
    ds = load_dataset(kind, root, name=name, **opts)
    memo[name] = ds
    return ds
