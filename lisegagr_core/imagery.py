"""Reading farmland imagery into one (H, W, 3) uint8 RGB array, and resizing it for SAM.

Every raster format goes through rasterio (GDAL reads PNG, JPEG and GeoTIFF alike), so a
GeoTIFF keeps its CRS and transform and a photo simply has none. Whatever the file holds (grey,
grey + alpha, RGBA, many bands, 16-bit or float values) comes out as 8-bit RGB, and
`LoadedImage.notes` says what was done to get there. A file that cannot become such an image
raises `InputError` with one sentence naming the file and the problem.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from lisegagr_core.errors import InputError

log = logging.getLogger(__name__)

#: Suffixes of the raster files the project reads (images, label rasters, region sources):
#: every one goes through rasterio. Lookups by name try them in this order.
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt", ".img")

#: Percentiles (of valid pixels, per band) that map to 0 and 255 when stretching to 8 bits.
STRETCH_LOW = 2.0
STRETCH_HIGH = 98.0

#: GDAL's whole-image PNG fast path returns garbage instead of failing on a truncated file.
_GDAL_READ_OPTIONS = {"GDAL_PNG_WHOLE_IMAGE_OPTIM": "NO"}


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image file read as 8-bit RGB, with its georeference and what reading it did.

    rgb: (H, W, 3) uint8. crs and transform are None for a file without georeference (PNG,
    JPEG); transform maps (column, row) pixel corners to map coordinates.
    """

    path: str
    rgb: NDArray[np.uint8]
    crs: CRS | None
    transform: Affine | None
    source_dtype: str
    source_band_count: int
    notes: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return (int(self.rgb.shape[0]), int(self.rgb.shape[1]))


def read_image(
    path: str | Path, *, bands: Sequence[int] | None = None, min_size: int = 64
) -> LoadedImage:
    """Read an image file as (H, W, 3) uint8 RGB.

    bands: 1-based band numbers to use as R, G, B (three of them) or as grey (one), e.g.
    (4, 3, 2); None picks by band count: 1 → grey, 2 → grey + alpha, 3 → RGB, 4 → RGBA, more →
    the first three. Values other than uint8 are stretched to 8 bits between the 2nd and 98th
    percentile of each band's valid (non-nodata, finite) pixels; invalid pixels become 0.
    """
    name = str(path)
    if "://" not in name and not name.startswith("/vsi"):
        if Path(name).is_dir():
            raise InputError(f"{name} is a folder, not an image file.")
        if not Path(name).is_file():
            raise InputError(f"{name}: no such file.")
    notes: list[str] = []
    try:
        with warnings.catch_warnings(), rasterio.Env(**_GDAL_READ_OPTIONS):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(name) as src:
                if src.width == 0 or src.height == 0:
                    raise InputError(f"{name}: the image is empty (0 px).")
                if src.width < min_size or src.height < min_size:
                    raise InputError(
                        f"{name} is {src.width}×{src.height} px; images must be at least "
                        f"{min_size} px on each side."
                    )
                indexes = _choose_bands(name, src.count, tuple(src.colorinterp), bands, notes)
                pixels = src.read(indexes)
                valid = np.all(src.read_masks(indexes) > 0, axis=0)
                colormap = (
                    src.colormap(1)
                    if bands is None
                    and src.count == 1
                    and src.dtypes[0] == "uint8"
                    and src.colorinterp[0] == ColorInterp.palette
                    else None
                )
                crs = src.crs
                transform = None if src.transform.is_identity and crs is None else src.transform
                source_dtype = src.dtypes[0]
                source_band_count = src.count
    except RasterioError as exc:
        raise InputError(f"{name} {_describe_gdal_failure(exc)}.") from None

    if np.issubdtype(pixels.dtype, np.floating):
        valid &= np.all(np.isfinite(pixels), axis=0)
    if not valid.any():
        raise InputError(f"{name}: the image has no valid pixels (all nodata).")

    if colormap is not None:
        pixels = _apply_colormap(pixels[0], colormap)
        notes.append("palette image expanded through its colour table")
    elif pixels.dtype != np.uint8:
        pixels = stretch_to_uint8(pixels, valid)
        notes.append(
            f"{source_dtype} stretched to 8 bits by the "
            f"{STRETCH_LOW:g}–{STRETCH_HIGH:g} percentiles"
        )
    if len(pixels) == 1:
        pixels = np.repeat(pixels, 3, axis=0)
        notes.append("grey image expanded to 3 channels")
    rgb = np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
    rgb[~valid] = 0
    log.debug("read %s: %s", name, "; ".join(notes) or "8-bit RGB as is")
    return LoadedImage(
        path=name,
        rgb=rgb,
        crs=crs,
        transform=transform,
        source_dtype=source_dtype,
        source_band_count=source_band_count,
        notes=tuple(notes),
    )


def _choose_bands(
    name: str,
    count: int,
    colorinterp: tuple[ColorInterp, ...],
    bands: Sequence[int] | None,
    notes: list[str],
) -> list[int]:
    """The 1-based band indexes to read, by the rules of `read_image`; notes what it drops."""
    if bands is not None:
        chosen = [int(b) for b in bands]
        if len(chosen) not in (1, 3):
            raise InputError(f"{name}: bands must name one or three bands, got {len(chosen)}.")
        for band in chosen:
            if not 1 <= band <= count:
                raise InputError(
                    f"{name}: band {band} is out of range; the image has {count} "
                    f"band{'s' if count != 1 else ''} (numbered from 1)."
                )
        notes.append(f"bands {', '.join(map(str, chosen))} used")
        return chosen
    if count == 1:
        return [1]
    if count == 2:
        notes.append("band 1 read as grey, band 2 (alpha) dropped")
        return [1]
    if count == 4 and colorinterp[3] == ColorInterp.alpha:
        notes.append("alpha band dropped")
    elif count > 3:
        notes.append(f"bands 1–3 of {count} used as RGB")
    return [1, 2, 3]


def _describe_gdal_failure(exc: RasterioError) -> str:
    """The end of a sentence that starts with the file name, from rasterio's message."""
    message = str(exc)
    if "not recognized as being in a supported file format" in message:
        return "is not an image file (no raster format recognises it)"
    if "Read failed" in message or "IReadBlock" in message:
        return "could not be read to the end (the file is truncated or corrupt)"
    return f"could not be read as an image ({message.rstrip('.')})"


def _apply_colormap(indexes: NDArray[np.uint8], colormap: dict[int, tuple[int, ...]]) -> NDArray:
    """(H, W) palette indexes → (3, H, W) uint8 through a rasterio colour table."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for index, rgba in colormap.items():
        table[index] = rgba[:3]
    return np.moveaxis(table[indexes], -1, 0)


def percentile_limits(
    array: NDArray,
    valid: NDArray[np.bool_] | None,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
) -> NDArray[np.float64]:
    """Per-band (low, high) percentiles over valid, finite pixels.

    array: (B, H, W) any numeric dtype; valid: (H, W) bool or None (all valid). Returns (B, 2)
    float64; a band without a valid pixel gets (0, 0).
    """
    limits = np.zeros((len(array), 2), dtype=np.float64)
    for band_index, band in enumerate(array):
        keep = np.isfinite(band) if valid is None else valid & np.isfinite(band)
        values = band[keep]
        if values.size:
            limits[band_index] = np.percentile(values, (low, high))
    return limits


def apply_stretch(array: NDArray, limits: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Map each band's (low, high) limits linearly to 0 and 255, clipping outside them.

    array: (B, H, W) any numeric dtype; limits: (B, 2). A band whose limits are equal (constant)
    maps to 0; non-finite values map to 0. Returns (B, H, W) uint8.
    """
    lows = np.asarray(limits[:, 0], dtype=np.float32)[:, None, None]
    spans = np.asarray(limits[:, 1] - limits[:, 0], dtype=np.float32)[:, None, None]
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (array.astype(np.float32) - lows) * (255.0 / np.where(spans > 0, spans, 1.0))
    scaled = np.where((spans > 0) & np.isfinite(scaled), scaled, 0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def stretch_to_uint8(
    array: NDArray,
    valid: NDArray[np.bool_] | None,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
) -> NDArray[np.uint8]:
    """(B, H, W) any numeric dtype → (B, H, W) uint8 by each band's low–high percentiles."""
    return apply_stretch(array, percentile_limits(array, valid, low, high))


def resize_to_working_size(
    rgb: NDArray[np.uint8], working_size: int | None = 1000
) -> tuple[NDArray[np.uint8], float]:
    """Resize so the longer side is `working_size` px, keeping the aspect ratio.

    rgb: (H, W, 3) uint8. Shrinking uses area averaging, enlarging Lanczos. Returns the resized
    (h, w, 3) uint8 image and the scale factor (new / old); None leaves the image as it is.
    """
    if working_size is None:
        return rgb, 1.0
    if working_size <= 0:
        raise ValueError(f"working_size must be positive, got {working_size}")
    height, width = rgb.shape[:2]
    scale = working_size / max(height, width)
    if scale == 1.0:
        return rgb, 1.0
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LANCZOS4
    resized = np.asarray(cv2.resize(rgb, new_size, interpolation=interpolation), dtype=np.uint8)
    return resized.reshape(new_size[1], new_size[0], *rgb.shape[2:]), scale


def resize_labels(labels: NDArray[np.uint32], shape: tuple[int, int]) -> NDArray[np.uint32]:
    """Nearest-neighbour resize of an id raster, keeping the exact ids.

    labels: (h, w) uint32 → (H, W) uint32 for shape (H, W); each output pixel takes the input
    pixel under its centre.
    """
    height, width = shape
    rows = ((np.arange(height) + 0.5) * (labels.shape[0] / height)).astype(np.intp)
    cols = ((np.arange(width) + 0.5) * (labels.shape[1] / width)).astype(np.intp)
    rows = np.minimum(rows, labels.shape[0] - 1)
    cols = np.minimum(cols, labels.shape[1] - 1)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]])
