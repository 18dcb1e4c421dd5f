"""A picture of a run's output: the imagery with field outlines, for all of it or a box."""

from __future__ import annotations

import json
import math
from typing import Any

import cv2
import fsspec
import numpy as np
from numpy.typing import NDArray
from rasterio import windows
from rasterio.windows import Window, from_bounds

from lisegagr_core.errors import InputError
from lisegagr_core.export import render_overlay
from lisegagr_core.mosaic import open_mosaic, read_window
from lisegagr_core.rasters import open_rasters
from lisegagr_core.storage import storage_errors


def read_manifest(output: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"{output.rstrip('/')}/manifest.json"
    with storage_errors(url):
        try:
            with fsspec.open(url, "r", **(storage_options or {})) as stream:
                return dict(json.load(stream))
        except FileNotFoundError:
            raise InputError(
                f"{url}: no such file; is {output} the output of `lisegagr run`?"
            ) from None


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
    source = manifest["input"]
    rasters = open_rasters(
        source["rasters"],
        bands=source["bands"],
        upscale=source["upscale"],
        align=source.get("align"),
        storage_options=storage_options,
    )
    height, width = rasters.height, rasters.width
    window = rasters.data_window
    if bbox is not None:
        window = from_bounds(*bbox, transform=rasters.transform).round_offsets().round_lengths()
        if not windows.intersect(window, Window(0, 0, width, height)):
            raise InputError(f"the box {bbox} lies outside the region of {output}.")
        window = window.intersection(Window(0, 0, width, height))
    step = max(1, math.ceil(max(window.height, window.width) / max_side))
    group = open_mosaic(f"{output.rstrip('/')}/mosaic.zarr", storage_options, mode="r")
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
