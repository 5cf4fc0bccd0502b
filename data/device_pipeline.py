"""Whole splits as uint8 tensors on the training device, and index batches that `accelerate` can shard.

The training loop takes a batch of samples from `training_loader` (a plain `DataLoader`, so `accelerator.prepare`
shards it), gathers the images with `DeviceSplit.batch` and augments the whole batch on the device with
`BatchTransform`. No per-sample Python work, no DataLoader workers. Evaluation batches come from `index_loader`.

Process-count invariance: `training_loader` cuts every global batch (per-device batch × processes) into one
contiguous part per process, the last, shorter global batch too (accelerate's own sharding would pad it with
repeated images), and says which share of the global batch each part is, so the mean loss of each part, scaled by
its share and averaged over processes, is the mean loss of the global batch. Each sample carries its place in the
epoch's order, the key of its augmentation (`data.sample_random`). 1 and N processes thus train on the same global
batches of identically augmented images.

Epochs and resumption (accelerate 1.15): the shuffle order is a function of (seed, epoch) only. The prepared loader
calls `set_epoch(loader.iteration)` at the start of each pass and counts passes, but a loop that stops early does not
advance it, so call `loader.set_epoch(epoch)` yourself at the start of every epoch. To resume in the middle of
epoch `e` after `accelerator.load_state`, call `loader.set_epoch(e)` then iterate
`accelerator.skip_first_batches(loader, k)`: it yields exactly the batches the original run had not seen
(`tests/test_data.py::test_sharding_two_processes` checks it on two processes).
"""

from __future__ import annotations

import dataclasses
import math

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclasses.dataclass
class DeviceSplit:
    """One split held as tensors on one device.

    Attributes:
        images: uint8 (N, C, H, W).
        labels: int64 (N,) for single-label data, float32 (N, L) of 0/1 for multi-label data.
        num_labels: number of classes / binary labels.
        is_multilabel: which of the two label layouts `labels` has.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_labels: int
    is_multilabel: bool

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    @classmethod
    def from_dataset(cls, split: datasets.Dataset, device: torch.device | str = "cpu") -> DeviceSplit:
        """Convert a split of `load_medmnist` (or any dataset with `image` + `label` columns) to device tensors.

        Splits written by `load_medmnist` are decoded in one vectorised step (BloodMNIST train, 12k images: a few
        milliseconds); other image encodings (PNG, ...) fall back to decoding each image with PIL.
        """
        table = split.with_format("arrow")[:]  # applies any select/shuffle indices mapping
        images = _images_from_arrow(table.column("image"))
        label_feature = split.features["label"]
        label_column = table.column("label").combine_chunks()
        if isinstance(label_feature, datasets.ClassLabel):
            labels = torch.from_numpy(label_column.to_numpy(zero_copy_only=False).astype(np.int64))
            num_labels, is_multilabel = label_feature.num_classes, False
        elif isinstance(label_feature, (datasets.List, datasets.Sequence)) and label_feature.length > 0:
            num_labels, is_multilabel = label_feature.length, True
            flat = label_column.flatten().to_numpy(zero_copy_only=False)
            labels = torch.from_numpy(flat.reshape(len(table), num_labels).astype(np.float32))
        else:
            raise ValueError(f"Unsupported label feature {label_feature!r}: expected a ClassLabel or a fixed-length "
                             "list of 0/1 values.")
        device = torch.device(device)
        return cls(images.to(device), labels.to(device), num_labels, is_multilabel)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> DeviceSplit:
        """This split on `device` (itself if it is there already)."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) of the given indices, on this split's device."""
        indices = torch.as_tensor(indices, dtype=torch.long).to(self.images.device, non_blocking=True)
        return self.images.index_select(0, indices), self.labels.index_select(0, indices)


def _images_from_arrow(column) -> torch.Tensor:
    """uint8 (N, C, H, W) from an Arrow `datasets.Image` column."""
    structs = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    data = structs.field("bytes")
    array = _decode_uniform_pnm(data) if len(data) else None
    if array is None:
        array = _decode_with_pil(structs)
    # np.array copies: the Arrow buffer is a read-only memory map, and the tensor must own writable memory.
    return torch.from_numpy(np.array(array.transpose(0, 3, 1, 2), order="C"))


def _decode_uniform_pnm(data) -> np.ndarray | None:
    """Fast path: all records are binary PGM/PPM files with the same header -> one reshape. None if not so."""
    if data.null_count:
        return None
    offsets = np.frombuffer(data.buffers()[1], np.int32)[data.offset: data.offset + len(data) + 1]
    lengths = np.diff(offsets)
    if not (lengths == lengths[0]).all():
        return None
    values = np.frombuffer(data.buffers()[2], np.uint8)[offsets[0]: offsets[-1]].reshape(len(data), lengths[0])
    header = _parse_pnm_header(values[0].tobytes())
    if header is None:
        return None
    header_length, height, width, channels = header
    if header_length + height * width * channels != lengths[0]:
        return None
    if not (values[:, :header_length] == values[0, :header_length]).all():
        return None
    return values[:, header_length:].reshape(len(data), height, width, channels)


def _parse_pnm_header(record: bytes) -> tuple[int, int, int, int] | None:
    """(header length, height, width, channels) of the exact header `encode_pnm` writes, else None."""
    parts = record[:32].split(b"\n", 3)
    if len(parts) < 4 or parts[0] not in (b"P5", b"P6") or parts[2] != b"255":
        return None
    try:
        width, height = (int(v) for v in parts[1].split(b" "))
    except ValueError:
        return None
    return len(parts[0]) + len(parts[1]) + len(parts[2]) + 3, height, width, 1 if parts[0] == b"P5" else 3


def _decode_with_pil(structs) -> np.ndarray:
    """Slow path: decode every image (any format PIL reads), as `datasets.Image` would."""
    feature = datasets.Image()
    arrays = []
    for value in structs.to_pylist():
        image = feature.decode_example(value)
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        arrays.append(np.asarray(image))
    stacked = np.stack(arrays)
    return stacked[..., None] if stacked.ndim == 3 else stacked


def channel_mean_std(images_uint8) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation in [0, 1] units of uint8 (N, C, H, W) images.

    Exact integer sums, so the result does not depend on the device or the chunking.
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.int64)
    squares = torch.zeros(images.shape[1], dtype=torch.int64)
    rows = max(1, (1 << 24) // max(1, images[0].numel()))  # ~128 MB of int64 per chunk, whatever the image size
    for chunk in images.split(rows):
        chunk = chunk.to(torch.int64)
        total += chunk.sum(dim=(0, 2, 3)).cpu()
        squares += (chunk * chunk).sum(dim=(0, 2, 3)).cpu()
    total, squares = total.double(), squares.double()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return (mean / 255).tolist(), (std / 255).tolist()


def epoch_order(num_samples: int, seed: int, epoch: int, repeats: int = 1) -> torch.Tensor:
    """The epoch's permutation of 0..N-1, a function of (seed, epoch) only.

    With `repeats` r > 1 (repeated augmentation, Hoffer et al. 2020, as in DeiT): the first ceil(N / r) images of
    the permutation, each r times in a row, cut to N; consecutive copies share a batch and are augmented apart, and
    the epoch keeps its N samples.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    # SeedSequence mixes (seed, epoch) so that e.g. (0, 1) and (1, 0) give unrelated orders.
    mixed = int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0])
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(mixed))
    if repeats > 1:
        order = order[: math.ceil(num_samples / repeats)].repeat_interleave(repeats)[:num_samples]
    return order


class IndexDataset(Dataset):
    """The integers 0..N-1: evaluation batches are batches of indices."""

    def __init__(self, num_samples: int):
        self.num_samples = int(num_samples)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: list[int]) -> list[int]:
        return list(indices)


def index_loader(num_samples: int, batch_size: int) -> DataLoader:
    """A `DataLoader` of int64 index tensors over range(num_samples) in order, for evaluation: pass it through
    `accelerator.prepare`; `accelerator.gather_for_metrics` then drops the duplicates accelerate pads the last round
    with, so every sample counts exactly once."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    return DataLoader(IndexDataset(num_samples), batch_size=batch_size, shuffle=False, num_workers=0)


class IndexLoader(DataLoader):
    """A plain `DataLoader` plus `set_epoch`, so an unprepared loader (single process, no accelerate) can be
    driven like a prepared one. `accelerator.prepare` rebuilds it as its own `DataLoaderShard`."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class EpochSamples(Dataset):
    """The samples of a training epoch: place p in the epoch's order -> image index `epoch_order(...)[p]`.

    Batches are dicts: `indices` (int64 image indices), `positions` (int64 places in the epoch, the keys of the
    augmentation draws) and `share` (float: processes × this part's size / the global batch's size; 1.0 for every
    full global batch).
    """

    def __init__(self, num_samples: int, seed: int, global_batch_size: int, num_processes: int, repeats: int = 1):
        self.num_samples, self.seed, self.repeats = int(num_samples), int(seed), int(repeats)
        self.global_batch_size, self.num_processes = int(global_batch_size), int(num_processes)
        self.epoch = 0
        self.order = epoch_order(self.num_samples, self.seed, 0, self.repeats)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.order = epoch_order(self.num_samples, self.seed, self.epoch, self.repeats)

    def __getitem__(self, position: int) -> dict:
        return self.__getitems__([position])

    def __getitems__(self, positions: list[int]) -> dict:
        start = positions[0] - positions[0] % self.global_batch_size
        global_size = min(self.global_batch_size, self.num_samples - start)
        places = torch.tensor(positions, dtype=torch.int64)
        return {"indices": self.order[places], "positions": places,
                "share": self.num_processes * len(positions) / global_size}


class GlobalBatchSampler(Sampler[list[int]]):
    """Places 0..N-1 in global batches, each cut into `num_processes` contiguous parts (sizes differ by at most 1),
    yielded part after part: accelerate's round-robin sharding then hands part r of every global batch to process r.

    A last global batch with fewer samples than processes is dropped when there are several processes (a process
    would get none); `drop_last` drops any incomplete last global batch.
    """

    batch_size = None  # tells accelerate that parts have varying sizes: it must neither pad nor drop them

    def __init__(self, num_samples: int, global_batch_size: int, num_processes: int, drop_last: bool = False):
        self.num_samples, self.global_batch_size = int(num_samples), int(global_batch_size)
        self.num_processes, self.drop_last = int(num_processes), bool(drop_last)
        full, remainder = divmod(self.num_samples, self.global_batch_size)
        keep_remainder = remainder and not self.drop_last and remainder >= self.num_processes
        self.num_global_batches = full + bool(keep_remainder)

    def __len__(self) -> int:
        return self.num_global_batches * self.num_processes

    def __iter__(self):
        for batch in range(self.num_global_batches):
            places = torch.arange(batch * self.global_batch_size,
                                  min((batch + 1) * self.global_batch_size, self.num_samples))
            for part in places.tensor_split(self.num_processes):
                yield part.tolist()


def _as_batch(batch):
    return batch  # `EpochSamples.__getitems__` already returns the whole batch


def training_loader(num_samples: int, batch_size: int, seed: int, num_processes: int = 1, drop_last: bool = False,
                    repeats: int = 1) -> IndexLoader:
    """Training batches of `batch_size` samples per process over range(num_samples), to pass through
    `accelerator.prepare` with `num_processes` = the accelerator's; batches are `EpochSamples` dicts.

    The order is a function of (seed, epoch): call `set_epoch(epoch)` at the start of every epoch; to resume in the
    middle of an epoch, `set_epoch(e)` then `accelerator.skip_first_batches(loader, k)` (see the module docstring).
    """
    if num_samples < 1 or batch_size < 1 or num_processes < 1:
        raise ValueError(f"num_samples, batch_size and num_processes must be positive, got {num_samples}, "
                         f"{batch_size} and {num_processes}")
    global_batch_size = batch_size * num_processes
    dataset = EpochSamples(num_samples, seed, global_batch_size, num_processes, repeats)
    sampler = GlobalBatchSampler(num_samples, global_batch_size, num_processes, drop_last)
    if len(sampler) == 0:
        raise ValueError(f"{num_samples} samples make no complete global batch of {global_batch_size} "
                         f"(drop_last={drop_last}); lower the batch size"
                         f"{' or keep the last, incomplete batch' if drop_last else ''}.")
    return IndexLoader(dataset, batch_sampler=sampler, collate_fn=_as_batch, num_workers=0,
                       generator=torch.Generator().manual_seed(seed))
