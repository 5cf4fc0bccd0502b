"""`load_medmnist`: an official MedMNIST npz file as a `datasets.DatasetDict`, converted to Arrow once and cached.

Images are stored in the `datasets.Image` column as binary PGM/PPM ("P5"/"P6") files: PIL (and so `datasets`)
decodes them like any image file, and, because every record is a fixed header followed by the raw pixels,
`DeviceSplit.from_dataset` can turn a whole split back into one uint8 array with no per-image decoding.

Cache: `<cache_dir>/<file stem>-<md5>-<format version>/` (a `DatasetDict.save_to_disk` folder), where `cache_dir`
defaults to `$HF_DATASETS_CACHE/medmnist` (`~/.cache/huggingface/datasets/medmnist`). The key is the file's MD5,
so a changed file is converted again and the same file in another folder reuses the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from .info import MedMNISTInfo, set_file_record
from .medmnist_files import MedMNISTDataError, check_flag_and_size, locate_npz, repair_hint, verify_npz_checksum

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = "v1"  # bump when the Arrow layout written here changes
SPLITS = {"train": "train", "validation": "val", "test": "test"}  # DatasetDict split -> npz key prefix
_MAX_CHUNK_BYTES = 1 << 30  # Arrow `binary` offsets are int32: keep each chunk well under 2 GiB


def default_cache_dir() -> Path:
    """`$HF_DATASETS_CACHE/medmnist`: where converted Arrow data sets are kept unless `cache_dir` is given."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "medmnist"


def load_medmnist(
    flag: str,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    verify_checksum: bool = True,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> datasets.DatasetDict:
    """Load a 2D MedMNIST data set as a `DatasetDict` with splits `train`, `validation`, `test`.

    Features: `image` (`datasets.Image`, mode L or RGB) and `label`: a `ClassLabel` named after `medmnist.INFO`, or,
    for a multi-label flag (chestmnist), a fixed-length list of 0/1 values, one per label name. Task, channels,
    label names, description and licence: `data.medmnist_info(dataset_dict)`.

    Args:
        flag: a 2D medmnist flag (`bloodmnist`, `breastmnist`, ...).
        size: 28, 64, 128 or 224.
        data_dir: folder holding the npz files; default `$MEDMNIST_DATA_DIR`, then `~/.medmnist`. A file missing
            there comes from the project's bundled copy where there is one (`data/bundled/breastmnist.npz`),
            otherwise it is downloaded.
        verify_checksum: refuse a file whose MD5 differs from `medmnist.INFO` (set False for synthetic files; the
            skipped check is logged as a warning).
        cache_dir: where the Arrow conversion is cached (default `$HF_DATASETS_CACHE/medmnist`).
        download: try to download a missing file through `medmnist`.

    Raises:
        MedMNISTDataError: unknown flag or size, 3D flag, missing / corrupt / truncated file, MD5 mismatch,
            unexpected npz layout. The message says what to do.
    """
    flag, size = check_flag_and_size(flag, size)
    path = locate_npz(flag, size, data_dir, download=download)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    md5 = verify_npz_checksum(path, flag, size, verify_checksum, memo_dir=cache_root)
    info = MedMNISTInfo.from_flag(flag, size, file_path=path.resolve(), md5=md5)
    logger.info("Data: %s (MD5 %s%s)", path, md5, ", as medmnist.INFO records" if md5 == info.expected_md5 else "")

    target = cache_root / f"{path.stem}-{md5}-{CACHE_FORMAT_VERSION}"
    if not (target / "dataset_dict.json").is_file():
        _convert_and_save(path, info, target)
    dataset_dict = datasets.load_from_disk(os.fspath(target))
    for split in dataset_dict.values():  # the cache may have been written from a copy of this file elsewhere
        set_file_record(split.info, info.file_path, md5)
    return dataset_dict


def _convert_and_save(path: Path, info: MedMNISTInfo, target: Path) -> None:
    """Convert the npz file and write it to `target` atomically (safe with several processes loading at once)."""
    logger.info("Converting %s to Arrow in %s (once; later loads read the cache)", path, target)
    features = build_features(info)
    splits = {
        name: arrays_to_dataset(images, labels, features, info.to_dataset_info(features), name)
        for name, (images, labels) in read_npz(path, info).items()
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with _progress_bars_disabled():
            datasets.DatasetDict(splits).save_to_disk(os.fspath(staging))
        try:
            staging.rename(target)
        except OSError:
            if not (target / "dataset_dict.json").is_file():  # not "another process won the race"
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _progress_bars_disabled():
    """Silence `datasets`' progress bars for a sub-second save, restoring the caller's setting."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def build_features(info: MedMNISTInfo) -> datasets.Features:
    """`image` + `label` features for this data set (see `load_medmnist`)."""
    if info.is_multilabel:
        label = datasets.List(datasets.Value("int8"), length=info.num_labels)
    else:
        label = datasets.ClassLabel(names=info.label_names)
    return datasets.Features({"image": datasets.Image(), "label": label})


def read_npz(path: Path, info: MedMNISTInfo) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images N×H×W×C uint8, labels N×L int64)} from an npz file in the official layout.

    A file that is not a readable npz (truncated download, wrong file) raises `MedMNISTDataError`, never a bare
    zipfile / zlib traceback.
    """
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            expected = [f"{prefix}_{kind}" for prefix in SPLITS.values() for kind in ("images", "labels")]
            missing = [key for key in expected if key not in npz]
            if missing:
                raise MedMNISTDataError(
                    f"{path} is not in the official MedMNIST layout: missing arrays {missing} (it has {sorted(npz)})."
                )
            for split, prefix in SPLITS.items():
                arrays[split] = (npz[f"{prefix}_images"], npz[f"{prefix}_labels"])
    except MedMNISTDataError:
        raise
    except Exception as error:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError, OSError, ...
        raise MedMNISTDataError(
            f"{path} is truncated or corrupt and cannot be read as an npz file ({type(error).__name__}: {error}). "
            + repair_hint(path, info.flag, info.size) + "."
        ) from error
    return {split: _check_arrays(path, split, images, labels, info) for split, (images, labels) in arrays.items()}


def _check_arrays(path, split, images: np.ndarray, labels: np.ndarray, info: MedMNISTInfo):
    def fail(problem):
        raise MedMNISTDataError(f"{path} ({split} split) is not in the official MedMNIST layout: {problem}.")

    if images.dtype != np.uint8:
        fail(f"images have dtype {images.dtype}, expected uint8")
    if images.ndim == 3:
        images = images[..., None]
    expected = (info.size, info.size, info.num_channels)
    if images.ndim != 4 or images.shape[1:] != expected:
        fail(f"images have shape {images.shape}, expected N×{info.size}×{info.size}"
             + ("" if info.num_channels == 1 else "×3"))
    width = info.num_labels if info.is_multilabel else 1
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.shape != (len(images), width) or not np.issubdtype(labels.dtype, np.integer):
        fail(f"labels have shape {labels.shape} and dtype {labels.dtype}, expected integers of shape "
             f"({len(images)}, {width})")
    upper = 2 if info.is_multilabel else info.num_labels
    if labels.size and (labels.min() < 0 or labels.max() >= upper):
        fail(f"labels range over [{labels.min()}, {labels.max()}], expected [0, {upper - 1}]")
    return images, labels.astype(np.int64)


def encode_pnm(images: np.ndarray) -> pa.ChunkedArray:
    """N×H×W×C uint8 -> Arrow binary array of PGM (C=1) / PPM (C=3) files, vectorised (no per-image loop)."""
    n, height, width, channels = images.shape
    header = np.frombuffer(f"P{5 if channels == 1 else 6}\n{width} {height}\n255\n".encode(), np.uint8)
    record = len(header) + height * width * channels
    rows_per_chunk = max(1, _MAX_CHUNK_BYTES // record)
    chunks = []
    for start in range(0, max(n, 1), rows_per_chunk):
        block = images[start:start + rows_per_chunk].reshape(-1, height * width * channels)
        records = np.empty((len(block), record), np.uint8)
        records[:, : len(header)] = header
        records[:, len(header):] = block
        offsets = np.arange(len(block) + 1, dtype=np.int32) * record
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(records)]
        chunks.append(pa.Array.from_buffers(pa.binary(), len(block), buffers))
    return pa.chunked_array(chunks, type=pa.binary())


def arrays_to_dataset(
    images: np.ndarray, labels: np.ndarray, features: datasets.Features, info: datasets.DatasetInfo, split: str
) -> datasets.Dataset:
    """One split as an in-memory `Dataset` with the given features and info."""
    image_bytes = encode_pnm(images)
    image_column = pa.chunked_array(
        [pa.StructArray.from_arrays([chunk, pa.nulls(len(chunk), pa.string())], names=["bytes", "path"])
         for chunk in image_bytes.chunks],
        type=features.arrow_schema.field("image").type,
    )
    if isinstance(features["label"], datasets.ClassLabel):
        label_column = pa.array(labels[:, 0], type=pa.int64())
    else:
        label_column = pa.FixedSizeListArray.from_arrays(pa.array(labels.reshape(-1).astype(np.int8)), labels.shape[1])
    table = pa.table({"image": image_column, "label": label_column}).cast(features.arrow_schema)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=info, split=datasets.NamedSplit(split))
