"""Synthetic farmland scenes with known field instances, for the demo and the tests.

A scene imitates a NAIP aerial photo of Midwest farmland at about 1 m per pixel: straight
county roads with grass verges cut the land into blocks, the blocks are split by straight
(slightly skewed) lines into fields, one cell becomes a woodlot and a farmstead sits by a road.
Each field has its own crop colour (greens, soil browns, stubble yellows, sampled from NAIP
images), planting rows at the field's own angle, harvest tracks, soil-moisture blotches and
pixel noise, so its 256-bin entropy per channel is about 5–7 bits like real imagery. The
geometry is built with shapely (`farmland_layout`) and burnt with rasterio (`farmland_paint`
paints it), so the truth is exact: every field is one connected instance and everything else
(roads, verges, woodland, farmstead, the grass strips between fields) is background.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.measure import label as label_regions

from lisegagr_core.standins.farmland_layout import (
    make_farmstead_site,
    make_roads,
    shrink_for_margin,
    split_into_cells,
)
from lisegagr_core.standins.farmland_paint import (
    burn,
    field_texture,
    grass,
    paint_farmstead,
    paint_roads,
    paint_woodland,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A synthetic farmland photo and its exact field instances.

    rgb: (H, W, 3) uint8; instances: (H, W) uint32, field ids 1..N and 0 elsewhere;
    field_ids: the ids present, ascending; non_field: (H, W) bool, the pixels of roads, verges,
    woodland, farmstead and the grass strips between fields (exactly `instances == 0`).
    """

    rgb: NDArray[np.uint8]
    instances: NDArray[np.uint32]
    field_ids: tuple[int, ...]
    non_field: NDArray[np.bool_]


def make_farmland_scene(
    size: int = 512, *, seed: int = 0, n_fields: int | None = None
) -> SyntheticScene:
    """A size × size synthetic NAIP-like farmland scene at about 1 m per pixel.

    n_fields: the exact number of field instances (None: about one per 160 × 160 px). The
    same seed gives the same scene.
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    if n_fields is None:
        n_fields = max(4, round((size / 160) ** 2))
    if n_fields < 1:
        raise ValueError(f"n_fields must be at least 1, got {n_fields}")
    rng = np.random.default_rng(seed)
    image = shapely.box(0, 0, size, size)
    min_width = max(10.0, 0.05 * size)

    roads = make_roads(rng, size, 0 if n_fields == 1 else 1 if n_fields < 4 else 2)
    road_surface = shapely.union_all([road for road, _ in roads]) if roads else Polygon()
    verges = shapely.union_all([verge for _, verge in roads]) if roads else Polygon()
    farmstead = make_farmstead_site(rng, size, roads)
    # Fields run on past the image edge, so no grass strip frames the scene.
    bleed = min(8.0, min_width / 4)
    land = (
        image.buffer(bleed, join_style="mitre")
        .difference(verges)
        .difference(farmstead.buffer(2.0, join_style="mitre"))
        .buffer(-min_width / 4, join_style="mitre")
        .buffer(min_width / 4, join_style="mitre")
    )
    cells = split_into_cells(rng, list(shapely.get_parts(land)), n_fields + 1, min_width)
    woodland_cell = cells.pop(int(rng.integers(len(cells))))
    cells.sort(key=lambda cell: (round(cell.centroid.y / min_width), cell.centroid.x))
    fields = [shrink_for_margin(rng, cell) for cell in cells]

    shape = (size, size)
    instances = np.zeros(shape, dtype=np.uint32)
    if fields:
        instances = _largest_pieces(
            rasterize(
                [(field, field_id) for field_id, field in enumerate(fields, start=1)],
                out_shape=shape,
                fill=0,
                dtype="uint32",
            ).astype(np.uint32, copy=False)
        )

    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = grass(rng, shape)
    paint_woodland(rng, canvas, burn(woodland_cell, shape))
    field_slices = ndimage.find_objects(instances)
    for field_id, (field, window) in enumerate(zip(fields, field_slices, strict=True), start=1):
        if window is None:
            continue
        mask = instances[window] == field_id
        colour = field_texture(rng, field, rows[window], cols[window])
        canvas[window][mask] = colour[mask]
    paint_roads(rng, canvas, road_surface, verges, shape)
    paint_farmstead(rng, canvas, farmstead, roads, shape)

    canvas = np.asarray(cv2.GaussianBlur(canvas, (0, 0), 0.6), dtype=np.float32)
    canvas += rng.normal(0.0, 1.5, canvas.shape).astype(np.float32)
    rgb = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    field_ids = tuple(int(i) for i in np.unique(instances) if i)
    log.debug("synthetic scene: %d px, seed %d, %d fields", size, seed, len(field_ids))
    return SyntheticScene(
        rgb=rgb, instances=instances, field_ids=field_ids, non_field=instances == 0
    )


def write_georeferenced_scene(
    path: str | Path,
    scene: SyntheticScene,
    *,
    crs: str = "EPSG:32615",
    origin: tuple[float, float] = (500000.0, 4500000.0),
    pixel_size: float = 1.0,
) -> None:
    """Write the scene's RGB as a 3-band uint8 GeoTIFF; origin is the top-left corner (x, y)."""
    height, width = scene.instances.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1]),
        "photometric": "RGB",
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(scene.rgb, -1, 0))


def _largest_pieces(instances: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """instances: (H, W) uint32 with each id cut down to its largest 4-connected piece."""
    pieces = label_regions(instances, background=0, connectivity=1)
    piece_ids = ndimage.maximum(instances, pieces, np.arange(1, pieces.max() + 1))
    piece_sizes = np.bincount(pieces.ravel())[1:]
    keep = np.zeros(len(piece_sizes) + 1, dtype=bool)
    for instance_id in np.unique(piece_ids):
        candidates = np.flatnonzero(piece_ids == instance_id)
        keep[candidates[np.argmax(piece_sizes[candidates])] + 1] = True
    return np.where(keep[pieces], instances, 0).astype(np.uint32)
