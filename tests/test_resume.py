"""Exact resume from any checkpoint, mid-epoch included: a real run killed with SIGKILL right after a mid-epoch
checkpoint and resumed with `--resume_from_checkpoint latest` ends with the straight run's validation history, test
metrics and weights, to the bit (CPU). Also with a training method that keeps state (EMA)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpointing import list_checkpoints, read_trainer_state

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
KILL_AFTER = 5  # with 96 images in batches of 32: 3 updates an epoch, so step 5 is the middle of epoch 2


def command(data_dir, output_dir, *extra):
    return [sys.executable, "train.py", "--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(data_dir),
            "--no_verify_checksum", "--output_dir", str(output_dir), "--num_train_epochs", "7",
            "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--checkpointing_steps",
            str(KILL_AFTER), "--checkpoints_total_limit", "10", "--report_to", "none", "--augmentation", "seed",
            *extra]


def kill_after_checkpoint(cmd, output_dir: Path, step: int) -> None:
    """Start the run, SIGKILL it as soon as checkpoint `step` is complete; then keep only what a kill right at that
    moment would have left (a later checkpoint the run may have finished in the meantime is removed)."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = output_dir / "checkpoints" / f"step_{step}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.is_file():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (output_dir / "all_results.json").exists(), "the run finished before it could be killed"
    for checkpoint in list_checkpoints(output_dir):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)


@pytest.mark.parametrize("method", [[], ["--ema_decay", "0.8"]], ids=["plain", "ema"])
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_ends_like_the_straight_run(data_dir, tmp_path, method):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(data_dir, straight, *method), cwd=ROOT, env=ENV, check=True, capture_output=True)
    kill_after_checkpoint(command(data_dir, killed, *method), killed, KILL_AFTER)
    state = read_trainer_state(list_checkpoints(killed)[-1])
    assert (state["global_step"], state["epoch"], state["batches_in_epoch"]) == (KILL_AFTER, 1, 2)  # mid-epoch
    result = subprocess.run(command(data_dir, killed, *method, "--resume_from_checkpoint", "latest"), cwd=ROOT,
                            env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, resumed = (json.loads((run / "all_results.json").read_text()) for run in (straight, killed))
    assert resumed["validation_history"] == expected["validation_history"]
    assert resumed["test_metrics"] == expected["test_metrics"]
    assert resumed["global_step"] == expected["global_step"] == 21
    for folder in ("best", "last"):
        a, b = (load_file(run / folder / "model.safetensors") for run in (straight, killed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def quick(data_dir, output_dir, *extra):
    return [*command(data_dir, output_dir, *extra), "--max_train_steps", "2", "--checkpointing_steps", "epoch",
            "--skip_test"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_run_folder_belongs_to_one_run(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    subprocess.run(quick(data_dir, run), cwd=ROOT, env=ENV, check=True, capture_output=True)
    before = snapshot(run)

    def refused(*extra, folder=run):  # in this process: a refusal comes before any training
        import train

        with pytest.raises(SystemExit) as exit_info:
            train.main(quick(data_dir, folder, *extra)[2:])
        assert exit_info.value.code == 2
        assert snapshot(run) == before  # nothing touched
        return capsys.readouterr().out

    # Another run into the same folder: refused, with the ways out.
    assert "already holds a run" in refused("--seed", "7") and "--overwrite_output_dir" in refused("--seed", "7")
    # Resuming with arguments that change the result: refused, naming each difference.
    message = refused("--seed", "7", "--learning_rate", "0.01", "--resume_from_checkpoint", "latest")
    assert "--seed 42 there, 7 here" in message and "--learning_rate 0.001 there, 0.01 here" in message
    # A file where the folder should be, and a folder that cannot be written.
    (tmp_path / "a_file").write_text("x")
    assert "is not a folder" in refused(folder=tmp_path / "a_file")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):  # root may write anywhere
        assert "not writable" in refused(folder=locked / "run")
    # The same run resumes, also replayed from a run_config.json written before --num_epochs and --lr_scheduler took
    # Hugging Face's names; --overwrite_output_dir replaces the old run entirely.
    recorded = json.loads((run / "run_config.json").read_text())
    old_names = {"num_train_epochs": "num_epochs", "lr_scheduler_type": "lr_scheduler"}
    (run / "run_config.json").write_text(json.dumps({old_names.get(k, k): v for k, v in recorded.items()}))
    before = snapshot(run)
    assert "--num_train_epochs 7 there, 8 here" in refused("--num_train_epochs", "8", "--resume_from_checkpoint",
                                                           "latest")
    result = subprocess.run([sys.executable, "train.py", "--config", str(run / "run_config.json"),
                             "--resume_from_checkpoint", "latest", "--logging_steps", "1"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "run_config.json").read_text()) == {**recorded, "resume_from_checkpoint": "latest",
                                                                "logging_steps": 1}
    subprocess.run(quick(data_dir, run, "--seed", "7", "--overwrite_output_dir"), cwd=ROOT, env=ENV, check=True,
                   capture_output=True)
    assert json.loads((run / "run_config.json").read_text())["seed"] == 7
    assert [p.name for p in list_checkpoints(run)] == ["step_2"]
    # A folder with files train.py did not write is never emptied.
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    assert "did not write" in refused("--overwrite_output_dir")


EARLIER_LAYOUT = (("cnn.features.", "features."),)  # the CNN's keys before it had a base model


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_a_checkpoint_of_the_earlier_module_layout_resumes_like_the_straight_run(data_dir, tmp_path):
    """A checkpoint whose weights carry the keys of the layout before the base models (`features.*` instead of
    `cnn.features.*`) resumes: accelerate's load_state and the best weights get the same renamings as
    from_pretrained."""
    from models.integrity import write_manifest

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(data_dir, straight), cwd=ROOT, env=ENV, check=True, capture_output=True)
    kill_after_checkpoint(command(data_dir, killed), killed, KILL_AFTER)
    checkpoint = list_checkpoints(killed)[-1]
    for name in ("model.safetensors", "best_model.safetensors"):
        from safetensors.torch import save_file

        weights = load_file(checkpoint / name)
        renamed = {}
        for key, value in weights.items():
            for new, old in EARLIER_LAYOUT:
                key = old + key[len(new):] if key.startswith(new) else key
            renamed[key] = value
        assert renamed.keys() != weights.keys()
        save_file(renamed, checkpoint / name)
    (checkpoint / "manifest.sha256.json").unlink()
    write_manifest(checkpoint)
    result = subprocess.run(command(data_dir, killed, "--resume_from_checkpoint", "latest"), cwd=ROOT, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, resumed = (json.loads((run / "all_results.json").read_text()) for run in (straight, killed))
    assert resumed["validation_history"] == expected["validation_history"]
    assert resumed["test_metrics"] == expected["test_metrics"]
    a, b = (load_file(run / "best" / "model.safetensors") for run in (straight, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
