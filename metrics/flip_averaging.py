"""Test-time flip averaging, an option of the evaluation (`predict(..., flip_averaging=True)`).

Each image and its left-right mirror image are classified in one forward pass over the doubled batch, and the mean
of their two logits is the image's. The model itself knows nothing of it. Checkpoints saved while this was a model
config field (`test_time_horizontal_flip`) still carry the field when it was true: `legacy_flip_averaging` reads it
so that their evaluation averages as the model used to.
"""

import torch

LEGACY_CONFIG_FIELD = "test_time_horizontal_flip"


def with_mirror_images(pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (2B, C, H, W): the batch, then each image mirrored left-right."""
    return torch.cat([pixel_values, pixel_values.flip(-1)])


def average_over_mirror_images(logits: torch.Tensor) -> torch.Tensor:
    """(2B, ...) outputs of a `with_mirror_images` batch -> (B, ...): each image's mean with its mirror image's."""
    original, mirrored = logits.chunk(2)
    return (original + mirrored) / 2


def flip_averaged_logits(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The logits of `model` on each image of `pixel_values`, averaged with those of its mirror image (one forward
    pass over both); the caller sets eval mode and `torch.no_grad()`."""
    return average_over_mirror_images(model(pixel_values=with_mirror_images(pixel_values)).logits)


def legacy_flip_averaging(config) -> bool:
    """Whether a checkpoint's config was saved with the former flip-averaging field set (`test_time_horizontal_flip`
    true): its evaluation then averages over mirror images, as the model's forward used to."""
    return bool(getattr(config, LEGACY_CONFIG_FIELD, False))
