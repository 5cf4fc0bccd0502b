"""evaluate.py on a synthetic BloodMNIST split of 13 images (not a multiple of batch 4 × 2 processes): outputs, one
process against two real CPU processes, a checkpoint from the (local) Hub, the mismatch refusal and bad arguments."""

import hashlib
import importlib.util
import io
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from medmnist.evaluator import getACC, getAUC
from medmnist.info import INFO
from PIL import Image

import models
from data.synthetic import write_synthetic_npz
from metric_comparison import assert_same

ROOT = Path(__file__).resolve().parents[1]
FLAG, N_TEST, BATCH = "bloodmnist", 13, 4
LABEL_NAMES = [INFO[FLAG]["label"][str(i)] for i in range(len(INFO[FLAG]["label"]))]
TINY_VIT = dict(image_size=28, patch_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                attention_head_dim=8, intermediate_size=32, head_hidden_sizes=[])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Blocks every connection except to this machine (the two processes talk over 127.0.0.1).
NETWORK_GUARD = '''
import socket
_connect = socket.socket.connect
def _local_only(self, address, *args):
    if self.family == socket.AF_UNIX or address[0] in ("127.0.0.1", "localhost", "::1"):
        return _connect(self, address, *args)
    raise OSError(f"network blocked by the test: {address}")
socket.socket.connect = _local_only
'''


def save_checkpoint(folder, name, channels, labels, label_names=None, processor_size=28, **overrides):
    torch.manual_seed(0)
    model = models.build_model(name, channels, labels, label_names=label_names, **overrides)
    model.save_pretrained(folder)
    models.build_image_processor(processor_size, [0.3] * channels, [0.2] * channels).save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    npz = write_synthetic_npz(root / "data", FLAG, n_train=8, n_val=8, n_test=N_TEST, seed=0)
    checkpoint = save_checkpoint(root / "vit", "vit", 3, len(LABEL_NAMES), LABEL_NAMES, **TINY_VIT)
    return {"root": root, "npz": npz, "data_dir": npz.parent, "checkpoint": checkpoint,
            "datasets_cache": root / "datasets_cache"}


@pytest.fixture(scope="module")
def script():
    """evaluate.py as a module (under another name than the library's)."""
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def in_process(monkeypatch, workspace):
    """Run evaluate.main in this process: fresh accelerate singletons, the data cache in the workspace."""
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", workspace["datasets_cache"])
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def eval_args(workspace, *extra, model=None):
    return ["--model_name_or_path", str(model or workspace["checkpoint"]), "--dataset", FLAG, "--data_dir",
            str(workspace["data_dir"]), "--no_verify_checksum", "--per_device_eval_batch_size", str(BATCH),
            "--bootstrap_samples", "200", *extra]


def assert_png(path):
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


@pytest.fixture(scope="module")
def one_process_run(workspace, script):
    """The reference: one process, in this process (module-scoped, so it cannot use the function fixtures)."""
    from accelerate.state import AcceleratorState, GradientState

    output_dir = workspace["root"] / "one-process"
    patch = pytest.MonkeyPatch()
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", workspace["datasets_cache"])
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        record = script.main(eval_args(workspace, "--output_dir", str(output_dir)))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        patch.undo()
    return output_dir, record


def test_one_process_writes_metrics_plots_and_predictions(workspace, one_process_run):
    output_dir, record = one_process_run
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(
        ["metrics.json", "confusion_matrix.png", "roc_curves.png", "reliability_diagram.png", "predictions.npz"])
    saved = json.loads((output_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["model"]["name_or_path"] == str(workspace["checkpoint"]) and saved["model"]["model_type"] == "medmnist_vit"
    assert saved["dataset"] == {
        "flag": FLAG, "size": 28, "split": "test", "task": "multi-class", "num_samples": N_TEST,
        "file": str(workspace["npz"].resolve()), "md5": hashlib.md5(workspace["npz"].read_bytes()).hexdigest(),
        "expected_md5": INFO[FLAG]["MD5"], "checksum_verified": False, "checksum_check_skipped": True,
    }
    results = saved["metrics"]
    for key in ("acc", "auc", "balanced_acc", "ece", "acc_ci95", "auc_ci95", "per_class", "confusion_matrix"):
        assert results[key] is not None, key
    assert list(results["per_class"]) == LABEL_NAMES
    assert np.sum(results["confusion_matrix"]) == N_TEST == results["num_samples"]

    # Every test image exactly once, in the file's order, and the metrics are medmnist's on those predictions.
    with np.load(workspace["npz"]) as npz:
        file_labels = npz["test_labels"]
    with np.load(output_dir / "predictions.npz") as predictions:
        scores, labels = predictions["scores"], predictions["labels"]
    assert scores.shape == (N_TEST, len(LABEL_NAMES)) and np.array_equal(labels, file_labels[:, 0])
    assert results["acc"] == pytest.approx(getACC(file_labels, scores, "multi-class"))
    assert results["auc"] == pytest.approx(getAUC(file_labels, scores, "multi-class"))
    # Not a vacuous comparison: the model's scores vary and it predicts more than one class.
    assert np.ptp(scores[:, 0]) > 0.01 and len(np.unique(scores.argmax(1))) > 1
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability_diagram.png"):
        assert_png(output_dir / name)


def test_two_processes_count_every_sample_once_and_match_one_process(workspace, one_process_run, tmp_path):
    reference_dir, _ = one_process_run
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(guard),
           "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"),  # empty: both processes copy the metric modules at once
           "HF_DATASETS_CACHE": str(workspace["datasets_cache"])}
    output_dir = tmp_path / "two-processes"
    # With accelerate 1.15, `--cpu` (or `use_cpu: true` in a config) starts ONE process for any --num_processes;
    # `--multi_gpu` with ACCELERATE_USE_CPU=1 starts real MULTI_CPU (gloo) processes.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), "evaluate.py", *eval_args(workspace, "--output_dir", str(output_dir))]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-5000:]}"

    two = json.loads((output_dir / "metrics.json").read_text())
    one = json.loads((reference_dir / "metrics.json").read_text())
    assert two["run"]["num_processes"] == 2 and one["run"]["num_processes"] == 1
    assert two["metrics"]["num_samples"] == N_TEST  # 13 = 4 + 4 (rank 0) + 4 + 1 padded to 4 (rank 1), deduplicated
    assert_same(two["metrics"], one["metrics"])
    assert two["dataset"] == one["dataset"]
    with np.load(output_dir / "predictions.npz") as two_p, np.load(reference_dir / "predictions.npz") as one_p:
        assert np.array_equal(two_p["labels"], one_p["labels"])
        assert np.allclose(two_p["scores"], one_p["scores"], rtol=0, atol=1e-6)
    assert "ACC" in result.stdout and result.stdout.count("confusion matrix") == 1  # the table, printed once
    assert list((tmp_path / "modules").rglob("medmnist_report.py"))  # the metric modules came from the repository


def test_checkpoint_from_the_hub(local_hub, workspace, script, in_process, tmp_path, monkeypatch):
    api = HfApi(endpoint=local_hub.endpoint, token="hf_localHubTestToken0123456789abcdef")
    api.create_repo("medmnist-tests/tiny-vit")
    api.upload_folder(repo_id="medmnist-tests/tiny-vit", folder_path=workspace["checkpoint"])
    monkeypatch.chdir(tmp_path)
    record = script.main(eval_args(workspace, "--split", "val", "--bootstrap_samples", "0",
                                   model="medmnist-tests/tiny-vit"))
    saved = json.loads((tmp_path / f"eval-{FLAG}-validation" / "metrics.json").read_text())  # the default output
    assert saved["model"]["commit"] == local_hub.commits[-1]["oid"] == record["model"]["commit"]
    assert saved["dataset"]["split"] == "validation" and saved["metrics"]["num_samples"] == 8
    assert saved["metrics"]["acc_ci95"] is None


def test_checkpoint_that_does_not_fit_is_refused_before_any_output(workspace, in_process, tmp_path, monkeypatch):
    breast = save_checkpoint(tmp_path / "breast-cnn", "cnn", 1, 2, ["malignant", "normal, benign"])
    output_dir = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *eval_args(workspace, "--output_dir", str(output_dir),
                                                                 model=breast)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
    message = str(exit_info.value.code)
    assert message.startswith(f"evaluate.py: error: The checkpoint '{breast}' does not fit {FLAG}")
    assert "it takes 1-channel images; bloodmnist images have 3 channel(s)" in message
    assert "it predicts 2 labels; bloodmnist has 8" in message
    assert not output_dir.exists()


def test_fit_check_catches_input_size_label_names_and_problem_type(workspace, tmp_path):
    import data
    from models.checkpoint_fit import CheckpointError, check_checkpoint_fits
    from transformers import AutoConfig, AutoImageProcessor

    info = data.medmnist_info(FLAG)
    cases = {
        "resizes to 32×32 px but the model takes 28×28": dict(processor_size=32),
        "its labels are": dict(label_names=[f"cell {i}" for i in range(8)]),
        "trained for multi_label_classification": dict(problem_type="multi_label_classification"),
    }
    for expected, change in cases.items():
        kwargs = {"label_names": LABEL_NAMES, **TINY_VIT, **change}
        folder = save_checkpoint(tmp_path / expected[:10], "vit", 3, 8, **kwargs)
        config, processor = AutoConfig.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
        with pytest.raises(CheckpointError, match=expected):
            check_checkpoint_fits(config, processor, info)
    # Unnamed labels (transformers' LABEL_i) are accepted; so is the original checkpoint.
    for folder in (save_checkpoint(tmp_path / "unnamed", "vit", 3, 8, **TINY_VIT), workspace["checkpoint"]):
        check_checkpoint_fits(AutoConfig.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder), info)


@pytest.mark.parametrize("change, message", [
    ({"--dataset": "nosuchmnist"}, "Unknown MedMNIST flag"),
    ({"--dataset": "organmnist3d"}, "3D MedMNIST data set"),
    ({"--split": "holdout"}, "invalid choice: 'holdout'"),
    ({"--image_size": "32"}, "Unknown MedMNIST image size 32"),
    ({"--per_device_eval_batch_size": "0"}, "must be at least 1"),
    ({"--bootstrap_samples": "-1"}, "must be 0"),
    ({"--model_name_or_path": "./no/such/folder"}, "neither an existing checkpoint folder nor a valid Hub model id"),
    ({"--model_name_or_path": "{data_dir}"}, "has no config.json"),
])
def test_bad_arguments_fail_before_any_work(script, workspace, capsys, change, message):
    args = eval_args(workspace, "--output_dir", str(workspace["root"] / "never"))
    for flag, value in change.items():
        value = value.format(data_dir=workspace["data_dir"])
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (workspace["root"] / "never").exists()


def test_default_output_dir_is_beside_a_local_checkpoint(script, workspace):
    args = script.parse_args(eval_args(workspace, "--split", "val"))
    assert args.split == "validation" and args.output_dir == workspace["checkpoint"].with_name("vit-eval-validation")


def test_flip_averaging_is_recorded_and_a_config_saved_with_the_former_field_averages(workspace, script, in_process,
                                                                                      tmp_path, caplog):
    import logging
    import shutil

    runs = {}
    for run, extra, model in (("plain", (), None), ("flag", ("--flip_averaging",), None), ("legacy", (), "legacy")):
        if model == "legacy":  # the same weights, its config saved while flip averaging was a model field
            model = shutil.copytree(workspace["checkpoint"], tmp_path / "legacy")
            config = json.loads((model / "config.json").read_text())
            (model / "config.json").write_text(json.dumps({**config, "test_time_horizontal_flip": True}))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            script.main(eval_args(workspace, "--output_dir", str(tmp_path / run), *extra, model=model))
        saved = json.loads((tmp_path / run / "metrics.json").read_text())
        runs[run] = (saved["run"]["flip_averaging"], np.load(tmp_path / run / "predictions.npz")["scores"],
                     caplog.text)
    assert [runs[run][0] for run in ("plain", "flag", "legacy")] == [False, True, True]
    assert not np.allclose(runs["plain"][1], runs["flag"][1])
    np.testing.assert_array_equal(runs["legacy"][1], runs["flag"][1])
    assert "saved with test_time_horizontal_flip true" in runs["legacy"][2]
    assert "test_time_horizontal_flip" not in runs["flag"][2] + runs["plain"][2]
