"""Configuration of the baseline CNN (MedMNIST's getting-started network, the seed's CNN)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class MedCNNConfig(PreTrainedConfig):
    r"""
    Configuration of [`MedCNNForImageClassification`]: five 3×3 convolutions (`conv_channels`), each followed by
    BatchNorm and ReLU, 2×2 max-pooling after the 2nd and the 5th, then fully connected `fc_hidden_sizes` with
    ReLU and a linear classifier. With the defaults and a 28×28 input this is exactly MedMNIST's getting-started
    network, which the seed notebooks trained.

    Args:
        image_size (`int`, defaults to 28):
            Height and width of the images the model receives (the data pipeline resizes to it). At least 16.
        num_channels (`int`, defaults to 3):
            Number of input channels (1 for grayscale MedMNIST flags, 3 for RGB ones).
        conv_channels (`list[int]`, defaults to `[16, 16, 64, 64, 64]`):
            Output channels of the five convolutions.
        fc_hidden_sizes (`list[int]`, defaults to `[128, 128]`):
            Widths of the hidden fully connected layers before the classifier.
        test_time_horizontal_flip (`bool`, deprecated):
            No longer a field: test-time flip averaging is an option of the evaluation (`metrics.predict`,
            `evaluate.py --flip_averaging`), and the model ignores this attribute. A checkpoint saved with it true
            keeps it (evaluation then averages, as the model used to); false is dropped.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the fully connected layers.
        num_labels (`int`): number of classes (or of binary labels for a multi-label flag); a
            `PreTrainedConfig` argument, as are `id2label`, `label2id` and `problem_type`.
    """

    model_type = "medmnist_cnn"

    image_size: int = 28
    num_channels: int = 3
    conv_channels: list[int] | tuple[int, ...] = (16, 16, 64, 64, 64)
    fc_hidden_sizes: list[int] | tuple[int, ...] = (128, 128)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.conv_channels = list(self.conv_channels)
        self.fc_hidden_sizes = list(self.fc_hidden_sizes)
        # Deprecated (see the docstring): kept only when true, so that evaluation can still read it.
        if not kwargs.get("test_time_horizontal_flip", True):
            kwargs.pop("test_time_horizontal_flip")
        super().__post_init__(**kwargs)

    def validate_geometry(self):
        """Part of `@strict` validation: the two pooling stages need at least a 16-pixel input."""
        if len(self.conv_channels) != 5:
            raise ValueError(f"conv_channels must list 5 widths (one per convolution), got {self.conv_channels}.")
        if self.image_size < 16:
            raise ValueError(
                f"image_size={self.image_size} is too small for the CNN: its four unpadded 3×3 convolutions and two "
                "poolings need image_size >= 16. Resize the data (e.g. image_size=28)."
            )

    @property
    def feature_map_size(self) -> int:
        """Spatial size after the conv stack: (((s - 4) // 2) - 4) // 2 (convs 1-4 are unpadded, conv 5 is padded)."""
        return ((self.image_size - 4) // 2 - 4) // 2


__all__ = ["MedCNNConfig"]
