"""train.py --model_name_or_path: fine-tuning a transformers ViT and one of this project's CNNs, in real processes on
synthetic data (labels, channels, normalisation from the checkpoint's processor, records, pipeline, evaluate.py)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

import data
from data.synthetic import synthetic_medmnist, write_synthetic_npz
from metric_comparison import assert_same
from models.fine_tuning import processor_inputs
from models.integrity import recorded_sha256
from test_train import python_train, read_results, run, train_args, train_in_process
from training.hub import model_card

ROOT = Path(__file__).resolve().parents[1]
BREAST_LABELS = ["malignant", "normal, benign"]
# The starting ViT's processor: a normalisation no training split has, so that a run taking the training split's
# statistics instead shows in the saved processor.
VIT_MEAN, VIT_STD = [0.25], [0.35]
FAST = ("--num_train_epochs", "3", "--warmup_epochs", "0", "--per_device_train_batch_size", "16", "--report_to", "none")


@pytest.fixture(scope="module")
def blood_data_dir(data_dir):
    """The synthetic BreastMNIST of `data_dir` and a synthetic BloodMNIST (3 channels, 8 classes) beside it."""
    write_synthetic_npz(data_dir, "bloodmnist", n_train=160, n_val=48, n_test=16, seed=1)
    return data_dir


@pytest.fixture(scope="module")
def transformers_vit(tmp_path_factory) -> Path:
    """A tiny randomly initialised transformers ViT (1 channel, 28 px, labels LABEL_0 / LABEL_1) and its processor."""
    folder = tmp_path_factory.mktemp("start") / "vit"
    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_channels=1, num_labels=2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=VIT_MEAN, image_std=VIT_STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def breast_cnn(data_dir, tmp_path_factory) -> Path:
    """A run of this project's CNN on the synthetic BreastMNIST (2 epochs); its best/ is the starting checkpoint."""
    output_dir = tmp_path_factory.mktemp("breast") / "cnn"
    python_train(*train_args(data_dir, output_dir, "--model", "cnn", "--num_train_epochs", "2", "--skip_test",
                             "--per_device_train_batch_size", "16", "--report_to", "none"))
    return output_dir / "best"


def load_evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_in_process(argv) -> dict:
    """evaluate.main in this process, with fresh accelerate singletons."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        return load_evaluate_script().main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_processor_normalisation_is_the_training_transforms():
    """uint8 -> BatchTransform.for_evaluation with a processor's side, mean and std = the processor itself; the side
    of a center-cropping (DeiT) and a shortest-edge (ConvNeXt) processor is their output's."""
    from transformers import ConvNextImageProcessor, DeiTImageProcessor

    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.2, 0.4, 0.6],
                                  image_std=[0.3, 0.2, 0.1])
    side, mean, std = processor_inputs(processor, "test")
    assert (side, mean, std) == (32, [0.2, 0.4, 0.6], [0.3, 0.2, 0.1])
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 28, 28), dtype=np.uint8))
    expected = processor(images=list(images), return_tensors="pt")["pixel_values"]
    ours = data.BatchTransform.for_evaluation(side, mean, std)(images)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert processor_inputs(DeiTImageProcessor(), "deit")[0] == 224
    assert processor_inputs(ConvNextImageProcessor(size={"shortest_edge": 224}), "convnext")[0] == 224


def test_num_channels_converts_rgb_as_pil_does(tmp_path):
    import train

    synthetic = synthetic_medmnist(tmp_path, "bloodmnist", n_train=6, n_val=2, n_test=2)
    dataset = synthetic.load(cache_dir=tmp_path / "cache")
    info = data.medmnist_info(dataset)
    gray, gray_info = data.convert_channels(dataset, info, 1)
    assert gray_info.num_channels == 1 and gray_info.label_names == info.label_names
    rgb = synthetic.arrays()["train_images"]
    as_pil = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in rgb])
    converted = data.DeviceSplit.from_dataset(gray["train"])
    np.testing.assert_array_equal(converted.images[:, 0].numpy(), as_pil)
    assert converted.labels.tolist() == synthetic.arrays()["train_labels"][:, 0].tolist()
    back, back_info = data.convert_channels(gray, gray_info, 3)
    assert back_info.num_channels == 3
    np.testing.assert_array_equal(data.DeviceSplit.from_dataset(back["train"]).images.numpy(),
                                  np.repeat(as_pil[:, None], 3, axis=1))


def test_recipe_for_a_checkpoint_leaves_the_architecture_to_it():
    from training.recipes import fine_tuning_defaults, recipe_defaults

    cnn = fine_tuning_defaults("default", "cnn", "bloodmnist")
    assert "config_overrides" not in cnn and "normalization" not in cnn
    assert {key: value for key, value in recipe_defaults("default", "cnn", 28, "bloodmnist").items()
            if key not in ("config_overrides", "normalization")} == cnn  # the family's and the data set's values
    other = fine_tuning_defaults("default", None, "bloodmnist")  # a transformers model: no family layer
    assert (other["weight_decay"], other["warmup_epochs"], other["zoom"]) == (0.05, 10.0, 0.0)
    assert "config_overrides" not in other and "normalization" not in other


@pytest.mark.parametrize("extra,message", [
    (["--config_overrides", "image_size=28"], "--config_overrides with --model_name_or_path"),
    (["--model", "cnn"], "the checkpoint is a 'vit' model, which is not one of this project's model families"),
    (["--normalization", "half"], "--normalization with --model_name_or_path"),
    (["--model_weights_sha256", "0" * 64], "not 0000"),
])
def test_arguments_that_contradict_the_checkpoint_are_refused(transformers_vit, data_dir, tmp_path, capsys, extra,
                                                              message):
    output_dir = tmp_path / "never"
    code, output = train_in_process(train_args(data_dir, output_dir, "--model_name_or_path", str(transformers_vit),
                                               *extra), capsys)
    assert code == 2 and message in output
    assert not output_dir.exists()


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_fine_tuning_a_transformers_vit(transformers_vit, data_dir, tmp_path):
    output_dir = tmp_path / "vit"
    python_train(*train_args(data_dir, output_dir, "--model_name_or_path", str(transformers_vit), *FAST))
    results = read_results(output_dir)
    assert max(epoch["metrics"]["auc"] for epoch in results["validation_history"]) > 0.8  # it learns
    # Normalisation and input size are the starting processor's, not the training split's statistics.
    processor = json.loads((output_dir / "best" / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"], processor["size"]) == (
        VIT_MEAN, VIT_STD, {"height": 28, "width": 28})
    assert results["starting_checkpoint"]["model_type"] == "vit" and results["model_name"] == "vit"
    assert results["config"]["model"] is None and results["config"]["model_name_or_path"] == str(transformers_vit)

    # transformers' own model: no code in the folder, no trust_remote_code; the data's label names.
    model = AutoModelForImageClassification.from_pretrained(output_dir / "best")
    assert type(model) is ViTForImageClassification and list(model.config.id2label.values()) == BREAST_LABELS
    check = ("from transformers import pipeline; import numpy as np; "
             f"classify = pipeline('image-classification', model={str(output_dir / 'best')!r}); "
             "print(sorted(p['label'] for p in classify(np.zeros((28, 28, 1), np.uint8))))")
    fresh = run([sys.executable, "-c", check])
    assert fresh.stdout.strip().splitlines()[-1] == str(BREAST_LABELS)

    record = evaluate_in_process(["--model_name_or_path", str(output_dir / "best"), "--dataset", "breastmnist",
                                  "--data_dir", str(data_dir), "--no_verify_checksum"])
    assert record["model"]["model_type"] == "vit"
    assert_same(record["metrics"], results["test_metrics"])


def test_fine_tuning_our_cnn_on_another_data_set(breast_cnn, blood_data_dir, tmp_path, capsys):
    output_dir = tmp_path / "blood"
    args = ["--model_name_or_path", str(breast_cnn), "--dataset", "bloodmnist", "--data_dir", str(blood_data_dir),
            "--no_verify_checksum", "--output_dir", str(output_dir), *FAST]

    code, output = train_in_process(args, capsys)  # 1-channel model, 3-channel images
    assert code == 2 and "takes 1-channel images; bloodmnist images have 3 channel(s). Pass --num_channels 1" in output
    assert not output_dir.exists()

    code, output = train_in_process([*args, "--num_channels", "1"], capsys)  # 2 labels, 8 classes
    assert code == 2 and "predicts 2 labels; bloodmnist has 8" in output and "--ignore_mismatched_sizes" in output
    assert not output_dir.exists()

    result = python_train(*args, "--num_channels", "1", "--ignore_mismatched_sizes")
    assert "Re-initialised weights" in result.stderr
    assert "classifier.bias (2,) -> (8,), classifier.weight (2, 128) -> (8, 128)" in result.stderr
    results = read_results(output_dir)
    assert max(epoch["metrics"]["auc"] for epoch in results["validation_history"]) > 0.65  # chance: 0.5
    model = AutoModelForImageClassification.from_pretrained(output_dir / "best", trust_remote_code=True)
    assert model.config.num_labels == 8 and model.config.num_channels == 1
    assert model.config.id2label[7] == "platelet"

    # The starting checkpoint in the records and the model card, with its weights' SHA-256 from its manifest.
    sha256 = recorded_sha256(breast_cnn, "model.safetensors")
    assert results["starting_checkpoint"] == {"name_or_path": str(breast_cnn), "model_type": "medmnist_cnn",
                                              "family": "cnn", "weights_sha256": sha256}
    run_config = json.loads((output_dir / "run_config.json").read_text())
    assert (run_config["model"], run_config["model_weights_sha256"]) == ("cnn", sha256)
    assert f"Fine-tuned from `{breast_cnn}`" in model_card(results)
