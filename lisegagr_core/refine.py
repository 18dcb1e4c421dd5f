"""Refined segmentation: large masks that swallowed several parcels are cut again.

A mask is under-segmented when many of the edges inside it are not its own outline (edge
ratio) and its colours are varied (entropy). Such a mask is cut out of the image (its box,
everything outside the mask white) and the mask source runs again on that crop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from lisegagr_core.config import RefineSettings
from lisegagr_core.masks import STAGE_REFINED, MaskSet, white_fraction
from lisegagr_core.sources import MaskSource
from lisegagr_core.whitening import WHITE, white_pixels

log = logging.getLogger(__name__)

#: Pixels around a mask's box that edge detection sees (the blur and outline reach this far).
_EDGE_MARGIN = 8


def _cut_out(
    image: NDArray[np.uint8], mask: NDArray[np.bool_], window: Window
) -> NDArray[np.uint8]:
    """The `window` of `image` with every pixel outside `mask` white."""
    crop = image[window.toslices()].copy()
    crop[~mask[window.toslices()]] = WHITE
    return crop


def _box_window(box: NDArray[np.int64], shape: tuple[int, int], margin: int = 0) -> Window:
    """Window of an inclusive XYXY box grown by `margin`, clamped to an (H, W) image."""
    x0, y0 = max(int(box[0]) - margin, 0), max(int(box[1]) - margin, 0)
    x1, y1 = min(int(box[2]) + 1 + margin, shape[1]), min(int(box[3]) + 1 + margin, shape[0])
    return Window(x0, y0, x1 - x0, y1 - y0)


def edge_ratio(
    image: NDArray[np.uint8], mask: NDArray[np.bool_], settings: RefineSettings
) -> float:
    """Share of the edge pixels of the cut-out mask that are not on its own outline.

    image: (H, W, 3) uint8; mask: (H, W) bool. Canny after a Gaussian blur, on the image with
    everything outside the mask white; the outline is the mask's external contour drawn
    `outline_thickness` px wide. No edges at all → 0.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0.0
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
    window = _box_window(box, mask.shape, _EDGE_MARGIN)
    crop = _cut_out(image, mask, window)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    k = settings.blur_kernel
    edges = (
        cv2.Canny(cv2.GaussianBlur(grey, (k, k), 0), settings.canny_low, settings.canny_high) > 0
    )
    total = int(edges.sum())
    if total == 0:
        return 0.0
    contours, _ = cv2.findContours(
        mask[window.toslices()].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    outline = np.zeros(grey.shape, dtype=np.uint8)
    cv2.drawContours(outline, contours, -1, 1, thickness=settings.outline_thickness)
    return float((edges & (outline == 0)).sum()) / total


def colour_entropy(image: NDArray[np.uint8], mask: NDArray[np.bool_]) -> float:
    """Mean over R, G, B of the Shannon entropy (bits) of the mask's 256-bin histograms.

    As in the reference, which measures the cut-out image with everything outside the mask
    white, pixels with any channel at 255 do not count (inside the mask too).
    """
    pixels = image[mask]
    pixels = pixels[(pixels != WHITE).all(axis=1)]
    if len(pixels) == 0:
        return 0.0
    entropies = []
    for channel in range(3):
        p = np.bincount(pixels[:, channel], minlength=256) / len(pixels)
        p = p[p > 0]
        entropies.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(entropies))


@dataclass(frozen=True)
class RefinementReport:
    """What refinement did: candidates examined, masks found under-segmented, masks it made."""

    candidates: int
    under_segmented: int
    refined_masks: int


def find_under_segmented(
    image: NDArray[np.uint8], masks: MaskSet, settings: RefineSettings
) -> NDArray[np.int64]:
    """Indices of masks larger than `min_area` whose edge ratio and colour entropy both pass."""
    flagged = []
    for i in np.flatnonzero(masks.areas > settings.min_area):
        mask = masks.masks[i]
        if (
            edge_ratio(image, mask, settings) > settings.edge_ratio_thresh
            and colour_entropy(image, mask) > settings.entropy_thresh
        ):
            flagged.append(int(i))
    return np.asarray(flagged, dtype=np.int64)


def refine_masks_many(
    images: Sequence[NDArray[np.uint8]],
    masks: Sequence[MaskSet],
    source: MaskSource,
    settings: RefineSettings | Sequence[RefineSettings],
) -> list[tuple[MaskSet, RefinementReport]]:
    """New masks (stage `STAGE_REFINED`, image coordinates) from re-segmenting the suspect
    masks of each image (`settings` for all, or one each); every crop of every image in one
    source call."""
    each = [settings] * len(images) if isinstance(settings, RefineSettings) else list(settings)
    flagged = [find_under_segmented(im, m, s) for im, m, s in zip(images, masks, each, strict=True)]
    owners, crops, windows = [], [], []
    for k, (image, image_masks, indices) in enumerate(zip(images, masks, flagged, strict=True)):
        for i in indices:
            window = _box_window(image_masks.boxes[i], image_masks.shape)
            owners.append(k)
            crops.append(_cut_out(image, image_masks.masks[i], window))
            windows.append(window)
    found: list[list[MaskSet]] = [[] for _ in images]
    for owner, crop, window, pieces in zip(
        owners, crops, windows, source.generate_many(crops, windows) if crops else [], strict=True
    ):
        pieces = pieces.select(
            white_fraction(pieces, white_pixels(crop)) < each[owner].crop_white_drop
        )
        if len(pieces):
            found[owner].append(_place(pieces, window, masks[owner].shape))
    results = []
    for image_masks, indices, pieces_found, image_settings in zip(
        masks, flagged, found, each, strict=True
    ):
        refined = MaskSet.concat(pieces_found, image_masks.shape).with_stage(STAGE_REFINED)
        candidates = int((image_masks.areas > image_settings.min_area).sum())
        log.debug(
            "refinement: %d candidates, %d under-segmented, %d new masks",
            candidates,
            len(indices),
            len(refined),
        )
        results.append((refined, RefinementReport(candidates, len(indices), len(refined))))
    return results


def _place(pieces: MaskSet, window: Window, shape: tuple[int, int]) -> MaskSet:
    """Masks over a crop, placed into full (H, W) masks at `window`."""
    full = np.zeros((len(pieces), *shape), dtype=bool)
    full[(slice(None), *window.toslices())] = pieces.masks
    return MaskSet(full, pieces.predicted_iou, pieces.stability, pieces.stage)
