import numpy as np
import pytest

from lisegagr_core.metrics import field_pixel_iou, score_partition


def _two_fields() -> np.ndarray:
    truth = np.zeros((20, 40), np.uint32)
    truth[:, :20] = 1
    truth[:, 20:] = 2
    return truth


def test_perfect_match_scores_one() -> None:
    truth = _two_fields()
    scores = score_partition(truth, truth * 7)  # ids need not agree
    assert (scores.precision, scores.recall, scores.f1, scores.pixel_iou) == (1, 1, 1, 1)
    assert scores.merged_fields == scores.split_fields == 0


def test_one_missed_field_halves_recall() -> None:
    truth = _two_fields()
    predicted = truth.copy()
    predicted[predicted == 2] = 0
    scores = score_partition(truth, predicted)
    assert scores.recall == 0.5 and scores.precision == 1.0
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.pixel_iou == 0.5


def test_two_fields_merged_into_one_match_nothing_and_count_as_merged() -> None:
    truth = _two_fields()
    truth[:, 30:] = 3
    scores = score_partition(truth, (truth > 0).astype(np.uint32))  # IoU 1/2, 1/4, 1/4
    assert scores.matched == 1 and scores.merged_fields == 1
    truth[:, 14:] = 2
    truth[:, 27:] = 3  # three near-equal thirds: no IoU reaches 0.5
    scores = score_partition(truth, (truth > 0).astype(np.uint32))
    assert scores.matched == 0 and scores.merged_fields == 1
    assert scores.pixel_iou == 1.0


def test_split_field_keeps_its_larger_half_matched() -> None:
    truth = _two_fields()
    predicted = truth.copy()
    predicted[:6, 20:] = 3  # field 2 split 70/30
    scores = score_partition(truth, predicted)
    assert scores.matched == 2 and scores.split_fields == 1
    assert scores.precision == pytest.approx(2 / 3)


def test_empty_rasters() -> None:
    empty = np.zeros((5, 5), np.uint8)
    assert field_pixel_iou(empty, empty) == 1.0
    assert score_partition(empty, _two_fields()[:5, :5]).precision == 0.0
