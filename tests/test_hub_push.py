"""The Hub is an add-on, never a way to lose a run (against the local Hub server): a failed background upload is
logged and the next push carries the newer snapshot; a failed final push exits 5 after everything local is written;
`--push_to_hub` without a reachable Hub or a token exits 2 before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_testTOKEN0123456789"


def train(data_dir, output_dir, *extra, env=None):
    command = [sys.executable, "train.py", "--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(data_dir),
               "--no_verify_checksum", "--output_dir", str(output_dir), "--num_train_epochs", "2",
               "--per_device_train_batch_size", "32", "--report_to", "none", "--push_to_hub", "--hub_model_id",
               "medmnist/robust", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})


def test_a_failed_background_push_is_logged_and_the_run_goes_on(local_hub, data_dir, tmp_path):
    local_hub.failing_commits = {1}  # the first checkpoint's upload is refused
    result = train(data_dir, tmp_path / "run", "--hub_token", TOKEN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "A background push to medmnist/robust failed" in result.stderr
    assert (tmp_path / "run" / "all_results.json").is_file()
    assert "all_results.json" in local_hub.repos["medmnist/robust"]  # the final push got through


def test_a_failed_final_push_exits_5_after_everything_local_is_written(local_hub, data_dir, tmp_path):
    local_hub.failing_commits = set(range(1, 100))
    result = train(data_dir, tmp_path / "run", "--hub_token", TOKEN)
    assert result.returncode == 5, result.stderr[-3000:]
    assert "the final push to medmnist/robust failed" in result.stdout and "Everything is saved in" in result.stdout
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["test_metrics"] is not None and (tmp_path / "run" / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("env, message", [({"HF_HUB_OFFLINE": "1", "HF_TOKEN": TOKEN}, "could not create or reach"),
                                          ({"HF_HUB_OFFLINE": "0"}, "needs a Hub token")])
def test_push_to_hub_without_a_hub_or_a_token_exits_2_before_writing(data_dir, tmp_path, env, message):
    env = {"HF_HOME": str(tmp_path / "empty_hf_home"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "", **env}
    result = train(data_dir, tmp_path / "run", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
