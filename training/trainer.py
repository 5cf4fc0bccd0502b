"""The supervised training loop: updates, validation, selection of the best model, checkpoints, resume, test and the
run's summary. It calls the training methods' hooks (`training.methods`) and knows none of them by name.

    run = Run(args, accelerator, output_dir, info, model)     # then the splits, transforms and processor
    trainer = Trainer(run, methods, optimizer, scheduler, train_loader, validation_loader, test_loader, max_steps)
    trainer.resume(checkpoint, state)                          # optional
    trainer.fit()                                              # train_one_epoch + validate, epoch by epoch
    trainer.finish()                                           # the test split once, all_results.json, the Hub
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import data
import metrics
import models
from metrics.plots import confusion_matrix_figure

from .compilation import eager
from .checkpointing import (check_checkpoint_files, read_best_weights, read_method_states, read_trainer_state,
                            resolve_checkpoint, save_checkpoint)
from models.integrity import write_manifest
from .methods import Batch, MethodList, OptimizerStep
from .optimization import training_loss, validation_loss
from .run_records import write_all_results
from .tracking import end_hparams_session

logger = logging.getLogger(__name__)

SELECTION_METRICS = ("auc", "acc", "loss", "last")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint and best/ are kept."""


@dataclasses.dataclass
class Run:
    """What a run is made of, filled in as train.py builds it; the methods' hooks read from it."""

    args: Any
    accelerator: Any
    output_dir: Path
    info: data.MedMNISTInfo
    model: torch.nn.Module
    train_split: data.DeviceSplit | None = None
    validation_split: data.DeviceSplit | None = None
    test_split: data.DeviceSplit | None = None
    augmentation: data.AugmentationConfig | None = None
    train_transform: data.BatchTransform | None = None
    eval_transform: data.BatchTransform | None = None
    processor: Any = None
    mean: list[float] | None = None
    std: list[float] | None = None
    starting_checkpoint: Any = None  # models.fine_tuning.StartingCheckpoint of a fine-tuned run
    started: float = dataclasses.field(default_factory=time.time)
    seconds_before_resuming: float = 0.0

    @property
    def model_name(self) -> str:
        """The model family, or a starting checkpoint's model type when it is not one of this project's."""
        return self.args.model or self.starting_checkpoint.model_name

    def wall_clock(self) -> float:
        """The run's training time in seconds, across resumes."""
        return self.seconds_before_resuming + time.time() - self.started

    @property
    def identity(self) -> dict:
        """What a checkpoint must share with the run that resumes it."""
        return {"model": self.args.model, "dataset": self.args.dataset,
                "model_config": config_record(self.accelerator.unwrap_model(self.model))}


def config_record(model) -> dict:
    """The model config as stored in a checkpoint (JSON types), to refuse resuming a checkpoint of another model."""
    return json.loads(model.config.to_json_string(use_diff=True))


def resolve_resume(run: Run, methods: MethodList) -> tuple[Path | None, dict | None]:
    """The supervised checkpoint and trainer state that `--resume_from_checkpoint` names, or (None, None).

    A checkpoint of a method's own stage (e.g. MAE pre-training) goes to that method, and the supervised stage starts
    fresh. A checkpoint of another model or configuration is refused (ValueError).
    """
    args = run.args
    if not args.resume_from_checkpoint:
        return None, None
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, run.output_dir)
    state = read_trainer_state(checkpoint)
    identity = run.identity
    if state["model_config"] != identity["model_config"] or state["model"] != args.model:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it was made by model {state['model']!r} with another "
            f"configuration than this run's {args.model!r} on {args.dataset}; resume with the same --model, "
            "--dataset and --config_overrides, or start a new --output_dir.")
    run.seconds_before_resuming = state.get("wall_clock_seconds", 0.0)
    stage = state.get("stage")
    if stage is None:
        check_checkpoint_files(checkpoint, run.accelerator.num_processes)
        return checkpoint, state
    method = methods.by_name(stage)
    if method is None:
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: a checkpoint of the {stage!r} stage before "
                         "training, which this run does not use; resume with the arguments of the run that wrote it, "
                         "or start a new --output_dir.")
    method.resume_stage(checkpoint, state)
    return None, None


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


def make_batch(split: data.DeviceSplit, samples: dict, transform, augmentation, num_labels: int, seed: int,
               epoch: int) -> Batch:
    """A training batch from a `data.training_loader` batch: the images augmented on the device (each with the draws
    of its (seed, epoch, place in the epoch)) and, if the augmentation mixes, mixed with their labels."""
    images, labels = split.batch(samples["indices"])
    keys = data.sample_keys(seed, epoch, samples["positions"])
    pixel_values, targets = transform(images, train=True, sample_keys=keys), labels
    if augmentation.mixes:
        pixel_values, targets = data.mix_batch(pixel_values, labels, num_labels, augmentation)
    return Batch(pixel_values, targets, labels, share=samples["share"])


def training_step(model, batch: Batch, *, accelerator, optimizer, scheduler, methods: MethodList, task_loss,
                  clipped_parameters, max_grad_norm: float) -> torch.Tensor:
    """One forward / backward pass and, when gradients are synchronised, one optimizer update; returns the loss."""
    with accelerator.accumulate(model):
        methods.on_batch(batch)

        def forward_loss():
            outputs = model(pixel_values=batch.pixel_values)
            return methods.loss(task_loss(outputs.logits, batch.targets), outputs, batch) * batch.share

        loss = forward_loss()
        accelerator.backward(loss)
        methods.after_backward(OptimizerStep(model, optimizer, lambda: accelerator.backward(forward_loss())))
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(clipped_parameters, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if accelerator.sync_gradients:
            methods.after_update(model)
    return loss


def validate(model, split, transform, accelerator, batch_size: int, info, loader=None,
             flip_averaging: bool = False) -> tuple[dict, Any, Any]:
    """(metrics with the validation loss, logits, labels) of `model` on `split`: evaluate.py's inference and metrics
    (`flip_averaging`: test-time flip averaging, as `metrics.predict`)."""
    scores, labels, logits = metrics.predict(model, split, transform, accelerator, batch_size, info.task,
                                             desc="Validating", return_logits=True, loader=loader,
                                             flip_averaging=flip_averaging)
    results = metrics.compute_metrics(scores, labels, info.task, info.label_names, bootstrap_samples=0)
    results["loss"] = validation_loss(logits, labels, info.is_multilabel)
    return results, logits, labels


def save_model_folder(accelerator, model, processor, folder: Path) -> None:
    """`save_pretrained` model + processor into `folder`, atomically (written beside it, then renamed)."""
    if not accelerator.is_main_process:
        return
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    write_manifest(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class Trainer:
    """Trains `run.model` with `methods` for `max_train_steps` updates, validating after every epoch.

    The best model by `args.selection_metric` goes to `output_dir/best`, the latest to `output_dir/last`; checkpoints
    (every epoch or every `args.checkpointing_steps` updates) hold everything needed to resume exactly, the methods'
    states included. `summary` is what all_results.json and the model card are made of.
    """

    def __init__(self, run: Run, methods: MethodList, optimizer, scheduler, train_loader, validation_loader,
                 test_loader, max_train_steps: int):
        args, accelerator = run.args, run.accelerator
        self.run, self.args, self.accelerator, self.methods = run, args, accelerator, methods
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_loader, self.validation_loader, self.test_loader = train_loader, validation_loader, test_loader
        self.max_train_steps = max_train_steps
        self.updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
        self.num_epochs = math.ceil(max_train_steps / self.updates_per_epoch)
        self.task_loss = functools.partial(training_loss, multilabel=run.info.is_multilabel,
                                           label_smoothing=args.label_smoothing)
        self.clipped_parameters = [p for module in (run.model, *methods.trainable_modules()) for p in module.parameters()]
        self.checkpoint_every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
        self.state = {**run.identity, "epoch": 0, "batches_in_epoch": 0, "global_step": 0, "best_metric": None,
                      "best_epoch": None, "best_checkpoint": None, "history": []}
        self.best_weights = None
        self.writer = self.pusher = None  # the TensorBoard SummaryWriter and the Hub pusher, when the run has them
        self.command, self.hardware = "", {}
        self.progress = None
        self.running_loss = torch.zeros((), device=accelerator.device)
        self.window = (time.time(), 0, 0)  # start, images, steps of the current logging window
        # The training speed of this process's run: the first logging window apart (warm-up, compilation).
        self.speed = {"first_window_seconds": None, "images": 0, "steps": 0, "seconds": 0.0}

    def resume(self, checkpoint: Path, state: dict) -> None:
        """Continue from a supervised checkpoint: accelerate's state, the trainer state, the best weights so far and
        the methods' states."""
        self.accelerator.load_state(str(checkpoint))
        self.state = state
        best = read_best_weights(checkpoint)
        unwrapped = self.accelerator.unwrap_model(self.run.model)
        self.best_weights = None if best is None else models.rename_legacy_keys(unwrapped, best)
        self.methods.load_state_dicts(read_method_states(checkpoint))
        if self.accelerator.is_main_process:
            logger.info(f"Resumed from {checkpoint}: epoch {state['epoch']}, step {state['global_step']}")

    @property
    def done(self) -> bool:
        return self.state["global_step"] >= self.max_train_steps

    def fit(self) -> None:
        """Epochs of `train_one_epoch` and `end_of_epoch` (validate, select, save) until `max_train_steps`."""
        self.progress = tqdm(total=self.max_train_steps, initial=self.state["global_step"], desc="Training",
                             disable=not self.accelerator.is_local_main_process)
        for epoch in range(self.state["epoch"], self.num_epochs):
            self.train_one_epoch(epoch)
            self.end_of_epoch(epoch)
            if self.done:
                break
        self.progress.close()
        speed = self.training_speed()
        if self.accelerator.is_main_process and speed["images_per_second"] is not None:
            logger.info(f"training speed: {speed['images_per_second']:.0f} images/s, {speed['steps_per_second']:.2f} "
                        f"steps/s after the first logging window ({speed['first_window_seconds']:.1f} s: warm-up"
                        f"{', compilation' if self.args.torch_compile else ''})")

    def train_one_epoch(self, epoch: int) -> None:
        """The epoch's updates (the batches a resumed run has already seen skipped), logging and step checkpoints."""
        run, accelerator = self.run, self.accelerator
        run.model.train()
        self.train_loader.set_epoch(epoch)
        skip = self.state["batches_in_epoch"] if epoch == self.state["epoch"] else 0
        loader = accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        self.state["batches_in_epoch"] = skip
        if not self.window[2]:  # the window's clock starts with training, not before validation or the set-up
            self.window = (time.time(), 0, 0)
        for samples in loader:
            batch = make_batch(run.train_split, samples, run.train_transform, run.augmentation, run.info.num_labels,
                               self.args.seed, epoch)
            loss = training_step(run.model, batch, accelerator=accelerator, optimizer=self.optimizer,
                                 scheduler=self.scheduler, methods=self.methods, task_loss=self.task_loss,
                                 clipped_parameters=self.clipped_parameters, max_grad_norm=self.args.max_grad_norm)
            self.state["batches_in_epoch"] += 1
            self.running_loss += loss.detach()
            start, images, steps = self.window
            self.window = (start, images + len(samples["indices"]) * accelerator.num_processes, steps + 1)
            if not accelerator.sync_gradients:
                continue
            self.state["global_step"] += 1
            self.progress.update(1)
            if self.state["global_step"] % self.args.logging_steps == 0:
                self.log_training(epoch)
            if self.checkpoint_every and self.state["global_step"] % self.checkpoint_every == 0:
                self.check_finite()
                self.save_checkpoint({**self.state, "epoch": epoch})
            if self.done:
                break
        if self.window[2]:  # updates since the last log: every epoch logs its loss, however few updates it has
            self.log_training(epoch)
        self.check_finite()

    def check_finite(self) -> None:
        if not torch.isfinite(self.running_loss):
            raise NonFiniteLossError(
                f"the training loss became {self.running_loss.item()} before step {self.state['global_step']} "
                "(non-finite). Stopping; the last good checkpoint and best/ are kept. Lower --learning_rate, keep "
                "--max_grad_norm on, or try --mixed_precision bf16 instead of fp16.")

    def log_training(self, epoch: int) -> None:
        """The mean loss, learning rate and images per second of the window since the last log."""
        self.check_finite()
        start, images, steps = self.window
        mean_loss = self.accelerator.reduce(self.running_loss, reduction="mean").item() / steps  # waits for the step
        seconds = time.time() - start
        self.accelerator.log({"train/loss": mean_loss, "train/learning_rate": self.scheduler.get_last_lr()[0],
                              "train/images_per_second": images / seconds, "train/epoch": epoch},
                             step=self.state["global_step"])
        self.progress.set_postfix(loss=f"{mean_loss:.4f}", images_per_s=f"{images / seconds:.0f}")
        if self.speed["first_window_seconds"] is None:
            self.speed["first_window_seconds"] = seconds
        else:
            self.speed.update(images=self.speed["images"] + images, steps=self.speed["steps"] + steps,
                              seconds=self.speed["seconds"] + seconds)
        self.running_loss.zero_()
        self.window = (time.time(), 0, 0)

    def end_of_epoch(self, epoch: int) -> None:
        """Validate the evaluated model (the methods choose it), keep it as best/ if it is, save last/ and, with
        epoch checkpoints, the checkpoint."""
        run, args, accelerator, state = self.run, self.args, self.accelerator, self.state
        evaluated = self.methods.evaluated_model(run.model)
        with eager():  # a compiled model (--torch_compile) validates eagerly: see training.compilation.eager
            results, logits, labels = validate(evaluated, run.validation_split, run.eval_transform, accelerator,
                                               args.per_device_eval_batch_size, run.info,
                                               loader=self.validation_loader, flip_averaging=args.flip_averaging)
        accelerator.log({f"validation/{k}": results[k] for k in ("acc", "auc", "balanced_acc", "ece", "loss")
                         if results[k] is not None}, step=state["global_step"])
        if self.writer is not None:
            self.writer.add_figure("validation/confusion_matrix",
                                   confusion_matrix_figure(results["confusion_matrix"], run.info.label_names), epoch + 1)
        state["history"].append({"epoch": epoch + 1, "step": state["global_step"], "metrics": results})
        if args.save_validation_predictions and accelerator.is_main_process:
            metrics.write_epoch_predictions(run.output_dir / metrics.PREDICTIONS_FOLDER, epoch + 1, logits, labels)
        selected = results["auc" if args.selection_metric == "last" else args.selection_metric]
        if is_better(args.selection_metric, selected, state["best_metric"]) or state["best_epoch"] is None:
            state.update(best_metric=selected, best_epoch=epoch + 1, best_checkpoint=f"step_{state['global_step']}")
            self.best_weights = {k: v.detach().cpu().clone()
                                 for k, v in accelerator.unwrap_model(evaluated).state_dict().items()}
            save_model_folder(accelerator, evaluated, run.processor, run.output_dir / "best")
        save_model_folder(accelerator, evaluated, run.processor, run.output_dir / "last")
        if accelerator.is_main_process:
            logger.info(f"epoch {epoch + 1}/{self.num_epochs}: validation acc {fmt(results['acc'])} auc "
                        f"{fmt(results['auc'])} loss {fmt(results['loss'])} (best {args.selection_metric} "
                        f"{fmt(state['best_metric'])} at epoch {state['best_epoch']})")
        state["epoch"], state["batches_in_epoch"] = epoch + 1, 0
        if self.checkpoint_every is None:
            self.save_checkpoint(state)

    def save_checkpoint(self, trainer_state: dict) -> None:
        trainer_state = {**trainer_state, "wall_clock_seconds": self.run.wall_clock()}
        save_checkpoint(self.accelerator, self.run.output_dir, trainer_state, self.args.checkpoints_total_limit,
                        self.best_weights, self.methods.state_dicts())
        if self.pusher is not None and (self.run.output_dir / "best").is_dir():
            from .hub import model_card

            self.pusher.push(self.run.output_dir / "best", self.run.output_dir / "runs", model_card(self.summary()),
                             [], f"Checkpoint at step {trainer_state['global_step']}", background=True)

    def summary(self, test_metrics: dict | None = None) -> dict:
        """The run in brief: model, selection, validation and test metrics, data set, command, hardware, methods."""
        best = next((h for h in self.state["history"] if h["epoch"] == self.state["best_epoch"]), None)
        return {
            "model_name": self.run.model_name, "selection_metric": self.args.selection_metric,
            "starting_checkpoint": start.record() if (start := self.run.starting_checkpoint) else None,
            "best_epoch": self.state["best_epoch"], "methods": self.methods.names(), **self.methods.record(),
            "validation_metrics": best["metrics"] if best else None, "test_metrics": test_metrics,
            "dataset": {**dataclasses.asdict(self.run.info),
                        "license_id": "cc-by-4.0" if self.run.info.source == "medmnist" else "other"}, "command": self.command,
            "hardware": self.hardware, "wall_clock_seconds": self.run.wall_clock(),
            "training_speed": self.training_speed(),
        }

    def training_speed(self) -> dict:
        """Images and steps (training batches) per second on this process's run, without its first logging window,
        whose time goes to warm-up and, with --torch_compile, compilation (its seconds are given apart); None when
        the run logged one window only (fewer than 2 × --logging_steps updates, or one short epoch)."""
        images, steps, seconds = (self.speed[key] for key in ("images", "steps", "seconds"))
        return {"images_per_second": images / seconds if seconds else None,
                "steps_per_second": steps / seconds if seconds else None,
                "first_window_seconds": self.speed["first_window_seconds"]}

    def test(self) -> dict | None:
        """The best model (chosen on validation) on the test split, once; None with --skip_test or off the main
        process."""
        run, accelerator = self.run, self.accelerator
        accelerator.unwrap_model(run.model).load_state_dict(self.best_weights)
        if self.args.skip_test:
            return None
        with eager():
            scores, labels = metrics.predict(run.model, run.test_split, run.eval_transform, accelerator,
                                             self.args.per_device_eval_batch_size, run.info.task, desc="Testing",
                                             loader=self.test_loader, flip_averaging=self.args.flip_averaging)
        if not accelerator.is_main_process:
            return None
        return metrics.compute_metrics(scores, labels, run.info.task, run.info.label_names, seed=self.args.seed)

    def finish(self, config: dict) -> None:
        """Test once, write all_results.json, report, and push the final model with its card."""
        test_metrics = self.test()
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(self.run.model)
            summary = self.summary(test_metrics)
            results = metrics.to_json_safe({
                **summary, "validation_history": self.state["history"], "config": config,
                "model_config": unwrapped.config.to_dict(),
                "num_parameters": sum(p.numel() for p in unwrapped.parameters()),
                "global_step": self.state["global_step"]})
            write_all_results(self.run.output_dir, results)
            if self.writer is not None:  # the HParams dashboard's figures for this run: all_results.json's
                end_hparams_session(self.writer, results, self.state["global_step"])
            if test_metrics is not None:
                logger.info("\n" + metrics.format_report(test_metrics,
                                                         title=f"Test split, best epoch {self.state['best_epoch']}"))
        self.accelerator.wait_for_everyone()  # everything local is written; the push below may fail on its own
        if self.pusher is not None:
            from .hub import model_card

            (self.run.output_dir / "best" / "README.md").write_text(model_card(summary))
            write_manifest(self.run.output_dir / "best")  # the card is part of the folder from now on
            self.pusher.push(self.run.output_dir / "best", self.run.output_dir / "runs", model_card(summary),
                             [self.run.output_dir / "all_results.json"], "End of training", background=False)
