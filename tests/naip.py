"""The real NAIP farmland of ../shared/data/agoro-naip, as (image, instance raster) pairs."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from lisegagr_core.annotations import AnnotatedPolygon, rasterize_instances, read_via
from lisegagr_core.imagery import read_image


@cache
def naip_polygons(root: Path) -> dict[str, list[AnnotatedPolygon]]:
    return read_via(root / "agoro-naip" / "annotations.json")


def naip_names(root: Path) -> list[str]:
    return sorted(naip_polygons(root))


def naip_scene(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint32 field ids rasterised from its polygons."""
    rgb = read_image(root / "agoro-naip" / "images" / name).rgb
    return rgb, rasterize_instances(naip_polygons(root)[name], rgb.shape[:2])
