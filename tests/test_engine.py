from pathlib import Path

import numpy as np
import pytest

from lisegagr_core.config import EngineConfig, RefineSettings, RoundSettings
from lisegagr_core.engine import iterative_rounds, merge_rounds, segment_image
from lisegagr_core.masks import partition
from lisegagr_core.metrics import score_partition
from lisegagr_core.standins.ground_truth import GroundTruthMaskSource
from lisegagr_core.whitening import unsegmented_fraction, whiten

from .naip import naip_names, naip_scene

pytestmark = pytest.mark.shared_data

NO_REFINE = EngineConfig(working_size=None, refine=RefineSettings(enabled=False))


def _recall(truth: np.ndarray, masks_config: EngineConfig, pooled) -> float:  # type: ignore[no-untyped-def]
    labels = partition(merge_rounds(pooled, masks_config), masks_config.min_component_area).labels
    return score_partition(truth, labels).recall


@pytest.mark.parametrize("index", [0, 7, 19])
def test_round_two_recovers_fields_missed_in_round_one(shared_data: Path, index: int) -> None:
    rgb, truth = naip_scene(shared_data, naip_names(shared_data)[index])
    source = GroundTruthMaskSource(truth, miss_fractions=[1 / 3], seed=index)

    one_round = RoundSettings(max_rounds=1)
    pooled_1, _ = iterative_rounds(rgb, source, one_round)
    recall_1 = _recall(truth, NO_REFINE, pooled_1)

    source = GroundTruthMaskSource(truth, miss_fractions=[1 / 3], seed=index)
    pooled, reports = iterative_rounds(rgb, source, RoundSettings())
    recall_all = _recall(truth, NO_REFINE, pooled)

    assert recall_1 == pytest.approx(2 / 3, abs=0.05)
    assert reports[1].kept > 0
    assert recall_all > recall_1 + 0.15
    # what round 2 adds is new: its masks are the fields round 1 missed
    assert set(np.unique(pooled.stage)) >= {1, 2}


def test_rounds_stop_when_the_whitened_tile_is_almost_all_white(shared_data: Path) -> None:
    rgb, truth = naip_scene(shared_data, naip_names(shared_data)[3])
    settings = RoundSettings()
    pooled, reports = iterative_rounds(rgb, GroundTruthMaskSource(truth), settings)
    assert 1 <= len(reports) <= 4
    # replay the whitenings: each round ran on one with 5% or more left, and the rounds
    # stopped early only after one that left less
    seen, left = rgb, []
    for done in range(1, len(reports) + 1):
        covered = pooled.select(pooled.stage <= done).union()
        seen = whiten(seen, covered, done + 1, settings.whitening)
        left.append(unsegmented_fraction(seen))
    assert [r.unsegmented_fraction for r in reports[1:]] == left[:-1]
    assert all(fraction >= 0.05 for fraction in left[:-1])
    if len(reports) < settings.max_rounds:
        assert left[-1] < 0.05


def test_full_engine_output_is_a_partition_with_records(shared_data: Path) -> None:
    rgb, truth = naip_scene(shared_data, naip_names(shared_data)[11])
    source = GroundTruthMaskSource(truth, miss_fractions=[0.2], merge_fractions=[0.2], seed=1)
    result = segment_image(rgb, source, EngineConfig(working_size=None))
    labels = result.labels
    assert labels.dtype == np.uint32 and labels.shape == truth.shape
    ids = np.unique(labels)
    assert ids[0] == 0 and (ids[1:] == np.arange(1, len(result.instances) + 1)).all()
    for instance in result.instances:
        assert (labels == instance.id).sum() == instance.area >= 50
        x0, y0, x1, y1 = instance.bbox
        rows, cols = np.nonzero(labels == instance.id)
        assert (cols.min(), rows.min(), cols.max(), rows.max()) == (x0, y0, x1, y1)
    assert {i.stage for i in result.instances} <= {
        "round 1",
        "round 2",
        "round 3",
        "round 4",
        "refinement",
    }
    scores = score_partition(truth, labels)
    assert scores.f1 > 0.7


def test_ground_truth_source_with_no_misses_rebuilds_the_fields(shared_data: Path) -> None:
    rgb, truth = naip_scene(shared_data, naip_names(shared_data)[5])
    result = segment_image(rgb, GroundTruthMaskSource(truth), NO_REFINE)
    scores = score_partition(truth, result.labels)
    assert scores.f1 > 0.97 and scores.pixel_iou > 0.97
