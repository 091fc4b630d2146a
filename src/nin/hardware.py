"""The machine: one line naming it (printed beside every benchmark result), and the memory it has free."""
from __future__ import annotations

import os
import platform

import torch

from .errors import NinError


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(device: str = "auto") -> str:
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()}, {cores} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (the host's MemAvailable for the CPU); None: unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def require_memory(needed: int, device: torch.device, what: str, advice: str) -> None:
    """Refuse in one line, before allocating, what would not fit in the memory ``device`` has free."""
    free = free_memory(device)
    if free is not None and needed > free:
        raise NinError(f"{what} needs about {_gigabytes(needed)} of memory and {device.type} has "
                       f"{_gigabytes(free)} free: {advice}")


def _gigabytes(count: int) -> str:
    return f"{count / 2 ** 30:.1f} GB"
