"""Quality of a field partition against ground truth.

- field-area pixel IoU: the paper's metric, IoU of "any field" pixels;
- object precision / recall / F1 with one-to-one matching at IoU ≥ 0.5 (the Fields of The
  World definition), and the mean IoU of the matched pairs;
- merged fields (one predicted instance covering most of several true fields) and split
  fields (one true field shared by several predicted instances).

All functions take label rasters: (H, W) integer ids, 0 = not a field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

Labels = NDArray[np.integer]


@dataclass(frozen=True)
class Overlaps:
    """Pixel counts shared by every true and predicted instance.

    intersection: (G, P) for the G true and P predicted ids in `true_ids` / `pred_ids`.
    """

    true_ids: NDArray[np.int64]
    pred_ids: NDArray[np.int64]
    intersection: NDArray[np.int64]
    true_areas: NDArray[np.int64]
    pred_areas: NDArray[np.int64]

    @property
    def iou(self) -> NDArray[np.float64]:
        union = self.true_areas[:, None] + self.pred_areas[None, :] - self.intersection
        return np.divide(self.intersection, union, out=np.zeros(union.shape), where=union > 0)


def overlaps(truth: Labels, predicted: Labels) -> Overlaps:
    """Contingency table of two label rasters of the same shape, from one sparse count."""
    if truth.shape != predicted.shape:
        raise ValueError(f"label rasters differ in shape: {truth.shape} vs {predicted.shape}")
    t, p = truth.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    true_ids, t_idx = np.unique(t, return_inverse=True)
    pred_ids, p_idx = np.unique(p, return_inverse=True)
    table = scipy.sparse.coo_matrix(
        (np.ones_like(t_idx), (t_idx, p_idx)), shape=(len(true_ids), len(pred_ids))
    ).toarray()
    true_keep, pred_keep = true_ids > 0, pred_ids > 0
    return Overlaps(
        true_ids=true_ids[true_keep],
        pred_ids=pred_ids[pred_keep],
        intersection=table[np.ix_(true_keep, pred_keep)],
        true_areas=table.sum(axis=1)[true_keep],
        pred_areas=table.sum(axis=0)[pred_keep],
    )


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one predicted partition against the truth."""

    pixel_iou: float
    precision: float
    recall: float
    f1: float
    matched_mean_iou: float
    true_fields: int
    predicted_instances: int
    matched: int
    merged_fields: int
    split_fields: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def field_pixel_iou(truth: Labels, predicted: Labels) -> float:
    """IoU of the field area (any id > 0) of two rasters; 1.0 when both are empty."""
    t, p = truth > 0, predicted > 0
    union = int((t | p).sum())
    return float((t & p).sum()) / union if union else 1.0


def match_instances(
    table: Overlaps, iou_thresh: float = 0.5
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """One-to-one matches (row indices into true, column indices into predicted) at IoU ≥ thresh.

    The assignment maximises total IoU; at thresholds ≥ 0.5 a partition admits at most one
    candidate per instance anyway, so this equals greedy matching there.
    """
    iou = table.iou
    if iou.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(np.where(iou >= iou_thresh, iou, 0.0), maximize=True)
    good = iou[rows, cols] >= iou_thresh
    return rows[good].astype(np.int64), cols[good].astype(np.int64)


def score_partition(
    truth: Labels,
    predicted: Labels,
    *,
    iou_thresh: float = 0.5,
    merge_cover: float = 0.5,
    split_cover: float = 0.2,
) -> SegmentationScores:
    """All scores of `predicted` against `truth`.

    A predicted instance merges fields when it covers at least `merge_cover` of each of two or
    more true fields; a true field is split when two or more predicted instances each cover
    at least `split_cover` of it.
    """
    table = overlaps(truth, predicted)
    rows, cols = match_instances(table, iou_thresh)
    n_true, n_pred, n_match = len(table.true_ids), len(table.pred_ids), len(rows)
    precision = n_match / n_pred if n_pred else 1.0 if n_true == 0 else 0.0
    recall = n_match / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    cover_of_true = np.divide(
        table.intersection,
        table.true_areas[:, None],
        out=np.zeros(table.intersection.shape),
        where=table.true_areas[:, None] > 0,
    )
    merged = int((((cover_of_true >= merge_cover).sum(axis=0)) >= 2).sum())
    split = int((((cover_of_true >= split_cover).sum(axis=1)) >= 2).sum())
    return SegmentationScores(
        pixel_iou=field_pixel_iou(truth, predicted),
        precision=precision,
        recall=recall,
        f1=f1,
        matched_mean_iou=float(table.iou[rows, cols].mean()) if n_match else 0.0,
        true_fields=n_true,
        predicted_instances=n_pred,
        matched=n_match,
        merged_fields=merged,
        split_fields=split,
    )
