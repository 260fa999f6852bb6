"""The benchmark's core: fit, tune on validation parts, score test parts, compute the metric rows.

Shared by the pipeline's benchmark stage (``analysis/benchmark.py``, which adds the sweeps and writes
the tables) and the Python API (``ood_core.api.evaluation``), so both give the same rows for the same arrays.

Input: a :class:`BenchmarkData` (the arrays of the training set, the ID test set and every OOD set,
each with the head's W, b; the validation/test :class:`~ood_core.evaluation.tuning.Split` of every scored set;
meta; optionally validation sets: an ID one and OOD ones, every row of which tunes). For every method: fit on train (memoised per fit-relevant parameters), choose parameters on
the validation parts under the protocol (``ood_core.evaluation.tuning``), score the TEST parts, compute metrics
(both FPR95 conventions, AUPR, bootstrap std of AUROC). A row has the columns of ``metrics.csv``
(``ood_core.reporting.table_csv.METRIC_FIELDS``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ood_core.analysis_cache import AnalysisCache
from ood_core.evaluation import metrics
from ood_core.evaluation.tuning import PROTOCOLS, FitCache, Split, TuneResult, eval_part, params_key, tune
from ood_core.extraction.grid import grid_axes
from ood_core.progress import StageProgress
from ood_core.reporting.table_csv import json_default
from ood_core.scores import registry  # importing the package registers every score

log = logging.getLogger("ood_core.evaluation.benchmark")


@dataclass
class BenchmarkData:
    """What the benchmark reads: ``arrays[name]`` = a set's score inputs (its cached arrays plus the
    head's ``W``, ``b``) for the training set, the ID test set and every OOD set; ``splits[name]`` the
    validation/test rows of every scored set; ``groups`` OOD set -> near / far / ...; ``meta`` the
    run's facts (``model``, ``id_accuracy``, ``grid``, ``lowdim_subspaces``, ...)."""

    meta: dict[str, Any]
    train_name: str
    id_name: str
    groups: dict[str, str]
    arrays: dict[str, dict[str, np.ndarray]]
    splits: dict[str, Split]
    id_val_name: str | None = None  # the ID validation set (all its rows tune), None: id_test's val part
    val_oods: list[str] = field(default_factory=list)  # the OOD validation sets (``openood`` tunes on them)

    @property
    def ood_names(self) -> list[str]:
        return list(self.groups)

    @property
    def train(self) -> dict[str, np.ndarray]:
        return self.arrays[self.train_name]

    @property
    def tuning_id(self) -> str:
        """The set whose validation part is the ID side of every tuning: ``id_val``, else ``id_test``."""
        return self.id_val_name or self.id_name

    @classmethod
    def from_cache(cls, cache: AnalysisCache) -> BenchmarkData:
        """The inputs of an analysis directory, read (and their splits checked) by ``AnalysisCache``."""
        groups = dict(cache.meta_field("ood"))
        id_val, val_oods = cache.id_val_name, cache.val_ood_names
        scored = [cache.id_name, *groups, *([id_val] if id_val else []), *val_oods]
        return cls(
            meta=cache.meta,
            train_name=cache.train_name,
            id_name=cache.id_name,
            groups=groups,
            arrays={n: cache.inputs(n) for n in [cache.train_name, *scored]},
            splits={n: Split(*cache.split(n)) for n in scored},
            id_val_name=id_val,
            val_oods=list(val_oods),
        )

    def rows_note(self, protocol: str, held_out: str | None = None) -> str:
        """Which rows ``protocol`` tunes on and which it tests on (a table caption's sentence)."""
        n = {s: int(sp.val.size) for s, sp in self.splits.items()}
        id_part = f"{self.tuning_id} ({n[self.tuning_id]:,} rows)"
        tune_on = {
            "per_ood_val": f"{id_part} vs each OOD set's own validation rows",
            "held_out_ood": f"{id_part} vs the validation rows of {held_out}",
            "openood": f"{id_part} vs " + ", ".join(f"{v} ({n[v]:,} rows)" for v in self.val_oods),
            "paper_defaults": "nothing (registered defaults)",
        }[protocol]
        n_test = int(self.splits[self.id_name].test.size)
        return f"{protocol}: tuned on {tune_on}; tested on {self.id_name} ({n_test:,} rows) vs each OOD set's test rows"


def effective_grid(spec: registry.ScoreSpec, meta: Mapping[str, Any], id_arrays: Mapping[str, np.ndarray]) -> dict:
    """The registered grid, with eps / T of scores that read the perturbation grid replaced by the grid
    the arrays were extracted on (the ID test arrays' odin_eps / odin_T, else meta['grid']): nothing
    else can be scored, and values are taken verbatim (scores look them up exactly)."""
    grid = {k: list(v) for k, v in spec.grid.items()}
    if spec.uses_grid:
        for param, vals in zip(("eps", "T"), grid_axes(id_arrays, meta)):
            if vals is not None:
                grid[param] = vals
    return grid


def missing_arrays(
    spec: registry.ScoreSpec, data: BenchmarkData, params: Mapping[str, Any] | None = None
) -> str | None:
    """Reason string if a needed array is missing in some dataset, else None."""
    need = spec.inputs(params)
    vals = [*([data.id_val_name] if data.id_val_name else []), *data.val_oods]
    datasets = [data.id_name, *data.ood_names, *vals] + ([data.train_name] if spec.fit is not None else [])
    miss = {ds: [k for k in need if k not in data.arrays[ds]] for ds in datasets}
    miss = {ds: ks for ds, ks in miss.items() if ks}
    if miss:
        return "missing arrays " + "; ".join(f"{ds}: {ks}" for ds, ks in miss.items())
    return None


class Scorer:
    """Memoised test-part scoring of one method (val parts are only touched by tuning.tune)."""

    def __init__(self, name: str, data: BenchmarkData, fits: FitCache):
        self.name, self.data, self.fits = name, data, fits
        self._test = {ds: eval_part(data.arrays[ds], data.splits[ds]) for ds in [data.id_name, *data.ood_names]}
        self._cache: dict[tuple, np.ndarray] = {}

    def test(self, dataset: str, params: Mapping[str, Any]) -> np.ndarray:
        key = (dataset, params_key(params))
        if key not in self._cache:
            state = self.fits.get(self.name, **params)
            self._cache[key] = registry.compute(self.name, self._test[dataset], state, **params)
        return self._cache[key]

    def test_auroc(self, ood: str, params: Mapping[str, Any]) -> float:
        return metrics.auroc(self.test(self.data.id_name, params), self.test(ood, params))


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), default=json_default))


@dataclass
class MethodResult:
    """One method's benchmark: its metric rows, what was chosen, its test-part scores per dataset,
    and what the sweeps reuse (the memoised scorer, the tuning result, the grid searched)."""

    rows: list[dict[str, Any]]
    chosen: dict[str, Any]  # family, grid, defaults, per_set (chosen_hyperparams.json)
    scores: dict[str, dict[str, np.ndarray]]  # dataset -> {key: test-part scores} (scores/<dataset>.npz)
    scorer: Scorer
    tune: TuneResult
    grid: dict[str, list[Any]]


@dataclass
class MethodsResult:
    """:func:`run_methods`' output: the metric rows (``metrics.csv``), the chosen parameters
    (``chosen_hyperparams.json``), the skipped methods with their reason, the test-part scores per set
    (``scores/<set>.npz`` keys) and each method's :class:`MethodResult` (what the sweeps reuse)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    methods: dict[str, MethodResult] = field(default_factory=dict)
    held_out: str | None = None  # the set tuned on under held_out_ood


MIN_TRAIN_ROWS_PER_CLASS = 2  # a class mean and a spread, a nearest neighbour other than the row itself


def check_training_rows(name: str, y: np.ndarray | None) -> None:
    """Raise ``ValueError`` (one line naming the set and the minimum) unless every class present in
    the training labels ``y`` has at least ``MIN_TRAIN_ROWS_PER_CLASS`` rows: with fewer, the fitted
    statistics (class means, covariances, nearest-neighbour banks) give meaningless scores silently."""
    if y is None:
        return
    y = np.asarray(y).ravel()
    labels, counts = np.unique(y[y >= 0], return_counts=True)
    few = [(int(c), int(n)) for c, n in zip(labels, counts) if n < MIN_TRAIN_ROWS_PER_CLASS]
    if len(y) < MIN_TRAIN_ROWS_PER_CLASS or few:
        detail = f"class {few[0][0]} has {few[0][1]}" if few else f"it has {len(y)}"
        raise ValueError(
            f"training set '{name}': the fits need at least {MIN_TRAIN_ROWS_PER_CLASS} rows per class ({detail})"
        )


def run_methods(
    data: BenchmarkData,
    methods: Sequence[str] | None = None,
    *,
    protocol: str = "per_ood_val",
    held_out: str | None = None,
    bootstrap_n: int = 100,
    seed: int = 0,
    strict: bool = True,
    fits: FitCache | None = None,
) -> MethodsResult:
    """Fit, tune and score every (or the given) registered method on ``data`` under ``protocol``.

    A method whose arrays are missing is skipped (reason logged and returned); ``strict=False``
    turns an unexpected error of a method into a skip too. ``held_out`` names the OOD set tuned on
    under ``held_out_ood`` (default: :func:`pick_held_out`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    if protocol == "held_out_ood":
        held_out = pick_held_out(held_out, data)
    if protocol == "openood" and not data.val_oods:
        raise ValueError("protocol 'openood' needs an OOD validation set (a profile's data.validation.ood)")
    names = list(registry.names()) if methods is None else list(methods)
    for m in names:
        registry.get(m)  # unknown names fail loudly, listing the known ones
    check_training_rows(data.train_name, data.train.get("y"))
    fits = FitCache(data.train) if fits is None else fits
    out = MethodsResult(scores={ds: {} for ds in [data.id_name, *data.ood_names]}, held_out=held_out)
    shown = StageProgress("benchmark", len(names), unit="method", leave=False)
    for m in shown.each(names, lambda m: f"benchmark {m}"):
        spec = registry.get(m)
        reason = missing_arrays(spec, data)
        if reason:
            log.warning("skip %s: %s", m, reason)
            out.skipped.append({"method": m, "family": spec.family, "reason": reason})
            continue
        try:
            res = _run_method(m, spec, data, fits, protocol, held_out, bootstrap_n, seed)
        except KeyError as e:
            log.warning("skip %s: missing input (%s)", m, e)
            out.skipped.append({"method": m, "family": spec.family, "reason": f"missing input: {e}"})
            continue
        except Exception as e:
            if strict:
                raise
            log.exception("skip %s after an error", m)
            out.skipped.append({"method": m, "family": spec.family, "reason": f"error: {type(e).__name__}: {e}"})
            continue
        out.rows += res.rows
        out.chosen[m] = res.chosen
        out.methods[m] = res
        for ds, d in res.scores.items():
            out.scores[ds].update(d)
    return out


def run_protocols(
    data: BenchmarkData,
    methods: Sequence[str] | None = None,
    *,
    protocols: Sequence[str] = ("per_ood_val",),
    fits: FitCache | None = None,
    **kw: Any,
) -> dict[str, MethodsResult]:
    """:func:`run_methods` under each of ``protocols`` (in order), sharing one :class:`FitCache`;
    ``kw`` as :func:`run_methods`. Every protocol scores the same test rows."""
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; choose from {PROTOCOLS}")
    fits = FitCache(data.train) if fits is None else fits
    return {p: run_methods(data, methods, protocol=p, fits=fits, **kw) for p in dict.fromkeys(protocols)}


def pick_held_out(held_out: str | None, data: BenchmarkData) -> str:
    """The OOD set tuned on under ``held_out_ood``: the given one, else meta's, else Tiny-ImageNet or the first near set."""
    if held_out is None:
        held_out = data.meta.get("held_out")
    if held_out is None:
        near = [o for o in data.ood_names if data.groups[o] == "near"]
        held_out = "tinyimagenet" if "tinyimagenet" in data.ood_names else (near or data.ood_names)[0]
        log.warning("protocol held_out_ood: no held-out set given; using '%s'", held_out)
    if held_out not in data.ood_names:
        raise KeyError(f"held-out set '{held_out}' is not an OOD set of this analysis ({data.ood_names})")
    return held_out


def tune_method(
    m: str,
    data: BenchmarkData,
    fits: FitCache,
    grid: Mapping[str, list[Any]],
    protocol: str,
    held_out: str | None = None,
) -> TuneResult:
    """:func:`ood_core.evaluation.tuning.tune` of method ``m`` over ``grid`` on the validation parts of ``data``."""
    return tune(
        m,
        protocol=protocol,
        id_arrays=data.arrays[data.tuning_id],
        id_split=data.splits[data.tuning_id],
        ood_arrays={o: data.arrays[o] for o in data.ood_names},
        ood_splits={o: data.splits[o] for o in data.ood_names},
        fitted_state_fn=fits.state_fn(m),
        grid=grid,
        held_out=held_out,
        val_ood_arrays={v: data.arrays[v] for v in data.val_oods},
        val_ood_splits={v: data.splits[v] for v in data.val_oods},
    )


def _run_method(m, spec, data: BenchmarkData, fits: FitCache, protocol, held_out, bootstrap_n, seed) -> MethodResult:
    grid = effective_grid(spec, data.meta, data.arrays[data.id_name])
    tr = tune_method(m, data, fits, grid, protocol, held_out)
    scorer = Scorer(m, data, fits)
    rows, per_set = [], {}
    scores: dict[str, dict[str, np.ndarray]] = {data.id_name: {}, **{o: {} for o in data.ood_names}}
    for o in data.ood_names:
        params = tr.params[o]
        s_id, s_o = scorer.test(data.id_name, params), scorer.test(o, params)
        ev = metrics.evaluate(s_id, s_o)
        _, sd = metrics.bootstrap(metrics.auroc, s_id, s_o, n=bootstrap_n, seed=seed) if bootstrap_n >= 2 else (0, None)
        src = tr.tuned_on(o)
        val_auc = None
        if src is not None:  # the validation AUROC of the chosen grid point, on the set that chose it
            point = {k: params[k] for k in grid}
            val_auc = next((v for p, v in tr.tables[src] if p == point), None)
        rows.append(
            {
                "method": m,
                "family": spec.family,
                "ood_set": o,
                "group": data.groups[o],
                "auroc": ev["auroc"],
                "auroc_std": sd,
                "fpr95": ev["fpr95_id_pos"],
                "fpr95_ood_pos": ev["fpr95_ood_pos"],
                **{k: ev[k] for k in ("aupr_in_ap", "aupr_out_ap", "aupr_in_trapz", "aupr_out_trapz")},
                "hyperparams": _jsonable(params),
                "protocol": protocol if (grid or protocol == "paper_defaults") else f"{protocol} (no grid: defaults)",
                "n_id": ev["n_id"],
                "n_ood": ev["n_ood"],
                "id_accuracy": data.meta.get("id_accuracy"),
                "model": data.meta.get("model"),
            }
        )
        per_set[o] = {"params": _jsonable(params), "tuned_on": src, "val_auroc": val_auc}
        scores[o][m] = s_o  # float64 as scored: metrics recomputed from the stored scores equal the table's
        scores[data.id_name][f"{m}__vs__{o}"] = s_id
    used = [v["params"] for v in per_set.values()]
    if used and all(p == used[0] for p in used):  # the same parameters for every OOD set
        scores[data.id_name][m] = next(iter(scores[data.id_name].values()))
    chosen = {"family": spec.family, "grid": _jsonable(grid), "defaults": _jsonable(spec.defaults), "per_set": per_set}
    return MethodResult(rows=rows, chosen=chosen, scores=scores, scorer=scorer, tune=tr, grid=grid)
