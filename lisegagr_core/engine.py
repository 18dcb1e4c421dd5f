"""The LiSegAgr method on one image: iterative rounds, refinement, and a final partition.

    segmentation = segment_image(rgb, SamMaskSource(load_sam("vit_b"), config.amg), config)

Rounds pool their masks as a list (the reference scripts take a pixel-wise maximum of the
j-th mask of every round, which fuses unrelated masks; this is the method's intent).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window
from scipy import ndimage

from lisegagr_core.config import EngineConfig, RoundSettings
from lisegagr_core.masks import (
    MaskSet,
    dedup_keep_larger,
    partition,
    split_components,
    stage_name,
    white_fraction,
)
from lisegagr_core.refine import RefinementReport, refine_masks
from lisegagr_core.sources import MaskSource
from lisegagr_core.whitening import unsegmented_fraction, white_pixels, whiten

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

    def instance_records(self) -> list[dict[str, object]]:
        return [asdict(i) for i in self.instances]


def _white_drop(settings: RoundSettings, round_number: int) -> float:
    return settings.round2_white_drop if round_number == 2 else settings.later_white_drop


def iterative_rounds(
    image: NDArray[np.uint8], source: MaskSource, settings: RoundSettings
) -> tuple[MaskSet, list[RoundReport]]:
    """Step 1: AMG, whiten what was found, AMG again on the rest; masks of all rounds pooled.

    image: (H, W, 3) uint8. Returns every kept mask of every round (stage = its round).
    """
    shape = image.shape[:2]
    full = Window(0, 0, shape[1], shape[0])
    pooled: list[MaskSet] = []
    reports: list[RoundReport] = []
    seen = image
    for round_number in range(1, settings.max_rounds + 1):
        started = time.perf_counter()
        proposed = source.generate(seen, full)
        kept = proposed
        if round_number > 1:
            on_white = white_fraction(proposed, white_pixels(seen))
            kept = proposed.select(on_white < _white_drop(settings, round_number))
        pooled.append(kept.with_stage(round_number))
        reports.append(
            RoundReport(
                round_number,
                len(proposed),
                len(kept),
                unsegmented_fraction(seen),
                time.perf_counter() - started,
            )
        )
        log.debug("round %d: %d proposed, %d kept", round_number, len(proposed), len(kept))
        if round_number == settings.max_rounds:
            break
        covered = MaskSet.concat(pooled, shape).union()
        seen = whiten(seen, covered, round_number + 1, settings.whitening)
        if unsegmented_fraction(seen) < settings.min_unsegmented_fraction:
            break
    return MaskSet.concat(pooled, shape), reports


def merge_rounds(masks: MaskSet, config: EngineConfig) -> MaskSet:
    """Pooled masks de-duplicated at `merge_iou`, split into components, small ones dropped."""
    return split_components(
        dedup_keep_larger(masks, config.rounds.merge_iou), config.min_component_area
    )


def segment_image(
    image: NDArray[np.uint8], source: MaskSource, config: EngineConfig
) -> Segmentation:
    """Run the whole method (steps 1 and 2 of the algorithm) on `image` (H, W, 3) uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    pooled, rounds = iterative_rounds(image, source, config.rounds)
    merged = merge_rounds(pooled, config)
    report = None
    final = merged
    if config.refine.enabled:
        refined, report = refine_masks(image, merged, source, config.refine)
        refined = dedup_keep_larger(
            split_components(refined, config.min_component_area), config.refine.refined_dedup_iou
        )
        final = dedup_keep_larger(
            MaskSet.concat([merged, refined], merged.shape), config.refine.final_dedup_iou
        )
    parts = partition(final, config.min_component_area)
    return Segmentation(
        labels=parts.labels,
        instances=_instances(parts.labels, final, parts.source_index),
        rounds=rounds,
        refinement=report,
        masks=final,
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
