"""Stage 2 — low-dim gradient subspaces, then one extraction pass per dataset.

    python -m analysis.extract --profile demo

Writes the analysis cache (docs/architecture.md): ``arrays/<name>.npz`` for train, id_test and
each OOD set, ``head.npz``, ``splits.npz`` (seeded validation/test parts of id_test and every OOD
set), ``meta.json`` and ``timings.csv``. Each file records the hash of what it was made from
(model sha256 + dataset spec + preprocessing + extraction config) and is reused when it matches.
Subspaces (Wu et al.) go to ``<cache>/lowdim/<name>.pt``.

On several processes (CPU: gloo; GPUs: NCCL), each takes a shard of whole batches of every set and
the results are joined into the same cache a single process writes (``ood_core.distributed``)::

    torchrun --standalone --nproc-per-node 2 -m analysis.extract --profile demo

A rank's finished shard is kept in ``<analysis>/parts/`` until the set is joined, so a rerun of a
killed launch continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ood_core.cache import atomic_path, cached_npz, hash_config, load_npz, npz_key, save_npz, write_json, zip_problem
from ood_core.config import odin_grid
from ood_core.data.sources import BatchSource, PreprocessedImages
from ood_core.data.splits import set_split
from ood_core.distributed import Ranks, init_ranks, shutdown
from ood_core.extract import (
    ExtractResult,
    Preprocess,
    Subspace,
    extract_arrays,
    grid_cells_pass,
    grid_on_rows,
    head_arrays,
)
from ood_core.extract_sets import grid_test_points
from ood_core.grid import FULL_POINTS_KEY, GRID_AXIS_KEYS, GRID_VALUE_KEYS, full_points
from ood_core.grid_selection import select_test_points
from ood_core.subspaces import check_subspace_spec, fit_subspace, subspace_params
from ood_core.tuning import Split

from .common import Context, add_common_args, make_context, record_run
from .datasets import all_specs, load_named, spec_key
from .train import load_model

SPLIT_ROLES_EXCLUDED = ("train",)


def _subspace(
    ctx: Context, model, model_sha: str, name: str, spec: dict, memo: dict, stats_memo: dict, ranks: Ranks = Ranks()
) -> tuple[Subspace, str]:
    """Compute (or load) one low-dim subspace of Wu et al. from the training set
    (:func:`ood_core.subspaces.fit_subspace`; cached in ``<cache>/lowdim/<name>.pt`` under a key)."""
    check_subspace_spec(name, spec)
    lcfg = ctx.cfg["lowdim"]
    params = subspace_params(spec, lcfg)
    common = {"params": params, **{k: lcfg[k] for k in ("normalisation", "n_samples")}}
    key = hash_config(model_sha, common, spec, spec_key(ctx.cfg, "train"), ctx.cfg["seed"])
    path = ctx.lowdim_dir / f"{name}.pt"
    damage = None if ctx.force else zip_problem(path)
    if damage not in (None, "missing"):
        print(f"[extract] recomputing subspace '{name}': lowdim/{path.name} is damaged ({damage})")
    elif path.is_file() and not ctx.force:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") == key:
            stats = (blob["mean"], blob["scale"]) if "mean" in blob else None
            if stats is not None:
                stats_memo.setdefault(repr(params), stats)
            return Subspace(name, blob["V"], stats, params), key
    train = PreprocessedImages(load_named(ctx, "train", memo), Preprocess(**ctx.cfg["data"]["preprocessing"]))
    t0 = time.perf_counter()
    sub = fit_subspace(
        model,
        train,
        name,
        spec,
        lcfg,
        num_classes=int(ctx.cfg["model"]["kwargs"]["num_classes"]),
        seed=ctx.cfg["seed"],
        device=ctx.device(),
        stats_memo=stats_memo,
        ranks=ranks,
    )
    blob = {"key": key, "V": sub.V.cpu(), "seconds": time.perf_counter() - t0}
    if sub.stats is not None:
        blob["mean"], blob["scale"] = sub.stats[0].cpu(), sub.stats[1].cpu()
    if ranks.is_main:
        with atomic_path(path, ".pt") as tmp:
            torch.save(blob, tmp)
        print(f"[extract] subspace '{name}' ({spec['kind']}, K={sub.V.shape[1]}) in {time.perf_counter() - t0:.1f}s")
    ranks.barrier()
    return sub, key


def _split(ctx: Context, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    v = ctx.cfg["data"]["val"]
    return set_split(name, n, v["n_val"], v["seed"])


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
    model_sha = meta_ck["sha256"]
    memo: dict = {}
    subspaces: list[Subspace] = []
    sub_keys: dict[str, str] = {}
    stats_memo: dict = {}
    if ctx.cfg["lowdim"]["enabled"]:
        for name, spec in ctx.cfg["lowdim"]["subspaces"].items():
            sub, k = _subspace(ctx, model, model_sha, name, spec, memo, stats_memo, ranks)
            sub.V = sub.V.to(device)
            sub.stats = None if sub.stats is None else tuple(s.to(device) for s in sub.stats)
            subspaces.append(sub)
            sub_keys[name] = k
    ecfg = ctx.cfg["extract"]
    Ts, epss = odin_grid(ctx.cfg)
    mode = grid_test_points(ecfg)
    pre = Preprocess(**ctx.cfg["data"]["preprocessing"])
    timings: dict[str, dict] = {}
    splits: dict[str, np.ndarray] = {}
    specs = all_specs(ctx.cfg)
    for name in specs:
        key = hash_config(model_sha, spec_key(ctx.cfg, name), ecfg, Ts, epss, sub_keys)
        path = out / "arrays" / f"{name}.npz"
        cached, why = (None, "") if ctx.force else cached_npz(path, key)
        if cached is not None:
            print(f"[extract] cached: {name}")
            n = len(cached["y"])
            del cached  # the set's arrays are not kept while the next one loads
        else:
            line = recompute_line(name, why, finished=(out / "meta.json").is_file())
            if line:
                print(line)
            ds = load_named(ctx, name, memo)
            is_ood = name not in ("train", "id_test")
            if not is_ood:
                ds.check_labels(int(ctx.cfg["model"]["kwargs"]["num_classes"]))
            val_rows = (
                _split(ctx, name, len(ds))[0] if mode == "selected" and name not in SPLIT_ROLES_EXCLUDED else None
            )
            kw: dict[str, Any] = dict(
                input_std=pre.std,
                odin_T=Ts,
                odin_eps=epss,
                subspaces=subspaces,
                lowdim_chunk=int(ctx.cfg["lowdim"]["chunk"]),
                is_ood=is_ood,
                with_grodin=name != "train",
                desc=name,
            )
            src = PreprocessedImages(ds, pre)
            if ranks.is_distributed:
                arrays, res = _extract_sharded(ctx, ranks, model, src, key, name, val_rows, kw)
            else:
                res = extract_arrays(model, src, ecfg, device, grodin_rows=val_rows, **kw)
                arrays = res.arrays
            if ranks.is_main and arrays is not None:  # rank 0 holds the joined arrays
                save_npz(path, arrays, key=key)
                _remove_parts(ctx, name)
            timings[name] = _timing_entry(res)
            n = len(ds)
            print(
                f"[extract] {name}: {res.n} images{_on_rank(ranks)}, "
                + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items())
            )
        if name not in SPLIT_ROLES_EXCLUDED:
            val, test = _split(ctx, name, n)
            splits[f"{name}__val"], splits[f"{name}__test"] = val, test
    if mode == "selected":
        _fill_selected_cells(ctx, model, specs, splits, Ts, epss, pre, memo, timings, ranks)
    if not ranks.is_main:
        return out
    save_npz(out / "head.npz", head_arrays(model))
    save_npz(out / "splits.npz", splits)
    test_arrays = load_npz(out / "arrays" / "id_test.npz")
    id_acc = float((test_arrays["logits"].argmax(1) == test_arrays["y"]).mean())
    meta = {
        "profile": ctx.profile,
        "model": ctx.cfg["model"]["name"],
        "model_sha256": model_sha,
        "num_classes": int(ctx.cfg["model"]["kwargs"]["num_classes"]),
        "class_names": load_named(ctx, "id_test", memo).class_names
        if "id_test" in memo
        else meta_ck.get("class_names"),
        "id_accuracy": id_acc,
        "id_dataset": ctx.cfg["data"]["id_name"] or ctx.profile,
        "train": "train",
        "id_test": "id_test",
        "ood": {n: s.get("group", "ood") for n, s in ctx.cfg["data"]["ood"].items()},
        "lowdim_subspaces": [s.name for s in subspaces],
        "grid": {"odin_T": Ts, "odin_eps": epss},
        "grodin_test_points": mode,
        "eps_space": ecfg["eps_space"],
        "val": ctx.cfg["data"]["val"],
        "seed": ctx.cfg["seed"],
        "device": ctx.device_name,
    }
    if ranks.is_distributed:
        meta["ranks"] = ranks.world
    write_json(out / "meta.json", meta)
    if timings:
        _write_timings(out / "timings.csv", timings, ctx.device_name, int(ecfg["batch_size"]))
    record_run(
        ctx, "extract", time.perf_counter() - t_start, {"timings": timings, "id_accuracy": id_acc, "ranks": ranks.world}
    )
    print(f"[extract] analysis cache: {out} (ID accuracy {id_acc:.4f})")
    return out


def recompute_line(name: str, why: str, finished: bool) -> str | None:
    """The line saying why set ``name`` is extracted though ``arrays/<name>.npz`` was looked for
    (``why``: from ``cached_npz``); None on a first run (no ``meta.json`` yet) or under --force."""
    if not why or (why == "is missing" and not finished):
        return None
    verb = "computing" if why == "is missing" else "recomputing"
    return f"[extract] {verb} {name}: arrays/{name}.npz {why}"


def _on_rank(ranks: Ranks) -> str:
    return f" (rank 0's shard of {ranks.world})" if ranks.is_distributed else ""


def _parts_dir(ctx: Context) -> Path:
    return ctx.analysis_dir / "parts"


def _remove_parts(ctx: Context, name: str) -> None:
    """Drop the joined shards of set ``name`` (rank 0, once the set's file is written)."""
    for p in _parts_dir(ctx).glob(f"{name}.*.rank*of*.npz"):
        p.unlink(missing_ok=True)


def join_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Shards' arrays joined in rank order: grid values along their last (sample) axis, grid axes
    from the first shard, every other array along axis 0; empty shards (no keys) are skipped."""
    parts = [p for p in parts if p]
    out: dict[str, np.ndarray] = {}
    for key in parts[0]:
        if key in GRID_AXIS_KEYS:
            out[key] = parts[0][key]
        else:
            out[key] = np.concatenate([p[key] for p in parts], axis=-1 if key in GRID_VALUE_KEYS else 0)
    return out


def _sharded(
    ctx: Context, ranks: Ranks, tag: str, key: str, n: int, batch_size: int, compute
) -> tuple[dict[str, np.ndarray] | None, ExtractResult]:
    """Run ``compute(positions)`` (-> ExtractResult) on this rank's shard of ``n`` rows (whole
    batches), keep it as ``parts/<tag>.rank<r>of<w>.npz`` (reused by a rerun when its key matches),
    and on rank 0 return every rank's arrays joined in rank order (other ranks: None)."""
    parts = _parts_dir(ctx)
    part = parts / f"{tag}.rank{ranks.rank}of{ranks.world}.npz"
    pkey = hash_config(key, tag, ranks.rank, ranks.world)
    pos = ranks.batch_shard(n, batch_size)
    kept, _ = cached_npz(part, pkey)
    if kept is not None:
        res = ExtractResult(kept, n=len(pos))
    else:
        res = compute(pos) if len(pos) else ExtractResult({}, n=0)
        save_npz(part, res.arrays, key=pkey)
    ranks.barrier()
    if not ranks.is_main:
        return None, res
    return join_rows([load_npz(parts / f"{tag}.rank{r}of{ranks.world}.npz") for r in range(ranks.world)]), res


def _extract_sharded(
    ctx: Context, ranks: Ranks, model, ds: BatchSource, key: str, name: str, val_rows: np.ndarray | None, kw: dict
) -> tuple[dict[str, np.ndarray] | None, ExtractResult]:
    """One set's arrays from every rank's shard; the same arrays as one ``extract_arrays`` call
    with ``grodin_rows=val_rows`` (the validation rows' grid is sharded on its own)."""
    ecfg, device, bs = ctx.cfg["extract"], ctx.device(), int(ctx.cfg["extract"]["batch_size"])
    main_kw = {**kw, "with_grodin": kw["with_grodin"] and val_rows is None}

    def main(pos: np.ndarray) -> ExtractResult:  # a contiguous block: a view, laid out as the whole set
        return extract_arrays(model, ds.rows(int(pos[0]), int(pos[-1]) + 1), ecfg, device, **main_kw)

    arrays, res = _sharded(ctx, ranks, f"{name}.main", key, len(ds), bs, main)
    if val_rows is None or not kw["with_grodin"] or not ecfg["grodin"]:
        return arrays, res
    Ts, epss = kw["odin_T"], kw["odin_eps"]

    def grid(pos: np.ndarray) -> ExtractResult:
        return grid_cells_pass(
            model,
            ds.take(val_rows[pos]),
            ecfg,
            device,
            input_std=kw["input_std"],
            odin_T=Ts,
            odin_eps=epss,
            points=np.ones((len(epss), len(Ts)), bool),
            desc=f"{name} grid",
        )

    got, gres = _sharded(ctx, ranks, f"{name}.valgrid", key, len(val_rows), bs, grid)
    res.seconds["grodin_grid"] = gres.seconds.get("grodin_selected", 0.0)
    res.counts["grodin_grid"], res.grid_cells = gres.n, gres.grid_cells
    if arrays is not None and got is not None:  # rank 0
        arrays.update(grid_on_rows(len(ds), val_rows, got, Ts, epss))
    return arrays, res


def _timing_entry(res: ExtractResult) -> dict[str, Any]:
    """{component: {seconds, n (images it processed)}} plus the grid's image x cell evaluations."""
    entry: dict[str, Any] = {c: {"seconds": sec, "n": res.counts.get(c, res.n)} for c, sec in res.seconds.items()}
    entry["_grid_cells"] = res.grid_cells
    return entry


def _fill_selected_cells(
    ctx: Context,
    model,
    specs,
    splits: dict,
    Ts,
    epss,
    pre: Preprocess,
    memo: dict,
    timings: dict,
    ranks: Ranks = Ranks(),
) -> None:
    """``grodin_test_points: selected``: choose the grid cells on the validation rows of every set
    (ood_core.grid_selection), then compute exactly those cells on the other rows of each set
    (rank 0 chooses and writes; every rank computes its shard of the rows)."""
    eval_names = [n for n in specs if n not in SPLIT_ROLES_EXCLUDED]
    paths = {n: ctx.analysis_dir / "arrays" / f"{n}.npz" for n in eval_names}
    plan = None  # {set: cells still to compute}, decided on rank 0
    if ranks.is_main:
        arrays = {n: load_npz(p) for n, p in paths.items()}
        if all("odin_s" in a for a in arrays.values()):
            sp = {n: Split(splits[f"{n}__val"], splits[f"{n}__test"]) for n in eval_names}
            oods = [n for n in eval_names if n != "id_test"]
            need = select_test_points(
                arrays["id_test"], sp["id_test"], {o: arrays[o] for o in oods}, {o: sp[o] for o in oods}
            )
            print(
                f"[extract] grid cells selected on validation rows: {int(need.sum())} of {need.size} "
                f"(eps, T) = {[(epss[e], Ts[t]) for e, t in np.argwhere(need)]}"
            )
            plan = {n: need & ~full_points(arrays[n]) for n in eval_names}
    plan = ranks.broadcast_object(plan)
    if plan is None:
        return
    for name in eval_names:
        todo = plan[name]
        if not todo.any():
            continue
        rows = splits[f"{name}__test"]  # val and test partition the rows (split_indices)
        ds = PreprocessedImages(load_named(ctx, name, memo), pre)
        bs = int(ctx.cfg["extract"]["batch_size"])

        def cells(pos: np.ndarray) -> ExtractResult:
            return grid_cells_pass(
                model,
                ds.take(rows[pos]),
                ctx.cfg["extract"],
                ctx.device(),
                input_std=pre.std,
                odin_T=Ts,
                odin_eps=epss,
                points=todo,
                desc=f"{name} cells",
            )

        got, res = _sharded(ctx, ranks, f"{name}.cells", npz_key(paths[name]) or "", len(rows), bs, cells)
        if not ranks.is_main or got is None:  # the other ranks computed their shard only
            continue
        a = load_npz(paths[name])
        have = full_points(a)
        for key in GRID_VALUE_KEYS:
            for e, t in np.argwhere(todo):
                a[key][e, t, rows] = got[key][e, t]
        a[FULL_POINTS_KEY] = have | todo
        save_npz(paths[name], a, key=npz_key(paths[name]))
        _remove_parts(ctx, name)
        entry, new = timings.setdefault(name, {"_grid_cells": 0}), _timing_entry(res)
        entry["_grid_cells"] += new.pop("_grid_cells")
        entry.update(new)
        print(
            f"[extract] {name}: {int(todo.sum())} selected cells on {res.n} rows{_on_rank(ranks)} in "
            f"{res.seconds.get('grodin_selected', 0.0):.1f}s"
        )


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
