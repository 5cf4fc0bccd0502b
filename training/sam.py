"""Sharpness-aware minimisation (SAM; Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization"), the two-pass update that Chen et al. 2021 found to help Vision Transformers trained from scratch
on little data ("When Vision Transformers Outperform ResNets without Pretraining or Strong Data Augmentations").

One update: the gradient g at the weights w; step to the worst nearby point w + rho * g / ||g||; the gradient there
is the one the optimizer applies, back at w. In train.py:

    accelerator.backward(loss(w))
    perturbation = ascend(model.parameters(), rho)   # w -> w + e
    optimizer.zero_grad(); accelerator.backward(loss(w + e))
    descend(perturbation)                            # back to w exactly, keeping the gradient of w + e
    optimizer.step()

`||g||` is the global norm over all parameters; gradient scaling (fp16) cancels in g / ||g||.
"""

import torch


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
