"""Run the whole study for a profile: train -> extract -> benchmark -> notebooks.

    python -m analysis.run --profile demo            # what ./run_all.sh calls
    python -m analysis.run --profile cifar10 --from-cache figures/cifar10/cache

Each stage runs as its own process with its output shown and copied to
``<cache>/logs/<stage>.log``. The run stops at the first failing stage, naming it and its log.
Stages whose cached outputs match their config are skipped, so an interrupted run resumes;
``--force`` recomputes everything. ``--from-cache DIR`` skips train/extract and regenerates tables
and figures from a committed analysis cache (no GPU, no data needed).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, add_common_args, make_context

STAGES = ["train", "extract", "benchmark", "notebooks"]


def stage_command(stage: str, args: argparse.Namespace, analysis_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-u", "-m", f"analysis.{stage}", "--profile", args.profile]
    for opt in ("data_root", "cache_dir", "fig_dir", "device"):
        val = getattr(args, opt)
        if val:
            cmd += [f"--{opt.replace('_', '-')}", str(val)]
    if analysis_dir:
        cmd += ["--analysis-dir", analysis_dir]
    if args.force:
        cmd.append("--force")
    return cmd


def run_stage(stage: str, cmd: list[str], log: Path) -> int:
    """Run one stage, passing its output through unchanged (progress bars keep their carriage
    returns) to the console and to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(1 << 14), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            f.write(chunk)
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--stages", nargs="*", choices=STAGES, default=None, help="run only these stages (default: all)")
    p.add_argument("--from-cache", default=None, metavar="DIR",
                   help="analysis cache to regenerate tables and figures from (implies --stages benchmark notebooks)")
    args = p.parse_args(argv)
    ctx = make_context(args)
    stages = args.stages or STAGES
    analysis_dir = args.analysis_dir
    if args.from_cache:
        src = Path(args.from_cache)
        if not (src / "meta.json").is_file():
            raise SystemExit(f"--from-cache {src}: no meta.json there (expected an analysis cache written by analysis.extract)")
        analysis_dir = str(src.resolve())
        compacted = "compact" in json.loads((src / "meta.json").read_text())
        # a compact (subsampled) cache re-draws the figures; its tables are those of the full run
        keep = ("notebooks",) if compacted else ("benchmark", "notebooks")
        stages = [s for s in stages if s in keep]
    if not ctx.cfg["notebooks"]["run"] and "notebooks" in stages:
        stages.remove("notebooks")
    t0 = time.perf_counter()
    for stage in stages:
        log = ctx.cache_dir / "logs" / f"{stage}.log"
        print(f"== stage {stage} ==", flush=True)
        t = time.perf_counter()
        rc = run_stage(stage, stage_command(stage, args, analysis_dir), log)
        if rc != 0:
            print(f"\nFAILED at stage '{stage}' (exit {rc}); log: {log}", file=sys.stderr)
            return rc
        print(f"== stage {stage} done in {time.perf_counter() - t:.1f}s ==", flush=True)
    fig_dir = ctx.fig_dir
    print(f"\nDone in {time.perf_counter() - t0:.1f}s. Figures and tables: {fig_dir}")
    print(f"Metrics: {fig_dir / 'metrics.csv'} (and metrics.md / metrics.tex); analysis cache: {analysis_dir or ctx.analysis_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
