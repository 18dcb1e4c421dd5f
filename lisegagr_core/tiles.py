"""One tile through the method: read it once, hash it, segment it.

    pixels = read_tile(rasters, grid.tile(3, 5))      # the source pixels, read once
    key = tile_hash(pixels, segmentation_settings)     # before any super-resolution
    [result] = segment_tiles([pixels.image()], source, config, [key])

A tile hash covers the tile's source pixels as read (bytes, shape, valid mask), its place on
the anchored tile frame and the canonical JSON of every setting that changes the stage's
output (model, engine, super-resolution), plus the algorithm version: equal hashes mean equal
results, so a finished tile is never computed, nor even super-resolved, again. Tile results
are stored by `lisegagr_core.run.store`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lisegagr_core.config import ALGORITHM_VERSION, EngineConfig
from lisegagr_core.engine import Instance, Segmentation, segment_images
from lisegagr_core.grid import TileSpec
from lisegagr_core.masks import resplit_labels
from lisegagr_core.rasters import RasterSet, SourcePixels
from lisegagr_core.sources import MaskSource
from lisegagr_core.whitening import WHITE


@dataclass(frozen=True, eq=False)
class TileImage:
    """A tile's pixels: rgb (T, T, 3) uint8 and valid (T, T) bool, padding not valid."""

    spec: TileSpec
    rgb: NDArray[np.uint8]
    valid: NDArray[np.bool_]

    @property
    def empty(self) -> bool:
        return not bool(self.valid.any())


@dataclass(frozen=True, eq=False)
class TilePixels:
    """A tile as read from its sources, before any super-resolution: what its hash covers.

    `image()` makes the tile image (super-resolved when the run upscales) on first use, so a
    tile whose result is already stored is read but never upscaled.
    """

    spec: TileSpec
    source: SourcePixels
    rasters: RasterSet

    @property
    def empty(self) -> bool:
        return not bool(self.source.valid.any())

    @functools.cached_property
    def _image(self) -> TileImage:
        spec = self.spec
        rgb = np.zeros((spec.size, spec.size, 3), np.uint8)
        valid = np.zeros((spec.size, spec.size), bool)
        pixels, pixels_valid = self.rasters.upscaled(self.source)
        where = spec.tile_slices(spec.read)
        rgb[where] = pixels
        valid[where] = pixels_valid
        return TileImage(spec, rgb, valid)

    def image(self) -> TileImage:
        """The tile array: `spec.read` padded to the tile size (padding black, not valid)."""
        return self._image


def read_tile(rasters: RasterSet, spec: TileSpec) -> TilePixels:
    """Read the source pixels under `spec.read` (one read of the sources)."""
    return TilePixels(spec, rasters.read_source(spec.read), rasters)


def tile_hash(pixels: TilePixels, settings: dict[str, Any]) -> str:
    """sha256 of the tile's source pixels, its place and `settings` (with the algorithm
    version).

    The place is the tile's key on the anchored grid, its read size and its padding, not
    window offsets, which move when a region grows.
    """
    digest = hashlib.sha256()
    spec, source = pixels.spec, pixels.source
    digest.update(
        json.dumps(
            {
                "algorithm": ALGORITHM_VERSION,
                "tile": spec.key,
                "read": [spec.read.width, spec.read.height],
                "pad": [spec.pad_top, spec.pad_left, spec.size],
                "dtype": str(source.rgb.dtype),
                "shape": list(source.rgb.shape),
                "settings": settings,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        ).encode()
    )
    digest.update(np.ascontiguousarray(source.rgb).tobytes())
    digest.update(np.packbits(source.valid).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class TileResult:
    """A segmented tile: labels (T, T) uint32 local ids 1..K (a partition), records per id,
    and valid (T, T) bool, the pixels that had data."""

    key: str
    tile_hash: str
    labels: NDArray[np.uint32]
    valid: NDArray[np.bool_]
    instances: list[Instance]
    seconds: float

    def core_labels(self, spec: TileSpec) -> NDArray[np.uint32]:
        return self.labels[spec.tile_slices(spec.core)]


def segment_tiles(
    tiles: Sequence[TileImage], source: MaskSource, config: EngineConfig, digests: Sequence[str]
) -> list[TileResult]:
    """Segment tiles; pixels that are not valid (nodata, padding) are never part of a field.

    They are shown to SAM as white (the method's "nothing left here") and cleared from the
    labels, which are then re-split so that no instance is cut in two by a nodata strip.
    The tiles' SAM passes share encoder batches; each result is the one the tile gets
    alone, and the seconds of the batch are shared evenly.
    """
    started = time.perf_counter()
    images = []
    for tile in tiles:
        rgb = tile.rgb.copy()
        rgb[~tile.valid] = WHITE
        images.append(rgb)
    segmentations = segment_images(images, source, config)
    seconds = (time.perf_counter() - started) / max(len(tiles), 1)
    return [
        _tile_result(tile, segmentation, config, digest, seconds)
        for tile, segmentation, digest in zip(tiles, segmentations, digests, strict=True)
    ]


def _tile_result(
    tile: TileImage, segmentation: Segmentation, config: EngineConfig, digest: str, seconds: float
) -> TileResult:
    """A tile's segmentation with invalid pixels cleared and the labels re-split."""
    ids = segmentation.labels.astype(np.int64)
    ids[~tile.valid] = 0
    min_area = config.in_working_pixels(ids.shape).min_component_area
    labels, origin = resplit_labels(ids, min_area)
    areas = np.bincount(labels.ravel(), minlength=len(origin) + 1)[1:]
    instances = [
        Instance(
            id=new_id,
            area=int(area),
            bbox=segmentation.instances[old - 1].bbox,
            stage=segmentation.instances[old - 1].stage,
            predicted_iou=segmentation.instances[old - 1].predicted_iou,
            stability_score=segmentation.instances[old - 1].stability_score,
        )
        for new_id, (old, area) in enumerate(zip(origin.tolist(), areas, strict=True), start=1)
    ]
    return TileResult(
        tile.spec.key,
        tile_hash=digest,
        labels=labels,
        valid=tile.valid,
        instances=instances,
        seconds=seconds,
    )
