"""Small georeferenced scenes and their truth rasters for the flow tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from lisegagr_core.synthetic import make_farmland_scene

# On a multiple of 256 m, so 256-px tiles on the anchored grid are exactly the file's blocks.
ORIGIN = Affine(1.0, 0.0, 256 * 1953, 0.0, -1.0, 256 * 17578)


def write_scene(
    folder: Path, size: int = 768, seed: int = 0, name: str = "scene"
) -> tuple[Path, Path]:
    """(imagery GeoTIFF, truth GeoTIFF of field ids): deflate-compressed, 256-px blocks."""
    scene = make_farmland_scene(size, seed=seed)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        crs="EPSG:32615",
        transform=ORIGIN,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    imagery, truth = folder / f"{name}.tif", folder / f"{name}.truth.tif"
    with rasterio.open(imagery, "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(np.moveaxis(scene.rgb, -1, 0))
    with rasterio.open(truth, "w", count=1, dtype="uint32", **profile) as dst:
        dst.write(scene.instances[None])
    return imagery, truth


def corrupt_block(path: Path, row: int, col: int) -> bytes:
    """Overwrite one compressed block of a tiled GeoTIFF with garbage; returns the original."""
    original = path.read_bytes()
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    damaged = bytearray(original)
    damaged[offset : offset + size] = bytes((i * 37) % 251 for i in range(size))
    path.write_bytes(bytes(damaged))
    return original
