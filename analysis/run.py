"""Run the whole study for a profile: train -> extract -> benchmark -> notebooks.

    python -m analysis.run --profile demo            # what ./run_all.sh calls
    python -m analysis.run --profile cifar10 --from-cache figures/cifar10/cache

Each stage runs as its own process with its output shown and appended to
``<cache>/logs/<stage>.log`` as it comes (one dated header line per run, so ``tail -f`` follows it).
The run stops at the first failing stage, naming it and its log; an
expected error is the stage's one ``error: ...`` line (``--debug`` shows tracebacks).
A stage whose inputs (config, code, upstream files) and outputs are unchanged since it last
succeeded is skipped and reported as cached (``analysis/stamps.py``); an interrupted run resumes
where it stopped. ``--force`` recomputes everything. ``--from-cache DIR`` skips train/extract and
regenerates tables and figures from a committed analysis cache (no GPU, no data needed), into
``<cache>/from_cache_figures`` unless ``--fig-dir`` is given.
A stage whose output is missing or damaged (a failed CRC check) runs again, saying which file.
One run at a time per cache directory: a second one waits for the first (``<cache>/.lock``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from ood_core.cache import cache_lock

from . import stamps
from .common import CHILD_ENV, CODE_LIST_ENV, EXIT_USER_ERROR, REPO, Context, add_common_args, main_guard, make_context

STAGES = ["train", "extract", "benchmark", "notebooks"]


def stage_command(stage: str, args: argparse.Namespace, analysis_dir: str | None, device: str) -> list[str]:
    """The command line of one stage; ``device`` is the one this run resolved (so that a fallback
    from cuda to the CPU is announced once, here, and not by every stage)."""
    cmd = [sys.executable, "-u", "-m", f"analysis.{stage}", "--profile", args.profile, "--device", device]
    for opt in ("data_root", "cache_dir", "fig_dir"):
        val = getattr(args, opt)
        if val:
            cmd += [f"--{opt.replace('_', '-')}", str(val)]
    if analysis_dir:
        cmd += ["--analysis-dir", analysis_dir]
    if args.force:
        cmd.append("--force")
    if args.debug:
        cmd.append("--debug")
    return cmd


def _pump(src: io.BufferedReader, dst: BinaryIO, log: BinaryIO, lock: threading.Lock, quiet: threading.Event) -> None:
    """Copy a child's stream to ``dst`` (unless ``quiet``) and to the log (unbuffered), chunk by chunk."""
    for chunk in iter(lambda: src.read1(1 << 14), b""):
        if not quiet.is_set():
            try:
                dst.write(chunk)
                dst.flush()
            except OSError:  # the console went away (a closed pipe): keep draining into the log
                quiet.set()
        with lock:
            log.write(chunk)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a stage after Ctrl-C: SIGINT (it exits quietly), then terminate, then kill."""
    for action, wait in ((lambda: proc.send_signal(signal.SIGINT), 30), (proc.terminate, 10), (proc.kill, 10)):
        if proc.poll() is not None:
            return
        action()
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def log_header(cmd: list[str]) -> bytes:
    """The line that opens one run's part of a stage log: date, time and command."""
    return f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(cmd)}\n".encode()


def run_stage(stage: str, cmd: list[str], log: Path, code_list: Path | None = None) -> int:
    """Run one stage, passing its stdout and stderr through unchanged (a pipe: the stage's progress
    is plain lines, ``ood_core/progress.py``) to this process's stdout and stderr and to ``log`` (appended to, unbuffered:
    each chunk is in the file as soon as the stage prints it); the stage lists the source files it
    ran in ``code_list``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab", buffering=0) as f:
        f.write(log_header(cmd))
        env = {**os.environ, CHILD_ENV: str(os.getpid()), **({CODE_LIST_ENV: str(code_list)} if code_list else {})}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        lock, quiet = threading.Lock(), threading.Event()
        pumps = [
            threading.Thread(target=_pump, args=(src, dst, f, lock, quiet), daemon=True)
            for src, dst in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))
        ]
        for t in pumps:
            t.start()
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            quiet.set()  # what the stage prints while it stops goes to its log only
            _stop(proc)
            raise
        finally:
            for t in pumps:
                t.join(timeout=10)
        return rc


def plan(args: argparse.Namespace, ctx: Context) -> tuple[list[str], str | None]:
    """The stages to run and the analysis cache they use (``--from-cache``, ``--stages``)."""
    stages = args.stages or list(STAGES)
    analysis_dir = args.analysis_dir
    if args.from_cache:
        src = Path(args.from_cache)
        if not (src / "meta.json").is_file():
            raise SystemExit(
                f"--from-cache {src}: no meta.json there (expected an analysis cache written by analysis.extract)"
            )
        analysis_dir = str(src.resolve())
        compacted = "compact" in json.loads((src / "meta.json").read_text())
        # a compact (subsampled) cache re-draws the figures; its tables are those of the full run
        keep = ("notebooks",) if compacted else ("benchmark", "notebooks")
        stages = [s for s in stages if s in keep]
    if not ctx.cfg["notebooks"]["run"] and "notebooks" in stages:
        stages.remove("notebooks")
    return stages, analysis_dir


def run_or_skip(stage: str, ctx: Context, cmd: list[str]) -> int | None:
    """Run ``stage`` unless its stamp says it is current; None when skipped, else its exit code."""
    why = None if ctx.force else stamps.stale_reason(stage, ctx, cmd)
    if why is None and not ctx.force:
        print(
            f"== stage {stage}: cached (inputs and outputs unchanged since its last run; --force reruns it) ==",
            flush=True,
        )
        return None
    if why and why != stamps.NO_RECORD:
        print(f"[run] running {stage} again: {why}", flush=True)
    print(f"== stage {stage} ==", flush=True)
    previous = stamps.read_stamp(stage, ctx)
    stamps.forget(stage, ctx)
    before = stamps.snapshot(stamps.output_roots(stage, ctx))
    log = ctx.cache_dir / "logs" / f"{stage}.log"
    code_list = stamps.stamp_path(stage, ctx).with_suffix(".code.json")
    code_list.parent.mkdir(parents=True, exist_ok=True)
    code_list.unlink(missing_ok=True)
    t = time.perf_counter()
    rc = run_stage(stage, cmd, log, code_list)
    if rc != 0:
        # the stage printed its own error on stderr; say where it stopped on stdout
        print(f"\nFAILED at stage '{stage}' (exit {rc}); log: {log}", flush=True)
        if rc != EXIT_USER_ERROR:
            print(f"error: stage '{stage}' failed (exit {rc}); its log: {log}", file=sys.stderr)
        return rc
    if code_list.is_file():  # no list, no stamp: the stage then runs again next time
        stamps.record(stage, ctx, cmd, before, previous, json.loads(code_list.read_text()))
        code_list.unlink()
    print(f"== stage {stage} done in {time.perf_counter() - t:.1f}s ==", flush=True)
    return 0


def cpu_estimate_line(cfg: dict, device_name: str, stages: list[str]) -> str | None:
    """The profile's ``cpu_estimate``, stated up front when work will run on the CPU."""
    if device_name != "cpu" or not cfg.get("cpu_estimate") or not set(stages) & {"train", "extract"}:
        return None
    return f"[run] on this CPU, expect: {cfg['cpu_estimate']}"


def main(argv: list[str] | None = None) -> int:
    p = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("--stages", nargs="*", choices=STAGES, default=None, help="run only these stages (default: all)")
    p.add_argument(
        "--from-cache",
        default=None,
        metavar="DIR",
        help="analysis cache to regenerate tables and figures from (implies --stages benchmark notebooks)",
    )
    args = p.parse_args(argv)
    ctx = make_context(args)
    if args.from_cache and not args.fig_dir:  # the committed figures stay as they are unless asked
        args.fig_dir = str(ctx.cache_dir / "from_cache_figures")
        ctx = make_context(args)
        print(
            f"[run] --from-cache: figures and tables go to {ctx.fig_dir} "
            f"(--fig-dir figures/{ctx.profile} writes over the committed ones)",
            flush=True,
        )
    with cache_lock(ctx.cache_dir):
        return run_all(args, ctx)


def run_all(args: argparse.Namespace, ctx: Context) -> int:
    """Every planned stage in turn (run or skipped as cached); the exit code of the first failure."""
    stages, analysis_dir = plan(args, ctx)
    note = cpu_estimate_line(ctx.cfg, ctx.device_name, stages)
    if note:
        print(note, flush=True)
    t0 = time.perf_counter()
    cached = []
    for stage in stages:
        rc = run_or_skip(stage, ctx, stage_command(stage, args, analysis_dir, ctx.device_name))
        if rc is None:
            cached.append(stage)
        elif rc != 0:
            return rc
    ran = [s for s in stages if s not in cached]
    print(
        f"\nDone in {time.perf_counter() - t0:.1f}s. Stages run: {', '.join(ran) or 'none'}; "
        f"cached: {', '.join(cached) or 'none'}. Figures and tables: {ctx.fig_dir}"
    )
    print(
        f"Metrics: {ctx.fig_dir / 'metrics.csv'} (and metrics.md / metrics.tex); analysis cache: {analysis_dir or ctx.analysis_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
