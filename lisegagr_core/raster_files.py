"""Input raster files: where they are, and what each holds, from its metadata.

`expand_sources` turns a source (a local path, glob or folder, or any fsspec URL) into files;
`inspect_raster` reads one file's grid, bands and acquisition time without reading its pixels,
refuses a GeoTIFF cut short (its block index runs past the end of the file), and computes the
8-bit stretch of 16-bit or float imagery once, from a decimated read. `inspect_stac` does the
same for the items of a STAC source (`stac.py`), an item's assets one band stack, dated by the
item. `rasters.open_rasters` places the results on one grid.
"""

from __future__ import annotations

import datetime
import glob
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from lisegagr_core.errors import InputError, first_line
from lisegagr_core.imagery import RASTER_SUFFIXES, percentile_limits
from lisegagr_core.storage import storage_errors

#: Longest side of the decimated read from which stretch percentiles are computed.
STRETCH_SAMPLE_SIDE = 1024


@dataclass(frozen=True, eq=False)
class SourceRaster:
    """One input raster: where it is, its grid, and the stretch that makes it 8-bit RGB.

    `offset` is (row, col) of its first pixel in the mosaic's source grid; `limits` the (B, 2)
    stretch per chosen band, None for 8-bit imagery.
    """

    url: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    offset: tuple[int, int]
    limits: NDArray[np.float64] | None
    opener: Any = field(repr=False, default=None)
    acquired: str | None = None
    """When the imagery was taken (ISO 8601, UTC), if its metadata says."""
    band_urls: tuple[str, ...] = ()
    """A band stack (STAC assets of one item): the file of each band, single-band each;
    `url` is the first. Empty for a raster of one file."""

    def open(self) -> Any:
        return open_raster(self.url, self.opener)


def open_raster(url: str, opener: Any) -> Any:
    """The rasterio dataset of `url`, through `opener` (an fsspec filesystem) when given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(url, opener=opener) if opener is not None else rasterio.open(url)


def expand_sources(
    sources: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> list[tuple[str, Any]]:
    """Each source as (path to open, fsspec filesystem or None for local files).

    A glob expands to its matches, a folder to the rasters in it (by suffix), sorted.
    """
    expanded: list[tuple[str, Any]] = []
    for source in sources:
        if "://" not in source or source.startswith("file://"):
            local = source.removeprefix("file://")
            if any(ch in local for ch in "*?["):
                matches = sorted(glob.glob(local))
                if not matches:
                    raise InputError(f"{source}: no raster matches this pattern.")
                expanded += [(os.path.abspath(m), None) for m in matches]
            elif Path(local).is_dir():
                found = sorted(
                    str(p.absolute())
                    for p in Path(local).iterdir()
                    if p.suffix.lower() in RASTER_SUFFIXES
                )
                if not found:
                    raise InputError(
                        f"{source}: the folder holds no raster ({', '.join(RASTER_SUFFIXES)})."
                    )
                expanded += [(f, None) for f in found]
            else:
                expanded.append((os.path.abspath(local), None))
            continue
        fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
        with storage_errors(source):
            expanded += [(p, fs) for p in _remote_paths(source, fs, path)]
    return expanded


def _remote_paths(source: str, fs: Any, path: str) -> list[str]:
    if any(ch in path for ch in "*?["):
        paths = sorted(fs.glob(path))
        if not paths:
            raise InputError(f"{source}: no raster matches this pattern.")
        return list(paths)
    if fs.isdir(path):
        paths = sorted(p for p in fs.ls(path, detail=False) if p.lower().endswith(RASTER_SUFFIXES))
        if not paths:
            raise InputError(f"{source}: the folder holds no raster.")
        return paths
    return [path]


def _display(path: str, fs: Any) -> str:
    if fs is None:
        return path
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return f"{protocol}://{path}"


def inspect_raster(
    path: str, fs: Any, bands: Sequence[int] | None
) -> tuple[SourceRaster, tuple[int, ...]]:
    """One raster file (`fs`: its fsspec filesystem, None for a local file) and the bands
    chosen from it (`bands`, else RGB or grey by its band count); `InputError` naming it when
    it is missing, unreadable, cut short, or has no such band."""
    name = _display(path, fs)
    with storage_errors(name):
        return _inspect_dataset(name, path, fs, bands)


def inspect_stac(
    source: str, bands: Sequence[int] | None, storage_options: Mapping[str, Any] | None
) -> list[tuple[SourceRaster, tuple[int, ...]]]:
    """The rasters of a STAC source (`stac`): one per item, its assets a band stack when
    there are several; the item's datetime dates it. An item whose imagery has no CRS is
    refused."""
    from lisegagr_core.stac import stac_rasters

    inspected = []
    for item in stac_rasters(source, storage_options):
        files = [
            (href, None) if "://" not in href else expand_sources([href], storage_options)[0]
            for href in item.hrefs
        ]
        if len(files) == 1:
            raster, chosen = inspect_raster(files[0][0], files[0][1], bands)
        else:
            raster, chosen = _inspect_stack(files, bands)
        if raster.crs is None:
            raise InputError(
                f"{source}: item {item.item} has no CRS ({raster.url} is not georeferenced)."
            )
        stac_acquired = _acquired({"datetime": item.datetime}) if item.datetime else None
        acquired = stac_acquired or raster.acquired
        inspected.append((SourceRaster(**{**raster.__dict__, "acquired": acquired}), chosen))
    return inspected


def _inspect_stack(
    files: Sequence[tuple[str, Any]], bands: Sequence[int] | None
) -> tuple[SourceRaster, tuple[int, ...]]:
    """One raster of several single-band files of one grid (band i from file i)."""
    parts = [inspect_raster(path, fs, (1,))[0] for path, fs in files]
    first = parts[0]
    chosen = tuple(bands) if bands else tuple(range(1, len(parts) + 1))
    for band in chosen:
        if not 1 <= band <= len(parts):
            raise InputError(
                f"{first.url}: band {band} is out of range; the item's assets give "
                f"{len(parts)} band(s)."
            )
    if len(chosen) not in (1, 3):
        raise InputError(f"{first.url}: choose one or three bands, not {len(chosen)}.")
    for part in parts[1:]:
        if (part.width, part.height, part.crs, part.transform) != (
            first.width,
            first.height,
            first.crs,
            first.transform,
        ):
            raise InputError(f"{part.url} is not on the grid of {first.url}, its item's band.")
    limits = None
    if any(p.limits is not None for p in parts):  # each file's stretch, in band order
        stacked = np.concatenate(
            [p.limits if p.limits is not None else np.array([[0.0, 255.0]]) for p in parts]
        )
        limits = stacked[np.asarray(chosen) - 1]
    return (
        SourceRaster(
            **{
                **first.__dict__,
                "count": len(parts),
                "limits": limits,
                "band_urls": tuple(p.url for p in parts),
            }
        ),
        chosen,
    )


def _inspect_dataset(
    name: str, path: str, fs: Any, bands: Sequence[int] | None
) -> tuple[SourceRaster, tuple[int, ...]]:
    try:
        if fs is not None and not fs.exists(path):
            raise InputError(f"{name}: no such object.")
        if fs is None and not Path(path).exists():
            raise InputError(f"{name}: no such file.")
        with open_raster(path, fs) as dataset:
            count = dataset.count
            chosen = tuple(bands) if bands else ((1, 2, 3) if count >= 3 else (1,))
            for band in chosen:
                if not 1 <= band <= count:
                    raise InputError(
                        f"{name}: band {band} is out of range; the raster has {count} band(s)."
                    )
            if len(chosen) not in (1, 3):
                raise InputError(f"{name}: choose one or three bands, not {len(chosen)}.")
            _check_complete(dataset, name, fs.size(path) if fs is not None else None)
            dtype = dataset.dtypes[chosen[0] - 1]
            limits = None
            if dtype != "uint8":
                limits = _stretch_limits(dataset, chosen)
            raster = SourceRaster(
                url=name,
                width=dataset.width,
                height=dataset.height,
                count=count,
                dtype=dtype,
                crs=dataset.crs,
                transform=dataset.transform,
                offset=(0, 0),
                limits=limits,
                opener=fs,
                acquired=_acquired({**dataset.tags(), **dataset.tags(ns="IMAGERY")}),
            )
    except PermissionError:
        raise InputError(
            f"{name}: access denied (check the credentials and the bucket policy)."
        ) from None
    except FileNotFoundError:
        raise InputError(f"{name}: no such object.") from None
    except RasterioError as exc:
        raise InputError(f"{name} is not a readable raster ({first_line(exc)}).") from None
    return raster, chosen


def _acquired(tags: Mapping[str, str]) -> str | None:
    """When the imagery was taken (ISO 8601, UTC), from a raster's or a STAC item's metadata
    `tags`, or None."""
    from lisegagr_core.fiboa import acquisition_datetime

    acquired = acquisition_datetime(tags)
    return acquired.astimezone(datetime.UTC).isoformat() if acquired else None


def _check_complete(dataset: Any, name: str, file_size: int | None) -> None:
    """Refuse a GeoTIFF whose blocks run past the end of the file (a cut-off copy or download).

    Reads only the block index (offsets and sizes), never pixels.
    """
    if dataset.driver != "GTiff":
        return
    if file_size is None:
        file_size = Path(dataset.name).stat().st_size
    block_rows, block_cols = dataset.block_shapes[0]
    rows, cols = -(-dataset.height // block_rows), -(-dataset.width // block_cols)
    bands = range(1, dataset.count + 1) if dataset.interleaving.name == "band" else (1,)
    for band in bands:
        for row in range(rows):
            for col in range(cols):
                offset = dataset.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                size = dataset.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                if offset and size and int(offset) + int(size) > file_size:
                    raise InputError(
                        f"{name} is truncated: its block at row {row}, column {col} ends at byte "
                        f"{int(offset) + int(size)} of a {file_size}-byte file; copy it again."
                    )


def _stretch_limits(dataset: Any, bands: tuple[int, ...]) -> NDArray[np.float64]:
    """(B, 2) 2–98 % limits of a decimated read of the whole raster (valid pixels only)."""
    scale = max(dataset.width, dataset.height) / STRETCH_SAMPLE_SIDE
    shape = (
        max(1, round(dataset.height / max(scale, 1))),
        max(1, round(dataset.width / max(scale, 1))),
    )
    sample = dataset.read(
        list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest
    )
    masks = dataset.read_masks(
        list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest
    )
    return percentile_limits(sample, np.all(masks > 0, axis=0))
