"""The metrics beyond MedMNIST's ACC / AUC as a local `evaluate` module (load it by path:
`evaluate.load("metrics/modules/medmnist_report.py", "multi-class")`)."""

import evaluate

from .medmnist_definitions import (
    ECE_BINS,
    balanced_accuracy,
    bootstrap_ci,
    check_inputs,
    check_task,
    confusion,
    expected_calibration_error,
    input_features,
    per_class_auc,
    per_class_scores,
)

_DESCRIPTION = """
A classification report for a MedMNIST task (the configuration name): balanced accuracy; per-class precision,
recall, F1, support and one-vs-rest AUC (per label for 'multi-label, binary-class'); the confusion matrix (rows true,
columns predicted; multi-label: one [[TN, FP], [FN, TP]] per label); the expected calibration error of the decisions
ACC counts; and 95% percentile-bootstrap intervals for MedMNIST's ACC and AUC. Decisions follow MedMNIST: threshold
0.5 on the positive-class score for 'binary-class', argmax for 'multi-class' / 'ordinal-regression', threshold 0.5 per
label for 'multi-label, binary-class'.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, K) class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label.
        'binary-class' may pass only the positive-class column.
    references: (N,) class indices, or (N, L) 0/1 labels for 'multi-label, binary-class'.
    bootstrap_samples: resamples for the intervals (default 1000); 0 skips them (acc_ci95 / auc_ci95 are None).
    seed: seed of the resampling (default 0), so the intervals are reproducible.
    n_bins: equal-width confidence bins of the ECE (default 15).
Returns:
    balanced_acc: float.
    precision, recall, f1, auc: lists, one float per class (or label); auc is NaN where undefined.
    support: list of int, samples of each class (multi-label: positives of each label).
    confusion_matrix: list of lists of int, (C, C), or (L, 2, 2) for multi-label.
    ece: float.
    acc_ci95, auc_ci95: [low, high] or None; auc_resamples_dropped: resamples whose AUC was undefined.
Example:
    >>> report = evaluate.load("metrics/modules/medmnist_report.py", "binary-class")
    >>> round(report.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1], bootstrap_samples=0)["ece"], 4)
    0.15
"""

_CITATION = """
@inproceedings{guo2017calibration,
    title={On Calibration of Modern Neural Networks},
    author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
    booktitle={Proceedings of the 34th International Conference on Machine Learning}, year={2017}
}
"""


class MedmnistReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=input_features(check_task(self.config_name)),
        )

    def _compute(self, predictions, references, bootstrap_samples=1000, seed=0, n_bins=ECE_BINS):
        if int(bootstrap_samples) < 0:
            raise ValueError(f"bootstrap_samples must be >= 0, got {bootstrap_samples}.")
        task = self.config_name
        scores, labels = check_inputs(predictions, references, task)
        report = {
            "balanced_acc": balanced_accuracy(scores, labels, task),
            **per_class_scores(scores, labels, task),
            "auc": per_class_auc(scores, labels, task),
            "confusion_matrix": confusion(scores, labels, task).tolist(),
            "ece": expected_calibration_error(scores, labels, task, n_bins),
            "acc_ci95": None,
            "auc_ci95": None,
            "auc_resamples_dropped": 0,
        }
        if bootstrap_samples:
            report.update(bootstrap_ci(scores, labels, task, int(bootstrap_samples), int(seed)))
        return report
