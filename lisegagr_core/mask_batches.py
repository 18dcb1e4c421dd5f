"""The fast mask generator's candidates and masks (`fast_amg`), as typed batches of device
tensors: every row is one mask, and a batch filters and concatenates all its tensors together,
as segment_anything's `MaskData` does, without leaving the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Self

import numpy as np
import scipy.sparse
import torch
from segment_anything.utils.amg import uncrop_boxes_xyxy, uncrop_masks, uncrop_points

from lisegagr_core.masks import MaskSet


@dataclass(frozen=True)
class _DeviceBatch:
    """Parallel device tensors, one row per mask: filtered and concatenated together."""

    def __len__(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])

    def filter(self, keep: torch.Tensor) -> Self:
        """The rows `keep` selects: an (N,) bool mask or indices (in their order)."""
        return replace(self, **{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    @classmethod
    def cat(cls, batches: Sequence[Self]) -> Self:
        """The rows of `batches` (at least one), in order."""
        return cls(
            **{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)}
        )


@dataclass(frozen=True)
class LowResCandidates(_DeviceBatch):
    """Decoded candidates of one crop before upsampling, on the generator's device.

    logits: (N, h, w) float, the decoder's low-resolution logits over the padded square;
    predicted_iou: (N,); points: (N, 2) the prompt (x, y) in crop pixels.
    """

    logits: torch.Tensor
    predicted_iou: torch.Tensor
    points: torch.Tensor


@dataclass(frozen=True)
class GeneratedMasks(_DeviceBatch):
    """Masks of one crop or image, on the generator's device; for an image, best first.

    masks: (N, H, W) bool; predicted_iou, stability: (N,) float; boxes: (N, 4) XYXY
    inclusive; points: (N, 2) the prompt (x, y); crop_area: (N,) float, the area of the crop
    each mask came from (NMS across crops prefers the smaller crop).
    """

    masks: torch.Tensor
    predicted_iou: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    crop_area: torch.Tensor

    @classmethod
    def empty(cls, image_size: tuple[int, int], device: torch.device) -> GeneratedMasks:
        """No masks over an (H, W) image."""
        h, w = image_size
        return cls(
            masks=torch.zeros((0, h, w), dtype=torch.bool, device=device),
            predicted_iou=torch.zeros(0, device=device),
            stability=torch.zeros(0, device=device),
            boxes=torch.zeros((0, 4), dtype=torch.long, device=device),
            points=torch.zeros((0, 2), device=device),
            crop_area=torch.zeros(0, device=device),
        )

    def uncropped(self, crop_box: list[int], image_size: tuple[int, int]) -> GeneratedMasks:
        """Masks of the crop `crop_box` (XYXY) placed into an (H, W) image."""
        h, w = image_size
        return replace(
            self,
            masks=uncrop_masks(self.masks, crop_box, h, w),
            boxes=uncrop_boxes_xyxy(self.boxes, crop_box),
            points=uncrop_points(self.points, crop_box),
        )

    def to_mask_set(self) -> MaskSet:
        """The masks as a `MaskSet`: one device-to-host copy of the boolean masks, and their
        sparse pixel matrix found on the device (the scan the CPU would otherwise do)."""
        n, h, w = self.masks.shape
        rows, cols = torch.nonzero(self.masks.reshape(n, h * w), as_tuple=True)
        indptr = torch.zeros(n + 1, dtype=torch.int64, device=self.masks.device)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        pixels = scipy.sparse.csr_matrix(
            (
                np.ones(len(cols), dtype=np.float32),
                cols.cpu().numpy().astype(np.int32, copy=False),
                indptr.cpu().numpy(),
            ),
            shape=(n, h * w),
        )
        masks = MaskSet.from_masks(
            self.masks.cpu().numpy(),
            predicted_iou=self.predicted_iou.float().cpu().numpy(),
            stability=self.stability.float().cpu().numpy(),
        )
        return masks.with_pixels(pixels)
