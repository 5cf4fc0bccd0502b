"""`predict`: the one distributed inference loop, shared by evaluate.py and train.py's validation."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .compute import logits_to_scores
from .flip_averaging import flip_averaged_logits


def predict(
    model: torch.nn.Module,
    split,
    transform,
    accelerator,
    batch_size: int,
    task: str,
    *,
    desc: str = "Predicting",
    return_logits: bool = False,
    loader=None,
    flip_averaging: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores and labels of every sample of `split`, each counted exactly once, on every process.

    Args:
        model: a classifier returning `.logits` (plain or prepared by `accelerator`); it runs in eval mode under
            `torch.no_grad()` and `accelerator.autocast()`, and gets its previous train/eval mode back afterwards.
        split: a `data.DeviceSplit` (`len(split)`, `split.batch(indices) -> (uint8 images, labels)`).
        transform: a `data.BatchTransform`; called as `transform(images, train=False)`.
        accelerator: the `Accelerator`; each process runs its share of an index `DataLoader` it prepared.
        batch_size: batch size per process.
        task: MedMNIST task string, selects softmax or sigmoid (`logits_to_scores`).
        desc: label of the progress bar (shown on the local main process only).
        return_logits: also return the float32 logits (e.g. for a validation loss).
        loader: an index loader over `split` already prepared by `accelerator` (shuffle off). Pass one when
            predicting repeatedly (every epoch): each `accelerator.prepare` registers a loader for `save_state`.
        flip_averaging: test-time flip averaging: each image's logits are the mean of its own and its left-right
            mirror image's (`metrics.flip_averaging`; one forward pass over both, twice the cost). Off: the logits of
            the images as given.

    Returns:
        (scores, labels[, logits]) as NumPy arrays in the split's order, identical on all processes:
        `accelerator.gather_for_metrics` drops the samples the sampler repeats to even out the last batches, and the
        gathered sample indices are checked to be exactly 0..N-1 (a RuntimeError otherwise).
    """
    from data import index_loader  # late import: the metrics themselves do not need the data package

    num_samples = len(split)
    if loader is None:
        loader = accelerator.prepare(index_loader(num_samples, batch_size))
    gathered = {"indices": [], "logits": [], "labels": []}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for indices in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process):
                images, labels = split.batch(indices)
                with accelerator.autocast():
                    pixel_values = transform(images, train=False)
                    logits = (flip_averaged_logits(model, pixel_values) if flip_averaging
                              else model(pixel_values=pixel_values).logits)
                batch = accelerator.gather_for_metrics((indices, logits.float(), labels))
                for key, value in zip(("indices", "logits", "labels"), batch):
                    gathered[key].append(value.cpu())
    finally:
        model.train(was_training)

    indices, logits, labels = (torch.cat(gathered[key]).numpy() for key in ("indices", "logits", "labels"))
    order = np.argsort(indices, kind="stable")
    if not np.array_equal(indices[order], np.arange(num_samples)):
        raise RuntimeError(
            f"Distributed inference returned {len(indices)} predictions for {num_samples} samples, not each sample "
            "exactly once; is the index loader prepared with `accelerator.prepare`?"
        )
    logits, labels = logits[order], labels[order]
    scores = logits_to_scores(logits, task)
    return (scores, labels, logits) if return_logits else (scores, labels)
