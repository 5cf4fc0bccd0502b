"""The project's model families as Hugging Face configs and models, and `build_model`, the one entry point.

Each family has a base model (`MedViTModel`, `MedCNNModel`: features and pooled features) and a classifier on top
of it (`MedViTForImageClassification`, `MedCNNForImageClassification`), as transformers' own vision models do.
Importing this package registers the configs and models with `AutoConfig` / `AutoModel` /
`AutoModelForImageClassification` and marks them for `register_for_auto_class`, so that `save_pretrained` writes the
code and an `auto_map` and anyone can load a saved model with
`AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)` (or its base with `AutoModel`).
The ViT's masked-autoencoder pre-training model, `MedViTForMaskedImageModeling`, is registered with
`AutoModelForMaskedImageModeling`; its saved folders load into the classifier as well (encoder kept, head new).
"""

import dataclasses
from collections.abc import Sequence

from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    PreTrainedConfig,
    PreTrainedModel,
)

from .configuration_cnn import MedCNNConfig
from .configuration_vit import MedViTConfig
from .image_processing import build_image_processor
from .legacy_layout import accept_legacy_state_dicts, rename_legacy_keys
from .modeling_cnn import MedCNNForImageClassification, MedCNNModel
from .modeling_vit import MedViTForImageClassification, MedViTForMaskedImageModeling, MedViTModel

# name -> (config class, model class, the name's default geometry on top of the config class defaults)
MODEL_REGISTRY = {
    "cnn": (MedCNNConfig, MedCNNForImageClassification, {}),
    "vit": (MedViTConfig, MedViTForImageClassification, {}),
    "vit_lsa": (
        MedViTConfig,
        MedViTForImageClassification,
        {"use_shifted_patch_tokenization": True, "use_locality_self_attention": True},
    ),
    # The convolutional tokenizer in place of SPT, with LSA; patch 8 (a power of 2, as the tokenizer needs) makes a
    # 9×9 grid at the seed's 72 px.
    "vit_conv_lsa": (
        MedViTConfig,
        MedViTForImageClassification,
        {"use_convolutional_tokenizer": True, "use_locality_self_attention": True, "patch_size": 8},
    ),
}
MODEL_NAMES = tuple(MODEL_REGISTRY)
BASE_MODELS = {MedCNNConfig: MedCNNModel, MedViTConfig: MedViTModel}  # config class -> base model class

for _config_class, _model_class, _ in MODEL_REGISTRY.values():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, BASE_MODELS[_config_class], exist_ok=True)
    AutoModelForImageClassification.register(_config_class, _model_class, exist_ok=True)
    _config_class.register_for_auto_class()
    BASE_MODELS[_config_class].register_for_auto_class("AutoModel")
    _model_class.register_for_auto_class("AutoModelForImageClassification")
AutoModelForMaskedImageModeling.register(MedViTConfig, MedViTForMaskedImageModeling, exist_ok=True)
MedViTForMaskedImageModeling.register_for_auto_class("AutoModelForMaskedImageModeling")
# Set by train.py's --mae_mask_ratio / --mae_target for the pre-training stage, not model geometry.
TRAINING_ONLY_FIELDS = {"mae_mask_ratio", "mae_norm_pix_loss"}


def config_field_names(name: str) -> list[str]:
    """The geometry and regularisation fields a `name` model accepts as overrides."""
    config_class = MODEL_REGISTRY[name][0]
    inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    excluded = inherited | {"num_channels"} | TRAINING_ONLY_FIELDS
    return sorted({f.name for f in dataclasses.fields(config_class)} - excluded)


def model_family(config) -> str | None:
    """The `build_model` name of a config of this project's model types: the family whose architecture switches
    (`use_shifted_patch_tokenization`, `use_locality_self_attention`, `use_convolutional_tokenizer`) it has. None for
    another model type, or for a ViT whose switches no family has (made with `--config_overrides`)."""
    for name, (config_class, _, defaults) in MODEL_REGISTRY.items():
        if getattr(config, "model_type", None) != config_class.model_type:
            continue
        switches = [field.name for field in dataclasses.fields(config_class) if field.name.startswith("use_")]
        family = {switch: defaults.get(switch, getattr(config_class, switch)) for switch in switches}
        if all(getattr(config, switch, None) == value for switch, value in family.items()):
            return name
    return None


def build_config(
    name: str,
    num_channels: int,
    num_labels: int,
    label_names: Sequence[str] | None = None,
    problem_type: str | None = None,
    **config_overrides,
):
    """The config `build_model` would use; raises `ValueError` for a bad name, override or geometry."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"Unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}.")
    config_class, _, defaults = MODEL_REGISTRY[name]
    allowed = config_field_names(name)
    unknown = sorted(set(config_overrides) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown config override(s) {unknown} for model {name!r}; allowed: {', '.join(allowed)}.")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(f"Got {len(label_names)} label names for num_labels={num_labels}: {list(label_names)}.")
    id2label = {i: str(n) for i, n in enumerate(label_names)} if label_names is not None else None
    kwargs = {**defaults, **config_overrides, "num_channels": num_channels, "num_labels": num_labels}
    if id2label is not None:
        kwargs.update(id2label=id2label, label2id={n: i for i, n in id2label.items()})
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    try:
        return config_class(**kwargs)
    except StrictDataclassError as error:
        # Re-raise as the ValueError callers expect, keeping the validator's explanation.
        raise ValueError(f"Invalid configuration for model {name!r}: {error}") from error


def build_model(
    name: str,
    num_channels: int,
    num_labels: int,
    label_names: Sequence[str] | None = None,
    problem_type: str | None = None,
    **config_overrides,
) -> PreTrainedModel:
    """Build an initialised model.

    Args:
        name: `cnn`, `vit`, `vit_lsa` (the ViT with Shifted Patch Tokenization and Locality Self-Attention) or
            `vit_conv_lsa` (the ViT with a convolutional tokenizer and Locality Self-Attention).
        num_channels: channels of the input images (1 or 3 for MedMNIST).
        num_labels: number of classes, or of binary labels for a multi-label data set.
        label_names: optional names of the labels, stored as `id2label` / `label2id`.
        problem_type: `single_label_classification` or `multi_label_classification` (selects the loss);
            inferred from the labels' dtype when omitted, as transformers does.
        **config_overrides: any config field (`image_size=28, patch_size=4`, `pooling="mean"`, ...).
    """
    config = build_config(name, num_channels, num_labels, label_names, problem_type, **config_overrides)
    return MODEL_REGISTRY[name][1](config)


__all__ = [
    "MODEL_NAMES",
    "accept_legacy_state_dicts",
    "rename_legacy_keys",
    "MedCNNConfig",
    "MedCNNForImageClassification",
    "MedCNNModel",
    "MedViTConfig",
    "MedViTForImageClassification",
    "MedViTForMaskedImageModeling",
    "MedViTModel",
    "build_config",
    "build_image_processor",
    "build_model",
    "model_family",
]
