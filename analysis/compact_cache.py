"""Make a compact, committable copy of an analysis cache (for figures without a GPU).

    python -m analysis.compact_cache cache/cifar10/analysis figures/cifar10/cache --max-per-set 2000

Every dataset keeps a seeded random subset of at most ``--max-per-set`` rows (validation and test
parts subsampled alike, indices remapped), the test-part scores of those rows, and float16 copies of
the wide arrays (h, lowdim_*) when their values fit float16 (else float32). Logits and the ODIN/GRODIN
grids stay float32. ``meta.json`` records what was done under ``compact``; ``analysis.run --from-cache``
then re-draws every figure from it, while the tables stay those of the full run (``figures/<profile>``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from ood_core.analysis_cache import TEST_IDX_KEY, AnalysisCache
from ood_core.cache import save_npz, write_json
from ood_core.extraction.grid import GRID_AXIS_KEYS, GRID_VALUE_KEYS

FILE_LIMIT = 16 * 2**20


def _maybe_half(key: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and (key == "h" or key.startswith("lowdim_")):
        if np.all(np.isfinite(a)) and float(np.abs(a).max(initial=0)) < 6e4:
            return a.astype(np.float16)
    return a


def _take(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        if k in GRID_AXIS_KEYS:
            out[k] = v
        elif k in GRID_VALUE_KEYS:
            out[k] = v[..., rows]
        else:
            out[k] = _maybe_half(k, v[rows])
    return out


def compact(src: Path, dst: Path, max_per_set: int = 2000, seed: int = 0) -> Path:
    """Write the compact copy of analysis cache ``src`` into ``dst``."""
    src, dst = Path(src), Path(dst)
    cache = AnalysisCache(src)
    meta = dict(cache.meta)
    rng = np.random.default_rng(seed)
    new_splits: dict[str, np.ndarray] = {}
    for f in sorted(cache.arrays_dir.glob("*.npz")):
        name = f.stem
        arrays = cache.arrays(name)
        n = len(arrays["y"])
        rows = np.sort(rng.choice(n, min(n, max_per_set), replace=False))
        save_npz(dst / "arrays" / f.name, _take(arrays, rows))
        pos = np.full(n, -1, np.int64)
        pos[rows] = np.arange(len(rows))
        if f"{name}__test" in cache.splits():
            for part, old in zip(("val", "test"), cache.split(name)):  # checked: disjoint, in range
                new_splits[f"{name}__{part}"] = pos[old[np.isin(old, rows)]]
        if cache.has_scores(name):
            old_test = cache.test_index(name)
            if old_test is None:
                raise ValueError(f"{name}: stored scores, but neither their test rows nor a split")
            keep = np.isin(old_test, rows)
            out = {k: v[keep] for k, v in cache.scores(name).items()}
            out[TEST_IDX_KEY] = pos[old_test[keep]]
            save_npz(dst / "scores" / f.name, out)
    save_npz(dst / "splits.npz", new_splits)
    for extra in ("head.npz", "timings.csv"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / extra)
    meta["compact"] = {
        "max_per_set": max_per_set,
        "seed": seed,
        "source": str(src),
        "note": "rows subsampled per set; h/lowdim float16 where they fit; tables come from the full run",
    }
    write_json(dst / "meta.json", meta)
    big = [p for p in dst.rglob("*") if p.is_file() and p.stat().st_size > FILE_LIMIT]
    if big:
        print(f"warning: files over 16 MiB (the device tool's per-file limit): {[str(p) for p in big]}")
    return dst


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="analysis cache written by analysis.extract (+ analysis.benchmark)")
    p.add_argument("dst", type=Path, help="output folder")
    p.add_argument("--max-per-set", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(compact(a.src, a.dst, a.max_per_set, a.seed))


if __name__ == "__main__":
    main()
