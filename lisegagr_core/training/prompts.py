"""Point prompts for training: one point inside each of a few fields, a few on bare ground.

A point is drawn from a field's interior (pixels whose whole neighbourhood carries the field's
label), so the field it prompts is never in doubt, and the target of the prompt is that field.
Points on unlabelled ground have no target mask; they teach the IoU head a score of 0. Every
step is a tensor operation over the whole batch, on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PromptBatch:
    """N point prompts over a batch of B images.

    image_index: (N,) int64, the image of each prompt; points: (N, 2) float32, (x, y) = (column,
    row) of the prompted pixel in the model's input frame; field_id: (N,) int64, the label of the
    prompted field, 0 for a point on ground.
    """

    image_index: torch.Tensor
    points: torch.Tensor
    field_id: torch.Tensor

    def __len__(self) -> int:
        return int(self.image_index.numel())

    @property
    def is_field(self) -> torch.Tensor:
        """(N,) bool: the prompt is a field point (not a ground point)."""
        return self.field_id > 0


def interior_pixels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) bool: pixels whose `size` × `size` neighbourhood holds a single label.

    labels: (B, H, W) integer ids (|id| < 2**24). The neighbourhood's largest and smallest label
    (a max-filter of the labels and of their negation) agree exactly when it holds one label;
    neighbourhoods are clipped at the image border.
    """
    values = labels.to(torch.float32).unsqueeze(1)
    pad = size // 2
    highest = F.max_pool2d(values, size, stride=1, padding=pad)
    lowest = -F.max_pool2d(-values, size, stride=1, padding=pad)
    return (highest == lowest).squeeze(1)


def sample_prompts(
    labels: torch.Tensor,
    *,
    field_prompts: int,
    background_prompts: int,
    interior_size: int,
    generator: torch.Generator,
) -> PromptBatch:
    """Up to `field_prompts` fields per image, one interior point each, + ground points.

    labels: (B, H, W) int, 0 = ground, k > 0 = field k, < 0 = neither (padding). Each field with
    an interior gets one uniformly drawn interior point; when an image has more such fields than
    `field_prompts`, a uniform random subset of them is prompted. `background_prompts` points
    per image are drawn without replacement from the interior of its ground (fewer if there is
    less). `generator` lives on the labels' device and makes the draw repeatable.
    """
    batch, height, width = labels.shape
    device = labels.device
    ids = labels.reshape(batch, -1).to(torch.int64)
    interior = interior_pixels(labels, interior_size).reshape(batch, -1)
    draw = torch.rand(ids.shape, generator=generator, device=device)

    # One point per (image, field): the interior pixel with the largest random draw.
    in_field = interior & (ids > 0)
    id_span = int(ids.max().clamp(min=0)) + 1
    group = torch.arange(batch, device=device).unsqueeze(1) * id_span + ids.clamp(min=0)
    field_draw = torch.where(in_field, draw, torch.full_like(draw, -1.0))
    best = torch.full((batch * id_span,), -1.0, device=device)
    best = best.scatter_reduce(0, group.reshape(-1), field_draw.reshape(-1), reduce="amax")
    winners = in_field & (field_draw == best[group])
    field_image, field_pixel = winners.nonzero(as_tuple=True)
    field_group = group[field_image, field_pixel]
    order = torch.argsort(field_group, stable=True)  # equal draws: keep one pixel per field
    field_image, field_pixel, field_group = (
        field_image[order],
        field_pixel[order],
        field_group[order],
    )
    first = torch.ones_like(field_group, dtype=torch.bool)
    first[1:] = field_group[1:] != field_group[:-1]
    field_image, field_pixel = field_image[first], field_pixel[first]

    # At most `field_prompts` per image: rank the fields of each image in a random order.
    priority = torch.rand(field_image.shape, generator=generator, device=device)
    by_priority = torch.argsort(priority)
    by_image = by_priority[torch.argsort(field_image[by_priority], stable=True)]
    field_image, field_pixel = field_image[by_image], field_pixel[by_image]
    per_image = torch.bincount(field_image, minlength=batch)
    starts = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(field_image.numel(), device=device) - starts[field_image]
    keep = rank < field_prompts
    field_image, field_pixel = field_image[keep], field_pixel[keep]

    # Ground points: the largest draws among each image's ground interior.
    ground_draw = torch.where(interior & (ids == 0), draw, torch.full_like(draw, -1.0))
    top_draw, top_pixel = ground_draw.topk(min(background_prompts, height * width), dim=1)
    valid = top_draw >= 0
    ground_image = torch.arange(batch, device=device).unsqueeze(1).expand_as(top_pixel)[valid]
    ground_pixel = top_pixel[valid]

    image_index = torch.cat([field_image, ground_image])
    pixel = torch.cat([field_pixel, ground_pixel])
    points = torch.stack([pixel % width, pixel // width], dim=1).to(torch.float32)
    return PromptBatch(
        image_index=image_index,
        points=points,
        field_id=ids[image_index, pixel].clamp(min=0),
    )


def prompt_targets(labels: torch.Tensor, prompts: PromptBatch, size: int) -> torch.Tensor:
    """(N, size, size) bool: the prompted field of each prompt, at the decoder's resolution.

    labels: (B, H, W) int at the model's input size; they are sampled by nearest neighbour (the
    label under each low-resolution pixel's centre). Ground prompts get an empty mask.
    """
    height, width = labels.shape[1:]
    rows = ((torch.arange(size, device=labels.device) + 0.5) * (height / size)).long()
    cols = ((torch.arange(size, device=labels.device) + 0.5) * (width / size)).long()
    low_resolution = labels[:, rows][:, :, cols]
    targets = low_resolution[prompts.image_index] == prompts.field_id.view(-1, 1, 1)
    return targets & prompts.is_field.view(-1, 1, 1)
