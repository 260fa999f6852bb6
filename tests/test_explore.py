"""ood_core.explore: the logic behind the notebooks' figures, on small synthetic inputs and the tiny cache
of ``tests/fixtures_cache.py``. Expected values are computed independently (by hand, by a Mann-Whitney
count, or by the benchmark stage itself), never by the function under test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ood_core.analysis_cache import AnalysisCache  # noqa: E402
from ood_core.explore import (  # noqa: E402
    benchmark_figures,
    calibration,
    deep_vs_last,
    densities,
    factorisation,
    metric_tables,
    sg_band,
    tsne,
)
from ood_core.explore.session import Session, load_table, ood_order, part_rows  # noqa: E402
from ood_core.extraction.grid import GridPointUnavailable  # noqa: E402
from ood_core.reporting import style  # noqa: E402
from ood_core.scores import display_name  # noqa: E402

try:  # tests/ is on sys.path under pytest's default (rootdir-based) import mode
    import fixtures_cache as fx
except ImportError:  # pragma: no cover
    from tests import fixtures_cache as fx


def mw_auroc(s_id, s_ood) -> float:
    """Mann-Whitney AUROC, ID = positive, ties 1/2 (independent of ood_core.evaluation.metrics)."""
    a, b = np.asarray(s_id, float)[:, None], np.asarray(s_ood, float)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(analysis_dir, fig_dir) of the tiny cache, shared read-only by the tests of this module."""
    return fx.make_tiny_analysis_cache(tmp_path_factory.mktemp("explore") / "cache", seed=0)


@pytest.fixture
def cache(tiny):
    return AnalysisCache(tiny[0])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _test_rows(adir: Path, name: str) -> np.ndarray:
    return np.load(adir / "splits.npz")[f"{name}__test"]


def _assert_no_overlap(texts) -> None:
    """No two of the drawn ``texts`` (matplotlib Text artists) overlap on the canvas."""
    texts = [t for t in texts if t.get_visible() and t.get_text().strip()]
    assert texts
    fig = texts[0].figure
    fig.canvas.draw()
    boxes = [(t.get_text(), t.get_window_extent(renderer=fig.canvas.get_renderer())) for t in texts]
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1 :]:
            assert not ba.overlaps(bb), f"texts {a!r} and {b!r} overlap"


# ------------------------------------------------------------------------------------------ session
def test_part_rows_reads_splits_and_falls_back_to_all_rows(tiny, cache, tmp_path):
    sp = np.load(tiny[0] / "splits.npz")
    assert np.array_equal(part_rows(cache, fx.ID_TEST, "val"), sp[f"{fx.ID_TEST}__val"])
    assert np.array_equal(part_rows(cache, "toy_far", "test"), sp["toy_far__test"])
    assert np.array_equal(part_rows(cache, fx.TRAIN, "test"), np.arange(fx.N))  # no split for the train set
    with pytest.raises(ValueError, match="which"):
        part_rows(cache, fx.ID_TEST, "train")


def test_ood_order_puts_meta_order_first_then_the_rest_sorted():
    assert ood_order(["z", "far", "near", "a", "far"], ["near", "far"]) == ["near", "far", "a", "z"]


def test_load_table_skips_missing_and_empty_files(tmp_path, capsys):
    assert load_table(tmp_path / "nope.csv") is None
    (tmp_path / "empty.csv").write_text("a,b\n")
    assert load_table(tmp_path / "empty.csv") is None
    out = capsys.readouterr().out
    assert "[skip]" in out and "nope.csv missing" in out and "empty.csv is empty" in out
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    assert load_table(tmp_path / "t.csv").to_dict("records") == [{"a": 1, "b": 2}]


def test_session_saves_figures_and_numbers_and_reports_them(tiny, tmp_path):
    nb = Session.open(tiny[0], tmp_path / "figs", seed=3)
    assert nb.rng.integers(1000) == np.random.default_rng(3).integers(1000)
    assert nb.id_name == fx.ID_TEST and nb.ood_names == list(fx.OOD)
    assert "model='toy_mlp'" in nb.summary() and "ID='toy_test'" in nb.summary()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = nb.save(fig, "line", pd.DataFrame({"x": [0.1, 1 / 3]}))  # figure and its numbers, one call
    assert [p.name for p in paths] == ["line.png", "line.pdf", "line.csv"] and all(p.is_file() for p in paths)
    assert pd.read_csv(paths[2])["x"].tolist() == [0.1, 1 / 3]  # full precision
    assert nb.written == paths
    assert nb.report().splitlines() == ["figures written:", *(f"   {p}" for p in nb.written)]


# --------------------------------------------------------------------------------------------- tsne
def test_sample_rows_draws_per_role_without_replacement(cache):
    picks = tsne.sample_rows(cache, np.random.default_rng(0), n_points=10)
    assert [n for n, _ in picks] == [fx.ID_TEST, *fx.OOD]
    assert [len(i) for _, i in picks] == [10, 5, 5]  # 10 ID, 10 // 2 per OOD set
    rng = np.random.default_rng(0)  # the same draws, in the same order
    for _, rows in picks:
        assert np.array_equal(rows, np.sort(rng.choice(fx.N, size=len(rows), replace=False)))
    big = tsne.sample_rows(cache, np.random.default_rng(0), n_points=1000)
    assert [len(i) for _, i in big] == [fx.N] * 3


def test_views_stack_the_same_rows_of_both_representations(cache, capsys):
    picks = [(fx.ID_TEST, np.array([0, 3])), ("toy_near", np.array([1]))]
    v = tsne.views(cache, picks, "pca")
    (h, H), (g, G) = v.items()
    assert "features" in h and "K=6" in g
    assert np.array_equal(H, np.r_[cache.arrays(fx.ID_TEST)["h"][[0, 3]], cache.arrays("toy_near")["h"][[1]]])
    assert np.array_equal(G[2], cache.arrays("toy_near")["lowdim_pca"][1])
    assert list(tsne.roles(picks)) == [fx.ID_TEST, fx.ID_TEST, "toy_near"]
    assert list(tsne.views(cache, picks, "nosuch")) == [h] and "[skip]" in capsys.readouterr().out


def test_perplexity_cap_and_standardisation():
    assert tsne.capped_perplexity(30.0, 1000) == 30.0
    assert tsne.capped_perplexity(30.0, 61) == 19.0  # (61 - 1) / 3 - 1
    assert tsne.capped_perplexity(30.0, 4) == 2.0
    Z = tsne.standardise(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert np.allclose(Z, [[-1.0, 0.0], [1.0, 0.0]])


def test_embed_is_deterministic_and_plot_draws_one_panel_per_view(cache):
    pytest.importorskip("openTSNE")
    picks = tsne.sample_rows(cache, np.random.default_rng(0), n_points=20)
    views = tsne.views(cache, picks, "pca")
    kw = dict(perplexity=30.0, n_iter=50, early_exaggeration_iter=20, seed=0)
    emb = {t: tsne.embed(X, **kw) for t, X in views.items()}
    assert all(E.shape == (40, 2) for E in emb.values())
    assert np.array_equal(next(iter(emb.values())), tsne.embed(next(iter(views.values())), **kw))
    y_id = cache.arrays(fx.ID_TEST)["y"][picks[0][1]]
    fig = tsne.plot_tsne(emb, tsne.roles(picks), y_id, cache)
    assert [ax.get_title() for ax in fig.axes[: len(emb)]] == list(emb)
    top, bottom = (fig.axes[len(emb) - 1].get_legend(), fig.axes[-1].get_legend())
    assert {t.get_text() for t in top.get_texts()} >= {"ant", "OOD (all sets)"}  # classes by name
    assert [t.get_text() for t in bottom.get_texts()][:2] == ["toy near", "toy far"]  # display names
    tab = tsne.table(emb, tsne.roles(picks), y_id, cache)
    assert len(tab) == 40 * len(emb) and set(tab.loc[tab["set"] == fx.ID_TEST, "class"]) <= set(tsne.class_names(cache))


# ---------------------------------------------------------------------------------------- densities
def test_dimension_aurocs_by_hand():
    z_id = np.array([[2.0, 0.0, 1.0], [3.0, 1.0, 1.0]])
    z_ood = np.array([[0.0, 2.0, 1.0], [1.0, 3.0, 1.0]])
    assert np.allclose(densities.dimension_aurocs(z_id, z_ood), [1.0, 0.0, 0.5])


def test_top_dimensions_select_on_validation_and_report_test(tiny, cache):
    Z = densities.lowdim_arrays(cache, "pca")
    sp = np.load(tiny[0] / "splits.npz")

    def pooled(which):
        zi = Z[fx.ID_TEST][sp[f"{fx.ID_TEST}__{which}"]]
        return zi, np.concatenate([Z[o][sp[f"{o}__{which}"]] for o in fx.OOD])

    val = np.array([mw_auroc(pooled("val")[0][:, d], pooled("val")[1][:, d]) for d in range(fx.K)])
    top = densities.top_dimensions(cache, Z, n_top=3)
    expected = sorted(range(fx.K), key=lambda d: -abs(val[d] - 0.5))[:3]
    assert top["dim"].tolist() == expected
    assert np.allclose(top["auroc_val"], val[expected])
    zi, zo = pooled("test")
    assert np.allclose(top["auroc_test"], [mw_auroc(zi[:, d], zo[:, d]) for d in expected])
    assert top["inverted"].tolist() == [v < 0.5 for v in val[expected]]
    titles, caption = densities.top_titles(top)
    for r in top.itertuples():
        assert (("inverted" in titles[r.dim]) == r.inverted) and f"val {r.auroc_val:.2f}" in titles[r.dim]
    assert caption.startswith("Top 3 dims") and (("none inverted" in caption) == (not top["inverted"].any()))


def test_valid_dims_and_missing_lowdim_notes(cache, capsys):
    assert densities.valid_dims([0, 7, 2, -1], K=6) == [0, 2]
    assert densities.lowdim_arrays(cache, "nosuch") is None
    out = capsys.readouterr().out
    assert "dims [-1, 7] out of range (K=6)" in out and "'lowdim_nosuch' missing" in out


def test_sample_pair_picks_the_most_feature_similar_ood_sample(tiny, cache):
    Z = densities.lowdim_arrays(cache, "pca")
    pair = densities.sample_pair(cache, Z, id_sample=2)
    ti, to = _test_rows(tiny[0], fx.ID_TEST), _test_rows(tiny[0], "toy_near")
    h_id = cache.arrays(fx.ID_TEST)["h"][ti[2]].astype(float)
    cands = cache.arrays("toy_near")["h"][to].astype(float)
    cos = [c @ h_id / np.linalg.norm(c) / np.linalg.norm(h_id) for c in cands]
    assert (pair.ood_set, pair.id_row, pair.ood_row) == ("toy_near", ti[2], to[int(np.argmax(cos))])
    assert pair.cos_h == pytest.approx(max(cos))
    assert np.array_equal(pair.g_ood, Z["toy_near"][pair.ood_row])
    fixed = densities.sample_pair(cache, Z, ood_set="toy_far", ood_sample=4)
    assert fixed.ood_row == _test_rows(tiny[0], "toy_far")[4]
    assert densities.cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)


def test_density_and_sample_figures(cache):
    Z = densities.lowdim_arrays(cache, "pca")
    curves = densities.density_curves(cache, Z, [0, 3])
    from scipy.stats import gaussian_kde

    c = curves[(curves["dim"] == 3) & (curves["set"] == "toy_far")]
    x = Z["toy_far"][_test_rows(cache.root, "toy_far"), 3]
    assert np.allclose(c["density"], gaussian_kde(x)(c["x"]))  # the plotted curve is the set's KDE
    fig = densities.plot_density_panels(cache, curves, [0, 3], titles={0: "a", 3: "b"}, caption="cap")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b"] and visible[1].get_xlabel() == "$G_{low}$ dim 3"
    styles = {(str(ln.get_color()), str(ln.get_linestyle())) for ln in visible[0].lines}
    assert len(styles) == 1 + len(fx.OOD)  # every set its own colour / line style
    pair = densities.sample_pair(cache, Z)
    fig = densities.plot_sample_pair(cache, pair)
    assert len(fig.axes) == 2 and all(len(ax.lines) == 2 for ax in fig.axes)
    assert len(densities.pair_table(pair)) == len(pair.h_id) + len(pair.g_id)


# ---------------------------------------------------------------------------------------- the band
def test_hard_band_of_identical_normals_is_the_central_half():
    x = np.random.default_rng(0).standard_normal(20000)
    a, b, overlap = sg_band.hard_band(x, x.copy(), 0.5)
    assert overlap == pytest.approx(1.0, abs=1e-3)
    assert a == pytest.approx(-0.674, abs=0.05) and b == pytest.approx(0.674, abs=0.05)  # N(0,1) quartiles


def test_hard_band_of_shifted_normals():
    """N(0,1) vs N(2,1): overlap coefficient 2 Phi(-1) = 0.3173; the shortest interval with half of the
    overlap mass is 1 +- w with Phi(-1) - Phi(-1 - w) = Phi(-1) / 2, i.e. w = 0.409."""
    rng = np.random.default_rng(1)
    a, b, overlap = sg_band.hard_band(rng.standard_normal(20000), 2 + rng.standard_normal(20000), 0.5)
    assert overlap == pytest.approx(0.3173, abs=0.02)
    assert a == pytest.approx(1 - 0.409, abs=0.06) and b == pytest.approx(1 + 0.409, abs=0.06)


def test_hard_band_of_disjoint_sets_and_point_masses():
    rng = np.random.default_rng(2)
    _, _, overlap = sg_band.hard_band(rng.standard_normal(500), 40 + rng.standard_normal(500), 0.5)
    assert overlap < 1e-6
    a, b, overlap = sg_band.hard_band(np.full(10, 3.0), np.full(12, 3.0), 0.5)
    assert a == pytest.approx(3.0) and b == pytest.approx(3.0) and overlap == pytest.approx(1.0, abs=1e-6)


def test_logit_transform_and_when_it_is_used():
    s = np.array([0.2, 0.5, 0.99])
    assert np.allclose(sg_band.inv_logit(sg_band.logit(s)), s)
    assert sg_band.logit(np.array([1.0]))[0] == pytest.approx(np.log(1e7))  # clipped, finite
    assert sg_band.use_logit(np.array([0.96, 0.99, 0.97])) and not sg_band.use_logit(np.array([0.5, 0.99, 0.9]))
    assert sg_band.use_logit(np.array([0.5]), "logit") and not sg_band.use_logit(np.array([0.99]), "none")
    with pytest.raises(ValueError):
        sg_band.use_logit(s, "log")


def test_chosen_cell_reads_the_benchmarks_choice(tiny, tmp_path):
    adir, fdir = tiny
    chosen = json.loads((fdir / "chosen_hyperparams.json").read_text())["methods"]
    for o in fx.OOD:
        assert sg_band.chosen_cell(fdir, "grodin_sg", o) == {
            k: float(v) for k, v in chosen["grodin_sg"]["per_set"][o]["params"].items()
        }
    with pytest.raises(FileNotFoundError, match="benchmark stage"):
        sg_band.chosen_cell(tmp_path, "grodin_sg", "toy_near")
    with pytest.raises(KeyError, match="no method 'nosuch'"):
        sg_band.chosen_cell(fdir, "nosuch", "toy_near")
    with pytest.raises(KeyError, match="no entry for OOD set"):
        sg_band.chosen_cell(fdir, "grodin_sg", "toy_mid")


def test_pick_cell_overrides_only_with_grid_cells_computed_on_every_row(tmp_path):
    adir, fdir = fx.make_tiny_analysis_cache(tmp_path / "c", seed=0)
    cache = AnalysisCache(adir)
    base = sg_band.chosen_cell(fdir, "odin", "toy_far")
    assert sg_band.pick_cell(cache, fdir, "odin", "toy_far") == base
    assert sg_band.pick_cell(cache, fdir, "odin", "toy_far", T=100.0) == {**base, "T": 100.0}
    assert sg_band.pick_cell(cache, fdir, "odin", "toy_far", T=10.0, eps=0.0) == {"eps": 0.0, "T": 10.0}
    with pytest.raises(ValueError, match="not on the cached grid"):
        sg_band.pick_cell(cache, fdir, "odin", "toy_far", T=3.0)
    p = adir / "arrays" / "toy_far.npz"  # only (eps0, T0) computed on every row of toy_far
    with np.load(p) as z:
        a = {k: z[k] for k in z.files}
    keep = np.zeros((len(fx.ODIN_EPS), len(fx.ODIN_T)), bool)
    keep[0, 0] = True
    np.savez(p, **a, grodin_full_points=keep)
    cache = AnalysisCache(adir)
    assert sg_band.pick_cell(cache, fdir, "odin", "toy_far", T=1.0, eps=0.0) == {"eps": 0.0, "T": 1.0}
    with pytest.raises(GridPointUnavailable, match="validation rows only for toy_far"):
        sg_band.pick_cell(cache, fdir, "odin", "toy_far", T=10.0, eps=0.0)


def test_decomposition_reads_s_and_g_of_the_chosen_cell(tiny, cache):
    adir, fdir = tiny
    decs = sg_band.decompose_all(cache, fdir, "grodin_sg", band_mass=0.5)
    assert list(decs) == list(fx.OOD)
    for o, d in decs.items():
        cell = sg_band.chosen_cell(fdir, "grodin_sg", o)
        ie, it = list(fx.ODIN_EPS).index(cell["eps"]), list(fx.ODIN_T).index(cell["T"])
        s_i = np.load(adir / "arrays" / f"{fx.ID_TEST}.npz")["odin_s"][ie, it, _test_rows(adir, fx.ID_TEST)]
        sg_o = np.load(adir / "arrays" / f"{o}.npz")["grodin_sqnorm"][ie, it, _test_rows(adir, o)]
        s_o = np.load(adir / "arrays" / f"{o}.npz")["odin_s"][ie, it, _test_rows(adir, o)]
        assert np.array_equal(d.S_id, s_i.astype(float)) and np.allclose(d.G_ood, sg_o / s_o.astype(float) ** 2)
        row = d.row()
        assert (row["eps"], row["T"]) == (cell["eps"], cell["T"])
        assert row["auroc_S_all"] == pytest.approx(mw_auroc(d.S_id, d.S_ood))
        assert row["auroc_G_all"] == pytest.approx(mw_auroc(-d.G_id, -d.G_ood))
        assert row["auroc_SG_all"] == pytest.approx(mw_auroc(-d.SG_id, -d.SG_ood))
        lo, hi = row["band_lo_S"], row["band_hi_S"]
        assert row["n_id_band"] == int(((d.S_id >= lo - 1e-9) & (d.S_id <= hi + 1e-9)).sum())
        inside = (d.S_ood >= lo - 1e-9) & (d.S_ood <= hi + 1e-9)
        assert row["n_ood_band"] == int(inside.sum())
        if row["n_id_band"] >= 2 and row["n_ood_band"] >= 2:
            assert row["auroc_G_band"] == pytest.approx(mw_auroc(-d.G_id[d.in_id], -d.G_ood[inside]))
        assert f"using grid point T={cell['T']:g}, eps={cell['eps']:g}" in d.describe()
    assert sg_band.table(decs)["ood_set"].tolist() == list(fx.OOD)
    fig = sg_band.plot_decomposition(decs["toy_near"], cache, method="grodin_sg")
    assert "tuned for GRODIN SG" in fig.axes[0].get_xlabel() and "AUROC" in fig.axes[1].get_title()


def test_decomposition_uses_the_cell_of_the_benchmarks_table(tmp_path):
    """Run the benchmark stage on the tiny cache: the cell of the decomposition is the one its
    chosen_hyperparams.json records for grodin_sg, a validation-best cell (up to float ties), and the
    AUROC of -SG there is the AUROC of grodin_sg in its metrics.csv."""
    from analysis.benchmark import run_benchmark

    adir, _ = fx.make_tiny_analysis_cache(tmp_path / "c", seed=0)
    fdir = tmp_path / "bench"
    run_benchmark(analysis_dir=adir, fig_dir=fdir, methods=["grodin_sg"], bootstrap_n=0)
    cache = AnalysisCache(adir)
    decs = sg_band.decompose_all(cache, fdir, "grodin_sg")
    assert list(decs) == list(fx.OOD)
    chosen = json.loads((fdir / "chosen_hyperparams.json").read_text())["methods"]["grodin_sg"]["per_set"]
    mdf = pd.read_csv(fdir / "metrics.csv").set_index("ood_set")
    sp = np.load(adir / "splits.npz")
    a_id = np.load(adir / "arrays" / f"{fx.ID_TEST}.npz")
    for o, d in decs.items():
        assert d.cell == chosen[o]["params"]
        a_o = np.load(adir / "arrays" / f"{o}.npz")
        val = {
            (float(e), float(t)): mw_auroc(
                -a_id["grodin_sqnorm"][ie, it, sp[f"{fx.ID_TEST}__val"]], -a_o["grodin_sqnorm"][ie, it, sp[f"{o}__val"]]
            )
            for ie, e in enumerate(fx.ODIN_EPS)
            for it, t in enumerate(fx.ODIN_T)
        }
        assert val[(d.cell["eps"], d.cell["T"])] == pytest.approx(max(val.values()), abs=1e-12)
        assert d.row()["auroc_SG_all"] == pytest.approx(mdf.loc[o, "auroc"], abs=1e-12)


def test_decompose_all_skips_with_a_note(tiny, cache, tmp_path, capsys):
    assert sg_band.decompose_all(cache, tmp_path, "grodin_sg") == {}
    assert sg_band.decompose_all(cache, tiny[1], "knn") == {}
    out = capsys.readouterr().out
    assert "chosen_hyperparams.json missing" in out and "no tuned cell" in out


# -------------------------------------------------------------------------------------- calibration
def test_reliability_and_ece_by_hand():
    conf = np.array([0.9, 0.9, 0.6, 0.6, 0.75, 1.0])
    correct = np.array([1, 0, 1, 1, 1, 1])
    bins = calibration.reliability(conf, correct, np.array([0.5, 0.75, 1.0]))
    # bin 0: {0.6, 0.6}; bin 1: {0.9, 0.9, 0.75 (on the inner edge: upper bin), 1.0 (top edge: last bin)}
    assert bins["bin"].tolist() == [0, 1]
    assert np.allclose(bins["confidence"], [0.6, (0.9 + 0.9 + 0.75 + 1.0) / 4])
    assert np.allclose(bins["accuracy"], [1.0, 0.75]) and np.allclose(bins["fraction"], [2 / 6, 4 / 6])
    assert calibration.ece(bins) == pytest.approx(2 / 6 * 0.4 + 4 / 6 * abs(0.75 - 0.8875))


def test_calibration_curves_over_temperatures():
    logits = np.array([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.5]])
    y = np.array([0, 0, 0, 1])  # the second row is wrong
    curves = calibration.curves(logits, y, np.array([1.0, 100.0]), n_bins=2)
    for T, grp in curves.groupby("T"):
        conf = softmax(logits / T).max(1)
        which = (conf >= 0.75).astype(int)  # two equal-width bins on [1/2, 1]
        want = sum(
            (which == b).mean() * abs(conf[which == b].mean() - (logits.argmax(1) == y)[which == b].mean())
            for b in (0, 1)
            if (which == b).any()
        )
        assert grp["ece"].iloc[0] == pytest.approx(want)
    assert calibration.ece_by_temperature(curves)["T"].tolist() == [1.0, 100.0]
    assert calibration.accuracy(curves) == pytest.approx(0.75)
    fig = calibration.plot_calibration(curves, id_name="toy", num_classes=2)
    assert "accuracy 0.750" in fig.axes[0].get_title() and len(fig.axes[1].lines[0].get_xdata()) == 2


def test_id_logits_uses_the_grid_temperatures(cache, tmp_path, capsys):
    logits, y, temps = calibration.id_logits(cache)
    assert np.array_equal(temps, fx.ODIN_T) and logits.dtype == np.float64 and len(y) == fx.N
    adir, _ = fx.make_tiny_analysis_cache(tmp_path / "c", seed=0)
    np.savez(adir / "arrays" / f"{fx.ID_TEST}.npz", h=np.zeros((3, 2)))
    assert calibration.id_logits(AnalysisCache(adir)) is None and "[skip]" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ factorisation
def test_recomputed_scores_are_the_factor_products():
    rng = np.random.default_rng(0)
    h, f = np.abs(rng.standard_normal((5, 4))), rng.standard_normal((5, 3))
    r = factorisation.recomputed({"h": h, "logits": f}, T=2.0)
    p2, p1 = softmax(f / 2.0), softmax(f)
    assert np.allclose(r["GradNorm"], np.abs(h).sum(1) * np.abs(p2 - 1 / 3).sum(1) / 2.0)
    assert np.allclose(r["ExGrad"], ((h**2).sum(1) + 1) * (1 - (p1**2).sum(1)))


def test_convention_fit_finds_the_constant():
    r = np.array([1.0, 2.0, 0.0, 4.0])
    fit = factorisation.convention_fit(r, -3.0 * r)
    assert fit["c"] == -3.0 and fit["max_rel"] == 0.0
    fit = factorisation.convention_fit(np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 4.0]))
    assert fit["c"] == 2.0 and fit["max_rel"] == pytest.approx(0.5) and fit["median_rel"] == 0.0


def test_factorisation_check_on_the_cache(tiny, cache):
    fact = factorisation.check(cache)
    assert set(fact) == {"GradNorm", "ExGrad"}
    assert fact["GradNorm"]["c"] == pytest.approx(1.0) and fact["ExGrad"]["c"] == pytest.approx(-1.0)
    assert fact["GradNorm"]["max_rel"] < 1e-6 and fact["ExGrad"]["max_rel"] < 1e-6
    assert len(fact["GradNorm"]["r"]) == 3 * (fx.N - fx.N_VAL) and fact["GradNorm"]["is_ood"].sum() == 2 * 40
    summary = factorisation.summary(fact)
    assert summary["score"].tolist() == ["GradNorm", "ExGrad"] and summary["n"].tolist() == [120, 120]
    fig = factorisation.plot_check(fact, np.random.default_rng(0), max_scatter=50)
    assert [ax.get_title() for ax in fig.axes] == ["GradNorm", "ExGrad"]


def test_stored_score_falls_back_to_the_registry(tmp_path, capsys):
    adir, _ = fx.make_tiny_analysis_cache(tmp_path / "c", seed=0)
    shutil.rmtree(adir / "scores")
    cache = AnalysisCache(adir)
    a = cache.test_arrays("toy_far")
    s, src = factorisation.stored_score(cache, "toy_far", "msp", a)
    assert src == "registry" and np.allclose(s, softmax(a["logits"].astype(float)).max(1))
    assert factorisation.stored_score(cache, "toy_far", "nosuch", a) == (None, None)
    assert "[skip]" in capsys.readouterr().out


def test_simplex_grid_and_output_terms():
    P = factorisation.simplex_grid(4)
    assert P.shape == (15, 3) and np.allclose(P.sum(1), 1) and (P >= 0).all()
    terms = list(factorisation.output_terms(np.array([[1 / 3] * 3, [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])).values())
    assert np.allclose(terms[0], [2 / 3, 0.0, 0.5])  # 1 - ||p||^2
    assert np.allclose(terms[1], [1 / 3, 1.0, 0.5])  # max p
    assert np.allclose(terms[2], [0.0, 4 / 3, 2 / 3])  # ||p - u||_1
    fig = factorisation.plot_simplex(factorisation.output_terms(P), P)
    assert [ax.get_title() for ax in fig.axes[:3]] == list(factorisation.output_terms(P))


def test_model_points_only_for_three_classes(cache):
    pts = factorisation.model_points(cache)
    assert list(pts) == [fx.ID_TEST, *fx.OOD]
    assert all(np.allclose(p.sum(1), 1) and p.shape[1] == 3 for p, _ in pts.values())
    cache.meta["num_classes"] = 10
    assert factorisation.model_points(cache) is None


# ------------------------------------------------------------------------------ all weights vs last
def test_deep_vs_last_layer_comparisons(tiny, cache):
    adir = tiny[0]
    comps = deep_vs_last.comparisons(cache)
    assert [c.title.split(":")[0].split(" (")[0] for c in comps] == ["GradNorm", "GRODIN SG"]
    gn, gr = comps
    for n in [fx.ID_TEST, *fx.OOD]:
        a = {
            k: v[..., _test_rows(adir, n)] if k in ("odin_s", "grodin_sqnorm") else v[_test_rows(adir, n)]
            for k, v in np.load(adir / "arrays" / f"{n}.npz").items()
            if k in ("h", "logits", "kl_allw_sqnorm", "odin_s", "grodin_sqnorm")
        }
        h, p = a["h"].astype(float), softmax(a["logits"].astype(float))
        assert np.allclose(gn.deep[n], np.sqrt(a["kl_allw_sqnorm"].astype(float)))
        assert np.allclose(gn.last[n], np.abs(h).sum(1) * np.abs(p - 1 / 3).sum(1))
        assert np.array_equal(gr.deep[n], -a["grodin_sqnorm"][0, 0].astype(float))  # eps = 0, T = 1
        onehot = np.eye(3)[p.argmax(1)]
        assert np.allclose(gr.last[n], -((p - onehot) ** 2).sum(1) * ((h**2).sum(1) + 1))
    tab = deep_vs_last.table(comps, cache)
    assert len(tab) == 2 * len(fx.OOD)
    row = tab[(tab["comparison"] == gn.title) & (tab["ood_set"] == "toy_far")].iloc[0]
    assert row["auroc_all_weights"] == pytest.approx(mw_auroc(gn.deep[fx.ID_TEST], gn.deep["toy_far"]))
    assert row["auroc_last_layer"] == pytest.approx(mw_auroc(gn.last[fx.ID_TEST], gn.last["toy_far"]))
    from scipy.stats import spearmanr

    sets = [fx.ID_TEST, *fx.OOD]
    assert row["spearman"] == pytest.approx(
        spearmanr(np.concatenate([gn.last[n] for n in sets]), np.concatenate([gn.deep[n] for n in sets]))[0]
    )
    fig = deep_vs_last.plot(comps, cache, np.random.default_rng(0), max_scatter=30)
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == gn.title.replace(": ", ":\n", 1)
    bar_values = sorted(float(t.get_text()) for t in fig.axes[1].texts)
    assert bar_values == sorted(
        round(v, 2)
        for v in [
            *tab.loc[tab["comparison"] == gn.title, "auroc_all_weights"],
            *tab.loc[tab["comparison"] == gn.title, "auroc_last_layer"],
        ]
    )
    _assert_no_overlap(fig.axes[1].texts + fig.axes[3].texts)  # no "0.920.92"


def test_deep_vs_last_skips_missing_arrays(tmp_path, capsys):
    adir, _ = fx.make_tiny_analysis_cache(tmp_path / "c", seed=0)
    for p in (adir / "arrays").glob("*.npz"):
        with np.load(p) as z:
            kept = {k: z[k] for k in z.files if k not in ("kl_allw_sqnorm", "grodin_sqnorm")}
        np.savez(p, **kept)
    assert deep_vs_last.comparisons(AnalysisCache(adir)) == []
    out = capsys.readouterr().out
    assert "kl_allw_sqnorm missing" in out and "grodin_sqnorm missing" in out


# ------------------------------------------------------------------------------------ metric tables
def _metrics() -> pd.DataFrame:
    rows = [
        ("msp", "forward", "toy_far", 0.8),
        ("msp", "forward", "toy_near", 0.6),
        ("energy", "forward", "toy_far", 0.9),
        ("energy", "forward", "toy_near", 0.7),
        ("gradnorm", "gradient", "toy_far", 0.5),
        ("gradnorm", "gradient", "toy_near", 0.3),
        ("family_q1_msp", "decomposition", "toy_far", 0.7),
        ("family_q1_msp", "decomposition", "toy_near", 0.7),
        ("l2_x_negent", "decomposition", "toy_far", 0.9),
        ("l2_x_negent", "decomposition", "toy_near", 0.9),
    ]
    return pd.DataFrame(rows, columns=["method", "family", "ood_set", "auroc"])


def test_pivot_and_family_table(cache):
    mdf = _metrics()
    tab = metric_tables.pivot(mdf, ["toy_near", "toy_far"])
    assert list(tab.columns) == ["toy_near", "toy_far", "mean"] and tab.loc["msp", "mean"] == pytest.approx(0.7)
    fam = metric_tables.family_table(mdf, ["toy_near", "toy_far"])
    assert list(fam.index) == ["l2_x_negent", "‖h‖₁ × max p"]  # best mean first, display names
    assert metric_tables.family_table(mdf, ["toy_near"], family="lowdim").empty
    md = metric_tables.family_markdown(fam, cache)
    assert "| ‖h‖₁ × max p | 0.700 | 0.700 | 0.700 |" in md and "model = toy_mlp" in md
    ref = metric_tables.methods_table(mdf, ["gradnorm", "exgrad"], ["toy_near", "toy_far"])
    assert list(ref.index) == ["GradNorm"] and list(ref.columns) == ["toy_near", "toy_far"]


def test_heatmap_table_orders_sets_and_methods(cache):
    mdf = _metrics()
    tab = metric_tables.heatmap_table(mdf, cache)
    assert list(tab.columns) == ["toy_near", "toy_far", "mean"]  # near before far
    # families in registry order (forward, gradient, decomposition), best mean first within each
    assert list(tab.index) == ["energy", "msp", "gradnorm", "l2_x_negent", "family_q1_msp"]
    assert list(metric_tables.heatmap_table(mdf, cache, methods=["gradnorm", "nosuch", "msp"]).index) == [
        "gradnorm",
        "msp",
    ]
    assert metric_tables.families(mdf)["gradnorm"] == "gradient"
    fig = benchmark_figures.plot_heatmap(tab, mdf, cache)
    assert "AUROC (%)" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][:2] == ["Energy", "MSP"]


# -------------------------------------------------------------------------------- benchmark figures
def _sweep() -> pd.DataFrame:
    rows = []
    for m in ("odin", "grodin_sg"):
        for o in ("toy_far", "toy_near"):
            for e in (0.0, 0.002):
                for t in (1.0, 10.0):
                    v = 0.5 + 0.1 * (e > 0) + 0.01 * t + (0.2 if (m, o, e, t) == ("odin", "toy_near", 0.0, 1.0) else 0)
                    rows.append({"method": m, "ood_set": o, "eps": e, "T": t, "auroc_val": v, "auroc_test": v - 0.05})
    return pd.DataFrame(rows)


def test_odin_choices_are_the_validation_best_cells():
    sw = _sweep()
    chosen = benchmark_figures.odin_choices(sw, ["grodin_sg", "odin"], ["toy_near", "toy_far"])
    assert chosen[["method", "ood_set"]].values.tolist() == [
        ["grodin_sg", "toy_near"],
        ["grodin_sg", "toy_far"],
        ["odin", "toy_near"],
        ["odin", "toy_far"],
    ]
    for r in chosen.itertuples():
        d = sw[(sw["method"] == r.method) & (sw["ood_set"] == r.ood_set)]
        best = d.loc[d["auroc_val"].idxmax()]  # first maximum in file (grid) order
        assert (r.eps, r.T, r.auroc_val, r.auroc_test) == (
            best["eps"],
            best["T"],
            best["auroc_val"],
            best["auroc_test"],
        )
    tie = sw.assign(auroc_val=0.7)  # every cell tied: the first in grid order
    assert benchmark_figures.odin_choices(tie, ["odin"], ["toy_far"])[["eps", "T"]].values.tolist() == [[0.0, 1.0]] * 2
    assert benchmark_figures.sweep_column(sw) == "auroc_test"


def test_odin_sweep_figure_marks_the_chosen_cells(cache, capsys):
    sw = _sweep()
    chosen = benchmark_figures.odin_choices(sw, ["odin"], cache.ood_names)
    fig = benchmark_figures.plot_odin_sweep(sw, chosen, cache)
    top = fig.axes[0]
    stars = [ln for ln in top.lines if ln.get_marker() == "*"]
    assert [float(s.get_xdata()[0]) for s in stars] == chosen["eps"].tolist()
    assert [float(s.get_ydata()[0]) for s in stars] == chosen["auroc_test"].tolist()
    sw.loc[0, "auroc_test"] = np.nan
    assert benchmark_figures.sweep_column(sw) == "auroc_val" and "validation rows only" in capsys.readouterr().out


def test_param_sweep_and_cost_figures(tiny, cache, tmp_path):
    kn = pd.read_csv(tiny[1] / "sweep_knn.csv")
    fig = benchmark_figures.plot_param_sweep(
        kn, "k", ["knn", "lowdim_knn"], cache, xlabel="k", subtitles={"knn": "on h"}, label_groups=True
    )
    assert [ax.get_title() for ax in fig.axes] == ["KNN (on h)", display_name("lowdim_knn")]
    assert fig.axes[0].get_xscale() == "log"  # k from 1 to 100
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["toy near (near)", "toy far (far)"]
    assert fig.axes[0].get_legend() is None  # the legend sits beside the panels, not on the data
    tm = benchmark_figures.cost_table(tmp_path, cache)  # no method_costs.csv there: the extraction's timings
    assert tm is not None and set(tm["method"]) >= {"msp", "grodin_sg"}
    fams = {"msp": "forward", "grodin_sg": "gradient"}
    fig = benchmark_figures.plot_compute_cost(tm, fams)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0  # bar lengths are ratios
    assert "CPU (synthetic)" in ax.get_title() and "cpu" not in ax.get_title()
    summary = benchmark_figures.cost_summary(tm, fams)
    assert [t.get_text() for t in ax.texts] == [f"{v:.3g}" for v in summary["seconds_per_1000"]]  # values on bars


# ------------------------------------------------------------------------- every figure, as a reviewer
def _all_figures(tiny, cache, tmp_path) -> dict:
    """Every figure the notebooks draw, on the tiny cache, with the arguments the notebooks pass."""
    style.apply()  # as the notebooks do
    rng = np.random.default_rng(0)
    figs = {}
    if pytest.importorskip("openTSNE"):
        picks = tsne.sample_rows(cache, rng, n_points=20)
        views = tsne.views(cache, picks, "pca")
        emb = {
            t: tsne.embed(X, perplexity=5.0, n_iter=20, early_exaggeration_iter=10, seed=0) for t, X in views.items()
        }
        figs["tsne_features_vs_lowdim"] = tsne.plot_tsne(
            emb, tsne.roles(picks), cache.arrays(fx.ID_TEST)["y"][picks[0][1]], cache
        )
    Z = densities.lowdim_arrays(cache, "pca")
    top = densities.top_dimensions(cache, Z, 3)
    titles, caption = densities.top_titles(top)
    dims = list(top["dim"])
    figs["lowdim_densities_chosen"] = densities.plot_density_panels(
        cache, densities.density_curves(cache, Z, [0, 1]), [0, 1]
    )
    figs["lowdim_densities_top"] = densities.plot_density_panels(
        cache, densities.density_curves(cache, Z, dims), dims, titles=titles, caption=caption
    )
    figs["lowdim_single_sample"] = densities.plot_sample_pair(cache, densities.sample_pair(cache, Z))
    decs = sg_band.decompose_all(cache, tiny[1], "grodin_sg")
    figs["grodin_sg_decomposition"] = sg_band.plot_decomposition(next(iter(decs.values())), cache, method="grodin_sg")
    logits, y, temps = calibration.id_logits(cache)
    figs["grodin_calibration"] = calibration.plot_calibration(
        calibration.curves(logits, y, temps),
        id_name=style.set_name(cache.id_name, cache.id_name, "cifar10"),
        num_classes=3,
    )
    figs["igoe_factorisation"] = factorisation.plot_check(factorisation.check(cache), rng, 50)
    P = factorisation.simplex_grid(10)
    overlay = factorisation.model_points(cache)
    figs["igoe_simplex"] = factorisation.plot_simplex(factorisation.output_terms(P), P, overlay)
    figs["igoe_simplex"].suptitle(factorisation.simplex_title(cache, overlay))
    figs["igoe_deep_vs_lastlayer"] = deep_vs_last.plot(deep_vs_last.comparisons(cache), cache, rng, 50)
    sw = pd.read_csv(tiny[1] / "sweep_odin.csv")
    meths = sorted(set(sw["method"]))
    figs["sweep_odin_eps_T"] = benchmark_figures.plot_odin_sweep(
        sw, benchmark_figures.odin_choices(sw, meths, cache.ood_names), cache, benchmark_figures.sweep_column(sw)
    )
    kn = pd.read_csv(tiny[1] / "sweep_knn.csv")
    figs["sweep_knn_k"] = benchmark_figures.plot_param_sweep(
        kn, "k", sorted(set(kn["method"])), cache, xlabel="k", label_groups=True
    )
    rc = pd.read_csv(tiny[1] / "sweep_react.csv")
    figs["sweep_react_rg"] = benchmark_figures.plot_param_sweep(
        rc, "percentile", sorted(set(rc["method"])), cache, xlabel="p"
    )
    mdf = pd.read_csv(tiny[1] / "metrics.csv")
    figs["compute_cost"] = benchmark_figures.plot_compute_cost(
        benchmark_figures.cost_table(tiny[1], cache), metric_tables.families(mdf)
    )
    figs["auroc_heatmap"] = benchmark_figures.plot_heatmap(metric_tables.heatmap_table(mdf, cache), mdf, cache)
    return figs


def test_no_figure_shows_a_code_name(tiny, cache, tmp_path):
    """Titles, axes, ticks and legends of every figure show display names: no set, model, array, method
    or device code name (``toy_near``, ``toy_mlp``, ``kl_allw_sqnorm``, ``grodin_sg``, ``cpu``, ...)."""
    codes = style.code_names(cache)
    assert {"toy_near", "toy_far", "toy_test", "toy_mlp", "kl_allw_sqnorm", "grodin_sg", "cpu"} <= codes
    figs = _all_figures(tiny, cache, tmp_path)
    assert len(figs) == 14
    for name, fig in figs.items():
        assert style.code_names_in(fig, codes) == [], name


def test_figure_legends_sit_outside_the_data(tiny, cache, tmp_path):
    """Sweeps, the S/G decomposition, the single-sample profiles and the densities put their legend
    beside or above the panels (a figure legend that overlaps no axes), not on the data."""
    figs = _all_figures(tiny, cache, tmp_path)
    for name in (
        "sweep_odin_eps_T",
        "sweep_knn_k",
        "sweep_react_rg",
        "grodin_sg_decomposition",
        "lowdim_single_sample",
        "lowdim_densities_top",
        "igoe_deep_vs_lastlayer",
    ):
        fig = figs[name]
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        assert fig.legends and all(ax.get_legend() is None for ax in fig.axes), name
        box = fig.legends[0].get_window_extent(r)
        assert not any(box.overlaps(ax.get_window_extent(r)) for ax in fig.axes if ax.get_visible()), name


def test_heatmap_and_bar_labels_do_not_overlap(tiny, cache, tmp_path):
    figs = _all_figures(tiny, cache, tmp_path)
    _assert_no_overlap(figs["auroc_heatmap"].axes[0].get_xticklabels())
    fig = figs["igoe_deep_vs_lastlayer"]
    _assert_no_overlap(fig.axes[1].get_yticklabels())
    _assert_no_overlap(fig.axes[1].texts)
    _assert_no_overlap([ax.title for ax in figs["lowdim_densities_top"].axes if ax.get_visible()])


def test_odin_sweep_sets_differ_in_line_style_and_marker(tiny, cache):
    sw = pd.read_csv(tiny[1] / "sweep_odin.csv")
    fig = benchmark_figures.plot_odin_sweep(sw, benchmark_figures.odin_choices(sw, ["odin"], cache.ood_names), cache)
    lines = [ln for ln in fig.axes[0].lines if ln.get_linestyle() != "None"]
    assert len({(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}) == len(lines) == len(fx.OOD)
    assert len({ln.get_linestyle() for ln in lines}) == len(lines)  # apart even where the colours coincide


def test_calibration_shows_bin_counts_and_separates_temperatures():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 10)) * 4
    y = logits.argmax(1)
    y[:40] = (y[:40] + 1) % 10
    bins = calibration.curves(logits, y, np.array([1.0, 100.0, 1000.0]))
    assert bins.groupby("T")["count"].sum().tolist() == [400, 400, 400]  # counts in the CSV
    fig = calibration.plot_calibration(bins, id_name="CIFAR-10 test (ID)", num_classes=10)
    rel, counts = fig.axes[0], fig.axes[1]
    assert rel.get_xscale() == "log" and counts.get_ylabel() == "images per bin"
    pts = [c for c in rel.collections if len(c.get_offsets())]
    assert len(pts) == 3 and len({c.get_paths()[0].vertices.tobytes() for c in pts}) == 3  # one marker per T
    x100, x1000 = (float(np.asarray(c.get_offsets())[:, 0].max()) for c in pts[1:])
    assert x100 > 5 * x1000  # T = 100 and T = 1000 no longer at the same point


def test_every_notebook_figure_writes_its_csv_with_one_helper():
    """Each ``nb.save`` of a notebook passes the figure's numbers (one call writes PNG, PDF and CSV)."""
    import json
    import re

    nb_dir = Path(__file__).resolve().parents[1] / "notebooks"
    saves = []
    for path in sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            assert "save_numbers(" not in src, f"{path.name}: numbers written apart from their figure"
            saves += re.findall(r"nb\.save\(fig, \"(\w+)\"(, )?", src)
    assert len(saves) == 14 and all(comma for _, comma in saves), saves
