"""Scores -> metrics -> tables: the benchmark stage over one extracted analysis directory.

Input (written by the extraction stage; read through ``ood_core.analysis_cache.AnalysisCache``, which
checks the splits)::

    <analysis_dir>/meta.json      profile, model, num_classes, id_accuracy, train, id_test,
                                  ood {name: group}, lowdim_subspaces [...], grid {odin_T, odin_eps}
    <analysis_dir>/arrays/<name>.npz   per-dataset arrays (docs/architecture.md)
    <analysis_dir>/head.npz       W, b
    <analysis_dir>/splits.npz     <name>__val, <name>__test for id_test and every OOD set

For every method (``ood_core.evaluation.benchmark.run_methods``, the core the Python API shares): fit on train
(memoised per fit-relevant parameters), choose parameters on the validation parts under the
protocol, score the TEST parts, compute metrics (+ bootstrap std of AUROC). This stage adds the
sweeps and ablations and writes the tables.

Output in ``fig_dir``: metrics.csv/.md/.tex, ablation_grodin.*, ablation_rg_percentile.*,
ablation_lowdim_k.*, ablation_lowdim_subspace.*, sweep_odin.csv, sweep_react.csv, sweep_knn.csv,
chosen_hyperparams.json, reference.md, skipped.csv, paired.csv/.md (paired bootstrap of the near / far
AUROC differences, ``ood_core.reporting.paired_table``; ``benchmark.bootstrap`` resamples, as the std in
metrics.csv); and ``<analysis_dir>/scores/<name>.npz`` (test-part scores, float64 as scored;
``_test_idx`` = indices into that set's arrays; ``_protocol`` the protocol; in the ID file
``<method>__vs__<ood>`` holds the ID scores at the parameters used for that OOD set, ``<method>`` when
they are the same for all).

Sweep semantics: a sweep varies one method's parameter(s) over the values its registry entry declares
(``ScoreSpec.sweeps``), other parameters at their registered defaults; ``auroc_val`` is always the
set's OWN validation part (whatever the protocol), ``auroc_test`` its test part (NaN in sweep_odin.csv
for a cell that was searched on validation rows only, ``extract.grodin_test_points: selected``).
Sweeps are for plots; the reported tables use the protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ood_core.analysis_cache import AnalysisCache
from ood_core.cache import write_text
from ood_core.evaluation.benchmark import BenchmarkData, Scorer, missing_arrays, run_methods, tune_method
from ood_core.evaluation.cuts import profile_cuts
from ood_core.evaluation.tuning import PROTOCOLS, FitCache
from ood_core.extraction.grid import point_available
from ood_core.extraction.grid_selection import choose_settings
from ood_core.reporting import tables
from ood_core.reporting.paired_table import COLUMNS as PAIRED_COLUMNS
from ood_core.reporting.paired_table import paired_markdown, paired_rows, resolve_pairs
from ood_core.reporting.reference_compare import write_reference_md
from ood_core.reporting.table_csv import json_default, write_csv, write_metrics_csv
from ood_core.scores import registry  # importing the package registers every score

log = logging.getLogger("analysis.benchmark")

GRID_SWEEP = registry.GRID_PARAMS  # a sweep over these two is the eps x T grid (sweep_odin.csv)
# the CSV holding the rows of every method's sweep of one parameter (one-parameter sweeps not listed
# here, e.g. over the low-dim subspace, only feed their ablation table)
SWEEP_CSV = {GRID_SWEEP: "sweep_odin.csv", ("percentile",): "sweep_react.csv", ("k",): "sweep_knn.csv"}


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` wrote and found."""

    metrics_csv: Path  # fig_dir/metrics.csv (the other tables beside it)
    rows: list[dict[str, Any]]  # the metric rows of metrics.csv
    chosen: dict[str, Any]  # method -> chosen parameters (chosen_hyperparams.json)
    skipped: list[dict[str, Any]]  # method, family, reason (skipped.csv)
    protocol: str
    held_out: str | None


# ---------------------------------------------------------------------------------- main stage
def run_benchmark(
    *,
    analysis_dir: Path,
    fig_dir: Path,
    methods: list[str] | None = None,
    protocol: str = "per_ood_val",
    bootstrap_n: int = 100,
    seed: int = 0,
    held_out: str | None = None,
    strict: bool = True,
    cuts: Sequence[str] = (),
    paired: Sequence[Any] | None = None,
) -> BenchmarkResult:
    """Run every (or the given) registered method; write the tables to ``fig_dir`` and the test-part
    scores to ``<analysis_dir>/scores/``.

    ``strict=False`` turns unexpected errors of a method into a skipped.csv entry instead of raising;
    missing arrays always lead to a skip with the reason logged. ``paired``: the pairs of paired.csv
    (``benchmark.paired``; None: the best method of each family, see ``ood_core.reporting.paired_table``)."""
    for item in paired or ():
        for m in [item] if isinstance(item, str) else item:
            registry.get(m)  # a wrong name fails before the long part, listing the known ones
    analysis_dir, fig_dir = Path(analysis_dir), Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    cache = AnalysisCache(analysis_dir)
    data = BenchmarkData.from_cache(cache)
    meta = data.meta
    fits = FitCache(data.train)
    res = run_methods(
        data,
        methods,
        protocol=protocol,
        held_out=held_out,
        bootstrap_n=bootstrap_n,
        seed=seed,
        strict=strict,
        fits=fits,
    )
    held_out = res.held_out
    rows, chosen, skipped = res.rows, res.chosen, res.skipped
    sweeps: dict[tuple[str, ...], list[dict[str, Any]]] = {params: [] for params in SWEEP_CSV}
    ablations: dict[str, tuple[registry.Sweep, list[dict[str, Any]]]] = {}
    for m, mres in res.methods.items():
        spec = registry.get(m)
        scorer, tr, grid = mres.scorer, mres.tune, mres.grid
        for sweep in spec.sweeps:
            if sweep.params == GRID_SWEEP:
                sw = _sweep_odin(m, spec, data, scorer, tr, grid, fits)
                abl = _grodin_ablation(m, sw, data, protocol, held_out) if sweep.ablation and sw else []
            else:
                sw = abl = _sweep_param(m, spec, data, scorer, sweep.param, _sweep_values(sweep, grid, meta))
            sweeps.setdefault(sweep.params, []).extend(sw)
            if sweep.ablation and abl:
                ablations.setdefault(sweep.ablation, (sweep, []))[1].extend(abl)

    info = {
        "model": meta.get("model"),
        "id_accuracy": meta.get("id_accuracy"),
        "protocol": protocol,
        "n_id": int(data.splits[data.id_name].test.size),
        "bootstrap_n": bootstrap_n,
        "title": f"{meta.get('profile', '')} / {meta.get('model', '')}",
    }
    if protocol == "held_out_ood":
        info["protocol"] = f"held_out_ood (held-out: {held_out})"
    metrics_csv = fig_dir / "metrics.csv"
    if rows:
        tables.write_metrics_tables(rows, fig_dir, info)
    else:
        write_metrics_csv(rows, metrics_csv)
        log.warning("no method produced results; wrote an empty metrics.csv")
    _write_sweeps_and_ablations(fig_dir, sweeps, ablations, protocol)
    write_csv(skipped, fig_dir / "skipped.csv", ["method", "family", "reason"])
    write_text(
        fig_dir / "chosen_hyperparams.json",
        json.dumps(
            {
                "protocol": protocol,
                "held_out": held_out,
                "bootstrap_n": bootstrap_n,
                "seed": seed,
                "profile": meta.get("profile"),
                "model": meta.get("model"),
                "methods": chosen,
            },
            indent=2,
            sort_keys=False,
            default=json_default,
        ),
    )
    write_reference_md(
        rows,
        fig_dir / "reference.md",
        id_dataset=cache.id_dataset,
        model=str(meta.get("model")),
        protocol=str(info["protocol"]),
        preprocessing=str(meta.get("preprocessing", "see the profile config")),
        cuts=cuts,
    )
    for ds, scores in res.scores.items():
        cache.write_scores(ds, scores, protocol=str(info["protocol"]))
    pairs = resolve_pairs(paired, rows) if rows and bootstrap_n >= 2 else []
    prows = paired_rows(
        res.scores, data.id_name, data.groups, pairs, n=bootstrap_n, seed=seed, protocol=str(info["protocol"])
    )
    write_csv(prows, fig_dir / "paired.csv", PAIRED_COLUMNS)
    write_text(fig_dir / "paired.md", paired_markdown(prows, str(info["title"])))
    if skipped:
        log.warning("skipped %d method(s); see %s", len(skipped), fig_dir / "skipped.csv")
    return BenchmarkResult(
        metrics_csv=metrics_csv, rows=rows, chosen=chosen, skipped=skipped, protocol=protocol, held_out=held_out
    )


# ----------------------------------------------------------------------------------- sweeps
def _sweep_values(sweep: registry.Sweep, grid: Mapping[str, list[Any]], meta: Mapping[str, Any]) -> list[Any]:
    """The values a one-parameter sweep runs over (:class:`ood_core.scores.registry.Sweep`): its own,
    else the cache's low-dim subspaces for ``subspace``, else the method's tuning grid."""
    if sweep.values is not None:
        return list(sweep.values)
    if sweep.param == "subspace":
        return list(meta.get("lowdim_subspaces") or [])
    return list(grid.get(sweep.param, []))


def _sweep_param(m, spec, data: BenchmarkData, scorer: Scorer, param: str, values: list[Any]) -> list[dict]:
    """Test AUROC of ``m`` for each value of one parameter (others at defaults)."""
    if not values:
        log.info("no %s sweep for %s: no values to sweep", param, m)
        return []
    out = []
    for v in values:
        params = {**spec.defaults, param: v}
        reason = missing_arrays(spec, data, params)
        if reason:
            log.warning("%s sweep of %s: skip %s=%s (%s)", param, m, param, v, reason)
            continue
        for o in data.ood_names:
            out.append(
                {
                    "method": m,
                    param: v,
                    "ood_set": o,
                    "group": data.groups[o],
                    "auroc_test": scorer.test_auroc(o, params),
                }
            )
    return out


def _sweep_odin(m, spec, data: BenchmarkData, scorer: Scorer, tr, grid, fits: FitCache) -> list[dict]:
    """Validation and test AUROC of ``m`` at every cell of the eps x T grid it was tuned on."""
    en, tn = GRID_SWEEP
    if en not in grid or tn not in grid:
        log.info("no eps/T sweep for %s (grid %s)", m, sorted(grid))
        return []
    if tr.protocol == "per_ood_val" and tr.tables:
        tables_val = tr.tables
    else:  # the set's own validation part (a tuning pass: guarded slicing in tune)
        tables_val = tune_method(m, data, fits, grid, "per_ood_val").tables
    out = []
    for o in data.ood_names:
        for point, auc_val in tables_val[o]:
            params = {**spec.defaults, **point}
            on_test = all(point_available(data.arrays[d], point[en], point[tn]) for d in (data.id_name, o))
            out.append(
                {
                    "method": m,
                    "ood_set": o,
                    "group": data.groups[o],
                    "eps": point[en],
                    "T": point[tn],
                    "auroc_val": auc_val,
                    # NaN: a cell searched on validation rows only (extract.grodin_test_points: selected)
                    "auroc_test": scorer.test_auroc(o, params) if on_test else float("nan"),
                }
            )
    return out


def _grodin_ablation(m, sweep: list[dict], data: BenchmarkData, protocol: str, held_out: str | None) -> list[dict]:
    """vanilla (eps0, T0) / only eps (T=T0) / only T (eps=eps0) / both, chosen on validation AUROC
    (own set's val part, or the held-out set's under held_out_ood) by
    :func:`ood_core.extraction.grid_selection.choose_settings` (eps0 = 0 and T0 = 1 when on the grid, else the
    smallest grid value; recorded in the rows)."""
    out = []
    for o in data.ood_names:
        src = held_out if protocol == "held_out_ood" else o
        table = [({"eps": r["eps"], "T": r["T"]}, r["auroc_val"]) for r in sweep if r["ood_set"] == src]
        val_of = {(p["eps"], p["T"]): v for p, v in table}
        test_of = {(r["eps"], r["T"]): r["auroc_test"] for r in sweep if r["ood_set"] == o}
        for setting, p in choose_settings(table).items():
            cell = (p["eps"], p["T"])
            out.append(
                {
                    "method": m,
                    "setting": setting,
                    "ood_set": o,
                    "group": data.groups[o],
                    "auroc": test_of[cell],
                    "eps": p["eps"],
                    "T": p["T"],
                    "auroc_val": val_of[cell],
                    "selected_on": f"{src} val",
                }
            )
    return out


def _write_sweeps_and_ablations(fig_dir: Path, sweeps, ablations, protocol: str) -> None:
    """``SWEEP_CSV`` files (always, possibly empty) and one table per ablation name the sweeps declare."""
    for params, name in SWEEP_CSV.items():
        cols = (
            ["method", "ood_set", "group", *params, "auroc_val", "auroc_test"]
            if params == GRID_SWEEP
            else ["method", *params, "ood_set", "group", "auroc_test"]
        )
        write_csv(sweeps[params], fig_dir / name, cols)
    for name, (sweep, rows) in ablations.items():
        if sweep.params == GRID_SWEEP:
            tables.write_grodin_ablation(rows, fig_dir, note=f"selection: {protocol}")
        else:
            tables.write_sweep_ablation(rows, sweep.param, fig_dir / f"ablation_{name}", sweep.caption)


# -------------------------------------------------------------------------------------- CLI
def _code_digest() -> str:
    """Hash of the code that turns cached arrays into tables: this stage's own files (this one and
    costs.py) and every library module (``ood_core``) they import, directly or not."""
    import hashlib

    from .stamps import imported_sources

    here = Path(__file__).resolve()
    h = hashlib.sha256()
    for f in imported_sources(here, here.with_name("costs.py"), packages=("ood_core",)):
        h.update(f.relative_to(here.parents[1]).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _inputs_digest(analysis_dir: Path) -> str:
    """Hash of the analysis cache a benchmark reads (meta, splits, head and every arrays file's key)."""
    import hashlib

    from ood_core.cache import npz_key

    h = hashlib.sha256()
    for f in ("meta.json", "splits.npz", "head.npz"):
        p = analysis_dir / f
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    for p in sorted((analysis_dir / "arrays").glob("*.npz")):
        h.update(p.name.encode() + str(npz_key(p)).encode())
    return h.hexdigest()[:16]


def _stored_stamp(path: Path) -> str | None:
    """The stamp a finished benchmark wrote (None when absent or unreadable)."""
    try:
        return json.loads(path.read_text()).get("stamp")
    except (OSError, ValueError, AttributeError):
        return None


def outputs_problem(analysis_dir: Path, fig_dir: Path) -> str | None:
    """Why the benchmark's last outputs cannot be reused: ``metrics.csv`` missing, or a
    ``scores/<set>.npz`` of the ID or an OOD set missing or damaged (failed CRC check)."""
    from ood_core.analysis_cache import AnalysisCache
    from ood_core.cache import zip_problem

    if not (fig_dir / "metrics.csv").is_file():
        return "metrics.csv is missing"
    cache = AnalysisCache(analysis_dir)
    for name in [cache.id_name, *cache.ood_names]:
        why = zip_problem(cache.scores_path(name))
        if why:
            return f"scores/{name}.npz " + ("is missing" if why == "missing" else f"is damaged ({why})")
    return None


def main(argv: Sequence[str] | None = None) -> Path:
    from ood_core.cache import hash_config, write_json

    from .common import add_common_args, make_context, record_run

    ap = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    ap.add_argument(
        "--methods", nargs="*", default=None, help="score names (default: the profile's, else all registered)"
    )
    ap.add_argument("--protocol", choices=PROTOCOLS, default=None, help="tuning protocol (default: the profile's)")
    ap.add_argument("--bootstrap-n", type=int, default=None, help="bootstrap resamples (default: the profile's)")
    ap.add_argument("--held-out", default=None, help="held-out OOD set for --protocol held_out_ood")
    ap.add_argument("--keep-going", action="store_true", help="skip (not raise on) methods that error")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    ctx = make_context(a)
    b = ctx.cfg["benchmark"]
    methods = a.methods or b["methods"] or None
    protocol = a.protocol or b["protocol"]
    boot = a.bootstrap_n if a.bootstrap_n is not None else int(b["bootstrap"])
    held_out = a.held_out or b["held_out"]
    paired = b["paired"]
    cuts = profile_cuts(ctx.cfg)
    stamp = hash_config(
        _inputs_digest(ctx.analysis_dir),
        _code_digest(),
        methods,
        protocol,
        boot,
        held_out,
        ctx.cfg["seed"],
        cuts,
        paired,
    )
    stamp_file = ctx.fig_dir / ".benchmark_stamp.json"
    if not ctx.force and _stored_stamp(stamp_file) == stamp:
        why = outputs_problem(ctx.analysis_dir, ctx.fig_dir)
        if why is None:
            print(f"[benchmark] cached: {ctx.fig_dir / 'metrics.csv'}")
            return ctx.fig_dir / "metrics.csv"
        print(f"[benchmark] recomputing: {why}")
    t0 = time.perf_counter()
    out = run_benchmark(
        analysis_dir=ctx.analysis_dir,
        fig_dir=ctx.fig_dir,
        methods=methods,
        protocol=protocol,
        bootstrap_n=boot,
        seed=int(ctx.cfg["seed"]),
        held_out=held_out,
        strict=not a.keep_going,
        cuts=cuts,
        paired=paired,
    ).metrics_csv
    from .costs import write_method_costs

    costs = write_method_costs(ctx.analysis_dir, ctx.fig_dir, methods or registry.names())
    if costs:
        print(f"[benchmark] compute cost per method: {costs}")
    write_json(stamp_file, {"stamp": stamp})
    record_run(ctx, "benchmark", time.perf_counter() - t0, {"protocol": protocol, "bootstrap": boot})
    print(f"[benchmark] {out} in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
