"""ood_core.evaluation.tuning: validation-only selection, leakage guard, protocols, memoised fits."""

from __future__ import annotations

import numpy as np
import pytest

from ood_core.evaluation import tuning as T
from ood_core.scores import registry

SEEN_ROWS: list[np.ndarray] = []
FIT_CALLS: list[dict] = []


def _register(name, fn, **kw):
    registry.register(name, **kw)(fn)


def _rec_score(arrays, state=None, *, a=0.0):
    SEEN_ROWS.append(np.asarray(arrays["row"]).copy())
    return np.asarray(arrays["x"], dtype=np.float64) * (1.0 + a)


def _col_score(arrays, state=None, *, col=0):
    return np.asarray(arrays["feat"][:, col], dtype=np.float64)


def _fit_p(train, *, p=90.0, **_):
    FIT_CALLS.append({"p": p})
    return {"c": float(np.percentile(train["x"], p))}


def _fitted_score(arrays, state=None, *, p=90.0, T=1.0):
    return np.minimum(arrays["x"], state["c"]) / T


def _fit_kw(train, *, p=90.0, **params):  # a **kwargs it may use -> every parameter is fit-relevant
    FIT_CALLS.append({"p": p, **params})
    return {"c": float(np.percentile(train["x"], p))}


@pytest.fixture(scope="module", autouse=True)
def fake_scores():
    """Stand-in scores, registered for this module's tests only."""
    with registry.temporary_scores():
        _register(
            "_test_tune_rec",
            _rec_score,
            family="forward",
            grid={"a": [0.0, 1.0]},
            needs=("x", "row"),
        )
        _register(
            "_test_tune_col",
            _col_score,
            family="forward",
            grid={"col": [0, 1, 2]},
            needs=("feat",),
        )
        _register(
            "_test_tune_fit",
            _fitted_score,
            family="forward",
            grid={"p": [50.0, 90.0], "T": [1.0, 2.0, 3.0]},
            needs=("x",),
            fit=_fit_p,
        )
        _register(
            "_test_tune_fitkw",
            _fitted_score,
            family="forward",
            grid={"p": [50.0, 90.0], "T": [1.0, 2.0, 3.0]},
            needs=("x",),
            fit=_fit_kw,
        )
        yield


def _dataset(n, loc, rng, offset=0):
    # "row" carries a globally unique id (offset + local index) so the recorder knows the dataset too
    return {"x": rng.normal(loc, 1.0, n), "row": offset + np.arange(n), "W": np.ones((2, 2)), "b": np.zeros(2)}


def _split(n, n_val, rng):
    perm = rng.permutation(n)
    return T.Split(perm[:n_val], perm[n_val:])


OFFSETS = {"id": 0, "o1": 1000, "o2": 2000}


def _setup(rng):
    id_a = _dataset(100, 1.0, rng, OFFSETS["id"])
    oods = {"o1": _dataset(80, 0.0, rng, OFFSETS["o1"]), "o2": _dataset(60, -1.0, rng, OFFSETS["o2"])}
    splits = {"id": _split(100, 30, rng), "o1": _split(80, 20, rng), "o2": _split(60, 15, rng)}
    return id_a, oods, splits


# ------------------------------------------------------------------------------------- leakage
VAL_OFFSET = 3000  # the OOD validation set's rows (openood): all of them tune, none is a test row


@pytest.mark.parametrize("protocol", ["per_ood_val", "held_out_ood", "openood"])
def test_tuning_never_scores_test_rows(protocol):
    rng = np.random.default_rng(0)
    id_a, oods, splits = _setup(rng)
    val_ood = _dataset(50, -2.0, rng, VAL_OFFSET)
    SEEN_ROWS.clear()
    res = T.tune(
        "_test_tune_rec",
        protocol=protocol,
        id_arrays=id_a,
        id_split=splits["id"],
        ood_arrays=oods,
        ood_splits={o: splits[o] for o in oods},
        fitted_state_fn=lambda **p: None,
        held_out="o2",
        val_ood_arrays={"v": val_ood},
        val_ood_splits={"v": T.Split(np.arange(50), np.zeros(0, np.int64))},
    )
    assert SEEN_ROWS, "the fake score was never called"
    seen = set(np.concatenate(SEEN_ROWS).tolist())
    val_set = set(range(VAL_OFFSET, VAL_OFFSET + 50))
    val = {OFFSETS[d] + i for d in OFFSETS for i in splits[d].val.tolist()} | val_set
    test = {OFFSETS[d] + i for d in OFFSETS for i in splits[d].test.tolist()}
    assert not (seen & test), f"{len(seen & test)} test rows reached the tuning step"
    assert seen <= val
    id_val = {OFFSETS["id"] + i for i in splits["id"].val.tolist()}
    assert sum(set(r.tolist()) == id_val for r in SEEN_ROWS) == 2  # once per grid point, not per OOD set
    o1_val = {OFFSETS["o1"] + i for i in splits["o1"].val.tolist()}
    o2_val = {OFFSETS["o2"] + i for i in splits["o2"].val.tolist()}
    assert (o1_val <= seen) == (protocol == "per_ood_val")  # held-out protocol only looks at o2's val
    assert not (o1_val & seen) or protocol == "per_ood_val"
    assert (o2_val <= seen) == (protocol != "openood")  # openood: no row of any OOD test set
    assert (val_set <= seen) == (protocol == "openood")  # ... only the OOD validation set's rows
    assert res.protocol == protocol


def test_val_part_guard_raises_on_overlap():
    rng = np.random.default_rng(1)
    id_a, oods, splits = _setup(rng)
    bad = T.Split(np.r_[splits["o1"].val, splits["o1"].test[:1]], splits["o1"].test)
    with pytest.raises(T.LeakageError, match="overlap in 1 index"):
        bad.assert_disjoint()
    with pytest.raises(T.LeakageError):
        T.val_part(oods["o1"], bad)
    SEEN_ROWS.clear()
    with pytest.raises(T.LeakageError):
        T.tune(
            "_test_tune_rec",
            protocol="per_ood_val",
            id_arrays=id_a,
            id_split=splits["id"],
            ood_arrays=oods,
            ood_splits={"o1": bad, "o2": splits["o2"]},
            fitted_state_fn=lambda **p: None,
        )
    assert not SEEN_ROWS  # refused before scoring anything


def test_take_slices_sample_axis_only():
    arrays = {
        "h": np.arange(10).reshape(5, 2),
        "odin_s": np.arange(2 * 3 * 5).reshape(2, 3, 5),
        "odin_T": np.array([1.0, 2.0, 3.0]),
        "W": np.ones((4, 2)),
        "y": np.arange(5),
    }
    out = T.take(arrays, np.array([4, 0]))
    assert out["h"].tolist() == [[8, 9], [0, 1]]
    assert out["odin_s"].shape == (2, 3, 2) and out["odin_s"][1, 2].tolist() == [29, 25]
    assert out["odin_T"] is arrays["odin_T"] and out["W"] is arrays["W"]
    assert T.n_samples(arrays) == 5


# ----------------------------------------------------------------------------------- selection
def _feature_sets(rng):
    """col 1 separates ID from o1 only, col 2 separates ID from o2 only, col 0 is noise."""

    def mk(n, c1, c2):
        f = rng.normal(size=(n, 3))
        f[:, 1] += c1
        f[:, 2] += c2
        return {"feat": f}

    return mk(200, 3.0, 3.0), {"o1": mk(150, 0.0, 3.0), "o2": mk(150, 3.0, 0.0)}


def test_protocols_pick_the_right_grid_point():
    rng = np.random.default_rng(2)
    id_a, oods = _feature_sets(rng)
    splits = {"id": _split(200, 100, rng), "o1": _split(150, 75, rng), "o2": _split(150, 75, rng)}
    kw = dict(
        id_arrays=id_a,
        id_split=splits["id"],
        ood_arrays=oods,
        ood_splits={o: splits[o] for o in oods},
        fitted_state_fn=lambda **p: None,
    )
    per = T.tune("_test_tune_col", protocol="per_ood_val", **kw)
    assert per.params == {"o1": {"col": 1}, "o2": {"col": 2}}
    assert [p for p, _ in per.tables["o1"]] == [{"col": 0}, {"col": 1}, {"col": 2}]
    ho = T.tune("_test_tune_col", protocol="held_out_ood", held_out="o2", **kw)
    assert ho.params == {"o1": {"col": 2}, "o2": {"col": 2}} and ho.tuned_on("o1") == "o2"
    dflt = T.tune("_test_tune_col", protocol="paper_defaults", **kw)
    assert dflt.params == {"o1": {"col": 0}, "o2": {"col": 0}} and dflt.tables == {}
    with pytest.raises(ValueError, match="held-out"):
        T.tune("_test_tune_col", protocol="held_out_ood", **kw)


def test_openood_tunes_once_on_the_validation_sets_for_every_ood_set():
    """openood: one choice, on ID val vs the OOD validation sets (never the test sets' rows), for
    every OOD set; with two validation sets the criterion is their mean AUROC."""
    rng = np.random.default_rng(5)
    id_a, oods = _feature_sets(rng)
    _, vals = _feature_sets(rng)  # like o1 (col 1 separates) and like o2 (col 2 separates)
    every = {v: T.Split(np.arange(150), np.zeros(0, np.int64)) for v in vals}
    kw = dict(
        id_arrays=id_a,
        id_split=T.Split(np.arange(200), np.zeros(0, np.int64)),
        ood_arrays=oods,
        ood_splits={o: _split(150, 75, rng) for o in oods},
        fitted_state_fn=lambda **p: None,
    )

    def openood(names):
        return T.tune(
            "_test_tune_col",
            protocol="openood",
            val_ood_arrays={v: vals[v] for v in names},
            val_ood_splits={v: every[v] for v in names},
            **kw,
        )

    like_o1 = openood(["o1"])
    assert like_o1.params == {"o1": {"col": 1}, "o2": {"col": 1}}  # o2's own best (col 2) is never seen
    assert like_o1.tuned_on("o2") == "o1" and [p for p, _ in like_o1.tables["o1"]] == [{"col": c} for c in range(3)]
    both, like_o2 = openood(["o1", "o2"]), openood(["o2"])
    assert list(both.tables) == ["o1+o2"]
    for (p, auc), (_, a1), (_, a2) in zip(both.tables["o1+o2"], like_o1.tables["o1"], like_o2.tables["o2"]):
        assert auc == pytest.approx((a1 + a2) / 2)
    with pytest.raises(ValueError, match="OOD validation set"):
        T.tune("_test_tune_col", protocol="openood", **kw)
    with pytest.raises(T.LeakageError):  # a validation set whose parts overlap is refused
        T.tune(
            "_test_tune_col",
            protocol="openood",
            val_ood_arrays={"v": vals["o1"]},
            val_ood_splits={"v": T.Split(np.arange(150), np.arange(1))},
            **kw,
        )


def test_select_ties_go_to_first_in_grid_order():
    rng = np.random.default_rng(3)
    f_id = rng.normal(size=(50, 4))
    f_ood = rng.normal(size=(40, 4))
    f_id[:, 3] = f_id[:, 1]  # columns 1 and 3 identical -> identical AUROC
    f_ood[:, 3] = f_ood[:, 1]
    f_id[:, 1] += 5
    f_id[:, 3] += 5
    best, table = T.select("_test_tune_col", {"feat": f_id}, {"feat": f_ood}, lambda **p: None, {"col": [3, 1, 0]})
    assert best == {"col": 3} and table[0][1] == table[1][1] > table[2][1]
    best, _ = T.select("_test_tune_col", {"feat": f_id}, {"feat": f_ood}, lambda **p: None, {"col": [0, 1, 3]})
    assert best == {"col": 1}


def test_grid_points_order():
    assert T.grid_points({"a": [1, 2], "b": [3, 4]}) == [
        {"a": 1, "b": 3},
        {"a": 1, "b": 4},
        {"a": 2, "b": 3},
        {"a": 2, "b": 4},
    ]
    assert T.grid_points({}) == [{}]


# ---------------------------------------------------------------------------------- fit cache
@pytest.mark.parametrize("name,expected_fits", [("_test_tune_fit", 2), ("_test_tune_fitkw", 6)])
def test_fit_memoised_on_fit_parameters(name, expected_fits):
    rng = np.random.default_rng(4)
    id_a, oods, splits = _setup(rng)
    train = {"x": rng.normal(1.0, 1.0, 500)}
    fits = T.FitCache(train)
    FIT_CALLS.clear()
    res = T.tune(
        name,
        protocol="per_ood_val",
        id_arrays=id_a,
        id_split=splits["id"],
        ood_arrays=oods,
        ood_splits={o: splits[o] for o in oods},
        fitted_state_fn=fits.state_fn(name),
    )
    # grid has 2 percentiles x 3 temperatures: T does not enter _fit_p, so 2 fits; _fit_kw may use it: 6
    assert fits.n_fits == len(FIT_CALLS) == expected_fits
    fits.get(name, p=50.0, T=1.0)
    assert fits.n_fits == expected_fits  # served from the cache
    assert set(res.params) == {"o1", "o2"}


def test_choose_settings_picks_the_validation_best_cell_of_each_setting():
    from ood_core.extraction.grid_selection import anchor_values, choose_settings

    auc = {
        (0.0, 1.0): 0.60,
        (0.0, 10.0): 0.70,
        (0.002, 1.0): 0.65,
        (0.002, 10.0): 0.90,
        (0.004, 1.0): 0.65,
        (0.004, 10.0): 0.80,
    }
    table = [({"eps": e, "T": t}, v) for (e, t), v in auc.items()]
    got = {s: (p["eps"], p["T"]) for s, p in choose_settings(table).items()}
    assert got == {
        "vanilla": (0.0, 1.0),
        "only_eps": (0.002, 1.0),  # tie 0.65: the first in grid order
        "only_T": (0.0, 10.0),
        "both": (0.002, 10.0),
    }
    assert anchor_values([0.001, 0.002], [2.0, 5.0]) == (0.001, 2.0)  # no 0 / 1 on the grid: the smallest


def test_params_key_is_order_free_and_keeps_value_types():
    import numpy as np

    from ood_core.evaluation.tuning import params_key

    assert params_key({"T": 1.0, "eps": 0.0}) == params_key({"eps": 0.0, "T": 1.0})
    assert params_key({"T": np.float64(2.0)}) == params_key({"T": 2.0})
    assert params_key({"k": [1, 2]}) == params_key({"k": (1, 2)}) == params_key({"k": np.array([1, 2])})
    assert len({params_key({"k": v}) for v in (1, 1.0, True, "1", None)}) == 5
    hash(params_key({"m": {"a": [1, {"b": 2}]}}))


def test_a_training_set_too_small_for_the_fits_is_one_line():
    from ood_core.evaluation.benchmark import check_training_rows

    with pytest.raises(
        ValueError, match=r"training set 'train': the fits need at least 2 rows per class \(class 0 has 1\)"
    ):
        check_training_rows("train", np.array([0]))
    with pytest.raises(ValueError, match=r"class 2 has 1"):
        check_training_rows("train", np.array([0, 0, 1, 1, 2]))
    check_training_rows("train", np.array([0, 0, 1, 1]))  # enough
