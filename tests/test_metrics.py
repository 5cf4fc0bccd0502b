"""metrics: hand-made cases with known answers, equality with medmnist's Evaluator, the bootstrap, offline loading of
the local `evaluate` modules, the `evaluate` name clash with evaluate.py, plots and the text report."""

import importlib
import io
import json
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import metrics
from metrics import compute_metrics, logits_to_scores, plots
from metrics.evaluate_library import import_evaluate_library, is_evaluate_library
from metrics.modules import medmnist_definitions as definitions

ROOT = Path(__file__).resolve().parents[1]
BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL = "binary-class", "multi-class", "multi-label, binary-class", "ordinal-regression"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def one_hot(labels, classes):
    return np.eye(classes)[labels]


# --- hand-made cases ---------------------------------------------------------------------------------------------


def test_perfect_predictions_score_one_everywhere():
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    results = compute_metrics(one_hot(labels, 2), labels, BINARY, ["neg", "pos"], bootstrap_samples=200)
    assert results["acc"] == results["auc"] == results["balanced_acc"] == 1.0
    assert results["ece"] == 0.0  # confidence 1, always right
    assert results["acc_ci95"] == [1.0, 1.0] and results["auc_ci95"] == [1.0, 1.0]
    assert results["confusion_matrix"] == [[3, 0], [0, 4]]
    assert results["per_class"]["pos"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4, "auc": 1.0}
    assert results["num_samples"] == 7 and results["label_names"] == ["neg", "pos"]


def test_inverted_predictions_score_zero():
    labels = np.array([0, 1, 0, 1, 1, 0])
    results = compute_metrics(one_hot(1 - labels, 2), labels, BINARY, bootstrap_samples=0)
    assert results["acc"] == results["auc"] == results["balanced_acc"] == 0.0
    assert results["ece"] == 1.0  # confidence 1, always wrong
    assert results["confusion_matrix"] == [[0, 3], [3, 0]]
    assert results["acc_ci95"] is None and results["auc_ci95"] is None and results["bootstrap"] is None


def test_constant_predictions():
    labels = np.array([0] * 6 + [1] * 4)
    scores = np.tile([0.7, 0.3], (10, 1))  # always "negative", with confidence 0.7
    results = compute_metrics(scores, labels, BINARY, bootstrap_samples=100)
    assert results["acc"] == pytest.approx(0.6)
    assert results["auc"] == 0.5  # every positive-negative pair tied
    assert results["balanced_acc"] == 0.5
    assert results["ece"] == pytest.approx(0.1)  # accuracy 0.6 at confidence 0.7
    assert results["confusion_matrix"] == [[6, 0], [4, 0]]
    assert results["per_class"]["0"] == pytest.approx({"precision": 0.6, "recall": 1.0, "f1": 0.75, "support": 6,
                                                       "auc": 0.5})
    assert results["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4, "auc": 0.5}
    assert results["auc_ci95"] == [0.5, 0.5]


def test_multi_class_case_worked_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
                       [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    results = compute_metrics(scores, labels, MULTI_CLASS, ["a", "b", "c"], bootstrap_samples=0)
    assert results["acc"] == pytest.approx(4 / 6)
    # One-vs-rest: class b's positive scored 0.3 loses to one negative (0.6) out of 4; the others separate fully.
    assert results["auc"] == pytest.approx((1 + 7 / 8 + 1) / 3)
    assert results["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert results["balanced_acc"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert [results["per_class"][c]["precision"] for c in "abc"] == pytest.approx([1, 0.5, 2 / 3])
    assert [results["per_class"][c]["recall"] for c in "abc"] == pytest.approx([0.5, 0.5, 1])
    assert [results["per_class"][c]["f1"] for c in "abc"] == pytest.approx([2 / 3, 0.5, 0.8])
    assert [results["per_class"][c]["auc"] for c in "abc"] == pytest.approx([1, 7 / 8, 1])
    # Bins: {0.5 wrong}, {0.6 wrong, 0.6 right}, {0.7 right}, {0.8 right x2}.
    assert results["ece"] == pytest.approx((0.5 + 2 * 0.1 + 0.3 + 2 * 0.2) / 6)


def test_multi_label_case_worked_by_hand():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.3], [0.2, 0.1]])
    results = compute_metrics(scores, labels, MULTI_LABEL, ["x", "y"], bootstrap_samples=0)
    assert results["acc"] == pytest.approx((1 + 3 / 4) / 2)  # label y misses the positive scored 0.3
    assert results["auc"] == 1.0  # but ranks it above both negatives
    assert results["confusion_matrix"] == [[[2, 0], [0, 2]], [[2, 0], [1, 1]]]
    assert results["per_class"]["y"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2,
                                                       "auc": 1.0})
    assert results["balanced_acc"] == pytest.approx((1 + 0.75) / 2)


def test_binary_scores_may_be_the_positive_column_only():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    positive = rng.random(50)
    one_column = compute_metrics(positive, labels, BINARY, bootstrap_samples=50)
    two_columns = compute_metrics(np.stack([1 - positive, positive], 1), labels, BINARY, bootstrap_samples=50)
    assert one_column == two_columns


def test_undefined_auc_is_none_and_json_safe():
    labels = np.array([0, 0, 0])  # no positive: AUC undefined, as scikit-learn / medmnist give NaN
    results = compute_metrics(np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]), labels, BINARY, bootstrap_samples=20)
    assert results["auc"] is None and results["auc_ci95"] is None
    assert results["bootstrap"]["auc_resamples_dropped"] == 20
    assert results["acc"] == pytest.approx(2 / 3)
    json.dumps(results, allow_nan=False)


@pytest.mark.parametrize(
    "scores, labels, task, message",
    [
        (np.zeros((3, 2)), np.zeros(4, int), BINARY, "shape"),
        (np.array([[2.0, -1.0]]), np.array([0]), BINARY, "probabilities"),
        (np.full((2, 3), 1 / 3), np.array([0, 3]), MULTI_CLASS, "class indices"),
        (np.full((2, 2), 0.5), np.array([[0, 2], [1, 0]]), MULTI_LABEL, "0 or 1"),
        (np.full((2, 2), 0.5), np.array([0, 1]), "regression", "Unknown task"),
    ],
)
def test_bad_inputs_are_refused_clearly(scores, labels, task, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(scores, labels, task, bootstrap_samples=0)


def test_logits_to_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    scores = logits_to_scores(logits, MULTI_CLASS)
    assert scores.dtype == np.float64 and np.allclose(scores.sum(1), 1)
    assert scores[1] == pytest.approx([1 / 3] * 3) and scores[0].argmax() == 0
    assert logits_to_scores(np.array([[0.0, 100.0]]), MULTI_LABEL)[0] == pytest.approx([0.5, 1.0])
    assert logits_to_scores(np.array([[0.0, 0.0]]), BINARY)[0] == pytest.approx([0.5, 0.5])


# --- MedMNIST's own definitions ------------------------------------------------------------------------------------


def random_case(task, n, classes, rng):
    """Random scores rounded to 0.05, so that ties (which AUC must count as one half) are frequent."""
    if task == MULTI_LABEL:
        labels = rng.integers(0, 2, (n, classes))
        scores = np.round(rng.random((n, classes)) * 20) / 20
    else:
        labels = (np.arange(n) % classes)[rng.permutation(n)][:, None]  # medmnist's (N, 1) layout, all classes
        scores = rng.random((n, classes)) ** 3
        scores = np.round(scores / scores.sum(1, keepdims=True) * 20) / 20
    return scores, labels


@pytest.mark.parametrize("flag, task, classes", [("breastmnist", BINARY, 2), ("bloodmnist", MULTI_CLASS, 8),
                                                 ("chestmnist", MULTI_LABEL, 14), ("retinamnist", ORDINAL, 5)])
def test_acc_and_auc_equal_medmnist_evaluator(tmp_path, flag, task, classes):
    from medmnist.evaluator import Evaluator, getACC, getAUC
    from medmnist.info import INFO

    assert INFO[flag]["task"] == task
    scores, labels = random_case(task, 97, classes, np.random.default_rng(classes))
    np.savez(tmp_path / f"{flag}.npz", test_labels=labels)
    expected = Evaluator(flag, "test", root=str(tmp_path)).evaluate(scores)

    results = compute_metrics(scores, labels, task, bootstrap_samples=0)
    assert results["acc"] == pytest.approx(expected.ACC, abs=1e-12)
    assert results["auc"] == pytest.approx(expected.AUC, abs=1e-12)
    # Each `evaluate` module alone, too.
    assert metrics.load_metric("medmnist_acc", task).compute(predictions=scores, references=labels.squeeze(-1)
                                                             if task != MULTI_LABEL else labels)["acc"] \
        == pytest.approx(getACC(labels, scores, task), abs=1e-12)
    assert metrics.load_metric("medmnist_auc", task).compute(predictions=scores, references=labels.squeeze(-1)
                                                             if task != MULTI_LABEL else labels)["auc"] \
        == pytest.approx(getAUC(labels, scores, task), abs=1e-12)


# --- bootstrap -----------------------------------------------------------------------------------------------------


def test_weighted_auc_equals_sklearn_on_resamples_with_ties():
    rng = np.random.default_rng(0)
    truth, score = rng.integers(0, 2, 60), np.round(rng.random(60), 1)
    counts = definitions.resample_counts(rng, 60, 25)
    fast = definitions.weighted_auc(truth, score, counts)
    for row, value in zip(counts, fast):
        drawn = np.repeat(np.arange(60), row.astype(int))
        assert value == pytest.approx(roc_auc_score(truth[drawn], score[drawn]), abs=1e-12)
    assert definitions.weighted_auc(truth, score, np.ones((1, 60)))[0] == pytest.approx(roc_auc_score(truth, score))


def test_bootstrap_intervals_are_reproducible_and_bracket_the_estimate():
    scores, labels = random_case(MULTI_CLASS, 156, 4, np.random.default_rng(3))
    first = compute_metrics(scores, labels, MULTI_CLASS, bootstrap_samples=300, seed=7)
    again = compute_metrics(scores, labels, MULTI_CLASS, bootstrap_samples=300, seed=7)
    other = compute_metrics(scores, labels, MULTI_CLASS, bootstrap_samples=300, seed=8)
    assert first == again and first["acc_ci95"] != other["acc_ci95"]
    for key in ("acc", "auc"):
        low, high = first[f"{key}_ci95"]
        assert low <= first[key] <= high and 0 < high - low < 0.4
    assert first["bootstrap"] == {"samples": 300, "seed": 7, "confidence": 0.95, "method": "percentile",
                                  "auc_resamples_dropped": 0}


# --- loading: offline, and despite evaluate.py --------------------------------------------------------------------


def test_modules_load_by_path_with_the_network_blocked(monkeypatch, tmp_path):
    def refuse(self, address, *args):
        raise OSError(f"network blocked by the test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    evaluate = import_evaluate_library()
    # A fresh load (not the per-process cache), into an empty modules cache.
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(sys, "path", sys.path[:])  # evaluate appends the modules cache to sys.path
    module = metrics.load_metric.__wrapped__("medmnist_auc", BINARY)
    assert module.compute(predictions=[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], references=[0, 1, 1]) == {"auc": 1.0}
    assert list((tmp_path / "modules").rglob("medmnist_auc.py"))  # copied from the repository, not downloaded
    assert metrics.load_metric("medmnist_acc", BINARY) is metrics.load_metric("medmnist_acc", BINARY)  # cached


def test_import_evaluate_with_the_repository_root_first_on_sys_path(monkeypatch):
    library = sys.modules["evaluate"]
    assert is_evaluate_library(library) and "site-packages" in library.__file__
    monkeypatch.syspath_prepend(str(ROOT))

    # A first `import metrics` (neither it nor `evaluate` imported yet) gets the library, not the script.
    for name in [n for n in sys.modules if n in ("evaluate", "metrics") or n.startswith("metrics.")]:
        monkeypatch.delitem(sys.modules, name)
    fresh = importlib.import_module("metrics")
    assert fresh is not metrics and is_evaluate_library(sys.modules["evaluate"])
    assert "site-packages" in sys.modules["evaluate"].__file__

    # A plain `import evaluate` finds evaluate.py first; the script hands the name over to the library.
    monkeypatch.delitem(sys.modules, "evaluate")
    imported = importlib.import_module("evaluate")
    assert is_evaluate_library(imported) and sys.modules["evaluate"] is imported

    # The script already sitting in sys.modules under the library's name is replaced, with a warning.
    script = types.ModuleType("evaluate")
    script.__file__ = str(ROOT / "evaluate.py")
    monkeypatch.setitem(sys.modules, "evaluate", script)
    with pytest.warns(UserWarning, match="shadows"):
        repaired = import_evaluate_library()
    assert is_evaluate_library(repaired) and sys.modules["evaluate"] is repaired
    assert sys.path[0] == str(ROOT)  # the caller's sys.path is left as it was


# --- plots and report ----------------------------------------------------------------------------------------------


def assert_png(path):
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize("task, classes", [(BINARY, 2), (MULTI_CLASS, 5), (MULTI_LABEL, 6)])
def test_plots_are_valid_pngs(tmp_path, task, classes):
    scores, labels = random_case(task, 40, classes, np.random.default_rng(0))
    names = [f"class {i} with a rather long name" for i in range(classes)]
    results = compute_metrics(scores, labels, task, names, bootstrap_samples=0)
    figure = plots.confusion_matrix_figure(results["confusion_matrix"], names)
    assert type(figure).__name__ == "Figure" and figure.axes
    paths = [
        plots.save_confusion_matrix(results["confusion_matrix"], names, tmp_path / "cm.png"),
        plots.save_roc_curves(scores, labels, task, names, tmp_path / "roc.png"),
        plots.save_reliability_diagram(scores, labels, task, tmp_path / "reliability.png"),
    ]
    for path in paths:
        assert_png(path)


def test_report_table_lists_metrics_intervals_and_classes():
    scores, labels = random_case(MULTI_CLASS, 60, 3, np.random.default_rng(0))
    results = compute_metrics(scores, labels, MULTI_CLASS, ["alpha", "beta", "gamma"], bootstrap_samples=50)
    table = metrics.format_report(results, title="bloodmnist test")
    assert table.splitlines()[0] == "bloodmnist test"
    assert f"{results['acc']:.4f}  [{results['acc_ci95'][0]:.4f}, {results['acc_ci95'][1]:.4f}]" in table
    assert all(name in table for name in ("alpha", "beta", "gamma", "balanced ACC", "ECE", "confusion matrix"))
