"""Whitening: paint what is already segmented white so the next AMG round sees the rest.

Each function takes an RGB image `(H, W, 3) uint8` and returns a new one; white is
(255, 255, 255). The order inside one whitening is: kept masks painted white, strong edges
erased (for round `edge_erase_from_round` on: the reference erases them only in the image
fed to round 4), small dark residue painted white, and everything but large dark regions
painted white. As in the reference, the residue step uses OpenCV's grey (BT.601) and
Otsu's `≤`, the dark-region step scikit-image's grey (Rec. 709), a strict `<` and
4-connected regions.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from skimage.color import rgb2gray
from skimage.filters import threshold_otsu

from lisegagr_core.config import WhiteningSettings

WHITE = 255

Image = NDArray[np.uint8]


def white_pixels(image: Image) -> NDArray[np.bool_]:
    """(H, W) bool: pixels whose three channels are all 255."""
    return np.all(image == WHITE, axis=2)


def unsegmented_fraction(image: Image) -> float:
    """Share of pixels that are not white."""
    return 1.0 - float(white_pixels(image).mean())


def diamond(radius: int) -> NDArray[np.uint8]:
    """(2r+1, 2r+1) uint8 kernel of the pixels within city-block distance `radius`.

    One dilation with it equals `radius` binary dilations with a 3×3 cross (the reference's
    `scipy.ndimage.binary_dilation(mask, iterations=3)`).
    """
    offsets = np.abs(np.arange(-radius, radius + 1))
    return (offsets[:, None] + offsets[None, :] <= radius).astype(np.uint8)


def paint_masks_white(image: Image, covered: NDArray[np.bool_], dilation_px: int) -> Image:
    """Paint `covered` (H, W) bool, dilated by `dilation_px` (city-block), white."""
    if dilation_px > 0:
        covered = cv2.dilate(covered.astype(np.uint8), diamond(dilation_px)).astype(bool)
    out = image.copy()
    out[covered] = WHITE
    return out


def erase_strong_edges(image: Image, settings: WhiteningSettings) -> Image:
    """Paint white where blurred, dilated Canny edges saturate (dense edge zones: roads, trees)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, settings.edge_canny_low, settings.edge_canny_high)
    kernel = np.ones((settings.edge_dilate_kernel, settings.edge_dilate_kernel), dtype=np.uint8)
    edges = cv2.dilate(edges, kernel, iterations=settings.edge_dilate_iterations)
    k = settings.edge_blur_kernel
    blurred = cv2.GaussianBlur(edges, (k, k), 0)
    out = image.copy()
    out[blurred == WHITE] = WHITE
    return out


def _dark_pixels(image: Image) -> NDArray[np.uint8]:
    """(H, W) uint8 255 where the grey image is at or below its Otsu threshold, else 0."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, dark = cv2.threshold(grey, 0, WHITE, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    return np.asarray(dark, dtype=np.uint8)


def clear_dark_residue(image: Image, max_area: float) -> Image:
    """Paint white the dark specks (external contours of area < `max_area`) left by whitening."""
    contours, _ = cv2.findContours(_dark_pixels(image), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    specks = [c for c in contours if cv2.contourArea(c) < max_area]
    out = image.copy()
    if specks:
        cv2.drawContours(out, specks, -1, (WHITE, WHITE, WHITE), thickness=cv2.FILLED)
    return out


def _dark_pixels_rec709(image: Image) -> NDArray[np.uint8]:
    """(H, W) uint8 255 where scikit-image's grey is strictly below its Otsu threshold, else 0."""
    grey = rgb2gray(image)
    return np.where(grey < threshold_otsu(grey), WHITE, 0).astype(np.uint8)


def keep_large_dark_regions(image: Image, min_area: int, bright_threshold: int) -> Image:
    """Paint white all but dark regions of `min_area` px or more, and bright pixels.

    Dark: scikit-image's grey (Rec. 709 weights) strictly below its Otsu threshold; regions
    are 4-connected (the reference's `remove_small_objects`). Bright pixels are those whose
    three channels are all above `bright_threshold`.
    """
    _, regions, stats, _ = cv2.connectedComponentsWithStats(
        _dark_pixels_rec709(image), connectivity=4
    )
    large = stats[:, cv2.CC_STAT_AREA] >= min_area
    large[0] = False  # component 0 is the not-dark background
    keep = large[regions]
    out = image.copy()
    out[~keep] = WHITE
    out[np.all(image > bright_threshold, axis=2)] = WHITE
    return out


def whiten(
    image: Image, covered: NDArray[np.bool_], next_round: int, settings: WhiteningSettings
) -> Image:
    """The image the next round sees: `covered` (H, W) bool masks so far painted white, cleaned."""
    out = paint_masks_white(image, covered, settings.mask_dilation_px)
    if next_round >= settings.edge_erase_from_round:
        out = erase_strong_edges(out, settings)
    out = clear_dark_residue(out, settings.residue_max_area)
    return keep_large_dark_regions(out, settings.dark_region_min_area, settings.bright_threshold)
