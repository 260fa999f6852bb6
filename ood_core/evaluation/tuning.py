"""Hyper-parameter selection on **validation parts only**.

Protocols (each result row records which one was used):

* ``per_ood_val``   GRODIN: every OOD set gets its own parameters, chosen on ID-val vs *that* set's
                    validation part.
* ``held_out_ood``  OpenOOD v1.5 APS: one held-out OOD set's validation part (e.g. TinyImageNet for
                    CIFAR-10) chooses one parameter set, used for every OOD set.
* ``openood``       OpenOOD v1.5 (Zhang et al. 2023): one parameter set chosen on ID validation
                    images vs OOD *validation sets* that no test set shares (CIFAR-10: ``val_cifar10``
                    vs ``val_tin``), used for every OOD set; the test distributions are never seen.
                    With several OOD validation sets the criterion is their mean AUROC.
* ``paper_defaults`` no tuning: the score's registered defaults.

Selection maximises AUROC over the Cartesian product of the grid (keys in dict order, values in list
order, the last key varying fastest); ties go to the first grid point in that order.

Leakage guard: :func:`tune` receives the *full* arrays of each dataset plus a :class:`Split` and slices
the validation part itself through :func:`val_part`, which asserts that no index of the test part is
used. Fitted statistics (``fit(name, train, **params)``) go through :class:`FitCache`, memoised on the
parameters the fit actually takes, so a grid over a scoring-only parameter never refits; its fits share
one :class:`~ood_core.scores.memo.Memo` (a probe trained once for all low-dim probe scores).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ood_core.evaluation import metrics
from ood_core.extraction.grid import GRID_AXIS_KEYS, GRID_VALUE_KEYS
from ood_core.scores import registry
from ood_core.scores.memo import Memo

Arrays = Mapping[str, np.ndarray]
Params = dict[str, Any]

PROTOCOLS = ("per_ood_val", "held_out_ood", "openood", "paper_defaults")


def base_protocol(label: str) -> str:
    """The protocol of a metric row's ``protocol`` label (``"per_ood_val (no grid: defaults)"`` -> ``per_ood_val``)."""
    return str(label).split(" ", 1)[0]


# arrays that are not per-sample (never sliced) and per-sample arrays whose sample axis is the last one
STATIC_KEYS = frozenset({"W", "b", *GRID_AXIS_KEYS})
LAST_AXIS_KEYS = frozenset(GRID_VALUE_KEYS)


class LeakageError(AssertionError):
    """A test index reached a tuning step (or val and test parts overlap)."""


# ---------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Split:
    """Validation / test indices into one dataset's arrays."""

    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        for part in ("val", "test"):
            a = np.asarray(getattr(self, part))
            if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"Split.{part} must be a 1-D integer index array, got {a.dtype} {a.shape}")
            object.__setattr__(self, part, a.astype(np.int64, copy=False))

    def assert_disjoint(self) -> "Split":
        """Raise :class:`LeakageError` if the val and test parts share an index."""
        both = np.intersect1d(self.val, self.test)
        if both.size:
            raise LeakageError(f"val and test parts overlap in {both.size} index(es) (first: {both[:5].tolist()})")
        return self

    def check_range(self, n: int) -> "Split":
        for part in ("val", "test"):
            a = getattr(self, part)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise IndexError(f"Split.{part} has indices outside [0, {n})")
        return self


def n_samples(arrays: Arrays) -> int:
    """Number of samples of an Arrays mapping (from its per-sample arrays)."""
    for k, v in arrays.items():
        if k not in STATIC_KEYS:
            v = np.asarray(v)
            return int(v.shape[-1] if k in LAST_AXIS_KEYS else v.shape[0])
    raise ValueError(f"no per-sample array among {sorted(arrays)}")


def take(arrays: Arrays, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of every per-sample array; model-level / grid arrays are passed through."""
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if k in STATIC_KEYS:
            out[k] = v
        elif k in LAST_AXIS_KEYS:
            out[k] = np.asarray(v)[..., idx]
        else:
            out[k] = np.asarray(v)[idx]
    return out


def val_part(arrays: Arrays, split: Split) -> dict[str, np.ndarray]:
    """The validation part of ``arrays``; asserts that not one test index is used."""
    split.assert_disjoint()
    idx = split.val
    leaked = np.isin(idx, split.test)
    if leaked.any():  # redundant with assert_disjoint by construction; kept as the asserted guard
        raise LeakageError(f"{int(leaked.sum())} test index(es) would be used for tuning")
    if idx.size == 0:
        raise ValueError("the validation part is empty; cannot tune on it")
    return take(arrays, idx)


def eval_part(arrays: Arrays, split: Split) -> dict[str, np.ndarray]:
    """The test part of ``arrays``, for the final evaluation only (tuning reads :func:`val_part`)."""
    split.assert_disjoint()
    return take(arrays, split.test)


# -------------------------------------------------------------------------------------- fitting
def _fit_param_names(fit_fn: Callable | None) -> tuple[str, ...] | None:
    """Parameters a fit function's result can depend on: its named keyword parameters; ``None``
    (= all parameters) when it also takes a ``**kwargs`` it may use. A ``**kwargs`` whose name starts
    with an underscore (``**_``) is the registry's "ignore the rest" convention and is not counted."""
    if fit_fn is None:
        return ()
    try:
        sig = inspect.signature(fit_fn)
    except (TypeError, ValueError):
        return None
    ps = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD and not p.name.startswith("_") for p in ps):
        return None
    return tuple(p.name for p in ps[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def params_key(params: Mapping[str, Any]) -> tuple:
    """A hashable, order-free key of a parameter dict (the memo key of fits and scores). Values keep
    their type (1, 1.0 and True differ); a numpy scalar counts as the Python number it holds, and
    lists, tuples and arrays of the same items are the same sequence."""

    def freeze(v: Any) -> Any:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (list, tuple, np.ndarray)):
            return ("seq", tuple(freeze(x) for x in v))
        if isinstance(v, Mapping):
            return ("map", params_key(v))
        return (type(v).__name__, v)

    return tuple(sorted((k, freeze(v)) for k, v in params.items()))


class FitCache:
    """Memoised ``registry.fit(name, train, **params)``, keyed on the parameters the fit takes; every
    fit gets the cache's ``memo`` (a new :class:`Memo` when None)."""

    def __init__(self, train: Arrays, memo: Memo | None = None):
        self.train = train
        self.memo = Memo() if memo is None else memo
        self._cache: dict[tuple, Any] = {}
        self.n_fits = 0

    def key(self, name: str, params: Mapping[str, Any]) -> tuple:
        spec = registry.get(name)
        full = {**spec.defaults, **params}
        used = _fit_param_names(spec.fit)
        return (name, params_key({k: v for k, v in full.items() if used is None or k in used}))

    def get(self, name: str, **params: Any) -> Any:
        if registry.get(name).fit is None:
            return None
        k = self.key(name, params)
        if k not in self._cache:
            self._cache[k] = registry.fit(name, self.train, memo=self.memo, **params)
            self.n_fits += 1
        return self._cache[k]

    def state_fn(self, name: str) -> Callable[..., Any]:
        return lambda **params: self.get(name, **params)


# ----------------------------------------------------------------------------------- selection
def grid_points(grid: Mapping[str, list[Any]]) -> list[Params]:
    """Cartesian product in grid order (last key fastest); an empty grid gives one empty point."""
    keys = list(grid)
    for k in keys:
        if len(grid[k]) == 0:
            raise ValueError(f"grid for '{k}' is empty")
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def _val_aurocs(
    score_name: str,
    val_id: Arrays,
    val_oods: Mapping[str, Arrays],
    fitted_state_fn: Callable[..., Any],
    grid: Mapping[str, list[Any]],
) -> dict[str, list[tuple[Params, float]]]:
    """AUROC of every grid point for every OOD set (ID-val scores computed once per point); points
    the score is undefined at for these inputs (``registry.NotApplicable``) are left out."""
    tables: dict[str, list[tuple[Params, float]]] = {o: [] for o in val_oods}
    skipped: list[str] = []
    for point in grid_points(grid):
        try:
            state = fitted_state_fn(**point)
        except registry.NotApplicable as e:
            skipped.append(str(e))
            continue
        s_id = registry.compute(score_name, val_id, state, **point)
        for o, arr in val_oods.items():
            s_o = registry.compute(score_name, arr, state, **point)
            tables[o].append((point, metrics.auroc(s_id, s_o)))
    if skipped and not any(tables.values()):
        raise registry.NotApplicable(f"{score_name}: no grid point applies ({skipped[0]})")
    return tables


def best_of(table: Sequence[tuple[Mapping[str, Any], float]]) -> Params:
    """Grid point with the highest AUROC; ties -> the first in grid order."""
    if not table:
        raise ValueError("empty tuning table")
    best_i = 0
    for i, (_, v) in enumerate(table):
        if v > table[best_i][1]:
            best_i = i
    return dict(table[best_i][0])


def select(
    score_name: str,
    val_id_arrays: Arrays,
    val_ood_arrays: Arrays,
    fitted_state_fn: Callable[..., Any],
    grid: Mapping[str, list[Any]],
) -> tuple[Params, list[tuple[Params, float]]]:
    """Pick the grid point maximising AUROC of ID-val vs OOD-val (arrays already restricted to the
    validation parts; use :func:`tune` to slice from full arrays with the leakage guard).

    Returns ``(best_params, [(params, val_auroc), ...])`` with the table in grid order."""
    table = _val_aurocs(score_name, val_id_arrays, {"ood": val_ood_arrays}, fitted_state_fn, grid)["ood"]
    return best_of(table), table


@dataclass
class TuneResult:
    protocol: str
    params: dict[str, Params]  # OOD set -> full parameters (defaults merged)
    tables: dict[str, list[tuple[Params, float]]] = field(default_factory=dict)  # val set -> table
    held_out: str | None = None

    def tuned_on(self, ood_set: str) -> str | None:
        """Which table chose the parameters of ``ood_set``: its own validation part (``per_ood_val``),
        the held-out set's (``held_out_ood``) or the OOD validation sets' (``openood``; names joined by +)."""
        if not self.tables:
            return None
        return ood_set if self.protocol == "per_ood_val" else next(iter(self.tables))


def mean_table(tables: Sequence[Sequence[tuple[Params, float]]]) -> list[tuple[Params, float]]:
    """Per grid point, the mean AUROC over several tables of the same points (in the first's order)."""
    return [(p, float(np.mean([t[i][1] for t in tables]))) for i, (p, _) in enumerate(tables[0])]


def tune(
    score_name: str,
    *,
    protocol: str,
    id_arrays: Arrays,
    id_split: Split,
    ood_arrays: Mapping[str, Arrays],
    ood_splits: Mapping[str, Split],
    fitted_state_fn: Callable[..., Any],
    grid: Mapping[str, list[Any]] | None = None,
    held_out: str | None = None,
    val_ood_arrays: Mapping[str, Arrays] | None = None,
    val_ood_splits: Mapping[str, Split] | None = None,
) -> TuneResult:
    """Choose the parameters of ``score_name`` for every OOD set under ``protocol``.

    Takes FULL arrays and their splits; only validation parts are ever scored here. ``id_arrays`` /
    ``id_split``: the ID set whose validation part tunes (the ID validation set when there is one).
    ``val_ood_arrays`` / ``val_ood_splits``: the OOD validation sets ``openood`` tunes on (their
    validation parts: every row). ``grid`` defaults to the registered grid; an empty grid (or
    ``paper_defaults``) returns the registered defaults."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    spec = registry.get(score_name)
    grid = dict(spec.grid if grid is None else grid)
    for s in [id_split, *ood_splits.values()]:
        s.assert_disjoint()
    missing = set(ood_arrays) - set(ood_splits)
    if missing:
        raise KeyError(f"no split for OOD set(s) {sorted(missing)}")
    defaults = dict(spec.defaults)
    if protocol == "paper_defaults" or not grid:
        return TuneResult(protocol, {o: dict(defaults) for o in ood_arrays}, {}, held_out)

    val_id = val_part(id_arrays, id_split)
    if protocol == "per_ood_val":
        val_oods = {o: val_part(ood_arrays[o], ood_splits[o]) for o in ood_arrays}
        tables = _val_aurocs(score_name, val_id, val_oods, fitted_state_fn, grid)
        params = {o: {**defaults, **best_of(tables[o])} for o in ood_arrays}
        return TuneResult(protocol, params, tables, None)

    if protocol == "openood":
        if not val_ood_arrays:
            raise ValueError("protocol 'openood' needs an OOD validation set (a profile's data.validation.ood)")
        splits = dict(val_ood_splits or {})
        missing = set(val_ood_arrays) - set(splits)
        if missing:
            raise KeyError(f"no split for OOD validation set(s) {sorted(missing)}")
        val_sets = {v: val_part(val_ood_arrays[v], splits[v]) for v in val_ood_arrays}
        per_set = _val_aurocs(score_name, val_id, val_sets, fitted_state_fn, grid)
        key = "+".join(val_sets)
        tables = {key: mean_table(list(per_set.values()))}
        best = {**defaults, **best_of(tables[key])}
        return TuneResult(protocol, {o: dict(best) for o in ood_arrays}, tables, None)

    # held_out_ood
    if held_out is None:
        raise ValueError("protocol 'held_out_ood' needs the name of the held-out OOD set")
    if held_out not in ood_arrays:
        raise KeyError(f"held-out OOD set '{held_out}' not among {sorted(ood_arrays)}")
    val_ho = val_part(ood_arrays[held_out], ood_splits[held_out])
    tables = _val_aurocs(score_name, val_id, {held_out: val_ho}, fitted_state_fn, grid)
    best = {**defaults, **best_of(tables[held_out])}
    return TuneResult(protocol, {o: dict(best) for o in ood_arrays}, tables, held_out)
