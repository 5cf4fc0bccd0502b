#!/usr/bin/env python
"""Evaluate a saved checkpoint on a split of a MedMNIST data set or of your own images, on one or many processes.

    accelerate launch evaluate.py --model_name_or_path runs/<run>/best --dataset breastmnist
    python evaluate.py --model_name_or_path user/medmnist-vit --dataset bloodmnist --split validation
    python evaluate.py --model_name_or_path runs/<run>/best --dataset path/to/my_images --split test

Your own images take the data arguments of train.py (`--dataset` folder or name, `--train_dir` / `--validation_dir` /
`--test_dir`, `--train_val_split` with the run's `--seed` for a validation split cut from train, ...); they are
decoded at the checkpoint's input size.

The checkpoint is any `save_pretrained` folder of this project (or its Hub id): the model loads with the installed
model code (never the copy a checkpoint ships; another model type's code runs only with `--trust_remote_code`), its
image processor gives the input size and normalisation. A checkpoint
whose channels, input size or labels do not fit the data set is refused before any inference.

Writes to `--output_dir` (default `<checkpoint>-eval-<split>` beside the checkpoint, or `./eval-<dataset>-<split>`
for a Hub id), from the main process only:
    metrics.json             MedMNIST's ACC and AUC with 95% bootstrap intervals, balanced accuracy, per-class
                             precision / recall / F1 / AUC, confusion matrix, ECE; the model, split and data file MD5
    confusion_matrix.png, roc_curves.png, reliability_diagram.png
    predictions.npz          the scores and labels the metrics were computed from
                             (with `--flip_averaging`, metrics.json's run.flip_averaging true, of averaged logits)
and prints the same metrics as a table. Each sample is counted exactly once whatever the number of processes.

Note: this file shares its name with Hugging Face's `evaluate` library. The project imports the library through
`metrics.import_evaluate_library`; a plain `import evaluate` that lands on this file hands over to the library (below).
"""

if __name__ == "evaluate":
    # `import evaluate` found this script because the repository root is on sys.path. Give the name to the library:
    # the import machinery returns whatever sys.modules["evaluate"] holds once this file has run.
    import sys as _sys

    del _sys.modules["evaluate"]
    from metrics.evaluate_library import import_evaluate_library as _import_evaluate_library

    _import_evaluate_library()

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser

import data
import metrics
from data.arguments import DataSourceArguments, data_name, open_image_data, resolve_data_source, uses_own_images
from metrics import plots
from models.checkpoint_fit import (CheckpointError, load_checkpoint_description, load_for_inference,
                                   processor_geometry)
from training.hardware import configure_cpu_threads
from training.run_records import check_writable

logger = get_logger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation"}  # medmnist's own name for the validation split


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the arguments; a bad one exits here (status 2), before any file is read or written."""
    parser = HfArgumentParser([DataSourceArguments], description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model_name_or_path", required=True,
        help="A checkpoint folder saved by this project (save_pretrained + image processor) or its Hub model id.")
    add("--revision", default=None, help="Branch, tag or commit of a Hub checkpoint (default: main).")
    add("--trust_remote_code", action="store_true",
        help="Allow a checkpoint of another model type whose code comes with it (that code runs). This project's own "
             "model types load with the installed code and never need it.")
    add("--split", default="test", choices=[*SPLITS, *SPLIT_ALIASES], help="Split to evaluate (default: test).")
    add("--output_dir", default=None, help="Default: <checkpoint>-eval-<split> (beside it) for a local checkpoint, else "
                                           "./eval-<dataset>-<split>.")
    add("--per_device_eval_batch_size", type=int, default=256, help="Batch size per process (default 256).")
    add("--bootstrap_samples", type=int, default=1000,
        help="Resamples for the 95%% intervals of ACC and AUC (default 1000; 0 skips them).")
    add("--flip_averaging", action="store_true",
        help="Test-time flip averaging: each image's scores from the mean of its own and its left-right mirror "
             "image's logits (twice the inference cost). On by itself for a checkpoint whose config was saved with "
             "test_time_horizontal_flip true.")
    add("--seed", type=int, default=42, help="Seed of the bootstrap resampling and of a validation split cut from "
                                             "your own data's train split (default 42, train.py's default, so that "
                                             "a training run's split and test metrics are reproduced).")
    args = parser.parse_args(argv)

    args.split = SPLIT_ALIASES.get(args.split, args.split)
    try:
        resolve_data_source(args)
    except (ValueError, data.MedMNISTDataError) as error:
        parser.error(str(error))
    if args.per_device_eval_batch_size < 1:
        parser.error(f"--per_device_eval_batch_size must be at least 1, got {args.per_device_eval_batch_size}.")
    if args.bootstrap_samples < 0:
        parser.error(f"--bootstrap_samples must be 0 (no intervals) or more, got {args.bootstrap_samples}.")

    local = Path(args.model_name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            parser.error(f"{local} is a folder but not a checkpoint: it has no config.json (pass the folder that "
                         "save_pretrained wrote, e.g. runs/<run>/best).")
        args.model_name_or_path = str(local)
        default_output = local.with_name(f"{local.name}-eval-{args.split}")
    else:
        try:
            validate_repo_id(args.model_name_or_path)
        except HFValidationError:
            parser.error(f"--model_name_or_path {args.model_name_or_path!r} is neither an existing checkpoint folder "
                         "nor a valid Hub model id (namespace/name).")
        default_output = Path(f"eval-{data_name(args)}-{args.split}")
    args.output_dir = Path(args.output_dir).expanduser() if args.output_dir else default_output
    if args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output_dir {args.output_dir} exists and is not a folder.")
    try:
        check_writable(args.output_dir)  # before the inference, not after it
    except ValueError as error:
        parser.error(str(error))
    return args


def hub_commit(name_or_path: str, revision: str | None) -> str | None:
    """The Hub commit a checkpoint id resolved to (read from the local cache, so it works offline); None if local."""
    if Path(name_or_path).is_dir():
        return None
    try:
        config_path = Path(hf_hub_download(name_or_path, "config.json", revision=revision))
    except Exception:  # noqa: BLE001 - provenance only; the model itself loaded fine
        return None
    return config_path.parent.name if config_path.parent.parent.name == "snapshots" else None


def write_outputs(output_dir: Path, record: dict, scores: np.ndarray, labels: np.ndarray, info) -> None:
    """Plots, predictions and, last, metrics.json; each file written beside its final name and then renamed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    results, title = record["metrics"], f"{info.flag} ({record['dataset']['split']})"

    def publish(name: str, write) -> None:
        tmp = output_dir / f".tmp-{name}"
        write(tmp)
        os.replace(tmp, output_dir / name)

    def write_predictions(path):
        with open(path, "wb") as handle:
            np.savez_compressed(handle, scores=scores, labels=labels)

    publish("confusion_matrix.png", lambda p: plots.save_confusion_matrix(
        results["confusion_matrix"], info.label_names, p, title=f"Confusion matrix, {title}"))
    publish("roc_curves.png", lambda p: plots.save_roc_curves(scores, labels, info.task, info.label_names, p))
    publish("reliability_diagram.png", lambda p: plots.save_reliability_diagram(scores, labels, info.task, p))
    publish("predictions.npz", write_predictions)
    publish("metrics.json", lambda p: p.write_text(json.dumps(metrics.to_json_safe(record), indent=2,
                                                                allow_nan=False) + "\n"))


def load_own_images(args):
    """The requested split of the user's images, decoded at the checkpoint's input size, their `MedMNISTInfo` and
    the checkpoint (checked to fit them first)."""
    images = open_image_data(args, args.seed)
    if args.split not in images.splits:
        raise data.ImageDataError(f"{images.source} has no {args.split} split (it has {', '.join(images.splits)}); "
                                  "choose one with --split.")
    _, processor = load_checkpoint_description(args.model_name_or_path, args.revision, args.trust_remote_code)
    height, _, _, _ = processor_geometry(processor)
    size = height or args.image_size
    info = images.info_at(size)
    checkpoint = load_for_inference(args.model_name_or_path, info, args.revision,
                                    trust_remote_code=args.trust_remote_code)
    return images.decode(size, splits=(args.split,)), info, checkpoint


def main(argv=None) -> dict | None:
    """Run the evaluation; returns the metrics.json record on the main process, None on the others."""
    args = parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.ERROR)
    threads, why = configure_cpu_threads(accelerator)
    logger.info(f"CPU threads per process: {threads} ({why})")
    if not accelerator.is_local_main_process:  # one set of logs and progress bars per machine
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if args.no_verify_checksum:
        logger.warning("!" * 100 + f"\n!! --no_verify_checksum: a {args.dataset} file whose MD5 differs from the "
                       "official release is ACCEPTED. These metrics are MedMNIST benchmark numbers only if "
                       "metrics.json shows checksum_verified: true.\n" + "!" * 100)

    # 1. What the checkpoint expects and what the data set is, checked against each other before any inference.
    if uses_own_images(args):
        dataset, info, checkpoint = load_own_images(args)
    else:
        with accelerator.main_process_first():  # one process converts / downloads, the others read its cache
            dataset = data.load_medmnist(args.dataset, size=args.image_size, data_dir=args.data_dir,
                                         verify_checksum=not args.no_verify_checksum)
        dataset, info = data.convert_channels(dataset, data.medmnist_info(dataset), args.num_channels)
        checkpoint = load_for_inference(args.model_name_or_path, info, args.revision,
                                        trust_remote_code=args.trust_remote_code)
    metrics.load_metrics(info.task)  # the local evaluate modules, on every process: a loading problem shows up now

    # 2. The model (no DDP wrapper: inference needs no gradient synchronisation) and the processor's transform.
    config, model = checkpoint.config, checkpoint.model.to(accelerator.device)
    transform = data.BatchTransform.for_evaluation(checkpoint.image_size, checkpoint.mean, checkpoint.std)
    transform = transform.to(accelerator.device)
    split = (dataset[args.split].to(accelerator.device) if uses_own_images(args)
             else data.DeviceSplit.from_dataset(dataset[args.split], accelerator.device))
    logger.info(f"Evaluating {args.model_name_or_path} ({config.model_type}) on {info.flag} {args.split}: "
                f"{len(split)} images on {accelerator.num_processes} process(es), "
                f"{args.per_device_eval_batch_size} per batch")

    flip_averaging = args.flip_averaging or metrics.legacy_flip_averaging(config)
    if flip_averaging and not args.flip_averaging:
        logger.info("Flip averaging on: the checkpoint's config was saved with test_time_horizontal_flip true (the "
                    "former model field); its predictions average each image with its mirror image, as before")
    elif flip_averaging:
        logger.info("Flip averaging on (--flip_averaging): each image averaged with its mirror image")

    # 3. Every process predicts its share; all of them get every sample back exactly once.
    scores, labels = metrics.predict(model, split, transform, accelerator, args.per_device_eval_batch_size,
                                     info.task, desc=f"Evaluating {args.split}", flip_averaging=flip_averaging)

    # 4. Metrics, report and files from the main process.
    record = None
    if accelerator.is_main_process:
        results = metrics.compute_metrics(scores, labels, info.task, info.label_names,
                                          bootstrap_samples=args.bootstrap_samples, seed=args.seed)
        record = {
            "model": {
                "name_or_path": args.model_name_or_path,
                "revision": args.revision,
                "commit": hub_commit(args.model_name_or_path, args.revision),  # the Hub commit actually loaded
                "model_type": config.model_type,
                "num_parameters": sum(p.numel() for p in model.parameters()),
            },
            "dataset": {
                "flag": info.flag, "size": info.size, "split": args.split, "task": info.task,
                "num_samples": len(split), "file": info.file_path, "md5": info.md5,
                "expected_md5": info.expected_md5, "checksum_verified": info.checksum_verified,
                "checksum_check_skipped": args.no_verify_checksum,
            },
            "metrics": results,
            "run": {
                "num_processes": accelerator.num_processes,
                "per_device_eval_batch_size": args.per_device_eval_batch_size,
                "mixed_precision": accelerator.mixed_precision,
                "flip_averaging": flip_averaging,
                "torch": torch.__version__,
            },
        }
        write_outputs(args.output_dir, record, scores, labels, info)
        unverified = not info.checksum_verified and info.source == "medmnist"
        title = (f"{info.flag} {args.split} ({info.size} px, {len(split)} images), model "
                 f"{args.model_name_or_path}" + ("  [data MD5 NOT verified]" if unverified else ""))
        print("\n" + metrics.format_report(results, title=title) + f"\n\nWritten to {args.output_dir}/", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, data.MedMNISTDataError, data.ImageDataError) as error:
        sys.exit(f"evaluate.py: error: {error}")
