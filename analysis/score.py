"""Score cached arrays with registered OOD scores (argument parsing and orchestration only).

    python -m analysis.score --list
    python -m analysis.score --arrays cache/demo/analysis/arrays --train train \\
        --eval id_test digits_5to9 --scores msp energy react --set energy.T=2 --out scores.npz

Each dataset is read from ``<arrays>/<name>.npz``; the head (W, b) from ``--head FILE`` or, if
present, ``<arrays>/../head.npz``. Every score is fitted on the --train set (if it has a fit) and
evaluated on every --eval set. The output npz holds one float64 vector per (score, dataset) under
the key ``<score>/<dataset>`` plus ``__meta__`` (JSON: parameters used, sources).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ood_core import scores as S
from ood_core.analysis_cache import AnalysisCache
from ood_core.cache import save_npz

from .common import main_guard, one_line_errors


def parse_value(text: str) -> Any:
    """'2' -> 2, '0.5' -> 0.5, 'True' -> True, 'None' -> None, 'pca' -> 'pca'."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items: list[str], score_names: list[str]) -> dict[str, dict[str, Any]]:
    """['energy.T=2', 'knn.k=10'] -> {'energy': {'T': 2}, 'knn': {'k': 10}}."""
    out: dict[str, dict[str, Any]] = {n: {} for n in score_names}
    for item in items:
        lhs, sep, rhs = item.partition("=")
        name, dot, param = lhs.partition(".")
        if not sep or not dot or not param:
            raise SystemExit(f"--set expects SCORE.PARAM=VALUE, got '{item}'")
        if name not in out:
            raise SystemExit(f"--set {item}: score '{name}' is not among --scores {score_names}")
        spec = S.get(name)
        if param not in spec.defaults:
            raise SystemExit(
                f"--set {item}: score '{name}' has no parameter '{param}'; it takes {sorted(spec.defaults)}"
            )
        out[name][param] = parse_value(rhs)
    return out


def list_scores() -> str:
    lines = []
    for name in S.names():
        spec = S.get(name)
        first = " ".join(spec.doc.split("\n\n")[0].split())  # first paragraph, one line
        first = first if len(first) <= 200 else first[:197] + "..."
        grid = {k: (v if len(v) <= 8 else f"{len(v)} values {v[0]}..{v[-1]}") for k, v in spec.grid.items()}
        fitted = "fit" if spec.fit is not None else "-"
        lines.append(
            f"{name:22s} {spec.family:13s} {fitted:4s} shown as '{S.display_name(name)}' "
            f"defaults={spec.defaults} grid={grid}\n{'':22s} {first}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="print every registered score (name, family, defaults, grid, summary) and exit",
    )
    p.add_argument("--arrays", type=Path, help="folder holding <dataset>.npz cached arrays")
    p.add_argument("--train", help="dataset name used to fit training statistics (e.g. train)")
    p.add_argument("--eval", nargs="+", default=[], metavar="NAME", help="dataset name(s) to score")
    p.add_argument(
        "--scores",
        nargs="+",
        default=["all"],
        metavar="SCORE",
        help="score names (see --list), or 'all' = every score whose arrays are present (default)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SCORE.PARAM=VALUE",
        help="override a parameter, e.g. --set energy.T=2 --set knn.k=10 (repeatable)",
    )
    p.add_argument("--head", type=Path, help="npz with W and b (default: <arrays>/../head.npz if present)")
    p.add_argument("--out", type=Path, help="output .npz of scores (keys '<score>/<dataset>')")
    return one_line_errors(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_scores())
        return 0
    missing = [f for f in ("arrays", "train", "out") if getattr(args, f) is None]
    if missing or not args.eval:
        raise SystemExit(f"missing {['--' + m for m in missing] + ([] if args.eval else ['--eval'])} (see --help)")

    auto = args.scores == ["all"]
    names = S.names() if auto else args.scores
    for n in names:
        S.get(n)  # unknown names fail here, listing the known ones
    params = parse_sets(args.sets, names)

    if not args.arrays.is_dir():
        raise SystemExit(f"--arrays {args.arrays}: no such folder")
    cache = AnalysisCache(args.arrays.parent, arrays_dir=args.arrays, head_file=args.head)
    if args.head is not None and not cache.has_head():
        raise SystemExit(f"head file not found: {args.head}")
    read = cache.inputs if cache.has_head() else cache.arrays  # with W and b when there is a head
    train = read(args.train)
    evals = {n: read(n) for n in args.eval}

    out: dict[str, np.ndarray] = {}
    used: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    memo = S.Memo()  # shared by the fits: one low-dim probe for all probe scores
    for name in names:
        spec = S.get(name)
        try:
            state = S.fit(name, train, memo=memo, **params[name])
            for ds, arrays in evals.items():
                out[f"{name}/{ds}"] = S.compute(name, arrays, state, **params[name])
        except KeyError as e:  # missing arrays
            if not auto:
                raise SystemExit(f"score '{name}': {e}") from None
            skipped[name] = str(e)
            continue
        used[name] = {**spec.defaults, **params[name]}
        print(f"{name:22s} " + "  ".join(f"{ds}: n={len(out[f'{name}/{ds}'])}" for ds in evals), file=sys.stderr)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)

    meta = {
        "train": args.train,
        "eval": args.eval,
        "arrays": str(args.arrays),
        "head": str(cache.head_file) if cache.has_head() else None,
        "params": used,
        "skipped": sorted(skipped),
    }
    out["__meta__"] = np.array(json.dumps(meta, default=str))
    save_npz(args.out, out, compress=False)
    print(f"wrote {len(out) - 1} score vectors to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard(main))
