"""One batched pass per (model, dataset): every per-sample array the scores need.

For each batch, with the hooks engine, one forward per chunk gives (h, logits) and the recorded
layer inputs from which a KL backward and an energy backward give the all-weights KL gradient norm
and Wu et al.'s low-dim projections on every subspace (``grads/main_pass.py``); the ODIN/GRODIN
eps x T grid perturbs the inputs and runs on the same batch, so the data is read once. Output keys follow
docs/architecture.md. Timings per component are returned beside the arrays.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from ood_core.data.sources import BatchSource, Preprocess  # noqa: F401  (Preprocess re-exported: the pipeline's import path)
from ood_core.extraction.grid import FULL_POINTS_KEY, GRID_VALUE_KEYS
from ood_core.grads.runtime import exact_float32
from ood_core.progress import StageProgress, end_pass, pass_display

if TYPE_CHECKING:
    from ood_core.models import OODModel


@dataclass
class Subspace:
    """A low-dim gradient subspace: V (P, K) and the whitening statistics of Wu et al."""

    name: str
    V: torch.Tensor
    stats: Any
    params: Any


@dataclass
class ExtractResult:
    """Arrays of one pass, seconds per component, images each component processed (``counts``;
    absent = all ``n``), and ``grid_cells`` = image x grid-cell evaluations of the ODIN/GRODIN grid."""

    arrays: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)
    n: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    grid_cells: int = 0


def _same_stats(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return all(torch.equal(x, y) for x, y in zip(a, b))


def group_subspaces(subspaces: Sequence[Subspace]) -> list[list[Subspace]]:
    """Subspaces over the same parameters with the same whitening share one gradient pass."""
    groups: list[list[Subspace]] = []
    for sub in subspaces:
        for g in groups:
            if (
                repr(g[0].params) == repr(sub.params)
                and _same_stats(g[0].stats, sub.stats)
                and g[0].V.dtype == sub.V.dtype
            ):
                g.append(sub)
                break
        else:
            groups.append([sub])
    return groups


def head_arrays(model: OODModel) -> dict[str, np.ndarray]:
    """The head's ``W`` (C, D) and ``b`` (C,) as float32 numpy (``head.npz``; beside every set's arrays
    in what the scores receive)."""
    W, b = model.head_weights()
    return {"W": W.float().cpu().numpy(), "b": b.float().cpu().numpy()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grid_of_batch(
    model: OODModel,
    xb: torch.Tensor,
    cfg: Mapping[str, Any],
    odin_T: list[float],
    odin_eps: list[float],
    input_std: Sequence[float] | None,
    grad_method: str,
    points: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """:func:`~ood_core.grads.grodin_grid` of one batch under the ``extract`` settings ``cfg``."""
    from ood_core.grads import grodin_grid

    chunk, space = int(cfg["grad_chunk"]), cfg["eps_space"]
    return grodin_grid(
        model,
        xb,
        odin_T,
        odin_eps,
        chunk=chunk,
        space=space,
        std=input_std,
        points=points,
        method=grad_method,
        iodin=_switch(cfg, "iodin"),
    )


# --------------------------------------------------------------------------- activation gradients
# NAC-UE and GAIA arrays (grads/activations.py), switched by ``extract.activation_grads``.
def _switch(cfg: Mapping[str, Any], key: str) -> bool:
    """An on/off key of the ``extract`` section (its default when a caller's dict lacks it)."""
    from ood_core.config import DEFAULTS

    return bool(cfg.get(key, DEFAULTS["extract"][key]))


def _activation_grads_of_batch(
    model: OODModel,
    xb: torch.Tensor,
    parts: dict[str, list[np.ndarray]],
    seconds: dict[str, float],
    device: torch.device,
    chunk: int,
) -> None:
    """Append one batch's ``nac_<stage>``, ``gaia_z``, ``gaia_a`` to ``parts`` (timed as
    ``activation_grads``), ``chunk`` samples per forward (the batch's graph at once is memory-bound:
    at 256 rows it took twice the time per image of 64 on a 2-core CPU)."""
    from ood_core.grads.activations import activation_arrays

    t = time.perf_counter()
    for s in range(0, xb.shape[0], chunk):
        for key, value in activation_arrays(model, xb[s : s + chunk]).items():
            parts[key].append(value.float().cpu().numpy())
    _sync(device)
    seconds["activation_grads"] += time.perf_counter() - t


@exact_float32()  # every caller (stage, API, Detector) gets the same float32 arrays
def extract_arrays(
    model: OODModel,
    data: BatchSource,
    cfg: Mapping[str, Any],
    device: torch.device,
    *,
    input_std: Sequence[float] | None = None,
    odin_T: list[float] | None = None,
    odin_eps: list[float] | None = None,
    subspaces: Sequence[Subspace] = (),
    lowdim_chunk: int = 16,
    is_ood: bool = False,
    with_grodin: bool = True,
    grodin_rows: np.ndarray | None = None,
    desc: str = "extract",
    grad_method: str = "hooks",
    progress: StageProgress | None = None,
) -> ExtractResult:
    """Run the extraction pass of ``cfg`` (the profile's ``extract`` section) over ``data``.

    ``input_std``: the per-channel std the inputs were normalised with (ODIN's eps in pixel space,
    ``cfg["eps_space"] == "pixel"``). ``y`` holds the source's labels, -1 everywhere when ``is_ood``.
    ``grodin_rows``: compute the ODIN/GRODIN grid on these rows only (NaN elsewhere; the other rows'
    cells come from :func:`grid_cells_pass`); None = every row. ``grad_method``: how per-sample
    gradients are computed, ``"hooks"`` (one batched backward; Linear, Conv2d, BatchNorm layers) or
    ``"vmap"`` (torch.func, any layer, slower). ``progress``: the stage's display, counting rows and
    rows x grid cells (None: a display of this pass alone)."""
    from ood_core.grads import kl_allweights_sqnorm
    from ood_core.grads.lowdim import fold_whitening, project
    from ood_core.grads.main_pass import FoldedBasis, main_pass

    model.eval().to(device)
    odin_T, odin_eps = odin_T or [], odin_eps or []  # None: no ODIN/GRODIN grid
    bs = int(cfg["batch_size"])
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    use_grodin = bool(cfg["grodin"]) and bool(odin_T) and bool(odin_eps) and with_grodin
    groups = group_subspaces(subspaces)
    # each group's bases concatenated and the whitening folded in once (not per batch: P x K copies)
    folds = [fold_whitening(g[0].V if len(g) == 1 else torch.cat([s.V for s in g], 1), g[0].stats) for g in groups]
    n_grid = len(odin_T) * len(odin_eps)
    counts: dict[str, int] = {}
    labels: list[np.ndarray] = []
    fused = grad_method == "hooks" and (bool(cfg["kl_allweights"]) or bool(groups))
    bases = [FoldedBasis(f"group{i}", g[0].params, *fold) for i, (g, fold) in enumerate(zip(groups, folds))]
    n_subs = sum(len(g) for g in groups)
    workspace: dict = {}  # the main pass' (chunk, P) gradient buffer, allocated once for all batches
    per_row = 1 + (n_grid if use_grodin and grodin_rows is None else 0)  # a row and its grid cells
    grid_later = len(grodin_rows) * n_grid if use_grodin and grodin_rows is not None else 0
    shown = pass_display(progress, desc, len(data) * per_row + grid_later)
    for xb, yb in shown.counted(data.batches(bs, device), per_row):
        labels.append(yb.cpu().numpy())
        if fused:  # one forward, a KL backward and an energy backward per chunk serve all of these
            mp = main_pass(
                model,
                xb,
                kl_params="all" if cfg["kl_allweights"] else None,
                bases=bases,
                chunk=lowdim_chunk if groups else int(cfg["grad_chunk"]),
                workspace=workspace,
            )
            seconds["forward"] += mp.seconds["forward"]
            parts["h"].append(np.asarray(mp.h, dtype=np.float32))
            parts["logits"].append(np.asarray(mp.logits, dtype=np.float32))
            if mp.kl_sqnorm is not None:
                seconds["kl_allweights"] += mp.seconds["kl_backward"]
                parts["kl_allw_sqnorm"].append(np.asarray(mp.kl_sqnorm, dtype=np.float32))
            for i, group in enumerate(groups):  # the shared energy backward is split over the subspaces
                z = mp.projections[f"group{i}"]
                shared = mp.seconds["energy_backward"] / n_subs
                own = mp.seconds[f"project_group{i}"] / len(group)
                col = 0
                for sub in group:
                    k = sub.V.shape[1]
                    seconds[f"lowdim_{sub.name}"] += shared + own
                    parts[f"lowdim_{sub.name}"].append(np.asarray(z[:, col : col + k], dtype=np.float32))
                    col += k
        else:
            t = time.perf_counter()
            with torch.no_grad():
                h = model.features(xb)
                logits = model.head(h)
            _sync(device)
            seconds["forward"] += time.perf_counter() - t
            parts["h"].append(h.float().cpu().numpy())
            parts["logits"].append(logits.float().cpu().numpy())
        if use_grodin and grodin_rows is None:
            t = time.perf_counter()
            g = _grid_of_batch(model, xb, cfg, odin_T, odin_eps, input_std, grad_method)
            _sync(device)
            seconds["grodin_grid"] += time.perf_counter() - t
            for key, values in g.items():
                parts[key].append(np.asarray(values, dtype=np.float32))
        if _switch(cfg, "activation_grads"):
            _activation_grads_of_batch(model, xb, parts, seconds, device, int(cfg["grad_chunk"]))
        if fused:
            continue
        if cfg["kl_allweights"]:
            t = time.perf_counter()
            kl = kl_allweights_sqnorm(model, xb, method=grad_method)
            _sync(device)
            seconds["kl_allweights"] += time.perf_counter() - t
            parts["kl_allw_sqnorm"].append(np.asarray(kl, dtype=np.float32))
        for group, fold in zip(groups, folds):  # one per-sample gradient pass per parameter set
            t = time.perf_counter()
            z = project(
                model, [xb], fold[0], None, group[0].params, chunk=lowdim_chunk, folded=fold, method=grad_method
            )
            _sync(device)
            dt = (time.perf_counter() - t) / len(group)
            col = 0
            for sub in group:
                k = sub.V.shape[1]
                seconds[f"lowdim_{sub.name}"] += dt
                parts[f"lowdim_{sub.name}"].append(np.asarray(z[:, col : col + k], dtype=np.float32))
                col += k
    arrays: dict[str, np.ndarray] = {}
    for key, chunks in parts.items():
        axis = -1 if key in GRID_VALUE_KEYS else 0
        arrays[key] = np.concatenate(chunks, axis=axis)
    arrays["y"] = np.full(len(data), -1, np.int64) if is_ood else np.concatenate(labels).astype(np.int64)
    cells = len(data) * n_grid if use_grodin else 0
    if use_grodin:
        arrays["odin_T"] = np.asarray(odin_T, np.float64)
        arrays["odin_eps"] = np.asarray(odin_eps, np.float64)
    if use_grodin and grodin_rows is not None:  # the whole grid on these rows only, in full chunks
        rows = np.asarray(grodin_rows, np.int64)
        rows_grid = (
            grid_cells_pass(
                model,
                data.take(rows),
                cfg,
                device,
                input_std=input_std,
                odin_T=odin_T,
                odin_eps=odin_eps,
                points=np.ones((len(odin_eps), len(odin_T)), bool),
                desc=f"{desc} grid",
                grad_method=grad_method,
                progress=shown,
            )
            if len(rows)
            else no_grid_rows(odin_T, odin_eps)
        )
        arrays.update(grid_on_rows(len(data), rows, rows_grid.arrays, odin_T, odin_eps))
        seconds["grodin_grid"] = rows_grid.seconds["grodin_selected"]
        counts["grodin_grid"], cells = len(rows), rows_grid.grid_cells
    end_pass(shown, progress)
    return ExtractResult(arrays, dict(seconds), len(data), counts, cells)


def no_grid_rows(odin_T: list[float], odin_eps: list[float]) -> ExtractResult:
    """:func:`grid_cells_pass`'s result for no rows (an empty validation part, e.g. the ID test set
    beside an ID validation set): grid values of shape (n_eps, n_T, 0)."""
    empty = np.zeros((len(odin_eps), len(odin_T), 0), np.float32)
    return ExtractResult({k: empty for k in GRID_VALUE_KEYS}, {"grodin_selected": 0.0}, 0)


def grid_on_rows(
    n: int, rows: np.ndarray, grid: Mapping[str, np.ndarray], odin_T: list[float], odin_eps: list[float]
) -> dict[str, np.ndarray]:
    """The grid arrays of a set of ``n`` rows whose whole grid was computed on ``rows`` only
    (``grid``: values (n_eps, n_T, len(rows))): NaN on the other rows, no cell marked as computed
    everywhere (``grid_cells_pass`` adds cells later), and the grid's axes."""
    out: dict[str, np.ndarray] = {}
    for key in GRID_VALUE_KEYS:
        if key in grid:
            out[key] = np.full((len(odin_eps), len(odin_T), n), np.nan, np.float32)
            out[key][..., rows] = grid[key]
    out[FULL_POINTS_KEY] = np.zeros((len(odin_eps), len(odin_T)), bool)
    out["odin_T"], out["odin_eps"] = np.asarray(odin_T, np.float64), np.asarray(odin_eps, np.float64)
    return out


@exact_float32()  # every caller (stage, API, Detector) gets the same float32 arrays
def grid_cells_pass(
    model: OODModel,
    data: BatchSource,
    cfg: Mapping[str, Any],
    device: torch.device,
    *,
    input_std: Sequence[float] | None = None,
    odin_T: list[float],
    odin_eps: list[float],
    points: np.ndarray,
    desc: str = "grid cells",
    grad_method: str = "hooks",
    progress: StageProgress | None = None,
) -> ExtractResult:
    """ODIN/GRODIN values of the ``points`` cells ((n_eps, n_T) bool) for every image of ``data``
    (a subset of rows, batched in full chunks); the other cells are NaN. Timed as ``grodin_selected``.
    ``progress`` counts rows x cells."""
    model.eval().to(device)
    bs = int(cfg["batch_size"])
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    t = time.perf_counter()
    n_cells = int(np.asarray(points, bool).sum())
    shown = pass_display(progress, desc, len(data) * n_cells)
    for xb, _ in shown.counted(data.batches(bs, device), n_cells):
        g = _grid_of_batch(model, xb, cfg, odin_T, odin_eps, input_std, grad_method, points)
        for key, values in g.items():
            parts[key].append(values)
    _sync(device)
    end_pass(shown, progress)
    n = len(data)
    arrays = {k: np.concatenate(v, axis=-1) for k, v in parts.items()}
    return ExtractResult(
        arrays,
        {"grodin_selected": time.perf_counter() - t},
        n,
        {"grodin_selected": n},
        n * n_cells,
    )
