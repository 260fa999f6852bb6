"""Profiles (strict keys), cache keys and atomic writes, safe checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ood_core.cache import atomic_path, hash_config, load_npz, npz_key, save_npz
from ood_core.checkpoint import CheckpointError, load_checkpoint, load_state_dict_file, save_checkpoint
from ood_core.config import CONFIG_DIR, ConfigError, load_profile, odin_eps_grid


def test_every_shipped_profile_loads():
    for name in ("demo", "cifar10", "cifar10_torchvision", "imagenet"):
        cfg = load_profile(name)
        assert cfg["profile"] == name
        assert cfg["data"]["ood"]


def test_typo_key_is_rejected_with_its_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        (Path(__file__).parents[1] / "analysis/configs/demo.yaml").read_text().replace("  epochs:", "  epoch:")
    )
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'; allowed keys at this level: .*epochs"):
        load_profile(str(p))


@pytest.mark.parametrize(
    "validation, said",
    [
        (
            {"ood": {"val_noise": {"kind": "digits"}}},
            r"need an ID set and at least one OOD set; 'data.validation.id' is empty",
        ),
        ({"id": {"kind": "digits"}}, r"'data.validation.ood' is empty"),
        (
            {"id": {"kind": "digits"}, "ood": {"val_noise": {"n": 5}}},
            r"'data.validation.ood.val_noise' must be a dataset spec with a 'kind'",
        ),
        (
            {"id": {"kind": "digits"}, "ood": {"val_noise": "digits"}},
            r"'data.validation.ood.val_noise' must be a dataset spec",
        ),
        (
            {"id": {"kind": "digits"}, "ood": {"gaussian_noise": {"kind": "digits"}}},
            r"takes the name of another set \('gaussian_noise'\)",
        ),
        ({"id": "digits", "ood": {}}, r"'data.validation.id' must be a mapping"),
        (
            {"id": {"kind": "digits"}, "ood": {"v": {"kind": "npz", "openood_split": "val_tin", "rows": 5}}},
            r"'openood_split' and 'rows' both select rows",
        ),
    ],
)
def test_a_bad_validation_spec_is_one_line_naming_it(tmp_path, validation, said):
    raw = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    raw["data"]["validation"] = validation
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=said) as e:
        load_profile(str(p))
    assert "\n" not in str(e.value)


def test_validation_sets_are_extracted_beside_the_others():
    from analysis.datasets import all_specs

    raw = load_profile("demo")
    assert raw["data"]["validation"] == {"id": {}, "ood": {}} and "id_val" not in all_specs(raw)
    cfg = load_profile("cifar10_openood")
    assert list(all_specs(cfg))[-2:] == ["id_val", "val_tin"]
    assert cfg["benchmark"]["protocol"] == "openood" and cfg["benchmark"]["protocols"] == ["openood", "per_ood_val"]


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'; known profiles: .*demo"):
        load_profile("nope")


def test_odin_eps_grid_is_21_points_to_0004():
    g = odin_eps_grid(load_profile("cifar10_torchvision"))  # the papers' grid; demo uses an explicit sub-grid list
    assert odin_eps_grid(load_profile("demo")) == [0.0, 0.0008, 0.0016, 0.0024, 0.0032, 0.004]
    assert len(g) == 21 and g[0] == 0.0 and abs(g[-1] - 0.004) < 1e-12 and abs(g[1] - 0.0002) < 1e-12


def test_hash_config_is_order_independent_and_sensitive():
    assert hash_config({"a": 1, "b": 2}) == hash_config({"b": 2, "a": 1})
    assert hash_config({"a": 1}) != hash_config({"a": 2})


def test_save_npz_roundtrip_and_key(tmp_path):
    p = tmp_path / "x.npz"
    save_npz(p, {"a": np.arange(3)}, key="k1")
    assert npz_key(p) == "k1"
    assert set(load_npz(p)) == {"a"}
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_roundtrip_and_sha_mismatch(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = tmp_path / "m.pt"
    save_checkpoint(path, net.state_dict(), {"seed": 0})
    sd, meta = load_checkpoint(path)
    assert torch.equal(sd["weight"], net.weight.detach()) and meta["seed"] == 0
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"m\.pt: sha256 mismatch"):
        load_checkpoint(path)


def test_bench_scores_loads_only_a_checkpoint_with_its_sha256_record(tmp_path):
    """analysis/bench_scores.py goes through load_checkpoint: weights only, sha256 checked; a bare
    weights file without its record is refused, not loaded unchecked."""
    import argparse

    from analysis.bench_scores import load_model
    from ood_core.models import build_model

    net = build_model("small_cnn", num_classes=5)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    args = argparse.Namespace(model="small_cnn", seed=1, checkpoint=str(path))
    with pytest.raises(CheckpointError, match="metadata file w.pt.json is missing"):
        load_model(args, torch.device("cpu"))
    save_checkpoint(path, net.state_dict(), {"seed": 0})
    model, _ = load_model(args, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))


def test_benchmark_code_digest_covers_every_library_module_the_stage_imports():
    """The benchmark's 'cached' decision hashes its own files and every ood_core module they import
    (derived from the import statements): a changed selection rule or cost model reruns it."""
    from analysis import benchmark
    from analysis.stamps import imported_sources

    here = Path(benchmark.__file__).resolve()
    files = {
        f.relative_to(here.parents[1]).as_posix()
        for f in imported_sources(here, here.with_name("costs.py"), packages=("ood_core",))
    }
    assert {
        "analysis/benchmark.py",
        "analysis/costs.py",
        "ood_core/extraction/grid.py",
        "ood_core/extraction/grid_selection.py",
        "ood_core/cache.py",
        "ood_core/evaluation/tuning.py",
        "ood_core/evaluation/metrics.py",
        "ood_core/reporting/tables.py",
        "ood_core/reporting/reference.py",
        "ood_core/config.py",
        "ood_core/scores/memo.py",
        "ood_core/scores/lowdim.py",
    } <= files
    assert not any(f.startswith(("ood_core/grads/", "ood_core/data/", "analysis/common")) for f in files)
    assert len(benchmark._code_digest()) == 16


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="needs pickle code execution to load and was refused"):
        load_state_dict_file(path)


def test_nan_in_logits_or_features_is_a_clear_error():
    from ood_core import scores

    logits = np.array([[1.0, 2.0], [np.nan, 0.0]])
    with pytest.raises(FloatingPointError, match=r"score 'msp': input array 'logits' has 1 non-finite value\(s\)"):
        scores.compute("msp", {"logits": logits})
    h = np.array([[1.0, np.inf], [0.0, 1.0]])
    W, b = np.eye(2), np.zeros(2)
    with pytest.raises(FloatingPointError, match=r"score 'gradnorm': input array 'h' has 1 non-finite"):
        scores.compute("gradnorm", {"logits": np.zeros((2, 2)), "h": h, "W": W, "b": b})


@pytest.mark.parametrize(
    "section, key, value, said",
    [
        ("train", "epochs", 0, "'train.epochs' must be >= 1, got the number 0"),
        ("train", "epochs", -3, "'train.epochs' must be >= 1"),
        ("train", "batch_size", 0, "'train.batch_size' must be >= 1"),
        ("train", "lr", -0.05, "'train.lr' must be > 0"),
        ("train", "schedule", "step", "'train.schedule' must be one of cosine, onecycle"),
        ("extract", "batch_size", 0, "'extract.batch_size' must be >= 1"),
        ("lowdim", "chunk", 0, "'lowdim.chunk' must be >= 1"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_key(section, key, value, said):
    from ood_core.config import ConfigError, merge_settings

    with pytest.raises(ConfigError) as e:
        merge_settings({section: {key: value}}, "profile.yaml")
    assert said in str(e.value) and "\n" not in str(e.value)


def _overwrite_keeping_mtime(path: Path, at: int | None = None) -> None:
    """300 random bytes over a file (at ``at``, default its middle); its size and mtime stay."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2 if at is None else at)
        f.write(np.random.default_rng(0).bytes(300))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _some_arrays() -> dict[str, np.ndarray]:
    return {"h": np.random.default_rng(1).standard_normal((500, 16)).astype(np.float32), "y": np.arange(500)}


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "damage, why",
    [
        ("overwrite", "is damaged (bad CRC in h.npy)"),
        ("header", "is damaged (overwritten: bad member header in h.npy)"),
        ("truncate", "is damaged (truncated or overwritten: no zip directory at its end)"),
        ("delete", "is missing"),
    ],
)
def test_cached_npz_refuses_a_damaged_or_missing_file_saying_why(tmp_path, compress, damage, why):
    from ood_core.cache import DamagedFileError, cached_npz, zip_problem

    p = save_npz(tmp_path / "a.npz", _some_arrays(), key="k1", compress=compress)
    arrays, reason = cached_npz(p, "k1")
    assert reason == "" and arrays is not None and arrays["y"].tolist() == list(range(500))
    assert cached_npz(p, "k2") == (None, "was made from other inputs")
    if damage == "overwrite":
        _overwrite_keeping_mtime(p)
    elif damage == "header":
        _overwrite_keeping_mtime(p, at=0)
    elif damage == "truncate":
        os.truncate(p, p.stat().st_size - 100)
    else:
        p.unlink()
    assert cached_npz(p, "k1") == (None, why)
    assert zip_problem(p) == why.removeprefix("is damaged (").removesuffix(")").replace("is missing", "missing")
    with pytest.raises(FileNotFoundError if damage == "delete" else DamagedFileError):
        load_npz(p)


def test_load_npz_checks_every_members_crc(tmp_path):
    from ood_core.cache import DamagedFileError

    p = save_npz(tmp_path / "a.npz", _some_arrays(), key="k", compress=False)
    _overwrite_keeping_mtime(p)
    assert npz_key(p) == "k"  # the key member alone still reads
    with pytest.raises(DamagedFileError, match=r"a\.npz is damaged \(bad CRC in h\.npy\)"):
        load_npz(p)


def _stamps_context(tmp_path: Path):
    """A Context of the demo profile in tmp_path, with every file the extract stage must leave."""
    from analysis.common import Context
    from analysis.datasets import all_specs

    cfg = load_profile("demo")
    ctx = Context(
        cfg=cfg,
        profile="demo",
        cache_dir=tmp_path / "cache",
        analysis_dir=tmp_path / "cache" / "analysis",
        fig_dir=tmp_path / "fig",
        data_root=tmp_path / "data",
        device_name="cpu",
        force=False,
    )
    a = ctx.analysis_dir
    (a / "arrays").mkdir(parents=True)
    (a / "meta.json").write_text("{}")
    for f in ("head.npz", "splits.npz", *(f"arrays/{n}.npz" for n in all_specs(cfg))):
        save_npz(a / f, _some_arrays(), key="k")
    return ctx


@pytest.mark.parametrize("damage", ["overwrite", "delete", "reused"])
def test_stamp_does_not_call_a_stage_with_a_damaged_or_missing_output_cached(tmp_path, damage):
    from analysis import stamps

    ctx = _stamps_context(tmp_path)
    cmd = ["extract"]
    target = ctx.analysis_dir / "arrays" / "train.npz"
    # "reused": the stage reused the file (it was there before and is unchanged), so it is not among
    # what this run wrote; it must still count as an output
    before = stamps.snapshot(stamps.output_roots("extract", ctx))
    before = {p: v for p, v in before.items() if damage == "reused" or p != str(target)}
    stamps.record("extract", ctx, cmd, before, {}, loaded=[])
    assert stamps.stale_reason("extract", ctx, cmd) is None
    if damage == "overwrite":
        _overwrite_keeping_mtime(target)
        assert stamps.stale_reason("extract", ctx, cmd) == "arrays/train.npz is damaged (bad CRC in h.npy)"
    else:
        target.unlink()
        assert stamps.stale_reason("extract", ctx, cmd) == "arrays/train.npz is missing"
    assert not stamps.is_current("extract", ctx, cmd)


def test_recompute_line_names_the_file_and_why():
    from ood_core.extraction.store import recompute_line

    assert recompute_line("svhn", "is damaged (bad CRC in h.npy)", finished=True) == (
        "recomputing svhn: arrays/svhn.npz is damaged (bad CRC in h.npy)"
    )
    assert recompute_line("svhn", "is missing", finished=True) == "computing svhn: arrays/svhn.npz is missing"
    assert recompute_line("svhn", "is missing", finished=False) is None  # a first run says nothing
    assert recompute_line("svhn", "", finished=True) is None  # --force


def test_stage_log_is_appended_with_a_dated_header_and_written_at_once(tmp_path):
    import re
    import sys
    import threading
    import time

    from analysis.run import run_stage

    log, go = tmp_path / "logs" / "s.log", tmp_path / "go"
    # prints a line, then waits for `go`: the line must be in the log while the stage still runs
    code = f"import os, time\nprint('first', flush=True)\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"
    t = threading.Thread(target=run_stage, args=("s", [sys.executable, "-c", code], log))
    t.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and "first" not in (log.read_text() if log.is_file() else ""):
            time.sleep(0.05)
        assert "first" in log.read_text(), "the stage's output must reach its log while it runs"
    finally:
        go.touch()
        t.join(timeout=30)
    assert run_stage("s", [sys.executable, "-c", "print('second')"], log) == 0
    text = log.read_text()
    headers = re.findall(r"^===== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \$ .+$", text, re.M)
    assert len(headers) == 2 and text.index("first") < text.index("second"), text


def test_second_run_on_a_cache_dir_waits_for_the_lock_and_says_so(tmp_path):
    import io
    import threading
    import time

    from ood_core.cache import cache_lock

    events: list[str] = []
    held, out = threading.Event(), io.StringIO()

    def first():
        with cache_lock(tmp_path):
            events.append("first in")
            held.set()
            time.sleep(0.5)
            events.append("first out")

    def second():
        held.wait(10)
        with cache_lock(tmp_path, out=out):
            events.append("second in")

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert events == ["first in", "first out", "second in"]
    said = out.getvalue().strip().splitlines()
    assert len(said) == 1 and "in use by another run" in said[0] and "waiting" in said[0], said


def test_unknown_method_names_fail_when_the_profile_loads():
    """A typo in benchmark.methods / benchmark.paired is one line at load time, before any stage runs."""
    from ood_core.config import ConfigError, load_profile

    with pytest.raises(ConfigError, match=r"benchmark.methods names unknown method\(s\) \['knnn'\]"):
        load_profile("demo", {"benchmark": {"methods": ["msp", "knnn"]}})
    with pytest.raises(ConfigError, match=r"benchmark.paired names unknown method\(s\) \['grodn_g'\]"):
        load_profile("demo", {"benchmark": {"paired": [["knn", "grodn_g"]]}})
    assert load_profile("demo", {"benchmark": {"methods": ["msp", "knn"]}})["benchmark"]["methods"] == ["msp", "knn"]
