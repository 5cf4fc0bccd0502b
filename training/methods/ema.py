"""An exponential moving average of the weights (Polyak averaging; as in DeiT and timm's `ModelEmaV3`).

After every optimizer update the average moves towards the weights: avg <- decay * avg + (1 - decay) * weights
(buffers, such as BatchNorm's statistics, are averaged too). The average, not the raw weights, is what is validated,
selected, saved and tested. In checkpoints it is stored as a tensor file, like everything a checkpoint holds.
"""

import dataclasses

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .base import TrainingMethod


@dataclasses.dataclass
class EMAArguments:
    """Exponential moving average of the weights (training/methods/ema.py)."""

    _argument_group_name = "weight averaging"
    ema_decay: float = dataclasses.field(default=0.0, metadata={"help": (
        "Keep an exponential moving average of the weights with this decay per update, and validate, select and "
        "save it instead of the raw weights; 0 = off.")})


class ExponentialMovingAverage(TrainingMethod):
    """Keeps `torch.optim.swa_utils.AveragedModel` of the model and hands it out for evaluation."""

    name = "ema"
    arguments = EMAArguments

    def __init__(self, decay: float):
        self.decay = decay
        self.average: AveragedModel | None = None
        self.accelerator = None

    @classmethod
    def from_arguments(cls, args) -> "ExponentialMovingAverage | None":
        if not 0.0 <= args.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must lie in [0, 1) (0 = off), got {args.ema_decay}.")
        return cls(args.ema_decay) if args.ema_decay > 0 else None

    def setup(self, run) -> None:
        self.accelerator = run.accelerator
        self.average = AveragedModel(run.accelerator.unwrap_model(run.model),
                                     multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)

    def after_update(self, model) -> None:
        self.average.update_parameters(self.accelerator.unwrap_model(model))

    def evaluated_model(self, model):
        return self.average.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in self.average.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average.load_state_dict(state)
