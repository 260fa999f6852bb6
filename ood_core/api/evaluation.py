"""Score your own model: every method of the study on a user's classifier and data, in one call.

    from ood_core.api.evaluation import evaluate
    result = evaluate(model, train=train_set, id_test=test_set, ood={"svhn": svhn_set})
    result.metrics          # pandas DataFrame, the columns of the study's metrics.csv

One extraction pass per set (``ood_core.extraction.orchestrator``: features, logits and the gradient arrays the
chosen methods read), then the study's benchmark core (``ood_core.evaluation.benchmark.run_methods``: fit on
train, tune on the validation parts, score the test parts, metrics with bootstrap std). Same code as
the pipeline (``./run_all.sh``), so the same model, data and settings give the same rows.

Settings are the profile's sections ``extract``, ``lowdim``, ``data.val``, ``benchmark`` and ``seed``
(``ood_core.config.DEFAULTS``, documented in analysis/configs/*.yaml): pass a profile name or YAML
path, or a mapping of overrides such as ``{"extract": {"odin_T": [1, 1000]}}``.

Before it starts, ``evaluate`` prints its plan (``verbose=False``: silent): the passes per set, the
methods they serve and the expected time on the device, from costs timed on a small batch of the
user's model; :func:`plan` gives the same without running (``ood_core.api.plan``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ood_core.api.inputs import InputError, as_source, check_compatible
from ood_core.api.own_model import as_ood_model, check_grad_support, check_head, float32_copy
from ood_core.api.plan import Plan, make_plan, measure_costs, val_sizes
from ood_core.cache import write_json
from ood_core.config import load_profile, merge_settings, odin_grid
from ood_core.data.sources import BatchSource, Preprocess
from ood_core.evaluation.benchmark import BenchmarkData, run_methods
from ood_core.extraction.arrays import head_arrays
from ood_core.extraction.grid import GRID_VALUE_KEYS
from ood_core.extraction.orchestrator import ID_TEST, LOWDIM_PREFIX, TRAIN, arrays_needed, extract_sets
from ood_core.grads.layers import UnsupportedModuleError
from ood_core.grads.per_sample import check_method
from ood_core.models import OODModel
from ood_core.reporting.table_csv import metrics_frame, write_csv
from ood_core.reporting.tables import write_metrics_tables
from ood_core.scores import registry
from ood_core.versions import versions

# Wu et al.'s two subspaces (all weights), used when the settings name none: PCA of the whitened
# training gradients (K = 50, 10 power iterations) and the class means.
DEFAULT_SUBSPACES: dict[str, dict[str, Any]] = {
    "pca": {"kind": "pca", "k": 50, "n_iter": 10},
    "avg": {"kind": "class_mean"},
}
GRADIENT_INPUTS = (*GRID_VALUE_KEYS, "kl_allw_sqnorm")  # arrays that need all-weights per-sample gradients

Config = str | Path | Mapping[str, Any] | None


def study_settings(config: Config = None) -> dict[str, Any]:
    """The settings of an evaluation: ``None`` = the study's defaults (``ood_core.config.DEFAULTS``,
    with :data:`DEFAULT_SUBSPACES`); a profile name (``"demo"``) or ``.yaml`` path = that profile;
    a mapping = overrides of the defaults (same strict key and type checks as a profile file).
    ``data.val.n_val`` not given (None here): 500 validation rows per scored set, half of a set with
    fewer than 1,000 rows (``ood_core.api.plan.val_rows``), decided per set when the sizes are known."""
    if isinstance(config, (str, Path)):
        return load_profile(str(config))
    overrides: dict[str, Any] = dict(config) if isinstance(config, Mapping) else {}
    cfg = merge_settings(overrides, "config=" if config is not None else "ood_core.api.evaluation defaults")
    if "subspaces" not in (overrides.get("lowdim") or {}):
        cfg["lowdim"]["subspaces"] = {k: dict(v) for k, v in DEFAULT_SUBSPACES.items()}
    if "n_val" not in ((overrides.get("data") or {}).get("val") or {}):
        cfg["data"]["val"]["n_val"] = None  # the API's default split (ood_core.api.plan.val_rows)
    return cfg


def as_preprocess(
    preprocess: Preprocess | Mapping[str, Any] | None, cfg: Mapping[str, Any], config: Config
) -> Preprocess | None:
    """``preprocess`` as a :class:`Preprocess`; None = the profile's ``data.preprocessing`` when
    ``config`` names a profile, else None (the inputs are then already model inputs)."""
    if isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, Mapping):
        return Preprocess(**preprocess)
    if preprocess is not None:
        raise InputError(
            f"preprocess: expected a Preprocess or a mapping (size, channels, mean, std), got {type(preprocess).__name__}"
        )
    if isinstance(config, (str, Path)):
        return Preprocess(**cfg["data"]["preprocessing"])
    return None


@dataclass
class Evaluation:
    """What :func:`evaluate` found.

    ``metrics``: one row per (method, OOD set) with the columns of the study's ``metrics.csv``
    (``ood_core.reporting.table_csv.METRIC_COLUMNS``: AUROC with bootstrap std, both FPR95 conventions, AUPR,
    the chosen hyperparameters as JSON). ``scores[set][key]``: float64 test-part scores, higher = more
    in-distribution; ``key`` is the method for an OOD set, and for the ID test set
    ``<method>__vs__<ood set>`` (the parameters chosen for that OOD set; also ``<method>`` when they are
    the same for every set). ``test_rows[set]``: the rows of the input those scores belong to (the
    validation rows tuned the parameters). ``arrays[set]``: the extracted per-sample arrays
    (docs/architecture.md). ``chosen``, ``skipped``: as the pipeline's chosen_hyperparams.json /
    skipped.csv. ``settings``, ``versions``, ``seconds``: what the run used and how long it took.
    ``plan``: the plan printed before the run; ``counts[set][pass]``: the images each pass processed
    (``grid_cells``: image x grid-cell evaluations)."""

    metrics: Any  # pandas.DataFrame
    scores: dict[str, dict[str, np.ndarray]]
    test_rows: dict[str, np.ndarray]
    chosen: dict[str, Any]
    skipped: list[dict[str, Any]]
    arrays: dict[str, dict[str, np.ndarray]]
    settings: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the metric rows behind .metrics
    info: dict[str, Any] = field(default_factory=dict)  # the tables' caption facts (model, protocol, n_id)
    plan: Plan | None = None  # what was planned before the run (ood_core.api.plan)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # images per pass and set, grid cells

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write the study's tables for this evaluation to ``out_dir``: metrics.csv / .md / .tex (the
        pipeline's writers: bold best, ± std), chosen_hyperparams.json, skipped.csv, and run.json (settings,
        seed, versions, seconds). Returns the paths written (each atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = write_metrics_tables(self.rows, out, self.info)
        paths.append(write_csv(self.skipped, out / "skipped.csv", ["method", "family", "reason"]))
        paths.append(write_json(out / "chosen_hyperparams.json", {"methods": self.chosen, **self.info}))
        run = {"settings": self.settings, "seed": self.settings.get("seed"), "versions": self.versions}
        paths.append(write_json(out / "run.json", {**run, "seconds": self.seconds}))
        return paths

    def id_and_ood_scores(self, method: str, ood_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(ID test scores, OOD test scores) of ``method`` at the parameters chosen for ``ood_set``."""
        id_scores = self.scores[ID_TEST].get(f"{method}__vs__{ood_set}")
        if id_scores is None or method not in self.scores.get(ood_set, {}):
            raise KeyError(f"no scores of method '{method}' for OOD set '{ood_set}' (see .skipped and .metrics)")
        return id_scores, self.scores[ood_set][method]


@dataclass
class Prepared:
    """An evaluation's inputs, checked: settings (``data.val.n_val`` per scored set), the model
    (float32), the sets as batch sources, the methods, the arrays they read and the notes to print."""

    cfg: dict[str, Any]
    pre: Preprocess | None
    net: OODModel
    sources: dict[str, BatchSource]
    names: list[str]
    skipped: list[dict[str, Any]]
    needs: set[str]
    device: torch.device
    grad_method: str
    notes: list[str] = field(default_factory=list)

    def plan(self, probe: bool = True) -> Plan:
        """The :class:`~ood_core.api.plan.Plan`; ``probe``: with the expected seconds (one small batch timed)."""
        costs = None
        if probe:
            costs = measure_costs(
                self.net,
                self.sources[TRAIN],
                self.cfg,
                self.needs,
                num_classes=int(self.net.head.out_features),
                device=self.device,
                input_std=None if self.pre is None else self.pre.std,
                grad_method=self.grad_method,
            )
        lens = {name: len(src) for name, src in self.sources.items()}
        return make_plan(self.cfg, lens, self.names, self.needs, device=self.device, costs=costs, notes=self.notes)


def prepare(
    model: torch.nn.Module,
    *,
    train: Any,
    id_test: Any,
    ood: Mapping[str, Any],
    methods: Sequence[str] | None = None,
    config: Config = None,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    head: str | torch.nn.Linear | None = None,
    features: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    grad_method: str = "hooks",
) -> Prepared:
    """Read and check everything :func:`evaluate` is given (its arguments, same errors), computing nothing."""
    cfg = study_settings(config)
    pre = as_preprocess(preprocess, cfg, config)
    dev = torch.device(device)
    net, cast = float32_copy(as_ood_model(model, head=head, features=features))
    net = net.eval().to(dev)
    bad = [n for n in ood if n in (TRAIN, ID_TEST)]
    if bad:
        raise InputError(f"ood: set name(s) {bad} are reserved for the ID sets; rename them")
    sources: dict[str, BatchSource] = {
        TRAIN: as_source(train, name=TRAIN, preprocess=pre),
        ID_TEST: as_source(id_test, name=ID_TEST, preprocess=pre),
        **{name: as_source(data, name=name, preprocess=pre) for name, data in ood.items()},
    }
    if not ood:
        raise InputError("ood: give at least one OOD set (name -> data)")
    check_compatible(sources)
    scored = {name: len(src) for name, src in sources.items() if name != TRAIN}
    sizes = val_sizes(cfg["data"]["val"]["n_val"], scored)  # a set too small for the split fails here, named
    if cfg["data"]["val"]["n_val"] is None:
        cfg["data"]["val"]["n_val"] = sizes
    probe, _ = next(iter(sources[TRAIN].batches(2, dev)))
    check_head(net, probe)
    if cfg["extract"]["eps_space"] == "pixel" and pre is None:
        raise InputError("extract.eps_space 'pixel' needs preprocess= (the std the inputs were normalised with)")
    check_method(grad_method)
    names, skipped = _methods(net, methods if methods is not None else cfg["benchmark"]["methods"], grad_method)
    notes = [] if cast is None else [cast]
    return Prepared(cfg, pre, net, sources, names, skipped, arrays_needed(names), dev, grad_method, notes)


def plan(model: torch.nn.Module, *, probe: bool = True, **inputs: Any) -> Plan:
    """What :func:`evaluate` would compute on these inputs (its keyword arguments ``train``, ``id_test``,
    ``ood``, ``methods``, ``config``, ``preprocess``, ``head``, ``features``, ``device``, ``grad_method``)
    and, with ``probe``, the expected seconds from one small batch of each pass timed on the device.
    ``print(plan(...))`` shows it as ``evaluate`` does; nothing else is computed."""
    return prepare(model, **inputs).plan(probe=probe)


def evaluate(
    model: torch.nn.Module,
    *,
    train: Any,
    id_test: Any,
    ood: Mapping[str, Any],
    methods: Sequence[str] | None = None,
    config: Config = None,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    groups: Mapping[str, str] | None = None,
    head: str | torch.nn.Linear | None = None,
    features: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    protocol: str | None = None,
    bootstrap_n: int | None = None,
    held_out: str | None = None,
    model_name: str | None = None,
    strict: bool = True,
    grad_method: str = "hooks",
    verbose: bool = True,
) -> Evaluation:
    """Every (or the given) OOD method of the study on ``model``, tuned and scored as the study does.

    Args:
        model: a classifier whose last layer is an ``nn.Linear`` (found automatically, or named by
            ``head="fc"``), or any module with ``features`` and ``head``; or give ``features``
            (x -> penultimate features) and ``head`` (the ``nn.Linear``) explicitly. A float16 /
            bfloat16 model is evaluated on a float32 copy (one line says so; the model is unchanged).
        train, id_test: the ID training data (fits: class means, KNN bank, subspaces) and the ID test
            data, with labels 0..C-1. ``ood``: OOD set name -> data. Each accepts a torch ``Dataset``
            (items ``x`` or ``(x, y)``), a ``DataLoader`` (read in index order), a float tensor or array
            (N, C, H, W) of model inputs (or a tuple ``(x, y)``), or uint8 images (N, H, W[, C]) /
            an ``ood_core.data.ImageSet`` with ``preprocess``.
        methods: registered method names (``ood_core.scores.registry.names()``); default: the settings'
            ``benchmark.methods``, else every method the model allows (the all-weights gradient methods
            need layers the hooks engine supports: Linear, Conv2d, BatchNorm).
        config: the settings (:func:`study_settings`): None, a profile name / YAML path, or overrides.
            None is the papers' full 10 T x 21 eps grid on every test row and PCA / class-mean
            subspaces fitted on every training row: the plan printed first says what that costs.
            The ID test set and every OOD set are split into validation rows (tuning) and test rows
            (scores): ``data.val.n_val`` (a count or a fraction), by default 500 rows per set and half
            of a set with fewer than 1,000 rows; a set needs at least 2 rows.
        preprocess: how uint8 images become inputs (``Preprocess`` or its fields as a mapping).
        groups: OOD set -> group (near / far / ...) for the table; default "ood".
        device: where the model runs. protocol / bootstrap_n / held_out: override the settings'
            ``benchmark`` section (protocols: ``ood_core.evaluation.tuning.PROTOCOLS``).
        model_name: the ``model`` column (default: the class name). strict: False = a method that
            fails is skipped (listed in ``.skipped``) instead of raising.
        grad_method: how per-sample gradients are computed: ``"hooks"`` (one batched backward; the
            layers with a rule: Linear, Conv2d with groups=1, BatchNorm) or ``"vmap"`` (torch.func:
            any layer, e.g. LayerNorm / GroupNorm, slower).
        verbose: print the plan to stderr before starting (:func:`plan`: passes per set, the methods
            they serve, the expected time from one small batch of each pass timed on ``device``, a
            warning when one pass group is most of it) and the time taken at the end.

    Returns:
        An :class:`Evaluation` (``.metrics`` DataFrame, ``.scores``, ``.arrays``, ``.plan``, ...).

    Raises:
        OwnModelError: the model has no usable linear head. InputError: data of an unsupported type,
        NaN / inf inputs, sets of different shapes, ID labels outside 0..C-1, a set too small for
        its validation / test split (named, with the minimum). UnsupportedModuleError:
        a requested all-weights gradient method on a layer the hooks engine cannot handle (it names
        the layer; ``grad_method="vmap"`` handles it). ConfigError: bad settings. KeyError: an unknown method name.
    """
    t0 = time.perf_counter()
    prep = prepare(
        model,
        train=train,
        id_test=id_test,
        ood=ood,
        methods=methods,
        config=config,
        preprocess=preprocess,
        head=head,
        features=features,
        device=device,
        grad_method=grad_method,
    )
    the_plan = prep.plan(probe=verbose)
    if verbose:
        print(the_plan, file=sys.stderr, flush=True)
    cfg, pre, net, names, needs = prep.cfg, prep.pre, prep.net, prep.names, prep.needs
    bench = cfg["benchmark"]
    sets = extract_sets(
        net,
        prep.sources,
        cfg,
        needs=needs,
        num_classes=int(net.head.out_features),
        device=prep.device,
        input_std=None if pre is None else pre.std,
        grad_method=grad_method,
    )
    odin_T, odin_eps = odin_grid(cfg)
    w_b = head_arrays(net)  # W, b beside every set's arrays: what the scores receive
    test = sets.arrays[ID_TEST]
    data = BenchmarkData(
        meta={
            "model": model_name or type(model).__name__,
            "id_accuracy": float((test["logits"].argmax(1) == test["y"]).mean()),
            "num_classes": int(net.head.out_features),
            "grid": {"odin_T": odin_T, "odin_eps": odin_eps},
            "lowdim_subspaces": [s.name for s in sets.subspaces],
        },
        train_name=TRAIN,
        id_name=ID_TEST,
        groups={name: (groups or {}).get(name, "ood") for name in ood},
        arrays={name: {**a, **w_b} for name, a in sets.arrays.items()},
        splits=sets.splits,
    )
    t1 = time.perf_counter()
    res = run_methods(
        data,
        names,
        protocol=protocol or bench["protocol"],
        held_out=held_out or bench["held_out"],
        bootstrap_n=int(bench["bootstrap"] if bootstrap_n is None else bootstrap_n),
        seed=int(cfg["seed"]),
        strict=strict,
    )
    protocol_used = protocol or bench["protocol"]
    info = {
        "model": data.meta["model"],
        "id_accuracy": data.meta["id_accuracy"],
        "protocol": protocol_used if res.held_out is None else f"{protocol_used} (held-out: {res.held_out})",
        "n_id": int(sets.splits[ID_TEST].test.size),
        "bootstrap_n": int(bench["bootstrap"] if bootstrap_n is None else bootstrap_n),
        "title": f"own model / {data.meta['model']}",
    }
    out = Evaluation(
        rows=res.rows,
        info=info,
        metrics=metrics_frame(res.rows),
        scores=res.scores,
        test_rows={name: split.test for name, split in sets.splits.items()},
        chosen=res.chosen,
        skipped=prep.skipped + res.skipped,
        arrays=sets.arrays,
        settings=cfg,
        versions=versions(),
        seconds={"extract": sets.seconds, "benchmark": time.perf_counter() - t1, "total": time.perf_counter() - t0},
        plan=the_plan,
        counts=work_counts(sets.timings),
    )
    if verbose:
        print(_took(out.seconds, the_plan), file=sys.stderr, flush=True)
    return out


def work_counts(timings: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """{set: {component: images}} plus ``grid_cells`` (image x cell evaluations) from the orchestrator's timings."""
    return {
        name: {
            "grid_cells": int(t.get("_grid_cells", 0)),
            **{c: int(v["n"]) for c, v in t.items() if c != "_grid_cells"},
        }
        for name, t in timings.items()
    }


def _took(seconds: Mapping[str, Any], the_plan: Plan) -> str:
    """The closing line: seconds taken, beside the plan's expectation."""
    extract = sum(sum(v.values()) for v in seconds["extract"].values())
    expected = "" if the_plan.seconds is None else f" (expected {the_plan.seconds:.1f} s)"
    return f"evaluate: took {seconds['total']:.1f} s: extraction {extract:.1f} s{expected}, scores {seconds['benchmark']:.1f} s"


def _needs_all_weight_gradients(method: str) -> bool:
    spec = registry.get(method)
    return any(k in GRADIENT_INPUTS or k.startswith(LOWDIM_PREFIX) for k in spec.needs)


def _methods(net: torch.nn.Module, methods: Sequence[str] | None, grad_method: str) -> tuple[list[str], list[dict]]:
    """The methods to run and the skipped ones (method, family, reason): the given ones (an unsupported
    layer for a requested gradient method raises), else every registered method the model allows."""
    for m in methods or ():
        registry.get(m)  # unknown names fail loudly, listing the known ones
    unsupported: UnsupportedModuleError | None = None
    if grad_method == "hooks":  # vmap handles every layer
        try:
            check_grad_support(net, "all")
        except UnsupportedModuleError as e:
            unsupported = e
    if methods is not None:
        if unsupported is not None and any(_needs_all_weight_gradients(m) for m in methods):
            raise unsupported
        return list(methods), []
    names, skipped = [], []
    for m in registry.names():
        if unsupported is not None and _needs_all_weight_gradients(m):
            skipped.append(
                {"method": m, "family": registry.get(m).family, "reason": f"all-weights gradients: {unsupported}"}
            )
        else:
            names.append(m)
    return names, skipped
