"""The machine: the device a run uses, bf16 autocast on it, the memory it has free, and one line naming it
(printed beside every benchmark result)."""
from __future__ import annotations

import contextlib
import os
import platform

import torch

from .errors import NinError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NinError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NinError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise NinError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise NinError(f"unsupported device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def use_bf16(amp: str, device: torch.device) -> bool:
    """``--amp`` (auto | bf16 | off) on ``device``: auto is bf16 on CUDA and on CPUs that compute in bf16
    natively (AMX or AVX512-BF16); elsewhere a CPU emulates bf16, slower than fp32."""
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return amp == "bf16" or (amp == "auto" and native)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware: the AMX-BF16 or AVX512-BF16 flag of ``cpuinfo``."""
    try:
        with open(cpuinfo) as stream:
            for line in stream:
                if line.startswith("flags"):
                    return bool({"amx_bf16", "avx512_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def precision_name(amp: bool) -> str:
    return "bf16 autocast" if amp else "fp32"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast when enabled (``use_bf16``: the README's speed table, from benchmarks/throughput.py
    --cpu-bf16, has the measurements behind its CPU rule)."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    precision = "bf16 in hardware, so --amp auto trains in bf16" if cpu_has_native_bf16() else "fp32 by default"
    return f"{cpu_name()}, {cores} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {precision}"


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


def require_memory(needed: int, device: torch.device, what: str, advice: str,
                   error: type[NinError] = NinError) -> None:
    """Refuse in one line (``error``), before allocating, what would not fit in the memory ``device`` has free."""
    free = free_memory(device)
    if free is not None and needed > free:
        raise error(f"{what} needs about {_gigabytes(needed)} of memory and {device.type} has "
                    f"{_gigabytes(free)} free: {advice}")


def _gigabytes(count: int) -> str:
    return f"{count / 2 ** 30:.1f} GB"


def readable_bytes(count: int) -> str:
    """GB from 1 GB on, MB below (a small data set's 47 MB is not "0.0 GB")."""
    return _gigabytes(count) if count >= 2 ** 30 else f"{count / 2 ** 20:.0f} MB"
