"""``fields.parquet`` as fiboa 0.3 GeoParquet: the field-boundary ecosystem's common table.

fiboa 0.3 (https://fiboa.org/specification/v0.3.0/schema.yaml) builds on Vecorel 0.1
(https://vecorel.org/specification/v0.1.0/schema.yaml): every row has a string `id`, the
`collection` it belongs to and a `geometry`; the collection's `schemas` (the specifications it
implements) sit in the Parquet metadata under the key ``collection``, JSON-encoded. fiboa adds
`metrics:area` (m²), `metrics:perimeter` (m) and `determination:method` / `determination:datetime`.

The project's own properties (class, scores, provenance) are prefixed ``lisegagr:`` and declared
in the collection's ``schemas:custom`` (Vecorel SDL, as fiboa-cli reads it), so validators know
their types. `id` is the instance's value in the mosaic's `labels` raster, as text.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
from numpy.typing import NDArray

VECOREL_SPEC = "https://vecorel.org/specification/v0.1.0/schema.yaml"
FIBOA_SPEC = "https://fiboa.org/specification/v0.3.0/schema.yaml"
SDL = "https://vecorel.org/sdl/v0.2.0/schema.json"

#: fiboa's `determination:method` of fields found by a model in imagery.
DETERMINATION_METHOD = "auto-imagery"

#: The project's properties (Vecorel SDL), declared in the collection's ``schemas:custom``.
LISEGAGR_PROPERTIES: dict[str, dict[str, Any]] = {
    "lisegagr:class": {
        "type": "uint8",
        "enum": [1, 2, 3],
        "description": "1 field, 2 non-field, 3 unclassified (no classifier), as in `classes`",
    },
    "lisegagr:field_score": {
        "type": "double",
        "minimum": 0,
        "maximum": 1,
        "description": "P(field) from the classifier, area-weighted over the tiles",
    },
    "lisegagr:predicted_iou": {"type": "double", "description": "SAM's predicted IoU"},
    "lisegagr:stability_score": {"type": "double", "description": "SAM's stability score"},
    "lisegagr:stage": {"type": "string", "description": "round 1-4 or refinement"},
    "lisegagr:tiles": {
        "type": "string",
        "description": "tile:hash of every tile the field was seen in, comma-separated",
    },
    "lisegagr:model": {"type": "string", "description": "the segmentation model and its sha256"},
    "lisegagr:classifier": {
        "type": "string",
        "description": "sha256 of the field classifier's weights, null without one",
    },
}

#: Parquet column types of the fiboa table (besides the geometry), whatever the field count.
FIELD_TYPES: dict[str, str] = {
    "id": "string",
    "collection": "string",
    "metrics:area": "float32",
    "metrics:perimeter": "float32",
    "determination:method": "string",
    "determination:datetime": "datetime64[ms, UTC]",
    "lisegagr:class": "uint8",
    "lisegagr:field_score": "float64",
    "lisegagr:predicted_iou": "float64",
    "lisegagr:stability_score": "float64",
    "lisegagr:stage": "string",
    "lisegagr:tiles": "string",
    "lisegagr:model": "string",
    "lisegagr:classifier": "string",
}

#: Columns fiboa requires (never null, stored as non-nullable Parquet fields).
REQUIRED = ("id", "collection", "geometry")


def collection_metadata(collection: str) -> dict[str, Any]:
    """The ``collection`` entry of the Parquet metadata: the schemas the table implements."""
    return {
        "schemas": {collection: [VECOREL_SPEC, FIBOA_SPEC]},
        "schemas:custom": {"$schema": SDL, "required": [], "properties": LISEGAGR_PROPERTIES},
    }


def collection_id(name: str) -> str:
    """A collection id from a run's output name: its letters, digits, `-`, `_` and `.`."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned or "lisegagr"


def metrics(
    geometries: gpd.GeoSeries,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(area in m², perimeter in m) of each geometry: in the CRS's linear unit converted to
    metres when projected, on its ellipsoid when geographic; NaN without a CRS."""
    count = len(geometries)
    if geometries.crs is None or count == 0:
        return np.full(count, np.nan), np.full(count, np.nan)
    crs = pyproj.CRS.from_user_input(geometries.crs)
    if crs.is_geographic:
        geod = crs.get_geod()
        assert geod is not None
        pairs = [geod.geometry_area_perimeter(g) for g in geometries]
        return np.abs([a for a, _ in pairs]), np.asarray([p for _, p in pairs], np.float64)
    metres = crs.axis_info[0].unit_conversion_factor
    area = np.asarray(geometries.area, np.float64) * metres**2
    return area, np.asarray(geometries.length, np.float64) * metres


_DATE_TAGS = ("ACQUISITIONDATETIME", "DATETIME", "datetime", "acquisition_datetime")


def acquisition_datetime(tags: Mapping[str, str]) -> dt.datetime | None:
    """When the imagery was taken, from a raster's metadata: GDAL's ACQUISITIONDATETIME
    (IMAGERY domain) or a `datetime` tag as STAC tools write it; UTC when no zone is given.
    None when there is none or it cannot be read (TIFFTAG_DATETIME is the file's, not the
    imagery's, and is not used)."""
    for key in _DATE_TAGS:
        value = tags.get(key)
        if not value:
            continue
        text = value.strip().replace("Z", "+00:00")
        text = re.sub(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", text)  # TIFF-style dates
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None
