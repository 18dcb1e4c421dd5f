"""Square crops of instances, as the classifier sees them, and classifying every instance.

Each instance is cut to the square centred on its bounding box whose side is the box's longer
side; pixels outside the instance (and outside the image) are black. The square is resampled
to S × S: each output pixel is the mean of k × k samples spread evenly over its footprint,
k = ceil(side / S), each sample the nearest source pixel. Shrinking by an integer factor is
thus an exact box (area) average; enlarging repeats pixels (nearest neighbour).

All instances of a batch are cut at once by index arithmetic on the device (one gather per
sub-sample offset, no loop over instances), and the same function makes the training crops
(`build_crop_dataset`) and the crops classified in the pipeline, so both see equal pixels.

    scores = classify_instances(tile_rgb, tile_labels, classifier)   # {instance id: P(field)}
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from lisegagr_core.classify.model import IMAGENET_MEAN, IMAGENET_STD, FieldClassifier

log = logging.getLogger(__name__)

#: Crops classified per forward pass by default (a ResNet-50 batch of 64 fits any GPU).
DEFAULT_BATCH_SIZE = 64


def instance_boxes(
    labels: NDArray[np.integer], ids: Sequence[int] | NDArray[np.integer]
) -> NDArray[np.int64]:
    """Bounding boxes (N, 4) int64 as (row0, col0, row1, col1), ends exclusive, of `ids`.

    labels: (H, W) integer ids. An id absent from `labels` raises ValueError.
    """
    wanted = np.asarray(ids, dtype=np.int64)
    present, dense = np.unique(labels, return_inverse=True)
    index = np.searchsorted(present, wanted)
    found = (index < len(present)) & (present[np.minimum(index, len(present) - 1)] == wanted)
    if not found.all() or (wanted == 0).any():
        raise ValueError(f"instance ids not in the labels: {wanted[~found | (wanted == 0)][:10]}")
    slices = ndimage.find_objects(dense.reshape(labels.shape) + 1)
    boxes = np.zeros((len(wanted), 4), dtype=np.int64)
    for row, found_slices in enumerate(slices[i] for i in index):
        if found_slices is not None:  # always: every id in `present` has pixels
            rows, cols = found_slices
            boxes[row] = (rows.start, cols.start, rows.stop, cols.stop)
    return boxes


def square_windows(boxes: NDArray[np.int64]) -> NDArray[np.int64]:
    """(N, 3) int64 (top, left, side): the square centred on each (N, 4) box, side its longer side.

    When the sides differ by an odd number of pixels, the extra pixel goes below / right.
    """
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sides = np.maximum(heights, widths)
    top = boxes[:, 0] - (sides - heights) // 2
    left = boxes[:, 1] - (sides - widths) // 2
    return np.stack([top, left, sides], axis=1)


def square_crops(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.integer],
    ids: Sequence[int] | NDArray[np.integer],
    size: int = 224,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The instances `ids` as square crops, (N, 3, size, size) uint8 on `device`.

    rgb: (H, W, 3) uint8; labels: (H, W) integer ids, 0 = background. See the module
    docstring for the square, the black outside and the resampling.
    """
    wanted = np.asarray(ids, dtype=np.int64)
    image = _DeviceImage(rgb, labels, device)
    return image.crops(wanted, square_windows(instance_boxes(labels, wanted)), size)


class _DeviceImage:
    """An image and its labels on a device, flattened for gathering crop samples."""

    def __init__(
        self,
        rgb: NDArray[np.uint8],
        labels: NDArray[np.integer],
        device: torch.device | str | None,
    ) -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"labels {labels.shape} do not match the image {rgb.shape[:2]}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.height, self.width = labels.shape
        self.pixels = torch.from_numpy(rgb).to(self.device).reshape(-1, 3)
        self.labels = (
            torch.from_numpy(labels.astype(np.int64, copy=False)).to(self.device).reshape(-1)
        )

    def crops(self, ids: NDArray[np.int64], windows: NDArray[np.int64], size: int) -> torch.Tensor:
        """(N, 3, size, size) uint8 crops of `ids` over their (N, 3) (top, left, side) squares."""
        if len(ids) == 0:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=self.device)
        top, left, side = torch.from_numpy(windows).to(self.device).double().unbind(dim=1)
        samples = torch.ceil(side / size).clamp(min=1)  # k per instance
        instance_ids = torch.from_numpy(ids).to(self.device)
        steps = torch.arange(size, dtype=torch.float64, device=self.device)
        total = torch.zeros((len(ids), size, size, 3), dtype=torch.float32, device=self.device)
        k_max = int(samples.max())
        for sub_row, sub_col in itertools.product(range(k_max), range(k_max)):
            # Only instances with more than max(sub_row, sub_col) samples per side take part.
            active = torch.nonzero(samples > max(sub_row, sub_col)).squeeze(1)
            k = samples[active]
            rows, row_inside = _sample_positions(top[active], side[active], k, steps, sub_row)
            cols, col_inside = _sample_positions(left[active], side[active], k, steps, sub_col)
            row_inside &= rows < self.height
            col_inside &= cols < self.width
            rows, cols = rows.clamp(0, self.height - 1), cols.clamp(0, self.width - 1)
            flat = rows[:, :, None] * self.width + cols[:, None, :]
            keep = (
                row_inside[:, :, None]
                & col_inside[:, None, :]
                & (self.labels[flat] == instance_ids[active].view(-1, 1, 1))
            )
            total.index_add_(0, active, self.pixels[flat].float() * keep.unsqueeze(-1))
        mean = total / (samples * samples).float().view(-1, 1, 1, 1)
        return torch.round(mean).clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()


def _sample_positions(
    start: torch.Tensor,
    side: torch.Tensor,
    samples: torch.Tensor,
    steps: torch.Tensor,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source pixels (N, S) int64 of sample `offset` (of k = `samples` per output pixel) along
    one axis of each square, and whether each is at or past 0 (the caller checks the far end).
    """
    size = len(steps)
    position = start[:, None] + (steps[None, :] + (offset + 0.5) / samples[:, None]) * (
        side[:, None] / size
    )
    index = torch.floor(position).long()
    return index, index >= 0


def normalise_crops(
    crops: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 crops (N, 3, S, S) → float32 (N, 3, S, S): RGB / 255, minus mean, over std."""
    scale = torch.tensor(std, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    shift = torch.tensor(mean, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    return (crops.float() / 255.0 - shift) / scale


def instance_crops(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.integer],
    ids: Sequence[int] | NDArray[np.integer],
    size: int = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The classifier's input for instances `ids`: (N, 3, size, size) float32, normalised.

    rgb: (H, W, 3) uint8; labels: (H, W) integer ids. `square_crops`, then `normalise_crops`.
    """
    return normalise_crops(square_crops(rgb, labels, ids, size, device), mean, std)


def classify_instances(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.integer],
    classifier: FieldClassifier,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[int, float]:
    """Field score (probability of "field") of every instance of `labels`, by id.

    rgb: (H, W, 3) uint8 (a tile, or a whole image); labels: (H, W) integer ids, 0 =
    background. Instances are cropped and classified `batch_size` at a time on the
    classifier's device, without gradients; the classifier is put in eval mode.
    """
    ids = np.unique(labels)
    ids = ids[ids > 0].astype(np.int64)
    config = classifier.config
    windows = square_windows(instance_boxes(labels, ids))
    image = _DeviceImage(rgb, labels, classifier.device)
    classifier.eval()
    scores: dict[int, float] = {}
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = slice(start, start + batch_size)
            crops = image.crops(ids[batch], windows[batch], config.input_size)
            field = classifier.field_scores(normalise_crops(crops, config.mean, config.std))
            scores.update(zip(ids[batch].tolist(), field.float().cpu().tolist(), strict=True))
    log.debug("classified %d instances", len(scores))
    return scores
