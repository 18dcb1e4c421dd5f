"""The ground sampling a model sees, against the one it was trained at.

A model trained on 1 m NAIP images of 1024 px at a 384-px input learned fields at about
2.7 m per input pixel. A tile of `tile_size` pixels of imagery at g metres per pixel, upscaled
u times, reaches the model at g / u × tile_size / input_size metres per input pixel; far from
the training scale, fields look like nothing the model has seen (Sentinel-2 at 10 m reaches
it at 27 m). `scale_note` says so in one line, with the `--upscale` that would bring it close.
"""

from __future__ import annotations

import math

from affine import Affine
from rasterio.crs import CRS

#: Metres per degree of latitude (and of longitude at the equator), WGS 84 mean.
_METRES_PER_DEGREE = 111_320.0
#: How far (either way, as a ratio) the input scale may be from the training scale unremarked.
TOLERANCE = 2.0
MAX_UPSCALE = 16


def ground_sampling_m(transform: Affine, crs: CRS | None) -> float | None:
    """Metres per pixel of a raster (the mean of its two axes); None without a CRS."""
    if crs is None or transform.is_identity:
        return None
    size_x, size_y = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        latitude = math.radians(max(-89.0, min(89.0, transform.f)))
        return (size_x * math.cos(latitude) + size_y) / 2 * _METRES_PER_DEGREE
    try:
        metres_per_unit = float(crs.linear_units_factor[1])
    except Exception:  # a CRS without linear units (engineering, unknown)
        return None
    return (size_x + size_y) / 2 * metres_per_unit


def input_sampling_m(source_m: float, upscale: int, tile_size: int, input_size: int) -> float:
    """Metres per model-input pixel of a tile of imagery at `source_m` upscaled `upscale`×."""
    return source_m / upscale * tile_size / input_size


def scale_note(
    source_m: float | None,
    upscale: int,
    tile_size: int,
    input_size: int,
    trained_m: float | None,
    model: str,
) -> str | None:
    """One line when the imagery reaches `model` more than `TOLERANCE`× away from the ground
    sampling it was trained at, with the --upscale that would come closest; None otherwise."""
    if source_m is None or trained_m is None:
        return None
    seen = input_sampling_m(source_m, upscale, tile_size, input_size)
    ratio = seen / trained_m
    if 1 / TOLERANCE <= ratio <= TOLERANCE:
        return None
    advice = f"{model} was trained at {trained_m:.2g} m per input pixel"
    if ratio > TOLERANCE:
        wanted = min(MAX_UPSCALE, max(1, round(upscale * ratio)))
        if wanted > upscale:
            fix = f"pass --upscale {wanted} to bring it to {seen * upscale / wanted:.2g} m"
        else:
            fix = "finer imagery would suit it better"
    else:
        fix = "coarser tiles would suit it better (resample the imagery, or drop --upscale)"
    return (
        f"the imagery ({source_m:.2g} m per pixel, upscaled {upscale}×) reaches the model at "
        f"{seen:.2g} m per input pixel; {advice}: {fix}."
    )
