"""The Python API (ood_core.api.evaluation.evaluate, ood_core.api.detector.Detector) against the pipeline: the same
model, data and settings give metrics.csv's rows to 1e-12; errors for inputs it cannot use."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import yaml
from conftest import toy_data, toy_model

from ood_core.api.detector import Detector
from ood_core.api.evaluation import evaluate, study_settings
from ood_core.api.inputs import InputError
from ood_core.scores import registry

REPO = Path(__file__).resolve().parents[1]
STRING_COLUMNS = ("method", "family", "ood_set", "group", "hyperparams", "protocol", "model")


def _tiny_profile(tmp_path: Path, **extract) -> Path:
    """test_pipeline's tiny profile (2 epochs, a 2 x 2 grid, small subspaces) with every method."""
    from tests.test_pipeline import tiny_profile

    p = tiny_profile(tmp_path, **extract)
    cfg = yaml.safe_load(p.read_text())
    cfg["benchmark"]["methods"] = None  # every registered method, as the pipeline runs them
    p.write_text(yaml.safe_dump(cfg))
    return p


def _pipeline(tmp_path: Path, profile: Path):
    """Run train -> extract -> benchmark; return (metrics.csv frame, model, {role: ImageSet}, groups)."""
    from analysis import benchmark, extract, train
    from analysis.common import add_common_args, make_context
    from analysis.datasets import all_specs, load_named

    argv = ["--profile", str(profile), "--cache-dir", str(tmp_path / "cache"), "--fig-dir", str(tmp_path / "fig")]
    argv += ["--device", "cpu"]
    train.main(argv)
    extract.main(argv)
    benchmark.main(argv)
    ctx = make_context(add_common_args(argparse.ArgumentParser()).parse_args(argv))
    model, _ = train.load_model(ctx)
    sets = {name: load_named(ctx, name) for name in all_specs(ctx.cfg)}
    groups = {n: s.get("group", "ood") for n, s in ctx.cfg["data"]["ood"].items()}
    return pd.read_csv(tmp_path / "fig" / "metrics.csv"), model, sets, groups


def _assert_same_rows(api: pd.DataFrame, csv: pd.DataFrame) -> None:
    """Same columns, methods in the same order, and per (method, OOD set) the same cells (numbers to
    1e-12). The OOD sets come in the order given to evaluate; the pipeline's are sorted by name."""
    assert list(api.columns) == list(csv.columns)
    assert len(api) == len(csv) > 0
    assert list(dict.fromkeys(api["method"])) == list(dict.fromkeys(csv["method"]))
    api, csv = (f.sort_values(["method", "ood_set"], kind="stable").reset_index(drop=True) for f in (api, csv))
    for col in csv.columns:
        a, c = api[col].tolist(), csv[col].tolist()
        if col in STRING_COLUMNS:
            assert a == c, col
        else:
            for x, y in zip(a, c):
                if y is None or (isinstance(y, float) and math.isnan(y)):
                    assert x is None or math.isnan(x), col
                else:
                    assert abs(float(x) - float(y)) <= 1e-12, (col, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("grid_points", ["grid", "selected"])
def test_evaluate_equals_the_pipelines_metrics_csv(tmp_path, grid_points):
    profile = _tiny_profile(tmp_path, grodin_test_points=grid_points)
    csv, model, sets, groups = _pipeline(tmp_path, profile)
    ood = {n: s for n, s in sets.items() if n not in ("train", "id_test")}
    ev = evaluate(
        model,
        train=sets["train"],
        id_test=sets["id_test"],
        ood=ood,
        config=str(profile),
        groups=groups,
        model_name="small_cnn",
    )
    _assert_same_rows(ev.metrics, csv)
    # every method runs but the two that read ResNet stages (layer1..layer4): small_cnn has none
    assert set(registry.names()) - set(ev.metrics["method"]) == {"gaia_a", "nac_ue_stages"}
    assert {s["method"] for s in ev.skipped} == {"gaia_a", "nac_ue_stages"}
    # the per-sample scores behind a row give its AUROC
    from ood_core.evaluation.metrics import auroc

    row = ev.metrics[(ev.metrics.method == "grodin_g") & (ev.metrics.ood_set == "digits_5to9")].iloc[0]
    s_id, s_ood = ev.id_and_ood_scores("grodin_g", "digits_5to9")
    assert auroc(s_id, s_ood) == row.auroc


# ------------------------------------------------------------------------------ small, fast cases


FAST = {
    "extract": {"odin_T": [1, 10], "odin_eps": [0.0, 0.002], "batch_size": 16, "grad_chunk": 16},
    "lowdim": {"subspaces": {"pca": {"kind": "pca", "k": 3, "n_iter": 1}}, "batch_size": 16},
    "benchmark": {"bootstrap": 5},
}


def test_evaluate_on_a_plain_torch_model_and_tensors(tmp_path):
    model = toy_model()
    ev = evaluate(
        model,
        train=toy_data(48, 0),
        id_test=toy_data(40, 1),
        ood={"shifted": toy_data(30, 2, shift=3.0)[0]},
        methods=["msp", "energy", "knn", "grodin_g", "lowdim_knn"],
        config=FAST,
    )
    assert list(ev.metrics["method"]) == ["msp", "energy", "knn", "grodin_g", "lowdim_knn"]
    assert ev.metrics["auroc"].between(0, 1).all()
    assert ev.metrics["model"].iloc[0] == "Sequential"
    assert len(ev.test_rows["shifted"]) == len(ev.scores["shifted"]["msp"])
    written = {p.name for p in ev.save(tmp_path / "tables")}
    assert {"metrics.csv", "metrics.md", "metrics.tex", "chosen_hyperparams.json", "run.json"} <= written
    _assert_same_rows(ev.metrics, pd.read_csv(tmp_path / "tables" / "metrics.csv"))
    assert "Energy" in (tmp_path / "tables" / "metrics.md").read_text()


def test_evaluate_takes_the_tuning_protocol():
    model = toy_model()
    tr, te = toy_data(32, 0), toy_data(32, 1)
    ood = {"a": toy_data(24, 2, shift=1.0)[0], "b": toy_data(24, 3, shift=2.0)[0]}
    ev = evaluate(model, train=tr, id_test=te, ood=ood, methods=["energy", "odin"], config=FAST,
                  protocol="held_out_ood", held_out="a")  # fmt: skip
    assert set(ev.metrics["protocol"]) == {"held_out_ood"}
    assert ev.chosen["odin"]["per_set"]["b"]["tuned_on"] == "a"
    assert ev.info["protocol"] == "held_out_ood (held-out: a)"


def test_detector_scores_equal_the_registry_on_extracted_arrays():
    model = toy_model()
    x_train, y_train = toy_data(48, 0)
    x = toy_data(20, 3)[0]
    det = Detector("energy", model).fit((x_train, y_train))
    with torch.no_grad():
        logits = model(x).double()
    np.testing.assert_allclose(det.score(x), torch.logsumexp(logits, 1).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(det.predict(x), -det.score(x))
    knn = Detector("knn", model, config=FAST, k=3).fit((x_train, y_train))
    assert knn.score(x).shape == (20,)


def test_detector_refuses_unknown_parameters_and_scoring_before_fit():
    with pytest.raises(TypeError, match="unknown parameter"):
        Detector("energy", toy_model(), temperature=2.0)
    with pytest.raises(RuntimeError, match="fit"):
        Detector("knn", toy_model()).score(torch.zeros(2, 1, 8, 8))


def test_evaluate_errors_name_the_problem():
    model = toy_model()
    tr, te = toy_data(24, 0), toy_data(24, 1)
    with pytest.raises(InputError, match="reserved"):
        evaluate(model, train=tr, id_test=te, ood={"train": te[0]}, methods=["msp"], config=FAST)
    x_nan = te[0].clone()
    x_nan[5, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="row 5"):
        evaluate(model, train=tr, id_test=te, ood={"nan_set": x_nan}, methods=["msp"], config=FAST)
    with pytest.raises(InputError):
        evaluate(model, train=tr, id_test=te, ood={"small": torch.zeros(4, 1, 6, 6)}, methods=["msp"], config=FAST)
    with pytest.raises(InputError, match="set 'train'.*row 0"):
        evaluate(model, train=tr[0], id_test=te, ood={"o": te[0]}, methods=["msp"], config=FAST)  # no labels
    with pytest.raises(InputError, match="set 'id_test'.*0..2"):
        evaluate(model, train=tr, id_test=(te[0], te[1] + 3), ood={"o": te[0]}, methods=["msp"], config=FAST)
    with pytest.raises(KeyError, match="no_such_method"):
        evaluate(model, train=tr, id_test=te, ood={"o": te[0]}, methods=["no_such_method"], config=FAST)


def test_unsupported_layer_names_it_or_is_skipped_by_default():
    from ood_core.grads.layers import UnsupportedModuleError

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    tr, te = toy_data(24, 0), toy_data(24, 1)
    with pytest.raises(UnsupportedModuleError, match="1.*vmap"):
        evaluate(model, train=tr, id_test=te, ood={"o": te[0] + 2}, methods=["grodin_g"], config=FAST)
    ev = evaluate(model, train=tr, id_test=te, ood={"o": te[0] + 2}, config={**FAST, "lowdim": {"enabled": False}})
    skipped = {s["method"] for s in ev.skipped}
    assert "grodin_g" in skipped and "msp" not in skipped and "msp" in set(ev.metrics["method"])


def test_grad_method_vmap_matches_hooks_and_handles_any_layer():
    model = toy_model()
    tr, te, o = toy_data(32, 0), toy_data(32, 1), toy_data(32, 2, shift=2.0)[0]
    methods = ["grodin_g", "gradnorm_allweights", "lowdim_knn"]
    kw = dict(train=tr, id_test=te, ood={"o": o}, methods=methods, config=FAST)
    hooks, vmap = evaluate(model, **kw), evaluate(model, grad_method="vmap", **kw)
    for key in ("grodin_sqnorm", "kl_allw_sqnorm", "lowdim_pca"):
        np.testing.assert_allclose(vmap.arrays["o"][key], hooks.arrays["o"][key], rtol=2e-4, atol=1e-6)
    assert list(vmap.metrics["method"]) == methods
    torch.manual_seed(0)
    ln_model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    ev = evaluate(ln_model, grad_method="vmap", **kw)
    assert list(ev.metrics["method"]) == methods and not ev.skipped


def test_settings_reject_unknown_keys():
    from ood_core.config import ConfigError

    with pytest.raises(ConfigError, match="extrct"):
        study_settings({"extrct": {}})
    assert study_settings(None)["lowdim"]["subspaces"]  # the API's default subspaces


def test_top_level_names_are_the_api():
    import ood_core

    assert ood_core.evaluate is evaluate and ood_core.Detector is Detector
    with pytest.raises(AttributeError, match="no_such_name"):
        ood_core.no_such_name
