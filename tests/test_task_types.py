"""train.py, then evaluate.py on its best model, end to end on the MedMNIST task types beyond the binary one that
tests/test_train.py trains on (breastmnist): multi-class (bloodmnist: 8 classes, RGB), multi-label (chestmnist: 14
binary labels, grey) and ordinal regression (retinamnist: 5 grades, RGB), one model family each. Synthetic files in
the official layout; the metrics are checked against medmnist's own evaluator on the saved predictions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from medmnist.info import INFO

from data.synthetic import write_synthetic_npz

ROOT = Path(__file__).resolve().parents[1]
TINY = "image_size=28,hidden_size=32,num_hidden_layers=1,attention_head_dim=16,intermediate_size=64"


def run_script(script: str, *args: str, cache: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(cache)}
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("flag, model, overrides", [
    ("chestmnist", "cnn", None),
    ("retinamnist", "vit_lsa", f"{TINY},patch_size=7"),
    ("bloodmnist", "vit_conv_lsa", f"{TINY},patch_size=4,convolutional_tokenizer_batch_norm=True"),
])
def test_train_then_evaluate_agree_with_medmnists_evaluator(flag, model, overrides, tmp_path):
    task = INFO[flag]["task"]
    npz = write_synthetic_npz(tmp_path / "data", flag, n_train=256, n_val=64, n_test=64)
    run = tmp_path / "run"
    common = ["--dataset", flag, "--data_dir", str(npz.parent), "--no_verify_checksum"]
    run_script("train.py", "--model", model, *common, "--output_dir", str(run), "--num_train_epochs", "5",
               "--per_device_train_batch_size", "32", "--report_to", "none",
               *([] if overrides is None else ["--config_overrides", overrides]), cache=tmp_path / "cache")
    results = json.loads((run / "all_results.json").read_text())
    assert results["test_metrics"]["task"] == task and results["test_metrics"]["num_samples"] == 64
    # It learned (chance is 0.5): the loss and the labels' layout fit the task.
    assert results["validation_metrics"]["auc"] > 0.6

    run_script("evaluate.py", "--model_name_or_path", str(run / "best"), *common, "--output_dir",
               str(tmp_path / "eval"), cache=tmp_path / "cache")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    with np.load(npz) as arrays:
        file_labels = arrays["test_labels"]
    with np.load(tmp_path / "eval" / "predictions.npz") as predictions:
        scores, labels = predictions["scores"], predictions["labels"]
    multilabel = task.startswith("multi-label")
    assert np.array_equal(labels, file_labels if multilabel else file_labels[:, 0])
    assert scores.shape == (64, len(INFO[flag]["label"])) and np.ptp(scores) > 0.01
    # Multi-label scores are one sigmoid per label, not a softmax over them; the others are a distribution.
    assert np.allclose(scores.sum(axis=1), 1, atol=1e-5) != multilabel
    assert metrics["acc"] == pytest.approx(getACC(file_labels, scores, task))
    assert metrics["auc"] == pytest.approx(getAUC(file_labels, scores, task))
    # evaluate.py on the saved best model reproduces the test metrics train.py reported for it.
    assert metrics["acc"] == pytest.approx(results["test_metrics"]["acc"])
    assert metrics["auc"] == pytest.approx(results["test_metrics"]["auc"], abs=1e-6)
