"""The region's outputs: a georeferenced Zarr mosaic and the field polygons as GeoParquet.

``mosaic.zarr`` (Zarr format 2 by default, consolidated metadata, zlib-compressed chunks: what
every GDAL build with the Zarr driver reads, 3.4 on) holds `labels` (uint32 field instance
ids, 0 = background; no nodata value) and `classes` (uint8: 0 none, 1 field, 2 non-field,
3 unclassified, 255 nodata: no imagery, or a tile that failed) over exactly the sources'
extent, in chunks of the tile core from its top-left pixel; each chunk is written whole by one
writer (`run.stages.write_chunk_row`): parallel writes with no locks and no read-modify-write.
The nodata value of `classes` (255) is its Zarr ``fill_value`` (CF ``_FillValue``), so xarray
reads nodata as NaN and GDAL as nodata; `labels` has none (``fill_value`` null), as in the COG
export. CRS and transform are a rioxarray `spatial_ref` coordinate (CF ``grid_mapping``) and
GDAL's ``_CRS`` attribute, so both

    xr.open_zarr(url, decode_coords="all").rio.crs
    rasterio.open('ZARR:"url":/classes').crs

read them back. ``zarr_format=3`` writes Zarr v3 instead (GDAL reads it from 3.11 on, and then
takes `labels`' fill value 0 for nodata). `write_cog` exports both rasters as Cloud-Optimised
GeoTIFFs for any GIS.

``fields.parquet`` holds one polygon per instance in the raster's CRS, as fiboa 0.3
GeoParquet (`lisegagr_core.fiboa`).
"""

from __future__ import annotations

import datetime
import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import xarray as xr
import zarr
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.windows import Window
from shapely.geometry import shape

from lisegagr_core import fiboa
from lisegagr_core.grid import TileGrid

log = logging.getLogger(__name__)

CLASS_NONE, CLASS_FIELD, CLASS_NON_FIELD, CLASS_UNCLASSIFIED = 0, 1, 2, 3
#: What each class value of the `classes` raster and the GeoParquet's `class` column means.
CLASS_LABELS = {
    CLASS_NONE: "none",
    CLASS_FIELD: "field",
    CLASS_NON_FIELD: "non-field",
    CLASS_UNCLASSIFIED: "unclassified",
}
#: `classes` where there is no imagery or the tile failed (Zarr fill_value, CF _FillValue).
CLASS_NODATA = 255


def _store(url: str, storage_options: Mapping[str, Any] | None) -> Any:
    if "://" in url and not url.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}))
    return url.removeprefix("file://")


#: Zarr formats the mosaic can be written in (2: every GDAL with the Zarr driver reads it).
ZARR_FORMATS = (2, 3)


def create_mosaic(
    url: str,
    grid: TileGrid,
    storage_options: Mapping[str, Any] | None = None,
    *,
    zarr_format: int = 2,
) -> None:
    """Create the empty Zarr mosaic of `grid` (metadata and coordinates only; chunks stay
    unwritten), chunked by the tile core, in Zarr format `zarr_format` (2 or 3)."""
    import dask.array as da
    from numcodecs import Zlib

    if zarr_format not in ZARR_FORMATS:
        raise ValueError(f"the mosaic is written as Zarr format 2 or 3, not {zarr_format!r}")

    height, width, core = grid.height, grid.width, grid.core
    crs, transform = grid.crs, grid.transform
    xs = transform.c + transform.a * (np.arange(width) + 0.5)
    ys = transform.f + transform.e * (np.arange(height) + 0.5)
    chunks = (core, core)
    dataset = xr.Dataset(
        {
            "labels": (("y", "x"), da.zeros((height, width), chunks=chunks, dtype=np.uint32)),
            "classes": (
                ("y", "x"),
                da.full((height, width), CLASS_NODATA, chunks=chunks, dtype=np.uint8),
            ),
        },
        coords={"y": ys, "x": xs},
    )
    if crs is not None:
        dataset = dataset.rio.write_crs(crs)
    dataset = dataset.rio.write_transform(transform)
    dataset["labels"].attrs["description"] = "field instance id, 0 = background"
    if crs is not None and zarr_format == 2:
        for name in ("labels", "classes"):  # GDAL's own CRS attribute for Zarr v2
            dataset[name].attrs["_CRS"] = {"wkt": crs.to_wkt()}
    dataset["classes"].attrs.update(
        {
            "description": "0 none, 1 field, 2 non-field, 3 unclassified, 255 nodata",
            "flag_values": [CLASS_NONE, CLASS_FIELD, CLASS_NON_FIELD, CLASS_UNCLASSIFIED],
            "flag_meanings": "none field non_field unclassified",
        }
    )
    # zlib: a codec every GDAL build has (blosc and zstd are optional in GDAL). Level 9: a
    # 4096² mosaic of 896² chunks takes 0.39 MB, 0.9 s to write (level 5: 0.84 MB, 0.5 s;
    # v3's zstd: 0.22 MB, 0.2 s), against about 12 s of segmentation per tile
    codec = {"compressors": (Zlib(level=9),)} if zarr_format == 2 else {}
    dataset["labels"].encoding.update({"chunks": chunks, **codec})
    if zarr_format == 3:
        dataset["labels"].encoding["fill_value"] = 0  # v3 has no null fill value
    dataset["classes"].encoding.update(
        {"chunks": chunks, "fill_value": CLASS_NODATA, "_FillValue": CLASS_NODATA, **codec}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # consolidated metadata is not in v3's spec
        dataset.to_zarr(
            _store(url, storage_options),
            mode="w",
            compute=False,
            zarr_format=zarr_format,
            consolidated=True,
        )


def open_mosaic(
    url: str, storage_options: Mapping[str, Any] | None = None, mode: str = "r+"
) -> zarr.Group:
    return zarr.open_group(_store(url, storage_options), mode=mode)  # type: ignore[arg-type]


def _array(group: zarr.Group, name: str) -> zarr.Array:
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise TypeError(f"{name} in the mosaic is a group, not an array")
    return array


def write_window(
    group: zarr.Group, window: Window, labels: NDArray[np.uint32], classes: NDArray[np.uint8]
) -> None:
    """Write `labels` and `classes` (both window-shaped) at `window` of the mosaic."""
    rows, cols = window.toslices()
    _array(group, "labels")[rows, cols] = labels
    _array(group, "classes")[rows, cols] = classes


def read_window(group: zarr.Group, window: Window, name: str = "labels") -> NDArray[Any]:
    rows, cols = window.toslices()
    return np.asarray(_array(group, name)[rows, cols])


def core_polygons(
    labels: NDArray[np.uint32], transform: Affine
) -> Iterable[tuple[int, shapely.Polygon]]:
    """(global id, polygon) pieces of one core's labels, in map coordinates."""
    for geometry, value in shapes(labels.astype(np.int32), mask=labels > 0, transform=transform):
        yield int(value), shape(geometry)


def dissolve_pieces(pieces: Iterable[tuple[int, shapely.Polygon]]) -> dict[int, shapely.Geometry]:
    """One valid geometry per id: pieces cut by chunk borders joined again."""
    by_id: dict[int, list[shapely.Polygon]] = {}
    for instance_id, polygon in pieces:
        by_id.setdefault(instance_id, []).append(polygon)
    dissolved = {}
    for instance_id, parts in by_id.items():
        geometry = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        if not geometry.is_valid:  # keep its polygons only (no stray lines or points)
            geometry = shapely.union_all(
                [g for g in shapely.get_parts(shapely.make_valid(geometry)) if g.area > 0]
            )
        dissolved[instance_id] = geometry
    return dissolved


def vectorise_mosaic(group: zarr.Group, grid: TileGrid) -> dict[int, shapely.Geometry]:
    """Polygons of every instance of the mosaic, read chunk by chunk (bounded memory)."""
    pieces: list[tuple[int, shapely.Polygon]] = []
    for chunk in grid.chunks():
        labels = read_window(group, chunk)
        if labels.any():
            pieces.extend(core_polygons(labels, grid.window_transform(chunk)))
    return dissolve_pieces(pieces)


#: The columns `instance_attributes` gives (by global id) and their names in fields.parquet.
ATTRIBUTE_COLUMNS: dict[str, str] = {
    "class": "lisegagr:class",
    "field_score": "lisegagr:field_score",
    "predicted_iou": "lisegagr:predicted_iou",
    "stability_score": "lisegagr:stability_score",
    "stage": "lisegagr:stage",
    "tiles": "lisegagr:tiles",
    "model": "lisegagr:model",
    "classifier": "lisegagr:classifier",
}


def write_fields(
    url: str,
    geometries: Mapping[int, shapely.Geometry],
    attributes: pd.DataFrame,
    crs: CRS | None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    collection: str = "lisegagr",
    determined: datetime.datetime | None = None,
) -> gpd.GeoDataFrame:
    """fields.parquet as fiboa 0.3 GeoParquet (`lisegagr_core.fiboa`), one row per instance:
    `id` (its value in `labels`, as text), `collection`, the geometry, `metrics:area` (m²),
    `metrics:perimeter` (m), `determination:method` (auto-imagery), `determination:datetime`
    (`determined`, the imagery's date, or null) and the project's ``lisegagr:`` properties
    from `attributes`. Column types and nullability are the same whether fields were found
    or not; returns the table written.

    attributes: indexed by global id (columns of `ATTRIBUTE_COLUMNS`, any subset).
    """
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(geometries)
    geometry = gpd.GeoSeries(
        [geometries[i] for i in ids], dtype="geometry", crs=crs.to_wkt() if crs else None
    )
    area, perimeter = fiboa.metrics(geometry)
    frame = gpd.GeoDataFrame(
        {
            "id": pd.array([str(i) for i in ids], dtype="string"),
            "collection": collection,
            "metrics:area": area,
            "metrics:perimeter": perimeter,
            "determination:method": fiboa.DETERMINATION_METHOD,
            "determination:datetime": pd.Series([determined] * len(ids), dtype=object),
        },
        geometry=geometry,
    )
    provenance = attributes.rename(columns=ATTRIBUTE_COLUMNS).reindex(
        columns=list(fiboa.LISEGAGR_PROPERTIES)
    )
    frame = frame.join(provenance.set_axis(provenance.index.astype(str)), on="id")
    frame["determination:datetime"] = pd.to_datetime(frame["determination:datetime"], utc=True)
    frame["lisegagr:class"] = frame["lisegagr:class"].fillna(CLASS_UNCLASSIFIED)  # no attributes
    # the same column types whether the run found many fields or none (no null-typed columns)
    frame = frame.astype(fiboa.FIELD_TYPES)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)  # GeoParquet metadata by geopandas
    table = pq.read_table(pa.BufferReader(buffer.getvalue()))
    schema = pa.schema(
        [  # Parquet strings as `string` (not large_string), required columns never null
            (f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f).with_nullable(
                f.name not in fiboa.REQUIRED
            )
            for f in table.schema
        ],
        metadata={
            **(table.schema.metadata or {}),
            b"collection": json.dumps(fiboa.collection_metadata(collection)).encode(),
        },
    )
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    with fs.open(path, "wb") as stream:
        pq.write_table(table.cast(schema), stream)
    return frame


#: Colours of `classes` in a GIS (a palette in the exported GeoTIFF).
CLASS_COLOURS = {
    CLASS_NONE: (0, 0, 0, 0),
    CLASS_FIELD: (46, 160, 67, 255),
    CLASS_NON_FIELD: (214, 140, 40, 255),
    CLASS_UNCLASSIFIED: (130, 130, 200, 255),
    CLASS_NODATA: (0, 0, 0, 0),
}


def write_cog(
    group: zarr.Group,
    name: str,
    path: str,
    window: Window,
    transform: Affine,
    crs: CRS | None,
    *,
    rows_per_read: int = 2048,
) -> None:
    """Write the mosaic's `name` array, cut to `window`, as a Cloud-Optimised GeoTIFF at `path`.

    Read in strips of `rows_per_read` rows (bounded memory) into a tiled GeoTIFF, then laid out
    as a COG by GDAL (deflate, 512-px blocks, nearest-neighbour overviews). `classes` gets its
    nodata (255) and a palette; `labels` has no nodata (0 is background).
    """
    import tempfile
    from pathlib import Path

    import rasterio
    from rasterio.shutil import copy as gdal_copy

    array = _array(group, name)
    height, width = int(window.height), int(window.width)
    nodata = CLASS_NODATA if name == "classes" else None
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": str(array.dtype),
        "crs": crs,
        "transform": transform @ Affine.translation(window.col_off, window.row_off),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    with tempfile.TemporaryDirectory() as scratch:
        striped = Path(scratch) / f"{name}.tif"
        with rasterio.open(striped, "w", **profile) as dst:
            for row in range(0, height, rows_per_read):
                rows = min(rows_per_read, height - row)
                strip = Window(window.col_off, window.row_off + row, width, rows)
                dst.write(read_window(group, strip, name)[None], window=Window(0, row, width, rows))
            if name == "classes":
                dst.write_colormap(1, CLASS_COLOURS)
            dst.set_band_description(1, str(array.attrs.get("description", name)))
        gdal_copy(
            striped,
            path,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE="512",
            RESAMPLING="NEAREST",
            BIGTIFF="IF_SAFER",
        )
