#!/usr/bin/env python
"""The table of device_session.sh's compile stage: train.py's steps/s eager against --torch_compile, each model alone
and several runs at once, from the runs' all_results.json (`training_speed`: after the first logging window, which
holds the compilation) and the stage's `runs.tsv` (name, exit status or "skipped", process seconds).

    python experiments/compile_steps.py <WORK>/compile <WORK>/compile_steps.json
"""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.run_records import read_all_results  # noqa: E402


def collect(folder: Path) -> list[dict]:
    """One row per (model, eager|compiled, alone|at): its runs, their steps/s and first-window seconds."""
    rows = {}
    for line in (folder / "runs.tsv").read_text().splitlines():
        name, status, seconds = line.split("\t")
        model, variant, setting = name.split("-")[:3]  # <model>-<eager|compiled>-<alone|at>[-once-<i>]
        row = rows.setdefault((model, variant, setting), {"model": model, "variant": variant, "setting": setting,
                                                          "runs": []})
        run = {"name": name, "status": status, "process_seconds": int(seconds)}
        if status == "0":
            results = read_all_results(folder / name)
            run.update(results["training_speed"], wall_clock_seconds=results["wall_clock_seconds"],
                       hardware=results["hardware"]["description"])
        row["runs"].append(run)
    for row in rows.values():
        done = [run for run in row["runs"] if run.get("steps_per_second")]
        row["steps_per_second"] = [run["steps_per_second"] for run in done]
        row["first_window_seconds"] = [run["first_window_seconds"] for run in done]
        row["unfinished"] = len(row["runs"]) - len(done)
    return list(rows.values())


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<9} {'variant':<9} {'setting':<8} {'runs':>4} {'steps/s each':>13} {'first window s':>15} "
             f"{'process s':>10}"]
    for row in rows:
        mean = lambda values: f"{statistics.mean(values):.1f}" if values else "-"  # noqa: E731
        lines.append(f"{row['model']:<9} {row['variant']:<9} {'alone' if row['setting'] == 'alone' else 'at once':<8} "
                     f"{len(row['steps_per_second']):>4} {mean(row['steps_per_second']):>13} "
                     f"{mean(row['first_window_seconds']):>15} {max(r['process_seconds'] for r in row['runs']):>10}"
                     + (f"  ({row['unfinished']} unfinished: skipped or cut by COMPILE_S, or failed: see its log)"
                        if row["unfinished"] else ""))
    return "\n".join(lines)


def main(argv=None):
    folder, output = (Path(a) for a in (argv or sys.argv[1:]))
    rows = collect(folder)
    output.write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
