"""A run's exports for any GIS, in one place: what `lisegagr export` writes, from a notebook too.

    export_run("s3://maps/county", "gpkg")                       # RUN/fields.gpkg
    export_run("s3://maps/county", "gpkg", "county.gpkg")        # that file
    export_run("s3://maps/county", "cog", "s3://gis/county")     # labels.tif, classes.tif there

`EXPORT_FORMATS` is the one list of formats: each names the files it writes (their names in
the run folder, where they go by default) and how it reads the run and writes them. A format
added there is one that `lisegagr export --format` takes, `export_run` writes and
`RegionPaths.clear` (`lisegagr run --overwrite`) removes from the run folder.

The formats: the field polygons as GeoPackage, GeoJSON or FlatGeobuf, with one schema whether
fields were found or not; `labels` and `classes` as Cloud-Optimised GeoTIFFs on the mosaic's
grid (the sources' extent).

This module imports only fsspec and the run's store at the top (GeoPandas, rasterio and Zarr
inside the functions that need them), so the store reads the list of formats without loading
the method. One image's outputs (`lisegagr segment`) are `lisegagr_core.image_outputs`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from lisegagr_core.errors import InputError
from lisegagr_core.run.store import EXPORT_FILES, RegionPaths
from lisegagr_core.storage import check_writable, storage_errors

if TYPE_CHECKING:
    import geopandas as gpd

#: Writes an export's files, one URL per name in its `ExportFormat.files`, in that order.
Write = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class ExportFormat:
    """One format of `export_run`.

    `files`: the names of the files it writes, which are also their names in the run folder,
    where they go by default. One file goes where the destination says; several go into the
    destination folder under these names.
    `read`: reads what it needs of the run (failing in one sentence on a run it cannot use,
    before anything is written) and returns what writes the files.
    """

    files: tuple[str, ...]
    read: Callable[[RegionPaths], Write]


def export_run(
    run: str,
    format: str,
    destination: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write the run in `run` (a folder or any fsspec URL) as `format`, a key of
    `EXPORT_FORMATS`; returns the URLs written.

    `destination`: the file a one-file format goes to, or the folder a format of several files
    goes into (local or any fsspec URL; a local folder is made, a bucket never); by default the
    run folder, under the format's names. Bad input (an unknown format, a folder that is not a
    run's, a run file that cannot be read, a destination that cannot be written) raises
    `InputError`, one sentence naming the file and the problem.
    """
    chosen = EXPORT_FORMATS.get(format)
    if chosen is None:
        raise InputError(
            f"{run} cannot be exported as {format!r}; the formats are {', '.join(EXPORT_FORMATS)}."
        )
    paths = RegionPaths(run, dict(storage_options or {}))
    if destination is None:
        targets = paths.exports(format)
    elif len(chosen.files) == 1:
        targets = [destination]
    else:
        targets = [f"{destination.rstrip('/')}/{name}" for name in chosen.files]
    write = chosen.read(paths)
    for folder in dict.fromkeys(_folder(target) for target in targets):
        check_writable(folder, paths.storage_options)  # makes a local folder, never a bucket
    write(targets)
    return targets


def _folder(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


# -- the field polygons ------------------------------------------------------------------


def as_multipolygons(fields: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """`fields` with every geometry a MultiPolygon (a Polygon becomes one of one part)."""
    import geopandas as gpd
    import shapely

    geometries = fields.geometry.values
    parts, index = shapely.get_parts(geometries, return_index=True)
    multi = shapely.multipolygons(parts, indices=index) if len(fields) else geometries
    return fields.set_geometry(gpd.GeoSeries(multi, index=fields.index, crs=fields.crs))


def read_fields(paths: RegionPaths) -> gpd.GeoDataFrame:
    """The run's `fields.parquet`; one sentence when it is missing or not GeoParquet."""
    import geopandas as gpd

    source = paths.fields
    options = {"storage_options": dict(paths.storage_options)} if paths.storage_options else {}
    try:
        with storage_errors(source):
            try:
                return gpd.read_parquet(source, **options)
            except FileNotFoundError:
                raise InputError(
                    f"{source}: no such file; is {paths.root} the output of `lisegagr run`?"
                ) from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{source} could not be read ({exc.__class__.__name__}); "
            f"is {paths.root} a run's output?"
        ) from None


def write_fields(fields: gpd.GeoDataFrame, target: str, driver: str) -> None:
    """Write `fields` to `target` with the OGR `driver`, with the same layer schema whether
    `fields` has rows or not: geometry type MultiPolygon, every column typed from the table's
    types (GeoPackage, FlatGeobuf), so nightly exports append into one layer. GeoJSON is
    RFC 7946: WGS 84 and no `crs` member; it has no schema of its own, so an empty one is a
    FeatureCollection without features (it appends as nothing)."""
    frame = as_multipolygons(fields)
    options: dict[str, Any] = {"geometry_type": "MultiPolygon"}
    if driver == "GeoJSON" and frame.crs is not None:
        frame, options = frame.to_crs(4326), {**options, "RFC7946": "YES"}
    with storage_errors(target):
        frame.to_file(target, driver=driver, **options)


def _fields_as(driver: str) -> Callable[[RegionPaths], Write]:
    """An `ExportFormat.read` for the field polygons as one file of the OGR `driver`."""

    def read(paths: RegionPaths) -> Write:
        fields = read_fields(paths)

        def write(targets: Sequence[str]) -> None:
            (target,) = targets
            write_fields(fields, target, driver)

        return write

    return read


# -- the rasters -------------------------------------------------------------------------


def _rasters_as_cogs(paths: RegionPaths) -> Write:
    """An `ExportFormat.read` for `labels` and `classes` as Cloud-Optimised GeoTIFFs, on the
    mosaic's grid (the sources' extent), each written locally and then put where it goes."""
    from rasterio.windows import Window

    from lisegagr_core.mosaic import open_mosaic, write_cog
    from lisegagr_core.run.manifest import read_manifest

    grid = read_manifest(paths.root, dict(paths.storage_options)).tile_grid
    with storage_errors(paths.mosaic):
        group = open_mosaic(paths.mosaic, paths.storage_options, mode="r")

    def write(targets: Sequence[str]) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            for name, target in zip(("labels", "classes"), targets, strict=True):
                local = str(Path(scratch) / f"{name}.tif")
                window = Window(0, 0, grid.width, grid.height)
                write_cog(group, name, local, window, grid.transform, grid.crs)
                with storage_errors(target):
                    target_fs, path = fsspec.core.url_to_fs(target, **paths.storage_options)
                    target_fs.put_file(local, path)

    return write


_WRITERS: dict[str, Callable[[RegionPaths], Write]] = {
    "gpkg": _fields_as("GPKG"),
    "geojson": _fields_as("GeoJSON"),
    "fgb": _fields_as("FlatGeobuf"),
    "cog": _rasters_as_cogs,
}

#: Every format `export_run` writes, by the name `lisegagr export --format` takes: the files
#: it writes (`store.EXPORT_FILES`, the run folder's layout) and how (`_WRITERS`). A format is
#: added with its files there and its writer here.
EXPORT_FORMATS: dict[str, ExportFormat] = {
    name: ExportFormat(files, _WRITERS[name]) for name, files in EXPORT_FILES.items()
}
