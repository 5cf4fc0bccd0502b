"""The one check every model runs on its input, so a wrong image gives a clear error, not a shape error deep inside."""

import torch

# PIL's "L" conversion (ITU-R 601-2 luma). The weights sum to 1, so converting after the image processor's
# normalisation (one mean and std for every channel of a grayscale model) equals normalising the gray image.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def prepare_pixel_values(pixel_values: torch.Tensor, config) -> torch.Tensor:
    """Check (B, C, H, W) against the config and return it, converting RGB to gray for a grayscale model.

    transformers' `pipeline` loads every image as RGB, so a 1-channel model given 3 channels takes their luma
    (exactly the original values for a grayscale image converted to RGB). Any other mismatch is a `ValueError`.
    """
    expected = (config.num_channels, config.image_size, config.image_size)
    shape = tuple(pixel_values.shape)
    if pixel_values.dim() == 4 and shape[2:] == expected[1:] and shape[1] == 3 and expected[0] == 1:
        weights = pixel_values.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
        return (pixel_values * weights).sum(dim=1, keepdim=True)
    if pixel_values.dim() != 4 or shape[1:] != expected:
        raise ValueError(
            f"pixel_values has shape {shape}, but this model expects (batch, {expected[0]}, {expected[1]}, "
            f"{expected[2]}): {config.num_channels} channel(s) of {config.image_size}×{config.image_size} pixels. "
            f"Resize the images to {config.image_size} px (the saved image processor does this) and use a model "
            "built for this data set's channel count."
        )
    return pixel_values
