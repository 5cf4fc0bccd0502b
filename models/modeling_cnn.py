"""The baseline CNN: MedMNIST's getting-started network (the seed's CNN) for any channel count, size and labels."""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput
from transformers.utils import can_return_tuple

from .base_model_layout import BaseModelLayoutMixin
from .configuration_cnn import MedCNNConfig
from .cpu_layout import channels_last_on_low_precision_cpu
from .input_checks import prepare_pixel_values


def conv_bn_relu(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MedCNNPreTrainedModel(BaseModelLayoutMixin, PreTrainedModel):
    """Weight initialisation and the transformers capabilities shared by the CNN models."""

    config: MedCNNConfig
    config_class = MedCNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)


class MedCNNModel(MedCNNPreTrainedModel):
    """
    The CNN's convolutional features: conv 3×3 ×5 (`config.conv_channels`, BatchNorm + ReLU each; the 5th padded),
    max-pool 2×2 after the 2nd and the 5th.

    Takes `pixel_values` (B, C, H, W), cast to the weights' dtype, and returns a
    `BaseModelOutputWithPoolingAndNoAttention`: `last_hidden_state` the final feature map (B, C5, s, s) with
    s = `config.feature_map_size`, `pooler_output` the same flattened (B, C5 · s · s), and with
    `output_hidden_states=True` the feature maps after each convolution block (its max-pooling included).

    Args:
        config: the model's configuration.
        initialize: False when a task model builds it as its base model and initialises the whole model itself.
    """

    def __init__(self, config: MedCNNConfig, initialize: bool = True):
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
        self._defer_weight_initialization = not initialize
        self.post_init()
        self._defer_weight_initialization = False

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        pixel_values = prepare_pixel_values(pixel_values.to(self.features[0][0].weight.dtype), self.config)
        hidden_states, all_hidden_states = pixel_values, ()
        modules = list(self.features)
        for index, module in enumerate(modules):
            hidden_states = module(hidden_states)
            if index == 0:
                hidden_states = channels_last_on_low_precision_cpu(hidden_states)
            followed_by_pooling = index + 1 < len(modules) and isinstance(modules[index + 1], nn.MaxPool2d)
            if output_hidden_states and not followed_by_pooling:
                all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_states, pooler_output=hidden_states.flatten(1),
            hidden_states=all_hidden_states if output_hidden_states else None)


class MedCNNForImageClassification(MedCNNPreTrainedModel):
    """
    The CNN classifier: the base model `cnn` ([`MedCNNModel`]), then `config.fc_hidden_sizes` fully connected layers
    with ReLU (`fc`) and a linear classifier to `config.num_labels` (`classifier`) on its flattened features.

    Takes `pixel_values` (B, C, H, W) normalised as the saved image processor does, optional `labels` (class indices,
    or a float multi-hot matrix for multi-label flags) and returns an `ImageClassifierOutput` (a tuple with
    `return_dict=False`).
    """

    def __init__(self, config: MedCNNConfig):
        super().__init__(config)
        self.cnn = MedCNNModel(config, initialize=False)
        widths = [config.conv_channels[-1] * config.feature_map_size**2, *config.fc_hidden_sizes]
        fc_layers = []
        for in_width, out_width in zip(widths[:-1], widths[1:]):
            fc_layers += [nn.Linear(in_width, out_width), nn.ReLU(inplace=True)]
        self.fc = nn.Sequential(*fc_layers)
        self.classifier = nn.Linear(widths[-1], config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        pixel_values = prepare_pixel_values(pixel_values, self.config)
        outputs = self.cnn(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.fc(outputs.pooler_output))
        hidden_states = outputs.hidden_states
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


# Checkpoints saved before the base model existed hold the convolutions at the top level (`features.*`).
register_checkpoint_conversion_mapping("MedCNNForImageClassification", [
    WeightRenaming(r"^features\.", "cnn.features."),
], overwrite=True)


__all__ = ["MedCNNForImageClassification", "MedCNNModel", "MedCNNPreTrainedModel"]
