"""How well a segmentation maps the fields: `lisegagr eval PRED GT`, as a library.

PRED is a label raster or the output folder of `lisegagr segment` or `lisegagr run`; GT a
label raster or polygons (`predictions`: reading both, the truth on the prediction's grid).

Scores are `metrics.score_partition`'s (field-area pixel IoU, object precision / recall / F1
at IoU ≥ 0.5 one-to-one, mean IoU of matched pairs, merged and split fields), per image and
pooled over images (object counts summed; pixel IoU from summed intersections and unions).
When the prediction records the stage of each instance, the scores are also given after each
stage: "after round k" keeps the instances of rounds 1..k, "after refinement" all of them.
Those are the final partition's instances, so where a later stage's instance was painted over
an earlier one, the earlier stage's numbers miss that piece.

The picture of an image (`render_errors`) tints missed fields red, false instances blue,
instances that merge fields yellow and matched fields green, over the image.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import find_boundaries

from lisegagr_core.metrics import SegmentationScores, match_instances, overlaps, score_partition
from lisegagr_core.predictions import Prediction, image_of, read_predictions, read_truth

log = logging.getLogger(__name__)

REFINEMENT_STAGE = "refinement"

#: Error picture categories and their RGB colours.
MATCHED, MISSED, FALSE, MERGED = 1, 2, 3, 4
CATEGORY_RGB = {
    MATCHED: (40, 200, 80),
    MISSED: (230, 30, 30),
    FALSE: (40, 90, 255),
    MERGED: (255, 220, 0),
}


@dataclass(frozen=True)
class PartitionScores:
    """`score_partition`'s scores and the field-area pixel counts behind its pixel IoU."""

    scores: SegmentationScores
    field_intersection: int
    field_union: int

    def to_dict(self) -> dict[str, float | int]:
        return self.scores.to_dict()


@dataclass(frozen=True)
class ImageEvaluation:
    """Scores of one image: overall and after each stage; where its picture was written."""

    name: str
    overall: PartitionScores
    stages: dict[str, PartitionScores]
    picture: str | None = None


@dataclass
class EvaluationReport:
    """Per image and pooled scores of a prediction against ground truth."""

    prediction: str
    truth: str
    iou_thresh: float
    images: list[ImageEvaluation] = field(default_factory=list)

    @property
    def pooled(self) -> SegmentationScores:
        return pool_scores([image.overall for image in self.images])

    @property
    def pooled_stages(self) -> dict[str, SegmentationScores]:
        labels = list(dict.fromkeys(label for image in self.images for label in image.stages))
        return {
            label: pool_scores([image.stages[label] for image in self.images]) for label in labels
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "prediction": self.prediction,
            "truth": self.truth,
            "iou_thresh": self.iou_thresh,
            "pooled": self.pooled.to_dict(),
            "pooled_stages": {k: v.to_dict() for k, v in self.pooled_stages.items()},
            "images": [
                {
                    "name": image.name,
                    **image.overall.to_dict(),
                    "stages": {k: v.to_dict() for k, v in image.stages.items()},
                    "picture": image.picture,
                }
                for image in self.images
            ],
        }


def stage_rank(stage: str) -> float:
    """Order of stages: "round k" → k, "refinement" → after every round; NaN if unknown."""
    if stage == REFINEMENT_STAGE:
        return math.inf
    prefix, _, number = stage.partition(" ")
    return float(number) if prefix == "round" and number.isdigit() else math.nan


def stage_label(rank: float) -> str:
    return f"after {REFINEMENT_STAGE}" if math.isinf(rank) else f"after round {int(rank)}"


def labels_up_to(
    labels: NDArray[np.uint32], stages: dict[int, str], rank: float
) -> NDArray[np.uint32]:
    """`labels` (H, W) keeping only instances whose stage comes no later than `rank`."""
    ids = np.fromiter(stages, dtype=np.int64, count=len(stages))
    ranks = np.array([stage_rank(stages[i]) for i in ids.tolist()])
    keep = ids[ranks <= rank]
    return np.where(np.isin(labels, keep), labels, 0).astype(np.uint32)


def error_categories(
    truth: NDArray[np.integer], predicted: NDArray[np.integer], iou_thresh: float = 0.5
) -> NDArray[np.uint8]:
    """(H, W) uint8: MATCHED, MISSED, FALSE, MERGED or 0, as `score_partition` counts them.

    Matched true fields (one-to-one at `iou_thresh`) are MATCHED; predicted instances that
    cover half of two or more true fields are MERGED (their pixels); other unmatched predicted
    instances are FALSE; unmatched true fields outside merges are MISSED, painted over FALSE.
    """
    table = overlaps(truth, predicted)
    rows, cols = match_instances(table, iou_thresh)
    cover = np.divide(
        table.intersection,
        table.true_areas[:, None],
        out=np.zeros(table.intersection.shape),
        where=table.true_areas[:, None] > 0,
    )
    merging = (cover >= 0.5).sum(axis=0) >= 2
    in_merge = (cover[:, merging] >= 0.5).any(axis=1)
    matched_true = np.zeros(len(table.true_ids), bool)
    matched_true[rows] = True
    matched_pred = np.zeros(len(table.pred_ids), bool)
    matched_pred[cols] = True
    categories = np.zeros(truth.shape, np.uint8)
    categories[np.isin(predicted, table.pred_ids[~matched_pred & ~merging])] = FALSE
    categories[np.isin(truth, table.true_ids[~matched_true & ~in_merge])] = MISSED
    categories[np.isin(truth, table.true_ids[matched_true])] = MATCHED
    categories[np.isin(predicted, table.pred_ids[merging])] = MERGED
    return categories


def render_errors(
    rgb: NDArray[np.uint8] | None,
    truth: NDArray[np.integer],
    predicted: NDArray[np.integer],
    *,
    iou_thresh: float = 0.5,
    max_side: int = 2048,
    alpha: float = 0.45,
) -> NDArray[np.uint8]:
    """(h, w, 3) uint8 picture: `error_categories` tinted over the image, instances outlined.

    rgb: (H, W, 3) uint8 or None (a grey background). Pictures larger than `max_side` are
    decimated (every n-th pixel).
    """
    step = max(1, math.ceil(max(truth.shape) / max_side))
    categories = error_categories(truth, predicted, iou_thresh)[::step, ::step]
    labels = np.asarray(predicted)[::step, ::step]
    base = np.full((*categories.shape, 3), 128, np.uint8) if rgb is None else rgb[::step, ::step]
    colours = np.zeros((256, 3), np.float32)
    for category, colour in CATEGORY_RGB.items():
        colours[category] = colour
    tinted = (1 - alpha) * base.astype(np.float32) + alpha * colours[categories]
    picture = np.where(categories[..., None] > 0, np.rint(tinted), base).astype(np.uint8)
    picture[find_boundaries(labels, mode="inner") & (labels > 0)] = (255, 255, 255)
    return picture


def score_with_pixels(
    truth: NDArray[np.integer], predicted: NDArray[np.integer], iou_thresh: float = 0.5
) -> PartitionScores:
    """`score_partition` of two (H, W) label rasters, with the field-area pixel counts."""
    true_field, predicted_field = truth > 0, predicted > 0
    return PartitionScores(
        score_partition(truth, predicted, iou_thresh=iou_thresh),
        field_intersection=int((true_field & predicted_field).sum()),
        field_union=int((true_field | predicted_field).sum()),
    )


def evaluate_image(
    prediction: Prediction,
    truth: NDArray[np.integer],
    *,
    stage_ranks: Sequence[float] | None = None,
    iou_thresh: float = 0.5,
) -> ImageEvaluation:
    """Scores of one prediction, and after each stage of `stage_ranks` (default: its own).

    A prediction without recorded stages counts whole at every stage.
    """
    ranks = _stage_ranks([prediction]) if stage_ranks is None else stage_ranks
    stages = {}
    for rank in ranks:
        partial = prediction.labels
        if prediction.stages is not None:
            partial = labels_up_to(prediction.labels, prediction.stages, rank)
        stages[stage_label(rank)] = score_with_pixels(truth, partial, iou_thresh)
    return ImageEvaluation(
        name=prediction.name,
        overall=score_with_pixels(truth, prediction.labels, iou_thresh),
        stages=stages,
    )


def pool_scores(parts: Sequence[PartitionScores]) -> SegmentationScores:
    """Scores of several images as one: counts summed, pixel IoU from summed pixel counts."""
    scores = [part.scores for part in parts]
    true_fields = sum(s.true_fields for s in scores)
    predicted = sum(s.predicted_instances for s in scores)
    matched = sum(s.matched for s in scores)
    precision = matched / predicted if predicted else 1.0 if true_fields == 0 else 0.0
    recall = matched / true_fields if true_fields else 1.0
    union = sum(part.field_union for part in parts)
    return SegmentationScores(
        pixel_iou=sum(part.field_intersection for part in parts) / union if union else 1.0,
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        matched_mean_iou=(
            sum(s.matched_mean_iou * s.matched for s in scores) / matched if matched else 0.0
        ),
        true_fields=true_fields,
        predicted_instances=predicted,
        matched=matched,
        merged_fields=sum(s.merged_fields for s in scores),
        split_fields=sum(s.split_fields for s in scores),
    )


def evaluate(
    prediction_path: Path,
    truth_path: Path,
    out_dir: Path | None = None,
    *,
    iou_thresh: float = 0.5,
) -> EvaluationReport:
    """Score every prediction of `prediction_path` against `truth_path`.

    With `out_dir`, writes ``eval.json`` and one ``<name>.eval.png`` per image there.
    """
    predictions = read_predictions(prediction_path)
    report = EvaluationReport(str(prediction_path), str(truth_path), iou_thresh)
    ranks = _stage_ranks(predictions)
    for prediction in predictions:
        truth = read_truth(truth_path, prediction)
        result = evaluate_image(prediction, truth, stage_ranks=ranks, iou_thresh=iou_thresh)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            picture_path = out_dir / f"{prediction.name}.eval.png"
            picture = render_errors(
                image_of(prediction), truth, prediction.labels, iou_thresh=iou_thresh
            )
            cv2.imwrite(str(picture_path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            result = replace(result, picture=str(picture_path))
        report.images.append(result)
        log.info("%s: %s", prediction.name, result.overall.scores)
    if out_dir is not None:
        (out_dir / "eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _stage_ranks(predictions: Sequence[Prediction]) -> list[float]:
    """Sorted distinct known stage ranks of the predictions' instances."""
    ranks = {
        stage_rank(stage)
        for prediction in predictions
        for stage in (prediction.stages or {}).values()
    }
    return sorted(rank for rank in ranks if not math.isnan(rank))
