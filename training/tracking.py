"""What train.py writes to TensorBoard besides accelerate's scalars: the run's hyperparameters as an HParams record
linked to the metrics the run ends with, so that TensorBoard's HParams dashboard compares runs.

    hparams = hparam_values(config)              # the arguments as scalars (lists and mappings as JSON text)
    start_hparams_session(writer, hparams)       # when the run starts: its hyperparameters and its metrics' names
    end_hparams_session(writer, results, step)   # at the end: the metrics' values, as all_results.json has them

The record is written into the run's own log folder (`SummaryWriter.add_hparams` would make a sub-folder for it), so
the dashboard lists it under the run's name, beside its scalars.
"""

from __future__ import annotations

import json

from torch.utils.tensorboard.summary import hparams as hparams_summaries

# The final figures the HParams dashboard shows for each run (tags apart from the per-epoch `validation/...` scalars).
HPARAM_METRICS = ("hparam/validation_acc", "hparam/validation_auc", "hparam/test_acc", "hparam/test_auc",
                  "hparam/best_epoch")


def hparam_values(config: dict) -> dict:
    """The run's arguments as TensorBoard hyperparameters, which take bool, number, text or None only: lists and
    mappings go in as JSON text."""
    return {k: v if isinstance(v, (bool, int, float, str)) or v is None else json.dumps(v) for k, v in config.items()}


def start_hparams_session(writer, hparams: dict) -> None:
    """Record the hyperparameters with the names of the metrics to come (`HPARAM_METRICS`): every run declares the
    same metrics, since the dashboard takes the list from one run only."""
    experiment, session_start, _ = hparams_summaries(hparams, dict.fromkeys(HPARAM_METRICS, 0.0))
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(session_start)
    writer.flush()


def final_metrics(results: dict) -> dict:
    """The `HPARAM_METRICS` of a finished run's results (all_results.json's layout); undefined ones left out (a
    `--skip_test` run has no test metrics, an AUC may be undefined)."""
    validation, test = results.get("validation_metrics") or {}, results.get("test_metrics") or {}
    values = dict(zip(HPARAM_METRICS, (validation.get("acc"), validation.get("auc"), test.get("acc"), test.get("auc"),
                                       results.get("best_epoch"))))
    return {tag: value for tag, value in values.items() if value is not None}


def end_hparams_session(writer, results: dict, step: int) -> dict:
    """Write the run's final metrics as the record's values and mark it finished; returns the metrics written."""
    metrics = final_metrics(results)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, step)
    _, _, session_end = hparams_summaries({}, {})  # status: success
    writer.file_writer.add_summary(session_end)
    writer.flush()
    return metrics
