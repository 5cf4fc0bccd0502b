"""The project's metrics: MedMNIST's ACC / AUC and the rest, as local `evaluate` modules, plus inference and plots.

    scores = logits_to_scores(logits, task)                      # softmax, or sigmoid for multi-label
    results = compute_metrics(scores, labels, task, label_names)  # plain JSON-serialisable dict

`compute_metrics` runs the `evaluate` modules in `metrics/modules/` (loaded by path, never from the Hub, cached per
process). `predict` (metrics.inference) is the distributed inference loop that evaluate.py and train.py share (with
optional test-time flip averaging, `metrics.flip_averaging`);
`metrics.predictions` writes and reads per-epoch validation predictions; `metrics.plots` draws the confusion
matrix, ROC curves and reliability diagram; `metrics.report` formats the table.
Import the `evaluate` library through `import_evaluate_library`: the repository's evaluate.py shadows it.
"""

from .compute import (
    METRIC_NAMES,
    MODULES_DIR,
    TASKS,
    compute_metrics,
    load_metric,
    load_metrics,
    logits_to_scores,
    to_json_safe,
)
from .evaluate_library import import_evaluate_library, is_evaluate_library
from .flip_averaging import flip_averaged_logits, legacy_flip_averaging
from .inference import predict
from .predictions import FOLDER_NAME as PREDICTIONS_FOLDER
from .predictions import read_epoch_predictions, write_epoch_predictions
from .report import format_report

# Importing the package makes `evaluate` mean the library from here on, whatever sys.path holds.
import_evaluate_library()

__all__ = [
    "METRIC_NAMES",
    "MODULES_DIR",
    "TASKS",
    "compute_metrics",
    "flip_averaged_logits",
    "format_report",
    "import_evaluate_library",
    "is_evaluate_library",
    "legacy_flip_averaging",
    "load_metric",
    "load_metrics",
    "logits_to_scores",
    "PREDICTIONS_FOLDER",
    "predict",
    "read_epoch_predictions",
    "to_json_safe",
    "write_epoch_predictions",
]
