"""Fine-tuning: a trained checkpoint as the starting point of a training run (`train.py --model_name_or_path`).

    start = read_starting_checkpoint("runs/<run>/best")                   # config, input geometry, weights' SHA-256
    model = load_starting_model(start, info, ignore_mismatched_sizes=True)  # labels, problem type from the data

The checkpoint is one of this project's `save_pretrained` folders (its manifest is verified first) or any
`AutoModelForImageClassification` checkpoint of transformers (ViT, DeiT, ConvNeXt, ...), a folder or a Hub id. The
input size and normalisation come from its image processor (`processor_inputs`), the labels and the problem type from
the data set; a checkpoint whose input channels differ from the data's is refused with what to pass instead.

The fine-tuned model is saved with this project's image processor (`models.build_image_processor`) for the same side,
mean and std. transformers' `pipeline` turns PIL images into RGB: this project's 1-channel models take them (they
convert to gray), a 1-channel model of transformers takes arrays with one channel, (H, W, 1) or (1, H, W).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel

from . import model_family
from .checkpoint_fit import MODEL_TYPES, CheckpointError, load_checkpoint_description
from .integrity import file_sha256, has_manifest, recorded_sha256, verify_manifest

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"


@dataclasses.dataclass
class StartingCheckpoint:
    """A checkpoint to fine-tune, described without loading its weights.

    Args:
        name_or_path: the folder or Hub id it loads from.
        config: its config (labels and all, as saved).
        image_size: the side of the square inputs its image processor makes; None if it does not resize (the data's
            own size is used).
        mean, std: the per-channel normalisation `(x - mean) / std` of [0, 1] pixels, one value per input channel.
        family: this project's model family (`cnn`, `vit`, `vit_lsa`, `vit_conv_lsa`; `models.model_family`), None
            for another model type.
        weights_sha256: SHA-256 of its `model.safetensors` for a local folder (from the manifest of this project's
            folders, verified), None for a Hub id.
    """

    name_or_path: str
    config: PreTrainedConfig
    image_size: int | None
    mean: list[float]
    std: list[float]
    family: str | None
    weights_sha256: str | None

    @property
    def model_name(self) -> str:
        """How the run names its model: the family, else the checkpoint's `model_type` (e.g. `vit`, `convnext`)."""
        return self.family or self.config.model_type

    @property
    def is_project_model(self) -> bool:
        """Whether its model type is one of this project's (its code comes with the project, not with transformers)."""
        return self.config.model_type in MODEL_TYPES

    @property
    def num_channels(self) -> int:
        """The channels its model takes: the config's `num_channels`, else one per normalisation value."""
        return getattr(self.config, "num_channels", None) or len(self.mean)

    def record(self) -> dict:
        """What run records and model cards say about it."""
        return {"name_or_path": self.name_or_path, "model_type": self.config.model_type, "family": self.family,
                "weights_sha256": self.weights_sha256}


def processor_inputs(processor, name: str) -> tuple[int | None, list[float], list[float]]:
    """(input side or None, mean, std) the training pipeline takes from a checkpoint's image processor.

    `data.BatchTransform` resizes uint8 images to a square side (bilinear, antialiased) and computes
    `(x - 255·mean) / (255·std)`; for a processor that rescales by 1/255 and normalises with mean / std this is its
    `(x / 255 - mean) / std` (transformers fuses the two steps into the same expression). Taken from the processor:
    `image_mean`, `image_std` (0 and 1 without `do_normalize`) and the side of its output: `crop_size` if it center
    crops, else `size["height"]` or `size["shortest_edge"]`, None if it does not resize. Not reproduced: its
    resampling filter (e.g. bicubic) and any resize beyond the crop before a center crop (DeiT's 256 -> 224,
    ConvNeXt's `crop_pct`): MedMNIST images are square and go straight to the output side. A fine-tuned run saves
    its model with this project's processor for that side, mean and std, so that inference matches its training.

    Raises `CheckpointError` for a processor that does not rescale by 1/255 (its inputs would be other units).
    """
    rescale = getattr(processor, "rescale_factor", None)
    if not getattr(processor, "do_rescale", False) or rescale is None or not math.isclose(rescale, 1 / 255):
        raise CheckpointError(f"{name}: its image processor does not rescale pixels by 1/255 (do_rescale="
                              f"{getattr(processor, 'do_rescale', None)}, rescale_factor={rescale}); the training "
                              "pipeline feeds [0, 1] pixels normalised by mean / std only.")
    if getattr(processor, "do_normalize", False):
        mean, std = processor.image_mean, processor.image_std
    else:
        mean, std = 0.0, 1.0
    as_list = (lambda v: [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v])
    side = None
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        side = processor.crop_size.get("height")
    elif getattr(processor, "do_resize", False) and getattr(processor, "size", None):
        side = processor.size.get("height") or processor.size.get("shortest_edge")
    return side, as_list(mean), as_list(std)


def checkpoint_weights_sha256(name_or_path: str, what: str) -> str | None:
    """SHA-256 of a local checkpoint folder's `model.safetensors`: the manifest's value for this project's folders,
    after verifying every file against it (`CheckpointError` naming a damaged one); the file's own hash for another
    local folder; None for a Hub id (or a folder without that file)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return None
    if has_manifest(folder):
        try:
            verify_manifest(folder, what)
        except ValueError as error:
            raise CheckpointError(f"{error} Retrain, or restore the folder from a copy.") from None
        return recorded_sha256(folder, WEIGHTS_NAME)
    return file_sha256(folder / WEIGHTS_NAME) if (folder / WEIGHTS_NAME).is_file() else None


def read_starting_checkpoint(name_or_path: str, trust_remote_code: bool = False,
                             expected_sha256: str | None = None) -> StartingCheckpoint:
    """Describe the checkpoint `--model_name_or_path` names: verified (this project's folders), its config and the
    input its image processor prescribes. `expected_sha256` (`--model_weights_sha256`): refuse other weights.

    Raises `CheckpointError` (a `ValueError`) saying what is wrong: not found, damaged, code that would have to run
    without `trust_remote_code`, a processor the pipeline cannot reproduce, other weights than expected.
    """
    local = Path(name_or_path).expanduser()
    name_or_path = str(local) if local.is_dir() else name_or_path
    what = f"--model_name_or_path {name_or_path}"
    weights_sha256 = checkpoint_weights_sha256(name_or_path, what)
    if expected_sha256 is not None and weights_sha256 != expected_sha256:
        found = (f"its weights' SHA-256 is {weights_sha256}" if weights_sha256 else
                 f"it is not a local folder with a {WEIGHTS_NAME}, so its weights cannot be checked")
        raise CheckpointError(f"{what}: {found}, not {expected_sha256} (--model_weights_sha256, recorded by the run "
                              "that started from it). Pass the checkpoint that run started from, or leave "
                              "--model_weights_sha256 out to start from this one.")
    config, processor = load_checkpoint_description(name_or_path, None, trust_remote_code)
    image_size, mean, std = processor_inputs(processor, what)
    channels = getattr(config, "num_channels", None) or len(mean)
    if len(mean) == 1 and len(std) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if not len(mean) == len(std) == channels:
        raise CheckpointError(f"{what}: its model takes {channels}-channel images but its image processor normalises "
                              f"{len(mean)} channel(s) (mean {mean}, std {std}): an inconsistent checkpoint.")
    return StartingCheckpoint(name_or_path, config, image_size, mean, std, model_family(config), weights_sha256)


def check_channels(start: StartingCheckpoint, info) -> None:
    """A checkpoint takes the data set's channel count or is refused (ValueError saying how to convert the data)."""
    if start.num_channels != info.num_channels:
        raise CheckpointError(
            f"--model_name_or_path {start.name_or_path} takes {start.num_channels}-channel images; {info.flag} images "
            f"have {info.num_channels} channel(s). Pass --num_channels {start.num_channels} to convert the images "
            f"to {start.num_channels} channel(s) when they are loaded ("
            + ("RGB to gray, ITU-R 601-2 luma" if start.num_channels == 1 else "gray repeated in each channel")
            + f"), or start from a {info.num_channels}-channel checkpoint.")


def config_for_data(start: StartingCheckpoint, info, ignore_mismatched_sizes: bool = False) -> PreTrainedConfig:
    """A copy of the checkpoint's config with the data set's labels (`id2label`, `label2id`, `num_labels`) and
    `problem_type`. Another number of labels needs `ignore_mismatched_sizes` (ValueError naming both counts)."""
    config = copy.deepcopy(start.config)
    if config.num_labels != info.num_labels:
        if not ignore_mismatched_sizes:
            raise CheckpointError(
                f"--model_name_or_path {start.name_or_path} predicts {config.num_labels} labels; {info.flag} has "
                f"{info.num_labels} ({', '.join(info.label_names)}). Pass --ignore_mismatched_sizes to replace its "
                f"classifier with a new, randomly initialised one for the {info.num_labels} labels.")
        logger.info(f"{info.flag} has {info.num_labels} labels, the checkpoint {config.num_labels}: its classifier is "
                    "replaced (--ignore_mismatched_sizes).")
        config.num_labels = info.num_labels
    else:
        names = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        if names != info.label_names and names != [f"LABEL_{i}" for i in range(config.num_labels)]:
            logger.info(f"The checkpoint's labels {names} become {info.flag}'s {info.label_names} (same count: its "
                        "classifier is kept).")
    if config.problem_type not in (None, info.problem_type):
        logger.info(f"The checkpoint was trained for {config.problem_type}; {info.flag} needs {info.problem_type}.")
    config.id2label = dict(enumerate(info.label_names))
    config.label2id = {name: index for index, name in enumerate(info.label_names)}
    config.problem_type = info.problem_type
    return config


def log_loading_info(start: StartingCheckpoint, loading_info: dict) -> None:
    """Name the weights the model did not take from the checkpoint (initialised anew) and those it left unused."""
    new = [f"{key} {tuple(old)} -> {tuple(shape)}" for key, old, shape in sorted(loading_info["mismatched_keys"])]
    new += [f"{key} (not in the checkpoint)" for key in sorted(loading_info["missing_keys"])]
    if new:
        logger.info(f"Re-initialised weights (not from {start.name_or_path}): {', '.join(new)}")
    if loading_info["unexpected_keys"]:
        logger.info(f"Weights of {start.name_or_path} this model does not use: "
                    f"{', '.join(sorted(loading_info['unexpected_keys']))}")


def load_starting_model(start: StartingCheckpoint, info, ignore_mismatched_sizes: bool = False,
                        trust_remote_code: bool = False) -> PreTrainedModel:
    """The checkpoint's model in float32, set up for the data set `info` describes: its labels and problem type, a new
    classifier if the label count differs (`ignore_mismatched_sizes`; the re-initialised weights are logged).

    Raises `CheckpointError` (a `ValueError`) for other input channels or, without `ignore_mismatched_sizes`, another
    number of labels; both before any weight is read.
    """
    check_channels(start, info)
    config = config_for_data(start, info, ignore_mismatched_sizes)
    model, loading_info = AutoModelForImageClassification.from_pretrained(
        start.name_or_path, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, output_loading_info=True,
        trust_remote_code=trust_remote_code, dtype=torch.float32)
    log_loading_info(start, loading_info)
    return model


__all__ = ["StartingCheckpoint", "check_channels", "config_for_data", "load_starting_model", "processor_inputs",
           "read_starting_checkpoint"]
