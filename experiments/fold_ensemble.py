#!/usr/bin/env python
"""How good is an ensemble of cross-validation settings? Their fold models, logits averaged, on each held-out fold.

    python experiments/fold_ensemble.py runs/cv/breastmnist-cnn-default runs/cv/breastmnist-cnn-seed1 \
        runs/cv/breastmnist-cnn-seed2 --checkpoint best

For every fold, loads `<setting>/fold<i>/<checkpoint>` of each setting, rebuilds the fold's held-out images as
training did (`flip_averaging.held_out_fold`) and computes the validation ACC / AUC of each model and of the mean of
their logits: what `train.py --teacher_model_name_or_path A B C` hands its student as one teacher. Prints a row per
fold and the mean ± std over folds. The settings must be folds of the same split (data set and number of folds);
the test split is never read. (`best` was chosen on the same held-out images, so its figures are optimistic for
every model alike; `last` is not.)
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
from flip_averaging import held_out_fold  # noqa: E402
from models.checkpoint_fit import load_for_inference  # noqa: E402
from training.run_records import RUN_CONFIG, read_run_config, run_split  # noqa: E402


def split_of(fold_dir: Path) -> tuple:
    return run_split(read_run_config(fold_dir))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", type=Path, nargs="+", help="cross_validate.py setting folders (fold0, fold1, ...)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--data_dir", default=None, help="The npz folder, if not the runs' own (as flip_averaging).")
    args = parser.parse_args(argv)
    folds = sorted(path.parent.name for path in args.settings[0].glob(f"fold*/{RUN_CONFIG}"))
    if not folds:
        sys.exit(f"No fold<i>/run_config.json under {args.settings[0]}: give cross_validate.py setting folders.")
    for setting in args.settings:
        for fold in folds:
            if not (setting / fold / args.checkpoint).is_dir():
                sys.exit(f"{setting / fold / args.checkpoint} is missing: every setting needs the folds {folds}.")
            if split_of(setting / fold) != split_of(args.settings[0] / fold):
                sys.exit(f"{setting / fold} is {split_of(setting / fold)} (data set, folds, fold, split seed), but "
                         f"{args.settings[0] / fold} is {split_of(args.settings[0] / fold)}: an ensemble needs models "
                         "of the same fold, each of which never saw its held-out images.")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    names = [setting.name for setting in args.settings] + ["ensemble (mean logits)"]
    figures = {name: [] for name in names}  # name -> [(ACC, AUC) per fold]
    for fold in folds:
        split, info = held_out_fold(args.settings[0] / fold, accelerator, args.data_dir)
        all_logits = []
        for setting in args.settings:
            loaded = load_for_inference(str(setting / fold / args.checkpoint), info)
            transform = data.BatchTransform.for_evaluation(loaded.image_size, loaded.mean, loaded.std)
            transform = transform.to(accelerator.device)
            scores, labels, logits = metrics.predict(loaded.model.to(accelerator.device), split, transform,
                                                     accelerator, 512, info.task, return_logits=True,
                                                     desc=f"{setting.name}/{fold}")
            all_logits.append(torch.as_tensor(logits))
            computed = metrics.compute_metrics(scores, labels, info.task, bootstrap_samples=0)
            figures[setting.name].append((computed["acc"], computed["auc"]))
        mean_logits = torch.stack(all_logits).mean(dim=0)
        computed = metrics.compute_metrics(metrics.logits_to_scores(mean_logits, info.task), labels, info.task,
                                           bootstrap_samples=0)
        figures[names[-1]].append((computed["acc"], computed["auc"]))
        print(f"{fold}: " + "; ".join(f"{name} {figures[name][-1][0]:.4f} / {figures[name][-1][1]:.4f}"
                                       for name in names), flush=True)
    spread = (lambda values: statistics.stdev(values) if len(values) > 1 else 0.0)
    print(f"\nvalidation ACC / AUC of `{args.checkpoint}`, mean ± std over {len(folds)} folds:")
    for name in names:
        accs, aucs = zip(*figures[name])
        print(f"{name}: {statistics.fmean(accs):.4f} ± {spread(accs):.4f} / {statistics.fmean(aucs):.4f} ± "
              f"{spread(aucs):.4f}")
    return figures


if __name__ == "__main__":
    main()
