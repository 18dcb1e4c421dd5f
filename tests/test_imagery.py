from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine

from lisegagr_core.errors import InputError
from lisegagr_core.imagery import (
    apply_stretch,
    percentile_limits,
    read_image,
    resize_labels,
    resize_to_working_size,
    stretch_to_uint8,
)


def _write_raster(
    path: Path, bands: np.ndarray, *, driver: str = "GTiff", **profile: object
) -> Path:
    """Write bands: (B, H, W) with rasterio, without georeference unless the profile has one."""
    count, height, width = bands.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver=driver,
            width=width,
            height=height,
            count=count,
            dtype=bands.dtype,
            **profile,
        ) as dst:
            dst.write(bands)
    return path


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _smooth_rgb(size: int) -> np.ndarray:
    """(3, size, size) uint8 gradients: compressible, like a photo."""
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    rows, cols = np.meshgrid(ramp, ramp, indexing="ij")
    return np.stack([cols, rows, 255 - cols])


# Bad input: every one an InputError whose message names the file.


def test_missing_file_is_reported_by_name(tmp_path: Path) -> None:
    path = tmp_path / "absent.png"
    with pytest.raises(InputError, match="no such file") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder") as caught:
        read_image(tmp_path)
    assert str(tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"field boundaries, not pixels\n" * 10, np.random.default_rng(1).bytes(5000), b""],
    ids=["text renamed .png", "random bytes", "empty file"],
)
def test_non_image_file_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not an image file") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("driver", "suffix", "bands"),
    [
        ("PNG", ".png", _noise((3, 200, 200))),
        ("PNG", ".png", _smooth_rgb(200)),
        ("GTiff", ".tif", _noise((3, 200, 200))),
        ("JPEG", ".jpg", _noise((3, 200, 200))),
    ],
    ids=["png-noise", "png-smooth", "geotiff", "jpeg"],
)
def test_truncated_file_is_rejected(
    tmp_path: Path, driver: str, suffix: str, bands: np.ndarray
) -> None:
    whole = _write_raster(tmp_path / f"whole{suffix}", bands, driver=driver)
    path = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_zero_pixel_image_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.vrt"
    path.write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="0">'
        '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
    )
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_all_nodata_image_is_rejected(tmp_path: Path) -> None:
    path = _write_raster(tmp_path / "blank.tif", np.zeros((3, 80, 80), np.uint8), nodata=0)
    with pytest.raises(InputError, match="no valid pixels") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_all_nan_float_image_is_rejected(tmp_path: Path) -> None:
    path = _write_raster(tmp_path / "nan.tif", np.full((1, 80, 80), np.nan, np.float32))
    with pytest.raises(InputError, match="no valid pixels"):
        read_image(path)


def test_small_image_error_names_its_size(tmp_path: Path) -> None:
    path = _write_raster(tmp_path / "thumb.png", _noise((3, 30, 40)), driver="PNG")
    with pytest.raises(InputError) as caught:
        read_image(path)
    message = str(caught.value)
    assert str(path) in message
    assert "40×30 px" in message
    assert "at least 64 px on each side" in message


def test_min_size_is_adjustable(tmp_path: Path) -> None:
    path = _write_raster(tmp_path / "thumb.png", _noise((3, 30, 40)), driver="PNG")
    assert read_image(path, min_size=16).rgb.shape == (30, 40, 3)


@pytest.mark.parametrize("bands", [(4, 3, 2), (0,), (1, 2, -1)])
def test_band_out_of_range_is_rejected(tmp_path: Path, bands: tuple[int, ...]) -> None:
    path = _write_raster(tmp_path / "rgb.tif", _noise((3, 80, 80)))
    with pytest.raises(InputError, match="out of range; the image has 3 bands") as caught:
        read_image(path, bands=bands)
    assert str(path) in str(caught.value)


def test_two_band_selection_is_rejected(tmp_path: Path) -> None:
    path = _write_raster(tmp_path / "rgb.tif", _noise((3, 80, 80)))
    with pytest.raises(InputError, match="one or three bands"):
        read_image(path, bands=(1, 2))


# Band handling.


def test_grey_image_expands_to_three_channels(tmp_path: Path) -> None:
    grey = _noise((1, 80, 90))
    image = read_image(_write_raster(tmp_path / "grey.png", grey, driver="PNG"))
    assert image.rgb.shape == (80, 90, 3)
    assert image.rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image.rgb[..., channel], grey[0])
    assert "grey image expanded to 3 channels" in image.notes
    assert image.source_band_count == 1


def test_grey_with_alpha_reads_first_band_as_grey(tmp_path: Path) -> None:
    grey = _noise((1, 80, 80))
    alpha = np.full((1, 80, 80), 255, np.uint8)
    image = read_image(
        _write_raster(tmp_path / "la.png", np.concatenate([grey, alpha]), driver="PNG")
    )
    np.testing.assert_array_equal(image.rgb[..., 1], grey[0])
    assert image.source_band_count == 2


def test_rgba_drops_alpha_and_blanks_transparent_pixels(tmp_path: Path) -> None:
    rgb = _noise((3, 80, 80))
    alpha = np.full((1, 80, 80), 255, np.uint8)
    alpha[0, :10] = 0
    image = read_image(
        _write_raster(tmp_path / "rgba.png", np.concatenate([rgb, alpha]), driver="PNG")
    )
    np.testing.assert_array_equal(image.rgb[10:], np.moveaxis(rgb, 0, -1)[10:])
    assert not image.rgb[:10].any()
    assert "alpha band dropped" in image.notes


def test_many_bands_use_the_first_three_with_a_note(tmp_path: Path) -> None:
    bands = _noise((5, 80, 80))
    image = read_image(_write_raster(tmp_path / "multi.tif", bands))
    np.testing.assert_array_equal(image.rgb, np.moveaxis(bands[:3], 0, -1))
    assert "bands 1–3 of 5 used as RGB" in image.notes


def test_bands_are_one_based_and_ordered(tmp_path: Path) -> None:
    bands = _noise((5, 80, 80))
    image = read_image(_write_raster(tmp_path / "multi.tif", bands), bands=(4, 3, 2))
    np.testing.assert_array_equal(image.rgb, np.moveaxis(bands[[3, 2, 1]], 0, -1))


def test_single_band_selection_reads_as_grey(tmp_path: Path) -> None:
    bands = _noise((5, 80, 80))
    image = read_image(_write_raster(tmp_path / "multi.tif", bands), bands=(5,))
    np.testing.assert_array_equal(image.rgb[..., 2], bands[4])


def test_palette_image_expands_through_its_colour_table(tmp_path: Path) -> None:
    indexes = np.zeros((1, 80, 80), np.uint8)
    indexes[0, 40:] = 1
    path = _write_raster(tmp_path / "palette.tif", indexes, photometric="palette")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "r+") as dst:
            dst.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 50, 255)})
    image = read_image(path)
    assert tuple(image.rgb[0, 0]) == (10, 20, 30)
    assert tuple(image.rgb[79, 0]) == (200, 100, 50)


# Georeference.


def test_png_has_no_georeference_and_warns_nothing(tmp_path: Path) -> None:
    path = _write_raster(tmp_path / "photo.png", _noise((3, 80, 80)), driver="PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(path)
    assert image.crs is None
    assert image.transform is None
    assert image.notes == ()
    assert image.source_dtype == "uint8"


def test_geotiff_keeps_crs_and_transform(tmp_path: Path) -> None:
    transform = Affine(0.6, 0.0, 500000.0, 0.0, -0.6, 4500000.0)
    path = _write_raster(
        tmp_path / "naip.tif", _noise((3, 80, 80)), crs="EPSG:26915", transform=transform
    )
    image = read_image(path)
    assert image.crs is not None and image.crs.to_epsg() == 26915
    assert image.transform == transform


# Stretching to 8 bits.


def test_uint16_is_stretched_by_its_2_and_98_percentiles(tmp_path: Path) -> None:
    ramp = np.arange(100 * 100, dtype=np.uint16).reshape(1, 100, 100) * 3
    image = read_image(_write_raster(tmp_path / "s2.tif", ramp))
    low, high = np.percentile(ramp, (2, 98))
    expected = np.clip(np.rint((ramp[0] - low) / (high - low) * 255), 0, 255)
    np.testing.assert_allclose(image.rgb[..., 0], expected, atol=1)
    assert image.rgb[..., 0].min() == 0 and image.rgb[..., 0].max() == 255
    assert "uint16 stretched to 8 bits by the 2–98 percentiles" in image.notes
    assert image.source_dtype == "uint16"


def test_stretch_percentiles_ignore_nodata(tmp_path: Path) -> None:
    values = np.random.default_rng(0).integers(1000, 2001, (1, 100, 100)).astype(np.uint16)
    values[:, :50] = 0
    image = read_image(_write_raster(tmp_path / "edge.tif", values, nodata=0))
    assert not image.rgb[:50].any()
    valid = image.rgb[50:, :, 0]
    assert valid.min() == 0 and valid.max() == 255
    assert 100 < np.median(valid) < 155


def test_float_image_is_stretched_over_finite_pixels(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(0.2, 0.05, (3, 80, 80)).astype(np.float32)
    values[:, :5] = np.nan
    image = read_image(_write_raster(tmp_path / "reflectance.tif", values))
    assert not image.rgb[:5].any()
    assert image.rgb[5:].max() == 255


def test_int16_image_with_negative_values_is_stretched(tmp_path: Path) -> None:
    values = np.linspace(-500, 500, 3 * 80 * 80).astype(np.int16).reshape(3, 80, 80)
    image = read_image(_write_raster(tmp_path / "signed.tif", values))
    assert image.rgb.min() == 0 and image.rgb.max() == 255


def test_constant_band_maps_to_zero_without_dividing_by_zero() -> None:
    bands = np.stack(
        [np.full((8, 8), 700, np.uint16), np.arange(64, dtype=np.uint16).reshape(8, 8)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stretched = stretch_to_uint8(bands, None)
    assert stretched.dtype == np.uint8
    assert not stretched[0].any()
    assert stretched[1].max() == 255


def test_percentile_limits_and_apply_stretch_compose_to_stretch_to_uint8() -> None:
    bands = np.random.default_rng(3).gamma(2.0, 500.0, (3, 50, 60)).astype(np.float32)
    valid = np.ones((50, 60), bool)
    valid[:10] = False
    limits = percentile_limits(bands, valid, 2.0, 98.0)
    assert limits.shape == (3, 2)
    np.testing.assert_allclose(limits[0], np.percentile(bands[0][valid], (2, 98)))
    np.testing.assert_array_equal(apply_stretch(bands, limits), stretch_to_uint8(bands, valid))


def test_band_without_valid_pixels_gets_zero_limits() -> None:
    bands = np.ones((1, 4, 4), np.float32)
    assert percentile_limits(bands, np.zeros((4, 4), bool)).tolist() == [[0.0, 0.0]]


# The real 8-band Sentinel-2 file.


@pytest.mark.shared_data
def test_sentinel2_band_selection_keeps_crs(shared_data: Path) -> None:
    path = shared_data / "ftw-s2" / "inference-img.tif"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    default = read_image(path)
    assert default.rgb.shape == (379, 578, 3)
    assert default.source_band_count == 8
    assert default.source_dtype == "uint16"
    assert "bands 1–3 of 8 used as RGB" in default.notes
    assert default.crs is not None and default.crs.to_epsg() == 32633
    assert default.transform is not None and default.transform.a == 10.0

    false_colour = read_image(path, bands=(4, 1, 2))
    np.testing.assert_array_equal(false_colour.rgb[..., 1], default.rgb[..., 0])
    assert not np.array_equal(false_colour.rgb[..., 0], default.rgb[..., 0])
    second_date = read_image(path, bands=(5, 6, 7))
    assert second_date.rgb.shape == default.rgb.shape
    with pytest.raises(InputError, match="band 9 is out of range; the image has 8 bands"):
        read_image(path, bands=(9, 3, 2))


# Resizing.


def test_shrinking_makes_the_longer_side_the_working_size() -> None:
    rgb = _noise((1000, 2000, 3))
    resized, scale = resize_to_working_size(rgb, 1000)
    assert resized.shape == (500, 1000, 3)
    assert resized.dtype == np.uint8
    assert scale == 0.5


def test_enlarging_keeps_the_aspect_ratio() -> None:
    rgb = np.asarray(cv2.resize(_noise((30, 60, 3)), (250, 125)), dtype=np.uint8)
    resized, scale = resize_to_working_size(rgb, 1000)
    assert resized.shape == (500, 1000, 3)
    assert scale == 4.0


def test_no_working_size_leaves_the_image_alone() -> None:
    rgb = _noise((100, 70, 3))
    resized, scale = resize_to_working_size(rgb, None)
    assert resized is rgb
    assert scale == 1.0


def test_resize_labels_keeps_exact_large_ids() -> None:
    labels = np.array([[1, 4_000_000_001], [16_777_217, 0]], dtype=np.uint32)
    enlarged = resize_labels(labels, (4, 4))
    assert enlarged.dtype == np.uint32
    np.testing.assert_array_equal(enlarged, np.kron(labels, np.ones((2, 2), np.uint32)))
    np.testing.assert_array_equal(resize_labels(enlarged, (2, 2)), labels)


def test_resize_labels_to_an_odd_shape_uses_only_existing_ids() -> None:
    labels = np.random.default_rng(0).integers(0, 2**32, (37, 53), dtype=np.uint32)
    resized = resize_labels(labels, (100, 23))
    assert resized.shape == (100, 23)
    assert np.isin(resized, labels).all()
