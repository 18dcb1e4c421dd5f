from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from shapely.geometry import Polygon

from lisegagr_core.annotations import (
    AnnotatedPolygon,
    rasterize_instances,
    read_geojson,
    read_labelme,
    read_via,
)
from lisegagr_core.errors import InputError


def _write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _via_polygon(
    xs: Sequence[float], ys: Sequence[float], **attributes: object
) -> dict[str, object]:
    return {
        "shape_attributes": {"name": "polygon", "all_points_x": list(xs), "all_points_y": list(ys)},
        "region_attributes": attributes,
    }


SQUARE_XS, SQUARE_YS = [10, 50, 50, 10], [10, 10, 40, 40]


# VGG Image Annotator.


def test_via_polygons_are_read_per_image_in_pixel_coordinates(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "via.json",
        {
            "a.png12345": {
                "filename": "a.png",
                "size": 12345,
                "regions": [_via_polygon(SQUARE_XS, SQUARE_YS), _via_polygon([0, 5, 0], [0, 0, 5])],
                "file_attributes": {},
            },
            "b.png": {"regions": []},
        },
    )
    polygons = read_via(path)
    assert sorted(polygons) == ["a.png", "b.png"]
    assert len(polygons["a.png"]) == 2
    assert polygons["a.png"][0].polygon.equals(shapely.box(10, 10, 50, 40))
    assert polygons["a.png"][0].label == "1"
    assert polygons["b.png"] == []


def test_via_1x_regions_object_is_read(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "via1.json",
        {"a.jpg": {"filename": "a.jpg", "regions": {"0": _via_polygon(SQUARE_XS, SQUARE_YS)}}},
    )
    assert len(read_via(path)["a.jpg"]) == 1


def test_via_project_file_is_read(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "project.json",
        {
            "_via_settings": {},
            "_via_img_metadata": {
                "a.png": {"filename": "a.png", "regions": [_via_polygon(SQUARE_XS, SQUARE_YS)]}
            },
        },
    )
    assert len(read_via(path)["a.png"]) == 1


def test_via_label_comes_from_an_obvious_region_attribute(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "via.json",
        {
            "a.png": {
                "regions": [
                    _via_polygon(SQUARE_XS, SQUARE_YS, **{"class": "corn"}),
                    _via_polygon(SQUARE_XS, SQUARE_YS, type={"pasture": True, "corn": False}),
                    _via_polygon(SQUARE_XS, SQUARE_YS, is_field={}),
                    _via_polygon(SQUARE_XS, SQUARE_YS, notes="blurry"),
                ]
            }
        },
    )
    assert [p.label for p in read_via(path)["a.png"]] == ["corn", "pasture", "1", "1"]


def test_via_non_polygon_shapes_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_json(
        tmp_path / "via.json",
        {
            "a.png": {
                "regions": [
                    {"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": 3}},
                    _via_polygon(SQUARE_XS, SQUARE_YS),
                    _via_polygon([1, 2], [1, 2]),
                ]
            }
        },
    )
    with caplog.at_level(logging.WARNING, logger="lisegagr_core.annotations"):
        polygons = read_via(path)["a.png"]
    assert len(polygons) == 1
    assert "circle" in caplog.text
    assert "too few" in caplog.text


def test_via_malformed_points_are_an_input_error(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "via.json", {"a.png": {"regions": [_via_polygon([1, 2, 3], [1, 2])]}}
    )
    with pytest.raises(InputError, match="malformed") as caught:
        read_via(path)
    assert str(path) in str(caught.value)


@pytest.mark.shared_data
def test_real_naip_annotations_have_1232_polygons_in_30_images(shared_data: Path) -> None:
    polygons = read_via(shared_data / "agoro-naip" / "annotations.json")
    assert len(polygons) == 30
    assert sum(len(image_polygons) for image_polygons in polygons.values()) == 1232
    assert all(1 <= len(image_polygons) <= 104 for image_polygons in polygons.values())
    assert {p.label for image_polygons in polygons.values() for p in image_polygons} == {"1"}
    for name in polygons:
        assert (shared_data / "agoro-naip" / "images" / name).is_file()


@pytest.mark.shared_data
def test_real_naip_polygons_rasterise_to_one_id_each(shared_data: Path) -> None:
    polygons = read_via(shared_data / "agoro-naip" / "annotations.json")
    for name, image_polygons in polygons.items():
        labels = rasterize_instances(image_polygons, (1024, 1024))
        assert labels.dtype == np.uint32
        ids = set(np.unique(labels).tolist()) - {0}
        degenerate = sum(shapely.make_valid(p.polygon).area == 0 for p in image_polygons)
        assert len(ids) == len(image_polygons) - degenerate, name
        assert ids <= set(range(1, len(image_polygons) + 1))


# LabelMe / X-AnyLabeling.


def test_labelme_polygons_and_rectangles_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_json(
        tmp_path / "a.json",
        {
            "version": "5.4.1",
            "shapes": [
                {
                    "label": "field",
                    "points": [[10, 10], [50, 10], [50, 40]],
                    "shape_type": "polygon",
                },
                {"label": "", "points": [[50, 40], [10, 10]], "shape_type": "rectangle"},
                {
                    "label": "barn",
                    "points": [[0, 0], [8, 0], [8, 6], [0, 6]],
                    "shape_type": "rectangle",
                },
                {"label": "tree", "points": [[3, 3]], "shape_type": "point"},
            ],
            "imagePath": "../images/a.png",
            "imageData": None,
        },
    )
    with caplog.at_level(logging.WARNING, logger="lisegagr_core.annotations"):
        image_path, polygons = read_labelme(path)
    assert image_path == "../images/a.png"
    assert [p.label for p in polygons] == ["field", "1", "barn"]
    assert polygons[0].polygon.equals(Polygon([(10, 10), (50, 10), (50, 40)]))
    assert polygons[1].polygon.equals(shapely.box(10, 10, 50, 40))
    assert polygons[2].polygon.equals(shapely.box(0, 0, 8, 6))
    assert "point" in caplog.text


# GeoJSON.


def test_geojson_splits_multipolygons_and_reads_labels(tmp_path: Path) -> None:
    square = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    far_square = [[[20, 0], [30, 0], [30, 10], [20, 10], [20, 0]]]
    path = _write_json(
        tmp_path / "fields.geojson",
        {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "properties": {"class": "wheat"},
                    "geometry": {"type": "Polygon", "coordinates": square},
                },
                {
                    "type": "Feature",
                    "properties": {"label": 2},
                    "geometry": {"type": "MultiPolygon", "coordinates": [square, far_square]},
                },
                {
                    "type": "Feature",
                    "properties": None,
                    "geometry": {"type": "Point", "coordinates": [1, 1]},
                },
                {"type": "Feature", "properties": {}, "geometry": None},
            ],
        },
    )
    polygons = read_geojson(path)
    assert [p.label for p in polygons] == ["wheat", "2", "2"]
    assert polygons[2].polygon.equals(Polygon(far_square[0]))


def test_geojson_malformed_geometry_is_an_input_error(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "bad.geojson",
        {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1]]}}
            ],
        },
    )
    with pytest.raises(InputError, match="malformed geometry") as caught:
        read_geojson(path)
    assert str(path) in str(caught.value)


# Bad files, for every reader.

READERS: list[Callable[[Path], object]] = [read_via, read_labelme, read_geojson]


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage\x80", "not a text file"),
        (b'["a", "list"]', "is not a"),
        (b'{"a.png": {"no_regions": 1}, "shapes": 3, "type": "Topology"}', "is not a"),
    ],
    ids=["missing", "not json", "binary", "json list", "wrong layout"],
)
def test_bad_annotation_file_is_an_input_error_naming_it(
    tmp_path: Path, reader: Callable[[Path], object], content: bytes | None, problem: str
) -> None:
    path = tmp_path / "annotations.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as caught:
        reader(path)
    assert str(path) in str(caught.value)


# Rasterising.


def test_ids_follow_input_order_and_later_polygons_cover_earlier() -> None:
    polygons = [
        AnnotatedPolygon(shapely.box(0, 0, 60, 40)),
        AnnotatedPolygon(shapely.box(30, 0, 80, 40)),
        AnnotatedPolygon(shapely.box(0, 50, 20, 60)),
    ]
    labels = rasterize_instances(polygons, (64, 100))
    assert labels.dtype == np.uint32 and labels.shape == (64, 100)
    assert (labels[:40, :30] == 1).all()
    assert (labels[:40, 30:80] == 2).all()
    assert (labels[50:60, :20] == 3).all()
    assert (labels == 0).sum() == 64 * 100 - 30 * 40 - 50 * 40 - 20 * 10


def test_skipped_polygons_leave_their_ids_absent(caplog: pytest.LogCaptureFixture) -> None:
    polygons = [
        AnnotatedPolygon(shapely.box(0, 0, 10, 10)),
        AnnotatedPolygon(shapely.box(500, 500, 600, 600)),
        AnnotatedPolygon(Polygon([(0, 0), (10, 10), (20, 20)])),
        AnnotatedPolygon(shapely.box(20, 20, 30, 30)),
    ]
    with caplog.at_level(logging.WARNING, logger="lisegagr_core.annotations"):
        labels = rasterize_instances(polygons, (64, 64))
    assert set(np.unique(labels).tolist()) == {0, 1, 4}
    assert "skipped 2 of 4 polygons (ids 2, 3)" in caplog.text


def test_self_intersecting_polygon_is_repaired() -> None:
    bow_tie = Polygon([(0, 0), (40, 40), (40, 0), (0, 40)])
    assert not bow_tie.is_valid
    labels = rasterize_instances([AnnotatedPolygon(bow_tie)], (40, 40))
    assert labels[5, 20] == 0 and labels[20, 5] == 1 and labels[20, 35] == 1
    assert (labels == 1).sum() == pytest.approx(800, abs=40)


def test_map_coordinates_rasterise_through_the_transform() -> None:
    transform = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4500000.0)
    field = shapely.box(500010.0, 4499940.0, 500050.0, 4499990.0)
    labels = rasterize_instances([AnnotatedPolygon(field)], (40, 40), transform)
    expected = np.zeros((40, 40), np.uint32)
    expected[5:30, 5:25] = 1
    np.testing.assert_array_equal(labels, expected)


def test_no_polygons_give_an_empty_raster() -> None:
    labels = rasterize_instances([], (8, 9))
    assert labels.shape == (8, 9) and labels.dtype == np.uint32 and not labels.any()
