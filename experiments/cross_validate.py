#!/usr/bin/env python
"""Compare training recipes by K-fold cross-validation on train + validation (never the test split).

    python experiments/cross_validate.py results/cross_validation_breastmnist.json shift_only \
        --train_args "--model vit_lsa --dataset breastmnist" --data_dir ../shared/data/medmnist --jobs 2

runs `accelerate launch train.py ... --cross_validation_folds K --cross_validation_fold i` for every fold (each to
`<runs_dir>/<name>/fold<i>`, skipped when already finished, `--jobs` at a time), then records the setting in the log:
each fold's search entry (best epoch, validation ACC / AUC at the best epoch and over the last 20 epochs, per-epoch
AUC; `experiments/search_log.py`) and the mean ± std over folds. It prints every setting of the log, with its
fold-by-fold difference from the log's first setting, and draws the mean validation AUC per epoch of each
(`<log>.png`).

Why: BreastMNIST's official validation split has 78 images, and one run's AUC on it moves by ±0.05 with the seed
alone. Five folds of ~125 images make every one of the 624 train + validation images a validation image once. The
last-20-epoch mean is the figure to compare: the best epoch's AUC is a maximum over 100 noisy values and favours
noisy settings.

`--collect_only` records finished folds without training; with no name it only prints the log and redraws the chart.

Seeds: one setting's figures move with `--seed` as much as settings differ, so a near miss is rerun with another
seed under another name. `--compare A,A_seed1 B,B_seed1` then pools each group: per fold the mean over its settings,
and the paired difference of those fold means (last-20-epoch AUC and ACC) with a 95% t-interval over folds.

Partitions: more seeds narrow the seed noise, not the spread that comes from which images share a fold (per-fold
differences with sds of 0.013–0.028 AUC on BreastMNIST). `--split_seed S` cuts the same images into other folds (train.py
`--cross_validation_split_seed`): repeated cross-validation runs a setting and its reference under several split
seeds, each under its own name, and `--compare A,A_split1 B,B_split1` pools them fold by fold as it pools seeds.
`--compare` and `--progress` refuse groups whose partitions differ, and a distilled fold run's teacher must come from
the same partition.

Stopping early: `--progress A,A_seed1 B,B_seed1` (read-only; A may still be running) pools the folds that every
setting has finished so far, as `--compare` does, and says whether the K-fold rule can still be met: the smallest
difference each remaining fold would need (all alike: for a given sum, equal values spread least, so if they cannot
pass, nothing can), or that no difference in [−1, 1] can lift the 95% interval above 0 any more. With two of five
folds at or below 0, however slightly, that point has come (the remaining three cannot raise the mean faster than the
spread), and the remaining folds' hours can go to the next candidate.

Distillation: each fold's student must learn from a teacher trained on that fold's training part (train.py refuses
any other, which has seen the held-out images): cross-validate the teacher first, then pass
`--teacher_model_name_or_path runs/cv/<teacher setting>/fold{fold}/best` in `--train_args`.
"""

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_results import ROOT, mean_std_ci, run_in_parallel  # noqa: E402
from search_log import search_entry  # noqa: E402
from training.run_records import ALL_RESULTS, read_all_results  # noqa: E402

FIGURES = ("validation_auc_last20_mean", "validation_acc_last20_mean", "validation_auc_at_best",
           "validation_acc_at_best")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="The cross-validation log (JSON) to add to; created when absent.")
    parser.add_argument("name", nargs="?", help="The setting's name (its runs go to <runs_dir>/<name>/fold<i>).")
    parser.add_argument("--train_args", default="", help="train.py arguments of the setting, e.g. '--model vit_lsa "
                                                         "--dataset breastmnist --augmentation seed'; {fold} becomes "
                                                         "the fold's index (e.g. --teacher_model_name_or_path "
                                                         "runs/cv/<teacher>/fold{fold}/best).")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="train.py --seed of every fold.")
    parser.add_argument("--split_seed", type=int, default=0,
                        help="train.py --cross_validation_split_seed of every fold: another partition into folds "
                             "(repeated cross-validation: run each setting under several, each under its own name, "
                             "and pool them with --compare / --progress, which pair only like partitions).")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "medmnist"))
    parser.add_argument("--runs_dir", default=str(ROOT / "runs" / "cv"))
    parser.add_argument("--launch", default=f"{shlex.quote(sys.executable)} -m accelerate.commands.launch "
                                            "--num_processes 1", help="How to start train.py.")
    parser.add_argument("--jobs", type=int, default=1, help="Folds at a time; each gets cpu_count // jobs threads.")
    parser.add_argument("--collect_only", action="store_true", help="Record the finished folds; train nothing.")
    parser.add_argument("--reference", default=None, help="The setting every other is compared with, fold by fold "
                                                          "(default: the log's first).")
    parser.add_argument("--compare", nargs=2, metavar=("SETTINGS", "REFERENCE_SETTINGS"),
                        help="Two comma-separated groups of the log's settings (e.g. one recipe run with --seed 0 "
                             "and --seed 1, and its reference likewise): prints the paired difference of their "
                             "per-fold means.")
    parser.add_argument("--progress", nargs=2, metavar=("SETTINGS", "REFERENCE_SETTINGS"),
                        help="Like --compare, over the folds every setting has finished so far (from the log, or "
                             "from <runs_dir>/<name>/fold<i> for a setting still running), and whether the "
                             "--folds-fold difference can still have its 95%% interval above 0. Trains nothing.")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}.")
    if args.name is not None and ("/" in args.name or not args.name.strip()):
        parser.error(f"the setting's name becomes a folder name: {args.name!r} must be non-empty without '/'.")
    return args


def fold_dir(args, fold: int) -> Path:
    return Path(args.runs_dir) / args.name / f"fold{fold}"


def fold_command(args, fold: int) -> list[str]:
    train_args = args.train_args.replace("{fold}", str(fold))  # e.g. each fold's own teacher
    return [*shlex.split(args.launch), str(ROOT / "train.py"), *shlex.split(train_args),
            "--data_dir", args.data_dir, "--seed", str(args.seed), "--cross_validation_folds", str(args.folds),
            "--cross_validation_fold", str(fold), "--cross_validation_split_seed", str(args.split_seed),
            "--output_dir", str(fold_dir(args, fold)), "--report_to", "none", "--checkpoints_total_limit", "1"]


def run_folds(args) -> list[str]:
    """Train every fold not finished yet; returns the failures' reports."""
    todo = [fold for fold in range(args.folds) if not (fold_dir(args, fold) / ALL_RESULTS).is_file()]
    specs = [(fold_command(args, fold), fold_dir(args, fold).with_suffix(".log"), f"{args.name}/fold{fold}")
             for fold in todo]
    return run_in_parallel([specs], args.jobs)


def setting_record(args) -> dict:
    """The setting's fold entries and their mean ± std; refuses folds of another K, fold, partition or test-evaluated
    runs."""
    folds = []
    for fold in range(args.folds):
        entry = search_entry(f"{args.name}/fold{fold}", fold_dir(args, fold))
        config = read_all_results(fold_dir(args, fold))["config"]
        if (config.get("cross_validation_folds"), config.get("cross_validation_fold")) != (args.folds, fold):
            raise ValueError(f"{fold_dir(args, fold)} is not fold {fold} of {args.folds} (its config says "
                             f"{config.get('cross_validation_fold')} of {config.get('cross_validation_folds')}).")
        if split_seed_of([entry]) != args.split_seed:
            raise ValueError(f"{fold_dir(args, fold)} was cut with --split_seed {split_seed_of([entry])}, not "
                             f"{args.split_seed}: another partition into folds; give the setting another name.")
        folds.append(entry)
    summary = {key: {"mean": statistics.fmean(f[key] for f in folds), "std": statistics.stdev(f[key] for f in folds)}
               for key in FIGURES}
    return {"name": args.name, "folds": args.folds, "command": folds[0]["command"], "resolved": folds[0]["resolved"],
            "summary": summary, "fold_runs": folds}


def paired_difference(setting: dict, reference: dict, key: str = "validation_auc_last20_mean") -> dict | None:
    """Mean ± std over folds of (setting − reference) fold by fold, and the mean's 95% t-interval: both saw the same
    folds, so the folds' own difficulty (0.74 to 0.79 AUC on BreastMNIST) cancels out. None when the fold counts or
    the partitions differ."""
    if setting["folds"] != reference["folds"] or split_seed_of(setting["fold_runs"]) != split_seed_of(
            reference["fold_runs"]):
        return None
    return mean_and_interval([run[key] - ref[key] for run, ref in zip(setting["fold_runs"], reference["fold_runs"])])


def split_seed_of(fold_runs: list[dict | None]) -> int:
    """The partition into folds (train.py --cross_validation_split_seed) a setting's fold runs were cut with; runs from
    before that option existed used 0, as do entries that do not record it."""
    seeds = {run.get("resolved", {}).get("cross_validation_split_seed", 0) for run in fold_runs if run is not None}
    if len(seeds) > 1:
        raise ValueError(f"{fold_runs[0]['name'].split('/')[0]}: its folds come from different partitions "
                         f"(split seeds {sorted(seeds)}).")
    return seeds.pop() if seeds else 0


def check_like_partitions(fold_runs: dict[str, list[dict | None]], names: list[str], reference_names: list[str],
                          option: str) -> None:
    """Pooling pairs fold i of one group with fold i of the other: both groups must hold the same partitions."""
    seeds, reference_seeds = ([split_seed_of(fold_runs[name]) for name in group] for group in (names, reference_names))
    if sorted(seeds) != sorted(reference_seeds):
        raise ValueError(f"{option}: the groups were cut into folds differently (split seeds {sorted(seeds)} against "
                         f"{sorted(reference_seeds)}); give each setting a reference run with the same --split_seed.")


def mean_and_interval(differences: list[float]) -> dict:
    """Mean ± std of per-fold differences and the mean's 95% t-interval (run_results' over seeds), with the folds'."""
    return {**mean_std_ci(differences), "per_fold": differences}


def group_differences(fold_runs: dict[str, list[dict]], names: list[str], reference_names: list[str],
                      folds: list[int], key: str) -> list[float]:
    """Per fold of `folds`, the mean of `names`' figure `key` minus the mean of `reference_names'`
    (`fold_runs`: each setting's per-fold entries)."""
    return [statistics.fmean(fold_runs[name][fold][key] for name in names)
            - statistics.fmean(fold_runs[name][fold][key] for name in reference_names) for fold in folds]


def pooled_difference(log: dict, names: list[str], reference_names: list[str]) -> dict[str, dict]:
    """Per fold, the mean of `names`' figures minus the mean of `reference_names'`, paired over folds: the figure of a
    recipe tried with several seeds (each seed a setting of the log) against its reference tried likewise.
    Returns {figure: mean_and_interval(...)} for the last-20-epoch AUC and ACC."""
    settings = {s["name"]: s for s in log["settings"]}
    missing = [name for name in names + reference_names if name not in settings]
    if missing:
        raise ValueError(f"--compare: {', '.join(missing)} not in the log; its settings: {', '.join(settings)}.")
    fold_counts = {settings[name]["folds"] for name in names + reference_names}
    if len(fold_counts) != 1:
        raise ValueError(f"--compare: the settings have different fold counts ({sorted(fold_counts)}); pool only "
                         "settings of the same K folds.")
    fold_runs = {name: settings[name]["fold_runs"] for name in names + reference_names}
    check_like_partitions(fold_runs, names, reference_names, "--compare")
    folds = list(range(fold_counts.pop()))
    return {key: mean_and_interval(group_differences(fold_runs, names, reference_names, folds, key))
            for key in ("validation_auc_last20_mean", "validation_acc_last20_mean")}


def pooled_lines(log: dict, names: list[str], reference_names: list[str]) -> list[str]:
    lines = [f"pooled: mean of {' + '.join(names)} − mean of {' + '.join(reference_names)}, per fold:"]
    for key, difference in pooled_difference(log, names, reference_names).items():
        low, high = difference["ci95"]
        lines.append(f"  {key}: {difference['mean']:+.4f} ± {difference['std']:.4f} [{low:+.4f}, {high:+.4f}]"
                     f" (folds {', '.join(f'{d:+.4f}' for d in difference['per_fold'])})")
    return lines


def lower_bound(differences: list[float]) -> float:
    """The lower end of the 95% t-interval of the differences' mean."""
    return mean_std_ci(differences)["ci95"][0]


def needed_on_each_remaining_fold(observed: list[float], folds: int, step: float = 1e-4) -> float | None:
    """The smallest difference x that each of the `folds - len(observed)` folds still to come must reach, all alike,
    for the `folds`-fold 95% interval to lie above 0; None when no x in [−1, 1] (the range of an AUC or ACC
    difference) does. Alike is the easiest way: for a given sum, equal values have the least spread, so when no
    common x passes no other values can."""
    remaining = folds - len(observed)
    if remaining <= 0:
        return None if lower_bound(observed) <= 0 else float("-inf")
    for k in range(round(2 / step) + 1):
        x = -1 + k * step
        if lower_bound(observed + [x] * remaining) > 0:
            return x
    return None


def fold_entries(log: dict, args, name: str) -> list[dict | None]:
    """A setting's per-fold entries: from the log when recorded there, else each finished fold from the runs folder
    (None for a fold not finished yet)."""
    for setting in log["settings"]:
        if setting["name"] == name:
            if setting["folds"] != args.folds:
                raise ValueError(f"--progress: {name} has {setting['folds']} folds in the log, not --folds "
                                 f"{args.folds}.")
            return setting["fold_runs"]
    run_dir = Path(args.runs_dir) / name
    if not run_dir.is_dir():
        raise ValueError(f"--progress: {name} is neither in the log nor a folder of {args.runs_dir}.")
    return [search_entry(f"{name}/fold{fold}", run_dir / f"fold{fold}")
            if (run_dir / f"fold{fold}" / ALL_RESULTS).is_file() else None for fold in range(args.folds)]


def progress_lines(log: dict, args, names: list[str], reference_names: list[str]) -> list[str]:
    """The pooled paired difference over the folds every setting has finished, and whether the rule can still pass."""
    entries = {name: fold_entries(log, args, name) for name in names + reference_names}
    check_like_partitions(entries, names, reference_names, "--progress")
    done = [fold for fold in range(args.folds) if all(entries[name][fold] is not None for name in entries)]
    lines = [f"progress: mean of {' + '.join(names)} − mean of {' + '.join(reference_names)}, folds finished by "
             f"all: {len(done)} of {args.folds} ({', '.join(f'fold{fold}' for fold in done) or 'none yet'})"]
    if not done:
        return lines
    for key in ("validation_auc_last20_mean", "validation_acc_last20_mean"):
        differences = group_differences(entries, names, reference_names, done, key)
        per_fold = ", ".join(f"{d:+.4f}" for d in differences)
        line = f"  {key}: mean {statistics.fmean(differences):+.4f} (folds {per_fold})"
        needed = needed_on_each_remaining_fold(differences, args.folds)
        if len(done) == args.folds:
            line += "; the 95% interval lies above 0" if needed is not None else "; the 95% interval reaches 0 or below"
        elif needed is None:
            line += ("; a 95% interval above 0 is no longer possible: no differences on the remaining folds can "
                     "give one")
        else:
            line += (f"; still possible: the {args.folds - len(done)} folds left need at least {needed:+.4f} each "
                     "(if alike)")
        lines.append(line)
    return lines


def summary_lines(log: dict, reference_name: str | None = None) -> list[str]:
    names = [s["name"] for s in log["settings"]]
    if reference_name is not None and reference_name not in names:
        raise ValueError(f"--reference {reference_name!r} is not a setting of the log; its settings: "
                         f"{', '.join(names)}.")
    reference = log["settings"][names.index(reference_name) if reference_name else 0]
    lines = ["setting | folds | val AUC, last 20 epochs | val ACC, last 20 | val AUC, best epoch | val ACC, best | "
             f"AUC last 20 − {reference['name']}'s, paired over folds [95% interval]",
             "--- | --- | --- | --- | --- | --- | ---"]
    for setting in log["settings"]:
        cells = [f"{setting['summary'][k]['mean']:.3f} ± {setting['summary'][k]['std']:.3f}" for k in FIGURES]
        difference = paired_difference(setting, reference) if setting is not reference else None
        cells.append(f"{difference['mean']:+.3f} ± {difference['std']:.3f} [{difference['ci95'][0]:+.3f}, "
                     f"{difference['ci95'][1]:+.3f}]" if difference else "")
        lines.append(" | ".join([setting["name"], str(setting["folds"]), *cells]))
    return lines


def draw_chart(log: dict, path: Path) -> None:
    """Mean validation AUC per epoch over the folds, one line per setting."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5 + 0.15 * max(0, len(log["settings"]) - 20)))
    axes = figure.add_subplot()
    for index, setting in enumerate(log["settings"]):
        curves = [run["validation_auc_per_epoch"] for run in setting["fold_runs"]]
        length = min(len(curve) for curve in curves)
        mean = [statistics.fmean(curve[epoch] for curve in curves) for epoch in range(length)]
        # matplotlib cycles 10 colours: the next ten settings get dashed lines, then dotted, so none look alike
        axes.plot(range(1, length + 1), mean, linestyle=("-", "--", ":")[index // 10 % 3], label=f"{setting['name']} "
                  f"(last 20: {setting['summary']['validation_auc_last20_mean']['mean']:.3f})")
    axes.set(xlabel="epoch", ylabel="validation AUC, mean over folds", title=f"{path.stem}: cross-validation")
    axes.grid(alpha=0.3)
    # beside the axes, not over the curves: a long log has more settings than the plot has empty corners
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def read_log(path: Path) -> dict:
    """The log, or an empty one when the file does not exist yet."""
    return json.loads(path.read_text()) if path.is_file() else {
        "what": "K-fold cross-validation on train + validation (experiments/cross_validate.py); no test split",
        "settings": []}


def main(argv=None):
    args = parse_args(argv)
    if args.progress:
        log = read_log(args.log)
        try:
            print("\n".join(progress_lines(log, args, *[group.split(",") for group in args.progress])))
        except ValueError as error:
            print(f"cross_validate.py: error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.name is not None and not args.collect_only:
        failures = run_folds(args)
        if failures:
            print("cross_validate.py: failed folds:\n  " + "\n  ".join(failures), file=sys.stderr)
            return 1
    # Read after training, not before: another setting's cross_validate.py may have written the log meanwhile.
    log = read_log(args.log)
    if args.name is not None:
        try:
            record = setting_record(args)
        except ValueError as error:
            print(f"cross_validate.py: error: {error}", file=sys.stderr)
            return 2
        known = [s["name"] for s in log["settings"]]
        if args.name in known:
            log["settings"][known.index(args.name)] = record
        else:
            log["settings"].append(record)
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps(log, indent=1) + "\n")
    if not log["settings"]:
        print(f"cross_validate.py: {args.log} records no setting yet; give a setting's name to run one.",
              file=sys.stderr)
        return 2
    try:
        print("\n".join(summary_lines(log, args.reference)))
        if args.compare:
            print("\n".join(pooled_lines(log, *[group.split(",") for group in args.compare])))
    except ValueError as error:
        print(f"cross_validate.py: error: {error}", file=sys.stderr)
        return 2
    draw_chart(log, args.log.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
