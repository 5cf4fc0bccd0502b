"""Per-epoch validation predictions on disk (`train.py --save_validation_predictions`), for studies that need more
than the logged metrics: which epoch a selection rule would have picked on part of the split, and how that epoch
scores on the rest (`experiments/selection_study.py`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FOLDER_NAME = "validation_predictions"
_FILE = re.compile(r"epoch_(\d+)\.npz")


def write_epoch_predictions(folder: str | Path, epoch: int, logits: np.ndarray, labels: np.ndarray) -> Path:
    """Write one epoch's validation logits (float32, (N, K), in the split's order) and labels to
    `folder/epoch_XXX.npz`; atomically (a temporary name, then a rename), so a stopped run leaves no half file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{int(epoch):03d}.npz"
    partial = folder / f".epoch_{int(epoch):03d}.partial.npz"
    np.savez_compressed(partial, logits=np.asarray(logits, dtype=np.float32), labels=np.asarray(labels))
    partial.replace(path)
    return path


def read_epoch_predictions(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every epoch written to `folder`: (epochs (E,), logits (E, N, K), labels), epochs in increasing order.

    Raises FileNotFoundError if there are none and ValueError if the epochs do not share one split (their labels or
    shapes differ): the files then come from different runs."""
    folder = Path(folder)
    files = sorted((int(m.group(1)), p) for p in folder.glob("epoch_*.npz") if (m := _FILE.fullmatch(p.name)))
    if not files:
        raise FileNotFoundError(f"No epoch_*.npz in {folder}: was the run trained with --save_validation_predictions?")
    epochs, logits, labels = [], [], None
    for epoch, path in files:
        with np.load(path) as data:
            if labels is None:
                labels = data["labels"]
            elif not np.array_equal(labels, data["labels"]) or data["logits"].shape != logits[0].shape:
                raise ValueError(f"{path} holds predictions for another split than {files[0][1]}: one run per folder.")
            epochs.append(epoch)
            logits.append(data["logits"])
    return np.asarray(epochs), np.stack(logits), labels
