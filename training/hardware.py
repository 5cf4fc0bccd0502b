"""What the run ran on (recorded in all_results.json and the model card), whether bf16 pays on this CPU, and how
many CPU threads a process uses."""

import os
import platform
import time
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


def cpu_bf16_features() -> list[str]:
    """The CPU's bf16 instructions (AMX tiles, AVX-512 BF16), as /proc/cpuinfo lists them."""
    flags, _ = cpu_flags_and_name()
    return sorted(flags & {"amx_bf16", "avx512_bf16"})


def matmul_rates(dtypes=(torch.float32, torch.bfloat16), rows: int = 1024, width: int = 64, out: int = 256,
                 min_seconds: float = 0.03) -> dict[str, float]:
    """GFLOP/s of a linear layer's product in each dtype on this CPU, measured now, at a shape of these models
    ((1024, 64) by (64, 256): 34 MFLOP, a few ms in fp32). Where bf16 is emulated (an AVX2-only EPYC: 0.9 GFLOP/s
    against 40 in fp32) one product takes ~40 ms, so the probe stays under a second everywhere."""
    rates = {}
    for dtype in dtypes:
        x, w = torch.randn(rows, width).to(dtype), torch.randn(out, width).to(dtype)
        for _ in range(2):  # oneDNN builds its kernel on the first calls
            torch.nn.functional.linear(x, w)
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < min_seconds:
            torch.nn.functional.linear(x, w)
            runs += 1
        rates[str(dtype).removeprefix("torch.")] = 2 * rows * width * out * runs / (time.perf_counter() - start) / 1e9
    return rates


def cpu_bf16_advice() -> tuple[bool, str]:
    """(whether bf16 pays on this CPU, a line saying what was measured): bf16 pays when its matrix products run
    faster than fp32's here. The measured rates decide, not the CPU's name: the same instructions differ between
    machines, and on a CPU without them torch emulates bf16."""
    rates = matmul_rates()
    features = ", ".join(cpu_bf16_features()) or "neither AMX nor AVX-512 BF16"
    line = (f"bf16 matrix products on this CPU ({features}): {rates['bfloat16']:.0f} GFLOP/s against "
            f"{rates['float32']:.0f} in fp32 (measured now, a (1024, 64) by (64, 256) product)")
    return rates["bfloat16"] > rates["float32"], line


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
