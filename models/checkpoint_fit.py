"""Whether a trained checkpoint fits a MedMNIST data set: its channels, labels, task and input geometry.

Shared by `evaluate.py` (the model under evaluation), `train.py` (a distillation teacher) and
`experiments/flip_averaging.py`: `load_for_inference` is the one way they load a trained model. Checkpoints of
transformers' own model types (a fine-tuned `ViTForImageClassification`, ...) load too: their code is transformers'.
"""

from dataclasses import dataclass
from pathlib import Path

from transformers import (AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedConfig,
                          PreTrainedModel)


from .configuration_cnn import MedCNNConfig
from .integrity import has_manifest, verify_manifest
from .configuration_vit import MedViTConfig

MODEL_TYPES = (MedCNNConfig.model_type, MedViTConfig.model_type)  # registered with the Auto classes by `models`


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded, or does not fit the data set; the message says why."""


def load_checkpoint_description(name_or_path: str, revision: str | None, trust_remote_code: bool = False):
    """(config, image processor) of a checkpoint: everything the fit check needs, without loading the weights.

    This project's model types load with the installed code, never with the copy a checkpoint ships; any other
    model type whose code comes with the checkpoint is refused unless `trust_remote_code` (that code would run)."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError) as error:  # not found, offline without a cached copy, no processor saved, ...
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise CheckpointError(
                f"The checkpoint {name_or_path!r} is not one of this project's model types ({', '.join(MODEL_TYPES)}) "
                "and its code comes with it: loading it would run that code. Pass --trust_remote_code only if you "
                "trust where it came from.") from None
        raise CheckpointError(f"Cannot load the checkpoint {name_or_path!r}: {error}") from error
    return config, processor


def processor_geometry(processor) -> tuple[int | None, int | None, list[float], list[float]]:
    """(height, width, mean, std) the image processor produces; height/width None if it does not resize."""
    size = processor.size if getattr(processor, "do_resize", True) else {}
    mean, std = processor.image_mean, processor.image_std
    as_list = (lambda v: [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v])
    return size.get("height"), size.get("width"), as_list(mean), as_list(std)


def _is_default_label_name(index: int, name: str) -> bool:
    return name == f"LABEL_{index}"  # what transformers fills in when no names were given


def check_checkpoint_fits(config, processor, info, name: str = "The checkpoint") -> None:
    """Raise `CheckpointError` listing every way the checkpoint does not fit the data set `info` describes."""
    problems = []
    channels = getattr(config, "num_channels", None)
    if channels != info.num_channels:
        problems.append(f"it takes {channels}-channel images; {info.flag} images have {info.num_channels} channel(s) "
                        f"(--num_channels {channels} converts them)")
    if config.num_labels != info.num_labels:
        problems.append(f"it predicts {config.num_labels} labels; {info.flag} has {info.num_labels} "
                        f"({', '.join(info.label_names)})")
    else:
        names = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        if not all(_is_default_label_name(i, n) for i, n in enumerate(names)) and names != info.label_names:
            problems.append(f"its labels are {names}; {info.flag}'s are {info.label_names}")
    expected_problem_type = info.problem_type
    if config.problem_type not in (None, expected_problem_type):
        problems.append(f"it was trained for {config.problem_type}; {info.flag} ({info.task}) needs "
                        f"{expected_problem_type}")
    # This project's models take exactly config.image_size; for other model types (a transformers ConvNeXt, ...) the
    # config's image_size need not bind the input, and the processor says what the model was trained on.
    input_size = getattr(config, "image_size", None) if config.model_type in MODEL_TYPES else None
    height, width, mean, std = processor_geometry(processor)
    if height is None or width is None:
        if input_size is not None and input_size != info.size:
            problems.append(f"its image processor does not resize and the model takes {input_size} px inputs; "
                            f"the {info.flag} file has {info.size} px images (pass --image_size {input_size})")
    elif input_size is not None and (height, width) != (input_size, input_size):
        problems.append(f"its image processor resizes to {height}×{width} px but the model takes {input_size}×"
                        f"{input_size} px inputs (an inconsistent checkpoint)")
    if not len(mean) == len(std) == info.num_channels:
        problems.append(f"its image processor normalises {len(mean)} channel(s); {info.flag} images have "
                        f"{info.num_channels}")
    if problems:
        raise CheckpointError(
            f"{name} does not fit {info.flag} ({info.size} px, {info.task}, {info.num_channels} channel(s), "
            f"{info.num_labels} labels):\n  - " + "\n  - ".join(problems)
            + f"\nEvaluate it on the data set it was trained on, or train a model for {info.flag} "
            f"(train.py --dataset {info.flag})."
        )


@dataclass
class InferenceCheckpoint:
    """A trained model loaded for a data set it fits, and the input its image processor prescribes.

    Args:
        config: the checkpoint's config.
        model: the model, on the CPU, in eval mode.
        image_size: the side, in pixels, of the square inputs it takes (the processor's resize, else the file's size).
        mean, std: the per-channel normalisation `(x - mean) / std` of [0, 1] pixels it was trained with.
    """

    config: PreTrainedConfig
    model: PreTrainedModel
    image_size: int
    mean: list[float]
    std: list[float]


def load_for_inference(name_or_path: str, info, revision: str | None = None, name: str | None = None,
                       trust_remote_code: bool = False) -> InferenceCheckpoint:
    """Check that the checkpoint fits the data set `info` describes (`CheckpointError` lists every way it does not),
    then load its weights. `name` is how error messages call it (default: "The checkpoint '<name_or_path>'");
    `trust_remote_code`: see `load_checkpoint_description`."""
    local = Path(name_or_path)
    if local.is_dir() and has_manifest(local):  # saved by this project: every file as it was written
        try:
            verify_manifest(local, name or f"The checkpoint {name_or_path!r}")
        except ValueError as error:
            raise CheckpointError(f"{error} Retrain, or restore the folder from a copy.") from None
    config, processor = load_checkpoint_description(name_or_path, revision, trust_remote_code)
    check_checkpoint_fits(config, processor, info, name=name or f"The checkpoint {name_or_path!r}")
    model = AutoModelForImageClassification.from_pretrained(name_or_path, revision=revision,
                                                            trust_remote_code=trust_remote_code)
    height, _, mean, std = processor_geometry(processor)
    return InferenceCheckpoint(config, model.eval(), height or info.size, mean, std)
