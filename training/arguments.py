"""train.py's arguments: typed dataclass groups (`HfArgumentParser`), a run given as a YAML / JSON file, and the
recipe's defaults for every training argument left unset.

    python train.py --model vit_lsa --dataset breastmnist
    python train.py my_run.yaml --seed 1            # the file's values, then the flags on top
    python train.py --config runs/<run>/run_config.json

A config file maps argument names to values (`learning_rate: 3.0e-4`, `teacher_model_name_or_path: [a, b]`); it
goes through the same parser as the command line, so its values are checked the same way. A run's own
`run_config.json` is such a file. Each training method adds its own group (`training.methods`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import yaml
from transformers import HfArgumentParser, SchedulerType

import data
import models

from data.arguments import DataSourceArguments, arg, data_name, resolve_data_source, uses_own_images
from metrics.flip_averaging import LEGACY_CONFIG_FIELD, legacy_flip_averaging
from models.fine_tuning import read_starting_checkpoint

from .compilation import COMPILE_MODES, DEFAULT_BACKEND, check_compile_arguments
from .recipes import RECIPE_NAMES, fine_tuning_defaults, recipe_defaults
from .run_records import with_current_names

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_MODEL = "vit_lsa"
SELECTION_METRICS = ("auc", "acc", "loss", "last")
AUGMENTATION_OVERRIDES = ("mixup_alpha", "cutmix_alpha", "random_erasing", "translate", "zoom", "rotation_degrees",
                          "vertical_flip")


@dataclasses.dataclass
class ModelArguments:
    _argument_group_name = "model"
    model: str | None = arg(None, f"Model family to train from scratch (default {DEFAULT_MODEL}). With "
                                  "--model_name_or_path the checkpoint gives the architecture: leave it out, or name "
                                  "the checkpoint's family.", choices=models.MODEL_NAMES)
    model_name_or_path: str | None = arg(
        None, "Start from a trained checkpoint instead: a save_pretrained folder (e.g. runs/<run>/best) or Hub id of "
              "this project's models or of any transformers AutoModelForImageClassification (ViT, DeiT, ConvNeXt, "
              "...). Its image processor gives the input size and normalisation; the data set, the labels.")
    ignore_mismatched_sizes: bool = arg(False, "With --model_name_or_path: when the data set has another number of "
                                               "labels than the checkpoint, give the model a new classifier (the "
                                               "re-initialised weights are logged).")
    model_weights_sha256: str | None = arg(
        None, "SHA-256 of the --model_name_or_path folder's model.safetensors. Filled in for a local folder and "
              "recorded in run_config.json; when given, a checkpoint with other weights is refused (a replayed or "
              "resumed run starts from the same weights).")
    config_overrides: str | None = arg(None, "Model config fields, e.g. 'image_size=28,patch_size=4' (or a mapping in "
                                             "a config file). Applied after the recipe's. Not with "
                                             "--model_name_or_path.")
    trust_remote_code: bool = arg(False, "Allow loading models (a starting checkpoint, teachers) of other model types "
                                         "whose code comes with the checkpoint: that code runs. This project's own "
                                         "types and transformers' never need it.")


@dataclasses.dataclass
class DataArguments(DataSourceArguments):
    _argument_group_name = "data"
    normalization: Literal["train_stats", "half"] | None = arg(
        None, "train_stats: the training split's per-channel mean/std; half: (x - 0.5) / 0.5.")
    augmentation: str | None = arg(None, "Augmentation preset (data.AugmentationConfig): none, shift (random shifts "
                                         "only), seed (flip / rotation / zoom), strong.",
                                   choices=data.AUGMENTATION_PRESETS)
    repeated_augmentation: int | None = arg(
        None, "Repeated augmentation (DeiT; the SPT/LSA paper's recipe): each epoch takes N / R images, each R times "
              "in the same batch with its own augmentation. 1 = off (the recipes' default).")
    mixup_alpha: float | None = arg(None, "Override the preset's mixup alpha (0 = off).")
    cutmix_alpha: float | None = arg(None, "Override the preset's cutmix alpha (0 = off).")
    random_erasing: float | None = arg(None, "Override the preset's random erasing probability.")
    translate: float | None = arg(None, "Override the preset's random shift, as a fraction of the side (0.1: up to "
                                        "±2.8 px at 28 px).")
    zoom: float | None = arg(None, "Override the preset's random zoom: scale by U(1 - z, 1 + z) (seed: 0.3; 0 = off).")
    rotation_degrees: float | None = arg(None, "Override the preset's random rotation: U(-d, d) degrees (seed: 10.8; "
                                               "180 = any angle; 0 = off).")
    vertical_flip: bool | None = arg(None, "Also flip each image upside down with probability 1/2 (no preset does; "
                                           "with --rotation_degrees 180 every orientation is equally likely).",
                                     nargs="?", const=True)
    cross_validation_folds: int = arg(0, "Recipe searches on small data sets: pool train + validation, cut it into "
                                         "this many stratified folds and validate on fold --cross_validation_fold "
                                         "instead of the official validation split. Implies --skip_test. 0 = the "
                                         "official splits.")
    cross_validation_fold: int | None = arg(None, "The held-out fold, 0-based.")
    cross_validation_split_seed: int = arg(0, "Which partition into folds (fixed whatever the --seed). Repeated "
                                              "cross-validation runs a recipe under several.")


@dataclasses.dataclass
class TrainingArguments:
    _argument_group_name = "training (unset values come from the recipe)"
    recipe: str = arg("default", f"Defaults for every unset training argument: {' or '.join(RECIPE_NAMES)} "
                                 "(recipes/<name>.yaml: this project's, or the replaced notebooks'), or a recipe file.")
    num_train_epochs: int | None = arg(None, "Epochs of supervised training.", aliases=["--num_epochs", "--num-epochs"])
    max_train_steps: int | None = arg(None, "Overrides --num_train_epochs when set.")
    per_device_train_batch_size: int | None = arg(None, "Training batch per process.")
    per_device_eval_batch_size: int = arg(512, "Evaluation batch per process.")
    optimizer: Literal["adamw", "adam", "sgd"] | None = arg(None, "Optimizer.")
    momentum: float = arg(0.9, "SGD momentum.")
    learning_rate: float | None = arg(None, "Peak learning rate.")
    weight_decay: float | None = arg(None, "Weight decay (not on biases, norms, position embeddings, CLS token).")
    warmup_epochs: float | None = arg(None, "Linear warm-up length in epochs (fractions allowed).")
    lr_scheduler_type: str | None = arg(None, "Learning-rate schedule after the warm-up: "
                                              f"{', '.join(s.value for s in SchedulerType)}.",
                                        choices=[s.value for s in SchedulerType], metavar="SCHEDULE",
                                        aliases=["--lr_scheduler", "--lr-scheduler"])
    label_smoothing: float | None = arg(None, "Label smoothing of the cross-entropy.")
    max_grad_norm: float = arg(1.0, "Gradient clipping; 0 turns it off.")
    gradient_accumulation_steps: int = arg(1, "Batches per optimizer update.")
    seed: int = arg(42, "Random seed: fixes initialisation, data order and augmentation.")
    selection_metric: str | None = arg(None, "Validation metric that picks `best` ('last' keeps the final epoch, as "
                                             "the seed reported). Default: the recipe's.", choices=SELECTION_METRICS)
    flip_averaging: bool = arg(False, "Test-time flip averaging in validation and test: each image's logits "
                                      "averaged with its left-right mirror image's (evaluate.py --flip_averaging).")
    skip_test: bool = arg(False, "Never touch the test split (hyperparameter searches): all_results.json gets "
                                 "test_metrics null.")
    dataloader_drop_last: bool = arg(False, "Drop each epoch's last, incomplete global training batch (changes the "
                                            "result: fewer updates an epoch). With --torch_compile that batch would "
                                            "otherwise compile its own graph once.")
    torch_compile: bool = arg(False, "Compile the model's training step with torch.compile, in place (saved weights "
                                     "keep their names; validation and test run eagerly). For small models whose GPU "
                                     "step is bound by kernel launches; costs compile time at the start (and at each "
                                     "new batch shape).")
    torch_compile_backend: str | None = arg(None, "With --torch_compile: the torch.compile backend (default "
                                                  f"{DEFAULT_BACKEND}).")
    torch_compile_mode: Literal[COMPILE_MODES] | None = arg(
        None, "With --torch_compile: torch.compile's mode (default: torch's default). reduce-overhead replays each "
              "step as a CUDA graph (GPUs).")


@dataclasses.dataclass
class OutputArguments:
    _argument_group_name = "outputs, tracking, checkpoints and the Hub"
    output_dir: str | None = arg(None, "Default: runs/<dataset>-<model>-<time>. A folder holding another run is "
                                       "refused (see --resume_from_checkpoint, --overwrite_output_dir).")
    overwrite_output_dir: bool = arg(False, "Replace the run an --output_dir holds (what train.py wrote there is "
                                            "removed first).")
    report_to: str = arg("tensorboard", "accelerate tracker(s): tensorboard, all, or none.")
    logging_steps: int = arg(10, "Log the training loss every N updates.")
    checkpointing_steps: str = arg("epoch", "Save the training state every N steps, or 'epoch'.")
    checkpoints_total_limit: int = arg(2, "Newest checkpoints kept (the best is kept too).")
    resume_from_checkpoint: str | None = arg(None, "A checkpoint folder, or 'latest' (under --output_dir).")
    save_validation_predictions: bool = arg(
        False, "Also write each epoch's validation logits and labels to output_dir/validation_predictions/"
               "epoch_XXX.npz (for checkpoint-selection studies: experiments/selection_study.py).")
    push_to_hub: bool = arg(False, "Push best/ with its model card and logs to the Hub during and after training.")
    hub_model_id: str | None = arg(None, "namespace/name of the Hub repository.")
    hub_token: str | None = arg(None, "Hub token (default: HF_TOKEN or the cached login). Never logged.")
    hub_private_repo: bool = arg(False, "Create the Hub repository as private.")


CORE_GROUPS = (ModelArguments, DataArguments, TrainingArguments, OutputArguments)


def parse_config_overrides(text: str) -> dict:
    """`"image_size=28,patch_size=4,head_hidden_sizes=[256, 128],pooling=mean"` -> a dict of typed values."""
    overrides, depth, current = {}, 0, ""
    for char in text + ",":
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            if current.strip():
                key, sep, value = current.partition("=")
                if not sep:
                    raise ValueError(f"--config_overrides: {current.strip()!r} is not key=value.")
                value = value.strip()
                if value.lower() in ("true", "false"):  # JSON's and Python's spellings both
                    value = value.lower()
                try:
                    overrides[key.strip()] = json.loads(value)
                except json.JSONDecodeError:
                    overrides[key.strip()] = value
            current = ""
        else:
            current += char
    return overrides


def build_parser(method_groups=(), description: str | None = None) -> HfArgumentParser:
    parser = HfArgumentParser([*CORE_GROUPS, *method_groups], description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no_vertical_flip", "--no-vertical_flip", dest="vertical_flip", action="store_false",
                        help="Turn a recipe's or config file's --vertical_flip off.")
    parser.add_argument("--config", default=None, help="A YAML or JSON file of argument values (the flags given "
                                                       "beside it win); also accepted as the first argument.")
    return parser


def alias_names(parser) -> dict:
    """Every other name of an argument (e.g. `num_epochs`, as a config file or an older run_config.json may spell
    it) -> the argument's name."""
    return {alias.lstrip("-").replace("-", "_"): field.name for group in parser.dataclass_types
            for field in dataclasses.fields(group) for alias in field.metadata.get("aliases", [])}


def config_file_argv(path: str, parser) -> list[str]:
    """A config file's values as command-line words, so that the parser checks them like typed flags. Keys may be
    any of an argument's names (`num_epochs` or `num_train_epochs`)."""
    try:
        text = Path(path).read_text()
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        if isinstance(values, dict):
            values = with_current_names(values, names=alias_names(parser))
    except (OSError, ValueError, yaml.YAMLError) as error:
        parser.error(f"config file {path}: {error}")
    known = {action.dest for action in parser._actions} - {"help", "config"}
    if not isinstance(values, dict) or set(values) - known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else "not a mapping"
        parser.error(f"config file {path}: unknown arguments {unknown}; it must map argument names (as in --help) to "
                     "values.")
    words = []
    for key, value in values.items():
        if value is None:
            continue
        if key == "config_overrides" and isinstance(value, dict):
            value = ",".join(f"{k}={json.dumps(v)}" for k, v in value.items())
        listed = value if isinstance(value, list) else [value]
        words += [f"--{key}", *(json.dumps(v) if isinstance(v, bool) else str(v) for v in listed)]
    return words


def parse_arguments(argv: list[str] | None = None, method_groups=(), description: str | None = None,
                    check=None) -> SimpleNamespace:
    """The run's arguments as one namespace (every group's fields), with the recipe's defaults filled in and every
    combination checked (exit 2 with a message saying what to change); `check(args)` may raise ValueError too."""
    parser = build_parser(method_groups, description)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        argv = ["--config", *argv]
    # The file's values go first, as words, so that the flags given beside it win (argparse keeps the last).
    config_option = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_option.add_argument("--config")
    config, argv = config_option.parse_known_args(argv)
    if config.config is not None:
        argv = config_file_argv(config.config, parser) + argv
    *groups, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True,
                                                          look_for_args_file=False)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = SimpleNamespace(**{k: v for group in groups for k, v in vars(group).items() if k != "config"})
    try:
        resolve_data_source(args)
        model_name = apply_recipe(args)
        if check is not None:
            check(args)
    except ValueError as error:
        parser.error(str(error))
    check_arguments(args, parser)
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", f"{data_name(args)}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


def apply_recipe(args) -> str:
    """Fill every unset training argument with the recipe's value; the user's config overrides go last. Returns the
    name of the model the run trains (its family, or a starting checkpoint's model type)."""
    if args.model_name_or_path:
        return apply_fine_tuning_recipe(args)
    args.model = args.model or DEFAULT_MODEL
    user_overrides = parse_config_overrides(args.config_overrides or "")
    values = recipe_defaults(args.recipe, args.model, args.image_size, None if uses_own_images(args) else args.dataset,
                             convolutional_tokenizer=user_overrides.get("use_convolutional_tokenizer"))
    for key, value in values.items():
        if key == "config_overrides":
            args.config_overrides = {**value, **user_overrides}
        elif getattr(args, key, None) is None:
            setattr(args, key, value)
    # Flip averaging was once a model config field; as an override it now turns on the evaluation's option.
    if LEGACY_CONFIG_FIELD in args.config_overrides:
        args.flip_averaging = bool(args.config_overrides.pop(LEGACY_CONFIG_FIELD)) or args.flip_averaging
    return args.model


def apply_fine_tuning_recipe(args) -> str:
    """`--model_name_or_path`: check the checkpoint against the model arguments, record its family and weights'
    SHA-256, and fill the unset training arguments with `recipes.fine_tuning_defaults` (no architecture layers: the
    checkpoint has its own). Returns the checkpoint's model name."""
    if args.config_overrides:
        raise ValueError("--config_overrides with --model_name_or_path: the architecture comes from the checkpoint. "
                         "Leave --config_overrides out, or train a new architecture from scratch with --model.")
    if args.normalization is not None:
        raise ValueError("--normalization with --model_name_or_path: the checkpoint's image processor gives the "
                         "normalisation its weights were trained with. Leave --normalization out.")
    start = read_starting_checkpoint(args.model_name_or_path, args.trust_remote_code, args.model_weights_sha256)
    if args.model is not None and args.model != start.family:
        kind = (f"a {start.family!r} model" if start.family else f"a {start.config.model_type!r} model, which is not "
                "one of this project's model families")
        raise ValueError(f"--model {args.model} with --model_name_or_path {args.model_name_or_path}: the checkpoint "
                         f"is {kind}. Leave --model out (the architecture comes from the checkpoint).")
    args.model, args.model_weights_sha256 = start.family, start.weights_sha256
    args.flip_averaging = args.flip_averaging or legacy_flip_averaging(start.config)  # a checkpoint of the old field
    for key, value in fine_tuning_defaults(args.recipe, start.family,
                                           None if uses_own_images(args) else args.dataset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.config_overrides = {}
    return start.model_name


def check_arguments(args, parser) -> None:
    """The combinations the parser's types cannot check."""
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "logging_steps",
                 "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error(f"--max_train_steps must be at least 1, got {args.max_train_steps}.")
    if (args.cross_validation_folds > 0) != (args.cross_validation_fold is not None):
        parser.error("--cross_validation_folds K and --cross_validation_fold I go together (I in 0..K-1), e.g. "
                     "--cross_validation_folds 5 --cross_validation_fold 0.")
    if args.cross_validation_folds:
        if args.cross_validation_folds < 2 or not 0 <= args.cross_validation_fold < args.cross_validation_folds:
            parser.error(f"--cross_validation_folds must be >= 2 and --cross_validation_fold in 0..K-1; got "
                         f"{args.cross_validation_folds} and {args.cross_validation_fold}.")
        args.skip_test = True  # a fold run chooses recipes: the test split stays unseen
    if args.cross_validation_split_seed < 0 or (args.cross_validation_split_seed and not args.cross_validation_folds):
        parser.error(f"--cross_validation_split_seed {args.cross_validation_split_seed}: a partition into folds needs "
                     "--cross_validation_folds K and --cross_validation_fold I, and the seed must be >= 0.")
    if args.repeated_augmentation < 1:
        parser.error(f"--repeated_augmentation must be at least 1 (1 = off), got {args.repeated_augmentation}.")
    for flag in ("ignore_mismatched_sizes", "model_weights_sha256"):
        if getattr(args, flag) and not args.model_name_or_path:
            parser.error(f"--{flag} goes with --model_name_or_path (a checkpoint to start from).")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id namespace/name.")
    if args.checkpointing_steps != "epoch" and (not args.checkpointing_steps.isdigit()
                                                or int(args.checkpointing_steps) < 1):
        parser.error(f"--checkpointing_steps must be a number of steps (>= 1) or 'epoch', got "
                     f"{args.checkpointing_steps!r}.")
    try:
        check_compile_arguments(args)
    except ValueError as error:
        parser.error(str(error))


def augmentation_config(args) -> data.AugmentationConfig:
    """The preset named by --augmentation with every field the command line (or the recipe) set on top of it."""
    augmentation = data.AugmentationConfig.preset(args.augmentation)
    for key in AUGMENTATION_OVERRIDES:
        if getattr(args, key) is not None:
            augmentation = dataclasses.replace(augmentation, **{key: getattr(args, key)})
    return augmentation


def public_config(args) -> dict:
    """The run's resolved arguments without secrets: what goes to run_config.json, TensorBoard and the card."""
    return {k: v for k, v in vars(args).items() if k != "hub_token"}
