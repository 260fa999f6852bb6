"""Layout of the cached ODIN / GRODIN grid arrays (one place for every reader and writer).

``odin_s`` and ``grodin_sqnorm`` have shape (n_eps, n_T, N), the sample axis LAST; ``odin_eps`` /
``odin_T`` are the grid axes. With ``extract.grodin_test_points: selected`` the full grid is computed
on the validation rows only and, on the other rows, only the cells marked in ``grodin_full_points``
((n_eps, n_T) bool); the other cells hold NaN. Absent ``grodin_full_points`` = every cell everywhere.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

GRID_AXIS_KEYS = ("odin_eps", "odin_T", "grodin_full_points")  # not per-sample: never sliced by rows
GRID_VALUE_KEYS = ("odin_s", "grodin_sqnorm", "iodin_s")  # per-sample along the last axis (iodin_s optional)
FULL_POINTS_KEY = "grodin_full_points"


class GridPointUnavailable(LookupError):
    """A grid cell was computed on validation rows only and the caller asked for other rows."""


def grid_axes(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
) -> tuple[list[float] | None, list[float] | None]:
    """(eps values, T values) of the cached grid: the arrays' ``odin_eps`` / ``odin_T``, else the
    analysis cache's ``meta['grid']``, else None; values verbatim (scores look them up exactly)."""
    mg = (meta or {}).get("grid") or {}
    out = []
    for key in ("odin_eps", "odin_T"):
        vals = arrays[key] if key in arrays else mg.get(key)
        out.append(None if vals is None else [float(v) for v in np.asarray(vals).ravel()])
    return out[0], out[1]


def full_points(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n_eps, n_T) bool: the cells computed on every row."""
    if FULL_POINTS_KEY in arrays:
        return np.asarray(arrays[FULL_POINTS_KEY], bool)
    return np.ones((len(arrays["odin_eps"]), len(arrays["odin_T"])), bool)


def grid_index(grid: np.ndarray | Sequence[float], value: float, name: str) -> int:
    """Index of ``value`` on a cached grid (tolerance 1e-9 relative / 1e-12 absolute);
    a value that is not on the grid is an error listing the grid (no silent rounding)."""
    g = np.asarray(grid, np.float64).ravel()
    hit = np.flatnonzero(np.isclose(g, float(value), rtol=1e-9, atol=1e-12))
    if hit.size == 0:
        raise ValueError(f"{name}={value} is not on the cached grid {g.tolist()}; pick one of those values")
    return int(hit[0])


def point_available(arrays: Mapping[str, np.ndarray], eps: float, T: float) -> bool:
    """True when cell (eps, T) was computed on every row of ``arrays``."""
    return bool(full_points(arrays)[grid_index(arrays["odin_eps"], eps, "eps"), grid_index(arrays["odin_T"], T, "T")])
