"""The metric definitions behind the local `evaluate` modules: plain NumPy and scikit-learn, no project imports.

`evaluate.load` copies this file next to each module script that imports it (a relative import), so it must stay
self-contained: no imports from the project, no relative imports of its own.

Conventions, shared by every function here:
    scores: (N, K) float probabilities. Single-label tasks: one column per class (softmax); 'binary-class' may also
        pass only the positive-class column, (N, 1) or (N,). 'multi-label, binary-class': one sigmoid per label.
    labels: (N,) class indices for single-label tasks ((N, 1), MedMNIST's layout, is accepted); (N, L) 0/1 for
        multi-label.
    task: MedMNIST's task string (`TASKS`); 'ordinal-regression' is scored like 'multi-class', as MedMNIST does.

ACC and AUC follow `medmnist.evaluator.getACC` / `getAUC` (v3.0.2) exactly:
    binary-class: AUC of the positive-class (last) column; ACC of `score > 0.5` on that column.
    multi-class / ordinal-regression: mean one-vs-rest AUC over the classes; ACC of the argmax.
    multi-label, binary-class: mean per-label AUC; mean per-label ACC of `score > 0.5`.
An AUC that is undefined (a class with no positive or no negative sample) is NaN, as scikit-learn >= 1.6 returns and
medmnist's mean then gives.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

BINARY = "binary-class"
MULTI_CLASS = "multi-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL)
THRESHOLD = 0.5  # medmnist's decision threshold for binary and multi-label scores
ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017)


def check_task(task: str) -> str:
    """`task` itself if it is one of MedMNIST's task strings, else a `ValueError` listing them."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; MedMNIST tasks are: {', '.join(repr(t) for t in TASKS)}.")
    return task


def input_features(task: str):
    """The `datasets.Features` of the modules' inputs: float score rows; one integer reference per sample, or one 0/1
    row per sample for multi-label."""
    import datasets  # only the evaluate modules need it

    reference = datasets.List(datasets.Value("int64")) if task == MULTI_LABEL else datasets.Value("int64")
    return datasets.Features({"predictions": datasets.List(datasets.Value("float64")), "references": reference})


def check_inputs(scores, labels, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise `scores` to float64 (N, K) and `labels` to int64 (N,) or (N, L); raise `ValueError`."""
    check_task(task)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N, K) array, got shape {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values.")
    if scores.min() < -1e-6 or scores.max() > 1 + 1e-6:
        raise ValueError(
            f"scores must be probabilities in [0, 1] (got values in [{scores.min():.4g}, {scores.max():.4g}]); "
            "convert logits first (softmax for single-label tasks, sigmoid for multi-label)."
        )
    if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    n, k = scores.shape

    if task == MULTI_LABEL:
        if labels.shape != (n, k):
            raise ValueError(f"multi-label labels must have the scores' shape {(n, k)}, got {labels.shape}.")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("multi-label labels must be 0 or 1.")
        return scores, labels

    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise ValueError(f"{task} labels must have shape ({n},) or ({n}, 1) to match the scores, got {labels.shape}.")
    if task == BINARY and k > 2:
        raise ValueError(f"binary-class scores must have 1 or 2 columns, got {k}.")
    if task != BINARY and k < 2:
        raise ValueError(f"{task} scores need one column per class (at least 2), got {k}.")
    classes = 2 if task == BINARY else k
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must be class indices in [0, {classes - 1}], got values in [{labels.min()}, "
                         f"{labels.max()}].")
    return scores, labels


def num_classes(scores: np.ndarray, task: str) -> int:
    """Classes (single-label) or labels (multi-label) the scores describe; binary-class always has 2."""
    return 2 if task == BINARY else scores.shape[1]


def predict_labels(scores: np.ndarray, task: str) -> np.ndarray:
    """The decisions medmnist's ACC scores: positive-column threshold (binary), argmax, or per-label threshold."""
    if task == BINARY:
        return (scores[:, -1] > THRESHOLD).astype(np.int64)
    if task == MULTI_LABEL:
        return (scores > THRESHOLD).astype(np.int64)
    return scores.argmax(axis=1)


def class_scores(scores: np.ndarray, task: str) -> np.ndarray:
    """(N, C) one score per class for one-vs-rest curves: binary-class becomes [1 - p, p] with p the positive column."""
    if task == BINARY:
        positive = scores[:, -1]
        return np.stack([1.0 - positive, positive], axis=1)
    return scores


def one_vs_rest_truth(labels: np.ndarray, task: str, classes: int) -> np.ndarray:
    """(N, C) 0/1 truth per class: the labels themselves for multi-label, one-hot otherwise."""
    if task == MULTI_LABEL:
        return labels
    return (labels[:, None] == np.arange(classes)[None, :]).astype(np.int64)


def auc_columns(scores: np.ndarray, labels: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score), both (N, C'), whose per-column AUCs medmnist averages (binary-class: the positive column only)."""
    if task == BINARY:
        return labels[:, None], scores[:, -1:]
    return one_vs_rest_truth(labels, task, scores.shape[1]), scores


def _roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ROC AUC, NaN (without a warning) where it is undefined."""
    if truth.min() == truth.max():
        return float("nan")
    return float(roc_auc_score(truth, score))


def get_acc(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """medmnist's ACC (`getACC`, threshold 0.5)."""
    predicted = predict_labels(scores, task)
    if task == MULTI_LABEL:
        return float(np.mean([np.mean(predicted[:, j] == labels[:, j]) for j in range(labels.shape[1])]))
    return float(np.mean(predicted == labels))


def get_auc(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """medmnist's AUC (`getAUC`); NaN when a class (or label) has only positives or only negatives."""
    truth, score = auc_columns(scores, labels, task)
    return float(np.mean([_roc_auc(truth[:, j], score[:, j]) for j in range(truth.shape[1])]))


def per_class_auc(scores: np.ndarray, labels: np.ndarray, task: str) -> list[float]:
    """One-vs-rest AUC of each class (multi-label: each label); NaN where undefined."""
    classes = num_classes(scores, task)
    truth, score = one_vs_rest_truth(labels, task, classes), class_scores(scores, task)
    return [_roc_auc(truth[:, c], score[:, c]) for c in range(classes)]


def weighted_auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one column under each row of sample weights: (N,), (N,), (B, N) -> (B,).

    With integer weights (how often each sample is drawn) this is the AUC of the resampled data set: the
    Mann-Whitney statistic, ties counting one half, exactly what `roc_auc_score` gives on the repeated samples.
    Sorting once and summing weights per tied group makes the bootstrap O(B * N) instead of a sort per resample.
    NaN where a row has no positive or no negative weight.
    """
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    positive = truth[order].astype(bool)
    weights = weights[:, order]
    positive_weight = np.add.reduceat(np.where(positive, weights, 0.0), group_starts, axis=1)  # (B, groups)
    negative_weight = np.add.reduceat(np.where(positive, 0.0, weights), group_starts, axis=1)
    negatives_below = np.cumsum(negative_weight, axis=1) - negative_weight
    wins = (positive_weight * (negatives_below + 0.5 * negative_weight)).sum(axis=1)
    pairs = positive_weight.sum(axis=1) * negative_weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def resample_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n) float counts of how often each of the n samples is drawn in n draws with replacement."""
    indices = rng.integers(0, n, size=(resamples, n))
    flat = (indices + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def correct_per_sample(scores: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Each sample's contribution to ACC: 0/1, or for multi-label the fraction of its labels decided right."""
    predicted = predict_labels(scores, task)
    if task == MULTI_LABEL:
        return (predicted == labels).mean(axis=1)
    return (predicted == labels).astype(np.float64)


def bootstrap_ci(
    scores: np.ndarray, labels: np.ndarray, task: str, samples: int, seed: int, confidence: float = 0.95
) -> dict:
    """Percentile bootstrap intervals for ACC and AUC: `samples` resamples of the N cases, drawn with replacement.

    ACC and AUC are computed on the same resamples with the definitions above (AUC through `weighted_auc`). Resamples
    whose AUC is undefined (a class missing from the resample) are dropped from the AUC interval and counted.
    Returns {"acc_ci95": [lo, hi], "auc_ci95": [lo, hi] or None, "auc_resamples_dropped": int}.
    """
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    correct = correct_per_sample(scores, labels, task)
    truth, score = auc_columns(scores, labels, task)
    chunk = max(1, 2_000_000 // n)  # resamples per step: keeps the (chunk, N) arrays around 16 MB
    acc_values, auc_values = [], []
    for start in range(0, samples, chunk):
        counts = resample_counts(rng, n, min(chunk, samples - start))
        acc_values.append(counts @ correct / n)
        column_aucs = [weighted_auc(truth[:, j], score[:, j], counts) for j in range(truth.shape[1])]
        auc_values.append(np.mean(column_aucs, axis=0))  # NaN if any column is undefined, as in get_auc
    acc_values, auc_values = np.concatenate(acc_values), np.concatenate(auc_values)
    valid_auc = auc_values[~np.isnan(auc_values)]
    tail = 100 * (1 - confidence) / 2
    return {
        "acc_ci95": [float(v) for v in np.percentile(acc_values, [tail, 100 - tail])],
        "auc_ci95": [float(v) for v in np.percentile(valid_auc, [tail, 100 - tail])] if valid_auc.size else None,
        "auc_resamples_dropped": int(samples - valid_auc.size),
    }


def decision_confidence(scores: np.ndarray, labels: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of every decision ACC counts: the top class's score for single-label tasks; for
    binary-class and each multi-label entry, the score of the side chosen at 0.5, i.e. max(p, 1 - p)."""
    predicted = predict_labels(scores, task)
    if task == BINARY or task == MULTI_LABEL:
        positive = scores[:, -1] if task == BINARY else scores
        confidence = np.where(predicted == 1, positive, 1.0 - positive)
        return confidence.ravel(), (predicted == labels).ravel().astype(np.float64)
    return scores.max(axis=1), (predicted == labels).astype(np.float64)


def calibration_bins(scores: np.ndarray, labels: np.ndarray, task: str, n_bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins ((i/n, (i+1)/n], the first one closed) of the decisions ACC counts.

    Returns {"edges": (n_bins+1,), "count": (n_bins,), "confidence": mean confidence per bin (NaN if empty),
    "accuracy": accuracy per bin (NaN if empty), "ece": sum over bins of count/total * |accuracy - confidence|}.
    """
    confidence, correct = decision_confidence(scores, labels, task)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    gaps = np.where(count > 0, np.abs(accuracy - mean_confidence), 0.0)
    ece = float(np.sum(count / count.sum() * gaps))
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy, "ece": ece}


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, task: str, n_bins: int = ECE_BINS) -> float:
    """ECE (Guo et al., 2017) of the decisions ACC counts, with `n_bins` equal-width bins."""
    return calibration_bins(scores, labels, task, n_bins)["ece"]


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Mean recall over the classes present (scikit-learn's definition); multi-label: mean over the labels."""
    predicted = predict_labels(scores, task)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": those classes are left out of the mean, which is the definition.
        warnings.simplefilter("ignore", UserWarning)
        if task == MULTI_LABEL:
            return float(np.mean([balanced_accuracy_score(labels[:, j], predicted[:, j])
                                  for j in range(labels.shape[1])]))
        return float(balanced_accuracy_score(labels, predicted))


def per_class_scores(scores: np.ndarray, labels: np.ndarray, task: str) -> dict[str, list]:
    """Per class (multi-label: per label, of its positive side) precision, recall, F1 and support; 0 where undefined."""
    predicted = predict_labels(scores, task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if task == MULTI_LABEL:
            precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, zero_division=0.0)
        else:
            precision, recall, f1, support = precision_recall_fscore_support(
                labels, predicted, labels=np.arange(num_classes(scores, task)), zero_division=0.0
            )
    return {
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "f1": [float(v) for v in f1],
        "support": [int(v) for v in support],
    }


def confusion(scores: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted; multi-label: (L, 2, 2), one [[TN, FP], [FN, TP]] per label."""
    predicted = predict_labels(scores, task)
    if task == MULTI_LABEL:
        return multilabel_confusion_matrix(labels, predicted)
    return confusion_matrix(labels, predicted, labels=np.arange(num_classes(scores, task)))
