"""A run's rasters for any GIS: `labels` and `classes` as Cloud-Optimised GeoTIFFs."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
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
