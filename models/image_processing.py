"""The image processor saved with every model: a standard `ViTImageProcessor`, so no custom code is needed to use it."""

from collections.abc import Sequence

from transformers import ViTImageProcessor
from transformers.image_utils import PILImageResampling


def build_image_processor(image_size: int, image_mean: Sequence[float], image_std: Sequence[float]) -> ViTImageProcessor:
    """Resize (bilinear) to the model's `image_size`, scale to [0, 1], normalise with the training statistics.

    `image_mean` / `image_std` have one entry per channel, in [0, 1] units. The training pipeline's evaluation
    transform (`data` package) applies the same steps to the same images.
    """
    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(m) for m in image_mean],
        image_std=[float(s) for s in image_std],
    )
