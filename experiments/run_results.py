#!/usr/bin/env python
"""Run datasets × models × seeds through `accelerate launch train.py` and write the results table.

    python experiments/run_results.py --data_dir ../shared/data/medmnist \
        --datasets breastmnist bloodmnist --models cnn vit vit_lsa vit_conv_lsa --seeds 0 1 2

A model name with the suffix `+distilled` (e.g. `vit_lsa+distilled`) trains that model distilled from the sweep's own
CNN of the same data set and seed (`--teacher_model_name_or_path <runs_dir>/<dataset>-cnn-seed<k>/best`, extra
settings in `--distillation_args`); with `+ensemble_distilled`, from the sweep's CNNs of every `--seeds` at once (the
mean of their logits). Those runs start after every plain run has finished.

Each run goes to `<runs_dir>/<dataset>-<model>-seed<k>` and is skipped when its `all_results.json` already exists,
so an interrupted sweep continues where it stopped; with `--resume`, an interrupted run also continues from its newest
checkpoint (`train.py --resume_from_checkpoint latest`) instead of starting again: a long run can be stopped and
continued.
Afterwards (or with `--collect_only`) it writes
`results/results.json` (every run's test and validation metrics), `results/RESULTS.md` (mean ± std over seeds with a
95% t-interval, the seed notebooks' figures and the published references beside them) and `results/results.png`.
Test metrics come from each run's single test evaluation of the model chosen on the validation split.

Run folders are not committed, so a fresh clone has none: `--update` replaces only the rows this command collects
in the existing `results.json` and keeps the others as they were (the table records every command that wrote it).
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's own modules, when run as a script
from training.checkpointing import has_checkpoint  # noqa: E402
from training.hardware import describe_hardware  # noqa: E402
from training.run_records import ALL_RESULTS, read_all_results  # noqa: E402

# The replaced notebooks' test accuracy (../shared/REFERENCE.md).
SEED_TABLE = {
    ("bloodmnist", "vit_lsa"): 0.9182, ("bloodmnist", "vit"): 0.95, ("bloodmnist", "cnn"): 0.763,
    ("breastmnist", "vit_lsa"): 0.8397, ("breastmnist", "vit"): 0.74, ("breastmnist", "cnn"): 0.76,
}
# MedMNIST v2 (Yang et al. 2023), test ACC / AUC at 28×28.
PUBLISHED = {
    "breastmnist": {"ResNet-18 (28)": (0.863, 0.901), "Google AutoML Vision": (0.861, 0.919)},
    "bloodmnist": {"ResNet-18 (28)": (0.958, 0.998), "Google AutoML Vision": (0.966, 0.998)},
}
DISTILLED = "+distilled"  # teacher: the sweep's CNN of the run's own seed
ENSEMBLE_DISTILLED = "+ensemble_distilled"  # teachers: the sweep's CNNs of every seed, averaged
# Two-sided 97.5% quantiles of Student's t for n - 1 degrees of freedom (n = 2..31 values; beyond, the normal 1.96).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
         21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["breastmnist", "bloodmnist"])
    parser.add_argument("--models", nargs="+", default=["cnn", "vit", "vit_lsa", "vit_conv_lsa"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "medmnist"))
    parser.add_argument("--runs_dir", default=str(ROOT / "runs" / "results"))
    parser.add_argument("--results_dir", default=None,
                        help="Where the table, results.json and chart go. Default: results/ for the default "
                             "--runs_dir, <runs_dir>/results_table for any other, so that a side sweep does not "
                             "overwrite the project's table (move its runs into runs/results/ and --collect_only "
                             "there).")
    # accelerate's launcher through this interpreter: works in a venv that is not activated (no `accelerate` on PATH).
    parser.add_argument("--launch",
                        default=f"{shlex.quote(sys.executable)} -m accelerate.commands.launch --num_processes 1",
                        help="How to start train.py (the accelerate launch prefix; add --mixed_precision bf16 on a "
                             "GPU or an AMX CPU).")
    parser.add_argument("--train_args", default="", help="Extra train.py arguments for every run, e.g. '--recipe seed'.")
    parser.add_argument("--distillation_args", default="",
                        help="Extra train.py arguments for the +distilled runs only, e.g. '--distillation_type soft'.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Runs at a time; each gets cpu_count // jobs threads (OMP_NUM_THREADS). On a GPU keep 1.")
    parser.add_argument("--resume", action="store_true",
                        help="An unfinished run with a saved checkpoint continues from its newest one (its log is "
                             "appended to) instead of starting again. Use the same --train_args as when it started.")
    parser.add_argument("--collect_only", action="store_true", help="Only aggregate the runs already in runs_dir.")
    parser.add_argument("--update", action="store_true",
                        help="Replace only the (dataset, model) rows collected now in results_dir's existing "
                             "results.json and keep its other rows (whose runs need not be on this machine).")
    args = parser.parse_args(argv)
    if args.results_dir is None:
        default_runs = Path(args.runs_dir).resolve() == (ROOT / "runs" / "results").resolve()
        args.results_dir = str(ROOT / "results") if default_runs else str(Path(args.runs_dir) / "results_table")
    return args


def base_model(model: str) -> str:
    """`vit_lsa+distilled` -> `vit_lsa`: the train.py model family behind a sweep's model name."""
    return model.removesuffix(DISTILLED).removesuffix(ENSEMBLE_DISTILLED)


def is_distilled(model: str) -> bool:
    return model != base_model(model)


def run_name(dataset: str, model: str, seed: int) -> str:
    return f"{dataset}-{model.replace('+', '-')}-seed{seed}"


def train_command(args, dataset: str, model: str, seed: int, output_dir: Path) -> list[str]:
    command = [*shlex.split(args.launch), str(ROOT / "train.py"), "--model", base_model(model), "--dataset", dataset,
               "--data_dir", args.data_dir, "--seed", str(seed), "--output_dir", str(output_dir),
               *shlex.split(args.train_args)]
    if is_distilled(model):
        teacher_seeds = args.seeds if model.endswith(ENSEMBLE_DISTILLED) else [seed]
        teachers = [str(Path(args.runs_dir) / run_name(dataset, "cnn", k) / "best") for k in teacher_seeds]
        command += ["--teacher_model_name_or_path", *teachers, *shlex.split(args.distillation_args)]
    return command


def run_logged(command: list[str], log: Path, label: str, threads: int | None) -> tuple[bool, str]:
    """Run `command` from the project root, its output to `log`; returns (succeeded, a one-line report)."""
    env = dict(os.environ)
    if threads is not None:  # parallel runs share the cores instead of each taking all of them
        env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    resuming = "--resume_from_checkpoint" in command
    with open(log, "a" if resuming else "w") as handle:  # a resumed run's log keeps the part before
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        try:
            result = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
        except FileNotFoundError as error:  # a --launch program that is not installed
            return False, f"{label}: FAILED, cannot start {command[0]!r} ({error.strerror}); fix --launch"
    status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode}), see {log}"
    return result.returncode == 0, f"{label} in {time.time() - started:.0f} s: {status}"


def run_all(args) -> list[str]:
    """Train every (dataset, model, seed) not done yet, `args.jobs` at a time; returns the failures."""
    todo = []
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                if (Path(args.runs_dir) / run_name(dataset, model, seed) / ALL_RESULTS).is_file():
                    print(f"[skip] {run_name(dataset, model, seed)}: already done", flush=True)
                else:
                    todo.append((dataset, model, seed))
    # Distilled runs need their teachers, the plain CNN runs: they go in a second phase.
    phases = [[job for job in todo if not is_distilled(job[1])], [job for job in todo if is_distilled(job[1])]]
    return run_in_parallel([[run_spec(args, *job) for job in phase] for phase in phases], args.jobs)


def run_spec(args, dataset: str, model: str, seed: int) -> tuple[list[str], Path, str]:
    """(command, log file, label) of one run: its output goes to `<runs_dir>/<name>.log`."""
    output_dir = Path(args.runs_dir) / run_name(dataset, model, seed)
    command = train_command(args, dataset, model, seed, output_dir)
    if args.resume and has_checkpoint(output_dir):
        command += ["--resume_from_checkpoint", "latest"]
    return command, Path(args.runs_dir) / f"{output_dir.name}.log", output_dir.name


def run_in_parallel(phases: list[list[tuple[list[str], Path, str]]], jobs: int) -> list[str]:
    """Run each phase's (command, log, label) specs `jobs` at a time, phase after phase; returns the failures.
    Parallel runs get cpu_count // jobs threads each (OMP_NUM_THREADS) instead of each taking every core."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    failures = []
    total = sum(len(phase) for phase in phases)
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=total, desc="Runs", unit="run") as bar:
        for phase in phases:
            futures = [pool.submit(run_logged, *spec, threads) for spec in phase]
            for future in as_completed(futures):
                succeeded, message = future.result()
                bar.write(f"[done] {message}")
                bar.update()
                if not succeeded:
                    failures.append(message)
    return failures


def mean_std_ci(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = T_975.get(n - 1, 1.96) * std / n**0.5 if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half] if half is not None else None}


def collect(args) -> dict:
    rows = []
    for dataset in args.datasets:
        for model in args.models:
            runs = []
            for seed in args.seeds:
                path = Path(args.runs_dir) / run_name(dataset, model, seed) / ALL_RESULTS
                if path.is_file():
                    result = read_all_results(path.parent)
                    if result.get("test_metrics") is None:  # a --skip_test (search) run: not a result
                        print(f"[ignored] {path.parent.name}: no test metrics (--skip_test run)", flush=True)
                        continue
                    runs.append((seed, result))
            if not runs:
                continue
            row = {"dataset": dataset, "model": model, "seeds": [s for s, _ in runs], "runs": []}
            for seed, result in runs:
                row["runs"].append({
                    "seed": seed, "test_acc": result["test_metrics"]["acc"], "test_auc": result["test_metrics"]["auc"],
                    "test_acc_ci95": result["test_metrics"].get("acc_ci95"),
                    "test_auc_ci95": result["test_metrics"].get("auc_ci95"),
                    "validation_acc": result["validation_metrics"]["acc"],
                    "validation_auc": result["validation_metrics"]["auc"], "best_epoch": result["best_epoch"],
                    "wall_clock_seconds": result["wall_clock_seconds"], "command": result["command"],
                    "num_epochs": result["config"]["num_train_epochs"],
                    "hardware": describe_hardware(result["hardware"]),
                })
            for key in ("test_acc", "test_auc", "validation_acc", "validation_auc", "wall_clock_seconds"):
                row[key] = mean_std_ci([r[key] for r in row["runs"]])
            row["hardware"] = sorted({r["hardware"] for r in row["runs"]})
            row["num_epochs"] = sorted({r["num_epochs"] for r in row["runs"]})
            rows.append(row)
    return {"rows": rows, "seed_table": {f"{d}/{m}": v for (d, m), v in SEED_TABLE.items()}, "published": PUBLISHED}


def this_command(argv=None) -> str:
    arguments = sys.argv[1:] if argv is None else argv
    return shlex.join([sys.executable.split("/")[-1], "experiments/run_results.py", *arguments])


def update_rows(previous: dict, fresh: dict) -> dict:
    """`fresh`'s rows replace the same (dataset, model) rows of `previous` where they stand; new rows join the end
    of their data set's rows; every other row of `previous` is kept unchanged."""
    rows = {(r["dataset"], r["model"]): r for r in previous["rows"]}
    rows.update({(r["dataset"], r["model"]): r for r in fresh["rows"]})
    datasets = list(dict.fromkeys(dataset for dataset, _ in rows))
    merged = sorted(rows.values(), key=lambda row: datasets.index(row["dataset"]))  # stable: keeps each order
    commands = previous.get("commands") or ["(earlier rows: an older run_results.py; see each run's command)"]
    return dict(fresh, rows=merged, commands=list(dict.fromkeys([*commands, *fresh["commands"]])))  # once each


def fmt(stat: dict) -> str:
    text = f"{stat['mean']:.4f} ± {stat['std']:.4f}"
    if stat["ci95"]:
        text += f" [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]"
    return text


def results_markdown(results: dict) -> str:
    lines = [
        "# Results",
        "",
        "Test split of the official 28×28 MedMNIST files, each run's model chosen on the validation split, mean ± std",
        "over seeds with a 95% t-interval over seeds. Written by `experiments/run_results.py`"
        + (":" if len(results["commands"]) == 1 else " (the later commands with `--update`):"),
        "",
        "```",
        *results["commands"],
        "```",
        "",
        "| dataset | model | seeds | test ACC | test AUC | seed notebooks' ACC | beats it | val AUC | epochs "
        "| wall-clock / run | hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        seed_acc = SEED_TABLE.get((row["dataset"], base_model(row["model"])))
        lines.append(
            f"| {row['dataset']} | {row['model']} | {len(row['seeds'])} | {fmt(row['test_acc'])} | "
            f"{fmt(row['test_auc'])} | {seed_acc if seed_acc is not None else '–'} | "
            f"{'–' if seed_acc is None else ('yes' if row['test_acc']['mean'] > seed_acc else 'no')} | "
            f"{row['validation_auc']['mean']:.4f} | {', '.join(map(str, row['num_epochs']))} | "
            f"{row['wall_clock_seconds']['mean'] / 60:.1f} min | "
            f"{'; '.join(row['hardware'])} |"
        )
    lines += ["", "Published references (MedMNIST v2, test ACC / AUC, 28×28):", ""]
    for dataset, refs in PUBLISHED.items():
        for name, (acc, auc) in refs.items():
            lines.append(f"- {dataset}, {name}: {acc:.3f} / {auc:.3f}")
    lines += ["", "Each row's training command (seed 0's; the others differ only in `--seed` and `--output_dir`); every "
              "run's own command is in `results.json` (`rows[].runs[].command`):", ""]
    for row in results["rows"]:
        lines.append(f"- {row['dataset']} / {row['model']}: `{row['runs'][0]['command']}`")
    return "\n".join(lines) + "\n"


def results_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    datasets = sorted({r["dataset"] for r in results["rows"]})
    most_rows = max([sum(r["dataset"] == d for r in results["rows"]) for d in datasets] or [1])
    figure = Figure(figsize=(max(5, 1.3 * most_rows) * max(len(datasets), 1), 4.8), layout="constrained")
    for i, dataset in enumerate(datasets):
        axis = figure.add_subplot(1, len(datasets), i + 1)
        rows = [r for r in results["rows"] if r["dataset"] == dataset]
        x = range(len(rows))
        for offset, key, label in ((-0.2, "test_acc", "test ACC"), (0.2, "test_auc", "test AUC")):
            axis.bar([j + offset for j in x], [r[key]["mean"] for r in rows], width=0.4,
                     yerr=[r[key]["std"] for r in rows], capsize=3, label=label)
        seed = [SEED_TABLE.get((dataset, base_model(r["model"]))) for r in rows]
        axis.scatter([j - 0.2 for j, s in zip(x, seed) if s], [s for s in seed if s], color="black", marker="x",
                     zorder=3, label="seed notebooks' ACC")
        for (name, (acc, _)), style in zip(PUBLISHED.get(dataset, {}).items(), ("--", ":", "-.")):
            axis.axhline(acc, linestyle=style, linewidth=0.9, color="gray", label=f"{name}: ACC {acc:.3f}")
        model_names = [r["model"].replace("+", "\n+") for r in rows]  # the suffix on its own line: narrow bars
        labels = [f"{name}\n{', '.join(map(str, r['num_epochs']))} epochs" for name, r in zip(model_names, rows)]
        axis.set_xticks(list(x), labels)
        axis.set_ylim(0.5, 1.0)
        axis.set_title(dataset)
        # Below the axes: inside, it hid the first bars.
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, frameon=False)
    figure.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    failures = [] if args.collect_only else run_all(args)
    results = dict(collect(args), commands=[this_command(argv)])
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    if args.update and previous is not None:
        results = update_rows(previous, results)
    elif previous is not None:
        dropped = {(r["dataset"], r["model"]) for r in previous["rows"]} - \
                  {(r["dataset"], r["model"]) for r in results["rows"]}
        if dropped:
            print(f"[warning] {out / 'results.json'} had rows this command did not collect, now dropped: "
                  f"{', '.join('/'.join(key) for key in sorted(dropped))}. To keep them, rerun with --update.",
                  flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS.md").write_text(results_markdown(results))
    if results["rows"]:
        results_chart(results, out / "results.png")
    print((out / "RESULTS.md").read_text())
    if failures:
        sys.exit("Some runs failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
