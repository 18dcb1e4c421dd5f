"""One tile through the method: read it, hash it, segment it, keep the result.

    tile = read_tile(rasters, grid.tile(3, 5))
    key = tile_hash(tile, segmentation_settings)
    [result] = segment_tiles([tile], source, config, [key])
    save_tile_result(path, result)

A tile hash covers the tile's pixels as read (bytes, dtype, shape, window, valid mask) and
the canonical JSON of every setting that changes the stage's output, plus the algorithm
version: equal hashes mean equal results, so a finished tile is never computed again.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from numpy.typing import NDArray

from lisegagr_core.config import ALGORITHM_VERSION, EngineConfig
from lisegagr_core.engine import Instance, Segmentation, segment_images
from lisegagr_core.grid import TileSpec
from lisegagr_core.masks import resplit_labels
from lisegagr_core.rasters import RasterSet
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


def read_tile(rasters: RasterSet, spec: TileSpec) -> TileImage:
    """Read `spec.read` and pad it to the tile size (padding black and not valid)."""
    rgb = np.zeros((spec.size, spec.size, 3), np.uint8)
    valid = np.zeros((spec.size, spec.size), bool)
    pixels, pixels_valid = rasters.read(spec.read)
    where = spec.tile_slices(spec.read)
    rgb[where] = pixels
    valid[where] = pixels_valid
    return TileImage(spec, rgb, valid)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def tile_hash(tile: TileImage, settings: dict[str, Any]) -> str:
    """sha256 of the tile's pixels, its place and `settings` (with the algorithm version).

    The place is the tile's key on the anchored grid and its read size and padding, not
    window offsets, which move when a region grows.
    """
    digest = hashlib.sha256()
    window = tile.spec.read
    digest.update(
        canonical_json(
            {
                "algorithm": ALGORITHM_VERSION,
                "tile": tile.spec.key,
                "read": [window.width, window.height],
                "pad": [tile.spec.pad_top, tile.spec.pad_left, tile.spec.size],
                "dtype": str(tile.rgb.dtype),
                "shape": list(tile.rgb.shape),
                "settings": settings,
            }
        ).encode()
    )
    digest.update(np.ascontiguousarray(tile.rgb).tobytes())
    digest.update(np.packbits(tile.valid).tobytes())
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


def save_tile_result(
    url: str, result: TileResult, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a tile result as one compressed .npz (labels + JSON records), atomically locally."""
    buffer = io.BytesIO()
    records = json.dumps(
        {
            "key": result.key,
            "tile_hash": result.tile_hash,
            "seconds": result.seconds,
            "instances": [asdict(i) for i in result.instances],
        }
    )
    np.savez_compressed(
        buffer,
        labels=result.labels,
        valid=np.packbits(result.valid),
        records=np.frombuffer(records.encode(), np.uint8),
    )
    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(buffer.getvalue())
        partial.replace(path)
        return
    with fsspec.open(url, "wb", **(storage_options or {})) as stream:
        stream.write(buffer.getvalue())


def load_tile_result(url: str, storage_options: dict[str, Any] | None = None) -> TileResult:
    with fsspec.open(url, "rb", **(storage_options or {})) as stream:
        data = np.load(io.BytesIO(stream.read()))
    records = json.loads(data["records"].tobytes().decode())
    instances = [Instance(**{**i, "bbox": tuple(i["bbox"])}) for i in records["instances"]]
    labels = data["labels"]
    valid = np.unpackbits(data["valid"], count=labels.size).astype(bool).reshape(labels.shape)
    return TileResult(
        records["key"], records["tile_hash"], labels, valid, instances, records["seconds"]
    )


def tile_truth(truth: NDArray[np.integer], spec: TileSpec) -> NDArray[np.int64]:
    """A region-wide instance raster cut to a tile (padding 0): what a ground-truth source sees.

    truth: (H, W) integer ids over the output grid. Returns (T, T) int64.
    """
    out = np.zeros((spec.size, spec.size), np.int64)
    out[spec.tile_slices(spec.read)] = truth[spec.read.toslices()]
    return out
