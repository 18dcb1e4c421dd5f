"""Super-resolution at ingestion: Lanczos, or a real model read through spandrel.

spandrel recognises the common architectures (Real-ESRGAN, SwinIR, HAT, ...) from a weights
file alone, so `--upscale-model RealESRGAN_x4plus.pth` is all a user gives; the model's own
scale becomes the upscale factor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import spandrel
import torch
from numpy.typing import NDArray

from lisegagr_core.devices import resolve_device
from lisegagr_core.errors import InputError

log = logging.getLogger(__name__)

#: (H, W, 3) uint8 in → (H·N, W·N, 3) uint8 out.
Upscaler = Callable[[NDArray[np.uint8]], NDArray[np.uint8]]


def lanczos_upscaler(factor: int) -> Upscaler:
    def upscale(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        height, width = rgb.shape[:2]
        size = (width * factor, height * factor)
        return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4), np.uint8)

    return upscale


def upscaler_for(model_path: str | None, factor: int, device: str | None = None) -> Upscaler:
    """The model in `model_path` (loaded once per process), else Lanczos by `factor`."""
    if model_path is None:
        return lanczos_upscaler(factor)
    return load_upscaler(model_path, device)[0]


@cache
def load_upscaler(path: str | Path, device: str | None = None) -> tuple[Upscaler, int, str]:
    """(upscaler, its scale, a one-line description) for a super-resolution weights file.

    Loaded once per process and path (workers reuse it for every tile).
    """
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
