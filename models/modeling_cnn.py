"""The baseline CNN: MedMNIST's getting-started network (the seed's CNN) for any channel count, size and labels."""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_cnn import MedCNNConfig
from .input_checks import prepare_pixel_values
from .flip_averaging import average_over_mirror_images, with_mirror_images


def conv_bn_relu(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MedCNNPreTrainedModel(PreTrainedModel):
    config: MedCNNConfig
    config_class = MedCNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)


class MedCNNForImageClassification(MedCNNPreTrainedModel):
    """
    Conv 3×3 ×5 (`config.conv_channels`, BatchNorm + ReLU each; the 5th padded), max-pool 2×2 after the 2nd and 5th,
    then `config.fc_hidden_sizes` fully connected layers with ReLU and a linear classifier to `config.num_labels`.

    Takes `pixel_values` (B, C, H, W) normalised as the saved image processor does, optional `labels` (class indices,
    or a float multi-hot matrix for multi-label flags) and returns an `ImageClassifierOutput`.
    """

    def __init__(self, config: MedCNNConfig):
        super().__init__(config)
        c1, c2, c3, c4, c5 = config.conv_channels
        self.features = nn.Sequential(
            conv_bn_relu(config.num_channels, c1, padding=0),
            conv_bn_relu(c1, c2, padding=0),
            nn.MaxPool2d(kernel_size=2, stride=2),
            conv_bn_relu(c2, c3, padding=0),
            conv_bn_relu(c3, c4, padding=0),
            conv_bn_relu(c4, c5, padding=1),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        widths = [c5 * config.feature_map_size**2, *config.fc_hidden_sizes]
        fc_layers = []
        for in_width, out_width in zip(widths[:-1], widths[1:]):
            fc_layers += [nn.Linear(in_width, out_width), nn.ReLU(inplace=True)]
        self.fc = nn.Sequential(*fc_layers)
        self.classifier = nn.Linear(widths[-1], config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ImageClassifierOutput:
        pixel_values = prepare_pixel_values(pixel_values, self.config)
        mirror = self.config.test_time_horizontal_flip and not self.training
        if mirror:
            pixel_values = with_mirror_images(pixel_values)
        features = self.features(pixel_values).flatten(1)
        logits = self.classifier(self.fc(features))
        if mirror:
            logits = average_over_mirror_images(logits)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


__all__ = ["MedCNNForImageClassification", "MedCNNPreTrainedModel"]
