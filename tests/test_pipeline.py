"""The stages end to end on a tiny profile: extraction equals a direct forward pass, caching hits and
misses, bit-identical reruns, resumption after SIGKILL, and device/data-root errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ood_core.cache import load_npz

REPO = Path(__file__).resolve().parents[1]


def tiny_profile(tmp_path: Path, **extract_overrides) -> Path:
    """The demo profile shrunk to seconds: 2 epochs, a 2x2 ODIN grid, small subspaces."""
    cfg = yaml.safe_load((REPO / "analysis/configs/demo.yaml").read_text())
    cfg["profile"] = "tiny"
    cfg["train"]["epochs"] = 2
    cfg["data"]["ood"] = {k: cfg["data"]["ood"][k] for k in ("digits_5to9", "gaussian_noise", "digits_contrast5")}
    cfg["data"]["ood"]["gaussian_noise"]["n"] = 60
    cfg["extract"].update({"odin_T": [1, 10], "odin_eps": [0.0, 0.004], **extract_overrides})
    cfg["lowdim"]["subspaces"] = {"pca": {"kind": "pca", "k": 4, "n_iter": 1}, "avg": {"kind": "class_mean"}}
    cfg["benchmark"] = {
        "protocol": "per_ood_val",
        "bootstrap": 10,
        "methods": ["msp", "energy", "gradnorm", "grodin_g", "lowdim_knn", "knn"],
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def stage_args(profile: Path, root: Path) -> list[str]:
    return [
        "--profile",
        str(profile),
        "--cache-dir",
        str(root / "cache"),
        "--fig-dir",
        str(root / "fig"),
        "--device",
        "cpu",
    ]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


def test_extraction_matches_forward_and_cache_hits_and_misses(tmp_path):
    import argparse

    from analysis import extract, train
    from analysis.common import add_common_args, make_context
    from analysis.datasets import load_named
    from ood_core.extraction.arrays import Preprocess

    prof = tiny_profile(tmp_path)
    args = stage_args(prof, tmp_path)
    train.main(args)
    extract.main(args)
    ctx = make_context(add_common_args(argparse.ArgumentParser()).parse_args(args))
    model, _ = train.load_model(ctx)
    ds = load_named(ctx, "digits_5to9")
    x = Preprocess(**ctx.cfg["data"]["preprocessing"])(ds.images, torch.device("cpu"))
    with torch.no_grad():
        h = model.features(x)
        logits = model.head(h)
    arrays_path = ctx.analysis_dir / "arrays" / "digits_5to9.npz"
    a = load_npz(arrays_path)
    np.testing.assert_allclose(a["h"], h.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["logits"], logits.numpy(), rtol=1e-5, atol=1e-5)
    assert a["odin_s"].shape == (2, 2, len(ds)) and a["lowdim_pca"].shape == (len(ds), 4)
    assert (a["y"] == -1).all()

    before = arrays_path.stat().st_mtime_ns
    extract.main(args)  # same config: cache hit, nothing rewritten
    assert arrays_path.stat().st_mtime_ns == before

    changed = tiny_profile(tmp_path, odin_T=[1, 100])  # a changed config misses the cache
    extract.main(stage_args(changed, tmp_path))
    assert arrays_path.stat().st_mtime_ns != before
    assert load_npz(arrays_path)["odin_T"].tolist() == [1.0, 100.0]


@pytest.mark.slow
def test_rerun_is_bit_identical_and_survives_sigkill(tmp_path):
    prof = tiny_profile(tmp_path)
    stages = ["--stages", "train", "extract", "benchmark"]
    runs = {}
    for name in ("a", "b"):
        r = run_cli(["analysis.run", *stage_args(prof, tmp_path / name), *stages], timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[name] = (tmp_path / name / "fig" / "metrics.csv").read_bytes()
    assert runs["a"] == runs["b"], "the same profile and seed must give bit-identical metrics"

    # Kill the run with SIGKILL in the middle of extraction, then run again to completion.
    kdir = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis.run", *stage_args(prof, kdir), *stages],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed = False
    assert proc.stdout is not None
    deadline = time.time() + 300
    for line in proc.stdout:
        if "[extract] subspace" in line or "== stage extract" in line and time.time() > deadline:
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert not (kdir / "fig" / "metrics.csv").exists()
    r = run_cli(["analysis.run", *stage_args(prof, kdir), *stages], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== stage train: cached" in r.stdout, "the finished training stage must be reused after the kill"
    assert (kdir / "fig" / "metrics.csv").read_bytes() == runs["a"]
    leftovers = [p for p in kdir.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_explicit_cuda_without_gpu_fails_and_profile_cuda_falls_back(tmp_path, monkeypatch, capsys):
    from analysis.common import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda was given but no CUDA GPU is available"):
        resolve_device("cuda", "auto")
    assert resolve_device(None, "cuda") == "cpu"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "no GPU is available: falling back to CPU" in err[0]
    assert resolve_device(None, "auto") == "cpu"


def training_cifar10_profile(tmp_path: Path) -> Path:
    """The cifar10 profile without its committed checkpoint, so that the train stage reads the data."""
    cfg = yaml.safe_load((REPO / "analysis/configs/cifar10.yaml").read_text())
    cfg["model"]["checkpoint"] = None
    p = tmp_path / "cifar10_train.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_missing_data_root_names_the_file(tmp_path):
    r = run_cli(
        [
            "analysis.train",
            "--profile",
            str(training_cifar10_profile(tmp_path)),
            "--data-root",
            str(tmp_path / "nowhere"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--device",
            "cpu",
        ],
        timeout=300,
    )
    assert r.returncode != 0
    assert (
        r.stderr.startswith("error: dataset 'cifar10_train")
        and "nowhere/cifar10_train.npz" in r.stderr
        and "file not found" in r.stderr
    )


def test_failing_stage_is_named_with_its_log(tmp_path):
    r = run_cli(
        [
            "analysis.run",
            "--profile",
            str(training_cifar10_profile(tmp_path)),
            "--data-root",
            str(tmp_path / "nowhere"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--fig-dir",
            str(tmp_path / "f"),
            "--device",
            "cpu",
        ],
        timeout=300,
    )
    assert r.returncode != 0
    assert "FAILED at stage 'train'" in r.stdout and str(tmp_path / "c" / "logs" / "train.log") in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("error: dataset 'cifar10_train"), r.stderr


@pytest.mark.slow
def test_notebook_stage_survives_sigkill(tmp_path):
    try:
        from fixtures_cache import make_tiny_analysis_cache
    except ImportError:  # pragma: no cover
        from tests.fixtures_cache import make_tiny_analysis_cache

    adir, fdir = make_tiny_analysis_cache(tmp_path / "t")
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "analysis.notebooks",
        "--profile",
        "demo",
        "--analysis-dir",
        str(adir),
        "--fig-dir",
        str(fdir),
        "--cache-dir",
        str(tmp_path / "c"),
        "--only",
        "01_tsne",
        "05_benchmark",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    killed = False
    for line in proc.stdout:
        if "01_tsne.ipynb in" in line:  # the second notebook is now running: kill everything
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    assert killed
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "cached: 01_tsne.ipynb" in r.stdout and "05_benchmark.ipynb in" in r.stdout
    assert (fdir / "auroc_heatmap.png").is_file() and (tmp_path / "c" / "notebooks" / "05_benchmark.ipynb").is_file()
    leftovers = [p for p in [*tmp_path.rglob("*")] if ".tmp" in p.name]
    assert not leftovers, leftovers


def test_selected_grid_cells_equal_the_full_grid(tmp_path):
    """``extract.grodin_test_points: selected`` (full grid on validation rows, selected cells on the
    rest) gives the full grid's values and the same tuned metrics, ablations and validation sweeps."""
    import csv

    from analysis import benchmark, extract, train
    from ood_core.extraction.grid import full_points

    grid = {"odin_T": [1, 10, 100, 1000], "odin_eps": [0.0, 0.002, 0.004]}
    methods = ["odin", "grodin_s", "grodin_g", "grodin_sg"]
    out = {}
    for mode in ("grid", "selected"):
        (tmp_path / mode).mkdir()
        prof = tiny_profile(tmp_path / mode, grodin_test_points=mode, kl_allweights=False, **grid)
        args = stage_args(prof, tmp_path / mode)
        train.main(args)
        extract.main(args)
        benchmark.main([*args, "--methods", *methods])
        out[mode] = tmp_path / mode

    def rows(mode, name):
        with open(out[mode] / "fig" / name) as f:
            return list(csv.DictReader(f))

    for a, b in zip(rows("grid", "metrics.csv"), rows("selected", "metrics.csv"), strict=True):
        assert (a["method"], a["ood_set"], a["hyperparams"]) == (b["method"], b["ood_set"], b["hyperparams"])
        assert abs(float(a["auroc"]) - float(b["auroc"])) < 1e-9
    for a, b in zip(rows("grid", "ablation_grodin.csv"), rows("selected", "ablation_grodin.csv"), strict=True):
        assert (a["setting"], a["eps"], a["T"], a["auroc"]) == (b["setting"], b["eps"], b["T"], b["auroc"])
    sweeps = list(zip(rows("grid", "sweep_odin.csv"), rows("selected", "sweep_odin.csv"), strict=True))
    assert all(a["auroc_val"] == b["auroc_val"] for a, b in sweeps)
    assert all(b["auroc_test"] in ("", "nan", a["auroc_test"]) for a, b in sweeps)

    cache = {m: out[m] / "cache" / "analysis" / "arrays" for m in out}
    n_unselected = 0
    for f in sorted(cache["grid"].glob("*.npz")):
        full, sel = load_npz(f), load_npz(cache["selected"] / f.name)
        if "odin_s" not in full:
            continue
        mask = full_points(sel)
        val = load_npz(out["selected"] / "cache" / "analysis" / "splits.npz")[f"{f.stem}__val"]
        for key in ("odin_s", "grodin_sqnorm"):
            np.testing.assert_allclose(sel[key][mask], full[key][mask], rtol=1e-5)
            np.testing.assert_allclose(sel[key][..., val], full[key][..., val], rtol=1e-5)
            test_rows = np.setdiff1d(np.arange(full[key].shape[-1]), val)
            assert np.isnan(sel[key][~mask][:, test_rows]).all()
        n_unselected = int((~mask).sum())
    assert mask[0, 0], "the vanilla cell (eps 0, T 1) is always computed on every row"
    assert n_unselected > 0, "the tiny grid should leave some cells unselected (else nothing was tested)"

    arrays_path = cache["selected"] / "id_test.npz"
    before = arrays_path.stat().st_mtime_ns
    extract.main(stage_args(tmp_path / "selected" / "tiny.yaml", tmp_path / "selected"))  # cache hit: no rewrite
    assert arrays_path.stat().st_mtime_ns == before


def test_damaged_truncated_or_deleted_arrays_are_recomputed_saying_why(tmp_path, capsys):
    from analysis import extract, train
    from ood_core.cache import cached_npz, npz_key

    args = stage_args(tiny_profile(tmp_path), tmp_path)
    train.main(args)
    extract.main(args)
    path = tmp_path / "cache" / "analysis" / "arrays" / "digits_5to9.npz"
    key = npz_key(path)
    damages = {
        "overwrite": (lambda: _overwrite(path), "recomputing digits_5to9: arrays/digits_5to9.npz is damaged (bad CRC"),
        "truncate": (lambda: os.truncate(path, path.stat().st_size // 2), "recomputing digits_5to9: arrays/"),
        "delete": (path.unlink, "[extract] computing digits_5to9: arrays/digits_5to9.npz is missing"),
    }
    for damage, (do, said) in damages.items():
        do()
        capsys.readouterr()
        extract.main(args)
        out = capsys.readouterr().out
        assert said in out and "[extract] cached: id_test" in out, (damage, out)
        assert cached_npz(path, str(key))[0] is not None, f"{damage}: the file must be rebuilt intact"


def _overwrite(path: Path) -> None:
    """300 random bytes over the middle of ``path``, its mtime kept."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(np.random.default_rng(0).bytes(300))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_validation_sets_give_the_openood_protocol_beside_per_ood_val(tmp_path):
    """A profile with validation sets (data.validation) under ``grodin_test_points: selected``:
    they are extracted with the whole grid and never scored; id_test is tested on all its rows;
    ``openood`` (ID val vs the OOD validation set, one choice for every set) and ``per_ood_val`` (ID
    val vs each set's own validation rows) report on the same test rows, each in its own section of
    metrics.md and its own scores folder; the cells openood picks exist on every test row."""
    import csv
    import json

    from analysis import benchmark, extract, train
    from ood_core.analysis_cache import AnalysisCache
    from ood_core.extraction.grid import full_points, point_available
    from ood_core.reporting.paired_table import paired_from_cache

    prof = tiny_profile(tmp_path, grodin_test_points="selected", kl_allweights=False, activation_grads=False)
    cfg = yaml.safe_load(prof.read_text())
    # ID val / OOD val from the digits' training split (rows the test sets do not hold)
    cfg["data"]["validation"] = {
        "id": {"kind": "digits", "classes": [0, 1, 2, 3, 4], "split": "train", "rows": 120},
        "ood": {"val_digits": {"kind": "digits", "classes": [5, 6, 7, 8, 9], "split": "train", "rows": 100}},
    }
    cfg["benchmark"].update(protocol="openood", protocols=["openood", "per_ood_val"], methods=["msp", "odin", "knn"])
    prof.write_text(yaml.safe_dump(cfg))
    args = stage_args(prof, tmp_path)
    train.main(args)
    extract.main(args)
    benchmark.main(args)

    adir = tmp_path / "cache" / "analysis"
    cache = AnalysisCache(adir)
    assert cache.id_val_name == "id_val" and cache.val_ood_names == ["val_digits"]
    assert "id_val" not in cache.ood_names and "val_digits" not in cache.ood_names
    n_id = cache.n_rows("id_test")
    assert cache.split("id_test")[0].size == 0 and cache.split("id_test")[1].size == n_id  # all rows tested
    for v in ("id_val", "val_digits"):
        val, test = cache.split(v)
        assert test.size == 0 and val.size == cache.n_rows(v) and full_points(cache.arrays(v)).all()
    assert (cache.arrays("id_val")["y"] >= 0).all() and (cache.arrays("val_digits")["y"] == -1).all()

    with open(tmp_path / "fig" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["protocol"].split(" ")[0] for r in rows][: len(rows) // 2] == ["openood"] * (len(rows) // 2)
    by = {(r["protocol"].split(" ")[0], r["method"], r["ood_set"]): r for r in rows}
    sets = cache.ood_names
    for m in ("msp", "odin", "knn"):
        for o in sets:
            a, b = by[("openood", m, o)], by[("per_ood_val", m, o)]
            assert a["n_id"] == b["n_id"] == str(n_id) and a["n_ood"] == b["n_ood"]  # the same test rows
        assert len({by[("openood", m, o)]["hyperparams"] for o in sets}) == 1  # one choice for every set
    chosen = json.loads((tmp_path / "fig" / "chosen_hyperparams.json").read_text())
    odin = chosen["methods"]["odin"]["per_set"]
    assert {v["tuned_on"] for v in odin.values()} == {"val_digits"}
    for o in sets:  # the openood cell was computed on every test row (grid selection knows openood)
        p = odin[o]["params"]
        assert all(point_available(cache.arrays(d), p["eps"], p["T"]) for d in ("id_test", o))
    assert chosen["other_protocols"]["per_ood_val"]["odin"]["per_set"][sets[0]]["tuned_on"] == sets[0]

    md = (tmp_path / "fig" / "metrics.md").read_text()
    assert md.index("## Protocol `openood`") < md.index("## Protocol `per_ood_val`")
    assert "openood: tuned on id_val (120 rows) vs val_digits (100 rows); tested on id_test" in md
    assert AnalysisCache(adir).scores_protocol("id_test") == "openood"
    other = AnalysisCache(adir, scores_of="per_ood_val")
    assert other.scores_protocol(sets[0]) == "per_ood_val" and not (adir / "scores" / "openood").exists()
    assert not (adir / "scores" / "id_val.npz").exists()  # validation sets are never scored
    pair = [("msp", "knn")]
    for c in (AnalysisCache(adir), other):
        assert paired_from_cache(c, pair, n=10)[0]["protocol"] == c.scores_protocol("id_test")
