"""evaluate's plan (ood_core.api.plan): its counts are the work the passes then do, the warning names
the pass group that dominates, half-precision models run on a float32 copy, and a set too small
for its validation / test split is named with the minimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import toy_data, toy_model

from ood_core.api.evaluation import evaluate, plan, study_settings
from ood_core.api.inputs import InputError
from ood_core.api.own_model import OwnModelError
from ood_core.api.plan import API_N_VAL, WARN_MIN_SECONDS, Costs, make_plan, min_rows, val_rows
from ood_core.extraction.orchestrator import arrays_needed
from tests.test_api import FAST

METHODS = ["msp", "knn", "odin", "grodin_g", "gradnorm_allweights", "lowdim_knn", "gaia_z"]


def _inputs(**config) -> dict:
    cfg = {**FAST, "extract": {**FAST["extract"], **config}}
    ood = {"near": toy_data(30, 2, shift=1.0)[0], "far": toy_data(26, 3, shift=3.0)[0]}
    return dict(train=toy_data(48, 0), id_test=toy_data(40, 1), ood=ood, methods=METHODS, config=cfg)


def test_the_plans_counts_are_the_work_the_passes_do(capsys):
    ev = evaluate(toy_model(), verbose=True, **_inputs())
    assert ev.plan is not None and ev.plan.counts() == ev.counts
    assert ev.counts["near"]["grid_cells"] == 30 * 4 and "grodin_grid" not in ev.counts["train"]
    err = capsys.readouterr().err
    assert "evaluate: 7 methods on cpu" in err and "id_test 40 (20 val + 20 test)" in err
    assert "grid, every cell" in err and "expected:" in err and "evaluate: took" in err
    fits = {w.component: (w.rows, w.passes) for w in ev.plan.work if w.set == "train"}
    assert fits["fit_pca"] == (48, 2 + 2 * 1) and fits["stats_pca"] == (48, 1)
    costs = ev.plan.costs
    assert costs is not None and all(
        w.component in costs.per_image or w.component == "grodin_selected" for w in ev.plan.work
    )  # every pass has a measured cost
    assert {n: len(r) for n, r in ev.test_rows.items()} == {n: r - ev.plan.val[n] for n, r in ev.plan.sets.items()
                                                           if n != "train"}  # fmt: skip


def test_selected_cells_stay_within_the_plans_bound():
    ev = evaluate(toy_model(), verbose=False, **_inputs(grodin_test_points="selected", odin_T=[1, 10, 100]))
    planned = ev.plan.counts()
    for name, done in ev.counts.items():
        for comp in ("forward", "kl_allweights", "lowdim_pca", "activation_grads", "grodin_grid"):
            assert done.get(comp) == planned[name].get(comp), (name, comp)
        assert done["grid_cells"] <= planned[name]["grid_cells"]
    assert ev.counts["near"]["grodin_grid"] == 15  # the validation rows only
    assert ev.plan.seconds is None  # verbose=False: no probe


def _plan(costs: dict[str, float], **extract) -> str | None:
    cfg = study_settings({"extract": {"odin_T": [1, 10], "odin_eps": [0.0, 0.002], **extract}})
    lens = {"train": 1000, "id_test": 1000, "svhn": 1000}
    needs = arrays_needed(METHODS)
    return make_plan(cfg, lens, METHODS, needs, device=torch.device("cpu"), costs=Costs(costs, 16, "cpu")).warning


def test_the_warning_names_the_dominant_pass_group_and_its_option():
    cheap = dict.fromkeys(("forward", "kl_allweights", "lowdim_pca", "lowdim_avg", "activation_grads"), 0.01)
    cheap |= dict.fromkeys(("fit_pca", "fit_avg", "stats_pca"), 0.001)
    grid = _plan({**cheap, "grodin_grid": 1.0})
    assert grid and "ODIN / GRODIN grid" in grid and "grodin_test_points: selected" in grid and "odin_T" in grid
    assert "grodin_g" in grid  # the methods it serves
    selected = _plan({**cheap, "grodin_grid": 1.0}, grodin_test_points="selected")
    assert selected and "grodin_test_points" not in selected
    lowdim = _plan({**cheap, "grodin_grid": 0.001, "fit_pca": 0.5})
    assert lowdim and "low-dim" in lowdim and "lowdim.n_samples" in lowdim
    assert _plan({**cheap, "grodin_grid": 0.005}) is None  # balanced: no warning
    tiny = {k: v * 1e-4 for k, v in cheap.items()}
    assert _plan({**tiny, "grodin_grid": 1e-4}) is None  # dominant, but under WARN_MIN_SECONDS in all
    assert WARN_MIN_SECONDS > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_runs_on_a_float32_copy(dtype, capsys):
    model = toy_model().to(dtype)
    kw = _inputs()
    assert any("float32 copy" in n for n in plan(model, probe=False, **kw).notes)
    if dtype == torch.bfloat16:
        return  # the evaluation itself: once
    ev = evaluate(model, **kw)
    assert "float32 copy" in capsys.readouterr().err
    assert all(p.dtype == dtype for p in model.parameters())  # the user's model is unchanged
    ref = evaluate(toy_model().to(dtype).float(), verbose=False, **kw)
    for key in ("logits", "grodin_sqnorm", "kl_allw_sqnorm", "lowdim_pca"):
        np.testing.assert_array_equal(ev.arrays["far"][key], ref.arrays["far"][key])
    with pytest.raises(OwnModelError, match="float16.*model.float"):
        plan(model, probe=False, features=lambda x: model[:-1](x), **kw)


def test_the_default_split_is_the_studys_and_small_sets_are_named():
    assert val_rows(10_000, None) == API_N_VAL and val_rows(1_000, None) == 500 and val_rows(40, None) == 20
    assert val_rows(40, 0.2) == 8 and val_rows(40, 12) == 12
    big = {"train": toy_data(48, 0), "id_test": toy_data(1200, 1), "ood": {"o": toy_data(64, 2)[0]}}
    p = plan(toy_model(), probe=False, methods=["msp"], **big)
    assert p.val == {"id_test": 500, "o": 32} and "500 rows per set" in str(p)
    kw = dict(train=toy_data(48, 0), id_test=toy_data(40, 1), methods=["msp"])
    with pytest.raises(InputError, match="set 'tiny' has 1 row.*at least 2 rows"):
        plan(toy_model(), probe=False, ood={"tiny": toy_data(1, 2)[0]}, **kw)
    with pytest.raises(InputError, match="set 'id_test' has 40 row.*n_val = 50.*at least 51 rows"):
        plan(toy_model(), probe=False, ood={"o": toy_data(60, 2)[0]}, config={"data": {"val": {"n_val": 50}}}, **kw)
    assert min_rows(0.2) == 3 and min_rows(None) == 2
