"""Stage 4 — execute every notebook with papermill on the analysis cache.

    python -m analysis.notebooks --profile demo [--only 03_sg_decomposition]

Each ``notebooks/NN_*.ipynb`` runs with parameters (profile, analysis_dir, fig_dir, seed, plus the
profile's ``notebooks.params.<notebook>`` knobs) into ``cache/<profile>/notebooks/``; figures go to
``figures/<profile>/``, all at once: the notebooks write into ``cache/<profile>/notebooks_staging/``
and the stage moves their files over only when every notebook has run, so a failed or killed run
never leaves a mix of new and old figures (a rerun finds the finished notebooks' figures staged). A notebook whose inputs (its own source, meta.json, metrics.csv,
chosen_hyperparams.json, the library code under ``ood_core/``) are unchanged since its last successful
run is skipped.

A notebook run by hand with its default parameters reads the benchmark's tables from, and writes its
figures to, the scratch folder ``cache/<profile>/scratch/`` (never the pipeline's ``figures/<profile>/``);
this stage leaves a copy of those tables there (``seed_scratch``).

The kernels run quietly: their own log shows errors only (not ipykernel's start-up warning about its
loopback TCP channel), and a kernel whose notebook has finished gets its shutdown request without the
SIGINT jupyter_client sends first (which a kernel still answering a request logs as a
``KeyboardInterrupt``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

from ood_core.cache import hash_config, write_json

from .common import REPO, Context, add_common_args, make_context, record_run

NOTEBOOK_DIR = REPO / "notebooks"
KERNEL = "python3"
SCRATCH = "scratch"  # cache/<profile>/scratch: fig_dir of a notebook run by hand with its defaults
STAGING = "notebooks_staging"  # cache/<profile>/notebooks_staging: the notebooks' fig_dir until all ran
# the benchmark's outputs that notebooks read from their fig_dir (03: chosen_hyperparams.json;
# 04: metrics.csv; 05: the rest)
TABLE_PATTERNS = (
    "metrics.csv",
    "metrics.md",
    "ablation_*.md",
    "sweep_*.csv",
    "method_costs.csv",
    "chosen_hyperparams.json",
)
# ipykernel's own log: errors only (the TCP warning of every start is about the loopback channel
# between this process and the kernel it launched)
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


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


def library_sources() -> list[Path]:
    """The library code a notebook runs (``ood_core/**/*.py``): a change re-runs the notebooks."""
    return sorted((REPO / "ood_core").rglob("*.py"))


def ensure_kernel() -> None:
    """Register this interpreter as the 'python3' Jupyter kernel if none is installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=__import__("sys").prefix, kernel_name=KERNEL)


def quiet_kernel_manager():
    """The kernel manager class papermill gets: jupyter_client's, without the SIGINT it sends a kernel
    right before the shutdown request. The notebook has finished by then (or failed, and its error is
    already recorded); a kernel still answering the last request logs that SIGINT as
    ``KeyboardInterrupt caught in kernel``. Shutdown itself is unchanged (request, then SIGTERM, SIGKILL)."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if getattr(self, "shutting_down", False):
                return
            await super()._async_interrupt_kernel()

    return QuietKernelManager


def seed_scratch(fig_dir: Path, scratch: Path) -> list[Path]:
    """Copy the benchmark's tables from ``fig_dir`` into ``scratch``, so that a notebook run by hand
    with its default parameters (fig_dir = the scratch folder) finds them there."""
    copied: list[Path] = []
    if fig_dir.resolve() == scratch.resolve():
        return copied
    scratch.mkdir(parents=True, exist_ok=True)
    for pattern in TABLE_PATTERNS:
        for src in sorted(fig_dir.glob(pattern)):
            if src.is_file():
                dst = scratch / src.name
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(src, tmp)
                tmp.replace(dst)
                copied.append(dst)
    return copied


def run(ctx: Context, only: list[str] | None = None) -> list[Path]:
    import papermill as pm

    ensure_kernel()
    t0 = time.perf_counter()
    out_dir = ctx.cache_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.fig_dir.mkdir(parents=True, exist_ok=True)
    stamps_path = ctx.cache_dir / "notebook_stamps.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    inputs = _digest(
        ctx.analysis_dir / "meta.json",
        ctx.fig_dir / "metrics.csv",
        ctx.fig_dir / "chosen_hyperparams.json",
        *library_sources(),
    )
    seed_scratch(ctx.fig_dir, ctx.cache_dir / SCRATCH)
    staging = ctx.cache_dir / STAGING
    tables = {p.name for p in seed_scratch(ctx.fig_dir, staging)}
    done = []
    for nb in notebook_paths(only):
        params = {
            "profile": ctx.profile,
            "analysis_dir": str(ctx.analysis_dir),
            "fig_dir": str(staging),
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
        try:
            pm.execute_notebook(
                str(nb),
                str(tmp),
                parameters=params,
                kernel_name=KERNEL,
                cwd=str(NOTEBOOK_DIR),
                progress_bar=False,
                kernel_manager_class=quiet_kernel_manager(),
                extra_arguments=list(KERNEL_ARGS),
            )
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        stamps[nb.stem] = stamp
        write_json(stamps_path, stamps)
        print(f"[notebooks] {nb.name} in {time.perf_counter() - t:.1f}s -> {out}")
        done.append(out)
    published = publish(staging, ctx.fig_dir, tables)
    if published:
        print(f"[notebooks] {len(published)} figure files -> {ctx.fig_dir}")
    record_run(ctx, "notebooks", time.perf_counter() - t0, {"executed": [p.name for p in done]})
    return done


def publish(staging: Path, fig_dir: Path, tables: set[str]) -> list[Path]:
    """Move every file the notebooks wrote into ``staging`` (not the benchmark ``tables`` copied
    there for them) into ``fig_dir``, each by an atomic replace; returns the files moved."""
    moved: list[Path] = []
    if not staging.is_dir():
        return moved
    fig_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in staging.iterdir() if p.is_file() and p.name not in tables):
        dst = fig_dir / src.name
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
        src.unlink()
        moved.append(dst)
    return moved


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    args = p.parse_args(argv)
    run(make_context(args), args.only)


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
