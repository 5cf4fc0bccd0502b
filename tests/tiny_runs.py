"""`train_tiny_vit`: a real `train.py` run of a one-layer `vit_lsa` on the synthetic BreastMNIST, in a subprocess,
for the tests of training methods (SAM / EMA, distillation, MAE)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training.checkpointing import list_checkpoints  # noqa: E402

TINY_VIT = "image_size=28,patch_size=7,hidden_size=16,num_hidden_layers=1,attention_head_dim=8,intermediate_size=32"


def train_tiny_vit(data_dir, output_dir, *extra, epochs: int = 3, batch_size: int = 32,
                   launch_args: list[str] | None = None, env: dict | None = None, stderr_log: Path | None = None) -> Path:
    """Train for `epochs` epochs (validation only, no TensorBoard, one thread) with `extra` arguments; returns the
    run folder. With `launch_args` the run goes through `accelerate launch <launch_args>` on the CPU (e.g. two
    processes); `env` adds environment variables; `stderr_log` keeps the run's stderr (its log) in that file. A failed
    run fails the test with the end of its stderr."""
    launcher = [] if launch_args is None else ["-m", "accelerate.commands.launch", *launch_args]
    command = [sys.executable, *launcher, "train.py", "--model", "vit_lsa", "--dataset", "breastmnist", "--data_dir",
               str(data_dir), "--no_verify_checksum", "--output_dir", str(output_dir), "--num_train_epochs",
               str(epochs), "--per_device_train_batch_size", str(batch_size), "--report_to", "none",
               "--config_overrides", TINY_VIT, "--checkpoints_total_limit", "5", "--skip_test", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           **({} if launch_args is None else {"ACCELERATE_USE_CPU": "1"}), **(env or {})}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if stderr_log is not None:
        Path(stderr_log).write_text(result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(output_dir)


def checkpoints_in_order(run: Path) -> list[Path]:
    """The run's `checkpoints/step_<N>` folders, oldest first."""
    return list_checkpoints(run)


def copy_stopped_after_first_epoch(run: Path, destination: Path) -> Path:
    """A copy of a finished run as it was after its first epoch: later checkpoints and the outputs removed."""
    shutil.copytree(run, destination)
    for checkpoint in checkpoints_in_order(destination)[1:]:
        shutil.rmtree(checkpoint)
    for name in ("best", "last", "all_results.json"):
        path = destination / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return destination
