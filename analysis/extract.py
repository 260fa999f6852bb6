"""Stage 2 — low-dim gradient subspaces, then one extraction pass per dataset: the profile's
settings and datasets handed to the extraction orchestrator (``ood_core.extraction.orchestrator``) with the
analysis cache as its store, then ``meta.json`` and the timings.

    python -m analysis.extract --profile demo

Writes the analysis cache (docs/architecture.md): ``arrays/<name>.npz`` for train, id_test,
each OOD set and the validation sets (``data.validation``: ``id_val`` and the OOD ones), ``head.npz``,
``splits.npz`` (seeded validation/test parts of id_test and every OOD set; a validation set's rows are
all validation; beside an ``id_val``, id_test's are all test), ``meta.json`` and ``timings.csv``.
Each file records the hash of what it was made from (model sha256 + dataset spec + preprocessing +
extraction config) and is reused when it matches.
Subspaces (Wu et al.) go to ``<cache>/lowdim/<name>.pt``.

On several processes (CPU: gloo; GPUs: NCCL), each takes a shard of whole batches of every set and
the results are joined into the same cache a single process writes (``ood_core.extraction.distributed``)::

    torchrun --standalone --nproc-per-node 2 -m analysis.extract --profile demo

A rank's finished shard is kept in ``<analysis>/parts/`` until the set is joined, so a rerun of a
killed launch continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Callable

from ood_core.cache import atomic_path, save_npz, write_json
from ood_core.config import ID_VAL, odin_grid
from ood_core.data.sources import PreprocessedImages
from ood_core.extraction.arrays import Preprocess, head_arrays
from ood_core.extraction.distributed import Ranks, init_ranks, shutdown
from ood_core.extraction.orchestrator import (
    ID_TEST,
    TRAIN,
    extract_sets,
    extract_settings,
    grid_test_points,
    wanted_subspaces,
)
from ood_core.extraction.store import DiskStore
from ood_core.progress import ExtractPlan, estimate_seconds, format_duration, read_timings

from .common import REPO, Context, add_common_args, make_context, profile_estimate_line, record_run
from .datasets import all_specs, load_named, spec_key
from .train import load_model


def log(line: str) -> None:
    print(f"[extract] {line}", flush=True)


def run(ctx: Context) -> Path:
    """The extract stage; under ``torchrun`` every rank runs it on its shards (rank 0 writes)."""
    ranks = init_ranks(ctx.device().type)
    if ranks.is_distributed and ctx.device().type == "cuda":
        ctx.device_name = f"cuda:{ranks.local_rank}"
    try:
        return _run(ctx, ranks)
    finally:
        shutdown(ranks)


def _run(ctx: Context, ranks: Ranks) -> Path:
    t_start = time.perf_counter()
    out = ctx.analysis_dir
    model, meta_ck = load_model(ctx)
    device = ctx.device()
    model.to(device)
    num_classes = int(ctx.cfg["model"]["kwargs"]["num_classes"])
    pre = Preprocess(**ctx.cfg["data"]["preprocessing"])
    memo: dict = {}
    specs = all_specs(ctx.cfg)
    val_oods = list(ctx.cfg["data"]["validation"]["ood"])
    sets = extract_sets(
        model,
        {name: set_loader(ctx, name, pre, num_classes, memo) for name in specs},
        ctx.cfg,
        num_classes=num_classes,
        device=device,
        input_std=pre.std,
        store=DiskStore(out, ctx.lowdim_dir, force=ctx.force, log=log if ranks.is_main else lambda _: None),
        ranks=ranks,
        model_id=meta_ck["sha256"],
        identity={name: spec_key(ctx.cfg, name) for name in specs},
        log=log if ranks.is_main else None,
        val_oods=val_oods,
        on_plan=lambda plan: announce(ctx, plan),
    )
    if not ranks.is_main:
        return out
    ecfg = ctx.cfg["extract"]
    Ts, epss = odin_grid(ctx.cfg)
    save_npz(out / "head.npz", head_arrays(model))
    save_npz(
        out / "splits.npz",
        {f"{name}__{part}": getattr(split, part) for name, split in sets.splits.items() for part in ("val", "test")},
    )
    test_arrays = sets.store.get(ID_TEST)
    id_acc = float((test_arrays["logits"].argmax(1) == test_arrays["y"]).mean())
    meta = {
        "profile": ctx.profile,
        "model": ctx.cfg["model"]["name"],
        "model_sha256": meta_ck["sha256"],
        "num_classes": num_classes,
        "class_names": load_named(ctx, ID_TEST, memo).class_names if ID_TEST in memo else meta_ck.get("class_names"),
        "id_accuracy": id_acc,
        "id_dataset": ctx.cfg["data"]["id_name"] or ctx.profile,
        "train": TRAIN,
        "id_test": ID_TEST,
        "ood": {n: s.get("group", "ood") for n, s in ctx.cfg["data"]["ood"].items()},
        "lowdim_subspaces": [s.name for s in sets.subspaces],
        "grid": {"odin_T": Ts, "odin_eps": epss},
        "grodin_test_points": grid_test_points(ecfg),
        "eps_space": ecfg["eps_space"],
        "val": ctx.cfg["data"]["val"],
        "seed": ctx.cfg["seed"],
        "device": ctx.device_name,
    }
    if ID_VAL in specs:  # the sets that only tune (data.validation)
        meta["validation"] = {"id": ID_VAL, "ood": val_oods}
    if ranks.is_distributed:
        meta["ranks"] = ranks.world
    write_json(out / "meta.json", meta)
    if sets.timings:
        _write_timings(out / "timings.csv", sets.timings, ctx.device_name, int(ecfg["batch_size"]))
    record_run(
        ctx,
        "extract",
        time.perf_counter() - t_start,
        {"timings": sets.timings, "id_accuracy": id_acc, "ranks": ranks.world},
    )
    print(f"[extract] analysis cache: {out} (ID accuracy {id_acc:.4f})")
    return out


def set_loader(
    ctx: Context, name: str, pre: Preprocess, num_classes: int, memo: dict
) -> Callable[[], PreprocessedImages]:
    """What the orchestrator calls to load set ``name`` of the profile (only when it is not cached):
    its images (class labels checked on the ID sets) read through ``pre``; ``memo`` keeps loaded sets."""

    def load() -> PreprocessedImages:
        ds = load_named(ctx, name, memo)
        if name in (TRAIN, ID_TEST, ID_VAL):
            ds.check_labels(num_classes)
        return PreprocessedImages(ds, pre)

    return load


TIMINGS_CSV = Path("runs") / "extract_timings.csv"


def measured_timings(ctx: Context, profile: str | None = None) -> Path | None:
    """The per-image costs measured on this profile: ``<fig_dir>/runs/extract_timings.csv``, else the
    committed ``figures/<profile>/runs/extract_timings.csv``; None when neither exists. ``profile``:
    another profile's committed costs instead (one with the same model and device)."""
    if profile is not None and profile != ctx.profile:
        path = REPO / "figures" / profile / TIMINGS_CSV
        return path if path.is_file() else None
    for path in (ctx.fig_dir / TIMINGS_CSV, REPO / "figures" / ctx.profile / TIMINGS_CSV):
        if path.is_file():
            return path
    return None


def announce(ctx: Context, plan: ExtractPlan) -> None:
    """Print the work planned, the profile's ``cpu_estimate`` and, from measured per-image costs of
    the same device type, the expected time (saying which numbers it used)."""
    log(work_line(plan))
    note = profile_estimate_line(ctx, "extract")
    if note:
        print(note, flush=True)
    line = expected_line(ctx, plan, ctx.cfg)
    if line:
        log(line)


def work_line(plan: ExtractPlan) -> str:
    """The plan's work in one line: image-passes in all, then per kind of pass."""
    fits = ", ".join(f"{n} {r:,}" for n, r in plan.subspace_rows.items()) or "none"
    return (
        f"work: {plan.units:,} image-passes (subspace fits: {fits}; whitening statistics {plan.stats_rows:,}; "
        f"set passes {sum(plan.main_rows.values()):,} rows; grid {sum(plan.grid_units.values()):,} rows x cells)"
    )


def expected_line(
    ctx: Context, plan: ExtractPlan, cfg: dict, needs: set[str] | None = None, costs_from: str | None = None
) -> str | None:
    """The expected time of ``plan`` under settings ``cfg`` (a profile; ``needs``: the arrays computed,
    ``extract_settings``) from the per-image costs measured on the same device type (``costs_from``:
    another profile's, :func:`measured_timings`), saying which numbers it used; or why there is none;
    None when nothing is measured or nothing is to do."""
    path = measured_timings(ctx, costs_from)
    if path is None or not plan.units:
        return None
    device = _timings_device(path)
    if device.split(":")[0] != ctx.device_name.split(":")[0]:
        return f"no estimate: {path} was measured on {device}, this run uses {ctx.device_name}"
    ecfg = extract_settings(cfg["extract"], needs)
    parts = (
        ["forward"]
        + ["kl_allweights"] * bool(ecfg["kl_allweights"])
        + [f"lowdim_{n}" for n in wanted_subspaces(cfg, needs)]
    )
    parts += ["activation_grads"] * bool(ecfg["activation_grads"])
    seconds, used = estimate_seconds(plan, read_timings(path), parts)
    bound = (
        " (at most: the grid counted on every row until its cells are chosen)"
        if grid_test_points(ecfg) == "selected"
        else ""
    )
    return f"expected: about {format_duration(seconds)} on {device}{bound}; from {path}, {used}"


def _timings_device(path: Path) -> str:
    with open(path, newline="") as f:
        return next(csv.DictReader(f), {}).get("device", "?")


def _write_timings(path: Path, timings: dict, device: str, batch_size: int) -> None:
    """Seconds per 1,000 images of each extraction component, pooled over the datasets of this run;
    ``grodin_one_grid_point`` = seconds per 1,000 image x grid-cell evaluations."""
    tot: dict[str, float] = {}
    cnt: dict[str, int] = {}
    cells = 0
    for t in timings.values():
        cells += int(t.get("_grid_cells", 0))
        for k, v in t.items():
            if not k.startswith("_"):
                tot[k] = tot.get(k, 0.0) + v["seconds"]
                cnt[k] = cnt.get(k, 0) + int(v["n"])
    rows = [
        {
            "method": k,
            "seconds_per_1000": 1000 * v / cnt[k],
            "device": device,
            "batch_size": batch_size,
            "n_images": cnt[k],
        }
        for k, v in tot.items()
        if cnt[k]
    ]
    grid_s = tot.get("grodin_grid", 0.0) + tot.get("grodin_selected", 0.0)
    if cells:
        rows.append(
            {
                "method": "grodin_one_grid_point",
                "seconds_per_1000": 1000 * grid_s / cells,
                "device": device,
                "batch_size": batch_size,
                "n_images": cells,
            }
        )
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    run(make_context(p.parse_args(argv)))


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
