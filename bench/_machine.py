"""What machine a benchmark ran on, recorded in every result file."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

from lisegagr_core.training.machine import cpu_model


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
