"""Field polygons drawn by people, read from the annotation formats the project meets.

One reader per format, all returning `AnnotatedPolygon`s, so model training, the classifier
dataset builder and evaluation share them: VGG Image Annotator (VIA 1.x and 2.x, pixel
coordinates), LabelMe / X-AnyLabeling (pixel coordinates) and GeoJSON (map coordinates).
Pixel coordinates put x along columns and y along rows, with (0, 0) at the top-left corner of
the top-left pixel. A file that is not JSON or not in the expected layout raises `InputError`
naming it; shapes a reader cannot use (points, lines, circles) are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Polygon, shape

from lisegagr_core.errors import InputError

log = logging.getLogger(__name__)

#: Label of a polygon whose file names no class: a field.
FIELD_LABEL = "1"

#: Region or feature attributes that obviously hold a polygon's class, in order of preference.
_LABEL_KEYS = ("label", "class", "name", "type", "category")


@dataclass(frozen=True)
class AnnotatedPolygon:
    """One annotated outline and its class label ("1", a field, unless the file names one).

    polygon is in pixel coordinates (x = column, y = row) for VIA and LabelMe files and in the
    file's map coordinates for GeoJSON.
    """

    polygon: Polygon
    label: str = FIELD_LABEL


def read_via(path: str | Path) -> dict[str, list[AnnotatedPolygon]]:
    """Polygons per image file name from a VGG Image Annotator export or project file.

    Regions may be a list (VIA 2.x) or an object (VIA 1.x); the label comes from a region
    attribute named label, class, name, type or category when one holds a value, else "1".
    """
    name = str(path)
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("regions"), list | dict)
        for entry in data.values()
    ):
        raise InputError(
            f"{name} is not a VGG Image Annotator file (expected an object of images, "
            "each with 'regions')."
        )
    polygons_by_image: dict[str, list[AnnotatedPolygon]] = {}
    for key, entry in data.items():
        file_name = str(entry.get("filename") or key)
        regions = entry["regions"]
        region_list = list(regions.values()) if isinstance(regions, dict) else regions
        polygons = polygons_by_image.setdefault(file_name, [])
        for index, region in enumerate(region_list):
            where = f"{name}: region {index} of {file_name}"
            attributes = region.get("shape_attributes") if isinstance(region, dict) else None
            if not isinstance(attributes, dict):
                raise InputError(f"{where} has no 'shape_attributes' object.")
            kind = attributes.get("name")
            if kind != "polygon":
                log.warning("%s is a %s, not a polygon; skipped", where, kind)
                continue
            xs, ys = attributes.get("all_points_x"), attributes.get("all_points_y")
            if not (_is_number_list(xs) and _is_number_list(ys) and len(xs) == len(ys)):
                raise InputError(f"{where} has malformed all_points_x / all_points_y lists.")
            polygon = _polygon_from_points(list(zip(xs, ys, strict=True)), where)
            if polygon is not None:
                polygons.append(
                    AnnotatedPolygon(polygon, _label_from(region.get("region_attributes")))
                )
    return polygons_by_image


def read_labelme(path: str | Path) -> tuple[str, list[AnnotatedPolygon]]:
    """The image path (as written, relative to the JSON's folder) and polygons of a LabelMe file.

    Reads LabelMe and X-AnyLabeling JSON; "polygon" shapes are kept as drawn and "rectangle"
    shapes (2 or 4 points) become their bounding box. An empty shape label reads as "1".
    """
    name = str(path)
    data = _load_json(path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("shapes"), list)
        or not isinstance(data.get("imagePath"), str)
    ):
        raise InputError(f"{name} is not a LabelMe file (expected 'shapes' and 'imagePath').")
    polygons: list[AnnotatedPolygon] = []
    for index, shape_record in enumerate(data["shapes"]):
        where = f"{name}: shape {index}"
        if not isinstance(shape_record, dict):
            raise InputError(f"{where} is not an object.")
        points = shape_record.get("points")
        if not isinstance(points, list) or not all(
            isinstance(point, list) and len(point) == 2 and _is_number_list(point)
            for point in points
        ):
            raise InputError(f"{where} has malformed points (expected a list of [x, y]).")
        kind = shape_record.get("shape_type") or "polygon"
        polygon: Polygon | None
        if kind == "polygon":
            polygon = _polygon_from_points([tuple(point) for point in points], where)
        elif kind == "rectangle" and len(points) >= 2:
            xs, ys = [point[0] for point in points], [point[1] for point in points]
            polygon = shapely.box(min(xs), min(ys), max(xs), max(ys))
        else:
            log.warning("%s is a %s, not a polygon or rectangle; skipped", where, kind)
            continue
        if polygon is not None:
            label = str(shape_record.get("label") or "").strip() or FIELD_LABEL
            polygons.append(AnnotatedPolygon(polygon, label))
    return data["imagePath"], polygons


def read_geojson(path: str | Path) -> list[AnnotatedPolygon]:
    """Polygons of a GeoJSON FeatureCollection (or single Feature), in its map coordinates.

    A MultiPolygon gives one polygon per part; the label comes from a "label" or "class"
    property, else "1". Features without polygonal geometry are skipped with a warning.
    """
    name = str(path)
    data = _load_json(path)
    if isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif (
        isinstance(data, dict)
        and data.get("type") == "FeatureCollection"
        and isinstance(data.get("features"), list)
    ):
        features = data["features"]
    else:
        raise InputError(f"{name} is not a GeoJSON FeatureCollection.")
    polygons: list[AnnotatedPolygon] = []
    for index, feature in enumerate(features):
        where = f"{name}: feature {index}"
        if not isinstance(feature, dict):
            raise InputError(f"{where} is not an object.")
        if feature.get("geometry") is None:
            log.warning("%s has no geometry; skipped", where)
            continue
        try:
            geometry = shape(feature["geometry"])
        except (GEOSException, ValueError, TypeError, KeyError, AttributeError, IndexError):
            raise InputError(f"{where} has a malformed geometry.") from None
        if not isinstance(geometry, Polygon | MultiPolygon):
            log.warning("%s is a %s, not a polygon; skipped", where, geometry.geom_type)
            continue
        properties = feature.get("properties")
        label = FIELD_LABEL
        if isinstance(properties, dict):
            label = _label_from({key: properties.get(key) for key in ("label", "class")})
        polygons.extend(
            AnnotatedPolygon(part, label)
            for part in shapely.get_parts(geometry)
            if not part.is_empty
        )
    return polygons


def rasterize_instances(
    polygons: Sequence[AnnotatedPolygon],
    shape: tuple[int, int],
    transform: Affine | None = None,
) -> NDArray[np.uint32]:
    """Burn polygons into an (H, W) uint32 raster of instance ids, 0 for background.

    Polygon i (0-based) gets id i + 1, later polygons drawn over earlier ones; a pixel belongs
    to a polygon when its centre lies inside. transform maps pixel corners to the polygons'
    coordinates (None: the polygons are in pixel coordinates). Invalid polygons are repaired
    with `shapely.make_valid`; polygons left empty or lying outside the image are skipped (with
    one warning), so their ids are absent.
    """
    height, width = shape
    pixel_to_world = Affine.identity() if transform is None else transform
    image_outline = Polygon(
        [pixel_to_world @ corner for corner in ((0, 0), (width, 0), (width, height), (0, height))]
    )
    burns: list[tuple[Polygon | MultiPolygon, int]] = []
    skipped: list[int] = []
    for instance_id, annotated in enumerate(polygons, start=1):
        geometry = _polygonal(annotated.polygon)
        if geometry.is_empty or geometry.area == 0 or not geometry.intersects(image_outline):
            skipped.append(instance_id)
            continue
        burns.append((geometry, instance_id))
    if skipped:
        log.warning(
            "skipped %d of %d polygons (ids %s): empty after repair or outside the image",
            len(skipped),
            len(polygons),
            ", ".join(map(str, skipped[:20])) + (", ..." if len(skipped) > 20 else ""),
        )
    if not burns:
        return np.zeros(shape, dtype=np.uint32)
    return rasterize(
        burns, out_shape=shape, transform=pixel_to_world, fill=0, dtype="uint32"
    ).astype(np.uint32, copy=False)


def _polygonal(geometry: Polygon) -> Polygon | MultiPolygon:
    """The polygonal part of a geometry, made valid; an empty Polygon when there is none."""
    if geometry.is_valid:
        return geometry
    repaired = shapely.make_valid(geometry)
    if isinstance(repaired, Polygon | MultiPolygon):
        return repaired
    parts = [
        part for part in shapely.get_parts(repaired) if isinstance(part, Polygon | MultiPolygon)
    ]
    if not parts:
        return Polygon()
    merged = shapely.union_all(parts)
    return merged if isinstance(merged, Polygon | MultiPolygon) else Polygon()


def _polygon_from_points(points: list[tuple[Any, ...]], where: str) -> Polygon | None:
    """A polygon through the points (closing it), or None with a warning when under 3."""
    if len(points) < 3:
        log.warning("%s has %d points, too few for a polygon; skipped", where, len(points))
        return None
    return Polygon([(float(x), float(y)) for x, y in points])


def _label_from(attributes: object) -> str:
    """The class named by the first obvious label attribute, else "1" (a field).

    A VIA checkbox or dropdown attribute ({"option": true}) names its one chosen option.
    """
    if not isinstance(attributes, dict):
        return FIELD_LABEL
    for key in _LABEL_KEYS:
        value = attributes.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, dict):
            chosen = [option for option, ticked in value.items() if ticked]
            if len(chosen) == 1:
                return str(chosen[0])
    return FIELD_LABEL


def _is_number_list(values: object) -> TypeGuard[list[float]]:
    return isinstance(values, list) and all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in values
    )


def _load_json(path: str | Path) -> Any:
    """The parsed JSON of a file; `InputError` naming it when it is missing or not JSON."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{name}: no such file.") from None
    except UnicodeDecodeError:
        raise InputError(f"{name} is not a text file, so it cannot be JSON.") from None
    except OSError as exc:
        raise InputError(f"{name} could not be read ({exc.strerror}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None


#: The annotation layouts the readers of this module understand.
AnnotationLayout = Literal["via", "labelme", "geojson"]


def annotation_layout(path: str | Path) -> AnnotationLayout | None:
    """Which reader a JSON file needs, told by its top-level layout: "via", "labelme",
    "geojson", or None for JSON of another kind. Unreadable JSON raises `InputError`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a readable JSON file ({exc}).") from None
    if not isinstance(raw, dict):
        return None
    if raw.get("type") in ("FeatureCollection", "Feature"):
        return "geojson"
    if "shapes" in raw and "imagePath" in raw:
        return "labelme"
    entries = raw.get("_via_img_metadata", raw)
    if (
        isinstance(entries, dict)
        and entries
        and all(isinstance(entry, dict) and "regions" in entry for entry in entries.values())
    ):
        return "via"
    return None
