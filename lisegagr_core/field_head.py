"""A dense field head on SAM's image encoder: field extent, field boundary and the distance to it.

SAM learns fields only through prompted masks; every pixel of a labelled image also says
whether it is field, whether it lies on a field's outline, and how deep inside its field it is.
`FieldHead` predicts those three maps at the model's full input resolution, from the image
embedding (the encoder's 1/16 grid) and a small convolutional path from the image itself, with
U-Net skips at 1/8, 1/4, 1/2 and 1/1 (the embedding alone is 24 × 24 at a 384-px input):

    maps = sam.field_head(normalised_image, sam.image_encoder(normalised_image))
    maps.sigmoid()   # (B, 3, S, S): extent, boundary, depth, each in 0..1

It lives inside the model (``sam.field_head``, keys ``field_head.*`` of the state dict), so a
model file carries its head. `head_targets` makes the three targets from a label raster, and
`head_loss` is the training objective (BCE + dice for extent and boundary, the boundary's pixels
weighted, and BCE against the soft depth target).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

#: Channels of the head's output, in order.
HEAD_CHANNELS = ("extent", "boundary", "depth")
EXTENT, BOUNDARY, DEPTH = range(len(HEAD_CHANNELS))
# Widths of the image path at 1/1, 1/2, 1/4, 1/8 and 1/16 of the input, as multiples of `width`.
_LEVEL_WIDTHS = (1, 2, 3, 4, 6)


def _block(in_channels: int, out_channels: int, convs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class FieldHead(nn.Module):
    """Per-pixel field extent, boundary and depth logits from an image and its SAM embedding.

    `width` is the channel count at full resolution (the levels below have 2, 3, 4 and 6 times
    as many); `embed_dim` is the embedding's channel count (SAM's ``prompt_embed_dim``). The
    input side must be a multiple of 16 (SAM's patch size), as every SAM input is.
    """

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        widths = [width * factor for factor in _LEVEL_WIDTHS]
        self.width = width
        # Full resolution gets one convolution each way: it is where most of the cost is.
        self.down = nn.ModuleList(
            [_block(3, widths[0], convs=1)]
            + [_block(widths[i - 1], widths[i]) for i in range(1, len(widths))]
        )
        self.embedding = nn.Sequential(
            nn.Conv2d(embed_dim, widths[-1], 1), nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True)
        )
        self.fuse = _block(2 * widths[-1], widths[-1])
        self.up = nn.ModuleList(
            [
                _block(widths[i + 1] + widths[i], widths[i], convs=1 if i == 0 else 2)
                for i in reversed(range(len(widths) - 1))
            ]
        )
        self.out = nn.Conv2d(widths[0], len(HEAD_CHANNELS), 1)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) logits of `image` (B, 3, S, S, SAM-normalised) and `embedding`."""
        skips = []
        features = image
        for index, block in enumerate(self.down):
            if index:
                features = F.max_pool2d(features, 2)
            features = block(features)
            skips.append(features)
        context = self.embedding(embedding)
        if context.shape[-2:] != features.shape[-2:]:
            context = F.interpolate(context, size=features.shape[-2:], mode="bilinear")
        features = self.fuse(torch.cat([features, context], dim=1))
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            features = F.interpolate(features, size=skip.shape[-2:], mode="bilinear")
            features = block(torch.cat([features, skip], dim=1))
        logits: torch.Tensor = self.out(features)
        return logits


def attach_field_head(sam: nn.Module, width: int, embed_dim: int) -> FieldHead:
    """Give `sam` a fresh `FieldHead` as ``sam.field_head`` (its state dict gains its keys)."""
    head = FieldHead(width, embed_dim)
    sam.add_module("field_head", head)
    return head


def field_head_of(sam: nn.Module) -> FieldHead | None:
    """The model's field head, or None when it has none."""
    head = getattr(sam, "field_head", None)
    return head if isinstance(head, FieldHead) else None


@dataclass(frozen=True)
class HeadTargets:
    """What the head learns from one batch of labels, all (B, S, S).

    extent and boundary: bool; depth: float in 0..1, each field's distance to its outline over
    the largest such distance in that field (1 at its most interior pixels, 0 off fields);
    valid: bool, False on padding.
    """

    extent: torch.Tensor
    boundary: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor


def head_targets(labels: torch.Tensor) -> HeadTargets:
    """Targets of `labels` (B, S, S) int, 0 ground, k > 0 field k, negative padding.

    A pixel is boundary when its 3 × 3 neighbourhood holds two labels (field and field, or field
    and ground): outlines about 2 px wide, both sides of the edge. Edges with padding are not
    boundaries. Depth comes from scipy's Euclidean distance transform on the CPU.
    """
    valid = labels >= 0
    values = labels.to(torch.float32).unsqueeze(1)
    highest = F.max_pool2d(values, 3, stride=1, padding=1).squeeze(1)
    lowest = -F.max_pool2d(-values, 3, stride=1, padding=1).squeeze(1)
    boundary = (highest != lowest) & (lowest >= 0)
    extent = labels > 0
    interior = (extent & ~boundary).cpu().numpy()
    ids = labels.cpu().numpy()
    depth = np.zeros(ids.shape, dtype=np.float32)
    for index in range(len(ids)):
        distance = ndimage.distance_transform_edt(interior[index]).astype(np.float32)
        fields = np.unique(ids[index][ids[index] > 0])
        if fields.size == 0:
            continue
        deepest = np.zeros(int(fields.max()) + 1, dtype=np.float32)
        deepest[fields] = ndimage.maximum(distance, ids[index], fields)
        scale = deepest[np.clip(ids[index], 0, None)]
        depth[index] = np.divide(distance, scale, out=np.zeros_like(distance), where=scale > 0)
    return HeadTargets(
        extent=extent,
        boundary=boundary,
        depth=torch.from_numpy(depth).to(labels.device),
        valid=valid,
    )


@dataclass(frozen=True)
class HeadLoss:
    """Scalar tensors of one batch: the weighted `total` and each term unweighted."""

    total: torch.Tensor
    extent: torch.Tensor
    boundary: torch.Tensor
    depth: torch.Tensor

    def detached(self) -> HeadLoss:
        """The same values, cut from the autograd graph."""
        return HeadLoss(*(getattr(self, item.name).detach() for item in fields(self)))


def _masked_dice(
    probabilities: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    probabilities = probabilities * valid
    truth = truth * valid
    overlap = (probabilities * truth).sum()
    return 1.0 - (2.0 * overlap + 1.0) / (probabilities.sum() + truth.sum() + 1.0)


def head_loss(
    logits: torch.Tensor,
    targets: HeadTargets,
    *,
    extent_weight: float = 1.0,
    boundary_weight: float = 1.0,
    depth_weight: float = 1.0,
    boundary_pixel_weight: float = 4.0,
) -> HeadLoss:
    """The head's objective over the valid pixels of a batch.

    logits: (B, 3, S, S). Extent: BCE + dice. Boundary: BCE with its boundary pixels weighted
    `boundary_pixel_weight` (they are few) + dice. Depth: BCE against the soft depth target.
    """
    logits = logits.float()
    valid = targets.valid.to(logits.dtype)
    count = valid.sum().clamp(min=1.0)
    extent_truth = targets.extent.to(logits.dtype)
    boundary_truth = targets.boundary.to(logits.dtype)

    def bce(channel: int, truth: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits[:, channel], truth, reduction="none")
        return (loss * weight).sum() / count

    probabilities = logits.sigmoid()
    extent = bce(EXTENT, extent_truth, valid) + _masked_dice(
        probabilities[:, EXTENT], extent_truth, valid
    )
    pixel_weight = valid * (1.0 + (boundary_pixel_weight - 1.0) * boundary_truth)
    boundary = bce(BOUNDARY, boundary_truth, pixel_weight) + _masked_dice(
        probabilities[:, BOUNDARY], boundary_truth, valid
    )
    depth = bce(DEPTH, targets.depth, valid)
    total = extent_weight * extent + boundary_weight * boundary + depth_weight * depth
    return HeadLoss(total=total, extent=extent, boundary=boundary, depth=depth)


@torch.no_grad()
def head_scores(logits: torch.Tensor, targets: HeadTargets) -> dict[str, float]:
    """Pixel IoU of the predicted extent and boundary (logit > 0) with the truth, valid pixels."""
    valid = targets.valid

    def iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
        inter = (predicted & truth & valid).sum()
        union = ((predicted | truth) & valid).sum()
        return float(inter) / max(float(union), 1.0)

    return {
        "extent_iou": iou(logits[:, EXTENT] > 0, targets.extent),
        "boundary_iou": iou(logits[:, BOUNDARY] > 0, targets.boundary),
    }
