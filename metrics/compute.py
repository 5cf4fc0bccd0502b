"""`compute_metrics`: every metric of the project from gathered scores and labels, through the local `evaluate` modules."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .evaluate_library import import_evaluate_library
from .modules.medmnist_definitions import MULTI_LABEL, TASKS, check_inputs, check_task, num_classes

MODULES_DIR = Path(__file__).resolve().parent / "modules"
METRIC_NAMES = ("medmnist_acc", "medmnist_auc", "medmnist_report")
BOOTSTRAP_CONFIDENCE = 0.95


@functools.lru_cache(maxsize=None)
def load_metric(name: str, task: str):
    """The local `evaluate` module `name` (one of `METRIC_NAMES`) configured for `task`, loaded once per process.

    Loaded by path, so nothing is fetched from the Hub (works with HF_HUB_OFFLINE=1 / HF_EVALUATE_OFFLINE=1). The
    module keeps its inputs in memory (`keep_in_memory=True`): no cache files or locks are written, so any number of
    processes can each compute on their own (gathered) arrays.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the project's metrics are: {', '.join(METRIC_NAMES)}.")
    evaluate = import_evaluate_library()
    return evaluate.load(str(MODULES_DIR / f"{name}.py"), config_name=check_task(task), keep_in_memory=True)


def load_metrics(task: str) -> dict:
    """All of `METRIC_NAMES` for `task`, loaded (once per process). Call it early on every process to fail before
    any inference if the modules cannot be loaded, rather than after it."""
    return {name: load_metric(name, task) for name in METRIC_NAMES}


def logits_to_scores(logits: torch.Tensor | np.ndarray, task: str) -> np.ndarray:
    """Scores the metrics take: softmax over the classes for single-label tasks, sigmoid per label for
    'multi-label, binary-class'. Returns float64 NumPy (N, K), computed in float64 (logits may be half precision)."""
    check_task(task)
    logits = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    scores = torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=-1)
    return scores.numpy()


def compute_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    task: str,
    label_names: Sequence[str] | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict:
    """All metrics of a set of predictions, as plain JSON-serialisable values (NaN becomes None).

    Args:
        scores: (N, K) probabilities (`logits_to_scores`); binary-class may pass the positive column only.
        labels: (N,) or (N, 1) class indices; (N, L) 0/1 for 'multi-label, binary-class'.
        task: MedMNIST's task string (see `TASKS`); 'ordinal-regression' is scored like 'multi-class', as MedMNIST does.
        label_names: one name per class (label); defaults to "0", "1", ...
        bootstrap_samples: resamples for the 95% intervals of ACC and AUC; 0 skips them (`acc_ci95` / `auc_ci95`
            are then None), which is what per-epoch validation wants.
        seed: seed of the bootstrap resampling.

    Returns:
        {"task", "num_samples", "num_classes", "label_names",
         "acc", "auc" (MedMNIST's definitions; auc None if undefined), "acc_ci95", "auc_ci95" ([lo, hi] or None),
         "balanced_acc", "ece",
         "per_class": {name: {"precision", "recall", "f1", "support", "auc"}},
         "confusion_matrix": (C, C) list of lists, rows true / columns predicted; multi-label: (L, 2, 2),
             [[TN, FP], [FN, TP]] per label,
         "bootstrap": {"samples", "seed", "confidence", "method", "auc_resamples_dropped"} or None}
    """
    if int(bootstrap_samples) < 0:
        raise ValueError(f"bootstrap_samples must be >= 0, got {bootstrap_samples}.")
    # Validate here too: the error then names the real problem instead of an Arrow conversion failure.
    scores, labels = check_inputs(scores, labels, task)
    classes = num_classes(scores, task)
    names = [str(i) for i in range(classes)] if label_names is None else [str(n) for n in label_names]
    if len(names) != classes or len(set(names)) != classes:
        raise ValueError(f"Need {classes} distinct label names for these scores, got {names}.")

    inputs = {"predictions": scores, "references": labels}
    acc = load_metric("medmnist_acc", task).compute(**inputs)["acc"]
    auc = load_metric("medmnist_auc", task).compute(**inputs)["auc"]
    report = load_metric("medmnist_report", task).compute(
        **inputs, bootstrap_samples=int(bootstrap_samples), seed=int(seed)
    )
    results = {
        "task": task,
        "num_samples": int(scores.shape[0]),
        "num_classes": classes,
        "label_names": names,
        "acc": acc,
        "auc": auc,
        "acc_ci95": report["acc_ci95"],
        "auc_ci95": report["auc_ci95"],
        "balanced_acc": report["balanced_acc"],
        "ece": report["ece"],
        "per_class": {
            name: {key: report[key][i] for key in ("precision", "recall", "f1", "support", "auc")}
            for i, name in enumerate(names)
        },
        "confusion_matrix": report["confusion_matrix"],
        "bootstrap": None,
    }
    if bootstrap_samples:
        results["bootstrap"] = {
            "samples": int(bootstrap_samples),
            "seed": int(seed),
            "confidence": BOOTSTRAP_CONFIDENCE,
            "method": "percentile",
            "auc_resamples_dropped": report["auc_resamples_dropped"],
        }
    return to_json_safe(results)


def to_json_safe(value):
    """Plain Python values only: NumPy scalars and arrays converted, NaN and infinities replaced by None."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


__all__ = [
    "METRIC_NAMES",
    "MODULES_DIR",
    "TASKS",
    "compute_metrics",
    "load_metric",
    "load_metrics",
    "logits_to_scores",
    "to_json_safe",
]
