"""How much the number of processes changes a run: the same recipe and global batch on 1 and on 2 processes.

    python experiments/process_counts.py --data_dir ../shared/data/medmnist --num_train_epochs 3  (cnn, vit, vit_lsa)
    python experiments/process_counts.py ... --models vit -- --config_overrides drop_path_rate=0   (more train.py args)

Launches `accelerate launch train.py` once with 1 process (per-device batch B) and once with 2 CPU processes
(`accelerate_configs/cpu_2proc.yaml`, per-device batch B / 2) for every model, each with the recipe's defaults, and
prints the largest difference in validation ACC, AUC and loss over the epochs, and in test ACC / AUC.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train(launch: list[str], output_dir: Path, args, model: str, batch_size: int) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "train.py", "--model", model,
               "--dataset", args.dataset, "--num_train_epochs", str(args.num_train_epochs), "--seed", str(args.seed),
               "--per_device_train_batch_size", str(batch_size), "--output_dir", str(output_dir),
               "--report_to", "none", *(["--data_dir", args.data_dir] if args.data_dir else []), *args.train_args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads((output_dir / "all_results.json").read_text())


def largest_differences(one: dict, two: dict) -> dict:
    differences = {}
    for key in ("acc", "auc", "loss"):
        differences[f"validation {key}"] = max(abs(a["metrics"][key] - b["metrics"][key])
                                               for a, b in zip(one["validation_history"], two["validation_history"]))
    for key in ("acc", "auc"):
        differences[f"test {key}"] = abs(one["test_metrics"][key] - two["test_metrics"][key])
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "vit", "vit_lsa"])
    parser.add_argument("--dataset", default="breastmnist")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--num_train_epochs", "--num_epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128, help="the global batch (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more train.py arguments")
    args = parser.parse_args()
    args.train_args = [a for a in args.train_args if a != "--"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            one = train(["--num_processes", "1"], Path(folder, model, "one"), args, model, args.batch_size)
            two = train(["--config_file", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port",
                         str(free_port())], Path(folder, model, "two"), args, model, args.batch_size // 2)
            rows.append((model, largest_differences(one, two)))
    columns = list(rows[0][1])
    print(f"{args.dataset}, {args.num_train_epochs} epochs, global batch {args.batch_size}, seed {args.seed}"
          f"{' ' + ' '.join(args.train_args) if args.train_args else ''}: |1 process - 2 processes|")
    print("| model | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for model, differences in rows:
        print(f"| {model} | " + " | ".join(f"{differences[c]:.4f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
