"""Training methods as plug-ins: each declares its arguments, and the training loop calls its hooks (`base`).

To add one: subclass `TrainingMethod` in a module of this folder, give it an arguments dataclass, and list it in
`METHODS`. Neither train.py nor the training loop changes.

| method | arguments | what it does |
| --- | --- | --- |
| `Distillation` | `--teacher_model_name_or_path` ... | mixes the loss with a loss against a trained teacher's logits |
| `MaskedAutoencoderPretraining` | `--mae_epochs` ... | pre-trains a ViT's encoder as a masked autoencoder first |
| `SharpnessAwareMinimization` | `--sam_rho` | applies the gradient at the worst nearby point (two passes) |
| `ExponentialMovingAverage` | `--ema_decay` | validates, selects and saves a moving average of the weights |
"""

from .base import Batch, MethodList, OptimizerStep, TrainingMethod
from .distillation import Distillation
from .ema import ExponentialMovingAverage
from .masked_autoencoder import MaskedAutoencoderPretraining
from .sam import SharpnessAwareMinimization

# In the order they act: the loss is distilled before anything looks at it; pre-training runs before everything.
METHODS: list[type[TrainingMethod]] = [
    MaskedAutoencoderPretraining, Distillation, SharpnessAwareMinimization, ExponentialMovingAverage]


def argument_groups(methods=None) -> list[type]:
    """The arguments dataclasses of the methods (each one `HfArgumentParser` group)."""
    return [method.arguments for method in (METHODS if methods is None else methods) if method.arguments]


def build_methods(args, methods=None) -> MethodList:
    """The methods that the parsed arguments switch on, in `METHODS` order (ValueError for a bad setting)."""
    built = [method.from_arguments(args) for method in (METHODS if methods is None else methods)]
    return MethodList([method for method in built if method is not None])


__all__ = ["METHODS", "Batch", "Distillation", "ExponentialMovingAverage", "MaskedAutoencoderPretraining", "MethodList",
           "OptimizerStep", "SharpnessAwareMinimization", "TrainingMethod", "argument_groups", "build_methods"]
