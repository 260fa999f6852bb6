"""An interrupted subspace fit resumes after its last finished pass, with the same result."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ood_core.api.inputs import as_source
from ood_core.config import DEFAULTS
from ood_core.extraction.orchestrator import fit_subspaces
from ood_core.extraction.store import DiskStore, PassCheckpoint
from ood_core.grads.lowdim import pca_subspace
from ood_core.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupting:
    """A batch source that raises KeyboardInterrupt when its ``stop_at``-th pass starts; counts passes."""

    def __init__(self, source, stop_at: int | None = None):
        self.source, self.stop_at, self.passes = source, stop_at, 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def take(self, rows):
        return Interrupting(self.source.take(rows), self.stop_at)

    def batches(self, batch_size, device=None):
        self.passes += 1
        if self.stop_at is not None and self.passes == self.stop_at:
            raise KeyboardInterrupt
        return self.source.batches(batch_size, device)


def _model_and_data():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, in_channels=1, width=4).eval()
    x = torch.randn(20, 1, 8, 8)
    y = torch.arange(20) % 3
    return model, x, y


def test_pca_resumes_from_the_last_power_iteration(tmp_path):
    model, x, _ = _model_and_data()
    calls = {"n": 0, "stop": 6}

    def batches():
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return [x[:8], x[8:]]

    whole = pca_subspace(copy.deepcopy(model), lambda: [x[:8], x[8:]], 3, n_iter=3, seed=0, chunk=4)
    ck = PassCheckpoint(tmp_path / "pca.partial.pt", "key", log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):  # passes: start 1, iteration 1: 2-3, iteration 2: 4-5, 6 stops
        pca_subspace(model, batches, 3, n_iter=3, seed=0, chunk=4, resume=ck)
    again = PassCheckpoint(tmp_path / "pca.partial.pt", "key", log=lambda _: None)
    assert again.state["done"] == 2
    calls.update(n=0, stop=-1)
    resumed = pca_subspace(model, batches, 3, n_iter=3, seed=0, chunk=4, resume=again)
    assert calls["n"] == 3  # iteration 3 (2 passes) and B^T: not the 5 finished ones
    assert torch.equal(resumed, whole)
    other = PassCheckpoint(tmp_path / "pca.partial.pt", "another key", log=lambda _: None)
    assert other.state == {}  # another fit's state is not used


def test_checkpoint_reports_a_damaged_file_and_starts_over(tmp_path):
    path = tmp_path / "pca.partial.pt"
    PassCheckpoint(path, "k").update(done=1, q=torch.ones(2, 2))
    path.write_bytes(path.read_bytes()[:40])
    lines: list[str] = []
    assert PassCheckpoint(path, "k", log=lines.append).state == {}
    assert len(lines) == 1 and "pca.partial.pt" in lines[0] and "damaged" in lines[0]


def test_stage_subspace_fit_resumes_after_an_interrupt(tmp_path):
    """Through the orchestrator and the analysis cache: Ctrl-C in the fit, the same call again ->
    it says it resumes, streams fewer passes, stores the same subspace and drops the partial file."""
    model, x, y = _model_and_data()
    cfg = {
        "seed": 0,
        "lowdim": {
            **DEFAULTS["lowdim"],
            "batch_size": 8,
            "chunk": 4,
            "subspaces": {"pca": {"kind": "pca", "k": 3, "n_iter": 3}},
        },
        "extract": DEFAULTS["extract"],
    }
    src = as_source((x, y), name="train")
    kw = dict(num_classes=3, device=torch.device("cpu"), model_id="m", train_id="t")
    whole, _ = fit_subspaces(copy.deepcopy(model), src, cfg, ["pca"], **kw)
    lines: list[str] = []
    store = DiskStore(tmp_path / "analysis", tmp_path / "lowdim", log=lines.append)
    with pytest.raises(KeyboardInterrupt):  # pass 1: whitening statistics; 2: start; 3-4: iteration 1; 5 stops
        fit_subspaces(model, Interrupting(src, stop_at=5), cfg, ["pca"], store=store, **kw)
    assert (tmp_path / "lowdim" / "pca.partial.pt").is_file()
    rerun = Interrupting(src)
    subs, _ = fit_subspaces(model, rerun, cfg, ["pca"], store=store, **kw)
    assert any("resuming from pca.partial.pt" in line for line in lines)
    assert rerun.passes == 5  # iterations 2 and 3 and B^T, not the statistics, the start and iteration 1
    assert torch.equal(subs[0].V, whole[0].V)
    assert not (tmp_path / "lowdim" / "pca.partial.pt").exists() and (tmp_path / "lowdim" / "pca.pt").is_file()
    np.testing.assert_array_equal(subs[0].stats[1].numpy(), whole[0].stats[1].numpy())
