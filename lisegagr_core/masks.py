"""Sets of binary masks and the vectorised arithmetic the method does on them.

`MaskSet` carries parallel arrays (the masks and their per-mask attributes) and filters them
together, like segment_anything's `MaskData`, so a filter is one line. Pairwise overlaps of all
masks come from one sparse matrix product (masks × pixels), which touches only pixels that two
masks share: no Python loop over pairs, no (N, N, H, W) intermediate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
import scipy.sparse
from numpy.typing import NDArray
from skimage.measure import label as label_regions
from skimage.segmentation import relabel_sequential

log = logging.getLogger(__name__)

#: `MaskSet.stage` value of masks produced by refined segmentation (rounds are 1, 2, ...).
STAGE_REFINED = 0


def stage_name(stage: int) -> str:
    """`1` → "round 1", `STAGE_REFINED` → "refinement"."""
    return "refinement" if stage == STAGE_REFINED else f"round {stage}"


@dataclass(frozen=True, eq=False)
class MaskSet:
    """N binary masks over one (H, W) image, with their provenance and SAM's quality scores.

    masks: (N, H, W) bool; predicted_iou, stability: (N,) float32; stage: (N,) int16, the round
    (1-based) that produced each mask or `STAGE_REFINED`.
    """

    masks: NDArray[np.bool_]
    predicted_iou: NDArray[np.float32]
    stability: NDArray[np.float32]
    stage: NDArray[np.int16]

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != np.bool_:
            raise ValueError(
                f"masks must be (N, H, W) bool, got {self.masks.shape} {self.masks.dtype}"
            )
        n = len(self.masks)
        for name in ("predicted_iou", "stability", "stage"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} masks")

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> MaskSet:
        return cls.from_masks(np.zeros((0, *shape), dtype=bool))

    @classmethod
    def from_masks(
        cls,
        masks: NDArray[np.bool_],
        *,
        predicted_iou: NDArray[np.floating] | Sequence[float] | None = None,
        stability: NDArray[np.floating] | Sequence[float] | None = None,
        stage: int = 1,
    ) -> MaskSet:
        """Masks without scores (ground truth, tests) get scores of 1."""
        n = len(masks)
        return cls(
            masks=np.ascontiguousarray(masks, dtype=bool),
            predicted_iou=np.asarray(
                np.ones(n) if predicted_iou is None else predicted_iou, dtype=np.float32
            ),
            stability=np.asarray(np.ones(n) if stability is None else stability, dtype=np.float32),
            stage=np.full(n, stage, dtype=np.int16),
        )

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image the masks cover."""
        return (self.masks.shape[1], self.masks.shape[2])

    @cached_property
    def areas(self) -> NDArray[np.int64]:
        """(N,) pixel count of each mask."""
        return np.asarray(self.pixels.sum(axis=1)).ravel().astype(np.int64)

    @cached_property
    def pixels(self) -> scipy.sparse.csr_matrix:
        """(N, H*W) sparse 0/1 matrix of the masks: the basis of every overlap computation."""
        h, w = self.shape
        return scipy.sparse.csr_matrix(self.masks.reshape(len(self), h * w), dtype=np.float32)

    @cached_property
    def boxes(self) -> NDArray[np.int64]:
        """(N, 4) XYXY boxes, last row/column inclusive (as segment_anything's); 0s if empty."""
        pixels, width = self.pixels, self.shape[1]
        boxes = np.zeros((len(self), 4), dtype=np.int64)
        filled = np.flatnonzero(np.diff(pixels.indptr) > 0)
        if filled.size:
            rows, cols = np.divmod(pixels.indices.astype(np.int64), width)
            starts = pixels.indptr[filled]
            boxes[filled, 0] = np.minimum.reduceat(cols, starts)
            boxes[filled, 1] = np.minimum.reduceat(rows, starts)
            boxes[filled, 2] = np.maximum.reduceat(cols, starts)
            boxes[filled, 3] = np.maximum.reduceat(rows, starts)
        return boxes

    def union(self) -> NDArray[np.bool_]:
        """(H, W) bool: pixels covered by any mask."""
        covered = np.asarray(self.pixels.sum(axis=0)).ravel() > 0
        return covered.reshape(self.shape)

    def select(self, keep: NDArray[np.bool_] | NDArray[np.integer] | Sequence[int]) -> MaskSet:
        """The masks chosen by a boolean mask or an index array, attributes with them."""
        keep = np.asarray(keep)
        rows = np.flatnonzero(keep) if keep.dtype == np.bool_ else keep.astype(np.int64)
        chosen = MaskSet(
            masks=self.masks[rows],
            predicted_iou=self.predicted_iou[rows],
            stability=self.stability[rows],
            stage=self.stage[rows],
        )
        return chosen._sharing_pixels(self._cached_pixels() and self.pixels[rows])

    def with_stage(self, stage: int) -> MaskSet:
        staged = MaskSet(
            self.masks,
            self.predicted_iou,
            self.stability,
            np.full(len(self), stage, dtype=np.int16),
        )
        return staged._sharing_pixels(self._cached_pixels() and self.pixels)

    @staticmethod
    def concat(sets: Sequence[MaskSet], shape: tuple[int, int]) -> MaskSet:
        """All masks of several sets over the same (H, W) image."""
        sets = [s for s in sets if len(s)]
        if not sets:
            return MaskSet.empty(shape)
        joined = MaskSet(
            masks=np.concatenate([s.masks for s in sets]),
            predicted_iou=np.concatenate([s.predicted_iou for s in sets]),
            stability=np.concatenate([s.stability for s in sets]),
            stage=np.concatenate([s.stage for s in sets]),
        )
        if all(s._cached_pixels() for s in sets):
            return joined._sharing_pixels(
                scipy.sparse.vstack([s.pixels for s in sets], format="csr")
            )
        return joined

    # The sparse pixel matrix is the costly part of a set (a scan of every mask pixel): a set
    # made from sets that have it derives its own from theirs instead of scanning again.

    def with_pixels(self, pixels: scipy.sparse.csr_matrix) -> MaskSet:
        """This set, given its sparse pixel matrix (computed elsewhere, e.g. on a GPU)."""
        if pixels.shape != (len(self), self.shape[0] * self.shape[1]):
            raise ValueError(f"pixels of shape {pixels.shape} do not fit {len(self)} masks")
        return self._sharing_pixels(pixels)

    def _cached_pixels(self) -> bool:
        return "pixels" in self.__dict__

    def _sharing_pixels(self, pixels: scipy.sparse.csr_matrix | bool) -> MaskSet:
        if isinstance(pixels, scipy.sparse.csr_matrix):
            self.__dict__["pixels"] = pixels
        return self


def pairwise_intersections(masks: MaskSet) -> NDArray[np.int64]:
    """(N, N) shared pixel counts of every pair of masks, from one sparse product."""
    pixels = masks.pixels
    return np.rint((pixels @ pixels.T).toarray()).astype(np.int64)


def pairwise_iou(masks: MaskSet) -> NDArray[np.float64]:
    """(N, N) mask IoU of every pair (diagonal 1 for non-empty masks)."""
    inter = pairwise_intersections(masks)
    areas = masks.areas
    union = areas[:, None] + areas[None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def dedup_keep_larger(masks: MaskSet, iou_thresh: float) -> MaskSet:
    """Drop the smaller mask of pairs above `iou_thresh`, by the reference scripts' scan.

    The reference (`delete_iou`) visits the masks in index order; a mask not yet deleted
    meets every other mask not yet deleted, in index order, and at the first IoU above the
    threshold the smaller of the two is deleted (the visited one on a tie), the visited one
    ending its visit if it was that one; the scan is repeated until it deletes nothing. The
    result depends on the order: in a nested chain C ⊂ B ⊂ A where only A–B and B–C are above
    the threshold, order (A, B, C) keeps {A, C} and order (C, B, A) keeps {A}. One scan is
    already stable (two survivors met while both alive and passed), so one is done, over an
    (N, N) IoU matrix from one sparse product.
    """
    if len(masks) < 2:
        return masks
    iou = pairwise_iou(masks)
    areas = masks.areas
    deleted = np.zeros(len(masks), dtype=bool)
    for visited in range(len(masks)):
        if deleted[visited]:
            continue
        above = iou[visited] > iou_thresh
        above[visited] = False
        for other in np.flatnonzero(above):
            if deleted[other]:
                continue
            if areas[visited] <= areas[other]:
                deleted[visited] = True
                break
            deleted[other] = True
    return masks.select(~deleted)


def white_fraction(masks: MaskSet, white: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(N,) share of each mask's pixels that are white. white: (H, W) bool."""
    on_white = masks.pixels @ white.ravel().astype(np.float32)
    return np.divide(on_white, masks.areas, out=np.zeros(len(masks)), where=masks.areas > 0)


def split_components(masks: MaskSet, min_area: int) -> MaskSet:
    """Each mask split into its 4-connected components (the reference's `scipy.ndimage.label`);
    components under `min_area` dropped.

    Components inherit their mask's scores and stage. Work is done inside each mask's box.
    """
    pieces: list[NDArray[np.bool_]] = []
    parents: list[int] = []
    h, w = masks.shape
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks.masks, masks.boxes, strict=True)):
        crop = mask[y0 : y1 + 1, x0 : x1 + 1].astype(np.uint8)
        count, component_ids, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=4)
        for component in range(1, count):
            if stats[component, cv2.CC_STAT_AREA] < min_area:
                continue
            piece = np.zeros((h, w), dtype=bool)
            piece[y0 : y1 + 1, x0 : x1 + 1] = component_ids == component
            pieces.append(piece)
            parents.append(i)
    if not pieces:
        return MaskSet.empty((h, w))
    kept = masks.select(np.asarray(parents, dtype=np.int64))
    return MaskSet(np.stack(pieces), kept.predicted_iou, kept.stability, kept.stage)


@dataclass(frozen=True)
class Partition:
    """Instances that cover each pixel at most once.

    labels: (H, W) uint32, 0 background, instances 1..K; source_index: (K,) index into the
    `MaskSet` each instance came from.
    """

    labels: NDArray[np.uint32]
    source_index: NDArray[np.int64]

    @property
    def count(self) -> int:
        return len(self.source_index)


def partition(masks: MaskSet, min_area: int) -> Partition:
    """Resolve overlapping masks into a label raster.

    Larger masks are painted first and smaller ones over them (a parcel's piece wins over the
    parcel); then every label is re-split into connected components, remnants under `min_area`
    are dropped, and ids are made consecutive in raster order of first appearance.
    """
    h, w = masks.shape
    painted = np.zeros((h, w), dtype=np.int64)  # index + 1 of the mask that owns each pixel
    for i in np.lexsort((np.arange(len(masks)), -masks.areas)):
        x0, y0, x1, y1 = masks.boxes[i]
        window = painted[y0 : y1 + 1, x0 : x1 + 1]
        window[masks.masks[i, y0 : y1 + 1, x0 : x1 + 1]] = i + 1
    labels, owner = resplit_labels(painted, min_area)
    return Partition(labels=labels, source_index=owner - 1)


def resplit_labels(
    ids: NDArray[np.integer], min_area: int
) -> tuple[NDArray[np.uint32], NDArray[np.int64]]:
    """Split every id of a label raster into connected components and drop small ones.

    ids: (H, W) integer, 0 background. Returns (H, W) uint32 labels 1..K, consecutive in raster
    order, and (K,) the input id each came from. Components under `min_area` become 0.
    """
    components = label_regions(ids, background=0, connectivity=2).astype(np.int64)
    areas = np.bincount(components.ravel())
    components[areas[components] < min_area] = 0
    relabelled = relabel_sequential(components)[0]
    # Every pixel of a component has the same input id: scatter it by label.
    origin = np.zeros(int(relabelled.max()) + 1, dtype=np.int64)
    origin[relabelled.ravel()] = np.asarray(ids, dtype=np.int64).ravel()
    return relabelled.astype(np.uint32), origin[1:]
