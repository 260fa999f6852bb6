"""Sensitivity of the study's CPU cuts, on one trained model and validation rows only (not chained).

    python -m analysis.sensitivity --profile cifar10_openood [--variants grid,k,n_iter,fit_rows]

Each variant is the profile with one cut undone (:data:`VARIANTS`): the ODIN / GRODIN grid (GRODIN's
10 T x 21 eps instead of the profile's), Wu et al.'s subspace K (200), the power iterations of its
randomized PCA (10) and the training rows the subspace is fitted on (10,000); ``baseline`` is the
profile as it is. Every variant is extracted by the one orchestrator (``extract_sets``) into its own
cache, ``<cache>/sensitivity/<variant>/`` (resumable; a set or subspace stored under the same key is
reused), for the sets it reads only: the training rows, ``id_val`` (``data.validation.id``) and the
OOD validation sets (``data.validation.ood``); no test set is loaded. Only the arrays of the methods a
cut affects are computed: the grid methods (ODIN, iODIN, GRODIN S / SG / G) for the grid, every score
that reads a low-dim array (Wu et al.'s, theirs as published and the ensembles) for the others, all on
the subspace those scores read (:data:`SUBSPACE`).

Metrics: each validation set is split in two seeded halves (``data.val.seed``); every method is
tuned on the first halves (protocol ``openood``: id_val vs the OOD validation sets, one choice for
all) by the benchmark core and scored on the second halves: AUROC, its bootstrap std, and beside a
variant the paired bootstrap interval of its difference to the baseline (same rows, same
resamples; ``benchmark.bootstrap`` resamples). Writes ``<fig_dir>/sensitivity.csv`` and
``sensitivity.md`` (one table per cut); the study's settings are chosen from them.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ood_core.cache import write_json, write_text
from ood_core.config import DEFAULTS, ID_VAL, ConfigError, merge_settings, odin_grid, validation_sets
from ood_core.data.splits import set_split
from ood_core.evaluation.benchmark import BenchmarkData, MethodsResult, run_methods
from ood_core.evaluation.paired import paired_auroc_diff
from ood_core.evaluation.tuning import Split
from ood_core.extraction.arrays import Preprocess, head_arrays
from ood_core.extraction.orchestrator import TRAIN, arrays_needed, extract_sets, plan_sets
from ood_core.extraction.store import DiskStore
from ood_core.reporting.style import display
from ood_core.reporting.table_csv import write_csv
from ood_core.reporting.table_render import markdown_grid
from ood_core.scores import registry
from ood_core.scores.lowdim import LOWDIM_INPUT

from .common import Context, add_common_args, make_context, record_run
from .datasets import spec_key
from .extract import expected_line, measured_timings, set_loader, work_line
from .train import load_model

BASELINE = "baseline"
SUBSPACE = "pca"  # the subspace every low-dim score reads by default (their ``subspace`` parameter)
PROTOCOL = "openood"  # one choice on id_val vs the OOD validation sets, for every set
CUTS = ("grid", "k", "n_iter", "fit_rows")
# cuts whose methods read the same arrays share one baseline extraction: <cache>/sensitivity/baseline_<group>/
BASELINE_GROUPS = {"grid": ("grid",), "lowdim": ("k", "n_iter", "fit_rows")}
FIT_ROWS = 10_000


@dataclass(frozen=True)
class Variant:
    """One cut undone: ``cut`` (one of :data:`CUTS`) and the profile values it sets (dotted paths)."""

    cut: str
    overrides: Mapping[str, Any]


VARIANTS: dict[str, Variant] = {
    "grid_full": Variant(
        "grid", {"extract.odin_T": DEFAULTS["extract"]["odin_T"], "extract.odin_eps": DEFAULTS["extract"]["odin_eps"]}
    ),
    "k200": Variant("k", {f"lowdim.subspaces.{SUBSPACE}.k": 200}),
    "n_iter10": Variant("n_iter", {f"lowdim.subspaces.{SUBSPACE}.n_iter": 10}),
    "fit_rows10000": Variant("fit_rows", {"lowdim.n_samples": FIT_ROWS}),
}

CUT_TITLES = {
    "grid": "ODIN / GRODIN grid",
    "k": "Wu et al.'s subspace dimension K",
    "n_iter": "power iterations of the subspace's randomized PCA",
    "fit_rows": "training rows the subspace is fitted on",
}
CSV_COLUMNS = [
    "variant",
    "cut",
    "setting",
    "method",
    "display",
    "ood_set",
    "params",
    "auroc",
    "auroc_std",
    "diff_vs_baseline",
    "ci_low",
    "ci_high",
    "sign_flip",
    "n_tune_id",
    "n_tune_ood",
    "n_eval_id",
    "n_eval_ood",
]


def log(line: str) -> None:
    print(f"[sensitivity] {line}", flush=True)


def cut_methods(cut: str) -> list[str]:
    """The methods a cut changes: the grid methods, or every score that reads a low-dim array."""
    if cut == "grid":
        return registry.names(uses_grid=True)
    return [m for m in registry.names() if LOWDIM_INPUT in registry.get(m).needs]


def setting(cfg: Mapping[str, Any], cut: str) -> str:
    """What ``cfg`` sets for ``cut``, in words ("4 T x 3 eps", "K = 50", ...)."""
    if cut == "grid":
        Ts, epss = odin_grid(cfg)
        return f"{len(Ts)} T x {len(epss)} eps"
    sub = cfg["lowdim"]["subspaces"][SUBSPACE]
    if cut == "k":
        return f"K = {sub.get('k')}"
    if cut == "n_iter":
        return f"n_iter = {sub.get('n_iter', 10)}"
    n = cfg["lowdim"]["n_samples"]
    return "all fit rows" if n is None else f"{n:,} fit rows"


def parse_cuts(text: str | None) -> list[str]:
    """``--variants grid,k`` -> the cuts in :data:`CUTS` order; all when not given."""
    if not text:
        return list(CUTS)
    asked = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in asked if c not in CUTS]
    if unknown or not asked:
        raise SystemExit(f"--variants takes a comma-separated list of {', '.join(CUTS)}; got {text!r}")
    return [c for c in CUTS if c in asked]


def check_profile(cfg: Mapping[str, Any], cuts: Sequence[str]) -> None:
    """One ``ConfigError`` line unless the profile has validation sets and what the cuts change."""
    if not validation_sets(cfg):
        raise ConfigError(
            f"profile '{cfg['profile']}' has no validation sets (data.validation.id and .ood): the sensitivity "
            "ablation tunes and measures on validation rows only (see analysis/configs/cifar10_openood.yaml)"
        )
    lcfg = cfg["lowdim"]
    if any(c != "grid" for c in cuts) and (not lcfg["enabled"] or SUBSPACE not in lcfg["subspaces"]):
        raise ConfigError(
            f"profile '{cfg['profile']}': the subspace cuts need lowdim.enabled and a lowdim.subspaces.{SUBSPACE} "
            "(the subspace the low-dim scores read); or run --variants grid"
        )


def variant_config(cfg: Mapping[str, Any], name: str, variant: Variant | None) -> dict[str, Any]:
    """The profile with ``variant``'s values set (None: the baseline), only :data:`SUBSPACE` kept, and
    the whole grid on every row (every row here is a validation row); checked like a profile."""
    out = copy.deepcopy(dict(cfg))
    subs = out["lowdim"]["subspaces"]
    out["lowdim"]["subspaces"] = {SUBSPACE: subs[SUBSPACE]} if SUBSPACE in subs else {}
    out["extract"]["grodin_test_points"] = "grid"
    for path, value in (variant.overrides if variant else {}).items():
        *head, last = path.split(".")
        node = out
        for key in head:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"sensitivity variant '{name}': the profile has no '{'.'.join(head)}' to set {last}")
            node = node[key]
        node[last] = copy.deepcopy(value)
    return merge_settings(out, f"sensitivity variant '{name}'")


def halves(cfg: Mapping[str, Any], name: str, n: int) -> Split:
    """Validation set ``name``'s seeded halves: ``val`` tunes, ``test`` is measured."""
    return Split(*set_split(name, n, 0.5, int(cfg["data"]["val"]["seed"])))


def variant_data(
    cfg: Mapping[str, Any], arrays: dict[str, dict[str, np.ndarray]], val_oods: Sequence[str]
) -> BenchmarkData:
    """The benchmark's input over validation rows only: id_val's and each OOD validation set's first
    half tunes (``openood``), their second halves are scored."""
    scored = [ID_VAL, *val_oods]
    Ts, epss = odin_grid(cfg)
    return BenchmarkData(
        meta={"grid": {"odin_T": Ts, "odin_eps": epss}, "model": cfg["model"]["name"]},
        train_name=TRAIN,
        id_name=ID_VAL,
        groups={o: "validation" for o in val_oods},
        arrays=arrays,
        splits={n: halves(cfg, n, len(arrays[n]["y"])) for n in scored},
        val_oods=list(val_oods),
    )


@dataclass
class Planned:
    """One variant as run: the cuts it is measured for (a baseline: the cuts of its group that run),
    its settings, the methods it scores and its cache folder."""

    name: str
    cuts: list[str]
    cfg: dict[str, Any]
    methods: list[str]
    store: str  # its folder under <cache>/sensitivity/

    @property
    def needs(self) -> set[str]:
        return arrays_needed(self.methods)

    def describe(self) -> str:
        return ", ".join(setting(self.cfg, c) for c in self.cuts)


def planned(cfg: Mapping[str, Any], cuts: Sequence[str], variants: Mapping[str, Variant]) -> list[Planned]:
    """The baseline of each group of cuts run (:data:`BASELINE_GROUPS`: the grid's arrays apart from
    the low-dim ones, so that running one cut later reuses the other's baseline), then every variant of
    ``variants`` whose cut is among ``cuts``."""
    base = variant_config(cfg, BASELINE, None)
    out = []
    for group, members in BASELINE_GROUPS.items():
        run = [c for c in members if c in cuts]
        if run:
            out.append(Planned(BASELINE, run, base, cut_methods(run[0]), f"{BASELINE}_{group}"))
    for name, v in variants.items():
        if v.cut in cuts:
            out.append(Planned(name, [v.cut], variant_config(cfg, name, v), cut_methods(v.cut), name))
    return out


def variant_store(ctx: Context, name: str, quiet: bool = False) -> DiskStore:
    """Variant ``name``'s cache: ``<cache>/sensitivity/<name>/`` (arrays, and subspaces in ``lowdim/``)."""
    root = ctx.cache_dir / "sensitivity" / name
    return DiskStore(root, root / "lowdim", force=ctx.force, log=(lambda _: None) if quiet else log)


def announce(
    ctx: Context,
    runs: Sequence[Planned],
    sources: Mapping[str, Any],
    identity: dict,
    model_id: str,
    costs_from: str | None = None,
) -> None:
    """Print, before any pass, what each variant computes (its settings, methods and the work not
    cached yet) and its expected time from measured per-image costs (the profile's, or those of
    profile ``costs_from``)."""
    if measured_timings(ctx, costs_from) is None:
        log(
            f"no estimate: no per-image costs measured for profile '{costs_from or ctx.profile}' "
            "(figures/<profile>/runs/extract_timings.csv); --costs-from names a profile with the same model that has them"
        )
    for r in runs:
        store = variant_store(ctx, r.store, quiet=True)
        plan = plan_sets(sources, r.cfg, needs=r.needs, store=store, model_id=model_id, identity=identity)
        shown = ", ".join(display(m) for m in r.methods)
        log(f"{r.name} ({r.describe()}): {len(r.methods)} methods ({shown})")
        log(f"  {work_line(plan) if plan.units else 'nothing to compute: every set is cached'}")
        line = expected_line(ctx, plan, r.cfg, r.needs, costs_from)
        if line:
            log(f"  {line}")


def measure(ctx: Context, r: Planned, data: BenchmarkData) -> MethodsResult:
    """Tune ``r``'s methods on the first halves of the validation sets, score the second halves."""
    n_boot, seed = int(ctx.cfg["benchmark"]["bootstrap"]), int(ctx.cfg["seed"])
    return run_methods(data, r.methods, protocol=PROTOCOL, bootstrap_n=n_boot, seed=seed)


def half_sizes(data: BenchmarkData) -> dict[str, tuple[int, int]]:
    """Rows of each validation set that tune and that are measured."""
    return {n: (int(sp.val.size), int(sp.test.size)) for n, sp in data.splits.items()}


def result_rows(
    r: Planned,
    res: MethodsResult,
    base: Mapping[str, MethodsResult],
    sizes: Mapping[str, tuple[int, int]],
    n_boot: int,
    seed: int,
) -> list[dict]:
    """The CSV rows of variant ``r``: one per (method, OOD validation set); beside the baseline
    (``base``: each method's baseline result) the paired difference and its interval on the same rows and
    resamples."""
    out = []
    for row in res.rows:
        m, o = row["method"], row["ood_set"]
        grid = res.methods[m].grid
        rec = {
            "variant": r.name,
            "cut": "+".join(r.cuts),
            "setting": r.describe(),
            "method": m,
            "display": display(m),
            "ood_set": o,
            "params": {k: row["hyperparams"][k] for k in grid},
            "auroc": row["auroc"],
            "auroc_std": row["auroc_std"],
            "n_tune_id": sizes[ID_VAL][0],
            "n_tune_ood": sizes[o][0],
            "n_eval_id": row["n_id"],
            "n_eval_ood": row["n_ood"],
        }
        if r.name != BASELINE and n_boot >= 2:
            d = paired_auroc_diff(*pair_scores(res, m, o), *pair_scores(base[m], m, o), n=n_boot, seed=seed)
            rec.update(diff_vs_baseline=d.diff, ci_low=d.ci_low, ci_high=d.ci_high, sign_flip=d.sign_flip)
        elif r.name != BASELINE:
            base_row = next(b for b in base[m].rows if b["method"] == m and b["ood_set"] == o)
            rec["diff_vs_baseline"] = row["auroc"] - base_row["auroc"]
        out.append(rec)
    return out


def pair_scores(res: MethodsResult, method: str, ood: str) -> tuple[np.ndarray, np.ndarray]:
    """(ID, OOD) scores of ``method`` on the measured halves of id_val and ``ood``."""
    return res.scores[ID_VAL][f"{method}__vs__{ood}"], res.scores[ood][method]


def pct(v: Any, signed: bool = False) -> str:
    """An AUROC (fraction) as percent with one decimal; a dash when missing."""
    if v is None or v == "" or not np.isfinite(float(v)):
        return "—"
    return f"{100 * float(v):+.1f}" if signed else f"{100 * float(v):.1f}"


def params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}" for k, v in params.items()) or "—"


def cut_table(cut: str, rows: Sequence[Mapping[str, Any]], multi_set: bool) -> list[str]:
    """The Markdown section of one cut: per method (and OOD validation set), the baseline and each of
    the cut's variants, AUROC (%) ± bootstrap std with the parameters chosen, and the difference."""
    base = {(r["method"], r["ood_set"]): r for r in rows if r["variant"] == BASELINE}
    lines: list[str] = []
    for name in dict.fromkeys(r["variant"] for r in rows if r["cut"] == cut and r["variant"] != BASELINE):
        var = [r for r in rows if r["variant"] == name]
        b0 = base[(var[0]["method"], var[0]["ood_set"])]
        header = ["Method", *(["OOD validation set"] if multi_set else [])]
        header += [f"Baseline ({setting_of(b0, cut)})", "chosen", f"{name} ({var[0]['setting']})", "chosen"]
        header += ["Δ AUROC [95 % CI]"]
        body = []
        for r in var:
            b = base[(r["method"], r["ood_set"])]
            ci = (
                f" [{pct(r.get('ci_low'), True)}, {pct(r.get('ci_high'), True)}]" if r.get("ci_low") is not None else ""
            )
            body.append(
                [r["display"], *([display(r["ood_set"])] if multi_set else [])]
                + [f"{pct(b['auroc'])} ±{pct(b['auroc_std'])}", params_text(b["params"])]
                + [f"{pct(r['auroc'])} ±{pct(r['auroc_std'])}", params_text(r["params"])]
                + [pct(r.get("diff_vs_baseline"), True) + ci]
            )
        lines += [
            f"## {CUT_TITLES[cut]}: {setting_of(b0, cut)} vs {var[0]['setting']}",
            "",
            markdown_grid(header, body),
            "",
        ]
    return lines


def setting_of(base_row: Mapping[str, Any], cut: str) -> str:
    """The baseline's setting of ``cut`` (its ``setting`` column lists every cut run, in CUTS order)."""
    cuts = base_row["cut"].split("+")
    return base_row["setting"].split(", ")[cuts.index(cut)]


def markdown(
    ctx: Context,
    rows: Sequence[Mapping[str, Any]],
    cuts: Sequence[str],
    sizes: Mapping[str, tuple[int, int]],
    n_boot: int,
) -> str:
    """``sensitivity.md``: what was measured, then one table per cut."""
    val_oods = [o for o in sizes if o != ID_VAL]
    tune = ", ".join(f"{display(o)} {sizes[o][0]:,}" for o in val_oods)
    meas = ", ".join(f"{display(o)} {sizes[o][1]:,}" for o in val_oods)
    head = [
        f"# Sensitivity of the CPU cuts: profile `{ctx.profile}`",
        "",
        f"One trained model, validation rows only. Each validation set is split in seeded halves: tuned "
        f"(protocol `{PROTOCOL}`: one choice for every set) on {display(ID_VAL)} {sizes[ID_VAL][0]:,} rows vs {tune}; "
        f"AUROC (%) ± bootstrap std measured on the other halves ({display(ID_VAL)} {sizes[ID_VAL][1]:,} rows vs {meas}). "
        f"Δ = variant − baseline with the 95 % paired bootstrap interval ({n_boot} resamples of the same rows).",
        "",
    ]
    body = [line for cut in cuts for line in cut_table(cut, rows, len(val_oods) > 1)]
    return "\n".join(head + body)


def run(
    ctx: Context, cuts: Sequence[str], variants: Mapping[str, Variant] | None = None, costs_from: str | None = None
) -> list[dict]:
    """Extract every variant (cached), measure it, write ``sensitivity.csv`` / ``.md``; the CSV rows.
    ``variants``: default :data:`VARIANTS`; ``costs_from``: the profile whose measured costs estimate."""
    t0 = time.perf_counter()
    check_profile(ctx.cfg, cuts)
    runs = planned(ctx.cfg, cuts, VARIANTS if variants is None else variants)
    model, meta_ck = load_model(ctx)
    device = ctx.device()
    model.to(device)
    num_classes = int(ctx.cfg["model"]["kwargs"]["num_classes"])
    pre = Preprocess(**ctx.cfg["data"]["preprocessing"])
    val_oods = list(ctx.cfg["data"]["validation"]["ood"])
    names = [TRAIN, ID_VAL, *val_oods]  # never a test set
    memo: dict = {}
    sources = {n: set_loader(ctx, n, pre, num_classes, memo) for n in names}
    identity = {n: spec_key(ctx.cfg, n) for n in names}
    announce(ctx, runs, sources, identity, meta_ck["sha256"], costs_from)
    head = head_arrays(model)
    n_boot, seed = int(ctx.cfg["benchmark"]["bootstrap"]), int(ctx.cfg["seed"])
    rows: list[dict] = []
    base: dict[str, MethodsResult] = {}  # method -> its baseline's result
    sizes: dict[str, tuple[int, int]] = {}  # the same for every variant (the same sets and seed)
    for r in runs:
        log(f"variant {r.name} ({r.describe()})")
        store = variant_store(ctx, r.store)
        sets = extract_sets(
            model,
            sources,
            r.cfg,
            num_classes=num_classes,
            device=device,
            needs=r.needs,
            input_std=pre.std,
            store=store,
            model_id=meta_ck["sha256"],
            identity=identity,
            log=log,
            val_oods=val_oods,
        )
        write_json(
            store.root / "meta.json", {"variant": r.name, "cuts": r.cuts, "setting": r.describe(), "keys": sets.keys}
        )
        data = variant_data(r.cfg, {n: {**store.get(n), **head} for n in names}, val_oods)
        sizes = half_sizes(data)
        res = measure(ctx, r, data)
        rows += result_rows(r, res, base, sizes, n_boot, seed)
        if r.name == BASELINE:
            base.update(dict.fromkeys(r.methods, res))
    ctx.fig_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, ctx.fig_dir / "sensitivity.csv", CSV_COLUMNS)
    write_text(ctx.fig_dir / "sensitivity.md", markdown(ctx, rows, cuts, sizes, n_boot) + "\n")
    record_run(ctx, "sensitivity", time.perf_counter() - t0, {"variants": [r.name for r in runs], "rows": len(rows)})
    log(f"wrote {ctx.fig_dir / 'sensitivity.csv'} and sensitivity.md ({len(rows)} rows)")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated cuts to measure, of {', '.join(CUTS)} (default: all); the baseline always runs",
    )
    p.add_argument(
        "--costs-from",
        default=None,
        metavar="PROFILE",
        help="estimate from the per-image costs measured for another profile with the same model and device "
        "(figures/PROFILE/runs/extract_timings.csv; default: this profile's)",
    )
    args = p.parse_args(argv)
    cuts = parse_cuts(args.variants)
    run(make_context(args), cuts, costs_from=args.costs_from)


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
