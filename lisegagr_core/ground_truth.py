"""Labelled polygons from any annotation format the project reads, placed on an image's pixels.

Two kinds of files:

- pixel coordinates, drawn on named images: VGG Image Annotator JSON (many images per file) and
  LabelMe / X-AnyLabeling JSON (one image, named relative to the file);
- map coordinates: GeoJSON, GeoParquet, GeoPackage, FlatGeobuf (anything geopandas reads),
  placed on a georeferenced raster through its transform, reprojected to the raster's CRS when
  the file declares another. A file whose coordinates cannot be longitude / latitude although
  it is read as such (a GeoJSON written without its ``crs`` member) is taken to be in the
  raster's CRS. The label of a map feature is its "label" or "class" column, else "1".

The classifier's dataset builder and `lisegagr eval` both read their polygons here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from rasterio.crs import CRS
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon

from lisegagr_core.annotations import (
    FIELD_LABEL,
    AnnotatedPolygon,
    annotation_layout,
    read_labelme,
    read_via,
)
from lisegagr_core.errors import InputError
from lisegagr_core.imagery import RASTER_SUFFIXES

log = logging.getLogger(__name__)

#: Suffixes of polygon files in map coordinates, read with geopandas.
MAP_SUFFIXES = (".geojson", ".parquet", ".geoparquet", ".gpkg", ".fgb", ".shp")
#: Label columns of map features, in order of preference.
_LABEL_COLUMNS = ("label", "class")


@dataclass(frozen=True)
class PolygonSet:
    """The labelled polygons of one annotation file for one image (or for a map).

    image: the image the polygons are drawn on, as the file names it (relative to the file's
    folder), for pixel coordinates; None for map coordinates, whose CRS is `crs`.
    """

    source: Path
    polygons: tuple[AnnotatedPolygon, ...]
    image: str | None = None
    crs: CRS | None = None

    @property
    def in_map_coordinates(self) -> bool:
        return self.image is None

    def image_candidates(self) -> list[Path]:
        """Where the image of pixel-coordinate polygons may be: beside the file or in images/."""
        if self.image is None:
            return [self.source.with_suffix(suffix) for suffix in RASTER_SUFFIXES]
        return [self.source.parent / self.image, self.source.parent / "images" / self.image]

    def find_image(self) -> Path:
        """The image file of these polygons; `InputError` naming the file when it is absent."""
        found = next((path for path in self.image_candidates() if path.is_file()), None)
        if found is None:
            what = self.image or f"a raster named {self.source.stem}.tif (or .png, .jpg)"
            raise InputError(
                f"{self.source} annotates {what}, found neither beside it nor in "
                f"{self.source.parent / 'images'}."
            )
        return found


def is_polygon_file(path: Path) -> bool:
    """Whether `path` is read by `read_polygon_sets` (by suffix)."""
    return path.suffix.lower() in (".json", *MAP_SUFFIXES)


def read_polygon_sets(path: str | Path) -> list[PolygonSet]:
    """The polygon sets of an annotation file: one per annotated image, or one for a map.

    A JSON file is told apart by its layout (VIA, LabelMe or GeoJSON); other suffixes are map
    formats. Raises `InputError` (naming the file) for anything else.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file.")
    if file.suffix.lower() == ".json":
        layout = annotation_layout(file)
        if layout == "via":
            return [
                PolygonSet(file, tuple(polygons), image=name)
                for name, polygons in read_via(file).items()
            ]
        if layout == "labelme":
            image, polygons = read_labelme(file)
            return [PolygonSet(file, tuple(polygons), image=image)]
        if layout != "geojson":
            raise InputError(
                f"{file} is neither a VGG Image Annotator, a LabelMe nor a GeoJSON file."
            )
    elif file.suffix.lower() not in MAP_SUFFIXES:
        raise InputError(
            f"{file} is not a polygon file (expected .json, {', '.join(MAP_SUFFIXES)})."
        )
    return [_read_map_polygons(file)]


def place_polygons(
    polygon_set: PolygonSet,
    shape: tuple[int, int],
    *,
    transform: Affine | None = None,
    crs: CRS | None = None,
    image_name: str = "the image",
    require_inside: bool = True,
) -> list[AnnotatedPolygon]:
    """The polygons in pixel coordinates (x = column, y = row) of an (H, W) image.

    Map coordinates need the image's `transform` (pixel corners → map) and are reprojected
    from the set's CRS to `crs` when both are known and differ. With `require_inside`, a
    polygon that does not touch the image raises `InputError`; otherwise it is dropped.
    """
    polygons = list(polygon_set.polygons)
    if polygon_set.in_map_coordinates:
        if transform is None:
            raise InputError(
                f"{polygon_set.source} holds map coordinates, but {image_name} has no "
                "georeference to place them on."
            )
        polygons = _to_pixels(polygons, polygon_set.crs, crs, transform, polygon_set.source)
    height, width = shape
    outline = shapely.box(0, 0, width, height)
    inside = [item.polygon.intersects(outline) for item in polygons]
    if require_inside and not all(inside):
        index = inside.index(False)
        raise InputError(
            f"{polygon_set.source}: polygon {index} (label {polygons[index].label!r}) lies "
            f"outside {image_name} ({width}×{height} px)."
        )
    dropped = len(polygons) - sum(inside)
    if dropped:
        log.info("%s: %d polygons outside %s dropped", polygon_set.source, dropped, image_name)
    return [item for item, keep in zip(polygons, inside, strict=True) if keep]


def _read_map_polygons(path: Path) -> PolygonSet:
    """Polygons (parts of multipolygons apart) and labels of a map file, with its CRS."""
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(path)
    except Exception as exc:  # geopandas/pyogrio/pyarrow raise many types for a bad file
        raise InputError(
            f"{path} could not be read as polygons ({exc.__class__.__name__}: {exc})."
        ) from None
    label_column = next((c for c in _LABEL_COLUMNS if c in frame.columns), None)
    polygons: list[AnnotatedPolygon] = []
    skipped = 0
    for index, geometry in enumerate(frame.geometry):
        if not isinstance(geometry, Polygon | MultiPolygon) or geometry.is_empty:
            skipped += 1
            continue
        label = FIELD_LABEL
        if label_column is not None:
            value = frame[label_column].iloc[index]
            label = FIELD_LABEL if pd.isna(value) else _label_text(value)
        polygons.extend(AnnotatedPolygon(part, label) for part in shapely.get_parts(geometry))
    if skipped:
        log.warning("%s: %d features without polygonal geometry skipped", path, skipped)
    crs = CRS.from_user_input(frame.crs.to_wkt()) if frame.crs is not None else None
    return PolygonSet(path, tuple(polygons), image=None, crs=crs)


def _label_text(value: object) -> str:
    """A label cell as text: 1.0 → "1", " 0 " → "0"."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _to_pixels(
    polygons: list[AnnotatedPolygon],
    source_crs: CRS | None,
    target_crs: CRS | None,
    transform: Affine,
    source: Path,
) -> list[AnnotatedPolygon]:
    """Map polygons → pixel coordinates of a raster with `transform` (reprojected if needed)."""
    geometries = gpd.GeoSeries([item.polygon for item in polygons], crs=source_crs)
    if source_crs is not None and target_crs is not None and source_crs != target_crs:
        x0, y0, x1, y1 = geometries.total_bounds if len(geometries) else (0, 0, 0, 0)
        lonlat_range = max(abs(x0), abs(x1)) <= 180 and max(abs(y0), abs(y1)) <= 90
        if source_crs.is_geographic and not lonlat_range:
            log.warning(
                "%s is read as %s but its coordinates are not longitude / latitude; "
                "taking them to be in the raster's CRS",
                source,
                source_crs.to_string(),
            )
        else:
            geometries = geometries.to_crs(target_crs.to_wkt())
    to_pixels = (~transform).to_shapely()
    return [
        AnnotatedPolygon(affinity.affine_transform(geometry, to_pixels), item.label)
        for geometry, item in zip(geometries, polygons, strict=True)
    ]
