"""Conformance of each step and threshold of the method to the reference scripts.

Every test builds a small input on which one step decides the outcome, and asserts the
reference's outcome on both sides of its threshold, with the default settings: moving a
default, or dropping a step, makes a test here fail (`bench/method_mutations.py` checks
that for a list of such changes). The reference is the seed paper's scripts, as restated in
the shared `ALGORITHM.md`: the rounds script (`round_1` … `round_4`, `delete_iou`,
`process_image_with_contour_method`, `process_image_skimage`) and the refinement script
(`apply_mask_and_detect_edges_for_all_layers`, `evaluate_color_distribution`,
`filter_masks_by_color`, `delete_iou`, `delete_iou_60`, `remove_layers_with_few_pixels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray
from rasterio.windows import Window

from lisegagr_core.config import (
    AmgSettings,
    EngineConfig,
    ReferenceFrame,
    RefineSettings,
    RegionConfig,
    RoundSettings,
    WhiteningSettings,
)
from lisegagr_core.engine import iterative_rounds, merge_rounds, segment_image
from lisegagr_core.masks import MaskSet
from lisegagr_core.refine import (
    colour_entropy,
    edge_ratio,
    find_under_segmented,
    refine_masks_many,
)
from lisegagr_core.whitening import (
    keep_large_dark_regions,
    unsegmented_fraction,
    white_pixels,
    whiten,
)

WHITE = 255
DARK = 60
#: Thresholds in pixels as written: the reference frame at scale 1.
AT_FRAME_SCALE = EngineConfig(working_size=None, frame=ReferenceFrame(scale=1.0))


def _rect(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


class ScriptedSource:
    """Proposes given masks: `rounds[k]` on the k-th call over the whole image (none after),
    `crops` (in crop coordinates, keyed by the crop's window) on refinement crops."""

    name = "scripted"

    def __init__(
        self,
        shape: tuple[int, int],
        rounds: Sequence[Sequence[np.ndarray]] = (),
        crops: dict[tuple[int, int, int, int], Sequence[np.ndarray]] | None = None,
    ) -> None:
        self.shape = shape
        self.rounds = [list(masks) for masks in rounds]
        self.crops = crops or {}
        self.round_calls = 0

    def generate_many(
        self, images: Sequence[NDArray[np.uint8]], regions: Sequence[Window]
    ) -> list[MaskSet]:
        return [self.generate(image, region) for image, region in zip(images, regions, strict=True)]

    def generate(self, image: NDArray[np.uint8], region: Window) -> MaskSet:
        key = (int(region.row_off), int(region.col_off), int(region.height), int(region.width))
        if key == (0, 0, *self.shape):
            call, self.round_calls = self.round_calls, self.round_calls + 1
            masks = self.rounds[call] if call < len(self.rounds) else []
        else:
            masks = list(self.crops.get(key, []))
        if not masks:
            return MaskSet.empty(image.shape[:2])
        return MaskSet.from_masks(np.stack(masks))


# --- the paper's values -------------------------------------------------------------------


def test_defaults_are_the_papers_values() -> None:
    """Each default, with the reference line it comes from."""
    amg, rounds, refine, config = AmgSettings(), RoundSettings(), RefineSettings(), EngineConfig()
    whitening = rounds.whitening
    # SamAutomaticMaskGenerator(sam) with segment_anything's defaults (all rounds and crops)
    assert (amg.points_per_side, amg.pred_iou_thresh, amg.stability_score_thresh) == (
        32,
        0.88,
        0.95,
    )
    assert (amg.stability_score_offset, amg.box_nms_thresh) == (1.0, 0.7)
    assert (amg.crop_n_layers, amg.min_mask_region_area) == (0, 0)
    # round_1 … round_4: four rounds; check_colored_area_proportion: `>= 0.05` goes on
    assert (rounds.max_rounds, rounds.min_unsegmented_fraction) == (4, 0.05)
    # round_2: `white_percentage < 50` kept; round_3 / round_4: `< 90`
    assert (rounds.round2_white_drop, rounds.later_white_drop) == (0.5, 0.9)
    # delete_iou (rounds script): `iou > 0.8`
    assert rounds.merge_iou == 0.8
    # binary_dilation(mask, iterations=3)
    assert whitening.mask_dilation_px == 3
    # process_image_with_contour_method(img, area_threshold=200)
    assert whitening.residue_max_area == 200
    # process_image_skimage(min_size=1000, color_threshold=[200, 200, 200])
    assert (whitening.dark_region_min_area, whitening.bright_threshold) == (1000, 200)
    # round_3 erases edges in upgrade_3.jpg, the image round 4 reads:
    # Canny(gray, 100, 200), 5×5 ones dilated 3 times, GaussianBlur (21, 21)
    assert whitening.edge_erase_from_round == 4
    assert (whitening.edge_canny_low, whitening.edge_canny_high) == (100, 200)
    assert (whitening.edge_dilate_kernel, whitening.edge_dilate_iterations) == (5, 3)
    assert whitening.edge_blur_kernel == 21
    # filter_and_save_layers(min_pixels=10000): `count_nonzero(layer) > min_pixels`
    assert refine.min_area == 10_000
    # apply_mask_and_detect_edges_for_all_layers: GaussianBlur (5, 5), Canny(100, 100),
    # contours drawn 3 wide, `ratio > 0.4`
    assert (refine.blur_kernel, refine.canny_low, refine.canny_high) == (5, 100, 100)
    assert (refine.outline_thickness, refine.edge_ratio_thresh) == (3, 0.4)
    # calculate_average_entropy: `average_entropy > 6.0`
    assert refine.entropy_thresh == 6.0
    # filter_masks_by_color: `white_percentage < 90` kept
    assert refine.crop_white_drop == 0.9
    # delete_iou (refinement script): `iou > 0.9`; delete_iou_60: `iou > 0.6`
    assert (refine.refined_dedup_iou, refine.final_dedup_iou) == (0.9, 0.6)
    # remove_layers_with_few_pixels(threshold=50): `count_nonzero(layer) >= threshold` kept
    assert config.min_component_area == 50
    # resize_image: every image to 1000 × 1000, made from 4× super-resolved 256-px tiles
    assert config.frame.side_px == 1000
    assert config.working_size == 1000


# --- step 1: rounds, whitening, stop rule -------------------------------------------------


def _white_with_dark_block(shape: tuple[int, int], rows: int, cols: int) -> np.ndarray:
    image = np.full((*shape, 3), WHITE, dtype=np.uint8)
    image[:rows, :cols] = DARK
    return image


@pytest.mark.parametrize(("dark_px", "rounds_run"), [(2000, 4), (1999, 1)])
def test_another_round_runs_while_five_percent_or_more_is_not_white(
    dark_px: int, rounds_run: int
) -> None:
    # 200×200: 2000 px is exactly 5% (`>= 0.05` goes on), 1999 px just under
    image = _white_with_dark_block((200, 200), 40, 50)
    if dark_px == 1999:
        image[39, 49] = WHITE
    _, reports = iterative_rounds(image, ScriptedSource((200, 200)), RoundSettings())
    assert len(reports) == rounds_run
    if rounds_run > 1:
        assert reports[1].unsegmented_fraction == pytest.approx(0.05)


def test_rounds_two_to_four_drop_masks_by_their_white_share() -> None:
    # round 2 keeps a mask under 50% white, round 3 one under 90%
    shape = (200, 200)
    image = _white_with_dark_block(shape, 100, 100)
    white_49, white_50 = _rect(shape, (10, 11), (49, 149)), _rect(shape, (20, 21), (50, 150))
    white_89, white_90 = _rect(shape, (40, 41), (89, 189)), _rect(shape, (50, 51), (90, 190))
    source = ScriptedSource(shape, rounds=[[], [white_49, white_50], [white_89, white_90]])
    pooled, reports = iterative_rounds(image, source, RoundSettings())
    assert [r.kept for r in reports[1:3]] == [1, 1]
    np.testing.assert_array_equal(pooled.masks[pooled.stage == 2], white_49[None])
    np.testing.assert_array_equal(pooled.masks[pooled.stage == 3], white_89[None])


def test_kept_masks_are_whitened_with_a_three_pixel_diamond() -> None:
    shape = (100, 100)
    image = _white_with_dark_block(shape, 60, 60)
    covered = np.zeros(shape, dtype=bool)
    covered[30, 30] = True
    white = white_pixels(whiten(image, covered, 2, WhiteningSettings()))[:60, :60]
    ys, xs = np.nonzero(white)
    assert len(ys) == 25  # |dy| + |dx| <= 3
    assert (np.abs(ys - 30) + np.abs(xs - 30)).max() == 3


def test_dark_residue_under_200_px_contour_area_is_cleared_first() -> None:
    # A grey field with a black strip. The residue step (OpenCV grey, Otsu) whitens the strip
    # when its contour area is under 200; then the grey field is the darker part and stays.
    # A strip of 200 or more stays, so the field is not the dark part and everything goes.
    shape = (300, 300)
    for strip, field_kept in [((2, 200), True), ((11, 21), False)]:  # contour areas 199, 200
        image = np.full((*shape, 3), 150, dtype=np.uint8)
        image[50 : 50 + strip[0], 50 : 50 + strip[1]] = 0
        out = whiten(image, np.zeros(shape, dtype=bool), 2, WhiteningSettings())
        assert (not white_pixels(out)[150:, 150:].any()) is field_kept


@pytest.mark.parametrize(("dark_px", "kept"), [(1000, True), (999, False)])
def test_only_dark_regions_of_1000_px_or_more_are_left(dark_px: int, kept: bool) -> None:
    image = _white_with_dark_block((100, 100), 40, 25)
    if dark_px == 999:
        image[39, 24] = WHITE
    out = whiten(image, np.zeros((100, 100), dtype=bool), 2, WhiteningSettings())
    assert (not white_pixels(out)[:39, :24].any()) is kept
    assert bool(white_pixels(out).all()) is not kept


def _grey_canvas(h: int, w: int, value: int = 90) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_dark_regions_come_from_rec709_grey() -> None:
    # Rec. 709 (scikit-image) grey: green 154.5 > magenta 128.5, so magenta is the dark half;
    # BT.601 (OpenCV) would say the opposite (133.9 < 141.3).
    image = _grey_canvas(60, 80)
    image[:, :40] = (40, 200, 40)
    image[:, 40:] = (200, 100, 200)
    white = white_pixels(keep_large_dark_regions(image, min_area=1000, bright_threshold=200))
    assert white[:, :40].all()
    assert not white[:, 40:].any()


def test_dark_regions_are_four_connected() -> None:
    # two 30×30 dark squares touching at a corner: two regions of 900 px, both under 1000
    image = _grey_canvas(80, 80, value=180)
    image[10:40, 10:40] = 40
    image[40:70, 40:70] = 40
    white = white_pixels(keep_large_dark_regions(image, min_area=1000, bright_threshold=200))
    assert white.all()
    assert not white_pixels(keep_large_dark_regions(image, 900, 200))[10:40, 10:40].any()


def test_a_single_grey_level_has_no_dark_region() -> None:
    # Otsu of one level is that level; dark is strictly below it, so nothing is kept
    out = keep_large_dark_regions(_grey_canvas(50, 50, value=90), min_area=1, bright_threshold=200)
    assert white_pixels(out).all()


def test_pixels_with_every_channel_above_200_are_whitened() -> None:
    image = np.full((100, 100, 3), WHITE, dtype=np.uint8)
    image[:40, :40] = (201, 201, 201)
    image[:40, 50:90] = (200, 201, 201)
    white = white_pixels(whiten(image, np.zeros((100, 100), dtype=bool), 2, WhiteningSettings()))
    assert white[:40, :40].all()
    assert not white[:40, 50:90].any()


def test_strong_edges_are_erased_only_for_round_four() -> None:
    # a large dark region of dense stripes: kept for round 3, its edge zone erased for round 4
    image = np.full((120, 120, 3), WHITE, dtype=np.uint8)
    image[10:110, 10:110] = 10
    for x in range(10, 110, 8):
        image[10:110, x : x + 4] = 100
    covered = np.zeros((120, 120), dtype=bool)
    for_round_3 = whiten(image, covered, 3, WhiteningSettings())
    for_round_4 = whiten(image, covered, 4, WhiteningSettings())
    assert not white_pixels(for_round_3)[30:90, 30:90].any()
    assert white_pixels(for_round_4)[30:90, 30:90].all()
    assert unsegmented_fraction(for_round_4) < unsegmented_fraction(for_round_3)


# --- merging the rounds -------------------------------------------------------------------


@pytest.mark.parametrize(("small_rows", "both_kept"), [(80, True), (81, False)])
def test_pooled_masks_above_iou_0_8_keep_the_larger(small_rows: int, both_kept: bool) -> None:
    shape = (100, 100)
    big, small = _rect(shape, (0, 100), (0, 100)), _rect(shape, (0, small_rows), (0, 100))
    merged = merge_rounds(MaskSet.from_masks(np.stack([small, big])), EngineConfig())
    assert sorted(merged.areas.tolist()) == ([small.sum(), big.sum()] if both_kept else [10_000])


def test_pooled_masks_are_deduplicated_in_the_references_scan_order() -> None:
    # C ⊂ B ⊂ A, IoU(A, B) 0.85, IoU(B, C) 0.82, IoU(A, C) 0.70: in order (C, B, A) the
    # reference deletes C (meeting B) and then B (meeting A)
    shape = (100, 100)
    a = _rect(shape, (0, 100), (0, 100))
    b = _rect(shape, (0, 100), (0, 85))
    c = _rect(shape, (0, 82), (0, 85))
    merged = merge_rounds(MaskSet.from_masks(np.stack([c, b, a])), EngineConfig())
    assert merged.areas.tolist() == [10_000]


def test_components_under_50_px_are_dropped_and_corners_do_not_connect() -> None:
    shape = (60, 60)
    fifty = _rect(shape, (0, 5), (0, 10))
    forty_nine = _rect(shape, (5, 12), (10, 17))  # touches `fifty` only at a corner
    merged = merge_rounds(MaskSet.from_masks((fifty | forty_nine)[None]), EngineConfig())
    assert merged.areas.tolist() == [50]


# --- step 2: refinement -------------------------------------------------------------------


def _ramps(shape: tuple[int, int]) -> np.ndarray:
    """Smooth ramps: high colour entropy, no edges."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 0] = x * 250 // (w - 1)
    image[..., 1] = y * 250 // (h - 1)
    image[..., 2] = (x + y) * 250 // (h + w - 2)
    return image


def _ramps_with_two_lines(length: int) -> np.ndarray:
    """140×140 ramps with two black vertical lines (inner edges) `length` px long."""
    image = _ramps((140, 140))
    image[40 : 40 + length, 60:62] = 0
    image[40 : 40 + length, 90:92] = 0
    return image


def test_colour_entropy_leaves_out_pixels_with_a_channel_at_255() -> None:
    # the reference measures the cut-out (outside white) and skips every pixel with a 255
    image = np.full((10, 10, 3), 100, np.uint8)
    image[:5] = (255, 30, 60)  # half the mask: would add one bit per channel
    assert colour_entropy(image, np.ones((10, 10), bool)) == 0.0


@pytest.mark.parametrize(("extra_px", "candidate"), [(0, False), (1, True)])
def test_only_masks_larger_than_10000_px_are_refinement_candidates(
    extra_px: int, candidate: bool
) -> None:
    image = _ramps_with_two_lines(70)
    mask = _rect((140, 140), (20, 120), (20, 120))  # 10,000 px
    mask[120, 20 : 20 + extra_px] = True
    assert edge_ratio(image, mask, RefineSettings()) > 0.41
    assert colour_entropy(image, mask) > 6.5
    flagged = find_under_segmented(image, MaskSet.from_masks(mask[None]), RefineSettings())
    assert (len(flagged) == 1) is candidate


@pytest.mark.parametrize(("length", "ratio", "flagged"), [(64, 0.3988, False), (65, 0.4024, True)])
def test_masks_are_suspect_when_the_edge_ratio_is_above_0_4(
    length: int, ratio: float, flagged: bool
) -> None:
    image = _ramps_with_two_lines(length)
    mask = _rect((140, 140), (20, 121), (20, 120))  # 10,100 px
    assert edge_ratio(image, mask, RefineSettings()) == pytest.approx(ratio, abs=1e-4)
    assert colour_entropy(image, mask) > 6.5
    found = find_under_segmented(image, MaskSet.from_masks(mask[None]), RefineSettings())
    assert (len(found) == 1) is flagged


@pytest.mark.parametrize(("levels", "flagged"), [(64, False), (65, True)])
def test_masks_are_suspect_when_the_colour_entropy_is_above_6_bits(
    levels: int, flagged: bool
) -> None:
    # `levels` grey levels, 160 px each: entropy log2(levels), 6.0 bits exactly for 64.
    # Column pairs of low and high levels alternate (0, 1, half, half + 1, 2, ...): edges.
    width, half = 2 * levels, levels // 2
    low, high = np.arange(half).reshape(-1, 2), np.arange(half, 2 * half).reshape(-1, 2)
    order = np.concatenate([np.hstack([low, high]).ravel(), np.arange(2 * half, levels)])
    column_levels = np.repeat(order, 2) * 3
    image = np.full((120, width + 40, 3), WHITE, dtype=np.uint8)
    image[20:100, 20 : 20 + width] = column_levels[None, :, None]
    mask = _rect(image.shape[:2], (20, 100), (20, 20 + width))
    assert colour_entropy(image, mask) == pytest.approx(np.log2(levels))
    assert edge_ratio(image, mask, RefineSettings()) > 0.5
    found = find_under_segmented(image, MaskSet.from_masks(mask[None]), RefineSettings())
    assert (len(found) == 1) is flagged


def test_refinement_crops_drop_masks_90_percent_white_or_more() -> None:
    # the crop is the mask's box with everything outside the mask white (here a 20×20 corner)
    shape = (140, 140)
    image = _ramps_with_two_lines(70)
    image[40:110, 100:102] = 0
    mask = _rect(shape, (10, 130), (10, 130))
    mask[10:30, 10:30] = False
    crop_shape = (120, 120)
    white_89 = np.zeros(crop_shape, dtype=bool)
    white_89[0:4, 0:20] = True  # 80 white
    white_89[4, 0:9] = True  # 9 white: 89 white
    white_89[20, 0:11] = True  # 11 in the mask
    white_90 = np.zeros(crop_shape, dtype=bool)
    white_90[10:14, 0:20] = True
    white_90[14, 0:10] = True  # 90 white
    white_90[21, 0:10] = True  # 10 in the mask
    source = ScriptedSource(shape, crops={(10, 10, 120, 120): [white_89, white_90]})
    masks = MaskSet.from_masks(mask[None])
    assert len(find_under_segmented(image, masks, RefineSettings())) == 1
    [(refined, report)] = refine_masks_many([image], [masks], source, RefineSettings())
    assert report.under_segmented == 1
    placed = np.zeros(shape, dtype=bool)
    placed[10:130, 10:130] = white_89
    np.testing.assert_array_equal(refined.masks, placed[None])


def _refinement_scene(
    refined_b_rows: int, step_one_rows: int
) -> tuple[np.ndarray, ScriptedSource, dict[str, int]]:
    """A suspect mask M (rows 0–199, columns 0–179) and a mask Q from round 1; refinement
    finds A (100×100) and B ⊂ A (`refined_b_rows` × 100); Q ⊂ B is `step_one_rows` × 100."""
    shape = (200, 200)
    image = _ramps(shape)
    for x in range(15, 180, 30):
        image[10:190, x : x + 2] = 0
    image[:, 180:] = WHITE
    suspect = _rect(shape, (0, 200), (0, 180))
    step_one = _rect(shape, (0, step_one_rows), (0, 100))
    crop = (200, 180)
    refined_a = _rect(crop, (0, 100), (0, 100))
    refined_b = _rect(crop, (0, refined_b_rows), (0, 100))
    source = ScriptedSource(
        shape, rounds=[[suspect, step_one]], crops={(0, 0, 200, 180): [refined_a, refined_b]}
    )
    areas = {"M": int(suspect.sum()), "Q": int(step_one.sum()), "A": 10_000}
    return image, source, areas


@pytest.mark.parametrize(("refined_b_rows", "step_one_kept"), [(90, False), (91, True)])
def test_refined_masks_are_deduplicated_above_iou_0_9_before_joining_step_one(
    refined_b_rows: int, step_one_kept: bool
) -> None:
    # B (IoU 0.9 with A: kept among refined masks) then outranks Q (IoU 0.66) in the final
    # de-duplication; B at IoU 0.91 is gone before, and Q (IoU 0.59 with A) stays.
    image, source, areas = _refinement_scene(refined_b_rows, 59)
    result = segment_image(image, source, AT_FRAME_SCALE)
    assert result.refinement is not None and result.refinement.under_segmented == 1
    expected = [areas["M"], areas["Q"], areas["A"]] if step_one_kept else [areas["M"], areas["A"]]
    assert result.masks.areas.tolist() == expected


@pytest.mark.parametrize(("step_one_rows", "kept"), [(60, True), (61, False)])
def test_final_set_is_deduplicated_above_iou_0_6(step_one_rows: int, kept: bool) -> None:
    # B at IoU 0.91 is gone among refined masks; Q meets A at IoU 0.60 (kept) or 0.61
    image, source, areas = _refinement_scene(91, step_one_rows)
    result = segment_image(image, source, AT_FRAME_SCALE)
    expected = [areas["M"], areas["Q"], areas["A"]] if kept else [areas["M"], areas["A"]]
    assert result.masks.areas.tolist() == expected


# --- the reference frame: thresholds scaled to each image's pixels ------------------------


def test_thresholds_are_in_frame_pixels_and_scaled_to_the_working_resolution() -> None:
    config = EngineConfig()
    assert config.in_working_pixels((1000, 1000)) == config
    half = config.in_working_pixels((500, 1000))  # the reference stretches it to 1000×1000
    assert (half.min_component_area, half.refine.min_area) == (25, 5000)
    assert (half.rounds.whitening.dark_region_min_area, half.rounds.whitening.residue_max_area) == (
        500,
        100.0,
    )
    assert half.rounds.whitening.mask_dilation_px == 2  # 3 / √2 = 2.1
    assert half.frame.scale == 1.0 and half.in_working_pixels((500, 1000)) == half
    # an explicit scale: 4 frame px per working px, areas / 16; comparisons stay exact
    quarter = config.model_copy(update={"frame": ReferenceFrame(scale=4.0)})
    resolved = quarter.in_working_pixels((123, 456))
    assert resolved.min_component_area == 4  # ≥ 3.125 ⇔ ≥ 4
    assert resolved.refine.min_area == 625  # > 625
    assert resolved.rounds.whitening.dark_region_min_area == 63  # ≥ 62.5
    assert resolved.rounds.whitening.mask_dilation_px == 1  # 0.75 → 1


def test_tiled_runs_take_each_tile_as_one_image_of_the_paper() -> None:
    native = RegionConfig()
    assert native.engine.frame.scale == pytest.approx(1000 / 1024)
    assert RegionConfig(upscale=4).engine.frame.scale == pytest.approx(1000 / 1024)
    assert RegionConfig(core=448, halo=32).engine.frame.scale == pytest.approx(1000 / 512)
    chosen = RegionConfig.model_validate({"engine": {"frame": {"scale": 1.0}}})
    assert chosen.engine.frame.scale == 1.0
    # the scale is part of what a tile's cache key is made from
    smaller = RegionConfig(core=448, halo=32)
    assert native.segmentation_settings("m") != smaller.segmentation_settings("m")
    assert RegionConfig.model_validate(native.model_dump()) == native


@pytest.mark.parametrize(("scale", "areas"), [(None, [13]), (1.0, [])])
def test_the_engine_applies_the_images_scale(scale: float | None, areas: list[int]) -> None:
    # a 500×500 image is the whole 1000×1000 frame: 50 frame px are 12.5 px here
    shape = (500, 500)
    # textured: a uniform image is empty ground, which the method never segments
    image = np.random.default_rng(0).integers(80, 100, (*shape, 3), dtype=np.uint8)
    thirteen = _rect(shape, (0, 1), (0, 13))
    twelve = _rect(shape, (10, 11), (0, 12))
    config = EngineConfig(
        working_size=None, refine=RefineSettings(enabled=False), frame=ReferenceFrame(scale=scale)
    )
    result = segment_image(image, ScriptedSource(shape, rounds=[[thirteen, twelve]]), config)
    assert [i.area for i in result.instances] == areas
