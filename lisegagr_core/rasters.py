"""Input rasters of a region, from any storage, read window by window onto one output grid.

    rasters = open_rasters(["s3://bucket/naip/*.tif"], bands=(1, 2, 3), upscale=1)
    rgb, valid = rasters.read(Window(0, 0, 1024, 1024))

Sources are local paths, ``s3://`` (s3fs; endpoint, region and credentials from the usual
AWS settings) or any fsspec URL: a raster, a glob, or a folder, or a list of them. Several
rasters form one mosaic; they must share a CRS and a pixel grid. Nothing reads a whole
raster: windows are read as asked (a COG is read by its internal tiles), and the 8-bit
stretch of 16-bit or float imagery is computed once per raster, from a decimated read, so
tiles agree at their borders.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import logging
import math
import os
import threading
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
from rasterio import windows
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from lisegagr_core.errors import InputError, TransientError
from lisegagr_core.imagery import RASTER_SUFFIXES, apply_stretch, percentile_limits
from lisegagr_core.storage import storage_errors

log = logging.getLogger(__name__)

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
        return _open(self.url, self.opener)


@dataclass(frozen=True, eq=False)
class SourcePixels:
    """Source pixels read for an output-grid `window`: `source` is the source-grid window
    that covers it, `rgb` (h, w, 3) uint8 stretched and `valid` (h, w) bool at that
    resolution."""

    window: Window
    source: Window
    rgb: NDArray[np.uint8]
    valid: NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class RasterSet:
    """The region: rasters on one source grid, read as an 8-bit RGB output grid.

    The output grid is the source grid upscaled by `upscale` (its transform scaled to match).
    """

    rasters: tuple[SourceRaster, ...]
    bands: tuple[int, ...]
    crs: CRS | None
    source_transform: Affine
    source_height: int
    source_width: int
    upscale: int = 1
    upscale_model: str | None = None
    """Super-resolution weights (spandrel) used instead of Lanczos; its scale is `upscale`."""

    @property
    def height(self) -> int:
        return self.source_height * self.upscale

    @property
    def width(self) -> int:
        return self.source_width * self.upscale

    @property
    def transform(self) -> Affine:
        """Output-grid pixel → map coordinates."""
        return self.source_transform @ Affine.scale(1 / self.upscale)

    def crop(self, bounds: tuple[float, float, float, float]) -> RasterSet:
        """The region inside `bounds` (minx, miny, maxx, maxy in the rasters' CRS), grown to
        whole source pixels. Raises `InputError` when the box misses the rasters."""
        extent = Window(0, 0, self.source_width, self.source_height)
        box = windows.from_bounds(*bounds, transform=self.source_transform)
        box = box.round_offsets(op="floor").round_lengths(op="ceil")
        if not windows.intersect(box, extent):
            raise InputError(
                f"the box {tuple(bounds)} lies outside the rasters "
                f"({', '.join(r.url for r in self.rasters)})."
            )
        box = box.intersection(extent)
        row0, col0 = int(box.row_off), int(box.col_off)
        return RasterSet(
            rasters=tuple(
                SourceRaster(**{**r.__dict__, "offset": (r.offset[0] - row0, r.offset[1] - col0)})
                for r in self.rasters
            ),
            bands=self.bands,
            crs=self.crs,
            source_transform=windows.transform(box, self.source_transform),
            source_height=int(box.height),
            source_width=int(box.width),
            upscale=self.upscale,
            upscale_model=self.upscale_model,
        )

    def describe(self) -> dict[str, Any]:
        """What a run records of its input."""
        return {
            "rasters": [r.url for r in self.rasters],
            "bands": list(self.bands),
            "crs": self.crs.to_wkt() if self.crs else None,
            "transform": list(self.transform)[:6],
            "shape": [self.height, self.width],
            "upscale": self.upscale,
            "upscale_model": self.upscale_model,
            "datetime": max((r.acquired for r in self.rasters if r.acquired), default=None),
        }

    def read(self, window: Window) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        """The output-grid `window` as ((h, w, 3) uint8 RGB, (h, w) bool valid pixels).

        Pixels outside every raster, nodata and masked pixels are not valid (and black).
        """
        return self.upscaled(self.read_source(window))

    def read_source(self, window: Window) -> SourcePixels:
        """The source pixels under an output-grid `window` (before any super-resolution)."""
        up = self.upscale
        col0, row0 = int(window.col_off), int(window.row_off)
        col1, row1 = col0 + int(window.width), row0 + int(window.height)
        source = Window.from_slices((row0 // up, -(-row1 // up)), (col0 // up, -(-col1 // up)))
        rgb, valid = self._read_source(source)
        return SourcePixels(window, source, rgb, valid)

    def upscaled(self, pixels: SourcePixels) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        """`pixels` on the output grid: super-resolved (`upscale_model`, else Lanczos) and cut
        to their output window."""
        up, window, source = self.upscale, pixels.window, pixels.source
        rgb, valid = pixels.rgb.copy(), pixels.valid
        if up > 1:
            from lisegagr_core.superres import upscaler_for

            rgb = upscaler_for(self.upscale_model, up)(rgb)
            valid = np.repeat(np.repeat(valid, up, axis=0), up, axis=1)
            r = int(window.row_off) - int(source.row_off) * up
            c = int(window.col_off) - int(source.col_off) * up
            rgb = rgb[r : r + int(window.height), c : c + int(window.width)]
            valid = valid[r : r + int(window.height), c : c + int(window.width)]
        rgb[~valid] = 0
        return np.ascontiguousarray(rgb), valid

    def _read_source(self, window: Window) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        height, width = int(window.height), int(window.width)
        rgb = np.zeros((height, width, 3), np.uint8)
        valid = np.zeros((height, width), bool)
        for raster in self.rasters:
            own = Window(
                window.col_off - raster.offset[1], window.row_off - raster.offset[0], width, height
            )
            extent = Window(0, 0, raster.width, raster.height)
            if not windows.intersect(own, extent):
                continue
            inside = own.intersection(extent)
            pixels, masks = _read_window(raster, self.bands, inside)
            rows, cols = Window(
                inside.col_off - own.col_off,
                inside.row_off - own.row_off,
                inside.width,
                inside.height,
            ).toslices()
            fill = masks & ~valid[rows, cols]  # the first raster with data wins
            rgb[rows, cols][fill] = pixels[fill]
            valid[rows, cols] |= masks
        return rgb, valid


def _read_window(
    raster: SourceRaster, bands: tuple[int, ...], window: Window
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """((h, w, 3) uint8, (h, w) bool valid) of one raster's own `window`."""
    try:
        if raster.band_urls:  # one file per band
            planes, masks = [], []
            for band in bands:
                with (
                    _opener_lock(raster.opener),
                    _open(raster.band_urls[band - 1], raster.opener) as dataset,
                ):
                    planes.append(dataset.read(1, window=window))
                    masks.append(dataset.read_masks(1, window=window))
            data = np.stack(planes)
            valid = np.all(np.stack(masks) > 0, axis=0)
        else:
            with _opener_lock(raster.opener), raster.open() as dataset:
                data = dataset.read(list(bands), window=window)
                valid = np.all(dataset.read_masks(list(bands), window=window) > 0, axis=0)
    except (RasterioError, OSError) as exc:
        message = f"{raster.url} could not be read at {window} ({_short(exc)})."
        if raster.opener is not None:  # read through a storage service: may pass on a retry
            raise TransientError(message) from None
        raise InputError(message) from None
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    if raster.limits is not None:
        data = apply_stretch(data, raster.limits)
    data = data.astype(np.uint8, copy=False)
    if len(data) == 1:
        data = np.repeat(data, 3, axis=0)
    return np.moveaxis(data, 0, -1), valid


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0].rstrip(".") if str(exc) else exc.__class__.__name__


#: rasterio registers one Python opener per (path, mode) at a time: reads through fsspec are
#: serialised within a process (threads of a Dask worker); local files need no lock.
_FSSPEC_READS = threading.Lock()


def _opener_lock(opener: Any) -> contextlib.AbstractContextManager[Any]:
    return _FSSPEC_READS if opener is not None else contextlib.nullcontext()


def _open(url: str, opener: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(url, opener=opener) if opener is not None else rasterio.open(url)


def absolute_sources(sources: Sequence[str]) -> list[str]:
    """Each source as a URL that resolves from any working directory: local paths (and
    globs) made absolute, other URLs as given."""
    return [
        os.path.abspath(s.removeprefix("file://"))
        if "://" not in s or s.startswith("file://")
        else s
        for s in sources
    ]


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


def _inspect(
    path: str, fs: Any, bands: Sequence[int] | None
) -> tuple[SourceRaster, tuple[int, ...]]:
    name = _display(path, fs)
    with storage_errors(name):
        return _inspect_dataset(name, path, fs, bands)


def _inspect_stac(
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
            raster, chosen = _inspect(files[0][0], files[0][1], bands)
        else:
            raster, chosen = _inspect_stack(files, bands)
        if raster.crs is None:
            raise InputError(
                f"{source}: item {item.item} has no CRS ({raster.url} is not georeferenced)."
            )
        acquired = _stac_datetime(item.datetime) or raster.acquired
        inspected.append((SourceRaster(**{**raster.__dict__, "acquired": acquired}), chosen))
    return inspected


def _stac_datetime(text: str | None) -> str | None:
    from lisegagr_core.fiboa import acquisition_datetime

    when = acquisition_datetime({"datetime": text}) if text else None
    return when.astimezone(datetime.UTC).isoformat() if when else None


def _inspect_stack(
    files: Sequence[tuple[str, Any]], bands: Sequence[int] | None
) -> tuple[SourceRaster, tuple[int, ...]]:
    """One raster of several single-band files of one grid (band i from file i)."""
    parts = [_inspect(path, fs, (1,))[0] for path, fs in files]
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
        with _open(path, fs) as dataset:
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
                acquired=_acquired(dataset),
            )
    except PermissionError:
        raise InputError(
            f"{name}: access denied (check the credentials and the bucket policy)."
        ) from None
    except FileNotFoundError:
        raise InputError(f"{name}: no such object.") from None
    except RasterioError as exc:
        raise InputError(f"{name} is not a readable raster ({_short(exc)}).") from None
    return raster, chosen


def _acquired(dataset: Any) -> str | None:
    """The acquisition time of a raster (ISO 8601, UTC), from its metadata, or None."""
    from lisegagr_core.fiboa import acquisition_datetime

    tags = {**dataset.tags(), **dataset.tags(ns="IMAGERY")}
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


def open_rasters(
    sources: Sequence[str],
    *,
    bands: Sequence[int] | None = None,
    upscale: int = 1,
    upscale_model: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RasterSet:
    """Inspect every source (metadata and a decimated read, no full read) into a `RasterSet`.

    Raises `InputError` for a missing object, access denied, an unreadable raster, a band out
    of range, or rasters of different CRS or pixel grids. The output grid's pixel (0, 0) is
    the top-left pixel of the rasters' union (`grid.TileGrid.anchored` places the tiles).
    """
    if upscale_model is not None:
        from lisegagr_core.superres import load_upscaler

        upscale = load_upscaler(upscale_model)[1]
    if upscale < 1:
        raise InputError(f"upscale must be a whole factor of 1 or more, not {upscale}.")
    from lisegagr_core.stac import is_stac

    inspected = []
    for source in sources:
        if is_stac(source):
            inspected += _inspect_stac(source, bands, storage_options)
        else:
            inspected += [
                _inspect(path, fs, bands) for path, fs in expand_sources([source], storage_options)
            ]
    rasters = [r for r, _ in inspected]
    chosen = inspected[0][1]
    first = rasters[0]
    for raster in rasters[1:]:
        if raster.crs != first.crs:
            raise InputError(
                f"{raster.url} is in {raster.crs} but {first.url} is in {first.crs}; "
                "reproject the rasters to one CRS first."
            )
        if not math.isclose(raster.transform.a, first.transform.a) or not math.isclose(
            raster.transform.e, first.transform.e
        ):
            raise InputError(f"{raster.url} has another pixel size than {first.url}.")
    if first.crs is None:
        if len(rasters) > 1:
            raise InputError(
                f"{first.url} has no CRS, so it cannot be placed beside other rasters."
            )
        log.warning("%s has no CRS: processed in pixel coordinates", first.url)
    origin_x = (
        min(r.transform.c for r in rasters)
        if first.transform.a > 0
        else max(r.transform.c for r in rasters)
    )
    origin_y = (
        max(r.transform.f for r in rasters)
        if first.transform.e < 0
        else min(r.transform.f for r in rasters)
    )
    base = Affine(
        first.transform.a,
        first.transform.b,
        origin_x,
        first.transform.d,
        first.transform.e,
        origin_y,
    )
    placed: list[SourceRaster] = []
    height = width = 0
    for raster in rasters:
        col_f, row_f = ~base @ (raster.transform.c, raster.transform.f)
        col, row = round(col_f), round(row_f)
        if abs(col - col_f) > 1e-3 or abs(row - row_f) > 1e-3:
            raise InputError(f"{raster.url} is not on the pixel grid of {first.url}.")
        placed.append(SourceRaster(**{**raster.__dict__, "offset": (row, col)}))
        height, width = max(height, row + raster.height), max(width, col + raster.width)
    return RasterSet(
        rasters=tuple(placed),
        bands=chosen,
        crs=first.crs,
        source_transform=base,
        source_height=height,
        source_width=width,
        upscale=upscale,
        upscale_model=upscale_model,
    )
