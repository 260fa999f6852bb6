"""Per-image cost of the extract stage's passes on a profile's own model and rows, beside the costs its
committed run measured (``figures/<profile>/runs/extract_timings.csv``).

    python -m analysis.bench_extract --profile cifar10 --rows 512

Runs ``extract_arrays`` (the stage's per-set pass) on the first ``--rows`` rows of one set with the
profile's ``extract`` and ``lowdim`` settings; the subspaces are random orthonormal bases of the
profile's shapes with random whitening (the fit is not timed: ``bench_scores.py`` times it), the grid
is left out (one grid cell: ``bench_scores.py`` ``grid_cell``). A warm-up pass on one batch first.
Writes ``bench_extract.csv`` (component, seconds per 1,000 images now and in the committed run).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import torch

from ood_core.cache import atomic_path
from ood_core.data.sources import PreprocessedImages
from ood_core.extraction.arrays import Preprocess, Subspace, extract_arrays
from ood_core.extraction.subspaces import subspace_params
from ood_core.grads.selection import resolve_params

from .common import add_common_args, make_context
from .datasets import load_named
from .train import load_model


def random_subspaces(model: torch.nn.Module, lowdim: dict, num_classes: int, seed: int = 0) -> list[Subspace]:
    """One random orthonormal basis per configured subspace, of its shape (PCA: K columns; class
    means: C), with random positive whitening shared by subspaces over the same parameters."""
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(model.named_parameters())
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for name, spec in lowdim["subspaces"].items():
        params = subspace_params(spec, lowdim)
        P = sum(shapes[n].numel() for n in resolve_params(model, params))
        k = int(spec["k"]) if spec["kind"] == "pca" else num_classes
        if repr(params) not in stats:
            stats[repr(params)] = (torch.randn(P, generator=gen), torch.rand(P, generator=gen) + 0.5)
        V = torch.linalg.qr(torch.randn(P, k, generator=gen))[0]
        out.append(Subspace(name, V, stats[repr(params)], params))
    return out


def committed_costs(profile: str, fig_root: Path) -> dict[str, float]:
    """Seconds per 1,000 images per component of the committed run (empty when there is none)."""
    path = fig_root / profile / "runs" / "extract_timings.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["method"]: float(r["seconds_per_1000"]) for r in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("--set", default="train", help="the profile's set whose first rows are timed (default: train)")
    p.add_argument("--rows", type=int, default=512, help="rows timed (default 512)")
    p.add_argument("--out", default="bench_extract_out", help="folder for bench_extract.csv")
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error(f"--rows must be >= 1, got {args.rows}")
    ctx = make_context(args)
    cfg = ctx.cfg
    device = ctx.device()
    model, _ = load_model(ctx)
    model.to(device).eval()
    num_classes = int(cfg["model"]["kwargs"]["num_classes"])
    images = load_named(ctx, args.set)
    src = PreprocessedImages(images, Preprocess(**cfg["data"]["preprocessing"]))
    src = src.rows(0, min(args.rows, len(src)))
    ecfg = {**cfg["extract"], "grodin": False}
    subs = random_subspaces(model, cfg["lowdim"], num_classes) if cfg["lowdim"]["enabled"] else []
    kw: dict[str, Any] = dict(subspaces=subs, lowdim_chunk=int(cfg["lowdim"]["chunk"]), is_ood=True, with_grodin=False)
    extract_arrays(model, src.rows(0, min(len(src), int(ecfg["batch_size"]))), ecfg, device, desc="warm-up", **kw)
    t0 = time.perf_counter()
    res = extract_arrays(model, src, ecfg, device, desc="timed", **kw)
    wall = time.perf_counter() - t0
    before = committed_costs(ctx.profile, ctx.fig_dir.parent)
    rows: list[dict[str, Any]] = [
        {
            "component": c,
            "seconds_per_1000": 1000 * s / res.n,
            "committed_seconds_per_1000": before.get(c, float("nan")),
            "rows": res.n,
            "device": ctx.device_name,
            "threads": torch.get_num_threads(),
        }
        for c, s in res.seconds.items()
    ]
    rows.append({**rows[0], "component": "wall (all of the above)", "seconds_per_1000": 1000 * wall / res.n})
    rows[-1]["committed_seconds_per_1000"] = sum(before.get(r["component"], 0.0) for r in rows[:-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "bench_extract.csv", ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(
            f"[bench_extract] {r['component']:<26} {r['seconds_per_1000']:8.1f} s / 1,000 images"
            f"   (committed run: {r['committed_seconds_per_1000']:.1f})"
        )
    print(f"[bench_extract] wrote {out / 'bench_extract.csv'}")


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
