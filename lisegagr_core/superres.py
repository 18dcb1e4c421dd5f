"""Super-resolution at ingestion: Lanczos, or a real model read through spandrel.

spandrel recognises the common architectures (Real-ESRGAN, SwinIR, HAT, ...) from a weights
file alone, so `--upscale-model RealESRGAN_x4plus.pth` is all a user gives; the model's own
scale becomes the upscale factor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import spandrel
import torch
from numpy.typing import NDArray

from lisegagr_core.errors import InputError
from lisegagr_core.models import resolve_device
from lisegagr_core.rasters import Upscaler

log = logging.getLogger(__name__)


def load_upscaler(path: str | Path, device: str | None = None) -> tuple[Upscaler, int, str]:
    """(upscaler, its scale, a one-line description) for a super-resolution weights file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such super-resolution weights file.")
    try:
        descriptor = spandrel.ModelLoader().load_from_file(path)
    except Exception as exc:
        raise InputError(
            f"{path} is not a super-resolution model that spandrel recognises "
            f"({exc.__class__.__name__})."
        ) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3:
        raise InputError(f"{path} is not a 3-channel image super-resolution model.")
    torch_device = resolve_device(device)
    descriptor.to(torch_device).eval()

    @torch.inference_mode()
    def upscale(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        image = torch.from_numpy(rgb).to(torch_device).permute(2, 0, 1)[None].float() / 255.0
        out = descriptor(image).clamp(0.0, 1.0)[0].permute(1, 2, 0)
        return np.asarray((out * 255.0).round().to(torch.uint8).cpu().numpy())

    description = f"{descriptor.architecture.name} ×{descriptor.scale} ({path.name})"
    return upscale, int(descriptor.scale), description
