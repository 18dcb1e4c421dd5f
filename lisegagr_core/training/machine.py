"""What hardware a training or evaluation run used, recorded with its results."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """One phrase: ``NVIDIA H100 80GB HBM3 (cuda:0)`` or ``AMD EPYC, 2 threads (cpu)``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    if device.type == "cpu":
        return f"{cpu_model()}, {torch.get_num_threads()} threads (cpu)"
    return str(device)


def machine(device: torch.device) -> dict[str, Any]:
    """The device used and the machine around it, as JSON-ready fields."""
    return {
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
