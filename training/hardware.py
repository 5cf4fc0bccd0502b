"""What the run ran on (recorded in all_results.json and the model card), and whether bf16 pays on this CPU."""

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


def hardware_description(accelerator) -> dict:
    if accelerator.device.type == "cuda":
        device_name = torch.cuda.get_device_name(accelerator.device)
    else:
        device_name = cpu_flags_and_name()[1]
    hardware = {
        "device": device_name,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    return {**hardware, "description": describe_hardware(hardware)}


def describe_hardware(hardware: dict) -> str:
    """One line for tables: "1 × AMD EPYC, fp32, torch 2.14.1" (accelerate's mixed precision "no" is fp32)."""
    precision = "fp32" if hardware["mixed_precision"] == "no" else hardware["mixed_precision"]
    return f"{hardware['num_processes']} × {hardware['device']}, {precision}, torch {hardware['torch']}"
