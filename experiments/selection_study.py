#!/usr/bin/env python
"""Which validation rule picks the best checkpoint? An honest estimate from runs that saved every epoch's predictions.

    python experiments/selection_study.py runs/cv-selection/breastmnist-vit_lsa/fold{0,1,2,3,4} \
        --output results/selection_study_breastmnist.json

train.py keeps as `best` the epoch with the highest validation AUC (`--selection_metric auc`), and the results table
reports that epoch's test figures. On a small validation split (BreastMNIST: 78 images) that maximum over 100 noisy
epochs is partly luck: the epoch it picks is on average worse on new images than its validation figure says. This
script measures how each rule of `--selection_metric` (auc, acc, loss, last) does on images it did not choose on.
Each run (typically a cross-validation fold, trained with `--save_validation_predictions`) held out a split and saved
its predictions on it every epoch. The split is cut at random into two class-stratified halves, many times: each rule
picks its epoch on one half (as train.py would: the first epoch with the best value) and is scored (ACC and AUC) on
the other, and then the other way round. A run's figure for a rule is the mean over all cuts; the runs' figures are
then compared rule against rule, paired run by run, with a 95% t-interval (`--reference`, default auc).

The two halves are each about as large as BreastMNIST's official validation split when the runs are 5-fold
cross-validation folds of its 624 train + validation images (~125 held out, ~62 a half), so the noise the rules face
is the one they face in the results runs. The test split is never read.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics import logits_to_scores, read_epoch_predictions  # noqa: E402
from metrics.modules.medmnist_definitions import (  # noqa: E402
    MULTI_LABEL, auc_columns, check_inputs, get_acc, get_auc, predict_labels)
from run_results import mean_std_ci  # noqa: E402
from training.optimization import validation_loss  # noqa: E402
from training.run_records import RUN_CONFIG, read_run_config  # noqa: E402

RULES = ("auc", "acc", "loss", "last")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="Run folders trained with --save_validation_predictions.")
    parser.add_argument("--splits", type=int, default=200, help="Random half-splits of each run's held-out images.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random half-splits.")
    parser.add_argument("--reference", choices=RULES, default="auc", help="The rule the others are compared with.")
    parser.add_argument("--output", type=Path, default=None, help="Write the figures here (JSON).")
    args = parser.parse_args(argv)
    if args.splits < 1:
        parser.error(f"--splits must be at least 1, got {args.splits}.")
    return args


def run_task(run: Path) -> str:
    """The MedMNIST task of a run, from its run_config.json (written by train.py)."""
    if not (run / RUN_CONFIG).is_file():
        raise SystemExit(f"selection_study.py: error: {run} has no run_config.json; is it a train.py output folder?")
    from data import medmnist_info

    return medmnist_info(read_run_config(run)["dataset"]).task


def stratified_halves(labels: np.ndarray, task: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of 0..N-1; for single-label tasks each class is split in two (odd counts alternate)."""
    if task == MULTI_LABEL:
        order = rng.permutation(len(labels))
        return np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    flat = labels.reshape(-1)
    first, second = [], []
    for k, c in enumerate(np.unique(flat)):
        members = rng.permutation(np.flatnonzero(flat == c))
        cut = (len(members) + (k % 2)) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def acc_by_epoch(scores: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """(E,) medmnist ACC of every epoch's (N, K) scores at once: `get_acc`, vectorised over epochs."""
    correct = np.stack([predict_labels(s, task) for s in scores]) == labels[None]
    return correct.reshape(len(scores), len(labels), -1).mean(axis=(1, 2))


def auc_by_epoch(scores: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """(E,) medmnist AUC of every epoch at once: `get_auc` (the mean one-vs-rest ROC AUC over its columns) through
    the Mann-Whitney rank sum, ties counted half, as scikit-learn's; NaN where a column has one class only. ~100×
    faster than 100 scikit-learn calls, which the study would make 400 times a run."""
    truth = auc_columns(scores[0], labels, task)[0].astype(bool)
    columns = np.stack([auc_columns(s, labels, task)[1] for s in scores])  # (E, N, C)
    positives, negatives = truth.sum(axis=0), (~truth).sum(axis=0)
    ranks = rankdata(columns, axis=1)
    rank_sums = np.einsum("enc,nc->ec", ranks, truth.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (rank_sums - positives * (positives + 1) / 2) / (positives * negatives)
    aucs[:, (positives == 0) | (negatives == 0)] = np.nan
    return aucs.mean(axis=1)


def pick_epoch(rule: str, scores: np.ndarray, labels: np.ndarray, losses: np.ndarray, task: str) -> int:
    """The epoch index train.py's `--selection_metric rule` would keep, seeing only these images: the first epoch
    with the highest ACC / AUC (an undefined AUC never wins) or the lowest loss; `last` the final one."""
    if rule == "last":
        return len(scores) - 1
    if rule == "loss":
        return int(np.argmin(losses.mean(axis=1)))
    values = (auc_by_epoch if rule == "auc" else acc_by_epoch)(scores, labels, task)
    values = np.where(np.isnan(values), -np.inf, values)
    if rule == "auc":  # near-ties: decide with scikit-learn's own figures, as train.py does
        near = np.flatnonzero(values >= values.max() - 1e-9)
        if len(near) > 1:
            exact = np.array([get_auc(scores[e], labels, task) for e in near])
            return int(near[np.argmax(np.where(np.isnan(exact), -np.inf, exact))])
    return int(np.argmax(values))


def study_run(run: Path, splits: int, seed: int) -> dict:
    """Each rule's ACC / AUC on the half it did not choose on, averaged over `splits` random cuts (both ways)."""
    task = run_task(run)
    epochs, logits, labels = read_epoch_predictions(run / "validation_predictions")
    scores = np.stack([logits_to_scores(x, task) for x in logits])
    labels = check_inputs(scores[0], labels, task)[1]  # (N,) class indices, or (N, L) for multi-label
    losses = np.stack([validation_loss(x, labels, task == MULTI_LABEL, per_sample=True) for x in logits])  # (E, N)
    rng = np.random.default_rng(seed)
    chosen = {rule: [] for rule in RULES}
    figures = {rule: {"acc": [], "auc": []} for rule in RULES}
    for _ in range(splits):
        halves = stratified_halves(labels, task, rng)
        for pick, score in (halves, halves[::-1]):
            for rule in RULES:
                e = pick_epoch(rule, scores[:, pick], labels[pick], losses[:, pick], task)
                chosen[rule].append(int(epochs[e]))
                figures[rule]["acc"].append(get_acc(scores[e, score], labels[score], task))
                figures[rule]["auc"].append(get_auc(scores[e, score], labels[score], task))
    return {
        "run": str(run), "task": task, "epochs": int(len(epochs)), "held_out_images": int(len(labels)),
        "rules": {rule: {"acc": float(np.nanmean(figures[rule]["acc"])), "auc": float(np.nanmean(figures[rule]["auc"])),
                         "mean_chosen_epoch": float(np.mean(chosen[rule]))} for rule in RULES},
    }


def compare(runs: list[dict], reference: str) -> dict:
    """Over runs: each rule's mean ± std and its paired difference from `reference` with a 95% t-interval."""
    summary = {}
    for rule in RULES:
        entry = {}
        for metric in ("acc", "auc"):
            values = [r["rules"][rule][metric] for r in runs]
            entry[metric] = mean_std_ci(values)
            if rule != reference and len(runs) > 1:
                entry[f"{metric}_minus_{reference}"] = mean_std_ci(
                    [v - r["rules"][reference][metric] for v, r in zip(values, runs)])
        entry["mean_chosen_epoch"] = statistics.fmean(r["rules"][rule]["mean_chosen_epoch"] for r in runs)
        summary[rule] = entry
    return summary


def markdown(summary: dict, reference: str, n: int) -> str:
    def interval(stat):
        lo, hi = stat["ci95"]
        return f"{stat['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    lines = [f"| rule | ACC on the other half | AUC on the other half | mean epoch chosen | ACC − {reference} | "
             f"AUC − {reference} |", "| --- | --- | --- | --- | --- | --- |"]
    for rule, entry in summary.items():
        diff = [interval(entry[f"{m}_minus_{reference}"]) if f"{m}_minus_{reference}" in entry else ""
                for m in ("acc", "auc")]
        lines.append(f"| {rule} | {entry['acc']['mean']:.4f} ± {entry['acc']['std']:.4f} | {entry['auc']['mean']:.4f} "
                     f"± {entry['auc']['std']:.4f} | {entry['mean_chosen_epoch']:.1f} | {diff[0]} | {diff[1]} |")
    return "\n".join(lines) + f"\n\n(mean ± std over {n} runs; differences paired run by run, 95% t-interval.)"


def main(argv=None):
    args = parse_args(argv)
    runs = []
    for run in args.runs:
        try:
            runs.append(study_run(run, args.splits, args.seed))
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"selection_study.py: error: {run}: {error}")
        print(f"{run}: " + ", ".join(f"{rule} {v['acc']:.4f} / {v['auc']:.4f} (epoch {v['mean_chosen_epoch']:.0f})"
                                     for rule, v in runs[-1]["rules"].items()), flush=True)
    summary = compare(runs, args.reference)
    print(markdown(summary, args.reference, len(runs)))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"command": "python experiments/selection_study.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "splits": args.splits, "seed": args.seed,
            "reference": args.reference, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
