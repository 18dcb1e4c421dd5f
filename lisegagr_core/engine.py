"""The LiSegAgr method on one image: iterative rounds, refinement, and a final partition.

    segmentation = segment_image(rgb, SamMaskSource(load_sam("vit_b"), config.amg), config)

Rounds pool their masks as a list (the reference scripts take a pixel-wise maximum of the
j-th mask of every round, which fuses unrelated masks; this is the method's intent).
Area and length thresholds are in pixels of the method's reference frame; each image uses
them converted to its own pixels (`EngineConfig.in_working_pixels`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window
from scipy import ndimage

from lisegagr_core.config import EngineConfig, RoundSettings
from lisegagr_core.empty_ground import empty_ground
from lisegagr_core.masks import (
    MaskSet,
    dedup_keep_larger,
    partition,
    split_components,
    stage_name,
    white_fraction,
)
from lisegagr_core.refine import RefinementReport, refine_masks_many
from lisegagr_core.sources import MaskSource
from lisegagr_core.whitening import WHITE, unsegmented_fraction, white_pixels, whiten

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    """One field candidate of the partition. bbox: XYXY pixels, inclusive."""

    id: int
    area: int
    bbox: tuple[int, int, int, int]
    stage: str
    predicted_iou: float
    stability_score: float


@dataclass(frozen=True)
class RoundReport:
    """One AMG round: masks proposed, masks kept, share of the tile it still saw as unsegmented."""

    round: int
    proposed: int
    kept: int
    unsegmented_fraction: float
    seconds: float


@dataclass(frozen=True)
class Segmentation:
    """The result on one image.

    labels: (H, W) uint32, 0 background, instances 1..K, a partition (no pixel in two).
    """

    labels: NDArray[np.uint32]
    instances: list[Instance]
    rounds: list[RoundReport]
    refinement: RefinementReport | None
    masks: MaskSet = field(repr=False)
    """The de-duplicated masks before the partition (they may overlap)."""


def _white_drop(settings: RoundSettings, round_number: int) -> float:
    return settings.round2_white_drop if round_number == 2 else settings.later_white_drop


def iterative_rounds(
    image: NDArray[np.uint8], source: MaskSource, settings: RoundSettings
) -> tuple[MaskSet, list[RoundReport]]:
    """Step 1: AMG, whiten what was found, AMG again on the rest; masks of all rounds pooled.

    image: (H, W, 3) uint8. Returns every kept mask of every round (stage = its round).
    """
    return iterative_rounds_many([image], source, settings)[0]


def iterative_rounds_many(
    images: Sequence[NDArray[np.uint8]],
    source: MaskSource,
    settings: RoundSettings | Sequence[RoundSettings],
) -> list[tuple[MaskSet, list[RoundReport]]]:
    """`iterative_rounds` over several images in lockstep; `settings` for all, or one each.

    Round k of every image that still needs it is one `generate_many` call, so a source
    that batches (the fast SAM generator) encodes those images together. Each image stops
    on its own, when its rounds are spent or too little of it is left unsegmented. A round's
    seconds are the shared call's, divided evenly among the images in it.
    """
    each = [settings] * len(images) if isinstance(settings, RoundSettings) else list(settings)
    seen = list(images)
    pooled: list[list[MaskSet]] = [[] for _ in images]
    reports: list[list[RoundReport]] = [[] for _ in images]
    active = list(range(len(images)))
    for round_number in range(1, max((s.max_rounds for s in each), default=0) + 1):
        started = time.perf_counter()
        windows = [Window(0, 0, seen[i].shape[1], seen[i].shape[0]) for i in active]
        proposals = source.generate_many([seen[i] for i in active], windows)
        seconds = (time.perf_counter() - started) / max(len(active), 1)
        still_active = []
        for i, proposed in zip(active, proposals, strict=True):
            kept = proposed
            if round_number > 1:
                on_white = white_fraction(proposed, white_pixels(seen[i]))
                kept = proposed.select(on_white < _white_drop(each[i], round_number))
            pooled[i].append(kept.with_stage(round_number))
            reports[i].append(
                RoundReport(
                    round_number, len(proposed), len(kept), unsegmented_fraction(seen[i]), seconds
                )
            )
            log.debug("round %d: %d proposed, %d kept", round_number, len(proposed), len(kept))
            if round_number == each[i].max_rounds:
                continue
            shape = seen[i].shape[:2]
            covered = MaskSet.concat(pooled[i], shape).union()
            seen[i] = whiten(seen[i], covered, round_number + 1, each[i].whitening)
            if unsegmented_fraction(seen[i]) >= each[i].min_unsegmented_fraction:
                still_active.append(i)
        active = still_active
        if not active:
            break
    return [
        (MaskSet.concat(masks, image.shape[:2]), report)
        for masks, report, image in zip(pooled, reports, images, strict=True)
    ]


def merge_rounds(masks: MaskSet, config: EngineConfig) -> MaskSet:
    """Pooled masks de-duplicated at `merge_iou`, split into components, small ones dropped."""
    return split_components(
        dedup_keep_larger(masks, config.rounds.merge_iou), config.min_component_area
    )


def segment_image(
    image: NDArray[np.uint8], source: MaskSource, config: EngineConfig
) -> Segmentation:
    """Run the whole method (steps 1 and 2 of the algorithm) on `image` (H, W, 3) uint8.

    `config`'s pixel thresholds are in reference-frame pixels; the image's own scale
    (`config.frame`) converts them.
    """
    return segment_images([image], source, config)[0]


def segment_images(
    images: Sequence[NDArray[np.uint8]], source: MaskSource, config: EngineConfig
) -> list[Segmentation]:
    """`segment_image` over several images (tiles) at once, each with the same result.

    Their rounds run in lockstep and all their refinement crops go to the source in one
    call, so a batching source (the fast SAM generator) fills its encoder batches.
    """
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    configs = [config.in_working_pixels(image.shape[:2]) for image in images]
    empties = [
        empty_ground(image, c.empty_ground) for image, c in zip(images, configs, strict=True)
    ]
    images = [_painted_white(image, empty) for image, empty in zip(images, empties, strict=True)]
    rounds = iterative_rounds_many(images, source, [c.rounds for c in configs])
    merged = [merge_rounds(pooled, c) for (pooled, _), c in zip(rounds, configs, strict=True)]
    finals = merged
    reports: list[RefinementReport | None] = [None] * len(images)
    if config.refine.enabled:
        refinements = refine_masks_many(images, merged, source, [c.refine for c in configs])
        finals = []
        for i, (refined, report) in enumerate(refinements):
            refined = dedup_keep_larger(
                split_components(refined, configs[i].min_component_area),
                config.refine.refined_dedup_iou,
            )
            finals.append(
                dedup_keep_larger(
                    MaskSet.concat([merged[i], refined], merged[i].shape),
                    config.refine.final_dedup_iou,
                )
            )
            reports[i] = report
    results = []
    for final, (_, round_reports), refinement, resolved, empty in zip(
        finals, rounds, reports, configs, empties, strict=True
    ):
        final = _outside(final, empty)
        parts = partition(final, resolved.min_component_area)
        results.append(
            Segmentation(
                labels=parts.labels,
                instances=_instances(parts.labels, final, parts.source_index),
                rounds=round_reports,
                refinement=refinement,
                masks=final,
            )
        )
    return results


def _painted_white(image: NDArray[np.uint8], area: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """`image` with `area` white (the method's "nothing left here"); itself when none."""
    if not area.any():
        return image
    painted = image.copy()
    painted[area] = WHITE
    return painted


def _outside(masks: MaskSet, area: NDArray[np.bool_]) -> MaskSet:
    """`masks` without the pixels of `area`; masks left empty are dropped."""
    if not area.any() or not len(masks):
        return masks
    clipped = masks.masks & ~area
    kept = clipped.reshape(len(masks), -1).any(axis=1)
    return MaskSet(
        masks=clipped[kept],
        predicted_iou=masks.predicted_iou[kept],
        stability=masks.stability[kept],
        stage=masks.stage[kept],
    )


def _instances(
    labels: NDArray[np.uint32], masks: MaskSet, source_index: NDArray[np.int64]
) -> list[Instance]:
    """Per-instance records of a partition: area and box from the labels, scores from the mask."""
    count = len(source_index)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    instances = []
    for k, (rows, cols) in enumerate(
        ndimage.find_objects(labels.astype(np.int64), max_label=count)
    ):
        src = int(source_index[k])
        instances.append(
            Instance(
                id=k + 1,
                area=int(areas[k]),
                bbox=(cols.start, rows.start, cols.stop - 1, rows.stop - 1),
                stage=stage_name(int(masks.stage[src])),
                predicted_iou=round(float(masks.predicted_iou[src]), 4),
                stability_score=round(float(masks.stability[src]), 4),
            )
        )
    return instances
