"""The no-GPU path: a compact copy of an analysis cache regenerates every figure via
``analysis.run --from-cache`` (what users of the committed cifar10 cache run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.compact_cache import compact
from ood_core.analysis_cache import AnalysisCache
from ood_core.cache import load_npz

try:
    from fixtures_cache import ID_TEST, make_tiny_analysis_cache
    from test_notebooks import EXPECTED
except ImportError:  # pragma: no cover
    from tests.fixtures_cache import ID_TEST, make_tiny_analysis_cache
    from tests.test_notebooks import EXPECTED

REPO = Path(__file__).resolve().parents[1]


def test_compact_keeps_rows_scores_and_splits_consistent(tmp_path):
    adir, _ = make_tiny_analysis_cache(tmp_path / "full")
    out = compact(adir, tmp_path / "compact", max_per_set=40, seed=1)
    full, small = AnalysisCache(adir), AnalysisCache(out)
    assert "compact" in small.meta
    a_full, a_small = load_npz(adir / "arrays" / f"{ID_TEST}.npz"), load_npz(out / "arrays" / f"{ID_TEST}.npz")
    assert len(a_small["y"]) == 40 and a_small["h"].dtype == np.float16
    s_full, s_small = load_npz(adir / "scores" / f"{ID_TEST}.npz"), load_npz(out / "scores" / f"{ID_TEST}.npz")
    # every kept score row belongs to the same image as in the full cache
    for key in [k for k in s_small if k != "_test_idx"][:3]:
        row_of = {int(i): v for i, v in zip(s_full["_test_idx"], s_full[key])}
        kept_full_rows = np.flatnonzero(np.isin(np.arange(len(a_full["y"])), s_full["_test_idx"]))
        for new_i, v in zip(s_small["_test_idx"], s_small[key]):
            match = [r for r in kept_full_rows if np.allclose(a_full["logits"][r], a_small["logits"][new_i])]
            assert match and np.isclose(row_of[match[0]], v)
    sp = load_npz(out / "splits.npz")
    assert not set(sp[f"{ID_TEST}__val"]) & set(sp[f"{ID_TEST}__test"])
    assert full.meta["ood"] == small.meta["ood"]


@pytest.mark.slow
def test_run_from_compact_cache_draws_every_figure(tmp_path):
    adir, fdir = make_tiny_analysis_cache(tmp_path / "full")
    out = compact(adir, tmp_path / "compact", max_per_set=50)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.run",
            "--profile",
            "demo",
            "--from-cache",
            str(out),
            "--fig-dir",
            str(fdir),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stage train" not in r.stdout and "stage benchmark" not in r.stdout
    for spec in EXPECTED.values():
        for stem in spec["figures"]:
            png = fdir / f"{stem}.png"
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem


def test_method_costs_add_the_needed_extraction_components(tmp_path):
    from analysis.costs import method_costs

    adir, _ = make_tiny_analysis_cache(tmp_path / "full")
    (adir / "timings.csv").write_text(
        "method,seconds_per_1000,device,batch_size\nforward,1.0,cpu,8\n"
        "grodin_one_grid_point,10.0,cpu,8\nkl_allweights,100.0,cpu,8\n"
    )
    rows = {r["method"]: r for r in method_costs(adir, ["msp", "grodin_g", "gradnorm_allweights"], repeats=1)}
    assert rows["msp"]["extract_seconds_per_1000"] == 1.0
    assert rows["grodin_g"]["extract_seconds_per_1000"] == 11.0
    assert rows["gradnorm_allweights"]["extract_seconds_per_1000"] == 101.0
    assert all(r["seconds_per_1000"] > r["extract_seconds_per_1000"] for r in rows.values())


def test_method_costs_time_grid_methods_at_a_cell_every_row_has(tmp_path):
    """ODIN's default T = 1000 is off this cache's grid, and with grodin_test_points = selected only
    some cells exist on every row: the cost row is timed at such a cell instead of failing."""
    import numpy as np

    from analysis.costs import method_costs

    adir, _ = make_tiny_analysis_cache(tmp_path / "full")
    (adir / "timings.csv").write_text(
        "method,seconds_per_1000,device,batch_size\nforward,1.0,cpu,8\ngrodin_one_grid_point,10.0,cpu,8\n"
    )
    p = adir / "arrays" / f"{ID_TEST}.npz"
    with np.load(p) as z:
        a = {k: z[k] for k in z.files}
    keep = np.zeros(a["odin_s"].shape[:2], bool)
    keep[1, 2] = True  # only (eps[1], T[2]) on every row; the others NaN beyond the first rows
    for k in ("odin_s", "grodin_sqnorm"):
        a[k] = a[k].copy()
        e, t = np.nonzero(~keep)
        a[k][e[:, None], t[:, None], np.arange(5, a[k].shape[-1])[None, :]] = np.nan
    np.savez(p, **a, grodin_full_points=keep)
    rows = {r["method"]: r for r in method_costs(adir, ["odin", "grodin_g"], repeats=1)}
    assert set(rows) == {"odin", "grodin_g"}
    for r in rows.values():
        assert r["timed_params"] == {"eps": float(a["odin_eps"][1]), "T": float(a["odin_T"][2])}


def test_from_cache_without_fig_dir_leaves_the_committed_figures(tmp_path, monkeypatch):
    """--from-cache with no --fig-dir writes under the cache directory, never figures/<profile>."""
    from analysis import run as run_mod

    adir, _ = make_tiny_analysis_cache(tmp_path / "full")
    seen = {}
    monkeypatch.setattr(run_mod, "run_all", lambda args, ctx: seen.setdefault("fig_dir", ctx.fig_dir) and 0)
    run_mod.main(["--profile", "demo", "--from-cache", str(adir), "--cache-dir", str(tmp_path / "c")])
    assert seen["fig_dir"] == (tmp_path / "c" / "from_cache_figures").resolve()
