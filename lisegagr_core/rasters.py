"""Input rasters of a region, from any storage, read window by window onto one output grid.

    rasters = open_rasters(["s3://bucket/naip/*.tif"], bands=(1, 2, 3), upscale=1)
    rgb, valid = rasters.read(Window(0, 0, 1024, 1024))

Sources are local paths, ``s3://`` (s3fs; endpoint, region and credentials from the usual
AWS settings) or any fsspec URL: a raster, a glob, or a folder, or a list of them, or STAC
sources. Several rasters form one mosaic; they must share a CRS and a pixel grid. Nothing
reads a whole raster: windows are read as asked (a COG is read by its internal tiles), and
the 8-bit stretch of 16-bit or float imagery is computed once per raster, from a decimated
read (`raster_files`: finding and inspecting the files), so tiles agree at their borders.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio import windows
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window

from lisegagr_core.errors import InputError, TransientError, first_line
from lisegagr_core.imagery import apply_stretch
from lisegagr_core.raster_files import (
    SourceRaster,
    expand_sources,
    inspect_raster,
    inspect_stac,
    open_raster,
)

log = logging.getLogger(__name__)


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

    def to_dict(self) -> dict[str, Any]:
        """What a run's manifest records of its input, JSON-ready."""
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
                    open_raster(raster.band_urls[band - 1], raster.opener) as dataset,
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
        message = f"{raster.url} could not be read at {window} ({first_line(exc)})."
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


#: rasterio registers one Python opener per (path, mode) at a time: reads through fsspec are
#: serialised within a process (threads of a Dask worker); local files need no lock.
_FSSPEC_READS = threading.Lock()


def _opener_lock(opener: Any) -> contextlib.AbstractContextManager[Any]:
    return _FSSPEC_READS if opener is not None else contextlib.nullcontext()


def absolute_sources(sources: Sequence[str]) -> list[str]:
    """Each source as a URL that resolves from any working directory: local paths (and
    globs) made absolute, other URLs as given."""
    return [
        os.path.abspath(s.removeprefix("file://"))
        if "://" not in s or s.startswith("file://")
        else s
        for s in sources
    ]


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
            inspected += inspect_stac(source, bands, storage_options)
        else:
            inspected += [
                inspect_raster(path, fs, bands)
                for path, fs in expand_sources([source], storage_options)
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
