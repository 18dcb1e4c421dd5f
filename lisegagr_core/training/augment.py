"""Random crops, rotations, flips and colour changes of a training batch, on its device.

Crop, rotation and flip of every image are folded into one affine map per image and applied by
a single `grid_sample` over the batch: bilinear for the pixels, nearest for the labels, so a
label raster stays a label raster. The colour changes are per-image factors.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from lisegagr_core.training.settings import AugmentSettings

# cos and sin of k × 90°, k = 0..3, exactly.
_COS = (1.0, 0.0, -1.0, 0.0)
_SIN = (0.0, 1.0, 0.0, -1.0)
# ITU-R BT.601 weights of R, G, B in a grey value.
_GREY = (0.299, 0.587, 0.114)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: AugmentSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of a batch.

    images: (B, 3, S, S) uint8 or float in 0..255; labels: (B, S, S) integer ids. Returns
    (B, 3, S, S) float32 in 0..255 and (B, S, S) int32. Each image gets a random square crop of
    `crop_min`..1 of its side (resized back to S), a rotation by k × 90°, a left–right flip,
    and brightness, contrast and saturation factors; `generator` lives on the batch's device.
    """
    batch, _, size, _ = images.shape
    device = images.device
    uniform = partial(_uniform, batch, generator, device)
    scale = uniform(settings.crop_min, 1.0)
    centre_x = (1.0 - scale) * uniform(-1.0, 1.0)
    centre_y = (1.0 - scale) * uniform(-1.0, 1.0)
    turns = (
        torch.randint(0, 4, (batch,), generator=generator, device=device)
        if settings.rotate
        else torch.zeros(batch, dtype=torch.int64, device=device)
    )
    mirror = torch.ones(batch, device=device)
    if settings.flip:
        mirror = torch.where(uniform(0.0, 1.0) < 0.5, -mirror, mirror)
    cos = torch.tensor(_COS, device=device)[turns]
    sin = torch.tensor(_SIN, device=device)[turns]
    # Output (x, y) in [-1, 1] → input: centre + scale · rotation · mirror-x · (x, y).
    theta = torch.stack(
        [
            torch.stack([scale * cos * mirror, -scale * sin, centre_x], dim=1),
            torch.stack([scale * sin * mirror, scale * cos, centre_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
    moved = F.grid_sample(
        images.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    moved_labels = F.grid_sample(
        labels.to(torch.float32).unsqueeze(1),
        grid,
        mode="nearest",
        padding_mode="border",
        align_corners=False,
    )
    colour = _jitter_colour(moved, settings, uniform)
    return colour, moved_labels.squeeze(1).round().to(torch.int32)


def _uniform(
    batch: int, generator: torch.Generator, device: torch.device, low: float, high: float
) -> torch.Tensor:
    """(batch,) float32 draws, uniform in [low, high)."""
    return low + (high - low) * torch.rand(batch, generator=generator, device=device)


def _jitter_colour(
    images: torch.Tensor,
    settings: AugmentSettings,
    uniform: Callable[[float, float], torch.Tensor],
) -> torch.Tensor:
    """Brightness, then contrast about the image's mean grey, then saturation about each grey.

    images: (B, 3, S, S) float32 in 0..255 → the same, clamped to 0..255.
    """
    weights = torch.tensor(_GREY, device=images.device).view(1, 3, 1, 1)

    def factor(bounds: tuple[float, float]) -> torch.Tensor:
        return uniform(*bounds).view(-1, 1, 1, 1)

    images = images * factor(settings.brightness)
    mean_grey = (images * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    images = mean_grey + factor(settings.contrast) * (images - mean_grey)
    grey = (images * weights).sum(dim=1, keepdim=True)
    images = grey + factor(settings.saturation) * (images - grey)
    return images.clamp(0.0, 255.0)
