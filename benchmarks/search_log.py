#!/usr/bin/env python
"""Add finished validation-search runs (`train.py --skip_test`) to a search log such as
`results/search_breastmnist.json`: each run's command, resolved recipe, best epoch, validation ACC / AUC at the best
epoch and averaged over the last 20 epochs, wall-clock, and the per-epoch validation AUC.

    python benchmarks/search_log.py results/search_breastmnist.json J_seed1=runs/search/J-seed1 M_sam=runs/search/M-sam

A run that evaluated the test split is refused: a search must choose on validation only. A name already in the log
is replaced.
"""

import argparse
import json
import sys
from pathlib import Path

RESOLVED_KEYS = ("augmentation", "config_overrides", "per_device_train_batch_size", "learning_rate", "weight_decay",
                 "label_smoothing", "num_epochs", "optimizer", "recipe", "sam_rho", "ema_decay", "seed")


def search_entry(name: str, run_dir: Path, last: int = 20) -> dict:
    results_path = run_dir / "all_results.json"
    if not results_path.is_file():
        raise ValueError(f"{run_dir}: no all_results.json (is the run finished?).")
    results = json.loads(results_path.read_text())
    if results.get("test_metrics") is not None:
        raise ValueError(f"{run_dir}: this run evaluated the test split; search runs use train.py --skip_test.")
    history = results["validation_history"]
    tail = history[-last:]
    mean = lambda key: sum(h["metrics"][key] for h in tail) / len(tail)  # noqa: E731
    config = results["config"]
    return {
        "name": name,
        "command": results["command"],
        "test_metrics": None,
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="The search log (JSON) to add to; created when absent.")
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR pairs.")
    args = parser.parse_args(argv)
    log = json.loads(args.log.read_text()) if args.log.is_file() else {"what": "validation-only search", "runs": []}
    try:
        entries = []
        for pair in args.runs:
            name, sep, run_dir = pair.partition("=")
            if not sep:
                raise ValueError(f"{pair!r} is not NAME=RUN_DIR.")
            entries.append(search_entry(name, Path(run_dir)))
    except ValueError as error:
        print(f"search_log.py: error: {error}", file=sys.stderr)
        return 2
    names = {entry["name"] for entry in entries}
    log["runs"] = [run for run in log["runs"] if run["name"] not in names] + entries
    args.log.write_text(json.dumps(log, indent=1) + "\n")
    for entry in entries:
        print(f"{entry['name']}: best epoch {entry['best_epoch']}, val ACC / AUC {entry['validation_acc_at_best']:.3f} / "
              f"{entry['validation_auc_at_best']:.3f}, last 20 {entry['validation_acc_last20_mean']:.3f} / "
              f"{entry['validation_auc_last20_mean']:.3f}, {entry['wall_clock_minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
