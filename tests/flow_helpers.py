"""Small georeferenced scenes and their truth rasters for the flow tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from lisegagr_core.rasters import open_rasters
from lisegagr_core.standins.farmland import make_farmland_scene
from lisegagr_core.standins.ground_truth import GroundTruthSpec

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


def write_rgb_geotiff(
    path: Path,
    rgb: np.ndarray,
    transform: Affine,
    crs: str = "EPSG:32633",
    **profile: object,
) -> Path:
    """An (H, W, 3) image as a GeoTIFF on `transform` in `crs` (plain, without nodata, unless
    `profile` adds creation options or a nodata value)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=rgb.shape[1],
        height=rgb.shape[0],
        count=3,
        dtype=rgb.dtype,
        crs=crs,
        transform=transform,
        **profile,
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return path


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


def truth_spec(path: Path | list[Path], truth: np.ndarray) -> GroundTruthSpec:
    """A ground-truth mask source of `truth` (field ids on the grid of the raster, or rasters,
    at `path`): written as a GeoTIFF beside the first, with the rasters' union transform."""
    paths = path if isinstance(path, list) else [path]
    rasters = open_rasters([str(p) for p in paths])
    truth_path = paths[0].with_suffix(".truth.tif")
    with rasterio.open(
        truth_path,
        "w",
        driver="GTiff",
        width=truth.shape[1],
        height=truth.shape[0],
        count=1,
        dtype="int32",
        crs=rasters.crs,
        transform=rasters.transform,
    ) as dst:
        dst.write(truth.astype(np.int32)[None])
    return GroundTruthSpec(str(truth_path))


def stub_manifest(
    out: Path, sources: list[str], state: str = "complete", tiles: dict[str, str] | None = None
) -> None:
    """A run's manifest in `out` as a run of the tiny SAM over `sources` leaves it, with
    `tiles` (key → status) and no outputs beside it (what a killed or foreign run leaves)."""
    from lisegagr_core.grid import TileGrid
    from lisegagr_core.run import RegionPaths, RunManifest, TileStatus

    RunManifest(
        sources=sources,
        mask_source={"kind": "sam", "name": "tiny", "weights_dir": None, "device": None},
        model="tiny",
        config={},
        input={},
        grid=TileGrid(256, 256, core=256, halo=0).to_dict(),
        tiles={key: TileStatus(key, status) for key, status in (tiles or {}).items()},
        state=state,
    ).write(RegionPaths(str(out)))
