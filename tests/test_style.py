"""ood_core.style: the figure conventions the notebooks share (colour scale at chance, log-axis labels,
family labels beside heatmap rows, ID points not buried under OOD points)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ood_core import style  # noqa: E402


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
