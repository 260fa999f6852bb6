"""Extraction on several processes (torch.distributed, gloo on the CPU) equals one process.

Per-sample arrays are computed on the same whole batches as one process, so they are bit-identical;
the subspace fits sum over samples in another order across ranks, so Wu et al.'s bases (and the
low-dim arrays projected on them) agree to float rounding only: stated and tested below."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ood_core.extraction.distributed import Ranks

REPO = Path(__file__).resolve().parents[1]

# Measured (2 gloo ranks vs 1 process, this 2-core CPU): on the demo profile every non-low-dim
# array was bit-identical, the low-dim arrays differed by at most 1.2e-8 of their largest value, and
# all 175 metrics.csv rows were identical. The bounds below leave room for other machines.
LOWDIM_RTOL = 1e-4  # of the array's largest absolute value
LOWDIM_AUROC_TOL = 2e-3  # absolute AUROC difference allowed for scores built on the low-dim arrays


@pytest.mark.parametrize("n,bs,world", [(10, 3, 2), (9, 3, 2), (7, 4, 3), (2, 4, 3), (100, 7, 4), (0, 5, 2)])
def test_batch_shard_partitions_whole_batches(n, bs, world):
    shards = [Ranks(r, world).batch_shard(n, bs) for r in range(world)]
    joined = np.concatenate(shards)
    assert joined.tolist() == list(range(n)), "shards joined in rank order are every row, in order"
    for s in shards:
        if len(s):
            assert s[0] % bs == 0, "a shard starts at a batch boundary"
            assert (len(s) % bs == 0) or s[-1] == n - 1, "only the last shard may end in a partial batch"


def test_join_rows_follows_the_grid_layout():
    from ood_core.extraction.orchestrator import join_rows

    a = {"h": np.ones((2, 3)), "odin_s": np.zeros((2, 1, 2)), "odin_T": np.array([1.0])}
    b = {"h": 2 * np.ones((1, 3)), "odin_s": np.ones((2, 1, 1)), "odin_T": np.array([1.0])}
    j = join_rows([a, {}, b])
    assert j["h"].shape == (3, 3) and j["h"][2, 0] == 2
    assert j["odin_s"].shape == (2, 1, 3) and j["odin_s"][0, 0].tolist() == [0, 0, 1]
    assert j["odin_T"].tolist() == [1.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model() -> torch.nn.Module:
    from ood_core.models import SmallCNN

    torch.manual_seed(0)
    return SmallCNN(num_classes=3, in_channels=1, width=4).double().eval()


def _fits(ranks: Ranks, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    from ood_core.grads.lowdim import class_mean_subspace, gradient_stats, pca_subspace

    model = _tiny_model()
    rows = torch.as_tensor(ranks.batch_shard(len(x), 5))
    xs, ys = x[rows], y[rows]

    def batches():
        return [(xs[i : i + 5], ys[i : i + 5]) for i in range(0, len(xs), 5)]

    stats = gradient_stats(model, batches(), chunk=2, ranks=ranks)
    return {
        "mean": stats[0],
        "scale": stats[1],
        "pca": pca_subspace(model, batches, 4, 2, stats, seed=0, chunk=2, ranks=ranks),
        "avg": class_mean_subspace(model, batches(), 3, stats, chunk=2, ranks=ranks),
    }


def _worker(rank: int, world: int, port: int, x, y, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_fits(Ranks(rank, world), x, y), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_subspace_fits_reduce_across_ranks(tmp_path):
    """Whitening moments, randomized SVD and class means on 2 gloo ranks = one process (float64)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 1, 8, 8, generator=g, dtype=torch.float64)  # 5 batches of 5: ranks get 3 and 2
    y = torch.arange(23) % 3
    one = _fits(Ranks(), x, y)
    mp.spawn(_worker, args=(2, _free_port(), x, y, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for k, v in one.items():
            torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12, msg=f"{k} on rank {r}")


# ------------------------------------------------------------------------------- end to end
TORCHRUN_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _torchrun_cmd(args: list[str]) -> list[str]:
    """2 CPU ranks of the extract stage on this machine (torchrun --standalone)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "analysis.extract", *args]  # fmt: skip


def _torchrun(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **TORCHRUN_ENV}
    return subprocess.run(_torchrun_cmd(args), cwd=REPO, env=env, capture_output=True, text=True, **kw)


def _arrays(root: Path) -> dict[str, dict[str, np.ndarray]]:
    from ood_core.cache import load_npz

    d = root / "cache" / "analysis"
    out = {f"arrays/{p.name}": load_npz(p) for p in sorted((d / "arrays").glob("*.npz"))}
    out["head.npz"], out["splits.npz"] = load_npz(d / "head.npz"), load_npz(d / "splits.npz")
    return out


@pytest.mark.slow
def test_torchrun_extract_equals_one_process(tmp_path):
    """2 gloo ranks on the tiny demo profile: every per-sample array bit-identical, the low-dim
    arrays within LOWDIM_RTOL, the benchmark's rows identical (low-dim AUROC within LOWDIM_AUROC_TOL);
    a killed launch leaves no half-written file and its rerun completes."""
    import csv
    import json

    from test_pipeline import run_cli, stage_args, tiny_profile

    prof = tiny_profile(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    r = run_cli(["analysis.run", *stage_args(prof, one), "--stages", "train", "extract", "benchmark"], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    shutil.copytree(one / "cache" / "model", two / "cache" / "model")
    r = _torchrun(stage_args(prof, two), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not list((two / "cache").rglob("*.tmp*")), "no temporary file left"
    assert not list((two / "cache" / "analysis" / "parts").glob("*.npz")), "joined shards are removed"

    a, b = _arrays(one), _arrays(two)
    assert a.keys() == b.keys()
    for f in a:
        assert a[f].keys() == b[f].keys(), f
        for k in a[f]:
            if k.startswith("lowdim_"):
                err = np.abs(a[f][k] - b[f][k]).max() / np.abs(a[f][k]).max()
                assert err <= LOWDIM_RTOL, f"{f}:{k} differs by {err:.2e} of its largest value"
            else:
                assert np.array_equal(a[f][k], b[f][k], equal_nan=True), f"{f}:{k} differs"
    meta = [json.loads((d / "cache" / "analysis" / "meta.json").read_text()) for d in (one, two)]
    assert meta[1].pop("ranks") == 2 and meta[0] == meta[1]

    r = run_cli(["analysis.benchmark", *stage_args(prof, two)], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [list(csv.DictReader(open(d / "fig" / "metrics.csv"))) for d in (one, two)]
    for x, y in zip(*rows, strict=True):
        assert (x["method"], x["ood_set"]) == (y["method"], y["ood_set"])
        if x["family"] in ("lowdim", "ensemble"):
            assert abs(float(x["auroc"]) - float(y["auroc"])) <= LOWDIM_AUROC_TOL, (x["method"], x["ood_set"])
        else:
            assert x == y, (x["method"], x["ood_set"])


@pytest.mark.slow
def test_killed_rank_leaves_no_half_written_cache_and_rerun_completes(tmp_path):
    """SIGKILL one rank once the first shard is on disk: no temporary or half-written file stays,
    and the same command run again completes, reusing the finished shards."""
    import signal
    import time

    from test_pipeline import run_cli, stage_args, tiny_profile

    from ood_core.cache import npz_key

    prof = tiny_profile(tmp_path)
    r = run_cli(["analysis.train", *stage_args(prof, tmp_path)], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {**os.environ, **TORCHRUN_ENV}
    cmd = _torchrun_cmd(stage_args(prof, tmp_path))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    parts = tmp_path / "cache" / "analysis" / "parts"
    deadline = time.time() + 600
    while not list(parts.glob("*.rank1of2.npz")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the launch finished before a rank could be killed"
    # the workers' command lines hold this test's unique cache path (torchrun may start them in sessions of their own)
    found = subprocess.run(["pgrep", "-f", f"analysis.extract.*{tmp_path / 'cache'}"], capture_output=True, text=True)
    workers = [int(p) for p in found.stdout.split() if int(p) != proc.pid]
    assert workers, "no worker process found"
    os.kill(max(workers), signal.SIGKILL)
    proc.wait(timeout=600)
    assert proc.returncode != 0
    assert not list((tmp_path / "cache").rglob("*.tmp*")), "temporary files left behind"
    for f in (tmp_path / "cache" / "analysis").rglob("*.npz"):
        assert npz_key(f) is not None or f.parent.name != "parts", f"unreadable shard {f}"
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "cache" / "analysis" / "meta.json").is_file()
    assert not list(parts.glob("*.npz"))
