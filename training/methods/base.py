"""The interface every training method implements, and the list that calls them in order.

A training method changes how a model is trained without the training loop knowing it by name. It declares its own
command-line arguments (a dataclass, one `HfArgumentParser` group), is built from the parsed arguments (or stays
off), and takes part through hooks, each a no-op unless it overrides it:

    check(run)                       refuse a setting that cannot work, before anything is written (ValueError)
    resume_stage(checkpoint, state)  continue the method's own stage from a checkpoint that stage wrote
    before_training(run)             a stage before the supervised loop, e.g. masked-autoencoder pre-training
    setup(run)                       once the model is prepared: build what the method keeps (a teacher, an average)
    trainable_modules()              extra modules trained with the model (in the optimizer, never in the saved model)
    on_batch(batch)                  per batch, before the forward pass: e.g. a teacher's logits into batch.extras
    loss(loss, outputs, batch)       the batch's loss with the method's terms added or combined
    after_backward(step)             after the gradient: e.g. SAM's second pass (`step.backward_again()`)
    after_update(model)              after each optimizer update: e.g. an exponential moving average
    evaluated_model(model)           the model that is validated, selected and saved (the average, for EMA)
    state_dict() / load_state_dict() what a checkpoint must hold to resume exactly: tensors only, never pickles
    log_start(accelerator, writer, to_pixels)  what to show once the trackers are open (losses, pictures)
    record()                         what the run's results record (e.g. the teacher, the pre-training losses)

A checkpoint written by a method's own stage (before the supervised loop) carries `"stage": <the method's name>` in
its trainer state; resuming it hands it to that method's `resume_stage`.

Methods run in the order they are listed; `loss` folds through them in that order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import torch
from torch import nn


@dataclasses.dataclass
class Batch:
    """One training batch as the methods see it.

    pixel_values: the augmented (and mixed) model inputs; targets: what the task loss compares with (class indices,
    or soft targets after mixup / cutmix); labels: the unmixed labels; share: the factor the batch's mean loss is
    scaled by so that the processes' average is the global batch's mean (processes × this batch's size / the global
    batch's size: 1.0 but for the last batch of an epoch on several processes); extras: what methods add for later
    hooks.
    """

    pixel_values: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    share: float = 1.0
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerStep:
    """What `after_backward` may use: the model, its optimizer, and a second forward + backward on the same batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    backward_again: Callable[[], torch.Tensor]


class TrainingMethod:
    """Base class of training methods (see the module docstring for the hooks).

    Subclasses set `name` (used in logs, checkpoints and results) and `arguments` (a dataclass whose fields become
    command-line arguments), and implement `from_arguments`.
    """

    name: ClassVar[str] = ""
    arguments: ClassVar[type | None] = None

    @classmethod
    def from_arguments(cls, args) -> TrainingMethod | None:
        """The method configured by the parsed arguments, or None when they leave it off."""
        raise NotImplementedError

    def check(self, run) -> None:
        pass

    def resume_stage(self, checkpoint, state: dict) -> None:
        raise ValueError(f"{checkpoint} was written by the {self.name!r} stage, which cannot be resumed.")

    def before_training(self, run) -> None:
        pass

    def setup(self, run) -> None:
        pass

    def trainable_modules(self) -> list[nn.Module]:
        return []

    def on_batch(self, batch: Batch) -> None:
        pass

    def loss(self, loss: torch.Tensor, outputs, batch: Batch) -> torch.Tensor:
        return loss

    def after_backward(self, step: OptimizerStep) -> None:
        pass

    def after_update(self, model: nn.Module) -> None:
        pass

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        return model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def log_start(self, accelerator, writer, to_pixels) -> None:
        pass

    def record(self) -> dict:
        return {}


class MethodList:
    """The methods of a run, called in order; the training loop talks to this object only."""

    def __init__(self, methods: list[TrainingMethod]):
        self.methods = list(methods)

    def __iter__(self):
        return iter(self.methods)

    def __bool__(self) -> bool:
        return bool(self.methods)

    def names(self) -> list[str]:
        return [method.name for method in self.methods]

    def check(self, run) -> None:
        for method in self.methods:
            method.check(run)

    def by_name(self, name: str) -> TrainingMethod | None:
        return next((method for method in self.methods if method.name == name), None)

    def before_training(self, run) -> None:
        for method in self.methods:
            method.before_training(run)

    def setup(self, run) -> None:
        for method in self.methods:
            method.setup(run)

    def trainable_modules(self) -> list[nn.Module]:
        return [module for method in self.methods for module in method.trainable_modules()]

    def on_batch(self, batch: Batch) -> None:
        for method in self.methods:
            method.on_batch(batch)

    def loss(self, loss: torch.Tensor, outputs, batch: Batch) -> torch.Tensor:
        for method in self.methods:
            loss = method.loss(loss, outputs, batch)
        return loss

    def after_backward(self, step: OptimizerStep) -> None:
        for method in self.methods:
            method.after_backward(step)

    def after_update(self, model: nn.Module) -> None:
        for method in self.methods:
            method.after_update(model)

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        for method in self.methods:
            model = method.evaluated_model(model)
        return model

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """{method name: its tensors}, for the methods that keep any."""
        return {method.name: state for method in self.methods if (state := method.state_dict())}

    def load_state_dicts(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for method in self.methods:
            if method.name in states:
                method.load_state_dict(states[method.name])

    def log_start(self, accelerator, writer, to_pixels) -> None:
        for method in self.methods:
            method.log_start(accelerator, writer, to_pixels)

    def record(self) -> dict:
        record = {}
        for method in self.methods:
            record.update(method.record())
        return record
