"""Empty ground: areas with no texture at all, where no field can be seen.

Zero-filled margins that carry no nodata value, saturated cloud, flat-filled gaps and
synthetic fills look like that: every channel constant, or nearly, over a neighbourhood. SAM
and the field head both propose masks there (a uniform black raster gave two "fields" along
its edge), so the method never segments them: `segment_images` paints them white (the
method's "nothing left here") before the first round and clears them from every mask before
the partition.

A pixel is empty when the standard deviation of each channel over the `window_px` square
around it is below `max_std` (8-bit levels); only connected empty areas of at least
`min_area` pixels count, and each grows over the rim its window misses at its edge. The
default, 0.3 levels, is measured: at 1.0 smooth fields of 4× super-resolved imagery (the
method's sample images) were called empty in patches (17 % of one image), at 0.5 up to 2 %;
at 0.3 none of them nor any NAIP image has an empty pixel. Sensor noise keeps real open water
above it, so water is left to the model and the classifier.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lisegagr_core.config import EmptyGroundSettings


def empty_ground(image: NDArray[np.uint8], settings: EmptyGroundSettings) -> NDArray[np.bool_]:
    """(H, W) bool: the empty-ground pixels of an (H, W, 3) uint8 image."""
    shape = (image.shape[0], image.shape[1])
    if not settings.enabled or image.size == 0:
        return np.zeros(shape, dtype=bool)
    window = max(3, settings.window_px | 1)
    values = image.astype(np.float32)
    mean = cv2.blur(values, (window, window), borderType=cv2.BORDER_REFLECT)
    square = cv2.blur(values * values, (window, window), borderType=cv2.BORDER_REFLECT)
    variance = np.maximum(square - mean * mean, 0.0)
    flat = np.all(variance < settings.max_std**2, axis=2)
    if not flat.any():
        return flat
    labels, count = ndimage.label(flat)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    large = areas >= max(settings.min_area, 1)
    large[0] = False
    labels[~large[labels]] = 0
    if not labels.any():
        return np.zeros(shape, dtype=bool)
    return _with_rim(image, labels, window // 2, settings.max_std)


def _with_rim(
    image: NDArray[np.uint8], labels: NDArray[np.int32], radius: int, max_std: float
) -> NDArray[np.bool_]:
    """Empty areas grown over the rim the window misses at their edges: pixels within
    `radius` of an area whose colour is that area's median colour (within 3 `max_std`)."""
    ids = np.unique(labels[labels > 0])
    colours = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
    for channel in range(3):
        colours[ids, channel] = ndimage.median(image[..., channel], labels, ids)
    size = 2 * radius + 1
    nearest = ndimage.grey_dilation(labels, size=(size, size))
    rim = (labels == 0) & (nearest > 0)
    distance = np.abs(image.astype(np.float32) - colours[nearest]).max(axis=2)
    return (labels > 0) | (rim & (distance <= max(3 * max_std, 1.0)))
