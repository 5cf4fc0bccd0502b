"""Sharpness-aware minimisation (SAM; Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization"), the two-pass update that Chen et al. 2021 found to help Vision Transformers trained from scratch
on little data ("When Vision Transformers Outperform ResNets without Pretraining or Strong Data Augmentations").

One update: the gradient g at the weights w; step to the worst nearby point w + rho * g / ||g||; the gradient there
is the one the optimizer applies, back at w. In the training step (`SharpnessAwareMinimization.after_backward`):

    accelerator.backward(loss(w))
    perturbation = ascend(model.parameters(), rho)   # w -> w + e
    optimizer.zero_grad(); accelerator.backward(loss(w + e))
    descend(perturbation)                            # back to w exactly, keeping the gradient of w + e
    optimizer.step()

`||g||` is the global norm over all parameters; gradient scaling (fp16) cancels in g / ||g||.
"""

import dataclasses

import torch

from .base import OptimizerStep, TrainingMethod


@torch.no_grad()
def ascend(parameters, rho: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move each parameter by e = rho * grad / ||grad|| (global norm); return (parameter, its value before) pairs.

    A zero or non-finite gradient norm (an fp16 overflow step) moves nothing and returns [], so that the weights are
    never poisoned; the optimizer then sees the ordinary gradient.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return []
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
    if not torch.isfinite(norm) or norm == 0:
        return []
    scale = rho / norm
    perturbation = [(p, p.detach().clone()) for p in params]
    for p in params:
        p.add_((p.grad.float() * scale).to(p.dtype))
    return perturbation


@torch.no_grad()
def descend(perturbation: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Undo `ascend`: each parameter back to its exact value before (the gradients stay the perturbed point's)."""
    for p, before in perturbation:
        p.copy_(before)


@dataclasses.dataclass
class SharpnessAwareArguments:
    """Sharpness-aware minimisation (training/methods/sam.py)."""

    _argument_group_name = "sharpness-aware minimisation (two forward / backward passes per update)"
    sam_rho: float = dataclasses.field(default=0.0, metadata={"help": "SAM's radius; 0 = off."})


class SharpnessAwareMinimization(TrainingMethod):
    """Each update applies the gradient taken at the worst point within `rho` of the weights."""

    name = "sam"
    arguments = SharpnessAwareArguments

    def __init__(self, rho: float):
        self.rho = rho

    @classmethod
    def from_arguments(cls, args) -> "SharpnessAwareMinimization | None":
        if args.sam_rho < 0:
            raise ValueError(f"--sam_rho must be >= 0 (got {args.sam_rho}).")
        if args.sam_rho > 0 and args.gradient_accumulation_steps > 1:
            raise ValueError("--sam_rho needs the gradient of each whole batch: use it with "
                             "--gradient_accumulation_steps 1.")
        return cls(args.sam_rho) if args.sam_rho > 0 else None

    def after_backward(self, step: OptimizerStep) -> None:
        perturbation = ascend(step.model.parameters(), self.rho)
        step.optimizer.zero_grad()
        step.backward_again()
        descend(perturbation)
