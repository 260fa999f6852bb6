"""Notebooks: stored clean (fast) and executable end to end on a tiny synthetic cache (slow).

The slow tests run every notebook with papermill on the cache of ``tests/fixtures_cache.py`` and
check that each expected figure exists as a valid PNG (and PDF). They need a Jupyter kernel named
``python3`` for the venv's interpreter; ipykernel provides it natively, and a run script can make it
explicit with::

    .venv/bin/python -m ipykernel install --sys-prefix --name python3

The notebooks are executed two at a time (separate kernel processes) to stay well under 3 minutes
on 2 CPU cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:  # tests/ is on sys.path under pytest's default (rootdir-based) import mode
    from fixtures_cache import make_tiny_analysis_cache
except ImportError:  # pragma: no cover
    from tests.fixtures_cache import make_tiny_analysis_cache

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"

# notebook -> figures (stems; each written as .png and .pdf) and other artefacts it must write
EXPECTED: dict[str, dict[str, list[str]]] = {
    "01_tsne.ipynb": {"figures": ["tsne_features_vs_lowdim"], "files": []},
    "02_lowdim_densities.ipynb": {
        "figures": ["lowdim_densities_chosen", "lowdim_densities_top", "lowdim_single_sample"], "files": []},
    "03_sg_decomposition.ipynb": {"figures": ["grodin_sg_decomposition", "grodin_calibration"], "files": []},
    "04_gradients_needed.ipynb": {
        "figures": ["igoe_factorisation", "igoe_simplex", "igoe_deep_vs_lastlayer"],
        "files": ["igoe_family_table.md"]},
    "05_benchmark.ipynb": {
        "figures": ["sweep_odin_eps_T", "sweep_knn", "sweep_react_rg", "compute_cost", "auroc_heatmap"],
        "files": []},
}
REQUIRED_PARAMS = ("profile", "analysis_dir", "fig_dir", "seed")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# ------------------------------------------------------------------------------------------------
# fast: notebooks are stored clean
# ------------------------------------------------------------------------------------------------
def test_expected_notebooks_exist():
    present = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    assert sorted(EXPECTED) == present, f"notebooks/ holds {present}; the test expects {sorted(EXPECTED)}"


@pytest.mark.parametrize("nb_path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_stored_clean(nb_path: Path):
    nb = _load(nb_path)
    assert nb.get("nbformat") == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, c in enumerate(code):
        assert c.get("outputs", []) == [], f"{nb_path.name}: code cell {i} has stored outputs"
        assert c.get("execution_count") is None, f"{nb_path.name}: code cell {i} has an execution count"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: {len(tagged)} cells tagged 'parameters' (need exactly 1)"
    assert tagged[0] is code[0], f"{nb_path.name}: the parameters cell must be the first code cell"
    src = _source(tagged[0])
    for name in REQUIRED_PARAMS:
        assert f"\n{name} =" in "\n" + src, f"{nb_path.name}: parameters cell lacks '{name}'"
    assert 'profile = "demo"' in src and 'analysis_dir = "../cache/demo/analysis"' in src
    assert 'fig_dir = "../figures/demo"' in src and "seed = 0" in src
    assert "style.apply()" in "".join(_source(c) for c in code), f"{nb_path.name}: no style.apply()"


# ------------------------------------------------------------------------------------------------
# slow: execute every notebook with papermill on the tiny cache
# ------------------------------------------------------------------------------------------------
def _execute(nb_name: str, analysis_dir: Path, fig_dir: Path, out_dir: Path) -> tuple[int, str]:
    """Run one notebook with papermill (own process, kernel 'python3'); return (rc, log tail)."""
    cmd = [
        sys.executable, "-m", "papermill", "--kernel", "python3", "--log-level", "WARNING",
        "--cwd", str(NB_DIR), str(NB_DIR / nb_name), str(out_dir / nb_name),
        "-p", "profile", "tiny", "-p", "analysis_dir", str(analysis_dir), "-p", "fig_dir", str(fig_dir),
        "-p", "seed", "0",
    ]
    if nb_name.startswith("01_"):  # keep t-SNE quick on the tiny cache
        cmd += ["-p", "n_iter", "250", "-p", "early_exaggeration_iter", "100"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=NB_DIR)
    return proc.returncode, (proc.stdout + proc.stderr)[-6000:]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    pytest.importorskip("openTSNE")
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():  # pragma: no cover
        pytest.skip("no Jupyter kernel 'python3': run .venv/bin/python -m ipykernel install --sys-prefix --name python3")
    root = tmp_path_factory.mktemp("nb")
    analysis_dir, fig_dir = make_tiny_analysis_cache(root / "cache", seed=0)
    out_dir = root / "executed"
    out_dir.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {nb: pool.submit(_execute, nb, analysis_dir, fig_dir, out_dir) for nb in EXPECTED}
        results = {nb: f.result() for nb, f in futures.items()}
    return {"fig_dir": fig_dir, "out_dir": out_dir, "results": results}


def _check_png(path: Path) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert len(data) > 1000, f"{path.name} is (nearly) empty: {len(data)} bytes"
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, f"{path.name}: shape {img.shape}"
    assert float(np.asarray(img[..., :3], float).std()) > 0.01, f"{path.name} is blank"


@pytest.mark.slow
@pytest.mark.parametrize("nb_name", sorted(EXPECTED))
def test_notebook_runs_and_writes_figures(executed, nb_name):
    rc, log = executed["results"][nb_name]
    assert rc == 0, f"papermill failed for {nb_name} (rc={rc}):\n{log}"
    out_nb = _load(executed["out_dir"] / nb_name)
    errors = [o for c in out_nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{nb_name}: error outputs {errors}"
    fig_dir = executed["fig_dir"]
    for stem in EXPECTED[nb_name]["figures"]:
        _check_png(fig_dir / f"{stem}.png")
        pdf = fig_dir / f"{stem}.pdf"
        assert pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-", f"{pdf.name} missing or not a PDF"
    for name in EXPECTED[nb_name]["files"]:
        p = fig_dir / name
        assert p.is_file() and p.stat().st_size > 0, f"{name} missing or empty"
    leftovers = [p.name for p in fig_dir.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind by atomic writes: {leftovers}"


@pytest.mark.slow
def test_notebook_skips_missing_optional_arrays(tmp_path):
    """A cache without the optional arrays (odin_*, grodin_*, kl_*, lowdim_*) must not crash notebooks."""
    pytest.importorskip("papermill")
    import numpy as np

    analysis_dir, fig_dir = make_tiny_analysis_cache(tmp_path / "cache", seed=1)
    optional = ("odin_T", "odin_eps", "odin_s", "grodin_sqnorm", "kl_allw_sqnorm", "lowdim_pca")
    for p in (analysis_dir / "arrays").glob("*.npz"):
        with np.load(p) as z:
            kept = {k: z[k] for k in z.files if k not in optional}
        np.savez(p, **kept)
    (fig_dir / "sweep_knn.csv").unlink()
    out_dir = tmp_path / "executed"
    out_dir.mkdir()
    names = ["02_lowdim_densities.ipynb", "03_sg_decomposition.ipynb", "04_gradients_needed.ipynb",
             "05_benchmark.ipynb"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(names, pool.map(lambda nb: _execute(nb, analysis_dir, fig_dir, out_dir), names)))
    for nb, (rc, log) in res.items():
        assert rc == 0, f"{nb} crashed on a cache without optional arrays:\n{log}"
        assert "[skip]" in (out_dir / nb).read_text(), f"{nb} printed no skip note"
    _check_png(fig_dir / "grodin_calibration.png")  # needs only logits + y
    _check_png(fig_dir / "igoe_factorisation.png")  # needs only h + logits + stored scores
    _check_png(fig_dir / "auroc_heatmap.png")
    for stem in ("grodin_sg_decomposition", "igoe_deep_vs_lastlayer", "lowdim_densities_top", "sweep_knn"):
        assert not (fig_dir / f"{stem}.png").exists(), f"{stem} drawn although its input is missing"


@pytest.mark.slow
def test_notebooks_on_a_selected_cells_cache(tmp_path):
    """extract.grodin_test_points = selected: test rows hold NaN off the selected grid cells. Notebook 03
    must pick a cell computed on every row; notebook 05 plots the validation sweep instead."""
    pytest.importorskip("papermill")
    import numpy as np
    import pandas as pd

    analysis_dir, fig_dir = make_tiny_analysis_cache(tmp_path / "cache", seed=2)
    splits = np.load(analysis_dir / "splits.npz")
    for p in (analysis_dir / "arrays").glob("*.npz"):
        with np.load(p) as z:
            a = {k: z[k] for k in z.files}
        if "odin_s" not in a or f"{p.stem}__val" not in splits:
            continue
        keep = np.zeros(a["odin_s"].shape[:2], bool)
        keep[0, 0] = True  # only the vanilla cell on every row
        test = splits[f"{p.stem}__test"]
        for k in ("odin_s", "grodin_sqnorm"):
            v = a[k].copy()
            e, t = np.nonzero(~keep)
            v[e[:, None], t[:, None], test[None, :]] = np.nan
            a[k] = v
        a["grodin_full_points"] = keep
        np.savez(p, **a)
    sw = pd.read_csv(fig_dir / "sweep_odin.csv")
    grid_eps, grid_T = sorted(sw["eps"].unique()), sorted(sw["T"].unique())
    off = ~(np.isclose(sw["eps"], grid_eps[0]) & np.isclose(sw["T"], grid_T[0]))
    sw.loc[off, "auroc_test"] = np.nan
    sw.to_csv(fig_dir / "sweep_odin.csv", index=False)
    out_dir = tmp_path / "executed"
    out_dir.mkdir()
    names = ["03_sg_decomposition.ipynb", "05_benchmark.ipynb"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(names, pool.map(lambda nb: _execute(nb, analysis_dir, fig_dir, out_dir), names)))
    for nb, (rc, log) in res.items():
        assert rc == 0, f"{nb} failed on a selected-cells cache:\n{log}"
    assert "validation rows only" in (out_dir / "05_benchmark.ipynb").read_text()
    assert f"using grid point T={grid_T[0]:g}, eps={grid_eps[0]:g}" in (out_dir / "03_sg_decomposition.ipynb").read_text()
    _check_png(fig_dir / "grodin_sg_decomposition.png")
    _check_png(fig_dir / "sweep_odin_eps_T.png")
