"""K-fold cross-validation on MedMNIST's training + validation images, for choosing recipes on more than one small
validation split.

BreastMNIST's official validation split has 78 images: one run's validation AUC moves by ±0.05 with the random seed
alone, so settings that differ by less cannot be told apart on it. Pooling train + validation (624 images) and
rotating a held-out fold through all of them lets every image be a validation image once. The test split is not
part of any fold: it is never used for selection.

    folds = cross_validation_split(load_medmnist("breastmnist"), num_folds=5, fold=0)
    folds["train"], folds["validation"], folds["test"]  # 4/5 of train + val, the other 1/5, the official test split

Folds are stratified by class (single-label data sets) and fixed by `split_seed`, independent of the training seed,
so runs with different seeds or recipes see the same folds.
"""

from __future__ import annotations

import datasets
import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold


def cross_validation_split(
    dataset_dict: datasets.DatasetDict, num_folds: int, fold: int, split_seed: int = 0
) -> datasets.DatasetDict:
    """`train` + `validation` pooled and cut into `num_folds` folds; fold `fold` (0-based) becomes `validation`, the
    others `train`; `test` is passed through untouched.

    Raises:
        ValueError: `num_folds` < 2, `fold` outside [0, num_folds), or more folds than a class has images.
    """
    if num_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {num_folds}.")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold {fold} does not exist: with {num_folds} folds, pick a fold in 0..{num_folds - 1}.")
    pooled = datasets.concatenate_datasets([dataset_dict["train"], dataset_dict["validation"]])
    labels = np.asarray(pooled["label"])
    if isinstance(pooled.features["label"], datasets.ClassLabel):
        counts = np.bincount(labels, minlength=pooled.features["label"].num_classes)
        smallest = int(counts[counts > 0].min())
        if smallest < num_folds:
            raise ValueError(f"{num_folds} folds need at least {num_folds} images of every class in train + "
                             f"validation; the rarest class has {smallest}. Use --cross_validation_folds "
                             f"{max(2, smallest)} or fewer.")
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=split_seed)
    else:  # multi-label: no single class to stratify on
        splitter = KFold(n_splits=num_folds, shuffle=True, random_state=split_seed)
    train_indices, held_out = list(splitter.split(np.zeros(len(labels)), labels if labels.ndim == 1 else None))[fold]
    return datasets.DatasetDict({
        "train": pooled.select(train_indices),
        "validation": pooled.select(held_out),
        "test": dataset_dict["test"],
    })
