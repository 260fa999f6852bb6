"""Scores -> metrics -> tables: the benchmark stage over one extracted analysis directory.

Input (written by the extraction stage; read through ``ood_core.analysis_cache.AnalysisCache``, which
checks the splits)::

    <analysis_dir>/meta.json      profile, model, num_classes, id_accuracy, train, id_test,
                                  ood {name: group}, lowdim_subspaces [...], grid {odin_T, odin_eps}
    <analysis_dir>/arrays/<name>.npz   per-dataset arrays (docs/architecture.md)
    <analysis_dir>/head.npz       W, b
    <analysis_dir>/splits.npz     <name>__val, <name>__test for id_test, every OOD set and the
                                  validation sets (meta's ``validation``; all rows val)

For every method (``ood_core.evaluation.benchmark.run_methods``, the core the Python API shares): fit on train
(memoised per fit-relevant parameters), choose parameters on the validation parts under the
protocol, score the TEST parts, compute metrics (+ bootstrap std of AUROC); once per protocol of
``benchmark.protocols`` (metrics.csv's ``protocol`` column; one section each in metrics.md, paired.md).
This stage adds the sweeps and ablations (under the headline protocol) and writes the tables.

Output in ``fig_dir``: metrics.csv/.md/.tex, ablation_grodin.*, ablation_rg_percentile.*,
ablation_lowdim_k.*, ablation_lowdim_subspace.*, sweep_odin.csv, sweep_react.csv, sweep_knn.csv,
chosen_hyperparams.json, reference.md, skipped.csv, paired.csv/.md (paired bootstrap of the near / far
AUROC differences, ``ood_core.reporting.paired_table``; ``benchmark.bootstrap`` resamples, as the std in
metrics.csv); and ``<analysis_dir>/scores/<name>.npz`` (test-part scores, float64 as scored;
``_test_idx`` = indices into that set's arrays; ``_protocol`` the protocol; the headline protocol's
(``benchmark.protocol``) in ``scores/``, each other one of ``benchmark.protocols`` in
``scores/<protocol>/``; in the ID file
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ood_core.analysis_cache import AnalysisCache
from ood_core.cache import write_text
from ood_core.config import ConfigError, validation_sets
from ood_core.evaluation.benchmark import BenchmarkData, Scorer, missing_arrays, run_protocols, tune_method
from ood_core.evaluation.cuts import profile_cuts
from ood_core.evaluation.tuning import PROTOCOLS, FitCache, TuneResult
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
    protocol: str  # the headline protocol
    held_out: str | None
    protocols: list[str] = field(default_factory=list)  # every protocol reported, the headline first


def protocol_list(protocol: str, protocols: Sequence[str] | None) -> list[str]:
    """The protocols a benchmark reports: the headline ``protocol`` first, then the others of
    ``protocols`` (``benchmark.protocols``; None: the headline only), each once and known."""
    out = list(dict.fromkeys([protocol, *(protocols or ())]))
    bad = [p for p in out if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"benchmark.protocols: unknown protocol {bad[0]!r}; choose from {', '.join(PROTOCOLS)}")
    return out


def protocol_label(protocol: str, held_out: str | None) -> str:
    """How tables and the scores' ``_protocol`` name a protocol (``held_out_ood`` with its set)."""
    return f"held_out_ood (held-out: {held_out})" if protocol == "held_out_ood" else protocol


# ---------------------------------------------------------------------------------- main stage
def run_benchmark(
    *,
    analysis_dir: Path,
    fig_dir: Path,
    methods: list[str] | None = None,
    protocol: str = "per_ood_val",
    protocols: Sequence[str] | None = None,
    bootstrap_n: int = 100,
    seed: int = 0,
    held_out: str | None = None,
    strict: bool = True,
    cuts: Sequence[str] = (),
    paired: Sequence[Any] | None = None,
) -> BenchmarkResult:
    """Run every (or the given) registered method under the headline ``protocol`` and the other
    ``protocols``; write the tables to ``fig_dir`` and the test-part scores to
    ``<analysis_dir>/scores/`` (the headline's; ``scores/<protocol>/`` for each other one).

    Metric rows of every protocol go to metrics.csv (column ``protocol``; metrics.md / .tex one
    section per protocol), paired.csv holds every protocol's pairs; sweeps, ablations and
    reference.md follow the headline. ``strict=False`` turns unexpected errors of a method into a
    skipped.csv entry instead of raising; missing arrays always lead to a skip with the reason
    logged. ``paired``: the pairs of paired.csv (``benchmark.paired``; None: the best method of each
    family of the headline's rows, see ``ood_core.reporting.paired_table``)."""
    for item in paired or ():
        for m in [item] if isinstance(item, str) else item:
            registry.get(m)  # a wrong name fails before the long part, listing the known ones
    reported = protocol_list(protocol, protocols)
    analysis_dir, fig_dir = Path(analysis_dir), Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    cache = AnalysisCache(analysis_dir)
    data = BenchmarkData.from_cache(cache)
    meta = data.meta
    fits = FitCache(data.train)
    runs = run_protocols(
        data,
        methods,
        protocols=reported,
        held_out=held_out,
        bootstrap_n=bootstrap_n,
        seed=seed,
        strict=strict,
        fits=fits,
    )
    res = runs[protocol]
    held_out = res.held_out
    rows = [r for p in reported for r in runs[p].rows]
    chosen, skipped = res.chosen, res.skipped
    sweeps: dict[tuple[str, ...], list[dict[str, Any]]] = {params: [] for params in SWEEP_CSV}
    ablations: dict[str, tuple[registry.Sweep, list[dict[str, Any]]]] = {}
    for m, mres in res.methods.items():
        spec = registry.get(m)
        scorer, tr, grid = mres.scorer, mres.tune, mres.grid
        for sweep in spec.sweeps:
            if sweep.params == GRID_SWEEP:
                sw = _sweep_odin(m, spec, data, scorer, tr, grid, fits)
                abl = _grodin_ablation(m, sw, data, tr) if sweep.ablation and sw else []
            else:
                sw = abl = _sweep_param(m, spec, data, scorer, sweep.param, _sweep_values(sweep, grid, meta))
            sweeps.setdefault(sweep.params, []).extend(sw)
            if sweep.ablation and abl:
                ablations.setdefault(sweep.ablation, (sweep, []))[1].extend(abl)

    labels = {p: protocol_label(p, runs[p].held_out) for p in reported}
    info = {
        "model": meta.get("model"),
        "id_accuracy": meta.get("id_accuracy"),
        "protocol": labels[protocol],
        "n_id": int(data.splits[data.id_name].test.size),
        "bootstrap_n": bootstrap_n,
        "title": f"{meta.get('profile', '')} / {meta.get('model', '')}",
        "protocol_notes": {p: data.rows_note(p, runs[p].held_out) for p in reported},
    }
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
                "methods": chosen,  # the headline protocol's choices
                "other_protocols": {p: runs[p].chosen for p in reported[1:]},
            },
            indent=2,
            sort_keys=False,
            default=json_default,
        ),
    )
    write_reference_md(
        res.rows,
        fig_dir / "reference.md",
        id_dataset=cache.id_dataset,
        model=str(meta.get("model")),
        protocol=str(info["protocol"]),
        preprocessing=str(meta.get("preprocessing", "see the profile config")),
        cuts=cuts,
    )
    _write_scores(analysis_dir, {p: runs[p].scores for p in reported}, labels)
    pairs = resolve_pairs(paired, res.rows) if res.rows and bootstrap_n >= 2 else []
    prows = [
        r
        for p in reported
        for r in paired_rows(
            runs[p].scores, data.id_name, data.groups, pairs, n=bootstrap_n, seed=seed, protocol=labels[p]
        )
    ]
    write_csv(prows, fig_dir / "paired.csv", PAIRED_COLUMNS)
    write_text(fig_dir / "paired.md", paired_markdown(prows, str(info["title"])))
    if skipped:
        log.warning("skipped %d method(s); see %s", len(skipped), fig_dir / "skipped.csv")
    return BenchmarkResult(
        metrics_csv=metrics_csv,
        rows=rows,
        chosen=chosen,
        skipped=skipped,
        protocol=protocol,
        held_out=held_out,
        protocols=reported,
    )


def _write_scores(
    analysis_dir: Path, scores: Mapping[str, Mapping[str, Mapping[str, Any]]], labels: Mapping[str, str]
) -> None:
    """Each protocol's test-part scores: the headline's (first) in ``scores/``, every other one's in
    ``scores/<protocol>/``; a ``scores/<protocol>/`` of a protocol not reported now is removed."""
    import shutil

    headline = next(iter(scores))
    for p in PROTOCOLS:
        stale = analysis_dir / "scores" / p
        if (p == headline or p not in scores) and stale.is_dir():
            shutil.rmtree(stale)
    for p, per_set in scores.items():
        cache = AnalysisCache(analysis_dir, scores_of=None if p == headline else p)
        for ds, sc in per_set.items():
            cache.write_scores(ds, sc, protocol=labels[p])


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


def _grodin_ablation(m, sweep: list[dict], data: BenchmarkData, tr: TuneResult) -> list[dict]:
    """vanilla (eps0, T0) / only eps (T=T0) / only T (eps=eps0) / both, chosen on validation AUROC
    (the table the protocol tuned on: the set's own val part, the held-out set's under held_out_ood,
    the OOD validation sets' under openood; the own val part under paper_defaults) by
    :func:`ood_core.extraction.grid_selection.choose_settings` (eps0 = 0 and T0 = 1 when on the grid, else the
    smallest grid value; recorded in the rows)."""
    en, tn = GRID_SWEEP
    out = []
    for o in data.ood_names:
        src = tr.tuned_on(o) or o
        if src in data.ood_names:
            table = [({"eps": r["eps"], "T": r["T"]}, r["auroc_val"]) for r in sweep if r["ood_set"] == src]
        else:  # the OOD validation sets' table (openood)
            table = [({"eps": p[en], "T": p[tn]}, v) for p, v in tr.tables[src]]
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
            tables.write_grodin_ablation(rows, fig_dir, note=f"selection: {protocol}")  # the headline's
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


def outputs_problem(analysis_dir: Path, fig_dir: Path, others: Sequence[str] = ()) -> str | None:
    """Why the benchmark's last outputs cannot be reused: ``metrics.csv`` missing, or a
    ``scores/<set>.npz`` (``scores/<protocol>/<set>.npz`` for the ``others`` protocols) of the ID or
    an OOD set missing or damaged (failed CRC check)."""
    from ood_core.analysis_cache import AnalysisCache
    from ood_core.cache import zip_problem

    if not (fig_dir / "metrics.csv").is_file():
        return "metrics.csv is missing"
    for p in [None, *others]:
        cache = AnalysisCache(analysis_dir, scores_of=p)
        for name in [cache.id_name, *cache.ood_names]:
            why = zip_problem(cache.scores_path(name))
            if why:
                where = cache.scores_path(name).relative_to(analysis_dir).as_posix()
                return f"{where} " + ("is missing" if why == "missing" else f"is damaged ({why})")
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
    ap.add_argument(
        "--protocol", choices=PROTOCOLS, default=None, help="the one tuning protocol (default: the profile's)"
    )
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
    protocols = protocol_list(protocol, None if a.protocol else b["protocols"])
    if "openood" in protocols and not validation_sets(ctx.cfg):
        raise ConfigError(
            f"{ctx.profile}: protocol 'openood' tunes on validation sets; the profile's data.validation has none"
        )
    boot = a.bootstrap_n if a.bootstrap_n is not None else int(b["bootstrap"])
    held_out = a.held_out or b["held_out"]
    paired = b["paired"]
    cuts = profile_cuts(ctx.cfg)
    stamp = hash_config(
        _inputs_digest(ctx.analysis_dir),
        _code_digest(),
        methods,
        protocols,
        boot,
        held_out,
        ctx.cfg["seed"],
        cuts,
        paired,
    )
    stamp_file = ctx.fig_dir / ".benchmark_stamp.json"
    if not ctx.force and _stored_stamp(stamp_file) == stamp:
        why = outputs_problem(ctx.analysis_dir, ctx.fig_dir, protocols[1:])
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
        protocols=protocols,
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
    record_run(ctx, "benchmark", time.perf_counter() - t0, {"protocols": protocols, "bootstrap": boot})
    print(f"[benchmark] {out} in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
