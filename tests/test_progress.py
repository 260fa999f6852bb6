"""One progress display per stage (ood_core/progress.py): the work planned up front is the work the
passes report, a log file gets plain lines at the interval (no carriage return), and the stages
state their estimate."""

from __future__ import annotations

import argparse
import io
import re

import pytest
import torch
import torch.nn as nn
from conftest import toy_data, toy_model

from ood_core.progress import ExtractPlan, StageProgress, estimate_seconds

pytestmark = pytest.mark.usefixtures("one_thread")

DONE = re.compile(r"done: ([\d,]+)/([\d,]+) ")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _done_total(text: str) -> tuple[int, int]:
    (done, total), *_ = DONE.findall(text)
    return int(done.replace(",", "")), int(total.replace(",", ""))


def test_lines_mode_writes_one_plain_line_per_interval():
    clock, out = FakeClock(), io.StringIO()
    p = StageProgress("extract", 100, stream=out, every=30, clock=clock, stamp=lambda: "2026-01-01 00:00:00")
    assert p.mode == "lines"  # a StringIO is no terminal
    p.begin("subspace pca: power iteration 1/2")
    for _ in range(10):  # 10 units per 10 s: a line at 30, 60 and 90 s
        clock.t += 10
        p.update(10)
    p.note("[train] epoch 1/1: loss 0.1")
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    progress = [ln for ln in lines if "ETA" in ln]
    assert len(progress) == 3
    assert progress[0] == (
        "[extract] 2026-01-01 00:00:00 subspace pca: power iteration 1/2: 30/100 img (30.0%), 1.0 img/s, "
        "elapsed 30 s, ETA 1 min 10 s"
    )
    assert "[train] epoch 1/1: loss 0.1" in lines
    assert lines[-1].startswith("[extract] 2026-01-01 00:00:00 done: 100/100 img")


def test_a_short_library_pass_prints_nothing_in_a_file():
    out = io.StringIO()
    p = StageProgress("extract o", 10, stream=out, leave=False, clock=FakeClock())
    p.update(10)
    p.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize("points", ["grid", "selected"])
def test_extract_plan_is_the_work_the_passes_report(points, monkeypatch, capsys):
    from ood_core.api.evaluation import study_settings
    from ood_core.api.inputs import as_source
    from ood_core.api.own_model import as_ood_model
    from ood_core.extraction.orchestrator import extract_sets

    monkeypatch.setenv("OOD_PROGRESS", "lines")
    cfg = study_settings(
        {
            "extract": {
                "odin_T": [1, 10],
                "odin_eps": [0.0, 0.002],
                "batch_size": 16,
                "grad_chunk": 16,
                "grodin_test_points": points,
            },
            "lowdim": {
                "subspaces": {"pca": {"kind": "pca", "k": 3, "n_iter": 1}, "avg": {"kind": "class_mean"}},
                "batch_size": 16,
            },
            "data": {"val": {"n_val": 10, "seed": 0}},
        }
    )
    sources = {
        "train": as_source(toy_data(48, 0), name="train"),
        "id_test": as_source(toy_data(40, 1), name="id_test"),
        "o": as_source(toy_data(30, 2, 3.0)[0], name="o"),
    }
    plans: list[ExtractPlan] = []
    extract_sets(
        as_ood_model(toy_model()), sources, cfg, num_classes=3, device=torch.device("cpu"), on_plan=plans.append
    )
    (plan,) = plans
    # 48 rows x (4 PCA passes + 1 class-mean pass + 1 whitening pass); 118 rows; 70 rows x 4 cells
    assert plan.units == 48 * 6 + 118 + 70 * 4
    done, total = _done_total(capsys.readouterr().err)
    assert done == total
    if points == "grid":
        assert total == plan.units
    else:  # the total revised to the cells chosen on the validation rows
        assert total <= plan.units


def test_training_counts_epochs_x_steps_and_keeps_the_epoch_lines():
    from ood_core.config import DEFAULTS
    from ood_core.train import train_model

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = toy_data(40, 0)
    cfg = {**DEFAULTS["train"], "epochs": 2, "batch_size": 16}
    out = io.StringIO()
    shown = StageProgress("train", 2 * 3, unit="step", stream=out, mode="lines")
    train_model(model, x, y, x, y, cfg, 0, torch.device("cpu"), progress=shown)
    shown.close()
    text = out.getvalue()
    assert "\r" not in text
    assert _done_total(text) == (6, 6)
    assert re.search(r"^\[train\] epoch 2/2: loss \d\.\d{4}, lr ", text, re.M)


def test_the_extract_stage_states_its_estimate(tmp_path, capsys):
    from analysis.common import add_common_args, make_context
    from analysis.extract import announce

    argv = ["--profile", "cifar10", "--device", "cpu", "--cache-dir", str(tmp_path), "--fig-dir", str(tmp_path / "f")]
    ctx = make_context(add_common_args(argparse.ArgumentParser()).parse_args(argv))
    plan = ExtractPlan({"pca": 1500 * 6}, 1500, {"train": 10_000, "id_test": 2_000}, {"id_test": 2_000 * 12})
    announce(ctx, plan)
    out = capsys.readouterr().out
    assert ctx.cfg["cpu_estimate"] in out and "see the comment" not in out
    assert "expected: about" in out and "figures/cifar10/runs/extract_timings.csv" in out
    assert "forward 6.5 s" in out  # the measured per-1,000-image numbers it used


def test_estimate_adds_the_measured_costs():
    plan = ExtractPlan({"pca": 100}, 10, {"a": 50}, {"a": 200})
    costs = {"forward": 0.01, "kl_allweights": 0.02, "lowdim_pca": 0.03, "grodin_one_grid_point": 0.005}
    seconds, used = estimate_seconds(plan, costs, ["forward", "kl_allweights"])
    assert seconds == pytest.approx(50 * 0.03 + 200 * 0.005 + 10 * 0.02 + 100 * 0.05)
    assert "grodin_one_grid_point 5.0 s" in used


def test_each_names_every_item_and_counts_it():
    out = io.StringIO()
    p = StageProgress("benchmark", 3, unit="method", stream=out, mode="lines", every=0.0, clock=FakeClock())
    seen = []
    for m in p.each(["msp", "knn", "vim"], lambda m: f"benchmark {m}"):
        seen.append((m, p.pass_name, p.done))
    assert seen == [("msp", "benchmark msp", 0), ("knn", "benchmark knn", 1), ("vim", "benchmark vim", 2)]
    assert p.done == 3 and "\r" not in out.getvalue()
