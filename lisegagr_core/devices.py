"""The torch device to run on: the one asked for, checked; else CUDA when present; else the CPU."""

from __future__ import annotations

import torch

from lisegagr_core.errors import InputError


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to run on: `requested`, else CUDA when available, else the CPU.

    A CUDA device without an index gets the current one, so equal devices compare equal.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise InputError(f"{requested!r} is not a device; use cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {requested!r} was asked for but no CUDA GPU is available")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise InputError(
                f"device {requested!r} does not exist; "
                f"this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
        device = torch.device("cuda", index)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {requested!r} was asked for but MPS is not available")
    return device
