"""ood_core.analysis_cache.AnalysisCache: the one reader of an analysis directory (its checks and
one-line errors) and the writer of its scores; its users (benchmark, costs, analysis.score)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ood_core.analysis_cache import AnalysisCache, AnalysisCacheError, MissingSplitError
from ood_core.cache import save_npz

try:
    from fixtures_cache import ID_TEST, OOD, TRAIN, make_tiny_analysis_cache
except ImportError:  # pragma: no cover
    from tests.fixtures_cache import ID_TEST, OOD, TRAIN, make_tiny_analysis_cache

REPO = Path(__file__).resolve().parents[1]
NEAR = next(iter(OOD))


@pytest.fixture()
def adir(tmp_path) -> Path:
    return make_tiny_analysis_cache(tmp_path / "t")[0]


def _rewrite_splits(adir: Path, **changes: np.ndarray | None) -> None:
    with np.load(adir / "splits.npz") as z:
        sp = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            sp.pop(k)
        else:
            sp[k] = v
    np.savez(adir / "splits.npz", **sp)


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------ reading
def test_reader_roles_inputs_and_split(adir):
    cache = AnalysisCache(adir)
    assert (cache.train_name, cache.id_name, cache.ood_names) == (TRAIN, ID_TEST, list(OOD))
    assert cache.groups == OOD and cache.group(NEAR) == "near" and cache.group(ID_TEST) == "id"
    inp = cache.inputs(ID_TEST)
    np.testing.assert_array_equal(inp["W"], cache.head()["W"])
    assert set(cache.arrays(ID_TEST)) | {"W", "b"} == set(inp)
    val, test = cache.split(ID_TEST)
    assert val.dtype == test.dtype == np.int64 and not set(val) & set(test)
    assert cache.n_rows(ID_TEST) == len(cache.arrays(ID_TEST)["y"])


def test_reader_drops_the_cache_key_field(adir):
    a = dict(np.load(adir / "arrays" / f"{ID_TEST}.npz"))
    save_npz(adir / "arrays" / f"{ID_TEST}.npz", a, key="abc123")
    assert "_cache_key" not in AnalysisCache(adir).arrays(ID_TEST)


def test_id_dataset_from_meta_or_the_training_set_name(adir):
    cache = AnalysisCache(adir)
    cache.meta["train"] = "CIFAR-10_train"
    assert cache.id_dataset == "cifar10"
    cache.meta["id_dataset"] = "ImageNet"
    assert cache.id_dataset == "imagenet"


def test_missing_split_key_is_a_one_line_key_error_naming_the_file(adir):
    _rewrite_splits(adir, **{f"{NEAR}__test": None})
    with pytest.raises(MissingSplitError) as exc:
        AnalysisCache(adir).split(NEAR)
    msg = _one_line(exc.value)
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, AnalysisCacheError)
    assert str(adir / "splits.npz") in msg and f"'{NEAR}__test'" in msg and not msg.startswith("'")
    with np.load(adir / "scores" / f"{NEAR}.npz") as z:  # the stored scores' own index still serves
        np.testing.assert_array_equal(AnalysisCache(adir).test_index(NEAR), z["_test_idx"])
    (adir / "scores" / f"{NEAR}.npz").unlink()
    assert AnalysisCache(adir).test_index(NEAR) is None  # neither: None, as before
    AnalysisCache(adir).split(ID_TEST)  # the other sets are unaffected


def test_overlapping_split_is_refused(adir):
    _rewrite_splits(adir, **{f"{ID_TEST}__val": np.array([0, 1, 2]), f"{ID_TEST}__test": np.array([2, 3, 4])})
    with pytest.raises(AnalysisCacheError, match=r"overlap in 1 index\(es\) \(first: \[2\]\)") as exc:
        AnalysisCache(adir).split(ID_TEST)
    assert "splits.npz" in _one_line(exc.value) and ID_TEST in str(exc.value)


def test_split_outside_the_arrays_rows_is_refused(adir):
    n = len(np.load(adir / "arrays" / f"{NEAR}.npz")["y"])
    _rewrite_splits(adir, **{f"{NEAR}__test": np.array([0, n])})
    with pytest.raises(AnalysisCacheError, match=rf"'{NEAR}__test' has indices outside \[0, {n}\)") as exc:
        AnalysisCache(adir).split(NEAR)
    assert f"{NEAR}.npz has {n} rows" in _one_line(exc.value)


def test_split_of_floats_is_refused(adir):
    _rewrite_splits(adir, **{f"{NEAR}__val": np.array([0.0, 1.0])})
    with pytest.raises(AnalysisCacheError, match="1-D integer index array"):
        AnalysisCache(adir).split(NEAR)


def test_missing_files_name_the_stage_that_writes_them(adir):
    (adir / "arrays" / f"{NEAR}.npz").unlink()
    (adir / "head.npz").unlink()
    cache = AnalysisCache(adir)
    with pytest.raises(FileNotFoundError, match="extract stage") as exc:
        cache.arrays(NEAR)
    assert f"{NEAR}.npz" in _one_line(exc.value)
    with pytest.raises(FileNotFoundError, match="head.npz not found"):
        cache.inputs(ID_TEST)
    assert not cache.has(NEAR, "y") and not cache.has_head()


def test_missing_meta_field_names_meta_json(adir):
    (adir / "meta.json").write_text('{"train": "toy_train"}')
    with pytest.raises(AnalysisCacheError, match="meta.json has no 'id_test'"):
        AnalysisCache(adir).id_name


def test_user_error_turns_a_cache_error_into_one_line():
    from analysis.common import user_error

    assert user_error(MissingSplitError("splits.npz has no split for 'x'")) == "splits.npz has no split for 'x'"
    assert user_error(AnalysisCacheError("bad")) == "bad"


# ------------------------------------------------------------------------------------ writing
def test_write_scores_is_atomic_and_stores_the_test_index(adir):
    cache = AnalysisCache(adir)
    _, test = cache.split(NEAR)
    s = np.random.default_rng(0).random(len(test))  # float64, kept as scored
    old = cache.scores(NEAR)
    path = cache.write_scores(NEAR, {"m": s})
    assert path == adir / "scores" / f"{NEAR}.npz"
    assert cache.scores(NEAR).keys() == {"m"} and old.keys() != {"m"}  # memo refreshed
    with np.load(path) as z:
        assert z.files == ["_test_idx", "m"] and z["m"].dtype == np.float64
        np.testing.assert_array_equal(z["_test_idx"], test)
        np.testing.assert_array_equal(z["m"], s)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    np.testing.assert_array_equal(AnalysisCache(adir).test_index(NEAR), test)


def test_write_scores_refuses_a_bad_split_before_writing(adir):
    _rewrite_splits(adir, **{f"{NEAR}__val": np.array([0, 1]), f"{NEAR}__test": np.array([1, 2])})
    before = (adir / "scores" / f"{NEAR}.npz").read_bytes()
    with pytest.raises(AnalysisCacheError):
        AnalysisCache(adir).write_scores(NEAR, {"m": np.zeros(2)})
    assert (adir / "scores" / f"{NEAR}.npz").read_bytes() == before


# --------------------------------------------------------------------------------------- users
def test_benchmark_reads_through_the_cache(adir):
    from ood_core.evaluation.benchmark import BenchmarkData

    cache = AnalysisCache(adir)
    data = BenchmarkData.from_cache(cache)
    assert data.ood_names == cache.ood_names and data.groups == cache.groups
    for name in [ID_TEST, *OOD]:
        val, test = cache.split(name)
        np.testing.assert_array_equal(data.splits[name].val, val)
        np.testing.assert_array_equal(data.splits[name].test, test)
    assert set(data.train) == set(cache.inputs(TRAIN))


def test_benchmark_cli_reports_a_bad_split_in_one_line(adir, tmp_path):
    _rewrite_splits(adir, **{f"{NEAR}__val": np.array([0, 1]), f"{NEAR}__test": np.array([1, 2])})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.benchmark",
            "--profile",
            "demo",
            "--analysis-dir",
            str(adir),
            "--fig-dir",
            str(tmp_path / "fig"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--methods",
            "msp",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith("error: ") and "splits.npz" in lines[-1] and "overlap" in lines[-1], r.stderr


def test_score_cli_reads_arrays_and_head_through_the_cache(adir, tmp_path):
    from analysis import score

    out = tmp_path / "s.npz"
    assert (
        score.main(
            [
                "--arrays",
                str(adir / "arrays"),
                "--train",
                TRAIN,
                "--eval",
                ID_TEST,
                "--scores",
                "msp",
                "energy",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with np.load(out) as z:
        assert {"msp/" + ID_TEST, "energy/" + ID_TEST} <= set(z.files)
    with pytest.raises(FileNotFoundError, match="nosuch.npz not found"):
        score.main(
            [
                "--arrays",
                str(adir / "arrays"),
                "--train",
                TRAIN,
                "--eval",
                "nosuch",
                "--scores",
                "msp",
                "--out",
                str(out),
            ]
        )
    with pytest.raises(SystemExit, match="head file not found"):
        score.main(
            [
                "--arrays",
                str(adir / "arrays"),
                "--train",
                TRAIN,
                "--eval",
                ID_TEST,
                "--scores",
                "msp",
                "--head",
                str(tmp_path / "none.npz"),
                "--out",
                str(out),
            ]
        )


def _damage(path: Path, how: str) -> None:
    """300 random bytes over the middle of a file, or its last 100 bytes cut off (mtime kept)."""
    st = path.stat()
    with open(path, "r+b") as f:
        if how == "overwrite":
            f.seek(st.st_size // 2)
            f.write(np.random.default_rng(0).bytes(300))
        else:
            f.truncate(st.st_size - 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_damaged_arrays_file_is_one_line_naming_it_and_its_rebuild_command(adir, how):
    from analysis.common import user_error

    path = adir / "arrays" / f"{ID_TEST}.npz"
    _damage(path, how)
    with pytest.raises(AnalysisCacheError) as e:
        AnalysisCache(adir).arrays(ID_TEST)
    line = _one_line(e.value)
    assert str(path) in line and "is damaged" in line and "python -m analysis.extract" in line, line
    assert user_error(e.value) == str(e.value)


def test_benchmark_outputs_with_a_damaged_or_missing_scores_file_are_not_reused(tmp_path):
    from analysis.benchmark import outputs_problem

    adir, fdir = make_tiny_analysis_cache(tmp_path / "t")
    assert outputs_problem(adir, fdir) is None
    _damage(adir / "scores" / f"{NEAR}.npz", "truncate")
    assert outputs_problem(adir, fdir) == (
        f"scores/{NEAR}.npz is damaged (truncated or overwritten: no zip directory at its end)"
    )
    (adir / "scores" / f"{NEAR}.npz").unlink()
    assert outputs_problem(adir, fdir) == f"scores/{NEAR}.npz is missing"
    (fdir / "metrics.csv").unlink()
    assert outputs_problem(adir, fdir) == "metrics.csv is missing"
