"""Nothing in a checkpoint or model folder runs without the user asking: pickled checkpoint files are read the
restricted way and refused if they hold more than tensors; the project's model types load with the installed code,
never the copy a folder ships; another model type's shipped code needs --trust_remote_code."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.integrity import write_manifest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


class Payload:
    """Unpickling this runs `open(marker, "w")`: the marker file shows whether a payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def train_argv(data_dir, output_dir, *extra):
    return ["--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum",
            "--output_dir", str(output_dir), "--num_train_epochs", "2", "--per_device_train_batch_size", "32",
            "--report_to", "none", "--ema_decay", "0.8", *extra]


def train(data_dir, output_dir, *extra):
    return subprocess.run([sys.executable, "train.py", *train_argv(data_dir, output_dir, *extra)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("secure") / "run"
    result = train(data_dir, run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.parametrize("planted", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl", "model.safetensors",
                                     "method_ema.safetensors", "best_model.safetensors", "missing:random_states_0.pkl"])
def test_a_planted_or_missing_checkpoint_file_is_refused_and_never_run(finished_run, data_dir, tmp_path, planted,
                                                                        capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    marker = tmp_path / "PAYLOAD_RAN"
    name = planted.removeprefix("missing:")
    if planted.startswith("missing:"):
        (checkpoint / name).unlink()
    else:
        (checkpoint / name).write_bytes(pickle.dumps({"state": Payload(marker)}))
    write_manifest(checkpoint)  # as a forger would: the checksums alone would have caught it
    import train as train_script  # in this process: the refusal comes before any training, so this is quick

    with pytest.raises(SystemExit) as exit_info:
        train_script.main(train_argv(data_dir, run, "--resume_from_checkpoint", str(checkpoint)))
    output = capsys.readouterr().out
    assert not marker.exists(), "a payload in the checkpoint ran"
    assert exit_info.value.code == 2
    assert name in output and ("missing" in output or "cannot be loaded safely" in output)


def ship_marker(folder: Path, marker: Path) -> None:
    for code in folder.glob("*.py"):  # the code a saved model carries for other installations
        code.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + code.read_text())
    write_manifest(folder)  # a forged folder whose checksums match: the loading rules alone must keep the code out


def test_shipped_code_never_runs_for_the_projects_own_model_types(finished_run, data_dir, tmp_path):
    model = tmp_path / "best"
    shutil.copytree(finished_run / "best", model)
    marker = tmp_path / "SHIPPED_CODE_RAN"
    ship_marker(model, marker)
    result = subprocess.run([sys.executable, "evaluate.py", "--model_name_or_path", str(model), "--dataset",
                             "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum", "--bootstrap_samples",
                             "0"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()


def test_another_model_type_with_shipped_code_needs_trust_remote_code(finished_run, data_dir, tmp_path):
    model = tmp_path / "foreign"
    shutil.copytree(finished_run / "best", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "someone_elses_model"}))
    marker = tmp_path / "FOREIGN_CODE_RAN"
    ship_marker(model, marker)
    evaluate = subprocess.run([sys.executable, "evaluate.py", "--model_name_or_path", str(model), "--dataset",
                               "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True)
    assert evaluate.returncode != 0 and "--trust_remote_code" in evaluate.stderr and "would run" in evaluate.stderr
    teacher = train(data_dir, tmp_path / "student", "--teacher_model_name_or_path", str(model))
    assert teacher.returncode == 2 and "--trust_remote_code" in teacher.stdout
    assert not (tmp_path / "student").exists()
    assert not marker.exists(), "the checkpoint's code ran without --trust_remote_code"


def damage(path: Path) -> None:
    """A 4 KiB block of zeros in the middle of a file (its size unchanged)."""
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle: middle + 4096] = bytes(min(4096, len(content) - middle))
    path.write_bytes(bytes(content))


def test_a_damaged_model_folder_is_refused_naming_the_file(finished_run, data_dir, tmp_path):
    model = tmp_path / "best"
    shutil.copytree(finished_run / "best", model)
    assert (model / "manifest.sha256.json").is_file()
    damage(model / "model.safetensors")
    result = subprocess.run([sys.executable, "evaluate.py", "--model_name_or_path", str(model), "--dataset",
                             "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "model.safetensors is damaged" in result.stderr
    assert not (tmp_path / "best-eval-test").exists()


def test_latest_skips_a_damaged_checkpoint_and_says_so(finished_run, data_dir, tmp_path, capsys, caplog):
    import train as train_script
    from training.checkpointing import list_checkpoints, resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    older, newest = list_checkpoints(run)[-2:]
    damage(newest / "optimizer.bin")
    assert resolve_checkpoint("latest", run) == older
    assert f"skipping {newest.name}: " in caplog.text and "optimizer.bin is damaged" in caplog.text
    with pytest.raises(ValueError, match="optimizer.bin is damaged"):
        resolve_checkpoint(str(newest), run)  # named explicitly: refused, not replaced
    # A folder that lost its manifest (a save cut short before its last file) is not a checkpoint at all.
    (older / "manifest.sha256.json").unlink()
    assert older not in list_checkpoints(run)
