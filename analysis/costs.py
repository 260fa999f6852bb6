"""Per-method compute cost: seconds per 1,000 images = extraction components the method needs
(measured by the extract stage, ``timings.csv``) + its scoring time on cached arrays (measured here).

Written by the benchmark stage to ``<fig_dir>/method_costs.csv``; notebook 05 plots it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ood_core.analysis_cache import AnalysisCache
from ood_core.extraction.grid import full_points, point_available
from ood_core.reporting.table_csv import write_csv
from ood_core.scores import registry

log = logging.getLogger("analysis.costs")

# which extraction component produces each cached array a score may need
COMPONENT_OF = {
    "odin_s": "grodin_one_grid_point",
    "grodin_sqnorm": "grodin_one_grid_point",
    "iodin_s": "grodin_one_grid_point",
    "kl_allw_sqnorm": "kl_allweights",
    "gaia_z": "activation_grads",
    "gaia_a": "activation_grads",
}


def _components(inputs: tuple[str, ...]) -> list[str]:
    """The extraction components that produce a score's input arrays (``lowdim_<subspace>`` arrays
    come from the component of that name), the forward pass first."""
    out = ["forward"]
    for k in inputs:
        c = COMPONENT_OF.get(k, k if k.startswith("lowdim_") else "activation_grads" if k.startswith("nac_") else None)
        if c is not None and c not in out:
            out.append(c)
    return out


def _timing_params(spec: registry.ScoreSpec, arrays: dict) -> dict | None:
    """Parameters to time a method at: its defaults, except that a grid method whose default cell
    is not cached on every row (off the profile's grid, or not selected) uses the first cell that is."""
    if not spec.uses_grid:
        return {}
    try:
        if point_available(arrays, spec.defaults["eps"], spec.defaults["T"]):
            return {}
    except ValueError:  # the default is off the cached grid (grid_index's own tolerance decides)
        pass
    cells = np.argwhere(full_points(arrays))
    if not len(cells):
        return None
    e, t = cells[0]
    return {"eps": float(arrays["odin_eps"][e]), "T": float(arrays["odin_T"][t])}


def method_costs(analysis_dir: Path, methods: list[str], repeats: int = 3) -> list[dict]:
    """One row per method: extraction + scoring seconds per 1,000 images (median of ``repeats``)."""
    cache = AnalysisCache(analysis_dir)
    comp = cache.timings()
    train, test = cache.inputs(cache.train_name), cache.inputs(cache.id_name)
    n = len(test["y"])
    rows = []
    for name in methods:
        spec = registry.get(name)
        inputs = spec.inputs()
        if any(k not in test and k not in ("W", "b") for k in inputs):
            continue
        params = _timing_params(spec, test)
        if params is None:
            log.warning("compute cost of %s: no grid cell on every row; skipped", name)
            continue
        try:  # fitted without a memo: the timing includes training the low-dim probe
            t0 = time.perf_counter()
            state = registry.fit(name, train, **params)
            fit_s = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                registry.compute(name, test, state, **params)
                times.append(time.perf_counter() - t0)
        except Exception as e:  # a cost row must never sink the benchmark stage
            log.warning("compute cost of %s failed (%s: %s); skipped", name, type(e).__name__, e)
            continue
        score_s = 1000 * float(np.median(times)) / n
        parts = [c for c in _components(inputs) if c in comp]
        extract_s = sum(float(comp[c]["seconds_per_1000"]) for c in parts)
        first = next(iter(comp.values()))
        rows.append(
            {
                "method": name,
                "family": spec.family,
                "seconds_per_1000": extract_s + score_s,
                "extract_seconds_per_1000": extract_s,
                "score_seconds_per_1000": score_s,
                "fit_seconds": fit_s,
                "timed_params": params,
                "components": "+".join(parts),
                "device": first["device"],
                "batch_size": first["batch_size"],
            }
        )
    return rows


def write_method_costs(analysis_dir: Path, fig_dir: Path, methods: list[str]) -> Path | None:
    """Write ``<fig_dir>/method_costs.csv`` (skipped when the extract stage wrote no timings)."""
    if not AnalysisCache(analysis_dir).timings_path().is_file():
        return None
    rows = method_costs(analysis_dir, methods)
    if not rows:
        log.warning("no method could be timed; method_costs.csv not written")
        return None
    return write_csv(rows, Path(fig_dir) / "method_costs.csv", list(rows[0]))
