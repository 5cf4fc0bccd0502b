#!/usr/bin/env python
"""Add finished validation-search runs (`train.py --skip_test`) to a search log such as
`results/search_breastmnist.json`: each run's command, resolved recipe, best epoch, validation ACC / AUC at the best
epoch and averaged over the last 20 epochs, wall-clock, and the per-epoch validation AUC.

    python experiments/search_log.py results/search_breastmnist.json J_seed1=runs/search/J-seed1 M_sam=runs/search/M-sam

A run that evaluated the test split is refused: a search must choose on validation only. `--discard_test` records
such runs anyway with their test figures dropped unread (`"test_discarded_unread": true`): for sweeps where every
run ended with its test evaluation (the GPU sweeps of device_session.sh: one prepared command, no time to rerun) and
the setting chosen on validation alone is the only one whose test figures are ever read. A name already in the log
is replaced where it stands. `--summary` then prints, for each setting (the resolved recipe without the seed), the
mean ± std over its seeds: one run's validation AUC on 78 BreastMNIST images moves by ±0.05 with the seed alone, so
settings are compared over seeds, never on one run.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's own modules, when run as a script
from training.run_records import ALL_RESULTS, read_all_results, with_current_names  # noqa: E402

RESOLVED_KEYS = ("augmentation", "config_overrides", "per_device_train_batch_size", "learning_rate", "weight_decay",
                 "label_smoothing", "num_train_epochs", "optimizer", "recipe", "sam_rho", "ema_decay", "translate",
                 "distillation_type", "distillation_alpha", "distillation_temperature", "relative_localization_weight",
                 "relative_localization_pairs", "repeated_augmentation", "cross_validation_folds",
                 "cross_validation_split_seed", "selection_metric", "mae_epochs", "seed")
# What runs made before an option existed had instead (the option's default).
ABSENT_MEANS = {"sam_rho": 0.0, "ema_decay": 0.0, "translate": None, "distillation_type": "hard",
                "distillation_alpha": 0.5, "distillation_temperature": 1.0, "relative_localization_weight": 0.0,
                "relative_localization_pairs": 32, "repeated_augmentation": 1, "cross_validation_folds": 0,
                "cross_validation_split_seed": 0, "selection_metric": "auc", "mae_epochs": 0}


def search_entry(name: str, run_dir: Path, last: int = 20, discard_test: bool = False) -> dict:
    if not (run_dir / ALL_RESULTS).is_file():
        raise ValueError(f"{run_dir}: no all_results.json (is the run finished?).")
    results = read_all_results(run_dir)
    tested = results.get("test_metrics") is not None
    if tested and not discard_test:
        raise ValueError(f"{run_dir}: this run evaluated the test split; search runs use train.py --skip_test "
                         "(or --discard_test, to record it with its test figures dropped unread).")
    history = results["validation_history"]
    tail = history[-last:]
    mean = lambda key: sum(h["metrics"][key] for h in tail) / len(tail)  # noqa: E731
    config = results["config"]
    return {
        "name": name,
        "command": results["command"],
        "test_metrics": None,
        **({"test_discarded_unread": True} if tested else {}),
        "resolved": {key: config[key] for key in RESOLVED_KEYS if key in config},
        "teacher": results.get("teacher"),
        "best_epoch": results["best_epoch"],
        "validation_acc_at_best": results["validation_metrics"]["acc"],
        "validation_auc_at_best": results["validation_metrics"]["auc"],
        f"validation_acc_last{last}_mean": mean("acc"),
        f"validation_auc_last{last}_mean": mean("auc"),
        "wall_clock_minutes": results["wall_clock_seconds"] / 60,
        "validation_auc_per_epoch": [h["metrics"]["auc"] for h in history],
    }


def setting_of(run: dict) -> str:
    """The run's resolved recipe and teacher without its seed, as a canonical string (entries logged before an
    argument was renamed count under its current name)."""
    logged = with_current_names(run["resolved"])
    resolved = {key: logged.get(key, ABSENT_MEANS.get(key)) for key in RESOLVED_KEYS if key != "seed"}
    return json.dumps({**resolved, "teacher": run.get("teacher")}, sort_keys=True)


def summarize(runs: list[dict]) -> list[dict]:
    """Runs grouped by setting, in first-seen order: seeds, mean and std of the best and last-20 validation AUC."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(setting_of(run), []).append(run)
    summary = []
    for members in groups.values():
        row = {"command": members[0]["command"], "names": [m["name"] for m in members],
               "seeds": [m["resolved"].get("seed") for m in members]}
        for key in ("validation_acc_at_best", "validation_auc_at_best", "validation_auc_last20_mean"):
            values = [m[key] for m in members if key in m]
            row[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        summary.append(row)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="The search log (JSON) to add to; created when absent.")
    parser.add_argument("runs", nargs="*", help="NAME=RUN_DIR pairs.")
    parser.add_argument("--summary", action="store_true", help="Print each setting's mean ± std over its seeds.")
    parser.add_argument("--discard_test", action="store_true",
                        help="Record runs that evaluated the test split too, their test figures dropped unread.")
    args = parser.parse_args(argv)
    if not args.runs and not args.summary:
        parser.error("give NAME=RUN_DIR pairs to add, or --summary.")
    log = json.loads(args.log.read_text()) if args.log.is_file() else {"what": "validation-only search", "runs": []}
    try:
        entries = []
        for pair in args.runs:
            name, sep, run_dir = pair.partition("=")
            if not sep:
                raise ValueError(f"{pair!r} is not NAME=RUN_DIR.")
            entries.append(search_entry(name, Path(run_dir), discard_test=args.discard_test))
    except ValueError as error:
        print(f"search_log.py: error: {error}", file=sys.stderr)
        return 2
    new = {entry["name"]: entry for entry in entries}
    known = {run["name"] for run in log["runs"]}
    log["runs"] = [new.get(run["name"], run) for run in log["runs"]] + [e for e in entries if e["name"] not in known]
    args.log.write_text(json.dumps(log, indent=1) + "\n")
    for entry in entries:
        print(f"{entry['name']}: best epoch {entry['best_epoch']}, val ACC / AUC {entry['validation_acc_at_best']:.3f} / "
              f"{entry['validation_auc_at_best']:.3f}, last 20 {entry['validation_acc_last20_mean']:.3f} / "
              f"{entry['validation_auc_last20_mean']:.3f}, {entry['wall_clock_minutes']:.1f} min")
    if args.summary:
        for row in summarize(log["runs"]):
            acc, best, last = (row[f"validation_{key}"] for key in ("acc_at_best", "auc_at_best", "auc_last20_mean"))
            print(f"{', '.join(row['names'])} ({len(row['names'])} runs): val ACC / AUC at best {acc[0]:.4f} ± "
                  f"{acc[1]:.4f} / {best[0]:.5f} ± {best[1]:.5f}, AUC last 20 {last[0]:.4f} ± {last[1]:.4f}\n"
                  f"    {row['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
