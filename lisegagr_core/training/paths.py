"""How well a model maps labelled images through the two paths users take, side by side.

- ``segment``: each image whole at the engine's working size (`lisegagr segment`);
- ``run``: each image as a region run (`lisegagr run`): the tile grid, per-tile segmentation at
  the tiles' scale, the merge across tile borders, the mosaic, and the classifier when given
  (scored twice then: every instance, and the field class only).

    table = score_paths(sam, sources, {"grid": {}, "head": {"amg.prompts": "field-head"}},
                        workdir=Path("out/heldout"), classifier="weights/classifier.pt")

Every variant is a set of dotted engine overrides over the settings recorded with the model;
keys that start with ``run.`` set the region run's own settings (``run.core``, ``run.halo``)
and leave the ``segment`` path alone.
Scores are pooled over the images (object counts summed, pixel IoU from summed pixel counts)
at each image's full resolution, with `metrics.score_partition`'s matching at IoU ≥ 0.5.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lisegagr_core.config import load_config, load_region_config
from lisegagr_core.evaluation import PartitionScores, pool_scores, score_with_pixels
from lisegagr_core.imagery import read_image
from lisegagr_core.metrics import SegmentationScores
from lisegagr_core.models import LoadedSam, model_description
from lisegagr_core.mosaic import CLASS_FIELD, open_mosaic
from lisegagr_core.single_image import segment_loaded
from lisegagr_core.source_specs import SamSpec
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.training.data import AnnotatedSource, read_scene
from lisegagr_core.training.machine import machine
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR

log = logging.getLogger(__name__)

PATHS = ("segment", "run")
_RUN = "run."


@dataclass(frozen=True)
class PathResult:
    """One variant through one path: pooled scores, instances per image, seconds per image."""

    variant: str
    path: str
    overrides: dict[str, Any]
    scores: SegmentationScores
    instances_per_image: float
    seconds_per_image: float
    per_image: dict[str, dict[str, float | int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scores": self.scores.to_dict()}


def score_paths(
    sam: LoadedSam,
    sources: Sequence[AnnotatedSource],
    variants: Mapping[str, Mapping[str, Any]],
    *,
    workdir: Path,
    paths: Sequence[str] = PATHS,
    classifier: str | None = None,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    on_result: Callable[[PathResult], None] | None = None,
) -> list[PathResult]:
    """Score every variant through every path on `sources` (images with field polygons);
    `weights_dir` is where the run's workers find `sam` by its name."""
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise ValueError(f"unknown paths {unknown}; choose from {PATHS}")
    scenes = [(source, read_scene(source).instances) for source in sources]
    results = []
    for name, overrides in variants.items():
        for path in paths:
            if path == "segment":
                found = [_score_segment(sam, scenes, name, dict(overrides))]
            else:
                found = _score_run(
                    sam, scenes, name, dict(overrides), workdir, classifier, weights_dir
                )
            for result in found:
                log.info(
                    "%s via %s: F1 %.3f pixel IoU %.3f",
                    result.variant,
                    result.path,
                    result.scores.f1,
                    result.scores.pixel_iou,
                )
                if on_result is not None:
                    on_result(result)
                results.append(result)
    return results


def _result(
    variant: str,
    path: str,
    overrides: dict[str, Any],
    parts: Sequence[tuple[str, PartitionScores]],
    instances: int,
    seconds: float,
) -> PathResult:
    count = max(len(parts), 1)
    return PathResult(
        variant=variant,
        path=path,
        overrides=overrides,
        scores=pool_scores([part for _, part in parts]),
        instances_per_image=round(instances / count, 1),
        seconds_per_image=round(seconds / count, 2),
        per_image={name: part.to_dict() for name, part in parts},
    )


def _score_segment(
    sam: LoadedSam,
    scenes: Sequence[tuple[AnnotatedSource, np.ndarray]],
    variant: str,
    overrides: dict[str, Any],
) -> PathResult:
    engine = {key: value for key, value in overrides.items() if not key.startswith(_RUN)}
    config = load_config(None, engine, model_settings=sam.engine_settings)
    source = SamMaskSource(sam, config.amg)
    parts, instances, started = [], 0, time.perf_counter()
    for annotated, truth in scenes:
        labels, segmentation = segment_loaded(read_image(annotated.image_path), source, config)
        instances += len(segmentation.instances)
        parts.append((annotated.name, score_with_pixels(truth, labels)))
    return _result(variant, "segment", overrides, parts, instances, time.perf_counter() - started)


def _score_run(
    sam: LoadedSam,
    scenes: Sequence[tuple[AnnotatedSource, np.ndarray]],
    variant: str,
    overrides: dict[str, Any],
    workdir: Path,
    classifier: str | None,
    weights_dir: Path,
) -> list[PathResult]:
    from lisegagr_core.predictions import read_predictions
    from lisegagr_core.run import run_region
    from lisegagr_core.run.store import RegionPaths

    engine = {
        key.removeprefix(_RUN) if key.startswith(_RUN) else f"engine.{key}": value
        for key, value in overrides.items()
    }
    if classifier is not None:
        engine["classifier"] = classifier
    # the model chosen and its settings applied once, as `claim_run` would for every image
    source, settings = SamSpec.choose(sam.name, weights_dir, str(sam.device))
    config = load_region_config(None, engine, model_settings=settings)
    every: list[tuple[str, PartitionScores]] = []
    fields_only: list[tuple[str, PartitionScores]] = []
    counts = [0, 0]
    started = time.perf_counter()
    for annotated, truth in scenes:
        out = workdir / variant / Path(annotated.name).stem
        shutil.rmtree(out, ignore_errors=True)
        run_region([str(annotated.image_path)], str(out), config, source)
        labels = read_predictions(out)[0].labels
        every.append((annotated.name, score_with_pixels(truth, labels)))
        counts[0] += len(np.unique(labels[labels > 0]))
        if classifier is not None:
            group = open_mosaic(RegionPaths(str(out)).mosaic, mode="r")
            classes = np.asarray(group["classes"][...])  # type: ignore[index]
            kept = np.where(classes == CLASS_FIELD, labels, 0)
            fields_only.append((annotated.name, score_with_pixels(truth, kept)))
            counts[1] += len(np.unique(kept[kept > 0]))
    seconds = time.perf_counter() - started
    results = [_result(variant, "run", overrides, every, counts[0], seconds)]
    if classifier is not None:
        results.append(
            _result(variant, "run, field class", overrides, fields_only, counts[1], seconds)
        )
    return results


def paths_table(
    sam: LoadedSam, results: Sequence[PathResult], images: Sequence[str]
) -> dict[str, Any]:
    """A JSON-ready record of `score_paths`' results: the model, the images, the machine."""
    return {
        "model": model_description(sam),
        "images": list(images),
        "machine": machine(sam.device),
        "results": [result.to_dict() for result in results],
    }
