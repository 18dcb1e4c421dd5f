"""A run's outputs for any GIS: `labels` and `classes` as Cloud-Optimised GeoTIFFs, the field
polygons as GeoPackage, GeoJSON or FlatGeobuf with one schema whether fields were found or not."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import geopandas as gpd
import shapely
from rasterio.windows import Window

from lisegagr_core.mosaic import open_mosaic, write_cog
from lisegagr_core.run.manifest import read_manifest
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.storage import check_writable


def export_cogs(
    output: str, folder: str, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The run's `labels` and `classes` as Cloud-Optimised GeoTIFFs in `folder` (local or any
    fsspec URL), on the mosaic's grid (the sources' extent); returns their URLs."""
    paths = RegionPaths(output, dict(storage_options or {}))
    grid = read_manifest(output, dict(paths.storage_options)).tile_grid
    group = open_mosaic(paths.mosaic, paths.storage_options, mode="r")
    check_writable(folder, paths.storage_options)  # makes a local folder, never a bucket
    target_fs, target = fsspec.core.url_to_fs(folder, **paths.storage_options)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("labels", "classes"):
            local = str(Path(scratch) / f"{name}.tif")
            window = Window(0, 0, grid.width, grid.height)
            write_cog(group, name, local, window, grid.transform, grid.crs)
            target_fs.put_file(local, f"{target.rstrip('/')}/{name}.tif")
            written.append(f"{folder.rstrip('/')}/{name}.tif")
    return written


#: Vector formats of `export_fields`, by the name `lisegagr export --format` takes.
VECTOR_DRIVERS = {"gpkg": "GPKG", "geojson": "GeoJSON", "fgb": "FlatGeobuf"}


def as_multipolygons(fields: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """`fields` with every geometry a MultiPolygon (a Polygon becomes one of one part)."""
    geometries = fields.geometry.values
    parts, index = shapely.get_parts(geometries, return_index=True)
    multi = shapely.multipolygons(parts, indices=index) if len(fields) else geometries
    return fields.set_geometry(gpd.GeoSeries(multi, index=fields.index, crs=fields.crs))


def export_fields(fields: gpd.GeoDataFrame, target: str, format: str) -> None:
    """Write a run's fields to `target` as `format` (a key of `VECTOR_DRIVERS`), with the same
    layer schema whether `fields` has rows or not: geometry type MultiPolygon, every column
    typed from the table's types (GeoPackage, FlatGeobuf), so nightly exports append into one
    layer. GeoJSON is RFC 7946: WGS 84 and no `crs` member; it has no schema of its own, so an
    empty one is a FeatureCollection without features (it appends as nothing)."""
    if format not in VECTOR_DRIVERS:
        raise ValueError(f"fields are exported as {', '.join(VECTOR_DRIVERS)}, not {format!r}")
    frame = as_multipolygons(fields)
    options: dict[str, Any] = {"geometry_type": "MultiPolygon"}
    if format == "geojson" and frame.crs is not None:
        frame, options = frame.to_crs(4326), {**options, "RFC7946": "YES"}
    frame.to_file(target, driver=VECTOR_DRIVERS[format], **options)
