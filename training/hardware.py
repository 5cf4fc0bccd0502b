"""What the run ran on (recorded in all_results.json and the model card), whether bf16 pays on this CPU, and how
many CPU threads a process uses."""

import os
import platform
from pathlib import Path

import torch


def cpu_flags_and_name() -> tuple[set[str], str]:
    flags, name = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return flags, name


def cpu_has_fast_bf16() -> bool:
    """bf16 matrix products are fast only with AMX or AVX-512 BF16; elsewhere oneDNN emulates them (measured here on
    an AVX2-only EPYC: 0.9 GFLOP/s in bf16 against 40 in fp32, and convolutions fall back to a slow path)."""
    flags, _ = cpu_flags_and_name()
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _parent_launch() -> tuple[dict[str, str], list[str]] | None:
    """(environment, command line) of the parent process if it is `accelerate launch`, else None (Linux's /proc)."""
    try:
        parent = Path("/proc") / str(os.getppid())
        command = parent.joinpath("cmdline").read_bytes().decode(errors="replace").split("\0")
        if not any(word.endswith("accelerate") or word.endswith("accelerate.commands.launch") for word in command):
            return None
        entries = parent.joinpath("environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return dict(entry.split("=", 1) for entry in entries if "=" in entry), command


def physical_cores() -> int:
    """Physical cores this process may run on (its CPU affinity: a container's or a job's share of the machine)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        logical = psutil.cpu_count(logical=True) or cores
    except ImportError:
        cores = logical = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return max(1, min(cores, allowed * cores // logical))


def choose_cpu_threads(local_processes: int) -> tuple[int, str]:
    """(threads, why) for this process's torch. The user's choice wins (`OMP_NUM_THREADS` set before the launch, or
    `accelerate launch --num_cpu_threads_per_process`); `accelerate launch` otherwise sets 1 thread a process on a
    CPU machine, which leaves cores idle: then the physical cores are shared out between the local processes."""
    parent = _parent_launch()
    if parent is None:
        return torch.get_num_threads(), "torch's choice" + (
            " (OMP_NUM_THREADS)" if "OMP_NUM_THREADS" in os.environ else "")
    environment, command = parent
    if "OMP_NUM_THREADS" in environment or any(w.startswith("--num_cpu_threads_per_process") for w in command):
        return torch.get_num_threads(), "as set for accelerate launch"
    cores = physical_cores()
    return max(1, cores // max(1, local_processes)), f"{cores} physical cores shared by {local_processes} process(es)"


def configure_cpu_threads(accelerator) -> tuple[int, str]:
    """Set torch's CPU threads as `choose_cpu_threads` says, on CPU runs; returns (threads, why)."""
    if accelerator.device.type != "cpu":
        return torch.get_num_threads(), "not a CPU run: left as launched"
    threads, why = choose_cpu_threads(_local_processes(accelerator))
    torch.set_num_threads(threads)
    return threads, why


def _local_processes(accelerator) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", max(1, accelerator.num_processes)))


def hardware_description(accelerator, compiled: tuple[str, str | None] | None = None) -> dict:
    """What the run ran on, and how: device, processes, precision, threads, torch, and `compiled` (the
    --torch_compile backend and mode, or None), which change the speed figures beside it."""
    if accelerator.device.type == "cuda":
        device_name = torch.cuda.get_device_name(accelerator.device)
    else:
        device_name = cpu_flags_and_name()[1]
    hardware = {
        "device": device_name,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_compile": None if compiled is None else " ".join(part for part in compiled if part),
    }
    return {**hardware, "description": describe_hardware(hardware)}


def describe_hardware(hardware: dict) -> str:
    """One line for tables: "1 × AMD EPYC, fp32, torch 2.14.1" (accelerate's mixed precision "no" is fp32), with
    ", compiled (inductor reduce-overhead)" before torch for a --torch_compile run."""
    precision = "fp32" if hardware["mixed_precision"] == "no" else hardware["mixed_precision"]
    compiled = f", compiled ({hardware['torch_compile']})" if hardware.get("torch_compile") else ""
    return f"{hardware['num_processes']} × {hardware['device']}, {precision}{compiled}, torch {hardware['torch']}"
