"""A picture of a run's output: the imagery with field outlines, for all of it or a box."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from rasterio import windows
from rasterio.windows import Window, from_bounds

from lisegagr_core.config import RegionConfig
from lisegagr_core.errors import InputError
from lisegagr_core.image_outputs import render_overlay
from lisegagr_core.mosaic import open_mosaic, read_window
from lisegagr_core.run.manifest import read_manifest
from lisegagr_core.run.plan import open_region
from lisegagr_core.run.store import RegionPaths


def render_preview(
    output: str,
    bbox: tuple[float, float, float, float] | None = None,
    *,
    max_side: int = 2048,
    storage_options: dict[str, Any] | None = None,
) -> NDArray[np.uint8]:
    """(h, w, 3) uint8: imagery of `bbox` (map coordinates; None: all the imagery) with outlines.

    Read block by block and decimated to at most `max_side` pixels a side, so a county-sized
    mosaic previews in bounded memory.
    """
    manifest = read_manifest(output, storage_options)
    rasters = open_region(
        manifest.sources,
        RegionConfig(**{**manifest.config, "upscale_model": None}),  # Lanczos is enough here
        storage_options,
    )
    grid = manifest.tile_grid
    height, width = grid.height, grid.width
    window = Window(0, 0, width, height)
    if bbox is not None:
        window = from_bounds(*bbox, transform=grid.transform).round_offsets().round_lengths()
        if not windows.intersect(window, Window(0, 0, width, height)):
            raise InputError(f"the box {bbox} lies outside the region of {output}.")
        window = window.intersection(Window(0, 0, width, height))
    step = max(1, math.ceil(max(window.height, window.width) / max_side))
    group = open_mosaic(RegionPaths(output, storage_options or {}).mosaic, storage_options, "r")
    row0, col0 = int(window.row_off), int(window.col_off)
    out_h, out_w = -(-int(window.height) // step), -(-int(window.width) // step)
    rgb = np.zeros((out_h, out_w, 3), np.uint8)
    labels = np.zeros((out_h, out_w), np.uint32)
    block = 1024 * step
    for r in range(0, int(window.height), block):
        for c in range(0, int(window.width), block):
            part = Window(
                col0 + c,
                row0 + r,
                min(block, int(window.width) - c),
                min(block, int(window.height) - r),
            )
            pixels, _ = rasters.read(part)
            ids = read_window(group, part)[::step, ::step]
            small = cv2.resize(pixels, (ids.shape[1], ids.shape[0]), interpolation=cv2.INTER_AREA)
            rows, cols = (
                slice(r // step, r // step + ids.shape[0]),
                slice(c // step, c // step + ids.shape[1]),
            )
            rgb[rows, cols] = small
            labels[rows, cols] = ids
    return render_overlay(rgb, labels)
