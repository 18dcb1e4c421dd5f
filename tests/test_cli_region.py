"""`lisegagr run / export / preview` on the real 8-band Sentinel-2 scene."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from typer.testing import CliRunner

from lisegagr.cli import app

pytestmark = [pytest.mark.shared_data, pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

runner = CliRunner()


@pytest.fixture(scope="module")
def s2_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """B4, B3, B2 of the first date, super-resolved ×4 (Lanczos), mapped with the tiny SAM."""
    scene = shared_data / "ftw-s2" / "inference-img.tif"
    out = tmp_path_factory.mktemp("s2") / "out"
    config = out.parent / "permissive.yaml"
    config.write_text("engine: {amg: {pred_iou_thresh: 0.0, stability_score_thresh: 0.0}}\n")
    result = runner.invoke(
        app,
        [
            "run",
            str(scene),
            "--bands",
            "1,2,3",
            "--upscale",
            "4",
            "--out",
            str(out),
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--points-per-side",
            "4",
            "-c",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    return scene, out


def test_sentinel2_keeps_its_crs_and_the_outputs_line_up(s2_run: tuple[Path, Path]) -> None:
    scene, out = s2_run
    with rasterio.open(scene) as src:
        crs, transform, bounds, shape = src.crs, src.transform, src.bounds, src.shape
    mosaic = xr.open_zarr(out / "mosaic.zarr", decode_coords="all", consolidated=False)
    assert mosaic.rio.crs == crs
    grid = mosaic.rio.transform()
    assert (grid.a, grid.e) == (2.5, -2.5)  # 10 m super-resolved ×4
    # the mosaic covers exactly the scene, on its pixels ×4 (no nodata band around it)...
    assert (grid.c, grid.f) == (transform.c, transform.f)
    assert mosaic.rio.bounds() == tuple(bounds)
    labels = mosaic["labels"].values
    assert labels.shape == (shape[0] * 4, shape[1] * 4)
    # ...while its tiles lie on multiples of the core (896 × 2.5 m) counted from the map's
    # origin, the lattice that keeps their keys when the region grows
    described = json.loads((out / "manifest.json").read_text())["grid"]
    assert described["anchor"] == [round(transform.f / -2.5), round(transform.c / 2.5)]
    assert described["rows"] * described["cols"] > 1

    fields = gpd.read_parquet(out / "fields.parquet")
    assert fields.crs == crs
    assert len(fields) == int(mosaic["labels"].max()) > 0
    minx, miny, maxx, maxy = fields.total_bounds
    assert (
        bounds.left <= minx
        and maxx <= bounds.right
        and bounds.bottom <= miny
        and maxy <= bounds.top
    )
    # a field's polygon covers its own pixels: the area matches the pixel count × 2.5 m × 2.5 m
    largest = fields.sort_values("metrics:area").iloc[-1]
    assert largest["metrics:area"] == pytest.approx((labels == int(largest.id)).sum() * 6.25)


@pytest.mark.parametrize("fmt", ["gpkg", "geojson", "fgb"])
def test_export_writes_each_gis_format(s2_run: tuple[Path, Path], fmt: str) -> None:
    _, out = s2_run
    result = runner.invoke(app, ["export", str(out), "--format", fmt])
    assert result.exit_code == 0, result.output
    exported = gpd.read_file(out / f"fields.{fmt}")
    assert len(exported) == len(gpd.read_parquet(out / "fields.parquet"))


def test_preview_of_a_box_is_a_picture(s2_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = s2_run
    png = tmp_path / "preview.png"
    bbox = "360000,5349000,362000,5351000"  # 2 km × 2 km at 2.5 m: 800 × 800 px
    result = runner.invoke(app, ["preview", str(out), "--bbox", bbox, "-o", str(png)])
    assert result.exit_code == 0, result.output
    import cv2

    picture = cv2.imread(str(png))
    assert picture.shape == (800, 800, 3)
    outside = runner.invoke(app, ["preview", str(out), "--bbox", "0,0,10,10", "-o", str(png)])
    assert outside.exit_code == 2 and "outside the region" in outside.output


def test_run_refuses_a_band_out_of_range_before_any_work(shared_data: Path, tmp_path: Path) -> None:
    scene = shared_data / "ftw-s2" / "inference-img.tif"
    result = runner.invoke(
        app,
        ["run", str(scene), "--bands", "9,2,1", "--out", str(tmp_path / "out"), "--model", "tiny"],
    )
    assert result.exit_code == 2
    assert "band 9 is out of range" in result.output
    assert not (tmp_path / "out").exists()
