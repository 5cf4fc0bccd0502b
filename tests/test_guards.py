"""Tests written so that each fails on a specific wrong line: LSA's temperature dividing (not multiplying) the
queries, the multi-label loss being per-label BCE, label smoothing being applied, and checkpoints being written
atomically (a save that dies halfway leaves nothing that `latest` would take)."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import models
from models.modeling_vit import MedViTSelfAttention
from training.checkpointing import list_checkpoints, resolve_checkpoint
from training.optimization import training_loss

ROOT = Path(__file__).resolve().parents[1]


def test_lsa_divides_the_queries_by_its_temperature_and_masks_the_diagonal():
    config = models.build_config("vit_lsa", 1, 2, image_size=28, patch_size=7, hidden_size=16, num_attention_heads=2,
                                 attention_head_dim=8, attention_probs_dropout_prob=0.0)
    attention = MedViTSelfAttention(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        attention.qkv.weight.normal_()
        attention.temperature.copy_(torch.tensor([0.5, 4.0]))  # far from 1, so dividing and multiplying differ
    hidden = torch.randn(3, 5, 16)
    q, k, v = attention.qkv(hidden).view(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) / attention.temperature.view(1, -1, 1, 1)
    scores = scores.masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))
    expected = scores.softmax(-1)
    torch.testing.assert_close(attention.attention_probabilities(hidden), expected)
    context = (expected @ v).transpose(1, 2).reshape(3, 5, 16)
    torch.testing.assert_close(attention(hidden)[0], attention.output(context), rtol=1e-4, atol=1e-5)
    assert torch.all(attention.attention_probabilities(hidden).diagonal(dim1=-2, dim2=-1) == 0)


def test_multilabel_loss_is_the_mean_binary_cross_entropy_over_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.8, -2.0]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 1]])
    probabilities = torch.sigmoid(logits)
    by_hand = -(targets * probabilities.log() + (1 - targets) * (1 - probabilities).log()).mean()
    torch.testing.assert_close(training_loss(logits, targets, multilabel=True, label_smoothing=0.1), by_hand)


def test_label_smoothing_mixes_the_target_with_the_uniform_distribution():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, -0.4, 1.5]])
    labels = torch.tensor([0, 3])
    log_p = logits.log_softmax(-1)
    for smoothing in (0.0, 0.1, 0.3):
        target = F.one_hot(labels, 4) * (1 - smoothing) + smoothing / 4
        by_hand = -(target * log_p).sum(-1).mean()
        torch.testing.assert_close(training_loss(logits, labels, False, smoothing), by_hand)
        # Soft targets (mixup / cutmix) are smoothed the same way.
        torch.testing.assert_close(training_loss(logits, F.one_hot(labels, 4).float(), False, smoothing), by_hand)
    assert not math.isclose(training_loss(logits, labels, False, 0.3).item(), training_loss(logits, labels, False, 0.0).item())


def test_a_save_that_dies_halfway_leaves_the_previous_checkpoint_as_latest(data_dir, tmp_path):
    """A real run whose process is killed while it writes its second checkpoint (the optimizer file is being
    written: `torch.save` is made to stop the process there) leaves step_3 complete and no step_6 for `latest`."""
    hook = tmp_path / "sitecustomize.py"
    hook.write_text(
        "import os, signal, torch\n"
        "_save = torch.save\n"
        "def save(obj, f, *args, **kwargs):\n"
        "    if 'step_6' in str(f) and 'optimizer' in str(f):\n"
        "        _save(obj, f, *args, **kwargs)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return _save(obj, f, *args, **kwargs)\n"
        "torch.save = save\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", "--model", "cnn", "--dataset", "breastmnist", "--data_dir",
                             str(data_dir), "--no_verify_checksum", "--output_dir", str(run), "--num_train_epochs", "3",
                             "--per_device_train_batch_size", "32", "--report_to", "none", "--skip_test"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert (run / "checkpoints" / ".tmp-step_6").is_dir()  # the half-written save, under its temporary name
    assert not (run / "checkpoints" / "step_6").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step_3"]
    assert resolve_checkpoint("latest", run).name == "step_3"


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_is_said_in_words_and_exits_4(data_dir, tmp_path):
    """A real full disk: the run writes to a 1.5 MB tmpfs (its own mount namespace), which the first checkpoint fills."""
    if not _can_mount_tmpfs():
        import pytest

        pytest.skip("cannot mount a small tmpfs here (needs unshare -m and mount rights)")
    small = tmp_path / "small"
    small.mkdir()
    train = " ".join([sys.executable, "train.py", "--model", "cnn", "--dataset", "breastmnist", "--data_dir",
                      str(data_dir), "--no_verify_checksum", "--output_dir", str(small / "run"),
                      "--num_train_epochs", "2", "--per_device_train_batch_size", "32", "--report_to", "none"])
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1500k tmpfs {small} && {train}"],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-3000:]
    assert "is full" in result.stdout and "--resume_from_checkpoint latest" in result.stdout
    assert "Traceback" not in result.stderr
