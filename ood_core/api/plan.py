"""What :func:`~ood_core.api.evaluation.evaluate` will compute, and for how long, before it starts.

A :class:`Plan` lists the work of one evaluation: per pass (forward, all-weights KL norm, low-dim
projection per subspace, activation gradients, the ODIN / GRODIN grid cells on validation rows and the
selected cells on test rows, the subspace fits) the set, its images and the passes per image, the
methods it serves, and the expected seconds on the device, from per-image costs measured on the
user's model (:func:`measure_costs`: a warm-up, then one timed small batch of each pass).
The counts follow the extraction orchestrator's decisions (``ood_core.extraction.orchestrator``), so
the passes then do exactly this work (tests/test_api_plan.py); the test rows' selected grid cells are
an upper bound until the validation rows have chosen them.

The validation / test split of each scored set is decided here too (:func:`val_rows`): by default
500 rows per set (the study's GRODIN protocol), half of a set with fewer than 1,000 rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ood_core.api.inputs import InputError
from ood_core.config import odin_grid
from ood_core.data.sources import BatchSource
from ood_core.extraction.arrays import Subspace, extract_arrays
from ood_core.extraction.grid import GRID_VALUE_KEYS
from ood_core.extraction.orchestrator import (
    ACTIVATION_PREFIXES,
    LOWDIM_PREFIX,
    TRAIN,
    extract_settings,
    grid_test_points,
)
from ood_core.extraction.subspaces import subspace_params
from ood_core.grads.selection import resolve_params
from ood_core.models import OODModel
from ood_core.scores import registry

API_N_VAL = 500  # validation rows per scored set by default (GRODIN's protocol, the study's CIFAR-10 profiles)
DEFAULT_VAL = f"{API_N_VAL} rows per set, half of a set under {2 * API_N_VAL:,} rows"
DOMINANT_SHARE = 0.5  # a pass group above this share of the expected time is named in a warning ...
WARN_MIN_SECONDS = 30.0  # ... when the whole evaluation is expected to take at least this long
PCA_OVERSAMPLE = 10  # columns beyond k in the PCA fit's products (ood_core.grads.lowdim.pca_subspace)

# pass group -> (what it is, how to shrink it; {methods} = the methods it serves)
GROUPS: dict[str, tuple[str, str]] = {
    "forward": ("forward pass", ""),
    "kl": ("all-weights KL gradient norm", "leave out {methods}"),
    "activation": ("activation gradients", "extract.activation_grads: false, or leave out {methods}"),
    "lowdim": (
        "low-dim gradients (projections and subspace fits)",
        "lowdim.n_samples (rows of the subspace fits), fewer lowdim.subspaces or a smaller k / n_iter, "
        "or leave out {methods}",
    ),
    "grid": ("ODIN / GRODIN grid", "{grid}, or leave out {methods}"),
}


# ------------------------------------------------------------------------------ validation split
def val_rows(n: int, n_val: int | float | None) -> int:
    """Validation rows of a scored set of ``n`` rows: ``n_val`` None = :data:`API_N_VAL`, half of a set
    under twice that; an int = that count; a float in (0, 1) = that fraction (rounded)."""
    if n_val is None:
        return API_N_VAL if n >= 2 * API_N_VAL else n // 2
    if isinstance(n_val, float):
        return int(round(n_val * n))
    return int(n_val)


def min_rows(n_val: int | float | None) -> int:
    """The fewest rows a set needs for the split under ``n_val`` (at least one validation and one test row)."""
    n = 2
    while not 0 < val_rows(n, n_val) < n:
        n += 1
    return n


def val_sizes(n_val: int | float | None, lens: Mapping[str, int]) -> dict[str, int]:
    """{scored set: validation rows}; raises InputError naming the first set too small for the split."""
    if isinstance(n_val, float) and not 0.0 < n_val < 1.0:
        raise InputError(f"data.val.n_val: a fraction must lie in (0, 1), got {n_val}")
    out = {}
    for name, n in lens.items():
        k = val_rows(n, n_val)
        if not 0 < k < n:
            rule = DEFAULT_VAL if n_val is None else f"data.val.n_val = {n_val}"
            raise InputError(
                f"set '{name}' has {n} row(s): its validation / test split ({rule}) needs at least "
                f"{min_rows(n_val)} rows"
            )
        out[name] = k
    return out


# ------------------------------------------------------------------------------ the work
@dataclass(frozen=True)
class Work:
    """One pass over one set: ``rows`` images x ``passes`` per image (grid cells, fit passes).
    ``component``: the orchestrator's timing name (``forward``, ``kl_allweights``, ``lowdim_<s>``,
    ``activation_grads``, ``grodin_grid``, ``grodin_selected``) or ``fit_<s>`` / ``stats_<s>``
    (the subspace fits on the training rows). ``bound``: ``passes`` is an upper bound."""

    component: str
    set: str
    rows: int
    passes: int
    group: str
    bound: bool = False
    seconds: float | None = None


@dataclass
class Costs:
    """Seconds per image of each pass on the device (grid: per image and cell), measured on ``rows`` images."""

    per_image: dict[str, float]
    rows: int
    device: str


@dataclass
class Plan:
    """The work of one evaluation (:mod:`ood_core.api.plan`); ``seconds`` None without a probe."""

    work: list[Work]
    methods: list[str]
    served: dict[str, list[str]]  # group -> the methods it serves
    sets: dict[str, int]  # set -> rows
    val: dict[str, int]  # scored set -> validation rows
    val_rule: str
    grid: (
        str  # how the grid is run: "10 T x 21 eps on every row" / "... on validation rows, selected cells on test rows"
    )
    device: str
    costs: Costs | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """Expected seconds of the extraction (None without measured costs)."""
        return None if self.costs is None else float(sum(w.seconds or 0.0 for w in self.work))

    def group_seconds(self) -> dict[str, float]:
        """Expected seconds per pass group."""
        out: dict[str, float] = {}
        for w in self.work:
            out[w.group] = out.get(w.group, 0.0) + (w.seconds or 0.0)
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """{set: {component: images}} plus ``grid_cells`` (image x cell evaluations), as the orchestrator counts them."""
        out: dict[str, dict[str, int]] = {}
        for w in self.work:
            if w.component.startswith(("fit_", "stats_")):
                continue
            entry = out.setdefault(w.set, {"grid_cells": 0})
            entry[w.component] = w.rows
            if w.component in ("grodin_grid", "grodin_selected"):
                entry["grid_cells"] += w.rows * w.passes
        return out

    @property
    def warning(self) -> str | None:
        """One line when one optional pass group is most of the expected time, naming what shrinks it."""
        total = self.seconds
        if not total or total < WARN_MIN_SECONDS:
            return None
        group, sec = max(((g, s) for g, s in self.group_seconds().items() if g != "forward"), default=("", 0.0),
                         key=lambda gs: gs[1])  # fmt: skip
        if sec <= DOMINANT_SHARE * total:
            return None
        label, shrink = GROUPS[group]
        methods = ", ".join(self.served.get(group, []))
        grid_hint = "a smaller grid (extract.odin_T, extract.odin_eps)"
        if "selected" not in self.grid:
            grid_hint += ", extract.grodin_test_points: selected"
        how = shrink.format(methods=methods, grid=grid_hint)
        return f"warning: {label}: {sec / total:.0%} of the expected {_duration(total)}; shrink with {how}"

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        """The plan as printed: sets and split, one line per pass, the total and the warning."""
        sets = ", ".join(
            f"{n} {r:,}" + (f" ({self.val[n]:,} val + {r - self.val[n]:,} test)" if n in self.val else "")
            for n, r in self.sets.items()
        )
        out = [f"evaluate: {len(self.methods)} methods on {self.device}; sets: {sets}"]
        out.append(f"  validation split: {self.val_rule}; grid: {self.grid}")
        out += [f"  {n}" for n in self.notes]
        out.append(f"  {'pass':<28} {'sets':<18} {'images x passes':>16} {'expected':>9}  methods")
        for label, sets_, units, sec, group in self._rows():
            methods = _short(self.served.get(group, []), 2)
            out.append(f"  {label:<28} {sets_:<18} {units:>16} {sec:>9}  {methods}")
        if self.costs is None:
            out.append("  expected time: not measured (plan(..., probe=True) times one small batch of each pass)")
        else:
            c = self.costs
            out.append(
                f"  expected: {_duration(self.seconds or 0.0)} on {c.device} (per-image costs timed on up to {c.rows} "
                "training images; the methods' fits, tuning and bootstrap come on top)"
            )
        if self.warning:
            out.append("  " + self.warning)
        return out

    def _rows(self) -> list[tuple[str, str, str, str, str]]:
        """(pass, sets, images x passes, expected, group) per component, the sets joined."""
        by: dict[str, list[Work]] = {}
        for w in self.work:
            by.setdefault(w.component, []).append(w)
        rows = []
        for comp, ws in by.items():
            n = sum(w.rows for w in ws)
            passes = {w.passes for w in ws}
            per = f"{'<=' if any(w.bound for w in ws) else ''}{max(passes)}" if passes != {1} else "1"
            names = _sets_label([w.set for w in ws], list(self.sets))
            sec = "" if self.costs is None else _duration(sum(w.seconds or 0.0 for w in ws))
            label = _label(comp) + (" (val rows)" if comp == "grodin_grid" and "selected" in self.grid else "")
            rows.append((label, _clip(names, 18), f"{n:,} x {per}", sec, ws[0].group))
        return rows


def _label(component: str) -> str:
    labels = {
        "forward": "forward",
        "kl_allweights": "all-weights KL norm",
        "activation_grads": "activation gradients",
        "grodin_grid": "grid, every cell",
        "grodin_selected": "grid, selected (test rows)",
    }
    if component in labels:
        return labels[component]
    kind, _, name = component.partition("_")
    return {"lowdim": f"low-dim projection '{name}'", "fit": f"subspace fit '{name}'"}.get(
        kind, f"whitening stats '{name}'"
    )


def _sets_label(names: list[str], every: list[str]) -> str:
    if len(names) > 1 and names == every:
        return "all sets"
    if len(names) > 1 and names == [n for n in every if n != TRAIN]:
        return "id_test + OOD sets"
    return ", ".join(names)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _short(methods: Sequence[str], n: int = 4) -> str:
    return ", ".join(methods[:n]) + (f" (+{len(methods) - n})" if len(methods) > n else "")


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.1f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _served(methods: Sequence[str]) -> dict[str, list[str]]:
    """Pass group -> the methods whose arrays it computes (every method reads the forward pass)."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for m in methods:
        needs = registry.get(m).needs
        out["forward"].append(m)
        if "kl_allw_sqnorm" in needs:
            out["kl"].append(m)
        if any(k.startswith(ACTIVATION_PREFIXES) for k in needs):
            out["activation"].append(m)
        if any(k.startswith(LOWDIM_PREFIX) for k in needs):
            out["lowdim"].append(m)
        if any(k in GRID_VALUE_KEYS for k in needs):
            out["grid"].append(m)
    return out


def selected_cells_bound(n_eps: int, n_T: int, n_ood: int) -> int:
    """At most this many grid cells are selected for the test rows (``grid_selection``): the cross of
    eps0 and T0 (vanilla, only-eps, only-T), one best cell per grid method and OOD set, each method's default."""
    m = len(registry.names(uses_grid=True))
    return min(n_eps * n_T, min(n_eps + n_T - 1, 1 + 2 * m * n_ood) + m * n_ood + m)


def fit_passes(spec: Mapping[str, Any]) -> int:
    """Passes over the fit rows of one subspace: 2 + 2 n_iter for PCA, one for the class means."""
    return 2 + 2 * int(spec.get("n_iter", 10)) if spec["kind"] == "pca" else 1


def subspace_names(cfg: Mapping[str, Any], needs: set[str]) -> list[str]:
    """The subspaces the extraction fits and projects on (the orchestrator's rule)."""
    lcfg = cfg["lowdim"]
    if not lcfg["enabled"] or not any(k.startswith(LOWDIM_PREFIX) for k in needs):
        return []
    return list(lcfg["subspaces"])


def plan_work(
    cfg: Mapping[str, Any], lens: Mapping[str, int], val: Mapping[str, int], needs: set[str]
) -> tuple[list[Work], str]:
    """Every pass of the extraction over the sets ``lens`` (``train``, ``id_test``, the OOD sets) with
    validation rows ``val``; and how the grid runs, in words."""
    ecfg = extract_settings(cfg["extract"], needs)
    mode = grid_test_points(ecfg)
    Ts, epss = odin_grid(cfg)
    cells = len(Ts) * len(epss)
    grid_on = bool(ecfg["grodin"]) and cells > 0
    subs = subspace_names(cfg, needs)
    lcfg = cfg["lowdim"]
    work: list[Work] = []
    for name in subs:  # the fits read the training rows (lowdim.n_samples of them when set)
        spec = lcfg["subspaces"][name]
        n_fit = int(lcfg["n_samples"] or lens[TRAIN])
        work.append(Work(f"fit_{name}", TRAIN, n_fit, fit_passes(spec), "lowdim"))
    if lcfg["normalisation"] != "none":  # one whitening-statistics pass per parameter set
        firsts = {repr(subspace_params(lcfg["subspaces"][s], lcfg)): s for s in reversed(subs)}
        for name in sorted(firsts.values(), key=subs.index):
            work.append(Work(f"stats_{name}", TRAIN, int(lcfg["n_samples"] or lens[TRAIN]), 1, "lowdim"))
    n_ood = len(lens) - 2
    for name, n in lens.items():
        work.append(Work("forward", name, n, 1, "forward"))
        if ecfg["kl_allweights"]:
            work.append(Work("kl_allweights", name, n, 1, "kl"))
        work += [Work(f"lowdim_{s}", name, n, 1, "lowdim") for s in subs]
        if ecfg["activation_grads"]:
            work.append(Work("activation_grads", name, n, 1, "activation"))
        if name == TRAIN or not grid_on:
            continue
        if mode == "grid":
            work.append(Work("grodin_grid", name, n, cells, "grid"))
        else:
            work.append(Work("grodin_grid", name, val[name], cells, "grid"))
            bound = selected_cells_bound(len(epss), len(Ts), n_ood)
            work.append(Work("grodin_selected", name, n - val[name], bound, "grid", bound=True))
    shape = f"{len(Ts)} T x {len(epss)} eps"
    how = "off" if not grid_on else (
        f"{shape} on every row" if mode == "grid" else f"{shape} on validation rows, selected cells on test rows"
    )  # fmt: skip
    return work, how


# ------------------------------------------------------------------------------ measured costs
def probe_rows(device: torch.device, cfg: Mapping[str, Any], n_train: int) -> int:
    """Images timed per pass: the low-dim chunk on a CPU (16 by default), 64 on a GPU, at most a batch."""
    rows = 64 if device.type == "cuda" else max(8, int(cfg["lowdim"]["chunk"]))
    return max(1, min(rows, int(cfg["extract"]["batch_size"]), n_train))


def measure_costs(
    model: OODModel,
    train: BatchSource,
    cfg: Mapping[str, Any],
    needs: set[str],
    *,
    num_classes: int,
    device: torch.device,
    input_std: Sequence[float] | None = None,
    grad_method: str = "hooks",
    rows: int | None = None,
) -> Costs:
    """Seconds per image of every pass the evaluation runs, timed on the first training images with
    the extraction's own code: a warm-up on 2 images, then twice ``rows`` (the one-off work of a
    call, buffers and hooks, spread over them: on the safe side for a long run). Zero bases of
    the configured subspaces' sizes stand in for the fitted ones, up to 2 T x 2 eps cells for the
    grid (per image and cell). A fit or whitening pass is taken to cost one projection pass over the
    same parameters, one-off work included (an approximation: the fits stream their own products)."""
    ecfg = extract_settings(cfg["extract"], needs)
    b = max(1, min(rows or probe_rows(device, cfg, len(train)), len(train) // 2 or 1))
    Ts, epss = odin_grid(cfg)
    grid = bool(ecfg["grodin"]) and bool(Ts) and bool(epss)
    Ts, epss = sorted(Ts)[-2:], sorted(epss)[-2:]
    subs = _zero_subspaces(model, cfg, subspace_names(cfg, needs), num_classes, device)
    kw: dict[str, Any] = dict(
        input_std=input_std,
        odin_T=Ts if grid else None,
        odin_eps=epss if grid else None,
        subspaces=subs,
        lowdim_chunk=int(cfg["lowdim"]["chunk"]),
        is_ood=True,
        with_grodin=grid,
        desc="plan: timing the passes",
        grad_method=grad_method,
    )

    def timed(n: int) -> dict[str, float]:
        part = train.rows(0, min(n, len(train)))
        return extract_arrays(model, part, {**ecfg, "batch_size": len(part)}, device, **kw).seconds

    timed(min(2, len(train)))  # warm-up
    two = timed(2 * b)
    n2 = min(2 * b, len(train))
    per = {k: v / n2 for k, v in two.items()}
    if grid:
        per["grodin_grid"] /= len(Ts) * len(epss)
    for sub in subs:  # a fit pass: the energy backward and a projection over the same parameters
        group = [s for s in subs if repr(s.params) == repr(sub.params)]
        per[f"fit_{sub.name}"] = per[f"stats_{sub.name}"] = sum(two[f"lowdim_{s.name}"] / n2 for s in group)
    return Costs(per, n2, str(device))


def _zero_subspaces(
    model: torch.nn.Module, cfg: Mapping[str, Any], names: Sequence[str], num_classes: int, device: torch.device
) -> list[Subspace]:
    """Zero bases (P, K) of the subspaces ``names``: their projection costs what the fitted ones' will."""
    lcfg = cfg["lowdim"]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    out = []
    for name in names:
        spec = lcfg["subspaces"][name]
        params = subspace_params(spec, lcfg)
        P = sum(sizes[n] for n in resolve_params(model, params))
        k = int(spec["k"]) if spec["kind"] == "pca" else num_classes
        out.append(Subspace(name, torch.zeros(P, k, device=device), None, params))
    return out


def with_seconds(work: list[Work], costs: Costs) -> list[Work]:
    """``work`` with its expected seconds: images x passes x the measured per-image cost."""
    out = []
    for w in work:
        per = costs.per_image.get(w.component, 0.0)
        if w.component == "grodin_selected":
            per = costs.per_image.get("grodin_grid", 0.0)
        out.append(Work(w.component, w.set, w.rows, w.passes, w.group, w.bound, float(w.rows * w.passes * per)))
    return out


def make_plan(
    cfg: Mapping[str, Any],
    lens: Mapping[str, int],
    methods: Sequence[str],
    needs: set[str],
    *,
    device: torch.device,
    costs: Costs | None = None,
    notes: Sequence[str] = (),
) -> Plan:
    """The :class:`Plan` of an evaluation of ``methods`` over sets of ``lens`` rows under ``cfg``
    (``data.val.n_val`` None: the API's default split); with ``costs``, the expected seconds."""
    n_val = cfg["data"]["val"]["n_val"]
    scored = {n: r for n, r in lens.items() if n != TRAIN}
    val = dict(n_val) if isinstance(n_val, Mapping) else val_sizes(n_val, scored)
    rule = DEFAULT_VAL if isinstance(n_val, Mapping) or n_val is None else f"data.val.n_val = {n_val}"
    work, grid = plan_work(cfg, lens, val, needs)
    if costs is not None:
        work = with_seconds(work, costs)
    return Plan(
        work=work,
        methods=list(methods),
        served=_served(methods),
        sets=dict(lens),
        val=val,
        val_rule=rule,
        grid=grid,
        device=str(device),
        costs=costs,
        notes=list(notes),
    )


__all__ = ["API_N_VAL", "Costs", "Plan", "Work", "make_plan", "measure_costs", "val_rows", "val_sizes"]
