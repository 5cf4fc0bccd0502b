"""The optimizer, the learning-rate schedule and the losses of supervised training."""

import torch
import torch.nn.functional as F
from transformers import get_scheduler


def fused_optimizer_pays(accelerator) -> bool:
    """Whether the optimizer should run torch's fused kernel (`fused=True`): on accelerators, where the per-tensor
    kernel launches of the default (foreach) update cost more than the update itself, and in mixed precision.

    Not on a CPU in fp32: there the fused update rounds differently in the last bit (measured: parameters 1.5e-8
    apart after 20 AdamW steps) and would make fp32 runs differ from the runs made before it, for about 1% of the
    step (vit_lsa's 0.67 M parameters: 1.2-1.3 ms a step fused against 3.7-3.8 ms foreach, 2-core Xeon).
    """
    return accelerator.device.type != "cpu" or accelerator.mixed_precision != "no"


def build_optimizer(args, *modules: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """`args.optimizer` (adamw, adam or sgd) at `args.learning_rate` over the modules' trainable parameters, in two
    groups: with `args.weight_decay`, and without it for biases, norms and LSA temperatures (1-D), position
    embeddings and the CLS token. `fused`: torch's fused kernel instead of the default foreach update (see
    `fused_optimizer_pays`)."""
    no_decay = lambda name, p: p.ndim < 2 or name.endswith(("position_embeddings", "cls_token"))  # noqa: E731
    grouped = {}
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                grouped.setdefault(no_decay(name, p), []).append(p)
    groups = [{"params": grouped[skip_decay], "weight_decay": 0.0 if skip_decay else args.weight_decay,
               "lr": args.learning_rate} for skip_decay in sorted(grouped)]
    kernel = {"fused": True} if fused else {}
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum, **kernel)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, lr=args.learning_rate, **kernel)
    return torch.optim.AdamW(groups, lr=args.learning_rate, **kernel)


def build_scheduler(name: str, optimizer, warmup_steps: int, total_steps: int, num_processes: int = 1):
    """transformers' schedule `name`; accelerate steps a prepared scheduler once per process per update, hence the
    factor `num_processes`."""
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps * num_processes,
                         num_training_steps=total_steps * num_processes)


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
