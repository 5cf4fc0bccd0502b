"""Grayscale <-> RGB for MedMNIST splits (`--num_channels`): e.g. to fine-tune a grayscale checkpoint on a colour
data set. RGB to gray takes the ITU-R 601-2 luma with PIL's "L" arithmetic; gray to RGB repeats the channel."""

from __future__ import annotations

import dataclasses
import logging

import datasets
import torch

from .device_pipeline import DeviceSplit
from .loading import arrays_to_dataset

logger = logging.getLogger(__name__)


def convert_channels(dataset: datasets.DatasetDict, info, num_channels: int | None):
    """`--num_channels`: every split's uint8 images with `num_channels` channels, and the info saying so. RGB to gray
    takes the ITU-R 601-2 luma with PIL's "L" arithmetic (integer weights / 2^16, rounded), gray to RGB repeats it."""
    if num_channels is None or num_channels == info.num_channels:
        return dataset, info
    splits = {}
    for name, split in dataset.items():
        loaded = DeviceSplit.from_dataset(split)
        if num_channels == 1:
            weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)  # PIL's L24 / 2^16
            images = torch.cat([((chunk.to(torch.int32) * weights).sum(1, keepdim=True) + 0x8000) >> 16
                                for chunk in loaded.images.split(1024)]).to(torch.uint8)
        else:
            images = loaded.images.expand(-1, num_channels, -1, -1)
        labels = loaded.labels.view(len(images), -1).numpy()
        splits[name] = arrays_to_dataset(images.permute(0, 2, 3, 1).numpy(), labels, split.features, split.info, name)
    logger.info(f"{info.flag} images converted from {info.num_channels} to {num_channels} channel(s) (--num_channels).")
    return datasets.DatasetDict(splits), dataclasses.replace(info, num_channels=num_channels)
