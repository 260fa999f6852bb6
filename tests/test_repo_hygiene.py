"""The checkout stays clean and the README speaks of the study.

* What a run writes is git-ignored (``git check-ignore``), except the study's committed results
  (``figures/cifar10/``, ``figures/bench/``); the demo's outputs are not tracked.
* slow: ``./run_all.sh`` on a (tiny) profile in a fresh copy of this working tree leaves
  ``git status --porcelain`` empty.
* The README's first screen gives the two commands, names no build-time infrastructure, and has the
  placeholder for the CIFAR-10 results.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")

# what a run of profile `demo` (and a custom profile) writes, by stage; and tool/test by-products
WRITTEN = [
    "figures/demo/metrics.csv",
    "figures/demo/metrics.md",
    "figures/demo/.benchmark_stamp.json",
    "figures/demo/ablation_grodin.tex",
    "figures/demo/sweep_odin.csv",
    "figures/demo/reference.md",
    "figures/demo/auroc_heatmap.png",
    "figures/demo/auroc_heatmap.pdf",
    "figures/demo/igoe_family_table.md",
    "figures/my_profile/metrics.csv",
    "figures/cifar10_full/metrics.csv",
    "cache/demo/model/model.pt",
    "cache/demo/analysis/meta.json",
    "cache/demo/logs/train.log",
    "cache/demo/runs/train.json",
    "cache/demo/notebooks/01_tsne.ipynb",
    "cache/demo/scratch/auroc_heatmap.png",
    "notebooks/.ipynb_checkpoints/01_tsne-checkpoint.ipynb",
    ".venv/bin/python",
    ".pytest_cache/v/cache/lastfailed",
    ".mypy_cache/3.10/cache.db",
    "tests/__pycache__/conftest.cpython-311.pyc",
    "ood_core.egg-info/PKG-INFO",
    "build/lib/ood_core/__init__.py",
    "dist/ood_core-0.1.0-py3-none-any.whl",
]
# committed: must never be ignored
KEPT = [
    "figures/cifar10/metrics.csv",
    "figures/cifar10/auroc_heatmap.png",
    "figures/bench/cpu_small_cnn/bench_scores.md",
    "notebooks/01_tsne.ipynb",
    "analysis/configs/demo.yaml",
    "README.md",
]


def _git(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([GIT, *args], cwd=cwd, capture_output=True, text=True, check=check)


def _need_git_checkout() -> None:
    if GIT is None:
        pytest.skip("git not installed")
    if _git("rev-parse", "--show-toplevel", check=False).stdout.strip() != str(REPO):
        pytest.skip(f"{REPO} is not the top of a git checkout")


def _ignored(path: str) -> bool:
    """`git check-ignore` of one path (one at a time: a path under a symlink, e.g. a linked .venv,
    is an error for git, and would void the answers for the other paths)."""
    r = _git("check-ignore", "-q", "--no-index", path, check=False)
    if r.returncode == 128 and "symbolic link" in r.stderr:  # under a linked folder: git sees only the link
        link = next(q for q in reversed(Path(path).parents) if (REPO / q).is_symlink())
        return _ignored(str(link))
    assert r.returncode in (0, 1), f"git check-ignore {path}: {r.stderr}"
    return r.returncode == 0


def test_run_outputs_are_ignored_and_committed_results_are_not():
    _need_git_checkout()
    not_ignored = [p for p in WRITTEN if not _ignored(p)]
    assert not not_ignored, f"written by a run but not git-ignored: {not_ignored}"
    ignored = [p for p in KEPT if _ignored(p)]
    assert not ignored, f"committed results must not be ignored: {ignored}"


def test_demo_outputs_are_not_tracked():
    """The demo's figures are regenerated (and move with the CPU's kernels), never committed."""
    _need_git_checkout()
    tracked = _git("ls-files", "--", "figures/demo", "cache").stdout.split()
    assert not tracked, f"tracked outputs of a run: {tracked[:5]}{' ...' if len(tracked) > 5 else ''}"


def _copy_working_tree(dst: Path) -> None:
    """A fresh repository holding this working tree's files (tracked and untracked-but-not-ignored)."""
    files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for args in (("init", "-q"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")):
        _git(*args, cwd=dst)


@pytest.mark.slow
def test_run_all_leaves_a_fresh_checkout_clean(tmp_path):
    """./run_all.sh (every stage, notebooks included) in a fresh copy of this working tree, on the
    test suite's tiny profile (a custom profile: outputs in figures/tiny/), then `git status`."""
    _need_git_checkout()
    pytest.importorskip("papermill")
    try:
        from test_pipeline import tiny_profile
    except ImportError:  # pragma: no cover
        from tests.test_pipeline import tiny_profile

    clone = tmp_path / "clone"
    clone.mkdir()
    _copy_working_tree(clone)
    prof = tiny_profile(tmp_path)  # outside the clone, as a user's own config would be
    cfg = yaml.safe_load(prof.read_text())
    cfg.setdefault("notebooks", {}).setdefault("params", {})["01_tsne"] = {
        "n_iter": 250,
        "early_exaggeration_iter": 100,
    }
    prof.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OOD_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run(
        ["./run_all.sh", "--profile", str(prof), "--device", "cpu"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert any((clone / "figures").glob("*/metrics.csv")), "the run wrote no figures/<profile>/metrics.csv"
    status = _git("status", "--porcelain", "--untracked-files=all", cwd=clone).stdout
    assert status == "", f"the run dirtied the checkout:\n{status}"


# ------------------------------------------------------------------------------------------------
# README
# ------------------------------------------------------------------------------------------------
README = (REPO / "README.md").read_text()


def test_readme_first_screen_gives_exactly_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    blocks = re.findall(r"```[a-z]*\n(.*?)```", first_screen, flags=re.S)
    commands = [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.split("#")[0].strip()]
    assert commands == ["./run_all.sh", "./run_tests.sh"], commands


def test_readme_speaks_of_the_study_not_of_where_it_was_built():
    for gone in (
        "shared/seeds",
        "shared/reference",
        "[mem]",
        "device_steps",
        "transfer.py",
        "gpu_runbook",
        "this workplace",
        "sessions that worked",
    ):
        assert gone not in README, f"README mentions {gone!r}"
    for word in ("lent", "borrowed"):
        assert not re.search(rf"\b{word}\b", README), f"README mentions who was {word} a machine"
    for path in ("docs/gpu_runbook.md", "analysis/device_steps.sh", "analysis/transfer.py"):
        assert not (REPO / path).exists(), f"{path} is still there"
    assert (REPO / "analysis" / "bench_scores.py").is_file()
    for needed in ("--data-root", "data.root", "OOD_SHARED_DATA"):
        assert needed in README, f"README does not say how the data root is set ({needed})"


def test_readme_has_the_cifar10_results_section_before_the_demo_results():
    heads = [line for line in README.splitlines() if line.startswith("## ")]
    assert "## Results: CIFAR-10 / ResNet-18" in heads, heads
    results = [h for h in heads if h.startswith("## Results")]
    assert results[0] == "## Results: CIFAR-10 / ResNet-18", results
