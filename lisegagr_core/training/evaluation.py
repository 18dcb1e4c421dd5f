"""How well a SAM maps fields: three pipelines, scored with the project's metrics, over a grid of
AMG settings, to choose the settings recorded with the model.

Pipelines, on each image at the engine's working size:

- ``amg``: one pass of SAM's automatic mask generator, its masks resolved into a partition;
- ``amg_post``: the same masks through the method's post-processing (de-duplication at
  ``rounds.merge_iou``, split into components, small ones dropped) before the partition, which
  is what `segment_image` does with one round and refinement off;
- ``full``: the whole LiSegAgr method (`segment_image` with iterative rounds and refinement),
  run for the few settings that do best with ``amg_post`` (it costs several AMG passes).

Scores come from `metrics.score_partition` (object precision / recall / F1 with one-to-one
matching at IoU ≥ 0.5; field-area pixel IoU). Object counts are pooled over the images before
precision, recall and F1 are taken; pixel IoU is the mean over images.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from rasterio.windows import Window

from lisegagr_core.config import EngineConfig, load_config
from lisegagr_core.engine import merge_rounds, segment_image
from lisegagr_core.imagery import resize_labels, resize_to_working_size
from lisegagr_core.masks import partition
from lisegagr_core.metrics import SegmentationScores, score_partition
from lisegagr_core.models import LoadedSam, model_description
from lisegagr_core.progress import ProgressCallback, ProgressUpdate, ignore_progress
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.training.data import AnnotatedScene
from lisegagr_core.training.machine import machine

log = logging.getLogger(__name__)

PIPELINES = ("amg", "amg_post", "full")
#: How the best settings are chosen (formatted with the number of finalists).
SELECTED_BY = (
    "full-method object F1, then field-area pixel IoU, among the {top} settings with the best "
    "AMG + post-processing object F1"
)


class EvaluationGrid(BaseModel):
    """The AMG settings to try: every combination of the three lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    points_per_side: tuple[int, ...] = Field((16, 32), min_length=1)
    pred_iou_thresh: tuple[float, ...] = Field((0.4, 0.55, 0.7), min_length=1)
    stability_score_thresh: tuple[float, ...] = Field((0.6, 0.75, 0.9), min_length=1)

    def combinations(self) -> list[dict[str, float | int]]:
        """Each combination as AMG settings, points per side varying slowest."""
        return [
            {"points_per_side": points, "pred_iou_thresh": iou, "stability_score_thresh": stable}
            for points, iou, stable in itertools.product(
                self.points_per_side, self.pred_iou_thresh, self.stability_score_thresh
            )
        ]


@dataclass(frozen=True)
class PipelineScores:
    """One pipeline's scores over the evaluation images (see the module docstring)."""

    f1: float
    precision: float
    recall: float
    pixel_iou: float
    matched_mean_iou: float
    predicted_per_image: float
    true_per_image: float
    seconds_per_image: float
    merged_fields: int = 0
    """True fields covered by a predicted instance that covers other true fields too."""
    split_fields: int = 0
    """True fields cut into several predicted instances."""

    @classmethod
    def pooled(cls, scores: Sequence[SegmentationScores], seconds: float) -> PipelineScores:
        """Pool the per-image scores of one pipeline; `seconds` is its total time."""
        matched = sum(s.matched for s in scores)
        predicted = sum(s.predicted_instances for s in scores)
        true = sum(s.true_fields for s in scores)
        precision = matched / predicted if predicted else float(true == 0)
        recall = matched / true if true else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        matched_iou = sum(s.matched_mean_iou * s.matched for s in scores)
        return cls(
            f1=f1,
            precision=precision,
            recall=recall,
            pixel_iou=float(np.mean([s.pixel_iou for s in scores])),
            matched_mean_iou=matched_iou / matched if matched else 0.0,
            predicted_per_image=predicted / len(scores),
            true_per_image=true / len(scores),
            seconds_per_image=seconds / len(scores),
            merged_fields=sum(s.merged_fields for s in scores),
            split_fields=sum(s.split_fields for s in scores),
        )


@dataclass(frozen=True)
class SettingsResult:
    """The scores of the pipelines run with one combination of AMG settings (``full`` only for
    the finalists)."""

    amg: dict[str, float | int]
    pipelines: dict[str, PipelineScores]


@dataclass(frozen=True)
class ModelEvaluation:
    """A model's scores on evaluation images for every AMG setting tried, and the best one."""

    model: str
    images: tuple[str, ...]
    working_size: int | None
    machine: dict[str, Any]
    results: tuple[SettingsResult, ...]
    best_index: int
    selected_by: str
    seconds: float

    @property
    def best(self) -> SettingsResult:
        return self.results[self.best_index]

    def best_settings(self) -> dict[str, float | int]:
        """The AMG settings to record with the model (manifest ``settings``)."""
        return dict(self.best.amg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the best result repeated under ``best``."""
        raw = asdict(self)
        raw["best"] = asdict(self.best)
        return raw


def evaluate_model(
    sam: LoadedSam,
    scenes: Sequence[AnnotatedScene],
    *,
    grid: EvaluationGrid | None = None,
    config: EngineConfig | None = None,
    full_method_top: int = 3,
    progress: ProgressCallback | None = None,
) -> ModelEvaluation:
    """Score the pipelines for every AMG setting of `grid` on `scenes`, and choose the best.

    Every combination gets ``amg`` and ``amg_post`` (one AMG pass serves both); the full
    method, several AMG passes per image, runs for the `full_method_top` combinations with the
    best ``amg_post`` F1 (then pixel IoU), and the best of those by `SELECTED_BY` wins.
    `config` holds every other setting (default: the paper's, with the AMG settings recorded
    for the model); images and true instances are resized to its working size first.
    `progress` hears of each image scored (task "evaluating").
    """
    if not scenes:
        raise ValueError("evaluate_model needs at least one annotated image")
    if full_method_top < 1:
        raise ValueError(f"full_method_top must be at least 1, not {full_method_top}")
    grid = grid if grid is not None else EvaluationGrid()
    if config is None:
        config = load_config(None, model_settings=sam.engine_settings)
    prepared = [_at_working_size(scene, config.working_size) for scene in scenes]
    combinations = grid.combinations()
    finalists = min(full_method_top, len(combinations))
    started = time.perf_counter()
    tick = _counter("evaluating", (len(combinations) + finalists) * len(prepared), progress)
    results = [
        _score_single_pass(sam, prepared, _with_amg(config, amg), amg, tick) for amg in combinations
    ]
    by_post = sorted(
        range(len(results)), key=lambda i: _rank(results[i].pipelines["amg_post"]), reverse=True
    )
    ranked = by_post[:finalists]
    for i in ranked:
        full = _score_full_method(sam, prepared, _with_amg(config, results[i].amg), tick)
        results[i] = SettingsResult(results[i].amg, {**results[i].pipelines, "full": full})
        log.info("%s: %s", results[i].amg, _one_line(results[i]))
    best_index = max(ranked, key=lambda i: _rank(results[i].pipelines["full"]))
    return ModelEvaluation(
        model=model_description(sam),
        images=tuple(scene.name for scene in scenes),
        working_size=config.working_size,
        machine=machine(sam.device),
        results=tuple(results),
        best_index=best_index,
        selected_by=SELECTED_BY.format(top=finalists),
        seconds=round(time.perf_counter() - started, 1),
    )


def write_evaluation(evaluation: ModelEvaluation, path: Path) -> None:
    """The evaluation as indented JSON at `path` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n", encoding="utf-8")


def _at_working_size(
    scene: AnnotatedScene, working_size: int | None
) -> tuple[NDArray[np.uint8], NDArray[np.uint32]]:
    """(h, w, 3) uint8 image and (h, w) uint32 truth at the engine's working size."""
    image, _ = resize_to_working_size(scene.rgb, working_size)
    return image, resize_labels(scene.instances, image.shape[:2])


def _with_amg(config: EngineConfig, amg: dict[str, float | int]) -> EngineConfig:
    return config.model_copy(update={"amg": config.amg.model_copy(update=amg)})


def _rank(scores: PipelineScores) -> tuple[float, float]:
    return (scores.f1, scores.pixel_iou)


def _score_single_pass(
    sam: LoadedSam,
    scenes: Sequence[tuple[NDArray[np.uint8], NDArray[np.uint32]]],
    config: EngineConfig,
    amg: dict[str, float | int],
    tick: Callable[[], None],
) -> SettingsResult:
    """``amg`` and ``amg_post`` scores of one AMG setting, from one AMG pass per image."""
    source = SamMaskSource(sam, config.amg)
    scores: dict[str, list[SegmentationScores]] = {"amg": [], "amg_post": []}
    seconds = {"amg": 0.0, "amg_post": 0.0}
    for image, truth in scenes:
        started = time.perf_counter()
        masks = source.generate(image, Window(0, 0, image.shape[1], image.shape[0]))
        generated = time.perf_counter()
        plain = partition(masks, config.min_component_area).labels
        partitioned = time.perf_counter()
        post = partition(merge_rounds(masks, config), config.min_component_area).labels
        seconds["amg"] += partitioned - started
        seconds["amg_post"] += (generated - started) + (time.perf_counter() - partitioned)
        scores["amg"].append(score_partition(truth, plain))
        scores["amg_post"].append(score_partition(truth, post))
        tick()
    return SettingsResult(
        amg=dict(amg),
        pipelines={name: PipelineScores.pooled(scores[name], seconds[name]) for name in scores},
    )


def _score_full_method(
    sam: LoadedSam,
    scenes: Sequence[tuple[NDArray[np.uint8], NDArray[np.uint32]]],
    config: EngineConfig,
    tick: Callable[[], None],
) -> PipelineScores:
    """Scores of `segment_image` (rounds and refinement) with `config`."""
    source = SamMaskSource(sam, config.amg)
    scores = []
    started = time.perf_counter()
    for image, truth in scenes:
        scores.append(score_partition(truth, segment_image(image, source, config).labels))
        tick()
    return PipelineScores.pooled(scores, time.perf_counter() - started)


def _one_line(result: SettingsResult) -> str:
    return "; ".join(
        f"{name} F1 {scores.f1:.3f} IoU {scores.pixel_iou:.3f}"
        for name, scores in result.pipelines.items()
    )


def _counter(task: str, total: int, progress: ProgressCallback | None) -> Callable[[], None]:
    """A function that counts one more unit of `task` done and reports it to `progress`."""
    report = progress or ignore_progress
    done = 0
    report(ProgressUpdate(task, done, total))

    def tick() -> None:
        nonlocal done
        done += 1
        report(ProgressUpdate(task, done, total))

    return tick
