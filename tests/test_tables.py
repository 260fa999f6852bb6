"""ood_core.reporting.tables / table_csv / table_render / reference(_compare) / analysis.benchmark (end to end on a
synthetic analysis dir)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from ood_core.reporting import reference as R
from ood_core.reporting import reference_compare as RC
from ood_core.reporting import table_csv as CSV
from ood_core.reporting import tables as TB
from ood_core.scores import registry


def _row(method, family, ood_set, group, auroc, fpr, **kw):
    r = {
        "method": method,
        "family": family,
        "ood_set": ood_set,
        "group": group,
        "auroc": auroc,
        "auroc_std": 0.001,
        "fpr95": fpr,
        "fpr95_ood_pos": fpr / 2,
        "aupr_in_ap": 0.9,
        "aupr_out_ap": 0.8,
        "aupr_in_trapz": 0.95,
        "aupr_out_trapz": 0.85,
        "hyperparams": {"T": 1.0, "eps": 0.0014},
        "protocol": "per_ood_val",
        "n_id": 100,
        "n_ood": 50,
        "id_accuracy": 0.9506,
        "model": "resnet18",
    }
    r.update(kw)
    return r


ROWS = [
    _row("msp", "forward", "tinyimagenet", "near", 0.80, 0.50),
    _row("msp", "forward", "mnist", "far", 0.90, 0.30),
    _row("energy", "forward", "tinyimagenet", "near", 0.85, 0.40),
    _row("energy", "forward", "mnist", "far", 0.70, 0.60),
    _row("grodin_g", "gradient", "tinyimagenet", "near", 0.95, 0.45),
    _row("grodin_g", "gradient", "mnist", "far", 0.60, 0.20),
]


def _table_rows(md: str, title_prefix: str) -> dict[str, list[str]]:
    """method (display name) -> cells of the Markdown table whose section title starts with ``title_prefix``."""
    sec = md.split(f"## {title_prefix}")[1].split("\n## ")[0]
    out = {}
    for line in sec.splitlines():
        if line.startswith("| ") and not line.startswith("| family"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[1]] = cells[2:]
    return out


# --------------------------------------------------------------------------------------- tables
def test_summary_group_averages():
    cols, body = TB.summary(ROWS, "auroc")
    assert cols == ["tinyimagenet", "mnist", "near avg", "far avg", "all avg"]
    by = {e["method"]: e for e in body}
    assert by["msp"]["near avg"] == pytest.approx(80.0) and by["msp"]["far avg"] == pytest.approx(90.0)
    assert by["energy"]["all avg"] == pytest.approx(77.5)
    assert [e["family"] for e in body] == ["forward", "forward", "gradient"]
    _, fbody = TB.summary(ROWS, "fpr95")
    assert {e["method"]: e["all avg"] for e in fbody}["grodin_g"] == pytest.approx(32.5)


def test_markdown_bolds_best_auroc_and_lowest_fpr():
    md = TB.metrics_markdown(ROWS, {"protocol": "per_ood_val"})
    auc = _table_rows(md, "AUROC")
    # columns: tinyimagenet, mnist, near avg, far avg, all avg
    assert auc["GRODIN G"][0].startswith("**95.00**") and not auc["MSP"][0].startswith("**")
    assert auc["MSP"][1].startswith("**90.00**") and not auc["GRODIN G"][1].startswith("**")
    assert auc["MSP"][4] == "**85.00**"  # all avg: msp 85.0 > energy 77.5 = grodin_g 77.5
    fpr = _table_rows(md, "FPR95 (%")
    assert fpr["Energy"][0] == "**40.00**" and fpr["GRODIN G"][1] == "**20.00**"
    assert fpr["MSP"][0] == "50.00"
    assert "ID test accuracy: 95.06 %" in md


def test_latex_bolds_and_escapes():
    tex = TB.metrics_latex(ROWS)
    assert r"\textbf{95.00}" in tex and r"\textbf{20.00}" in tex
    assert "GRODIN G" in tex and "grodin" not in tex and "95.06" in tex
    assert tex.count(r"\begin{tabular}") == 2


def test_metrics_csv_round_trip(tmp_path):
    paths = TB.write_metrics_tables(ROWS, tmp_path)
    assert [p.name for p in paths] == ["metrics.csv", "metrics.md", "metrics.tex"]
    with open(tmp_path / "metrics.csv") as f:
        assert next(csv.reader(f)) == CSV.METRIC_COLUMNS
    back = CSV.read_metrics_csv(tmp_path / "metrics.csv")
    assert back == ROWS


def test_ablation_table_bold(tmp_path):
    long = [
        {"method": "grodin_g", "setting": s, "ood_set": o, "auroc": v, "eps": 0.0, "T": 1.0}
        for s, o, v in [("vanilla", "a", 0.5), ("both", "a", 0.9), ("vanilla", "b", 0.7), ("both", "b", 0.6)]
    ]
    paths = TB.write_grodin_ablation(long, tmp_path)
    assert {p.name for p in paths} == {"ablation_grodin.md", "ablation_grodin.tex", "ablation_grodin.csv"}
    md = (tmp_path / "ablation_grodin.md").read_text()
    assert "| GRODIN G | eps and T | **90.00** | 60.00 |" in md
    assert "| GRODIN G | vanilla (eps=0, T=1) | 50.00 | **70.00** |" in md
    with open(tmp_path / "ablation_grodin.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"grodin_g"}  # the CSV keeps the code name


# ------------------------------------------------------------------------------------- renderer
def test_bold_best_marks_every_displayed_tie_and_never_a_missing_value():
    from ood_core.reporting.table_render import Table, best_rows, markdown

    col = [80.001, 79.998, 79.99, None, float("nan")]  # the first two both show 80.00
    assert best_rows(col, "max") == {0, 1}
    assert best_rows(col, "min") == {2}
    assert best_rows([None, None], "max") == set()
    t = Table(
        label_header=["m"],
        columns=["a", "b"],
        labels=[["x"], ["y"], ["z"]],
        values=[[80.001, None], [79.998, 1.0], [50.0, 1.004]],
        stds=[[0.5, None], [None, None], [None, 0.25]],
        best="max",
    )
    lines = markdown(t).splitlines()
    assert lines[:2] == ["| m | a | b |", "|---|---|---|"]
    assert lines[2:] == [
        "| x | **80.00** ±0.50 | — |",
        "| y | **80.00** | **1.00** |",
        "| z | 50.00 | **1.00** ±0.25 |",
    ]
    plain = Table(label_header=["m"], columns=["a", "b"], labels=t.labels, values=t.values)  # best=None: no bold
    assert plain.bold() == [set(), set()] and "**" not in markdown(plain)


def test_latex_variant_renders_the_same_table():
    from ood_core.reporting.table_render import Table, latex, markdown

    t = Table(
        label_header=["family", "method"],
        columns=["set_1", "all avg"],
        labels=[["A & B", "‖h‖₁ × x²"], ["", "m_2"], ["C", "50%"]],
        values=[[0.1, 0.2], [0.3, None], [0.05, 0.9]],
        stds=[[0.01, None], [None, None], [None, None]],
        best="min",
        groups=["A", "A", "C"],
        rule_before=1,
    )
    tex = latex(t, caption="Cap_1: 100 %", label="tab:x", header=["Family", "Method", *t.columns]).splitlines()
    assert tex[:9] == [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{Cap\_1: 100 \%}",
        r"\label{tab:x}",
        r"\begin{tabular}{llr|r}",
        r"\toprule",
        r"Family & Method & set\_1 & all avg \\",
        r"\midrule",
    ]
    assert tex[9] == (
        r"A \& B & \ensuremath{\|}h\ensuremath{\|}\ensuremath{_1} \ensuremath{\times} x\ensuremath{^2}"
        r" & 0.10\,{\scriptsize$\pm$0.01} & \textbf{0.20} \\"
    )
    assert tex[10] == r" & m\_2 & 0.30 & -- \\"
    assert tex[11] == r"\midrule" and tex[12] == r"C & 50\% & \textbf{0.05} & 0.90 \\"
    assert tex[-3:] == [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    md = markdown(t)
    assert "| C | 50% | **0.05** | 0.90 |" in md and "| A & B | ‖h‖₁ × x² | 0.10 ±0.01 | **0.20** |" in md


def test_tex_escape_every_special_character_once():
    from ood_core.reporting.table_render import tex_escape

    assert tex_escape("a\\b") == r"a\textbackslash{}b"  # not re-escaped into \textbackslash\{\}
    assert tex_escape("&%$#_{}~^") == r"\&\%\$\#\_\{\}\textasciitilde{}\^{}"
    assert tex_escape("±—−") == r"$\pm$---"
    assert tex_escape(12.5) == "12.5"


# -------------------------------------------------------------------------------- display names
def _package_scores() -> list[str]:
    """Scores registered by ood_core.scores itself (tests register their own stand-ins)."""
    return [n for n in registry.names() if registry.get(n).fn.__module__.startswith("ood_core.scores.")]


def test_every_registered_score_has_a_unique_display_name():
    names = _package_scores()
    assert len(names) > 30
    missing = [n for n in names if not registry.get(n).display]
    assert not missing, f"scores without a display name: {missing}"
    shown = [registry.display_name(n) for n in names]
    dup = sorted({d for d in shown if shown.count(d) > 1})
    assert not dup, f"display names used twice: {dup}"
    assert registry.display_name("family_q1_l1u") == "‖h‖₁ × ‖p−u‖₁"
    assert registry.display_name("no_such_method") == "no_such_method"  # e.g. a row of an older CSV
    assert all(registry.family_display(f) != f for f in registry.FAMILIES)


def test_register_refuses_a_display_name_twice():
    with pytest.raises(ValueError, match="display name 'MSP' is already used by 'msp'"):
        registry.register("_test_dup_display", family="forward", display="MSP")(lambda arrays, state=None: 0)
    assert "_test_dup_display" not in registry.names()


def test_registry_entry_states_inputs_grid_use_and_sweeps():
    low = registry.get("lowdim_knn")
    assert low.inputs() == ("lowdim_pca",) and low.inputs({"subspace": "avg"}) == ("lowdim_avg",)
    assert registry.get("lowdim_knn_react").inputs({"subspace": "head"}) == ("h", "W", "b", "lowdim_head")
    assert all(registry.get(n).inputs() for n in _package_scores())  # every score says what it reads
    assert registry.names(uses_grid=True) == ["odin", "iodin", "grodin_s", "grodin_sg", "grodin_g"]
    assert [s.ablation for s in low.sweeps] == ["lowdim_k", "lowdim_subspace"]
    swept = {n: [s.params for s in registry.get(n).sweeps] for n in _package_scores() if registry.get(n).sweeps}
    assert swept == {
        "odin": [("eps", "T")],
        "react": [("percentile",)],
        "knn": [("k",)],
        "rg": [("percentile",)],
        "grodin_sg": [("eps", "T")],
        "grodin_g": [("eps", "T")],
        "lowdim_knn": [("k",), ("subspace",)],
    }


def test_register_refuses_an_entry_that_contradicts_itself():
    fn = lambda arrays, state=None, **_: 0  # noqa: E731
    with registry.temporary_scores():
        with pytest.raises(ValueError, match="names parameter\\(s\\) \\['subspace'\\]"):
            registry.register("_test_bad_needs", family="lowdim", needs=("lowdim_{subspace}",))(fn)
        with pytest.raises(ValueError, match="takes parameters \\('eps', 'T'\\)"):
            registry.register("_test_bad_grid", family="forward", needs=("odin_s",), defaults={"T": 1.0})(fn)
        with pytest.raises(ValueError, match="sweep over \\('k',\\)"):
            registry.register("_test_bad_sweep", family="forward", sweeps=[registry.Sweep(("k",))])(fn)
        with pytest.raises(ValueError, match="two-parameter sweep"):
            registry.Sweep(("eps", "k"))

        def stated(arrays, state=None, *, T: float = 1.0):
            return 0

        with pytest.raises(ValueError, match="\\['T'\\] stated in its signature and in register"):
            registry.register("_test_bad_twice", family="forward", defaults={"T": 1.0})(stated)
    assert not [n for n in registry.names() if n.startswith("_test_bad")]


def test_temporary_scores_removes_what_was_registered_inside():
    before = registry.names()
    with registry.temporary_scores():
        registry.register("_test_temp", family="forward")(lambda arrays, state=None: arrays["logits"][:, 0])
        assert "_test_temp" in registry.names()
    assert registry.names() == before


def test_rendered_tables_show_display_names_csv_keeps_code_names(tmp_path):
    rows = ROWS + [
        _row("family_q2_sqnorm", "decomposition", o, g, 0.7, 0.5)
        for o, g in (("tinyimagenet", "near"), ("mnist", "far"))
    ]
    TB.write_metrics_tables(rows, tmp_path)
    md, tex = (tmp_path / "metrics.md").read_text(), (tmp_path / "metrics.tex").read_text()
    assert "| Igoe family (no backward pass) | ‖h‖₂ × ‖p‖₂² |" in md
    assert "| Forward (features / logits) | MSP |" in md and "| msp |" not in md
    assert r"\ensuremath{\|}h\ensuremath{\|}\ensuremath{_2} \ensuremath{\times} " in tex
    assert "‖" not in tex and r"family\_q2" not in tex
    with open(tmp_path / "metrics.csv") as f:
        back = list(csv.DictReader(f))
    assert {r["method"] for r in back} == {"msp", "energy", "grodin_g", "family_q2_sqnorm"}
    assert {r["family"] for r in back} == {"forward", "gradient", "decomposition"}


# ------------------------------------------------------------------------------------ reference
def test_reference_data_well_formed():
    keys = {"source", "tag", "model", "id_dataset", "ood_set", "method", "metric", "value", "note"}
    assert all(keys <= set(e) for e in R.REFERENCE)
    assert {e["tag"] for e in R.REFERENCE} <= set(R.TAG_MEANING)
    grodin_tin = {e["method"]: e["value"] for e in R.entries(ood_set="TIN")}
    assert grodin_tin["grodin_g"] == 98.3 and grodin_tin["msp"] == 95.4
    gradnorm_near = [e for e in R.entries(method="gradnorm", ood_set="near", id_dataset="cifar10")]
    assert len(gradnorm_near) == 1 and gradnorm_near[0]["tag"] == "[V]" and gradnorm_near[0]["value"] == 54.90
    assert "[mem]" not in R.TAG_MEANING
    assert any("not comparable" in c for _, c, _ in R.SET_MAP["dtd10"])


def test_reference_md_gap_lines(tmp_path):
    rows = [
        _row("msp", "forward", "tinyimagenet", "near", 0.955, 0.5),  # GRODIN TIN msp 95.4: +0.1, no line
        _row("grodin_g", "gradient", "tinyimagenet", "near", 0.90, 0.5),
    ]  # GRODIN 98.3: -8.3 -> line
    p = RC.write_reference_md(
        rows, tmp_path / "reference.md", id_dataset="cifar10", model="resnet18", protocol="per_ood_val"
    )
    md = p.read_text()
    gap_lines = [l for l in md.splitlines() if l.startswith("- Gap")]
    grodin_lines = [l for l in gap_lines if "GRODIN G on TIN" in l]
    assert len(grodin_lines) == 1 and "-8.30 pts" in grodin_lines[0]
    for what in ("model weights/training", "OOD image lists/subsets", "preprocessing", "protocol"):
        assert what in grodin_lines[0]
    assert not [l for l in gap_lines if "MSP on TIN" in l]
    # msp vs OpenOOD near (88.03 [V]): ours 95.5 -> +7.47
    near_line = [l for l in gap_lines if "MSP on near" in l]
    assert len(near_line) == 1 and "+7.47 pts" in near_line[0]
    assert "[mem]" not in md and "none is quoted from memory" in md.split("##")[0]
    assert "SVHN, LSUN, iSUN, Places365, CIFAR-100" in md
    assert "| MSP | TIN | tinyimagenet | auroc | 95.40 | 95.50 | +0.10 | comparable |" in md


def test_reference_md_no_gap_when_close(tmp_path):
    rows = [_row("grodin_g", "gradient", "tinyimagenet", "near", 0.975, 0.5)]
    md = RC.reference_markdown(rows, id_dataset="cifar10", model="m", protocol="p")
    assert "GRODIN G on TIN" not in md and "- Gap" not in md


# ---------------------------------------------------------------------------- benchmark (e2e)
def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _grid_idx(arrays, eps, T):
    return int(np.flatnonzero(arrays["odin_eps"] == eps)[0]), int(np.flatnonzero(arrays["odin_T"] == T)[0])


def _bm_msp(arrays, state=None):
    return _softmax(arrays["logits"]).max(axis=1)


def _bm_odin(arrays, state=None, *, eps=0.0, T=1.0):
    ie, it = _grid_idx(arrays, eps, T)
    return arrays["odin_s"][ie, it]


def _bm_grodin(arrays, state=None, *, eps=0.0, T=1.0):
    ie, it = _grid_idx(arrays, eps, T)
    return -arrays["grodin_sqnorm"][ie, it] / arrays["odin_s"][ie, it] ** 2


def _fit_clip(train, *, percentile=90.0, **_):
    return {"c": float(np.percentile(train["h"], percentile))}


def _bm_react(arrays, state=None, *, percentile=90.0):
    z = np.minimum(arrays["h"], state["c"]) @ arrays["W"].T + arrays["b"]
    return np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)


def _bm_rg(arrays, state=None, *, percentile=90.0):
    return np.minimum(arrays["h"], state["c"]).sum(1) * _bm_react(arrays, state, percentile=percentile)


def _fit_lowknn(train, *, subspace="pca", **_):
    g = train[f"lowdim_{subspace}"]
    return {"bank": g / np.linalg.norm(g, axis=1, keepdims=True)}


def _bm_lowknn(arrays, state=None, *, subspace="pca", k=5):
    g = arrays[f"lowdim_{subspace}"]
    z = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(2 - 2 * z @ state["bank"].T, 0))
    return -np.sort(d, axis=1)[:, k - 1]


def _bm_saturated(arrays, state=None):
    """Like MSP of a confident model: distinct in float64, all 1.0 once rounded to float32."""
    return 1.0 + 1e-9 * arrays["logits"][:, 0].astype(np.float64)


def _bm_needs_missing(arrays, state=None):
    return arrays["lowdim_nope"][:, 0]


BM = {
    "_test_bm_msp": dict(fn=_bm_msp, family="forward", needs=("logits",)),
    "_test_bm_odin": dict(
        fn=_bm_odin,
        family="forward",
        grid={"eps": [0.0], "T": [1.0]},
        needs=("odin_s", "odin_eps", "odin_T"),
        sweeps=[registry.Sweep(("eps", "T"))],
    ),
    "_test_bm_grodin": dict(
        fn=_bm_grodin,
        family="gradient",
        grid={"eps": [0.0], "T": [1.0]},
        needs=("odin_s", "grodin_sqnorm", "odin_eps", "odin_T"),
        sweeps=[registry.Sweep(("eps", "T"), ablation="grodin")],
    ),
    "_test_bm_react": dict(
        fn=_bm_react,
        family="forward",
        grid={"percentile": [85.0, 90.0]},
        needs=("h", "W", "b"),
        fit=_fit_clip,
        sweeps=[registry.Sweep(("percentile",))],
    ),
    "_test_bm_rg": dict(
        fn=_bm_rg,
        family="gradient",
        needs=("h", "W", "b"),
        fit=_fit_clip,
        sweeps=[
            registry.Sweep(
                ("percentile",), values=(80, 85, 90, 95, 99), ablation="rg_percentile", caption="RG vs percentile"
            )
        ],
    ),
    "_test_bm_lowknn": dict(
        fn=_bm_lowknn,
        family="lowdim",
        grid={"k": [1, 5]},
        needs=("lowdim_{subspace}",),
        fit=_fit_lowknn,
        sweeps=[
            registry.Sweep(("k",), values=(1, 5, 10, 50), ablation="lowdim_k", caption="k"),
            registry.Sweep(("subspace",), ablation="lowdim_subspace", caption="subspace"),
        ],
    ),
    "_test_bm_missing": dict(fn=_bm_needs_missing, family="lowdim", needs=("lowdim_nope",)),
    "_test_bm_saturated": dict(fn=_bm_saturated, family="forward", needs=("logits",)),
}


@pytest.fixture(scope="module")
def bm_scores():
    """The stand-in scores above, registered for this module's tests only."""
    with registry.temporary_scores():
        for name, kw in BM.items():
            kw = dict(kw)
            fn = kw.pop("fn")
            registry.register(name, **kw)(fn)
        yield list(BM)


EPS = np.array([0.0, 0.001, 0.002])
TS = np.array([1.0, 10.0])


def _arrays(rng, n, shift, ood=False):
    """One dataset's arrays with the contract's keys and shapes (C=3, D=8, K=4, 3 eps x 2 T)."""
    logits = rng.normal(shift, 1.0, (n, 3)).astype(np.float32)
    odin_s = np.stack([np.stack([_softmax(logits / T).max(1) + e * rng.random(n) for T in TS]) for e in EPS])
    sq = np.abs(rng.normal(3.0 if ood else 1.0, 0.5, (len(EPS), len(TS), n))) + 0.1
    return {
        "h": np.abs(rng.normal(shift, 1.0, (n, 8))).astype(np.float32),
        "logits": logits,
        "y": (np.full(n, -1) if ood else rng.integers(0, 3, n)).astype(np.int64),
        "odin_T": TS,
        "odin_eps": EPS,
        "odin_s": odin_s.astype(np.float32),
        "grodin_sqnorm": sq.astype(np.float32),
        "kl_allw_sqnorm": rng.random(n).astype(np.float32),
        "lowdim_pca": rng.normal(shift, 1.0, (n, 4)).astype(np.float32),
    }


@pytest.fixture()
def analysis_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "analysis"
    (d / "arrays").mkdir(parents=True)
    sizes = {"cifar10_train": 150, "cifar10_test": 90, "tinyimagenet": 70, "mnist": 60}
    shifts = {"cifar10_train": 1.0, "cifar10_test": 1.0, "tinyimagenet": 0.3, "mnist": -0.5}
    for name, n in sizes.items():
        np.savez(d / "arrays" / f"{name}.npz", **_arrays(rng, n, shifts[name], ood=name in ("tinyimagenet", "mnist")))
    np.savez(d / "head.npz", W=rng.normal(size=(3, 8)).astype(np.float32), b=np.zeros(3, np.float32))
    splits = {}
    for name in ("cifar10_test", "tinyimagenet", "mnist"):
        perm = rng.permutation(sizes[name])
        splits[f"{name}__val"], splits[f"{name}__test"] = perm[:20], perm[20:]
    np.savez(d / "splits.npz", **splits)
    meta = {
        "profile": "tiny",
        "model": "resnet18_tiny",
        "num_classes": 3,
        "id_accuracy": 0.91,
        "train": "cifar10_train",
        "id_test": "cifar10_test",
        "ood": {"tinyimagenet": "near", "mnist": "far"},
        "lowdim_subspaces": ["pca", "avg"],
        "grid": {"odin_T": TS.tolist(), "odin_eps": EPS.tolist()},
    }
    (d / "meta.json").write_text(json.dumps(meta))
    return d


@pytest.fixture()
def bench():
    from analysis import benchmark as B

    return B


EXPECTED_FILES = [
    "metrics.csv",
    "metrics.md",
    "metrics.tex",
    "sweep_odin.csv",
    "sweep_react.csv",
    "sweep_knn.csv",
    "chosen_hyperparams.json",
    "reference.md",
    "skipped.csv",
    "paired.csv",
    "paired.md",
    *(
        f"{stem}.{ext}"
        for stem in ("ablation_grodin", "ablation_rg_percentile", "ablation_lowdim_k", "ablation_lowdim_subspace")
        for ext in ("md", "tex", "csv")
    ),
]


def test_benchmark_end_to_end(bm_scores, bench, analysis_dir, tmp_path):
    fig = tmp_path / "fig"
    out = bench.run_benchmark(
        analysis_dir=analysis_dir, fig_dir=fig, methods=bm_scores, protocol="per_ood_val", bootstrap_n=10, seed=0
    )
    assert out.metrics_csv == fig / "metrics.csv"
    assert out.rows == CSV.read_metrics_csv(fig / "metrics.csv")
    assert [s["method"] for s in out.skipped] == ["_test_bm_missing"] and out.protocol == "per_ood_val"
    assert set(out.chosen) == {m for m in bm_scores if m != "_test_bm_missing"}
    missing = [f for f in EXPECTED_FILES if not (fig / f).exists()]
    assert not missing, f"not written: {missing}"

    rows = CSV.read_metrics_csv(fig / "metrics.csv")
    ran = [m for m in bm_scores if m != "_test_bm_missing"]
    assert sorted({r["method"] for r in rows}) == sorted(ran)
    assert len(rows) == 2 * len(ran)
    assert all(r["protocol"].startswith("per_ood_val") and r["n_id"] == 70 for r in rows)
    assert {r["n_ood"] for r in rows if r["ood_set"] == "mnist"} == {40}
    assert all(r["auroc_std"] > 0 for r in rows)
    with open(fig / "skipped.csv") as f:
        skipped = list(csv.DictReader(f))
    assert [s["method"] for s in skipped] == ["_test_bm_missing"] and "lowdim_nope" in skipped[0]["reason"]

    chosen = json.loads((fig / "chosen_hyperparams.json").read_text())
    assert chosen["protocol"] == "per_ood_val"
    odin_grid = chosen["methods"]["_test_bm_odin"]["grid"]
    assert odin_grid == {"eps": EPS.tolist(), "T": TS.tolist()}  # the extraction grid, not the registered one
    with open(fig / "sweep_odin.csv") as f:
        sweep = list(csv.DictReader(f))
    assert len(sweep) == 2 * 2 * len(EPS) * len(TS)  # 2 methods x 2 sets x grid
    with open(fig / "sweep_knn.csv") as f:
        assert sorted({int(r["k"]) for r in csv.DictReader(f)}) == [1, 5, 10, 50]
    abl = (fig / "ablation_grodin.md").read_text()
    assert all(lbl in abl for lbl in ("vanilla (eps=0, T=1)", "only eps (T=1)", "only T (eps=0)", "eps and T"))
    sub = (fig / "ablation_lowdim_subspace.csv").read_text()
    assert "pca" in sub and "avg" not in sub  # lowdim_avg is absent -> logged and left out
    assert re.search(r"ID test accuracy: 91\.00 %", (fig / "metrics.md").read_text())

    sc = np.load(analysis_dir / "scores" / "mnist.npz")
    assert sc["_test_bm_msp"].shape == (40,) and set(ran) <= set(sc.files)
    sid = np.load(analysis_dir / "scores" / "cifar10_test.npz")
    assert sid["_test_bm_msp__vs__mnist"].shape == (70,) and "_test_bm_msp" in sid.files
    np.testing.assert_array_equal(sid["_test_idx"], np.load(analysis_dir / "splits.npz")["cifar10_test__test"])


def test_paired_csv_equals_the_pairs_recomputed_from_the_stored_scores(bm_scores, bench, analysis_dir, tmp_path):
    from ood_core.analysis_cache import AnalysisCache
    from ood_core.reporting.paired_table import paired_from_cache

    fig = tmp_path / "fig_paired"
    methods = ["_test_bm_msp", "_test_bm_odin", "_test_bm_grodin", "_test_bm_react"]
    bench.run_benchmark(analysis_dir=analysis_dir, fig_dir=fig, methods=methods, bootstrap_n=20, seed=3, paired=None)
    with open(fig / "paired.csv") as f:
        written = list(csv.DictReader(f))
    # default pairs: the best of each family present (forward, gradient), the better one first
    assert len(written) == 2 and {r["group"] for r in written} == {"near", "far"}
    a, b = written[0]["method_a"], written[0]["method_b"]
    assert (a, b) == ("_test_bm_grodin", "_test_bm_react")  # the best forward score is react here
    assert written[0]["protocol"] == "per_ood_val" and written[0]["bootstrap_n"] == "20"
    again = paired_from_cache(AnalysisCache(analysis_dir), [(a, b)], n=20, seed=3)
    assert [(r["group"], repr(r["diff"]), repr(r["ci_low"]), repr(r["ci_high"])) for r in again] == [
        (r["group"], r["diff"], r["ci_low"], r["ci_high"]) for r in written
    ]
    assert AnalysisCache(analysis_dir).scores_protocol("mnist") == "per_ood_val"
    md = (fig / "paired.md").read_text()
    assert "per_ood_val" in md and "20 resamples" in md
    bench.run_benchmark(
        analysis_dir=analysis_dir,
        fig_dir=fig,
        methods=methods,
        bootstrap_n=20,
        paired=[["_test_bm_msp", "_test_bm_react"]],
    )
    with open(fig / "paired.csv") as f:
        assert {(r["method_a"], r["method_b"]) for r in csv.DictReader(f)} == {("_test_bm_msp", "_test_bm_react")}
    with pytest.raises(KeyError, match="no_such_method"):
        bench.run_benchmark(analysis_dir=analysis_dir, fig_dir=fig, methods=methods, paired=["no_such_method"])


def test_benchmark_held_out_and_defaults(bm_scores, bench, analysis_dir, tmp_path):
    fig = tmp_path / "fig_ho"
    bench.run_benchmark(
        analysis_dir=analysis_dir,
        fig_dir=fig,
        methods=["_test_bm_odin", "_test_bm_react"],
        protocol="held_out_ood",
        bootstrap_n=5,
        seed=1,
        held_out="tinyimagenet",
    )
    chosen = json.loads((fig / "chosen_hyperparams.json").read_text())
    per_set = chosen["methods"]["_test_bm_odin"]["per_set"]
    assert per_set["mnist"]["params"] == per_set["tinyimagenet"]["params"]
    assert per_set["mnist"]["tuned_on"] == "tinyimagenet" and chosen["held_out"] == "tinyimagenet"
    fig2 = tmp_path / "fig_pd"
    bench.run_benchmark(
        analysis_dir=analysis_dir, fig_dir=fig2, methods=["_test_bm_odin"], protocol="paper_defaults", bootstrap_n=5
    )
    rows = CSV.read_metrics_csv(fig2 / "metrics.csv")
    assert all(r["hyperparams"] == {"eps": 0.0, "T": 1.0} and r["protocol"] == "paper_defaults" for r in rows)


def test_stored_scores_reproduce_the_table_exactly(bm_scores, bench, analysis_dir, tmp_path):
    """Every metric of metrics.csv, recomputed from <analysis_dir>/scores/*.npz, is equal (==) to the
    table's: scores are stored as scored (float64), not rounded (float32 made the saturated score's
    ties: AUROC 0.5 from the stored scores)."""
    from ood_core.evaluation import metrics as M

    fig = tmp_path / "fig_rt"
    methods = ["_test_bm_msp", "_test_bm_saturated", "_test_bm_odin", "_test_bm_react"]
    bench.run_benchmark(
        analysis_dir=analysis_dir, fig_dir=fig, methods=methods, protocol="per_ood_val", bootstrap_n=2, seed=0
    )
    rows = CSV.read_metrics_csv(fig / "metrics.csv")
    assert len(rows) == 2 * len(methods)
    sid = np.load(analysis_dir / "scores" / "cifar10_test.npz")
    column_of = {
        "auroc": "auroc",
        "fpr95_id_pos": "fpr95",
        "fpr95_ood_pos": "fpr95_ood_pos",
        "aupr_in_ap": "aupr_in_ap",
        "aupr_out_ap": "aupr_out_ap",
        "aupr_in_trapz": "aupr_in_trapz",
        "aupr_out_trapz": "aupr_out_trapz",
    }
    for r in rows:
        m, o = r["method"], r["ood_set"]
        s_id = sid[m] if m in sid.files else sid[f"{m}__vs__{o}"]
        s_ood = np.load(analysis_dir / "scores" / f"{o}.npz")[m]
        assert s_id.dtype == s_ood.dtype == np.float64
        ev = M.evaluate(s_id, s_ood)
        assert {col: ev[k] for k, col in column_of.items()} == {col: r[col] for col in column_of.values()}, (m, o)
    sat = [r for r in rows if r["method"] == "_test_bm_saturated"]
    assert all(r["auroc"] != 0.5 for r in sat)


def test_defaults_come_from_the_score_and_fit_signatures():
    def fit(train, *, percentile: float = 80.0, memo=None, **_):
        return {}

    def score(arrays, state=None, *, percentile: float = 80.0, T: float = 2.0, **pp):
        return 0

    with registry.temporary_scores():
        registry.register("_test_sig", family="forward", fit=fit, defaults={"probe": 3})(score)
        assert registry.get("_test_sig").defaults == {"percentile": 80.0, "T": 2.0, "probe": 3}
