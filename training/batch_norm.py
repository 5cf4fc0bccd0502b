"""BatchNorm statistics over the global batch when several processes train one model.

With plain BatchNorm each process normalises with the statistics of its own part of the batch, so N processes
train a different model from 1 process with the same global batch. `synchronize_batch_norm` swaps every
`BatchNorm2d` for one that normalises with the statistics of the whole global batch: torch's `SyncBatchNorm` on
accelerators (its fused kernels need one), `GlobalBatchNorm2d` below elsewhere (CPU processes over gloo), which sums
the statistics with a differentiable all-reduce. The parameters and buffers keep their names: checkpoints and
saved models are the same as with plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

SYNC_BATCH_NORM_DEVICES = ("cuda", "xpu", "hpu")  # where torch's SyncBatchNorm runs


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of each process's input is the sum of all gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d` whose training statistics are those of the global batch over all processes.

    Two all-reduces per call (sum and count, then the sum of squared deviations: the two-pass variance, stable in
    fp32); their backward passes sum the gradients of the statistics over processes, as `SyncBatchNorm`'s do.
    Without an initialised process group of several processes, or in eval mode, it is plain `BatchNorm2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        local_count = x.new_full((1,), x.numel() / channels)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), local_count]))
        count = totals[-1]
        mean = totals[:channels] / count
        centred = x - mean.view(1, -1, 1, 1)
        variance = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            self._update_running_statistics(mean.detach(), variance.detach(), count.detach())
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred * scale.view(1, -1, 1, 1)
        return out + self.bias.view(1, -1, 1, 1) if self.affine else out

    @torch.no_grad()
    def _update_running_statistics(self, mean, variance, count) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = variance * count / (count - 1).clamp_min(1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def synchronize_batch_norm(model: nn.Module, device: torch.device) -> int:
    """Replace every `BatchNorm2d` of `model` in place by a synchronised one; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.BatchNorm2d:
                continue
            kind = nn.SyncBatchNorm if device.type in SYNC_BATCH_NORM_DEVICES else GlobalBatchNorm2d
            synced = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(parent, name, synced)
            replaced += 1
    return replaced
