"""How well a segmentation maps the fields: `lisegagr eval PRED GT`, as a library.

PRED is one of

- a label raster ((H, W) integer ids, 0 = background), e.g. ``<stem>.labels.tif``;
- an output folder of `lisegagr segment`: every ``*.labels.tif`` in it, with the stage of each
  instance from ``<stem>.instances.csv`` (or ``.parquet``) and the image from ``<stem>.json``;
- an output folder of `lisegagr run`: ``mosaic.zarr``'s labels (georeferenced) and the stages
  in ``fields.parquet``.

GT is a label raster of the same grid, or polygons (`ground_truth.read_polygon_sets`: VIA,
LabelMe, GeoJSON, GeoParquet, GeoPackage...), rasterised on the prediction's grid: pixel
polygons of the image of the same name, map polygons through the prediction's georeference.

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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from skimage.segmentation import find_boundaries

from lisegagr_core.annotations import rasterize_instances
from lisegagr_core.errors import InputError
from lisegagr_core.ground_truth import (
    PolygonSet,
    is_polygon_file,
    place_polygons,
    read_polygon_sets,
)
from lisegagr_core.imagery import RASTER_SUFFIXES, read_image
from lisegagr_core.metrics import SegmentationScores, match_instances, overlaps, score_partition
from lisegagr_core.run.manifest import read_manifest
from lisegagr_core.run.store import RegionPaths

log = logging.getLogger(__name__)

LABELS_SUFFIX = ".labels.tif"
REFINEMENT_STAGE = "refinement"

#: Error picture categories and their RGB colours.
MATCHED, MISSED, FALSE, MERGED = 1, 2, 3, 4
CATEGORY_RGB = {
    MATCHED: (40, 200, 80),
    MISSED: (230, 30, 30),
    FALSE: (40, 90, 255),
    MERGED: (255, 220, 0),
}


@dataclass(frozen=True, eq=False)
class Prediction:
    """One predicted partition and what is known about it.

    labels: (H, W) uint32 ids, 0 = background. stages: instance id → the stage that made it
    ("round 1", ..., "refinement"), when recorded. image_path: the image it was made from.
    """

    name: str
    source: str
    labels: NDArray[np.uint32]
    transform: Affine | None = None
    crs: CRS | None = None
    stages: dict[int, str] | None = None
    image_path: str | None = None


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


def read_predictions(path: Path) -> list[Prediction]:
    """The predictions of a label raster or of a `segment` / `run` output folder."""
    if path.is_dir():
        if RegionPaths(str(path)).exists(RegionPaths(str(path)).mosaic):
            return [_run_output(path)]
        rasters = sorted(path.glob(f"*{LABELS_SUFFIX}"))
        if not rasters:
            raise InputError(
                f"{path} is neither a `lisegagr segment` output (no *{LABELS_SUFFIX}) nor a "
                "`lisegagr run` output (no mosaic.zarr)."
            )
        return [_label_raster(raster) for raster in rasters]
    if path.is_file():
        return [_label_raster(path)]
    raise InputError(f"{path}: no such file or folder.")


def read_truth(path: Path, prediction: Prediction) -> NDArray[np.uint32]:
    """Ground-truth ids (H, W) uint32 on the prediction's grid, from a raster or polygons."""
    shape = (int(prediction.labels.shape[0]), int(prediction.labels.shape[1]))
    if path.suffix.lower() in RASTER_SUFFIXES:
        truth = _read_band(path)
        if truth.shape != shape:
            raise InputError(
                f"{path} is {truth.shape[1]}×{truth.shape[0]} px but the prediction "
                f"{prediction.source} is {shape[1]}×{shape[0]} px."
            )
        return truth
    if not is_polygon_file(path):
        raise InputError(f"{path} is neither a label raster nor a polygon file.")
    polygons = []
    for polygon_set in _sets_for(read_polygon_sets(path), prediction, path):
        polygons.extend(
            place_polygons(
                polygon_set,
                shape,
                transform=prediction.transform,
                crs=prediction.crs,
                image_name=prediction.source,
                require_inside=False,
            )
        )
    return rasterize_instances(polygons, shape)


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
                _image_of(prediction), truth, prediction.labels, iou_thresh=iou_thresh
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


def _sets_for(sets: list[PolygonSet], prediction: Prediction, path: Path) -> list[PolygonSet]:
    """The polygon sets that describe the prediction's image."""
    map_sets = [s for s in sets if s.in_map_coordinates]
    if map_sets:
        return map_sets
    named = [s for s in sets if s.image is not None and Path(s.image).stem == prediction.name]
    if named:
        return named
    if len(sets) == 1:
        return sets
    raise InputError(f"{path} has no polygons for the image {prediction.name}.")


def _read_band(path: Path) -> NDArray[np.uint32]:
    """Band 1 of a label raster as uint32; `InputError` naming the file when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                band = dataset.read(1)
    except RasterioError as exc:
        raise InputError(f"{path} could not be read as a label raster ({exc}).") from None
    if not np.issubdtype(band.dtype, np.integer) or (band.size and band.min() < 0):
        raise InputError(f"{path} is not a label raster (expected non-negative integer ids).")
    return band.astype(np.uint32)


def _label_raster(path: Path) -> Prediction:
    """A label raster, with the stages and image a `segment` output records beside it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                transform = None if dataset.transform.is_identity else dataset.transform
                crs = dataset.crs
    except RasterioError as exc:
        raise InputError(f"{path} could not be read as a label raster ({exc}).") from None
    stem = path.name.removesuffix(LABELS_SUFFIX) if path.name.endswith(LABELS_SUFFIX) else path.stem
    stages = None
    for table in (
        path.with_name(f"{stem}.instances.csv"),
        path.with_name(f"{stem}.instances.parquet"),
    ):
        if table.is_file():
            frame = pd.read_csv(table) if table.suffix == ".csv" else pd.read_parquet(table)
            stages = _stages_of(frame, table)
            break
    image_path = None
    labelme = path.with_name(f"{stem}.json")
    if labelme.is_file():
        image_name = json.loads(labelme.read_text(encoding="utf-8")).get("imagePath")
        if isinstance(image_name, str):
            image_path = str(path.parent / image_name)
    return Prediction(
        name=stem,
        source=str(path),
        labels=_read_band(path),
        transform=transform,
        crs=crs,
        stages=stages,
        image_path=image_path,
    )


def _run_output(folder: Path) -> Prediction:
    """The labels of a `run` output's mosaic, its georeference, and stages from fields.parquet."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    paths = RegionPaths(str(folder))
    try:
        mosaic = xr.open_zarr(paths.mosaic, decode_coords="all", consolidated=False)
        labels = np.asarray(mosaic["labels"].values, dtype=np.uint32)
        transform, crs = mosaic.rio.transform(), mosaic.rio.crs
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{paths.mosaic} could not be read ({exc}).") from None
    stages = None
    fields_path = Path(paths.fields)
    if fields_path.is_file():
        import pyarrow.parquet as pq

        names = set(pq.read_schema(fields_path).names)
        stage = "lisegagr:stage" if "lisegagr:stage" in names else "stage"  # fiboa, or older
        table = pd.read_parquet(fields_path, columns=[c for c in ("id", stage) if c in names])
        stages = _stages_of(table.rename(columns={stage: "stage"}), fields_path)
    image_path = None
    if paths.exists(paths.manifest):
        described = read_manifest(str(folder)).input
        rasters = described.get("rasters", [])
        if len(rasters) == 1 and described.get("shape") == list(labels.shape):
            image_path = rasters[0]
    return Prediction(
        name=folder.name,
        source=paths.mosaic,
        labels=labels,
        transform=transform,
        crs=CRS.from_user_input(crs) if crs is not None else None,
        stages=stages,
        image_path=image_path,
    )


def _stages_of(frame: pd.DataFrame, path: Path) -> dict[int, str] | None:
    """id → stage from an instance table, or None when it has no such columns."""
    if "id" not in frame.columns or "stage" not in frame.columns:
        log.info("%s records no stages", path)
        return None
    known = frame.dropna(subset=["id", "stage"])
    return dict(zip(known["id"].astype(int).tolist(), known["stage"].astype(str), strict=True))


def _image_of(prediction: Prediction) -> NDArray[np.uint8] | None:
    """The image a prediction was made from, at its size, when it can be read."""
    if prediction.image_path is None:
        return None
    try:
        rgb = read_image(prediction.image_path).rgb
    except InputError as exc:
        log.warning("no picture background: %s", exc)
        return None
    if rgb.shape[:2] != prediction.labels.shape:
        log.warning("%s is not the prediction's size; grey background", prediction.image_path)
        return None
    return rgb
