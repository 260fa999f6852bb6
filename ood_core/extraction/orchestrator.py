"""The extraction orchestrator: every set of one evaluation -> the arrays the scores read, the
validation / test split of every scored set, Wu et al.'s subspaces and the timings.

One function, :func:`extract_sets`, serves the pipeline's extract stage (``analysis/extract.py``:
a :class:`~ood_core.extraction.store.DiskStore` under the analysis cache, one process or torchrun
ranks) and the Python API (``ood_core.api.evaluation.evaluate``: a :class:`~ood_core.extraction.store.MemoryStore`);
:class:`~ood_core.api.detector.Detector` calls its two parts, :func:`fit_subspaces` and :func:`extract_one`.
So every caller gets the same arrays for the same model, data and settings.

Per set: one batched pass (:func:`~ood_core.extraction.arrays.extract_arrays`); under
``grodin_test_points: selected`` the ODIN / GRODIN grid runs on the validation rows only, the cells
chosen there (:func:`~ood_core.extraction.grid_selection.select_test_points`) then on the test rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import torch

from ood_core.api.inputs import InputError
from ood_core.cache import hash_config
from ood_core.config import ID_VAL, ConfigError, odin_grid
from ood_core.data.sources import BatchSource
from ood_core.data.splits import set_split
from ood_core.evaluation.tuning import Split
from ood_core.extraction.arrays import (
    ExtractResult,
    Subspace,
    extract_arrays,
    grid_cells_pass,
    grid_on_rows,
    no_grid_rows,
)
from ood_core.extraction.distributed import Ranks
from ood_core.extraction.grid import FULL_POINTS_KEY, GRID_AXIS_KEYS, GRID_VALUE_KEYS, full_points
from ood_core.extraction.grid_selection import select_test_points
from ood_core.extraction.store import Arrays, ExtractStore, MemoryStore
from ood_core.extraction.subspaces import fit_subspace, subspace_params
from ood_core.models import OODModel
from ood_core.progress import ExtractPlan, StageProgress, plan_extract
from ood_core.scores import registry

TRAIN, ID_TEST = "train", "id_test"  # the names of the ID sets (the OOD sets take the user's names; ID_VAL:
# the ID validation set, ood_core.config)
GRODIN_TEST_POINTS = ("grid", "selected")
LOWDIM_PREFIX = "lowdim_"
ACTIVATION_PREFIXES = ("nac_", "gaia_")  # the arrays of grads/activations.py

# a set's data, or a function that loads it (called only when the set is not stored already)
SourceLike = Union[BatchSource, Callable[[], BatchSource]]


def grid_test_points(extract: Mapping[str, Any]) -> str:
    """``extract.grodin_test_points``, checked: "grid" (every cell on every row) or "selected" (the
    cells chosen on validation rows, on the other rows; ``ood_core.extraction.grid_selection``)."""
    mode = extract["grodin_test_points"]
    if mode not in GRODIN_TEST_POINTS:
        raise ConfigError(f"extract.grodin_test_points must be one of {GRODIN_TEST_POINTS}, got {mode!r}")
    return mode


def arrays_needed(methods: Iterable[str]) -> set[str]:
    """The cached-array names the methods read (their registry ``needs``; a low-dim input stays
    ``lowdim_{subspace}``: every configured subspace is extracted for it)."""
    return {key for m in methods for key in registry.get(m).needs}


def extract_settings(extract: Mapping[str, Any], needs: set[str] | None) -> dict[str, Any]:
    """The ``extract`` section with the passes no method needs switched off (the ODIN / GRODIN grid,
    the all-weights KL norm, iODIN's cells, the activation gradients): one pass per batch computes only what is read. ``needs`` None: as given."""
    out = dict(extract)
    if needs is not None:
        out["grodin"] = bool(extract["grodin"]) and bool(needs & set(GRID_VALUE_KEYS))
        out["kl_allweights"] = bool(extract["kl_allweights"]) and "kl_allw_sqnorm" in needs
        out["iodin"] = bool(extract["iodin"]) and "iodin_s" in needs
        out["activation_grads"] = bool(extract["activation_grads"]) and any(
            k.startswith(ACTIVATION_PREFIXES) for k in needs
        )
    return out


def check_class_labels(name: str, y: np.ndarray, num_classes: int) -> None:
    """Raise ``InputError`` unless every label of ID set ``name`` is a class of the model (0..C-1)."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise InputError(
            f"set '{name}': ID data needs class labels 0..{num_classes - 1} (the model's head has {num_classes} "
            f"outputs); row {int(bad[0])} has {int(y[bad[0]])} ({bad.size} row(s) outside; -1 = no label given)"
        )


def study_split(cfg: Mapping[str, Any], name: str, n: int) -> Split:
    """The validation / test split of scored set ``name`` (``n`` rows) under ``cfg['data']['val']``
    (``n_val``: a count, a fraction, or {set: count} as the API gives it)."""
    val = cfg["data"]["val"]
    n_val = val["n_val"][name] if isinstance(val["n_val"], Mapping) else val["n_val"]
    return Split(*set_split(name, n, n_val, val["seed"]))


def set_role(name: str, val_oods: Sequence[str]) -> str:
    """``"train"`` (no grid), ``"id"`` (labels: ``id_test``, ``id_val``) or ``"ood"`` (no labels)."""
    if name == TRAIN:
        return "train"
    return "ood" if name not in (ID_TEST, ID_VAL) or name in val_oods else "id"


def split_of(cfg: Mapping[str, Any], name: str, n: int, sets: Sequence[str], val_oods: Sequence[str]) -> Split:
    """The validation / test rows of set ``name`` among ``sets``: a validation set (``id_val`` or one
    of ``val_oods``) tunes on all its rows and has no test part; with an ``id_val`` among ``sets`` the
    ID test set is tested on all its rows; every other scored set takes :func:`study_split`."""
    every, none = np.arange(n), np.zeros(0, np.int64)
    if name == ID_VAL or name in val_oods:
        return Split(every, none)
    if name == ID_TEST and ID_VAL in sets:
        return Split(none, every)
    return study_split(cfg, name, n)


def timing_entry(res: ExtractResult) -> dict[str, Any]:
    """{component: {seconds, n (images it processed)}} plus the grid's image x cell evaluations."""
    entry: dict[str, Any] = {c: {"seconds": sec, "n": res.counts.get(c, res.n)} for c, sec in res.seconds.items()}
    entry["_grid_cells"] = res.grid_cells
    return entry


@dataclass
class ExtractedSets:
    """The outcome of :func:`extract_sets`: ``store`` holds every set's arrays (``arrays[set]``,
    docs/architecture.md keys), ``splits[set]`` for the ID test set and every OOD set, the subspaces,
    ``keys[set]`` (what each set's arrays were made from) and ``timings[set][component]`` =
    {seconds, n} for the sets computed in this call (``_grid_cells``: image x cell evaluations)."""

    store: ExtractStore
    splits: dict[str, Split]
    subspaces: list[Subspace] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    subspace_seconds: float = 0.0

    @property
    def arrays(self) -> dict[str, Arrays]:
        """Every set's arrays, loaded from the store."""
        return {name: self.store.get(name) for name in self.keys}

    @property
    def seconds(self) -> dict[str, dict[str, float]]:
        """``seconds[set][component]`` (and ``seconds['subspaces']['fit']`` when subspaces were fitted)."""
        out = {n: {c: v["seconds"] for c, v in t.items() if not c.startswith("_")} for n, t in self.timings.items()}
        if self.subspace_seconds:
            out["subspaces"] = {"fit": self.subspace_seconds}
        return out


def _resolve(src: SourceLike) -> BatchSource:
    return src() if callable(src) and not hasattr(src, "batches") else src  # type: ignore[return-value]


def fit_subspaces(
    model: OODModel,
    train: SourceLike,
    cfg: Mapping[str, Any],
    names: Sequence[str],
    *,
    num_classes: int,
    device: torch.device,
    store: ExtractStore | None = None,
    ranks: Ranks = Ranks(),
    model_id: str = "",
    train_id: Any = None,
    grad_method: str = "hooks",
    log: Callable[[str], None] | None = None,
    progress: StageProgress | None = None,
) -> tuple[list[Subspace], dict[str, str]]:
    """Wu et al.'s subspaces ``names`` of ``cfg['lowdim']['subspaces']``, fitted on ``train``
    (:func:`~ood_core.extraction.subspaces.fit_subspace`) or read from ``store`` when stored under the same key
    (model, ``train_id`` = what the training data is, subspace settings, seed); a fit interrupted
    before it was stored resumes after its last finished pass (``store.subspace_checkpoint``).
    Returns the subspaces (on ``device``) and their keys."""
    store = store if store is not None else MemoryStore()
    lcfg = cfg["lowdim"]
    specs = lcfg["subspaces"]
    stats_memo: dict[str, Any] = {}
    subspaces: list[Subspace] = []
    keys: dict[str, str] = {}
    for name in names:
        if name not in specs:
            raise ConfigError(f"subspace '{name}' is not in lowdim.subspaces ({sorted(specs)})")
        spec = specs[name]
        params = subspace_params(spec, lcfg)
        key = subspace_key(cfg, name, model_id, train_id)
        blob = store.load_subspace(name, key)
        if blob is not None:
            stats = (blob["mean"], blob["scale"]) if "mean" in blob else None
            if stats is not None:
                stats_memo.setdefault(repr(params), stats)
            sub = Subspace(name, blob["V"], stats, params)
        else:
            t0 = time.perf_counter()
            checkpoint = None if ranks.is_distributed else store.subspace_checkpoint(name, key)
            sub = fit_subspace(
                model,
                _resolve(train),
                name,
                spec,
                lcfg,
                num_classes=num_classes,
                seed=int(cfg["seed"]),
                device=device,
                stats_memo=stats_memo,
                ranks=ranks,
                grad_method=grad_method,
                checkpoint=checkpoint,
                progress=progress,
            )
            took = time.perf_counter() - t0
            if ranks.is_main:
                blob = {"V": sub.V.cpu(), "seconds": took}
                if sub.stats is not None:
                    blob["mean"], blob["scale"] = sub.stats[0].cpu(), sub.stats[1].cpu()
                store.save_subspace(name, key, blob)
                if checkpoint is not None:
                    checkpoint.clear()
                if log:
                    log(f"subspace '{name}' ({spec['kind']}, K={sub.V.shape[1]}) in {took:.1f}s")
            ranks.barrier()
        sub.V = sub.V.to(device)
        sub.stats = None if sub.stats is None else tuple(s.to(device) for s in sub.stats)
        subspaces.append(sub)
        keys[name] = key
    return subspaces, keys


def subspace_key(cfg: Mapping[str, Any], name: str, model_id: str = "", train_id: Any = None) -> str:
    """What subspace ``name`` of ``cfg['lowdim']`` is fitted from: model, training data, settings, seed."""
    lcfg = cfg["lowdim"]
    spec = lcfg["subspaces"][name]
    common = {"params": subspace_params(spec, lcfg), **{k: lcfg[k] for k in ("normalisation", "n_samples")}}
    return hash_config(model_id, common, spec, train_id, cfg["seed"])


def extract_one(
    model: OODModel,
    source: BatchSource,
    cfg: Mapping[str, Any],
    ecfg: Mapping[str, Any],
    device: torch.device,
    *,
    role: str,
    subspaces: Sequence[Subspace] = (),
    input_std: Sequence[float] | None = None,
    grodin_rows: np.ndarray | None = None,
    grad_method: str = "hooks",
    desc: str | None = None,
    progress: StageProgress | None = None,
) -> ExtractResult:
    """One set's pass under the profile-shaped settings ``cfg`` (``ecfg``: its ``extract`` section as
    used, :func:`extract_settings`); ``role``: ``"train"`` (no grid), ``"id"`` or ``"ood"`` (no labels)."""
    Ts, epss = odin_grid({"extract": ecfg})
    return extract_arrays(
        model,
        source,
        ecfg,
        device,
        input_std=input_std,
        odin_T=Ts,
        odin_eps=epss,
        subspaces=subspaces,
        lowdim_chunk=int(cfg["lowdim"]["chunk"]),
        is_ood=role == "ood",
        with_grodin=role != "train",
        grodin_rows=grodin_rows,
        desc=desc or source.name,
        grad_method=grad_method,
        progress=progress,
    )


def extract_sets(
    model: OODModel,
    sources: Mapping[str, SourceLike],
    cfg: Mapping[str, Any],
    *,
    num_classes: int,
    device: torch.device,
    needs: set[str] | None = None,
    input_std: Sequence[float] | None = None,
    grad_method: str = "hooks",
    store: ExtractStore | None = None,
    ranks: Ranks = Ranks(),
    model_id: str = "",
    identity: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    val_oods: Sequence[str] = (),
    on_plan: Callable[[ExtractPlan], None] | None = None,
) -> ExtractedSets:
    """Arrays of every set in ``sources`` (``train``, ``id_test`` and the OOD sets, in that order;
    optionally validation sets: ``id_val`` with labels and the OOD sets named in ``val_oods``, each
    with the whole grid on every row, :func:`split_of`; ``id_test`` may be left out beside an
    ``id_val``: an evaluation of validation rows only).

    ``cfg`` is a profile-shaped settings dict (sections ``extract``, ``lowdim``, ``data.val``,
    ``seed``); ``needs`` the array names to compute (:func:`arrays_needed`; None: everything the
    ``extract`` section asks for, and every configured subspace). ``store`` keeps the arrays (default
    in memory); a set stored under the same key (``model_id``, ``identity[set]`` = what the data is,
    the extract settings, the grid and the subspaces' keys) is not recomputed. Under torchrun
    (``ranks``) every rank computes its shard of whole batches and rank 0 joins them. ``grad_method``:
    ``"hooks"`` or ``"vmap"`` (:func:`~ood_core.extraction.arrays.extract_arrays`). Every pass reports
    into one display of the whole work (:class:`~ood_core.progress.StageProgress`), planned up front
    and handed to ``on_plan`` before the first pass."""
    check_sources(sources)
    store = store if store is not None else MemoryStore()
    identity = identity or {}
    ecfg = extract_settings(cfg["extract"], needs)
    mode = grid_test_points(ecfg)
    Ts, epss = odin_grid(cfg)
    wanted = wanted_subspaces(cfg, needs)
    stored, loaded, plan = _plan(sources, cfg, ecfg, store, wanted, model_id, identity)
    if on_plan is not None and ranks.is_main:
        on_plan(plan)
    progress = StageProgress("extract", plan.units, mode=None if ranks.is_main else "off")
    t0 = time.perf_counter()
    subspaces, sub_keys = fit_subspaces(
        model,
        sources[TRAIN],
        cfg,
        wanted,
        num_classes=num_classes,
        device=device,
        store=store,
        ranks=ranks,
        model_id=model_id,
        train_id=identity.get(TRAIN),
        grad_method=grad_method,
        log=log,
        progress=progress,
    )
    out = ExtractedSets(store, {}, subspaces, subspace_seconds=time.perf_counter() - t0 if wanted else 0.0)
    for name, src in sources.items():
        key = hash_config(model_id, identity.get(name), ecfg, Ts, epss, sub_keys)
        out.keys[name] = key
        role = set_role(name, val_oods)
        if name in stored:
            n = stored[name]
        else:
            data = loaded.pop(name)
            n = len(data)
            selected = mode == "selected" and role != "train"
            val_rows = split_of(cfg, name, n, list(sources), val_oods).val if selected else None
            if role == "train" or (val_rows is not None and len(val_rows) == n):
                val_rows = None  # no grid (train), or the whole grid on every row (a validation set)
            kw: dict[str, Any] = dict(role=role, subspaces=subspaces, input_std=input_std, grad_method=grad_method)
            kw.update(progress=progress, desc=f"extract {name}")
            if ranks.is_distributed:
                arrays, res = _extract_sharded(model, data, cfg, ecfg, device, store, ranks, key, name, val_rows, kw)
            else:
                res = extract_one(model, data, cfg, ecfg, device, grodin_rows=val_rows, **kw)
                arrays = res.arrays
            if ranks.is_main and arrays is not None:  # rank 0 holds the joined arrays
                if role != "ood":
                    check_class_labels(name, arrays["y"], num_classes)
                store.save(name, key, arrays)
                store.remove_parts(name)
            out.timings[name] = timing_entry(res)
            if log:
                log(
                    f"{name}: {res.n} images{_shard_note(ranks)}, "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items())
                )
        if role != "train":
            out.splits[name] = split_of(cfg, name, n, list(sources), val_oods)
    if mode == "selected" and ecfg["grodin"]:
        _fill_selected_cells(
            model, sources, cfg, ecfg, device, input_std, grad_method, out, ranks, log, val_oods, plan, progress
        )
    progress.close()
    return out


def check_sources(sources: Mapping[str, SourceLike]) -> None:
    """Raise ``ValueError`` unless ``sources`` holds the training set and an ID set to score or tune on
    (``id_test``, or ``id_val`` alone: an evaluation of validation rows only)."""
    if TRAIN not in sources:
        raise ValueError(f"extract_sets: no '{TRAIN}' set among {list(sources)}")
    if ID_TEST not in sources and ID_VAL not in sources:
        raise ValueError(f"extract_sets: no '{ID_TEST}' (or '{ID_VAL}') set among {list(sources)}")


def wanted_subspaces(cfg: Mapping[str, Any], needs: set[str] | None) -> list[str]:
    """The subspaces of ``cfg['lowdim']`` to fit: every configured one, none when low-dim is off or
    ``needs`` names no low-dim array."""
    lcfg = cfg["lowdim"]
    if not lcfg["enabled"] or (needs is not None and not any(k.startswith(LOWDIM_PREFIX) for k in needs)):
        return []
    return list(lcfg["subspaces"])


def plan_sets(
    sources: Mapping[str, SourceLike],
    cfg: Mapping[str, Any],
    *,
    needs: set[str] | None = None,
    store: ExtractStore | None = None,
    model_id: str = "",
    identity: Mapping[str, Any] | None = None,
) -> ExtractPlan:
    """The work :func:`extract_sets` would do with the same arguments (the sets and subspaces not
    stored yet); loads the data of every set not stored."""
    check_sources(sources)
    ecfg = extract_settings(cfg["extract"], needs)
    wanted = wanted_subspaces(cfg, needs)
    store = store if store is not None else MemoryStore()
    return _plan(sources, cfg, ecfg, store, wanted, model_id, identity or {})[2]


def _plan(
    sources: Mapping[str, SourceLike],
    cfg: Mapping[str, Any],
    ecfg: Mapping[str, Any],
    store: ExtractStore,
    wanted: Sequence[str],
    model_id: str,
    identity: Mapping[str, Any],
) -> tuple[dict[str, int], dict[str, BatchSource], ExtractPlan]:
    """Before the first pass: the rows of every set already stored, the data of every other set,
    and the :class:`~ood_core.progress.ExtractPlan` of what remains."""
    lcfg = cfg["lowdim"]
    sub_keys = {n: subspace_key(cfg, n, model_id, identity.get(TRAIN)) for n in wanted if n in lcfg["subspaces"]}
    Ts, epss = odin_grid(cfg)
    stored: dict[str, int] = {}
    loaded: dict[str, BatchSource] = {}
    for name, src in sources.items():
        kept = store.load(name, hash_config(model_id, identity.get(name), ecfg, Ts, epss, sub_keys))
        if kept is not None:
            stored[name] = len(kept["y"])
            del kept  # a set's arrays are not held while the next one loads
        else:
            loaded[name] = _resolve(src)
    to_fit, memo = [], set()
    for name in sub_keys:
        spec = lcfg["subspaces"][name]
        params = repr(subspace_params(spec, lcfg))
        needs_stats = lcfg["normalisation"] != "none" and params not in memo
        memo.add(params)  # a stored subspace's statistics serve the later fits too
        if not store.has_subspace(name, sub_keys[name]):
            to_fit.append((name, spec, params, needs_stats))
    fit_rows = 0
    if to_fit:
        n_train = stored[TRAIN] if TRAIN in stored else len(loaded[TRAIN])
        fit_rows = min(int(lcfg["n_samples"] or n_train), n_train)
    sizes = {n: len(d) for n, d in loaded.items()}
    roles = {n: "train" if n == TRAIN else "scored" for n in sizes}
    cells = len(Ts) * len(epss) if ecfg["grodin"] else 0
    return stored, loaded, plan_extract(sizes, roles, grid_cells=cells, subspaces_to_fit=to_fit, fit_rows=fit_rows)


def _shard_note(ranks: Ranks) -> str:
    """What a log line's image count covers under torchrun (rank 0 counts its own shard)."""
    return f" (rank 0's shard of {ranks.world})" if ranks.is_distributed else ""


def join_rows(parts: list[Arrays]) -> Arrays:
    """Shards' arrays joined in rank order: grid values along their last (sample) axis, grid axes
    from the first shard, every other array along axis 0; empty shards (no keys) are skipped."""
    parts = [p for p in parts if p]
    out: Arrays = {}
    for key in parts[0]:
        if key in GRID_AXIS_KEYS:
            out[key] = parts[0][key]
        else:
            out[key] = np.concatenate([p[key] for p in parts], axis=-1 if key in GRID_VALUE_KEYS else 0)
    return out


def _sharded(
    store: ExtractStore,
    ranks: Ranks,
    tag: str,
    key: str,
    n: int,
    batch_size: int,
    compute: Callable[[np.ndarray], ExtractResult],
) -> tuple[Arrays | None, ExtractResult]:
    """Run ``compute(positions)`` on this rank's shard of ``n`` rows (whole batches), keep it as part
    ``<tag>.rank<r>of<w>`` (reused by a rerun when its key matches), and on rank 0 return every
    rank's arrays joined in rank order (other ranks: None)."""
    own = f"{tag}.rank{ranks.rank}of{ranks.world}"
    pkey = hash_config(key, tag, ranks.rank, ranks.world)
    pos = ranks.batch_shard(n, batch_size)
    kept = store.load_part(own, pkey)
    if kept is not None:
        res = ExtractResult(kept, n=len(pos))
    else:
        res = compute(pos) if len(pos) else ExtractResult({}, n=0)
        store.save_part(own, pkey, res.arrays)
    ranks.barrier()
    if not ranks.is_main:
        return None, res
    return join_rows([store.get_part(f"{tag}.rank{r}of{ranks.world}") for r in range(ranks.world)]), res


def _extract_sharded(
    model: OODModel,
    data: BatchSource,
    cfg: Mapping[str, Any],
    ecfg: Mapping[str, Any],
    device: torch.device,
    store: ExtractStore,
    ranks: Ranks,
    key: str,
    name: str,
    val_rows: np.ndarray | None,
    kw: dict[str, Any],
) -> tuple[Arrays | None, ExtractResult]:
    """One set's arrays from every rank's shard; the same arrays as one :func:`extract_one` call
    with ``grodin_rows=val_rows`` (the validation rows' grid is sharded on its own)."""
    bs = int(ecfg["batch_size"])
    with_grid = kw["role"] != "train" and bool(ecfg["grodin"])
    main_ecfg = ecfg if val_rows is None else {**ecfg, "grodin": False}

    def main(pos: np.ndarray) -> ExtractResult:  # a contiguous block: a view, laid out as the whole set
        return extract_one(model, data.rows(int(pos[0]), int(pos[-1]) + 1), cfg, main_ecfg, device, **kw)

    arrays, res = _sharded(store, ranks, f"{name}.main", key, len(data), bs, main)
    if val_rows is None or not with_grid:
        return arrays, res
    Ts, epss = odin_grid(cfg)

    def grid(pos: np.ndarray) -> ExtractResult:
        return grid_cells_pass(
            model,
            data.take(val_rows[pos]),
            ecfg,
            device,
            input_std=kw["input_std"],
            odin_T=Ts,
            odin_eps=epss,
            points=np.ones((len(epss), len(Ts)), bool),
            desc=f"extract {name} grid",
            grad_method=kw["grad_method"],
            progress=kw.get("progress"),
        )

    if len(val_rows) == 0:  # no validation rows (the ID test set beside an id_val): no cell computed yet
        gres = no_grid_rows(Ts, epss)
        got: Arrays | None = gres.arrays
    else:
        got, gres = _sharded(store, ranks, f"{name}.valgrid", key, len(val_rows), bs, grid)
    res.seconds["grodin_grid"] = gres.seconds.get("grodin_selected", 0.0)
    res.counts["grodin_grid"], res.grid_cells = gres.n, gres.grid_cells
    if arrays is not None and got is not None:  # rank 0
        arrays.update(grid_on_rows(len(data), val_rows, got, Ts, epss))
    return arrays, res


def _fill_selected_cells(
    model: OODModel,
    sources: Mapping[str, SourceLike],
    cfg: Mapping[str, Any],
    ecfg: Mapping[str, Any],
    device: torch.device,
    input_std: Sequence[float] | None,
    grad_method: str,
    out: ExtractedSets,
    ranks: Ranks,
    log: Callable[[str], None] | None,
    val_oods: Sequence[str] = (),
    work: ExtractPlan | None = None,
    progress: StageProgress | None = None,
) -> None:
    """Choose the grid cells on the validation rows (validation sets: all their rows) of every set
    (rank 0), then compute exactly those cells on the test rows of each set (every rank its shard)
    and store them; the display's total (``work``: every cell planned on the test rows) revised to
    the chosen cells."""
    Ts, epss = odin_grid(cfg)
    scored = list(out.splits)
    plan = None  # {set: cells still to compute}, decided on rank 0
    if ranks.is_main:
        arrays = {n: out.store.get(n) for n in scored}
        if all("odin_s" in a for a in arrays.values()):
            id_val = ID_VAL if ID_VAL in scored else ID_TEST
            oods = [n for n in scored if n not in (ID_TEST, ID_VAL, *val_oods)]
            need = select_test_points(
                arrays[id_val],
                out.splits[id_val],
                {o: arrays[o] for o in oods},
                {o: out.splits[o] for o in oods},
                val_oods={o: (arrays[o], out.splits[o]) for o in val_oods},
                methods=[
                    m for m in registry.names(uses_grid=True) if set(registry.get(m).needs) <= set(arrays[id_val])
                ],
            )  # the grid methods whose arrays were extracted (the API may ask for a few)
            if log:
                log(
                    f"grid cells selected on validation rows: {int(need.sum())} of {need.size} "
                    f"(eps, T) = {[(epss[e], Ts[t]) for e, t in np.argwhere(need)]}"
                )
            plan = {n: need & ~full_points(arrays[n]) for n in scored}
        del arrays
    plan = ranks.broadcast_object(plan)
    if plan is None:
        return
    bs = int(ecfg["batch_size"])
    for name in scored:
        todo = plan[name]
        rows = out.splits[name].test  # val and test partition the rows (split_indices)
        if progress is not None and work is not None:  # planned: every cell on the test rows
            progress.add_total(len(rows) * int(todo.sum()) - work.test_cells_planned(name, len(rows), todo.size))
        if not todo.any():
            continue
        data = _resolve(sources[name])

        def cells(pos: np.ndarray, data: BatchSource = data, rows: np.ndarray = rows, todo: np.ndarray = todo):
            return grid_cells_pass(
                model,
                data.take(rows[pos]),
                ecfg,
                device,
                input_std=input_std,
                odin_T=Ts,
                odin_eps=epss,
                points=todo,
                desc=f"grid cells {name}",
                grad_method=grad_method,
                progress=progress,
            )

        got, res = _sharded(out.store, ranks, f"{name}.cells", out.keys[name], len(rows), bs, cells)
        if not ranks.is_main or got is None:  # the other ranks computed their shard only
            continue
        a = out.store.get(name)
        have = full_points(a)
        for key in set(GRID_VALUE_KEYS) & set(got) & set(a):
            for e, t in np.argwhere(todo):
                a[key][e, t, rows] = got[key][e, t]
        a[FULL_POINTS_KEY] = have | todo
        out.store.save(name, out.keys[name], a)
        out.store.remove_parts(name)
        entry, new = out.timings.setdefault(name, {"_grid_cells": 0}), timing_entry(res)
        entry["_grid_cells"] += new.pop("_grid_cells")
        entry.update(new)
        if log:
            log(
                f"{name}: {int(todo.sum())} selected cells on {res.n} rows{_shard_note(ranks)} in "
                f"{res.seconds.get('grodin_selected', 0.0):.1f}s"
            )
