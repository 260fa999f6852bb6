"""Registry of OOD scores: name -> ScoreSpec.

Every score is a pure function over cached arrays (see docs/architecture.md) returning a float64
vector with **higher = more in-distribution**. Scores that need training statistics have a ``fit``.

    @register("energy", family="forward", display="Energy", defaults={"T": 1.0}, needs=("logits",))
    def energy(arrays, state=None, *, T=1.0): ...

Every entry carries its ``display`` name, the one name tables and figures show for the method
(:func:`display_name`); CSVs keep the code name (``metrics.csv``'s ``method``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..grid import GRID_VALUE_KEYS

Arrays = Mapping[str, np.ndarray]
ScoreFn = Callable[..., np.ndarray]
FitFn = Callable[..., Any]

FAMILIES = ("forward", "gradient", "decomposition", "lowdim", "ensemble")
# what tables and figures call each family
FAMILY_DISPLAY = {
    "forward": "Forward (features / logits)",
    "gradient": "Gradient",
    "decomposition": "Igoe family (no backward pass)",
    "lowdim": "Low-dim gradient (Wu et al.)",
    "ensemble": "Ensemble",
}


@dataclass(frozen=True)
class ScoreSpec:
    name: str
    family: str
    fn: ScoreFn
    fit: FitFn | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    needs: tuple[str, ...] = ("logits",)
    paper: str = ""
    display: str = ""

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


_REGISTRY: dict[str, ScoreSpec] = {}


def register(
    name: str,
    *,
    family: str,
    defaults: dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    needs: tuple[str, ...] = ("logits",),
    fit: FitFn | None = None,
    paper: str = "",
    display: str = "",
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a score function to the registry; ``display`` is the method's name in tables
    and figures (empty: the code name is shown)."""
    if family not in FAMILIES:
        raise ValueError(f"score '{name}': family must be one of {FAMILIES}, got '{family}'")

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in _REGISTRY:
            raise ValueError(f"score '{name}' is registered twice")
        taken = next((n for n, s in _REGISTRY.items() if display and s.display == display), None)
        if taken:
            raise ValueError(f"score '{name}': display name '{display}' is already used by '{taken}'")
        _REGISTRY[name] = ScoreSpec(name, family, fn, fit, dict(defaults or {}), dict(grid or {}), needs, paper,
                                    display)
        return fn

    return deco


def get(name: str) -> ScoreSpec:
    """Look a score up by name; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown score '{name}'; known scores: {', '.join(names())}")
    return _REGISTRY[name]


def display_name(name: str) -> str:
    """The method's name in tables and figures: its registered ``display``, else the code name
    itself (an unregistered or undisplayed name, e.g. a row of an older metrics.csv)."""
    spec = _REGISTRY.get(name)
    return spec.display if spec is not None and spec.display else name


def family_display(family: str) -> str:
    """A family's name in tables and figures (:data:`FAMILY_DISPLAY`, else the code name)."""
    return FAMILY_DISPLAY.get(family, family)


def names(family: str | None = None) -> list[str]:
    """All registered score names (optionally of one family), in registration order."""
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


def fit(name: str, train: Arrays, **params: Any) -> Any:
    """Fit a score's training statistics (None for scores without a fit)."""
    spec = get(name)
    if spec.fit is None:
        return None
    return spec.fit(train, **{**spec.defaults, **params})


def compute(name: str, arrays: Arrays, state: Any = None, **params: Any) -> np.ndarray:
    """Score ``arrays`` with ``name``; params override the registered defaults."""
    spec = get(name)
    missing = [k for k in spec.needs if k not in arrays]
    if missing:
        raise KeyError(
            f"score '{name}' needs arrays {list(spec.needs)}; missing {missing} (have {sorted(arrays)})"
        )
    for k in spec.needs:
        if k in GRID_VALUE_KEYS:  # may hold NaN off the selected grid cells: checked per cell in cached_slice
            continue
        a = np.asarray(arrays[k])
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int((~np.isfinite(a)).sum())
            raise FloatingPointError(
                f"score '{name}': input array '{k}' has {bad} non-finite value(s) (NaN/inf) of {a.size}; "
                "the cache is corrupt or the model diverged (refusing to score: it would give a meaningless AUROC)"
            )
    unknown = set(params) - set(spec.defaults)
    if unknown:
        raise TypeError(f"score '{name}' has no parameter(s) {sorted(unknown)}; it takes {sorted(spec.defaults)}")
    out = np.asarray(spec.fn(arrays, state, **{**spec.defaults, **params}), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        bad = int((~np.isfinite(out)).sum())
        raise FloatingPointError(f"score '{name}' produced {bad} non-finite values; check its inputs")
    return out
