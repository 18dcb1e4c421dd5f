"""What a model's field head sees in an image: dense maps, learned prompts, and instances.

    maps = predict_field_maps(sam, encoder, [image])[0]      # extent, boundary, depth (H, W)
    points = head_prompts(maps, settings)                    # one (x, y) per field it sees
    labels = head_instances(maps, settings)                  # its own fields, a partition

`predict_field_maps` runs the image encoder and the head (`lisegagr_core.field_head`) and
brings the maps back to the image's pixels. A field's seed is a connected piece of confident
extent away from any boundary (extent > `head_extent_thresh`, boundary <
`head_boundary_thresh`, opened once); `head_prompts` places one prompt at each seed's deepest
pixel (the interior maximum of the depth map), and `head_instances` grows the seeds back over
the extent by a watershed on the boundary map, so each field reaches its outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage
from segment_anything.modeling import Sam
from skimage.segmentation import relabel_sequential, watershed

from lisegagr_core.config import AmgSettings
from lisegagr_core.encoder import ImageEncoder
from lisegagr_core.errors import InputError
from lisegagr_core.field_head import BOUNDARY, DEPTH, EXTENT, field_head_of
from lisegagr_core.masks import MaskSet
from lisegagr_core.whitening import white_pixels

FloatMap = NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class FieldMaps:
    """A field head's view of one (H, W) image, each map float32 in 0..1."""

    extent: FloatMap
    boundary: FloatMap
    depth: FloatMap

    @property
    def shape(self) -> tuple[int, int]:
        return (self.extent.shape[0], self.extent.shape[1])


def require_field_head(sam: Sam, name: str) -> None:
    """Raise InputError, naming the model, when `sam` has no field head."""
    if field_head_of(sam) is None:
        raise InputError(
            f"{name} has no field head, which learned prompts and head masks need; use "
            "amg.prompts: grid and amg.generator: fast, or a model trained with "
            "field_head_width (lisegagr model train)."
        )


@torch.inference_mode()
def predict_field_maps(
    sam: Sam,
    encoder: ImageEncoder,
    images: Sequence[NDArray[np.uint8]],
    features: torch.Tensor | None = None,
    inputs: Sequence[torch.Tensor] | None = None,
    *,
    mirror: bool = False,
) -> list[FieldMaps]:
    """The head's maps of (H, W, 3) uint8 `images`, at each image's own size.

    `inputs` are the images' model inputs (`encoder.prepare`) and `features` their embeddings,
    when the caller already has them; each image is prepared and encoded once either way.
    `mirror`: each map the mean of the image's and its left-right mirror's (the mirror's
    flipped back), at the cost of one more encoder pass.
    """
    head = field_head_of(sam)
    if head is None:
        raise ValueError("the model has no field head")
    if not images:
        return []
    if inputs is None:
        inputs = [encoder.prepare(image) for image in images]
    if features is None:
        features = encoder.encode_prepared(inputs)
    maps = []
    for index, image in enumerate(images):
        prepared = inputs[index][None]
        logits = head(prepared, features[index : index + 1].to(prepared.dtype))
        height, width = encoder.input_size((image.shape[0], image.shape[1]))
        probabilities = logits[:, :, :height, :width].float().sigmoid()
        resized = F.interpolate(probabilities, size=image.shape[:2], mode="bilinear")[0]
        values = resized.cpu().numpy().astype(np.float32)
        maps.append(FieldMaps(values[EXTENT], values[BOUNDARY], values[DEPTH]))
    if mirror:
        mirrored = predict_field_maps(
            sam, encoder, [np.ascontiguousarray(image[:, ::-1]) for image in images]
        )
        maps = [_mean(found, flipped) for found, flipped in zip(maps, mirrored, strict=True)]
    return maps


def _mean(maps: FieldMaps, mirrored: FieldMaps) -> FieldMaps:
    """The mean of an image's maps and its mirror's, flipped back onto the image."""

    def mean(a: FloatMap, b: FloatMap) -> FloatMap:
        return np.asarray((a + b[:, ::-1]) / 2, dtype=np.float32)

    return FieldMaps(
        mean(maps.extent, mirrored.extent),
        mean(maps.boundary, mirrored.boundary),
        mean(maps.depth, mirrored.depth),
    )


def seed_labels(
    maps: FieldMaps, settings: AmgSettings, allowed: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.int32], int]:
    """Fields' cores: confident extent away from boundaries, opened, pieces of at least
    `head_min_seed_area` px; `allowed` (H, W) bool restricts them (e.g. to unwhitened pixels)."""
    core = (maps.extent > settings.head_extent_thresh) & (
        maps.boundary < settings.head_boundary_thresh
    )
    if allowed is not None:
        core &= allowed
    if settings.head_opening_px > 0:
        structure = ndimage.generate_binary_structure(2, 1)
        core = ndimage.binary_opening(
            core, structure=structure, iterations=settings.head_opening_px
        )
    labels, count = ndimage.label(core)
    if count:
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        small = areas < settings.head_min_seed_area
        small[0] = False
        labels[small[labels]] = 0
        labels = relabel_sequential(labels)[0]
        count = int(labels.max())
    return labels.astype(np.int32), count


def head_prompts(
    maps: FieldMaps, settings: AmgSettings, allowed: NDArray[np.bool_] | None = None
) -> NDArray[np.float64]:
    """(N, 2) (x, y) prompts: the deepest pixel of each seed (one per field the head sees).

    Pixel centres, as segment_anything's grid points are."""
    seeds, count = seed_labels(maps, settings, allowed)
    if count == 0:
        return np.zeros((0, 2), dtype=np.float64)
    index = np.arange(1, count + 1)
    rows_cols = ndimage.maximum_position(maps.depth, seeds, index)
    points = np.array([(col + 0.5, row + 0.5) for row, col in rows_cols], dtype=np.float64)
    return points


def head_instances(
    maps: FieldMaps, settings: AmgSettings, allowed: NDArray[np.bool_] | None = None
) -> NDArray[np.int32]:
    """(H, W) labels of the head's own fields: seeds grown by a watershed on the boundary
    map over the extent (extent > `head_extent_thresh`), 0 elsewhere."""
    seeds, count = seed_labels(maps, settings, allowed)
    if count == 0:
        return np.zeros(maps.shape, dtype=np.int32)
    extent = maps.extent > settings.head_extent_thresh
    if allowed is not None:
        extent &= allowed
    grown = watershed(maps.boundary, markers=seeds, mask=extent | (seeds > 0))
    return np.asarray(grown, dtype=np.int32)


def instances_as_masks(labels: NDArray[np.int32], maps: FieldMaps, min_area: int = 1) -> MaskSet:
    """The instances of `labels` as a MaskSet; predicted IoU: their mean extent; stability:
    1 − their mean boundary."""
    count = int(labels.max())
    if count == 0:
        return MaskSet.empty(maps.shape)
    index = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = index[areas >= min_area]
    if keep.size == 0:
        return MaskSet.empty(maps.shape)
    extent = np.asarray(ndimage.mean(maps.extent, labels, keep), dtype=np.float32)
    boundary = np.asarray(ndimage.mean(maps.boundary, labels, keep), dtype=np.float32)
    masks = labels[None] == keep[:, None, None]
    return MaskSet.from_masks(masks, predicted_iou=extent, stability=1.0 - boundary)


class HeadMaskGenerator:
    """A mask source's generator that proposes the field head's instances instead of SAM's
    decoder masks (`AmgSettings.generator` ``field-head``). Whitened pixels (rounds 2–4) are
    never part of an instance."""

    def __init__(self, sam: Sam, settings: AmgSettings) -> None:
        self.sam = sam
        self.settings = settings
        self.encoder = ImageEncoder.shared(
            sam, precision=settings.encoder_precision, compile=settings.compile_encoder
        )

    def generate_many(self, images: Sequence[NDArray[np.uint8]]) -> list[MaskSet]:
        maps = predict_field_maps(self.sam, self.encoder, images, mirror=self.settings.head_mirror)
        results = []
        for image, found in zip(images, maps, strict=True):
            allowed = ~white_pixels(image)
            labels = head_instances(found, self.settings, allowed)
            results.append(instances_as_masks(labels, found))
        return results
