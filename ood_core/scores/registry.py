"""Registry of OOD scores: name -> ScoreSpec, the one place that states everything about a score.

Every score is a pure function over cached arrays (see docs/architecture.md) returning a float64
vector with **higher = more in-distribution**. Scores that need training statistics have a ``fit``.

    @register("energy", family="forward", display="Energy", grid={"T": [1.0]}, needs=("logits",))
    def energy(arrays, state=None, *, T=1.0): ...

An entry holds the score's

* ``family`` and ``display`` name (the one name tables and figures show, :func:`display_name`; CSVs
  keep the code name, ``metrics.csv``'s ``method``);
* ``defaults`` (its parameters: the keyword-only defaults of the score and fit functions) and ``grid`` (what tuning searches on validation parts);
* ``needs``: the arrays it reads; a name may hold a parameter in braces, ``"lowdim_{subspace}"``
  (:meth:`ScoreSpec.inputs` fills it in). A score that reads the cached ODIN / GRODIN grid arrays
  (``odin_s``, ``grodin_sqnorm``) takes parameters ``eps`` and ``T`` (:attr:`ScoreSpec.uses_grid`);
* ``sweeps``: the :class:`Sweep` s the benchmark writes for plots and ablation tables.

Tests register stand-in scores inside :func:`temporary_scores`, which removes them again.
"""

from __future__ import annotations

import contextlib
import inspect
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ood_core.extraction.grid import GRID_VALUE_KEYS

Arrays = Mapping[str, np.ndarray]
ScoreFn = Callable[..., np.ndarray]
FitFn = Callable[..., Any]

FAMILIES = ("forward", "gradient", "activation_gradient", "decomposition", "lowdim", "ensemble")
# what tables and figures call each family
FAMILY_DISPLAY = {
    "forward": "Forward (features / logits)",
    "gradient": "Gradient",
    "activation_gradient": "Activation gradient",
    "decomposition": "Igoe family (no backward pass)",
    "lowdim": "Low-dim gradient (Wu et al.)",
    "ensemble": "Ensemble",
}
GRID_PARAMS = ("eps", "T")  # the parameters of a score that reads the cached perturbation grid


class NotApplicable(ValueError):
    """A parameter value the score is undefined at for these inputs (e.g. ViM's dim >= the feature
    dimension): tuning skips that grid point; a direct call fails with this one-line message."""


@dataclass(frozen=True)
class Sweep:
    """Test AUROC of one score over the values of ``params`` (jointly when two: the eps x T grid),
    every other parameter at its default; the benchmark writes it for plots.

    ``values``: the values swept; None = what the analysis cache holds for the parameter (the
    extracted eps / T grid, the extracted low-dim subspaces), else the score's tuning grid.
    ``ablation``: the ablation table ``ablation_<name>.{md,tex,csv}`` the sweep also feeds ("" for
    none); an eps x T sweep feeds the GRODIN ablation (``ablation_grodin``: vanilla / only eps /
    only T / both). ``caption``: that table's caption (one-parameter sweeps)."""

    params: tuple[str, ...]
    values: tuple[Any, ...] | None = None
    ablation: str = ""
    caption: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        if self.values is not None:
            object.__setattr__(self, "values", tuple(self.values))
        if len(self.params) not in (1, 2):
            raise ValueError(f"a sweep varies one parameter or the eps x T grid, got {self.params}")
        if len(self.params) == 2 and (
            self.params != GRID_PARAMS or self.values is not None or self.ablation not in ("", "grodin")
        ):
            raise ValueError(
                f"a two-parameter sweep is the cached {GRID_PARAMS} grid (values=None, "
                f"ablation '' or 'grodin'), got {self}"
            )

    @property
    def param(self) -> str:
        """The swept parameter of a one-parameter sweep."""
        return self.params[0]


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
    sweeps: tuple[Sweep, ...] = ()

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()

    def inputs(self, params: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The array names the score reads at ``params`` (defaults for the rest): ``needs`` with
        each ``{parameter}`` filled in, e.g. ``lowdim_{subspace}`` -> ``lowdim_pca``."""
        values = {**self.defaults, **(params or {})}
        return tuple(k.format_map(values) if "{" in k else k for k in self.needs)

    @property
    def uses_grid(self) -> bool:
        """Reads the cached ODIN / GRODIN grid arrays (parameters ``eps`` and ``T`` on that grid)."""
        return bool(set(self.needs) & set(GRID_VALUE_KEYS))

    @property
    def fit_takes_memo(self) -> bool:
        """Its fit names a ``memo`` keyword (:class:`ood_core.scores.memo.Memo`)."""
        return self.fit is not None and "memo" in inspect.signature(self.fit).parameters


_REGISTRY: dict[str, ScoreSpec] = {}


def _check(spec: ScoreSpec) -> None:
    """Refuse an entry that contradicts itself (messages name the score)."""
    name = spec.name
    taken = next((n for n, s in _REGISTRY.items() if spec.display and s.display == spec.display), None)
    if taken:
        raise ValueError(f"score '{name}': display name '{spec.display}' is already used by '{taken}'")
    fields = {f for k in spec.needs for _, f, _, _ in string.Formatter().parse(k) if f}
    if fields - set(spec.defaults):
        raise ValueError(
            f"score '{name}': needs {spec.needs} names parameter(s) {sorted(fields - set(spec.defaults))} "
            f"it does not take ({sorted(spec.defaults)})"
        )
    if spec.uses_grid and not set(GRID_PARAMS) <= set(spec.defaults):
        raise ValueError(f"score '{name}' reads the cached grid arrays, so it takes parameters {GRID_PARAMS}")
    for sw in spec.sweeps:
        if not set(sw.params) <= set(spec.defaults):
            raise ValueError(f"score '{name}': sweep over {sw.params}, but it takes {sorted(spec.defaults)}")


def signature_defaults(fn: Callable[..., Any] | None) -> dict[str, Any]:
    """The keyword-only parameters of a score or fit function that have a default (``memo`` aside)."""
    if fn is None:
        return {}
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.default is not p.empty and p.name != "memo"
    }


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
    sweeps: Sequence[Sweep] = (),
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a score function to the registry (fields: module docstring); ``display``
    is the method's name in tables and figures (empty: the code name is shown). The parameters'
    defaults are the keyword-only defaults of ``fn`` and ``fit``; ``defaults`` adds those that
    neither signature states (e.g. read through ``**params``), never one stated there too."""
    if family not in FAMILIES:
        raise ValueError(f"score '{name}': family must be one of {FAMILIES}, got '{family}'")

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in _REGISTRY:
            raise ValueError(f"score '{name}' is registered twice")
        stated = {**signature_defaults(fit), **signature_defaults(fn)}
        twice = sorted(set(stated) & set(defaults or {}))
        if twice:
            raise ValueError(
                f"score '{name}': default(s) of {twice} stated in its signature and in register(defaults=)"
            )
        spec = ScoreSpec(
            name,
            family,
            fn,
            fit,
            {**stated, **(defaults or {})},
            dict(grid or {}),
            tuple(needs),
            paper,
            display,
            tuple(sweeps),
        )
        _check(spec)
        _REGISTRY[name] = spec
        return fn

    return deco


@contextlib.contextmanager
def temporary_scores() -> Iterator[None]:
    """Scores registered inside the block are removed when it ends (tests' stand-in scores)."""
    before = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


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


def names(family: str | None = None, *, uses_grid: bool | None = None) -> list[str]:
    """Registered score names in registration order, optionally of one family and/or only those that
    do (``uses_grid=True``) or do not read the cached perturbation grid."""
    return [
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family) and (uses_grid is None or s.uses_grid == uses_grid)
    ]


def fit(name: str, train: Arrays, memo: Any = None, **params: Any) -> Any:
    """Fit a score's training statistics (None for scores without a fit). ``memo``
    (:class:`ood_core.scores.memo.Memo`) is handed to fits that take one, to share work between fits."""
    spec = get(name)
    if spec.fit is None:
        return None
    kw = {**spec.defaults, **params}
    if memo is not None and spec.fit_takes_memo:
        kw["memo"] = memo
    return spec.fit(train, **kw)


def compute(name: str, arrays: Arrays, state: Any = None, **params: Any) -> np.ndarray:
    """Score ``arrays`` with ``name``; params override the registered defaults."""
    spec = get(name)
    needs = spec.inputs(params)
    missing = [k for k in needs if k not in arrays]
    if missing:
        raise KeyError(f"score '{name}' needs arrays {list(needs)}; missing {missing} (have {sorted(arrays)})")
    for k in needs:
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
