"""ood_core.reporting.style: the figure conventions the notebooks share (colour scale at chance, log-axis labels,
family labels beside heatmap rows, ID points not buried under OOD points)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ood_core.reporting import style  # noqa: E402


@pytest.fixture()
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def _labels(axis) -> list[str]:
    axis.axes.figure.canvas.draw()
    lo, hi = sorted(axis.get_view_interval())
    return [
        t.get_text()
        for t in axis.get_ticklabels()
        if t.get_text() and lo <= t.get_position()[0 if axis is axis.axes.xaxis else 1] <= hi
    ]


def test_diverging_range_is_centred_and_covers_the_data():
    assert style.diverging_range([40.0, 97.0, np.nan], 50.0) == (3.0, 97.0)  # sub-chance 40 gets its own colour
    assert style.diverging_range([14.1, 60.0], 50.0) == pytest.approx((14.1, 85.9))
    assert style.diverging_range([50.0], 50.0) == (49.0, 51.0)  # at least the minimum half width


@pytest.mark.parametrize(
    "lo,hi,expected",
    [
        (0.021, 0.31, ["0.02", "0.05", "0.1", "0.2", "0.5"]),  # < 2 decades: 1-2-5 steps
        (0.004, 35.0, ["0.001", "0.01", "0.1", "1", "10", "100"]),  # >= 3 decades: decades only
        (31.0, 58.0, ["30", "40", "50", "60"]),  # under half a decade: every step
    ],
)
def test_label_log_axis_labels_at_least_two_ticks(ax, lo, hi, expected):
    ax.barh(["a", "b"], [lo, hi])
    ax.set_xscale("log")
    style.label_log_axis(ax.xaxis, lo, hi)
    assert _labels(ax.xaxis) == expected
    x0, x1 = ax.get_xlim()
    assert x0 < lo and x1 >= hi  # the shortest bar keeps a visible length


def test_label_log_axis_rejects_non_positive(ax):
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        style.label_log_axis(ax.xaxis, 0.0, 1.0)


def test_label_row_groups_names_each_run(ax):
    ax.imshow(np.zeros((5, 2)), extent=(0, 2, 5, 0), aspect="auto")
    runs = style.label_row_groups(
        ax, ["forward", "forward", "gradient", "lowdim", "lowdim"], names={"forward": "Forward", "lowdim": "Low-dim"}
    )
    assert runs == [("forward", 0, 2), ("gradient", 2, 3), ("lowdim", 3, 5)]
    assert [t.get_text() for t in ax.texts] == ["Forward", "gradient", "Low-dim"]
    separators = [ln for ln in ax.lines if list(ln.get_ydata()) in ([2, 2], [3, 3])]
    assert len(separators) == 2


def test_scatter_groups_draws_the_small_group_last_and_translucent(ax):
    rng = np.random.default_rng(0)
    x = rng.random(100)
    is_ood = np.arange(100) >= 10  # 10 ID, 90 OOD
    handles = style.scatter_groups(
        ax, x, x, {"ID test": (~is_ood, style.ID_COLOR), "OOD test": (is_ood, style.OOD_COLOR)}, s=3
    )
    assert [len(c.get_offsets()) for c in ax.collections] == [90, 10]  # ID on top
    assert all(c.get_alpha() < 1 for c in ax.collections)
    assert [h.get_label() for h in handles] == ["ID test", "OOD test"]


def test_label_log_axis_thins_many_decades(ax):
    ax.plot([1e-12, 100.0], [1.0, 2.0])
    ax.set_xscale("log")
    style.label_log_axis(ax.xaxis, 1e-12, 100.0)
    labels = _labels(ax.xaxis)
    assert 2 <= len(labels) <= 8 and labels[0] == "1e-13"


def test_display_names_are_one_mapping_for_sets_models_arrays_devices_and_methods():
    assert style.display("cifar10c_gaussian_noise5") == "CIFAR-10-C Gaussian noise (sev. 5)"
    assert style.display("tinyimagenet") == "Tiny ImageNet" and style.display("mnist") == "MNIST"
    assert style.display("resnet18_cifar") == "ResNet-18"
    assert style.display("kl_allw_sqnorm") == "‖∇KL(u‖p)‖² (all weights)"
    assert style.display("cpu") == "CPU" and style.display("cuda:0") == "GPU 0"
    assert style.display("grodin_sg") == "GRODIN SG"  # a method: its registered display name
    assert style.display("pca_last_block", "subspace") == "PCA of the last block"
    assert style.display("some_new_set") == "some new set"  # unknown: never the code name itself
    assert style.set_name("id_test", "id_test", "cifar10") == "CIFAR-10 test (ID)"
    assert style.set_name("toy_test", "toy_test", "toytrain") == "ID test"


def test_class_and_ood_colours_are_distinct_and_never_the_ood_grey():
    import matplotlib.colors as mc

    classes = [mc.to_hex(c) for c in style.class_colors(10)]
    assert len(set(classes)) == 10
    assert mc.to_hex(style.OOD_COLOR) not in classes and "#949494" not in classes  # class 7 is not grey
    names = [f"ood{i}" for i in range(8)]
    st = style.ood_styles(names)
    assert len({s["color"] for s in st.values()}) == 8 and style.ID_COLOR not in {s["color"] for s in st.values()}
    assert len({s["marker"] for s in st.values()}) == 8
    assert len({str(s["linestyle"]) for s in st.values()}) == 8


def test_savefig_writes_the_figure_and_its_numbers(tmp_path):
    import pandas as pd

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = style.savefig(fig, tmp_path, "f", numbers=pd.DataFrame({"x": [0, 1], "y": [0, 1]}))
    assert [p.name for p in paths] == ["f.png", "f.pdf", "f.csv"]
    assert (tmp_path / "f.csv").read_text().splitlines() == ["x,y", "0,0", "1,1"]
    plt.close(fig)


def test_code_names_in_finds_code_names_but_not_mathtext(ax):
    ax.set_title("AUROC on id_test")
    ax.set_xlabel("$G_{low}$ dim 3")
    ax.set_ylabel("runs on cpu")
    ax.legend(handles=ax.plot([0], [0], label="Tiny ImageNet"))
    assert sorted(style.code_names_in(ax.figure, {"cpu", "tinyimagenet"})) == ["AUROC on id_test", "runs on cpu"]


def test_scatter_groups_hollow_rings_and_a_group_on_top(ax):
    x = np.arange(100.0)
    is_ood = np.arange(100) >= 10
    style.scatter_groups(
        ax, x, x, {"ID test": (~is_ood, "b"), "OOD test": (is_ood, "0.6")}, hollow=("ID test",), last="OOD test", s=4
    )
    ring, dots = ax.collections
    assert len(ring.get_offsets()) == 10 and len(dots.get_offsets()) == 90  # OOD drawn on top
    assert len(ring.get_facecolors()) == 0 and ring.get_sizes()[0] > dots.get_sizes()[0]
