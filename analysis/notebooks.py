"""Stage 4 — execute every notebook with papermill on the analysis cache.

    python -m analysis.notebooks --profile demo [--only 03_sg_decomposition]

Each ``notebooks/NN_*.ipynb`` runs with parameters (profile, analysis_dir, fig_dir, seed, plus the
profile's ``notebooks.params.<notebook>`` knobs) into ``cache/<profile>/notebooks/``; figures go to
``figures/<profile>/``. A notebook whose inputs (its own source, meta.json, metrics.csv) are unchanged
since its last successful run is skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from ood_core.cache import hash_config, write_json

from .common import REPO, Context, add_common_args, make_context, record_run

NOTEBOOK_DIR = REPO / "notebooks"
KERNEL = "python3"


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.stem in only or p.name in only]
        if not paths:
            raise SystemExit(f"--only {only}: no such notebook in {NOTEBOOK_DIR}")
    return paths


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    return h.hexdigest()[:16]


def ensure_kernel() -> None:
    """Register this interpreter as the 'python3' Jupyter kernel if none is installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=__import__("sys").prefix, kernel_name=KERNEL)


def run(ctx: Context, only: list[str] | None = None) -> list[Path]:
    import papermill as pm

    ensure_kernel()
    t0 = time.perf_counter()
    out_dir = ctx.cache_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.fig_dir.mkdir(parents=True, exist_ok=True)
    stamps_path = ctx.cache_dir / "notebook_stamps.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    inputs = _digest(ctx.analysis_dir / "meta.json", ctx.fig_dir / "metrics.csv")
    done = []
    for nb in notebook_paths(only):
        params = {
            "profile": ctx.profile,
            "analysis_dir": str(ctx.analysis_dir),
            "fig_dir": str(ctx.fig_dir),
            "seed": int(ctx.cfg["seed"]),
            **ctx.cfg["notebooks"]["params"].get(nb.stem, {}),
        }
        stamp = hash_config(_digest(nb), inputs, params)
        if stamps.get(nb.stem) == stamp and not ctx.force:
            print(f"[notebooks] cached: {nb.name}")
            continue
        t = time.perf_counter()
        out = out_dir / nb.name
        tmp = out.with_name(f".{out.name}.tmp.ipynb")
        pm.execute_notebook(str(nb), str(tmp), parameters=params, kernel_name=KERNEL, cwd=str(NOTEBOOK_DIR), progress_bar=False)
        tmp.replace(out)
        stamps[nb.stem] = stamp
        write_json(stamps_path, stamps)
        print(f"[notebooks] {nb.name} in {time.perf_counter() - t:.1f}s -> {out}")
        done.append(out)
    record_run(ctx, "notebooks", time.perf_counter() - t0, {"executed": [p.name for p in done]})
    return done


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    args = p.parse_args(argv)
    run(make_context(args), args.only)


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
