"""CPU threads under `accelerate launch`: the README's command uses the machine's physical cores (accelerate alone
would set one thread a process); a thread count the user set is kept."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.hardware import physical_cores

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys; sys.path.insert(0, {root!r})\n"
         "import torch\n"
         "from accelerate import Accelerator\n"
         "from training.hardware import configure_cpu_threads\n"
         "print('THREADS', *configure_cpu_threads(Accelerator(cpu=True)), torch.get_num_threads(), sep='|')\n")


def launch(launch_args, script_args, env_extra=None, cwd=ROOT):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})})
    console_script = Path(sys.executable).with_name("accelerate")  # what a user types, from this environment
    launcher = ([str(console_script), "launch"] if console_script.is_file()
                else [sys.executable, "-m", "accelerate.commands.launch"])
    command = [*launcher, *launch_args, *script_args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_train_py_under_accelerate_launch_uses_every_physical_core(data_dir, tmp_path):
    launch([], ["train.py", "--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(data_dir),
                "--no_verify_checksum", "--max_train_steps", "1", "--output_dir", str(tmp_path / "run"),
                "--report_to", "none"])
    hardware = json.loads((tmp_path / "run" / "all_results.json").read_text())["hardware"]
    assert hardware["cpu_threads"] == physical_cores()


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
@pytest.mark.parametrize("launch_args, env, expected", [
    ([], {"OMP_NUM_THREADS": "1"}, "1|as set for accelerate launch|1"),
    (["--num_cpu_threads_per_process", "1"], {}, "1|as set for accelerate launch|1"),
])
def test_a_thread_count_the_user_set_is_kept(tmp_path, launch_args, env, expected):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(root=str(ROOT)))
    output = launch(launch_args, [str(probe)], env, cwd=tmp_path).stdout
    assert f"THREADS|{expected}" in output
