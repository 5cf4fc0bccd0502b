"""A user's own images: folders, save_to_disk folders and per-split folders, checked, decoded like the saved image
processor, trained with train.py, evaluated with evaluate.py and loaded with `pipeline`; every bad input exits 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

import data
import train
from test_bundled_data import _can_unshare_network, _offline_env, fresh_copy  # noqa: F401 - a fixture
from data import ImageData, ImageDataError
from models import build_image_processor

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("benign", "malignant")


def write_image_folder(root: Path, per_class: int = 24, seed: int = 0, splits=("",)) -> Path:
    """PNG files of different sizes, some RGB, some grayscale, in <root>/<split>/<class>/; the class shows in the
    brightness, so a model can learn it."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                height, width = rng.integers(20, 48, 2)
                pixels = np.clip(rng.normal(70 + 110 * label, 35, (height, width)), 0, 255).astype(np.uint8)
                image = PIL.Image.fromarray(pixels)
                if index % 3 == 0:
                    image = image.convert("RGB")
                image.save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images") / "scans")


def run(script: str, *args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


# --- reading and checking -----------------------------------------------------------------------------------------


def test_an_image_folder_gives_classes_channels_and_a_stratified_validation_split(image_folder):
    images = ImageData.open(str(image_folder), seed=3)
    assert images.label_names == list(CLASSES) and images.num_channels == 3  # some images are RGB
    assert images.sizes() == {"train": 40, "validation": 8}  # 15 % of 48, stratified: 4 per class
    assert np.bincount(images.splits["validation"]["label"]).tolist() == [4, 4]
    again, other = ImageData.open(str(image_folder), seed=3), ImageData.open(str(image_folder), seed=4)
    assert again.splits["validation"]["image"] == images.splits["validation"]["image"]  # fixed by the seed
    assert other.splits["validation"]["image"] != images.splits["validation"]["image"]
    for seed in range(5):  # stratified: every class in proportion, whatever the seed
        half = ImageData.open(str(image_folder), train_val_split=0.5, seed=seed)
        assert np.bincount(half.splits["validation"]["label"]).tolist() == [12, 12]
    assert ImageData.open(str(image_folder), num_channels=1).num_channels == 1
    info = images.info_at(32)
    assert (info.flag, info.size, info.task, info.num_labels, info.source) == ("scans", 32, "binary-class", 2, "images")


def test_decoded_images_are_what_the_saved_image_processor_makes_of_the_files(image_folder):
    """uint8 at the model's size, then the evaluation transform == the processor applied to the original files."""
    images = ImageData.open(str(image_folder), seed=0)
    split = images.decode(32)["validation"]
    assert split.images.shape == (8, 3, 32, 32) and split.images.dtype == torch.uint8
    mean, std = [0.4] * 3, [0.2] * 3
    ours = data.BatchTransform.for_evaluation(32, mean, std)(split.images)
    files = [PIL.Image.open(record["path"]).convert("RGB") for record in images.splits["validation"]["image"]]
    expected = build_image_processor(32, mean, std)(images=files, return_tensors="pt").pixel_values
    assert torch.equal(ours, expected)
    assert split.labels.tolist() == images.splits["validation"]["label"]


def test_per_split_folders_and_a_save_to_disk_folder(tmp_path):
    root = write_image_folder(tmp_path / "split", per_class=6, splits=("train", "val", "test"))
    by_folders = ImageData.open(train_dir=str(root / "train"), validation_dir=str(root / "val"),
                                test_dir=str(root / "test"))
    assert by_folders.sizes() == {"train": 12, "validation": 12, "test": 12}
    assert ImageData.open(str(root)).sizes() == {"train": 12, "validation": 12, "test": 12}  # <split>/<class>/ layout

    # A save_to_disk folder with other column names and string labels.
    files = sorted((root / "train").rglob("*.png"))
    table = datasets.Dataset.from_dict({"scan": [str(f) for f in files], "finding": [f.parent.name for f in files]})
    table = table.cast_column("scan", datasets.Image())
    datasets.DatasetDict(train=table).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ImageDataError, match="--image_column_name"):
        ImageData.open(str(tmp_path / "saved"))
    saved = ImageData.open(str(tmp_path / "saved"), image_column_name="scan", label_column_name="finding")
    assert saved.label_names == list(CLASSES) and sum(saved.sizes().values()) == 12


@pytest.mark.parametrize("damage, message", [
    ("unreadable", r"broken\.png cannot be read as an image"),
    ("not_an_image", r"notes\.txt is not an image file"),
    ("empty_class", r"cyst is empty: a class folder needs at least one image"),
    ("single_class", r"only one class"),
])
def test_bad_folders_are_refused_naming_the_file_or_class(tmp_path, damage, message):
    root = write_image_folder(tmp_path / "data", per_class=8)
    if damage == "unreadable":
        (root / "benign" / "broken.png").write_bytes(b"not a png at all")
    elif damage == "not_an_image":
        (root / "malignant" / "notes.txt").write_text("scanner settings")
    elif damage == "empty_class":
        (root / "cyst").mkdir()
    elif damage == "single_class":
        for path in (root / "malignant").iterdir():
            path.unlink()
        (root / "malignant").rmdir()
    with pytest.raises(ImageDataError, match=message):
        ImageData.open(str(root)).decode(16)


def test_a_class_in_validation_but_not_in_train_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=4, splits=("train", "validation"))
    extra = root / "validation" / "cyst"
    extra.mkdir()
    PIL.Image.new("L", (20, 20)).save(extra / "0.png")
    with pytest.raises(ImageDataError, match=r"\['cyst'\] have no training image \(they appear in validation\)"):
        ImageData.open(str(root))


def test_memory_is_checked_with_the_figures_before_decoding(image_folder):
    images = ImageData.open(str(image_folder))
    assert images.bytes_needed(64) == 48 * 3 * 64 * 64
    with pytest.raises(ImageDataError, match=r"48 images × 12288 bytes \(3×64×64 uint8\) = 0\.00 GiB on cpu"):
        images.check_memory(64, torch.device("cpu"), available=100_000)
    images.check_memory(64, torch.device("cpu"), available=10**9)


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "{folder}", "--train_dir", "{folder}"], "give one"),
    (["--dataset", "{folder}/malignant/0.png"], "a file, not a folder"),
    (["--dataset", "{folder}", "--num_channels", "2"], "--num_channels must be 1"),
    (["--dataset", "{folder}", "--train_val_split", "1.5"], "--train_val_split must be in"),
    (["--dataset", "{broken}"], "broken.png cannot be read"),
    (["--dataset", "{folder}", "--model", "cnn", "--image_size", "30000"], "more than half of the"),
])
def test_train_py_refuses_bad_data_before_writing_anything(image_folder, tmp_path, capsys, extra, message):
    broken = write_image_folder(tmp_path / "broken", per_class=4)
    (broken / "benign" / "broken.png").write_bytes(b"\x89PNG garbage")
    output_dir = tmp_path / "run"
    argv = [word.format(folder=image_folder, broken=broken) for word in extra]
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, "--output_dir", str(output_dir), "--report_to", "none"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in (captured.out + captured.err).replace("\n", " ")
    assert not output_dir.exists()


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
@pytest.mark.parametrize("model", ["cnn", "vit_lsa"])
def test_train_evaluate_and_pipeline_on_an_image_folder(model, tmp_path):
    folder = write_image_folder(tmp_path / "scans", per_class=30, splits=("train", "test"))
    output_dir = tmp_path / "run"
    run("train.py", "--model", model, "--dataset", str(folder), "--image_size", "32", "--num_train_epochs", "6",
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--warmup_epochs", "1",
        "--output_dir", str(output_dir), "--report_to", "none")
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["dataset"]["label_names"] == list(CLASSES) and results["dataset"]["source"] == "images"
    assert results["validation_metrics"]["auc"] > 0.8  # it learned the brightness
    assert results["test_metrics"] is not None

    run("evaluate.py", "--model_name_or_path", str(output_dir / "best"), "--dataset", str(folder),
        "--output_dir", str(tmp_path / "eval"))
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    saved = np.load(tmp_path / "eval" / "predictions.npz")
    assert record["metrics"]["acc"] == pytest.approx(accuracy_score(saved["labels"], saved["scores"].argmax(1)))
    assert record["metrics"]["auc"] == pytest.approx(roc_auc_score(saved["labels"], saved["scores"][:, 1]))
    assert record["metrics"]["acc"] == pytest.approx(results["test_metrics"]["acc"])
    assert record["dataset"]["num_samples"] == 60

    check = ("from transformers import pipeline\n"
             f"classify = pipeline('image-classification', model={str(output_dir / 'best')!r}, "
             "trust_remote_code=True)\n"
             f"print(classify({str(folder / 'test' / 'malignant' / '3.png')!r})[0]['label'])\n")
    printed = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert printed.stdout.strip().splitlines()[-1] in CLASSES


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_a_folder_without_test_split_trains_and_says_so(image_folder, tmp_path):
    result = run("train.py", "--model", "cnn", "--dataset", str(image_folder), "--image_size", "16",
                 "--num_train_epochs", "1", "--output_dir", str(tmp_path / "run"), "--report_to", "none")
    assert "no test split" in result.stderr
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["test_metrics"] is None
    missing = run("evaluate.py", "--model_name_or_path", str(tmp_path / "run" / "best"), "--dataset",
                  str(image_folder), check=False)
    assert missing.returncode != 0 and "has no test split" in missing.stderr


# --- the README's example, verbatim -------------------------------------------------------------------------------


def _readme_own_data_blocks() -> tuple[str, str]:
    """The bash and the Python block of the README's "Your own data" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    section = section[: section.index("\n## ", 1)]
    bash = section.split("```bash\n", 1)[1].split("```", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    return bash, python


def test_readme_own_data_example_runs_verbatim_in_a_fresh_copy(fresh_copy, tmp_path):
    """Export a folder, train, evaluate, classify with `pipeline`: the README's commands as written, offline."""
    bash, python = _readme_own_data_blocks()
    env = _offline_env(tmp_path / "home")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this environment's python
    prefix = ["unshare", "-n"] if _can_unshare_network() else []
    ran = subprocess.run([*prefix, "bash", "-e", "-c", bash], cwd=fresh_copy, env=env, capture_output=True, text=True,
                         timeout=900)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    results = json.loads((fresh_copy / "runs" / "mine" / "all_results.json").read_text())
    assert results["dataset"]["label_names"] == ["malignant", "normal, benign"]
    metrics = json.loads((fresh_copy / "runs" / "mine" / "best-eval-test" / "metrics.json").read_text())
    assert metrics["dataset"]["num_samples"] == 156
    assert metrics["metrics"]["auc"] == pytest.approx(results["test_metrics"]["auc"])
    classified = subprocess.run([*prefix, sys.executable, "-c", python], cwd=fresh_copy, env=env,
                                capture_output=True, text=True, timeout=300)
    assert classified.returncode == 0, classified.stderr[-4000:]
    assert "'label': 'malignant'" in classified.stdout or "'label': 'normal, benign'" in classified.stdout


def test_a_save_to_disk_folder_with_a_validation_split_cut_from_train(tmp_path):
    """train.py on a `save_to_disk` folder with only a train split: `--train_val_split` cuts validation (fixed by the
    seed), and evaluate.py with the same seed scores the same validation images as the run did."""
    folder = write_image_folder(tmp_path / "images", per_class=30)
    files = sorted(folder.rglob("*.png"))
    table = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": [f.parent.name for f in files]})
    datasets.DatasetDict(train=table.cast_column("image", datasets.Image())).save_to_disk(str(tmp_path / "saved"))
    output_dir = tmp_path / "run"
    run("train.py", "--model", "cnn", "--dataset", str(tmp_path / "saved"), "--image_size", "32", "--train_val_split",
        "0.25", "--seed", "7", "--num_train_epochs", "4", "--per_device_train_batch_size", "16", "--selection_metric",
        "last", "--output_dir", str(output_dir), "--report_to", "none")
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["test_metrics"] is None and results["config"]["train_val_split"] == 0.25
    run("evaluate.py", "--model_name_or_path", str(output_dir / "best"), "--dataset", str(tmp_path / "saved"),
        "--train_val_split", "0.25", "--seed", "7", "--split", "validation", "--output_dir", str(tmp_path / "eval"))
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["dataset"]["num_samples"] == 15  # a quarter of 60
    assert record["metrics"]["auc"] == pytest.approx(results["validation_metrics"]["auc"])
    assert record["metrics"]["acc"] == pytest.approx(results["validation_metrics"]["acc"])
