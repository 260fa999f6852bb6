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

import asyncio
import json
import logging
import shlex
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:  # tests/ is on sys.path under pytest's default (rootdir-based) import mode
    from fixtures_cache import ID_TEST, OOD, make_tiny_analysis_cache
except ImportError:  # pragma: no cover
    from tests.fixtures_cache import ID_TEST, OOD, make_tiny_analysis_cache

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"

# notebook -> figures (stems; each written as .png and .pdf) and other artefacts it must write
EXPECTED: dict[str, dict[str, list[str]]] = {
    "01_tsne.ipynb": {"figures": ["tsne_features_vs_lowdim"], "files": []},
    "02_lowdim_densities.ipynb": {
        "figures": ["lowdim_densities_chosen", "lowdim_densities_top", "lowdim_single_sample"],
        "files": [],
    },
    "03_sg_decomposition.ipynb": {"figures": ["grodin_sg_decomposition", "grodin_calibration"], "files": []},
    "04_gradients_needed.ipynb": {
        "figures": ["igoe_factorisation", "igoe_simplex", "igoe_deep_vs_lastlayer"],
        "files": ["igoe_family_table.md"],
    },
    "05_benchmark.ipynb": {
        "figures": ["sweep_odin_eps_T", "sweep_knn_k", "sweep_react_rg", "compute_cost", "auroc_heatmap"],
        "files": [],
    },
}
# every figure is written with the numbers it shows: <stem>.png, <stem>.pdf and <stem>.csv
for _nb in EXPECTED.values():
    _nb["files"] += [f"{stem}.csv" for stem in _nb["figures"]]
REQUIRED_PARAMS = ("profile", "analysis_dir", "fig_dir", "seed")
SCRATCH = "scratch"  # analysis.notebooks.SCRATCH: cache/<profile>/scratch, fig_dir of a run by hand
NOISE = ("Unable to parse", "without encryption", "KeyboardInterrupt")  # what a successful run must not print
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
    # run by hand with its defaults, a notebook writes to a scratch folder, never the pipeline's figures/
    assert f'fig_dir = "../cache/demo/{SCRATCH}"' in src and "seed = 0" in src
    assert "../figures" not in src.split("fig_dir =", 1)[1].splitlines()[0], "default fig_dir is the pipeline's"
    assert "style.apply()" in "".join(_source(c) for c in code), f"{nb_path.name}: no style.apply()"


MAX_CODE_CELL_LINES = 25  # notebooks call ood_core.explore; logic longer than this belongs there, tested


@pytest.mark.parametrize("nb_path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_cells_are_short_calls_of_library_code(nb_path: Path):
    """Every code cell is at most 25 lines, defines no function (no def, no lambda, no class) and does
    not edit sys.path (the package is installed); Markdown cells sit between the code cells."""
    import ast

    cells = _load(nb_path)["cells"]
    for i, c in enumerate(cells):
        if c["cell_type"] != "code":
            continue
        src = _source(c)
        n = len(src.splitlines())
        assert n <= MAX_CODE_CELL_LINES, f"{nb_path.name}: cell {i} has {n} lines (max {MAX_CODE_CELL_LINES})"
        defined = [
            type(node).__name__
            for node in ast.walk(ast.parse(src))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
        ]
        assert not defined, f"{nb_path.name}: cell {i} defines {defined}; move the logic to ood_core.explore"
        assert "sys.path" not in src, f"{nb_path.name}: cell {i} edits sys.path (the package is installed)"
    params = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    figures = [i for i, c in enumerate(cells) if "nb.save(" in _source(c)]
    assert figures, f"{nb_path.name}: no cell saves a figure with nb.save"
    for i in figures:  # each figure is introduced by its own Markdown cell (after the parameters)
        j = max(k for k in range(i) if cells[k]["cell_type"] == "markdown")
        assert j > params and len(_source(cells[j])) > 200, (
            f"{nb_path.name}: the figure of cell {i} has no Markdown cell explaining it"
        )


def _parameters_cell(nb_path: Path) -> dict:
    cell = next(c for c in _load(nb_path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return {**cell, "source": _source(cell)}


@pytest.mark.parametrize("nb_path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_parameters_cell_parses_without_papermill_warning(nb_path: Path, caplog):
    """papermill inspects the parameters cell on every run and warns 'Unable to parse line' for a line
    with more than one '=' (e.g. '([] = all)' in a comment); every assigned name must be found."""
    import ast

    translators = pytest.importorskip("papermill.translators")
    cell = _parameters_cell(nb_path)
    with caplog.at_level(logging.DEBUG, logger="papermill"):
        found = [p.name for p in translators.PythonTranslator.inspect(cell)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, f"{nb_path.name}: papermill warns on its parameters cell: {warnings}"
    assigned = [
        t.id
        for node in ast.parse(cell["source"]).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]
    assert found == assigned, f"{nb_path.name}: papermill sees parameters {found}, the cell assigns {assigned}"


def test_kernel_shutdown_sends_no_sigint(tmp_path):
    """The pipeline's kernel manager shuts a kernel down without the SIGINT jupyter_client sends first
    (logged by the kernel as 'KeyboardInterrupt caught in kernel'), and the kernel's own log holds
    neither that nor the TCP warning."""
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():  # pragma: no cover
        pytest.skip("no Jupyter kernel 'python3'")
    from analysis.notebooks import KERNEL_ARGS, quiet_kernel_manager

    sent: list[int] = []

    class Recording(quiet_kernel_manager()):
        async def _async_signal_kernel(self, signum):
            sent.append(signum)
            await super()._async_signal_kernel(signum)

    log = tmp_path / "kernel.log"

    async def start_use_stop():
        km = Recording(kernel_name="python3")
        with open(log, "w") as err:
            await km.start_kernel(extra_arguments=list(KERNEL_ARGS), stderr=err)
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=120)
                await kc.execute_interactive("x = 1", timeout=60)
            finally:
                kc.stop_channels()
            await km.shutdown_kernel()

    asyncio.run(start_use_stop())
    assert signal.SIGINT not in sent, "the kernel got a SIGINT on shutdown"
    text = log.read_text()
    assert not [n for n in NOISE if n in text], f"kernel log: {text}"


# ------------------------------------------------------------------------------------------------
# slow: execute every notebook with papermill on the tiny cache
# ------------------------------------------------------------------------------------------------
def _need_papermill_kernel() -> None:
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():  # pragma: no cover
        pytest.skip(
            "no Jupyter kernel 'python3': run .venv/bin/python -m ipykernel install --sys-prefix --name python3"
        )


def _execute(nb_name: str, analysis_dir: Path, fig_dir: Path, out_dir: Path) -> tuple[int, str]:
    """Run one notebook with papermill (own process, kernel 'python3'); return (rc, log tail)."""
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        "--kernel",
        "python3",
        "--log-level",
        "WARNING",
        "--cwd",
        str(NB_DIR),
        str(NB_DIR / nb_name),
        str(out_dir / nb_name),
        "-p",
        "profile",
        "tiny",
        "-p",
        "analysis_dir",
        str(analysis_dir),
        "-p",
        "fig_dir",
        str(fig_dir),
        "-p",
        "seed",
        "0",
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
        pytest.skip(
            "no Jupyter kernel 'python3': run .venv/bin/python -m ipykernel install --sys-prefix --name python3"
        )
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
def test_notebook_tables_show_display_names(executed):
    """A method's registered display name, not its code name, in what the notebooks render (a name
    the registry does not know stays as it is)."""
    rc, log = executed["results"]["04_gradients_needed.ipynb"]
    assert rc == 0, log
    table = (executed["fig_dir"] / "igoe_family_table.md").read_text()
    assert "| ‖h‖₁ × max p |" in table and "family_q1_msp" not in table
    assert "| l2_x_negent |" in table
    out02 = (executed["out_dir"] / "02_lowdim_densities.ipynb").read_text()
    assert "inverted" in out02  # the top-dimension table says which dimensions are inverted


def _mw_auroc(s_id, s_ood) -> float:
    """Mann-Whitney AUROC, ID = positive, ties 1/2 (independent of ood_core.evaluation.metrics)."""
    import numpy as np

    a, b = np.asarray(s_id, float)[:, None], np.asarray(s_ood, float)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def _tiny_arrays(fig_dir: Path):
    """(arrays per set, splits) of the tiny cache beside ``fig_dir``."""
    import numpy as np

    adir = fig_dir.parent / "analysis"
    arrays = {p.stem: dict(np.load(p)) for p in (adir / "arrays").glob("*.npz")}
    return arrays, dict(np.load(adir / "splits.npz"))


@pytest.mark.slow
def test_notebook_figures_show_the_numbers_of_the_cache(executed):
    """What the figures of 02-05 show (their .csv) equals independent computations on the tiny cache:
    per-dimension AUROCs and the top-dimension pick, the GRODIN cell (the benchmark's choice) and its
    AUROCs, the ECE per temperature, the factorisation constants, all-weights vs last-layer AUROCs,
    the sweep's chosen cells and the heatmap's numbers."""
    import numpy as np
    import pandas as pd

    assert all(rc == 0 for rc, _ in executed["results"].values())
    fig_dir = executed["fig_dir"]
    arrays, sp = _tiny_arrays(fig_dir)
    sets = [ID_TEST, *OOD]

    def part(name, which):
        return sp[f"{name}__{which}"]

    # 02: top dimensions by validation |AUROC - 0.5|, reported with their test AUROC
    top = pd.read_csv(fig_dir / "lowdim_densities_top.csv")
    z = {n: arrays[n]["lowdim_pca"].astype(float) for n in sets}
    auc = {
        w: [
            _mw_auroc(z[ID_TEST][part(ID_TEST, w), d], np.concatenate([z[o][part(o, w), d] for o in OOD]))
            for d in range(z[ID_TEST].shape[1])
        ]
        for w in ("val", "test")
    }
    want = sorted(range(len(auc["val"])), key=lambda d: -abs(auc["val"][d] - 0.5))[:3]
    assert top["dim"].tolist() == want
    assert np.allclose(top["auroc_val"], [auc["val"][d] for d in want])
    assert np.allclose(top["auroc_test"], [auc["test"][d] for d in want])

    # 03: every OOD set at the cell the benchmark chose for grodin_sg; AUROCs of S, G and SG there
    chosen = json.loads((fig_dir / "chosen_hyperparams.json").read_text())["methods"]["grodin_sg"]["per_set"]
    dec = pd.read_csv(fig_dir / "grodin_sg_decomposition.csv").set_index("ood_set")
    assert list(dec.index) == list(OOD)
    grid_eps, grid_T = list(arrays[ID_TEST]["odin_eps"]), list(arrays[ID_TEST]["odin_T"])
    for o in OOD:
        cell = chosen[o]["params"]
        assert (dec.loc[o, "eps"], dec.loc[o, "T"]) == (cell["eps"], cell["T"])
        ie, it = grid_eps.index(cell["eps"]), grid_T.index(cell["T"])
        S = {n: arrays[n]["odin_s"][ie, it, part(n, "test")].astype(float) for n in (ID_TEST, o)}
        SG = {n: arrays[n]["grodin_sqnorm"][ie, it, part(n, "test")].astype(float) for n in (ID_TEST, o)}
        assert dec.loc[o, "auroc_S_all"] == pytest.approx(_mw_auroc(S[ID_TEST], S[o]))
        assert dec.loc[o, "auroc_SG_all"] == pytest.approx(_mw_auroc(-SG[ID_TEST], -SG[o]))
        assert dec.loc[o, "auroc_G_all"] == pytest.approx(_mw_auroc(-SG[ID_TEST] / S[ID_TEST] ** 2, -SG[o] / S[o] ** 2))
        lo, hi = dec.loc[o, "band_lo_S"], dec.loc[o, "band_hi_S"]
        assert dec.loc[o, "n_ood_band"] == int(((S[o] >= lo - 1e-9) & (S[o] <= hi + 1e-9)).sum())

    # 03: ECE per temperature over 10 equal-width confidence bins on [1/C, 1]
    calib = pd.read_csv(fig_dir / "grodin_calibration.csv")
    f, y = arrays[ID_TEST]["logits"].astype(float), arrays[ID_TEST]["y"]
    for T in grid_T:
        e = np.exp(f / T - (f / T).max(1, keepdims=True))
        conf = (e / e.sum(1, keepdims=True)).max(1)
        b = np.minimum(((conf - 1 / 3) / (2 / 3) * 10).astype(int), 9)
        ece = sum(
            (b == k).mean() * abs(conf[b == k].mean() - (f.argmax(1) == y)[b == k].mean())
            for k in range(10)
            if (b == k).any()
        )
        assert calib.loc[calib["T"] == T, "ece"].iloc[0] == pytest.approx(ece)

    # 04: stored GradNorm / ExGrad are the factor products (c = 1 and -1); all weights vs last layer
    fact = pd.read_csv(fig_dir / "igoe_factorisation.csv").set_index("score")
    assert fact.loc["GradNorm", "c"] == pytest.approx(1.0) and fact.loc["ExGrad", "c"] == pytest.approx(-1.0)
    assert (fact["max_rel"] < 1e-6).all()
    dvl = pd.read_csv(fig_dir / "igoe_deep_vs_lastlayer.csv")
    gn = dvl[dvl["comparison"].str.startswith("GradNorm")].set_index("ood_set")
    deep = {n: np.sqrt(arrays[n]["kl_allw_sqnorm"][part(n, "test")].astype(float)) for n in sets}
    for o in OOD:
        assert gn.loc[o, "auroc_all_weights"] == pytest.approx(_mw_auroc(deep[ID_TEST], deep[o]))

    # 05: the sweep's chosen cells are the first validation-best rows; the heatmap holds metrics.csv
    sw = pd.read_csv(fig_dir / "sweep_odin.csv")
    for r in pd.read_csv(fig_dir / "sweep_odin_eps_T.csv").itertuples():
        d = sw[(sw["method"] == r.method) & (sw["ood_set"] == r.ood_set)]
        best = d.loc[d["auroc_val"].idxmax()]
        assert (r.eps, r.T) == (best["eps"], best["T"])
    heat = pd.read_csv(fig_dir / "auroc_heatmap.csv").set_index("method")
    mdf = pd.read_csv(fig_dir / "metrics.csv")
    assert set(heat.index) == set(mdf["method"])
    for r in mdf.itertuples():
        assert heat.loc[r.method, r.ood_set] == pytest.approx(r.auroc)
    assert np.allclose(heat["mean"], heat[list(OOD)].mean(axis=1))


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
    names = [
        "02_lowdim_densities.ipynb",
        "03_sg_decomposition.ipynb",
        "04_gradients_needed.ipynb",
        "05_benchmark.ipynb",
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(names, pool.map(lambda nb: _execute(nb, analysis_dir, fig_dir, out_dir), names)))
    for nb, (rc, log) in res.items():
        assert rc == 0, f"{nb} crashed on a cache without optional arrays:\n{log}"
        assert "[skip]" in (out_dir / nb).read_text(), f"{nb} printed no skip note"
    _check_png(fig_dir / "grodin_calibration.png")  # needs only logits + y
    _check_png(fig_dir / "igoe_factorisation.png")  # needs only h + logits + stored scores
    _check_png(fig_dir / "auroc_heatmap.png")
    for stem in ("grodin_sg_decomposition", "igoe_deep_vs_lastlayer", "lowdim_densities_top", "sweep_knn_k"):
        assert not (fig_dir / f"{stem}.png").exists(), f"{stem} drawn although its input is missing"


@pytest.mark.slow
def test_notebooks_on_a_selected_cells_cache(tmp_path):
    """extract.grodin_test_points = selected: test rows hold NaN off the selected grid cells. Notebook 03
    uses the benchmark's cells (computed on every row); notebook 05 plots the validation sweep instead."""
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
    # the benchmark's choices are cells every row has (ood_core.extraction.grid_selection marks them): here the only one
    chosen = json.loads((fig_dir / "chosen_hyperparams.json").read_text())
    for spec in chosen["methods"].values():
        for entry in spec["per_set"].values():
            entry["params"] = {"eps": grid_eps[0], "T": grid_T[0]}
    (fig_dir / "chosen_hyperparams.json").write_text(json.dumps(chosen))
    out_dir = tmp_path / "executed"
    out_dir.mkdir()
    names = ["03_sg_decomposition.ipynb", "05_benchmark.ipynb"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(names, pool.map(lambda nb: _execute(nb, analysis_dir, fig_dir, out_dir), names)))
    for nb, (rc, log) in res.items():
        assert rc == 0, f"{nb} failed on a selected-cells cache:\n{log}"
    assert "validation rows only" in (out_dir / "05_benchmark.ipynb").read_text()
    assert (
        f"using grid point T={grid_T[0]:g}, eps={grid_eps[0]:g}" in (out_dir / "03_sg_decomposition.ipynb").read_text()
    )
    _check_png(fig_dir / "grodin_sg_decomposition.png")
    _check_png(fig_dir / "sweep_odin_eps_T.png")


# ------------------------------------------------------------------------------------------------
# slow: the documented papermill command and a quiet notebook stage
# ------------------------------------------------------------------------------------------------
def readme_papermill_command() -> str:
    """The papermill command of notebooks/README.md, exactly as written (continuation lines joined)."""
    lines = (NB_DIR / "README.md").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(".venv/bin/papermill"):
            cmd = [line.strip()]
            while cmd[-1].endswith("\\"):
                i += 1
                cmd.append(lines[i].strip())
            return "\n".join(cmd)
    raise AssertionError("notebooks/README.md has no '.venv/bin/papermill ...' command")


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_readme_papermill_command_runs_as_written(tmp_path):
    """Pasted from the repository root after ./run_all.sh, the README's command runs, writes its
    figures to the scratch folder, and touches neither notebooks/ nor the pipeline's figures/demo/."""
    _need_papermill_kernel()
    from analysis.notebooks import seed_scratch

    papermill = Path(sys.executable).with_name("papermill")
    if not papermill.is_file():  # pragma: no cover
        pytest.skip(f"no papermill script beside {sys.executable}")
    # a copy of the repository's layout after ./run_all.sh, on the tiny cache (nothing else is read)
    root = tmp_path / "repo"
    shutil.copytree(NB_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "figures"))
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "papermill").symlink_to(papermill)
    _, tables = make_tiny_analysis_cache(root / "cache" / "demo", seed=0)
    pipeline_figs = root / "figures" / "demo"
    pipeline_figs.parent.mkdir()
    shutil.move(str(tables), str(pipeline_figs))  # where the benchmark stage writes its tables
    seed_scratch(pipeline_figs, root / "cache" / "demo" / SCRATCH)  # what the notebooks stage leaves
    notebooks_before, figs_before = _listing(root / "notebooks"), _listing(pipeline_figs)
    scratch_before = set(_listing(root / "cache" / "demo" / SCRATCH))

    cmd = readme_papermill_command()
    r = subprocess.run(["bash", "-c", cmd], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\nfailed (rc={r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}"
    out = [a for a in shlex.split(cmd.replace("\\\n", " ")) if a.endswith(".ipynb")][1]
    out_nb = _load(root / out)
    errors = [o for c in out_nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    new = set(_listing(root / "cache" / "demo" / SCRATCH)) - scratch_before
    assert any(n.endswith(".png") for n in new), f"no figure written to the scratch folder: {sorted(new)}"
    assert not (root / "notebooks" / "figures").exists(), "stray notebooks/figures/"
    assert _listing(root / "notebooks") == notebooks_before, "the command changed notebooks/"
    assert _listing(pipeline_figs) == figs_before, "a notebook run by hand changed the pipeline's figures"


@pytest.mark.slow
def test_notebook_stage_is_quiet_and_leaves_tables_for_runs_by_hand(tmp_path):
    """A successful notebook stage prints no papermill parse warning, no kernel TCP warning and no
    KeyboardInterrupt line; it copies the benchmark's tables into cache/<profile>/scratch/."""
    _need_papermill_kernel()
    analysis_dir, fig_dir = make_tiny_analysis_cache(tmp_path / "t", seed=0)
    cache = tmp_path / "c"
    cmd = [
        sys.executable,
        "-m",
        "analysis.notebooks",
        "--profile",
        "demo",
        "--analysis-dir",
        str(analysis_dir),
        "--fig-dir",
        str(fig_dir),
        "--cache-dir",
        str(cache),
        "--only",
        "02_lowdim_densities",
        "05_benchmark",
    ]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "05_benchmark.ipynb in" in out
    noisy = [line for line in out.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "noise in a successful notebook stage:\n" + "\n".join(noisy)
    for name in ("metrics.csv", "metrics.md", "sweep_odin.csv", "chosen_hyperparams.json"):
        assert (cache / SCRATCH / name).read_bytes() == (fig_dir / name).read_bytes(), name


def test_a_failed_notebook_run_leaves_the_figures_as_they_were(tmp_path, monkeypatch):
    """The notebooks write into a staging folder; the figures move to fig_dir only when every notebook
    has run: a failure in the second leaves fig_dir's old set whole and no temporary file; the rerun
    skips the finished notebook and publishes both notebooks' figures."""
    import argparse

    import papermill

    from analysis import notebooks as stage
    from analysis.common import make_context

    analysis_dir, fig_dir = make_tiny_analysis_cache(tmp_path / "t", seed=0)
    (fig_dir / "a.png").write_bytes(b"old a")
    calls: list[str] = []

    def fake_execute(src, out, parameters, **_):
        calls.append(Path(src).stem)
        Path(parameters["fig_dir"], f"{Path(src).stem}.png").write_bytes(b"new")
        Path(out).write_text("{}")
        if Path(src).stem == "05_benchmark" and calls.count("05_benchmark") == 1:
            raise RuntimeError("the second notebook fails")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(stage, "ensure_kernel", lambda: None)
    args = argparse.Namespace(
        profile="demo",
        analysis_dir=str(analysis_dir),
        fig_dir=str(fig_dir),
        cache_dir=str(tmp_path / "c"),
        data_root=None,
        device="cpu",
        force=False,
    )
    ctx = make_context(args)
    with pytest.raises(RuntimeError, match="second notebook"):
        stage.run(ctx, ["02_lowdim_densities", "05_benchmark"])
    assert not (fig_dir / "02_lowdim_densities.png").exists() and (fig_dir / "a.png").read_bytes() == b"old a"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    stage.run(ctx, ["02_lowdim_densities", "05_benchmark"])
    assert calls == ["02_lowdim_densities", "05_benchmark", "05_benchmark"]  # 02 was finished: not rerun
    assert (fig_dir / "02_lowdim_densities.png").read_bytes() == b"new" == (fig_dir / "05_benchmark.png").read_bytes()
    assert not list((tmp_path / "c" / stage.STAGING).glob("*.png"))
