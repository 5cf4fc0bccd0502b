#!/usr/bin/env python
"""Compare sweeps on the validation split, epoch by epoch and at the chosen epoch, finished or still running.

    python experiments/compare_sweeps.py row=runs/blood30-vit-p2-wide mae20=runs/blood30-vit-mae20 \
        --plot runs/blood30-vit-mae20/compare.png

A sweep is a folder of runs (a `run_results.py --runs_dir`: one sub-folder per seed). A run counts once it has
`all_results.json` (finished) or an epoch checkpoint (still running: the newest checkpoint's `trainer_state.json`
holds its validation history so far). Printed: per epoch, each sweep's mean validation ACC / AUC over its runs, how
many runs reached that epoch, and each later sweep's difference from the first; then, once every run of a sweep has
finished, the mean over its runs of the validation metrics at each run's chosen epoch (the "val" figures that
`run_results.py` reports and the adoption rules in docs/experiments.md compare). The test split is never read.
`--plot` draws the mean curves, with a band from the lowest to the highest run.

Why: a BloodMNIST sweep takes hours on a CPU; its curves against the sweep it must beat say early whether it is on
course, and the same table decides it when it ends.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.checkpointing import list_checkpoints, read_trainer_state  # noqa: E402
from training.run_records import ALL_RESULTS, read_all_results  # noqa: E402

METRICS = ("acc", "auc")


def load_run(run_dir: Path) -> dict | None:
    """{"history": [{"epoch", "metrics"}...], "chosen": validation metrics at the chosen epoch or None (running)}, or
    None for a folder that is not a run (yet)."""
    if (run_dir / ALL_RESULTS).is_file():
        finished = read_all_results(run_dir)
        return {"history": finished["validation_history"], "chosen": finished["validation_metrics"]}
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        return {"history": read_trainer_state(checkpoints[-1])["history"], "chosen": None}
    return None


def load_sweep(folder: Path) -> dict[str, dict]:
    """The sweep's runs by folder name; raises ValueError, saying what was looked for, if there are none."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; pass NAME=FOLDER with the --runs_dir of a run_results.py sweep.")
    runs = {run.name: loaded for run in sorted(folder.iterdir()) if run.is_dir() and (loaded := load_run(run))}
    if not runs:
        raise ValueError(f"{folder}: no runs in it (sub-folders with all_results.json or checkpoints/step_<N>).")
    return runs


def mean_curve(runs: dict[str, dict]) -> dict[int, dict]:
    """epoch -> {"runs": how many reached it, and per metric its mean, min and max over those runs}."""
    by_epoch: dict[int, list[dict]] = {}
    for run in runs.values():
        for entry in run["history"]:
            by_epoch.setdefault(entry["epoch"], []).append(entry["metrics"])
    return {epoch: {"runs": len(rows), **{metric: (statistics.fmean(row[metric] for row in rows),
                                                   min(row[metric] for row in rows), max(row[metric] for row in rows))
                                          for metric in METRICS}}
            for epoch, rows in sorted(by_epoch.items())}


def chosen_means(runs: dict[str, dict]) -> dict[str, float] | None:
    """Mean over runs of the chosen epoch's validation metrics; None while any run is still going."""
    if any(run["chosen"] is None for run in runs.values()):
        return None
    return {metric: statistics.fmean(run["chosen"][metric] for run in runs.values()) for metric in METRICS}


def table(sweeps: dict[str, dict[str, dict]]) -> str:
    names = list(sweeps)
    curves = {name: mean_curve(runs) for name, runs in sweeps.items()}
    header = ["epoch"] + [f"{name} {metric} (runs)" if metric == "acc" else f"{name} {metric}"
                          for name in names for metric in METRICS]
    header += [f"{name} − {names[0]} {metric}" for name in names[1:] for metric in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for epoch in sorted(set().union(*curves.values())):
        cells = [str(epoch)]
        for name in names:
            point = curves[name].get(epoch)
            cells += ([f"{point['acc'][0]:.4f} ({point['runs']})", f"{point['auc'][0]:.5f}"] if point else ["", ""])
        for name in names[1:]:
            ours, first = curves[name].get(epoch), curves[names[0]].get(epoch)
            cells += ([f"{ours[m][0] - first[m][0]:+.4f}" for m in METRICS] if ours and first else ["", ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, runs in sweeps.items():
        chosen = chosen_means(runs)
        if chosen is None:
            done = sum(run["chosen"] is not None for run in runs.values())
            lines.append(f"{name}: {done} of {len(runs)} runs finished; chosen-epoch means once all have.")
        else:
            lines.append(f"{name}: chosen epoch, mean over {len(runs)} runs: validation ACC {chosen['acc']:.4f}, "
                         f"AUC {chosen['auc']:.5f}")
    return "\n".join(lines)


def draw(sweeps: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, len(METRICS)), METRICS):
        for name, runs in sweeps.items():
            curve = mean_curve(runs)
            epochs = list(curve)
            line, = axes.plot(epochs, [curve[e][metric][0] for e in epochs], label=f"{name} ({len(runs)} runs)")
            axes.fill_between(epochs, [curve[e][metric][1] for e in epochs], [curve[e][metric][2] for e in epochs],
                              color=line.get_color(), alpha=0.2, linewidth=0)
        axes.set(xlabel="epoch", ylabel=f"validation {metric.upper()}", title=f"Mean validation {metric.upper()}")
        axes.grid(alpha=0.3)
        axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def parse_sweep(text: str) -> tuple[str, Path]:
    name, separator, folder = text.partition("=")
    if not separator or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER (e.g. row=runs/blood30-vit-p2-wide), got {text!r}")
    return name, Path(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=parse_sweep, metavar="NAME=FOLDER",
                        help="Sweeps to compare; the first is the reference of the differences.")
    parser.add_argument("--plot", type=Path, default=None, help="Also draw the mean curves to this PNG.")
    args = parser.parse_args(argv)
    try:
        sweeps = {name: load_sweep(folder) for name, folder in args.sweeps}
    except ValueError as error:
        print(f"compare_sweeps.py: error: {error}", file=sys.stderr)
        return 2
    print(table(sweeps))
    if args.plot is not None:
        draw(sweeps, args.plot)
        print(f"Wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
