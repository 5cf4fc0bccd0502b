#!/usr/bin/env python
"""Does test-time flip averaging help? Each cross-validation fold's saved models on their own held-out fold.

    python experiments/flip_averaging.py runs/cv/breastmnist-vit_conv_lsa-2_layers

For every `fold<i>` of a `experiments/cross_validate.py` setting, loads `best` and `last`, rebuilds the fold's
held-out images exactly as training did (`run_config.json`: data set, folds, fold, data folder) and computes their
validation ACC / AUC twice: as trained, and with the evaluation's flip averaging on (`metrics.predict(...,
flip_averaging=True)`: each image and its mirror image, logits averaged). Prints both per fold and the mean ± std
over folds of the difference. The test split is never read, so the answer can choose a recipe.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's own modules, when run as a script
import data  # noqa: E402
import metrics  # noqa: E402
from models.checkpoint_fit import load_for_inference  # noqa: E402
from training.run_records import RUN_CONFIG, read_run_config, run_split  # noqa: E402


def held_out_fold(run_dir: Path, accelerator: Accelerator, data_dir: str | None = None):
    """(DeviceSplit of the fold's held-out images, MedMNIST info) as `train.py --cross_validation_fold` saw them.
    `data_dir`: the npz folder, if not the one run_config.json names (a relative one there is relative to the folder
    training was started from)."""
    config = read_run_config(run_dir)
    _, folds, fold, split_seed = run_split(config)
    if not folds:
        sys.exit(f"{run_dir} is not a cross-validation fold run (run_config.json has no cross_validation_folds): "
                 "this check must not read the official validation or test split.")
    dataset = data.load_medmnist(config["dataset"], size=config["image_size"], data_dir=data_dir or config["data_dir"],
                                 verify_checksum=not config.get("no_verify_checksum", False))
    dataset = data.cross_validation_split(dataset, folds, fold, split_seed=split_seed)  # the run's own partition
    return data.DeviceSplit.from_dataset(dataset["validation"], accelerator.device), data.medmnist_info(dataset)


def fold_metrics(checkpoint: Path, split, info, accelerator: Accelerator) -> dict[bool, tuple[float, float]]:
    """{flip: (ACC, AUC)} of one saved model on `split`, without and with test-time flip averaging."""
    loaded = load_for_inference(str(checkpoint), info)
    transform = data.BatchTransform.for_evaluation(loaded.image_size, loaded.mean, loaded.std).to(accelerator.device)
    model = loaded.model.to(accelerator.device)  # the split's images live there (a GPU when there is one)
    results = {}
    for flip in (False, True):
        scores, labels = metrics.predict(model, split, transform, accelerator, 512, info.task,
                                         desc=f"{checkpoint.parent.name}/{checkpoint.name}, flip {flip}",
                                         flip_averaging=flip)
        computed = metrics.compute_metrics(scores, labels, info.task, bootstrap_samples=0)
        results[flip] = (computed["acc"], computed["auc"])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting_dir", type=Path, help="A cross_validate.py setting folder with fold0, fold1, ...")
    parser.add_argument("--data_dir", default=None,
                        help="The folder with the official npz files, if not the runs' own data_dir (which, when "
                             "relative, is relative to the folder the runs were started from).")
    args = parser.parse_args(argv)
    folds = sorted(args.setting_dir.glob(f"fold*/{RUN_CONFIG}"))
    if not folds:
        sys.exit(f"No fold<i>/run_config.json under {args.setting_dir}: give a cross_validate.py setting folder, "
                 "e.g. runs/cv/<name>.")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rows = []
    print("fold | checkpoint | ACC / AUC as trained | with flip averaging")
    for config_path in folds:
        split, info = held_out_fold(config_path.parent, accelerator, args.data_dir)
        for which in ("best", "last"):
            result = fold_metrics(config_path.parent / which, split, info, accelerator)
            rows.append({"fold": config_path.parent.name, "checkpoint": which, "as_trained": result[False],
                         "flipped": result[True]})
            print(f"{config_path.parent.name} | {which} | {result[False][0]:.4f} / {result[False][1]:.4f} | "
                  f"{result[True][0]:.4f} / {result[True][1]:.4f}", flush=True)
    for which in ("best", "last"):
        acc, auc = ([row["flipped"][k] - row["as_trained"][k] for row in rows if row["checkpoint"] == which]
                    for k in (0, 1))
        spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"{which}: flip − as trained over {len(acc)} folds: ACC {statistics.fmean(acc):+.4f} ± "
              f"{spread(acc):.4f}, AUC {statistics.fmean(auc):+.4f} ± {spread(auc):.4f}")
    return rows

if __name__ == "__main__":
    main()
