"""Tests of the `data` package: loading (real and synthetic files), errors, the device pipeline, augmentation and
sharding over two real processes. No network; every cache lives under tmp_path.

Run as a script (`accelerate launch ... tests/test_data.py --shard-worker OUT`), this file is also the worker of
`test_sharding_two_processes`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# `data` and `models` are importable under pytest; this makes them so when accelerate launch runs the file.
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
from data import (  # noqa: E402
    AugmentationConfig,
    BatchTransform,
    DeviceSplit,
    MedMNISTDataError,
    channel_mean_std,
    index_loader,
    load_medmnist,
    medmnist_info,
    mix_batch,
    sample_keys,
    training_loader,
)
from data.synthetic import synthetic_medmnist  # noqa: E402

REAL_DATA_DIR = ROOT.parent / "shared" / "data" / "medmnist"

# From ../shared/data/medmnist/README.md: split sizes and label counts (class 0 ... class k).
REAL_EXPECTATIONS = {
    "breastmnist": {
        "train": [147, 399],
        "validation": [21, 57],
        "test": [42, 114],
    },
    "bloodmnist": {
        "train": [852, 2181, 1085, 2026, 849, 993, 2330, 1643],
        "validation": [122, 312, 155, 290, 122, 143, 333, 235],
        "test": [244, 624, 311, 579, 243, 284, 666, 470],
    },
}
REAL_SIZES = {"breastmnist": (546, 78, 156), "bloodmnist": (11959, 1712, 3421)}


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No network for `datasets` (env for subprocesses, config for this process, which read the env at import),
    and no data folder leaking in from the environment."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def synthetic(directory, flag="breastmnist", **kwargs):
    return synthetic_medmnist(directory, flag, **kwargs)


def nhwc(images: np.ndarray) -> np.ndarray:
    """N×H×W×C from the npz layout (N×H×W for grayscale)."""
    return images[..., None] if images.ndim == 3 else images


def pixels(image) -> np.ndarray:
    """H×W×C array of a PIL image (mode L gives H×W)."""
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


# --- real files ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_cache")


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist"])
def test_real_files_sizes_histograms_and_cache(flag, real_cache):
    path = REAL_DATA_DIR / f"{flag}.npz"
    if not path.is_file():
        pytest.skip(f"real MedMNIST file {path} is absent (provided only on the project machines; see its README)")
    dataset = load_medmnist(flag, data_dir=REAL_DATA_DIR, cache_dir=real_cache)  # verifies the MD5

    assert list(dataset) == ["train", "validation", "test"]
    assert tuple(len(split) for split in dataset.values()) == REAL_SIZES[flag]
    for name, counts in REAL_EXPECTATIONS[flag].items():
        split = DeviceSplit.from_dataset(dataset[name])
        assert np.bincount(split.labels.numpy(), minlength=len(counts)).tolist() == counts, name

    info = medmnist_info(dataset)
    from medmnist import INFO

    assert info.checksum_verified and info.md5 == INFO[flag]["MD5"]
    assert (info.task, info.num_channels, info.license) == (INFO[flag]["task"], INFO[flag]["n_channels"], "CC BY 4.0")
    assert info.description == INFO[flag]["description"] == dataset["train"].info.description
    assert dataset["train"].features["label"].names == info.label_names
    assert Path(info.file_path) == path.resolve()

    # Byte-exact round trip of the real arrays, through the fast decoder and through PIL.
    train = DeviceSplit.from_dataset(dataset["train"])
    with np.load(path) as npz:
        expected_images, expected_labels = nhwc(npz["train_images"]), npz["train_labels"][:, 0]
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), expected_images)
    assert np.array_equal(train.labels.numpy(), expected_labels)
    assert np.array_equal(pixels(dataset["train"][7]["image"]), expected_images[7])

    # The second load reads the Arrow cache: same files, not rewritten.
    cache_files = sorted(Path(f["filename"]) for f in dataset["train"].cache_files)
    assert cache_files and all(real_cache in f.parents for f in cache_files)
    mtimes = [f.stat().st_mtime_ns for f in cache_files]
    again = load_medmnist(flag, data_dir=REAL_DATA_DIR, cache_dir=real_cache)
    assert sorted(Path(f["filename"]) for f in again["train"].cache_files) == cache_files
    assert [f.stat().st_mtime_ns for f in cache_files] == mtimes


# --- synthetic files: round trip and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist", "chestmnist"])
def test_synthetic_round_trip(flag, tmp_path):
    source = synthetic(tmp_path / "npz", flag, n_train=40, n_val=12, n_test=20)
    dataset = source.load(cache_dir=tmp_path / "cache")
    arrays = source.arrays()
    for split, prefix in [("train", "train"), ("validation", "val"), ("test", "test")]:
        images, labels = nhwc(arrays[f"{prefix}_images"]), arrays[f"{prefix}_labels"]
        device_split = DeviceSplit.from_dataset(dataset[split])
        assert device_split.images.shape == (len(images), source.num_channels, 28, 28)
        assert np.array_equal(device_split.images.permute(0, 2, 3, 1).numpy(), images)
        decoded = np.stack([pixels(image) for image in dataset[split]["image"]])  # PIL path
        assert np.array_equal(decoded, images)
        if source.is_multilabel:
            assert device_split.labels.dtype == torch.float32
            assert np.array_equal(device_split.labels.numpy(), labels.astype(np.float32))
            assert np.array_equal(np.asarray(dataset[split]["label"]), labels)
        else:
            assert device_split.labels.dtype == torch.int64
            assert np.array_equal(device_split.labels.numpy(), labels[:, 0])
            assert dataset[split]["label"] == labels[:, 0].tolist()

    info = medmnist_info(dataset)
    assert (info.flag, info.size, info.num_labels, info.is_multilabel) == (flag, 28, source.num_labels,
                                                                            source.is_multilabel)
    assert not info.checksum_verified and info.md5 == data.file_md5(source.path)
    # The metadata survives the usual dataset operations.
    derived = dataset["train"].select([3, 1, 2]).map(lambda row: row)
    assert medmnist_info(derived) == info
    assert np.array_equal(DeviceSplit.from_dataset(derived).images.permute(0, 2, 3, 1).numpy(),
                          nhwc(arrays["train_images"])[[3, 1, 2]])


def test_device_split_decodes_other_image_encodings(tmp_path):
    """A dataset whose images are PNG files (not written by load_medmnist) goes through the PIL fallback."""
    import datasets
    import PIL.Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    png = datasets.Dataset.from_dict(
        {"image": [PIL.Image.fromarray(a) for a in images], "label": [0, 1, 2, 1, 0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)}),
    )
    split = DeviceSplit.from_dataset(png)
    assert np.array_equal(split.images.permute(0, 2, 3, 1).numpy(), images)
    assert split.labels.tolist() == [0, 1, 2, 1, 0] and split.num_labels == 3


def test_md5_mismatch_is_refused_unless_skipped(tmp_path, caplog):
    source = synthetic(tmp_path)
    actual = data.file_md5(source.path)
    with pytest.raises(MedMNISTDataError) as error:
        load_medmnist("breastmnist", data_dir=source.data_dir, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "MD5 mismatch" in message and data.expected_md5("breastmnist") in message and actual in message
    with caplog.at_level(logging.WARNING, logger="data"):
        load_medmnist("breastmnist", data_dir=source.data_dir, cache_dir=tmp_path / "cache", verify_checksum=False)
    assert any("MD5 check SKIPPED" in r.getMessage() and actual in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_file_gives_clear_error(tmp_path, damage):
    source = synthetic(tmp_path)
    content = source.path.read_bytes()
    source.path.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"not an npz file" * 50)
    with pytest.raises(MedMNISTDataError, match="truncated or corrupt") as error:
        source.load(cache_dir=tmp_path / "cache")
    assert str(source.path) in str(error.value) and "download it again" in str(error.value)
    with pytest.raises(MedMNISTDataError, match="MD5 mismatch"):  # with the check on, the MD5 catches it first
        load_medmnist("breastmnist", data_dir=source.data_dir, cache_dir=tmp_path / "cache")


def test_wrong_layout_gives_clear_error(tmp_path):
    np.savez(tmp_path / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(MedMNISTDataError, match="not in the official MedMNIST layout.*val_images"):
        load_medmnist("breastmnist", data_dir=tmp_path, cache_dir=tmp_path / "cache", verify_checksum=False)
    source = synthetic(tmp_path / "rgb", "bloodmnist")
    source.path.rename(tmp_path / "rgb" / "breastmnist.npz")  # 3-channel images where 1 channel is expected
    with pytest.raises(MedMNISTDataError, match=r"expected N×28×28"):
        load_medmnist("breastmnist", data_dir=tmp_path / "rgb", cache_dir=tmp_path / "cache", verify_checksum=False)


def test_unknown_flag_size_and_3d_flag(tmp_path):
    with pytest.raises(MedMNISTDataError, match="Unknown MedMNIST flag 'bloodmnsit'") as error:
        load_medmnist("bloodmnsit", data_dir=tmp_path)
    assert all(flag in str(error.value) for flag in data.flags_2d())
    assert len(data.flags_2d()) == 12
    with pytest.raises(MedMNISTDataError, match="Valid sizes: 28, 64, 128, 224"):
        load_medmnist("bloodmnist", size=32, data_dir=tmp_path)
    with pytest.raises(MedMNISTDataError, match="3D MedMNIST data set.*2D images only"):
        load_medmnist("organmnist3d", data_dir=tmp_path)
    assert data.npz_filename("bloodmnist", 64) == "bloodmnist_64.npz"
    assert data.npz_filename("pathmnist") == "pathmnist.npz"


def test_missing_file_says_where_what_and_how(tmp_path):
    with pytest.raises(MedMNISTDataError) as error:
        load_medmnist("bloodmnist", size=64, data_dir=tmp_path / "empty", download=False)
    message = str(error.value)
    for expected in ["bloodmnist_64.npz", str(tmp_path / "empty"), "data_dir argument", data.file_url("bloodmnist", 64),
                     data.expected_md5("bloodmnist", 64), "place it", data.DATA_DIR_ENV]:
        assert expected in message, expected


def test_missing_file_download_failure(tmp_path, monkeypatch):
    """The real download path (medmnist -> torchvision) against a closed local port: fails fast, clearly, cleanly."""
    import medmnist

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/pneumoniamnist.npz"
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"], "url", dead_url)  # not bundled: a download is tried
    (tmp_path / "root").mkdir()
    with pytest.raises(MedMNISTDataError, match="the download failed") as error:
        load_medmnist("pneumoniamnist", data_dir=tmp_path / "root", cache_dir=tmp_path / "cache")
    assert dead_url in str(error.value) and "pneumoniamnist.npz" in str(error.value)
    assert list((tmp_path / "root").iterdir()) == []  # no partial file, no staging folder left behind
    with pytest.raises(MedMNISTDataError, match="the download failed"):
        load_medmnist("pneumoniamnist", data_dir=tmp_path / "typo" / "root", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "typo").exists()  # the folders made for the download are removed again


def test_data_dir_from_environment(tmp_path, monkeypatch):
    source = synthetic(tmp_path / "from_env")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(source.data_dir))
    dataset = load_medmnist("breastmnist", verify_checksum=False, cache_dir=tmp_path / "cache")
    assert Path(medmnist_info(dataset).file_path) == source.path.resolve()
    with pytest.raises(MedMNISTDataError, match=rf"\${data.DATA_DIR_ENV}"):
        load_medmnist("bloodmnist", download=False)


def test_synthetic_data_is_learnable(tmp_path):
    """A nearest-centroid classifier beats chance by far: short training runs in other tests can learn it."""
    dataset = synthetic(tmp_path, "bloodmnist", n_train=160, n_test=80).load(cache_dir=tmp_path / "cache")
    train, test = DeviceSplit.from_dataset(dataset["train"]), DeviceSplit.from_dataset(dataset["test"])
    x_train, x_test = train.images.flatten(1).float(), test.images.flatten(1).float()
    centroids = torch.stack([x_train[train.labels == k].mean(0) for k in range(train.num_labels)])
    accuracy = (torch.cdist(x_test, centroids).argmin(1) == test.labels).float().mean().item()
    assert accuracy > 0.9  # chance: 1/8


def test_channel_mean_std_matches_numpy():
    images = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8)
    mean, std = channel_mean_std(images)
    array = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, array.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, array.std(axis=(0, 2, 3)), rtol=1e-10)


# --- augmentation -------------------------------------------------------------------------------------------------


def _batch(channels, n=16, size=28, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", ["none", "shift", "seed", "strong"])
@pytest.mark.parametrize("image_size", [28, 72])
def test_output_shape_dtype_and_range(channels, preset, image_size):
    mean, std = [0.4] * channels, [0.2] * channels
    transform = BatchTransform(AugmentationConfig.preset(preset), image_size, mean, std)
    images = _batch(channels)
    low, high = (0 - 0.4) / 0.2, (1 - 0.4) / 0.2
    for train in (True, False):
        out = transform(images, train=train)
        assert out.shape == (16, channels, image_size, image_size) and out.dtype == torch.float32
        assert out.device == images.device
        assert low - 1e-5 <= out.min().item() and out.max().item() <= high + 1e-5


def test_each_sample_gets_its_own_parameters():
    # One asymmetric image repeated: any two outputs differ only through their random parameters.
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    image[..., 4:12, 2:9] = 255
    images = image.repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    out = BatchTransform(AugmentationConfig.seed(), 28, [0.5], [0.5])(images, train=True).flatten(1)
    distances = torch.cdist(out, out)
    assert (distances + torch.eye(64) * 1e9).min() > 1e-3  # all 64 pairwise different
    flips = BatchTransform(AugmentationConfig(horizontal_flip=True), 28, [0.5], [0.5])(images, train=True)
    flipped = (flips[:, 0, 4:12, 19:26].mean((1, 2)) > flips[:, 0, 4:12, 2:9].mean((1, 2))).float().mean().item()
    assert 0.2 < flipped < 0.8  # flipped per sample, not per batch


def test_vertical_flip_turns_each_sample_upside_down_or_leaves_it():
    images = _batch(1, n=64)
    torch.manual_seed(0)
    transform = BatchTransform(AugmentationConfig(vertical_flip=True), 28, [0.5], [0.5])
    out, plain = transform(images, train=True), transform(images, train=False)
    upside_down = (out - plain.flip(-2)).abs().amax((1, 2, 3)) < 1e-5
    unchanged = (out - plain).abs().amax((1, 2, 3)) < 1e-5
    assert bool((upside_down ^ unchanged).all())  # an exact flip of the rows, or nothing
    assert 0.2 < upside_down.float().mean().item() < 0.8  # per sample, not per batch
    sideways = BatchTransform(AugmentationConfig(horizontal_flip=True), 28, [0.5], [0.5])(images, train=True)
    assert not ((sideways - plain.flip(-2)).abs().amax((1, 2, 3)) < 1e-5).any()  # the other flag flips columns


def test_same_seed_same_batch():
    images = _batch(3)
    transform = BatchTransform(AugmentationConfig.strong(), 72, [0.5] * 3, [0.25] * 3)
    labels = torch.arange(16) % 8

    def run(seed):
        torch.manual_seed(seed)
        return mix_batch(transform(images, train=True), labels, 8, transform.config)

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("preset", ["shift", "seed", "strong"])
def test_an_image_is_augmented_by_its_key_whatever_batch_it_is_in(preset):
    """Per-sample draws from (seed, epoch, place in the epoch): the same image with the same key comes out the same
    alone, in a batch of others, in another order, or after other draws from the global RNG."""
    images = _batch(3, n=12)
    transform = BatchTransform(AugmentationConfig.preset(preset), 32, [0.5] * 3, [0.25] * 3)
    keys = sample_keys(4, 2, torch.arange(100, 112))
    whole = transform(images, train=True, sample_keys=keys)
    torch.manual_seed(123)  # the global RNG plays no part
    order = torch.tensor([5, 11, 0, 3])
    subset = transform(images[order], train=True, sample_keys=keys[order])
    assert torch.equal(subset, whole[order])
    assert torch.equal(transform(images[7:8], train=True, sample_keys=keys[7:8]), whole[7:8])
    for other in (sample_keys(4, 3, torch.arange(100, 112)), sample_keys(5, 2, torch.arange(100, 112)),
                  sample_keys(4, 2, torch.arange(200, 212))):  # another epoch, seed or place: other draws
        changed = (transform(images, train=True, sample_keys=other) - whole).abs().amax((1, 2, 3)) > 1e-4
        assert changed.float().mean() > 0.5
    with pytest.raises(ValueError, match="sample_keys"):
        transform(images, train=True, sample_keys=keys[:5])


def test_sample_random_draws_are_uniform_and_independent_across_counters_and_keys():
    random = data.SampleRandom(sample_keys(0, 0, torch.arange(20000)))
    first, second = random.uniform(), random.uniform(-2.0, 3.0)
    assert 0 <= first.min() and first.max() < 1 and -2 <= second.min() and second.max() < 3
    for values in (first, (second + 2) / 5):
        histogram = torch.histc(values, bins=10, min=0, max=1)
        assert (histogram - 2000).abs().max() < 200  # ~4.5 standard deviations of a bin count
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1]) < 0.03  # counters: unrelated draws
    assert abs(torch.corrcoef(torch.stack([first[:-1], first[1:]]))[0, 1]) < 0.03  # neighbouring keys too
    signs, integers = random.signs(columns=2), random.integers(7, columns=3)
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(signs.mean()) < 0.03
    assert integers.shape == (20000, 3) and torch.bincount(integers.flatten()).min() > 8000
    assert torch.equal(data.SampleRandom(random.keys[5:9]).uniform(), first[5:9])


@pytest.mark.parametrize("channels", [1, 3])
def test_no_augmentation_is_resize_and_normalisation(channels):
    images = _batch(channels)
    mean, std = [0.3] * channels, [0.2] * channels
    transform = BatchTransform(AugmentationConfig.none(), 72, mean, std)
    torch.manual_seed(0)
    out = transform(images, train=True)
    assert torch.equal(out, transform(images, train=False))
    resized = torch.nn.functional.interpolate(images.float(), size=(72, 72), mode="bilinear", antialias=True)
    expected = (resized / 255 - 0.3) / 0.2
    assert (out - expected).abs().max().item() <= 1 / 255 / 0.2 + 1e-5  # uint8 rounding of the resize, at most
    same_size = BatchTransform(AugmentationConfig.none(), 28, mean, std)(images, train=True)
    torch.testing.assert_close(same_size, (images.float() / 255 - 0.3) / 0.2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist"])
@pytest.mark.parametrize("image_size", [28, 72, 16])
def test_evaluation_transform_matches_saved_image_processor(flag, image_size, tmp_path):
    """train=False == models.build_image_processor applied to the PIL images of the dataset (1 and 3 channels).

    On CPU both resize the same uint8 tensor with the same torchvision kernel, so the match is exact, and the
    tolerance is float rounding only (on CUDA the bound would be one uint8 step, 1 / (255 * std)).
    """
    from models import build_image_processor

    split = synthetic(tmp_path, flag, n_val=24).load(cache_dir=tmp_path / "cache")["validation"]
    device_split = DeviceSplit.from_dataset(split)
    mean, std = channel_mean_std(device_split.images)
    processor = build_image_processor(image_size, mean, std)
    expected = processor(images=list(split["image"]), return_tensors="pt").pixel_values
    out = BatchTransform(AugmentationConfig.seed(), image_size, mean, std)(device_split.images, train=False)
    assert expected.shape == out.shape == (24, device_split.num_channels, image_size, image_size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_mix_batch_soft_targets():
    images = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    torch.manual_seed(0)
    for config in [AugmentationConfig(mixup_alpha=0.4), AugmentationConfig(cutmix_alpha=1.0)]:
        mixed, targets = mix_batch(images, labels, 4, config)
        assert mixed.shape == images.shape and targets.shape == (8, 4)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        assert not torch.equal(mixed, images)
    unmixed, targets = mix_batch(images, labels, 4, AugmentationConfig.none())
    assert unmixed is images and torch.equal(targets, torch.nn.functional.one_hot(labels, 4).float())
    multilabel = torch.tensor([[1, 0, 1]] * 4 + [[0, 1, 0]] * 4, dtype=torch.float32)
    _, targets = mix_batch(images, multilabel, 3, AugmentationConfig(mixup_alpha=0.4))
    assert ((targets >= 0) & (targets <= 1)).all() and not torch.equal(targets, multilabel)


def test_augmentation_config_validation():
    with pytest.raises(ValueError, match="zoom"):
        AugmentationConfig(zoom=1.5)
    with pytest.raises(ValueError, match="fill_mode"):
        AugmentationConfig(fill_mode="wrap")
    with pytest.raises(ValueError, match="preset"):
        AugmentationConfig.preset("medium")
    assert AugmentationConfig.seed().rotation_degrees == pytest.approx(10.8)


# --- index batches and sharding -----------------------------------------------------------------------------------


def _epoch_order(num_samples, batch_size, seed, epoch, repeats=1):
    loader = training_loader(num_samples, batch_size, seed=seed, repeats=repeats)
    loader.set_epoch(epoch)
    return torch.cat([batch["indices"] for batch in loader]).tolist()


def test_training_loader_order_depends_only_on_seed_and_epoch():
    first = _epoch_order(50, 8, seed=3, epoch=0)
    assert sorted(first) == list(range(50))
    assert first == _epoch_order(50, 8, seed=3, epoch=0) == _epoch_order(50, 5, seed=3, epoch=0)
    assert first != _epoch_order(50, 8, seed=3, epoch=1)
    assert first != _epoch_order(50, 8, seed=4, epoch=0)
    assert _epoch_order(50, 8, seed=0, epoch=1) != _epoch_order(50, 8, seed=1, epoch=0)
    loader = training_loader(10, 4, seed=0)
    batches = list(loader)
    assert [b["positions"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0]["indices"].dtype == torch.int64 and [b["share"] for b in batches] == [1.0, 1.0, 1.0]
    assert len(list(training_loader(10, 4, seed=0, drop_last=True))) == 2
    assert [b.tolist() for b in index_loader(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_repeated_augmentation_puts_copies_side_by_side_and_keeps_the_epoch_length():
    plain = _epoch_order(50, 8, seed=3, epoch=2)
    repeated = _epoch_order(50, 8, seed=3, epoch=2, repeats=3)
    assert len(repeated) == 50
    # ceil(50 / 3) = 17 images of the same permutation, each three times in a row, the last one cut to two copies.
    assert repeated == [index for index in plain[:17] for _ in range(3)][:50]
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        training_loader(50, 8, seed=3, repeats=0)


def _process_parts(num_samples, batch_size, num_processes, epoch, skip=0):
    """Each process's batches, as `accelerator.prepare` shards the loader (accelerate's own sharding, in one process)."""
    from accelerate import skip_first_batches
    from accelerate.data_loader import prepare_data_loader

    parts = []
    for rank in range(num_processes):
        loader = prepare_data_loader(training_loader(num_samples, batch_size, seed=5, num_processes=num_processes),
                                     num_processes=num_processes, process_index=rank, put_on_device=False)
        loader.set_epoch(epoch)
        parts.append(list(skip_first_batches(loader, skip) if skip else loader))
    return parts


@pytest.mark.parametrize("num_processes", [2, 3])
def test_processes_share_the_one_process_global_batches_without_padding(num_processes):
    """103 images, 8 per process: process r gets part r of every global batch; the parts of a global batch put
    together are the 1-process batch of the same size; the shares weight each part's mean loss to the global mean."""
    global_batch = 8 * num_processes
    one = _process_parts(103, global_batch, 1, epoch=2)[0]
    parts = _process_parts(103, 8, num_processes, epoch=2)
    assert len({len(p) for p in parts}) == 1  # every process runs the same number of steps
    remainder = 103 % global_batch  # 7 with 2 processes (4 + 3), 7 with 3 (3 + 2 + 2)
    assert len(parts[0]) == len(one) == 103 // global_batch + 1
    for step, whole in enumerate(one):
        pieces = [p[step] for p in parts]
        assert torch.cat([piece["indices"] for piece in pieces]).tolist() == whole["indices"].tolist()
        assert torch.cat([piece["positions"] for piece in pieces]).tolist() == whole["positions"].tolist()
        sizes = [len(piece["indices"]) for piece in pieces]
        assert max(sizes) - min(sizes) <= 1
        shares = [piece["share"] for piece in pieces]
        # The average over processes of share × (mean loss of the part) weights every image by 1 / global size.
        for share, size in zip(shares, sizes):
            assert share / (num_processes * size) == pytest.approx(1 / sum(sizes))
        if step < len(one) - 1:
            assert shares == [1.0] * num_processes
    assert sum(len(piece["indices"]) for piece in [p[-1] for p in parts]) == remainder
    # Resuming mid-epoch: the same parts from the skipped-to step on.
    resumed = _process_parts(103, 8, num_processes, epoch=2, skip=3)
    for rank in range(num_processes):
        assert [b["indices"].tolist() for b in resumed[rank]] == [b["indices"].tolist() for b in parts[rank][3:]]


def test_a_last_global_batch_smaller_than_the_process_count_is_dropped():
    assert len(training_loader(17, 8, seed=0, num_processes=2)) == 2  # 16 + 1: the 1 would leave a process idle
    assert len(training_loader(17, 16, seed=0, num_processes=1)) == 2
    assert len(training_loader(18, 8, seed=0, num_processes=2)) == 4  # 16 + 2: parts of 1 and 1
    with pytest.raises(ValueError, match="no complete global batch"):
        training_loader(5, 8, seed=0, num_processes=1, drop_last=True)


SHARD_N, SHARD_BATCH, SHARD_SEED, SHARD_SKIP = 103, 8, 7, 3


def _shard_worker(out_dir: str) -> None:
    """One of the two `accelerate launch` processes of `test_sharding_two_processes`."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    world = accelerator.num_processes
    result = {"rank": accelerator.process_index, "world": world, "local": {}}

    def loader():
        return accelerator.prepare(training_loader(SHARD_N, SHARD_BATCH, seed=SHARD_SEED, num_processes=world))

    def listed(batches):
        return [[b["indices"].tolist(), b["positions"].tolist(), b["share"]] for b in batches]

    train = loader()
    for epoch in (0, 1):
        train.set_epoch(epoch)
        result["local"][epoch] = listed(train)
    result["local"][2] = listed(train)  # no set_epoch: the loader counts full passes itself

    # Resume in the middle of epoch 1, as after load_state: a fresh loader, set_epoch, skip what was seen.
    fresh = loader()
    fresh.set_epoch(1)
    result["resumed"] = listed(accelerator.skip_first_batches(fresh, SHARD_SKIP))
    # Same, with the epoch set on the skipping loader instead (accelerate's wrappers hide the dataset there).
    skipping = accelerator.skip_first_batches(loader(), SHARD_SKIP)
    skipping.set_epoch(1)
    result["resumed_via_skipping_loader"] = listed(skipping)

    evaluation = accelerator.prepare(index_loader(SHARD_N, SHARD_BATCH))
    result["eval_gathered"] = torch.cat([accelerator.gather_for_metrics(b) for b in evaluation]).tolist()
    Path(out_dir, f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    # Leave together and close the process group: a rank that exits while gloo's threads still run aborts
    # ("terminate called without an active exception"), as train.py and evaluate.py never do.
    accelerator.wait_for_everyone()
    accelerator.end_training()


def test_sharding_two_processes(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): each global batch split between them, every image once per
    epoch, no padding; exact mid-epoch resumption; evaluation gathers every index once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), __file__, "--shard-worker", str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]

    for epoch in ("0", "1", "2"):
        unsharded = _epoch_order(SHARD_N, 2 * SHARD_BATCH, SHARD_SEED, int(epoch))
        local = [rank["local"][epoch] for rank in ranks]
        assert len(local[0]) == len(local[1]) == 7  # 6 global batches of 16, then 7 images: 4 + 3
        interleaved = [i for pair in zip(*local) for indices, _, _ in pair for i in indices]
        assert interleaved == unsharded  # every image exactly once, no padding
        positions = [p for pair in zip(*local) for _, places, _ in pair for p in places]
        assert positions == list(range(SHARD_N))
        assert [part[2] for part in (local[0][-1], local[1][-1])] == [2 * 4 / 7, 2 * 3 / 7]
    assert ranks[0]["local"]["0"] != ranks[0]["local"]["1"]
    for rank in ranks:
        assert rank["resumed"] == rank["local"]["1"][SHARD_SKIP:]
        assert rank["resumed_via_skipping_loader"] == rank["local"]["1"][SHARD_SKIP:]
        assert rank["eval_gathered"] == list(range(SHARD_N))


if __name__ == "__main__" and "--shard-worker" in sys.argv:
    _shard_worker(sys.argv[sys.argv.index("--shard-worker") + 1])
