#!/usr/bin/env python
"""Train a CNN, ViT or ViT + SPT + LSA on a MedMNIST data set, on one or many processes through accelerate.

    accelerate launch train.py --model vit_lsa --dataset breastmnist
    python train.py --model cnn --dataset bloodmnist --data_dir ../shared/data/medmnist   # one process
    python train.py my_run.yaml --seed 1                                                  # a config file + flags
    python train.py --model_name_or_path runs/<run>/best --dataset bloodmnist --num_channels 1 \
        --ignore_mismatched_sizes                                                         # fine-tune a checkpoint

Each epoch validates on the validation split (ACC / AUC as MedMNIST defines them); the best model by
`--selection_metric` goes to `output_dir/best`, the latest to `output_dir/last` (both `save_pretrained` folders with
their image processor); at the end `best` is evaluated once on the test split and everything is written to
`output_dir/all_results.json`. Unset training arguments come from the recipe (`--recipe`, recipes/*.yaml); training
methods are plug-ins (training/methods), each with its own group of arguments below. Mixed precision comes from
accelerate (`accelerate launch --mixed_precision bf16`).
"""

import contextlib
import errno
import logging
import sys
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed

import data
import models
from data.arguments import open_image_data, uses_own_images
from models.fine_tuning import load_starting_model, read_starting_checkpoint
from training import methods as training_methods
from training.arguments import augmentation_config, parse_arguments, public_config
from training.batch_norm import synchronize_batch_norm
from training.compilation import compile_for_training, compile_settings
from training.hardware import configure_cpu_threads, cpu_bf16_advice, hardware_description
from training.hub import HubPushError, open_hub_pusher, redact_argv
from training.optimization import build_optimizer, build_scheduler, fused_optimizer_pays
from training.run_records import check_output_dir, clear_run_folder, write_run_config
from training.tracking import hparam_values, start_hparams_session
from training.trainer import NonFiniteLossError, Run, Trainer, resolve_resume

logger = logging.getLogger("train")


def parse_args(argv=None, methods=None):
    """The run's arguments: the core groups plus each training method's own (`training.arguments`)."""
    return parse_arguments(argv, training_methods.argument_groups(methods), description=__doc__,
                           check=lambda args: training_methods.build_methods(args, methods))


def configure_logging(accelerator) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    # One progress bar (ours, main process only); the libraries' own bars for saving and loading stay quiet.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)


def load_data(args, device):
    """The data set and its `MedMNISTInfo`: a MedMNIST `DatasetDict` (a cross-validation fold of it, if asked;
    `--num_channels` applied) or the user's own images (`data.ImageData`, decoded once the model's input size is
    known)."""
    if uses_own_images(args):
        images = open_image_data(args, args.seed)
        images.check_memory(args.config_overrides.get("image_size", args.image_size), device)
        logger.info(f"Data: {images.source}: {images.num_channels}-channel images of {len(images.label_names)} "
                    f"classes ({', '.join(images.label_names)}); "
                    + ", ".join(f"{name} {count}" for name, count in images.sizes().items())
                    + (f" (validation: a stratified {images.validation_cut_from_train:.0%} of train, seed {args.seed})"
                       if images.validation_cut_from_train else ""))
        return images, images.info
    dataset = data.load_medmnist(args.dataset, size=args.image_size, data_dir=args.data_dir,
                                 verify_checksum=not args.no_verify_checksum)
    if args.cross_validation_folds:
        dataset = data.cross_validation_split(dataset, args.cross_validation_folds, args.cross_validation_fold,
                                              split_seed=args.cross_validation_split_seed)
    return data.convert_channels(dataset, data.medmnist_info(dataset), args.num_channels)


def take_output_dir(accelerator, args, output_dir: Path) -> None:
    """Once every process has checked the folder: empty it if asked to, and record the run's arguments in it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.overwrite_output_dir:
            clear_run_folder(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(output_dir, public_config(args))
    accelerator.wait_for_everyone()


def decode_own_images(images: data.ImageData, size: int, accelerator):
    """The user's images at the model's input size, on the CPU (refused up front if they would not fit), and their
    `MedMNISTInfo` at that size."""
    images.check_memory(size, accelerator.device)  # again: the model may take another size than --image_size
    per_image = images.num_channels * size * size
    logger.info(f"Images decoded at the model's input size: {images.num_channels}×{size}×{size} uint8, {per_image} "
                f"bytes an image, {images.bytes_needed(size) / 2**20:.1f} MiB for all splits")
    return images.decode(size), images.info_at(size)


def build_or_load_model(args, info):
    """(model, starting checkpoint): a new `--model`, or the `--model_name_or_path` checkpoint set up for the data
    (`models.fine_tuning`); ValueError if it does not fit and cannot be made to."""
    if not args.model_name_or_path:
        model = models.build_model(args.model, info.num_channels, info.num_labels, label_names=info.label_names,
                                   problem_type=info.problem_type, **args.config_overrides)
        return model, None
    start = read_starting_checkpoint(args.model_name_or_path, args.trust_remote_code, args.model_weights_sha256)
    model = load_starting_model(start, info, args.ignore_mismatched_sizes, args.trust_remote_code)
    return model, start


def training_loader(args, num_samples: int, num_processes: int):
    """The training split's loader (`data.training_loader`; its order draws from no global random stream), or a
    ValueError naming the flags when the split makes no complete batch."""
    try:
        return data.training_loader(num_samples, args.per_device_train_batch_size, seed=args.seed,
                                    num_processes=num_processes, drop_last=args.dataloader_drop_last,
                                    repeats=args.repeated_augmentation)
    except ValueError as error:
        raise ValueError(f"--per_device_train_batch_size {args.per_device_train_batch_size}"
                         f"{' with --dataloader_drop_last' if args.dataloader_drop_last else ''}: {error}") from None


def prepare_inputs(run: Run, dataset) -> None:
    """Each split as one uint8 tensor on the device; normalisation, the train / eval transforms, the processor.

    A fine-tuned checkpoint keeps the input size and normalisation of its image processor; a new model takes the
    training split's statistics (or 0.5 / 0.5) and its config's image size."""
    device, channels, start = run.accelerator.device, run.info.num_channels, run.starting_checkpoint
    run.train_split, run.validation_split, run.test_split = (
        (dataset[name].to(device) if isinstance(dataset[name], data.DeviceSplit)
         else data.DeviceSplit.from_dataset(dataset[name], device)) if name in dataset else None
        for name in ("train", "validation", "test"))
    if start is not None:
        run.mean, run.std = start.mean, start.std
    elif run.args.normalization == "train_stats":
        run.mean, run.std = data.channel_mean_std(run.train_split.images)
    else:
        run.mean, run.std = [0.5] * channels, [0.5] * channels
    size = run.model.config.image_size if start is None else start.image_size or run.info.size
    run.train_transform = data.BatchTransform(run.augmentation, size, run.mean, run.std).to(device)
    run.eval_transform = data.BatchTransform.for_evaluation(size, run.mean, run.std).to(device)
    run.processor = models.build_image_processor(size, run.mean, run.std)


def open_trackers(trainer: Trainer, methods, config: dict, argv) -> None:
    """TensorBoard (with a grid of augmented training images), the run's command, and what the run will do, in the
    log."""
    run, args, accelerator = trainer.run, trainer.args, trainer.accelerator
    hparams = hparam_values(config)
    if args.report_to != "none":
        accelerator.init_trackers(run.output_dir.name)
        for tracker in accelerator.trackers:
            # Not TensorBoard's: accelerate's hparams there declare no metric, and the HParams dashboard, which takes
            # its metric list from one run, could then show none for any run. Ours follow, with the metrics' names.
            if tracker.name != "tensorboard":
                tracker.store_init_configuration(hparams)
    if accelerator.is_main_process and any(t.name == "tensorboard" for t in accelerator.trackers):
        trainer.writer = accelerator.get_tracker("tensorboard", unwrap=True)
        start_hparams_session(trainer.writer, hparams)
    trainer.command = " ".join(["accelerate launch train.py", *redact_argv(sys.argv[1:] if argv is None else argv)])
    trainer.hardware = hardware_description(
        accelerator, (args.torch_compile_backend, args.torch_compile_mode) if args.torch_compile else None)

    def to_pixels(images):  # model inputs back to [0, 1] pixels (the first 3 channels), to look at
        scale, shift = (torch.tensor(v[:3], device=images.device).view(1, -1, 1, 1) for v in (run.std, run.mean))
        return (images[:, :3].float() * scale + shift).clamp(0, 1).cpu()

    if trainer.writer is not None and trainer.state["global_step"] == 0:
        import torchvision  # only for the image grids

        # The first 32 samples of epoch 0, augmented as training augments them (their keys draw from no global RNG).
        places = torch.arange(min(32, len(run.train_split)))
        order = data.epoch_order(len(run.train_split), args.seed, 0, args.repeated_augmentation)
        shown = run.train_transform(run.train_split.batch(order[places])[0], train=True,
                                    sample_keys=data.sample_keys(args.seed, 0, places))
        trainer.writer.add_image("train/augmented_samples", torchvision.utils.make_grid(to_pixels(shown)), 0)
    methods.log_start(accelerator, trainer.writer, to_pixels)
    if accelerator.is_main_process:
        start = run.starting_checkpoint
        logger.info(f"{run.model_name} on {run.info.flag}"
                    + (f" (fine-tuned from {start.name_or_path})" if start else "")
                    + f": {len(run.train_split)} training images, "
                    f"{trainer.updates_per_epoch} updates per epoch × {trainer.num_epochs} epochs, global batch "
                    f"{args.per_device_train_batch_size} × {accelerator.num_processes} processes × "
                    f"{args.gradient_accumulation_steps} accumulation"
                    + ("; last incomplete batch dropped" if args.dataloader_drop_last else "")
                    + (f"; training methods: {', '.join(methods.names())}" if methods else ""))


def is_disk_full(error: BaseException) -> bool:
    text = f"{error} {error.__cause__}"
    return getattr(error, "errno", None) == errno.ENOSPC or any(
        sign in text for sign in ("No space left", "StorageFull", "unexpected pos", "file write failed"))


@contextlib.contextmanager
def exits_cleanly(accelerator, output_dir: Path):
    """A training that cannot go on ends with a message and its own exit status, not a traceback: 3 for a
    non-finite loss, 4 for a full disk (the last complete checkpoint stays usable either way)."""
    try:
        yield
    except NonFiniteLossError as error:
        accelerator.print(f"train.py: error: {error}")
        accelerator.end_training()
        sys.exit(3)
    except Exception as error:  # noqa: BLE001 - OSError, torch's RuntimeError, SafetensorError: all say it in words
        if not is_disk_full(error):
            raise
        accelerator.print(f"train.py: error: the disk holding {output_dir} is full ({str(error).splitlines()[0][:160]})."
                          " The last complete checkpoint is kept: free space, then run the same command with "
                          "--resume_from_checkpoint latest.")
        sys.exit(4)


def finish(trainer: Trainer, args) -> None:
    """Test, write and push; a failed final push exits with status 5, after everything local is written."""
    try:
        trainer.finish(public_config(args))
    except HubPushError as error:
        trainer.accelerator.print(f"train.py: error: {error}. Everything is saved in {args.output_dir}; upload best/ "
                                  f"later (e.g. `hf upload {args.hub_model_id} {Path(args.output_dir) / 'best'}`).")
        sys.exit(5)
    trainer.accelerator.end_training()


def main(argv=None, methods=None):
    """Train as the arguments say; `methods` replaces the list of available training methods (for plug-ins)."""
    # 1. Arguments: the groups, a config file if given, the recipe's defaults for what is left unset.
    args = parse_args(argv, methods)
    output_dir = Path(args.output_dir)

    # 2. The accelerator: processes, device, mixed precision, trackers.
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator)
    threads, why = configure_cpu_threads(accelerator)
    if accelerator.is_main_process:
        logger.info(f"CPU threads per process: {threads} ({why})")
    set_seed(args.seed)
    compiled = compile_settings(args, accelerator)  # before anything is prepared or recorded
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and accelerator.is_main_process:
        pays, measured = cpu_bf16_advice()
        if pays:
            logger.info(measured)
        else:
            logger.warning(f"{measured}: bf16 training will be slower than fp32 here; launch with --mixed_precision no.")

    # 3. Data, model and methods. Everything that can be wrong is found here, before anything is written.
    try:
        dataset, info = load_data(args, accelerator.device)
        model, start = build_or_load_model(args, info)
        models.accept_legacy_state_dicts(model)  # resuming a checkpoint of the earlier module layout
        if uses_own_images(args):
            size = start.image_size if start is not None and start.image_size else model.config.image_size
            dataset, info = decode_own_images(dataset, size, accelerator)
            if "test" not in dataset and not args.skip_test:
                logger.info("The data has no test split: the run ends after validation (test_metrics null).")
                args.skip_test = True
        if accelerator.num_processes > 1 and synchronize_batch_norm(model, accelerator.device):
            logger.info("BatchNorm normalises with the statistics of the global batch (synchronised over "
                        f"{accelerator.num_processes} processes).")
        run = Run(args, accelerator, output_dir, info, model, augmentation=augmentation_config(args),
                  starting_checkpoint=start)
        method_list = training_methods.build_methods(args, methods)
        train_loader = training_loader(args, len(dataset["train"]), accelerator.num_processes)
        check_output_dir(output_dir, public_config(args), bool(args.resume_from_checkpoint), args.overwrite_output_dir)
        checkpoint, resumed_state = resolve_resume(run, method_list)
        method_list.check(run)
        pusher = (open_hub_pusher(args.hub_model_id, args.hub_token, output_dir / ".hub_staging",
                                  args.hub_private_repo) if args.push_to_hub else None)  # every process: same verdict
    except ValueError as error:
        accelerator.print(f"train.py: error: {error}")
        sys.exit(2)
    take_output_dir(accelerator, args, output_dir)
    prepare_inputs(run, dataset)
    if accelerator.num_processes > 1:
        # From here on each process draws its own dropout / stochastic-depth masks (seed + process index): with one
        # stream for all, every process would drop the same units for its part of the global batch. Everything that
        # must be the same on all processes is built; accelerate broadcasts process 0's weights when it wraps them.
        set_seed(args.seed, device_specific=True)

    # 4. The methods' stages before supervised training; a resumed supervised run has them behind it.
    if checkpoint is None:
        method_list.before_training(run)

    # 5. Loaders, optimizer and schedule, prepared by accelerate; then the methods' own setup.
    train_loader, validation_loader, test_loader = accelerator.prepare(  # prepared once: part of every saved state
        train_loader,
        *(data.index_loader(len(split), args.per_device_eval_batch_size) if split is not None else None
          for split in (run.validation_split, run.test_split)))
    updates_per_epoch = -(-len(train_loader) // args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    optimizer = build_optimizer(args, model, *method_list.trainable_modules(),
                                fused=fused_optimizer_pays(accelerator))
    scheduler = build_scheduler(args.lr_scheduler_type, optimizer, round(args.warmup_epochs * updates_per_epoch),
                                max_train_steps, accelerator.num_processes)
    run.model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    for module in method_list.trainable_modules():
        accelerator.prepare(module)
    method_list.setup(run)
    if compiled is not None:  # in place, on the module itself: a DDP wrapper around it calls the compiled forward
        compile_for_training(accelerator.unwrap_model(run.model), *compiled)
        if accelerator.is_main_process:
            logger.info(f"torch.compile (backend {compiled[0]}, mode {compiled[1] or 'default'}, static shapes): the "
                        "first updates compile the training step, once per batch shape; validation and test run "
                        "eagerly.")
    trainer = Trainer(run, method_list, optimizer, scheduler, train_loader, validation_loader, test_loader,
                      max_train_steps)
    trainer.pusher = pusher if accelerator.is_main_process else None

    # 6. Resume, then the records and trackers of the run.
    if checkpoint is not None:
        trainer.resume(checkpoint, resumed_state)
    open_trackers(trainer, method_list, public_config(args), argv)

    # 7. The loop: train_one_epoch, validate, select, save, until max_train_steps.
    # 8. The test split once, on the model chosen on validation; all_results.json; the final Hub push.
    with exits_cleanly(accelerator, output_dir):
        trainer.fit()
        finish(trainer, args)


if __name__ == "__main__":
    main()
