"""A run's records: the one module that reads and writes the JSON files train.py leaves in its output folder.

    run_config.json   the run's resolved arguments (secrets removed), written when training starts
    all_results.json  written when the run has finished: the validation history, the test metrics, the config, ...

    config = read_run_config(run_dir)                 # a dict; ValueError naming the file if missing or garbled
    dataset, folds, fold, split_seed = run_split(config)
    write_all_results(run_dir, results)               # atomic: a reader never sees half a file

Writes go to a temporary file in the same folder that then replaces the record (`os.replace`), so a run killed
mid-write leaves the old record or the new one, never a truncated one. Records are JSON with indent 2.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

RUN_CONFIG = "run_config.json"
ALL_RESULTS = "all_results.json"


def run_split(run_config: dict) -> tuple[str | None, int, int | None, int]:
    """(data set, folds, fold, split seed) of the data a train.py run trained on, from its run_config.json; folds 0 is
    the official splits. Runs from before `--cross_validation_split_seed` existed used partition 0."""
    return (run_config.get("dataset"), run_config.get("cross_validation_folds") or 0,
            run_config.get("cross_validation_fold"), run_config.get("cross_validation_split_seed") or 0)


def read_run_config(run_dir) -> dict:
    """The run's resolved arguments, from `<run_dir>/run_config.json`.

    Raises:
        ValueError: the file is missing, is not valid JSON, or does not hold a JSON object.
    """
    return _read_record(Path(run_dir) / RUN_CONFIG, "train.py writes it when a run starts")


def write_run_config(run_dir, config: dict) -> Path:
    """Write `<run_dir>/run_config.json` atomically and return its path. Values JSON cannot hold (paths, ...) are
    written as their `str`."""
    return _write_record(Path(run_dir) / RUN_CONFIG, json.dumps(config, indent=2, default=str))


def read_all_results(run_dir) -> dict:
    """The finished run's results, from `<run_dir>/all_results.json`.

    Raises:
        ValueError: the file is missing (the run has not finished), is not valid JSON, or does not hold a JSON object.
    """
    return _read_record(Path(run_dir) / ALL_RESULTS, "train.py writes it when a run has finished")


def write_all_results(run_dir, results: dict) -> Path:
    """Write `<run_dir>/all_results.json` atomically and return its path. `results` must hold plain JSON values
    (train.py passes them through `metrics.to_json_safe`)."""
    return _write_record(Path(run_dir) / ALL_RESULTS, json.dumps(results, indent=2))


def _read_record(path: Path, origin: str) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file ({origin}; is {path.parent} a train.py output folder?).") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); the file is damaged.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: holds a JSON {type(record).__name__}, not the object train.py writes.")
    return record


def _write_record(path: Path, text: str) -> Path:
    """`text` to `path` through a temporary file beside it and `os.replace`; the temporary file never stays."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


__all__ = [
    "ALL_RESULTS",
    "RUN_CONFIG",
    "read_all_results",
    "read_run_config",
    "run_split",
    "write_all_results",
    "write_run_config",
]
