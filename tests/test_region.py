"""Rasters of any size: tiles with halos, the cross-tile merge, the Zarr mosaic, GeoParquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from lisegagr_core.config import AmgSettings, RegionConfig
from lisegagr_core.errors import InputError
from lisegagr_core.grid import TileGrid, TileSpec
from lisegagr_core.metrics import score_partition
from lisegagr_core.rasters import open_rasters
from lisegagr_core.run import RunManifest, TileStatus, run_region
from lisegagr_core.sources import MaskSource
from lisegagr_core.standins.ground_truth import GroundTruthSpec

from .flow_helpers import truth_spec, write_rgb_geotiff
from .naip import naip_names, naip_scene

ORIGIN = Affine(1.0, 0.0, 400_000.0, 0.0, -1.0, 4_400_000.0)
SMALL_TILES = RegionConfig(core=192, halo=32)  # much smaller than most fields


def _write_geotiff(
    path: Path, rgb: np.ndarray, transform: Affine = ORIGIN, **profile: object
) -> Path:
    """A tiled GeoTIFF (256-px blocks) in UTM zone 16 N."""
    return write_rgb_geotiff(
        path, rgb, transform, "EPSG:32616", tiled=True, blockxsize=256, blockysize=256, **profile
    )


def _run(
    path: Path | list[Path], truth: np.ndarray, out: Path, config: RegionConfig = SMALL_TILES
) -> RunManifest:  # type: ignore[no-untyped-def]
    paths = [str(p) for p in (path if isinstance(path, list) else [path])]
    return run_region(paths, str(out), config, truth_spec(path, truth))  # type: ignore[arg-type]


def _failed(manifest: RunManifest) -> list[TileStatus]:
    return [s for s in manifest.tiles.values() if s.status == "failed"]


def _mosaic_labels(out: Path) -> xr.Dataset:
    """The mosaic's stored values (nodata as 255, not masked as NaN)."""
    return xr.open_zarr(out / "mosaic.zarr", decode_coords="all", mask_and_scale=False)


@pytest.fixture(scope="module")
def naip_mosaic(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """Four NAIP images side by side (2048 × 2048) as one georeferenced GeoTIFF, and its truth."""
    scenes = [naip_scene(shared_data, name) for name in naip_names(shared_data)[:4]]
    rgb = np.zeros((2048, 2048, 3), np.uint8)
    truth = np.zeros((2048, 2048), np.int64)
    offset = 0
    for (image, fields), (r, c) in zip(scenes, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
        ids = fields.astype(np.int64)
        ids[ids > 0] += offset
        offset = int(ids.max())
        rgb[r * 1024 : (r + 1) * 1024, c * 1024 : (c + 1) * 1024] = image
        truth[r * 1024 : (r + 1) * 1024, c * 1024 : (c + 1) * 1024] = ids
    path = _write_geotiff(tmp_path_factory.mktemp("naip") / "mosaic.tif", rgb)
    return path, truth


@pytest.mark.shared_data
def test_merged_mosaic_rebuilds_fields_cut_by_tile_borders(naip_mosaic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, truth = naip_mosaic
    report = _run(path, truth, tmp_path / "out")
    labels = _mosaic_labels(tmp_path / "out")["labels"].values

    # many fields cross core borders (every 192 px)
    crossing = [
        i for i in np.unique(truth)[1:] if len(np.unique(np.nonzero(truth == i)[1] // 192)) > 1
    ]
    assert len(crossing) > 100
    scores = score_partition(truth, labels)
    assert scores.f1 >= 0.99 and scores.pixel_iou >= 0.99
    # no field split at a tile border: each field is one id
    for field_id in crossing:
        ids = np.unique(labels[truth == field_id])
        assert len(ids[ids > 0]) == 1, f"field {field_id} split into {ids}"
    assert report.fields == scores.predicted_instances


@pytest.mark.shared_data
def test_a_mosaic_of_several_rasters_equals_the_single_raster(naip_mosaic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, truth = naip_mosaic
    with rasterio.open(path) as src:
        rgb = np.moveaxis(src.read(), 0, -1)
    left = _write_geotiff(tmp_path / "left.tif", rgb[:, :1024].copy())
    right = _write_geotiff(
        tmp_path / "right.tif", rgb[:, 1024:].copy(), ORIGIN @ Affine.translation(1024, 0)
    )
    _run([right, left], truth, tmp_path / "out")
    labels = _mosaic_labels(tmp_path / "out")["labels"].values
    assert score_partition(truth, labels).f1 >= 0.99


def test_zarr_and_geoparquet_are_georeferenced_and_line_up(tmp_path: Path) -> None:
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(640, seed=3)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    report = _run(
        path, scene.instances.astype(np.int64), tmp_path / "out", RegionConfig(core=256, halo=32)
    )
    mosaic = _mosaic_labels(tmp_path / "out")
    assert mosaic.rio.crs.to_epsg() == 32616
    assert mosaic.rio.transform() == ORIGIN
    assert mosaic["labels"].dtype == np.uint32 and mosaic["classes"].dtype == np.uint8
    assert mosaic["labels"].encoding["chunks"] == (256, 256)
    labels = mosaic["labels"].values
    classes = mosaic["classes"].values
    assert ((classes == 3) == (labels > 0)).all()  # unclassified fields, 0 elsewhere

    fields = gpd.read_parquet(tmp_path / "out" / "fields.parquet")
    assert fields.crs.to_epsg() == 32616
    assert len(fields) == report.fields == labels.max()
    assert fields.geometry.is_valid.all()
    for field_id, area in fields[["id", "metrics:area"]].to_numpy():
        assert area == pytest.approx((labels == int(field_id)).sum())  # 1 m² pixels
    minx, miny, maxx, maxy = fields.total_bounds
    assert minx >= 400_000 and maxy <= 4_400_000 and maxx <= 400_640 and miny >= 4_400_000 - 640


def test_rerun_computes_nothing_and_a_changed_setting_recomputes(tmp_path: Path) -> None:
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(512, seed=1)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    truth = scene.instances.astype(np.int64)
    first = _run(path, truth, tmp_path / "out")
    labels = _mosaic_labels(tmp_path / "out")["labels"].values
    again = _run(path, truth, tmp_path / "out")
    assert {s.status for s in first.tiles.values()} == {"computed"}
    assert {s.status for s in again.tiles.values()} == {"cached"}
    np.testing.assert_array_equal(_mosaic_labels(tmp_path / "out")["labels"].values, labels)
    changed = SMALL_TILES.model_copy(
        update={"engine": SMALL_TILES.engine.model_copy(update={"min_component_area": 60})}
    )
    third = _run(path, truth, tmp_path / "out", changed)
    assert {s.status for s in third.tiles.values()} == {"computed"}


def test_nodata_is_never_segmented_and_stays_zero(tmp_path: Path) -> None:
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(512, seed=2)
    rgb = scene.rgb.copy()
    rgb[:, :200] = 0  # a swath without data
    rgb[rgb.sum(axis=2) == 0] = 0
    path = _write_geotiff(tmp_path / "scene.tif", rgb, nodata=0)
    _run(path, scene.instances.astype(np.int64), tmp_path / "out")
    mosaic = _mosaic_labels(tmp_path / "out")
    assert (mosaic["labels"].values[:, :200] == 0).all()
    assert (mosaic["classes"].values[:, :200] == 255).all()
    assert mosaic["labels"].values[:, 200:].max() > 0


class _FailsOn:
    """A mask source that breaks on one tile, as a corrupt tile or a lost worker would."""

    def __init__(self, key: str) -> None:
        self.key, self.name = key, "flaky"

    def generate(self, image: np.ndarray, region: Window):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"tile {self.key} is corrupt")

    def generate_many(self, images, regions):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"tile {self.key} is corrupt")


@dataclass(frozen=True)
class _FailingTruth(GroundTruthSpec):
    """Ground truth, except for one tile whose source breaks."""

    fail_key: str = ""

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        if tile.key == self.fail_key:
            return _FailsOn(tile.key)
        return super().build(tile, amg, grid_transform)


def test_a_failed_tile_is_recorded_and_left_as_nodata(tmp_path: Path) -> None:
    import json

    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(512, seed=4)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    truth = truth_spec(path, scene.instances.astype(np.int64))
    grid = TileGrid.anchored(512, 512, transform=ORIGIN, crs=CRS.from_epsg(32616), core=192)
    middle = grid.tile(1, 1)
    seen: list[TileStatus] = []
    report = run_region(
        [str(path)],
        str(tmp_path / "out"),
        SMALL_TILES,
        _FailingTruth(truth.truth_path, fail_key=middle.key),
        on_tile=seen.append,
    )
    assert [s.key for s in _failed(report)] == [middle.key]
    assert "corrupt" in (_failed(report)[0].error or "")
    assert len(seen) == 9
    mosaic = _mosaic_labels(tmp_path / "out")
    core = middle.core.toslices()
    assert (mosaic["labels"].values[core] == 0).all() and (
        mosaic["classes"].values[core] == 255
    ).all()
    assert mosaic["labels"].values.max() > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tiles"][middle.key]["status"] == "failed"
    assert manifest["state"] == "failed tiles"


def test_rasters_in_different_crs_are_refused(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    a = _write_geotiff(tmp_path / "a.tif", rgb)
    with rasterio.open(
        tmp_path / "b.tif",
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=Affine(0.001, 0, 10, 0, -0.001, 50),
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    with pytest.raises(InputError, match="one CRS"):
        open_rasters([str(a), str(tmp_path / "b.tif")])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.tif", "no such file"),
        (
            lambda d: (d / "notes.tif").write_text("not a raster") and d / "notes.tif",
            "not a readable raster",
        ),
        (lambda d: d, "holds no raster"),
    ],
)
def test_bad_sources_get_one_sentence(tmp_path: Path, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=expected):
        open_rasters([str(make(tmp_path))])


def test_band_out_of_range_is_refused(shared_data: Path) -> None:
    with pytest.raises(InputError, match="band 9 is out of range"):
        open_rasters([str(shared_data / "ftw-s2" / "inference-img.tif")], bands=(9, 2, 1))


@pytest.mark.shared_data
def test_truncated_raster_is_refused_in_one_sentence(naip_mosaic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = naip_mosaic
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(InputError, match=r"cut\.tif"):
        rasters = open_rasters([str(cut)])
        rasters.read(Window(0, 1500, 512, 512))


def test_a_classifier_fills_scores_and_classes_that_agree_and_alone_recomputes(
    tmp_path: Path,
) -> None:
    """The classes raster and the GeoParquet tell the same story; a new classifier reruns
    only classification (segmentation stays cached by tile hash)."""
    import torch

    from lisegagr_core.classify import ClassifierConfig, build_classifier, save_classifier
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(512, seed=6)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    truth = scene.instances.astype(np.int64)
    classifiers = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_classifier(ClassifierConfig(backbone="resnet18", input_size=64))
        save_classifier(model, tmp_path / f"classifier{seed}.pt")
        classifiers.append(str(tmp_path / f"classifier{seed}.pt"))

    config = SMALL_TILES.model_copy(update={"classifier": classifiers[0]})
    first = _run(path, truth, tmp_path / "out", config)
    fields = gpd.read_parquet(tmp_path / "out" / "fields.parquet")
    mosaic = _mosaic_labels(tmp_path / "out")
    labels, classes = mosaic["labels"].values, mosaic["classes"].values
    assert fields["lisegagr:field_score"].between(0, 1).all()
    assert set(fields["lisegagr:class"]) <= {1, 2}
    columns = ["id", "lisegagr:field_score", "lisegagr:class"]
    for field_id, score, field_class in fields[columns].to_numpy():
        assert field_class == (1 if score >= 0.5 else 2)
        assert (classes[labels == int(field_id)] == field_class).all()
    assert (classes[labels == 0] == 0).all()  # background with data
    assert {s.status for s in first.tiles.values()} == {"computed"}

    other = config.model_copy(update={"classifier": classifiers[1]})
    second = _run(path, truth, tmp_path / "out", other)
    assert {s.status for s in second.tiles.values()} == {"cached"}
    assert len(list((tmp_path / "out" / "scores").glob("*.json"))) == 2 * len(first.tiles)


def test_the_mosaic_opens_in_xarray_with_nodata_masked_and_unclassified_apart(
    tmp_path: Path,
) -> None:
    """Consolidated metadata (no warning on open), nodata as the CF `_FillValue` and the Zarr
    fill_value (255, NaN once decoded), unclassified fields a value of their own (3)."""
    import json
    import warnings

    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(512, seed=2)
    rgb = scene.rgb.copy()
    rgb[:, :200] = 0
    rgb[rgb.sum(axis=2) == 0] = 0
    path = _write_geotiff(tmp_path / "scene.tif", rgb, nodata=0)
    _run(path, scene.instances.astype(np.int64), tmp_path / "out")
    store = tmp_path / "out" / "mosaic.zarr"
    assert (store / ".zmetadata").is_file()  # Zarr v2, consolidated
    classes_meta = json.loads((store / "classes" / ".zarray").read_text())
    assert classes_meta["fill_value"] == 255 and classes_meta["compressor"]["id"] == "zlib"
    assert json.loads((store / "labels" / ".zarray").read_text())["fill_value"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # xarray warns when not consolidated
        mosaic = xr.open_zarr(store, decode_coords="all")
    classes, labels = mosaic["classes"].values, mosaic["labels"].values
    assert np.isnan(classes[:, :200]).all()
    assert not np.isnan(classes[:, 200:]).any()
    assert set(np.unique(classes[labels > 0])) == {3.0}  # no classifier: unclassified
    assert set(np.unique(classes[:, 200:][labels[:, 200:] == 0])) == {0.0}


def test_the_mosaic_covers_exactly_the_imagery_and_its_cogs_open_in_gdal(tmp_path: Path) -> None:
    """Tiles lie on multiples of the core in map space (stable keys), the mosaic on the
    scene's own pixels: a scene off that lattice gives a mosaic of its own shape and bounds
    (partial tiles at its edges), and COGs identical to it."""
    from lisegagr_core.mosaic import open_mosaic, read_window
    from lisegagr_core.run import export_run
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(320, seed=5)
    rgb = np.ascontiguousarray(scene.rgb[:260])
    transform = ORIGIN @ Affine.translation(100, 60)  # off the 192-px anchored lattice
    path = _write_geotiff(tmp_path / "scene.tif", rgb, transform)
    out = tmp_path / "out"
    _run(path, scene.instances[:260].astype(np.int64), out)
    mosaic = _mosaic_labels(out)
    assert mosaic["labels"].shape == (260, 320)
    assert mosaic.rio.transform() == transform
    labels = mosaic["labels"].values
    assert score_partition(scene.instances[:260], labels).f1 >= 0.99  # partial tiles merged
    written = export_run(str(out), "cog", str(tmp_path / "gis"))
    assert written == [str(tmp_path / "gis" / "labels.tif"), str(tmp_path / "gis" / "classes.tif")]
    group = open_mosaic(str(out / "mosaic.zarr"), mode="r")
    with rasterio.open(path) as src:
        bounds, crs = src.bounds, src.crs
    for name in ("labels", "classes"):
        with rasterio.open(tmp_path / "gis" / f"{name}.tif") as cog:
            assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert cog.crs == crs and cog.bounds == bounds and cog.shape == (260, 320)
            assert cog.nodata == (255 if name == "classes" else None)
            values = cog.read(1)
        np.testing.assert_array_equal(values, read_window(group, Window(0, 0, 320, 260), name))
    assert values.max() == 3  # fields without a classifier: unclassified, not nodata
    assert (values != 255).all()  # every pixel of the scene has imagery
    from typer.testing import CliRunner

    from lisegagr.cli import app

    result = CliRunner().invoke(app, ["export", str(out), "--format", "cog"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "classes.tif") as cog:
        assert cog.bounds == bounds


def test_a_grown_region_keeps_its_old_tiles_and_a_box_maps_part_of_it(tmp_path: Path) -> None:
    """More imagery beside a mapped scene: the tiles it does not touch keep their keys and
    hashes (cached); the mosaic grows to the new extent. `bbox` maps only a box, on the same
    lattice (the same keys)."""
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(640, seed=8)
    truth = scene.instances.astype(np.int64)
    whole = _write_geotiff(tmp_path / "whole.tif", scene.rgb)
    west = _write_geotiff(tmp_path / "west.tif", np.ascontiguousarray(scene.rgb[:, :320]))
    east = _write_geotiff(
        tmp_path / "east.tif",
        np.ascontiguousarray(scene.rgb[:, 320:]),
        ORIGIN @ Affine.translation(320, 0),
    )
    spec = truth_spec(whole, truth)
    out = str(tmp_path / "out")
    first = run_region([str(west)], out, SMALL_TILES, spec)
    assert _mosaic_labels(tmp_path / "out")["labels"].shape == (640, 320)
    grown = run_region([str(west), str(east)], out, SMALL_TILES, spec)
    assert _mosaic_labels(tmp_path / "out")["labels"].shape == (640, 640)
    cached = {k for k, s in grown.tiles.items() if s.status == "cached"}
    # tiles whose read window stays inside the west half are unchanged
    grid = TileGrid.anchored(640, 320, transform=ORIGIN, crs=CRS.from_epsg(32616), core=192)
    inside = {t.key for t in grid if t.read.col_off + t.read.width < 320}  # not cut at 320
    assert inside and inside <= cached
    assert all(grown.tiles[k].tile_hash == first.tiles[k].tile_hash for k in cached)
    labels = _mosaic_labels(tmp_path / "out")["labels"].values
    assert score_partition(truth, labels).f1 >= 0.99

    box = (400_100.0, 4_400_000.0 - 300.0, 400_400.0, 4_400_000.0 - 50.0)  # 300 × 250 m
    boxed = run_region(
        [str(whole)], str(tmp_path / "box"), SMALL_TILES.model_copy(update={"bbox": box}), spec
    )
    mosaic = _mosaic_labels(tmp_path / "box")
    assert mosaic["labels"].shape == (250, 300)
    assert mosaic.rio.transform() == ORIGIN @ Affine.translation(100, 50)
    assert set(boxed.tiles) <= set(grown.tiles)  # the same lattice, the same keys
    agree = (mosaic["labels"].values > 0) == (truth[50:300, 100:400] > 0)
    assert agree.mean() > 0.98  # fields cut by the box are mapped inside it


def test_geoparquet_has_one_schema_whether_fields_are_found_or_not(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(256, seed=7)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    found = _run(path, scene.instances.astype(np.int64), tmp_path / "found")
    nothing = _run(path, np.zeros_like(scene.instances, np.int64), tmp_path / "nothing")
    assert found.fields > 0 and nothing.fields == 0
    schemas = [pq.read_schema(tmp_path / name / "fields.parquet") for name in ("found", "nothing")]
    assert schemas[0].remove_metadata() == schemas[1].remove_metadata()
    assert str(schemas[1].field("lisegagr:class").type) == "uint8"
    assert "null" not in {str(f.type) for f in schemas[1]}


def test_geojson_export_is_wgs84_per_rfc_7946_and_other_formats_keep_the_crs(
    tmp_path: Path,
) -> None:
    import json

    from typer.testing import CliRunner

    from lisegagr.cli import app
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(256, seed=7)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    _run(path, scene.instances.astype(np.int64), tmp_path / "out")
    for fmt in ("geojson", "gpkg"):
        result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "--format", fmt])
        assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "fields.geojson").read_text())
    assert "crs" not in document
    assert document["features"][0]["geometry"]["type"] == "MultiPolygon"
    x, y = document["features"][0]["geometry"]["coordinates"][0][0][0]
    assert -89 < x < -88 and 39 < y < 40  # UTM 16N at 400 km E, 4400 km N: Illinois
    assert gpd.read_file(tmp_path / "out" / "fields.gpkg").crs.to_epsg() == 32616


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "geojson"])
def test_an_empty_runs_export_keeps_the_schema_and_appends_to_a_full_one(
    tmp_path: Path, fmt: str
) -> None:
    """A night without fields exports the same layer (MultiPolygon, the same typed columns)
    as a night with fields, so appending nightly exports into one layer keeps working."""
    import pyogrio
    from typer.testing import CliRunner

    from lisegagr.cli import app
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(256, seed=7)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    _run(path, scene.instances.astype(np.int64), tmp_path / "found")
    _run(path, np.zeros_like(scene.instances, np.int64), tmp_path / "nothing")
    exports = {}
    for name in ("found", "nothing"):
        exports[name] = tmp_path / f"{name}.{fmt}"
        result = CliRunner().invoke(
            app, ["export", str(tmp_path / name), "--format", fmt, "--to", str(exports[name])]
        )
        assert result.exit_code == 0, result.output
    full, empty = pyogrio.read_info(exports["found"]), pyogrio.read_info(exports["nothing"])
    assert (
        full["features"] > 0
        and pyogrio.read_info(exports["nothing"], force_feature_count=True)["features"] == 0
    )
    if fmt != "geojson":  # GeoJSON has no schema but its features' (RFC 7946)
        assert full["geometry_type"] == empty["geometry_type"] == "MultiPolygon"
        assert list(zip(empty["fields"], empty["dtypes"], strict=True)) == list(
            zip(full["fields"], full["dtypes"], strict=True)
        )
    before = gpd.read_file(exports["found"])
    pyogrio.write_dataframe(
        gpd.read_file(exports["nothing"]), exports["found"], driver=None, append=True
    )
    after = pyogrio.read_info(exports["found"])
    assert (after["geometry_type"], list(after["fields"])) == (
        full["geometry_type"],
        list(full["fields"]),
    )
    pd.testing.assert_frame_equal(gpd.read_file(exports["found"]), before)


def test_export_run_writes_every_format_from_a_notebook_and_overwrite_leaves_none(
    tmp_path: Path,
) -> None:
    """`export_run` is `lisegagr export` without the CLI: each format goes where the store
    says (`RegionPaths.exports`), or to the file or folder named. `run --overwrite` with other
    sources clears those exports with the run: nothing of the old map is left beside the new."""
    from lisegagr_core.run import EXPORT_FORMATS, RegionPaths, export_run
    from lisegagr_core.run.assemble import claim_output
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(256, seed=7)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    out = tmp_path / "out"
    _run(path, scene.instances.astype(np.int64), out)
    paths = RegionPaths(str(out))
    fields = gpd.read_parquet(out / "fields.parquet")
    assert len(fields) > 0
    assert list(EXPORT_FORMATS) == ["gpkg", "geojson", "fgb", "cog"]
    for fmt in EXPORT_FORMATS:
        written = export_run(str(out), fmt)
        assert written == paths.exports(fmt) and all(Path(url).is_file() for url in written)
    assert [Path(url).name for url in paths.exports()] == [
        "fields.gpkg",
        "fields.geojson",
        "fields.fgb",
        "labels.tif",
        "classes.tif",
    ]
    for fmt in ("gpkg", "geojson", "fgb"):
        assert len(gpd.read_file(out / f"fields.{fmt}")) == len(fields)
    named = tmp_path / "gis" / "county.fgb"
    assert export_run(str(out), "fgb", str(named)) == [str(named)]
    assert len(gpd.read_file(named)) == len(fields)

    other = _write_geotiff(tmp_path / "other.tif", make_farmland_scene(256, seed=8).rgb)
    claim_output(paths, [str(other)], overwrite=True)  # what `run --overwrite` does first
    assert sorted(p.name for p in out.iterdir()) == []
    assert named.is_file()  # an export outside the run folder is not the run's to clear


def test_gdal_opens_the_mosaic_with_its_crs_transform_and_the_cogs_nodata(tmp_path: Path) -> None:
    """rasterio's own GDAL (3.10 here, no Zarr v3) opens `labels` and `classes` of the mosaic
    with the run's CRS, transform and values, and the nodata of the COG export (none for
    labels, 255 for classes)."""
    from lisegagr_core.run import export_run
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(256, seed=7)
    rgb = scene.rgb.copy()
    rgb[:, :60] = 0  # a swath without data: classes 255
    path = _write_geotiff(tmp_path / "scene.tif", rgb, nodata=0)
    _run(path, scene.instances.astype(np.int64), tmp_path / "out")
    store = tmp_path / "out" / "mosaic.zarr"
    stored = _mosaic_labels(tmp_path / "out")
    export_run(str(tmp_path / "out"), "cog", str(tmp_path / "gis"))
    for name, nodata in (("labels", None), ("classes", 255)):
        with rasterio.open(f'ZARR:"{store}":/{name}') as zarr_band:
            assert zarr_band.driver == "Zarr"
            assert zarr_band.crs.to_epsg() == 32616 and zarr_band.transform == ORIGIN
            assert zarr_band.nodata == nodata and zarr_band.dtypes[0] == stored[name].dtype
            values = zarr_band.read(1)
        with rasterio.open(tmp_path / "gis" / f"{name}.tif") as cog:
            assert cog.nodata == nodata
        np.testing.assert_array_equal(values, stored[name].values)
    assert (values[:, :60] == 255).all() and values[:, 60:].max() == 3


def test_the_mosaic_can_be_written_as_zarr_v3_and_other_formats_are_refused(
    tmp_path: Path,
) -> None:
    from lisegagr_core.mosaic import create_mosaic, open_mosaic, read_window, write_window

    grid = TileGrid.anchored(100, 120, transform=ORIGIN, crs=CRS.from_epsg(32616), core=64)
    create_mosaic(str(tmp_path / "v3.zarr"), grid, zarr_format=3)
    assert (tmp_path / "v3.zarr" / "zarr.json").is_file()
    group = open_mosaic(str(tmp_path / "v3.zarr"))
    window = Window(0, 0, 64, 64)
    write_window(group, window, np.full((64, 64), 5, np.uint32), np.ones((64, 64), np.uint8))
    assert (read_window(group, window) == 5).all()
    mosaic = xr.open_zarr(tmp_path / "v3.zarr", decode_coords="all")
    assert mosaic.rio.crs.to_epsg() == 32616 and mosaic.rio.transform() == ORIGIN
    assert np.isnan(mosaic["classes"].values[64:, 64:]).all()  # nodata 255, masked
    with pytest.raises(ValueError, match="Zarr format 2 or 3, not 4"):
        create_mosaic(str(tmp_path / "v4.zarr"), grid, zarr_format=4)


def test_each_tile_is_read_once_and_a_cached_tile_is_never_super_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read of the sources per tile: hashed before super-resolution, and the image that
    was segmented is the one classified. A re-run reads each tile to hash it, nothing more."""
    import collections

    import torch

    from lisegagr_core.classify import ClassifierConfig, build_classifier, save_classifier
    from lisegagr_core.rasters import RasterSet
    from lisegagr_core.standins.farmland import make_farmland_scene

    scene = make_farmland_scene(256, seed=9)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    spec = truth_spec(path, scene.instances.astype(np.int64))  # read onto the upscaled grid
    torch.manual_seed(0)
    save_classifier(
        build_classifier(ClassifierConfig(backbone="resnet18", input_size=64)),
        tmp_path / "classifier.pt",
    )
    config = SMALL_TILES.model_copy(
        update={"upscale": 2, "classifier": str(tmp_path / "classifier.pt")}
    )
    reads: collections.Counter[tuple[int, int]] = collections.Counter()
    upscales: collections.Counter[tuple[int, int]] = collections.Counter()
    read_source, upscaled = RasterSet.read_source, RasterSet.upscaled

    def counted_read(self: RasterSet, window: Window):  # type: ignore[no-untyped-def]
        reads[int(window.row_off), int(window.col_off)] += 1
        return read_source(self, window)

    def counted_upscale(self: RasterSet, pixels):  # type: ignore[no-untyped-def]
        upscales[int(pixels.window.row_off), int(pixels.window.col_off)] += 1
        return upscaled(self, pixels)

    monkeypatch.setattr(RasterSet, "read_source", counted_read)
    monkeypatch.setattr(RasterSet, "upscaled", counted_upscale)
    first = run_region([str(path)], str(tmp_path / "out"), config, spec)
    tiles = len(first.tiles)  # 512² on the upscaled grid, tiles on the anchored lattice
    assert first.counts["computed"] == tiles >= 9 and first.fields > 0
    assert len(reads) == tiles and set(reads.values()) == {1}
    assert len(upscales) == tiles and set(upscales.values()) == {1}
    assert len(list((tmp_path / "out" / "scores").glob("*.json"))) == tiles  # all classified

    reads.clear(), upscales.clear()
    again = run_region([str(path)], str(tmp_path / "out"), config, spec)
    assert again.counts["cached"] == tiles
    assert len(reads) == tiles and set(reads.values()) == {1}
    assert not upscales  # cached tiles are hashed from source pixels only
