"""Test-time flip averaging, shared by the model families (`config.test_time_horizontal_flip`).

In eval mode a model with the flag classifies each image and its left-right mirror image in one forward pass over
the doubled batch and returns the mean of the two logits. Training is unchanged: it already sees mirror images
through the augmentation.
"""

import torch


def with_mirror_images(pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (2B, C, H, W): the batch, then each image mirrored left-right."""
    return torch.cat([pixel_values, pixel_values.flip(-1)])


def average_over_mirror_images(logits: torch.Tensor) -> torch.Tensor:
    """(2B, ...) outputs of a `with_mirror_images` batch -> (B, ...): each image's mean with its mirror image's."""
    original, mirrored = logits.chunk(2)
    return (original + mirrored) / 2
