"""What a user sees when something is wrong (issue 15, items 3-6): one ``error: ...`` line and a
non-zero exit for every expected error, a traceback only with --debug, a quiet Ctrl-C, checkpoints that
are repaired or explained, profiles named after their files, and reruns that skip cached stages."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ood_core.config import ConfigError, load_profile

try:
    from test_pipeline import stage_args, tiny_profile
except ImportError:  # pragma: no cover
    from tests.test_pipeline import stage_args, tiny_profile

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "analysis/configs/demo.yaml"


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit; stderr is at most two lines, the last one 'error: ...' holding every needle."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def demo_variant(tmp_path: Path, old: str, new: str, name: str = "variant") -> Path:
    text = DEMO.read_text()
    assert old in text
    p = tmp_path / f"{name}.yaml"
    p.write_text(text.replace(old, new))
    return p


def run_args(tmp_path: Path) -> list[str]:
    return ["--cache-dir", str(tmp_path / "cache"), "--fig-dir", str(tmp_path / "fig")]


# ----------------------------------------------------------------------------- item 3: config errors
def test_unknown_profile_is_one_line(tmp_path):
    r = cli("analysis.run", "--profile", "nosuch", *run_args(tmp_path))
    assert_one_error_line(r, "unknown profile 'nosuch'", "demo")


def test_typo_key_is_one_line(tmp_path):
    p = demo_variant(tmp_path, "  epochs:", "  epoch:")
    r = cli("analysis.run", "--profile", str(p), *run_args(tmp_path))
    assert_one_error_line(r, str(p), "unknown key 'train.epoch'", "epochs")


def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    p = demo_variant(tmp_path, "seed: 0", "seed: [0")
    r = cli("analysis.run", "--profile", str(p), *run_args(tmp_path))
    assert_one_error_line(r, f"{p}:", "not valid YAML")


def test_wrong_value_type_is_one_line(tmp_path):
    p = demo_variant(tmp_path, "batch_size: 64", 'batch_size: "64"')
    r = cli("analysis.run", "--profile", str(p), *run_args(tmp_path))
    assert_one_error_line(r, str(p), "'train.batch_size' must be an integer", "'64'")


def test_debug_shows_the_traceback(tmp_path):
    r = cli("analysis.run", "--profile", "nosuch", "--debug", *run_args(tmp_path))
    assert r.returncode != 0 and "Traceback" in r.stderr and "unknown profile 'nosuch'" in r.stderr


def test_bad_command_line_is_one_line(tmp_path):
    r = cli("analysis.run", "--stages", "nosuch", *run_args(tmp_path))
    assert_one_error_line(r, "--stages", "invalid choice: 'nosuch'")
    r = cli("analysis.train", "--no-such-option")
    assert_one_error_line(r, "unrecognized arguments: --no-such-option")


def test_unknown_score_name_on_the_command_line_is_one_line(tmp_path):
    r = cli(
        "analysis.score",
        "--arrays",
        str(tmp_path),
        "--train",
        "train",
        "--eval",
        "id_test",
        "--out",
        str(tmp_path / "s.npz"),
        "--scores",
        "msp",
        "nosuch",
    )
    assert_one_error_line(r, "unknown score 'nosuch'", "msp")


def test_unknown_benchmark_method_is_one_line(tmp_path):
    try:
        from fixtures_cache import make_tiny_analysis_cache
    except ImportError:  # pragma: no cover
        from tests.fixtures_cache import make_tiny_analysis_cache

    adir, _ = make_tiny_analysis_cache(tmp_path / "t")
    r = cli(
        "analysis.benchmark",
        "--profile",
        "demo",
        "--analysis-dir",
        str(adir),
        "--methods",
        "msp",
        "nosuch",
        *run_args(tmp_path),
    )
    assert_one_error_line(r, "unknown score 'nosuch'", "--methods")


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda c: c["model"].update(name="resnet19"), ("unknown model 'resnet19'", "model.name")),
        (lambda c: c["data"]["train"].update(kind="digitz"), ("unknown dataset kind 'digitz'", "'kind'")),
        (
            lambda c: c["data"]["train"].update(clases=[0, 1]),
            ("dataset 'train'", "'clases'", "it takes: classes, split"),
        ),
    ],
    ids=["model-name", "dataset-kind", "dataset-option"],
)
def test_wrong_names_in_a_profile_are_one_line(tmp_path, edit, needles):
    cfg = yaml.safe_load(tiny_profile(tmp_path).read_text())
    edit(cfg)
    prof = tmp_path / "wrong.yaml"
    prof.write_text(yaml.safe_dump(cfg))
    assert_one_error_line(cli("analysis.train", *stage_args(prof, tmp_path)), *needles)


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("seed: 0", "seed: 0.5", "'seed' must be an integer (default: 0), got the number 0.5"),
        ("threads: 1 ", "threads: [1] ", "'threads' must be an integer or null, got a list"),
        ("augment: shift", "augment: 3", "'train.augment' must be a string"),
        ("  lr: 0.05", "  lr: fast", "'train.lr' must be a number"),
        ("  enabled: true", "  enabled: 1", "'lowdim.enabled' must be true or false (default: true), got the number 1"),
        (
            "odin_T: [1, 5,",
            "odin_T: [one, 5,",
            "every element of 'extract.odin_T' must be a number, got the string 'one'",
        ),
        ("mean: [0.305]", "mean: 0.305", "'data.preprocessing.mean' must be a list"),
    ],
)
def test_config_values_are_type_checked(tmp_path, old, new, message):
    with pytest.raises(ConfigError) as e:
        load_profile(str(demo_variant(tmp_path, old, new)))
    assert message in str(e.value) and "variant.yaml" in str(e.value)


def test_type_check_keeps_what_was_allowed(tmp_path):
    """Ints where floats are expected, null for None-able keys, a list of prefixes for lowdim.params."""
    p = demo_variant(tmp_path, "  lr: 0.05", "  lr: 1\n  label_smoothing: 0")
    assert load_profile(str(p))["train"]["lr"] == 1
    p = demo_variant(tmp_path, "threads: 1 ", "threads: null ")
    assert load_profile(str(p))["threads"] is None
    p = demo_variant(tmp_path, "  params: all", "  params: [head]")
    assert load_profile(str(p))["lowdim"]["params"] == ["head"]
    p = demo_variant(tmp_path, "notebooks:\n  params: {}", "notebooks:")
    assert load_profile(str(p))["notebooks"] == {"run": True, "params": {}}
    for name in ("demo", "cifar10", "cifar10_full", "cifar10_torchvision", "imagenet"):
        load_profile(name)


# ------------------------------------------------------------------------- item 3: data, disk, Ctrl-C
def test_labels_outside_num_classes_are_refused_by_the_train_stage(tmp_path):
    from analysis import train
    from ood_core.data import DatasetError

    cfg = yaml.safe_load(tiny_profile(tmp_path).read_text())
    cfg["model"]["kwargs"]["num_classes"] = 3  # the digits 0..4 have labels 3 and 4
    prof = tmp_path / "three.yaml"
    prof.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DatasetError, match=r"dataset 'train'.*labels must be in 0..2.*label [34] at row"):
        train.main(stage_args(prof, tmp_path))


@pytest.mark.parametrize("code,word", [(errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only")])
def test_full_or_read_only_disk_is_one_line(capsys, code, word):
    from analysis.common import main_guard

    def write():
        raise OSError(code, os.strerror(code), "/somewhere/cache/demo/analysis/meta.json")

    with pytest.raises(SystemExit) as e:
        main_guard(write)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write /somewhere/cache/demo/analysis/meta.json")
    assert word in err[0] and "--cache-dir" in err[0]


def test_ctrl_c_in_a_stage_is_one_line(capsys, monkeypatch):
    from analysis.common import CHILD_ENV, main_guard

    monkeypatch.delenv(CHILD_ENV, raising=False)
    previous = signal.getsignal(signal.SIGINT)

    def interrupted():
        raise KeyboardInterrupt

    try:
        with pytest.raises(SystemExit) as e:
            main_guard(interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert e.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["interrupted: run the same command again to resume (finished work is kept)"]


@pytest.mark.slow
def test_ctrl_c_of_a_run_is_quiet_and_resumes(tmp_path):
    prof = tiny_profile(tmp_path)
    cmd = [sys.executable, "-m", "analysis.run", *stage_args(prof, tmp_path), "--stages", "train", "extract"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the run starts with SIGINT's default action even when the suite itself runs as a background job
    # of a non-interactive shell (which starts it with SIGINT ignored, so the signal never arrives)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("== stage extract"):
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert last == "interrupted: run the same command again to resume (finished work is kept)"
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "== stage train: cached" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cpu_fallback_warning_appears_once_as_one_line(tmp_path):
    cfg = yaml.safe_load(tiny_profile(tmp_path).read_text())
    cfg["device"] = "cuda"
    prof = tmp_path / "cudaask.yaml"
    prof.write_text(yaml.safe_dump(cfg))
    r = cli("analysis.run", "--profile", str(prof), *run_args(tmp_path), "--stages", "train")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.replace("\r", "\n").splitlines()
    warned = [ln for ln in lines if "no GPU is available" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "falling back to CPU" in warned[0]
    assert "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr


# --------------------------------------------------------------------------- item 4: recovery
def test_corrupt_trained_checkpoint_is_retrained_not_cached(tmp_path, capsys):
    from analysis import extract, train
    from ood_core.checkpoint import CheckpointError, load_checkpoint

    args = stage_args(tiny_profile(tmp_path), tmp_path)
    path = train.main(args) or tmp_path / "cache" / "model" / "model.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 mismatch.*retrain it: python -m analysis.train --profile "):
        extract.main(args)
    capsys.readouterr()
    train.main(args)
    out = capsys.readouterr().out
    assert "[train] cached" not in out and "retraining" in out and "sha256" in out
    load_checkpoint(path)  # sound again


def test_missing_profile_checkpoint_says_where_to_put_which_file(tmp_path):
    from analysis import train
    from ood_core.checkpoint import CheckpointError

    cfg = yaml.safe_load((REPO / "analysis/configs/imagenet.yaml").read_text())
    cfg["model"]["checkpoint"] = str(tmp_path / "weights" / "resnet50.pth")
    prof = tmp_path / "mynet.yaml"
    prof.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError) as e:
        train.main(["--profile", str(prof), *run_args(tmp_path), "--device", "cpu"])
    msg = str(e.value)
    assert str(prof) in msg and "model.checkpoint" in msg and "IMAGENET1K_V1" in msg
    assert f"at {tmp_path / 'weights' / 'resnet50.pth'}" in msg


@pytest.mark.skipif((REPO / "checkpoints/resnet50_imagenet1k_v1.pth").exists(), reason="the weights are there")
def test_imagenet_profile_without_its_weights_is_one_line(tmp_path):
    r = cli("analysis.run", "--profile", "imagenet", *run_args(tmp_path), "--device", "cpu")
    assert_one_error_line(r, "checkpoints/resnet50_imagenet1k_v1.pth", "download.pytorch.org", "IMAGENET1K_V1")


def test_copied_config_is_named_after_its_file_not_its_profile_key(tmp_path):
    from analysis.common import add_common_args, make_context

    copy = tmp_path / "mycopy.yaml"
    copy.write_text(DEMO.read_text())  # still says "profile: demo"
    assert "profile: demo" in copy.read_text()
    assert load_profile(str(copy))["profile"] == "mycopy"
    ctx = make_context(add_common_args(argparse.ArgumentParser()).parse_args(["--profile", str(copy)]))
    assert ctx.profile == "mycopy"
    assert (
        ctx.cache_dir == (REPO / "cache" / "mycopy").resolve()
        and ctx.fig_dir == (REPO / "figures" / "mycopy").resolve()
    )


# ------------------------------------------------------------------- item 6: cached stages skipped
@pytest.mark.slow
def test_rerun_skips_cached_stages_and_reruns_what_changed(tmp_path):
    prof = tiny_profile(tmp_path)
    args = ["analysis.run", *stage_args(prof, tmp_path), "--stages", "train", "extract", "benchmark"]
    first = cli(*args, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "cached: none" in first.stdout

    second = cli(*args, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    for stage in ("train", "extract", "benchmark"):
        assert f"== stage {stage}: cached" in second.stdout
    assert "Stages run: none; cached: train, extract, benchmark" in second.stdout

    (tmp_path / "fig" / "metrics.csv").unlink()  # a missing output reruns its stage only
    third = cli(*args, timeout=600)
    assert "== stage extract: cached" in third.stdout and "== stage benchmark ==" in third.stdout
    assert (tmp_path / "fig" / "metrics.csv").is_file()

    cfg = yaml.safe_load(prof.read_text())  # a changed config reruns the stages; their own caches
    cfg["benchmark"]["bootstrap"] = 5  # keep what the change does not touch
    prof.write_text(yaml.safe_dump(cfg))
    fourth = cli(*args, timeout=600)
    assert "[train] cached" in fourth.stdout and "[extract] cached: id_test" in fourth.stdout
    assert "== stage benchmark ==" in fourth.stdout and "[benchmark] cached" not in fourth.stdout

    model = tmp_path / "cache" / "model" / "model.pt"  # a corrupted checkpoint is retrained
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    fifth = cli(*args, timeout=600)
    assert fifth.returncode == 0, fifth.stderr[-2000:]
    assert "== stage train ==" in fifth.stdout and "[train] retraining" in fifth.stdout


def test_cpu_estimate_is_stated_up_front_on_a_cpu():
    from analysis.run import cpu_estimate_line
    from ood_core.config import load_profile

    cfg = load_profile("cifar10")
    line = cpu_estimate_line(cfg, "cpu", ["train", "extract", "benchmark", "notebooks"])
    assert line is not None and cfg["cpu_estimate"] in line
    assert cpu_estimate_line(cfg, "cuda", ["extract"]) is None
    assert cpu_estimate_line(cfg, "cpu", ["notebooks"]) is None
    assert cpu_estimate_line(load_profile("demo"), "cpu", ["extract"]) is None
