from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label as label_regions

from lisegagr_core.imagery import read_image
from lisegagr_core.standins.farmland import (
    SyntheticScene,
    make_farmland_scene,
    write_georeferenced_scene,
)


@cache
def _scene(size: int = 512, seed: int = 0, n_fields: int | None = None) -> SyntheticScene:
    return make_farmland_scene(size, seed=seed, n_fields=n_fields)


def _entropy_bits(channel: np.ndarray) -> float:
    counts = np.bincount(channel.ravel(), minlength=256)
    shares = counts[counts > 0] / channel.size
    return float(-(shares * np.log2(shares)).sum())


def test_scene_has_the_documented_shapes_and_dtypes() -> None:
    scene = _scene()
    assert scene.rgb.shape == (512, 512, 3) and scene.rgb.dtype == np.uint8
    assert scene.instances.shape == (512, 512) and scene.instances.dtype == np.uint32
    assert scene.non_field.shape == (512, 512) and scene.non_field.dtype == np.bool_


def test_same_seed_gives_the_same_scene_and_another_seed_another() -> None:
    again = make_farmland_scene(512, seed=0)
    np.testing.assert_array_equal(again.rgb, _scene().rgb)
    np.testing.assert_array_equal(again.instances, _scene().instances)
    assert not np.array_equal(_scene(seed=1).instances, _scene().instances)


@pytest.mark.parametrize(
    ("size", "n_fields", "seed"),
    [(512, None, 0), (512, None, 1), (512, 25, 2), (256, 1, 3), (256, 3, 4), (96, None, 5)],
)
def test_field_count_is_exact_and_every_field_is_one_piece(
    size: int, n_fields: int | None, seed: int
) -> None:
    scene = _scene(size, seed, n_fields)
    expected = n_fields if n_fields is not None else max(4, round((size / 160) ** 2))
    assert scene.field_ids == tuple(range(1, expected + 1))
    assert set(np.unique(scene.instances).tolist()) == {0, *scene.field_ids}
    for field_id in scene.field_ids:
        assert label_regions(scene.instances == field_id, connectivity=1).max() == 1


def test_non_field_mask_is_everything_outside_fields() -> None:
    scene = _scene()
    np.testing.assert_array_equal(scene.non_field, scene.instances == 0)
    assert 0.05 < scene.non_field.mean() < 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_entropy_is_like_real_imagery(seed: int) -> None:
    rgb = _scene(seed=seed).rgb
    for channel in range(3):
        assert 5.0 <= _entropy_bits(rgb[..., channel]) <= 7.5


def test_fields_differ_in_colour_and_are_textured_inside() -> None:
    scene = _scene()
    means = np.array([scene.rgb[scene.instances == i].mean(axis=0) for i in scene.field_ids])
    assert np.ptp(means, axis=0).max() > 40
    for field_id in scene.field_ids:
        spread = scene.rgb[scene.instances == field_id].std(axis=0)
        assert (spread > 2).all() and (spread < 30).all()


def test_georeferenced_scene_is_read_back_with_crs_and_transform(tmp_path: Path) -> None:
    scene = _scene(256, 1)
    path = tmp_path / "scene.tif"
    write_georeferenced_scene(path, scene, origin=(600000.0, 4400000.0), pixel_size=0.6)
    image = read_image(path)
    np.testing.assert_array_equal(image.rgb, scene.rgb)
    assert image.crs is not None and image.crs.to_epsg() == 32615
    assert image.transform is not None
    assert (image.transform.c, image.transform.f) == (600000.0, 4400000.0)
    assert (image.transform.a, image.transform.e) == (0.6, -0.6)


@pytest.mark.parametrize(("size", "n_fields"), [(32, None), (256, 0)])
def test_impossible_sizes_are_rejected(size: int, n_fields: int | None) -> None:
    with pytest.raises(ValueError, match="at least"):
        make_farmland_scene(size, n_fields=n_fields)
