"""fields.parquet is fiboa 0.3 GeoParquet: validated offline against fiboa's own schemas."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import xarray as xr
from rasterio.crs import CRS

from lisegagr_core.fiboa import acquisition_datetime, metrics
from lisegagr_core.mosaic import write_fields
from lisegagr_core.run import run_region
from lisegagr_core.standins.farmland import make_farmland_scene

from .fiboa_check import validate_fiboa_parquet
from .flow_helpers import truth_spec
from .test_region import SMALL_TILES, _write_geotiff


def _mapped(tmp_path: Path, *, tags: dict[str, str] | None = None, empty: bool = False) -> Path:
    scene = make_farmland_scene(256, seed=7)
    path = _write_geotiff(tmp_path / "scene.tif", scene.rgb)
    if tags:
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(**tags)
    truth = np.zeros_like(scene.instances, np.int64) if empty else scene.instances
    out = tmp_path / "county-2024"
    run_region([str(path)], str(out), SMALL_TILES, truth_spec(path, truth.astype(np.int64)))
    return out / "fields.parquet"


def test_a_runs_fields_are_valid_fiboa_with_metrics_determination_and_provenance(
    tmp_path: Path,
) -> None:
    fields_path = _mapped(tmp_path, tags={"datetime": "2024-07-15T10:30:00Z"})
    assert validate_fiboa_parquet(fields_path) == []

    fields = gpd.read_parquet(fields_path)  # geopandas reads it as before
    assert fields.crs.to_epsg() == 32616 and len(fields) > 0
    assert set(fields["collection"]) == {"county-2024"}
    assert set(fields["determination:method"]) == {"auto-imagery"}
    assert set(fields["determination:datetime"]) == {pd.Timestamp("2024-07-15T10:30:00Z")}
    labels = xr.open_zarr(fields_path.parent / "mosaic.zarr")["labels"].values
    for field_id, area, perimeter, geometry in fields[
        ["id", "metrics:area", "metrics:perimeter", "geometry"]
    ].to_numpy():
        assert area == pytest.approx((labels == int(field_id)).sum())  # 1 m² pixels
        assert perimeter == pytest.approx(geometry.length, rel=1e-6)
    assert set(fields["lisegagr:class"]) == {3}  # no classifier: unclassified
    assert fields["lisegagr:tiles"].str.match(r"r\d+c\d+:[0-9a-f]{16}").all()
    assert fields["lisegagr:model"].notna().all() and fields["lisegagr:classifier"].isna().all()

    collection = json.loads(pq.read_schema(fields_path).metadata[b"collection"])
    declared = collection["schemas:custom"]["properties"]
    assert {c for c in fields.columns if c.startswith("lisegagr:")} == set(declared)


def test_an_empty_run_and_an_undated_run_are_valid_fiboa_too(tmp_path: Path) -> None:
    fields_path = _mapped(tmp_path, empty=True)
    assert validate_fiboa_parquet(fields_path) == []
    assert len(gpd.read_parquet(fields_path)) == 0
    schema = pq.read_schema(fields_path)
    assert str(schema.field("determination:datetime").type) == "timestamp[ms, tz=UTC]"


def test_the_checker_refuses_what_fiboa_refuses(tmp_path: Path) -> None:
    """The project's former table (integer ids, no collection, no schemas) and a fiboa table
    with a broken column are both refused: the check is not a formality."""
    frame = gpd.GeoDataFrame(
        {"id": [1], "area": [4.0]}, geometry=[shapely.box(0, 0, 2, 2)], crs="EPSG:32616"
    )
    frame.to_parquet(tmp_path / "old.parquet")
    assert validate_fiboa_parquet(tmp_path / "old.parquet") == [
        "Collection metadata is missing in Parquet header"
    ]
    write_fields(str(tmp_path / "ok.parquet"), {1: shapely.box(0, 0, 2, 2)}, pd.DataFrame(), None)
    table = pq.read_table(tmp_path / "ok.parquet")
    assert validate_fiboa_parquet(tmp_path / "ok.parquet") == []
    broken = table.set_column(
        table.column_names.index("determination:method"),
        table.schema.field("determination:method"),
        [["guessed"]],
    )
    pq.write_table(broken, tmp_path / "broken.parquet")
    problems = validate_fiboa_parquet(tmp_path / "broken.parquet")
    assert len(problems) == 1 and problems[0].startswith("determination:method: 'guessed'")


def test_metrics_are_in_metres_whatever_the_crs() -> None:
    square = shapely.box(0, 0, 100, 100)
    area, perimeter = metrics(gpd.GeoSeries([square], crs="EPSG:2263"))  # US survey feet
    assert area[0] == pytest.approx(100 * 100 * 0.3048006**2, rel=1e-5)
    assert perimeter[0] == pytest.approx(400 * 0.3048006, rel=1e-5)
    degree = shapely.box(-88.01, 40.0, -88.0, 40.01)  # about 853 m × 1111 m in Illinois
    area, perimeter = metrics(gpd.GeoSeries([degree], crs="EPSG:4326"))
    assert area[0] == pytest.approx(853.8 * 1110.5, rel=0.01)
    assert perimeter[0] == pytest.approx(2 * (853.8 + 1110.5), rel=0.01)
    assert np.isnan(metrics(gpd.GeoSeries([square]))[0]).all()  # no CRS: no metrics


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"ACQUISITIONDATETIME": "2023-06-01T10:20:30.5Z"}, "2023-06-01T10:20:30.500000+00:00"),
        ({"datetime": "2023-06-01"}, "2023-06-01T00:00:00+00:00"),
        ({"DATETIME": "2023:06:01 10:20:30"}, "2023-06-01T10:20:30+00:00"),
        ({"datetime": "2023-06-01T12:00:00+02:00"}, "2023-06-01T12:00:00+02:00"),
        ({"TIFFTAG_DATETIME": "2023:06:01 10:20:30"}, None),  # the file's date, not the image's
        ({"datetime": "last summer"}, None),
    ],
)
def test_the_imagery_date_comes_from_its_metadata(
    tags: dict[str, str], expected: str | None
) -> None:
    found = acquisition_datetime(tags)
    assert (found.isoformat() if found else None) == expected


def test_a_raster_without_crs_still_writes_valid_fiboa_without_metrics(tmp_path: Path) -> None:
    write_fields(
        str(tmp_path / "f.parquet"),
        {3: shapely.box(0, 0, 5, 5)},
        pd.DataFrame({"stage": ["refinement"]}, index=[3]),
        None,
        determined=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    )
    assert validate_fiboa_parquet(tmp_path / "f.parquet") == []
    fields = gpd.read_parquet(tmp_path / "f.parquet")
    assert fields["metrics:area"].isna().all() and list(fields["lisegagr:stage"]) == ["refinement"]


def test_a_crs_in_feet_gives_square_metres(tmp_path: Path) -> None:
    write_fields(
        str(tmp_path / "f.parquet"),
        {1: shapely.box(0, 0, 10, 10)},
        pd.DataFrame(),
        CRS.from_epsg(2263),
    )
    assert gpd.read_parquet(tmp_path / "f.parquet")["metrics:area"][0] == pytest.approx(
        100 * 0.3048006**2, rel=1e-5
    )
