#!/usr/bin/env python
"""Train a CNN, ViT or ViT + SPT + LSA on a MedMNIST data set, on one or many processes through accelerate.

    accelerate launch train.py --model vit_lsa --dataset breastmnist
    python train.py --model cnn --dataset bloodmnist --data_dir ../shared/data/medmnist   # one process

Each epoch validates on the validation split (ACC / AUC as MedMNIST defines them); the best model by
`--selection_metric` goes to `output_dir/best`, the latest to `output_dir/last` (both `save_pretrained` folders with
their image processor); at the end `best` is evaluated once on the test split and everything is written to
`output_dir/all_results.json`. Mixed precision comes from accelerate (`accelerate launch --mixed_precision bf16`).
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
import datasets
import transformers
from transformers import SchedulerType, get_scheduler

import data
import metrics
import models
from metrics.plots import confusion_matrix_figure
from training import sam
from training.checkpointing import (MAE_SCHEDULER, is_mae_state, read_best_weights, read_trainer_state,
                                   resolve_checkpoint, save_checkpoint, save_mae_checkpoint)
from training.distillation import (DISTILLATION_TYPES, TeacherEnsemble, check_teacher_held_out_the_same_fold,
                                  distillation_loss, teacher_record)
from training.hardware import cpu_has_fast_bf16, hardware_description
from training.hub import HubPusher, model_card, redact_argv
from training.recipes import RECIPE_NAMES, recipe_defaults
from training.masked_autoencoder import MaskedAutoencoder
from training.relative_localization import RelativeLocalizationHead

logger = get_logger(__name__)

SELECTION_METRICS = ("auc", "acc", "loss", "last")


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


AUGMENTATION_OVERRIDES = ("mixup_alpha", "cutmix_alpha", "random_erasing", "translate", "zoom", "rotation_degrees",
                          "vertical_flip")


def build_augmentation(args) -> data.AugmentationConfig:
    """The preset named by --augmentation with every field the command line (or the recipe) set on top of it."""
    augmentation = data.AugmentationConfig.preset(args.augmentation)
    for key in AUGMENTATION_OVERRIDES:
        if getattr(args, key) is not None:
            augmentation = dataclasses.replace(augmentation, **{key: getattr(args, key)})
    return augmentation


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", choices=models.MODEL_NAMES, default="vit_lsa", help="Model family.")
    add("--dataset", default="breastmnist", help="MedMNIST 2D flag, e.g. breastmnist, bloodmnist.")
    add("--data_dir", default=None, help="Folder with the official npz files (default: $MEDMNIST_DATA_DIR, then "
                                           "medmnist's own root). A file missing there comes from the bundled copy "
                                           "(breastmnist, 28 px) or is downloaded.")
    add("--image_size", type=int, default=28, help="Size of the MedMNIST files to read (28, 64, 128, 224). The model's "
                                                    "input size is its config's image_size.")
    add("--no_verify_checksum", action="store_true", help="Skip the MD5 check of the data file (logged loudly).")
    add("--output_dir", default=None, help="Default: runs/<dataset>-<model>-<time>.")
    add("--recipe", choices=RECIPE_NAMES, default="default",
        help="Defaults for every unset training argument: 'default' (this project's) or 'seed' (the replaced "
             "notebooks').")
    add("--num_epochs", type=int, default=None)
    add("--max_train_steps", type=int, default=None, help="Overrides --num_epochs when set.")
    add("--per_device_train_batch_size", type=int, default=None)
    add("--per_device_eval_batch_size", type=int, default=512)
    add("--optimizer", choices=("adamw", "adam", "sgd"), default=None)
    add("--momentum", type=float, default=0.9, help="SGD momentum.")
    add("--learning_rate", type=float, default=None)
    add("--weight_decay", type=float, default=None)
    add("--warmup_epochs", type=float, default=None, help="Linear warm-up length in epochs (fractions allowed).")
    add("--lr_scheduler", choices=[s.value for s in SchedulerType], default=None)
    add("--label_smoothing", type=float, default=None)
    add("--layer_decay", type=float, default=1.0,
        help="ViTs: layer-wise learning-rate decay (BEiT / MAE fine-tuning): the head keeps the full rate, block i "
             "of L gets decay^(L - i), the embeddings decay^(L + 1), so pre-trained early layers move least; "
             "1 = off. Not applied in MAE pre-training.")
    add("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; 0 turns it off.")
    add("--sam_rho", type=float, default=0.0,
        help="Sharpness-aware minimisation radius (training/sam.py; two forward/backward passes per update); 0 = off.")
    add("--ema_decay", type=float, default=0.0,
        help="Keep an exponential moving average of the weights with this decay per update, and validate, select "
             "and save it instead of the raw weights; 0 = off.")
    add("--relative_localization_weight", type=float, default=0.0,
        help="ViTs: add this weight times the dense relative localization loss (DRLoc, Liu et al. 2021: a training-"
             "only MLP regresses how far apart random pairs of output tokens lie); 0 = off.")
    add("--relative_localization_pairs", type=int, default=32, help="Token pairs per image and step for DRLoc.")
    add("--mae_epochs", type=int, default=None,
        help="ViTs: first pre-train the encoder as a masked autoencoder (MAE, He et al. 2022) on the training images "
             "for this many epochs, without labels (training/masked_autoencoder.py), then train as usual; 0 = off. "
             "Default: the recipe's.")
    add("--mae_mask_ratio", type=float, default=0.75, help="Fraction of patches hidden in MAE pre-training.")
    add("--mae_target", choices=("patch_normalized", "pixels"), default="patch_normalized",
        help="What MAE reconstructs: each hidden patch's pixels normalised by its own mean and std (MAE's default: "
             "texture and edges) or the pixels as the model sees them (brightness too).")
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--seed", type=int, default=42, help="Random seed: fixes initialisation, data order and augmentation.")
    add("--config_overrides", default=None, help="Model config fields, e.g. 'image_size=28,patch_size=4'. Added to "
                                                 "the recipe's.")
    add("--normalization", choices=("train_stats", "half"), default=None,
        help="train_stats: the training split's per-channel mean/std; half: (x - 0.5) / 0.5.")
    add("--augmentation", choices=data.AUGMENTATION_PRESETS, default=None,
        help="Augmentation preset (data.AugmentationConfig): none, shift (random shifts only), seed (flip / rotation "
             "/ zoom), strong.")
    add("--repeated_augmentation", type=int, default=None,
        help="Repeated augmentation (DeiT; the SPT/LSA paper's recipe): each epoch takes N / R images, each R times "
             "in the same batch with its own augmentation. 1 = off (the recipes' default).")
    add("--mixup_alpha", type=float, default=None, help="Override the preset's mixup alpha (0 = off).")
    add("--cutmix_alpha", type=float, default=None, help="Override the preset's cutmix alpha (0 = off).")
    add("--random_erasing", type=float, default=None, help="Override the preset's random erasing probability.")
    add("--translate", type=float, default=None,
        help="Override the preset's random shift, as a fraction of the side (0.1: up to ±2.8 px at 28 px).")
    add("--zoom", type=float, default=None,
        help="Override the preset's random zoom: scale by U(1 - z, 1 + z) (seed: 0.3; 0 = off).")
    add("--rotation_degrees", type=float, default=None,
        help="Override the preset's random rotation: U(-d, d) degrees (seed: 10.8; 180 = any angle; 0 = off).")
    add("--vertical_flip", action=argparse.BooleanOptionalAction, default=None,
        help="Also flip each image upside down with probability 1/2 (no preset does; with --rotation_degrees 180 "
             "every orientation is equally likely, for images without an up, such as cells under a microscope).")
    add("--teacher_model_name_or_path", nargs="+", default=None,
        help="Distil from this trained model (a runs/<run>/best folder or Hub id, trained on the same data set): "
             "the loss becomes (1 - alpha) * task loss + alpha * distillation loss (training/distillation.py). "
             "Several: they teach as one, the mean of their logits (an ensemble, e.g. CNNs of several seeds).")
    add("--distillation_type", choices=DISTILLATION_TYPES, default="hard",
        help="hard: cross-entropy on the teacher's predicted class (DeiT); soft: KL on softmax(logits / T).")
    add("--distillation_alpha", type=float, default=0.5, help="Weight of the distillation loss, in [0, 1].")
    add("--distillation_temperature", type=float, default=1.0, help="T of soft distillation.")
    add("--selection_metric", choices=SELECTION_METRICS, default=None,
        help="Validation metric that picks `best` ('last' keeps the final epoch, as the seed reported). Default: "
             "the recipe's (auc).")
    add("--save_validation_predictions", action="store_true",
        help="Also write each epoch's validation logits and labels to output_dir/validation_predictions/"
             "epoch_XXX.npz (for checkpoint-selection studies: experiments/selection_study.py). Changes nothing else.")
    add("--cross_validation_folds", type=int, default=0,
        help="Recipe searches on small data sets: pool train + validation, cut it into this many stratified folds "
             "(fixed by --cross_validation_split_seed, whatever the --seed) and validate on fold "
             "--cross_validation_fold instead of the official validation split. Implies --skip_test. 0 = the "
             "official splits.")
    add("--cross_validation_fold", type=int, default=None, help="The held-out fold, 0-based.")
    add("--cross_validation_split_seed", type=int, default=0,
        help="Which partition into folds (0: the one every run before this option used). Repeated cross-validation "
             "runs a recipe under several, so that which images happen to share a fold averages out too.")
    add("--skip_test", action="store_true",
        help="Never touch the test split (hyperparameter searches): all_results.json gets test_metrics null.")
    add("--report_to", default="tensorboard", help="accelerate tracker(s): tensorboard, all, or none.")
    add("--logging_steps", type=int, default=10)
    add("--checkpointing_steps", default="epoch", help="Save the training state every N steps, or 'epoch'.")
    add("--checkpoints_total_limit", type=int, default=2, help="Newest checkpoints kept (the best is kept too).")
    add("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' (under --output_dir).")
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None, help="namespace/name of the Hub repository.")
    add("--hub_token", default=None, help="Hub token (default: HF_TOKEN or the cached login). Never logged.")
    add("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)

    user_overrides = parse_config_overrides(args.config_overrides or "")
    recipe_values = recipe_defaults(args.recipe, args.model, args.image_size, args.dataset,
                                   convolutional_tokenizer=user_overrides.get("use_convolutional_tokenizer"))
    for key, value in recipe_values.items():
        if key == "config_overrides":
            args.config_overrides = {**parse_config_overrides(value), **user_overrides}
        elif getattr(args, key) is None:
            setattr(args, key, value)
    if not 0.0 <= args.distillation_alpha <= 1.0 or args.distillation_temperature <= 0:
        parser.error(f"--distillation_alpha must lie in [0, 1] (got {args.distillation_alpha}) and "
                     f"--distillation_temperature must be positive (got {args.distillation_temperature}).")
    if args.sam_rho < 0 or not 0.0 <= args.ema_decay < 1.0:
        parser.error(f"--sam_rho must be >= 0 (got {args.sam_rho}) and --ema_decay in [0, 1) (got {args.ema_decay}).")
    if args.relative_localization_weight < 0 or args.relative_localization_pairs < 1:
        parser.error(f"--relative_localization_weight must be >= 0 (got {args.relative_localization_weight}) and "
                     f"--relative_localization_pairs >= 1 (got {args.relative_localization_pairs}).")
    if args.relative_localization_weight > 0 and args.model == "cnn":
        parser.error("--relative_localization_weight needs a token grid: use it with a ViT (--model vit, vit_lsa or vit_conv_lsa).")
    if not 0.0 < args.layer_decay <= 1.0:
        parser.error(f"--layer_decay must lie in (0, 1] (1 = off), got {args.layer_decay}.")
    if args.layer_decay < 1.0 and args.model == "cnn":
        parser.error("--layer_decay scales the learning rate per transformer block: use it with a ViT (--model vit, "
                     "vit_lsa or vit_conv_lsa), or leave it at 1 for the CNN.")
    if args.mae_epochs < 0:
        parser.error(f"--mae_epochs must be >= 0 (0 = no pre-training), got {args.mae_epochs}.")
    if args.sam_rho > 0 and args.gradient_accumulation_steps > 1:
        parser.error("--sam_rho needs the gradient of each whole batch: use it with --gradient_accumulation_steps 1.")
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
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id namespace/name.")
    if args.checkpointing_steps != "epoch" and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be a number of steps or 'epoch', got {args.checkpointing_steps!r}.")
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", f"{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


def public_config(args) -> dict:
    """The run's resolved arguments without secrets: what goes to TensorBoard, all_results.json and the card."""
    return {k: v for k, v in vars(args).items() if k != "hub_token"}


def tensorboard_hparams(config: dict) -> dict:
    """TensorBoard hparams take only scalars: lists and dicts are written as JSON strings."""
    flat = {}
    for key, value in config.items():
        flat[key] = value if isinstance(value, (bool, int, float, str)) or value is None else json.dumps(value)
    return flat


def training_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, label_smoothing: float):
    """Cross-entropy on class indices or on soft targets (mixup / cutmix); BCE-with-logits for multi-label."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if targets.dim() == 2:  # soft targets from mixing
        num_classes = logits.shape[-1]
        targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def validation_loss(logits, labels, multilabel: bool, per_sample: bool = False):
    """Cross-entropy (BCE for multi-label) of the split; with `per_sample`, each image's own, (N,) NumPy (the
    multi-label BCE averaged over its labels), so that any subset's loss is a mean (experiments/selection_study.py)."""
    logits, labels = torch.from_numpy(logits), torch.from_numpy(labels)
    if per_sample:
        if multilabel:
            return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(dim=-1).numpy()
        return F.cross_entropy(logits, labels.long().view(-1), reduction="none").numpy()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, labels.float()).item()
    return F.cross_entropy(logits, labels.long().view(-1)).item()


def config_record(model) -> dict:
    """The model config as stored in a checkpoint (JSON types), to refuse resuming a checkpoint of another model."""
    return json.loads(model.config.to_json_string(use_diff=True))


def is_better(metric: str, value: float | None, best: float | None) -> bool:
    """Whether `value` beats `best`; an undefined value (AUC of a split missing a class) never does."""
    if metric == "last":
        return True
    if value is None:
        return False
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def layer_index(name: str, num_layers: int) -> int:
    """A ViT parameter's depth for layer-wise decay: 0 for the embeddings, i + 1 for block i, num_layers + 1 for
    the head and anything else (DRLoc's regressor)."""
    if name.startswith("embeddings."):
        return 0
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def build_optimizer(args, *modules, layer_decay: float = 1.0):
    """Parameter groups by weight decay and, with `layer_decay` < 1, by depth (the first module is the ViT); each
    group's "lr" is its share of the peak rate, which the scheduler then scales. Full-rate groups come first, so
    that the logged learning rate is the peak one."""
    # No weight decay on biases, norms and LSA temperatures (1-D), position embeddings and the CLS token.
    no_decay = lambda name, p: p.ndim < 2 or name.endswith(("position_embeddings", "cls_token"))  # noqa: E731
    num_layers = getattr(modules[0].config, "num_hidden_layers", 0) if layer_decay < 1.0 else 0
    grouped = {}
    for index, module in enumerate(modules):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            depth = layer_index(name, num_layers) if index == 0 else num_layers + 1  # decay 1: scale 1
            scale = layer_decay ** (num_layers + 1 - depth)
            grouped.setdefault((scale, no_decay(name, p)), []).append(p)
    groups = [{"params": params, "weight_decay": 0.0 if skip_decay else args.weight_decay,
               "lr": args.learning_rate * scale}
              for (scale, skip_decay), params in sorted(grouped.items(), key=lambda item: (-item[0][0], item[0][1]))]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, lr=args.learning_rate)
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def forked_rng(device: torch.device):
    """A context whose random draws leave the run's generators as they were: for what is only looked at."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def mae_settings(args) -> dict:
    """What a pre-training checkpoint must share with the run that resumes it."""
    return {"epochs": args.mae_epochs, "mask_ratio": args.mae_mask_ratio, "target": args.mae_target}


def pretrain_masked_autoencoder(args, accelerator, model, train_split, train_transform, output_dir: Path,
                                checkpoint_state: dict, wall_clock, resume_from: Path | None = None
                                ) -> tuple[list[float], tuple[torch.Tensor, ...]]:
    """--mae_epochs of self-supervised MAE pre-training on the (augmented) training images, labels unused: trains
    the model's tokenizer, position embeddings and blocks in place; the decoder is thrown away afterwards. Same
    optimizer, peak learning rate and weight decay as the supervised stage; warm-up over 10% of the steps, then
    cosine. Checkpointed after every epoch (`checkpoint_state` plus the epoch, losses and wall-clock); continues
    from `resume_from`, a pre-training checkpoint, if given. Returns the mean reconstruction loss of each epoch and,
    to look at, (originals, hidden patches blanked, hidden patches predicted) of the first 8 training images."""
    autoencoder = MaskedAutoencoder(model, args.mae_mask_ratio,
                                    normalize_target=args.mae_target == "patch_normalized").to(accelerator.device)
    loader = data.index_loader(len(train_split), args.per_device_train_batch_size, shuffle=True, seed=args.seed + 1)
    optimizer = build_optimizer(args, autoencoder)
    autoencoder, optimizer, loader = accelerator.prepare(autoencoder, optimizer, loader)
    steps = args.mae_epochs * len(loader)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=round(0.1 * steps), num_training_steps=steps)
    epoch_losses = []
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        scheduler.load_state_dict(torch.load(resume_from / MAE_SCHEDULER, weights_only=True))
        epoch_losses = read_trainer_state(resume_from)["mae_losses"]
        logger.info(f"Resumed MAE pre-training from {resume_from}: epoch {len(epoch_losses)}", main_process_only=True)
    progress = tqdm(total=steps, initial=len(epoch_losses) * len(loader), desc="MAE pre-training",
                    disable=not accelerator.is_local_main_process)
    autoencoder.train()
    for epoch in range(len(epoch_losses), args.mae_epochs):
        loader.set_epoch(epoch)
        epoch_loss = torch.zeros((), device=accelerator.device)
        for indices in loader:
            images, _ = train_split.batch(indices)
            loss = autoencoder(train_transform(images, train=True))
            accelerator.backward(loss)
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(autoencoder.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            epoch_loss += loss.detach()
            progress.update(1)
        mean_loss = accelerator.reduce(epoch_loss, reduction="mean").item() / len(loader)
        if not math.isfinite(mean_loss):
            raise RuntimeError(f"MAE pre-training loss became {mean_loss} in epoch {epoch + 1}: lower --learning_rate.")
        progress.set_postfix(loss=f"{mean_loss:.4f}")
        epoch_losses.append(mean_loss)
        save_mae_checkpoint(accelerator, output_dir, {**checkpoint_state, "epoch": epoch + 1,
                                                      "mae_losses": epoch_losses, "wall_clock_seconds": wall_clock()},
                            scheduler, args.checkpoints_total_limit)
    progress.close()
    logger.info(f"MAE pre-training: {args.mae_epochs} epochs, final reconstruction loss {epoch_losses[-1]:.4f}",
                main_process_only=True)
    # From a forked RNG and in eval mode (no stochastic depth): looking must not change what the run trains on.
    originals = train_transform(train_split.images[:8], train=False)
    autoencoder.eval()
    with forked_rng(accelerator.device):
        pictures = (originals, *accelerator.unwrap_model(autoencoder).reconstruct(originals))
    # Forget the autoencoder, its optimizer and loader: only the supervised stage's objects are checkpointed.
    accelerator.free_memory()
    return epoch_losses, pictures


def save_model_folder(accelerator, model, processor, folder: Path) -> None:
    """`save_pretrained` model + processor into `folder`, atomically (written beside it, then renamed)."""
    if not accelerator.is_main_process:
        return
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    # One progress bar (ours, main process only); the libraries' own bars for saving and loading stay quiet.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    started = time.time()
    set_seed(args.seed)
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and not cpu_has_fast_bf16():
        logger.warning("bf16 on this CPU (no AMX / AVX-512 BF16) is emulated and much slower than fp32: "
                       "launch with --mixed_precision no.", main_process_only=True)

    # Everything that can be wrong with the arguments is found here, before anything is written.
    try:
        dataset = data.load_medmnist(args.dataset, size=args.image_size, data_dir=args.data_dir,
                                     verify_checksum=not args.no_verify_checksum)
        if args.cross_validation_folds:
            dataset = data.cross_validation_split(dataset, args.cross_validation_folds, args.cross_validation_fold,
                                                  split_seed=args.cross_validation_split_seed)
        info = data.medmnist_info(dataset)
        problem_type = "multi_label_classification" if info.is_multilabel else "single_label_classification"
        model = models.build_model(args.model, info.num_channels, info.num_labels, label_names=info.label_names,
                                   problem_type=problem_type, **args.config_overrides)
        checkpoint, resumed_state, mae_checkpoint, mae_state = None, None, None, None
        if args.resume_from_checkpoint:
            checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
            resumed_state = read_trainer_state(checkpoint)
            if resumed_state["model_config"] != config_record(model) or resumed_state["model"] != args.model:
                raise ValueError(
                    f"--resume_from_checkpoint {checkpoint}: it was made by model {resumed_state['model']!r} with "
                    f"another configuration than this run's {args.model!r} on {args.dataset}; resume with the same "
                    "--model, --dataset and --config_overrides, or start a new --output_dir."
                )
            if is_mae_state(resumed_state):  # interrupted during pre-training: the supervised stage starts fresh
                mae_checkpoint, mae_state, checkpoint, resumed_state = checkpoint, resumed_state, None, None
                saved = mae_state["mae_settings"]
                if saved != mae_settings(args):
                    raise ValueError(
                        f"--resume_from_checkpoint {mae_checkpoint}: MAE pre-training checkpoint made with --mae_epochs "
                        f"{saved['epochs']} --mae_mask_ratio {saved['mask_ratio']} --mae_target {saved['target']}, "
                        f"this run has {args.mae_epochs}, {args.mae_mask_ratio}, {args.mae_target}; resume with the "
                        "same settings, or start a new --output_dir."
                    )
        if args.teacher_model_name_or_path and args.cross_validation_folds:
            for teacher_path in args.teacher_model_name_or_path:
                check_teacher_held_out_the_same_fold(teacher_path, args.dataset, args.cross_validation_folds,
                                                     args.cross_validation_fold, args.cross_validation_split_seed)
        teacher = TeacherEnsemble(args.teacher_model_name_or_path, info) if args.teacher_model_name_or_path else None
        augmentation = build_augmentation(args)
        if args.mae_epochs:
            MaskedAutoencoder.check_config(model.config, args.mae_mask_ratio)
    except ValueError as error:
        accelerator.print(f"train.py: error: {error}")
        sys.exit(2)

    config = public_config(args)
    train_split = data.DeviceSplit.from_dataset(dataset["train"], accelerator.device)
    validation_split = data.DeviceSplit.from_dataset(dataset["validation"], accelerator.device)
    test_split = data.DeviceSplit.from_dataset(dataset["test"], accelerator.device)
    if args.normalization == "train_stats":
        mean, std = data.channel_mean_std(train_split.images)
    else:
        mean, std = [0.5] * info.num_channels, [0.5] * info.num_channels
    image_size = model.config.image_size
    train_transform = data.BatchTransform(augmentation, image_size, mean, std).to(accelerator.device)
    eval_transform = data.BatchTransform.for_evaluation(image_size, mean, std).to(accelerator.device)
    processor = models.build_image_processor(image_size, mean, std)
    if teacher is not None:
        teacher.adapt_inputs(mean, std, accelerator.device)

    seconds_before_resuming = (mae_state or resumed_state or {}).get("wall_clock_seconds", 0.0)

    def wall_clock() -> float:  # the run's training time, across resumes
        return seconds_before_resuming + time.time() - started

    mae_losses, mae_pictures = [], None
    if args.mae_epochs and checkpoint is None:  # a resumed run's checkpoint already holds the pre-trained encoder
        mae_losses, mae_pictures = pretrain_masked_autoencoder(
            args, accelerator, model, train_split, train_transform, output_dir,
            {"model": args.model, "dataset": args.dataset, "model_config": config_record(model),
             "mae_settings": mae_settings(args)},
            wall_clock, resume_from=mae_checkpoint)

    train_loader = data.index_loader(len(train_split), args.per_device_train_batch_size, shuffle=True, seed=args.seed,
                                     repeats=args.repeated_augmentation)
    # Evaluation loaders are prepared once (not per epoch): prepared loaders are part of every saved state.
    train_loader, validation_loader, test_loader = accelerator.prepare(
        train_loader,
        data.index_loader(len(validation_split), args.per_device_eval_batch_size, shuffle=False, seed=args.seed),
        data.index_loader(len(test_split), args.per_device_eval_batch_size, shuffle=False, seed=args.seed),
    )
    updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    # DRLoc's regressor: trained with the model, in every checkpoint, never in the saved model.
    localization = None
    trained_modules = [model]
    if args.relative_localization_weight > 0:
        localization = RelativeLocalizationHead(model.config.hidden_size,
                                                model.config.image_size // model.config.patch_size,
                                                args.relative_localization_pairs).to(accelerator.device)
        trained_modules.append(localization)
    first_grid_token = 1 if getattr(model.config, "pooling", None) == "cls" else 0
    optimizer = build_optimizer(args, *trained_modules, layer_decay=args.layer_decay)
    # accelerate steps a prepared scheduler once per process per update, hence the factor num_processes.
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer,
        num_warmup_steps=round(args.warmup_epochs * updates_per_epoch) * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if localization is not None:
        localization = accelerator.prepare(localization)
    trained_parameters = [p for module in trained_modules for p in module.parameters()]  # clipped together
    # The weights' moving average: what is validated, selected and saved when --ema_decay is set.
    ema = None
    if args.ema_decay > 0:
        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay),
                            use_buffers=True)
        accelerator.register_for_checkpointing(ema)

    state = {
        "model": args.model, "dataset": args.dataset, "model_config": config_record(accelerator.unwrap_model(model)),
        "epoch": 0, "batches_in_epoch": 0, "global_step": 0,
        "best_metric": None, "best_epoch": None, "best_checkpoint": None, "history": [], "mae_losses": mae_losses,
    }
    best_weights = None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = resumed_state
        best_weights = read_best_weights(checkpoint)
        logger.info(f"Resumed from {checkpoint}: epoch {state['epoch']}, step {state['global_step']}",
                    main_process_only=True)

    output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (output_dir / "run_config.json").write_text(json.dumps(config, indent=2, default=str))
    if args.report_to != "none":
        accelerator.init_trackers(output_dir.name, config=tensorboard_hparams(config))
    for epoch, mae_loss in enumerate(mae_losses):
        accelerator.log({"pretrain/mae_loss": mae_loss}, step=epoch + 1)
    writer = None  # the SummaryWriter, for images and figures
    if accelerator.is_main_process and any(t.name == "tensorboard" for t in accelerator.trackers):
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
    pusher = None
    if args.push_to_hub and accelerator.is_main_process:
        pusher = HubPusher(args.hub_model_id, args.hub_token, output_dir / ".hub_staging", args.hub_private_repo)
    command = " ".join(["accelerate launch train.py", *redact_argv(sys.argv[1:] if argv is None else list(argv))])
    hardware = hardware_description(accelerator)

    logger.info(f"{args.model} on {args.dataset}: {len(train_split)} training images, {updates_per_epoch} updates per "
                f"epoch × {num_epochs} epochs, global batch {args.per_device_train_batch_size} × "
                f"{accelerator.num_processes} processes × {args.gradient_accumulation_steps} accumulation",
                main_process_only=True)
    if writer is not None and state["global_step"] == 0:
        import torchvision  # only for the image grids

        def pixels(images):  # model inputs back to [0, 1] pixels (the first 3 channels), to look at
            images = images[:, :3].float() * torch.tensor(std[:3], device=images.device).view(1, -1, 1, 1)
            return (images + torch.tensor(mean[:3], device=images.device).view(1, -1, 1, 1)).clamp(0, 1).cpu()

        sample = train_split.images[: min(32, len(train_split))]
        # Augmented from a forked RNG: whether TensorBoard is on must not change what the run trains on.
        with forked_rng(accelerator.device):
            shown = train_transform(sample, train=True)
        writer.add_image("train/augmented_samples", torchvision.utils.make_grid(pixels(shown)), 0)
        if mae_pictures is not None:
            # Rows: training images; their hidden patches blanked; the hidden patches as the decoder predicts them.
            writer.add_image("pretrain/mae_reconstructions", torchvision.utils.make_grid(
                pixels(torch.cat(mae_pictures)), nrow=len(mae_pictures[0])), len(mae_losses))

    checkpoint_every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
    progress = tqdm(total=max_train_steps, initial=state["global_step"], desc="Training",
                    disable=not accelerator.is_local_main_process)
    running_loss = torch.zeros((), device=accelerator.device)
    window_start, window_images, window_steps = time.time(), 0, 0

    def check_finite():
        if not torch.isfinite(running_loss):
            accelerator.print(
                f"train.py: error: the training loss became {running_loss.item()} before step {state['global_step']}"
                " (non-finite). Stopping; the last good checkpoint and best/ are kept. Lower --learning_rate, "
                "keep --max_grad_norm on, or try --mixed_precision bf16 instead of fp16."
            )
            accelerator.end_training()
            sys.exit(3)

    def save(trainer_state):
        trainer_state = {**trainer_state, "wall_clock_seconds": wall_clock()}
        save_checkpoint(accelerator, output_dir, trainer_state, args.checkpoints_total_limit, best_weights)
        if pusher is not None and (output_dir / "best").is_dir():
            pusher.push(output_dir / "best", output_dir / "runs", model_card(run_summary()), [],
                        f"Checkpoint at step {trainer_state['global_step']}", background=True)

    def run_summary(test_metrics=None):
        best = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), None)
        return {
            "model_name": args.model, "selection_metric": args.selection_metric, "best_epoch": state["best_epoch"],
            "teacher": teacher_record(args.teacher_model_name_or_path),
            "validation_metrics": best["metrics"] if best else None, "test_metrics": test_metrics,
            "dataset": {**dataclasses.asdict(info), "license_id": "cc-by-4.0"}, "command": command, "hardware": hardware,
            "wall_clock_seconds": wall_clock(),
        }

    for epoch in range(state["epoch"], num_epochs):
        model.train()
        train_loader.set_epoch(epoch)
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        state["batches_in_epoch"] = skip
        for indices in loader:
            with accelerator.accumulate(model):
                images, labels = train_split.batch(indices)
                pixel_values = train_transform(images, train=True)
                targets = labels
                if augmentation.mixes:
                    pixel_values, targets = data.mix_batch(pixel_values, labels, info.num_labels, augmentation)
                teacher_logits = None
                if teacher is not None:
                    with accelerator.autocast():
                        teacher_logits = teacher(pixel_values)

                def batch_loss():
                    outputs = model(pixel_values=pixel_values, output_hidden_states=localization is not None)
                    logits = outputs.logits
                    loss = training_loss(logits, targets, info.is_multilabel, args.label_smoothing)
                    if localization is not None:  # the last layer's token grid (the CLS token left out)
                        tokens = outputs.hidden_states[-1][:, first_grid_token:]
                        loss = loss + args.relative_localization_weight * localization(tokens)
                    if teacher_logits is not None:
                        loss = (1 - args.distillation_alpha) * loss + args.distillation_alpha * distillation_loss(
                            logits, teacher_logits, args.distillation_type, args.distillation_temperature,
                            info.is_multilabel)
                    return loss

                loss = batch_loss()
                accelerator.backward(loss)
                if args.sam_rho > 0:  # the gradient at the worst point within rho, applied at the weights
                    perturbation = sam.ascend(model.parameters(), args.sam_rho)
                    optimizer.zero_grad()
                    accelerator.backward(batch_loss())
                    sam.descend(perturbation)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trained_parameters, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if ema is not None and accelerator.sync_gradients:
                    ema.update_parameters(accelerator.unwrap_model(model))
            state["batches_in_epoch"] += 1
            running_loss += loss.detach()
            window_images += len(indices) * accelerator.num_processes
            window_steps += 1
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            progress.update(1)
            if state["global_step"] % args.logging_steps == 0:
                check_finite()
                mean_loss = accelerator.reduce(running_loss, reduction="mean").item() / window_steps
                elapsed = time.time() - window_start
                accelerator.log({"train/loss": mean_loss, "train/learning_rate": scheduler.get_last_lr()[0],
                                 "train/images_per_second": window_images / elapsed, "train/epoch": epoch},
                                step=state["global_step"])
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                running_loss.zero_()
                window_start, window_images, window_steps = time.time(), 0, 0
            if checkpoint_every and state["global_step"] % checkpoint_every == 0:
                check_finite()
                save({**state, "epoch": epoch})
            if state["global_step"] >= max_train_steps:
                break
        check_finite()

        # Validation: the shared inference loop and metrics of evaluate.py.
        evaluated = model if ema is None else ema.module
        scores, labels, logits = metrics.predict(evaluated, validation_split, eval_transform, accelerator,
                                                 args.per_device_eval_batch_size, info.task, desc="Validating",
                                                 return_logits=True, loader=validation_loader)
        results = metrics.compute_metrics(scores, labels, info.task, info.label_names, bootstrap_samples=0)
        results["loss"] = validation_loss(logits, labels, info.is_multilabel)
        accelerator.log({f"validation/{k}": results[k] for k in ("acc", "auc", "balanced_acc", "ece", "loss")
                         if results[k] is not None}, step=state["global_step"])
        if writer is not None:
            writer.add_figure("validation/confusion_matrix",
                              confusion_matrix_figure(results["confusion_matrix"], info.label_names), epoch + 1)
        state["history"].append({"epoch": epoch + 1, "step": state["global_step"], "metrics": results})
        if args.save_validation_predictions and accelerator.is_main_process:
            metrics.write_epoch_predictions(output_dir / metrics.PREDICTIONS_FOLDER, epoch + 1, logits, labels)
        selected = results["auc" if args.selection_metric == "last" else args.selection_metric]
        if is_better(args.selection_metric, selected, state["best_metric"]) or state["best_epoch"] is None:
            state.update(best_metric=selected, best_epoch=epoch + 1, best_checkpoint=f"step_{state['global_step']}")
            best_weights = {k: v.detach().cpu().clone()
                            for k, v in accelerator.unwrap_model(evaluated).state_dict().items()}
            save_model_folder(accelerator, evaluated, processor, output_dir / "best")
        save_model_folder(accelerator, evaluated, processor, output_dir / "last")
        logger.info(f"epoch {epoch + 1}/{num_epochs}: validation acc {fmt(results['acc'])} auc "
                    f"{fmt(results['auc'])} loss {fmt(results['loss'])} (best {args.selection_metric} "
                    f"{fmt(state['best_metric'])} at epoch {state['best_epoch']})", main_process_only=True)
        state["epoch"], state["batches_in_epoch"] = epoch + 1, 0
        if checkpoint_every is None:
            save(state)
        if state["global_step"] >= max_train_steps:
            break
    progress.close()

    # The test split, once, on the model chosen on the validation split.
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.load_state_dict(best_weights)
    test_metrics = None
    if not args.skip_test:
        scores, labels = metrics.predict(model, test_split, eval_transform, accelerator,
                                         args.per_device_eval_batch_size, info.task, desc="Testing", loader=test_loader)
        if accelerator.is_main_process:
            test_metrics = metrics.compute_metrics(scores, labels, info.task, info.label_names, seed=args.seed)
    if accelerator.is_main_process:
        summary = run_summary(test_metrics)
        all_results = {
            **summary,
            "validation_history": state["history"],
            "mae_losses": state.get("mae_losses", []),  # the MAE pre-training's loss per epoch (--mae_epochs)
            "config": config,
            "model_config": unwrapped.config.to_dict(),
            "num_parameters": sum(p.numel() for p in unwrapped.parameters()),
            "global_step": state["global_step"],
        }
        (output_dir / "all_results.json").write_text(json.dumps(metrics.to_json_safe(all_results), indent=2))
        if test_metrics is not None:
            logger.info("\n" + metrics.format_report(test_metrics, title=f"Test split, best epoch {state['best_epoch']}"),
                        main_process_only=True)
        if pusher is not None:
            (output_dir / "best" / "README.md").write_text(model_card(summary))
            pusher.push(output_dir / "best", output_dir / "runs", model_card(summary),
                        [output_dir / "all_results.json"], "End of training", background=False)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
