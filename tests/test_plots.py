"""The pictures' content, read off the matplotlib figures: ROC panels, a sweep's failed jobs, backend parity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from probe_lab.metrics import recall_at_fpr
from probe_lab.probe import ProbeWeights
from probe_lab.report.parity import BackendOutcome
from probe_lab.report.plots import parity_figure, plot_roc, roc_figure, sweep_figure
from probe_lab.report.sweep.job import JobRow

TITLE = "pytorch probe, npy:acts.npy, layer 16"

# 4 negatives and 4 positives: at threshold 0.6, one negative (0.6 itself) and three positives pass: FPR 1/4, TPR 3/4
SMALL_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SMALL_SCORES = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])

# 100 negatives at 0.00 ... 0.99 and 10 positives: 3 above every negative (recall 0.3 at FPR 0) and 1 more
# above all but one (recall 0.4 at FPR 1%)
MANY_LABELS = np.array([0] * 100 + [1] * 10)
MANY_SCORES = np.concatenate([np.arange(100) / 100, [0.995] * 3, [0.985], [0.5] * 6])


@pytest.fixture
def figures() -> Iterator[list[Figure]]:
    """Figures a test builds, closed after it."""
    built: list[Figure] = []
    yield built
    for fig in built:
        plt.close(fig)


def threshold_markers(ax: Axes) -> list[Line2D]:
    """The operating-point markers: hollow circles."""
    return [line for line in ax.get_lines() if line.get_marker() == "o" and line.get_markerfacecolor() == "white"]


def roc(figures: list[Figure], threshold: float | None = 0.6) -> tuple[Axes, Axes]:
    curves = {
        "validation": (SMALL_LABELS, SMALL_SCORES, 0.875),
        "test": (MANY_LABELS, MANY_SCORES, 0.9),
    }
    fig = roc_figure(curves, TITLE, threshold=threshold)
    figures.append(fig)
    assert fig.get_suptitle() == TITLE
    linear, log = fig.axes
    return linear, log


def legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def test_roc_has_a_linear_panel_and_a_log_fpr_panel_from_1e_3(figures: list[Figure]) -> None:
    linear, log = roc(figures)
    assert (linear.get_xscale(), log.get_xscale()) == ("linear", "log")
    assert linear.get_xlim() == (0, 1)
    assert log.get_xlim() == pytest.approx((1e-3, 1))
    curve_x = [np.asarray(line.get_xdata()) for line in log.get_lines() if "recall" in str(line.get_label())]
    assert len(curve_x) == 2
    assert all(x.min() == pytest.approx(1e-3) for x in curve_x)  # FPR 0 is drawn at the left edge


def test_roc_log_panel_starts_below_the_smallest_fpr_step_of_a_large_split(figures: list[Figure]) -> None:
    labels = np.array([0] * 4000 + [1] * 10)
    scores = np.linspace(0, 1, labels.size)
    fig = roc_figure({"test": (labels, scores, 0.99)}, TITLE)
    figures.append(fig)
    assert fig.axes[1].get_xlim() == pytest.approx((0.5 / 4000, 1))  # half of one negative's FPR


def test_roc_marks_the_operating_point_of_the_threshold_on_each_curve_in_both_panels(
    figures: list[Figure],
) -> None:
    linear, log = roc(figures, threshold=0.6)
    for ax in (linear, log):
        small, many = threshold_markers(ax)
        assert (list(small.get_xdata()), list(small.get_ydata())) == ([0.25], [0.75])
        # MANY: 40 of the negatives (0.60 ... 0.99) and the 4 positives above 0.98 pass 0.6
        assert (list(many.get_xdata()), list(many.get_ydata())) == ([0.4], [0.4])
        assert [marker.get_markeredgecolor() for marker in (small, many)] == ["C0", "C1"]  # the curves' colours
        assert legend_texts(ax)[-1] == "at threshold 0.6"


def test_roc_without_a_threshold_marks_no_operating_point(figures: list[Figure]) -> None:
    for ax in roc(figures, threshold=None):
        assert threshold_markers(ax) == []
        assert not any(text.startswith("at threshold") for text in legend_texts(ax))


def test_roc_log_panel_shows_each_splits_recall_at_1pct_fpr(figures: list[Figure]) -> None:
    linear, log = roc(figures)
    assert recall_at_fpr(MANY_LABELS, MANY_SCORES, 0.01) == pytest.approx(0.4)
    small_recall = recall_at_fpr(SMALL_LABELS, SMALL_SCORES, 0.01)
    assert legend_texts(log)[:2] == [
        f"validation: recall {small_recall:.3f} at 1% FPR",
        "test: recall 0.400 at 1% FPR",
    ]
    assert legend_texts(linear)[:2] == ["validation (AUROC 0.8750)", "test (AUROC 0.9000)"]
    vertical = [line for line in log.get_lines() if list(line.get_xdata()) == [0.01, 0.01]]
    assert len(vertical) == 1 and vertical[0].get_linestyle() == "--"
    squares = [(list(line.get_xdata()), list(line.get_ydata())) for line in log.get_lines() if line.get_marker() == "s"]
    assert squares == [([0.01], [small_recall]), ([0.01], [pytest.approx(0.4)])]


def test_roc_legends_sit_below_the_panels(figures: list[Figure]) -> None:
    linear, log = roc(figures)
    fig = linear.figure
    fig.tight_layout()
    fig.canvas.draw()
    for ax in (linear, log):
        legend_box = ax.get_legend().get_window_extent()
        assert legend_box.y1 < ax.get_window_extent().y0  # never over a curve


def test_plot_roc_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "roc.png"
    plot_roc(path, {"test": (SMALL_LABELS, SMALL_SCORES, 0.875)}, title=TITLE, threshold=0.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def completed(job: int, regularization: str, val: float) -> JobRow:
    overrides = [f"probe.regularization={regularization}", "data.layer=3"]
    return JobRow(str(job), overrides, "completed", "sklearn", val, val - 0.05, 0.1)


def failed(job: int, *overrides: str) -> JobRow:
    return JobRow(str(job), list(overrides), "failed", error="boom")


def failed_markers(ax: Axes) -> list[Line2D]:
    return [line for line in ax.get_lines() if str(line.get_label()).startswith("failed")]


def test_sweep_marks_failed_jobs_in_a_strip_below_the_aurocs_at_their_value(figures: list[Figure]) -> None:
    rows = [
        completed(0, "0.1", 0.8),
        completed(1, "1", 0.9),
        failed(2, "probe.regularization=1000", "data.layer=3"),
        failed(3, "probe.regularization=0.001", "data.layer=3"),
    ]
    fig = sweep_figure(rows)
    figures.append(fig)
    (ax,) = fig.axes
    (marker,) = failed_markers(ax)
    assert marker.get_label() == "failed (2)" and "failed (2)" in legend_texts(ax)
    assert (marker.get_marker(), marker.get_color(), marker.get_linestyle()) == ("x", "red", "None")
    assert list(marker.get_xdata()) == [1000.0, 0.001]
    left, right = ax.get_xlim()
    assert left < 0.001 and right > 1000  # the axis reaches the failed jobs' values
    assert ax.get_xscale() == "log"
    bottom, top = ax.get_ylim()
    marker_y = bottom + marker.get_ydata()[0] * (top - bottom)  # the marker's height is a fraction of the axes
    assert marker.get_transform() == ax.get_xaxis_transform()
    assert marker_y < 0.8 - 0.05 - 0.01  # below the lowest AUROC (job 0's test AUROC), clear of its point
    assert all(tick > marker_y for tick in ax.get_yticks())  # no AUROC tick label next to the markers


def test_sweep_axis_goes_logarithmic_when_a_failed_jobs_value_spans_the_decades(figures: list[Figure]) -> None:
    rows = [
        JobRow(str(job), [f"data.batch_size={size}"], "completed", "sklearn", 0.9, 0.8, 0.1)
        for job, size in enumerate((10, 20))
    ]
    fig = sweep_figure([*rows, failed(2, "data.batch_size=10000")])
    figures.append(fig)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"  # 10 ... 10000: three decades, though only 10 ... 20 completed
    assert list(failed_markers(ax)[0].get_xdata()) == [10000.0]
    figures.append(fig := sweep_figure(rows))
    assert fig.axes[0].get_xscale() == "linear"


def test_sweep_without_failures_draws_no_failed_marker(figures: list[Figure]) -> None:
    fig = sweep_figure([completed(0, "0.1", 0.8), completed(1, "1", 0.9)])
    figures.append(fig)
    (ax,) = fig.axes
    assert failed_markers(ax) == []
    assert ax.get_ylim()[0] > 0.7  # no strip added below the AUROCs


def test_failed_job_without_a_number_for_the_key_is_left_out_of_its_panel(figures: list[Figure]) -> None:
    rows = [completed(0, "0.1", 0.8), completed(1, "1", 0.9), failed(2, "probe.regularization=oops", "data.layer=3")]
    fig = sweep_figure(rows)
    figures.append(fig)
    (ax,) = fig.axes
    assert failed_markers(ax) == []


def test_sweep_where_every_job_failed_marks_each_job(figures: list[Figure]) -> None:
    fig = sweep_figure([failed(0, "probe.regularization=1"), failed(1, "probe.regularization=10")])
    figures.append(fig)
    (ax,) = fig.axes
    assert ax.get_title() == "no completed jobs"
    (marker,) = failed_markers(ax)
    assert marker.get_label() == "failed (2)" and list(marker.get_xdata()) == ["0", "1"]
    assert legend_texts(ax) == ["failed (2)"]
    assert list(ax.get_yticks()) == []  # no AUROC scale without AUROCs


def backend_outcome(backend: str, test_proba: list[float]) -> BackendOutcome:
    return BackendOutcome(backend, ProbeWeights(np.ones(2, dtype=np.float32), 0.0), np.array(test_proba), 0.9, 0.8, 1.0)


def test_parity_scatter_has_the_y_equals_x_line(figures: list[Figure]) -> None:
    a = backend_outcome("sklearn", [0.1, 0.5, 0.9])
    b = backend_outcome("pytorch", [0.2, 0.5, 0.7])
    fig = parity_figure(a, b)
    figures.append(fig)
    (ax,) = fig.axes
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[0.1, 0.2], [0.5, 0.5], [0.9, 0.7]]
    (diagonal,) = ax.get_lines()
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]  # y = x over the whole axes
    assert ax.get_xlim() == ax.get_ylim() == (0, 1)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("sklearn test probability", "pytorch test probability")
    assert "y = x (agreement)" in legend_texts(ax)
    assert ax.get_title() == "parity: max |Δ p| 0.2000"
