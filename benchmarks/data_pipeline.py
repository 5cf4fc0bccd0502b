"""Images per second of the training data pipeline: this project's on-device batch pipeline against a conventional
torch DataLoader with per-sample torchvision transforms, same augmentations, same batch size, in one run.

    .venv/bin/python benchmarks/data_pipeline.py                      # bloodmnist 28 px -> 72 px, seed policy, 128
    .venv/bin/python benchmarks/data_pipeline.py --quick              # smoke test (10 batches; synthetic if no data)
    .venv/bin/python benchmarks/data_pipeline.py --augment strong --workers 0 2

Ours: `DeviceSplit` (the split as one uint8 tensor) + `training_loader` + `BatchTransform` (one fused affine warp per
batch). Conventional: the uint8 arrays as a map-style Dataset that makes a PIL image per sample (as `medmnist`'s
own Dataset does) and applies torchvision.transforms.v2 per sample, in a DataLoader with N worker processes.
Only the data pipeline is timed (no model); the first batches (worker start-up) are excluded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import (  # noqa: E402
    AugmentationConfig,
    BatchTransform,
    DeviceSplit,
    MedMNISTDataError,
    channel_mean_std,
    sample_keys,
    training_loader,
    load_medmnist,
    mix_batch,
)

SHARED_DATA_DIR = ROOT.parent / "shared" / "data" / "medmnist"
WARMUP_BATCHES = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flag", default="bloodmnist")
    parser.add_argument("--size", type=int, default=28, help="source image size (file)")
    parser.add_argument("--data-dir", default=None,
                        help=f"folder with the npz files (default: {SHARED_DATA_DIR} if present, "
                             "else $MEDMNIST_DATA_DIR, else ~/.medmnist)")
    parser.add_argument("--cache-dir", default=None, help="Arrow cache (default: $HF_DATASETS_CACHE/medmnist)")
    parser.add_argument("--image-size", type=int, default=72, help="model input size")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment", default="seed", choices=["none", "seed", "strong"])
    parser.add_argument("--num-batches", type=int, default=None, help="timed batches (default: one training epoch)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts to try for the conventional pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per pipeline, interleaved; best and median reported (this machine is shared)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--synthetic", action="store_true", help="use a synthetic file (no real data needed)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 batches, synthetic data if none found")
    return parser.parse_args(argv)


def load_split(args):
    data_dir = args.data_dir or (str(SHARED_DATA_DIR) if SHARED_DATA_DIR.is_dir() else None)
    if not args.synthetic:
        try:
            start = time.perf_counter()
            dataset = load_medmnist(args.flag, args.size, data_dir=data_dir, cache_dir=args.cache_dir)
            return dataset, time.perf_counter() - start, "official file"
        except MedMNISTDataError as error:
            if not args.quick:
                raise
            print(f"[quick] real data unavailable ({str(error).splitlines()[0]}); using a synthetic file")
    import tempfile

    from data.synthetic import synthetic_medmnist

    directory = tempfile.mkdtemp(prefix="medmnist-bench-")
    source = synthetic_medmnist(directory, args.flag, args.size, n_train=2048, n_val=8, n_test=8)
    start = time.perf_counter()
    dataset = source.load(cache_dir=Path(directory) / "cache")
    return dataset, time.perf_counter() - start, "synthetic file"


# --- the conventional pipeline --------------------------------------------------------------------------------


class PerSampleDataset(Dataset):
    """uint8 arrays -> PIL image per sample -> per-sample torchvision transform (medmnist's Dataset, in effect)."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images_nhwc, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        image = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(image), self.labels[index]


def per_sample_transform(config: AugmentationConfig, image_size: int, mean, std):
    """torchvision.transforms.v2 equivalent of a preset (flip / rotation / zoom / crop / RandAugment / erasing)."""
    from torchvision.transforms import v2

    bilinear = v2.InterpolationMode.BILINEAR
    steps = []
    if config.crop_scale is not None:
        steps.append(v2.RandomResizedCrop(image_size, scale=config.crop_scale, ratio=config.crop_ratio,
                                          interpolation=bilinear, antialias=True))
    else:
        steps.append(v2.Resize((image_size, image_size), interpolation=bilinear, antialias=True))
    if config.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if config.vertical_flip:
        steps.append(v2.RandomVerticalFlip())
    if config.rotation_degrees or config.zoom or config.translate:
        steps.append(v2.RandomAffine(
            degrees=config.rotation_degrees,
            translate=(config.translate, config.translate) if config.translate else None,
            scale=(1 - config.zoom, 1 + config.zoom) if config.zoom else None,
            interpolation=bilinear,
        ))
    if config.randaugment is not None:
        steps.append(v2.RandAugment(num_ops=config.randaugment[0], magnitude=config.randaugment[1]))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if config.random_erasing:
        steps.append(v2.RandomErasing(p=config.random_erasing))
    return v2.Compose(steps)


def conventional_loader(split: DeviceSplit, config, image_size, mean, std, batch_size, workers, seed):
    images = split.images.cpu().permute(0, 2, 3, 1).numpy()
    dataset = PerSampleDataset(images, split.labels.cpu().numpy(), per_sample_transform(config, image_size, mean, std))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


# --- timing ---------------------------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(batches, num_batches: int, device) -> tuple[int, float]:
    """(images, seconds) for `num_batches` batches after `WARMUP_BATCHES` untimed ones; cycles epochs as needed."""
    iterator, images, start = iter(batches()), 0, None
    for step in range(WARMUP_BATCHES + num_batches):
        if step == WARMUP_BATCHES:
            _sync(device)
            start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(batches())
            batch = next(iterator)
        if step >= WARMUP_BATCHES:
            images += len(batch)
    _sync(device)
    return images, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dataset, load_seconds, source = load_split(args)
    except MedMNISTDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    split = DeviceSplit.from_dataset(dataset["train"], device)
    to_device_seconds = time.perf_counter() - start
    mean, std = channel_mean_std(split.images)
    config = AugmentationConfig.preset(args.augment)
    num_batches = 10 if args.quick else (args.num_batches or math.ceil(len(split) / args.batch_size))

    print(f"{args.flag} {args.size} px ({source}, train split: {len(split)} images) -> {args.image_size} px, "
          f"augment={args.augment}, batch {args.batch_size}, {num_batches} timed batches, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"load_medmnist: {load_seconds:.3f} s; DeviceSplit.from_dataset: {to_device_seconds * 1000:.1f} ms")

    transform = BatchTransform(config, args.image_size, mean, std).to(device)
    torch.manual_seed(args.seed)

    def ours():
        loader = training_loader(len(split), args.batch_size, seed=args.seed)
        for samples in loader:  # train.py's keyed draws, epoch 0
            images, labels = split.batch(samples["indices"])
            pixel_values = transform(images, train=True, sample_keys=sample_keys(args.seed, 0, samples["positions"]))
            if config.mixes:
                pixel_values, labels = mix_batch(pixel_values, labels, split.num_labels, config)
            yield pixel_values

    pipelines = [("on-device batch (ours)", "-", ours)]
    for workers in args.workers:
        loader = conventional_loader(split, config, args.image_size, mean, std, args.batch_size, workers, args.seed)
        mixer = None
        if config.mixes:
            from torchvision.transforms import v2

            mixer = v2.RandomChoice([v2.MixUp(alpha=config.mixup_alpha, num_classes=split.num_labels),
                                     v2.CutMix(alpha=config.cutmix_alpha, num_classes=split.num_labels)])

        def conventional(loader=loader, mixer=mixer):
            for pixel_values, labels in loader:
                if mixer is not None and torch.rand(()) < config.mix_prob:
                    pixel_values, labels = mixer(pixel_values, labels)
                yield pixel_values.to(device, non_blocking=True)

        pipelines.append(("per-sample DataLoader", str(workers), conventional))

    rates = {index: [] for index in range(len(pipelines))}
    repeats = 1 if args.quick else max(1, args.repeats)
    for _ in range(repeats):  # interleaved, so a burst of load elsewhere hits every pipeline alike
        for index, (_, _, batches) in enumerate(pipelines):
            images, seconds = time_batches(batches, num_batches, device)
            rates[index].append(images / seconds)

    print(f"\n{'pipeline':<26}{'workers':>8}{'batches/run':>12}{'runs':>6}{'best img/s':>12}{'median img/s':>14}")
    summary = []
    for index, (name, workers, _) in enumerate(pipelines):
        best, median = max(rates[index]), float(np.median(rates[index]))
        summary.append((workers, best, median))
        print(f"{name:<26}{workers:>8}{num_batches:>12}{len(rates[index]):>6}{best:>12.0f}{median:>14.0f}")
    if len(summary) > 1:
        ours_best, ours_median = summary[0][1], summary[0][2]
        best_conventional = max(summary[1:], key=lambda row: row[1])
        print(f"\nratio ours / best conventional ({best_conventional[0]} workers): "
              f"{ours_best / best_conventional[1]:.1f}x (best runs), "
              f"{ours_median / best_conventional[2]:.1f}x (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
