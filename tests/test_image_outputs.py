from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely.geometry import MultiPolygon, Polygon

from lisegagr_core.annotations import AnnotatedPolygon, rasterize_instances, read_labelme
from lisegagr_core.errors import InputError
from lisegagr_core.image_outputs import (
    BOUNDARY_RGB,
    instance_colours,
    label_polygons,
    render_overlay,
    write_instance_table,
    write_label_raster,
    write_labelme,
    write_overlay_png,
)
from lisegagr_core.imagery import read_image
from lisegagr_core.standins.farmland import make_farmland_scene


def _blocky_labels() -> np.ndarray:
    """(60, 80) uint32: three rectangles, an L shape, and id 9 in two diagonal pieces."""
    labels = np.zeros((60, 80), np.uint32)
    labels[0:20, 0:30] = 1
    labels[0:20, 30:80] = 2
    labels[20:40, 0:20] = 3
    labels[20:60, 20:40] = 4
    labels[40:60, 0:20] = 4
    labels[45:50, 50:55] = 9
    labels[50:55, 55:60] = 9
    return labels


def _burn(outlines: list[tuple[int, Polygon | MultiPolygon]], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise (id, outline) pairs back into an (H, W) uint32 raster."""
    burns = [(geometry, instance_id) for instance_id, geometry in outlines]
    return rasterize(burns, out_shape=shape, fill=0, dtype="uint32")


# Label raster.


def test_label_raster_round_trips_with_crs_and_transform(tmp_path: Path) -> None:
    labels = _blocky_labels()
    labels[0, 0] = 4_000_000_000
    transform = Affine(0.6, 0.0, 500000.0, 0.0, -0.6, 4500000.0)
    path = tmp_path / "labels.tif"
    write_label_raster(path, labels, crs="EPSG:26915", transform=transform)
    with rasterio.open(path) as src:
        assert src.dtypes == ("uint32",)
        assert src.count == 1
        assert src.crs.to_epsg() == 26915
        assert src.transform == transform
        assert src.compression is not None and src.compression.value == "DEFLATE"
        assert src.profile["tiled"]
        np.testing.assert_array_equal(src.read(1), labels)


def test_label_raster_without_georeference_writes_no_warning(tmp_path: Path) -> None:
    labels = _blocky_labels()
    path = tmp_path / "labels.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_label_raster(path, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            crs, stored = src.crs, src.read(1)
    assert crs is None
    np.testing.assert_array_equal(stored, labels)


def test_label_raster_rejects_non_uint32_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint32"):
        write_label_raster(tmp_path / "x.tif", np.zeros((4, 4), np.int64))


# Instance table.


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_instance_table_round_trips(tmp_path: Path, suffix: str) -> None:
    records = [
        {"instance_id": 1, "area_px": 600, "field_score": 0.93, "round": "1"},
        {"instance_id": 2, "area_px": 1000, "field_score": 0.41, "round": "refinement"},
    ]
    path = tmp_path / f"instances{suffix}"
    write_instance_table(path, records)
    table = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert list(table.columns) == ["instance_id", "area_px", "field_score", "round"]
    assert table["area_px"].tolist() == [600, 1000]
    assert table["round"].tolist() == ["1", "refinement"]


def test_instance_table_with_an_unknown_suffix_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "instances.xlsx"
    with pytest.raises(InputError, match=r"\.csv or \.parquet") as caught:
        write_instance_table(path, [{"instance_id": 1}])
    assert str(path) in str(caught.value)


# Polygons.


def test_label_polygons_give_one_outline_per_id_that_rasterises_back() -> None:
    labels = _blocky_labels()
    outlines = label_polygons(labels)
    assert [instance_id for instance_id, _ in outlines] == [1, 2, 3, 4, 9]
    assert all(geometry.is_valid for _, geometry in outlines)
    np.testing.assert_array_equal(_burn(outlines, labels.shape), labels)


def test_instance_in_two_pieces_is_one_multipolygon() -> None:
    outlines = dict(label_polygons(_blocky_labels()))
    assert isinstance(outlines[9], MultiPolygon)
    assert len(outlines[9].geoms) == 2
    assert isinstance(outlines[4], Polygon)
    assert outlines[4].area == 20 * 40 + 20 * 20


def test_simplification_drops_only_collinear_vertices() -> None:
    outlines = dict(label_polygons(_blocky_labels()))
    assert len(outlines[1].exterior.coords) == 5
    assert len(outlines[4].exterior.coords) == 7


def test_label_polygons_use_the_transform_for_map_coordinates() -> None:
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0)
    outlines = dict(label_polygons(_blocky_labels(), transform))
    assert outlines[1].bounds == (1000.0, 4960.0, 1060.0, 5000.0)
    labels = rasterize_instances(
        [AnnotatedPolygon(outlines[i]) for i in (1, 2, 3)], (60, 80), transform
    )
    np.testing.assert_array_equal(labels[:20], _blocky_labels()[:20])


def test_label_polygons_of_a_synthetic_scene_rasterise_back_exactly() -> None:
    scene = make_farmland_scene(256, seed=3)
    outlines = label_polygons(scene.instances)
    assert [instance_id for instance_id, _ in outlines] == list(scene.field_ids)
    np.testing.assert_array_equal(_burn(outlines, scene.instances.shape), scene.instances)


# LabelMe.


def test_labelme_round_trip_reads_back_the_same_polygons(tmp_path: Path) -> None:
    labels = _blocky_labels()
    path = tmp_path / "scene.json"
    write_labelme(path, labels, "scene.png", label="field")
    image_path, polygons = read_labelme(path)
    assert image_path == "scene.png"
    expected = [
        part for _, geometry in label_polygons(labels) for part in shapely.get_parts(geometry)
    ]
    assert len(polygons) == len(expected) == 6
    for annotated, part in zip(polygons, expected, strict=True):
        assert annotated.label == "field"
        assert annotated.polygon.equals(part)


def test_labelme_file_has_the_labelme_layout(tmp_path: Path) -> None:
    path = tmp_path / "scene.json"
    write_labelme(path, _blocky_labels(), "scene.png")
    document = json.loads(path.read_text())
    assert document["imageData"] is None
    assert (document["imageHeight"], document["imageWidth"]) == (60, 80)
    assert document["flags"] == {} and "version" in document
    shapes = document["shapes"]
    assert {shape["shape_type"] for shape in shapes} == {"polygon"}
    assert {shape["label"] for shape in shapes} == {"1"}
    assert all({"points", "group_id", "flags", "description"} <= set(shape) for shape in shapes)
    assert [shape["group_id"] for shape in shapes] == [None, None, None, None, 9, 9]


def test_labelme_round_trip_of_a_synthetic_scene_rasterises_back(tmp_path: Path) -> None:
    scene = make_farmland_scene(256, seed=1)
    path = tmp_path / "scene.json"
    write_labelme(path, scene.instances, "scene.png")
    _, polygons = read_labelme(path)
    assert len(polygons) == len(scene.field_ids)
    np.testing.assert_array_equal(rasterize_instances(polygons, (256, 256)), scene.instances)


# Overlay.


def test_overlay_tints_instances_outlines_them_and_leaves_background() -> None:
    labels = _blocky_labels()
    rgb = np.full((60, 80, 3), 100, np.uint8)
    overlay = render_overlay(rgb, labels)
    assert overlay.shape == (60, 80, 3) and overlay.dtype == np.uint8
    background = labels == 0
    np.testing.assert_array_equal(overlay[background], rgb[background])
    assert tuple(overlay[19, 10]) == BOUNDARY_RGB and tuple(overlay[20, 10]) == BOUNDARY_RGB
    assert tuple(overlay[0, 29]) == BOUNDARY_RGB and tuple(overlay[0, 30]) == BOUNDARY_RGB
    assert not np.array_equal(overlay[10, 10], rgb[10, 10])
    assert not np.array_equal(overlay[10, 10], overlay[10, 50])


def test_instance_colours_are_distinct_and_stable() -> None:
    colours = instance_colours(np.arange(1, 21))
    assert colours.shape == (20, 3) and colours.dtype == np.uint8
    assert len({tuple(colour) for colour in colours}) == 20
    np.testing.assert_array_equal(instance_colours(np.array([7])), colours[6:7])


def test_overlay_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="matching labels"):
        render_overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.uint32))


def test_overlay_png_is_readable(tmp_path: Path) -> None:
    scene = make_farmland_scene(128, seed=2)
    path = tmp_path / "overlay.png"
    write_overlay_png(path, scene.rgb, scene.instances)
    image = read_image(path)
    np.testing.assert_array_equal(image.rgb, render_overlay(scene.rgb, scene.instances))
