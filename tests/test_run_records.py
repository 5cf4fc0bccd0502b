"""training.run_records: a run's run_config.json and all_results.json, written atomically, read with clear errors."""

import json
from pathlib import Path

import pytest

from training import run_records
from training.run_records import (
    ALL_RESULTS,
    RUN_CONFIG,
    read_all_results,
    read_run_config,
    run_split,
    write_all_results,
    write_run_config,
)

RECORDS = [(RUN_CONFIG, read_run_config, write_run_config), (ALL_RESULTS, read_all_results, write_all_results)]


@pytest.mark.parametrize("name, read, write", RECORDS)
def test_round_trip(tmp_path, name, read, write):
    record = {"dataset": "breastmnist", "seed": 3, "learning_rate": 0.001, "history": [{"epoch": 1, "auc": 0.5}],
              "teacher": None}
    path = write(tmp_path, record)
    assert path == tmp_path / name
    assert read(tmp_path) == record
    assert path.read_text() == json.dumps(record, indent=2)  # what train.py has always written


def test_run_config_writes_paths_as_text(tmp_path):
    write_run_config(tmp_path, {"data_dir": Path("data") / "medmnist"})
    assert read_run_config(tmp_path) == {"data_dir": str(Path("data") / "medmnist")}


@pytest.mark.parametrize("name, read, write", RECORDS)
def test_write_replaces_and_leaves_no_temporary_file(tmp_path, name, read, write):
    write(tmp_path, {"old": True})
    write(tmp_path, {"new": True})
    assert read(tmp_path) == {"new": True}
    assert [path.name for path in tmp_path.iterdir()] == [name]


def test_failed_write_keeps_the_old_record_and_no_temporary_file(tmp_path, monkeypatch):
    write_all_results(tmp_path, {"epoch": 1})

    def interrupted(source, destination):
        raise OSError("killed mid-write")

    monkeypatch.setattr(run_records.os, "replace", interrupted)
    with pytest.raises(OSError, match="killed mid-write"):
        write_all_results(tmp_path, {"epoch": 2})
    assert read_all_results(tmp_path) == {"epoch": 1}
    assert [path.name for path in tmp_path.iterdir()] == [ALL_RESULTS]


def test_unserialisable_results_write_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_all_results(tmp_path, {"path": Path("x")})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, read, write", RECORDS)
def test_missing_record_is_a_value_error_naming_the_file(tmp_path, name, read, write):
    with pytest.raises(ValueError, match=rf"{name}: no such file") as error:
        read(tmp_path)
    assert str(tmp_path / name) in str(error.value)


@pytest.mark.parametrize("name, read, write", RECORDS)
@pytest.mark.parametrize("text, problem", [('{"seed": 0, "datas', "not valid JSON"), ("", "not valid JSON"),
                                           ("[1, 2]", "holds a JSON list")])
def test_garbled_record_is_a_value_error_naming_the_file(tmp_path, name, read, write, text, problem):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=problem) as error:
        read(tmp_path)
    assert str(tmp_path / name) in str(error.value)


def test_run_split_of_a_fold_run():
    config = {"dataset": "breastmnist", "cross_validation_folds": 5, "cross_validation_fold": 2,
              "cross_validation_split_seed": 1, "seed": 7}
    assert run_split(config) == ("breastmnist", 5, 2, 1)


def test_run_split_defaults_for_older_configs():
    """Runs from before --cross_validation_split_seed used partition 0; runs on the official splits have folds 0."""
    assert run_split({"dataset": "breastmnist", "cross_validation_folds": 5, "cross_validation_fold": 4}) == (
        "breastmnist", 5, 4, 0)
    assert run_split({"dataset": "breastmnist", "cross_validation_folds": 5, "cross_validation_fold": 4,
                      "cross_validation_split_seed": None}) == ("breastmnist", 5, 4, 0)
    assert run_split({"dataset": "bloodmnist"}) == ("bloodmnist", 0, None, 0)
    assert run_split({"dataset": "bloodmnist", "cross_validation_folds": None}) == ("bloodmnist", 0, None, 0)


def test_records_written_before_the_renaming_read_under_the_current_names(tmp_path):
    old = {"dataset": "breastmnist", "num_epochs": 30, "lr_scheduler": "cosine", "seed": 0}
    current = {"dataset": "breastmnist", "num_train_epochs": 30, "lr_scheduler_type": "cosine", "seed": 0}
    write_run_config(tmp_path, old)
    write_all_results(tmp_path, {"best_epoch": 3, "config": old})
    assert read_run_config(tmp_path) == current
    assert read_all_results(tmp_path) == {"best_epoch": 3, "config": current}
    write_run_config(tmp_path, {**old, "num_train_epochs": 50})
    with pytest.raises(ValueError, match="num_epochs: 30 and num_train_epochs: 50 name the same argument") as error:
        read_run_config(tmp_path)
    assert str(tmp_path / RUN_CONFIG) in str(error.value)


def test_a_run_folder_recorded_with_the_old_names_resumes_with_the_same_values(tmp_path):
    current = {"output_dir": str(tmp_path), "num_train_epochs": 30, "lr_scheduler_type": "cosine", "seed": 0}
    write_run_config(tmp_path, {"output_dir": str(tmp_path), "num_epochs": 30, "lr_scheduler": "cosine", "seed": 0})
    run_records.check_output_dir(tmp_path, current, resume=True, overwrite=False)
    for changed, shown in (({"num_train_epochs": 40}, "--num_train_epochs 30 there, 40 here"),
                           ({"lr_scheduler_type": "linear"}, "--lr_scheduler_type 'cosine' there, 'linear' here")):
        with pytest.raises(ValueError, match=shown):
            run_records.check_output_dir(tmp_path, {**current, **changed}, resume=True, overwrite=False)
