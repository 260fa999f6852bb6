"""Mean ± std over training seeds: several benchmark runs of one profile -> seeds_metrics.csv / .md.

    python -m analysis.seeds --runs figures/cifar10_s0 figures/cifar10_s1 figures/cifar10_s2 --out figures/cifar10
    python -m analysis.seeds --profile cifar10       # the runs listed under the profile's seeds.runs

A run is a benchmark output folder holding metrics.csv (or the path of a metrics.csv); its label is
the folder's name. Output in ``--out`` (default: ``--fig-dir``, else figures/<profile>):
seeds_metrics.csv (per protocol, method and set, and per near / far average: n_seeds, mean, std and
the per-seed values of AUROC and both FPR95s; ``ood_core.evaluation.seeds``) and seeds_metrics.md (display
names; with one seed its header says so). A missing or malformed input is one error line naming the
file. Not part of ``analysis.run``: run it once the seeds' benchmarks exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ood_core.cache import write_text
from ood_core.evaluation.seeds import COLUMNS, SeedsInputError, aggregate, read_run, run_labels, seeds_markdown
from ood_core.reporting.table_csv import write_csv

from .common import REPO, main_guard, one_line_errors


def _repo_path(p: str | Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else REPO / q


def write_seeds_tables(runs: Sequence[str | Path], out_dir: Path, title: str = "") -> tuple[Path, Path]:
    """Read every run's metrics.csv, aggregate over them, write seeds_metrics.csv and .md to ``out_dir``."""
    if not runs:
        raise SeedsInputError("no runs given (--runs DIR ... or the profile's seeds.runs)")
    labels = run_labels(runs)
    data = {lab: read_run(r) for lab, r in zip(labels, runs)}
    rows = aggregate(data)
    out_dir = Path(out_dir)
    csv_path = write_csv(rows, out_dir / "seeds_metrics.csv", COLUMNS)
    md_path = write_text(out_dir / "seeds_metrics.md", seeds_markdown(rows, labels, title))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> Path:
    ap = one_line_errors(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    ap.add_argument("--runs", nargs="+", default=None, help="run folders (each with metrics.csv) or metrics.csv paths")
    ap.add_argument(
        "--profile", default=None, help="profile whose seeds.runs lists the runs (and names the output folder)"
    )
    ap.add_argument("--out", "--fig-dir", dest="out", default=None, help="output folder (default: figures/<profile>)")
    a = ap.parse_args(argv)
    runs: list[str | Path] = list(a.runs or [])
    title = ""
    out = Path(a.out) if a.out else None
    if a.profile:
        from ood_core.config import load_profile

        cfg = load_profile(a.profile)
        title = str(cfg["profile"])
        if not runs:
            runs = [_repo_path(p) for p in cfg["seeds"]["runs"]]
            if not runs:
                raise SystemExit(f"profile {cfg['profile']}: seeds.runs lists no run (or give --runs)")
        out = out or REPO / "figures" / str(cfg["profile"])
    if out is None:
        raise SystemExit("give --out (or --profile) to say where seeds_metrics.csv goes")
    try:
        csv_path, md_path = write_seeds_tables(runs, out, title)
    except SeedsInputError as e:
        raise SystemExit(str(e)) from None
    print(f"[seeds] {csv_path} and {md_path.name} over {len(runs)} run(s)")
    return csv_path


if __name__ == "__main__":
    main_guard(main)
