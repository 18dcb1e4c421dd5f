"""Where masks come from: SAM's automatic mask generator, or ground truth for tests.

A `MaskSource` turns an RGB image (a whole tile, a whitened tile, or a refinement crop) into
a `MaskSet` over that image. `region` says where the image lies in the tile, so a source
that knows the tile's answer (the ground-truth source) can look it up; SAM ignores it.
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
from lisegagr_core.masks import MaskSet
from lisegagr_core.whitening import white_pixels

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
        if settings.generator == "fast":
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


class GroundTruthMaskSource:
    """Masks derived from a known instance raster, with controllable misses and merges.

    Each call returns the instances that are mostly visible (not white) in the image given,
    as SAM would segment what it can see. Call k (0-based) misses `miss_fractions[k]` of them
    and merges `merge_fractions[k]` of the touching pairs into one mask; calls past the end of
    a sequence use 0. Choices are seeded, so runs repeat exactly.

    instances: (H, W) integer ids over the whole tile, 0 = not a field.
    """

    def __init__(
        self,
        instances: NDArray[np.integer],
        *,
        miss_fractions: Sequence[float] = (),
        merge_fractions: Sequence[float] = (),
        min_visible_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.instances = np.asarray(instances)
        self.miss_fractions = tuple(miss_fractions)
        self.merge_fractions = tuple(merge_fractions)
        self.min_visible_fraction = min_visible_fraction
        self.seed = seed
        self.calls = 0
        self.name = "ground-truth"

    def generate_many(
        self, images: Sequence[NDArray[np.uint8]], regions: Sequence[Window]
    ) -> list[MaskSet]:
        return [self.generate(image, region) for image, region in zip(images, regions, strict=True)]

    def _fraction(self, fractions: tuple[float, ...], call: int) -> float:
        return fractions[call] if call < len(fractions) else 0.0

    def generate(self, image: NDArray[np.uint8], region: Window) -> MaskSet:
        call, self.calls = self.calls, self.calls + 1
        rng = np.random.default_rng((self.seed, call))
        truth = self.instances[region.toslices()]
        if truth.shape != image.shape[:2]:
            raise ValueError(f"region {region} does not match an image of shape {image.shape}")
        ids, areas = np.unique(truth[truth > 0], return_counts=True)
        visible_px = np.bincount(truth[~white_pixels(image)].ravel(), minlength=truth.max() + 1)
        visible = ids[visible_px[ids] >= self.min_visible_fraction * areas]

        n_missed = round(self._fraction(self.miss_fractions, call) * len(visible))
        visible = np.setdiff1d(visible, rng.choice(visible, size=n_missed, replace=False))
        groups = self._merge_groups(truth, visible, self._fraction(self.merge_fractions, call), rng)
        if not groups:
            return MaskSet.empty(image.shape[:2])
        return MaskSet.from_masks(np.stack([np.isin(truth, group) for group in groups]))

    @staticmethod
    def _merge_groups(
        truth: NDArray[np.integer],
        visible: NDArray[np.integer],
        merge_fraction: float,
        rng: np.random.Generator,
    ) -> list[list[int]]:
        """Visible ids as groups: singletons, and a share of touching pairs fused."""
        pairs = _touching_pairs(truth, set(visible.tolist()))
        n_merges = round(merge_fraction * len(pairs))
        merged: set[int] = set()
        groups: list[list[int]] = []
        for a, b in rng.permutation(pairs)[:n_merges] if n_merges else []:
            if a in merged or b in merged:
                continue
            merged.update((int(a), int(b)))
            groups.append([int(a), int(b)])
        groups.extend([int(i)] for i in visible if int(i) not in merged)
        return groups


def _touching_pairs(truth: NDArray[np.integer], allowed: set[int]) -> NDArray[np.int64]:
    """(P, 2) sorted id pairs of instances that share an edge (4-neighbourhood)."""
    pairs = []
    for a, b in ((truth[:, :-1], truth[:, 1:]), (truth[:-1, :], truth[1:, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        pairs.append(
            np.stack([np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])], 1)
        )
    unique = np.unique(np.concatenate(pairs).astype(np.int64), axis=0)
    keep = [i for i, (a, b) in enumerate(unique) if a in allowed and b in allowed]
    return unique[keep].reshape(-1, 2)
