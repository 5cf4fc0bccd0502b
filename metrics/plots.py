"""Figures of an evaluation: confusion matrix, ROC curves, reliability diagram.

Every figure is a bare `matplotlib.figure.Figure` drawn on the Agg canvas: no pyplot, so no display is needed, no
global backend is switched, and figures are freed with their last reference (train.py makes one per epoch for
TensorBoard's `add_figure`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from .modules.medmnist_definitions import (
    ECE_BINS,
    calibration_bins,
    check_inputs,
    class_scores,
    num_classes,
    one_vs_rest_truth,
)

DPI = 120
TICK_LABEL_WIDTH = 18  # long class names are cut so the axes stay readable


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches the Agg canvas
    return figure


def _short(name: str) -> str:
    return name if len(name) <= TICK_LABEL_WIDTH else name[: TICK_LABEL_WIDTH - 1] + "…"


def _names(label_names: Sequence[str] | None, count: int) -> list[str]:
    return [str(i) for i in range(count)] if label_names is None else [str(n) for n in label_names]


def _draw_matrix(axes, matrix: np.ndarray, tick_names: Sequence[str], title: str) -> None:
    """Counts in the cells, colour by the row's share (each true class's recall profile), rows = true class."""
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    size = matrix.shape[0]
    font = 9 if size <= 8 else 7
    for i in range(size):
        for j in range(size):
            axes.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=font,
                      color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(size), [_short(n) for n in tick_names], rotation=45 if size > 2 else 0, ha="right"
                    if size > 2 else "center", fontsize=font)
    axes.set_yticks(range(size), [_short(n) for n in tick_names], fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(textwrap.fill(title, 40), fontsize=10)


def confusion_matrix_figure(cm, label_names: Sequence[str] | None = None, title: str = "Confusion matrix") -> Figure:
    """The confusion matrix as a figure: (C, C) counts (rows true), or (L, 2, 2) per-label matrices for multi-label."""
    cm = np.asarray(cm)
    if cm.ndim == 3:  # multi-label: one small 2x2 panel per label
        names = _names(label_names, cm.shape[0])
        columns = min(4, cm.shape[0])
        rows = -(-cm.shape[0] // columns)
        figure = _new_figure(2.6 * columns, 2.6 * rows)
        grid = figure.subplots(rows, columns, squeeze=False)
        for axes, matrix, name in zip(grid.ravel(), cm, names):
            _draw_matrix(axes, matrix, ["0", "1"], _short(name))
        for axes in grid.ravel()[cm.shape[0]:]:
            axes.set_axis_off()
        figure.suptitle(title)
        return figure
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"A confusion matrix must be (C, C) or (L, 2, 2), got shape {cm.shape}.")
    side = max(4.5, 0.55 * cm.shape[0] + 2.5)
    figure = _new_figure(side, side)
    _draw_matrix(figure.subplots(), cm, _names(label_names, cm.shape[0]), title)
    return figure


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def save_confusion_matrix(cm, label_names: Sequence[str] | None, path, title: str = "Confusion matrix") -> Path:
    """Write `confusion_matrix_figure(cm, label_names)` as a PNG; returns the path."""
    return _save(confusion_matrix_figure(cm, label_names, title), path)


def roc_curves_figure(scores, labels, task: str, label_names: Sequence[str] | None = None) -> Figure:
    """ROC curves: the positive class for binary-class, one-vs-rest per class for multi-class / ordinal-regression,
    one per label for multi-label. Classes without both positives and negatives have no curve (noted in the legend)."""
    scores, labels = check_inputs(scores, labels, task)
    classes = num_classes(scores, task)
    names = _names(label_names, classes)
    truth, score = one_vs_rest_truth(labels, task, classes), class_scores(scores, task)
    shown = [classes - 1] if task == "binary-class" else range(classes)
    figure = _new_figure(6.5 if classes > 2 else 5.0, 5.0)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for c in shown:
        if truth[:, c].min() == truth[:, c].max():
            axes.plot([], [], label=f"{_short(names[c])} (AUC undefined: one class only)")
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(truth[:, c], score[:, c])
        area = float(np.trapezoid(true_positive_rate, false_positive_rate))
        axes.plot(false_positive_rate, true_positive_rate, linewidth=1.5, label=f"{_short(names[c])} (AUC {area:.3f})")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC curve" if len(shown) == 1 else "ROC curves (one vs rest)")
    axes.legend(loc="lower right", fontsize=8 if classes <= 9 else 6)
    return figure


def save_roc_curves(scores, labels, task: str, label_names: Sequence[str] | None, path) -> Path:
    """Write `roc_curves_figure(...)` as a PNG; returns the path."""
    return _save(roc_curves_figure(scores, labels, task, label_names), path)


def reliability_diagram_figure(scores, labels, task: str, n_bins: int = ECE_BINS) -> Figure:
    """Accuracy against confidence in the ECE's bins (the decisions ACC counts), with the diagonal of perfect
    calibration, the ECE in the title and the share of decisions per bin below."""
    scores, labels = check_inputs(scores, labels, task)
    bins = calibration_bins(scores, labels, task, n_bins)
    edges, count = bins["edges"], bins["count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = count > 0
    figure = _new_figure(5.0, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.bar(centres[filled], bins["accuracy"][filled], width=width, edgecolor="black", alpha=0.8, label="accuracy")
    top.bar(centres[filled], (bins["confidence"] - bins["accuracy"])[filled], bottom=bins["accuracy"][filled],
            width=width, fill=False, edgecolor="tab:red", hatch="//", label="gap to mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram (ECE {bins['ece']:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, count / count.sum(), width=width, edgecolor="black", color="tab:grey")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
    return figure


def save_reliability_diagram(scores, labels, task: str, path, n_bins: int = ECE_BINS) -> Path:
    """Write `reliability_diagram_figure(...)` as a PNG; returns the path."""
    return _save(reliability_diagram_figure(scores, labels, task, n_bins), path)


__all__ = [
    "confusion_matrix_figure",
    "reliability_diagram_figure",
    "roc_curves_figure",
    "save_confusion_matrix",
    "save_reliability_diagram",
    "save_roc_curves",
]
