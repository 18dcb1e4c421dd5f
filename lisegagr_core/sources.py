"""Where masks come from: SAM's automatic mask generator.

A `MaskSource` turns an RGB image (a whole tile, a whitened tile, or a refinement crop) into
a `MaskSet` over that image. `region` says where the image lies in the tile, so a source
that knows the tile's answer (the ground-truth stand-in for tests,
`lisegagr_core.standins.ground_truth`) can look it up; SAM ignores it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from rasterio.windows import Window
from segment_anything import SamAutomaticMaskGenerator

from lisegagr_core.config import AmgSettings
from lisegagr_core.fast_amg import FastMaskGenerator
from lisegagr_core.field_maps import HeadMaskGenerator, require_field_head
from lisegagr_core.masks import MaskSet

if TYPE_CHECKING:
    from lisegagr_core.models import LoadedSam

log = logging.getLogger(__name__)


class MaskSource(Protocol):
    """Anything that proposes masks for an image."""

    name: str

    def generate(self, image: NDArray[np.uint8], region: Window) -> MaskSet:
        """Masks over `image` (H, W, 3) uint8, which is `region` of the tile."""
        ...

    def generate_many(
        self, images: Sequence[NDArray[np.uint8]], regions: Sequence[Window]
    ) -> list[MaskSet]:
        """`generate` over several images, in order (a source may batch them)."""
        ...


class SamMaskSource:
    """Segment Anything's automatic mask generation over a loaded SAM (any size, any device).

    `settings.generator` picks the fast generator (default; same masks, see `fast_amg`) or
    segment_anything's own `SamAutomaticMaskGenerator`.
    """

    def __init__(self, sam: LoadedSam, settings: AmgSettings) -> None:
        self.sam = sam
        self.settings = settings
        self.name = f"sam-amg:{sam.name}"
        self._fast: FastMaskGenerator | None = None
        self._vanilla: SamAutomaticMaskGenerator | None = None
        self._head: HeadMaskGenerator | None = None
        if (
            settings.generator == "field-head"
            or settings.prompts == "field-head"
            or settings.head_clip
        ):
            require_field_head(sam.model, sam.name)
        if settings.generator == "field-head":
            self.name = f"field-head:{sam.name}"
            self._head = HeadMaskGenerator(sam.model, settings)
        elif settings.generator == "fast":
            self._fast = FastMaskGenerator(sam.model, settings)
        else:
            self._vanilla = SamAutomaticMaskGenerator(
                sam.model, **settings.segment_anything_kwargs()
            )

    def generate(self, image: NDArray[np.uint8], region: Window) -> MaskSet:
        return self.generate_many([image], [region])[0]

    @torch.inference_mode()
    def generate_many(
        self, images: Sequence[NDArray[np.uint8]], regions: Sequence[Window]
    ) -> list[MaskSet]:
        """Masks of several images; the fast generator encodes them in shared batches."""
        if self._head is not None:
            return self._head.generate_many(images)
        if self._fast is not None:
            return [masks.to_mask_set() for masks in self._fast.generate_many(images)]
        return [self._generate_vanilla(image) for image in images]

    def _generate_vanilla(self, image: NDArray[np.uint8]) -> MaskSet:
        assert self._vanilla is not None
        records = self._vanilla.generate(image)
        if not records:
            return MaskSet.empty(image.shape[:2])
        return MaskSet.from_masks(
            np.stack([r["segmentation"] for r in records]),
            predicted_iou=[r["predicted_iou"] for r in records],
            stability=[r["stability_score"] for r in records],
        )
