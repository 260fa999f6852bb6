"""Extract every set of one evaluation in memory: the arrays the chosen methods read, the study's
validation / test splits and, under ``grodin_test_points: selected``, the grid cells chosen on the
validation rows.

The Python API (``ood_core.api``) uses this; the pipeline's extract stage (``analysis/extract.py``)
runs the same passes (:func:`~ood_core.extract.extract_arrays`, :func:`~ood_core.extract.grid_cells_pass`,
:func:`~ood_core.grid_selection.select_test_points`) with a disk cache and torchrun shards around them,
so both give the same arrays for the same model, data and settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .config import ConfigError, odin_grid
from .data.sources import BatchSource
from .data.splits import set_split
from .extract import Subspace, extract_arrays, grid_cells_pass
from .grid import FULL_POINTS_KEY, GRID_VALUE_KEYS, full_points
from .grid_selection import select_test_points
from .inputs import InputError
from .models import OODModel
from .scores import registry
from .subspaces import fit_subspace
from .tuning import Split

TRAIN, ID_TEST = "train", "id_test"  # the names of the two ID sets (the OOD sets take the user's names)
GRODIN_TEST_POINTS = ("grid", "selected")
LOWDIM_PREFIX = "lowdim_"


def grid_test_points(extract: Mapping[str, Any]) -> str:
    """``extract.grodin_test_points``, checked: "grid" (every cell on every row) or "selected" (the
    cells chosen on validation rows, on the other rows; ``ood_core.grid_selection``)."""
    mode = extract["grodin_test_points"]
    if mode not in GRODIN_TEST_POINTS:
        raise ConfigError(f"extract.grodin_test_points must be one of {GRODIN_TEST_POINTS}, got {mode!r}")
    return mode


def arrays_needed(methods: Iterable[str]) -> set[str]:
    """The cached-array names the methods read (their registry ``needs``; a low-dim input stays
    ``lowdim_{subspace}``: every configured subspace is extracted for it)."""
    return {key for m in methods for key in registry.get(m).needs}


def extract_settings(extract: Mapping[str, Any], needs: set[str]) -> dict[str, Any]:
    """The ``extract`` section with the passes no method needs switched off (the ODIN / GRODIN grid,
    the all-weights KL norm): one pass per batch computes only what is read."""
    out = dict(extract)
    out["grodin"] = bool(extract["grodin"]) and bool(needs & set(GRID_VALUE_KEYS))
    out["kl_allweights"] = bool(extract["kl_allweights"]) and "kl_allw_sqnorm" in needs
    return out


def check_class_labels(name: str, y: np.ndarray, num_classes: int) -> None:
    """Raise ``InputError`` unless every label of ID set ``name`` is a class of the model (0..C-1)."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise InputError(
            f"set '{name}': ID data needs class labels 0..{num_classes - 1} (the model's head has {num_classes} "
            f"outputs); row {int(bad[0])} has {int(y[bad[0]])} ({bad.size} row(s) outside; -1 = no label given)"
        )


@dataclass
class ExtractedSets:
    """``arrays[set]`` (docs/architecture.md keys), ``splits[set]`` for the ID test set and every OOD
    set, the subspaces used, and ``seconds[set][component]``."""

    arrays: dict[str, dict[str, np.ndarray]]
    splits: dict[str, Split]
    subspaces: list[Subspace] = field(default_factory=list)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)


def extract_sets(
    model: OODModel,
    sources: Mapping[str, BatchSource],
    cfg: Mapping[str, Any],
    *,
    needs: set[str],
    num_classes: int,
    device: torch.device,
    input_std: Sequence[float] | None = None,
    grad_method: str = "hooks",
) -> ExtractedSets:
    """Arrays of every set in ``sources`` (``train``, ``id_test`` and the OOD sets, in that order).

    ``cfg`` is a profile-shaped settings dict (sections ``extract``, ``lowdim``, ``data.val``,
    ``seed``); ``needs`` the array names to compute (:func:`arrays_needed`); ``grad_method`` how
    per-sample gradients are computed (``"hooks"`` or ``"vmap"``, :func:`~ood_core.extract.extract_arrays`). The low-dim subspaces of
    ``cfg['lowdim']['subspaces']`` are fitted on ``train`` when a ``lowdim_*`` array is needed."""
    for role in (TRAIN, ID_TEST):
        if role not in sources:
            raise ValueError(f"extract_sets: no '{role}' set among {list(sources)}")
    ecfg = extract_settings(cfg["extract"], needs)
    mode = grid_test_points(ecfg)
    Ts, epss = odin_grid(cfg)
    lcfg, val = cfg["lowdim"], cfg["data"]["val"]
    subspaces: list[Subspace] = []
    seconds: dict[str, dict[str, float]] = {}
    if lcfg["enabled"] and any(k.startswith(LOWDIM_PREFIX) for k in needs):
        stats_memo: dict[str, Any] = {}
        t0 = time.perf_counter()
        for name, spec in lcfg["subspaces"].items():
            sub = fit_subspace(
                model,
                sources[TRAIN],
                name,
                spec,
                lcfg,
                num_classes=num_classes,
                seed=int(cfg["seed"]),
                device=device,
                stats_memo=stats_memo,
                grad_method=grad_method,
            )
            sub.V = sub.V.to(device)
            sub.stats = None if sub.stats is None else tuple(s.to(device) for s in sub.stats)
            subspaces.append(sub)
        seconds["subspaces"] = {"fit": time.perf_counter() - t0}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    splits: dict[str, Split] = {}
    for name, src in sources.items():
        scored = name != TRAIN
        if scored:
            splits[name] = Split(*set_split(name, len(src), val["n_val"], val["seed"]))
        res = extract_arrays(
            model,
            src,
            ecfg,
            device,
            input_std=input_std,
            odin_T=Ts,
            odin_eps=epss,
            subspaces=subspaces,
            lowdim_chunk=int(lcfg["chunk"]),
            is_ood=name not in (TRAIN, ID_TEST),
            with_grodin=scored,
            grodin_rows=splits[name].val if scored and mode == "selected" else None,
            desc=name,
            grad_method=grad_method,
        )
        arrays[name], seconds[name] = res.arrays, dict(res.seconds)
        if name in (TRAIN, ID_TEST):
            check_class_labels(name, res.arrays["y"], num_classes)
    if mode == "selected" and ecfg["grodin"]:
        took = _fill_selected_cells(model, sources, arrays, splits, ecfg, device, input_std, Ts, epss, grad_method)
        for name, sec in took.items():
            seconds[name]["grodin_selected"] = sec
    return ExtractedSets(arrays, splits, subspaces, seconds)


def _fill_selected_cells(
    model: OODModel,
    sources: Mapping[str, BatchSource],
    arrays: dict[str, dict[str, np.ndarray]],
    splits: dict[str, Split],
    ecfg: Mapping[str, Any],
    device: torch.device,
    input_std: Sequence[float] | None,
    Ts: list[float],
    epss: list[float],
    grad_method: str,
) -> dict[str, float]:
    """The grid cells chosen on the validation rows (:func:`select_test_points`), computed on the
    test rows of every scored set (in place); returns the seconds per set."""
    oods = [n for n in splits if n != ID_TEST]
    need = select_test_points(
        arrays[ID_TEST], splits[ID_TEST], {o: arrays[o] for o in oods}, {o: splits[o] for o in oods}
    )
    took: dict[str, float] = {}
    for name, split in splits.items():
        a = arrays[name]
        todo = need & ~full_points(a)
        if not todo.any():
            continue
        res = grid_cells_pass(
            model,
            sources[name].take(split.test),
            ecfg,
            device,
            input_std=input_std,
            odin_T=Ts,
            odin_eps=epss,
            points=todo,
            desc=f"{name} cells",
            grad_method=grad_method,
        )
        got, took[name] = res.arrays, res.seconds["grodin_selected"]
        for key in GRID_VALUE_KEYS:
            for e, t in np.argwhere(todo):
                a[key][e, t, split.test] = got[key][e, t]
        a[FULL_POINTS_KEY] = full_points(a) | todo
    return took
