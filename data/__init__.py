"""MedMNIST data for the whole project: verified official files -> cached `datasets.DatasetDict` -> device tensors
-> batched on-device augmentation.

    from data import load_medmnist, medmnist_info, DeviceSplit, channel_mean_std, training_loader
    from data import AugmentationConfig, BatchTransform, mix_batch, sample_keys

    dataset = load_medmnist("bloodmnist", size=28)             # splits train / validation / test
    info = medmnist_info(dataset)                               # task, channels, label names, licence, file, md5
    train = DeviceSplit.from_dataset(dataset["train"], device)  # uint8 (N, C, H, W) on the device
    mean, std = channel_mean_std(train.images)
    transform = BatchTransform(AugmentationConfig.seed(), image_size=72, mean=mean, std=std).to(device)
    loader = accelerator.prepare(training_loader(len(train), 128, seed=0, num_processes=accelerator.num_processes))
    for epoch in ...:
        loader.set_epoch(epoch)
        for batch in loader:                                    # indices, positions, share of the global batch
            images, labels = train.batch(batch["indices"])
            pixel_values = transform(images, train=True, sample_keys=sample_keys(0, epoch, batch["positions"]))
            pixel_values, targets = mix_batch(pixel_values, labels, info.num_labels, config)  # optional

For recipe searches, `cross_validation_split(dataset, num_folds=5, fold=0)` rotates a held-out fold through
train + validation (`data.cross_validation`).

Files are read from `data_dir`, else `$MEDMNIST_DATA_DIR`, else `~/.medmnist`; a file missing there comes from the
project's bundled copy (`data/bundled/breastmnist.npz`, the 28 px BreastMNIST) before any download; the Arrow conversion is cached in
`$HF_DATASETS_CACHE/medmnist` (see `data.loading`).
"""

from .augmentation import (
    AUGMENTATION_PRESETS,
    FILL_MODES,
    AugmentationConfig,
    BatchTransform,
    mix_batch,
    processor_mean_std,
    targets_from_labels,
)
from .channels import convert_channels
from .cross_validation import cross_validation_split
from .device_pipeline import (
    DeviceSplit,
    EpochSamples,
    GlobalBatchSampler,
    IndexDataset,
    IndexLoader,
    channel_mean_std,
    epoch_order,
    index_loader,
    training_loader,
)
from .sample_random import SampleRandom, sample_keys
from .image_data import ImageData, ImageDataError
from .info import MedMNISTInfo, medmnist_info
from .loading import CACHE_FORMAT_VERSION, default_cache_dir, load_medmnist
from .medmnist_files import (
    BUNDLED_DIR,
    DATA_DIR_ENV,
    SIZES,
    MedMNISTDataError,
    bundled_npz,
    expected_md5,
    file_md5,
    file_url,
    flags_2d,
    flags_3d,
    locate_npz,
    npz_filename,
    resolve_data_dir,
)

__all__ = [
    "AUGMENTATION_PRESETS",
    "BUNDLED_DIR",
    "CACHE_FORMAT_VERSION",
    "DATA_DIR_ENV",
    "FILL_MODES",
    "SIZES",
    "AugmentationConfig",
    "BatchTransform",
    "DeviceSplit",
    "EpochSamples",
    "GlobalBatchSampler",
    "IndexDataset",
    "ImageData",
    "ImageDataError",
    "IndexLoader",
    "MedMNISTDataError",
    "MedMNISTInfo",
    "SampleRandom",
    "bundled_npz",
    "channel_mean_std",
    "convert_channels",
    "cross_validation_split",
    "default_cache_dir",
    "epoch_order",
    "expected_md5",
    "file_md5",
    "file_url",
    "flags_2d",
    "flags_3d",
    "index_loader",
    "load_medmnist",
    "locate_npz",
    "medmnist_info",
    "mix_batch",
    "npz_filename",
    "processor_mean_std",
    "resolve_data_dir",
    "sample_keys",
    "targets_from_labels",
    "training_loader",
]
