import numpy as np
import pytest

from lisegagr_core.masks import (
    STAGE_REFINED,
    MaskSet,
    dedup_keep_larger,
    pairwise_iou,
    partition,
    split_components,
    white_fraction,
)


def _rect(shape: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _naive_iou(masks: np.ndarray) -> np.ndarray:
    n = len(masks)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            union = (masks[i] | masks[j]).sum()
            out[i, j] = (masks[i] & masks[j]).sum() / union if union else 0.0
    return out


def test_pairwise_iou_matches_pixel_counting() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((12, 40, 50)) < 0.3
    masks[3] = False  # an empty mask has IoU 0 with everything
    np.testing.assert_allclose(pairwise_iou(MaskSet.from_masks(masks)), _naive_iou(masks))


def test_boxes_are_inclusive_xyxy_and_zero_for_empty_masks() -> None:
    shape = (30, 40)
    masks = np.stack(
        [_rect(shape, 5, 7, 12, 20), np.zeros(shape, bool), _rect(shape, 39, 29, 40, 30)]
    )
    np.testing.assert_array_equal(
        MaskSet.from_masks(masks).boxes, [[5, 7, 11, 19], [0, 0, 0, 0], [39, 29, 39, 29]]
    )


def test_dedup_keeps_the_larger_of_two_masks_above_the_threshold() -> None:
    shape = (100, 100)
    small = _rect(shape, 10, 10, 50, 48)  # IoU with big = 0.95
    big = _rect(shape, 10, 10, 50, 50)
    other = _rect(shape, 60, 60, 90, 90)
    kept = dedup_keep_larger(MaskSet.from_masks(np.stack([small, big, other])), 0.8)
    assert len(kept) == 2
    assert kept.masks[0].sum() == big.sum()
    np.testing.assert_array_equal(kept.masks[1], other)


def test_dedup_keeps_both_masks_at_or_below_the_threshold() -> None:
    shape = (100, 100)
    a, b = _rect(shape, 0, 0, 50, 50), _rect(shape, 0, 25, 50, 75)  # IoU = 1/3
    assert len(dedup_keep_larger(MaskSet.from_masks(np.stack([a, b])), 0.3333)) == 1
    assert len(dedup_keep_larger(MaskSet.from_masks(np.stack([a, b])), 0.34)) == 2


def test_dedup_chain_with_every_pair_above_keeps_only_the_largest() -> None:
    # a ⊂ b, c ⊂ a, each pair above 0.8: only the largest survives.
    shape = (100, 100)
    masks = np.stack(
        [_rect(shape, 0, 0, 90, 100), _rect(shape, 0, 0, 100, 100), _rect(shape, 0, 0, 81, 100)]
    )
    kept = dedup_keep_larger(MaskSet.from_masks(masks), 0.8)
    assert len(kept) == 1 and kept.areas[0] == 100 * 100


def _nested_chain() -> dict[str, np.ndarray]:
    """C ⊂ B ⊂ A with IoU(A, B) = 0.85, IoU(B, C) = 0.82, IoU(A, C) = 0.697 (the issue's)."""
    shape = (100, 100)
    return {
        "A": _rect(shape, 0, 0, 100, 100),
        "B": _rect(shape, 0, 0, 85, 100),
        "C": _rect(shape, 0, 0, 85, 82),
    }


def test_nested_chain_dedup_follows_the_reference_scan_in_index_order() -> None:
    chain = _nested_chain()
    masks = MaskSet.from_masks(np.stack([chain[k] for k in "ABC"]))
    np.testing.assert_allclose(pairwise_iou(masks)[[0, 1, 0], [1, 2, 2]], [0.85, 0.82, 0.697])
    # order (C, B, A): C meets B and goes, then B meets A and goes: the reference keeps {A}
    # (a greedy pass from the largest down would keep {A, C}).
    kept = dedup_keep_larger(MaskSet.from_masks(np.stack([chain[k] for k in "CBA"])), 0.8)
    assert len(kept) == 1 and kept.areas[0] == chain["A"].sum()
    # order (A, B, C): A deletes B, and C, which only B overlapped enough, stays
    kept = dedup_keep_larger(MaskSet.from_masks(np.stack([chain[k] for k in "ABC"])), 0.8)
    assert kept.areas.tolist() == [chain["A"].sum(), chain["C"].sum()]
    # order (B, C, A): B deletes C, then meets A and goes
    kept = dedup_keep_larger(MaskSet.from_masks(np.stack([chain[k] for k in "BCA"])), 0.8)
    assert kept.areas.tolist() == [chain["A"].sum()]


def test_dedup_of_equal_areas_deletes_the_mask_being_visited() -> None:
    shape = (20, 20)
    first, second = _rect(shape, 0, 0, 10, 10), _rect(shape, 0, 1, 10, 11)  # IoU 0.818
    kept = dedup_keep_larger(MaskSet.from_masks(np.stack([first, second])), 0.8)
    np.testing.assert_array_equal(kept.masks, second[None])


def test_white_fraction_counts_each_masks_share_on_white() -> None:
    shape = (10, 10)
    white = _rect(shape, 0, 0, 5, 10)
    masks = MaskSet.from_masks(np.stack([_rect(shape, 0, 0, 10, 10), _rect(shape, 5, 0, 10, 10)]))
    np.testing.assert_allclose(white_fraction(masks, white), [0.5, 0.0])


def test_split_components_uses_four_connectivity() -> None:
    # two squares touching only at a corner are two components (the reference's ndimage.label)
    shape = (30, 30)
    mask = _rect(shape, 0, 0, 10, 10) | _rect(shape, 10, 10, 20, 20)
    parts = split_components(MaskSet.from_masks(mask[None]), min_area=1)
    assert sorted(parts.areas.tolist()) == [100, 100]


def test_split_components_separates_parts_and_drops_small_ones() -> None:
    shape = (50, 50)
    mask = _rect(shape, 0, 0, 10, 10) | _rect(shape, 20, 20, 40, 40) | _rect(shape, 45, 45, 47, 47)
    masks = MaskSet.from_masks(mask[None], predicted_iou=[0.7], stage=3)
    parts = split_components(masks, min_area=50)
    assert sorted(parts.areas.tolist()) == [100, 400]
    assert parts.predicted_iou.tolist() == pytest.approx([0.7, 0.7])
    assert parts.stage.tolist() == [3, 3]


def test_partition_paints_smaller_masks_over_larger_ones() -> None:
    shape = (60, 60)
    parcel = _rect(shape, 0, 0, 60, 60)
    piece = _rect(shape, 10, 10, 30, 30)
    masks = MaskSet.concat(
        [MaskSet.from_masks(parcel[None]), MaskSet.from_masks(piece[None], stage=STAGE_REFINED)],
        shape,
    )
    result = partition(masks, min_area=50)
    assert result.count == 2
    piece_id = result.labels[20, 20]
    assert (result.labels == piece_id).sum() == piece.sum()
    assert masks.stage[result.source_index[piece_id - 1]] == STAGE_REFINED


def test_partition_resplits_cut_labels_and_drops_small_remnants() -> None:
    shape = (40, 100)
    parcel = _rect(shape, 0, 0, 100, 40)
    divider = _rect(shape, 50, 0, 55, 40)  # cuts the parcel in two
    sliver = _rect(shape, 55, 0, 58, 40)  # leaves a 3-px remnant of the parcel? no: covered below
    masks = MaskSet.from_masks(np.stack([parcel, divider | sliver]))
    result = partition(masks, min_area=50)
    # left part, right part, divider: three instances, every pixel in exactly one
    assert result.count == 3
    assert (result.labels > 0).all()
    tiny = MaskSet.from_masks(np.stack([parcel, _rect(shape, 0, 0, 99, 40)]))
    # the big mask is left with a 40-px column: under min_area, it is dropped
    assert partition(tiny, min_area=50).count == 1


def test_sets_made_from_sets_derive_their_pixel_matrix_and_it_is_right() -> None:
    """select / with_stage / concat reuse the sparse pixels instead of scanning the masks."""
    rng = np.random.default_rng(3)
    a = MaskSet.from_masks(rng.random((6, 40, 50)) > 0.7)
    b = MaskSet.from_masks(rng.random((4, 40, 50)) > 0.4)
    _ = a.pixels, b.pixels
    derived = [
        a.select([4, 1]),
        a.select(np.array([True, False, True, False, False, True])),
        b.with_stage(3),
        MaskSet.concat([a, b], a.shape),
    ]
    for masks in derived:
        assert "pixels" in masks.__dict__  # derived, not scanned
        fresh = MaskSet.from_masks(masks.masks)
        assert (masks.pixels != fresh.pixels).nnz == 0
        np.testing.assert_array_equal(masks.areas, fresh.areas)
        np.testing.assert_array_equal(masks.boxes, fresh.boxes)
