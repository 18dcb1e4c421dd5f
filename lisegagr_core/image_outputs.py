"""Writing one image's result: the label raster, its instance table, polygons and an overlay.

What `lisegagr segment` writes next to each image (`single_image.py`), and the colours of
`preview`. A region run's files for a GIS (GeoPackage, GeoJSON, FlatGeobuf, COGs) are its
exports, all in `lisegagr_core.run.export`.

`labels` everywhere is an (H, W) uint32 partition of the image: 0 is background and each field
instance has its own id (1..N). Polygons come from `rasterio.features.shapes`, so they follow
pixel edges exactly and share edges with their neighbours.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, shape
from skimage.segmentation import find_boundaries

from lisegagr_core.errors import InputError

log = logging.getLogger(__name__)

#: LabelMe format version written into LabelMe files (X-AnyLabeling reads it too).
LABELME_VERSION = "5.4.1"

#: Colour of instance outlines in overlays: white, a shade off pure so it reads as a line.
BOUNDARY_RGB = (245, 245, 240)

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def write_label_raster(
    path: str | Path,
    labels: NDArray[np.uint32],
    *,
    crs: CRS | str | None = None,
    transform: Affine | None = None,
) -> None:
    """Write labels: (H, W) uint32 as a tiled, deflate-compressed single-band GeoTIFF.

    crs and transform are written when given, so the raster lines up with its source image.
    """
    _check_labels(labels)
    height, width = labels.shape
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint32",
        "compress": "deflate",
        "predictor": 2,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(labels, 1)


def write_instance_table(
    path: str | Path,
    records: Sequence[Mapping[str, object]],
    columns: Sequence[str] | None = None,
) -> None:
    """Write one row per record to a .csv or .parquet file, chosen by the path's suffix.

    `columns` fixes the header (and its order), so a table without rows still has one.
    """
    suffix = Path(path).suffix.lower()
    table = pd.DataFrame.from_records(
        [dict(record) for record in records], columns=list(columns) if columns else None
    )
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        raise InputError(
            f"{path}: instance tables are written as .csv or .parquet, not {suffix!r}."
        )


def label_polygons(
    labels: NDArray[np.uint32],
    transform: Affine | None = None,
    *,
    simplify_tolerance: float = 0.5,
) -> list[tuple[int, Polygon | MultiPolygon]]:
    """One valid polygon per instance id, in increasing id order.

    labels: (H, W) uint32. An instance in several pieces (touching only at corners, or apart)
    gives a MultiPolygon. Outlines are simplified by `simplify_tolerance` pixels keeping their
    topology (the default 0.5 px drops only the vertices on straight pixel edges); transform
    maps the pixel outlines to map coordinates (None: pixel coordinates, x = column, y = row).
    """
    _check_labels(labels)
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"instance ids above {np.iinfo(np.int32).max} cannot be vectorised")
    pieces: dict[int, list[Polygon]] = {}
    for geojson, value in shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4):
        pieces.setdefault(int(value), []).append(shape(geojson))
    outlines: list[tuple[int, Polygon | MultiPolygon]] = []
    for instance_id in sorted(pieces):
        geometry = shapely.union_all(pieces[instance_id])
        if simplify_tolerance > 0:
            geometry = shapely.simplify(geometry, simplify_tolerance, preserve_topology=True)
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        if transform is not None:
            geometry = affinity.affine_transform(geometry, transform.to_shapely())
        if isinstance(geometry, Polygon | MultiPolygon) and not geometry.is_empty:
            outlines.append((instance_id, geometry))
        else:
            log.warning("instance %d has no polygonal outline; left out", instance_id)
    return outlines


def write_labelme(
    path: str | Path, labels: NDArray[np.uint32], image_path: str, *, label: str = "1"
) -> None:
    """Write labels: (H, W) uint32 as a LabelMe / X-AnyLabeling JSON of pixel polygons.

    Each instance is one polygon shape; an instance in several pieces gives one shape per piece
    sharing the instance id as group_id (single pieces have group_id null). LabelMe polygons
    have no holes, so holes are left out. `read_labelme` reads the file back to the same pieces.
    """
    height, width = labels.shape
    records: list[dict[str, object]] = []
    holes_dropped = 0
    for instance_id, geometry in label_polygons(labels):
        parts = list(shapely.get_parts(geometry))
        for part in parts:
            holes_dropped += len(part.interiors)
            records.append(
                {
                    "label": label,
                    "points": [[float(x), float(y)] for x, y in part.exterior.coords[:-1]],
                    "group_id": instance_id if len(parts) > 1 else None,
                    "description": "",
                    "shape_type": "polygon",
                    "flags": {},
                }
            )
    if holes_dropped:
        log.info("%s: %d polygon holes left out (LabelMe has no holes)", path, holes_dropped)
    document: dict[str, object] = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": records,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def instance_colours(instance_ids: NDArray[np.integer]) -> NDArray[np.uint8]:
    """A distinct, stable colour per id: (N,) ids → (N, 3) uint8 RGB.

    Hues walk the circle by the golden ratio, so consecutive ids get far-apart hues and an id
    has the same colour in every image.
    """
    hues = np.mod(np.asarray(instance_ids, dtype=np.float64) * _GOLDEN_RATIO_CONJUGATE, 1.0)
    hsv = np.stack(
        [np.rint(hues * 179.0), np.full_like(hues, 200.0), np.full_like(hues, 240.0)], axis=-1
    ).astype(np.uint8)
    return np.asarray(cv2.cvtColor(hsv[:, None, :], cv2.COLOR_HSV2RGB)[:, 0, :], dtype=np.uint8)


def render_overlay(
    rgb: NDArray[np.uint8], labels: NDArray[np.uint32], *, alpha: float = 0.35
) -> NDArray[np.uint8]:
    """The image with each instance tinted its own colour and outlined; (H, W, 3) uint8.

    rgb: (H, W, 3) uint8; labels: (H, W) uint32. alpha is the tint's weight; outlines are the
    instances' own boundary pixels (two pixels where instances meet); background is untouched.
    """
    _check_labels(labels)
    if rgb.shape != (*labels.shape, 3) or rgb.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 image matching labels {labels.shape}, "
            f"got {rgb.shape} {rgb.dtype}"
        )
    instance_ids, inverse = np.unique(labels, return_inverse=True)
    colours = instance_colours(instance_ids).astype(np.float32)[inverse.reshape(labels.shape)]
    foreground = labels > 0
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    overlay = np.where(foreground[..., None], np.rint(blended), rgb).astype(np.uint8)
    overlay[find_boundaries(labels, mode="inner") & foreground] = BOUNDARY_RGB
    return overlay


def write_overlay_png(
    path: str | Path, rgb: NDArray[np.uint8], labels: NDArray[np.uint32], *, alpha: float = 0.35
) -> None:
    """Write `render_overlay(rgb, labels)` as a PNG file."""
    overlay = render_overlay(rgb, labels, alpha=alpha)
    encoded, buffer = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise OSError(f"{path}: the overlay could not be encoded as PNG")
    Path(path).write_bytes(buffer.tobytes())


def _check_labels(labels: NDArray[np.uint32]) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint32:
        raise ValueError(f"labels must be (H, W) uint32, got {labels.shape} {labels.dtype}")
