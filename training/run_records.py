"""A run's records, read and written here only: `run_config.json` (the run's resolved arguments) and
`all_results.json` (its summary, validation history and test metrics), and the data split a run trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_CONFIG = "run_config.json"
ALL_RESULTS = "all_results.json"


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: not the folder of a finished train.py run?") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}); the file is damaged.") from error


def write_run_config(run_dir: str | os.PathLike, config: dict) -> None:
    _write_json(Path(run_dir) / RUN_CONFIG, config)


def read_run_config(run_dir: str | os.PathLike) -> dict:
    return _read_json(Path(run_dir) / RUN_CONFIG)


def write_all_results(run_dir: str | os.PathLike, results: dict) -> None:
    _write_json(Path(run_dir) / ALL_RESULTS, results)


def read_all_results(run_dir: str | os.PathLike) -> dict:
    return _read_json(Path(run_dir) / ALL_RESULTS)


def run_split(run_config: dict) -> tuple[str | None, int, int | None, int]:
    """(data set, folds, fold, split seed) of the data a train.py run trained on, from its run_config.json; folds 0 is
    the official splits. Runs from before `--cross_validation_split_seed` existed used partition 0."""
    return (run_config.get("dataset"), run_config.get("cross_validation_folds") or 0,
            run_config.get("cross_validation_fold"), run_config.get("cross_validation_split_seed") or 0)
