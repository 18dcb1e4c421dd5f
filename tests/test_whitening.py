import numpy as np
from scipy import ndimage

from lisegagr_core.config import WhiteningSettings
from lisegagr_core.whitening import (
    clear_dark_residue,
    erase_strong_edges,
    keep_large_dark_regions,
    paint_masks_white,
    unsegmented_fraction,
    white_pixels,
    whiten,
)

GREY = 90


def _canvas(h: int = 80, w: int = 80, value: int = GREY) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_masks_are_painted_white_dilated_by_a_three_pixel_diamond() -> None:
    # the reference: scipy's binary_dilation with its 3×3 cross, three iterations
    image = _canvas()
    covered = np.zeros((80, 80), bool)
    covered[40, 40] = True
    covered[10:20, 5:30] = True
    white = white_pixels(paint_masks_white(image, covered, dilation_px=3))
    np.testing.assert_array_equal(white, ndimage.binary_dilation(covered, iterations=3))
    assert white[37, 40] and white[40, 43] and white[38, 39] and not white[37, 37]


def test_small_dark_specks_are_painted_white_and_large_ones_kept() -> None:
    image = _canvas(value=230)
    image[10:15, 10:15] = 20  # 5×5 speck: contour area 16 < 200
    image[40:70, 40:70] = 20  # 30×30 region: contour area 841
    out = clear_dark_residue(image, max_area=200)
    assert white_pixels(out)[12, 12]
    assert (out[40:70, 40:70] == 20).all()


def test_only_large_dark_regions_survive() -> None:
    image = _canvas(value=180)
    image[5:25, 5:25] = 40  # 400 px: dark but small → white
    image[40:80, 30:80] = 40  # 2000 px: kept
    out = keep_large_dark_regions(image, min_area=1000, bright_threshold=200)
    white = white_pixels(out)
    assert white[10:20, 10:20].all()
    assert not white[40:80, 30:80].any()
    # everything outside the kept region is white, bright or not
    assert white[0:5, :].all()


def test_bright_pixels_are_painted_white_even_inside_dark_regions() -> None:
    # On a 250 background, a large 210 region is "dark" by Otsu yet every channel is above 200.
    image = _canvas(80, 80, value=250)
    image[:, :60] = (210, 210, 210)
    image[:40, :60] = (210, 210, 190)  # one channel not above 200: stays
    out = keep_large_dark_regions(image, min_area=1000, bright_threshold=200)
    white = white_pixels(out)
    assert white[60:, :60].all()
    assert not white[:40, :60].any()


def test_strong_edges_are_erased_where_the_blurred_edges_saturate() -> None:
    image = _canvas(120, 120, value=120)
    stripes = image.copy()
    for x in range(20, 60, 8):  # dense texture: many edges close together
        stripes[:, x : x + 4] = 250
    out = erase_strong_edges(stripes, WhiteningSettings())
    white = white_pixels(out)
    assert white[:, 30:50].mean() > 0.9
    assert not white[:, 100:].any()  # flat area untouched
    assert not white_pixels(erase_strong_edges(image, WhiteningSettings())).any()


def test_edges_are_erased_only_in_the_image_fed_to_round_four() -> None:
    # the reference erases strong edges after round 3 (round_3 → upgrade_3.jpg → round 4)
    image = np.full((120, 120, 3), 60, dtype=np.uint8)
    for x in range(20, 60, 8):
        image[:, x : x + 4] = 190
    covered = np.zeros((120, 120), bool)
    settings = WhiteningSettings(dark_region_min_area=0, residue_max_area=0)
    for_round_2 = whiten(image, covered, next_round=2, settings=settings)
    for_round_3 = whiten(image, covered, next_round=3, settings=settings)
    for_round_4 = whiten(image, covered, next_round=4, settings=settings)
    np.testing.assert_array_equal(for_round_3, for_round_2)
    assert unsegmented_fraction(for_round_4) < unsegmented_fraction(for_round_3)
    assert white_pixels(for_round_4)[:, 30:50].mean() > 0.9


def test_unsegmented_fraction_counts_non_white_pixels() -> None:
    image = _canvas(10, 10)
    image[:, :3] = 255
    assert unsegmented_fraction(image) == 0.7
