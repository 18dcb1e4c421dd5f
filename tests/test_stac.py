"""STAC input: static catalogs, item collections and items over local COGs and over COGs in a
local S3 server, read as the rasters they point to; bad catalogs refused in one sentence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.errors import InputError
from lisegagr_core.rasters import open_rasters
from lisegagr_core.run import run_region
from lisegagr_core.stac import stac_rasters, with_assets
from lisegagr_core.standins.farmland import make_farmland_scene

from .flow_helpers import truth_spec
from .test_region import ORIGIN, SMALL_TILES, _write_geotiff

WHEN = "2024-07-15T10:30:00Z"


def _cog(path: Path, bands: np.ndarray, transform: Affine) -> None:
    """(B, H, W) uint16 as a Cloud-Optimised GeoTIFF (16-bit, as Sentinel-2's bands)."""
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=bands.dtype,
        crs="EPSG:32616",
        transform=transform,
    ) as dst:
        dst.write(bands)


def _item(name: str, assets: dict[str, str]) -> dict[str, object]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": name,
        "geometry": None,
        "properties": {"datetime": WHEN},
        "links": [],
        "assets": {
            k: {"href": v, "type": "image/tiff; application=geotiff"} for k, v in assets.items()
        },
    }


def _static_catalog(root: Path, rgb: np.ndarray) -> Path:
    """Two items (west and east halves of `rgb`), each with red, green, blue single-band COGs
    and a three-band `visual` COG, in a collection under a catalog; relative hrefs."""
    (root / "data").mkdir(parents=True)
    half = rgb.shape[1] // 2
    links = []
    for name, cols in (("west", slice(0, half)), ("east", slice(half, None))):
        transform = ORIGIN @ Affine.translation(cols.start or 0, 0)
        part = np.moveaxis(rgb[:, cols], -1, 0).astype(np.uint16) * 40  # 16-bit imagery
        for band, colour in enumerate(("red", "green", "blue")):
            _cog(root / "data" / f"{name}_{colour}.tif", part[band : band + 1], transform)
        _cog(root / "data" / f"{name}_visual.tif", part, transform)
        folder = root / "collection" / name
        folder.mkdir(parents=True)
        assets = {c: f"../../data/{name}_{c}.tif" for c in ("red", "green", "blue", "visual")}
        (folder / f"{name}.json").write_text(json.dumps(_item(name, assets)))
        links.append({"rel": "item", "href": f"./{name}/{name}.json"})
    collection = {"type": "Collection", "id": "fields", "stac_version": "1.0.0", "links": links}
    (root / "collection" / "collection.json").write_text(json.dumps(collection))
    catalog = {
        "type": "Catalog",
        "id": "imagery",
        "stac_version": "1.0.0",
        "description": "test imagery",
        "links": [{"rel": "child", "href": "./collection/collection.json"}],
    }
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


@pytest.fixture
def scene_and_catalog(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    scene = make_farmland_scene(384, seed=11)
    return scene.rgb, scene.instances, _static_catalog(tmp_path / "stac", scene.rgb)


def _pixels(sources: list[str]) -> np.ndarray:
    rasters = open_rasters(sources)
    assert (rasters.height, rasters.width) == (384, 384) and rasters.transform == ORIGIN
    return rasters.read(Window(0, 0, 384, 384))[0]


def test_a_static_catalog_reads_as_its_items_rasters_from_band_assets_or_visual(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path
) -> None:
    rgb, _, catalog = scene_and_catalog
    halves = [  # the same imagery as two plain three-band GeoTIFFs
        _write_geotiff(
            tmp_path / f"{name}.tif",
            rgb[:, cols].astype(np.uint16) * 40,
            ORIGIN @ Affine.translation(cols.start or 0, 0),
        )
        for name, cols in (("west", slice(0, 192)), ("east", slice(192, None)))
    ]
    expected = _pixels([str(p) for p in halves])
    bands = _pixels([with_assets(str(catalog), "red,green,blue")])
    visual = _pixels([str(catalog)])  # `visual` by default
    np.testing.assert_array_equal(bands, expected)
    np.testing.assert_array_equal(visual, expected)
    items = stac_rasters(str(catalog))
    assert [i.item for i in items] == ["west", "east"] and all(i.datetime == WHEN for i in items)
    item = catalog.parent / "collection" / "east" / "east.json"
    assert len(open_rasters([with_assets(str(item), "green")]).rasters) == 1


def test_a_run_over_a_catalog_maps_its_fields_dated_by_the_items(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path
) -> None:
    from lisegagr_core.metrics import score_partition
    from lisegagr_core.mosaic import open_mosaic, read_window

    _, truth, catalog = scene_and_catalog
    source = with_assets(str(catalog), "red,green,blue")
    out = tmp_path / "out"
    plain = _write_geotiff(tmp_path / "truth.tif", np.zeros((384, 384, 3), np.uint8))
    run_region([source], str(out), SMALL_TILES, truth_spec(plain, truth.astype(np.int64)))
    labels = read_window(open_mosaic(str(out / "mosaic.zarr"), mode="r"), Window(0, 0, 384, 384))
    assert score_partition(truth, labels).f1 >= 0.99
    fields = gpd.read_parquet(out / "fields.parquet")
    assert set(fields["determination:datetime"]) == {pd.Timestamp(WHEN)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"] == [source]  # resume reads the same assets


def test_an_item_collection_reads_its_features(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path],
) -> None:
    _, _, catalog = scene_and_catalog
    items = [
        json.loads((catalog.parent / "collection" / n / f"{n}.json").read_text())
        for n in ("west", "east")
    ]
    for item in items:  # hrefs relative to the collection file, one folder up from the items
        item["assets"] = {
            k: {"href": v["href"].replace("../../data/", "data/")}
            for k, v in item["assets"].items()
        }
    path = catalog.parent / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    np.testing.assert_array_equal(_pixels([str(path)]), _pixels([str(catalog)]))


def test_bad_catalogs_are_refused_in_one_sentence(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path
) -> None:
    _, _, catalog = scene_and_catalog
    cases = {
        with_assets(str(catalog), "nir"): "item west has no asset 'nir'; its assets are blue",
        str(tmp_path / "missing.json"): "no such STAC document",
    }
    (tmp_path / "notes.json").write_text("not json")
    cases[str(tmp_path / "notes.json")] = "is not JSON"
    (tmp_path / "geo.json").write_text(json.dumps({"type": "Point", "coordinates": [0, 0]}))
    cases[str(tmp_path / "geo.json")] = "is not a STAC item, item collection or catalog"
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as d:
        d.write(np.ones((1, 8, 8), np.uint8))
    (tmp_path / "bare.json").write_text(json.dumps(_item("bare", {"visual": str(bare)})))
    cases[str(tmp_path / "bare.json")] = "item bare has no CRS"
    for source, expected in cases.items():
        with pytest.raises(InputError, match=expected) as caught:
            open_rasters([source])
        assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="one asset or three"):
        with_assets(str(catalog), "red,green")


def test_run_refuses_a_bad_catalog_and_an_asset_without_stac_before_any_work(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path
) -> None:
    _, _, catalog = scene_and_catalog
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(catalog), "--asset", "nir", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "has no asset 'nir'" in result.output and not out.exists()
    tif = catalog.parent / "data" / "west_red.tif"
    result = runner.invoke(app, ["run", str(tif), "--asset", "red", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "no source is a STAC document" in result.output


@pytest.fixture
def s3_catalog(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The catalog and its COGs copied into a bucket of a local S3 server (moto)."""
    pytest.importorskip("moto")
    from .test_s3 import _bucket, _moto_server, point_aws_at

    _, _, catalog = scene_and_catalog
    with _moto_server() as endpoint:
        point_aws_at(endpoint, monkeypatch)
        fs = _bucket("stac")
        for path in catalog.parent.rglob("*"):
            if path.is_file():
                fs.put_file(str(path), f"stac/{path.relative_to(catalog.parent).as_posix()}")
        yield "s3://stac/catalog.json"


@pytest.mark.slow
def test_a_catalog_in_a_bucket_reads_like_the_local_one(
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path], s3_catalog: str
) -> None:
    _, _, catalog = scene_and_catalog
    remote = _pixels([with_assets(s3_catalog, "red,green,blue")])
    np.testing.assert_array_equal(remote, _pixels([with_assets(str(catalog), "red,green,blue")]))
    assert [r.url for r in open_rasters([s3_catalog]).rasters] == [
        "s3://stac/data/west_visual.tif",
        "s3://stac/data/east_visual.tif",
    ]
