"""A user's own images: any `datasets.load_dataset` source, checked, decoded once and kept as uint8 tensors.

    data = ImageData.open(dataset="path/to/folder")              # imagefolder: one subfolder per class
    data = ImageData.open(train_dir="train", validation_dir="val")
    data = ImageData.open(dataset="path/saved_with_save_to_disk")
    info = data.info                       # label names, channels, task: what the model is built for
    splits = data.decode(image_size=64)    # {"train": DeviceSplit, "validation": ..., "test": ...} on the CPU

Sources: a folder in `imagefolder` layout (`<class>/<image>` or `<split>/<class>/<image>`), folders per split
(`train_dir` / `validation_dir` / `test_dir`, as HF's `run_image_classification` takes them), a folder written by
`DatasetDict.save_to_disk`, or a data set name `datasets.load_dataset` resolves (the Hub, when online). Without a
validation split, a stratified `train_val_split` fraction of train becomes one (fixed by the seed).

Every image is decoded once with PIL, converted to the run's channel count (grayscale `L` or `RGB`, taken from the
data: RGB if any image is colour; `num_channels` chooses), resized to the model's input with the same
bilinear, antialiased resize the saved image processor applies, and stored as one uint8 tensor per split, so the
on-device pipeline (`BatchTransform`, `training_loader`) runs as for MedMNIST. A file that cannot be read, a non-image
file, an empty class folder, a class with no training image, a single class, and a data set too large for memory
are `ImageDataError`s that name the file or class and say what to do.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
import torchvision.transforms.v2.functional as tvF
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from tqdm.auto import tqdm

from .device_pipeline import DeviceSplit
from .info import MedMNISTInfo

SPLITS = ("train", "validation", "test")
IMAGE_EXTENSIONS = frozenset(ImageFolder.EXTENSIONS)  # what datasets' imagefolder reads
METADATA_FILES = frozenset({"metadata.csv", "metadata.jsonl", "metadata.parquet", "dataset_dict.json",
                            "dataset_info.json", "state.json", "README.md"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L"})
MEMORY_FRACTION = 0.5  # of the memory available now: the splits' tensors may take at most this much


class ImageDataError(ValueError):
    """The data cannot be used as given; the message names the file, class or setting and says how to fix it."""


@dataclasses.dataclass
class ImageData:
    """A user's data set: the splits (images still encoded) and what the model needs to know about them.

    Attributes:
        splits: `datasets.Dataset` per split name (train, validation, and test when the data has one), each with an
            `image` column of undecoded images and a `label` `ClassLabel` column.
        name: how logs, records and model cards name the data set.
        label_names: class names by index (the `ClassLabel`'s, e.g. the folder names).
        num_channels: 1 or 3: what every image is converted to.
        source: where the data came from (a folder or a data set name).
    """

    splits: dict[str, datasets.Dataset]
    name: str
    label_names: list[str]
    num_channels: int
    source: str
    validation_cut_from_train: float | None = None

    @classmethod
    def open(cls, dataset: str | None = None, train_dir: str | None = None, validation_dir: str | None = None,
             test_dir: str | None = None, image_column_name: str = "image", label_column_name: str = "label",
             train_val_split: float = 0.15, seed: int = 42, num_channels: int | None = None) -> ImageData:
        """Load, check and split the data (nothing is decoded yet); `ImageDataError` when it cannot be used."""
        if train_dir is None and dataset is None:
            raise ImageDataError("Name the data: --dataset <folder, saved data set or name> or --train_dir <folder>.")
        loaded, source = _load(dataset, train_dir, validation_dir, test_dir)
        splits = {_split_name(name): split for name, split in loaded.items()}
        if "train" not in splits:
            raise ImageDataError(f"{source} has no train split (it has: {', '.join(splits) or 'none'}); an imagefolder "
                                 "needs <class>/<image> or train/<class>/<image>.")
        splits = {name: _standard_columns(split, image_column_name, label_column_name, source, name)
                  for name, split in splits.items() if name in SPLITS}
        label_names = _check_classes(splits, source)
        cut = None
        if "validation" not in splits:
            splits["train"], splits["validation"] = _stratified_split(splits["train"], train_val_split, seed, source)
            cut = train_val_split
        channels = _channels_of(splits, num_channels)
        name = Path(source).name if Path(source).exists() else source
        return cls(splits, name, label_names, channels, source, cut)

    @property
    def info(self) -> MedMNISTInfo:
        """The metadata scripts use (the same fields as a MedMNIST data set's; size is filled in by `decode`)."""
        return self.info_at(0)

    def info_at(self, image_size: int) -> MedMNISTInfo:
        return MedMNISTInfo(
            flag=self.name, size=image_size, task="binary-class" if len(self.label_names) == 2 else "multi-class",
            num_channels=self.num_channels, label_names=list(self.label_names), num_labels=len(self.label_names),
            is_multilabel=False, description=f"Images from {self.source}", license="unknown",
            file_path=self.source, md5=None, url="", expected_md5="", source="images")

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def bytes_needed(self, image_size: int) -> int:
        """Memory of all splits as uint8 tensors at `image_size` (num_channels × image_size² bytes an image)."""
        return sum(self.sizes().values()) * self.num_channels * image_size * image_size

    def check_memory(self, image_size: int, device: torch.device, available: int | None = None) -> None:
        """Refuse, with the figures, a data set whose tensors would take more than half the free memory."""
        needed = self.bytes_needed(image_size)
        available = _available_memory(device) if available is None else available
        if needed > MEMORY_FRACTION * available:
            per_image = self.num_channels * image_size * image_size
            raise ImageDataError(
                f"{sum(self.sizes().values())} images × {per_image} bytes ({self.num_channels}×{image_size}×"
                f"{image_size} uint8) = {needed / 2**30:.2f} GiB on {device.type}, more than half of the "
                f"{available / 2**30:.2f} GiB free there. Lower --image_size, or use fewer images.")

    def decode(self, image_size: int, splits: tuple[str, ...] | None = None) -> dict[str, DeviceSplit]:
        """The splits (default: all) as uint8 (N, C, image_size, image_size) tensors on the CPU."""
        return {name: _decode_split(split, image_size, self.num_channels, f"Decoding images ({name})")
                for name, split in self.splits.items() if splits is None or name in splits}


def _load(dataset, train_dir, validation_dir, test_dir) -> tuple[datasets.DatasetDict, str]:
    try:
        if train_dir is not None:
            folders = {"train": train_dir, "validation": validation_dir, "test": test_dir}
            files = {}
            for split, folder in folders.items():
                if folder is not None:
                    _check_folder(Path(folder).expanduser())
                    files[split] = os.path.join(str(Path(folder).expanduser()), "**")
            return datasets.load_dataset("imagefolder", data_files=files), train_dir
        path = Path(dataset).expanduser()
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
                return (loaded if isinstance(loaded, datasets.DatasetDict)
                        else datasets.DatasetDict(train=loaded)), str(path)
            _check_folder(path)
            return datasets.load_dataset("imagefolder", data_dir=str(path)), str(path)
        if path.exists():
            raise ImageDataError(f"--dataset {dataset}: a file, not a folder; pass the folder of images (one subfolder "
                                 "per class) or a MedMNIST flag.")
        return datasets.load_dataset(dataset), dataset
    except ImageDataError:
        raise
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds: FileNotFoundError, ConnectionError, ...
        what = train_dir or dataset
        raise ImageDataError(f"Cannot load the data set {what!r}: {type(error).__name__}: "
                             f"{str(error).splitlines()[0][:300]}. A local folder needs <class>/<image> (or "
                             "<split>/<class>/<image>) files; a name needs the Hub (online) or a cached copy."
                             ) from None


def _check_folder(folder: Path) -> None:
    """Refuse files that are not images and class folders without images: datasets would skip both silently."""
    if not folder.is_dir():
        raise ImageDataError(f"{folder} is not a folder.")
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        visible = [f for f in files if not f.startswith(".")]
        if not visible and not subdirectories:
            raise ImageDataError(f"{directory} is empty: a class folder needs at least one image (remove the folder "
                                 "if the class is not wanted).")
        for name in visible:
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS and name not in METADATA_FILES:
                raise ImageDataError(f"{Path(directory) / name} is not an image file (by its extension); the data "
                                     "folder may hold only images, one subfolder per class. Move it out.")


def _split_name(name: str) -> str:
    return {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}.get(name, name)


def _standard_columns(split: datasets.Dataset, image_column: str, label_column: str, source: str,
                      name: str) -> datasets.Dataset:
    """`image` (undecoded) and `label` (`ClassLabel`) columns only."""
    columns = split.column_names
    if label_column == "label" and "label" not in columns and columns == [image_column]:  # what imagefolder gives
        raise ImageDataError(f"{source} ({name} split) has no labels: an image folder needs one subfolder per class, "
                             "at least two (it has only one class, or images outside class folders).")
    for wanted, flag in ((image_column, "--image_column_name"), (label_column, "--label_column_name")):
        if wanted not in columns:
            raise ImageDataError(f"{source} ({name} split) has no column {wanted!r}; its columns are {columns}. "
                                 f"Name the right one with {flag}.")
    if not isinstance(split.features[image_column], datasets.Image):
        raise ImageDataError(f"{source}: column {image_column!r} holds {split.features[image_column]}, not images.")
    split = split.select_columns([image_column, label_column])
    if image_column != "image":
        split = split.rename_column(image_column, "image")
    if label_column != "label":
        split = split.rename_column(label_column, "label")
    label_feature = split.features["label"]
    if isinstance(label_feature, (datasets.List, datasets.Sequence)):
        raise ImageDataError(f"{source}: the labels are lists (multi-label data); this path trains single-label "
                             "classification (one class per image).")
    if not isinstance(label_feature, datasets.ClassLabel):
        split = split.class_encode_column("label")
    return split.cast_column("image", datasets.Image(decode=False))


def _check_classes(splits: dict[str, datasets.Dataset], source: str) -> list[str]:
    """One class list for every split, at least two classes, each with training images."""
    names = splits["train"].features["label"].names
    for split_name, split in splits.items():
        if split.features["label"].names != names:
            extra = sorted(set(split.features["label"].names) - set(names))
            raise ImageDataError(f"{source}: the {split_name} split has the classes {split.features['label'].names}, "
                                 f"train has {names}" + (f" (not in train: {extra})" if extra else "")
                                 + ". Every class needs training images; use the same class folders in every split.")
    if len(names) < 2:
        raise ImageDataError(f"{source}: only one class ({names}); classification needs at least two (one subfolder "
                             "per class).")
    counts = np.bincount(np.asarray(splits["train"]["label"]), minlength=len(names))
    missing = [names[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        elsewhere = [s for s, split in splits.items() if s != "train"
                     and set(np.asarray(split["label"]).tolist()) & {names.index(m) for m in missing}]
        raise ImageDataError(f"{source}: class(es) {missing} have no training image"
                             + (f" (they appear in {', '.join(elsewhere)})" if elsewhere else "")
                             + ". Add training images of each class, or remove the class.")
    return list(names)


def _stratified_split(train: datasets.Dataset, fraction: float, seed: int, source: str):
    if not 0 < fraction < 1:
        raise ImageDataError(f"--train_val_split must be in (0, 1) to cut a validation split from train, got "
                             f"{fraction}.")
    try:
        parts = train.train_test_split(test_size=fraction, stratify_by_column="label", seed=seed)
    except ValueError as error:
        raise ImageDataError(f"{source}: cannot cut a stratified validation split of {fraction:.0%} from "
                             f"{len(train)} training images ({error}). Give a validation folder, or change "
                             "--train_val_split.") from None
    return parts["train"], parts["test"]


def _channels_of(splits: dict[str, datasets.Dataset], num_channels: int | None) -> int:
    if num_channels is not None:
        if num_channels not in (1, 3):
            raise ImageDataError(f"--num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels}.")
        return num_channels
    for split in splits.values():
        for record in split["image"]:
            if _open(record).mode not in GRAYSCALE_MODES:
                return 3
    return 1


def _open(record: dict) -> PIL.Image.Image:
    """The image of an undecoded `datasets.Image` record (opens the header only)."""
    source = record.get("path") or "<embedded image>"
    try:
        if record.get("bytes") is not None:
            return PIL.Image.open(io.BytesIO(record["bytes"]))
        return PIL.Image.open(record["path"])
    except (OSError, ValueError, PIL.UnidentifiedImageError) as error:
        raise ImageDataError(f"{source} cannot be read as an image ({error}). Remove or replace the file.") from None


def _to_mode(image: PIL.Image.Image, channels: int) -> PIL.Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the high byte
        image = PIL.Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    return image.convert("L" if channels == 1 else "RGB")


def _decode_split(split: datasets.Dataset, image_size: int, channels: int, desc: str) -> DeviceSplit:
    images = torch.empty((len(split), channels, image_size, image_size), dtype=torch.uint8)
    for index, record in enumerate(tqdm(split["image"], desc=desc, leave=False)):
        image = _open(record)
        try:
            pixels = np.asarray(_to_mode(image, channels))
        except (OSError, ValueError) as error:  # truncated or damaged after a valid header
            source = record.get("path") or f"image {index}"
            raise ImageDataError(f"{source} cannot be decoded ({error}). Remove or replace the file.") from None
        tensor = torch.from_numpy(pixels.copy()).view(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1)
        # The saved image processor's resize: torchvision, bilinear, antialiased, on uint8.
        images[index] = tvF.resize(tensor, [image_size, image_size], interpolation=tvF.InterpolationMode.BILINEAR,
                                   antialias=True)
    labels = torch.as_tensor(np.asarray(split["label"]), dtype=torch.int64)
    return DeviceSplit(images, labels, split.features["label"].num_classes, is_multilabel=False)


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
