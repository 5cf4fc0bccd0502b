"""A run's records: the one module that reads and writes the JSON files train.py leaves in its output folder.

    run_config.json   the run's resolved arguments (secrets removed), written when training starts
    all_results.json  written when the run has finished: the validation history, the test metrics, the config, ...

    config = read_run_config(run_dir)                 # a dict; ValueError naming the file if missing or garbled
                                                      # (renamed arguments under their current names)
    dataset, folds, fold, split_seed = run_split(config)
    write_all_results(run_dir, results)               # atomic: a reader never sees half a file

Writes go to a temporary file in the same folder that then replaces the record (`os.replace`), so a run killed
mid-write leaves the old record or the new one, never a truncated one. Records are JSON with indent 2.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

RUN_CONFIG = "run_config.json"
ALL_RESULTS = "all_results.json"
# Arguments that took Hugging Face's names (run_image_classification_no_trainer.py): the old name -> the current one.
# Records written before keep the old keys; the readers below give them under the current names.
RENAMED_ARGUMENTS = {"num_epochs": "num_train_epochs", "lr_scheduler": "lr_scheduler_type"}


def with_current_names(config: dict, source="", names: dict | None = None) -> dict:
    """`config` (a run's arguments) with every renamed argument under its current name (`names`: other name ->
    current name; default `RENAMED_ARGUMENTS`).

    Raises:
        ValueError: an argument appears under two names with different values (`source` names the file).
    """
    names = RENAMED_ARGUMENTS if names is None else names
    current, given_as = {}, {}
    for key, value in config.items():
        name = names.get(key, key)
        if name in current and current[name] != value:
            raise ValueError(f"{source}{': ' if source else ''}{given_as[name]}: {current[name]!r} and {key}: "
                             f"{value!r} name the same argument (--{name}); give it once.")
        current[name], given_as[name] = value, key
    return current


def run_split(run_config: dict) -> tuple[str | None, int, int | None, int]:
    """(data set, folds, fold, split seed) of the data a train.py run trained on, from its run_config.json; folds 0 is
    the official splits. Runs from before `--cross_validation_split_seed` existed used partition 0."""
    return (run_config.get("dataset"), run_config.get("cross_validation_folds") or 0,
            run_config.get("cross_validation_fold"), run_config.get("cross_validation_split_seed") or 0)


def read_run_config(run_dir) -> dict:
    """The run's resolved arguments, from `<run_dir>/run_config.json`, renamed arguments under their current names.

    Raises:
        ValueError: the file is missing, is not valid JSON, or does not hold a JSON object.
    """
    path = Path(run_dir) / RUN_CONFIG
    return with_current_names(_read_record(path, "train.py writes it when a run starts"), path)


def write_run_config(run_dir, config: dict) -> Path:
    """Write `<run_dir>/run_config.json` atomically and return its path. Values JSON cannot hold (paths, ...) are
    written as their `str`."""
    return _write_record(Path(run_dir) / RUN_CONFIG, json.dumps(config, indent=2, default=str))


def read_all_results(run_dir) -> dict:
    """The finished run's results, from `<run_dir>/all_results.json` (its `config` with renamed arguments under their
    current names).

    Raises:
        ValueError: the file is missing (the run has not finished), is not valid JSON, or does not hold a JSON object.
    """
    path = Path(run_dir) / ALL_RESULTS
    results = _read_record(path, "train.py writes it when a run has finished")
    if isinstance(results.get("config"), dict):
        results["config"] = with_current_names(results["config"], path)
    return results


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


# What train.py writes into a run folder (and evaluate.py beside a run's models): all that --overwrite_output_dir
# may remove. A folder holding anything else is not a run folder and is never emptied.
RUN_FOLDER_ENTRIES = (RUN_CONFIG, ALL_RESULTS, "best", "last", "mae", "checkpoints", "runs",
                      "validation_predictions", ".hub_staging", ".tmp-*", "*-eval-*")
# Arguments that do not change what a run computes: a resumed run may differ from its recorded one in these only.
# Compiling changes float rounding only (tests/test_torch_compile.py: within 1e-4 of eager), so a run may be resumed
# compiled or not; --dataloader_drop_last changes the updates and is not here.
OUTCOME_NEUTRAL = {"output_dir", "resume_from_checkpoint", "overwrite_output_dir", "data_dir", "report_to",
                   "logging_steps", "checkpointing_steps", "checkpoints_total_limit", "save_validation_predictions",
                   "per_device_eval_batch_size", "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo",
                   "torch_compile", "torch_compile_backend", "torch_compile_mode"}


def _json_value(value):
    return json.loads(json.dumps(value, default=str))


def check_output_dir(output_dir, config: dict, resume: bool, overwrite: bool) -> None:
    """Whether `output_dir` may take this run; ValueError saying why not and what to do.

    A folder belongs to one run: an empty or new folder is taken; one that already holds a run only to resume that
    same run (`resume`: its run_config.json must match `config` in every argument that changes the result) or, with
    `overwrite`, to replace it (`clear_run_folder`)."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output_dir {folder} exists and is not a folder: pass the folder the run should write to.")
    existing = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
    if existing and overwrite:
        foreign = [name for name in existing if not any(Path(name).match(pattern) for pattern in RUN_FOLDER_ENTRIES)]
        if foreign:
            raise ValueError(f"--overwrite_output_dir: {folder} holds {', '.join(foreign[:5])}, which train.py did not "
                             "write; it empties run folders only. Pass another --output_dir.")
    elif existing and not resume:
        raise ValueError(f"--output_dir {folder} already holds a run ({', '.join(existing[:6])}). Continue it with "
                         "--resume_from_checkpoint latest, pass another --output_dir, or --overwrite_output_dir to "
                         "replace it.")
    elif existing:
        if not (folder / RUN_CONFIG).is_file():
            raise ValueError(f"--resume_from_checkpoint: {folder} has no {RUN_CONFIG}, so nothing shows which run it "
                             "holds. Pass another --output_dir.")
        recorded, current = read_run_config(folder), _json_value(config)
        differences = [f"--{key} {recorded[key]!r} there, {current[key]!r} here" for key in sorted(current)
                       if key in recorded and key not in OUTCOME_NEUTRAL and recorded[key] != current[key]]
        if differences:
            raise ValueError(f"--resume_from_checkpoint: the run recorded in {folder / RUN_CONFIG} was made with other "
                             f"arguments: {'; '.join(differences)}. Resume it with its own arguments (`python "
                             f"train.py {folder / RUN_CONFIG} --resume_from_checkpoint latest` replays them), or "
                             "start a new --output_dir.")
    check_writable(folder)


def check_writable(folder, flag: str = "--output_dir") -> None:
    """ValueError unless the folder, or the nearest existing folder above it, accepts new files (checked before any
    work, not when the first file is written)."""
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {folder}: {existing} is not writable. Pass a folder you can write to.")


def clear_run_folder(output_dir) -> None:
    """Remove what a previous run wrote into `output_dir` (only entries `RUN_FOLDER_ENTRIES` names)."""
    folder = Path(output_dir)
    for entry in folder.iterdir() if folder.is_dir() else []:
        if any(Path(entry.name).match(pattern) for pattern in RUN_FOLDER_ENTRIES):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


__all__ = [
    "ALL_RESULTS",
    "OUTCOME_NEUTRAL",
    "RUN_CONFIG",
    "RENAMED_ARGUMENTS",
    "RUN_FOLDER_ENTRIES",
    "check_output_dir",
    "check_writable",
    "clear_run_folder",
    "read_all_results",
    "read_run_config",
    "run_split",
    "write_all_results",
    "with_current_names",
    "write_run_config",
]
